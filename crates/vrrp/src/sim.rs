//! A simulated LAN of virtual routers on a virtual clock (feature `sim`).
//!
//! Every router is a real [`VirtualRouter`]; the LAN carries their adverts to
//! each other after a fixed latency, the way multicast reaches every host on
//! a segment. Time jumps from one event to the next, so a scenario of minutes
//! runs in microseconds and always the same way. Used by the crate's scenario
//! tests and its state-machine fuzzer; handy for anyone embedding the crate
//! who wants to test a policy on top of it.
//!
//! ```
//! use std::time::Duration;
//! use cplb_vrrp::fsm::{Config, State};
//! use cplb_vrrp::sim::Lan;
//! use cplb_vrrp::wire::Version;
//!
//! let mut lan = Lan::new(Duration::from_millis(1));
//! for host in 10..13 {
//!     let ip = format!("192.0.2.{host}").parse().unwrap();
//!     let mut config = Config::new(Version::V2, 51, ip, vec!["192.0.2.100".parse().unwrap()]);
//!     config.priority = 200;
//!     let node = lan.add(config).unwrap();
//!     lan.start(node);
//! }
//! lan.run_for(Duration::from_secs(10));
//! assert_eq!(lan.masters().len(), 1);
//! ```

// Node ids are handed out by `Lan::add`; indexing with one is the harness's
// contract (documented on `Lan::node`), not input from a network.
#![allow(clippy::indexing_slicing)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::fsm::{Action, Config, ConfigError, Reason, State, VirtualRouter};
use crate::wire::{Advert, MULTICAST_V4, MULTICAST_V6};

/// Index of a router on the [`Lan`].
pub type NodeId = usize;

/// The most events one `run_*` call processes: a livelock guard.
const MAX_EVENTS_PER_RUN: usize = 1_000_000;

/// One router on the LAN and what the simulated host knows about it.
#[derive(Debug, Clone)]
pub struct Node {
    /// The state machine.
    pub router: VirtualRouter,
    /// The process runs (false after [`Lan::kill`]).
    pub running: bool,
    /// Its link reaches the LAN (false after [`Lan::disconnect`]).
    pub connected: bool,
    /// The host carries the virtual addresses (AddVips seen last).
    pub holds_vips: bool,
    /// Adverts it sent.
    pub adverts_sent: u64,
    /// Delay added to everything it puts on the wire (a slow host or link).
    pub extra_latency: Duration,
    /// How long the host takes to carry out an announcement (the VIP and
    /// lease work before it, the burst itself). Meanwhile it is busy: the
    /// burst leaves when done, what it sends next leaves after it, and what
    /// arrives waits until then, as in the driver, which carries out one
    /// router's actions in order before it reads the next packet.
    pub announce_time: Duration,
    /// Until when the host is busy (see `announce_time`).
    busy_until: Instant,
}

/// A state change seen on the LAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// When.
    pub at: Instant,
    /// Which router.
    pub node: NodeId,
    /// Old state.
    pub from: State,
    /// New state.
    pub to: State,
    /// Why.
    pub reason: Reason,
}

#[derive(Debug, Clone)]
struct InFlight {
    at: Instant,
    /// Every connected router, or one (a delivery deferred while it was
    /// busy).
    to: Option<NodeId>,
    from: NodeId,
    src: IpAddr,
    packet: Packet,
}

#[derive(Debug, Clone)]
enum Packet {
    Advert(Advert),
    /// A gratuitous ARP / NA burst: the LAN learns the sender's MAC.
    Announce,
}

/// The simulated LAN. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Lan {
    epoch: Instant,
    now: Instant,
    latency: Duration,
    nodes: Vec<Node>,
    wire: Vec<InFlight>,
    transitions: Vec<Transition>,
    rejected: u64,
    /// The node whose gratuitous ARP / NA reached the LAN last.
    last_announcer: Option<NodeId>,
}

impl Lan {
    /// An empty LAN whose packets take `latency` to arrive.
    pub fn new(latency: Duration) -> Lan {
        let epoch = Instant::now();
        Lan {
            epoch,
            now: epoch,
            latency,
            nodes: Vec::new(),
            wire: Vec::new(),
            transitions: Vec::new(),
            rejected: 0,
            last_announcer: None,
        }
    }

    /// The virtual clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Time since the LAN was made.
    pub fn elapsed(&self) -> Duration {
        self.now - self.epoch
    }

