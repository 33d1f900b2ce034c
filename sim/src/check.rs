//! The invariants, checked on every step of a run (and, for the bounds on
//! two owners, over the whole run at its end). Each is a formula; the names
//! are those of `docs/simulation.md`.
//!
//! Definitions. A node *owns* group g at t when its data plane would answer
//! for g's VIPs: the machine is up and not paused, g's bit is set in the
//! ownership word, and the lease has not lapsed on the data plane's coarse
//! clock (up to one tick late). L = lease + tick (the lease bound).
//! C = A + D + P (the convergence bound): A the longest advert interval, D
//! the longest one-way delay (jitter and spikes included), P = 5 ms of
//! processing. A pair of nodes is *impaired* at t when a packet between
//! them is dropped (loss, partition, a full or dead receiver; not the cut
//! of one path while another is not cut) or either node is disturbed
//! (crash, agent down, stall, pause, hostile burst, link fault, operator
//! command; not a wall-clock step). W = 4A·1.001 + D + P (the silence
//! window). A pair is *path-clean* over [s, e] when neither node is
//! disturbed in it and some path between them dropped nothing in it.
//!
//! - SPLIT: every interval [s, e) in which two nodes own g satisfies
//!   e − max(s, f) ≤ max(L, C), f the last impairment of the pair before e.
//!   Without impairment two owners never last longer than the lease bound;
//!   after a cut heals they converge within one advert interval (plus delay
//!   and processing).
//! - FAILOVER: when the sole owner of g dies (machine crash, agent crash,
//!   graceful stop) and a backup B stays undisturbed, some other node owns g
//!   by r + MDI_B·1.001 + P (r: the last advert B processed from the dead
//!   master; Skew_Time instead of MDI when that advert was priority 0;
//!   1.001 covers 500 ppm of clock drift).
//! - HOSTILE: a hostile packet (malformed, from a stranger, wrong TTL or
//!   VRID, unsigned where a trailer is required, a forged trailer, a replay
//!   of a genuine advert older than one the node was handed from that
//!   source) produces no effect, leaves the node's election state (roles,
//!   timers, priorities, learnt intervals, ownership, lease) unchanged, and
//!   is counted as exactly one rejection.
//! - PATHS: (a) a takeover by silence of g by B at t (not a preemption: the
//!   last advert B accepted for g was not of a lower priority than B's)
//!   needs some other node j with (B, j) not path-clean over [t − W, t]: a
//!   single path's cut or a wall-clock step moves no role. (b) With two
//!   nodes and several paths, a node hearing a master reports a path cut
//!   for long enough `down` (`no-carrier`) and the others `up` at the end
//!   of the cut, and the path `up` again A + D + P + 10 ms after it.
//! - GATE: a node with state sync never preempts (Reason::Preempt) before
//!   it was told its resync is complete.
//! - ORDER: in one batch of effects, ownership of g is gained only after a
//!   Commit for g (no ownership without a takeover: a lapsed lease is never
//!   revived); a GARP for g, and the start of g's services, only while the
//!   data plane owns g. So: commit -> ownership write -> first GARP.
//! - AGREE: after every event a running, unfrozen core handles, its data
//!   plane owns no group the core does not hold as MASTER.
//! - CONVERGE: at the end of the quiet tail (every fault healed, every node
//!   up), each group has exactly one owner, whose core is its only MASTER.

use std::{collections::BTreeMap, time::Duration};

use ha_core::{
    node::{ElectionState, PathState},
    vrrp::{
        machine::{Reason, Role},
        packet,
    },
};

use crate::{
    node::{Origin, SimNode},
    scenario::{Fault, Scenario, T, ms},
};

/// Processing allowance in the bounds.
pub const P: Duration = Duration::from_millis(5);

/// A master death whose takeover is awaited.
#[derive(Debug, Clone)]
struct Death {
    group: usize,
    master: usize,
    at: T,
    /// Eligible backups with their (MDI, Skew_Time).
    backups: Vec<(usize, Duration, Duration)>,
}

