//! The invariants the fuzz targets check (feature `fuzzing`). They live in
//! the crate so that the fuzzers under `fuzz/` and the ordinary test that
//! replays their corpus check exactly the same thing. Every function panics
//! when an invariant breaks: that is how a fuzzer learns of it.

// Assertions are the point of this module.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;

use crate::fsm::{Action, Config, State, VirtualRouter};
use crate::sim::Lan;
use crate::wire::{Advert, Auth, Centis, MULTICAST_V4, MULTICAST_V6, Version};

/// Most operations one script runs, so one input stays fast.
const MAX_OPS: usize = 512;

// ===== decoder =====

/// Parses `data` as a VRRP payload for IPv4 and for IPv6. Whenever it
/// decodes, it must re-emit to the same length and the same bytes (but the
/// checksum, which fuzzing builds do not verify, and the v3 reserved bits,
/// which receivers ignore) and re-parse to the same advert.
pub fn parse_roundtrip(data: &[u8]) {
    let v4 = (
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        IpAddr::V4(MULTICAST_V4),
    );
    let v6 = (
        IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
        IpAddr::V6(MULTICAST_V6),
    );
    for (src, dst) in [v4, v6] {
        let Ok(advert) = Advert::parse(data, src, dst) else {
            continue;
        };
        assert_eq!(advert.buffer_len(), data.len(), "{advert:?}");
        let mut buf = vec![0xa5; advert.buffer_len()];
        let n = advert
            .emit(src, dst, &mut buf)
            .expect("a parsed advert re-emits");
        assert_eq!(n, data.len());
        let again = Advert::parse(&buf, src, dst).expect("an emitted advert parses");
        assert_eq!(again, advert);
        // RFC 3768 §5.3.10: with auth type 0 the 8 auth data bytes are
        // "ignored on reception", so they re-emit as zeros.
        let ignored_auth_data = match (advert.version, advert.auth) {
            (Version::V2, Auth::None) => data.len().saturating_sub(8)..data.len(),
            _ => 0..0,
        };
        for (i, (&theirs, &ours)) in data.iter().zip(&buf).enumerate() {
            let mask = match (i, advert.version) {
                (6 | 7, _) => 0x00,
                (4, Version::V3) => 0x0f,
                _ if ignored_auth_data.contains(&i) => 0x00,
                _ => 0xff,
            };
            assert_eq!(theirs & mask, ours & mask, "byte {i} differs after re-emit");
        }
    }
}

// ===== one router =====

/// A configuration and a sequence of inputs for one router.
#[derive(Debug, Arbitrary)]
pub struct FsmScript {
    pub v3: bool,
    pub priority: u8,
    pub preempt: bool,
    pub ops: Vec<FsmOp>,
}

/// One input to the router.
#[derive(Debug, Arbitrary)]
pub enum FsmOp {
    Start,
    Shutdown,
    LinkDown,
    LinkUp,
    SetPriority(u8),
    /// Let this many milliseconds pass without calling back.
    Advance(u16),
    /// Jump to the next deadline and handle it.
    Timeout,
    /// An advert from a peer, built to be mostly valid.
    Peer {
        from: Peer,
        priority: u8,
        flaw: Flaw,
    },
    /// The driver could not send: a transmit fault, retried after this many
    /// milliseconds.
    TxFault(u16),
    /// Any advert at all.
    Raw {
        src: IpAddr,
        advert: Advert,
    },
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Peer {
    Lower,
    Higher,
    Ourselves,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Flaw {
    None,
    Auth,
    Interval(u16),
    Addresses,
    Vrid(u8),
}

const OURS: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const LOWER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 5));
const HIGHER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20));
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100));

fn config(v3: bool, priority: u8, preempt: bool, primary: IpAddr) -> Config {
    let version = if v3 { Version::V3 } else { Version::V2 };
    let mut config = Config::new(version, 51, primary, vec![VIP]);
    config.priority = priority.max(1);
    config.preempt = preempt;
    if !v3 {
        config.auth = Auth::pass(b"k0s");
    }
    config
}

