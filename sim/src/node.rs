//! A simulated node: its core (when the agent runs), its data plane (the
//! ownership word and its lease, read through a coarse clock as XDP reads
//! it) and its monotonic clock (drift, VM pauses), with what the shell model
//! keeps about it.

use std::{
    collections::{BTreeMap, VecDeque},
    net::Ipv4Addr,
    time::Duration,
};

use ha_common::{data::Ownership, heartbeat::ProbeTerm};
use ha_core::{
    node::{Command, Node},
    vrrp::auth::Sequencer,
};

use crate::scenario::T;

/// A node's data plane: the ownership word.
#[derive(Debug, Clone, Copy)]
pub struct Dataplane {
    pub groups: u64,
    /// When the lease ends, on the node's monotonic clock (ns); `None`:
    /// never (the agent's "no lease").
    pub expires: Option<u64>,
    /// Map writes (ownership, renewals) still to fail.
    pub fails: u8,
    /// The last write failed: the word may name groups the core gave up
    /// (their lease then runs out by itself).
    pub stale: bool,
    /// The reflector's term map (the fast heartbeat): pinned, it survives
    /// an agent restart, not a reboot.
    pub term: ProbeTerm,
}

impl Dataplane {
    /// A data plane after boot: nothing owned, no lease.
    pub fn fresh() -> Self {
        Dataplane {
            groups: 0,
            expires: Some(0),
            fails: 0,
            stale: false,
            term: ProbeTerm::default(),
        }
    }

    /// Whether this map write fails (one fewer to fail).
    pub fn fail(&mut self) -> bool {
        let fails = self.fails > 0;
        self.fails = self.fails.saturating_sub(1);
        fails
    }
}

/// Highest sequence per (VRID, source).
pub type Marks = BTreeMap<(u8, Ipv4Addr), u64>;

/// What the shell persists about advert authentication (about once a
/// second): the sequencer's floor and the verifier's marks; with the
/// simulation's own record of what the node had been handed (`seen`).
#[derive(Debug, Clone, Default)]
pub struct Persisted {
    pub floor: u64,
    pub marks: Vec<(u8, Ipv4Addr, u64)>,
    pub seen: Marks,
}

/// One simulated node.
pub struct SimNode {
    pub addr: Ipv4Addr,
    /// The agent's core; `None` while the agent is not running.
    pub core: Option<Node>,
    /// The node's monotonic clock at the agent's start (the core's origin).
    pub(crate) origin: u64,
    /// The machine is up; when it booted (its clock's origin).
    pub up: bool,
    pub(crate) boot: T,
    pub(crate) ppm: i64,
    pub dp: Dataplane,
    /// The loop is busy until, frozen until (stall), the machine paused until.
    pub(crate) busy_until: T,
    pub(crate) frozen_until: T,
    pub(crate) paused_until: T,
    pub(crate) inbox: VecDeque<Item>,
    pub(crate) wake_at: Option<T>,
    /// State sync: the truth, what the core was told, a guard for retries.
    pub(crate) in_sync: bool,
    pub(crate) told_sync: Option<bool>,
    pub(crate) sync_generation: u64,
    /// Persisted across restarts.
    pub(crate) maintenance: bool,
    pub(crate) link_up: bool,
    /// A data-plane failure met while answering one: told at the next wake.
    pub(crate) failure: Option<ha_core::node::Event<'static>>,
    /// Reloads so far (odd: an extra VIP in each group's first instance).
    pub(crate) reloads: u32,
    /// The wall clock at simulated time 0 plus its steps (ns since the
    /// epoch); it runs at the monotonic clock's rate.
    pub(crate) wall0: i128,
    /// The shell's advert sequencer (while the agent runs).
    pub(crate) sequencer: Option<Sequencer>,
    /// What the shell last persisted.
    pub(crate) persisted: Persisted,
    /// The highest sequence of a genuine signed advert handed to the core,
    /// per (VRID, source): what a replay must not be newer than.
    pub(crate) seen: Marks,
    /// Carrier of each path's interface here.
    pub(crate) carrier: Vec<bool>,
    /// When its core last changed role (simulated time).
    pub(crate) last_transition: T,
    /// Agent starts so far (each draws a new probe session).
    pub(crate) session_no: u64,
    /// The newest ownership term the shell wrote to disk (it survives a
    /// reboot, unlike the reflector's map).
    pub(crate) disk_term: u64,
    /// When each ownership term began in its data plane (simulated time).
    pub(crate) term_began: BTreeMap<u64, T>,
    /// What the fast heartbeat's prober of the running agent was handed.
    pub(crate) hb: HbSeen,
}

/// What a node's prober was handed since its agent started (the
/// simulation's own record, for the checks).
#[derive(Debug, Clone, Default)]
pub struct HbSeen {
    /// The newest term of a reply showing the peer alive (genuine or
    /// forged): a proof of an older term makes no verdict.
    pub alive_max: u64,
    /// The sequence and the term of the newest genuine signed advert its
    /// core took from the peer (the prober learns the term's low bits from
    /// the sequence): a proof of an older term makes no verdict.
    pub announced: Option<(u64, u64)>,
    /// Whether the last genuine reply showed the peer alive.
    pub last_alive: Option<bool>,
    /// The newest round answered by a frame the prober took as a reply.
    pub answered: u64,
    /// The deepest round trip of a genuine reply it took: rounds sent from
    /// its probe's on, when it came.
    pub depth_max: u64,
    /// The rounds sent (sequence, simulated time), the latest last.
    pub rounds: VecDeque<(u64, T)>,
}

