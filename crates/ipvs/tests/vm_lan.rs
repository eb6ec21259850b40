//! Two controllers on a LAN, in the VM (one boot): only the VIP holder
//! answers ARP/ND for the VIP (k0s#4700), and an established TCP stream
//! survives a failover thanks to IPVS connection synchronisation.
//!
//! Every node is a network namespace on one bridge; the client watches the
//! wire with tcpdump, so every answer is counted, not only the first one
//! its neighbour table keeps.

use std::collections::BTreeSet;

use cplb_vm::{RunOutput, Vm};

const PROBE: &str = env!("CARGO_BIN_EXE_cplb-ipvs-probe");
const VIP: &str = "192.0.2.100";
const VIP6: &str = "2001:db8::100";

struct Lan<'a> {
    vm: &'a Vm,
    pfx: String,
}

impl Lan<'_> {
    /// Runs `script` with `$P` = the probe, `$X` = the namespace prefix
    /// (`ip netns exec $X-cli ...`); fails the test on a non-zero status.
    fn ok(&self, script: &str) -> RunOutput {
        let out = self.sh(script);
        assert!(out.success(), "script failed:\n{script}\n{out}");
        out
    }

    fn sh(&self, script: &str) -> RunOutput {
        let full = format!(
            "X={pfx}\nP={PROBE}\nVIP={VIP}\nVIP6={VIP6}\nexport RUST_BACKTRACE=1\n{script}\n",
            pfx = self.pfx
        );
        self.vm.run(&full).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A bridge in `$X-sw` and one namespace per `name=address` on it
    /// (`eth0`, with `2001:db8::<last octet>/64` too).
    fn build(&self, hosts: &[(&str, &str)]) {
        let mut script = String::from(
            "set -e
             ip netns add $X-sw
             ip -n $X-sw link add br0 type bridge
             ip -n $X-sw link set br0 up
             host() { # name address
               ip netns add $X-$1
               ip -n $X-$1 link set lo up
               ip -n $X-sw link add p-$1 type veth peer name eth0 netns $X-$1
               ip -n $X-sw link set p-$1 master br0 up
               ip -n $X-$1 addr add $2/24 dev eth0
               ip -n $X-$1 addr add 2001:db8::${2##*.}/64 dev eth0 nodad
               ip -n $X-$1 link set eth0 up
             }
            ",
        );
        for (name, addr) in hosts {
            script.push_str(&format!("host {name} {addr}\n"));
        }
        self.ok(&script);
    }

    fn mac(&self, node: &str) -> String {
        let out = self.ok(&format!(
            "ip -n $X-{node} link show eth0 | sed -n 's/.*ether \\([^ ]*\\).*/\\1/p'"
        ));
        out.stdout.trim().to_owned()
    }

    /// Makes `holder` the VIP holder as VRRP would (the VIPs on its eth0,
    /// guard lifted) and every node of `others` a non-holder (VIPs off
    /// eth0, guard on).
    fn hold(&self, holder: &str, others: &[&str]) {
        let mut s = String::from("set -e\n");
        for n in others {
            s.push_str(&format!(
                "ip -n $X-{n} addr del $VIP/32 dev eth0 2>/dev/null || true
                 ip -n $X-{n} addr del $VIP6/128 dev eth0 2>/dev/null || true
                 ip netns exec $X-{n} $P arp-guard $VIP\n"
            ));
        }
        s.push_str(&format!(
            "ip -n $X-{holder} addr replace $VIP/32 dev eth0
             ip -n $X-{holder} addr replace $VIP6/128 dev eth0 nodad
             ip netns exec $X-{holder} $P arp-guard\n"
        ));
        self.ok(&s);
    }

    /// Who answers the client for the VIP: the source MACs of every ARP
    /// reply (and, with `v6`, neighbour advertisement) for it seen on the
    /// client's wire over `rounds` fresh resolutions.
    fn answering(&self, rounds: u32, v6: bool) -> (Vec<String>, Vec<String>) {
        let out = self.ok(&format!(
            "cap() {{ # file filter
               ip netns exec $X-cli tcpdump -l -n -e -i eth0 \"$2\" >/tmp/$X-$1 2>/tmp/$X-$1.err &
               echo $! >/tmp/$X-$1.pid
             }}
             cap arp 'arp[6:2] = 2'
             cap nd 'icmp6 and ip6[40] = 136'
             for i in $(seq 100); do
               grep -q listening /tmp/$X-arp.err && grep -q listening /tmp/$X-nd.err && break
               sleep 0.1
             done
             for i in $(seq {rounds}); do
               ip -n $X-cli neigh flush dev eth0
               ip netns exec $X-cli ping -c1 -W1 $VIP >/dev/null 2>&1 || true
               if [ {v6} = true ]; then
                 ip netns exec $X-cli ping -6 -c1 -W1 $VIP6 >/dev/null 2>&1 || true
               fi
             done
             sleep 0.5
             kill $(cat /tmp/$X-arp.pid) $(cat /tmp/$X-nd.pid)
             wait
             sed -n 's/.*Reply {VIP} is-at \\([0-9a-f:]*\\).*/arp \\1/p' /tmp/$X-arp
             sed -n 's/^[^ ]* \\([0-9a-f:]*\\) > .*neighbor advertisement, tgt is {VIP6}.*/nd \\1/p' /tmp/$X-nd"
        ));
        let pick = |kind: &str| -> Vec<String> {
            out.stdout
                .lines()
                .filter_map(|l| l.strip_prefix(kind))
                .map(|m| m.trim().to_owned())
                .collect()
        };
        (pick("arp "), pick("nd "))
    }
}

