//! `io::socket` on real packets between two network namespaces joined by a
//! bridge. Needs root and iproute2. What went on the wire is checked with an
//! AF_PACKET capture socket on the receiving host.
#![cfg(feature = "io")]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use cplb_e2e::{Lab, LinkInfo, in_netns};
use cplb_vrrp::io::rx::{Classifier, RxDrop};
use cplb_vrrp::io::socket::{
    ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, PacketSocket, RecvdPacket, VRRP_TOS, VRRP_TTL, VrrpSocket,
};
use cplb_vrrp::wire::{
    Advert, Auth, Centis, GARP_FRAME_LEN, MULTICAST_V4, MULTICAST_V6, UNSOLICITED_NA_FRAME_LEN,
    Version, gratuitous_arp, unsolicited_na,
};
use tokio::runtime::Runtime;

const WAIT: Duration = Duration::from_secs(10);

/// The receive path of one instance (index 0) with VRID `vrid` whose advert
/// source is `own`.
fn rx_path(unicast: bool, own: IpAddr, vrid: u8, peers: &[IpAddr]) -> Classifier {
    let mut c = Classifier::new(unicast);
    assert!(c.add_instance(0, vrid, own, peers.to_vec()));
    c
}

struct TwoHosts {
    lab: Lab,
    runtime: Runtime,
    a: LinkInfo,
    b: LinkInfo,
    a_ns: String,
    b_ns: String,
}

impl TwoHosts {
    fn new() -> TwoHosts {
        let mut lab = Lab::new().unwrap();
        let a = lab
            .add_host("a", Some("192.0.2.1/24"), Some("2001:db8::1/64"))
            .unwrap();
        let b = lab
            .add_host("b", Some("192.0.2.2/24"), Some("2001:db8::2/64"))
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        TwoHosts {
            a: lab.link(&a.netns, "eth0").unwrap(),
            b: lab.link(&b.netns, "eth0").unwrap(),
            a_ns: a.netns,
            b_ns: b.netns,
            lab,
            runtime,
        }
    }

    /// Runs `f` inside `netns` with this runtime entered: sockets it opens
    /// live in that namespace and are driven by this runtime.
    fn open_in<T: Send>(&self, netns: &str, f: impl FnOnce() -> T + Send) -> T {
        let handle = self.runtime.handle().clone();
        in_netns(netns, move || {
            let _guard = handle.enter();
            f()
        })
        .unwrap()
    }
}

fn advert(version: Version, vrid: u8, addrs: Vec<IpAddr>) -> Advert {
    Advert {
        version,
        vrid,
        priority: 150,
        interval: Centis::from_secs(1),
        auth: Auth::None,
        addrs,
    }
}

