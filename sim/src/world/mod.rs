//! The simulated cluster: node cores behind a model of the daemon's shell,
//! each with a data plane (the ownership word and its lease, read through a
//! coarse clock) and a monotonic clock of its own (drift, VM pauses), over
//! a network that delays, reorders, duplicates and loses packets and can be
//! partitioned one way or both. One event queue orders everything; nothing
//! depends on the wall clock or on hash order, so a seed replays exactly.
//!
//! The shell model follows `ha-agent`'s loop: on each wake it reports state
//! sync first, then drains every packet waiting in the socket, else runs the
//! timers; effects are carried out in order; an ownership write the data
//! plane refuses ends the batch and is reported back, as is a renewal of a
//! lapsed lease (which the data plane refuses, never reviving it).

mod probe;
mod shell;

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use ha_core::{
    node::{Event, Node},
    vrrp::{
        auth::{self, Sequencer},
        packet::ip_packet,
        wire::{self, MULTICAST},
    },
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use self::probe::DetectKind;
pub use crate::node::{Dataplane, Item, Origin, Persisted, SimNode};
use crate::{
    check::Checker,
    hostile::Capture,
    scenario::{Fault, PATH_NAMES, Scenario, T, TRACKED, ms},
    trace::Trace,
};

/// Genuine signed adverts the attacker keeps: the latest, and a sample of
/// older ones.
const CAPTURES: usize = 64;
/// How often the shell persists the sequencer's floor and the marks.
const PERSIST: Duration = Duration::from_secs(1);
/// The sequencer's floor is written ahead: no sequence goes out above the
/// persisted floor plus this (the shell persists a new floor first), and a
/// restarted agent resumes this far above it (`Sequencer::resume`). With
/// `WRITE_AHEAD` off, the shell persists the floor with the marks once a
/// second and restarts with `Sequencer::new(floor)`: after a wall-clock
/// step back it reuses sequences its peers have seen (docs/simulation.md).
const STALE_FLOOR: Duration = Duration::from_secs(2);
const WRITE_AHEAD: bool = true;

/// The shell writes each new ownership term to disk (before the
/// reflector's map) and a restarted agent's floor is the greater of the
/// map's and the disk's. Without it (the map alone) a term is reused
/// after a reboot, and its proof, revealed when it ended before the
/// reboot, proves the new term over while it runs (docs/simulation.md).
const TERM_ON_DISK: bool = true;

/// Packets a node's socket holds (about a 1 MB receive buffer).
const INBOX: usize = 2000;

/// A queued event.
#[derive(Debug, Clone)]
enum Ev {
    /// The node's loop wakes (stale wakes are ignored).
    Wake(usize),
    /// Something arrives at a node.
    Arrive {
        to: usize,
        item: Item,
    },
    /// A fault of the timeline begins.
    FaultStart(usize),
    /// A node's machine boots, or its agent starts.
    Boot(usize),
    AgentStart(usize),
    /// The end of a fault on a node.
    Unfreeze(usize),
    Unpause(usize),
    LinkUp(usize),
    /// State sync may complete on a node (`generation` guards stale ones).
    SyncReady {
        node: usize,
        generation: u64,
    },
    /// The shell persists the sequencer's floor and the replay marks.
    Persist(usize),
    /// A fast-heartbeat probe from `from` reaches node `to` over `path`:
    /// its reflector (XDP) answers, whatever its agent does.
    ProbeArrive {
        to: usize,
        from: usize,
        path: usize,
        frame: Box<[u8; ha_common::heartbeat::WIRE_LEN]>,
    },
    /// The attacker's frame of the fast heartbeat reaches node `to`.
    HostileProbe {
        to: usize,
        path: usize,
    },
    /// A path cut (the fault of that index) ends.
    PathHeal(usize),
    /// A healed path must be up again on the nodes hearing a master.
    PathUpCheck {
        path: usize,
        healed: T,
    },
    /// The run ends.
    End,
}

/// Outcome figures of a run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub events: u64,
    /// Takeovers because a master went silent or left (MasterDown,
    /// MasterLeft).
    pub failovers: u64,
    /// Hostile packets handled; adverts sent, and those the network dropped.
    pub hostile: u64,
    pub packets: u64,
    pub drops: u64,
    /// Replays of genuine adverts handled (hostile), and those not sent
    /// (the target had not been handed a newer one: not a replay to it).
    pub replays: u64,
    pub replays_skipped: u64,
    /// Path cuts, wall-clock steps; path reports checked.
    pub path_cuts: u64,
    pub wall_steps: u64,
    pub path_checks: u64,
    /// The fast heartbeat: probes sent and dropped (probe or reply),
    /// replies handed to a core, hostile frames (of them forged "alive"
    /// and replayed "term ended" with a current tag).
    pub probes: u64,
    pub probe_drops: u64,
    pub replies: u64,
    pub probe_hostile: u64,
    pub probe_forged: u64,
    pub probe_replayed: u64,
    /// Verdicts (takeovers) by PeerSilent and PeerLapsed; Silent ones made
    /// while the peer's data plane owned a group (false).
    pub verdicts_silent: u64,
    pub verdicts_lapsed: u64,
    pub false_silent: u64,
    /// PeerLapsed verdicts on a reply made before the peer began a newer
    /// term (the reply on its way meanwhile).
    pub lapsed_races: u64,
    /// PeerLapsed verdicts on an old proof replayed (with a current tag)
    /// while the peer owned under a newer term its prober had not seen.
    pub lapsed_replays: u64,
}

