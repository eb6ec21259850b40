//! The driver end to end: real routers in network namespaces on one LAN,
//! real adverts, real VIPs. Who holds a VIP is read from the kernel with
//! `ip -j addr`, never from the driver. Needs root and iproute2.
#![cfg(feature = "io")]

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::thread::JoinHandle;
use std::time::Duration;

use cplb_e2e::{Lab, in_netns, wait_until};
use cplb_vrrp::fsm::Config;
use cplb_vrrp::fsm::State;
use cplb_vrrp::io::driver::{
    DEFAULT_ADDR_LABEL, Driver, DriverStatus, InstanceConfig, InstanceStatus, SocketStatus,
    VipLease, check_host, release,
};
use cplb_vrrp::io::netlink::Vip;
use cplb_vrrp::io::socket::{ETH_P_ALL, ETH_P_ARP, PacketSocket};
use cplb_vrrp::wire::{Advert, Auth, Centis, Version};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

/// A driver running on its own thread inside a host's namespace.
struct Router {
    /// Graceful stop: priority-0 advert, VIPs removed.
    stop: CancellationToken,
    /// Abrupt stop: the driver is dropped mid-flight, like a SIGKILL.
    kill: CancellationToken,
    /// What the driver publishes about its instances.
    status: watch::Receiver<DriverStatus>,
    /// Blocks the driver's runtime thread for the duration sent, as a
    /// stalled machine would (a paused VM, a starved CPU); the duration is
    /// sent back when the stall ends.
    stall: tokio::sync::mpsc::UnboundedSender<(Duration, std::sync::mpsc::Sender<()>)>,
    thread: Option<JoinHandle<String>>,
}

impl Router {
    fn spawn(netns: &str, configs: Vec<InstanceConfig>) -> Router {
        Router::spawn_with_netlink_buffer(netns, configs, None)
    }