fn distinct(macs: &[String]) -> BTreeSet<&str> {
    macs.iter().map(String::as_str).collect()
}

#[test]
fn vip_holder_on_a_lan() {
    let started = std::time::Instant::now();
    let vm = Vm::boot().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("cplb-vm: boot took {:?}", vm.boot_time());
    only_the_holder_answers_arp_and_nd(&vm);
    eprintln!("cplb-vm: ARP/ND checks done at {:?}", started.elapsed());
    established_stream_survives_failover(&vm);
    eprintln!("cplb-vm: failover checks done at {:?}", started.elapsed());
}

/// k0s#4700: two controllers with the VIP on dummyvip0, one of them also
/// on eth0 (the holder). Without the guard both answer ARP; with it only
/// the holder does, also after the holder changes. ND needs no guard.
fn only_the_holder_answers_arp_and_nd(vm: &Vm) {
    let lan = Lan {
        vm,
        pfx: format!("cplbt-{}-arp", std::process::id()),
    };
    lan.build(&[
        ("cli", "192.0.2.10"),
        ("c1", "192.0.2.2"),
        ("c2", "192.0.2.3"),
    ]);
    let (c1, c2) = (lan.mac("c1"), lan.mac("c2"));
    lan.ok("set -e
         for n in c1 c2; do
           ip netns exec $X-$n $P dummy-ensure $VIP $VIP6
           ip netns exec $X-$n $P arp-announce eth0
           # the node's own service on the VIP, for the hairpin checks
           setsid ip netns exec $X-$n $P serve $VIP:80 $n </dev/null >/dev/null 2>&1 &
         done
         ip -n $X-c1 addr add $VIP/32 dev eth0
         ip -n $X-c1 addr add $VIP6/128 dev eth0 nodad");

    // The control: no guard, both controllers answer (k0s#4700).
    let (arp, _) = lan.answering(2, false);
    assert_eq!(
        distinct(&arp),
        BTreeSet::from([c1.as_str(), c2.as_str()]),
        "without the guard both should answer: {arp:?}"
    );

    // Guarded: only the holder, every time; ND: only the holder too.
    lan.hold("c1", &["c2"]);
    let table = lan
        .ok("ip netns exec $X-c2 nft list table arp cplb_ipvs")
        .stdout;
    assert!(table.contains("arp saddr ip 192.0.2.100"), "{table}");
    let (arp, nd) = lan.answering(4, true);
    assert!(arp.len() >= 4, "the holder answers every time: {arp:?}");
    assert_eq!(distinct(&arp), BTreeSet::from([c1.as_str()]), "{arp:?}");
    assert!(nd.len() >= 4, "the holder answers ND every time: {nd:?}");
    assert_eq!(distinct(&nd), BTreeSet::from([c1.as_str()]), "{nd:?}");

    // Hairpin: each node reaches VIP:80 itself (its own local service), the
    // client reaches the holder's.
    let out = lan.ok("set -e
         for i in $(seq 100); do
           ip netns exec $X-c2 ss -Hltn 'sport = :80' | grep -q . &&
             ip netns exec $X-c1 ss -Hltn 'sport = :80' | grep -q . && break
           sleep 0.1
         done
         ip netns exec $X-c1 $P connect $VIP:80
         ip netns exec $X-c2 $P connect $VIP:80
         ip netns exec $X-cli $P connect $VIP:80");
    assert_eq!(out.stdout, "c1\nc2\nc1\n", "{out}");

    // The non-holder, answering from the VIP (as a DR real server does),
    // still resolves the client: arp_announce=2 asks from its own address,
    // never the VIP (which the guard would drop).
    let out = lan.ok(&format!(
        "ip netns exec $X-cli tcpdump -l -n -e -i eth0 'arp[6:2] = 1' >/tmp/$X-req 2>/tmp/$X-req.err &
         pid=$!
         for i in $(seq 100); do grep -q listening /tmp/$X-req.err && break; sleep 0.1; done
         ip -n $X-c2 neigh flush dev eth0
         ip netns exec $X-c2 ping -c1 -W1 -I $VIP 192.0.2.10 >/dev/null 2>&1
         ip -n $X-c2 neigh show 192.0.2.10
         sleep 0.3
         kill $pid; wait
         grep '^[^ ]* {c2} ' /tmp/$X-req"
    ));
    assert!(
        out.stdout.contains("who-has 192.0.2.10 tell 192.0.2.3"),
        "{out}"
    );
    assert!(!out.stdout.contains("tell 192.0.2.100"), "{out}");

    // The VIP moves to c2: now only c2 answers.
    lan.hold("c2", &["c1"]);
    let (arp, nd) = lan.answering(4, true);
    assert!(arp.len() >= 4, "{arp:?}");
    assert_eq!(distinct(&arp), BTreeSet::from([c2.as_str()]), "{arp:?}");
    assert_eq!(distinct(&nd), BTreeSet::from([c2.as_str()]), "{nd:?}");

    // The guard goes away with its table.
    let out =
        lan.ok("ip netns exec $X-c1 $P arp-guard-remove; ip netns exec $X-c1 $P arp-guard-remove");
    assert_eq!(out.stdout, "removed true\nremoved false\n");
    lan.ok(
        "for n in sw cli c1 c2; do ip netns pids $X-$n | xargs -r kill; ip netns del $X-$n; done",
    );
}

/// The issue's ★: a TCP stream through VIP:80 (DR) keeps going, on the
/// same connection, when the VIP moves from director A to director B, as
/// long as A's sync daemon (master) told B's (backup) about it. Without
/// the sync daemon the same failover resets the stream.
fn established_stream_survives_failover(vm: &Vm) {
    let lan = Lan {
        vm,
        pfx: format!("cplbt-{}-sync", std::process::id()),
    };
    lan.build(&[
        ("cli", "192.0.2.10"),
        ("a", "192.0.2.2"),
        ("b", "192.0.2.3"),
        ("rs1", "192.0.2.21"),
        ("rs2", "192.0.2.22"),
    ]);
    lan.ok("set -e
         for n in rs1 rs2; do
           ip -n $X-$n addr add $VIP/32 dev lo
           ip netns exec $X-$n sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
           setsid ip netns exec $X-$n $P echo-serve $VIP:80 </dev/null >/dev/null 2>&1 &
         done
         for n in a b; do
           ip netns exec $X-$n $P dummy-ensure $VIP
           ip netns exec $X-$n $P arp-announce eth0
         done
         for i in $(seq 100); do
           ip netns exec $X-rs1 ss -Hltn 'sport = :80' | grep -q . &&
             ip netns exec $X-rs2 ss -Hltn 'sport = :80' | grep -q . && exit 0
           sleep 0.1
         done
         exit 1");
    let service = "192.0.2.100:80 rr 0 dr 192.0.2.21:80:1 192.0.2.22:80:1";

    // A holds the VIP and the service; B is a guarded non-holder.
    let a_holds = || {
        lan.hold("a", &["b"]);
        lan.ok(&format!(
            "ip netns exec $X-b $P reconcile 192.0.2.100:80 >/dev/null
             ip netns exec $X-a $P reconcile {service} >/dev/null"
        ));
    };
    // The VIP moves first, the old holder's service goes last: once a
    // netns has no IPVS service left the kernel unhooks IPVS there, and
    // its own stack resets every connection still sent to it (seen here
    // when the service went first).
    let b_takes_over = || {
        lan.ok(&format!(
            "set -e
             ip -n $X-a addr del $VIP/32 dev eth0
             ip netns exec $X-a $P arp-guard $VIP
             ip -n $X-b addr add $VIP/32 dev eth0
             ip netns exec $X-b $P arp-guard
             ip netns exec $X-b $P reconcile {service} >/dev/null
             # stands in for the new holder's gratuitous ARP
             ip -n $X-cli neigh flush dev eth0
             ip netns exec $X-a $P reconcile 192.0.2.100:80 >/dev/null
             # the sync roles follow the VIP (old role stopped first)
             ip netns exec $X-b $P sync-stop backup
             ip netns exec $X-b $P sync-start master eth0 7
             ip netns exec $X-a $P sync-stop master
             ip netns exec $X-a $P sync-start backup eth0 7"
        ));
    };
    // Starts the stream (COUNT messages every 100 ms) in the background
    // and waits until `at` of them came back.
    let start_stream = |name: &str, count: u32, at: u32| {
        lan.ok(&format!(
            "rm -f /tmp/$X-{name}.*
             setsid ip netns exec $X-cli $P stream $VIP:80 {count} 100 /tmp/$X-{name}.progress \
               </dev/null >/tmp/$X-{name}.out 2>/tmp/$X-{name}.err &
             echo $! >/tmp/$X-{name}.pid
             for i in $(seq 300); do
               [ \"$(cat /tmp/$X-{name}.progress 2>/dev/null)\" -ge {at} ] 2>/dev/null && exit 0
               [ -s /tmp/$X-{name}.err ] && break
               sleep 0.1
             done
             cat /tmp/$X-{name}.err; exit 1"
        ));
    };
    // Waits (bounded) for the stream to end; its exit status, what it printed.
    let finish_stream = |name: &str| -> RunOutput {
        lan.sh(&format!(
            "pid=$(cat /tmp/$X-{name}.pid)
             for i in $(seq 600); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
             kill $pid 2>/dev/null && echo 'still running'
             echo progress $(cat /tmp/$X-{name}.progress)
             cat /tmp/$X-{name}.out /tmp/$X-{name}.err
             grep -q '^ok ' /tmp/$X-{name}.out"
        ))
    };

    // With the sync daemon: master on A, backup on B, syncid 7 over eth0.
    a_holds();
    lan.ok("set -e
         ip netns exec $X-a $P sync-start master eth0 7
         ip netns exec $X-b $P sync-start backup eth0 7");
    start_stream("synced", 150, 10);
    // B learns the connection from A's sync messages (no packet of it
    // reached B).
    let synced = lan.sh(
        "for i in $(seq 100); do
           ip netns exec $X-b ipvsadm -Lnc | grep -q 'ESTABLISHED 192.0.2.10:.*192.0.2.100:80' && break
           sleep 0.1
         done
         ip netns exec $X-b ipvsadm -Lnc; echo progress $(cat /tmp/$X-synced.progress)",
    );
    assert!(
        synced.stdout.contains("ESTABLISHED") && synced.stdout.contains("192.0.2.10:"),
        "B has no synced entry for the stream: {synced}"
    );
    let before = lan
        .ok("cat /tmp/$X-synced.progress")
        .stdout
        .trim()
        .parse::<u32>()
        .unwrap_or(0);
    b_takes_over();
    let done = finish_stream("synced");
    assert!(
        done.success(),
        "the stream broke across the failover: {done}"
    );
    assert!(
        before < 150,
        "the failover happened mid-stream ({before}/150)"
    );
    // B forwarded it: its entry, synced as ESTABLISHED, followed the
    // client's close (only B's IPVS saw that FIN: A resets anything it
    // gets). A has no service left. B's service counters are not
    // asserted: they stayed at 0 here (B became master right away), while
    // runs where B stayed backup a while counted the packets; apparently an
    // entry synced before B had the service is bound to B's real server
    // only by a later sync update, and until then it is forwarded but not
    // counted.
    let after = lan.ok(
        "ip netns exec $X-b ipvsadm -Lnc; ip netns exec $X-b ipvsadm -Ln --stats; echo A; ip netns exec $X-a ipvsadm -Ln",
    );
    eprintln!("failover with sync daemon: {done}\n{after}");
    let local = done
        .stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("local="))
        .unwrap_or("?");
    let (b_side, a_side) = after.stdout.split_once("\nA\n").unwrap_or_default();
    let state = b_side.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        (w.len() == 6 && w[3] == local && w[4] == "192.0.2.100:80").then(|| w[2].to_owned())
    });
    assert!(
        matches!(
            state.as_deref(),
            Some("FIN_WAIT" | "CLOSE_WAIT" | "TIME_WAIT" | "LAST_ACK" | "CLOSE")
        ),
        "B's entry for {local} did not see the close: {state:?}\n{after}"
    );
    assert!(
        !a_side.contains("192.0.2.100:80"),
        "A kept its service: {after}"
    );

    // The control: the same failover (back to A) without the sync daemon.
    let roles = lan.ok("ip netns exec $X-a $P sync-show; ip netns exec $X-b $P sync-show");
    assert_eq!(roles.stdout, "Backup eth0 7\nMaster eth0 7\n", "{roles}");
    lan.ok("set -e
         ip netns exec $X-a $P sync-stop backup
         ip netns exec $X-b $P sync-stop master");
    let sloppy = lan.ok("ip netns exec $X-a sysctl -n net.ipv4.vs.sloppy_tcp");
    assert_eq!(sloppy.stdout.trim(), "0", "{sloppy}");
    start_stream("unsynced", 150, 10);
    // Back to A, which never heard of this connection.
    lan.ok(&format!(
        "set -e
         ip -n $X-b addr del $VIP/32 dev eth0
         ip netns exec $X-b $P arp-guard $VIP
         ip -n $X-a addr add $VIP/32 dev eth0
         ip netns exec $X-a $P arp-guard
         ip netns exec $X-a $P reconcile {service} >/dev/null
         ip -n $X-cli neigh flush dev eth0
         ip netns exec $X-b $P reconcile 192.0.2.100:80 >/dev/null"
    ));
    let broken = finish_stream("unsynced");
    eprintln!("failover without sync daemon: {broken}");
    assert!(
        !broken.success() && broken.stdout.contains("Connection reset by peer"),
        "without the sync daemon the stream should be reset: {broken}"
    );

    // Why the old holder removes its service last: with A's service gone
    // while the client still sends to A, A's own stack resets the stream
    // (with no service left in the netns IPVS no longer intercepts).
    start_stream("early", 150, 10);
    lan.ok("ip netns exec $X-a $P reconcile 192.0.2.100:80 >/dev/null");
    let early = finish_stream("early");
    eprintln!("service removed before the VIP moved: {early}");
    assert!(
        !early.success() && early.stdout.contains("Connection reset by peer"),
        "{early}"
    );
    lan.ok(
        "for n in sw cli a b rs1 rs2; do ip netns pids $X-$n | xargs -r kill; ip netns del $X-$n; done",
    );
}
