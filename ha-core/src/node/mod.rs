//! The node's decisions as a state machine, sans-IO: [`Node::handle`] takes
//! an [`Event`] and the time and returns [`Effect`]s in the order the I/O
//! layer must carry them out. The daemon's loop (`ha-agent`'s `agent`) does
//! nothing else; the deterministic simulation (`ha-sim`) runs the same code
//! over a simulated network.
//!
//! What is decided here: the VRRP groups (through [`crate::vrrp::group`]),
//! the ownership word and its lease, the preemption gate of state sync, the
//! takeover order, GARP rounds, hooks, the operator's promote, demote and
//! maintenance, and what hostile input may change (nothing but counters).
//!
//! The order of a takeover is a property of the effect list: `Commit` ->
//! `WriteOwnership` (the group's bit set) -> the first `SendGarp` -> hooks
//! (services, the group's notify; queued, never waited for) -> adverts ->
//! `WriteStatus`. A step-down writes ownership first. Tested below; the
//! simulation checks on every step that ownership is gained only after a
//! commit, that GARP and services go only with ownership, and that a
//! takeover is not given up again in the same batch.
//!
//! The lease: every advert a master sends renews it first
//! ([`Effect::RenewLease`]), so it runs from the same instant as the peer's
//! master-down timer and, being shorter, lapses first. The core remembers
//! when the lease it asked for ends; a node that finds it has passed (its
//! loop stalled) sends no advert at its old priority, renews nothing, and
//! steps down (ownership cleared, priority 0) to let the election decide.
//! After a write the data plane refused, it steps down without priority 0:
//! what the data plane holds may still answer until its lease runs out,
//! and the peer's master-down timer ends after that.

mod effects;
mod io;
pub mod paths;
mod report;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use tracing::{info, warn};

pub use self::{
    io::{Command, Effect, Event, Hook, NotifyKind},
    paths::{PathReport, PathSettings, PathState},
    report::{Counters, GroupReport, HISTORY, LastAdvert, Report, TransitionRecord},
};
use crate::{
    heartbeat::{self, Prober, Verdict},
    limit::{Every, EveryBy},
    vrrp::{
        auth::{self, Verifier},
        group::{DEMOTED_PRIORITY, Group, PROMOTED_PRIORITY, Track},
        machine::{self, Instance, Reason, Role},
        packet::{self, Rejected},
        wire,
    },
};

/// Monotonic time since an arbitrary origin (the daemon uses its start).
pub type Instant = Duration;

/// Most groups a node runs: one bit each in the ownership word.
pub const MAX_GROUPS: usize = 64;

/// What the node runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The only sources of adverts we accept.
    pub peers: Vec<Ipv4Addr>,
    /// Ownership lease, renewed with every advert of a master (shorter than
    /// the peer's Master_Down_Interval by at least one data-plane tick).
    pub lease: Duration,
    /// State sync is configured: a returning node preempts only once it has
    /// the peer's whole table.
    pub state_sync: bool,
    pub groups: Vec<GroupSettings>,
    /// How adverts are authenticated.
    pub auth: auth::Settings,
    /// Heartbeat paths: the HA link first, then data interfaces (these only
    /// with one peer, and only authenticated adverts count over them).
    /// Empty: the HA link alone, unnamed.
    pub paths: Vec<PathSettings>,
    /// The fast heartbeat (probes answered by the peer's XDP), with one
    /// peer only; `None`: off.
    pub heartbeat: Option<heartbeat::Settings>,
}

/// One group: one ownership bit, one set of hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    pub name: String,
    /// Its VRRP instances: (name, state machine configuration).
    pub instances: Vec<(String, machine::Config)>,
    pub tracks: Vec<Track>,
    /// GARP rounds on takeover, and their spacing.
    pub garp_count: u32,
    pub garp_interval: Duration,
    /// While master, the VIPs are announced again this often (keepalived's
    /// `vrrp_garp_master_refresh`): switches that aged out the virtual
    /// MAC, or hosts that missed the takeover's rounds, learn it anew.
    /// `None`: only at takeover.
    pub garp_refresh: Option<Duration>,
}

