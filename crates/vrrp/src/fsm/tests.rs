//! One router, explicit instants: every row of the state tables in RFC 3768
//! §6.4 and RFC 5798 §6.4, the receive checks of §7.1, and the timer maths.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::*;

const OURS: &str = "192.0.2.10";
const LOWER: &str = "192.0.2.5";
const HIGHER: &str = "192.0.2.20";
const VIP: &str = "192.0.2.100";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// k0s's rendering: VRRPv2, priority 200, advert 1 s, PASS auth.
fn k0s_config() -> Config {
    let mut config = Config::new(Version::V2, 51, ip(OURS), vec![ip(VIP)]);
    config.priority = 200;
    config.auth = Auth::pass(b"secret");
    config
}

fn router(config: Config) -> VirtualRouter {
    VirtualRouter::new(config).unwrap()
}

/// An advert from a peer with the same configuration as ours.
fn peer(router: &VirtualRouter, priority: u8) -> Advert {
    router.advert(priority)
}

fn started(config: Config, t0: Instant) -> VirtualRouter {
    let mut r = router(config);
    r.start(t0);
    r
}

/// A router that became Master at `t0 + MDI`; returns it and that instant.
fn master(config: Config, t0: Instant) -> (VirtualRouter, Instant) {
    let mut r = started(config, t0);
    let at = r.poll_timeout().unwrap();
    r.handle_timeout(at);
    assert_eq!(r.state(), State::Master);
    (r, at)
}

fn changed(from: State, to: State, reason: Reason) -> Action {
    Action::StateChanged { from, to, reason }
}

fn sends(actions: &[Action]) -> Vec<u8> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(advert) => Some(advert.priority),
            _ => None,
        })
        .collect()
}

// ===== configuration =====

#[test]
fn invalid_configs_are_refused_with_their_reason() {
    let base = k0s_config();
    let cases: Vec<(Config, ConfigError)> = vec![
        (
            Config {
                vrid: 0,
                ..base.clone()
            },
            ConfigError::ZeroVrid,
        ),
        (
            Config {
                priority: 0,
                ..base.clone()
            },
            ConfigError::ZeroPriority,
        ),
        (
            Config {
                advert_interval: Centis(150),
                ..base.clone()
            },
            ConfigError::Interval {
                version: Version::V2,
                interval: Centis(150),
            },
        ),
        (
            Config {
                advert_interval: Centis(0),
                ..base.clone()
            },
            ConfigError::Interval {
                version: Version::V2,
                interval: Centis(0),
            },
        ),
        (
            Config {
                version: Version::V3,
                advert_interval: Centis(4096),
                auth: Auth::None,
                ..base.clone()
            },
            ConfigError::Interval {
                version: Version::V3,
                interval: Centis(4096),
            },
        ),
        (
            Config {
                version: Version::V3,
                ..base.clone()
            },
            ConfigError::AuthWithV3,
        ),
        (
            Config {
                vips: vec![],
                ..base.clone()
            },
            ConfigError::NoVips,
        ),
        (
            Config {
                vips: vec![ip(VIP), ip("2001:db8::1")],
                ..base.clone()
            },
            ConfigError::MixedFamilies,
        ),
        (
            Config {
                primary_ip: ip("fe80::1"),
                vips: vec![ip("2001:db8::1")],
                ..base.clone()
            },
            ConfigError::Ipv6WithV2,
        ),
        (
            Config {
                garp: GarpConfig {
                    repeat: 0,
                    ..GarpConfig::default()
                },
                ..base.clone()
            },
            ConfigError::ZeroGarpRepeat,
        ),
    ];
    for (config, want) in cases {
        assert_eq!(
            VirtualRouter::new(config.clone()).unwrap_err(),
            want,
            "{config:?}"
        );
    }
    let v3_ok = Config {
        version: Version::V3,
        advert_interval: Centis(4095),
        auth: Auth::None,
        ..base
    };
    assert!(VirtualRouter::new(v3_ok).is_ok());
}

// ===== timer maths (RFC 3768 §6.1, RFC 5798 §6.1) =====

