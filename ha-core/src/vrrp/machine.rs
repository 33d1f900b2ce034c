//! The VRRPv3 state machine of one virtual router (RFC 9568 section 6), sans-IO:
//! every input takes the current time, outputs are [`Action`]s for the I/O
//! layer, and [`Instance::poll_at`] says when to call [`Instance::poll`] next.
//! Tests drive whole elections at fixed instants without sleeping.

use super::wire::Family;
use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

/// Monotonic time since an arbitrary origin (the agent uses its start).
pub type Instant = Duration;

/// One centisecond, the unit of VRRP intervals.
const CS: u64 = 10_000_000;

/// Skew_Time = ((256 - Priority) * Master_Adver_Interval) / 256, exactly (ns).
pub fn skew_time(priority: u8, master_adver_interval_cs: u16) -> Duration {
    Duration::from_nanos(
        (256 - u64::from(priority)) * u64::from(master_adver_interval_cs) * CS / 256,
    )
}

/// Master_Down_Interval = (3 * Master_Adver_Interval) + Skew_Time.
pub fn master_down_interval(priority: u8, master_adver_interval_cs: u16) -> Duration {
    Duration::from_nanos(3 * u64::from(master_adver_interval_cs) * CS)
        + skew_time(priority, master_adver_interval_cs)
}

/// Configuration of one virtual router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Virtual router id, 1..=255.
    pub vrid: u8,
    /// Priority, 1..=254, or 255 for the address owner.
    pub priority: u8,
    /// Advertisement_Interval in centiseconds, 1..=4095 (10 ms .. 40.95 s).
    pub advert_interval_cs: u16,
    /// Whether a higher-priority backup preempts a lower-priority master.
    pub preempt: bool,
    /// How long a higher-priority backup waits after first seeing a
    /// lower-priority master before it preempts (keepalived's preempt_delay).
    pub preempt_delay: Duration,
    /// Our primary address on the VRRP interface: breaks priority ties.
    pub local_addr: Ipv4Addr,
    /// The virtual addresses announced in adverts: all IPv4, or all IPv6
    /// (an IPv6 instance: its adverts go over IPv6 on the HA link).
    pub vips: Vec<IpAddr>,
}

impl Config {
    /// The family of the instance's adverts on the HA link: IPv6 when its
    /// VIPs are IPv6 (the configuration never mixes families in one).
    pub fn family(&self) -> Family {
        match self.vips.first() {
            Some(a) => Family::of(a),
            None => Family::V4,
        }
    }
}

/// The RFC's states, plus Fault (a tracked interface or a group member failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Role {
    Initialize,
    Backup,
    Master,
    Fault,
}

impl Role {
    /// keepalived's spelling, used in notify scripts and status.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Initialize => "INIT",
            Role::Backup => "BACKUP",
            Role::Master => "MASTER",
            Role::Fault => "FAULT",
        }
    }
}

/// Why a transition happened (status, logs, notify).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Reason {
    /// Address owner (priority 255) at startup.
    Startup,
    /// No advert from a master for Master_Down_Interval.
    MasterDown,
    /// The master announced priority 0 (it is leaving); we waited Skew_Time.
    MasterLeft,
    /// We preempted a lower-priority master.
    Preempt,
    /// A higher-priority master (or equal priority, higher address) exists.
    HigherPriority { src: Ipv4Addr, priority: u8 },
    /// A tracked interface or a group member failed.
    Fault,
    /// The fault cleared; starting over.
    FaultCleared,
    /// The agent is shutting down, or an operator demoted us.
    Shutdown,
    /// Another member of our group changed role.
    Group,
    /// The agent restarted while it was master and its ownership lease was
    /// still running: it carries on as master without a gap.
    Resumed,
    /// Our ownership lease lapsed before we renewed it (the node stalled, or
    /// the data plane refused the write): we stepped down to let the election
    /// decide, never reviving the lease.
    LeaseLapsed,
    /// The data plane refused an ownership write: what it holds is not
    /// known to be ours, so we step down and let the election decide.
    WriteFailed,
    /// The fast heartbeat: the master's box answered no probe on any path
    /// for `k` rounds (and sent no advert meanwhile).
    PeerSilent,
    /// The fast heartbeat: the master's data plane proved its ownership
    /// term over (its lease lapsed: its daemon died or stalled).
    PeerLapsed,
}