/// Settings the core cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error("{0} groups: at most {MAX_GROUPS} (one bit each in the ownership word)")]
    TooManyGroups(usize),
    #[error("group {0} has no VRRP instance")]
    EmptyGroup(String),
    #[error("VRID {0} is used twice")]
    DuplicateVrid(u8),
    #[error("advert authentication: {0}")]
    Auth(#[from] auth::AuthError),
    #[error(
        "heartbeats over data interfaces need exactly one peer (there are {0}) and signed adverts (auth mode permissive or enforce)"
    )]
    DataPaths(usize),
    #[error("the fast heartbeat needs exactly one peer (there are {0})")]
    HeartbeatPeers(usize),
    #[error("fast heartbeat: {0}")]
    Heartbeat(#[from] heartbeat::HeartbeatError),
}

/// A group and what the node keeps beside its state machines.
#[derive(Debug)]
struct GroupState {
    name: String,
    /// Instance names, by member index (notify).
    instances: Vec<String>,
    /// Its bit in the ownership word.
    bit: u64,
    group: Group,
    garp_count: u32,
    garp_interval: Duration,
    /// GARP rounds still to send after a takeover, and when the next is due.
    garp_pending: u32,
    garp_at: Instant,
    garp_refresh: Option<Duration>,
    /// When the next refresh is due while master (`Duration::MAX`: not).
    refresh_at: Instant,
    /// VIPs re-announced for a competing master, at most once a second.
    resend: Every,
}

/// A member's role, effective priority and learnt interval (cs).
type MemberElection = (Role, u8, u16);

/// What only the election may change (see [`Node::election_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionState {
    /// Per group: role, next timer, and per member (role, priority, learnt
    /// interval).
    groups: Vec<(Role, Option<Instant>, Vec<MemberElection>)>,
    owned: u64,
    lease_until: Option<Instant>,
}

/// The node core.
#[derive(Debug)]
pub struct Node {
    peers: Vec<Ipv4Addr>,
    lease: Duration,
    state_sync: bool,
    groups: Vec<GroupState>,
    /// VRID -> (group, member).
    by_vrid: BTreeMap<u8, (usize, usize)>,
    /// The ownership word as last written.
    owned: u64,
    /// When the lease we last wrote or renewed ends (node time); `None`
    /// while we own nothing.
    lease_until: Option<Instant>,
    /// What the word held is not ours any more, and why (the lease lapsed,
    /// found before a renewal or reported by the data plane; or a write
    /// failed): the masters it named step down once the current actions are
    /// out.
    lapsed: Option<Reason>,
    /// Last known state of tracked links (absent: up).
    links: BTreeMap<String, bool>,
    /// Whether preemption is allowed (state sync complete, or not configured).
    preempt_allowed: bool,
    maintenance: bool,
    started: bool,
    counters: Counters,
    /// Advert authentication (the settings and what each sender sent last).
    verifier: Verifier,
    /// The heartbeat paths.
    paths: paths::Paths,
    /// The fast heartbeat, when on.
    prober: Option<Prober>,
    /// Our ownership term: raised by a takeover from owning nothing.
    term: u64,
    /// Log limits (once a second each).
    log_rejected: EveryBy<Rejected>,
    log_probe: EveryBy<heartbeat::Rejected>,
    log_interval: Every,
}