    /// Like [`Router::spawn`], with the link and address notification
    /// socket's receive buffer set to `netlink_buffer` bytes.
    fn spawn_with_netlink_buffer(
        netns: &str,
        configs: Vec<InstanceConfig>,
        netlink_buffer: Option<u32>,
    ) -> Router {
        // RUST_LOG=debug shows the driver's logs in failing tests.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let (stop, kill) = (CancellationToken::new(), CancellationToken::new());
        let (status_tx, status) = watch::channel(DriverStatus::default());
        let (stop2, kill2, netns) = (stop.clone(), kill.clone(), netns.to_owned());
        let (stall, mut stalls) =
            tokio::sync::mpsc::unbounded_channel::<(Duration, std::sync::mpsc::Sender<()>)>();
        let thread = std::thread::spawn(move || {
            in_netns(&netns, move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let mut builder = Driver::builder(configs).status(status_tx);
                if let Some(bytes) = netlink_buffer {
                    builder = builder.netlink_buffer(bytes);
                }
                runtime.block_on(async {
                    // On the driver's (single) thread: blocking here stalls it.
                    tokio::spawn(async move {
                        while let Some((pause, done)) = stalls.recv().await {
                            std::thread::sleep(pause);
                            let _ = done.send(());
                        }
                    });
                    tokio::select! {
                        result = builder.run(stop2) => match result {
                            Ok(()) => "stopped".to_owned(),
                            Err(e) => format!("failed: {e}"),
                        },
                        () = kill2.cancelled() => "killed".to_owned(),
                    }
                })
            })
            .unwrap()
        });
        Router {
            stop,
            kill,
            status,
            stall,
            thread: Some(thread),
        }
    }

    /// Stalls the driver's thread for `pause` and returns once it runs again.
    fn stall_for(&self, pause: Duration) {
        let (done, ended) = std::sync::mpsc::channel();
        self.stall.send((pause, done)).unwrap();
        ended.recv_timeout(pause + WAIT).unwrap();
    }

    /// Waits until the published status of `vrid` satisfies `want`.
    fn wait_status(
        &self,
        vrid: u8,
        what: &str,
        want: impl Fn(&InstanceStatus) -> bool,
    ) -> InstanceStatus {
        cplb_e2e::wait_for(what, WAIT, || {
            self.status
                .borrow()
                .instances
                .iter()
                .find(|s| s.vrid == vrid && want(s))
                .cloned()
        })
        .unwrap()
    }

    /// Waits until the published status of the (first) socket satisfies
    /// `want`.
    fn wait_socket(&self, what: &str, want: impl Fn(&SocketStatus) -> bool) -> SocketStatus {
        cplb_e2e::wait_for(what, WAIT, || {
            self.status
                .borrow()
                .sockets
                .iter()
                .find(|s| want(s))
                .cloned()
        })
        .unwrap()
    }

    /// The first socket's drops by label.
    fn socket_drops(&self) -> Vec<(&'static str, u64)> {
        self.status
            .borrow()
            .sockets
            .first()
            .map(|s| s.stats.drops().collect())
            .unwrap_or_default()
    }

    fn join(&mut self) -> String {
        self.thread
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default()
    }

    fn stop(&mut self) -> String {
        self.stop.cancel();
        self.join()
    }

    fn kill(&mut self) -> String {
        self.kill.cancel();
        self.join()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        // A failing test must not leave a thread spinning in a namespace that
        // is about to be deleted.
        self.kill.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn v2_instance(vrid: u8, priority: u8, primary: &str, vip: &str, prefix: u8) -> InstanceConfig {
    let mut router = Config::new(Version::V2, vrid, ip(primary), vec![ip(vip)]);
    router.priority = priority;
    let mut config = InstanceConfig::new(router, "eth0");
    config.vip_prefixes = vec![Vip::new(ip(vip), prefix).unwrap()];
    config
}

struct Pair {
    lab: Lab,
    a: String,
    b: String,
}

impl Pair {
    fn new() -> Pair {
        let mut lab = Lab::new().unwrap();
        let a = lab
            .add_host("a", Some("192.0.2.1/24"), Some("2001:db8::1/64"))
            .unwrap()
            .netns;
        let b = lab
            .add_host("b", Some("192.0.2.2/24"), Some("2001:db8::2/64"))
            .unwrap()
            .netns;
        Pair { lab, a, b }
    }

    fn holds(&self, netns: &str, vip: IpAddr) -> bool {
        self.lab.has_address(netns, "eth0", vip).unwrap()
    }

    /// Waits until exactly `netns` of the two holds `vip`.
    fn wait_holder(&self, netns: &str, vip: IpAddr) {
        let other = if netns == self.a { &self.b } else { &self.a };
        wait_until(&format!("{vip} held by {netns} alone"), WAIT, || {
            self.holds(netns, vip) && !self.holds(other, vip)
        })
        .unwrap();
    }
}

#[test]
fn higher_priority_becomes_master_and_hands_over_gracefully() {
    let t = Pair::new();
    let vip = ip("192.0.2.100");
    // Left on B by a crashed run (with a lease, as the driver adds VIPs): B
    // must remove it before acting as Backup.
    t.lab
        .ip(
            &t.b,
            [
                "addr",
                "add",
                "192.0.2.100/24",
                "dev",
                "eth0",
                "valid_lft",
                "60",
                "preferred_lft",
                "60",
            ],
        )
        .unwrap();

    let mut a = Router::spawn(
        &t.a,
        vec![v2_instance(51, 200, "192.0.2.1", "192.0.2.100", 24)],
    );
    let mut b = Router::spawn(
        &t.b,
        vec![v2_instance(51, 100, "192.0.2.2", "192.0.2.100", 24)],
    );
    t.wait_holder(&t.a, vip);

    // Added with its prefix, as keepalived does (secondary), with a lease.
    let addrs = t.lab.addresses(&t.a, "eth0").unwrap();
    let held = addrs.iter().find(|x| x.ip == vip).unwrap();
    assert_eq!(held.prefix_len, 24);
    assert!(held.secondary);
    assert!(
        held.valid_lft.is_some_and(|s| s <= 3),
        "lease of about Master_Down_Interval: {held:?}"
    );

    // Someone removes the VIP from the Master: it is put back.
    t.lab
        .ip(&t.a, ["addr", "del", "192.0.2.100/24", "dev", "eth0"])
        .unwrap();
    t.wait_holder(&t.a, vip);

    // Graceful stop: priority 0 makes B take over at once, A keeps nothing.
    assert_eq!(a.stop(), "stopped");
    t.wait_holder(&t.b, vip);
    // A resigned: nothing suggests its host is gone.
    let took_over = b.wait_status(51, "B Master", |s| s.state == State::Master);
    assert_eq!(took_over.silent_master, None, "{took_over:?}");
    assert_eq!(b.stop(), "stopped");
    assert!(!t.holds(&t.b, vip), "a stopped Master removes its VIPs");
}

#[test]
fn a_killed_masters_vip_expires_by_itself_and_the_backup_takes_over() {
    let t = Pair::new();
    let vip = ip("192.0.2.101");
    let mut a = Router::spawn(
        &t.a,
        vec![v2_instance(52, 200, "192.0.2.1", "192.0.2.101", 32)],
    );
    let b = Router::spawn(
        &t.b,
        vec![v2_instance(52, 100, "192.0.2.2", "192.0.2.101", 32)],
    );
    t.wait_holder(&t.a, vip);
    let backup = b.wait_status(52, "B Backup hearing A", |s| {
        s.state == State::Backup && s.master.is_some()
    });
    assert_eq!(backup.silent_master, None);

    // No shutdown runs: nothing removes the VIP but the kernel's lease.
    assert_eq!(a.kill(), "killed");
    t.wait_holder(&t.b, vip);
    // B took over from a Master that fell silent, and names it.
    let took_over = b.wait_status(52, "B Master", |s| s.state == State::Master);
    assert_eq!(
        took_over.silent_master,
        Some(ip("192.0.2.1")),
        "{took_over:?}"
    );
}

#[test]
fn link_down_releases_the_vip_and_link_up_preempts_back() {
    let t = Pair::new();
    let vip = ip("192.0.2.102");
    let a = Router::spawn(
        &t.a,
        vec![v2_instance(53, 200, "192.0.2.1", "192.0.2.102", 24)],
    );
    let b = Router::spawn(
        &t.b,
        vec![v2_instance(53, 100, "192.0.2.2", "192.0.2.102", 24)],
    );
    t.wait_holder(&t.a, vip);

    // A loses carrier: it goes to Fault and drops the VIP; B stops hearing
    // it and takes over, naming it as the Master that fell silent.
    t.lab.cut_cable("a").unwrap();
    t.wait_holder(&t.b, vip);
    let took_over = b.wait_status(53, "B Master", |s| s.state == State::Master);
    assert_eq!(
        took_over.silent_master,
        Some(ip("192.0.2.1")),
        "{took_over:?}"
    );

    // Carrier back: A starts over as Backup and preempts B (priority 200):
    // a preemption, not a silence.
    t.lab.plug_cable("a").unwrap();
    t.wait_holder(&t.a, vip);
    let preempted = a.wait_status(53, "A Master again", |s| s.state == State::Master);
    assert_eq!(preempted.silent_master, None, "{preempted:?}");
    b.wait_status(53, "B Backup", |s| {
        s.state == State::Backup && s.silent_master.is_none()
    });
}

#[test]
fn ipv6_vrrpv3_vips_are_nodad_and_labelled() {
    let t = Pair::new();
    let vip = ip("2001:db8::100");
    let a_ll = t.lab.link_local(&t.a, "eth0", WAIT).unwrap();
    let b_ll = t.lab.link_local(&t.b, "eth0", WAIT).unwrap();
    let instance = |priority: u8, primary: IpAddr| {
        let mut router = Config::new(Version::V3, 61, primary, vec![vip]);
        router.priority = priority;
        let mut config = InstanceConfig::new(router, "eth0");
        config.vip_prefixes = vec![Vip::new(vip, 64).unwrap()];
        config
    };
    let mut a = Router::spawn(&t.a, vec![instance(200, IpAddr::V6(a_ll))]);
    let mut b = Router::spawn(&t.b, vec![instance(100, IpAddr::V6(b_ll))]);
    t.wait_holder(&t.a, vip);

    let addrs = t.lab.addresses(&t.a, "eth0").unwrap();
    let held = addrs.iter().find(|x| x.ip == vip).unwrap();
    assert!(
        held.nodad && !held.tentative && held.prefix_len == 64,
        "{held:?}"
    );
    let labelled = |netns: &str| {
        t.lab
            .addr_labels(netns)
            .unwrap()
            .iter()
            .any(|l| l.prefix == vip && l.prefix_len == 128 && l.label == DEFAULT_ADDR_LABEL)
    };
    assert!(labelled(&t.a));

    assert_eq!(a.stop(), "stopped");
    t.wait_holder(&t.b, vip);
    assert!(!labelled(&t.a), "the label goes with the VIP");
    assert!(labelled(&t.b));
    assert_eq!(b.stop(), "stopped");
    assert!(!labelled(&t.b));
}

#[test]
fn unicast_and_multicast_instances_share_one_process() {
    let t = Pair::new();
    let (vip_u, vip_m) = (ip("192.0.2.110"), ip("192.0.2.111"));
    let instances = |me: &str, peer: &str, unicast_priority: u8, multicast_priority: u8| {
        let mut unicast = v2_instance(71, unicast_priority, me, "192.0.2.110", 24);
        unicast.unicast_peers = vec![ip(peer)];
        let mut multicast = Config::new(Version::V3, 72, ip(me), vec![vip_m]);
        multicast.priority = multicast_priority;
        vec![unicast, InstanceConfig::new(multicast, "eth0")]
    };
    // A leads the unicast instance, B the multicast one.
    let a = Router::spawn(&t.a, instances("192.0.2.1", "192.0.2.2", 200, 100));
    let b = Router::spawn(&t.b, instances("192.0.2.2", "192.0.2.1", 100, 200));
    t.wait_holder(&t.a, vip_u);
    t.wait_holder(&t.b, vip_m);
    a.wait_status(72, "A backup for VRID 72", |s| s.state == State::Backup);
    b.wait_status(71, "B backup for VRID 71", |s| s.state == State::Backup);

    // On the wire at B: A's VRID 71 adverts come unicast to B (B's MAC and
    // address), B's own VRID 72 adverts leave multicast.
    let b_link = t.lab.link(&t.b, "eth0").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    let capture = in_netns(&t.b, move || {
        let _guard = handle.enter();
        PacketSocket::open(b_link.ifindex, ETH_P_ALL).unwrap()
    })
    .unwrap();
    let (unicast, multicast) = runtime.block_on(async {
        tokio::time::timeout(WAIT, async {
            let (mut unicast, mut multicast) = (None, None);
            let mut buf = [0u8; 2048];
            // Bounded by the timeout around it.
            while unicast.is_none() || multicast.is_none() {
                let n = capture.recv(&mut buf).await.unwrap();
                // IPv4 without options, protocol 112; the VRID follows the
                // version/type byte.
                if n < 36 || buf[12..14] != [0x08, 0x00] || buf[14] != 0x45 || buf[23] != 112 {
                    continue;
                }
                let frame = buf[..n].to_vec();
                match buf[35] {
                    71 => unicast = Some(frame),
                    72 => multicast = Some(frame),
                    _ => {}
                }
            }
            (unicast.unwrap(), multicast.unwrap())
        })
        .await
        .expect("adverts of both VRIDs seen at B")
    });
    assert_eq!(unicast[0..6], b_link.mac, "unicast advert to B's MAC");
    assert_eq!(
        unicast[30..34],
        [192, 0, 2, 2],
        "unicast advert to B's address"
    );
    assert_eq!(unicast[26..30], [192, 0, 2, 1], "from A");
    assert_eq!(multicast[30..34], [224, 0, 0, 18]);
    assert_eq!(
        multicast[26..30],
        [192, 0, 2, 2],
        "B's own multicast advert"
    );
}

/// Sends a VRRPv2 advert from `netns` to `dst` with the given TTL, through
/// a plain raw socket, not the code under test.
fn inject_v2(netns: &str, dst: &str, ttl: u32, vrid: u8, priority: u8, vip: &str, corrupt: bool) {
    let advert = Advert {
        version: Version::V2,
        vrid,
        priority,
        interval: Centis::from_secs(1),
        auth: Auth::None,
        addrs: vec![ip(vip)],
    };
    let mut buf = vec![0; advert.buffer_len()];
    let n = advert.emit(ip("192.0.2.2"), ip(dst), &mut buf).unwrap();
    buf.truncate(n);
    if corrupt {
        buf[1] ^= 0x01;
    }
    let dst: SocketAddrV4 = format!("{dst}:0").parse().unwrap();
    in_netns(netns, move || {
        let socket = raw_112(&dst, ttl);
        socket.send_to(&buf, &SockAddr::from(dst)).unwrap();
    })
    .unwrap();
}

#[test]
fn adverts_failing_wire_checks_change_nothing() {
    let t = Pair::new();
    let vip = ip("192.0.2.120");
    let a = Router::spawn(
        &t.a,
        vec![v2_instance(81, 100, "192.0.2.1", "192.0.2.120", 24)],
    );
    a.wait_status(81, "A master", |s| s.state == State::Master);
    t.wait_holder(&t.a, vip);

    // A higher priority that crossed a router (TTL 254), and one with a bad
    // checksum: both dropped with their reason, A stays Master.
    inject_v2(&t.b, "224.0.0.18", 254, 81, 254, "192.0.2.120", false);
    a.wait_socket("a bad_ttl drop", |s| s.stats.bad_ttl == 1);
    inject_v2(&t.b, "224.0.0.18", 255, 81, 254, "192.0.2.120", true);
    a.wait_socket("a bad_checksum drop", |s| s.stats.bad_checksum == 1);
    let status = a.wait_status(81, "A", |_| true);
    assert_eq!(status.state, State::Master);
    assert!(t.holds(&t.a, vip));

    // The same advert intact does make A step down: the injection path works.
    inject_v2(&t.b, "224.0.0.18", 255, 81, 254, "192.0.2.120", false);
    a.wait_status(81, "A backup after a valid higher-priority advert", |s| {
        s.state == State::Backup
    });
    wait_until("A releases the VIP", WAIT, || !t.holds(&t.a, vip)).unwrap();
    // Nobody advertises afterwards: A takes over again.
    a.wait_status(81, "A master again", |s| s.state == State::Master);
}

#[test]
fn a_new_master_sends_two_bursts_of_five_gratuitous_arps() {
    let t = Pair::new();
    let vip: Ipv4Addr = "192.0.2.130".parse().unwrap();
    let b_link = t.lab.link(&t.b, "eth0").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handle = runtime.handle().clone();
    let capture = in_netns(&t.b, move || {
        let _guard = handle.enter();
        PacketSocket::open(b_link.ifindex, ETH_P_ARP).unwrap()
    })
    .unwrap();

    let _a = Router::spawn(
        &t.a,
        vec![v2_instance(91, 150, "192.0.2.1", "192.0.2.130", 24)],
    );
    let count = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), async {
            let mut seen = 0;
            let mut buf = [0u8; 128];
            // keepalived's default: 5 at once and 5 more 5 s later.
            while seen < 10 {
                let n = capture.recv(&mut buf).await.unwrap();
                // ARP request whose sender and target address are the VIP.
                if n >= 42
                    && buf[20..22] == [0, 1]
                    && buf[28..32] == vip.octets()
                    && buf[38..42] == vip.octets()
                {
                    seen += 1;
                }
            }
            seen
        })
        .await
    });
    assert_eq!(count, Ok(10), "two bursts of five gratuitous ARPs");
}