/// The running simulation.
pub struct World<'a> {
    pub sc: &'a Scenario,
    pub now: T,
    queue: BTreeMap<(T, u64), Ev>,
    seq: u64,
    pub nodes: Vec<SimNode>,
    net_rng: ChaCha8Rng,
    cost_rng: ChaCha8Rng,
    hostile_rng: ChaCha8Rng,
    /// Active partitions: (from, to, until).
    partitions: Vec<(usize, usize, T)>,
    /// Active extra loss: (a, b, p, path, until).
    losses: Vec<(usize, usize, f64, Option<usize>, T)>,
    /// Active path cuts: (path, carrier, until).
    path_cuts: Vec<(usize, bool, T)>,
    /// When each node's last carrier change is noticed (they keep order).
    carrier_notice: Vec<T>,
    /// What the attacker captured: the latest, and a sample of older ones.
    captures: VecDeque<Capture>,
    old_captures: Vec<Capture>,
    /// The fast heartbeat: one stream for the sessions and the attacker's
    /// frames; genuine replies seen on the wire (the latest, and every
    /// "term ended" one by node and term); each node's latest probe (its
    /// session number, the frame).
    probe_rng: ChaCha8Rng,
    reply_captures: VecDeque<probe::ReplyCapture>,
    ended_captures: BTreeMap<(usize, u64), probe::ReplyCapture>,
    last_probe: Vec<Option<(u64, [u8; ha_common::heartbeat::WIRE_LEN])>>,
    /// The fast-heartbeat frame being handled (its sender, its term), and
    /// whether the last batch held effects beyond probes and status.
    probe_ctx: Option<(crate::node::ProbeFrom, u64)>,
    /// Takeovers the fast heartbeat must make in time (DETECT).
    detects: Vec<probe::Detect>,
    election_effects: bool,
    pub check: Checker,
    pub stats: Stats,
    trace: Option<&'a mut Trace>,
}