impl Node {
    /// A node that has not started yet (see [`Event::Start`]).
    pub fn new(settings: Settings) -> Result<Node, NodeError> {
        settings.auth.validate()?;
        if let Some(h) = &settings.heartbeat {
            h.validate()?;
            if settings.peers.len() != 1 || settings.peers[0] != h.peer {
                return Err(NodeError::HeartbeatPeers(settings.peers.len()));
            }
        }
        if settings.paths.len() > 1 && (settings.peers.len() != 1 || !settings.auth.mode.signs()) {
            return Err(NodeError::DataPaths(settings.peers.len()));
        }
        let path_settings = if settings.paths.is_empty() {
            vec![PathSettings {
                name: "ha".into(),
                local: Ipv4Addr::UNSPECIFIED,
            }]
        } else {
            settings.paths
        };
        if settings.groups.len() > MAX_GROUPS {
            return Err(NodeError::TooManyGroups(settings.groups.len()));
        }
        let mut by_vrid = BTreeMap::new();
        let mut groups = Vec::new();
        for (gi, g) in settings.groups.into_iter().enumerate() {
            if g.instances.is_empty() {
                return Err(NodeError::EmptyGroup(g.name));
            }
            for (mi, (_, m)) in g.instances.iter().enumerate() {
                if by_vrid.insert(m.vrid, (gi, mi)).is_some() {
                    return Err(NodeError::DuplicateVrid(m.vrid));
                }
            }
            let members = g
                .instances
                .iter()
                .map(|(_, m)| Instance::new(m.clone()))
                .collect();
            groups.push(GroupState {
                instances: g.instances.into_iter().map(|(n, _)| n).collect(),
                bit: 1 << gi,
                group: Group::new(members, g.tracks),
                garp_count: g.garp_count,
                garp_interval: g.garp_interval,
                garp_pending: 0,
                garp_at: Duration::MAX,
                garp_refresh: g.garp_refresh.filter(|d| !d.is_zero()),
                refresh_at: Duration::MAX,
                resend: Every::new(),
                name: g.name,
            });
        }
        let prober = settings
            .heartbeat
            .map(|h| Prober::new(h, path_settings.len()));
        let mut node = Node {
            prober,
            term: 0,
            log_probe: EveryBy::default(),
            peers: settings.peers,
            lease: settings.lease,
            state_sync: settings.state_sync,
            groups,
            by_vrid,
            owned: 0,
            lease_until: None,
            lapsed: None,
            links: BTreeMap::new(),
            preempt_allowed: true,
            maintenance: false,
            started: false,
            counters: Counters::default(),
            verifier: Verifier::new(settings.auth),
            paths: paths::Paths::new(path_settings),
            log_rejected: EveryBy::default(),
            log_interval: Every::new(),
        };
        if node.state_sync {
            // Until the peer's table has arrived (see Event::SyncState).
            node.set_preempt_allowed(false);
        }
        Ok(node)
    }

    /// Handles one event at `now`; the effects are in the order they must be
    /// carried out.
    pub fn handle(&mut self, now: Instant, event: Event<'_>) -> Vec<Effect> {
        let mut out = Vec::new();
        // Paths are re-evaluated after every event but a refused packet:
        // hostile input changes nothing but counters (a change due by then
        // is reported by the timer, see `poll_at`).
        let mut evaluate = true;
        match event {
            Event::Start {
                resumed,
                maintenance,
                links,
            } => self.start(now, resumed, maintenance, links, &mut out),
            Event::Packet { path, bytes, wall } => {
                evaluate = self.on_packet(now, path, bytes, wall, &mut out);
            }
            Event::Packet6 {
                bytes,
                header,
                wall,
            } => {
                evaluate = self.on_packet6(now, bytes, header, wall, &mut out);
            }
            Event::Probe { path, src, bytes } => {
                evaluate = self.on_probe(now, path, src, bytes, &mut out);
            }
            Event::Timer => self.on_timer(now, &mut out),
            Event::Link { iface, up } => {
                if !self.paths.carrier(iface, up) || self.tracks(iface) {
                    self.on_link(now, iface, up, &mut out);
                }
            }
            Event::SetAuth(settings) => match settings.validate() {
                Ok(()) => {
                    info!(
                        mode = settings.mode.as_str(),
                        active_key = settings.active,
                        keys = settings.keys.len(),
                        "advert authentication changed"
                    );
                    self.verifier.set_settings(settings);
                    out.push(Effect::WriteStatus);
                }
                Err(e) => {
                    warn!(cause = %e, "advert authentication settings refused; keeping the old ones")
                }
            },
            Event::SyncState { in_sync } => {
                if self.state_sync && in_sync != self.preempt_allowed {
                    if in_sync {
                        info!("state sync complete: preemption allowed");
                    } else {
                        info!("preemption held until the peer's state has been received");
                    }
                    self.set_preempt_allowed(in_sync);
                    out.push(Effect::WriteStatus);
                }
            }
            Event::LeaseLapsed => self.lapse(Reason::LeaseLapsed),
            Event::OwnershipWriteFailed => {
                warn!("ownership write failed; stepping down so the election decides");
                self.lapse(Reason::WriteFailed);
            }
            Event::SetVips(vips) => self.set_vips(now, vips, &mut out),
            Event::Command(c) => self.command(c, &mut out),
            Event::Stop => self.stop(now, &mut out),
        }
        if let Some(cause) = self.lapsed.take() {
            self.step_down_lapsed(now, cause, &mut out);
        }
        if self.started && evaluate {
            self.evaluate_paths(now, &mut out);
        }
        self.set_probe_rate(now);
        out
    }