#[test]
fn skew_time_and_master_down_interval_v2() {
    // (priority, Skew_Time in ns): (256 - p) / 256 s, exactly.
    let table = [
        (1u8, 996_093_750u64),
        (100, 609_375_000),
        (200, 218_750_000),
        (254, 7_812_500),
    ];
    for (priority, skew_ns) in table {
        let r = router(Config {
            priority,
            ..k0s_config()
        });
        assert_eq!(
            r.skew_time(),
            Duration::from_nanos(skew_ns),
            "priority {priority}"
        );
        assert_eq!(
            r.master_down_interval(),
            Duration::from_secs(3) + Duration::from_nanos(skew_ns)
        );
    }
    // The k0s numbers quoted everywhere: 3 × 1 s + 0.21875 s.
    assert_eq!(
        router(k0s_config()).master_down_interval(),
        Duration::from_micros(3_218_750)
    );
}

#[test]
fn skew_time_v3_is_in_whole_centiseconds_of_the_master_interval() {
    let v3 = |priority, interval| {
        let config = Config {
            version: Version::V3,
            auth: Auth::None,
            priority,
            advert_interval: Centis(interval),
            ..k0s_config()
        };
        router(config)
    };
    // ((256 - p) * MAI) / 256 centiseconds, truncated like keepalived.
    let table = [
        (200u8, 100u16, 21u64),
        (100, 100, 60),
        (254, 100, 0),
        (1, 4095, 4079),
        (200, 50, 10),
    ];
    for (priority, interval, skew_cs) in table {
        let r = v3(priority, interval);
        assert_eq!(
            r.skew_time(),
            Duration::from_millis(skew_cs * 10),
            "p={priority} i={interval}"
        );
        assert_eq!(
            r.master_down_interval(),
            Duration::from_millis(u64::from(interval) * 30 + skew_cs * 10)
        );
    }
}

// ===== Initialize (RFC 3768 §6.4.1) =====

#[test]
fn startup_below_owner_priority_enters_backup_and_arms_master_down() {
    let t0 = Instant::now();
    let mut r = router(k0s_config());
    assert_eq!(r.state(), State::Initialize);
    assert_eq!(r.poll_timeout(), None);
    let actions = r.start(t0);
    assert_eq!(
        actions,
        vec![changed(State::Initialize, State::Backup, Reason::Startup)]
    );
    assert_eq!(r.poll_timeout(), Some(t0 + r.master_down_interval()));
    // A second Startup is not an event in Backup.
    assert!(r.start(t0).is_empty());
}

#[test]
fn startup_as_owner_becomes_master_at_once() {
    let t0 = Instant::now();
    let mut r = router(Config {
        priority: 255,
        ..k0s_config()
    });
    let actions = r.start(t0);
    assert_eq!(
        actions,
        vec![
            changed(State::Initialize, State::Master, Reason::OwnerStartup),
            Action::AddVips,
            Action::Send(r.advert(255)),
            Action::Announce { repeat: 5 },
        ]
    );
    assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_secs(1)));
}

#[test]
fn adverts_are_ignored_before_startup() {
    let mut r = router(k0s_config());
    let advert = peer(&r, 250);
    assert_eq!(r.receive(Instant::now(), ip(HIGHER), &advert), Ok(vec![]));
    assert_eq!(r.state(), State::Initialize);
}

// ===== Backup (RFC 3768 §6.4.2) =====

#[test]
fn backup_becomes_master_exactly_at_master_down_interval() {
    let t0 = Instant::now();
    let mut r = started(k0s_config(), t0);
    let deadline = t0 + Duration::from_micros(3_218_750);
    assert_eq!(r.poll_timeout(), Some(deadline));
    // A nanosecond early: nothing (spurious wake-ups are no-ops).
    assert!(
        r.handle_timeout(deadline - Duration::from_nanos(1))
            .is_empty()
    );
    assert_eq!(r.state(), State::Backup);
    let actions = r.handle_timeout(deadline);
    assert_eq!(
        actions,
        vec![
            changed(State::Backup, State::Master, Reason::MasterDown),
            Action::AddVips,
            Action::Send(r.advert(200)),
            Action::Announce { repeat: 5 },
        ]
    );
    // Adver_Timer armed for one interval; GARP repeat after 5 s.
    assert_eq!(r.poll_timeout(), Some(deadline + Duration::from_secs(1)));
}

