//! cplb-ipvs against a real kernel IPVS, in a qemu VM (crate cplb-vm; the
//! host kernel has no ip_vs). One boot; every check in a network namespace
//! made inside the VM, driven by the `cplb-ipvs-probe` binary of this crate
//! and cross-checked with ipvsadm and ip.

use cplb_vm::{RunOutput, Vm};

const PROBE: &str = env!("CARGO_BIN_EXE_cplb-ipvs-probe");

struct Ns<'a> {
    vm: &'a Vm,
    name: String,
}

impl Ns<'_> {
    /// Runs `script` with `$NS` set and `$P` = the probe run inside the
    /// namespace; fails the test on a non-zero status.
    fn ok(&self, script: &str) -> RunOutput {
        let out = self.sh(script);
        assert!(out.success(), "script failed:\n{script}\n{out}");
        out
    }

    fn sh(&self, script: &str) -> RunOutput {
        let full = format!(
            "NS={ns}\nP=\"ip netns exec {ns} {PROBE}\"\nexport RUST_BACKTRACE=1\n{script}\n",
            ns = self.name
        );
        self.vm.run(&full).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `ipvsadm --save -n` in the namespace, lines sorted (the kernel's
    /// order of real servers is not part of the contract).
    fn ipvs_save(&self) -> Vec<String> {
        let out = self.ok("ip netns exec $NS ipvsadm --save -n");
        let mut lines: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    }
}

fn sorted(lines: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn changes(out: &RunOutput) -> Vec<&str> {
    out.stdout.lines().collect()
}

/// One boot for both phases (a boot costs several seconds of TCG).
#[test]
fn ipvs_in_a_real_kernel() {
    let started = std::time::Instant::now();
    let vm = Vm::boot().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("cplb-vm: boot took {:?}", vm.boot_time());
    services_dummy_link_and_sync_daemon(&vm);
    eprintln!(
        "cplb-vm: control-plane checks done at {:?}",
        started.elapsed()
    );
    direct_routing_balances_connections(&vm);
    eprintln!("cplb-vm: traffic checks done at {:?}", started.elapsed());
}

fn services_dummy_link_and_sync_daemon(vm: &Vm) {
    let ns = Ns {
        vm,
        name: format!("cplbt-{}-ipvs", std::process::id()),
    };
    ns.ok("ip netns add $NS && ip -n $NS link set lo up");

    // dummyvip0: a link of another kind with that name is replaced...
    ns.ok("ip -n $NS link add dummyvip0 type veth peer name cplbt-peer");
    ns.ok("$P dummy-ensure 192.0.2.100");
    let link = ns.ok("ip -n $NS -d -o link show dummyvip0").stdout;
    assert!(link.contains(" dummy "), "{link}");
    assert!(
        link.contains("state UNKNOWN") || link.contains(",UP"),
        "{link}"
    );
    let index_before = link.split(':').next().unwrap_or_default().to_owned();
    // ...an existing dummy is kept, a stale address removed, the VIP is /32.
    ns.ok("ip -n $NS addr add 192.0.2.7/24 dev dummyvip0");
    ns.ok("$P dummy-ensure 192.0.2.100");
    let link = ns.ok("ip -n $NS -d -o link show dummyvip0").stdout;
    assert_eq!(
        link.split(':').next().unwrap_or_default(),
        index_before,
        "dummy was re-created"
    );
    let addrs = ns.ok("ip -n $NS -4 -o addr show dev dummyvip0").stdout;
    let inet: Vec<&str> = addrs
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(inet, ["192.0.2.100/32"], "{addrs}");

    // k0s's rendering: rr, DR, persistence 360, three real servers weight 1.
    let out = ns.ok("$P reconcile 192.0.2.100:6443 rr 360 dr \
         198.51.100.1:6443:1 198.51.100.2:6443:1 198.51.100.3:6443:1");
    assert_eq!(changes(&out).len(), 4, "{out}");
    let k0s = [
        "-A -t 192.0.2.100:6443 -s rr -p 360",
        "-a -t 192.0.2.100:6443 -r 198.51.100.1:6443 -g -w 1",
        "-a -t 192.0.2.100:6443 -r 198.51.100.2:6443 -g -w 1",
        "-a -t 192.0.2.100:6443 -r 198.51.100.3:6443 -g -w 1",
    ];
    assert_eq!(ns.ipvs_save(), sorted(&k0s));

    // Same desired state: nothing to do.
    let out = ns.ok("$P reconcile 192.0.2.100:6443 rr 360 dr \
         198.51.100.3:6443:1 198.51.100.1:6443:1 198.51.100.2:6443:1");
    assert!(out.stdout.is_empty(), "{out}");

    // .3 leaves: drained (weight 0) first, removed by the next reconcile.
    let two = "$P reconcile 192.0.2.100:6443 rr 360 dr 198.51.100.1:6443:1 198.51.100.2:6443:1";
    let out = ns.ok(two);
    assert_eq!(changes(&out).len(), 1, "{out}");
    assert!(out.stdout.starts_with("DrainDest("), "{out}");
    let mut drained = k0s.to_vec();
    drained[3] = "-a -t 192.0.2.100:6443 -r 198.51.100.3:6443 -g -w 0";
    assert_eq!(ns.ipvs_save(), sorted(&drained));
    let out = ns.ok(two);
    assert!(out.stdout.starts_with("DelDest("), "{out}");
    assert_eq!(ns.ipvs_save(), sorted(&k0s[..3]));

    // A scheduler change edits the service in place (no re-creation).
    let out =
        ns.ok("$P reconcile 192.0.2.100:6443 wlc 360 dr 198.51.100.1:6443:1 198.51.100.2:6443:1");
    assert_eq!(changes(&out).len(), 1, "{out}");
    assert!(out.stdout.starts_with("EditService("), "{out}");
    assert!(
        ns.ipvs_save()
            .contains(&"-A -t 192.0.2.100:6443 -s wlc -p 360".to_owned())
    );

    // Reading back: services and real servers with their counters.
    let list = ns.ok("$P list && $P info").stdout;
    assert!(
        list.contains("tcp/192.0.2.100:6443 wlc persistence Some(360)"),
        "{list}"
    );
    assert!(
        list.contains("-> 198.51.100.1:6443 DirectRoute weight 1 active 0 inactive 0"),
        "{list}"
    );
    assert!(list.contains("version 0x010201"), "{list}");

    // Sync daemon: start as master, seen by ipvsadm and by us; stop.
    ns.ok("$P sync-start master lo 7");
    let daemons = ns
        .ok("ip netns exec $NS ipvsadm -L --daemon && $P sync-show")
        .stdout;
    assert!(
        daemons.contains("master sync daemon (mcast=lo, syncid=7,"),
        "{daemons}"
    );
    assert!(daemons.contains("Master lo 7"), "{daemons}");
    ns.ok("$P sync-stop master");
    let daemons = ns.ok("$P sync-show").stdout;
    assert!(daemons.is_empty(), "{daemons}");

    // Errors are typed and carry the kernel's answer.
    let out = ns.sh("$P sync-stop backup");
    assert!(!out.success(), "{out}");

    // IPv6 (k0s's cplb-ipvs-ipv6): the VIP as /128 next to the IPv4 one,
    // and a service beside the first.
    ns.ok("$P dummy-ensure 192.0.2.100 2001:db8::100");
    let addrs = ns
        .ok("ip -n $NS -o addr show dev dummyvip0 scope global")
        .stdout;
    let inet: Vec<&str> = addrs
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    assert_eq!(inet, ["192.0.2.100/32", "2001:db8::100/128"], "{addrs}");
    ns.ok("$P reconcile [2001:db8::100]:6443 sh 0 dr [2001:db8::1]:6443:1");
    let save = ns.ipvs_save();
    for line in [
        "-A -t [2001:db8::100]:6443 -s sh",
        "-a -t [2001:db8::100]:6443 -r [2001:db8::1]:6443 -g -w 1",
        "-A -t 192.0.2.100:6443 -s wlc -p 360",
    ] {
        assert!(
            save.contains(&line.to_owned()),
            "{line} missing from {save:?}"
        );
    }

    // Tear down: each service (owned, no longer desired) goes alone, then
    // the link.
    let out = ns.ok("$P reconcile 192.0.2.100:6443");
    assert!(out.stdout.starts_with("DelService("), "{out}");
    assert!(
        ns.ipvs_save().iter().all(|l| l.contains("2001:db8")),
        "{:?}",
        ns.ipvs_save()
    );
    ns.ok("$P reconcile [2001:db8::100]:6443");
    assert!(ns.ipvs_save().is_empty());
    assert_eq!(ns.ok("$P dummy-delete").stdout, "deleted true\n");
    assert!(!ns.sh("ip -n $NS link show dummyvip0").success());
    assert_eq!(ns.ok("$P dummy-delete").stdout, "deleted false\n");
    ns.ok("ip netns del $NS");
}

/// Traffic through IPVS in DR mode, as k0s's IPVS mode forwards it: a
/// client, a director holding the VIP on dummyvip0, three real servers
/// with the VIP on their loopback (arp_ignore/arp_announce so only the
/// director answers ARP for it), all on one bridge. Without persistence rr
/// spreads 9 connections 3/3/3; with persistence one client sticks to one
/// real server.
fn direct_routing_balances_connections(vm: &Vm) {
    let pfx = format!("cplbt-{}", std::process::id());
    let ns = Ns {
        vm,
        name: format!("{pfx}-dir"),
    };
    ns.ok(&format!(
        "set -e
         sw={pfx}-sw
         ip netns add $sw
         ip -n $sw link add br0 type bridge
         ip -n $sw link set br0 up
         host() {{ # name address
           ip netns add $1
           ip -n $1 link set lo up
           ip -n $sw link add p-$2 type veth peer name eth0 netns $1
           ip -n $sw link set p-$2 master br0 up
           ip -n $1 addr add $2/24 dev eth0
           ip -n $1 link set eth0 up
         }}
         host {pfx}-cli 192.0.2.10
         host $NS 192.0.2.2
         for n in 1 2 3; do
           rs={pfx}-rs$n
           host $rs 192.0.2.2$n
           ip -n $rs addr add 192.0.2.100/32 dev lo
           ip netns exec $rs sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
           setsid ip netns exec $rs {PROBE} serve 192.0.2.100:80 rs$n </dev/null >/dev/null 2>&1 &
         done
         $P dummy-ensure 192.0.2.100
         $P reconcile 192.0.2.100:80 rr 0 dr 192.0.2.21:80:1 192.0.2.22:80:1 192.0.2.23:80:1 >/dev/null"
    ));
    // Each connection from its own source port, so every one is new to IPVS.
    let connect = |first_port: u16, times: u16| -> Vec<String> {
        let out = ns.ok(&format!(
            "for p in $(seq {first_port} {last}); do \
               ip netns exec {pfx}-cli {PROBE} connect 192.0.2.100:80 192.0.2.10:$p || exit 1; \
             done",
            last = first_port + times - 1
        ));
        out.stdout.lines().map(str::to_owned).collect()
    };
    // The servers start in the background: wait (bounded) until one answers.
    let ready = ns.sh(&format!(
        "for i in $(seq 100); do
           n=0
           for r in 1 2 3; do
             ip netns exec {pfx}-rs$r ss -Hltn 'sport = :80' | grep -q . && n=$((n+1))
           done
           [ $n = 3 ] && exit 0
           sleep 0.1
         done
         exit 1"
    ));
    assert!(ready.success(), "servers did not start: {ready}");

    let mut seen = connect(40001, 9);
    seen.sort();
    assert_eq!(
        seen,
        [
            "rs1", "rs1", "rs1", "rs2", "rs2", "rs2", "rs3", "rs3", "rs3"
        ],
        "rr over DR"
    );
    // The director saw them: each real server counts its connections.
    let list = ns.ok("$P list").stdout;
    assert!(
        list.contains("tcp/192.0.2.100:80 rr persistence None"),
        "{list}"
    );

    // Persistence on (edited in place): one client, one real server.
    let out = ns.ok(
        "$P reconcile 192.0.2.100:80 rr 360 dr 192.0.2.21:80:1 192.0.2.22:80:1 192.0.2.23:80:1",
    );
    assert!(out.stdout.starts_with("EditService("), "{out}");
    let seen = connect(41001, 6);
    assert_eq!(seen.len(), 6);
    assert!(seen.iter().all(|s| *s == seen[0]), "persistence: {seen:?}");

    // Only the director answers ARP for the VIP.
    let neigh = ns.ok(&format!(
        "ip -n {pfx}-cli neigh show 192.0.2.100 | cut -d' ' -f5; ip -n $NS link show eth0 | sed -n 's/.*ether \\([^ ]*\\).*/\\1/p'"
    ));
    let macs: Vec<&str> = neigh.stdout.lines().collect();
    assert_eq!(macs.len(), 2, "{neigh}");
    assert_eq!(
        macs[0], macs[1],
        "the VIP resolves to the director's MAC: {neigh}"
    );
}
