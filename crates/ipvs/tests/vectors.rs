//! Byte-exact comparison with ipvsadm: each request in
//! vectors/ipvsadm-requests.txt (captured from ipvsadm 1.31 in the VM, the
//! command beside it) is built here from the typed API and must emit the
//! same generic-netlink payload, and parsing the capture must give back the
//! same typed message.

use std::net::IpAddr;

use cplb_ipvs::message::{DaemonAttrs, IpvsCmd, IpvsMessage, ServiceAttrs};
use cplb_ipvs::{Destination, ForwardMethod, Service, ServiceKey, SyncDaemon, SyncState};
use netlink_packet_core::{Emitable, ParseableParametrized};
use netlink_packet_generic::{GenlFamily, GenlHeader};

const VECTORS: &str = include_str!("vectors/ipvsadm-requests.txt");

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// ipvsadm sends the whole service struct even where only its identity
/// counts (destination requests, delete): an empty scheduler, no flags.
fn ipvsadm_service_ident(key: ServiceKey) -> ServiceAttrs {
    let mut s = Service::tcp(key.addr, key.port, "", None);
    s.key = key;
    s.attrs()
}

fn expected(command: &str) -> IpvsMessage {
    let vip = ServiceKey::tcp(ip("192.0.2.100"), 6443);
    let vip6 = ServiceKey::tcp(ip("2001:db8::100"), 6443);
    let with = |cmd, service: Option<ServiceAttrs>, dest: Option<Destination>| {
        let mut m = IpvsMessage::new(cmd);
        m.service = service;
        m.dest = dest.map(|d| d.attrs());
        m
    };
    let rs = |last: &str, fwd, w| Destination::new(ip(&format!("198.51.100.{last}")), 6443, fwd, w);
    match command {
        "ipvsadm -A -t 192.0.2.100:6443 -s rr -p 360" => with(
            IpvsCmd::NewService,
            Some(Service::tcp(vip.addr, 6443, "rr", Some(360)).attrs()),
            None,
        ),
        "ipvsadm -a -t 192.0.2.100:6443 -r 198.51.100.1:6443 -g -w 1" => with(
            IpvsCmd::NewDest,
            Some(ipvsadm_service_ident(vip)),
            Some(rs("1", ForwardMethod::DirectRoute, 1)),
        ),
        "ipvsadm -a -t 192.0.2.100:6443 -r 198.51.100.2:6443 -m -w 3 -x 100 -y 10" => {
            let mut d = rs("2", ForwardMethod::Masquerade, 3);
            d.upper_threshold = 100;
            d.lower_threshold = 10;
            with(IpvsCmd::NewDest, Some(ipvsadm_service_ident(vip)), Some(d))
        }
        "ipvsadm -e -t 192.0.2.100:6443 -r 198.51.100.2:6443 -i -w 0" => with(
            IpvsCmd::SetDest,
            Some(ipvsadm_service_ident(vip)),
            Some(rs("2", ForwardMethod::Tunnel, 0)),
        ),
        "ipvsadm -E -t 192.0.2.100:6443 -s wlc" => with(
            IpvsCmd::SetService,
            Some(Service::tcp(vip.addr, 6443, "wlc", None).attrs()),
            None,
        ),
        "ipvsadm -d -t 192.0.2.100:6443 -r 198.51.100.2:6443" => with(
            IpvsCmd::DelDest,
            Some(ipvsadm_service_ident(vip)),
            Some(rs("2", ForwardMethod::DirectRoute, 1)),
        ),
        "ipvsadm -A -t [2001:db8::100]:6443 -s sh" => with(
            IpvsCmd::NewService,
            Some(Service::tcp(vip6.addr, 6443, "sh", None).attrs()),
            None,
        ),
        "ipvsadm -D -t [2001:db8::100]:6443" => {
            with(IpvsCmd::DelService, Some(ipvsadm_service_ident(vip6)), None)
        }
        "ipvsadm --start-daemon master --mcast-interface lo --syncid 7" => {
            let mut m = IpvsMessage::new(IpvsCmd::NewDaemon);
            m.daemon = Some(
                SyncDaemon {
                    state: SyncState::Master,
                    interface: "lo".into(),
                    sync_id: 7,
                }
                .attrs(),
            );
            m
        }
        "ipvsadm --stop-daemon master" => {
            let mut m = IpvsMessage::new(IpvsCmd::DelDaemon);
            m.daemon = Some(DaemonAttrs {
                state: Some(1),
                mcast_ifname: Some(String::new()),
                sync_id: Some(0),
            });
            m
        }
        other => panic!("no expectation for {other:?}"),
    }
}

#[test]
fn requests_are_byte_identical_to_ipvsadm_and_parse_back() {
    let mut checked = 0;
    let mut lines = VECTORS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    while let Some(cmd_line) = lines.next() {
        let command = cmd_line.strip_prefix("$ ").expect("a `$ command` line");
        let flags = lines
            .next()
            .and_then(|l| l.strip_prefix("flags "))
            .expect("flags line");
        let payload = hex(lines.next().expect("payload line"));
        let genl = GenlHeader::parse(&payload).expect("genl header");

        if command == "ipvsadm -Ln" {
            // The two dumps ipvsadm -Ln sends: services, then each one's
            // real servers.
            assert!(flags.contains("0x300"), "dump flag: {flags}");
            let parsed = IpvsMessage::parse_with_param(&payload[4..], genl).expect("parse");
            match parsed.cmd {
                IpvsCmd::GetService => assert!(parsed.service.is_none()),
                IpvsCmd::GetDest => {
                    let key = ServiceKey::tcp(ip("192.0.2.100"), 6443);
                    assert_eq!(parsed.service, Some(key.attrs()));
                    let mut m = IpvsMessage::new(IpvsCmd::GetDest);
                    m.service = Some(key.attrs());
                    assert_eq!(emit(&m), payload[4..], "{command}");
                }
                other => panic!("unexpected {other:?} in {command}"),
            }
            checked += 1;
            continue;
        }

        let want = expected(command);
        assert_eq!(genl.cmd, want.command(), "{command}: command");
        assert_eq!(genl.version, 1, "{command}: version");
        assert_eq!(flags, "REQUEST|ACK", "{command}");
        assert_eq!(
            emit(&want),
            payload[4..],
            "{command}: emitted bytes differ from ipvsadm's"
        );
        let parsed = IpvsMessage::parse_with_param(&payload[4..], genl).expect("parse");
        assert_eq!(parsed, want, "{command}: parsed");
        checked += 1;
    }
    assert_eq!(checked, 12, "every captured request was checked");
}

fn emit(m: &IpvsMessage) -> Vec<u8> {
    let mut buf = vec![0u8; m.buffer_len()];
    m.emit(&mut buf);
    buf
}