impl Reason {
    /// The reason's name without its details (per-reason counters).
    pub const fn name(&self) -> &'static str {
        match self {
            Reason::Startup => "Startup",
            Reason::MasterDown => "MasterDown",
            Reason::MasterLeft => "MasterLeft",
            Reason::Preempt => "Preempt",
            Reason::HigherPriority { .. } => "HigherPriority",
            Reason::Fault => "Fault",
            Reason::FaultCleared => "FaultCleared",
            Reason::Shutdown => "Shutdown",
            Reason::Group => "Group",
            Reason::Resumed => "Resumed",
            Reason::LeaseLapsed => "LeaseLapsed",
            Reason::WriteFailed => "WriteFailed",
            Reason::PeerSilent => "PeerSilent",
            Reason::PeerLapsed => "PeerLapsed",
        }
    }
}

/// What the I/O layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advert with this priority now.
    SendAdvert { priority: u8 },
    /// We changed role.
    Transition { to: Role, reason: Reason },
    /// Announce the VIPs again (a competing master just stepped down on our
    /// advert: switches and hosts may still point at it).
    ResendGarp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Initialize,
    Backup {
        master_down_at: Instant,
        /// When a pending preemption (preempt_delay) fires.
        preempt_at: Option<Instant>,
        /// The master announced priority 0: the timer is Skew_Time.
        master_left: bool,
    },
    Master {
        adver_at: Instant,
    },
    Fault,
}

/// One virtual router.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Static configuration.
    config: Config,
    /// Current effective priority (config priority minus tracked-interface weights).
    priority: u8,
    /// The interval learnt from the current master's adverts (cs).
    master_adver_interval_cs: u16,
    /// Whether preemption is allowed right now (state sync holds it back until
    /// a returning node is in sync).
    preempt_allowed: bool,
    /// Preempt even if the configuration says not to (an operator's
    /// `promote`).
    preempt_forced: bool,
    /// Where we are, with the timers of that state.
    state: State,
}