#[test]
fn backup_advert_with_higher_or_equal_priority_resets_master_down() {
    let t0 = Instant::now();
    for theirs in [200u8, 201, 254, 255] {
        let mut r = started(k0s_config(), t0);
        let t1 = t0 + Duration::from_secs(2);
        let advert = peer(&r, theirs);
        assert_eq!(r.receive(t1, ip(LOWER), &advert), Ok(vec![]));
        assert_eq!(
            r.poll_timeout(),
            Some(t1 + r.master_down_interval()),
            "priority {theirs}"
        );
        assert_eq!(r.state(), State::Backup);
    }
}

#[test]
fn backup_priority_zero_advert_takes_over_after_skew_time() {
    let t0 = Instant::now();
    let mut r = started(k0s_config(), t0);
    let t1 = t0 + Duration::from_secs(1);
    let advert = peer(&r, 0);
    r.receive(t1, ip(HIGHER), &advert).unwrap();
    assert_eq!(r.poll_timeout(), Some(t1 + Duration::from_micros(218_750)));
    let actions = r.handle_timeout(t1 + r.skew_time());
    assert_eq!(
        actions[0],
        changed(State::Backup, State::Master, Reason::MasterResigned)
    );
}

#[test]
fn backup_with_preemption_discards_lower_priority_and_preempts() {
    let t0 = Instant::now();
    let mut r = started(k0s_config(), t0);
    let armed = r.poll_timeout();
    let advert = peer(&r, 100);
    r.receive(t0 + Duration::from_secs(1), ip(HIGHER), &advert)
        .unwrap();
    // Discarded: the timer was not reset.
    assert_eq!(r.poll_timeout(), armed);
    let actions = r.handle_timeout(armed.unwrap());
    assert_eq!(
        actions[0],
        changed(
            State::Backup,
            State::Master,
            Reason::Preempted {
                their_priority: 100
            }
        )
    );
}

#[test]
fn backup_without_preemption_defers_to_lower_priority() {
    let t0 = Instant::now();
    let mut r = started(
        Config {
            preempt: false,
            ..k0s_config()
        },
        t0,
    );
    let t1 = t0 + Duration::from_secs(1);
    let advert = peer(&r, 100);
    r.receive(t1, ip(HIGHER), &advert).unwrap();
    assert_eq!(r.poll_timeout(), Some(t1 + r.master_down_interval()));
}

#[test]
fn preempt_delay_defers_until_it_has_passed() {
    let t0 = Instant::now();
    let config = Config {
        preempt_delay: Duration::from_secs(10),
        ..k0s_config()
    };
    let mut r = started(config, t0);
    let advert = peer(&r, 100);
    // Within the delay: treated like preemption off.
    let t1 = t0 + Duration::from_secs(9);
    r.receive(t1, ip(HIGHER), &advert).unwrap();
    assert_eq!(r.poll_timeout(), Some(t1 + r.master_down_interval()));
    // After it: discarded, so the timer armed at t1 fires.
    r.receive(t0 + Duration::from_secs(10), ip(HIGHER), &advert)
        .unwrap();
    assert_eq!(r.poll_timeout(), Some(t1 + r.master_down_interval()));
}

#[test]
fn backup_shutdown_goes_to_initialize_and_cancels_the_timer() {
    let t0 = Instant::now();
    let mut r = started(k0s_config(), t0);
    assert_eq!(
        r.shutdown(t0),
        vec![changed(State::Backup, State::Initialize, Reason::Shutdown)]
    );
    assert_eq!(r.poll_timeout(), None);
    assert!(r.shutdown(t0).is_empty());
}

// ===== Master (RFC 3768 §6.4.3) =====