    /// Probes at the fast rate while some group is backup (it may have to
    /// take over); otherwise only for the paths' state, at a quarter of
    /// their timeout.
    fn set_probe_rate(&mut self, now: Instant) {
        let fast = self.started && self.groups.iter().any(|g| g.group.role() == Role::Backup);
        let idle = self.path_timeout() / 4;
        if let Some(p) = &mut self.prober {
            p.set_rate(fast, idle, now);
        }
    }

    /// A frame of the fast heartbeat; `false` when it was refused (counted,
    /// nothing else).
    fn on_probe(
        &mut self,
        now: Instant,
        path: usize,
        src: [u8; 6],
        bytes: &[u8],
        out: &mut Vec<Effect>,
    ) -> bool {
        let Some(p) = &mut self.prober else {
            return false;
        };
        if !self.started || path >= self.paths.len() {
            return false;
        }
        match p.on_frame(path, src, bytes, now) {
            Ok(verdict) => {
                self.paths.heard_reply(path, now);
                if let Some(v) = verdict {
                    self.peer_gone(now, v, out);
                }
                true
            }
            Err(reason) => {
                if self.log_probe.allow(reason, now) {
                    let total = p.report().rejected.get(&reason).copied().unwrap_or(0);
                    warn!(
                        reason = reason.name(),
                        path, total, "fast-heartbeat reply rejected"
                    );
                }
                false
            }
        }
    }

    /// The fast heartbeat found the peer gone: every backup group takes
    /// over now, as its Master_Down_Timer would a little later.
    fn peer_gone(&mut self, now: Instant, verdict: Verdict, out: &mut Vec<Effect>) {
        let (reason, why) = match verdict {
            Verdict::Silent => (
                Reason::PeerSilent,
                "fast heartbeat: the peer answered no probe on any path",
            ),
            Verdict::Lapsed => (
                Reason::PeerLapsed,
                "fast heartbeat: the peer's data plane let its ownership lapse",
            ),
        };
        let misses = self.prober.as_ref().map_or(0, Prober::misses);
        let backups = self
            .groups
            .iter()
            .filter(|g| g.group.role() == Role::Backup)
            .count();
        let silence_us = self
            .prober
            .as_ref()
            .and_then(Prober::last_verdict)
            .map_or(0, |(_, d)| d.as_micros() as u64);
        info!(misses, silence_us, groups = backups, "{why}: taking over");
        for gi in 0..self.groups.len() {
            if self.groups[gi].group.role() == Role::Backup {
                let actions = self.groups[gi].group.take_over(now, reason);
                self.apply(gi, actions, now, Some(now), out);
            }
        }
    }

    /// Whether `iface` is a tracked link of some group.
    fn tracks(&self, iface: &str) -> bool {
        self.groups
            .iter()
            .any(|g| g.group.tracks().iter().any(|t| t.iface == iface))
    }

    /// How long a path may be silent before it counts as down: the longest
    /// Master_Down_Interval of our members (what the election waits).
    fn path_timeout(&self) -> Duration {
        self.groups
            .iter()
            .flat_map(|g| g.group.members().iter().map(|m| m.master_down_interval()))
            .max()
            .unwrap_or(Duration::from_secs(3))
    }

    fn evaluate_paths(&mut self, now: Instant, out: &mut Vec<Effect>) {
        let timeout = self.path_timeout();
        let changes = self.paths.evaluate(now, timeout);
        for c in &changes {
            if c.state.faulty() {
                warn!(event = "path", path = %c.name, state = c.state.as_str(), "{}", c.describe());
            } else {
                info!(event = "path", path = %c.name, state = c.state.as_str(), "{}", c.describe());
            }
            self.counters.path_changes += 1;
            for gi in 0..self.groups.len() {
                out.push(Effect::Hook {
                    group: gi,
                    hook: Hook::Path {
                        name: c.name.clone(),
                        state: c.state,
                    },
                });
            }
        }
        if !changes.is_empty() {
            out.push(Effect::WriteStatus);
        }
    }