/// What the checks keep.
pub struct Checker {
    groups: usize,
    tick: T,
    lease_bound: Duration,
    converge_bound: Duration,
    /// Ownership intervals by (group, node), and the open one.
    intervals: BTreeMap<(usize, usize), Vec<(T, T)>>,
    open: BTreeMap<(usize, usize), T>,
    /// Drop times by unordered pair (those that impair it: not a single
    /// path's cut while another path is whole), and every drop by pair and
    /// path.
    drops: BTreeMap<(usize, usize), Vec<T>>,
    path_drops: BTreeMap<((usize, usize), usize), Vec<T>>,
    /// Frames of the fast heartbeat (probes, replies) lost, met by a
    /// machine down or paused, or delayed by a spike, by pair and path.
    probe_troubles: BTreeMap<((usize, usize), usize), Vec<T>>,
    /// Probes met by the peer's machine down or paused, by pair and path.
    probe_unanswered: BTreeMap<((usize, usize), usize), Vec<T>>,
    /// Stalls of each node's loop.
    stalls: BTreeMap<usize, Vec<(T, T)>>,
    nodes: usize,
    paths: usize,
    /// The longest advert interval and one-way delay.
    advert: Duration,
    delay: Duration,
    /// Disturbance windows by node.
    disturbed: BTreeMap<usize, Vec<(T, T)>>,
    /// The last advert each node processed for each group, from whom, at
    /// what priority: (node, group) -> (from, t, priority).
    last_rx: BTreeMap<(usize, usize), (usize, T, u8)>,
    deaths: Vec<Death>,
    /// Before a packet: (election state if hostile, rejections) of the node.
    before: Option<(Option<ElectionState>, u64)>,
    pub violations: Vec<(T, String)>,
    /// Figures: failovers checked and their worst margin past MDI, the
    /// longest two-owner interval with and without impairment.
    pub deaths_checked: u64,
    pub worst_failover_excess: Option<Duration>,
    pub dual_clean_max: Duration,
    pub dual_impaired_max: Duration,
    pub dual_total: Duration,
    /// DETECT: takeovers checked after a machine crash and after a lapsed
    /// lease, and the longest of each (counted from the crash, from the
    /// lease's end), with their bounds.
    pub detect_crash: u64,
    pub detect_lapse: u64,
    pub detect_crash_worst: Option<(Duration, Duration)>,
    pub detect_lapse_worst: Option<(Duration, Duration)>,
}