    /// Adds a router in Initialize, connected, not yet started.
    pub fn add(&mut self, config: Config) -> Result<NodeId, ConfigError> {
        let router = VirtualRouter::new(config)?;
        self.nodes.push(Node {
            router,
            running: true,
            connected: true,
            holds_vips: false,
            adverts_sent: 0,
            extra_latency: Duration::ZERO,
            announce_time: Duration::ZERO,
            busy_until: self.now,
        });
        Ok(self.nodes.len() - 1)
    }

    /// A router.
    ///
    /// # Panics
    /// If `node` was not returned by [`Lan::add`].
    pub fn node(&self, node: NodeId) -> &Node {
        &self.nodes[node]
    }

    /// Every router.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The running routers in Master.
    pub fn masters(&self) -> Vec<NodeId> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running && self.nodes[i].router.state() == State::Master)
            .collect()
    }

    /// The running hosts that carry the virtual addresses.
    pub fn holders(&self) -> Vec<NodeId> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].running && self.nodes[i].holds_vips)
            .collect()
    }

    /// Every state change so far, in order.
    pub fn transitions(&self) -> &[Transition] {
        &self.transitions
    }

    /// The node whose gratuitous ARP / NA reached the LAN last: the MAC a
    /// client's ARP cache holds for the VIPs.
    pub fn last_announcer(&self) -> Option<NodeId> {
        self.last_announcer
    }

    /// Adverts dropped by the receivers' checks.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Startup event on `node`.
    pub fn start(&mut self, node: NodeId) {
        let actions = self.nodes[node].router.start(self.now);
        self.apply(node, actions);
    }

    /// Graceful shutdown of `node` (priority-0 advert from a Master).
    pub fn shutdown(&mut self, node: NodeId) {
        let actions = self.nodes[node].router.shutdown(self.now);
        self.apply(node, actions);
    }

    /// The process on `node` dies at once, like SIGKILL: it sends and
    /// receives nothing more. Its host keeps whatever addresses it had.
    pub fn kill(&mut self, node: NodeId) {
        self.nodes[node].running = false;
    }

    /// A fresh process on `node` with the same configuration, started. The
    /// host's addresses are cleared first, as the driver does at start.
    pub fn restart(&mut self, node: NodeId) {
        let config = self.nodes[node].router.config().clone();
        let Ok(router) = VirtualRouter::new(config) else {
            return; // the config was valid when the node was added
        };
        let n = &mut self.nodes[node];
        n.router = router;
        n.running = true;
        n.holds_vips = false;
        self.start(node);
    }

    /// Cuts `node` off the LAN (its bridge port goes down): its adverts reach
    /// nobody and it hears nothing. Its own link stays up.
    pub fn disconnect(&mut self, node: NodeId) {
        self.nodes[node].connected = false;
    }

    /// Puts `node` back on the LAN.
    pub fn reconnect(&mut self, node: NodeId) {
        self.nodes[node].connected = true;
    }

    /// `node`'s own interface goes down.
    pub fn link_down(&mut self, node: NodeId) {
        self.nodes[node].connected = false;
        let actions = self.nodes[node].router.link_down(self.now);
        self.apply(node, actions);
    }

    /// `node`'s own interface comes back up.
    pub fn link_up(&mut self, node: NodeId) {
        self.nodes[node].connected = true;
        let actions = self.nodes[node].router.link_up(self.now);
        self.apply(node, actions);
    }

    /// Changes `node`'s priority.
    pub fn set_priority(&mut self, node: NodeId, priority: u8) {
        let actions = self.nodes[node].router.set_priority(self.now, priority);
        self.apply(node, actions);
    }

    /// Adds `extra` to the latency of everything `node` sends.
    pub fn set_extra_latency(&mut self, node: NodeId, extra: Duration) {
        self.nodes[node].extra_latency = extra;
    }

    /// Sets how long `node` takes to carry out each announcement (see
    /// [`Node::announce_time`]).
    pub fn set_announce_time(&mut self, node: NodeId, time: Duration) {
        self.nodes[node].announce_time = time;
    }

    /// Puts a packet on the wire as if `src` had sent it, to arrive after the
    /// LAN's latency at every connected router (a hostile or foreign sender).
    /// Like real bytes, it goes through the codec: an advert the wire format
    /// cannot carry (a v3 interval above 40.95 s, say) never arrives, and
    /// what arrives is what [`Advert::parse`] makes of it. Returns whether it
    /// was sent.
    pub fn inject(&mut self, src: IpAddr, advert: Advert) -> bool {
        let dst = match src {
            IpAddr::V4(_) => IpAddr::V4(MULTICAST_V4),
            IpAddr::V6(_) => IpAddr::V6(MULTICAST_V6),
        };
        let mut bytes = vec![0; advert.buffer_len()];
        let Ok(len) = advert.emit(src, dst, &mut bytes) else {
            return false;
        };
        let Ok(advert) = Advert::parse(bytes.get(..len).unwrap_or_default(), src, dst) else {
            return false;
        };
        self.wire.push(InFlight {
            at: self.now + self.latency,
            to: None,
            from: usize::MAX,
            src,
            packet: Packet::Advert(advert),
        });
        true
    }

    /// Runs every event up to `now + duration`.
    pub fn run_for(&mut self, duration: Duration) {
        let until = self.now + duration;
        self.run_until(until, |_| false);
    }

    /// Runs events until `done(self)` holds after an event (returning the
    /// time it first held) or the clock reaches `until` (returning `None`).
    pub fn run_until(
        &mut self,
        until: Instant,
        mut done: impl FnMut(&Lan) -> bool,
    ) -> Option<Instant> {
        for _ in 0..MAX_EVENTS_PER_RUN {
            let Some(at) = self.next_event().filter(|&at| at <= until) else {
                self.now = self.now.max(until);
                return None;
            };
            self.now = self.now.max(at);
            self.step();
            if done(self) {
                return Some(self.now);
            }
        }
        None
    }

    fn next_event(&self) -> Option<Instant> {
        let delivery = self.wire.iter().map(|p| p.at).min();
        let timeout = self
            .nodes
            .iter()
            .filter(|n| n.running)
            .filter_map(|n| n.router.poll_timeout().map(|at| at.max(n.busy_until)))
            .min();
        match (delivery, timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles everything due at `self.now`: deliveries first (in send
    /// order), then each router's timers.
    fn step(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = self.wire.drain(..).partition(|p| p.at <= now);
        self.wire = later;
        for packet in due {
            let advert = match &packet.packet {
                Packet::Announce => {
                    self.last_announcer = Some(packet.from);
                    continue;
                }
                Packet::Advert(advert) => advert.clone(),
            };
            for to in 0..self.nodes.len() {
                let n = &self.nodes[to];
                if to == packet.from
                    || packet.to.is_some_and(|only| only != to)
                    || !n.running
                    || !n.connected
                {
                    continue;
                }
                if n.busy_until > now {
                    // Read once the host is done with what it is doing.
                    self.wire.push(InFlight {
                        at: n.busy_until,
                        to: Some(to),
                        ..packet.clone()
                    });
                    continue;
                }
                match self.nodes[to].router.receive(now, packet.src, &advert) {
                    Ok(actions) => self.apply(to, actions),
                    Err(_) => self.rejected += 1,
                }
            }
        }
        for node in 0..self.nodes.len() {
            if self.nodes[node].running && self.nodes[node].busy_until <= now {
                let actions = self.nodes[node].router.handle_timeout(now);
                self.apply(node, actions);
            }
        }
    }

    fn apply(&mut self, node: NodeId, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::StateChanged { from, to, reason } => self.transitions.push(Transition {
                    at: self.now,
                    node,
                    from,
                    to,
                    reason,
                }),
                Action::AddVips => self.nodes[node].holds_vips = true,
                Action::RemoveVips => self.nodes[node].holds_vips = false,
                Action::Send(advert) => {
                    let n = &mut self.nodes[node];
                    n.adverts_sent += 1;
                    if n.connected {
                        let src = n.router.config().primary_ip;
                        self.wire.push(InFlight {
                            at: n.busy_until.max(self.now) + self.latency + n.extra_latency,
                            to: None,
                            from: node,
                            src,
                            packet: Packet::Advert(advert),
                        });
                    }
                }
                Action::Announce { .. } => {
                    let now = self.now;
                    let n = &mut self.nodes[node];
                    n.busy_until = n.busy_until.max(now) + n.announce_time;
                    if n.connected {
                        self.wire.push(InFlight {
                            at: n.busy_until + self.latency + n.extra_latency,
                            to: None,
                            from: node,
                            src: n.router.config().primary_ip,
                            packet: Packet::Announce,
                        });
                    }
                }
            }
        }
    }
}