    /// The advert authentication's replay marks, for the I/O layer to
    /// persist (see [`auth::Verifier::marks`]).
    pub fn auth_marks(&self) -> Vec<(u8, Ipv4Addr, u64)> {
        self.verifier.marks()
    }

    /// Marks read back after a restart (before [`Event::Start`]).
    pub fn restore_auth_marks(&mut self, marks: &[(u8, Ipv4Addr, u64)]) {
        self.verifier.restore_marks(marks);
    }

    /// Our ownership term as the reflector holds it (read back after a
    /// restart, before [`Event::Start`]): a takeover writes a newer one.
    /// After a reboot the map is empty: give the greater of the map's term
    /// and the one kept on disk (see [`Effect::WriteProbeTerm`]).
    pub fn set_term_floor(&mut self, term: u64) {
        self.term = self.term.max(term);
    }

    /// The advert authentication settings in force.
    pub fn auth(&self) -> &auth::Settings {
        self.verifier.settings()
    }

    /// The heartbeat paths' interfaces.
    pub fn path_names(&self) -> Vec<String> {
        self.paths.names().map(str::to_owned).collect()
    }

    /// When [`Event::Timer`] is due next, if any timer is armed.
    pub fn poll_at(&self) -> Option<Instant> {
        let paths = if self.started && self.paths.len() > 1 {
            self.paths.next_change(self.path_timeout())
        } else {
            None
        };
        self.groups
            .iter()
            .flat_map(|g| {
                let garp = (g.garp_pending > 0).then_some(g.garp_at);
                let refresh = (g.refresh_at != Duration::MAX).then_some(g.refresh_at);
                g.group.poll_at().into_iter().chain(garp).chain(refresh)
            })
            .chain(paths)
            .chain(
                self.prober
                    .as_ref()
                    .filter(|_| self.started)
                    .and_then(Prober::poll_at),
            )
            .min()
    }

    /// Interfaces whose link state the I/O layer must report: tracked links
    /// and the heartbeat paths (when there are several).
    pub fn tracked_links(&self) -> Vec<String> {
        let paths: Vec<String> = if self.paths.len() > 1 {
            self.path_names()
        } else {
            Vec::new()
        };
        let mut v: Vec<String> = self
            .groups
            .iter()
            .flat_map(|g| g.group.tracks().iter().map(|t| t.iface.clone()))
            .chain(paths)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The ownership word as last written.
    pub fn owned(&self) -> u64 {
        self.owned
    }

    /// The role of every group.
    pub fn roles(&self) -> impl Iterator<Item = Role> + '_ {
        self.groups.iter().map(|g| g.group.role())
    }

    /// The VRIDs of group `gi`'s members.
    pub fn vrids(&self, gi: usize) -> Vec<u8> {
        self.groups.get(gi).map_or_else(Vec::new, |g| {
            g.group.members().iter().map(|m| m.config().vrid).collect()
        })
    }

    /// Group `gi`'s Master_Down_Interval and Skew_Time as a backup computes
    /// them now (its earliest member: the group follows the first to fire).
    pub fn master_down(&self, gi: usize) -> Option<(Duration, Duration)> {
        self.groups
            .get(gi)?
            .group
            .members()
            .iter()
            .map(|m| {
                (
                    m.master_down_interval(),
                    machine::skew_time(m.priority(), m.master_adver_interval_cs()),
                )
            })
            .min()
    }

    /// Each group's role, timers and effective priorities, and the lease:
    /// what input may change only through the election. The simulation
    /// compares it before and after hostile input.
    pub fn election_state(&self) -> ElectionState {
        ElectionState {
            groups: self
                .groups
                .iter()
                .map(|g| {
                    (
                        g.group.role(),
                        g.group.poll_at(),
                        g.group
                            .members()
                            .iter()
                            .map(|m| (m.role(), m.priority(), m.master_adver_interval_cs()))
                            .collect(),
                    )
                })
                .collect(),
            owned: self.owned,
            lease_until: self.lease_until,
        }
    }

