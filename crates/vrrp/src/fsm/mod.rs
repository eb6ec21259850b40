//! One virtual router's state machine: RFC 3768 §6 (VRRPv2) and RFC 5798 §6
//! (VRRPv3), plus the few keepalived behaviours a mixed cluster relies on.
//!
//! [`VirtualRouter`] is sans-IO. Inputs are method calls that carry `now`:
//! [`start`](VirtualRouter::start), [`shutdown`](VirtualRouter::shutdown),
//! [`receive`](VirtualRouter::receive) (an advert that passed the wire
//! checks), [`handle_timeout`](VirtualRouter::handle_timeout),
//! [`link_down`](VirtualRouter::link_down) / [`link_up`](VirtualRouter::link_up)
//! and [`set_priority`](VirtualRouter::set_priority). Each returns the
//! [`Action`]s to carry out, in order. [`poll_timeout`](VirtualRouter::poll_timeout)
//! tells when to call `handle_timeout` next; a spurious call is a no-op.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use cplb_vrrp::fsm::{Action, Config, State, VirtualRouter};
//! use cplb_vrrp::wire::{Auth, Version};
//!
//! let mut config = Config::new(
//!     Version::V2, 51, "192.0.2.10".parse().unwrap(), vec!["192.0.2.100".parse().unwrap()],
//! );
//! config.priority = 200;
//! config.auth = Auth::pass(b"secret");
//! let mut router = VirtualRouter::new(config).unwrap();
//!
//! let t0 = Instant::now();
//! router.start(t0);
//! assert_eq!(router.state(), State::Backup);
//!
//! // Nobody else advertises: after Master_Down_Interval
//! // (3 × 1 s + (256 - 200) / 256 s) this router becomes Master.
//! let deadline = router.poll_timeout().unwrap();
//! assert_eq!(deadline - t0, Duration::from_millis(3218) + Duration::from_nanos(750_000));
//! let actions = router.handle_timeout(deadline);
//! assert_eq!(router.state(), State::Master);
//! assert!(actions.contains(&Action::AddVips));
//! ```

mod config;
#[cfg(test)]
mod tests;
mod timer;

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use config::{Config, ConfigError, GarpConfig};
use timer::{Timer, TimerTable};

use crate::wire::{Advert, Auth, Centis, Version};

/// The priority a resigning Master advertises (RFC 3768 §5.3.4).
pub const PRIORITY_RESIGN: u8 = 0;
/// The priority of the router that owns the virtual addresses.
pub const PRIORITY_OWNER: u8 = 255;

/// A virtual router's state (RFC 3768 §6.4, plus keepalived's Fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not started, or shut down: waiting for a Startup event.
    Initialize,
    /// Monitoring the Master; takes over if it goes silent.
    Backup,
    /// Forwarding for the virtual addresses and advertising.
    Master,
    /// The interface is down: no adverts, no addresses (keepalived's FAULT).
    Fault,
}

impl State {
    /// A lowercase name, for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Initialize => "initialize",
            State::Backup => "backup",
            State::Master => "master",
            State::Fault => "fault",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a state change happened, for the one log line each change gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Startup with a priority below 255 (RFC 3768 §6.4.1).
    Startup,
    /// Startup as the address owner, priority 255 (RFC 3768 §6.4.1).
    OwnerStartup,
    /// No advert from the Master for Master_Down_Interval.
    MasterDown,
    /// The Master resigned with a priority-0 advert; we waited Skew_Time.
    MasterResigned,
    /// We preempted a lower-priority Master: we discarded its adverts until
    /// Master_Down_Interval passed (RFC 3768 §6.4.2, Preempt_Mode).
    Preempted {
        /// The priority the old Master advertised.
        their_priority: u8,
    },
    /// A Master saw an advert with a higher priority (RFC 3768 §6.4.3).
    HigherPriority {
        /// The sender.
        from: IpAddr,
        /// Its priority.
        priority: u8,
    },
    /// A Master saw an advert with its own priority from a higher primary
    /// address (RFC 3768 §6.4.3 tie-break).
    HigherAddress {
        /// The sender, whose address is higher than ours.
        from: IpAddr,
    },
    /// Shutdown requested.
    Shutdown,
    /// The interface went down.
    LinkDown,
    /// The interface came back up.
    LinkUp,
    /// Adverts could not be sent (or VIPs added) several times in a row: a
    /// Master that cannot be heard must not keep the VIPs.
    TxFault,
    /// The wait after a transmit fault is over: start over as Backup.
    FaultRetry,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Startup => f.write_str("startup"),
            Reason::OwnerStartup => f.write_str("startup as address owner (priority 255)"),
            Reason::MasterDown => f.write_str("no advertisement for master down interval"),
            Reason::MasterResigned => f.write_str("master resigned (priority 0)"),
            Reason::Preempted { their_priority } => {
                write!(f, "preempted lower-priority master ({their_priority})")
            }
            Reason::HigherPriority { from, priority } => {
                write!(f, "higher priority {priority} advertised by {from}")
            }
            Reason::HigherAddress { from } => {
                write!(f, "equal priority advertised by higher address {from}")
            }
            Reason::Shutdown => f.write_str("shutdown"),
            Reason::LinkDown => f.write_str("interface down"),
            Reason::LinkUp => f.write_str("interface up"),
            Reason::TxFault => f.write_str("adverts cannot be sent or VIPs cannot be added"),
            Reason::FaultRetry => f.write_str("retrying after a transmit fault"),
        }
    }
}