#[test]
fn master_advertises_every_interval() {
    let t0 = Instant::now();
    let (mut r, at) = master(k0s_config(), t0);
    let actions = r.handle_timeout(at + Duration::from_secs(1));
    assert_eq!(actions, vec![Action::Send(r.advert(200))]);
    assert_eq!(r.poll_timeout(), Some(at + Duration::from_secs(2)));
}

#[test]
fn master_sends_the_second_garp_burst_after_the_master_delay_only_once() {
    let t0 = Instant::now();
    let (mut r, at) = master(k0s_config(), t0);
    let mut announces = 0;
    let mut now = at;
    for _ in 0..20 {
        now = r.poll_timeout().unwrap();
        announces += r
            .handle_timeout(now)
            .iter()
            .filter(|a| matches!(a, Action::Announce { .. }))
            .count();
    }
    assert!(now > at + Duration::from_secs(15));
    assert_eq!(announces, 1, "one delayed burst, no refresh by default");
}

#[test]
fn master_refreshes_garp_periodically_when_configured() {
    let t0 = Instant::now();
    let garp = GarpConfig {
        repeat: 2,
        master_delay: None,
        refresh: Some(Duration::from_secs(3)),
    };
    let (mut r, at) = master(
        Config {
            garp,
            ..k0s_config()
        },
        t0,
    );
    let mut announce_times = vec![];
    for _ in 0..20 {
        let now = r.poll_timeout().unwrap();
        for a in r.handle_timeout(now) {
            if a == (Action::Announce { repeat: 2 }) {
                announce_times.push(now - at);
            }
        }
    }
    assert_eq!(
        &announce_times[..3],
        &[
            Duration::from_secs(3),
            Duration::from_secs(6),
            Duration::from_secs(9)
        ]
    );
}

#[test]
fn master_answers_priority_zero_with_an_advert_and_resets_the_timer() {
    let t0 = Instant::now();
    let (mut r, at) = master(k0s_config(), t0);
    let t1 = at + Duration::from_millis(500);
    let advert = peer(&r, 0);
    let actions = r.receive(t1, ip(HIGHER), &advert).unwrap();
    // The advert of RFC 3768 §6.4.3, then our announcement again: the
    // resigning router may have announced after us (issue 14 F14).
    assert_eq!(
        actions,
        vec![Action::Send(r.advert(200)), Action::Announce { repeat: 5 }]
    );
    assert_eq!(r.poll_timeout(), Some(t1 + Duration::from_secs(1)));
    assert_eq!(r.state(), State::Master);
}

#[test]
fn resignations_are_answered_three_times_an_interval_then_once_at_its_end() {
    let t0 = Instant::now();
    let (mut r, at) = master(k0s_config(), t0);
    let advert = peer(&r, 0);
    let announces = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Announce { .. }))
            .count()
    };
    let t1 = at + Duration::from_millis(100);
    for i in 0..10 {
        let actions = r
            .receive(t1 + Duration::from_millis(i), ip(LOWER), &advert)
            .unwrap();
        assert_eq!(announces(&actions), usize::from(i < 3), "{i}: {actions:?}");
        assert_eq!(actions.first(), Some(&Action::Send(r.advert(200))));
    }
    assert_eq!(r.answers_suppressed(), 7);
    // The ones held back are answered once, at the end of the interval:
    // deferred, never dropped, so the last announcement is ours.
    let end = t1 + Duration::from_secs(1);
    assert_eq!(
        announces(&r.handle_timeout(end - Duration::from_millis(1))),
        0
    );
    assert_eq!(announces(&r.handle_timeout(end)), 1);
    assert_eq!(r.state(), State::Master);
}

#[test]
fn master_steps_down_for_a_higher_priority() {
    let t0 = Instant::now();
    let (mut r, at) = master(k0s_config(), t0);
    let t1 = at + Duration::from_millis(300);
    let advert = peer(&r, 201);
    let actions = r.receive(t1, ip(LOWER), &advert).unwrap();
    assert_eq!(
        actions,
        vec![
            changed(
                State::Master,
                State::Backup,
                Reason::HigherPriority {
                    from: ip(LOWER),
                    priority: 201
                }
            ),
            Action::RemoveVips,
            // It announced 300 ms ago, maybe after the new Master did: it
            // says it resigned, so the new Master announces last (issue 14
            // F14).
            Action::Send(r.advert(0)),
        ]
    );
    assert_eq!(r.poll_timeout(), Some(t1 + r.master_down_interval()));
}