/// Runs the script on one router and checks after every input: at most one
/// state change, reported with the right states; never both AddVips and
/// RemoveVips; the VIPs held exactly in Master; adverts with a non-zero
/// priority only from a Master, priority 0 only from a Master leaving; a timer armed exactly in Backup and Master
/// (and in the Fault of a transmit fault, for the retry);
/// after handling a timeout, the next deadline is in the future.
pub fn run_fsm(script: &FsmScript) {
    let mut router =
        VirtualRouter::new(config(script.v3, script.priority, script.preempt, OURS)).unwrap();
    let t0 = Instant::now();
    let mut now = t0;
    let mut holds_vips = false;
    // In Fault after a transmit fault, the retry timer is armed.
    let mut tx_fault_pending = false;
    for op in script.ops.iter().take(MAX_OPS) {
        let before = router.state();
        let mut handled_timeout = false;
        let actions = match op {
            FsmOp::Start => router.start(now),
            FsmOp::Shutdown => router.shutdown(now),
            FsmOp::LinkDown => router.link_down(now),
            FsmOp::LinkUp => router.link_up(now),
            FsmOp::TxFault(ms) => {
                let retry = Duration::from_millis(u64::from(*ms));
                if matches!(before, State::Backup | State::Master) {
                    tx_fault_pending = true;
                }
                router.tx_fault(now, retry)
            }
            FsmOp::SetPriority(p) => router.set_priority(now, *p),
            FsmOp::Advance(ms) => {
                now += Duration::from_millis(u64::from(*ms));
                Vec::new()
            }
            FsmOp::Timeout => {
                if let Some(deadline) = router.poll_timeout() {
                    now = now.max(deadline);
                }
                handled_timeout = true;
                router.handle_timeout(now)
            }
            FsmOp::Peer {
                from,
                priority,
                flaw,
            } => {
                let src = match from {
                    Peer::Lower => LOWER,
                    Peer::Higher => HIGHER,
                    Peer::Ourselves => OURS,
                };
                let mut advert = router.advert(*priority);
                match flaw {
                    Flaw::None => {}
                    Flaw::Auth => advert.auth = Auth::pass(b"other"),
                    Flaw::Interval(cs) => advert.interval = Centis(*cs & 0x0fff),
                    Flaw::Addresses => advert.addrs.push(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 101))),
                    Flaw::Vrid(vrid) => advert.vrid = *vrid,
                }
                router.receive(now, src, &advert).unwrap_or_default()
            }
            FsmOp::Raw { src, advert } => router.receive(now, *src, advert).unwrap_or_default(),
        };
        let after = router.state();

        let changes: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::StateChanged { from, to, .. } => Some((*from, *to)),
                _ => None,
            })
            .collect();
        assert!(changes.len() <= 1, "{op:?}: {actions:?}");
        match changes.first() {
            Some(&(from, to)) => assert_eq!((from, to), (before, after), "{op:?}"),
            None => assert_eq!(before, after, "{op:?}: state changed silently"),
        }
        let adds = actions.contains(&Action::AddVips);
        let removes = actions.contains(&Action::RemoveVips);
        assert!(!(adds && removes), "{op:?}: {actions:?}");
        holds_vips = (holds_vips || adds) && !removes;
        assert_eq!(
            holds_vips,
            after == State::Master,
            "{op:?}: VIPs held only in Master"
        );
        for action in &actions {
            match action {
                // A Master resigns when it shuts down, or when it yields
                // right after announcing (issue 14 F14).
                Action::Send(advert) if advert.priority == 0 => {
                    assert!(
                        matches!(
                            (before, after),
                            (State::Master, State::Initialize | State::Backup)
                        ),
                        "{op:?}: {before} -> {after}"
                    );
                }
                Action::Send(_) | Action::Announce { .. } => {
                    assert_eq!(after, State::Master, "{op:?}: {action:?}");
                }
                _ => {}
            }
        }
        if after != State::Fault || matches!(op, FsmOp::LinkDown) {
            tx_fault_pending = false;
        }
        let armed = router.poll_timeout().is_some();
        assert_eq!(
            armed,
            matches!(after, State::Backup | State::Master) || tx_fault_pending,
            "{op:?} in {after}"
        );
        if handled_timeout {
            assert!(
                router.poll_timeout().is_none_or(|deadline| deadline > now),
                "{op:?}"
            );
        }
    }
}