#[test]
fn unicast_adverts_from_unconfigured_peers_are_ignored() {
    let t = Pair::new();
    let vip = ip("192.0.2.140");
    let mut strict = v2_instance(73, 100, "192.0.2.2", "192.0.2.140", 24);
    // A is not among B's peers, so B never hears a Master.
    strict.unicast_peers = vec![ip("192.0.2.9")];
    let mut leader = v2_instance(73, 200, "192.0.2.1", "192.0.2.140", 24);
    leader.unicast_peers = vec![ip("192.0.2.2")];
    let a = Router::spawn(&t.a, vec![leader]);
    let b = Router::spawn(&t.b, vec![strict]);
    a.wait_status(73, "A master", |s| s.state == State::Master);
    b.wait_status(73, "B drops A's adverts", |s| s.stats.not_a_peer > 0);
    // Not following A, B ends up Master as well.
    b.wait_status(73, "B master too", |s| s.state == State::Master);
    wait_until("both hold the VIP", WAIT, || {
        t.holds(&t.a, vip) && t.holds(&t.b, vip)
    })
    .unwrap();
}

#[test]
fn fifty_instances_per_process_are_demultiplexed_by_vrid() {
    let t = Pair::new();
    let vrids: Vec<u8> = (100..150).collect();
    let vip = |vrid: u8| ip(&format!("198.51.100.{vrid}"));
    // A leads the even VRIDs, B the odd ones.
    let instances = |me: &str, leads_even: bool| {
        vrids
            .iter()
            .map(|&vrid| {
                let priority = if (vrid % 2 == 0) == leads_even {
                    200
                } else {
                    100
                };
                let mut router = Config::new(Version::V3, vrid, ip(me), vec![vip(vrid)]);
                router.priority = priority;
                InstanceConfig::new(router, "eth0")
            })
            .collect::<Vec<_>>()
    };
    let _a = Router::spawn(&t.a, instances("192.0.2.1", true));
    let _b = Router::spawn(&t.b, instances("192.0.2.2", false));
    wait_until("every VIP on its leader and only there", WAIT, || {
        let on_a = t.lab.addresses(&t.a, "eth0").unwrap();
        let on_b = t.lab.addresses(&t.b, "eth0").unwrap();
        vrids.iter().all(|&vrid| {
            let (leader, other) = if vrid % 2 == 0 {
                (&on_a, &on_b)
            } else {
                (&on_b, &on_a)
            };
            leader.iter().any(|x| x.ip == vip(vrid)) && !other.iter().any(|x| x.ip == vip(vrid))
        })
    })
    .unwrap();
}