#[test]
fn a_master_that_has_not_announced_lately_steps_down_silently() {
    let t0 = Instant::now();
    let (mut r, at) = master(k0s_config(), t0);
    // The second burst goes 5 s after the takeover; 20 s later nothing
    // this router announced can be on the wire any more.
    let mut now = at;
    while now < at + Duration::from_secs(20) {
        now = r.poll_timeout().unwrap();
        let _ = r.handle_timeout(now);
    }
    let advert = peer(&r, 201);
    let actions = r.receive(now, ip(LOWER), &advert).unwrap();
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(actions[1], Action::RemoveVips);
    assert_eq!(r.state(), State::Backup);
}

#[test]
fn master_tie_break_by_primary_address() {
    let t0 = Instant::now();
    // Equal priority from a higher address: step down.
    let (mut r, at) = master(k0s_config(), t0);
    let advert = peer(&r, 200);
    let actions = r.receive(at, ip(HIGHER), &advert).unwrap();
    assert_eq!(
        actions[0],
        changed(
            State::Master,
            State::Backup,
            Reason::HigherAddress { from: ip(HIGHER) }
        )
    );

    // From a lower address: stay, answer at once and re-announce the VIPs
    // (keepalived), in case the LAN learnt the other Master's MAC.
    let (mut r, at) = master(k0s_config(), t0);
    let actions = r.receive(at, ip(LOWER), &advert).unwrap();
    assert_eq!(
        actions,
        vec![Action::Send(r.advert(200)), Action::Announce { repeat: 5 }]
    );
    assert_eq!(r.state(), State::Master);

    // With the RFC's plain discard.
    let (mut r, at) = master(
        Config {
            answer_lower_priority: false,
            ..k0s_config()
        },
        t0,
    );
    assert_eq!(r.receive(at, ip(LOWER), &advert), Ok(vec![]));
    assert_eq!(r.state(), State::Master);
}

#[test]
fn master_shutdown_sends_priority_zero_then_releases_the_vips() {
    let t0 = Instant::now();
    let (mut r, at) = master(k0s_config(), t0);
    let actions = r.shutdown(at);
    assert_eq!(
        actions,
        vec![
            changed(State::Master, State::Initialize, Reason::Shutdown),
            Action::Send(r.advert(0)),
            Action::RemoveVips,
        ]
    );
    assert_eq!(r.poll_timeout(), None);
    // It can start again.
    assert_eq!(
        r.start(at)[0],
        changed(State::Initialize, State::Backup, Reason::Startup)
    );
}

// ===== VRRPv3 (RFC 5798 §6.4) =====

#[test]
fn v3_backup_learns_the_masters_interval() {
    let t0 = Instant::now();
    let config = Config {
        version: Version::V3,
        auth: Auth::None,
        advert_interval: Centis(100),
        ..k0s_config()
    };
    let mut r = started(config, t0);
    let advert = Advert {
        interval: Centis(50),
        ..peer(&r, 200)
    };
    r.receive(t0, ip(HIGHER), &advert).unwrap();
    assert_eq!(r.master_adver_interval(), Centis(50));
    // 3 × 0.5 s + ((256 - 200) × 50 / 256 = 10) cs.
    assert_eq!(r.poll_timeout(), Some(t0 + Duration::from_millis(1600)));
    // Our own adverts keep our configured interval.
    assert_eq!(r.advert(200).interval, Centis(100));
}

#[test]
fn v3_master_stepping_down_learns_the_new_masters_interval() {
    let t0 = Instant::now();
    let config = Config {
        version: Version::V3,
        auth: Auth::None,
        ..k0s_config()
    };
    let (mut r, at) = master(config, t0);
    let advert = Advert {
        interval: Centis(200),
        ..peer(&r, 250)
    };
    r.receive(at, ip(HIGHER), &advert).unwrap();
    assert_eq!(r.state(), State::Backup);
    assert_eq!(r.master_adver_interval(), Centis(200));
}

