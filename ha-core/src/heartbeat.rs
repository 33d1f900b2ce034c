//! The fast heartbeat's prober, sans-IO: probes out, replies in, a verdict
//! when the peer is gone. The peer's XDP programs answer the probes
//! (`ha_common::heartbeat`), so a live box answers even while its agent is
//! stalled, and a reply carries its ownership word and lease.
//!
//! Two verdicts, each only hastening what VRRP would do anyway:
//! - [`Verdict::Silent`]: the `k` last rounds of probes went unanswered on
//!   every path, and no advert came meanwhile, while the peer owned VIPs at
//!   its last reply. `k` is counted in probes *sent*: a prober that stalls
//!   sends nothing, so its own stall never reads as the peer's silence.
//!   `k` adapts to the gaps seen (see [`Prober::misses`]).
//! - [`Verdict::Lapsed`]: a reply carries the proof that the peer's
//!   ownership term has ended in its data plane (its lease lapsed: its
//!   daemon died or stalled). The proof is an HMAC under the probe key that
//!   the peer's agent wrote for that term and its XDP reveals only once the
//!   lease is over; it must be for a term at least as new as the newest one
//!   seen alive, so an old proof replayed proves nothing.
//!
//! A reply counts only if it echoes the tag of a probe we sent (a keyed
//! function of the session and the sequence), so a host that does not see
//! the probes cannot forge one. A host that sees them can forge "alive"
//! (a takeover then waits for VRRP's own timer: the backstop) but not "term
//! ended", and cannot hide real replies from us unless it can drop them.

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use ha_common::heartbeat::{KIND_PROBE, KIND_REPLY, MAGIC, VERSION, WIRE_LEN};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{node::Instant, vrrp::auth};

/// Probes whose replies are still accepted (by sequence).
pub const WINDOW: u64 = 256;
/// Slowest probing (a master, or nothing to take over).
pub const IDLE_INTERVAL_MAX: Duration = Duration::from_millis(100);
/// Gaps are counted up to this many probes (the last bucket: this or more).
pub const GAP_BUCKETS: usize = 64;
/// The recent gap maximum covers between one and two windows of this many
/// rounds sent at the fast rate.
const RECENT_ROUNDS: u64 = 10_000;
/// A path unanswered for this many rounds probes by broadcast again (its
/// peer MAC may have changed).
const FORGET_MAC: u64 = 256;
/// The loss estimate's prior: one round lost in this many.
const LOSS_PRIOR_ROUNDS: u64 = 1000;
/// How unlikely `k` rounds all lost by chance must be (per round): at
/// 1,000 rounds a second, once in about eleven days.
const FALSE_SILENCE: f64 = 1e-9;
/// RTT histogram: bucket `i` holds RTTs below `2^i` µs.
const RTT_BUCKETS: usize = 24;

type HmacSha256 = Hmac<Sha256>;

/// How the prober runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Between rounds of probes while this node may have to take over.
    pub interval: Duration,
    /// Fewest unanswered rounds that make a verdict (`k` adapts above it).
    pub misses_min: u32,
    /// Most (past it VRRP's own timer is as quick).
    pub misses_max: u32,
    /// The probe key (from the cluster key): tags and term proofs.
    pub key: [u8; 32],
    /// Random per start: the tags of one run never repeat in another.
    pub session: [u8; 16],
    /// Our HA address, and the one peer's.
    pub local: Ipv4Addr,
    pub peer: Ipv4Addr,
}

/// Settings the prober cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    #[error("probe interval {0:?}: between 100 us and 100 ms")]
    Interval(Duration),
    #[error("misses_min {min} and misses_max {max}: need 2 <= misses_min <= misses_max <= 1000")]
    Misses { min: u32, max: u32 },
    #[error("the fast heartbeat needs our HA address and exactly one peer's, distinct")]
    Addresses,
}