impl<'a> World<'a> {
    pub fn new(sc: &'a Scenario, trace: Option<&'a mut Trace>) -> Self {
        let nodes = sc
            .nodes
            .iter()
            .map(|n| SimNode {
                addr: n.addr,
                core: None,
                origin: 0,
                up: false,
                boot: T::ZERO,
                ppm: n.drift_ppm,
                dp: Dataplane::fresh(),
                busy_until: T::ZERO,
                frozen_until: T::ZERO,
                paused_until: T::ZERO,
                inbox: VecDeque::new(),
                wake_at: None,
                in_sync: false,
                told_sync: None,
                sync_generation: 0,
                maintenance: false,
                link_up: true,
                failure: None,
                reloads: 0,
                wall0: n.wall0,
                sequencer: None,
                persisted: Persisted::default(),
                seen: Default::default(),
                carrier: vec![true; sc.paths()],
                last_transition: T::ZERO,
                session_no: 0,
                disk_term: 0,
                term_began: BTreeMap::new(),
                hb: Default::default(),
            })
            .collect();
        let groups = sc.nodes[0].settings.groups.len();
        let mut w = World {
            sc,
            now: T::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            nodes,
            net_rng: ChaCha8Rng::seed_from_u64(sc.seed ^ 0x6e65_7477_6f72_6b00),
            cost_rng: ChaCha8Rng::seed_from_u64(sc.seed ^ 0x636f_7374_0000_0000),
            hostile_rng: ChaCha8Rng::seed_from_u64(sc.seed ^ 0x686f_7374_696c_6500),
            partitions: Vec::new(),
            losses: Vec::new(),
            path_cuts: Vec::new(),
            carrier_notice: vec![T::ZERO; sc.nodes.len()],
            captures: VecDeque::new(),
            old_captures: Vec::new(),
            probe_rng: ChaCha8Rng::seed_from_u64(sc.seed ^ 0x7072_6f62_6500_0000),
            reply_captures: VecDeque::new(),
            ended_captures: BTreeMap::new(),
            last_probe: vec![None; sc.nodes.len()],
            probe_ctx: None,
            detects: Vec::new(),
            election_effects: false,
            check: Checker::new(sc, groups),
            stats: Stats::default(),
            trace,
        };
        for i in 0..sc.nodes.len() {
            let at = Duration::from_micros(w.cost_rng.gen_range(0..50_000));
            w.at(at, Ev::Boot(i));
            let at = Duration::from_micros(w.cost_rng.gen_range(0..1_000_000));
            w.at(at, Ev::Persist(i));
        }
        for (i, (t, _)) in sc.faults.iter().enumerate() {
            w.at(*t, Ev::FaultStart(i));
        }
        w.at(sc.end(), Ev::End);
        w
    }