/// Something the caller must do, returned by every input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The state changed; log it once with its reason.
    StateChanged {
        /// Old state.
        from: State,
        /// New state.
        to: State,
        /// Why.
        reason: Reason,
    },
    /// Add the virtual addresses to the interface.
    AddVips,
    /// Remove the virtual addresses from the interface.
    RemoveVips,
    /// Send this advertisement (multicast, or to each unicast peer).
    Send(Advert),
    /// Send `repeat` gratuitous ARPs (IPv4) or unsolicited neighbour
    /// advertisements (IPv6) for every virtual address.
    Announce {
        /// Messages per address.
        repeat: u32,
    },
}

/// Why a received advert was dropped without changing anything. The wire
/// checks (TTL, checksum, length…) are the decoder's and the driver's; these
/// are the checks that need the router's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// RFC 3768 §7.1: the version differs from ours.
    #[error("advert version {got} differs from ours")]
    Version {
        /// The advert's version.
        got: Version,
    },
    /// The advert is for another virtual router (the driver demultiplexes by
    /// VRID; this is a safety net).
    #[error("advert for VRID {0}")]
    Vrid(u8),
    /// RFC 3768 §7.1 / §10: auth type differs from ours.
    #[error("auth type {got} differs from ours ({want})")]
    AuthType {
        /// The advert's auth type.
        got: u8,
        /// Ours.
        want: u8,
    },
    /// RFC 3768 §10.2: the simple-text password differs.
    #[error("wrong authentication password")]
    AuthPassword,
    /// RFC 3768 §7.1: a VRRPv2 advert interval must equal ours.
    #[error("advert interval {got} differs from ours ({want})")]
    Interval {
        /// The advert's interval.
        got: Centis,
        /// Ours.
        want: Centis,
    },
    /// RFC 3768 §7.1 / RFC 5798 §7.1: the address list differs from ours and
    /// the sender is not the owner (keepalived logs these as bogus).
    #[error("advertised address list differs from ours")]
    Addresses,
    /// The advert comes from our own primary address.
    #[error("advert from our own address")]
    OwnAdvert,
    /// The sender's address family differs from ours.
    #[error("advert from another address family")]
    Family,
}

impl RejectReason {
    /// A short stable name, for metric labels.
    pub const fn reason(&self) -> &'static str {
        match self {
            RejectReason::Version { .. } => "version_mismatch",
            RejectReason::Vrid(_) => "vrid_mismatch",
            RejectReason::AuthType { .. } => "auth_type_mismatch",
            RejectReason::AuthPassword => "auth_failure",
            RejectReason::Interval { .. } => "interval_mismatch",
            RejectReason::Addresses => "address_list_mismatch",
            RejectReason::OwnAdvert => "own_advert",
            RejectReason::Family => "family_mismatch",
        }
    }
}

