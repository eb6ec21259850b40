//! The REDIRECT rules on the real kernel, both back ends, each test in a
//! network namespace of its own (a thread that unshared its network
//! namespace; it vanishes with the thread, so nothing leaks and the host's
//! tables are untouched).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use cplb::config::Netfilter;
use cplb::netfilter::{Chain, Iptables, IptablesMode, Nftables, Redirect, Rules, detect_mode};
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

/// A connection to `vip:6443` lands on `proxy` (listening on :6444), with
/// its bytes.
fn assert_redirected_to_proxy(vip: IpAddr, proxy: &TcpListener) {
    let mut client =
        TcpStream::connect_timeout(&(vip, 6443).into(), Duration::from_secs(2)).unwrap();
    client.write_all(b"ping").unwrap();
    let (mut accepted, _) = proxy.accept().unwrap();
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    assert_eq!(accepted.local_addr().unwrap().port(), 6444);
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
        // What the status page shows is what iptables-save prints.
        let mut saved = saved_nat(mode, false);
        saved.extend(saved_nat(mode, true));
        assert_eq!(iptables.describe(&rules), saved);
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
        assert_redirected_to_proxy(vip, &proxy);

        assert!(iptables.remove(&[rule("192.0.2.100")]).is_empty());
        assert!(TcpStream::connect_timeout(&(vip, 6443).into(), Duration::from_secs(2)).is_err());
    });
}

/// Every rule in the netns's nftables ruleset, as
/// `table <family> <table> chain <chain>: <rule>` (the form of
/// `Nftables::describe`), from `nft list ruleset`.
fn nft_rules() -> Vec<String> {
    let listing = run("nft", &["list", "ruleset"]);
    let mut table = String::new();
    let mut chain = String::new();
    let mut rules = Vec::new();
    for line in listing.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("table ") {
            table = rest.trim_end_matches(" {").to_string();
        } else if let Some(rest) = line.strip_prefix("chain ") {
            chain = rest.trim_end_matches(" {").to_string();
        } else if !(line.is_empty() || line == "}" || line.starts_with("type ")) {
            rules.push(format!("table {table} chain {chain}: {line}"));
        }
    }
    rules
}