#[test]
fn v3_ipv6_router_runs() {
    let t0 = Instant::now();
    let config = Config::new(Version::V3, 54, ip("fe80::10"), vec![ip("2001:db8::100")]);
    let (mut r, at) = master(config, t0);
    let advert = peer(&r, 50);
    // A lower-priority peer on the link: answered.
    assert_eq!(
        sends(&r.receive(at, ip("fe80::20"), &advert).unwrap()),
        vec![100]
    );
}

// ===== receive checks (RFC 3768 §7.1, RFC 5798 §7.1) =====

#[test]
fn adverts_failing_the_router_checks_are_rejected_and_change_nothing() {
    let t0 = Instant::now();
    let mut r = started(k0s_config(), t0);
    let good = peer(&r, 250);
    let armed = r.poll_timeout();
    let cases = [
        (ip(OURS), good.clone(), RejectReason::OwnAdvert),
        (ip("2001:db8::1"), good.clone(), RejectReason::Family),
        (
            ip(HIGHER),
            Advert {
                version: Version::V3,
                ..good.clone()
            },
            RejectReason::Version { got: Version::V3 },
        ),
        (
            ip(HIGHER),
            Advert {
                vrid: 52,
                ..good.clone()
            },
            RejectReason::Vrid(52),
        ),
        (
            ip(HIGHER),
            Advert {
                auth: Auth::None,
                ..good.clone()
            },
            RejectReason::AuthType { got: 0, want: 1 },
        ),
        (
            ip(HIGHER),
            Advert {
                auth: Auth::pass(b"wrong"),
                ..good.clone()
            },
            RejectReason::AuthPassword,
        ),
        (
            ip(HIGHER),
            Advert {
                interval: Centis(200),
                ..good.clone()
            },
            RejectReason::Interval {
                got: Centis(200),
                want: Centis(100),
            },
        ),
        (
            ip(HIGHER),
            Advert {
                addrs: vec![ip("192.0.2.101")],
                ..good.clone()
            },
            RejectReason::Addresses,
        ),
        (
            ip(HIGHER),
            Advert {
                addrs: vec![ip(VIP), ip(VIP)],
                ..good.clone()
            },
            RejectReason::Addresses,
        ),
        (
            ip(HIGHER),
            Advert {
                addrs: vec![],
                ..good.clone()
            },
            RejectReason::Addresses,
        ),
    ];
    for (src, advert, want) in cases {
        assert_eq!(
            r.receive(t0 + Duration::from_secs(1), src, &advert),
            Err(want),
            "{advert:?}"
        );
        assert_eq!(
            r.poll_timeout(),
            armed,
            "a rejected advert must not reset the timer"
        );
        assert!(!want.reason().is_empty());
    }
    assert_eq!(r.state(), State::Backup);
}

#[test]
fn address_lists_compare_as_sets_and_even_the_owner_must_match() {
    let t0 = Instant::now();
    let vips = vec![ip("192.0.2.100"), ip("192.0.2.101")];
    let mut r = started(
        Config {
            vips: vips.clone(),
            ..k0s_config()
        },
        t0,
    );
    let reversed = Advert {
        addrs: vec![vips[1], vips[0]],
        ..peer(&r, 200)
    };
    assert!(r.receive(t0, ip(HIGHER), &reversed).is_ok());
    // RFC 3768 §7.1 exempts the owner (255); we do not (issue 14 F13).
    let owner = Advert {
        addrs: vec![ip("192.0.2.7")],
        ..peer(&r, 255)
    };
    assert_eq!(
        r.receive(t0, ip(HIGHER), &owner),
        Err(RejectReason::Addresses)
    );
}

// ===== interface and priority changes =====