impl Checker {
    pub fn new(sc: &Scenario, groups: usize) -> Self {
        let lease = sc.nodes[0].settings.lease;
        let d = sc.max_delay();
        Checker {
            path_drops: BTreeMap::new(),
            probe_troubles: BTreeMap::new(),
            probe_unanswered: BTreeMap::new(),
            stalls: BTreeMap::new(),
            nodes: sc.nodes.len(),
            paths: sc.paths(),
            advert: sc.max_advert(),
            delay: d,
            groups,
            tick: sc.tick,
            lease_bound: lease + sc.tick,
            converge_bound: sc.max_advert() + d + P,
            intervals: BTreeMap::new(),
            open: BTreeMap::new(),
            drops: BTreeMap::new(),
            disturbed: BTreeMap::new(),
            last_rx: BTreeMap::new(),
            deaths: Vec::new(),
            before: None,
            violations: Vec::new(),
            deaths_checked: 0,
            worst_failover_excess: None,
            dual_clean_max: T::ZERO,
            dual_impaired_max: T::ZERO,
            dual_total: T::ZERO,
            detect_crash: 0,
            detect_lapse: 0,
            detect_crash_worst: None,
            detect_lapse_worst: None,
        }
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    pub fn failed(&self) -> bool {
        !self.violations.is_empty()
    }

    pub fn violation(&mut self, t: T, what: String) {
        self.violations.push((t, what));
    }

    /// A packet from `from` to `to` over `path` was dropped; `excused`: by
    /// a single path's cut while another path is not cut (no impairment).
    pub fn dropped(&mut self, from: usize, to: usize, path: usize, t: T, excused: bool) {
        if !excused {
            self.drops.entry(pair(from, to)).or_default().push(t);
        }
        self.path_drops
            .entry((pair(from, to), path))
            .or_default()
            .push(t);
    }

    /// A frame of the fast heartbeat between `a` and `b` over path `p` was
    /// lost (the network, a full socket, a paused or dead receiver of a
    /// reply), or delayed by a spike.
    pub fn probe_trouble(&mut self, a: usize, b: usize, p: usize, t: T) {
        self.probe_troubles
            .entry((pair(a, b), p))
            .or_default()
            .push(t);
    }

    /// A probe between `a` and `b` over path `p` met its target's machine
    /// down or paused (nothing answers).
    pub fn probe_unanswered(&mut self, a: usize, b: usize, p: usize, t: T) {
        self.probe_unanswered
            .entry((pair(a, b), p))
            .or_default()
            .push(t);
    }

    fn probe_troubled(&self, a: usize, b: usize, p: usize, from: T, to: T) -> bool {
        let within = |v: &Vec<T>| {
            let k = v.partition_point(|&t| t < from);
            v.get(k).is_some_and(|&t| t <= to)
        };
        self.probe_troubles
            .get(&(pair(a, b), p))
            .is_some_and(within)
    }

    fn probe_troubled_or_unanswered(&self, a: usize, b: usize, p: usize, from: T, to: T) -> bool {
        let within = |v: &Vec<T>| {
            let k = v.partition_point(|&t| t < from);
            v.get(k).is_some_and(|&t| t <= to)
        };
        self.probe_troubled(a, b, p, from, to)
            || self
                .probe_unanswered
                .get(&(pair(a, b), p))
                .is_some_and(within)
    }

    /// Whether anything of the pair (an advert or a heartbeat frame, on
    /// any path) was lost or delayed by a spike in [from, to].
    pub fn pair_troubled(&self, a: usize, b: usize, from: T, to: T) -> bool {
        (0..self.paths)
            .any(|p| self.probe_troubled(a, b, p, from, to) || self.path_dropped(a, b, p, from, to))
    }

    /// Whether `node` was disturbed in [from, to].
    pub fn disturbed_since(&self, node: usize, from: T, to: T) -> bool {
        self.disturbed_in(node, from, to)
    }

    /// A DETECT takeover came `took` after its start, its bound `bound`.
    pub fn detected(&mut self, kind: crate::world::DetectKind, took: Duration, bound: Duration) {
        let (n, worst) = match kind {
            crate::world::DetectKind::Crash => {
                (&mut self.detect_crash, &mut self.detect_crash_worst)
            }
            crate::world::DetectKind::Lapse => {
                (&mut self.detect_lapse, &mut self.detect_lapse_worst)
            }
        };
        *n += 1;
        if worst.is_none_or(|(w, _)| took > w) {
            *worst = Some((took, bound));
        }
    }

    /// Whether `node`'s loop stalled (or was still answering a stall: the
    /// delay twice) in [from, to].
    pub fn stalled(&self, node: usize, from: T, to: T) -> bool {
        self.stalls.get(&node).is_some_and(|w| {
            w.iter()
                .any(|&(s, e)| s <= to && e + 2 * self.delay >= from)
        })
    }

    /// Node `node`'s loop is frozen over [from, to].
    pub fn stall(&mut self, node: usize, from: T, to: T) {
        self.stalls.entry(node).or_default().push((from, to));
    }

    // ----- SILENT, STALL -----

    /// Node `b` took over by a PeerSilent verdict at `t`, its `k` last
    /// rounds unanswered, the first of them sent at `first`. Unless every
    /// path to `peer` lost or delayed a frame of the heartbeat since
    /// `first` (a probe or a reply: loss, a cut, a partition, the peer's
    /// machine down or paused, a full socket, a spike), or has a probe of
    /// those rounds or its reply still on the way (`late`: a round trip
    /// longer than the k rounds), the detector was wrong; STALL when the
    /// prober's own loop stalled meanwhile.
    pub fn silent_verdict(
        &mut self,
        b: usize,
        t: T,
        first: Option<T>,
        k: u64,
        late: &[bool],
        depth: u64,
    ) {
        // The fast heartbeat runs with two nodes: the one peer.
        let peer = 1 - b.min(1);
        let Some(first) = first else {
            self.violations.push((
                t,
                format!("SILENT: node {b} took over (PeerSilent) with {k} rounds unanswered, but it had not sent that many"),
            ));
            return;
        };
        let troubled = |p: usize| self.probe_troubled_or_unanswered(b, peer, p, first, t);
        if (0..self.paths).all(troubled) {
            return;
        }
        // A round trip still on its way excuses only a k above every
        // round trip the prober had seen come back (`depth`, in rounds):
        // waiting fewer rounds than it measured is the detector's fault.
        if (0..self.paths).all(|p| late[p] || troubled(p)) {
            if k > depth {
                return;
            }
            self.violations.push((
                t,
                format!(
                    "SILENT: node {b} took over (PeerSilent, k = {k}) at {t:?} with replies on their way, though it had seen a reply come back {depth} rounds after its probe"
                ),
            ));
            return;
        }
        let name = if self.stalled(b, first, t) {
            "STALL"
        } else {
            "SILENT"
        };
        self.violations.push((
            t,
            format!(
                "{name}: node {b} took over (PeerSilent, k = {k}) at {t:?}, though since its round at {first:?} some path to node {peer} lost and delayed no probe or reply"
            ),
        ));
    }

    /// Whether path `p` between `a` and `b` dropped a packet in [from, to].
    fn path_dropped(&self, a: usize, b: usize, p: usize, from: T, to: T) -> bool {
        self.path_drops.get(&(pair(a, b), p)).is_some_and(|v| {
            let k = v.partition_point(|&t| t < from);
            v.get(k).is_some_and(|&t| t <= to)
        })
    }

    /// Whether the pair was clean over [from, to] but for path faults:
    /// neither node disturbed, and some path dropped nothing.
    fn path_clean(&self, a: usize, b: usize, from: T, to: T) -> bool {
        !self.disturbed_in(a, from, to)
            && !self.disturbed_in(b, from, to)
            && (0..self.paths).any(|p| !self.path_dropped(a, b, p, from, to))
    }

    /// The silence a takeover needs, at most: 4 advert intervals (3 and
    /// Skew_Time) with drift, the delay, processing.
    fn silence_window(&self) -> Duration {
        self.advert * 4 + self.advert * 4 / 1000 + self.delay + P
    }

    // ----- PATHS -----

    /// Node `b` took group `group` over by silence (MasterDown, MasterLeft)
    /// at `t`. Unless it was preempting (the last advert it accepted for the
    /// group was of a lower priority than its own: RFC 9568 discards it and
    /// lets the timer fire), every other node must have been disturbed, or
    /// every path to it must have dropped a packet, within the silence
    /// window before.
    pub fn silent_takeover(
        &mut self,
        nodes: &[SimNode],
        b: usize,
        group: &str,
        reason: Reason,
        t: T,
    ) {
        let Some(g) = group
            .strip_prefix('g')
            .and_then(|g| g.parse::<usize>().ok())
        else {
            return;
        };
        let Some(core) = &nodes[b].core else {
            return;
        };
        let ours = core.report().groups.get(g).map_or(0, |r| r.priority);
        let from = t.saturating_sub(self.silence_window());
        if let Some(&(_, _, prio)) = self.last_rx.get(&(b, g))
            && prio < ours
        {
            return;
        }
        let clean = (0..self.nodes)
            .filter(|&j| j != b)
            .all(|j| self.path_clean(b, j, from, t));
        if clean {
            self.violations.push((
                t,
                format!(
                    "PATHS: node {b} took group {g} over ({reason:?}) at {t:?} though since {from:?} no node was disturbed and a path to each dropped nothing"
                ),
            ));
        }
    }

    /// How long after a path heals it must be up again: an advert interval,
    /// the delay, processing and the carrier's notice (10 ms).
    pub fn path_up_after(&self) -> Duration {
        self.advert + self.delay + P + ms(10)
    }

    /// Whether node `n` hears node `m` as a master over [from, to]: both
    /// run, undisturbed, without a role change since `from`, and `m` is
    /// master of some group.
    fn hears_master(&self, nodes: &[SimNode], n: usize, m: usize, from: T, to: T) -> bool {
        let (Some(_), Some(cm)) = (&nodes[n].core, &nodes[m].core) else {
            return false;
        };
        !self.disturbed_in(n, from, to)
            && !self.disturbed_in(m, from, to)
            && nodes[n].last_transition < from
            && nodes[m].last_transition < from
            && cm.roles().any(|r| r == Role::Master)
    }

    /// Fault `k` cut a path from `cut` to `healed` (and nothing else cut a
    /// path around that): on a node hearing a master over the others all along,
    /// it must be reported `down` (`no-carrier`) by the end of the cut, and
    /// the others `up`. Returns the checks made.
    pub fn path_down(&mut self, nodes: &[SimNode], sc: &Scenario, k: usize, healed: T) -> u64 {
        let Some((at, Fault::PathCut { path, carrier, .. })) = sc.faults.get(k).cloned() else {
            return 0;
        };
        let cut = at;
        let pre = self.silence_window();
        let from = cut.saturating_sub(pre);
        if self.nodes != 2
            || self.paths < 2
            || other_cut(sc, path, from, healed, Some(k))
            || (0..self.paths).any(|q| q != path && other_cut(sc, q, from, healed, None))
        {
            return 0;
        }
        // Silent for the timeout (≤ 4 intervals), then noticed at the next
        // advert over another path.
        if healed < cut + pre + self.advert + ms(10) {
            return 0;
        }
        let mut checks = 0;
        for (n, m) in [(0, 1), (1, 0)] {
            if !self.hears_master(nodes, n, m, from, healed)
                || (0..self.paths)
                    .filter(|&q| q != path)
                    .any(|q| self.path_dropped(n, m, q, from, healed))
            {
                continue;
            }
            let Some(core) = &nodes[n].core else { continue };
            checks += 1;
            let report = core.report().paths;
            let want = if carrier {
                PathState::NoCarrier
            } else {
                PathState::Down
            };
            let ok = report
                .iter()
                .enumerate()
                .all(|(q, r)| r.state == if q == path { want } else { PathState::Up });
            if !ok {
                let states: Vec<&str> = report.iter().map(|r| r.state.as_str()).collect();
                self.violations.push((
                    healed,
                    format!(
                        "PATHS: node {n} reports paths {states:?} at the end of a cut of path {path} ({cut:?}..{healed:?}, carrier {carrier}); want path {path} {} and the others up",
                        want.as_str()
                    ),
                ));
            }
        }
        checks
    }

    /// Path `path` healed at `healed`: by now it must be up again on a node
    /// hearing a master, if it dropped nothing since. Returns the checks.
    pub fn path_up(
        &mut self,
        nodes: &[SimNode],
        sc: &Scenario,
        path: usize,
        healed: T,
        now: T,
    ) -> u64 {
        if self.nodes != 2 || self.paths < 2 || other_cut(sc, path, healed, now, None) {
            return 0;
        }
        let from = healed.saturating_sub(self.silence_window());
        let mut checks = 0;
        for (n, m) in [(0, 1), (1, 0)] {
            if !self.hears_master(nodes, n, m, from, now)
                || self.path_dropped(n, m, path, healed, now)
            {
                continue;
            }
            let Some(core) = &nodes[n].core else { continue };
            checks += 1;
            let report = core.report().paths;
            if report.get(path).map(|r| r.state) != Some(PathState::Up) {
                let states: Vec<&str> = report.iter().map(|r| r.state.as_str()).collect();
                self.violations.push((
                    now,
                    format!(
                        "PATHS: node {n} reports paths {states:?} at {now:?}, path {path} healed at {healed:?}; want it up"
                    ),
                ));
            }
        }
        checks
    }

    pub fn disturb(&mut self, node: usize, from: T, to: T) {
        self.disturbed.entry(node).or_default().push((from, to));
    }

    fn disturbed_in(&self, node: usize, from: T, to: T) -> bool {
        self.disturbed
            .get(&node)
            .is_some_and(|w| w.iter().any(|&(a, b)| a <= to && b >= from))
    }

    /// Closes ownership that ended by itself (a lapsed lease) before `t`,
    /// at the exact instant, and checks awaited takeovers.
    pub fn settle(&mut self, nodes: &[SimNode], t: T) {
        let open: Vec<((usize, usize), T)> = self.open.iter().map(|(k, v)| (*k, *v)).collect();
        for ((g, i), since) in open {
            if !nodes[i].owns(g, t, self.tick) {
                let end = nodes[i].lease_end(self.tick).unwrap_or(t).clamp(since, t);
                self.close(g, i, since, end);
            }
        }
        self.check_deaths(nodes, t);
    }

    fn close(&mut self, g: usize, i: usize, since: T, end: T) {
        self.open.remove(&(g, i));
        self.intervals.entry((g, i)).or_default().push((since, end));
    }

    /// Node `i`'s ownership may have changed at `t` (a write, a crash, a
    /// pause).
    pub fn ownership_changed(&mut self, nodes: &[SimNode], i: usize, t: T) {
        for g in 0..self.groups {
            let owns = nodes[i].owns(g, t, self.tick);
            match (self.open.get(&(g, i)).copied(), owns) {
                (Some(since), false) => self.close(g, i, since, t),
                (None, true) => {
                    self.open.insert((g, i), t);
                    self.took_over(g, i, t);
                }
                _ => {}
            }
        }
    }

    // ----- FAILOVER -----

    /// Node `m` dies at `t`: for each group it owns alone, await a takeover.
    pub fn death(&mut self, nodes: &[SimNode], m: usize, t: T) {
        for g in 0..self.groups {
            let owners: Vec<usize> = (0..nodes.len())
                .filter(|&i| nodes[i].owns(g, t, self.tick))
                .collect();
            if owners != [m] {
                continue;
            }
            let backups = (0..nodes.len())
                .filter(|&b| b != m)
                .filter_map(|b| {
                    let core = nodes[b].core.as_ref()?;
                    if core.roles().nth(g) != Some(Role::Backup) {
                        return None;
                    }
                    let (mdi, skew) = core.master_down(g)?;
                    // Undisturbed over the master-down interval before.
                    if self.disturbed_in(b, t.saturating_sub(mdi + ms(10)), t) {
                        return None;
                    }
                    Some((b, mdi, skew))
                })
                .collect::<Vec<_>>();
            if !backups.is_empty() {
                self.deaths.push(Death {
                    group: g,
                    master: m,
                    at: t,
                    backups,
                });
            }
        }
    }

    /// The deadline of a death: the earliest of its eligible backups'.
    fn deadline(&self, d: &Death, now: T) -> Option<T> {
        d.backups
            .iter()
            .filter(|(b, _, _)| !self.disturbed_in(*b, d.at, now))
            .filter_map(|&(b, mdi, skew)| {
                let &(from, r, prio) = self.last_rx.get(&(b, d.group))?;
                (from == d.master).then(|| {
                    let wait = if prio == 0 { skew } else { mdi };
                    r + wait + wait / 1000 + P
                })
            })
            .min()
    }

    fn took_over(&mut self, g: usize, i: usize, t: T) {
        let mut done = Vec::new();
        for (k, d) in self.deaths.iter().enumerate() {
            if d.group == g && d.master != i {
                done.push(k);
                if let Some(deadline) = self.deadline(d, t) {
                    self.deaths_checked += 1;
                    let excess = t.saturating_sub(deadline - P);
                    self.worst_failover_excess = self.worst_failover_excess.max(Some(excess));
                    if t > deadline {
                        self.violations.push((
                            t,
                            format!(
                                "FAILOVER: node {i} took group {g} over at {t:?}, after the bound {deadline:?} (master {} died at {:?})",
                                d.master, d.at
                            ),
                        ));
                    }
                }
            }
        }
        for k in done.into_iter().rev() {
            self.deaths.remove(k);
        }
    }

    fn check_deaths(&mut self, nodes: &[SimNode], t: T) {
        let mut late = Vec::new();
        self.deaths.retain(|d| {
            // The master came back and owns again: nothing awaited.
            if nodes[d.master].core.is_some() && nodes[d.master].owns(d.group, t, self.tick) {
                return false;
            }
            true
        });
        for (k, d) in self.deaths.iter().enumerate() {
            match self.deadline(d, t) {
                None if d
                    .backups
                    .iter()
                    .all(|(b, _, _)| self.disturbed_in(*b, d.at, t)) =>
                {
                    late.push((k, None));
                }
                Some(deadline) if t > deadline => late.push((k, Some(deadline))),
                _ => {}
            }
        }
        for (k, deadline) in late.into_iter().rev() {
            let d = self.deaths.remove(k);
            if let Some(deadline) = deadline {
                self.violations.push((
                    t,
                    format!(
                        "FAILOVER: no node owns group {} at {t:?}, past the bound {deadline:?} (master {} died at {:?})",
                        d.group, d.master, d.at
                    ),
                ));
            }
        }
    }

    // ----- HOSTILE, and adverts seen -----

    pub fn before_packet(&mut self, nodes: &[SimNode], i: usize, origin: Origin) {
        self.before = nodes[i].core.as_ref().map(|core| {
            (
                origin.node().is_none().then(|| core.election_state()),
                core.counters().rejected.values().sum(),
            )
        });
    }

    /// After a packet: the HOSTILE check, or the advert seen. Whether the
    /// core accepted it (no rejection counted).
    pub fn after_packet(
        &mut self,
        nodes: &[SimNode],
        i: usize,
        origin: Origin,
        bytes: &[u8],
        effects: usize,
        t: T,
    ) -> bool {
        let Some(core) = &nodes[i].core else {
            return false;
        };
        let Some((state, rejected)) = self.before.take() else {
            return false;
        };
        let now_rejected: u64 = core.counters().rejected.values().sum();
        if let Some(state) = state {
            if effects != 0 || core.election_state() != state || now_rejected != rejected + 1 {
                self.violations.push((
                    t,
                    format!(
                        "HOSTILE: node {i} changed on a hostile packet ({origin:?}, {} bytes: {:02x?}): {effects} effects, rejections {rejected} -> {now_rejected}",
                        bytes.len(),
                        &bytes[..bytes.len().min(32)]
                    ),
                ));
            }
            return false;
        }
        if now_rejected != rejected {
            return false;
        }
        if let Some(from) = origin.node()
            && let Ok(rx) = packet::parse(bytes, |_| true, |_| true)
        {
            for g in 0..self.groups {
                if group_of(core, g, rx.advert.vrid) {
                    self.last_rx.insert((i, g), (from, t, rx.advert.priority));
                }
            }
        }
        true
    }

    // ----- ORDER -----

    pub fn batch(&self, node: usize) -> Batch {
        Batch {
            node,
            committed: 0,
            gained: 0,
            term_due: false,
        }
    }

    // ----- AGREE -----

    pub fn consistent(&mut self, nodes: &[SimNode], i: usize, t: T) {
        let Some(core) = &nodes[i].core else {
            return;
        };
        if nodes[i].dp.stale {
            // The data plane refused the write that gave the group up: it
            // answers until that lease runs out (SPLIT bounds it).
            return;
        }
        for (g, role) in core.roles().enumerate() {
            if role != Role::Master && nodes[i].owns(g, t, self.tick) {
                self.violations.push((
                    t,
                    format!(
                        "AGREE: node {i}'s data plane owns group {g} while its core is {role:?}"
                    ),
                ));
            }
        }
    }

    // ----- at the end: SPLIT and CONVERGE -----

    pub fn finish(&mut self, nodes: &[SimNode], t: T) {
        for g in 0..self.groups {
            let owners: Vec<usize> = (0..nodes.len())
                .filter(|&i| nodes[i].owns(g, t, self.tick))
                .collect();
            let masters: Vec<usize> = (0..nodes.len())
                .filter(|&i| {
                    nodes[i]
                        .core
                        .as_ref()
                        .is_some_and(|c| c.roles().nth(g) == Some(Role::Master))
                })
                .collect();
            if owners.len() != 1 || masters != owners {
                self.violations.push((
                    t,
                    format!("CONVERGE: at the end, group {g} is owned by {owners:?} with masters {masters:?}"),
                ));
            }
        }
        let open: Vec<((usize, usize), T)> = self.open.iter().map(|(k, v)| (*k, *v)).collect();
        for ((g, i), since) in open {
            self.close(g, i, since, t);
        }
        self.split();
    }

    fn split(&mut self) {
        let bound = self.lease_bound.max(self.converge_bound);
        let nodes: Vec<usize> = self.intervals.keys().map(|(_, i)| *i).collect();
        let max_node = nodes.iter().copied().max().unwrap_or(0);
        for g in 0..self.groups {
            for a in 0..=max_node {
                for b in a + 1..=max_node {
                    let (Some(ia), Some(ib)) =
                        (self.intervals.get(&(g, a)), self.intervals.get(&(g, b)))
                    else {
                        continue;
                    };
                    let mut overlaps = Vec::new();
                    for &(s1, e1) in ia {
                        for &(s2, e2) in ib {
                            let (s, e) = (s1.max(s2), e1.min(e2));
                            if s < e {
                                overlaps.push((s, e));
                            }
                        }
                    }
                    for (s, e) in overlaps {
                        let len = e - s;
                        self.dual_total += len;
                        let (longest, at) = self.longest_clean(a, b, s, e);
                        if longest == len && self.clean_before(a, b, s) {
                            self.dual_clean_max = self.dual_clean_max.max(len);
                        } else {
                            self.dual_impaired_max = self.dual_impaired_max.max(len);
                        }
                        if longest > bound + Duration::from_micros(1) {
                            self.violations.push((
                                e,
                                format!(
                                    "SPLIT: nodes {a} and {b} both owned group {g} from {s:?} to {e:?} ({len:?}), {longest:?} of it from {at:?} without an impairment; bound {bound:?}"
                                ),
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Instants (drops) and windows (disturbances) that impair the pair.
    fn impairments(&self, a: usize, b: usize) -> Vec<(T, T)> {
        let drops = self
            .drops
            .get(&pair(a, b))
            .into_iter()
            .flatten()
            .map(|&t| (t, t));
        let nodes = [a, b];
        let windows = nodes
            .iter()
            .filter_map(|n| self.disturbed.get(n))
            .flatten()
            .copied();
        let mut v: Vec<(T, T)> = drops.chain(windows).collect();
        v.sort();
        v
    }

    /// The longest stretch of [s, e) with no impairment of the pair, and
    /// where it starts.
    fn longest_clean(&self, a: usize, b: usize, s: T, e: T) -> (Duration, T) {
        let mut from = s;
        let mut best = (T::ZERO, s);
        for (i0, i1) in self.impairments(a, b) {
            if i1 < from {
                continue;
            }
            if i0 >= e {
                break;
            }
            if i0 > from && i0 - from > best.0 {
                best = (i0 - from, from);
            }
            from = from.max(i1);
        }
        if e > from && e - from > best.0 {
            best = (e - from, from);
        }
        best
    }

    /// Whether nothing impaired the pair in the lease bound before `s` (the
    /// two owners then came from the protocol alone: a preemption).
    fn clean_before(&self, a: usize, b: usize, s: T) -> bool {
        let from = s.saturating_sub(self.lease_bound);
        !self
            .impairments(a, b)
            .iter()
            .any(|&(i0, i1)| i1 >= from && i0 <= s)
    }
}

/// The ORDER checks of one batch of effects.
pub struct Batch {
    node: usize,
    /// Groups with a Commit in this batch, and groups gained in it.
    committed: u64,
    gained: u64,
    /// The data plane went from owning nothing to owning (a new term):
    /// its term must be written before the first GARP.
    term_due: bool,
}

impl Batch {
    pub fn commit(&mut self, g: usize) {
        self.committed |= 1 << g;
    }

    /// A takeover (a Commit) is under way in this batch.
    pub fn took_over(&self) -> bool {
        self.committed != 0
    }

    /// Ownership of `g` given up: never in the batch that took it over.
    pub fn given_up(&mut self, check: &mut Checker, g: usize, t: T) {
        if self.gained & (1 << g) != 0 {
            check.violation(
                t,
                format!(
                    "ORDER: node {} took group {g} over and gave it up again in one batch",
                    self.node
                ),
            );
        }
    }

    pub fn gained(&mut self, check: &mut Checker, g: usize, t: T) {
        self.gained |= 1 << g;
        if self.committed & (1 << g) == 0 {
            check.violation(
                t,
                format!(
                    "ORDER: node {} gained ownership of group {g} without a takeover commit before it (a lapsed lease revived?)",
                    self.node
                ),
            );
        }
    }

    /// The data plane went from owning nothing to owning in this batch;
    /// `heartbeat`: the fast heartbeat is on (a new term is due).
    pub fn new_term_due(&mut self, heartbeat: bool) {
        self.term_due |= heartbeat;
    }

    /// `WriteProbeTerm { term }`: only while the data plane owns (after the
    /// ownership write, so the new term's proof is never shown before its
    /// lease runs), and above the term the map holds.
    pub fn probe_term(&mut self, check: &mut Checker, n: &SimNode, term: u64, tick: T, t: T) {
        self.term_due = false;
        if !n.alive(t, tick) {
            check.violation(
                t,
                format!(
                    "ORDER: node {} wrote term {term} into its reflector while its data plane owns nothing",
                    self.node
                ),
            );
        }
        if term <= n.dp.term.term {
            check.violation(
                t,
                format!(
                    "ORDER: node {} wrote term {term} into its reflector, which holds term {}",
                    self.node, n.dp.term.term
                ),
            );
        }
    }

    /// The batch is over: a new ownership term was written if one was due.
    pub fn end(&mut self, check: &mut Checker, t: T) {
        if self.term_due {
            self.term_due = false;
            check.violation(
                t,
                format!(
                    "ORDER: node {}'s data plane went from owning nothing to owning without a new term in its reflector",
                    self.node
                ),
            );
        }
    }

    pub fn garp(&mut self, check: &mut Checker, n: &SimNode, g: usize, tick: T, t: T) {
        if self.term_due {
            self.term_due = false;
            check.violation(
                t,
                format!(
                    "ORDER: node {} sent GARP for group {g} before writing its new term",
                    self.node
                ),
            );
        }
        if !n.owns(g, t, tick) {
            check.violation(
                t,
                format!(
                    "ORDER: node {} sent GARP for group {g} it does not own",
                    self.node
                ),
            );
        }
    }

    pub fn services(&mut self, check: &mut Checker, n: &SimNode, g: usize, tick: T, t: T) {
        if !n.owns(g, t, tick) {
            check.violation(
                t,
                format!(
                    "ORDER: node {} started the services of group {g} without owning it",
                    self.node
                ),
            );
        }
    }
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

/// Whether `vrid` belongs to group `g` of this core.
fn group_of(core: &ha_core::node::Node, g: usize, vrid: u8) -> bool {
    core.vrids(g).contains(&vrid)
}

/// Whether a cut of `path` other than fault `except` overlaps (from, to).
fn other_cut(sc: &Scenario, path: usize, from: T, to: T, except: Option<usize>) -> bool {
    sc.faults.iter().enumerate().any(|(k, (at, f))| {
        Some(k) != except
            && matches!(f, Fault::PathCut { path: p, dur, .. }
                if *p == path && *at < to && *at + *dur > from)
    })
}