/// Not a test: prints how long failovers take on this machine. Run with
/// `cargo test -p cplb-vrrp --test netns_driver -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, prints timings"]
fn measure_failover_times() {
    let t = Pair::new();
    let vip = ip("192.0.2.150");
    let instance =
        |priority: u8, primary: &str| v2_instance(99, priority, primary, "192.0.2.150", 24);
    let _b = Router::spawn(&t.b, vec![instance(100, "192.0.2.2")]);
    let since = |start: std::time::Instant, netns: &str, want: bool| {
        wait_until("VIP change", WAIT, || t.holds(netns, vip) == want).unwrap();
        start.elapsed()
    };
    for round in 1..=3 {
        let mut a = Router::spawn(&t.a, vec![instance(200, "192.0.2.1")]);
        a.wait_status(99, "A master", |s| s.state == State::Master);
        t.wait_holder(&t.a, vip);
        let start = std::time::Instant::now();
        a.stop();
        let graceful = since(start, &t.b, true);

        let mut a = Router::spawn(&t.a, vec![instance(200, "192.0.2.1")]);
        a.wait_status(99, "A master", |s| s.state == State::Master);
        t.wait_holder(&t.a, vip);
        let start = std::time::Instant::now();
        a.kill();
        // Both watched in one loop: which comes first matters.
        let (mut takeover, mut expired) = (None, None);
        wait_until("takeover and expiry", WAIT, || {
            if takeover.is_none() && t.holds(&t.b, vip) {
                takeover = Some(start.elapsed());
            }
            if expired.is_none() && !t.holds(&t.a, vip) {
                expired = Some(start.elapsed());
            }
            takeover.is_some() && expired.is_some()
        })
        .unwrap();
        let (takeover, expired) = (takeover.unwrap(), expired.unwrap());

        let mut a = Router::spawn(&t.a, vec![instance(200, "192.0.2.1")]);
        a.wait_status(99, "A master", |s| s.state == State::Master);
        t.wait_holder(&t.a, vip);
        let start = std::time::Instant::now();
        t.lab.cut_cable("a").unwrap();
        let link_down = since(start, &t.b, true);
        t.lab.plug_cable("a").unwrap();
        t.wait_holder(&t.a, vip);
        a.stop();
        println!(
            "round {round}: graceful stop -> backup holds VIP {graceful:?}; \
             kill -> backup holds {takeover:?}, killed master's VIP expired {expired:?}; \
             master cable cut -> backup holds {link_down:?}"
        );
    }
}

