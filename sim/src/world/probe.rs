//! The fast heartbeat in the simulated world: a node's probes go over the
//! path they name (the same delay, loss, duplication and faults as adverts
//! on it); the peer's reflector (its XDP programs) answers each with
//! `ha_core::heartbeat::reflect` from the peer's data plane at arrival
//! (its term map, its ownership word on the coarse clock), whatever its
//! agent does (dead, frozen or running), but nothing answers on a machine
//! down or paused; the reply comes back over the same path and waits in
//! the prober's socket like an advert. The attacker's frames: malformed,
//! not ours, unknown sequences, random tags, forged proofs, replays of
//! genuine replies; and, when it sees the probes, "alive" forged with a
//! current tag and genuine "term ended" replies replayed with one.

use ha_common::heartbeat::{KIND_PROBE, KIND_REPLY, MAGIC, ProbeConfig, VERSION, WIRE_LEN};
use ha_core::heartbeat::{Probe, reflect};
use rand::Rng;

use super::{Ev, Item, World};
use crate::{node::ProbeFrom, scenario::T};

// Offsets in `ProbeWire`.
use ha_common::heartbeat::offset::FROM as OFF_FROM;
use ha_common::heartbeat::offset::GROUPS as OFF_GROUPS;
use ha_common::heartbeat::offset::KIND as OFF_KIND;
use ha_common::heartbeat::offset::LEASE as OFF_LEASE;
use ha_common::heartbeat::offset::PROOF as OFF_PROOF;
use ha_common::heartbeat::offset::SEQ as OFF_SEQ;
use ha_common::heartbeat::offset::TAG as OFF_TAG;
use ha_common::heartbeat::offset::TERM as OFF_TERM;
use ha_common::heartbeat::offset::TO as OFF_TO;

/// Genuine replies the attacker keeps (the latest), and "term ended" ones
/// (by node and term).
const REPLIES: usize = 64;

/// A genuine reply seen on the wire.
#[derive(Debug, Clone)]
pub struct ReplyCapture {
    pub bytes: [u8; WIRE_LEN],
    /// The prober it answered, and that prober's session number.
    pub to: usize,
    pub session: u64,
    pub term: u64,
    /// When the reflector made it.
    pub made: T,
}

/// Node `node`'s MAC on path `path`.
pub fn mac(node: usize, path: usize) -> [u8; 6] {
    [2, 0, 0, 0, path as u8, node as u8 + 1]
}

pub fn seq_of(b: &[u8]) -> u64 {
    b.get(OFF_SEQ..OFF_SEQ + 8)
        .map_or(0, |s| u64::from_be_bytes(s.try_into().unwrap_or([0; 8])))
}

pub fn term_of(b: &[u8]) -> u64 {
    b.get(OFF_TERM..OFF_TERM + 8)
        .map_or(0, |s| u64::from_be_bytes(s.try_into().unwrap_or([0; 8])))
}