    /// Counters, history and roles for the status.
    pub fn report(&self) -> Report {
        Report {
            groups: self
                .groups
                .iter()
                .map(|g| GroupReport {
                    name: g.name.clone(),
                    role: g.group.role(),
                    priority: effects::max_priority(&g.group),
                })
                .collect(),
            owned: self.owned,
            priority_override: self
                .groups
                .first()
                .and_then(|g| g.group.priority_override()),
            maintenance: self.maintenance,
            preempt_allowed: self.preempt_allowed,
            counters: self.counters.clone(),
            auth_mode: self.verifier.settings().mode,
            auth_active_key: self.verifier.settings().active,
            paths: self.paths.report(),
            heartbeat: self.prober.as_ref().map(Prober::report),
            term: self.term,
        }
    }

    /// Our ownership term (see [`Node::set_term_floor`]): the low bits
    /// travel in the sequence of every advert we sign
    /// ([`auth::Sequencer::next`]).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The fast heartbeat's prober, when on.
    pub fn prober(&self) -> Option<&Prober> {
        self.prober.as_ref()
    }

    /// The counters alone (cheaper than [`Node::report`]).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn set_preempt_allowed(&mut self, allowed: bool) {
        self.preempt_allowed = allowed;
        for g in &mut self.groups {
            g.group.set_preempt_allowed(allowed);
        }
    }

    fn start(
        &mut self,
        now: Instant,
        resumed: u64,
        maintenance: bool,
        links: &[(String, bool)],
        out: &mut Vec<Effect>,
    ) {
        if self.started {
            return;
        }
        self.started = true;
        if let Some(p) = &mut self.prober {
            p.start(now);
        }
        if maintenance {
            info!("maintenance mode is on: staying backup (`ha-agent maintenance off` ends it)");
            self.maintenance = true;
            self.set_override(Some(DEMOTED_PRIORITY));
        }
        // A restart within a running lease (we were master moments ago): the
        // lease is shorter than the peer's master-down interval and ran from
        // our last advert, so the peer cannot have taken over yet. The I/O
        // layer renewed it; resume as master, advertising at once. Otherwise
        // own nothing (RFC 9568: Initialize -> Backup unless address owner).
        let all = self.groups.iter().fold(0, |a, g| a | g.bit);
        let resumed = resumed & all;
        self.owned = resumed;
        if resumed == 0 {
            out.push(Effect::WriteOwnership {
                groups: 0,
                lease: None,
            });
        } else {
            info!(
                groups = resumed,
                "restarted within the ownership lease: resuming as master"
            );
            self.lease_until = Some(now + self.lease);
        }
        for (iface, up) in links {
            // A heartbeat path's carrier, as Event::Link.
            if !self.paths.carrier(iface, *up) || self.tracks(iface) {
                self.on_link(now, iface, *up, out);
            }
        }
        for gi in 0..self.groups.len() {
            let actions = if resumed & self.groups[gi].bit != 0 {
                self.groups[gi].group.resume_master(now)
            } else {
                self.groups[gi].group.startup(now)
            };
            self.apply(gi, actions, now, None, out);
        }
        out.push(Effect::WriteStatus);
    }

    fn reject(&mut self, now: Instant, path: usize, reason: Rejected, src: Option<IpAddr>) {
        let total = {
            let n = self.counters.rejected.entry(reason).or_default();
            *n += 1;
            *n
        };
        if self.log_rejected.allow(reason, now) {
            warn!(
                reason = reason.name(),
                ?src,
                path,
                total,
                "VRRP packet rejected"
            );
        }
    }

    /// Handles a packet; `false` when it was refused (counted, nothing else).
    fn on_packet(
        &mut self,
        now: Instant,
        path: usize,
        bytes: &[u8],
        wall: Duration,
        out: &mut Vec<Effect>,
    ) -> bool {
        if path >= self.paths.len() {
            return true;
        }
        // On the HA link only the configured peers; over a data path any
        // address but ours, since only an authenticated advert counts there
        // and it is the one peer's.
        let peers = &self.peers;
        let own = &self.paths;
        let is_peer = |a: Ipv4Addr| {
            if path == 0 {
                peers.contains(&a)
            } else {
                !own.is_local(a)
            }
        };
        // On the HA link an IPv4 advert is for an IPv4 instance (an IPv6
        // instance's VRID over IPv4 is another virtual router, RFC 9568
        // section 7.3); over a data path our peer's adverts of either
        // family come framed in IPv4.
        let known =
            |v| self.runs(v, wire::Family::V4) || (path != 0 && self.runs(v, wire::Family::V6));
        let rx = match packet::parse(bytes, is_peer, known) {
            Ok(rx) => rx,
            Err((reason, src)) => {
                let reason = match src {
                    Some(a) if reason == Rejected::NotPeer && self.paths.is_local(a) => {
                        Rejected::Own
                    }
                    _ => reason,
                };
                self.reject(now, path, reason, src.map(IpAddr::V4));
                return false;
            }
        };
        self.on_received(now, path, bytes, rx, wall, out)
    }

    /// Whether VRID `vrid` is one of our instances of `family`.
    fn runs(&self, vrid: u8, family: wire::Family) -> bool {
        self.by_vrid.get(&vrid).is_some_and(|&(gi, mi)| {
            self.groups[gi].group.members()[mi].config().family() == family
        })
    }

    /// Handles an advert received over IPv6 on the HA link (path 0); `false`
    /// when it was refused.
    fn on_packet6(
        &mut self,
        now: Instant,
        bytes: &[u8],
        header: packet::Header6,
        wall: Duration,
        out: &mut Vec<Effect>,
    ) -> bool {
        // A link-local source is the peer's only when there is one peer:
        // the election knows it by its HA address (with several, whose
        // link-local is whose is not known).
        let peer = (self.peers.len() == 1).then(|| self.peers[0]);
        let known = |v| self.runs(v, wire::Family::V6);
        let rx = match packet::parse6(bytes, header, |_| peer, known) {
            Ok(rx) => rx,
            Err((reason, src)) => {
                self.reject(now, 0, reason, src);
                return false;
            }
        };
        self.on_received(now, 0, bytes, rx, wall, out)
    }

    /// An advert that parsed: authenticated, then handed to its instance.
    fn on_received(
        &mut self,
        now: Instant,
        path: usize,
        bytes: &[u8],
        rx: packet::Received,
        wall: Duration,
        out: &mut Vec<Effect>,
    ) -> bool {
        let signed = match self.verifier.check(
            wall,
            rx.src,
            &bytes[rx.pdu.clone()],
            rx.trailer.as_ref(),
            path != 0,
        ) {
            Ok(signed) => signed,
            Err(f) => {
                self.reject(now, path, f.into(), Some(IpAddr::V4(rx.src)));
                return false;
            }
        };
        if !self.started {
            return true;
        }
        self.counters.adverts_received += 1;
        self.paths.heard(path, now);
        if let Some(p) = &mut self.prober {
            // A verified trailer's sequence announces the sender's term.
            p.heard_peer(
                rx.trailer
                    .as_ref()
                    .filter(|_| signed)
                    .map(auth::trailer_seq),
            );
        }
        let Some(&(gi, mi)) = self.by_vrid.get(&rx.advert.vrid) else {
            return true;
        };
        // Over a data path the sender is the one peer (checked at
        // construction): the election knows it by its HA address.
        let src = if path == 0 { rx.src } else { self.peers[0] };
        let ours = self.groups[gi].group.members()[mi]
            .config()
            .advert_interval_cs;
        if rx.advert.interval_cs != ours {
            self.counters.interval_mismatches += 1;
            if self.log_interval.allow(now) {
                warn!(%src, vrid = rx.advert.vrid, theirs_cs = rx.advert.interval_cs, ours_cs = ours,
                    total = self.counters.interval_mismatches, "advert interval differs from ours (learnt, per RFC 9568)");
            }
        }
        self.counters.last_advert = Some(LastAdvert {
            src,
            priority: rx.advert.priority,
            at: now,
        });
        let actions = self.groups[gi].group.on_advert(
            mi,
            now,
            src,
            rx.advert.priority,
            rx.advert.interval_cs,
        );
        self.apply(gi, actions, now, None, out);
        true
    }

    fn on_timer(&mut self, now: Instant, out: &mut Vec<Effect>) {
        if !self.started {
            return;
        }
        if let Some(p) = &mut self.prober {
            // The verdict first (the takeover), then this round's probes.
            let mut probes = Vec::new();
            let verdict = p.tick(now, &mut probes);
            if let Some(v) = verdict {
                self.peer_gone(now, v, out);
            }
            out.extend(probes.into_iter().map(Effect::SendProbe));
        }
        for gi in 0..self.groups.len() {
            if let Some(due) = self.groups[gi].group.poll_at().filter(|t| *t <= now) {
                let actions = self.groups[gi].group.poll(now);
                self.apply(gi, actions, now, Some(due), out);
            }
            let owns = self.owns(gi, now);
            let g = &mut self.groups[gi];
            let mut send = false;
            if g.garp_pending > 0 && g.garp_at <= now {
                g.garp_pending -= 1;
                g.garp_at = now + g.garp_interval;
                send = true;
            }
            if let Some(every) = g.garp_refresh
                && g.refresh_at <= now
            {
                g.refresh_at = now + every;
                send = true;
            }
            if send && owns {
                out.push(Effect::SendGarp { group: gi });
            }
        }
    }

    fn on_link(&mut self, now: Instant, iface: &str, up: bool, out: &mut Vec<Effect>) {
        if self.links.get(iface) == Some(&up) {
            return;
        }
        info!(%iface, up, "tracked link changed");
        self.links.insert(iface.to_owned(), up);
        for gi in 0..self.groups.len() {
            let actions = self.groups[gi].group.set_link(iface, up, now);
            self.apply(gi, actions, now, None, out);
        }
    }

    fn set_vips(&mut self, now: Instant, vips: Vec<Vec<Vec<IpAddr>>>, out: &mut Vec<Effect>) {
        for (gi, members) in vips.into_iter().enumerate().take(self.groups.len()) {
            let g = &mut self.groups[gi];
            for (mi, v) in members.into_iter().enumerate().take(g.instances.len()) {
                g.group.member_mut(mi).set_vips(v);
            }
            if self.owns(gi, now) {
                out.push(Effect::SendGarp { group: gi });
            }
        }
        out.push(Effect::WriteStatus);
    }

    fn set_override(&mut self, p: Option<u8>) {
        for g in &mut self.groups {
            g.group.set_priority_override(p);
        }
    }

    fn command(&mut self, c: Command, out: &mut Vec<Effect>) {
        let reply = match c {
            Command::Promote => {
                if self.maintenance {
                    self.maintenance = false;
                    out.push(Effect::SaveMaintenance(false));
                }
                self.set_override(Some(PROMOTED_PRIORITY));
                Ok(format!(
                    "promoted: priority {PROMOTED_PRIORITY}; this node preempts the master{} and stays master until `demote` or a restart",
                    if self.preempt_allowed {
                        ""
                    } else {
                        " once state sync is complete"
                    }
                ))
            }
            Command::Demote => {
                self.set_override(Some(DEMOTED_PRIORITY));
                Ok(format!(
                    "demoted: priority {DEMOTED_PRIORITY}; the peer takes over as soon as it sees our adverts, and this node stays backup until `promote` or a restart"
                ))
            }
            Command::Maintenance(on) => {
                self.maintenance = on;
                out.push(Effect::SaveMaintenance(on));
                if on {
                    self.set_override(Some(DEMOTED_PRIORITY));
                    Ok("maintenance on: this node hands over to the peer and stays backup, across restarts, until `maintenance off`".into())
                } else {
                    self.set_override(None);
                    Ok("maintenance off: back to the configured priority".into())
                }
            }
            Command::Resync if self.state_sync => {
                out.push(Effect::ForceResync);
                self.set_preempt_allowed(false);
                Ok("asked the peer for a full state resync; `ha-agent status` shows when it is complete".into())
            }
            Command::Resync => {
                Err("state sync is not configured (ha.sync_port, ha.sync_key_file)".into())
            }
        };
        out.push(Effect::WriteStatus);
        out.push(Effect::Reply(reply));
    }

    fn stop(&mut self, now: Instant, out: &mut Vec<Effect>) {
        for gi in 0..self.groups.len() {
            let actions = self.groups[gi].group.shutdown(now);
            self.apply(gi, actions, now, None, out);
        }
        self.owned = 0;
        self.lease_until = None;
        out.push(Effect::WriteOwnership {
            groups: 0,
            lease: None,
        });
        out.push(Effect::WriteStatus);
        info!("node stopped");
    }
}

#[cfg(test)]
mod tests;