#[test]
fn configuration_errors_are_reported_at_start() {
    let t = Pair::new();
    let errors = in_netns(&t.a, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start = |configs: Vec<InstanceConfig>| {
            // Stops at once if it does start, so a wrong Ok cannot hang.
            let cancel = CancellationToken::new();
            cancel.cancel();
            runtime
                .block_on(Driver::builder(configs).run(cancel))
                .err()
                .map(|e| e.to_string())
        };
        let mut peer_family = v2_instance(1, 100, "192.0.2.1", "192.0.2.100", 24);
        peer_family.unicast_peers = vec![ip("2001:db8::2")];
        let mut short_lease = v2_instance(2, 100, "192.0.2.1", "192.0.2.101", 24);
        short_lease.lease = VipLease::Fixed(Duration::from_secs(1));
        let mut no_such_interface = v2_instance(3, 100, "192.0.2.1", "192.0.2.102", 24);
        no_such_interface.interface = "nosuch0".to_owned();
        let twice = vec![
            v2_instance(4, 100, "192.0.2.1", "192.0.2.103", 24),
            v2_instance(4, 100, "192.0.2.1", "192.0.2.104", 24),
        ];
        [
            start(vec![peer_family]),
            start(vec![short_lease]),
            start(vec![no_such_interface]),
            start(twice),
            start(vec![v2_instance(5, 100, "192.0.2.1", "192.0.2.105", 24)]),
        ]
    })
    .unwrap();
    let [peer_family, short_lease, no_such_interface, twice, valid] = errors;
    assert!(peer_family.unwrap().contains("another address family"));
    assert!(short_lease.unwrap().contains("must be longer"));
    assert!(no_such_interface.unwrap().contains("nosuch0"));
    assert!(twice.unwrap().contains("configured twice"));
    assert_eq!(valid, None, "a valid configuration starts (and stops)");
}

#[test]
fn an_interface_without_carrier_at_start_is_a_fault_until_it_comes_up() {
    let t = Pair::new();
    let vip = ip("192.0.2.160");
    t.lab.cut_cable("a").unwrap();
    let a = Router::spawn(
        &t.a,
        vec![v2_instance(54, 150, "192.0.2.1", "192.0.2.160", 24)],
    );
    a.wait_status(54, "A in fault", |s| s.state == State::Fault);
    assert!(!t.holds(&t.a, vip));

    t.lab.plug_cable("a").unwrap();
    a.wait_status(54, "A master once the link is up", |s| {
        s.state == State::Master
    });
    t.wait_holder(&t.a, vip);
}

#[test]
fn a_re_created_interface_is_picked_up_again() {
    let t = Pair::new();
    let vip = ip("192.0.2.170");
    // B leads; A must keep hearing it after its interface is re-created.
    let a = Router::spawn(
        &t.a,
        vec![v2_instance(55, 100, "192.0.2.1", "192.0.2.170", 24)],
    );
    let _b = Router::spawn(
        &t.b,
        vec![v2_instance(55, 200, "192.0.2.2", "192.0.2.170", 24)],
    );
    t.wait_holder(&t.b, vip);
    let before = a
        .wait_status(55, "A hears B", |s| {
            s.state == State::Backup && s.stats.adverts_received > 0
        })
        .stats
        .adverts_received;
    let old_index = t.lab.link(&t.a, "eth0").unwrap().ifindex;

    // The old interface and its socket are gone at once (A goes through
    // Fault); adverts keep being counted only if A listens on the new one.
    t.lab.recreate_link("a").unwrap();
    assert_ne!(t.lab.link(&t.a, "eth0").unwrap().ifindex, old_index);
    a.wait_status(55, "A hears B on the new interface", |s| {
        s.state == State::Backup && s.stats.adverts_received >= before + 3
    });
    assert!(t.holds(&t.b, vip) && !t.holds(&t.a, vip));
}

/// Sends raw bytes as an IP protocol 112 packet from `netns` to `dst`.
/// A raw protocol-112 socket sending with `ttl`; to the VRRP group out of
/// B's address (192.0.2.2) when `dst` is multicast.
fn raw_112(dst: &SocketAddrV4, ttl: u32) -> Socket {
    let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112))).unwrap();
    socket.set_ttl_v4(ttl).unwrap();
    if dst.ip().is_multicast() {
        socket
            .set_multicast_if_v4(&"192.0.2.2".parse().unwrap())
            .unwrap();
        socket.set_multicast_ttl_v4(ttl).unwrap();
    }
    socket
}

fn inject_bytes(netns: &str, dst: &str, bytes: Vec<u8>) {
    let dst: SocketAddrV4 = format!("{dst}:0").parse().unwrap();
    in_netns(netns, move || {
        let socket = raw_112(&dst, 255);
        socket.send_to(&bytes, &SockAddr::from(dst)).unwrap();
    })
    .unwrap();
}