impl Settings {
    pub fn validate(&self) -> Result<(), HeartbeatError> {
        if self.interval < Duration::from_micros(100) || self.interval > IDLE_INTERVAL_MAX {
            return Err(HeartbeatError::Interval(self.interval));
        }
        if self.misses_min < 2 || self.misses_max < self.misses_min || self.misses_max > 1000 {
            return Err(HeartbeatError::Misses {
                min: self.misses_min,
                max: self.misses_max,
            });
        }
        if self.local.is_unspecified() || self.peer.is_unspecified() || self.local == self.peer {
            return Err(HeartbeatError::Addresses);
        }
        Ok(())
    }
}

/// Why a frame was not taken as a reply.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Rejected {
    /// Short, or not a reply of our version.
    Malformed,
    /// Not from our peer to us.
    NotOurs,
    /// A sequence we never sent, or too old.
    UnknownSeq,
    /// The tag is not the one we sent with that sequence.
    BadTag,
    /// A "term ended" proof that does not verify.
    BadProof,
}

impl Rejected {
    pub const ALL: [Rejected; 5] = [
        Rejected::Malformed,
        Rejected::NotOurs,
        Rejected::UnknownSeq,
        Rejected::BadTag,
        Rejected::BadProof,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Rejected::Malformed => "malformed",
            Rejected::NotOurs => "not_ours",
            Rejected::UnknownSeq => "unknown_seq",
            Rejected::BadTag => "bad_tag",
            Rejected::BadProof => "bad_proof",
        }
    }
}

/// The peer is gone: take over now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// `k` rounds unanswered on every path.
    Silent,
    /// Its ownership term ended (proof received).
    Lapsed,
}

/// A probe to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub path: usize,
    /// The peer's MAC on that path, learnt from its replies (`None`:
    /// broadcast).
    pub dst: Option<[u8; 6]>,
    pub frame: [u8; WIRE_LEN],
}

/// The peer as its last valid reply showed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerView {
    pub groups: u64,
    pub lease_left: Duration,
    pub term: u64,
    /// When the reply arrived (node time).
    pub at: Instant,
}

/// What the prober reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub interval: Duration,
    /// Probing at the fast rate (this node may have to take over).
    pub fast: bool,
    /// The current `k`, and its bounds.
    pub misses: u32,
    /// No Silent verdict now: the `k` needed is beyond `misses_max`.
    pub silent_held: bool,
    pub misses_min: u32,
    pub misses_max: u32,
    pub probes_sent: u64,
    pub replies: u64,
    pub rejected: BTreeMap<Rejected, u64>,
    pub verdicts_silent: u64,
    pub verdicts_lapsed: u64,
    /// Silent verdicts the peer proved wrong (it answered, owning VIPs).
    pub false_verdicts: u64,
    /// Reply gaps at the fast rate: `gaps[g]` = how often the newest reply
    /// came after `g` rounds were sent since the previous one (1 = none
    /// missed; the last bucket: that many or more).
    pub gaps: [u64; GAP_BUCKETS + 1],
    pub gap_max_recent: u64,
    /// Round-trip times: `rtt[i]` = replies under `2^i` µs.
    pub rtt: [u64; RTT_BUCKETS],
    pub rtt_max: Duration,
    pub peer: Option<PeerView>,
    /// The last verdict, and how long the peer had been silent then (since
    /// its last reply on any path).
    pub last_verdict: Option<(Verdict, Duration)>,
    /// The low 16 bits of the term the peer's newest signed advert
    /// announced (`None`: no signed advert yet, so no Lapsed verdict).
    pub term_announced: Option<u16>,
    /// Term-ended proofs refused for a term other than the announced one
    /// (an old proof replayed, or overtaken by the peer's new term).
    pub proofs_unannounced: u64,
}

impl Report {
    /// The RTT below which fraction `q` of the replies came (an upper
    /// bound from the histogram).
    pub fn rtt_quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.rtt.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.rtt.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(Duration::from_micros(1 << i).min(self.rtt_max));
            }
        }
        Some(self.rtt_max)
    }
}