// ===== a LAN =====

/// A few routers and a sequence of faults on a simulated LAN.
#[derive(Debug, Arbitrary)]
pub struct LanScript {
    pub v3: bool,
    pub priorities: [u8; 4],
    pub nodes: u8,
    pub ops: Vec<LanOp>,
}

/// One fault or event; node numbers wrap around the LAN's size.
#[derive(Debug, Arbitrary)]
pub enum LanOp {
    Run(u16),
    Kill(u8),
    Restart(u8),
    Shutdown(u8),
    Start(u8),
    Disconnect(u8),
    Reconnect(u8),
    LinkDown(u8),
    LinkUp(u8),
    SetPriority(u8, u8),
    Inject { src: IpAddr, advert: Advert },
}

/// Runs the faults, checking that every running host holds the VIPs exactly
/// when its router is Master; then heals everything (reconnect, restart,
/// link up, start) and checks that the LAN converges to exactly one Master,
/// the only host holding the VIPs.
pub fn run_lan(script: &LanScript) {
    let mut lan = Lan::new(Duration::from_millis(1));
    let size = usize::from(script.nodes % 3) + 2;
    for (i, &priority) in script.priorities.iter().take(size).enumerate() {
        let primary = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + i as u8));
        // An owner (255) never defers, so keep the priority to 1..=254.
        let node = lan
            .add(config(script.v3, priority.clamp(1, 254), true, primary))
            .unwrap();
        lan.start(node);
    }
    let check = |lan: &Lan| {
        for (i, node) in lan.nodes().iter().enumerate() {
            if node.running {
                assert_eq!(
                    node.holds_vips,
                    node.router.state() == State::Master,
                    "node {i}"
                );
            }
        }
    };
    for op in script.ops.iter().take(MAX_OPS) {
        let pick = |n: &u8| usize::from(*n) % size;
        match op {
            LanOp::Run(ms) => lan.run_for(Duration::from_millis(u64::from(*ms))),
            LanOp::Kill(n) => lan.kill(pick(n)),
            LanOp::Restart(n) => lan.restart(pick(n)),
            LanOp::Shutdown(n) => lan.shutdown(pick(n)),
            LanOp::Start(n) => lan.start(pick(n)),
            LanOp::Disconnect(n) => lan.disconnect(pick(n)),
            LanOp::Reconnect(n) => lan.reconnect(pick(n)),
            LanOp::LinkDown(n) => lan.link_down(pick(n)),
            LanOp::LinkUp(n) => lan.link_up(pick(n)),
            LanOp::SetPriority(n, p) => lan.set_priority(pick(n), *p),
            LanOp::Inject { src, advert } => {
                lan.inject(*src, advert.clone());
            }
        }
        check(&lan);
    }
    for node in 0..size {
        lan.reconnect(node);
        if !lan.node(node).running {
            lan.restart(node);
        }
        lan.link_up(node);
        lan.start(node);
    }
    // Longer than any Master_Down_Interval: a v3 Backup may have learned a
    // 40.95 s interval from an injected advert (3 × 40.95 s + skew).
    lan.run_for(Duration::from_secs(150));
    check(&lan);
    assert_eq!(lan.masters().len(), 1, "{:?}", lan.nodes());
    assert_eq!(lan.holders(), lan.masters());
}