/// The tables in the netns's ruleset, as `<family> <name>`.
fn nft_tables() -> Vec<String> {
    run("nft", &["list", "tables"])
        .lines()
        .filter_map(|l| l.strip_prefix("table "))
        .map(str::to_owned)
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn nftables_rules_are_added_once_and_removed_completely() {
    in_fresh_netns(|| {
        let nft = Nftables::new(true);
        let rules = [rule("192.0.2.100"), rule("2001:db8::100")];
        assert!(!nft.all_present(&rules).unwrap());
        // Twice, as after a crash and restart: still one copy each.
        nft.ensure(&rules).unwrap();
        nft.ensure(&rules).unwrap();
        assert!(nft.all_present(&rules).unwrap());
        for chain in [Chain::Prerouting, Chain::Output] {
            for r in &rules {
                assert!(nft.present(chain, r).unwrap());
            }
        }
        assert_eq!(
            sorted(nft_rules()),
            sorted(vec![
                "table ip cplb chain prerouting: ip daddr 192.0.2.100 tcp dport 6443 redirect to :6444".into(),
                "table ip cplb chain output: ip daddr 192.0.2.100 tcp dport 6443 redirect to :6444".into(),
                "table ip6 cplb chain prerouting: ip6 daddr 2001:db8::100 tcp dport 6443 redirect to :6444".into(),
                "table ip6 cplb chain output: ip6 daddr 2001:db8::100 tcp dport 6443 redirect to :6444".into(),
            ])
        );
        // What the status page shows is what nft prints.
        assert_eq!(sorted(nft.describe(&rules)), sorted(nft_rules()));
        let listing = run("nft", &["list", "table", "ip", "cplb"]);
        assert!(
            listing.contains("type nat hook prerouting priority dstnat;")
                && listing.contains("type nat hook output priority -100;"),
            "{listing}"
        );
        // A rule for another VIP or port is not "present".
        let other = Redirect {
            proxy_port: 7444,
            ..rule("192.0.2.100")
        };
        assert!(!nft.present(Chain::Prerouting, &other).unwrap());
        assert!(!nft.all_present(&[rule("192.0.2.101")]).unwrap());

        assert!(nft.remove().is_empty());
        assert!(nft_tables().is_empty(), "{:?}", nft_tables());
        assert!(!nft.all_present(&rules).unwrap());
        // Removing what is not there is not an error.
        assert!(nft.remove().is_empty());
    });
}

#[test]
fn nftables_removal_with_no_table_is_not_an_error() {
    in_fresh_netns(|| {
        let nft = Nftables::new(true);
        assert!(nft.remove().is_empty());
        assert!(nft_tables().is_empty());
        assert!(
            !nft.present(Chain::Prerouting, &rule("192.0.2.100"))
                .unwrap()
        );
    });
}

#[test]
fn nftables_ensure_replaces_what_is_no_longer_configured() {
    in_fresh_netns(|| {
        Nftables::new(true)
            .ensure(&[rule("192.0.2.100"), rule("2001:db8::100")])
            .unwrap();
        // Restarted with the OUTPUT rule off and the IPv6 VIP gone.
        let nft = Nftables::new(false);
        nft.ensure(&[rule("192.0.2.100")]).unwrap();
        assert_eq!(nft_tables(), vec!["ip cplb"]);
        assert_eq!(
            nft_rules(),
            vec![
                "table ip cplb chain prerouting: ip daddr 192.0.2.100 tcp dport 6443 redirect to :6444"
            ]
        );
        assert!(nft.all_present(&[rule("192.0.2.100")]).unwrap());
        assert!(!nft.present(Chain::Output, &rule("192.0.2.100")).unwrap());
        // No VIPs at all: no tables.
        nft.ensure(&[]).unwrap();
        assert!(nft_tables().is_empty());
    });
}

#[test]
fn nftables_leaves_other_tables_alone() {
    in_fresh_netns(|| {
        run("nft", &["add", "table", "ip", "filter"]);
        run(
            "nft",
            &["add chain ip filter input { type filter hook input priority 0; }"],
        );
        run("nft", &["add rule ip filter input tcp dport 22 accept"]);
        let nft = Nftables::with_table("cplb-test", true);
        assert_eq!(nft.table(), "cplb-test");
        nft.ensure(&[rule("192.0.2.100")]).unwrap();
        assert_eq!(sorted(nft_tables()), vec!["ip cplb-test", "ip filter"]);
        assert!(nft.all_present(&[rule("192.0.2.100")]).unwrap());
        // The default table name is another table.
        assert!(
            !Nftables::new(true)
                .all_present(&[rule("192.0.2.100")])
                .unwrap()
        );
        assert!(nft.remove().is_empty());
        assert_eq!(
            nft_rules(),
            vec!["table ip filter chain input: tcp dport 22 accept"]
        );
    });
}

#[test]
fn nftables_output_rule_sends_local_connections_to_the_proxy_port() {
    in_fresh_netns(|| {
        run("ip", &["addr", "add", "192.0.2.100/32", "dev", "lo"]);
        run(
            "ip",
            &["addr", "add", "2001:db8::100/128", "dev", "lo", "nodad"],
        );
        // Dual-stack, as the proxy listens on both families.
        let proxy = TcpListener::bind("[::]:6444").unwrap();
        let vips: [IpAddr; 2] = [
            "192.0.2.100".parse().unwrap(),
            "2001:db8::100".parse().unwrap(),
        ];
        for vip in vips {
            // Nothing listens on 6443: without the rule the connection is refused.
            assert!(
                TcpStream::connect_timeout(&(vip, 6443).into(), Duration::from_secs(2)).is_err()
            );
        }

        let rules = Rules::new(Netfilter::Nftables, true);
        assert_eq!(rules.backend_name(), "nftables");
        let redirects = [rule("192.0.2.100"), rule("2001:db8::100")];
        rules.ensure(&redirects).unwrap();
        assert!(rules.all_present(&redirects).unwrap());
        for vip in vips {
            assert_redirected_to_proxy(vip, &proxy);
        }

        assert!(rules.remove(&redirects).is_empty());
        for vip in vips {
            assert!(
                TcpStream::connect_timeout(&(vip, 6443).into(), Duration::from_secs(2)).is_err()
            );
        }
    });
}

#[test]
fn the_front_picks_the_configured_back_end() {
    in_fresh_netns(|| {
        let rules = Rules::new(Netfilter::Iptables, false);
        let name = rules.backend_name();
        assert!(
            name == "iptables-nft" || name == "iptables-legacy",
            "{name}"
        );
        let redirects = [rule("192.0.2.100")];
        assert_eq!(
            rules.describe(&redirects),
            vec![
                "-A PREROUTING -d 192.0.2.100/32 -p tcp -m tcp --dport 6443 -j REDIRECT --to-ports 6444"
            ]
        );
        rules.ensure(&redirects).unwrap();
        assert!(rules.all_present(&redirects).unwrap());
        // The iptables rules do not show up as ours in nftables.
        assert!(
            !Rules::new(Netfilter::Nftables, false)
                .all_present(&redirects)
                .unwrap()
        );
        assert!(rules.remove(&redirects).is_empty());
        assert!(!rules.all_present(&redirects).unwrap());
    });
}