impl Instance {
    /// A router in Initialize; call [`Instance::startup`].
    pub fn new(config: Config) -> Self {
        Instance {
            priority: config.priority,
            master_adver_interval_cs: config.advert_interval_cs,
            preempt_allowed: true,
            preempt_forced: false,
            state: State::Initialize,
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn role(&self) -> Role {
        match self.state {
            State::Initialize => Role::Initialize,
            State::Backup { .. } => Role::Backup,
            State::Master { .. } => Role::Master,
            State::Fault => Role::Fault,
        }
    }

    /// Effective priority.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The interval learnt from the master (cs).
    pub fn master_adver_interval_cs(&self) -> u16 {
        self.master_adver_interval_cs
    }

    /// Our Master_Down_Interval with the interval we learnt.
    pub fn master_down_interval(&self) -> Duration {
        master_down_interval(self.priority, self.master_adver_interval_cs)
    }

    fn advert_interval(&self) -> Duration {
        Duration::from_nanos(u64::from(self.config.advert_interval_cs) * CS)
    }

    fn become_master(&mut self, now: Instant, reason: Reason, out: &mut Vec<Action>) {
        self.state = State::Master {
            adver_at: now + self.advert_interval(),
        };
        out.push(Action::Transition {
            to: Role::Master,
            reason,
        });
        out.push(Action::SendAdvert {
            priority: self.priority,
        });
    }

    fn become_backup(&mut self, now: Instant, reason: Reason, out: &mut Vec<Action>) {
        self.state = State::Backup {
            master_down_at: now + self.master_down_interval(),
            preempt_at: None,
            master_left: false,
        };
        out.push(Action::Transition {
            to: Role::Backup,
            reason,
        });
    }

    /// Initialize -> Master (address owner) or Backup.
    pub fn startup(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state != State::Initialize {
            return out;
        }
        if self.priority == 255 {
            self.become_master(now, Reason::Startup, &mut out);
        } else {
            self.master_adver_interval_cs = self.config.advert_interval_cs;
            self.become_backup(now, Reason::Startup, &mut out);
        }
        out
    }

    /// When [`Instance::poll`] must run next, if any timer is armed.
    pub fn poll_at(&self) -> Option<Instant> {
        match self.state {
            State::Backup {
                master_down_at,
                preempt_at,
                ..
            } => Some(preempt_at.map_or(master_down_at, |p| p.min(master_down_at))),
            State::Master { adver_at } => Some(adver_at),
            State::Initialize | State::Fault => None,
        }
    }

    /// Runs the timers due at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match self.state {
            State::Backup {
                master_down_at,
                preempt_at,
                master_left,
            } => {
                if master_down_at <= now {
                    let reason = if master_left {
                        Reason::MasterLeft
                    } else {
                        Reason::MasterDown
                    };
                    self.become_master(now, reason, &mut out);
                } else if preempt_at.is_some_and(|p| p <= now) {
                    self.become_master(now, Reason::Preempt, &mut out);
                }
            }
            State::Master { adver_at } if adver_at <= now => {
                out.push(Action::SendAdvert {
                    priority: self.priority,
                });
                self.state = State::Master {
                    adver_at: now + self.advert_interval(),
                };
            }
            _ => {}
        }
        out
    }

    /// An advert for our VRID from `src` (already validated: TTL, checksum,
    /// version; the I/O layer drops the rest).
    pub fn on_advert(
        &mut self,
        now: Instant,
        src: Ipv4Addr,
        priority: u8,
        interval_cs: u16,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        match self.state {
            State::Backup { preempt_at, .. } => {
                if priority == 0 {
                    // The master is leaving: take over after Skew_Time.
                    let at = now + skew_time(self.priority, self.master_adver_interval_cs);
                    self.state = State::Backup {
                        master_down_at: at,
                        preempt_at: None,
                        master_left: true,
                    };
                    return out;
                }
                let lower = priority < self.priority;
                let may_preempt =
                    (self.config.preempt || self.preempt_forced) && self.preempt_allowed && lower;
                if may_preempt && self.config.preempt_delay.is_zero() {
                    // RFC: discard; the Master_Down_Timer will fire.
                    return out;
                }
                self.master_adver_interval_cs = interval_cs;
                let preempt_at = if may_preempt {
                    Some(preempt_at.unwrap_or(now + self.config.preempt_delay))
                } else {
                    None
                };
                self.state = State::Backup {
                    master_down_at: now + self.master_down_interval(),
                    preempt_at,
                    master_left: false,
                };
            }
            State::Master { .. } => {
                if priority == 0 {
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    self.state = State::Master {
                        adver_at: now + self.advert_interval(),
                    };
                } else if priority > self.priority
                    || (priority == self.priority && src > self.config.local_addr)
                {
                    self.master_adver_interval_cs = interval_cs;
                    self.become_backup(now, Reason::HigherPriority { src, priority }, &mut out);
                    // Split brain healing: one last advert of ours, so the
                    // winner sees a competing master and re-announces the VIPs
                    // even if none of our earlier adverts reached it
                    // (keepalived issue 166). Not priority 0: with more nodes,
                    // that would make every backup take over after Skew_Time.
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                } else {
                    // Two masters: ours wins. Advertise now so the other steps
                    // down at once, and re-announce the VIPs it may have taken.
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    out.push(Action::ResendGarp);
                    self.state = State::Master {
                        adver_at: now + self.advert_interval(),
                    };
                }
            }
            State::Initialize | State::Fault => {}
        }
        out
    }