#[test]
fn hostile_adverts_are_counted_by_reason_and_never_move_the_vip() {
    let t = Pair::new();
    let vip = ip("192.0.2.121");
    let mut instance = v2_instance(82, 100, "192.0.2.1", "192.0.2.121", 24);
    instance.router.auth = Auth::pass(b"k0s");
    let a = Router::spawn(&t.a, vec![instance]);
    a.wait_status(82, "A master", |s| s.state == State::Master);
    t.wait_holder(&t.a, vip);

    // Each would win (priority 254 > 100) if it were accepted.
    let good = Advert {
        version: Version::V2,
        vrid: 82,
        priority: 254,
        interval: Centis::from_secs(1),
        auth: Auth::pass(b"k0s"),
        addrs: vec![vip],
    };
    let bytes = |advert: &Advert| {
        let mut buf = vec![0; advert.buffer_len()];
        let n = advert
            .emit(ip("192.0.2.2"), ip("192.0.2.1"), &mut buf)
            .unwrap();
        buf.truncate(n);
        buf
    };
    let cases: Vec<(Vec<u8>, &str, bool)> = vec![
        (
            bytes(&Advert {
                auth: Auth::pass(b"guess"),
                ..good.clone()
            }),
            "auth_failure",
            false,
        ),
        (
            bytes(&Advert {
                auth: Auth::None,
                ..good.clone()
            }),
            "auth_type_mismatch",
            false,
        ),
        (
            bytes(&Advert {
                vrid: 83,
                ..good.clone()
            }),
            "unknown_vrid",
            true,
        ),
        (
            bytes(&Advert {
                addrs: vec![ip("192.0.2.122")],
                ..good.clone()
            }),
            "address_list_mismatch",
            false,
        ),
        (
            bytes(&Advert {
                interval: Centis::from_secs(2),
                ..good.clone()
            }),
            "interval_mismatch",
            false,
        ),
        (bytes(&good)[..12].to_vec(), "length_mismatch", true),
    ];
    for (packet, reason, wire) in cases {
        inject_bytes(&t.b, "224.0.0.18", packet);
        let status = a.wait_status(82, reason, |s| {
            let counters: Vec<(&str, u64)> = if wire {
                a.socket_drops()
            } else {
                s.stats.drops().collect()
            };
            counters.contains(&(reason, 1))
        });
        assert_eq!(status.state, State::Master, "{reason}");
        assert!(t.holds(&t.a, vip), "{reason}");
    }
    // The control: the intact advert does take the VIP away.
    inject_bytes(&t.b, "224.0.0.18", bytes(&good));
    a.wait_status(82, "A backup after the intact advert", |s| {
        s.state == State::Backup
    });
}

#[test]
fn several_instances_with_several_vips_each_on_one_interface() {
    let t = Pair::new();
    // VRIDs 61-63, three VIPs each; A leads 61 and 63, B leads 62.
    let vips = |vrid: u8| -> Vec<IpAddr> {
        (1..=3)
            .map(|k| ip(&format!("198.51.100.{}", vrid * 3 + k)))
            .collect()
    };
    let instances = |me: &str, leads_odd: bool| {
        (61..=63u8)
            .map(|vrid| {
                let mut router = Config::new(Version::V2, vrid, ip(me), vips(vrid));
                router.priority = if (vrid % 2 == 1) == leads_odd {
                    200
                } else {
                    100
                };
                router.auth = Auth::pass(b"multi");
                let mut config = InstanceConfig::new(router, "eth0");
                config.vip_prefixes = vips(vrid)
                    .into_iter()
                    .map(|v| Vip::new(v, 24).unwrap())
                    .collect();
                config
            })
            .collect::<Vec<_>>()
    };
    let _a = Router::spawn(&t.a, instances("192.0.2.1", true));
    let _b = Router::spawn(&t.b, instances("192.0.2.2", false));
    wait_until("every VIP on its instance's leader only", WAIT, || {
        let on_a = t.lab.addresses(&t.a, "eth0").unwrap();
        let on_b = t.lab.addresses(&t.b, "eth0").unwrap();
        (61..=63u8).all(|vrid| {
            let (leader, other) = if vrid % 2 == 1 {
                (&on_a, &on_b)
            } else {
                (&on_b, &on_a)
            };
            vips(vrid).iter().all(|vip| {
                leader.iter().any(|x| x.ip == *vip && x.prefix_len == 24)
                    && !other.iter().any(|x| x.ip == *vip)
            })
        })
    })
    .unwrap();
}

/// Issue 14 finding 1: a VIP that is one of the node's own (permanent)
/// addresses (a typo in the configuration) must never be removed: not at
/// start as a "leftover", not at stop, not by `release`. Only addresses with
/// a lease, the ones the driver adds, are ever removed.
#[test]
fn a_permanent_address_equal_to_a_vip_survives_start_stop_and_release() {
    let t = Pair::new();
    let own = ip("192.0.2.50");
    t.lab
        .ip(&t.a, ["addr", "add", "192.0.2.50/24", "dev", "eth0"])
        .unwrap();
    let typo = v2_instance(91, 100, "192.0.2.1", "192.0.2.50", 24);

    // Start: refused with a clear error, by the check and by the driver
    // (which, if it did start, stops at once: the token is cancelled).
    let (checked, started) = in_netns(&t.a, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let checked = runtime.block_on(check_host(std::slice::from_ref(&typo)));
        let cancel = CancellationToken::new();
        cancel.cancel();
        let started = runtime.block_on(Driver::builder(vec![typo.clone()]).run(cancel));
        (checked, started)
    })
    .unwrap();
    assert!(t.holds(&t.a, own), "start removed the node's own address");
    let error = checked.unwrap_err().to_string();
    assert!(error.contains("permanent address"), "{error}");
    let error = started.unwrap_err().to_string();
    assert!(error.contains("permanent address"), "{error}");

    // Release: the address is not ours, so nothing is sent or removed.
    let released = in_netns(&t.a, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(release(vec![typo.clone()])).unwrap()
    })
    .unwrap();
    assert_eq!(released, Vec::<u8>::new());
    assert!(t.holds(&t.a, own), "release removed the node's own address");

    // Stop: a Backup whose VIP became a permanent address while it ran
    // (someone added it by hand) leaves it in place.
    let vip = ip("192.0.2.51");
    let _b = Router::spawn(
        &t.b,
        vec![v2_instance(92, 200, "192.0.2.2", "192.0.2.51", 24)],
    );
    t.wait_holder(&t.b, vip);
    let mut a = Router::spawn(
        &t.a,
        vec![v2_instance(92, 100, "192.0.2.1", "192.0.2.51", 24)],
    );
    a.wait_status(92, "A backup", |s| s.state == State::Backup);
    t.lab
        .ip(&t.a, ["addr", "add", "192.0.2.51/24", "dev", "eth0"])
        .unwrap();
    assert_eq!(a.stop(), "stopped");
    assert!(t.holds(&t.a, vip), "stop removed a permanent address");
}