impl World<'_> {
    /// The one peer of node `i` (the fast heartbeat runs with two nodes).
    fn peer_of(&self, i: usize) -> usize {
        1 - i.min(1)
    }

    /// `Effect::SendProbe` of node `i`.
    pub(super) fn send_probe(&mut self, i: usize, p: Probe) {
        let t = self.now;
        let peer = self.peer_of(i);
        self.stats.probes += 1;
        let seq = seq_of(&p.frame);
        let rounds = &mut self.nodes[i].hb.rounds;
        if rounds.back().is_none_or(|&(s, _)| s < seq) {
            rounds.push_back((seq, t));
            if rounds.len() > 4096 {
                rounds.pop_front();
            }
        }
        self.last_probe[i] = Some((self.nodes[i].session_no, p.frame));
        for d in self.link(i, peer, p.path, true) {
            self.at(
                t + d,
                Ev::ProbeArrive {
                    to: peer,
                    from: i,
                    path: p.path,
                    frame: Box::new(p.frame),
                },
            );
        }
    }

    /// A probe reaches node `to`: its reflector answers from its data
    /// plane now, unless the machine is down or paused.
    pub(super) fn probe_arrive(
        &mut self,
        to: usize,
        from: usize,
        path: usize,
        frame: &[u8; WIRE_LEN],
    ) {
        let t = self.now;
        let n = &self.nodes[to];
        if !n.up || t < n.paused_until {
            self.stats.probe_drops += 1;
            self.check.probe_unanswered(from, to, path, t);
            return;
        }
        let cfg = ProbeConfig {
            enabled: 1,
            local_addr: u32::from_ne_bytes(self.sc.nodes[to].addr.octets()),
            peer_addr: u32::from_ne_bytes(self.sc.nodes[from].addr.octets()),
            _pad: 0,
        };
        let (own, now_ns) = n.word(t, self.sc.tick);
        let term = n.dp.term;
        let Some(reply) = reflect(frame, &cfg, &term, &own, now_ns) else {
            self.check.violation(
                t,
                format!("MODEL: node {to}'s reflector refused a probe of node {from}"),
            );
            return;
        };
        let alive = own.owns_any(now_ns);
        let capture = ReplyCapture {
            bytes: reply,
            to: from,
            session: self.nodes[from].session_no,
            term: term.term,
            made: t,
        };
        if !alive && term.term != 0 {
            self.ended_captures.insert((to, term.term), capture.clone());
            if self.ended_captures.len() > REPLIES
                && let Some(&k) = self.ended_captures.keys().next()
            {
                self.ended_captures.remove(&k);
            }
        }
        if self.reply_captures.len() >= REPLIES {
            self.reply_captures.pop_front();
        }
        self.reply_captures.push_back(capture);
        for d in self.link(to, from, path, true) {
            self.at(
                t + d,
                Ev::Arrive {
                    to: from,
                    item: Item::Probe {
                        bytes: reply.to_vec(),
                        path,
                        src: mac(to, path),
                        from: ProbeFrom::Node {
                            node: to,
                            term: term.term,
                            alive,
                            made: t,
                        },
                    },
                },
            );
        }
    }

    /// A hostile frame of the fast heartbeat for node `to` over `path`,
    /// made now (the attacker that sees the probes copies the latest).
    pub(super) fn hostile_probe(&mut self, to: usize, path: usize) {
        let peer = self.peer_of(to);
        let rng = &mut self.probe_rng;
        let me = self.sc.nodes[to].addr.octets();
        let them = self.sc.nodes[peer].addr.octets();
        // A reply's shape, from the peer to `to`.
        let mut f = [0u8; WIRE_LEN];
        f[..4].copy_from_slice(&MAGIC);
        f[4] = VERSION;
        f[OFF_KIND] = KIND_REPLY;
        f[6] = path as u8;
        f[OFF_FROM..OFF_FROM + 4].copy_from_slice(&me);
        f[OFF_TO..OFF_TO + 4].copy_from_slice(&them);
        // The latest probe of `to`'s running agent, if the attacker sees it.
        let session = self.nodes[to].session_no;
        let current = self.last_probe[to]
            .filter(|(s, _)| self.sc.sniffer && *s == session)
            .map(|(_, p)| p);
        let recent = self.nodes[to].hb.rounds.back().map_or(1, |&(s, _)| s);
        // The attacker that sees the probes uses what it sees half the time.
        let mut kind = if current.is_some() && rng.gen_bool(0.5) {
            rng.gen_range(6..9)
        } else {
            rng.gen_range(0..6)
        };
        if kind == 8 && !self.ended_captures.keys().any(|(n, _)| *n == peer) {
            kind = 6;
        }
        let from = match kind {
            // Malformed: random bytes, or a reply with a broken header.
            0 => {
                let mut b: Vec<u8> = (0..rng.gen_range(0..120)).map(|_| rng.r#gen()).collect();
                if rng.gen_bool(0.5) {
                    b = f.to_vec();
                    match rng.gen_range(0..4) {
                        0 => b[0] ^= 1 << rng.gen_range(0..8),
                        1 => b[4] = rng.gen_range(2..=255),
                        2 => {
                            b[OFF_KIND] = *[0, KIND_PROBE, 3].get(rng.gen_range(0..3)).unwrap_or(&0)
                        }
                        _ => b.truncate(rng.gen_range(0..WIRE_LEN)),
                    }
                }
                self.deliver_hostile_probe(to, path, b, ProbeFrom::Hostile);
                return;
            }
            // Not ours: another from or to.
            1 => {
                let stranger = [10, 255, 0, 66];
                if rng.gen_bool(0.5) {
                    f[OFF_FROM..OFF_FROM + 4].copy_from_slice(&stranger);
                } else {
                    f[OFF_TO..OFF_TO + 4].copy_from_slice(if rng.gen_bool(0.5) {
                        &stranger
                    } else {
                        &me
                    });
                }
                if let Some(p) = current {
                    f[OFF_SEQ..OFF_TAG + 16].copy_from_slice(&p[OFF_SEQ..OFF_TAG + 16]);
                }
                ProbeFrom::Hostile
            }
            // A sequence never sent (ahead, or zero), a random tag.
            2 => {
                let seq = if rng.gen_bool(0.2) {
                    0
                } else {
                    recent + rng.gen_range(1..1_000_000)
                };
                f[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&seq.to_be_bytes());
                rng.fill(&mut f[OFF_TAG..OFF_TAG + 16]);
                ProbeFrom::Hostile
            }
            // A recent sequence with a random tag ("alive", or "ended"
            // with a random proof).
            3 => {
                let seq = recent.saturating_sub(rng.gen_range(0..8)).max(1);
                f[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&seq.to_be_bytes());
                rng.fill(&mut f[OFF_TAG..OFF_TAG + 16]);
                if rng.gen_bool(0.5) {
                    f[OFF_GROUPS + 7] = 1;
                    f[OFF_LEASE + 5] = 1;
                } else {
                    rng.fill(&mut f[OFF_PROOF..OFF_PROOF + 16]);
                }
                f[OFF_TERM + 7] = rng.r#gen();
                ProbeFrom::Hostile
            }
            // A genuine reply replayed as it was: to another prober or an
            // older session it is no reply; to the same session it is a
            // late copy (the network duplicates too).
            4 => {
                let Some(c) = self
                    .reply_captures
                    .get(rng.gen_range(0..self.reply_captures.len().max(1)))
                    .cloned()
                else {
                    return;
                };
                let same = c.to == to
                    && c.session == session
                    && recent.saturating_sub(seq_of(&c.bytes)) < ha_core::heartbeat::WINDOW;
                let from = if same {
                    ProbeFrom::Replayed {
                        term: c.term,
                        made: c.made,
                    }
                } else {
                    ProbeFrom::Hostile
                };
                self.deliver_hostile_probe(to, path, c.bytes.to_vec(), from);
                return;
            }
            // "Term ended" with a forged proof (a current tag when the
            // attacker sees the probes).
            5 => {
                match current {
                    Some(p) => f[OFF_SEQ..OFF_TAG + 16].copy_from_slice(&p[OFF_SEQ..OFF_TAG + 16]),
                    None => {
                        f[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&recent.to_be_bytes());
                        rng.fill(&mut f[OFF_TAG..OFF_TAG + 16]);
                    }
                }
                let term = self.nodes[peer].dp.term.term + rng.gen_range(0..3);
                f[OFF_TERM..OFF_TERM + 8].copy_from_slice(&term.to_be_bytes());
                rng.fill(&mut f[OFF_PROOF..OFF_PROOF + 16]);
                if f[OFF_PROOF] == 0 {
                    f[OFF_PROOF] = 1;
                }
                ProbeFrom::Hostile
            }
            // The attacker sees the probes: "alive" forged with the
            // current tag, of some term (none, old, the peer's, ahead).
            6 | 7 => {
                let Some(p) = current else { return };
                f[OFF_SEQ..OFF_TAG + 16].copy_from_slice(&p[OFF_SEQ..OFF_TAG + 16]);
                let real = self.nodes[peer].dp.term.term;
                let term = match rng.gen_range(0..5) {
                    0 => 0,
                    1 => rng.gen_range(0..=real),
                    2 => real,
                    3 => real + rng.gen_range(1..10),
                    _ => u64::MAX - rng.gen_range(0..10),
                };
                f[OFF_GROUPS..OFF_GROUPS + 8]
                    .copy_from_slice(&rng.gen_range(1..4u64).to_be_bytes());
                f[OFF_LEASE..OFF_LEASE + 8]
                    .copy_from_slice(&rng.gen_range(1..1_000_000_000u64).to_be_bytes());
                f[OFF_TERM..OFF_TERM + 8].copy_from_slice(&term.to_be_bytes());
                ProbeFrom::ForgedAlive { term }
            }
            // The attacker sees the probes: a genuine "term ended" reply
            // captured earlier, with the current tag copied in.
            _ => {
                let Some(p) = current else { return };
                let ended: Vec<&ReplyCapture> = self
                    .ended_captures
                    .iter()
                    .filter(|((n, _), _)| *n == peer)
                    .map(|(_, c)| c)
                    .collect();
                if ended.is_empty() {
                    return;
                }
                let c = ended[rng.gen_range(0..ended.len())];
                f = c.bytes;
                f[OFF_SEQ..OFF_TAG + 16].copy_from_slice(&p[OFF_SEQ..OFF_TAG + 16]);
                ProbeFrom::Replayed {
                    term: c.term,
                    made: c.made,
                }
            }
        };
        self.deliver_hostile_probe(to, path, f.to_vec(), from);
    }

    fn deliver_hostile_probe(&mut self, to: usize, path: usize, bytes: Vec<u8>, from: ProbeFrom) {
        let src = if self.probe_rng.gen_bool(0.8) {
            mac(self.peer_of(to), path)
        } else {
            [2, 0, 0, 0, 0, 66]
        };
        self.arrive(
            to,
            Item::Probe {
                bytes,
                path,
                src,
                from,
            },
        );
    }
}