/// One virtual router: the state machine of RFC 3768 §6 / RFC 5798 §6.
#[derive(Debug, Clone)]
pub struct VirtualRouter {
    config: Config,
    state: State,
    timers: TimerTable,
    /// The current priority: the configured one unless changed with
    /// [`VirtualRouter::set_priority`] (health tracking).
    priority: u8,
    /// RFC 5798 §6.1 Master_Adver_Interval: the interval the current Master
    /// advertises (v3 learns it); equals ours for v2.
    master_adver_interval: Centis,
    /// Until when a Backup defers to a lower-priority Master (preempt delay).
    preempt_after: Option<Instant>,
    /// Why MasterDown is armed, to name the reason when it fires.
    down_cause: DownCause,
    /// When a lower-priority advert was last answered (rate limit).
    last_answer: Option<Instant>,
    /// Lower-priority adverts left unanswered by the rate limit.
    answers_suppressed: u64,
    /// When this router last announced its VIPs (GARP / NA) as Master.
    last_announce: Option<Instant>,
    /// Re-announcements after a priority-0 advert in the current window:
    /// when the window started and how many went out in it.
    resign_answers: (Option<Instant>, u32),
}

/// Re-announcements after priority-0 adverts allowed per advertisement
/// interval; more are deferred to the end of the interval, never dropped,
/// so the last announcement on the LAN is still ours. Three covers a
/// takeover race among three or four routers; a flood of forged priority-0
/// adverts gets at most this many bursts per interval.
const RESIGN_ANSWERS_PER_INTERVAL: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DownCause {
    /// Armed from start-up or a Master's advert: the Master went silent.
    Silence,
    /// Armed at Skew_Time by a priority-0 advert.
    Resigned,
    /// Last advert came from a lower-priority Master that we are preempting.
    Preempting(u8),
}