#[derive(Debug, Clone, Default)]
struct PathProbe {
    mac: Option<[u8; 6]>,
    /// The newest sequence answered over it.
    replied: u64,
}

/// The prober.
#[derive(Debug)]
pub struct Prober {
    s: Settings,
    fast: bool,
    idle: Duration,
    /// The last round sent (0: none yet).
    seq: u64,
    next_at: Option<Instant>,
    /// Tag and send time of the last [`WINDOW`] rounds, by `seq % WINDOW`.
    sent: Vec<([u8; 16], Instant)>,
    /// The newest round answered on any path, and the round current when
    /// the peer was last heard otherwise (an advert).
    replied: u64,
    heard: u64,
    /// A verdict may be made: a reply showed the peer owning VIPs since
    /// the start or the last verdict.
    armed: bool,
    /// The last reply showed it owning VIPs under a running lease.
    peer_owned: bool,
    /// The newest term seen owning.
    alive_term: u64,
    /// The sequence of the peer's newest signed advert and the low bits
    /// of the term it announced (`vrrp::auth::Sequencer`): the only term a
    /// proof may end.
    announced: Option<(u64, u16)>,
    /// Proofs of a term other than the announced one, while armed.
    proofs_unannounced: u64,
    /// A Silent verdict stands: a reply showing the peer owning proves it
    /// false.
    suspect: bool,
    /// Raised by false verdicts (not capped: see [`Prober::silent_held`]).
    k_floor: u64,
    paths: Vec<PathProbe>,
    // Statistics.
    probes_sent: u64,
    replies: u64,
    rejected: BTreeMap<Rejected, u64>,
    verdicts_silent: u64,
    verdicts_lapsed: u64,
    false_verdicts: u64,
    gaps: [u64; GAP_BUCKETS + 1],
    fast_rounds: u64,
    window_start: u64,
    cur_max: u64,
    prev_max: u64,
    /// Rounds skipped by the newest reply (none of their replies came
    /// first), and rounds the newest reply moved past, in the current and
    /// previous windows: the loss estimate behind `k`.
    cur_lost: u64,
    cur_rounds: u64,
    prev_lost: u64,
    prev_rounds: u64,
    rtt: [u64; RTT_BUCKETS],
    rtt_max: Duration,
    peer: Option<PeerView>,
    last_verdict: Option<(Verdict, Duration)>,
}

/// The proof that `node`'s ownership term `term` ended (its agent writes
/// it into the reflector with the term; XDP reveals it after the lease).
pub fn term_proof(key: &[u8; 32], node: Ipv4Addr, term: u64) -> [u8; 16] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"ha-agent heartbeat term ended");
    mac.update(&node.octets());
    mac.update(&term.to_be_bytes());
    truncate(mac)
}

fn tag(key: &[u8; 32], session: &[u8; 16], seq: u64) -> [u8; 16] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"ha-agent heartbeat probe");
    mac.update(session);
    mac.update(&seq.to_be_bytes());
    truncate(mac)
}