    fn at(&mut self, t: T, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            t.push(self.now, line());
        }
    }

    /// Runs to the end; the checker holds what was found.
    pub fn run(&mut self) {
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            self.now = t;
            self.check.settle(&self.nodes, t);
            self.detect_settle();
            self.stats.events += 1;
            match ev {
                Ev::End => {
                    self.check.finish(&self.nodes, t);
                    return;
                }
                Ev::Wake(i) => self.wake(i),
                Ev::Arrive { to, item } => self.arrive(to, item),
                Ev::FaultStart(k) => self.fault(k),
                Ev::Boot(i) => self.boot(i),
                Ev::AgentStart(i) => self.agent_start(i),
                Ev::Unfreeze(i) => self.schedule_wake(i, t),
                Ev::Unpause(i) => {
                    self.check.ownership_changed(&self.nodes, i, t);
                    self.schedule_wake(i, t);
                }
                Ev::LinkUp(i) => {
                    self.nodes[i].link_up = true;
                    let delay = ms(self.cost_rng.gen_range(0..50));
                    self.at(
                        t + delay,
                        Ev::Arrive {
                            to: i,
                            item: Item::Link(None, true),
                        },
                    );
                }
                Ev::SyncReady { node, generation } => self.sync_ready(node, generation),
                Ev::Persist(i) => self.persist(i),
                Ev::ProbeArrive {
                    to,
                    from,
                    path,
                    frame,
                } => self.probe_arrive(to, from, path, &frame),
                Ev::HostileProbe { to, path } => self.hostile_probe(to, path),
                Ev::PathHeal(k) => self.path_heal(k),
                Ev::PathUpCheck { path, healed } => self.path_up_check(path, healed),
            }
            if self.check.failed() {
                return;
            }
        }
    }

    fn schedule_wake(&mut self, i: usize, t: T) {
        let n = &self.nodes[i];
        let t = t.max(n.busy_until).max(n.frozen_until).max(n.paused_until);
        if n.wake_at.is_none_or(|w| t < w) {
            self.nodes[i].wake_at = Some(t);
            self.at(t, Ev::Wake(i));
        }
    }

    fn cost(&mut self) -> Duration {
        let (lo, hi) = self.sc.cost;
        Duration::from_nanos(
            self.cost_rng
                .gen_range(lo.as_nanos() as u64..=hi.as_nanos() as u64),
        )
    }

    // ----- faults -----

    fn fault(&mut self, k: usize) {
        let t = self.now;
        let fault = self.sc.faults[k].1.clone();
        self.log(|| format!("FAULT {fault:?}"));
        match fault {
            Fault::Partition {
                from,
                to,
                one_way,
                dur,
            } => {
                self.partitions.push((from, to, t + dur));
                if !one_way {
                    self.partitions.push((to, from, t + dur));
                }
                // A cut that ends lets the election settle; nothing to do.
            }
            Fault::Loss { a, b, p, path, dur } => self.losses.push((a, b, p, path, t + dur)),
            Fault::PathCut { path, carrier, dur } => {
                self.stats.path_cuts += 1;
                self.path_cuts.push((path, carrier, t + dur));
                if carrier {
                    for i in 0..self.nodes.len() {
                        self.set_carrier(i, path, false);
                    }
                }
                self.at(t + dur, Ev::PathHeal(k));
            }
            Fault::WallStep { node, by_ms } => {
                self.stats.wall_steps += 1;
                self.nodes[node].wall0 += i128::from(by_ms) * 1_000_000;
            }
            Fault::Crash { node, dur } => {
                if self.nodes[node].up {
                    self.check.death(&self.nodes, node, t);
                    self.detect_death(node, DetectKind::Crash);
                    let n = &mut self.nodes[node];
                    n.up = false;
                    n.core = None;
                    n.inbox.clear();
                    n.dp = Dataplane::fresh();
                    self.check.ownership_changed(&self.nodes, node, t);
                    self.check.disturb(node, t, t + dur + ms(100));
                    self.at(t + dur, Ev::Boot(node));
                }
            }
            Fault::AgentCrash { node, dur } => {
                if self.nodes[node].core.is_some() && t >= self.nodes[node].paused_until {
                    self.check.death(&self.nodes, node, t);
                    self.detect_death(node, DetectKind::Lapse);
                    let n = &mut self.nodes[node];
                    n.core = None;
                    n.inbox.clear();
                    self.check.disturb(node, t, t + dur);
                    self.at(t + dur, Ev::AgentStart(node));
                }
            }
            Fault::Stop { node, dur } => {
                if self.nodes[node].core.is_some()
                    && t >= self.nodes[node]
                        .frozen_until
                        .max(self.nodes[node].paused_until)
                {
                    self.check.death(&self.nodes, node, t);
                    self.handle(node, t, Event::Stop);
                    let n = &mut self.nodes[node];
                    n.core = None;
                    n.inbox.clear();
                    self.check.disturb(node, t, t + dur);
                    self.at(t + dur, Ev::AgentStart(node));
                }
            }
            Fault::Stall { node, dur } => {
                if self.nodes[node].core.is_some()
                    && t >= self.nodes[node]
                        .frozen_until
                        .max(self.nodes[node].paused_until)
                {
                    self.detect_death(node, DetectKind::Lapse);
                }
                let n = &mut self.nodes[node];
                n.frozen_until = n.frozen_until.max(t + dur);
                self.check.disturb(node, t, t + dur);
                self.check.stall(node, t, t + dur);
                self.at(t + dur, Ev::Unfreeze(node));
            }
            Fault::Pause { node, dur } => {
                let n = &mut self.nodes[node];
                n.paused_until = n.paused_until.max(t + dur);
                n.frozen_until = n.frozen_until.max(t + dur);
                self.check.ownership_changed(&self.nodes, node, t);
                self.check.disturb(node, t, t + dur);
                self.at(t + dur, Ev::Unpause(node));
            }
            Fault::Hostile { node, count, span } => {
                self.check.disturb(node, t, t + span + ms(5));
                let captures: Vec<Capture> = self
                    .old_captures
                    .iter()
                    .chain(&self.captures)
                    .cloned()
                    .collect();
                for _ in 0..count {
                    let at = t + Duration::from_nanos(
                        self.hostile_rng.gen_range(0..=span.as_nanos() as u64),
                    );
                    let path = self.hostile_rng.gen_range(0..self.sc.paths());
                    if self.sc.heartbeat().is_some() && self.hostile_rng.gen_bool(0.4) {
                        self.at(at, Ev::HostileProbe { to: node, path });
                        continue;
                    }
                    let (bytes, origin) = crate::hostile::packet(
                        &mut self.hostile_rng,
                        self.sc,
                        node,
                        path,
                        &captures,
                    );
                    self.at(
                        at,
                        Ev::Arrive {
                            to: node,
                            item: Item::Packet {
                                bytes,
                                path,
                                origin,
                                signed: None,
                            },
                        },
                    );
                }
            }
            Fault::Command { node, command } => {
                self.check.disturb(node, t, t);
                self.at(
                    t,
                    Ev::Arrive {
                        to: node,
                        item: Item::Command(command),
                    },
                );
            }
            Fault::LinkDown { node, dur } => {
                self.nodes[node].link_up = false;
                self.check.disturb(node, t, t + dur + ms(50));
                let delay = ms(self.cost_rng.gen_range(0..50));
                self.at(
                    t + delay,
                    Ev::Arrive {
                        to: node,
                        item: Item::Link(None, false),
                    },
                );
                self.at(t + dur, Ev::LinkUp(node));
            }
            Fault::WriteFail { node, count } => {
                self.check.disturb(node, t, t);
                self.nodes[node].dp.fails = count;
            }
            Fault::Reload { node } => {
                self.check.disturb(node, t, t + ms(5));
                self.at(
                    t,
                    Ev::Arrive {
                        to: node,
                        item: Item::Reload,
                    },
                );
            }
        }
    }

    fn boot(&mut self, i: usize) {
        let t = self.now;
        let n = &mut self.nodes[i];
        n.up = true;
        n.boot = t;
        n.busy_until = t;
        n.frozen_until = t;
        n.paused_until = t;
        n.dp = Dataplane::fresh();
        // The agent starts after the system (and loads the data plane).
        let delay = ms(self.cost_rng.gen_range(1..=100));
        self.at(t + delay, Ev::AgentStart(i));
    }

    fn agent_start(&mut self, i: usize) {
        let t = self.now;
        if !self.nodes[i].up || self.nodes[i].core.is_some() {
            return;
        }
        if t < self.nodes[i].paused_until {
            // Nothing runs on a paused machine.
            self.at(self.nodes[i].paused_until, Ev::AgentStart(i));
            return;
        }
        let mut settings = self.sc.nodes[i].settings.clone();
        // A new probe session at every start (random, as the agent draws it).
        if let Some(h) = &mut settings.heartbeat {
            h.session = self.probe_rng.r#gen();
        }
        let lease = settings.lease;
        let mut core = match Node::new(settings) {
            Ok(c) => c,
            Err(e) => {
                self.check
                    .violation(t, format!("node {i}: settings refused: {e}"));
                return;
            }
        };
        // What the shell persisted (up to a second stale): the replay marks
        // into the core, the floor into the sequencer.
        let n = &mut self.nodes[i];
        core.restore_auth_marks(&n.persisted.marks);
        // The term read back from the reflector's pinned map, and from
        // disk (the map does not survive a reboot).
        core.set_term_floor(if TERM_ON_DISK {
            n.dp.term.term.max(n.disk_term)
        } else {
            n.dp.term.term
        });
        n.session_no += 1;
        n.hb = Default::default();
        n.seen = n.persisted.seen.clone();
        n.sequencer = Some(if WRITE_AHEAD {
            Sequencer::resume(n.persisted.floor, STALE_FLOOR)
        } else {
            Sequencer::new(n.persisted.floor)
        });
        // The lease read back, as the agent does: renew it if it still runs.
        let mono = n.mono(t);
        let resumed = match n.dp.expires {
            Some(e) if e <= mono => 0,
            _ => {
                n.dp.expires = Some(mono + lease.as_nanos() as u64);
                n.dp.groups
            }
        };
        n.core = Some(core);
        n.origin = mono;
        n.busy_until = t;
        n.inbox.clear();
        n.told_sync = None;
        n.failure = None;
        self.check.disturb(i, t, t + ms(1));
        // The tracked link, and each heartbeat path's carrier when there
        // are several (what `Node::tracked_links` asks for).
        let mut links = vec![(TRACKED.to_owned(), self.nodes[i].link_up)];
        if self.sc.paths() > 1 {
            links.extend(
                (0..self.sc.paths()).map(|p| (self.path_name(p), self.nodes[i].carrier[p])),
            );
        }
        let maintenance = self.nodes[i].maintenance;
        let floor = self.nodes[i].persisted.floor;
        self.log(|| format!("node {i}: agent starts (resumed {resumed:#x}, floor {floor:#x})"));
        self.handle(
            i,
            t,
            Event::Start {
                resumed,
                maintenance,
                links: &links,
            },
        );
        // State sync starts over on both sides (a new epoch).
        if self.sc.nodes[i].settings.state_sync {
            for j in 0..self.nodes.len() {
                self.sync_restart(j);
            }
        }
        self.schedule_wake(i, t);
    }

    // ----- state sync model -----

    fn sync_restart(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.in_sync = false;
        n.sync_generation += 1;
        let generation = n.sync_generation;
        let after = ms(self.cost_rng.gen_range(5..=300));
        self.at(
            self.now + after,
            Ev::SyncReady {
                node: i,
                generation,
            },
        );
    }

    fn sync_ready(&mut self, i: usize, generation: u64) {
        if self.nodes[i].sync_generation != generation || self.nodes[i].core.is_none() {
            return;
        }
        let connected = (0..self.nodes.len())
            .filter(|j| *j != i)
            .all(|j| self.nodes[j].core.is_some() && !self.cut(i, j) && !self.cut(j, i));
        if connected {
            self.nodes[i].in_sync = true;
            self.log(|| format!("node {i}: state sync complete"));
            self.schedule_wake(i, self.now);
        } else {
            self.at(
                self.now + ms(50),
                Ev::SyncReady {
                    node: i,
                    generation,
                },
            );
        }
    }

    // ----- network -----

    fn cut(&self, from: usize, to: usize) -> bool {
        self.partitions
            .iter()
            .any(|&(f, t, until)| f == from && t == to && self.now < until)
    }

    /// Whether path `p` is cut (a path fault: silently or without carrier).
    fn path_cut(&self, p: usize) -> bool {
        self.path_cuts
            .iter()
            .any(|&(q, _, until)| q == p && self.now < until)
    }

    /// The interface of path `p` as the core knows it.
    fn path_name(&self, p: usize) -> String {
        if self.sc.nodes[0].settings.paths.is_empty() {
            "ha".into()
        } else {
            PATH_NAMES[p].into()
        }
    }

    fn set_carrier(&mut self, i: usize, p: usize, up: bool) {
        self.nodes[i].carrier[p] = up;
        // Noticed within 10 ms, in order.
        let delay = ms(self.cost_rng.gen_range(0..10));
        let at = (self.now + delay).max(self.carrier_notice[i]);
        self.carrier_notice[i] = at;
        self.at(
            at,
            Ev::Arrive {
                to: i,
                item: Item::Link(Some(p), up),
            },
        );
    }

    /// Sends an advert as the daemon does: on every path, from that path's
    /// address, each copy signed with its own sequence when the mode signs.
    fn send(&mut self, from: usize, advert: &wire::Repr) {
        let others: Vec<usize> = (0..self.nodes.len()).filter(|j| *j != from).collect();
        let key = self.sc.auth.signing_key().cloned();
        for p in 0..self.sc.paths() {
            let src = self.sc.nodes[from].addrs[p];
            let mut multicast: Option<(Vec<u8>, Option<u64>)> = None;
            for &to in &others {
                let dst = if self.sc.unicast {
                    self.sc.nodes[to].addrs[p]
                } else {
                    MULTICAST
                };
                let (bytes, seq) = match &multicast {
                    Some(m) => m.clone(),
                    None => {
                        let mut pdu = advert.to_bytes(src, dst);
                        let mut seq = None;
                        if let Some(key) = &key {
                            let wall = self.nodes[from].wall(self.now);
                            let anti_replay = self.sc.auth.anti_replay;
                            let n = &mut self.nodes[from];
                            let term = n.core.as_ref().map_or(0, |c| c.term());
                            let s = match &mut n.sequencer {
                                Some(sq) => sq.next(wall, anti_replay, term),
                                None => 0,
                            };
                            // Written ahead: a new floor before a sequence
                            // beyond the reach of the persisted one.
                            if WRITE_AHEAD
                                && s.wrapping_sub(n.persisted.floor) > auth::clock_seq(STALE_FLOOR)
                            {
                                n.persisted.floor = s;
                            }
                            let trailer = auth::seal(key, s, src, &pdu);
                            pdu.extend_from_slice(&trailer);
                            seq = Some(s);
                        }
                        let bytes = ip_packet(src, dst, &pdu);
                        if let Some(s) = seq {
                            self.capture(Capture {
                                bytes: bytes.clone(),
                                vrid: advert.vrid,
                                src,
                                seq: s,
                            });
                        }
                        if !self.sc.unicast {
                            multicast = Some((bytes.clone(), seq));
                        }
                        (bytes, seq)
                    }
                };
                let term = self.nodes[from].core.as_ref().map_or(0, |c| c.term());
                self.transmit(from, to, p, bytes, seq.map(|s| (advert.vrid, src, s, term)));
            }
        }
    }

    fn capture(&mut self, c: Capture) {
        if self.captures.len() >= CAPTURES
            && let Some(old) = self.captures.pop_front()
            && self.net_rng.gen_bool(0.02)
        {
            if self.old_captures.len() >= CAPTURES {
                let k = self.net_rng.gen_range(0..CAPTURES);
                self.old_captures[k] = old;
            } else {
                self.old_captures.push(old);
            }
        }
        self.captures.push_back(c);
    }

    /// One copy of a packet from `from` to `to` over path `p`.
    fn transmit(
        &mut self,
        from: usize,
        to: usize,
        p: usize,
        bytes: Vec<u8>,
        signed: Option<(u8, std::net::Ipv4Addr, u64, u64)>,
    ) {
        self.stats.packets += 1;
        let copies = self.link(from, to, p, false);
        if copies.is_empty() {
            self.stats.drops += 1;
        }
        for delay in copies {
            self.at(
                self.now + delay,
                Ev::Arrive {
                    to,
                    item: Item::Packet {
                        bytes: bytes.clone(),
                        path: p,
                        origin: Origin::Node(from),
                        signed,
                    },
                },
            );
        }
    }

    /// What becomes of a frame from `from` to `to` over path `p`: the delay
    /// of each copy delivered (none: lost; two: duplicated). Lost adverts
    /// are impairments (unless a single path's cut); lost or spiked frames
    /// of the fast heartbeat are recorded apart.
    fn link(&mut self, from: usize, to: usize, p: usize, probe: bool) -> Vec<Duration> {
        let extra = self
            .losses
            .iter()
            .filter(|&&(a, b, _, path, until)| {
                self.now < until
                    && path.is_none_or(|q| q == p)
                    && ((a, b) == (from, to) || (a, b) == (to, from))
            })
            .map(|l| l.2)
            .fold(0.0, f64::max);
        let net = &self.sc.nets[p];
        // The quiet tail is loss-free: convergence is checked at its end.
        let loss = if self.now < self.sc.faults_until {
            net.loss.max(extra)
        } else {
            0.0
        };
        let path_cut = self.path_cut(p);
        let lost = path_cut || self.cut(from, to) || self.net_rng.gen_bool(loss);
        if lost {
            // A path fault alone is no impairment while another path is
            // not cut.
            let excused =
                path_cut && !self.cut(from, to) && (0..self.sc.paths()).any(|q| !self.path_cut(q));
            if probe {
                self.stats.probe_drops += 1;
                self.check.probe_trouble(from, to, p, self.now);
            } else {
                self.check.dropped(from, to, p, self.now, excused);
            }
            return Vec::new();
        }
        let copies = if self.net_rng.gen_bool(net.dup) { 2 } else { 1 };
        (0..copies)
            .map(|_| {
                let (d, spiked) = self.delay(p);
                if spiked && probe {
                    self.check.probe_trouble(from, to, p, self.now);
                }
                d
            })
            .collect()
    }

    /// A one-way delay over path `p`, and whether it has a spike.
    fn delay(&mut self, p: usize) -> (Duration, bool) {
        let net = &self.sc.nets[p];
        let mut d = net.delay
            + Duration::from_nanos(self.net_rng.gen_range(0..=net.jitter.as_nanos() as u64));
        let spiked = self.net_rng.gen_bool(net.spike);
        if spiked {
            d += Duration::from_nanos(self.net_rng.gen_range(0..=net.spike_max.as_nanos() as u64));
        }
        (d, spiked)
    }

    // ----- persistence, paths -----

    /// The shell persists the sequencer's floor and the replay marks (about
    /// once a second: a crash loses up to that much).
    fn persist(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if let (Some(core), Some(sq)) = (&n.core, &n.sequencer) {
            n.persisted = Persisted {
                floor: if WRITE_AHEAD {
                    n.persisted.floor
                } else {
                    sq.last()
                },
                marks: core.auth_marks(),
                seen: n.seen.clone(),
            };
            let floor = n.persisted.floor;
            self.log(|| format!("node {i}: persists floor {floor:#x}"));
        }
        let next = PERSIST + Duration::from_millis(self.cost_rng.gen_range(0..50));
        self.at(self.now + next, Ev::Persist(i));
    }

    /// A path cut ends: the carrier comes back; the path reports are
    /// checked (down during the cut, up again soon after).
    fn path_heal(&mut self, k: usize) {
        let Fault::PathCut { path, carrier, .. } = self.sc.faults[k].1.clone() else {
            return;
        };
        let t = self.now;
        self.stats.path_checks += self.check.path_down(&self.nodes, self.sc, k, t);
        if carrier {
            let still = self
                .path_cuts
                .iter()
                .any(|&(q, c, until)| q == path && c && t < until);
            if !still {
                for i in 0..self.nodes.len() {
                    self.set_carrier(i, path, true);
                }
            }
        }
        if !self.path_cut(path) {
            let after = self.check.path_up_after();
            self.at(t + after, Ev::PathUpCheck { path, healed: t });
        }
    }

    fn path_up_check(&mut self, path: usize, healed: T) {
        let n = self
            .check
            .path_up(&self.nodes, self.sc, path, healed, self.now);
        self.stats.path_checks += n;
    }

    fn arrive(&mut self, to: usize, item: Item) {
        let t = self.now;
        let n = &self.nodes[to];
        let from = match &item {
            Item::Packet {
                origin: Origin::Node(f),
                path,
                ..
            }
            | Item::Probe {
                from: crate::node::ProbeFrom::Node { node: f, .. },
                path,
                ..
            } => Some((*f, *path)),
            _ => None,
        };
        // A paused machine loses packets; a link change or a command waits
        // for it (the kernel keeps the link state, a control socket its
        // client). While the agent is down, it reads the links at start.
        let packet = matches!(item, Item::Packet { .. } | Item::Probe { .. });
        if !n.up || n.core.is_none() || (packet && (t < n.paused_until || n.inbox.len() >= INBOX)) {
            if let Some((f, p)) = from {
                if matches!(item, Item::Probe { .. }) {
                    self.stats.probe_drops += 1;
                    self.check.probe_trouble(f, to, p, t);
                } else {
                    self.stats.drops += 1;
                    self.check.dropped(f, to, p, t, false);
                }
            }
            return;
        }
        self.nodes[to].inbox.push_back(item);
        self.schedule_wake(to, t);
    }
}