/// Runs `nft` with `args` in `netns`.
fn nft(lab: &Lab, netns: &str, args: &[&str]) {
    let out = lab.exec_in(netns, "nft", args).unwrap();
    assert!(out.status.success(), "nft {args:?}: {out:?}");
}

/// Issue 14 finding 4: a Master whose adverts cannot leave (here a firewall
/// in its namespace drops outgoing protocol 112, so sendmsg fails with
/// EPERM) must not keep renewing its VIP while a Backup takes over: it goes
/// to Fault and releases the VIP, and comes back once adverts go out again.
#[test]
fn a_master_that_cannot_send_gives_up_the_vip_and_recovers() {
    let t = Pair::new();
    let vip = ip("192.0.2.130");
    let a = Router::spawn(
        &t.a,
        vec![v2_instance(93, 200, "192.0.2.1", "192.0.2.130", 24)],
    );
    let _b = Router::spawn(
        &t.b,
        vec![v2_instance(93, 100, "192.0.2.2", "192.0.2.130", 24)],
    );
    t.wait_holder(&t.a, vip);

    nft(&t.lab, &t.a, &["add", "table", "inet", "cplbtest"]);
    nft(
        &t.lab,
        &t.a,
        &[
            "add",
            "chain",
            "inet",
            "cplbtest",
            "out",
            "{ type filter hook output priority 0 ; }",
        ],
    );
    nft(
        &t.lab,
        &t.a,
        &[
            "add", "rule", "inet", "cplbtest", "out", "meta", "l4proto", "112", "drop",
        ],
    );
    // A stops renewing, gives up the VIP; B takes over: one holder.
    a.wait_status(93, "A in Fault", |s| {
        s.state == State::Fault && s.stats.tx_faults >= 1
    });
    t.wait_holder(&t.b, vip);
    let status = a.wait_status(93, "A", |_| true);
    assert!(status.stats.send_errors >= 3, "{:?}", status.stats);

    // Adverts go out again: A is back, and with priority 200 preempts B.
    nft(&t.lab, &t.a, &["delete", "table", "inet", "cplbtest"]);
    a.wait_status(93, "A master again", |s| s.state == State::Master);
    t.wait_holder(&t.a, vip);
}

/// Issue 15: the instances of a node become Master together and their
/// adverts fall due together; the driver renews all their leases in one
/// netlink batch after the wake-up. Every lease must stay fresh: with a
/// 3 s lease renewed every second the kernel shows 2 or 3 s left (it
/// floors the age), never 1, unless an instance's renewal was skipped.
#[test]
fn masters_renewing_together_keep_every_lease_fresh() {
    let t = Pair::new();
    let vips: Vec<String> = (0..6).map(|i| format!("192.0.2.{}", 140 + i)).collect();
    let configs = vips
        .iter()
        .enumerate()
        .map(|(i, vip)| v2_instance(100 + i as u8, 200, "192.0.2.1", vip, 32))
        .collect();
    let a = Router::spawn(&t.a, configs);
    for vip in &vips {
        t.wait_holder(&t.a, ip(vip));
    }
    let sent = |a: &Router| {
        a.status
            .borrow()
            .instances
            .iter()
            .map(|s| s.stats.adverts_sent)
            .min()
            .unwrap_or(0)
    };
    // Bounded: until every instance sent 5 more adverts (more than the
    // 3 s lease), at most WAIT.
    let start = sent(&a);
    let deadline = std::time::Instant::now() + WAIT;
    let mut samples = 0;
    while sent(&a) < start + 5 {
        assert!(std::time::Instant::now() < deadline, "adverts stopped");
        let present = t.lab.addresses(&t.a, "eth0").unwrap();
        for vip in &vips {
            let found = present.iter().find(|x| x.ip == ip(vip));
            let left = found.and_then(|x| x.valid_lft);
            assert!(
                left.is_some_and(|s| s >= 2),
                "{vip}: lease not renewed ({left:?} s left, sample {samples})"
            );
        }
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let statuses = a.status.borrow().instances.clone();
    for s in statuses {
        assert_eq!(s.state, State::Master, "{s:?}");
        assert_eq!(s.stats.vip_errors, 0, "{s:?}");
    }
}

/// Issue 14 finding 7: a flood of protocol-112 packets (here valid adverts
/// for a VRID nobody runs, which pass the TTL check and are decoded) must
/// not starve the Master's advert timer. Bounded: at most 3 s and 2 million
/// packets.
#[test]
fn a_protocol_112_flood_does_not_stop_the_masters_adverts() {
    let t = Pair::new();
    let vip = ip("192.0.2.131");
    let a = Router::spawn(
        &t.a,
        vec![v2_instance(94, 200, "192.0.2.1", "192.0.2.131", 24)],
    );
    let before = a.wait_status(94, "A master", |s| s.state == State::Master);
    t.wait_holder(&t.a, vip);

    let junk = Advert {
        version: Version::V2,
        vrid: 95,
        priority: 100,
        interval: Centis::from_secs(1),
        auth: Auth::None,
        addrs: vec![ip("192.0.2.132")],
    };
    let mut bytes = vec![0; junk.buffer_len()];
    let n = junk
        .emit(ip("192.0.2.2"), ip("192.0.2.1"), &mut bytes)
        .unwrap();
    bytes.truncate(n);
    let sent = in_netns(&t.b, move || {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112))).unwrap();
        socket.set_ttl_v4(255).unwrap();
        let dst = SockAddr::from("192.0.2.1:0".parse::<SocketAddrV4>().unwrap());
        let until = std::time::Instant::now() + Duration::from_secs(3);
        let mut sent = 0u64;
        while sent < 2_000_000 && std::time::Instant::now() < until {
            for _ in 0..1000 {
                if socket.send_to(&bytes, &dst).is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    })
    .unwrap();

    // The flood reached the driver, and A kept advertising through it.
    // Unicast to a multicast instance: dropped as wrong_destination.
    let socket = a.wait_socket("flood counted", |s| s.stats.wrong_destination > 0);
    let after = a.wait_status(94, "A", |_| true);
    eprintln!(
        "flood: {sent} packets sent; A's socket {:?}; adverts sent {} -> {}",
        socket.stats, before.stats.adverts_sent, after.stats.adverts_sent
    );
    assert_eq!(after.state, State::Master);
    assert!(
        after.stats.adverts_sent >= before.stats.adverts_sent + 2,
        "adverts during a 3 s flood of {sent}: {} -> {}; socket {:?}",
        before.stats.adverts_sent,
        after.stats.adverts_sent,
        socket.stats
    );
    assert!(t.holds(&t.a, vip));
}