fn emit(advert: &Advert, src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let mut buf = vec![0; advert.buffer_len()];
    let n = advert.emit(src, dst, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

async fn recv(socket: &VrrpSocket) -> RecvdPacket {
    tokio::time::timeout(WAIT, socket.recv())
        .await
        .expect("no VRRP packet within 10 s")
        .unwrap()
}

/// The next captured frame that `want` accepts, within 10 s.
async fn capture(socket: &PacketSocket, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    tokio::time::timeout(WAIT, async {
        let mut buf = vec![0; 2048];
        // Bounded by the timeout around it.
        loop {
            let n = socket.recv(&mut buf).await.unwrap();
            if want(&buf[..n]) {
                return buf[..n].to_vec();
            }
        }
    })
    .await
    .expect("frame not captured within 10 s")
}

fn is_vrrp_v4(frame: &[u8]) -> bool {
    frame.len() > 34 && frame[12..14] == ETH_P_IP.to_be_bytes() && frame[23] == 112
}

#[test]
fn ipv4_adverts_go_out_like_keepalived_and_arrive_multicast_and_unicast() {
    let t = TwoHosts::new();
    let (a_ip, b_ip) = (
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
    );
    let sender = t.open_in(&t.a_ns, || {
        VrrpSocket::open_v4(t.a.ifindex, "eth0").unwrap()
    });
    let (receiver, wire) = t.open_in(&t.b_ns, || {
        (
            VrrpSocket::open_v4(t.b.ifindex, "eth0").unwrap(),
            PacketSocket::open(t.b.ifindex, ETH_P_IP).unwrap(),
        )
    });

    t.runtime.block_on(async {
        let group = IpAddr::V4(MULTICAST_V4);
        let v3 = advert(Version::V3, 51, vec!["192.0.2.100".parse().unwrap()]);
        sender
            .send(&emit(&v3, a_ip, group), a_ip, group)
            .await
            .unwrap();
        let got = recv(&receiver).await;
        assert_eq!(
            (got.src, got.dst, got.ttl, got.tos),
            (a_ip, group, VRRP_TTL, Some(VRRP_TOS))
        );
        let classifier = rx_path(false, b_ip, 51, &[]);
        assert_eq!(classifier.classify(&got), Ok((0, v3.clone())));

        // On the wire: from A's own MAC to the group's MAC 01:00:5e:00:00:12,
        // TOS 0xc0, TTL 255.
        let frame = capture(&wire, is_vrrp_v4).await;
        assert_eq!(frame[0..6], [0x01, 0x00, 0x5e, 0x00, 0x00, 0x12]);
        assert_eq!(frame[6..12], t.a.mac);
        assert_eq!((frame[15], frame[22]), (VRRP_TOS, VRRP_TTL));

        // Unicast to a peer, VRRPv2 this time, from the given source.
        let v2 = advert(Version::V2, 52, vec!["192.0.2.101".parse().unwrap()]);
        sender
            .send(&emit(&v2, a_ip, b_ip), a_ip, b_ip)
            .await
            .unwrap();
        let got = recv(&receiver).await;
        assert_eq!(
            (got.src, got.dst, got.ttl, got.tos),
            (a_ip, b_ip, VRRP_TTL, Some(VRRP_TOS))
        );
        let unicast = rx_path(true, b_ip, 52, &[a_ip]);
        assert_eq!(unicast.classify(&got), Ok((0, v2)));
        // The same packet in unicast mode with another peer list is dropped.
        let others = rx_path(true, b_ip, 52, &["192.0.2.9".parse().unwrap()]);
        assert_eq!(others.classify(&got), Err(RxDrop::NotAPeer { instance: 0 }));

        // A corrupted advert arrives, and is dropped with its reason.
        let mut bad = emit(&v3, a_ip, group);
        bad[7] ^= 0x55;
        sender.send(&bad, a_ip, group).await.unwrap();
        let got = recv(&receiver).await;
        assert_eq!(
            classifier.classify(&got).unwrap_err().label(),
            "bad_checksum"
        );

        // A family mismatch is refused before anything is sent.
        let v6 = IpAddr::V6(MULTICAST_V6);
        assert!(sender.send(&bad, a_ip, v6).await.is_err());
    });
}

#[test]
fn ipv6_adverts_carry_hop_limit_255_and_tclass_cs6() {
    let t = TwoHosts::new();
    let a_ll = IpAddr::V6(t.lab.link_local(&t.a_ns, "eth0", WAIT).unwrap());
    let b_ll = IpAddr::V6(t.lab.link_local(&t.b_ns, "eth0", WAIT).unwrap());
    let sender = t.open_in(&t.a_ns, || {
        VrrpSocket::open_v6(t.a.ifindex, "eth0").unwrap()
    });
    let receiver = t.open_in(&t.b_ns, || {
        VrrpSocket::open_v6(t.b.ifindex, "eth0").unwrap()
    });

    t.runtime.block_on(async {
        let group = IpAddr::V6(MULTICAST_V6);
        // RFC 5798 §5.1.2.1: sent from the link-local address.
        let v3 = advert(Version::V3, 61, vec!["2001:db8::100".parse().unwrap()]);
        sender
            .send(&emit(&v3, a_ll, group), a_ll, group)
            .await
            .unwrap();
        let got = recv(&receiver).await;
        assert_eq!(
            (got.src, got.dst, got.ttl, got.tos),
            (a_ll, group, VRRP_TTL, Some(VRRP_TOS))
        );
        let multicast = rx_path(false, b_ll, 61, &[]);
        assert_eq!(multicast.classify(&got), Ok((0, v3.clone())));

        // Unicast between global addresses.
        let (a_ip, b_ip): (IpAddr, IpAddr) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        );
        sender
            .send(&emit(&v3, a_ip, b_ip), a_ip, b_ip)
            .await
            .unwrap();
        let got = recv(&receiver).await;
        assert_eq!((got.src, got.dst, got.ttl), (a_ip, b_ip, VRRP_TTL));
        assert_eq!(
            rx_path(true, b_ip, 61, &[a_ip]).classify(&got),
            Ok((0, v3.clone()))
        );
        // A unicast destination is not for a multicast instance
        // (keepalived vrrp.c:1264-1278).
        assert_eq!(
            multicast.classify(&got),
            Err(RxDrop::WrongDestination(b_ip))
        );
    });
}

#[test]
fn gratuitous_arp_and_unsolicited_na_reach_the_other_host() {
    let t = TwoHosts::new();
    // The NA needs no link-local, but wait for DAD to settle so the capture
    // below does not race the kernel's own neighbour discovery noise.
    t.lab.link_local(&t.a_ns, "eth0", WAIT).unwrap();
    let sender = t.open_in(&t.a_ns, || PacketSocket::open(t.a.ifindex, 0).unwrap());
    let (arp_capture, ipv6_capture) = t.open_in(&t.b_ns, || {
        (
            PacketSocket::open(t.b.ifindex, ETH_P_ARP).unwrap(),
            PacketSocket::open(t.b.ifindex, ETH_P_IPV6).unwrap(),
        )
    });

    t.runtime.block_on(async {
        let vip4 = Ipv4Addr::new(192, 0, 2, 100);
        let mut garp = vec![0; GARP_FRAME_LEN];
        let n = gratuitous_arp(t.a.mac, vip4, &mut garp).unwrap();
        sender.send(&garp[..n]).await.unwrap();
        let got = capture(&arp_capture, |f| f.len() >= n && f[28..32] == vip4.octets()).await;
        assert_eq!(got[..n], garp[..n], "the frame arrives as sent");
        assert_eq!(got[6..12], t.a.mac);

        let vip6: Ipv6Addr = "2001:db8::100".parse().unwrap();
        let mut na = vec![0; UNSOLICITED_NA_FRAME_LEN];
        let n = unsolicited_na(t.a.mac, vip6, &mut na).unwrap();
        sender.send(&na[..n]).await.unwrap();
        // ICMPv6 (next header 58) type 136, neighbour advertisement.
        let got = capture(&ipv6_capture, |f| {
            f.len() >= n && f[20] == 58 && f[54] == 136 && f[62..78] == vip6.octets()
        })
        .await;
        assert_eq!(got[..n], na[..n]);
        // The hop limit of an NA is 255 (RFC 4861 §7.1.2).
        assert_eq!(got[21], 255);
    });
}