#[test]
fn link_down_releases_the_vips_and_link_up_starts_over() {
    let t0 = Instant::now();
    let (mut r, at) = master(k0s_config(), t0);
    let actions = r.link_down(at);
    assert_eq!(
        actions,
        vec![
            changed(State::Master, State::Fault, Reason::LinkDown),
            Action::RemoveVips
        ]
    );
    assert_eq!(r.poll_timeout(), None);
    assert!(r.link_down(at).is_empty());
    let advert = peer(&r, 250);
    assert_eq!(r.receive(at, ip(HIGHER), &advert), Ok(vec![]));
    assert!(r.shutdown(at).len() == 1 && r.state() == State::Initialize);

    let mut r = started(k0s_config(), t0);
    r.link_down(t0);
    assert_eq!(r.state(), State::Fault);
    assert_eq!(
        r.link_up(t0),
        vec![changed(State::Fault, State::Backup, Reason::LinkUp)]
    );
    assert!(r.link_up(t0).is_empty());
}

#[test]
fn set_priority_advertises_at_once_in_master_and_refuses_reserved_values() {
    let t0 = Instant::now();
    let (mut r, at) = master(k0s_config(), t0);
    assert_eq!(sends(&r.set_priority(at, 150)), vec![150]);
    assert_eq!(r.priority(), 150);
    assert!(r.set_priority(at, 0).is_empty());
    assert!(r.set_priority(at, 255).is_empty());
    assert!(r.set_priority(at, 150).is_empty());
    assert_eq!(r.priority(), 150);
    // The new priority is what the timer sends, and skew follows it.
    assert_eq!(
        sends(&r.handle_timeout(at + Duration::from_secs(1))),
        vec![150]
    );
    assert_eq!(r.skew_time(), Duration::from_nanos(106 * 3_906_250));
}

#[test]
fn a_tx_fault_releases_the_vips_and_retries_as_backup() {
    let t0 = Instant::now();
    let (mut r, at) = master(k0s_config(), t0);
    let retry = Duration::from_secs(3);
    assert_eq!(
        r.tx_fault(at, retry),
        vec![
            changed(State::Master, State::Fault, Reason::TxFault),
            Action::RemoveVips
        ]
    );
    assert!(r.tx_fault(at, retry).is_empty(), "already in Fault");
    // Nothing is sent in Fault; the only deadline is the retry.
    assert_eq!(r.poll_timeout(), Some(at + retry));
    assert!(r.handle_timeout(at + retry / 2).is_empty());
    assert_eq!(
        r.handle_timeout(at + retry),
        vec![changed(State::Fault, State::Backup, Reason::FaultRetry)]
    );
    assert_eq!(
        r.poll_timeout(),
        Some(at + retry + r.master_down_interval())
    );

    // A Backup's fault removes nothing; a link going down during the wait
    // cancels the retry: only link_up leaves that Fault.
    let mut r = started(k0s_config(), t0);
    assert_eq!(
        r.tx_fault(t0, retry),
        vec![changed(State::Backup, State::Fault, Reason::TxFault)]
    );
    assert!(r.link_down(t0).is_empty());
    assert_eq!(r.poll_timeout(), None);
    assert_eq!(
        r.link_up(t0),
        vec![changed(State::Fault, State::Backup, Reason::LinkUp)]
    );
}

#[test]
fn lower_priority_adverts_are_answered_at_most_once_per_interval() {
    let t0 = Instant::now();
    let (mut r, at) = master(k0s_config(), t0);
    let advert = peer(&r, 100);
    let answered = |actions: Vec<Action>| !sends(&actions).is_empty();
    assert!(answered(r.receive(at, ip(LOWER), &advert).unwrap()));
    // A flood within the interval: no more answers, only counted.
    for n in 1..=50 {
        let when = at + Duration::from_millis(n * 10);
        assert_eq!(r.receive(when, ip(LOWER), &advert), Ok(vec![]));
    }
    assert_eq!(r.answers_suppressed(), 50);
    assert_eq!(r.state(), State::Master);
    // One interval later: answered again.
    assert!(answered(
        r.receive(at + Duration::from_secs(1), ip(LOWER), &advert)
            .unwrap()
    ));
}