    /// Changes the effective priority (tracked interfaces). The address owner
    /// keeps 255. Takes effect with the next advert, or, as a backup, the next
    /// received advert.
    pub fn set_priority(&mut self, priority: u8) {
        if self.config.priority != 255 {
            self.priority = priority.clamp(1, 254);
        }
    }

    /// The addresses listed in our adverts (VIPs added or removed live).
    pub fn set_vips(&mut self, vips: Vec<IpAddr>) {
        self.config.vips = vips;
    }

    /// Preempt a lower-priority master whatever the configuration says
    /// (`promote`); still subject to [`Instance::set_preempt_allowed`].
    pub fn set_preempt_forced(&mut self, forced: bool) {
        self.preempt_forced = forced;
    }

    /// Allows or holds back preemption (state sync not complete yet).
    pub fn set_preempt_allowed(&mut self, allowed: bool) {
        self.preempt_allowed = allowed;
        if !allowed
            && let State::Backup {
                master_down_at,
                master_left,
                ..
            } = self.state
        {
            self.state = State::Backup {
                master_down_at,
                preempt_at: None,
                master_left,
            };
        }
    }

    /// Enters Fault (a master first announces priority 0 so the peer takes
    /// over after Skew_Time instead of Master_Down_Interval).
    pub fn fault(&mut self, _now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == State::Fault {
            return out;
        }
        if matches!(self.state, State::Master { .. }) {
            out.push(Action::SendAdvert { priority: 0 });
        }
        self.state = State::Fault;
        out.push(Action::Transition {
            to: Role::Fault,
            reason: Reason::Fault,
        });
        out
    }

    /// Leaves Fault and starts over.
    pub fn clear_fault(&mut self, now: Instant) -> Vec<Action> {
        if self.state != State::Fault {
            return Vec::new();
        }
        self.state = State::Initialize;
        let mut out = self.startup(now);
        for a in &mut out {
            if let Action::Transition { reason, .. } = a {
                *reason = Reason::FaultCleared;
            }
        }
        out
    }

    /// Graceful shutdown: a master sends priority 0.
    pub fn shutdown(&mut self, now: Instant) -> Vec<Action> {
        self.release(now, Reason::Shutdown, true)
    }

    /// Back to Initialize for `reason`. With `announce`, a master first
    /// sends priority 0, so a backup takes over after Skew_Time; without,
    /// the backup waits its Master_Down_Interval.
    pub fn release(&mut self, _now: Instant, reason: Reason, announce: bool) -> Vec<Action> {
        let mut out = Vec::new();
        if announce && matches!(self.state, State::Master { .. }) {
            out.push(Action::SendAdvert { priority: 0 });
        }
        if self.state != State::Initialize {
            self.state = State::Initialize;
            out.push(Action::Transition {
                to: Role::Initialize,
                reason,
            });
        }
        out
    }

    /// Initialize -> Master at once: the agent restarted within its ownership
    /// lease, so the peer cannot have taken over yet (the lease is shorter
    /// than the peer's Master_Down_Interval). Advertises immediately.
    pub fn resume_master(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == State::Initialize {
            self.become_master(now, Reason::Resumed, &mut out);
        }
        out
    }

    /// Backup -> Master now, for `reason`: the fast heartbeat found the
    /// master gone before the Master_Down_Timer did (which would fire
    /// anyway: this only hastens it).
    pub fn take_over(&mut self, now: Instant, reason: Reason) -> Vec<Action> {
        let mut out = Vec::new();
        if matches!(self.state, State::Backup { .. }) {
            self.become_master(now, reason, &mut out);
        }
        out
    }

