//! `io::netlink` against the real kernel, inside a network namespace of our
//! own. Needs root and iproute2. What the kernel holds is read back with
//! `ip -j addr`, not through the code under test.
#![cfg(feature = "io")]

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use cplb_e2e::{Host, Lab, in_netns, wait_for, wait_until};
use cplb_vrrp::io::netlink::{LinkEvent, LinkEvents, NetlinkError, Vip, VipLifetime, VipManager};
use futures_util::StreamExt;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn vip(s: &str) -> Vip {
    let (addr, len) = s.split_once('/').unwrap();
    Vip::new(ip(addr), len.parse().unwrap()).unwrap()
}

/// A lab with one host, and a closure run inside that host's namespace on
/// a current-thread runtime of its own.
fn with_host<F>(f: F)
where
    F: AsyncFnOnce(&Lab, Host) + Send,
{
    let mut lab = Lab::new().unwrap();
    let host = lab
        .add_host("a", Some("192.0.2.1/24"), Some("2001:db8::1/64"))
        .unwrap();
    let netns = host.netns.clone();
    let lab_ref = &lab;
    in_netns(&netns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(f(lab_ref, host));
    })
    .unwrap();
}

#[test]
fn resolves_the_interface() {
    with_host(async |lab, host| {
        let vips = VipManager::new().unwrap();
        let eth0 = vips.interface("eth0").await.unwrap();
        assert_eq!(eth0.name, "eth0");
        assert!(eth0.oper_up);
        let link = lab
            .ip(&host.netns, ["-j", "link", "show", "dev", "eth0"])
            .unwrap();
        assert!(
            link.contains(&format!("\"ifindex\":{},", eth0.index)),
            "{link}"
        );
        let mac = eth0.mac.unwrap();
        let mac = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        assert!(link.contains(&mac), "{mac} not in {link}");
        assert_eq!(vips.interface_by_index(eth0.index).await.unwrap(), eth0);

        assert!(matches!(
            vips.interface("nosuch0").await,
            Err(NetlinkError::NoSuchInterface(_))
        ));
    });
}

#[test]
fn adds_vips_as_secondary_and_nodad_and_removes_them_idempotently() {
    with_host(async |lab, host| {
        let vips = VipManager::new().unwrap();
        let index = vips.interface("eth0").await.unwrap().index;
        vips.add_vip(index, vip("192.0.2.100/24"), VipLifetime::Forever)
            .await
            .unwrap();
        vips.add_vip(index, vip("2001:db8::100/64"), VipLifetime::Forever)
            .await
            .unwrap();
        // Adding again is a replace, not an EEXIST.
        vips.add_vip(index, vip("192.0.2.100/24"), VipLifetime::Forever)
            .await
            .unwrap();

        let addrs = lab.addresses(&host.netns, "eth0").unwrap();
        let v4 = addrs.iter().find(|a| a.ip == ip("192.0.2.100")).unwrap();
        assert_eq!(v4.prefix_len, 24);
        assert!(
            v4.secondary,
            "a second address of 192.0.2.0/24 is secondary, like keepalived's"
        );
        assert_eq!(v4.valid_lft, None);
        let v6 = addrs.iter().find(|a| a.ip == ip("2001:db8::100")).unwrap();
        assert!(v6.nodad && !v6.tentative);

        // Our own listing agrees with the kernel's.
        let ours = vips.addresses(index).await.unwrap();
        assert!(
            ours.iter()
                .any(|a| a.addr == ip("192.0.2.100") && a.secondary && a.prefix_len == 24)
        );
        assert!(
            ours.iter()
                .any(|a| a.addr == ip("2001:db8::100") && a.nodad)
        );

        assert!(vips.remove_vip(index, ip("192.0.2.100")).await.unwrap());
        assert!(vips.remove_vip(index, ip("2001:db8::100")).await.unwrap());
        assert!(
            !vips.remove_vip(index, ip("192.0.2.100")).await.unwrap(),
            "already gone is fine"
        );
        let addrs = lab.addresses(&host.netns, "eth0").unwrap();
        assert!(
            !addrs
                .iter()
                .any(|a| a.ip == ip("192.0.2.100") || a.ip == ip("2001:db8::100"))
        );
        // The host's own addresses were not touched.
        assert!(addrs.iter().any(|a| a.ip == ip("192.0.2.1")));
        assert!(addrs.iter().any(|a| a.ip == ip("2001:db8::1")));
    });
}