impl VirtualRouter {
    /// A router in [`State::Initialize`], after checking `config`.
    pub fn new(config: Config) -> Result<VirtualRouter, ConfigError> {
        config.validate()?;
        Ok(VirtualRouter {
            priority: config.priority,
            master_adver_interval: config.advert_interval,
            config,
            state: State::Initialize,
            timers: TimerTable::default(),
            preempt_after: None,
            down_cause: DownCause::Silence,
            last_answer: None,
            answers_suppressed: 0,
            last_announce: None,
            resign_answers: (None, 0),
        })
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current priority.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Lower-priority adverts a Master left unanswered because it had
    /// answered one less than an advertisement interval before.
    pub fn answers_suppressed(&self) -> u64 {
        self.answers_suppressed
    }

    /// RFC 5798 §6.1 Master_Adver_Interval: ours for v2, learned for v3.
    pub fn master_adver_interval(&self) -> Centis {
        self.master_adver_interval
    }

    /// RFC 3768 §6.1 Skew_Time: `(256 - Priority) / 256` seconds; RFC 5798
    /// §6.1: `((256 - Priority) * Master_Adver_Interval) / 256` centiseconds,
    /// in whole centiseconds as keepalived computes it.
    pub fn skew_time(&self) -> Duration {
        let weight = 256 - u64::from(self.priority);
        match self.config.version {
            // 1/256 s is exactly 3 906 250 ns.
            Version::V2 => Duration::from_nanos(weight * 3_906_250),
            Version::V3 => {
                let centis = weight * u64::from(self.master_adver_interval.0) / 256;
                Duration::from_millis(centis * 10)
            }
        }
    }

    /// RFC 3768 §6.1 / RFC 5798 §6.1 Master_Down_Interval:
    /// `3 * Master_Adver_Interval + Skew_Time`.
    pub fn master_down_interval(&self) -> Duration {
        self.master_adver_interval.to_duration() * 3 + self.skew_time()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_timeout()
    }

    /// The advertisement this router sends with `priority`.
    pub fn advert(&self, priority: u8) -> Advert {
        Advert {
            version: self.config.version,
            vrid: self.config.vrid,
            priority,
            interval: self.config.advert_interval,
            auth: self.config.auth,
            addrs: self.config.vips.clone(),
        }
    }

    /// The Startup event (RFC 3768 §6.4.1, RFC 5798 §6.4.1). Ignored unless
    /// in Initialize.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        if self.state != State::Initialize {
            return Vec::new();
        }
        self.preempt_after = Some(now + self.config.preempt_delay);
        self.startup(now, Reason::Startup)
    }

    fn startup(&mut self, now: Instant, reason: Reason) -> Vec<Action> {
        let mut out = Vec::new();
        // RFC 5798 §6.4.1: Master_Adver_Interval starts as ours.
        self.master_adver_interval = self.config.advert_interval;
        if self.priority == PRIORITY_OWNER {
            // RFC 3768 §6.4.1: the owner advertises, announces and is Master.
            let reason = if reason == Reason::Startup {
                Reason::OwnerStartup
            } else {
                reason
            };
            self.become_master(now, reason, &mut out);
        } else {
            // RFC 3768 §6.4.1: set Master_Down_Timer, transition to Backup.
            self.become_backup(now, reason, &mut out);
        }
        out
    }

    /// The Shutdown event: a Master sends one priority-0 advert and releases
    /// its addresses (RFC 3768 §6.4.3); every state goes to Initialize.
    pub fn shutdown(&mut self, _now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match self.state {
            State::Initialize => return out,
            State::Master => {
                self.transition(State::Initialize, Reason::Shutdown, &mut out);
                // RFC 3768 §6.4.3: "Send an ADVERTISEMENT with Priority = 0".
                out.push(Action::Send(self.advert(PRIORITY_RESIGN)));
                out.push(Action::RemoveVips);
            }
            State::Backup | State::Fault => {
                // RFC 3768 §6.4.2: cancel Master_Down_Timer, to Initialize.
                self.transition(State::Initialize, Reason::Shutdown, &mut out);
            }
        }
        self.timers.stop_all();
        out
    }

    /// The interface went down: stop advertising and release the addresses.
    /// No priority-0 advert can leave a down link; the Backups take over
    /// after Master_Down_Interval.
    pub fn link_down(&mut self, _now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let was_master = self.state == State::Master;
        if self.state == State::Fault {
            // A transmit fault's retry must not bring a down link back to
            // Backup: only link_up does.
            self.timers.stop_all();
        }
        if matches!(self.state, State::Initialize | State::Fault) {
            return out;
        }
        self.transition(State::Fault, Reason::LinkDown, &mut out);
        if was_master {
            out.push(Action::RemoveVips);
        }
        self.timers.stop_all();
        out
    }

    /// The caller could not send adverts or add the VIPs several times in
    /// a row (source address gone, a firewall dropping protocol 112, no
    /// route to the peers, VIPs refused): a Master that nobody hears while
    /// it keeps the VIPs is a second holder once a Backup takes over. Like
    /// [`link_down`](Self::link_down): Fault, VIPs released, nothing sent;
    /// then, `retry_after` later, the router starts over as Backup, and
    /// from there follows the protocol again (the caller decides what
    /// counts as sending again). Ignored in Initialize and Fault.
    pub fn tx_fault(&mut self, now: Instant, retry_after: Duration) -> Vec<Action> {
        let mut out = Vec::new();
        if matches!(self.state, State::Initialize | State::Fault) {
            return out;
        }
        let was_master = self.state == State::Master;
        self.transition(State::Fault, Reason::TxFault, &mut out);
        if was_master {
            out.push(Action::RemoveVips);
        }
        self.timers.stop_all();
        self.timers.set(Timer::FaultRetry, now + retry_after);
        out
    }

    /// The interface came back: start over as at Startup.
    pub fn link_up(&mut self, now: Instant) -> Vec<Action> {
        if self.state != State::Fault {
            return Vec::new();
        }
        self.startup(now, Reason::LinkUp)
    }

    /// Changes the priority (1..=254), for health tracking. A Master
    /// advertises the new priority at once, so a Backup that now outranks it
    /// can preempt without waiting an interval. Priorities 0 and 255 have
    /// protocol meanings and are refused (the priority is left as is).
    pub fn set_priority(&mut self, now: Instant, priority: u8) -> Vec<Action> {
        let mut out = Vec::new();
        if priority == PRIORITY_RESIGN || priority == PRIORITY_OWNER || priority == self.priority {
            return out;
        }
        self.priority = priority;
        if self.state == State::Master {
            out.push(Action::Send(self.advert(priority)));
            self.timers.set(
                Timer::Adver,
                now + self.config.advert_interval.to_duration(),
            );
        }
        out
    }

    /// An advertisement for this router's VRID that passed the wire checks
    /// (decoded, TTL 255, not from us). `src` is the IP source address.
    ///
    /// Returns the actions, or why the advert was dropped; a dropped advert
    /// changes nothing.
    pub fn receive(
        &mut self,
        now: Instant,
        src: IpAddr,
        advert: &Advert,
    ) -> Result<Vec<Action>, RejectReason> {
        self.check(src, advert)?;
        let mut out = Vec::new();
        match self.state {
            State::Initialize | State::Fault => {}
            State::Backup => self.backup_receive(now, advert),
            State::Master => self.master_receive(now, src, advert, &mut out),
        }
        Ok(out)
    }

    /// The per-router receive checks of RFC 3768 §7.1 and RFC 5798 §7.1.
    fn check(&self, src: IpAddr, advert: &Advert) -> Result<(), RejectReason> {
        if src == self.config.primary_ip {
            return Err(RejectReason::OwnAdvert);
        }
        if src.is_ipv6() != self.config.primary_ip.is_ipv6() {
            return Err(RejectReason::Family);
        }
        if advert.version != self.config.version {
            return Err(RejectReason::Version {
                got: advert.version,
            });
        }
        if advert.vrid != self.config.vrid {
            return Err(RejectReason::Vrid(advert.vrid));
        }
        if self.config.version == Version::V2 {
            // RFC 3768 §7.1: the auth type must match ours; with simple-text
            // auth (§10.2) so must the password.
            let (got, want) = (advert.auth.type_number(), self.config.auth.type_number());
            if got != want {
                return Err(RejectReason::AuthType { got, want });
            }
            if let (Auth::Pass(theirs), Auth::Pass(ours)) = (advert.auth, self.config.auth)
                && theirs != ours
            {
                return Err(RejectReason::AuthPassword);
            }
            // RFC 3768 §7.1: "MUST verify that the Adver Interval in the
            // packet is the same as the locally configured". (RFC 5798 drops
            // this check: a v3 Backup learns the Master's interval.)
            if advert.interval != self.config.advert_interval {
                return Err(RejectReason::Interval {
                    got: advert.interval,
                    want: self.config.advert_interval,
                });
            }
        }
        // RFC 3768 §7.1 / RFC 5798 §7.1: an address list that differs from
        // ours is dropped. The RFCs exempt the owner (priority 255); we do
        // not: nodes here never run as owner, and the exemption would let
        // any forged priority-255 advert with any list take the VIPs over.
        // keepalived compares the lists as sets.
        if !same_addresses(&advert.addrs, &self.config.vips) {
            return Err(RejectReason::Addresses);
        }
        Ok(())
    }

    /// RFC 3768 §6.4.2 / RFC 5798 §6.4.2: an ADVERTISEMENT in Backup.
    fn backup_receive(&mut self, now: Instant, advert: &Advert) {
        if advert.priority == PRIORITY_RESIGN {
            // "If the Priority in the ADVERTISEMENT is zero, then: Set the
            // Master_Down_Timer to Skew_Time".
            self.timers.set(Timer::MasterDown, now + self.skew_time());
            self.down_cause = DownCause::Resigned;
            return;
        }
        let defer = !self.config.preempt
            || advert.priority >= self.priority
            || self.preempt_after.is_some_and(|after| now < after);
        if defer {
            // "If Preempt_Mode is False, or if the Priority in the
            // ADVERTISEMENT is greater than or equal to the local Priority":
            // RFC 5798 §6.4.2 learns Master_Adver_Interval, recomputes
            // Skew_Time and Master_Down_Interval, then resets the timer.
            if self.config.version == Version::V3 && advert.interval.0 > 0 {
                self.master_adver_interval = advert.interval;
            }
            self.timers
                .set(Timer::MasterDown, now + self.master_down_interval());
            self.down_cause = DownCause::Silence;
        } else {
            // "Otherwise: Discard the ADVERTISEMENT": the timer keeps running
            // and we preempt when it fires.
            if self.down_cause != DownCause::Resigned {
                self.down_cause = DownCause::Preempting(advert.priority);
            }
        }
    }

    /// RFC 3768 §6.4.3 / RFC 5798 §6.4.3: an ADVERTISEMENT in Master.
    fn master_receive(
        &mut self,
        now: Instant,
        src: IpAddr,
        advert: &Advert,
        out: &mut Vec<Action>,
    ) {
        if advert.priority == PRIORITY_RESIGN {
            // "If the Priority in the ADVERTISEMENT is zero, then: Send an
            // ADVERTISEMENT; Reset the Adver_Timer".
            out.push(Action::Send(self.advert(self.priority)));
            self.timers.set(
                Timer::Adver,
                now + self.config.advert_interval.to_duration(),
            );
            // Not in the RFCs: a Master that resigns right after it
            // announced (see `yield_to`) may have announced after us, so
            // the LAN's ARP / neighbour caches hold its MAC. Announce again
            // now that it is silent: ours is then the last announcement
            // (issue 14 F14).
            self.answer_resignation(now, out);
            return;
        }
        let reason = if advert.priority > self.priority {
            Some(Reason::HigherPriority {
                from: src,
                priority: advert.priority,
            })
        } else if advert.priority == self.priority && src > self.config.primary_ip {
            // "the Priority in the ADVERTISEMENT is equal to the local
            // Priority and the primary IP Address of the sender is greater
            // than the local primary IP Address".
            Some(Reason::HigherAddress { from: src })
        } else {
            None
        };
        match reason {
            Some(reason) => {
                // RFC 5798 §6.4.3: learn Master_Adver_Interval first.
                if self.config.version == Version::V3 && advert.interval.0 > 0 {
                    self.master_adver_interval = advert.interval;
                }
                let announced_lately = self
                    .last_announce
                    .is_some_and(|at| now < at + self.master_down_interval());
                self.become_backup(now, reason, out);
                out.push(Action::RemoveVips);
                if announced_lately {
                    // Not in the RFCs (issue 14 F14): two Backups that time
                    // out together both announce the VIPs, and the loser's
                    // announcement may reach the LAN after the winner's.
                    // The loser says it resigned, after its announcements
                    // (the caller carries out actions in order): the
                    // winner then announces once more, last. A priority-0
                    // advert is what a resigning Master sends anyway
                    // (RFC 3768 §6.4.3 Shutdown); Backups that hear it set
                    // Skew_Time and reset again on the winner's answer.
                    out.push(Action::Send(self.advert(PRIORITY_RESIGN)));
                }
            }
            None if self.config.answer_lower_priority
                && self
                    .last_answer
                    .is_some_and(|at| now < at + self.config.advert_interval.to_duration()) =>
            {
                // At most one answer per advertisement interval: anyone on
                // the segment can send lower-priority adverts (v3 has no
                // auth, v2's is cleartext), and each answer is an advert
                // plus a burst of announcements per VIP.
                self.answers_suppressed += 1;
            }
            None if self.config.answer_lower_priority => {
                self.last_answer = Some(now);
                self.last_announce = Some(now);
                // keepalived (vrrp_state_master_rx): answer a lower-priority
                // advert at once, so the other Master steps down now rather
                // than at our next advert, and refresh the LAN's ARP caches,
                // which may hold the MAC of that other Master: when two
                // Backups time out together, both announce the VIPs and the
                // loser's announcement can arrive last.
                out.push(Action::Send(self.advert(self.priority)));
                out.push(Action::Announce {
                    repeat: self.config.garp.repeat,
                });
            }
            // RFC 3768 §6.4.3: "Otherwise: Discard the ADVERTISEMENT".
            None => {}
        }
    }

    /// Handles every timer that is due at `now`. Calling it early is a no-op.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        for timer in Timer::VALUES {
            if !self.timers.is_expired(timer, now) {
                continue;
            }
            self.timers.stop(timer);
            match (timer, self.state) {
                (Timer::MasterDown, State::Backup) => {
                    // RFC 3768 §6.4.2: "If the Master_Down_Timer fires":
                    // advertise, announce, become Master.
                    let reason = match self.down_cause {
                        DownCause::Silence => Reason::MasterDown,
                        DownCause::Resigned => Reason::MasterResigned,
                        DownCause::Preempting(their_priority) => {
                            Reason::Preempted { their_priority }
                        }
                    };
                    self.become_master(now, reason, &mut out);
                }
                (Timer::Adver, State::Master) => {
                    // RFC 3768 §6.4.3: "If the Adver_Timer fires": send an
                    // ADVERTISEMENT, reset the Adver_Timer.
                    out.push(Action::Send(self.advert(self.priority)));
                    self.timers.set(
                        Timer::Adver,
                        now + self.config.advert_interval.to_duration(),
                    );
                }
                (Timer::GarpRepeat, State::Master) => {
                    self.announce(now, &mut out);
                }
                (Timer::ReAnnounce, State::Master) => {
                    // A deferred answer to a resignation (see
                    // `answer_resignation`).
                    self.resign_answers = (Some(now), 1);
                    self.announce(now, &mut out);
                }
                (Timer::GarpRefresh, State::Master) => {
                    self.announce(now, &mut out);
                    if let Some(period) = self.config.garp.refresh {
                        self.timers.set(Timer::GarpRefresh, now + period);
                    }
                }
                (Timer::FaultRetry, State::Fault) => {
                    out.extend(self.startup(now, Reason::FaultRetry));
                }
                // A timer of another state is stopped on every transition;
                // reaching here would be a stale deadline: drop it.
                _ => {}
            }
        }
        out
    }

    fn become_master(&mut self, now: Instant, reason: Reason, out: &mut Vec<Action>) {
        self.transition(State::Master, reason, out);
        self.timers.stop_all();
        out.push(Action::AddVips);
        // RFC 3768 §6.4.1 / §6.4.2: send an ADVERTISEMENT, broadcast
        // gratuitous ARP, set the Adver_Timer.
        out.push(Action::Send(self.advert(self.priority)));
        self.announce(now, out);
        self.resign_answers = (None, 0);
        self.timers.set(
            Timer::Adver,
            now + self.config.advert_interval.to_duration(),
        );
        if let Some(delay) = self.config.garp.master_delay {
            self.timers.set(Timer::GarpRepeat, now + delay);
        }
        if let Some(period) = self.config.garp.refresh {
            self.timers.set(Timer::GarpRefresh, now + period);
        }
    }

    /// A burst of gratuitous ARPs / unsolicited NAs for every VIP.
    fn announce(&mut self, now: Instant, out: &mut Vec<Action>) {
        self.last_announce = Some(now);
        out.push(Action::Announce {
            repeat: self.config.garp.repeat,
        });
    }

    /// A Master heard a priority-0 advert: announce again, at most
    /// [`RESIGN_ANSWERS_PER_INTERVAL`] times per advertisement interval;
    /// beyond that once at the end of the interval (deferred, not dropped:
    /// the point is to be the last to announce).
    fn answer_resignation(&mut self, now: Instant, out: &mut Vec<Action>) {
        let interval = self.config.advert_interval.to_duration();
        let (start, count) = match self.resign_answers {
            (Some(start), count) if now < start + interval => (start, count),
            _ => (now, 0),
        };
        if count < RESIGN_ANSWERS_PER_INTERVAL {
            self.resign_answers = (Some(start), count + 1);
            self.announce(now, out);
        } else {
            self.resign_answers = (Some(start), count);
            self.answers_suppressed += 1;
            self.timers.set(Timer::ReAnnounce, start + interval);
        }
    }

    fn become_backup(&mut self, now: Instant, reason: Reason, out: &mut Vec<Action>) {
        self.transition(State::Backup, reason, out);
        self.timers.stop_all();
        self.timers
            .set(Timer::MasterDown, now + self.master_down_interval());
        self.down_cause = DownCause::Silence;
    }

    fn transition(&mut self, to: State, reason: Reason, out: &mut Vec<Action>) {
        let from = self.state;
        self.state = to;
        out.push(Action::StateChanged { from, to, reason });
    }
}

/// Whether two address lists hold the same addresses, in any order (with
/// repeats counted, so `[a, a]` is not `[a, b]`).
fn same_addresses(theirs: &[IpAddr], ours: &[IpAddr]) -> bool {
    if theirs.len() != ours.len() {
        return false;
    }
    let (mut theirs, mut ours) = (theirs.to_vec(), ours.to_vec());
    theirs.sort_unstable();
    ours.sort_unstable();
    theirs == ours
}
