//! The REDIRECT rules on the real kernel, each test in a network namespace
//! of its own (a thread that unshared its network namespace; it vanishes
//! with the thread, so nothing leaks and the host's tables are untouched).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use cplb::netfilter::{Chain, Iptables, IptablesMode, Redirect, detect_mode};
use nix::sched::{CloneFlags, unshare};

fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET): tests run as root");
        // Commands spawned from this thread run in its namespace.
        run("ip", &["link", "set", "lo", "up"]);
        f()
    })
    .join()
    .expect("test thread")
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn saved_nat(mode: IptablesMode, v6: bool) -> Vec<String> {
    let family = if v6 { "ip6tables" } else { "iptables" };
    let flavour = match mode {
        IptablesMode::Legacy => "legacy",
        IptablesMode::Nft => "nft",
    };
    run(&format!("{family}-{flavour}-save"), &["-t", "nat"])
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_owned)
        .collect()
}

fn rule(vip: &str) -> Redirect {
    Redirect {
        vip: vip.parse().unwrap(),
        api_port: 6443,
        proxy_port: 6444,
    }
}

#[test]
fn rules_are_k0s_rules_added_once_and_removed_completely() {
    in_fresh_netns(|| {
        let mode = detect_mode();
        let iptables = Iptables::new(mode, true);
        let rules = [rule("192.0.2.100"), rule("2001:db8::100")];
        assert!(!iptables.all_present(&rules).unwrap());
        // Twice, as after a crash and restart: still one copy each.
        iptables.ensure(&rules).unwrap();
        iptables.ensure(&rules).unwrap();
        assert!(iptables.all_present(&rules).unwrap());
        assert_eq!(
            saved_nat(mode, false),
            vec![
                "-A PREROUTING -d 192.0.2.100/32 -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444",
                "-A OUTPUT -d 192.0.2.100/32 -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444",
            ]
        );
        assert_eq!(
            saved_nat(mode, true),
            vec![
                "-A PREROUTING -d 2001:db8::100/128 -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444",
                "-A OUTPUT -d 2001:db8::100/128 -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444",
            ]
        );
        assert!(iptables.remove(&rules).is_empty());
        assert!(saved_nat(mode, false).is_empty() && saved_nat(mode, true).is_empty());
        assert!(!iptables.all_present(&rules).unwrap());
        // Removing what is not there is not an error.
        assert!(iptables.remove(&rules).is_empty());
    });
}

#[test]
fn removal_also_deletes_duplicates_an_older_k0s_left() {
    in_fresh_netns(|| {
        let mode = detect_mode();
        let iptables = Iptables::new(mode, false);
        let binary = if mode == IptablesMode::Nft {
            "iptables-nft"
        } else {
            "iptables-legacy"
        };
        // k0s appends without -C: a restart after a crash duplicates the rule.
        let k0s_rule = [
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "-d",
            "192.0.2.100",
            "--dport",
            "6443",
            "-j",
            "REDIRECT",
            "--to-port",
            "6444",
        ];
        run(binary, &k0s_rule);
        run(binary, &k0s_rule);
        assert_eq!(saved_nat(mode, false).len(), 2);
        // cplb adopts the existing rule instead of adding a third...
        iptables.ensure(&[rule("192.0.2.100")]).unwrap();
        assert_eq!(saved_nat(mode, false).len(), 2);
        // ...and its removal leaves none.
        assert!(iptables.remove(&[rule("192.0.2.100")]).is_empty());
        assert!(saved_nat(mode, false).is_empty());
    });
}

#[test]
fn prerouting_only_when_the_output_rule_is_off() {
    in_fresh_netns(|| {
        let mode = detect_mode();
        let iptables = Iptables::new(mode, false);
        iptables.ensure(&[rule("192.0.2.100")]).unwrap();
        let saved = saved_nat(mode, false);
        assert_eq!(saved.len(), 1);
        assert!(saved[0].starts_with("-A PREROUTING "));
        assert!(
            !iptables
                .present(Chain::Output, &rule("192.0.2.100"))
                .unwrap()
        );
    });
}

#[test]
fn the_output_rule_sends_local_connections_to_the_proxy_port() {
    in_fresh_netns(|| {
        run("ip", &["addr", "add", "192.0.2.100/32", "dev", "lo"]);
        let proxy = TcpListener::bind("0.0.0.0:6444").unwrap();
        let vip: IpAddr = "192.0.2.100".parse().unwrap();
        // Nothing listens on 6443: without the rule the connection is refused.
        assert!(TcpStream::connect_timeout(&(vip, 6443).into(), Duration::from_secs(2)).is_err());

        let iptables = Iptables::new(detect_mode(), true);
        iptables.ensure(&[rule("192.0.2.100")]).unwrap();
        let mut client =
            TcpStream::connect_timeout(&(vip, 6443).into(), Duration::from_secs(2)).unwrap();
        client.write_all(b"ping").unwrap();
        let (mut accepted, _) = proxy.accept().unwrap();
        let mut buf = [0u8; 4];
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(accepted.local_addr().unwrap().port(), 6444);

        assert!(iptables.remove(&[rule("192.0.2.100")]).is_empty());
        assert!(TcpStream::connect_timeout(&(vip, 6443).into(), Duration::from_secs(2)).is_err());
    });
}