#[test]
fn the_kernel_expires_a_leased_vip_by_itself() {
    with_host(async |lab, host| {
        let vips = VipManager::new().unwrap();
        let index = vips.interface("eth0").await.unwrap().index;
        let lease = VipLifetime::lease(Duration::from_secs(2));
        vips.add_vip(index, vip("192.0.2.101/32"), lease)
            .await
            .unwrap();
        vips.add_vip(index, vip("2001:db8::101/128"), lease)
            .await
            .unwrap();

        let addrs = lab.addresses(&host.netns, "eth0").unwrap();
        let v4 = addrs.iter().find(|a| a.ip == ip("192.0.2.101")).unwrap();
        assert!(v4.valid_lft.is_some_and(|s| s <= 2), "{v4:?}");
        let v6 = addrs.iter().find(|a| a.ip == ip("2001:db8::101")).unwrap();
        assert!(v6.valid_lft.is_some_and(|s| s <= 2), "{v6:?}");

        // Nobody touches them again: the kernel removes both.
        wait_until(
            "the kernel to expire the leased VIPs",
            Duration::from_secs(15),
            || {
                let addrs = lab.addresses(&host.netns, "eth0").unwrap();
                !addrs
                    .iter()
                    .any(|a| a.ip == ip("192.0.2.101") || a.ip == ip("2001:db8::101"))
            },
        )
        .unwrap();
    });
}

#[test]
fn adding_again_refreshes_the_lease() {
    with_host(async |lab, host| {
        let vips = VipManager::new().unwrap();
        let index = vips.interface("eth0").await.unwrap().index;
        let lease = VipLifetime::lease(Duration::from_secs(60));
        for (addr, v) in [
            (ip("192.0.2.102"), vip("192.0.2.102/24")),
            (ip("2001:db8::102"), vip("2001:db8::102/64")),
        ] {
            vips.add_vip(index, v, lease).await.unwrap();
            let valid_lft = || {
                let addrs = lab.addresses(&host.netns, "eth0").unwrap();
                addrs
                    .iter()
                    .find(|a| a.ip == addr)
                    .and_then(|a| a.valid_lft)
            };
            // Let the lease run down a little (the kernel counts seconds)...
            wait_for("the lease to run down", Duration::from_secs(10), || {
                valid_lft().filter(|&s| s <= 58)
            })
            .unwrap();
            // ...then a replace puts it back to the full 60 s.
            vips.add_vip(index, v, lease).await.unwrap();
            let refreshed = valid_lft().unwrap();
            assert!(
                refreshed >= 59,
                "{addr}: lease not refreshed, {refreshed} s left"
            );
        }
    });
}

#[test]
fn adds_many_vips_in_one_batch_and_reports_each_failure() {
    // Issue 15: a Master renews every lease with one netlink batch. The
    // kernel answers only the last request and the failed ones: each
    // answer must land on its own VIP.
    with_host(async |lab, host| {
        let vips = VipManager::new().unwrap();
        let index = vips.interface("eth0").await.unwrap().index;
        let lease = VipLifetime::lease(Duration::from_secs(60));
        // 300 VIPs: more than one datagram's worth (256).
        let mut batch: Vec<(u32, Vip)> = (0..300u32)
            .map(|i| {
                (
                    index,
                    vip(&format!("198.51.{}.{}/32", 100 + i / 250, 1 + i % 250)),
                )
            })
            .collect();
        // No interface 999999: ENODEV for those two alone, one of them last.
        batch.insert(7, (999_999, vip("198.51.102.1/32")));
        batch.push((999_999, vip("198.51.102.2/32")));
        let results = vips.add_vips(&batch, lease).await;
        assert_eq!(results.len(), batch.len());
        for (i, ((ifindex, v), result)) in batch.iter().zip(&results).enumerate() {
            if *ifindex == 999_999 {
                let Err(NetlinkError::Batch { source, .. }) = result else {
                    panic!("#{i} {v}: {result:?}");
                };
                assert_eq!(source.raw_os_error(), Some(ENODEV), "#{i} {v}");
            } else {
                assert!(result.is_ok(), "#{i} {v}: {result:?}");
            }
        }
        let present = lab.addresses(&host.netns, "eth0").unwrap();
        for (ifindex, v) in &batch {
            let found = present.iter().find(|a| a.ip == v.addr);
            if *ifindex == 999_999 {
                assert!(found.is_none(), "{v}");
            } else {
                assert!(
                    found.is_some_and(|a| a.valid_lft.is_some()),
                    "{v} not leased"
                );
            }
        }
        // A second round replaces them all.
        let again: Vec<(u32, Vip)> = batch.iter().copied().filter(|(i, _)| *i == index).collect();
        assert!(vips.add_vips(&again, lease).await.iter().all(Result::is_ok));
    });
}