impl HbSeen {
    /// When round `seq` was sent, if it is still known.
    pub fn sent_at(&self, seq: u64) -> Option<T> {
        let (first, _) = *self.rounds.front()?;
        let k = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.rounds.get(k).map(|&(_, t)| t)
    }
}

impl SimNode {
    /// The node's monotonic clock at `t` (ns since its boot).
    pub fn mono(&self, t: T) -> u64 {
        let d = t.saturating_sub(self.boot).as_nanos() as i128;
        (d + d * i128::from(self.ppm) / 1_000_000) as u64
    }

    /// The first simulated instant at which the node's clock reads `mono`.
    pub fn to_sim(&self, mono: u64) -> T {
        let m = i128::from(mono);
        let d =
            (m * 1_000_000 + 999_999 + i128::from(self.ppm)) / (1_000_000 + i128::from(self.ppm));
        let mut t = self.boot + Duration::from_nanos(d.max(0) as u64);
        // Integer rounding: step forward until the clock reads it.
        while self.mono(t) < mono {
            t += Duration::from_nanos(1);
        }
        t
    }

    /// The wall clock at `t` (since the Unix epoch).
    pub fn wall(&self, t: T) -> Duration {
        let d = t.as_nanos() as i128;
        let ns = self.wall0 + d + d * i128::from(self.ppm) / 1_000_000;
        Duration::from_nanos(ns.max(0) as u64)
    }

    /// The core's time at `t`.
    pub(crate) fn local(&self, t: T) -> Duration {
        Duration::from_nanos(self.mono(t).saturating_sub(self.origin))
    }

    /// Whether the data plane answers for group `g` at `t` (the XDP
    /// programs read a coarse clock: a lease lapses up to a tick late).
    pub fn owns(&self, g: usize, t: T, tick: T) -> bool {
        if !self.up || t < self.paused_until || self.dp.groups & (1 << g) == 0 {
            return false;
        }
        match self.dp.expires {
            None => true,
            Some(e) => {
                let m = self.mono(t);
                let tick = tick.as_nanos() as u64;
                m - m % tick < e
            }
        }
    }

    /// The ownership word as the reflector reads it, and the coarse clock
    /// it reads it with (ns), at `t`.
    pub fn word(&self, t: T, tick: T) -> (Ownership, u64) {
        let m = self.mono(t);
        let tick = tick.as_nanos() as u64;
        (
            Ownership {
                groups: self.dp.groups,
                lease_expires_ns: self.dp.expires.unwrap_or(u64::MAX),
            },
            m - m % tick,
        )
    }

    /// Whether the reflector would show the ownership word alive at `t`
    /// (some group owned under a running lease).
    pub fn alive(&self, t: T, tick: T) -> bool {
        let (own, now) = self.word(t, tick);
        self.up && t >= self.paused_until && own.owns_any(now)
    }

    /// When ownership of a group ends by itself (its lease), if it does.
    pub fn lease_end(&self, tick: T) -> Option<T> {
        let e = self.dp.expires?;
        let tick = tick.as_nanos() as u64;
        Some(self.to_sim(e.div_ceil(tick) * tick))
    }
}

/// What waits in a node's socket or control queue.
#[derive(Debug, Clone)]
pub enum Item {
    /// A VRRP packet over heartbeat path `path`.
    Packet {
        bytes: Vec<u8>,
        path: usize,
        origin: Origin,
        /// A genuine signed advert's (VRID, source, sequence), and the
        /// sender's ownership term it announces (whole: the sequence
        /// carries its low bits).
        signed: Option<(u8, Ipv4Addr, u64, u64)>,
    },
    /// The shell saw the tracked link (`None`) or a path's interface change.
    Link(Option<usize>, bool),
    /// A frame of the fast heartbeat's ethertype over path `path`, from
    /// Ethernet source `src`.
    Probe {
        bytes: Vec<u8>,
        path: usize,
        src: [u8; 6],
        from: ProbeFrom,
    },
    /// An operator command.
    Command(Command),
    /// A reload of the configuration (its VIPs).
    Reload,
}

/// Who sent a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A node of the cluster.
    Node(usize),
    /// The attacker: malformed, forged, from a stranger.
    Hostile,
    /// The attacker replays a genuine signed advert (its VRID, source and
    /// sequence): hostile only if the target was handed a genuine advert at
    /// least as new from that source (otherwise it is not sent).
    Replay { vrid: u8, src: Ipv4Addr, seq: u64 },
}

/// Who sent a fast-heartbeat frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeFrom {
    /// The reflector of node `node` (a genuine reply made at `made`), of
    /// term `term`, alive (owning under a running lease) or not.
    Node {
        node: usize,
        term: u64,
        alive: bool,
        made: T,
    },
    /// The attacker: nothing in it can be taken for a reply (a bad tag or
    /// proof, malformed, not ours, an unknown sequence).
    Hostile,
    /// The attacker that sees the probes: a current tag, "alive" forged
    /// (term `term`): it may be taken as a reply, never as a verdict.
    ForgedAlive { term: u64 },
    /// A genuine reply of term `term` made at `made`, captured and replayed
    /// to the prober's current session: as it was (a late copy), or "term
    /// ended" with a current tag copied in (the attacker sees the probes).
    Replayed { term: u64, made: T },
}

impl Origin {
    pub fn node(self) -> Option<usize> {
        match self {
            Origin::Node(i) => Some(i),
            _ => None,
        }
    }
}