/// Issue 14 item 12 / F15, as keepalived 2.4.3: a unicast instance takes
/// adverts from a listed peer whatever their TTL (a routed hop apart;
/// vrrp.c:1027 checks TTL "but not if unicast"), and drops a multicast
/// advert even from that peer (vrrp.c:1264-1278). The socket joins the group
/// on the interface, so the multicast advert does reach it.
#[test]
fn unicast_takes_a_routed_peers_advert_and_drops_a_multicast_one() {
    let t = Pair::new();
    let vip = ip("192.0.2.150");
    let mut leader = v2_instance(74, 100, "192.0.2.1", "192.0.2.150", 24);
    leader.unicast_peers = vec![ip("192.0.2.2")];
    let a = Router::spawn(&t.a, vec![leader]);
    a.wait_status(74, "A master", |s| s.state == State::Master);
    t.wait_holder(&t.a, vip);

    // Higher priority, from the listed peer, but to the multicast group.
    inject_v2(&t.b, "224.0.0.18", 255, 74, 254, "192.0.2.150", false);
    a.wait_socket("a wrong_destination drop", |s| {
        s.stats.wrong_destination == 1
    });
    assert_eq!(a.wait_status(74, "A", |_| true).state, State::Master);
    assert!(t.holds(&t.a, vip));

    // The same advert unicast to A, as if it crossed a router (TTL 254):
    // accepted, A steps down.
    inject_v2(&t.b, "192.0.2.1", 254, 74, 254, "192.0.2.150", false);
    a.wait_status(74, "A backup after the routed peer's advert", |s| {
        s.state == State::Backup
    });
    assert_eq!(a.wait_socket("a", |_| true).stats.bad_ttl, 0);
}

/// An `ip -batch` file in the test's temporary directory: `lines` as
/// written.
fn batch_file(name: &str, lines: &[String]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("cplb-{}-{name}.batch", std::process::id()));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn lost_link_notifications_are_recovered_from_a_dump() {
    // Issue 14 F11: when the netlink receive buffer overflows, the kernel
    // drops notifications (ENOBUFS). A link up lost that way left the
    // instance in Fault for good: nothing else brings it back. With a tiny
    // receive buffer, a burst of address changes hides the link up among
    // a thousand other notifications.
    let t = Pair::new();
    let vip = ip("192.0.2.100");
    let a = Router::spawn_with_netlink_buffer(
        &t.a,
        vec![v2_instance(51, 200, "192.0.2.1", "192.0.2.100", 24)],
        Some(1),
    );
    t.wait_holder(&t.a, vip);
    t.lab.ip(&t.a, ["link", "set", "eth0", "down"]).unwrap();
    a.wait_status(51, "fault while the link is down", |s| {
        s.state == State::Fault
    });
    t.lab
        .ip(
            &t.a,
            [
                "link", "add", "spam0", "type", "veth", "peer", "name", "spam1",
            ],
        )
        .unwrap();
    t.lab.ip(&t.a, ["link", "set", "spam0", "up"]).unwrap();
    let add = |i: u32| format!("addr add 2001:db8:1::{i:x}/128 dev spam0 nodad");
    let mut lines: Vec<String> = (1..=500).map(add).collect();
    lines.push("link set eth0 up".to_owned());
    lines.extend((501..=1000).map(add));
    let batch = batch_file("overrun", &lines);
    let out = t.lab.ip(&t.a, ["-batch", batch.to_str().unwrap()]);
    let _ = std::fs::remove_file(&batch);
    out.unwrap();

    cplb_e2e::wait_for("an overrun to be counted", WAIT, || {
        (a.status.borrow().netlink_overruns > 0).then_some(())
    })
    .unwrap();
    // Whatever was lost, the driver knows the link is up again.
    a.wait_status(51, "master again once the link is up", |s| {
        s.state == State::Master
    });
    t.wait_holder(&t.a, vip);
}

/// A Backup whose whole process stalls for longer than Master_Down_Interval
/// while the Master keeps advertising (a paused VM, a starved CPU) finds
/// the Master's adverts waiting when it runs again: it must read them
/// before acting on its expired timer, not take the VIP for an instant and
/// hand it back (seen at 100 ms adverts under load, bench/failover).
#[test]
fn a_backup_that_stalls_reads_the_queued_adverts_before_its_timer() {
    let t = Pair::new();
    let vip = ip("192.0.2.109");
    let _a = Router::spawn(
        &t.a,
        vec![v2_instance(59, 200, "192.0.2.1", "192.0.2.109", 32)],
    );
    let b = Router::spawn(
        &t.b,
        vec![v2_instance(59, 100, "192.0.2.2", "192.0.2.109", 32)],
    );
    t.wait_holder(&t.a, vip);
    let before = b.wait_status(59, "b backup", |s| s.state == State::Backup);

    // Master_Down_Interval of priority 100 at 1 s: 3.61 s.
    b.stall_for(Duration::from_millis(4500));
    // Two heartbeats of b's driver after the stall: it has handled what
    // was waiting, timers included.
    let progress = b.status.borrow().progress;
    cplb_e2e::wait_for("b's driver runs again", WAIT, || {
        (b.status.borrow().progress >= progress + 2).then_some(())
    })
    .unwrap();
    let after = b.wait_status(59, "b status", |_| true);
    assert_eq!(
        (after.state, after.transitions),
        (State::Backup, before.transitions),
        "b took over after its stall"
    );
    assert!(t.holds(&t.a, vip) && !t.holds(&t.b, vip));
}
