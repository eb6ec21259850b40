//! The virtual router's timers, held as data (quinn's `TimerTable` idea): the
//! state machine arms and cancels deadlines, the caller asks for the earliest
//! one with [`super::VirtualRouter::poll_timeout`] and calls back when it is
//! due. No task is ever spawned for a timer.

use std::time::Instant;

/// One of the virtual router's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Fires in Backup when no advertisement came for Master_Down_Interval
    /// (or Skew_Time after a priority-0 advert): become Master.
    MasterDown,
    /// Fires in Master every Advertisement_Interval: send an advertisement.
    Adver,
    /// Fires once in Master, the GARP master delay after becoming Master:
    /// send the second gratuitous ARP / NA burst (keepalived's default).
    GarpRepeat,
    /// Fires periodically in Master when a GARP refresh interval is set.
    GarpRefresh,
    /// Fires in Fault after a transmit fault: start over as Backup and see
    /// whether adverts go out again.
    FaultRetry,
    /// Fires once in Master: the deferred re-announcement after a
    /// priority-0 advert that the rate limit held back.
    ReAnnounce,
}

impl Timer {
    /// Every timer, in the order expired timers are handled: a MasterDown
    /// that makes us Master is handled before any Master-only timer.
    pub(crate) const VALUES: [Timer; 6] = [
        Timer::MasterDown,
        Timer::Adver,
        Timer::GarpRepeat,
        Timer::GarpRefresh,
        Timer::FaultRetry,
        Timer::ReAnnounce,
    ];
}

/// The deadline of each [`Timer`], `None` when not armed.
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerTable {
    master_down: Option<Instant>,
    adver: Option<Instant>,
    garp_repeat: Option<Instant>,
    garp_refresh: Option<Instant>,
    fault_retry: Option<Instant>,
    re_announce: Option<Instant>,
}

impl TimerTable {
    fn slot(&mut self, timer: Timer) -> &mut Option<Instant> {
        match timer {
            Timer::MasterDown => &mut self.master_down,
            Timer::Adver => &mut self.adver,
            Timer::GarpRepeat => &mut self.garp_repeat,
            Timer::GarpRefresh => &mut self.garp_refresh,
            Timer::FaultRetry => &mut self.fault_retry,
            Timer::ReAnnounce => &mut self.re_announce,
        }
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        match timer {
            Timer::MasterDown => self.master_down,
            Timer::Adver => self.adver,
            Timer::GarpRepeat => self.garp_repeat,
            Timer::GarpRefresh => self.garp_refresh,
            Timer::FaultRetry => self.fault_retry,
            Timer::ReAnnounce => self.re_announce,
        }
    }

    pub(crate) fn set(&mut self, timer: Timer, deadline: Instant) {
        *self.slot(timer) = Some(deadline);
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        *self.slot(timer) = None;
    }

    pub(crate) fn stop_all(&mut self) {
        *self = TimerTable::default();
    }

    /// True if `timer` is armed and its deadline is not after `now`.
    pub(crate) fn is_expired(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|deadline| deadline <= now)
    }

    /// The earliest armed deadline.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        Timer::VALUES.iter().filter_map(|&t| self.get(t)).min()
    }
}