impl World<'_> {
    /// Node `b` took over by a verdict of its fast heartbeat (`reason`):
    /// the SILENT (STALL) and LAPSED checks.
    pub(super) fn verdict(
        &mut self,
        b: usize,
        t: crate::scenario::T,
        reason: ha_core::vrrp::machine::Reason,
    ) {
        use ha_core::vrrp::machine::Reason;
        let peer = self.peer_of(b);
        let peer_alive = self.nodes[peer].alive(t, self.sc.tick);
        let peer_term = self.nodes[peer].dp.term.term;
        match reason {
            Reason::PeerSilent => {
                self.stats.verdicts_silent += 1;
                if peer_alive {
                    self.stats.false_silent += 1;
                }
                let Some(p) = self.nodes[b].core.as_ref().and_then(|c| c.prober()) else {
                    return;
                };
                let k = u64::from(p.misses());
                // The verdict came before this tick's round: rounds
                // last - k .. last - 1 went unanswered.
                let first = p.rounds_sent().saturating_sub(k).max(1);
                let tau = self.nodes[b].hb.sent_at(first);
                let answered = self.nodes[b].hb.answered;
                if answered >= first {
                    let name = if self.check.stalled(b, tau.unwrap_or(t), t) {
                        "STALL"
                    } else {
                        "SILENT"
                    };
                    self.check.violation(
                        t,
                        format!(
                            "{name}: node {b} took over (PeerSilent, k = {k}) at {t:?}, though its round {answered} (of the last {k}, from {first}) was answered before"
                        ),
                    );
                }
                self.log(|| format!("node {b}: PeerSilent verdict, k {k}, round {first} sent at {tau:?}; peer alive {peer_alive}"));
                // The paths with a probe of those rounds, or its reply,
                // still on the way (a round trip longer than k rounds).
                let mut late = vec![false; self.sc.paths()];
                for ev in self.queue.values() {
                    match ev {
                        Ev::ProbeArrive {
                            from, path, frame, ..
                        } if *from == b && seq_of(&frame[..]) >= first => late[*path] = true,
                        Ev::Arrive {
                            to,
                            item:
                                Item::Probe {
                                    bytes,
                                    path,
                                    from: ProbeFrom::Node { .. },
                                    ..
                                },
                        } if *to == b && seq_of(bytes) >= first => late[*path] = true,
                        _ => {}
                    }
                }
                let depth = self.nodes[b].hb.depth_max;
                self.check.silent_verdict(b, t, tau, k, &late, depth);
            }
            Reason::PeerLapsed => {
                self.stats.verdicts_lapsed += 1;
                let ctx = self.probe_ctx;
                self.log(|| format!("node {b}: PeerLapsed verdict on {ctx:?}; peer alive {peer_alive}, its term {peer_term}"));
                let (proven, made, replayed) = match ctx {
                    Some((ProbeFrom::Node { term, made, .. }, _)) => (term, made, false),
                    Some((ProbeFrom::Replayed { term, made }, _)) => (term, made, true),
                    _ => (0, t, true),
                };
                if !peer_alive {
                    return;
                }
                // The newest term the prober was shown alive (before this
                // frame: a proof shows no term alive).
                let known = self.nodes[b].hb.alive_max;
                // The term the peer's newest signed advert it took
                // announced: a proof of any other proves nothing.
                let announced = self.nodes[b].hb.announced.map(|(_, term)| term);
                if peer_term <= proven || known > proven || announced != Some(proven) {
                    self.check.violation(
                        t,
                        format!(
                            "LAPSED: node {b} took over (PeerLapsed, on {ctx:?}: term {proven} ended, made at {made:?}) while node {peer}'s data plane owns under its term {peer_term}, and it had been shown term {known} alive, term {announced:?} announced"
                        ),
                    );
                } else if replayed {
                    // An old proof, replayed before the prober saw the
                    // peer's newer term alive or its first advert came.
                    self.stats.lapsed_replays += 1;
                } else {
                    // The peer began a new term while the reply was on
                    // its way: VRRP settles the two masters (SPLIT).
                    self.stats.lapsed_races += 1;
                }
            }
            _ => {}
        }
    }
}

