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

mod shell;

use std::{
    collections::{BTreeMap, VecDeque},
    net::Ipv4Addr,
    time::Duration,
};

use ha_core::{
    node::{Event, Node},
    vrrp::{
        packet::ip_packet,
        wire::{self, MULTICAST},
    },
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use crate::node::{Dataplane, Item, SimNode};
use crate::{
    check::Checker,
    scenario::{Fault, Scenario, T, TRACKED, ms},
    trace::Trace,
};

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
    /// Active extra loss: (a, b, p, until).
    losses: Vec<(usize, usize, f64, T)>,
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
            check: Checker::new(sc, groups),
            stats: Stats::default(),
            trace,
        };
        for i in 0..sc.nodes.len() {
            let at = Duration::from_micros(w.cost_rng.gen_range(0..50_000));
            w.at(at, Ev::Boot(i));
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
                            item: Item::Link(true),
                        },
                    );
                }
                Ev::SyncReady { node, generation } => self.sync_ready(node, generation),
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
            Fault::Loss { a, b, p, dur } => self.losses.push((a, b, p, t + dur)),
            Fault::Crash { node, dur } => {
                if self.nodes[node].up {
                    self.check.death(&self.nodes, node, t);
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
                let n = &mut self.nodes[node];
                n.frozen_until = n.frozen_until.max(t + dur);
                self.check.disturb(node, t, t + dur);
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
                for _ in 0..count {
                    let at = t + Duration::from_nanos(
                        self.hostile_rng.gen_range(0..=span.as_nanos() as u64),
                    );
                    let bytes = crate::hostile::packet(&mut self.hostile_rng, self.sc, node);
                    self.at(
                        at,
                        Ev::Arrive {
                            to: node,
                            item: Item::Packet { bytes, from: None },
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
                        item: Item::Link(false),
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
        let settings = self.sc.nodes[i].settings.clone();
        let lease = settings.lease;
        let core = match Node::new(settings) {
            Ok(c) => c,
            Err(e) => {
                self.check
                    .violation(t, format!("node {i}: settings refused: {e}"));
                return;
            }
        };
        let n = &mut self.nodes[i];
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
        let links = [(TRACKED.to_owned(), self.nodes[i].link_up)];
        let maintenance = self.nodes[i].maintenance;
        self.log(|| format!("node {i}: agent starts (resumed {resumed:#x})"));
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

    fn send(&mut self, from: usize, advert: &wire::Repr) {
        let src = self.nodes[from].addr;
        let dsts: Vec<(usize, Ipv4Addr)> = if self.sc.unicast {
            self.sc.nodes[from]
                .settings
                .peers
                .iter()
                .filter_map(|p| {
                    self.nodes
                        .iter()
                        .position(|n| n.addr == *p)
                        .map(|j| (j, *p))
                })
                .collect()
        } else {
            (0..self.nodes.len())
                .filter(|j| *j != from)
                .map(|j| (j, MULTICAST))
                .collect()
        };
        for (to, dst) in dsts {
            let bytes = ip_packet(src, dst, &advert.to_bytes(src, dst));
            self.stats.packets += 1;
            let extra = self
                .losses
                .iter()
                .filter(|&&(a, b, _, until)| {
                    self.now < until && ((a, b) == (from, to) || (a, b) == (to, from))
                })
                .map(|l| l.2)
                .fold(0.0, f64::max);
            // The quiet tail is loss-free: convergence is checked at its end.
            let loss = if self.now < self.sc.faults_until {
                self.sc.net.loss.max(extra)
            } else {
                0.0
            };
            if self.cut(from, to) || self.net_rng.gen_bool(loss) {
                self.stats.drops += 1;
                self.check.dropped(from, to, self.now);
                continue;
            }
            let copies = if self.net_rng.gen_bool(self.sc.net.dup) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = self.delay();
                self.at(
                    self.now + delay,
                    Ev::Arrive {
                        to,
                        item: Item::Packet {
                            bytes: bytes.clone(),
                            from: Some(from),
                        },
                    },
                );
            }
        }
    }

    fn delay(&mut self) -> Duration {
        let net = &self.sc.net;
        let mut d = net.delay
            + Duration::from_nanos(self.net_rng.gen_range(0..=net.jitter.as_nanos() as u64));
        if self.net_rng.gen_bool(net.spike) {
            d += Duration::from_nanos(self.net_rng.gen_range(0..=net.spike_max.as_nanos() as u64));
        }
        d
    }

    fn arrive(&mut self, to: usize, item: Item) {
        let t = self.now;
        let n = &self.nodes[to];
        let from = match &item {
            Item::Packet { from, .. } => *from,
            _ => None,
        };
        if !n.up || t < n.paused_until || n.core.is_none() || n.inbox.len() >= INBOX {
            if let Some(f) = from {
                self.stats.drops += 1;
                self.check.dropped(f, to, t);
            }
            return;
        }
        self.nodes[to].inbox.push_back(item);
        self.schedule_wake(to, t);
    }
}