fn truncate(mac: HmacSha256) -> [u8; 16] {
    let full = mac.finalize().into_bytes();
    let mut out = [0; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// Equal in time independent of where the bytes differ.
fn same(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn field<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

// Offsets in `ProbeWire`.
use ha_common::heartbeat::offset::FROM as OFF_FROM;
use ha_common::heartbeat::offset::GROUPS as OFF_GROUPS;
use ha_common::heartbeat::offset::KIND as OFF_KIND;
use ha_common::heartbeat::offset::LEASE as OFF_LEASE;
use ha_common::heartbeat::offset::PATH as OFF_PATH;
use ha_common::heartbeat::offset::PROOF as OFF_PROOF;
use ha_common::heartbeat::offset::SEQ as OFF_SEQ;
use ha_common::heartbeat::offset::TAG as OFF_TAG;
use ha_common::heartbeat::offset::TERM as OFF_TERM;
use ha_common::heartbeat::offset::TO as OFF_TO;

impl Prober {
    pub fn new(s: Settings, paths: usize) -> Prober {
        Prober {
            fast: false,
            idle: IDLE_INTERVAL_MAX,
            seq: 0,
            next_at: None,
            sent: vec![([0; 16], Duration::ZERO); WINDOW as usize],
            replied: 0,
            heard: 0,
            armed: false,
            peer_owned: false,
            alive_term: 0,
            announced: None,
            proofs_unannounced: 0,
            suspect: false,
            k_floor: u64::from(s.misses_min),
            paths: vec![PathProbe::default(); paths.max(1)],
            probes_sent: 0,
            replies: 0,
            rejected: BTreeMap::new(),
            verdicts_silent: 0,
            verdicts_lapsed: 0,
            false_verdicts: 0,
            gaps: [0; GAP_BUCKETS + 1],
            fast_rounds: 0,
            window_start: 0,
            cur_max: 0,
            prev_max: 0,
            cur_lost: 0,
            cur_rounds: 0,
            prev_lost: 0,
            prev_rounds: 0,
            rtt: [0; RTT_BUCKETS],
            rtt_max: Duration::ZERO,
            peer: None,
            last_verdict: None,
            s,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.s
    }

    /// The last round sent (0: none yet).
    pub fn rounds_sent(&self) -> u64 {
        self.seq
    }

    /// Replies accepted, and frames rejected, so far (cheaper than
    /// [`Prober::report`]).
    pub fn replies(&self) -> u64 {
        self.replies
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Starts probing at `now`.
    pub fn start(&mut self, now: Instant) {
        self.next_at.get_or_insert(now);
    }

    /// When [`Prober::tick`] is due.
    pub fn poll_at(&self) -> Option<Instant> {
        self.next_at
    }

    /// Fast rate when this node may have to take over (a backup), else
    /// `idle` (only the paths' state depends on it then).
    pub fn set_rate(&mut self, fast: bool, idle: Duration, now: Instant) {
        self.idle = idle.clamp(self.s.interval, IDLE_INTERVAL_MAX);
        if fast != self.fast {
            self.fast = fast;
            if fast && let Some(t) = &mut self.next_at {
                *t = (*t).min(now + self.s.interval);
            }
        }
    }

    /// The peer was heard otherwise (an advert accepted): `seq`, the
    /// sequence of the advert when it was signed and its tag verified
    /// (`None`: unsigned), whose low bits are the term it announces
    /// ([`auth::seq_term`]); the newest counts ([`auth::announces_newer`]).
    pub fn heard_peer(&mut self, seq: Option<u64>) {
        self.heard = self.seq;
        let Some(seq) = seq else { return };
        if self
            .announced
            .is_none_or(|(last, _)| auth::announces_newer(seq, last))
        {
            self.announced = Some((seq, auth::seq_term(seq)));
        }
    }

    /// The gap maximum over the recent rounds.
    fn recent_max(&self) -> u64 {
        self.cur_max.max(self.prev_max)
    }

    /// `k`: the most consecutive rounds that may go unanswered on every
    /// path before the peer is declared silent. At least `misses_min`, and
    /// half again the longest recent gap plus one (a gap of `g` means the
    /// newest reply came after `g` rounds: `g - 1` missed), raised by false
    /// verdicts, at most `misses_max`.
    pub fn misses(&self) -> u32 {
        u32::try_from(self.wanted().min(u64::from(self.s.misses_max))).unwrap_or(u32::MAX)
    }

    /// The `k` the recent gaps, the loss rate and false verdicts call for,
    /// uncapped.
    fn wanted(&self) -> u64 {
        let g = self.recent_max();
        g.saturating_add(g / 2)
            .saturating_add(1)
            .max(self.loss_k())
            .max(u64::from(self.s.misses_min))
            .max(self.k_floor)
    }

    /// The recent fraction of rounds no reply answered (before a later
    /// round's did), with a prior of one in [`LOSS_PRIOR_ROUNDS`].
    pub fn loss_rate(&self) -> f64 {
        let lost = self.cur_lost + self.prev_lost + 1;
        let rounds = self.cur_rounds + self.prev_rounds + LOSS_PRIOR_ROUNDS;
        (lost as f64 / rounds as f64).min(0.999)
    }

    /// The fewest rounds whose all being lost, at the recent loss rate and
    /// taken as independent, is as unlikely as [`FALSE_SILENCE`]: a lossy
    /// path (the simulation's 20 %) needs many more rounds than a clean one
    /// before silence means death (phi-accrual's idea, on loss).
    fn loss_k(&self) -> u64 {
        let k = FALSE_SILENCE.ln() / self.loss_rate().ln();
        // (Less a hair: the prior alone gives exactly 3, not 3.0000001.)
        if k.is_finite() {
            (k - 1e-6).ceil().max(1.0) as u64
        } else {
            u64::MAX
        }
    }

    /// No Silent verdict while the `k` the gaps (or false verdicts) call
    /// for is beyond `misses_max`: capped there, the detector would declare
    /// a peer whose replies merely come late (a soak with both CPUs
    /// saturated measured reply gaps of 29 rounds and false verdicts at the
    /// cap), and past the cap VRRP's own timer is as quick anyway. Lapsed
    /// verdicts (proofs) go on; the hold ends when the recent gaps shrink
    /// (false verdicts raise `k` for good).
    pub fn silent_held(&self) -> bool {
        self.wanted() > u64::from(self.s.misses_max)
    }

    /// Sends a round of probes when due (into `out`); first, whether the
    /// rounds sent so far make the peer silent.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Probe>) -> Option<Verdict> {
        let at = self.next_at?;
        if now < at {
            return None;
        }
        let verdict = self.check_silent();
        if let Some(v) = verdict {
            self.note_verdict(v, now);
        }
        self.seq += 1;
        let t = tag(&self.s.key, &self.s.session, self.seq);
        self.sent[(self.seq % WINDOW) as usize] = (t, now);
        if self.fast {
            self.fast_rounds += 1;
            if self.fast_rounds - self.window_start >= RECENT_ROUNDS {
                self.window_start = self.fast_rounds;
                self.prev_max = std::mem::take(&mut self.cur_max);
                self.prev_lost = std::mem::take(&mut self.cur_lost);
                self.prev_rounds = std::mem::take(&mut self.cur_rounds);
            }
        }
        for (i, p) in self.paths.iter_mut().enumerate() {
            let mut frame = [0; WIRE_LEN];
            frame[..4].copy_from_slice(&MAGIC);
            frame[4] = VERSION;
            frame[OFF_KIND] = KIND_PROBE;
            frame[OFF_PATH] = u8::try_from(i).unwrap_or(u8::MAX);
            frame[OFF_FROM..OFF_FROM + 4].copy_from_slice(&self.s.local.octets());
            frame[OFF_TO..OFF_TO + 4].copy_from_slice(&self.s.peer.octets());
            frame[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&self.seq.to_be_bytes());
            frame[OFF_TAG..OFF_TAG + 16].copy_from_slice(&t);
            if self.seq.saturating_sub(p.replied) > FORGET_MAC {
                p.mac = None;
            }
            out.push(Probe {
                path: i,
                dst: p.mac,
                frame,
            });
            self.probes_sent += 1;
        }
        let interval = if self.fast {
            self.s.interval
        } else {
            self.idle
        };
        // Never a burst to catch up after a stall: one round, then the rate.
        let next = at + interval;
        self.next_at = Some(if next <= now { now + interval } else { next });
        verdict
    }

    fn check_silent(&mut self) -> Option<Verdict> {
        if !self.fast || !self.armed || !self.peer_owned || self.silent_held() {
            return None;
        }
        let unanswered = self.seq - self.replied.max(self.heard);
        if unanswered < u64::from(self.misses()) {
            return None;
        }
        self.armed = false;
        self.suspect = true;
        self.verdicts_silent += 1;
        Some(Verdict::Silent)
    }

    fn reject(&mut self, r: Rejected) -> Result<Option<Verdict>, Rejected> {
        *self.rejected.entry(r).or_default() += 1;
        Err(r)
    }

    /// A frame received over `path` from `src` (the Ethernet source), as the
    /// socket gives it: the probe header onwards. Anything is possible
    /// here. `Ok(Some(_))`: take over now.
    pub fn on_frame(
        &mut self,
        path: usize,
        src: [u8; 6],
        bytes: &[u8],
        now: Instant,
    ) -> Result<Option<Verdict>, Rejected> {
        if bytes.len() < WIRE_LEN
            || bytes[..4] != MAGIC
            || bytes[4] != VERSION
            || bytes[OFF_KIND] != KIND_REPLY
        {
            return self.reject(Rejected::Malformed);
        }
        if field::<4>(bytes, OFF_FROM) != self.s.local.octets()
            || field::<4>(bytes, OFF_TO) != self.s.peer.octets()
        {
            return self.reject(Rejected::NotOurs);
        }
        let seq = u64::from_be_bytes(field(bytes, OFF_SEQ));
        if seq == 0 || seq > self.seq || seq + WINDOW <= self.seq {
            return self.reject(Rejected::UnknownSeq);
        }
        let (sent_tag, sent_at) = self.sent[(seq % WINDOW) as usize];
        if !same(&sent_tag, &field(bytes, OFF_TAG)) {
            return self.reject(Rejected::BadTag);
        }
        let groups = u64::from_be_bytes(field(bytes, OFF_GROUPS));
        let lease_left = Duration::from_nanos(u64::from_be_bytes(field(bytes, OFF_LEASE)));
        let term = u64::from_be_bytes(field(bytes, OFF_TERM));
        let proof: [u8; 16] = field(bytes, OFF_PROOF);
        let ended = proof != [0; 16];
        if ended && !same(&proof, &term_proof(&self.s.key, self.s.peer, term)) {
            return self.reject(Rejected::BadProof);
        }
        // A genuine reply.
        self.replies += 1;
        let rtt = now.saturating_sub(sent_at);
        self.rtt_max = self.rtt_max.max(rtt);
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        let bucket = (64 - us.leading_zeros()) as usize;
        self.rtt[bucket.min(RTT_BUCKETS - 1)] += 1;
        // Every reply's round trip, in rounds sent from its probe's on
        // (at the idle rate too: a master that steps down keeps it),
        // bounds `k` from below too, not only the gaps between the
        // newest replies: the first reply has no previous one, and a
        // late reply overtaken by a quicker one (jitter, another path)
        // is no gap. Without it `k` stays at `misses_min` until gaps
        // show the round trip, and a round trip longer than that many
        // rounds reads as silence (found by the simulation).
        self.cur_max = self.cur_max.max(self.seq - seq + 1);
        if seq > self.replied {
            if self.fast && self.replied > 0 {
                let gap = self.seq - self.replied;
                self.gaps[usize::try_from(gap).unwrap_or(GAP_BUCKETS).min(GAP_BUCKETS)] += 1;
                self.cur_max = self.cur_max.max(gap);
                self.cur_lost += seq - self.replied - 1;
                self.cur_rounds += seq - self.replied;
            }
            self.replied = seq;
        }
        if let Some(p) = self.paths.get_mut(path) {
            p.mac = Some(src);
            p.replied = p.replied.max(seq);
        }
        self.peer = Some(PeerView {
            groups,
            lease_left,
            term,
            at: now,
        });
        let owning = groups != 0 && !lease_left.is_zero();
        if owning {
            self.alive_term = self.alive_term.max(term);
            if std::mem::take(&mut self.suspect) {
                // We took over from a peer that was there: wait longer
                // before the next verdict.
                self.false_verdicts += 1;
                self.k_floor = self.wanted().saturating_mul(2);
            }
            self.peer_owned = true;
            self.armed = true;
            return Ok(None);
        }
        self.peer_owned = false;
        if !self.fast {
            // Nothing of ours to take over (we are master): the peer just
            // stepped down, or its lease lapsed while we own the VIPs.
            self.armed = false;
            return Ok(None);
        }
        if ended && self.armed && self.alive_term != 0 && term >= self.alive_term {
            // Only the term the peer's signed adverts announce can end: an
            // older one's proof, revealed when it ended and replayed (with a
            // current tag, by a host that sees the probes) before a reply
            // showed the newer term alive, proves nothing. The peer's new
            // term is announced from its first advert, and we are a backup
            // only by its adverts; so the proof of a term that ended is
            // taken only while no advert of a newer term has come (a race
            // with the new term that VRRP settles). Without signed adverts,
            // no Lapsed verdict: Silent and VRRP's timer remain.
            if self.announced.map(|(_, t)| t) != Some(term as u16) {
                self.proofs_unannounced += 1;
                return Ok(None);
            }
            self.armed = false;
            self.verdicts_lapsed += 1;
            self.note_verdict(Verdict::Lapsed, now);
            return Ok(Some(Verdict::Lapsed));
        }
        Ok(None)
    }

    fn note_verdict(&mut self, v: Verdict, now: Instant) {
        let silence = self
            .peer
            .map_or(Duration::ZERO, |p| now.saturating_sub(p.at));
        self.last_verdict = Some((v, silence));
    }

    /// The last verdict and the peer's silence then.
    pub fn last_verdict(&self) -> Option<(Verdict, Duration)> {
        self.last_verdict
    }

    pub fn report(&self) -> Report {
        Report {
            interval: self.s.interval,
            fast: self.fast,
            misses: self.misses(),
            silent_held: self.silent_held(),
            misses_min: self.s.misses_min,
            misses_max: self.s.misses_max,
            probes_sent: self.probes_sent,
            replies: self.replies,
            rejected: self.rejected.clone(),
            verdicts_silent: self.verdicts_silent,
            verdicts_lapsed: self.verdicts_lapsed,
            false_verdicts: self.false_verdicts,
            gaps: self.gaps,
            gap_max_recent: self.recent_max(),
            rtt: self.rtt,
            rtt_max: self.rtt_max,
            peer: self.peer,
            last_verdict: self.last_verdict,
            term_announced: self.announced.map(|(_, t)| t),
            proofs_unannounced: self.proofs_unannounced,
        }
    }
}

/// What the peer's XDP would answer to `probe` (a frame from
/// [`Prober::tick`]): the simulation's reflector and the tests'. `None`
/// when it does not answer.
pub fn reflect(
    probe: &[u8; WIRE_LEN],
    cfg: &ha_common::heartbeat::ProbeConfig,
    term: &ha_common::heartbeat::ProbeTerm,
    own: &ha_common::data::Ownership,
    now_ns: u64,
) -> Option<[u8; WIRE_LEN]> {
    use ha_common::heartbeat::ProbeWire;
    let b = probe;
    let w = ProbeWire {
        magic: field(b, 0),
        version: b[4],
        kind: b[OFF_KIND],
        path: b[OFF_PATH],
        _reserved: b[7],
        from: field(b, OFF_FROM),
        to: field(b, OFF_TO),
        seq: field(b, OFF_SEQ),
        tag: field(b, OFF_TAG),
        groups: field(b, OFF_GROUPS),
        lease_left_ns: field(b, OFF_LEASE),
        term: field(b, OFF_TERM),
        proof: field(b, OFF_PROOF),
    };
    let r = ha_common::heartbeat::reflect(&w, cfg, term, own, now_ns).ok()?;
    let mut out = *b;
    out[OFF_KIND] = r.kind;
    out[OFF_GROUPS..OFF_GROUPS + 8].copy_from_slice(&r.groups);
    out[OFF_LEASE..OFF_LEASE + 8].copy_from_slice(&r.lease_left_ns);
    out[OFF_TERM..OFF_TERM + 8].copy_from_slice(&r.term);
    out[OFF_PROOF..OFF_PROOF + 16].copy_from_slice(&r.proof);
    Some(out)
}

#[cfg(test)]
mod tests;