/// errno-base.h
const ENODEV: i32 = 19;

#[test]
fn removes_stale_configured_vips_only() {
    with_host(async |lab, host| {
        let vips = VipManager::new().unwrap();
        let index = vips.interface("eth0").await.unwrap().index;
        // Left behind by a crashed run, with another prefix than configured,
        // and with a lease as the driver adds VIPs.
        lab.ip(
            &host.netns,
            [
                "addr",
                "add",
                "192.0.2.103/24",
                "dev",
                "eth0",
                "valid_lft",
                "60",
                "preferred_lft",
                "60",
            ],
        )
        .unwrap();
        lab.ip(
            &host.netns,
            [
                "addr",
                "add",
                "2001:db8::103/64",
                "dev",
                "eth0",
                "nodad",
                "valid_lft",
                "60",
                "preferred_lft",
                "60",
            ],
        )
        .unwrap();
        // Not ours.
        lab.ip(
            &host.netns,
            ["addr", "add", "192.0.2.104/24", "dev", "eth0"],
        )
        .unwrap();
        // A configured VIP that is a permanent address: the node's own, never
        // a leftover (issue 14, finding 1).
        lab.ip(
            &host.netns,
            ["addr", "add", "192.0.2.105/24", "dev", "eth0"],
        )
        .unwrap();

        let configured = [
            vip("192.0.2.103/32"),
            vip("2001:db8::103/128"),
            vip("192.0.2.105/32"),
        ];
        let permanent = vips
            .permanent_addresses(&configured.map(|v| v.addr))
            .await
            .unwrap();
        assert_eq!(
            permanent.iter().map(|a| a.addr).collect::<Vec<_>>(),
            vec![ip("192.0.2.105")]
        );
        let mut removed = vips.remove_stale(index, &configured).await.unwrap();
        removed.sort();
        assert_eq!(removed, vec![ip("192.0.2.103"), ip("2001:db8::103")]);
        assert!(matches!(
            vips.remove_leased_vip(index, ip("192.0.2.105")).await,
            Err(NetlinkError::PermanentAddress { .. })
        ));
        let addrs = lab.addresses(&host.netns, "eth0").unwrap();
        assert!(
            !addrs
                .iter()
                .any(|a| a.ip == ip("192.0.2.103") || a.ip == ip("2001:db8::103"))
        );
        assert!(addrs.iter().any(|a| a.ip == ip("192.0.2.105")));
        assert!(addrs.iter().any(|a| a.ip == ip("192.0.2.104")));
    });
}

#[test]
fn adds_and_removes_ipv6_address_labels() {
    with_host(async |lab, host| {
        let vips = VipManager::new().unwrap();
        let prefix: Ipv6Addr = "2001:db8::100".parse().unwrap();
        vips.add_addr_label(prefix, 128, 10000).await.unwrap();
        vips.add_addr_label(prefix, 128, 10000).await.unwrap();
        let labels = lab.addr_labels(&host.netns).unwrap();
        assert!(
            labels
                .iter()
                .any(|l| l.prefix == IpAddr::V6(prefix) && l.prefix_len == 128 && l.label == 10000)
        );

        vips.remove_addr_label(prefix, 128, 10000).await.unwrap();
        vips.remove_addr_label(prefix, 128, 10000).await.unwrap();
        let labels = lab.addr_labels(&host.netns).unwrap();
        assert!(!labels.iter().any(|l| l.prefix == IpAddr::V6(prefix)));
    });
}

/// The next event matching `want`, skipping others, within 10 s.
async fn next_matching(events: &mut LinkEvents, want: impl Fn(&LinkEvent) -> bool) -> LinkEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        // Bounded by the timeout around it.
        loop {
            let event = events.next().await.expect("event stream ended");
            if want(&event) {
                return event;
            }
        }
    })
    .await
    .expect("no matching netlink event within 10 s")
}