/// What a detection awaits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectKind {
    /// The master's machine died: no reply for k rounds (PeerSilent).
    Crash,
    /// The master's agent died or froze: its lease lapses, a reply then
    /// proves its term over (PeerLapsed).
    Lapse,
}

/// A takeover the fast heartbeat must make in time (DETECT).
#[derive(Debug, Clone)]
pub struct Detect {
    kind: DetectKind,
    group: usize,
    master: usize,
    backup: usize,
    /// When the fault came, and from when the time is counted (the crash,
    /// or the end of the master's lease on its data plane's clock).
    at: T,
    start: T,
    /// The master's lease (its data plane's expiry) when it came.
    expires: Option<u64>,
}

impl World<'_> {
    /// The longest one-way delay of any path without a spike.
    fn plain_delay(&self) -> T {
        self.sc
            .nets
            .iter()
            .map(|n| n.delay + n.jitter)
            .max()
            .unwrap_or_default()
    }

    /// Node `m` dies (machine crash) or its agent dies or freezes (`kind`)
    /// at `t`: for each group it owns alone, with its peer a backup whose
    /// prober was last shown it alive (and no newer term than its own),
    /// await the fast heartbeat's takeover.
    pub(super) fn detect_death(&mut self, m: usize, kind: DetectKind) {
        let t = self.now;
        let Some(h) = self.sc.heartbeat() else { return };
        let b = self.peer_of(m);
        let Some(core) = &self.nodes[b].core else {
            return;
        };
        let hb = &self.nodes[b].hb;
        if hb.last_alive != Some(true)
            || (kind == DetectKind::Lapse
                && (hb.alive_max > self.nodes[m].dp.term.term
                    || hb.announced.map(|(_, term)| term) != Some(self.nodes[m].dp.term.term)))
            || t < self.nodes[b].frozen_until.max(self.nodes[b].paused_until)
            || self
                .check
                .disturbed_since(b, t.saturating_sub(h.interval * 100), t)
        {
            return;
        }
        // A prober whose gaps call for more rounds than misses_max holds
        // its Silent verdicts (VRRP's timer decides, checked as any master
        // death): no fast takeover is owed after a crash.
        if kind == DetectKind::Crash && core.prober().is_some_and(|p| p.silent_held()) {
            return;
        }
        let start = match kind {
            DetectKind::Crash => t,
            DetectKind::Lapse => match self.nodes[m].lease_end(self.sc.tick) {
                Some(e) => e.max(t),
                None => return,
            },
        };
        for g in 0..self.check.groups() {
            if !self.nodes[m].owns(g, t, self.sc.tick)
                || self.nodes[b].owns(g, t, self.sc.tick)
                || core.roles().nth(g) != Some(ha_core::vrrp::machine::Role::Backup)
            {
                continue;
            }
            self.detects.push(Detect {
                kind,
                group: g,
                master: m,
                backup: b,
                at: t,
                start,
                expires: self.nodes[m].dp.expires,
            });
        }
    }

    /// The deadline of a detection: after a crash, k + 2 rounds (k as the
    /// prober has it now), the delay and processing; after the lease's
    /// end, two rounds, a round trip and processing.
    fn detect_deadline(&self, d: &Detect) -> Option<T> {
        let h = self.sc.heartbeat()?;
        let i = h.interval + h.interval / 1000;
        let dl = self.plain_delay();
        Some(match d.kind {
            DetectKind::Crash => {
                let k = self.nodes[d.backup].core.as_ref()?.prober()?.misses();
                d.start + i * (k + 2) + dl + crate::check::P
            }
            DetectKind::Lapse => d.start + i * 2 + dl * 2 + crate::check::P,
        })
    }

    /// Node `b` became master of group `g` at `t`: the detections it ends.
    pub(super) fn detect_took_over(&mut self, b: usize, g: usize, t: T) {
        let mut k = 0;
        while k < self.detects.len() {
            let d = self.detects[k].clone();
            if d.backup != b || d.group != g {
                k += 1;
                continue;
            }
            self.detects.remove(k);
            let Some(deadline) = self.detect_deadline(&d) else {
                continue;
            };
            let took = t.saturating_sub(d.start);
            self.check
                .detected(d.kind, took, deadline.saturating_sub(d.start));
            if t > deadline {
                self.check.violation(
                    t,
                    format!(
                        "DETECT: node {b} took group {g} over at {t:?}, past the bound {deadline:?} ({:?} of node {} at {:?}, counted from {:?})",
                        d.kind, d.master, d.at, d.start
                    ),
                );
            }
        }
    }

    /// Every event: detections no longer awaited (the backup disturbed,
    /// the network between them impaired, the master back), and those
    /// past their bound.
    pub(super) fn detect_settle(&mut self) {
        let t = self.now;
        let mut k = 0;
        while k < self.detects.len() {
            let d = self.detects[k].clone();
            let m = &self.nodes[d.master];
            let gone = match d.kind {
                DetectKind::Crash => m.up,
                DetectKind::Lapse => {
                    !m.up || m.dp.expires != d.expires || (t >= d.start && m.alive(t, self.sc.tick))
                }
            };
            let b = &self.nodes[d.backup];
            if gone
                || b.core.is_none()
                || self.check.disturbed_since(d.backup, d.at, t)
                || self.check.pair_troubled(d.master, d.backup, d.at, t)
            {
                self.detects.remove(k);
                continue;
            }
            if let Some(deadline) = self.detect_deadline(&d)
                && t > deadline
            {
                self.detects.remove(k);
                self.check.violation(
                    t,
                    format!(
                        "DETECT: no node owns group {} at {t:?}, past the bound {deadline:?} ({:?} of node {} at {:?}, counted from {:?})",
                        d.group, d.kind, d.master, d.at, d.start
                    ),
                );
                continue;
            }
            k += 1;
        }
    }
}