    /// Forced to Master by its group (another member became master).
    pub fn force_master(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if matches!(self.state, State::Backup { .. }) {
            self.become_master(now, Reason::Group, &mut out);
        }
        out
    }

    /// Forced to Backup by its group (another member stepped down).
    pub fn force_backup(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if matches!(self.state, State::Master { .. }) {
            self.become_backup(now, Reason::Group, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);

    fn cfg(priority: u8, interval_cs: u16, local: Ipv4Addr) -> Config {
        Config {
            vrid: 51,
            priority,
            advert_interval_cs: interval_cs,
            preempt: true,
            preempt_delay: Duration::ZERO,
            local_addr: local,
            vips: vec![Ipv4Addr::new(10, 0, 0, 1).into()],
        }
    }

    fn ms(v: f64) -> Instant {
        Duration::from_secs_f64(v / 1000.0)
    }

    fn transitions(actions: &[Action]) -> Vec<(Role, Reason)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Transition { to, reason } => Some((*to, *reason)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn rfc_timer_arithmetic() {
        // Priority 100 at 10 ms: skew 156/256 cs = 6.09375 ms; MDI 36.09375 ms.
        assert_eq!(skew_time(100, 1), Duration::from_nanos(6_093_750));
        assert_eq!(
            master_down_interval(100, 1),
            Duration::from_nanos(36_093_750)
        );
        // Priority 100 at 1 s: MDI 3.609375 s (keepalived's "about 3.6 s").
        assert_eq!(
            master_down_interval(100, 100),
            Duration::from_nanos(3_609_375_000)
        );
        // Priority 254 skews least, priority 1 most.
        assert_eq!(skew_time(254, 100), Duration::from_nanos(7_812_500));
        assert_eq!(skew_time(1, 100), Duration::from_nanos(996_093_750));
        assert_eq!(
            master_down_interval(200, 4095),
            Duration::from_nanos(3 * 40_950_000_000 + 56 * 40_950_000_000 / 256)
        );
    }

    #[test]
    fn owner_starts_as_master_others_as_backup() {
        let mut owner = Instance::new(cfg(255, 100, A));
        let out = owner.startup(ms(0.0));
        assert_eq!(transitions(&out), vec![(Role::Master, Reason::Startup)]);
        assert!(out.contains(&Action::SendAdvert { priority: 255 }));
        let mut b = Instance::new(cfg(100, 100, B));
        assert_eq!(
            transitions(&b.startup(ms(0.0))),
            vec![(Role::Backup, Reason::Startup)]
        );
        assert_eq!(b.poll_at(), Some(ms(3609.375)));
    }

    #[test]
    fn backup_takes_over_exactly_at_master_down_interval() {
        let mut b = Instance::new(cfg(100, 1, B));
        b.startup(ms(0.0));
        // A master at priority 200 advertises every 10 ms until t=100 ms.
        for t in (0..=100).step_by(10) {
            assert!(b.poll(ms(t as f64)).is_empty());
            assert!(b.on_advert(ms(t as f64), A, 200, 1).is_empty());
        }
        // Last advert at 100 ms: master down at 136.09375 ms, not a ns earlier.
        assert_eq!(b.poll_at(), Some(Duration::from_nanos(136_093_750)));
        assert!(b.poll(Duration::from_nanos(136_093_749)).is_empty());
        let out = b.poll(Duration::from_nanos(136_093_750));
        assert_eq!(transitions(&out), vec![(Role::Master, Reason::MasterDown)]);
        assert!(out.contains(&Action::SendAdvert { priority: 100 }));
        // Then adverts every 10 ms.
        assert_eq!(b.poll_at(), Some(Duration::from_nanos(146_093_750)));
    }

    #[test]
    fn backup_learns_the_masters_interval() {
        let mut b = Instance::new(cfg(100, 1, B));
        b.startup(ms(0.0));
        b.on_advert(ms(5.0), A, 200, 100); // master advertises every 1 s
        assert_eq!(b.master_adver_interval_cs(), 100);
        assert_eq!(
            b.poll_at(),
            Some(ms(5.0) + Duration::from_nanos(3_609_375_000))
        );
    }

    #[test]
    fn priority_zero_means_take_over_after_skew_time() {
        let mut b = Instance::new(cfg(100, 1, B));
        b.startup(ms(0.0));
        b.on_advert(ms(10.0), A, 200, 1);
        b.on_advert(ms(20.0), A, 0, 1);
        assert_eq!(
            b.poll_at(),
            Some(ms(20.0) + Duration::from_nanos(6_093_750))
        );
        let out = b.poll(b.poll_at().unwrap());
        assert_eq!(transitions(&out), vec![(Role::Master, Reason::MasterLeft)]);
    }

    #[test]
    fn master_steps_down_for_higher_priority_or_higher_address() {
        let mut m = Instance::new(cfg(150, 1, A));
        m.startup(ms(0.0));
        m.poll(ms(100.0));
        assert_eq!(m.role(), Role::Master);
        // Lower priority: stays master, advertises at once, re-announces VIPs.
        let out = m.on_advert(ms(101.0), B, 100, 1);
        assert_eq!(
            out,
            vec![Action::SendAdvert { priority: 150 }, Action::ResendGarp]
        );
        // Equal priority from a lower address: stays.
        let out = m.on_advert(ms(102.0), Ipv4Addr::new(10, 255, 0, 0), 150, 1);
        assert_eq!(m.role(), Role::Master, "{out:?}");
        // Equal priority from a higher address: steps down.
        let out = m.on_advert(ms(103.0), B, 150, 1);
        assert_eq!(
            transitions(&out),
            vec![(
                Role::Backup,
                Reason::HigherPriority {
                    src: B,
                    priority: 150
                }
            )]
        );
        // ...and sends one last advert at its own priority, so the winner
        // sees it held the VIPs (split brain healing).
        assert!(
            out.contains(&Action::SendAdvert { priority: 150 }),
            "{out:?}"
        );
    }

    #[test]
    fn master_answers_priority_zero_with_an_advert() {
        let mut m = Instance::new(cfg(255, 100, A));
        m.startup(ms(0.0));
        let out = m.on_advert(ms(50.0), B, 0, 100);
        assert_eq!(out, vec![Action::SendAdvert { priority: 255 }]);
        assert_eq!(m.poll_at(), Some(ms(1050.0)));
    }

    #[test]
    fn no_preempt_keeps_a_lower_master() {
        let mut b = Instance::new(Config {
            preempt: false,
            ..cfg(200, 1, B)
        });
        b.startup(ms(0.0));
        for t in (0..1000).step_by(10) {
            b.on_advert(ms(t as f64), A, 100, 1);
            assert!(b.poll(ms(t as f64 + 5.0)).is_empty(), "at {t} ms");
        }
        assert_eq!(b.role(), Role::Backup);
    }

    #[test]
    fn preempt_without_delay_discards_lower_adverts() {
        let mut b = Instance::new(cfg(200, 1, B));
        b.startup(ms(0.0));
        // Master down interval at priority 200: 30 + 56/256*10 = 32.1875 ms.
        for t in (0..=30).step_by(10) {
            b.on_advert(ms(t as f64), A, 100, 1);
        }
        let out = b.poll(Duration::from_nanos(32_187_500));
        assert_eq!(transitions(&out), vec![(Role::Master, Reason::MasterDown)]);
    }

    #[test]
    fn preempt_delay_waits_then_preempts() {
        let mut b = Instance::new(Config {
            preempt_delay: ms(500.0),
            ..cfg(200, 1, B)
        });
        b.startup(ms(0.0));
        let mut t = 0.0;
        while t < 499.0 {
            b.on_advert(ms(t), A, 100, 1);
            assert!(b.poll(ms(t + 1.0)).is_empty(), "preempted early at {t}");
            t += 10.0;
        }
        b.on_advert(ms(t), A, 100, 1);
        let out = b.poll(ms(500.0));
        assert_eq!(transitions(&out), vec![(Role::Master, Reason::Preempt)]);
    }

    #[test]
    fn preemption_held_back_until_allowed() {
        let mut b = Instance::new(cfg(200, 1, B));
        b.set_preempt_allowed(false);
        b.startup(ms(0.0));
        for t in (0..200).step_by(10) {
            b.on_advert(ms(t as f64), A, 100, 1);
            assert!(b.poll(ms(t as f64 + 5.0)).is_empty());
        }
        b.set_preempt_allowed(true);
        for t in (200..240).step_by(10) {
            b.on_advert(ms(t as f64), A, 100, 1);
        }
        // Lower adverts now discarded: master down 32.1875 ms after the last accepted one.
        let out = b.poll(ms(190.0) + Duration::from_nanos(32_187_500));
        assert_eq!(transitions(&out), vec![(Role::Master, Reason::MasterDown)]);
    }

    #[test]
    fn resume_master_advertises_at_once() {
        let mut m = Instance::new(cfg(100, 1, A));
        let out = m.resume_master(ms(0.0));
        assert_eq!(transitions(&out), vec![(Role::Master, Reason::Resumed)]);
        assert!(out.contains(&Action::SendAdvert { priority: 100 }));
        assert!(m.resume_master(ms(1.0)).is_empty(), "only from Initialize");
    }

    #[test]
    fn fault_sends_priority_zero_and_recovers() {
        let mut m = Instance::new(cfg(255, 1, A));
        m.startup(ms(0.0));
        let out = m.fault(ms(1.0));
        assert_eq!(out[0], Action::SendAdvert { priority: 0 });
        assert_eq!(m.role(), Role::Fault);
        assert_eq!(m.poll_at(), None);
        assert!(m.on_advert(ms(2.0), B, 100, 1).is_empty());
        let out = m.clear_fault(ms(3.0));
        assert_eq!(
            transitions(&out),
            vec![(Role::Master, Reason::FaultCleared)]
        );
    }

    #[test]
    fn two_routers_elect_one_master_and_fail_over() {
        // A whole election on a lossless link, stepped every 1 ms.
        let mut r = [Instance::new(cfg(200, 1, A)), Instance::new(cfg(100, 1, B))];
        let addrs = [A, B];
        let mut alive = [true, true];
        let mut inbox: Vec<(usize, u8)> = Vec::new();
        let mut master_since = [None, None];
        for (i, x) in r.iter_mut().enumerate() {
            x.startup(ms(0.0));
            let _ = i;
        }
        for step in 0..400u32 {
            let now = ms(f64::from(step));
            if step == 200 {
                alive[0] = false; // hard crash of A at 200 ms
            }
            let delivered = std::mem::take(&mut inbox);
            for (from, prio) in delivered {
                let to = 1 - from;
                if alive[to] {
                    let _ = r[to].on_advert(now, addrs[from], prio, 1);
                }
            }
            for i in 0..2 {
                if !alive[i] {
                    continue;
                }
                for a in r[i].poll(now) {
                    match a {
                        Action::SendAdvert { priority } => inbox.push((i, priority)),
                        Action::Transition {
                            to: Role::Master, ..
                        } => master_since[i] = Some(step),
                        _ => {}
                    }
                }
            }
            if step == 150 {
                assert_eq!((r[0].role(), r[1].role()), (Role::Master, Role::Backup));
            }
        }
        // A became master after its own MDI (32.2 ms) and stayed; B took over
        // within its MDI (36.1 ms) of A's last advert (at <= 200 ms).
        assert_eq!(master_since[0], Some(33));
        let b = master_since[1].expect("B took over");
        assert!((230..=237).contains(&b), "B master at {b} ms");
    }
}