#[test]
fn reports_link_and_address_events() {
    with_host(async |lab, host| {
        let vips = VipManager::new().unwrap();
        let index = vips.interface("eth0").await.unwrap().index;
        let mut events = LinkEvents::subscribe().unwrap();

        vips.add_vip(index, vip("192.0.2.106/24"), VipLifetime::Forever)
            .await
            .unwrap();
        // Other address events (the link-local address leaving DAD) may
        // come in between: wait for ours.
        let vip_added = LinkEvent::AddressAdded(index, ip("192.0.2.106"));
        next_matching(&mut events, |e| *e == vip_added).await;

        // Someone else removes our VIP.
        lab.ip(
            &host.netns,
            ["addr", "del", "192.0.2.106/24", "dev", "eth0"],
        )
        .unwrap();
        let vip_removed = LinkEvent::AddressRemoved(index, ip("192.0.2.106"));
        next_matching(&mut events, |e| *e == vip_removed).await;

        // Carrier loss is a link down, and comes back as a link up.
        lab.cut_cable("a").unwrap();
        // A LinkUp may come first: the first notification seen for a link
        // (e.g. when IPv6 finishes DAD on it) reports its current state.
        let down = next_matching(&mut events, |e| matches!(e, LinkEvent::LinkDown(_))).await;
        assert_eq!(down, LinkEvent::LinkDown(index));
        lab.plug_cable("a").unwrap();
        let up = next_matching(&mut events, |e| matches!(e, LinkEvent::LinkUp(_))).await;
        assert_eq!(up, LinkEvent::LinkUp(index));

        // Administratively down too.
        lab.set_host_link("a", false).unwrap();
        let down = next_matching(&mut events, |e| matches!(e, LinkEvent::LinkDown(_))).await;
        assert_eq!(down, LinkEvent::LinkDown(index));
    });
}

#[test]
fn own_ipv4_vip_adds_are_not_read_back() {
    // Issue 15: a Master renews each VIP's lease with every advert; the
    // kernel's notification of that add must not wake the event listener.
    with_host(async |lab, host| {
        let ours = VipManager::new().unwrap();
        let index = ours.interface("eth0").await.unwrap().index;
        let mut events = LinkEvents::subscribe_ignoring_adds_of(&ours, None).unwrap();
        let lease = VipLifetime::lease(Duration::from_secs(60));
        ours.add_vip(index, vip("192.0.2.107/32"), lease)
            .await
            .unwrap();
        ours.add_vip(index, vip("192.0.2.107/32"), lease)
            .await
            .unwrap();
        // Someone else's add, then someone removing ours: both seen, and
        // nothing of our two adds before them.
        lab.ip(
            &host.netns,
            ["addr", "add", "192.0.2.108/32", "dev", "eth0"],
        )
        .unwrap();
        lab.ip(
            &host.netns,
            ["addr", "del", "192.0.2.107/32", "dev", "eth0"],
        )
        .unwrap();
        let v4 = |e: &LinkEvent| matches!(e, LinkEvent::AddressAdded(_, a) | LinkEvent::AddressRemoved(_, a) if a.is_ipv4());
        assert_eq!(
            next_matching(&mut events, v4).await,
            LinkEvent::AddressAdded(index, ip("192.0.2.108"))
        );
        assert_eq!(
            next_matching(&mut events, v4).await,
            LinkEvent::AddressRemoved(index, ip("192.0.2.107"))
        );
    });
}

#[test]
fn a_receive_buffer_overrun_is_reported_and_events_continue() {
    // Issue 14 F11: the kernel drops notifications when the socket's
    // receive buffer is full; that must come out as an event, not vanish.
    with_host(async |lab, host| {
        let mut events = LinkEvents::subscribe_with_buffer(1).unwrap();
        lab.ip(
            &host.netns,
            [
                "link", "add", "spam0", "type", "veth", "peer", "name", "spam1",
            ],
        )
        .unwrap();
        lab.ip(&host.netns, ["link", "set", "spam0", "up"]).unwrap();
        let lines: Vec<String> = (1..=2000)
            .map(|i: u32| format!("addr add 2001:db8:1::{i:x}/128 dev spam0 nodad"))
            .collect();
        let batch = std::env::temp_dir().join(format!("cplb-{}-overrun.batch", std::process::id()));
        std::fs::write(&batch, lines.join("\n") + "\n").unwrap();
        // The runtime's only thread is blocked while the burst runs: nothing
        // reads the socket, so it overflows.
        let out = lab.ip(&host.netns, ["-batch", batch.to_str().unwrap()]);
        let _ = std::fs::remove_file(&batch);
        out.unwrap();
        next_matching(&mut events, |e| *e == LinkEvent::Overrun).await;
        // Later changes are still reported.
        lab.ip(&host.netns, ["link", "set", "spam0", "down"])
            .unwrap();
        next_matching(&mut events, |e| matches!(e, LinkEvent::LinkDown(_))).await;
    });
}
