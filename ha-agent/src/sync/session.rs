//! The reliable, authenticated sync channel between two nodes, sans-IO: like
//! conntrackd's FTFW, frames carry sequence numbers, the receiver answers
//! with cumulative ACKs, the sender resends what stays unacknowledged, and
//! queues are bounded (with counters). On top: replay protection (epochs,
//! addressing, a sliding window) and a bulk resync after which the receiver
//! is "in sync".
//!
//! Records are delivered in sequence order (a frame that arrives early waits
//! in a bounded reorder buffer), so updates of one flow are never applied out
//! of order.
//!
//! # Epochs and replay
//!
//! Each start of a node has a new epoch (see `driver::next_epoch`), and every
//! frame names both the sender's epoch and the receiver's epoch it was made
//! for (`to_epoch`), both authenticated. Why both: the sender's epoch and
//! sequence make a frame unique, but a receiver that restarted has forgotten
//! which sequences it saw; because the frame also names the receiver's
//! epoch, anything recorded before that restart is refused outright
//! ([`FrameError::NotAddressed`]) instead of setting the new window.
//!
//! Only a `Hello` is accepted when not addressed to us, and it carries no
//! records and changes nothing but whom we answer: we reply with a Hello
//! addressed to the epoch it names. A frame addressed to our current epoch
//! was made during our current life, so:
//! - from a peer epoch newer than any we accepted in this life, it switches
//!   the session to that epoch (what we had queued for the old one is
//!   dropped: the new instance gets a bulk), and we send an `Open`, the first
//!   sequenced frame to that epoch: it opens the receiver's window at its
//!   sequence (nothing earlier can be addressed there) and asks for a bulk;
//! - from the current peer epoch, it is sequenced as usual (window, replay);
//! - from an epoch not newer than one we accepted (a peer whose epoch file
//!   was lost and whose clock is behind), only a Hello that echoes a Hello we
//!   sent to that epoch after we first heard of it (its `ack`, checked against
//!   what we sent) is accepted: proof that the peer is alive now, which no
//!   recording can give. A node remembers nothing of its peer across its own
//!   restarts, so a lower epoch never shuts a peer out for longer than one
//!   round trip.
//!
//! ACKs are checked against what we sent: an acknowledgement of a sequence
//! never sent is refused ([`FrameError::BadAck`]) and drops nothing.
//!
//! # A dead peer
//!
//! Each unacknowledged frame is resent with exponential backoff (`rto`
//! doubling up to `max_rto`), at most `max_resends_per_poll` per poll. After
//! `down_after` consecutive timeouts without progress the peer is declared
//! down: not in sync, no new frames, and only the oldest frame is resent,
//! once per `max_rto` (a probe). Records that do not fit the bounded queues
//! meanwhile are dropped and counted, and when the peer acknowledges again it
//! is owed a bulk ([`Received::resync_requested`]) and we ask it for one.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    time::Duration,
};

use super::{
    frame::{Crypto, FrameError, Header, Kind, MAX_RECORDS, fitting, peek_header},
    record::Record,
};

/// Monotonic time since an arbitrary origin.
pub type Instant = Duration;

/// Sequence numbers accepted ahead of the next expected one. The reorder
/// buffer (and what one datagram can release from it) is bounded by this
/// many frames of [`MAX_RECORDS`] records.
pub const WINDOW: u64 = 8192;
/// The `seq` field of an Ack or Hello frame has this bit set: they take no
/// sequence number, but each needs a nonce of its own.
const UNSEQ_BIT: u64 = 1 << 63;

/// Tunables.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Resend a frame not acknowledged after this long (the first time;
    /// then twice as long each time, up to `max_rto`).
    pub rto: Duration,
    /// The longest backoff, and the probe interval toward a peer that is down.
    pub max_rto: Duration,
    /// Consecutive timeouts of the oldest frame, without any acknowledgement,
    /// after which the peer is declared down.
    pub down_after: u32,
    /// Resends per poll at most (the rest wait for the next poll).
    pub max_resends_per_poll: usize,
    /// Frames kept for resending at most; beyond, new records wait (pending)
    /// and then are dropped (counted), and the peer will need a resync.
    pub max_unacked: usize,
    /// Longest a record waits for a frame to fill up. Zero by default:
    /// what is pending goes with the next poll, so at idle a record is not
    /// held back, and under load frames fill by themselves with what came
    /// while the last ones were being sent (batching under load, not at
    /// idle).
    pub flush_after: Duration,
    /// Records waiting for a frame at most; beyond, they are dropped
    /// (counted). The bulk resync being sent is not bounded by it.
    pub max_pending: usize,
    /// Frames in flight at most while a bulk is fed in: the peer applies
    /// what it receives before acknowledging, so more in flight would only
    /// queue at the peer (and, beyond the timeout, be resent).
    pub bulk_window: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            rto: Duration::from_millis(20),
            max_rto: Duration::from_secs(1),
            down_after: 5,
            max_resends_per_poll: 64,
            max_unacked: 4096,
            flush_after: Duration::ZERO,
            max_pending: 65_536,
            bulk_window: 64,
        }
    }
}

/// Counters of a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub frames_sent: u64,
    pub frames_resent: u64,
    pub records_sent: u64,
    pub records_received: u64,
    /// Records dropped because a queue was full (or the peer restarted
    /// before acknowledging them): the peer needs a resync.
    pub records_dropped: u64,
    /// Bulk resyncs sent whole (ended by `ResyncDone`), and those that lost
    /// a live record on the way (no `ResyncDone`: another bulk follows).
    pub bulks_completed: u64,
    pub bulks_incomplete: u64,
    /// Times we told the peer it is out of sync (`Incomplete`).
    pub incomplete_sent: u64,
    /// Bulks replaced by a newer one before they ended.
    pub bulks_superseded: u64,
    /// A bulk's records not sent because a live record of the same flow
    /// went first.
    pub bulk_superseded_records: u64,
    /// Times the peer was declared down (no acknowledgement for
    /// `down_after` timeouts).
    pub peer_down: u64,
    /// Rejected datagrams by reason.
    pub rejected: BTreeMap<FrameError, u64>,
}

/// What the I/O layer must act on after a received datagram.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Received {
    /// Records to apply, in order.
    pub records: Vec<Record>,
    /// The peer needs everything (it joined, restarted, asked, or we dropped
    /// records it should have had): dump the state with
    /// [`Session::queue_bulk`].
    pub resync_requested: bool,
    /// The bulk resync we asked for is complete.
    pub in_sync: bool,
    /// The peer dropped records we should have had: out of sync until its
    /// next bulk completes.
    pub out_of_sync: bool,
}

/// A bulk resync being sent: fed into frames as the window drains, so a
/// table of any size goes whole (nothing is dropped for want of room).
#[derive(Debug)]
struct Bulk {
    /// The table as dumped, not framed yet.
    queue: VecDeque<Record>,
    /// Flows a live record was queued for since the dump: newer than the
    /// dump's copy, which is then not sent (it would overwrite the newer
    /// state at the peer, or bring a deleted flow back).
    touched: HashSet<FlowId>,
    /// Nothing was dropped since it began.
    whole: bool,
    /// Still being dumped (elsewhere): nothing to frame yet, and not done.
    dumping: bool,
    /// Which [`Session::begin_bulk`] this is.
    id: BulkId,
}

/// One bulk resync, from [`Session::begin_bulk`] to [`Session::end_bulk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkId(u64);

/// A connection's identity: its original tuple.
type FlowId = (u8, std::net::IpAddr, std::net::IpAddr, u16, u16);

fn flow_id(r: &Record) -> FlowId {
    (r.proto, r.orig_src, r.orig_dst, r.orig_sport, r.orig_dport)
}

/// A sent frame waiting for its acknowledgement.
#[derive(Debug)]
struct Unacked {
    seq: u64,
    datagram: Vec<u8>,
    /// Records in it (counted as dropped if the peer never gets them).
    records: usize,
    /// When last sent, and the current timeout.
    sent: Instant,
    rto: Duration,
    /// Sent more than once (its acknowledgement times no round trip).
    resent: bool,
    /// The event time of its oldest record (or when it was sent).
    origin: Instant,
}

/// One end of the channel.
#[derive(Debug)]
pub struct Session {
    crypto: Crypto,
    settings: Settings,
    /// Our identity and epoch.
    me: u32,
    epoch: u64,
    /// The only sender we accept.
    peer: u32,
    /// Next sequence number we send (Open, Data, Resync, ResyncDone: the
    /// reliable frames).
    next_seq: u64,
    /// Counter of Ack and Hello frames sent (their nonces, with the top bit).
    unseq_sent: u64,
    unacked: VecDeque<Unacked>,
    /// Records waiting to fill a frame, since when, and the origin (event
    /// time) of the oldest.
    pending: Vec<Record>,
    pending_since: Option<Instant>,
    pending_origin: Option<Instant>,
    /// Origins of frames acknowledged since [`Session::take_acked`].
    acked: Vec<Instant>,
    /// Kinds of control frames to send with the next poll.
    control: VecDeque<Kind>,
    /// The peer's epoch we talk to: what our frames are addressed to, and the
    /// only one whose sequenced frames we accept.
    peer_epoch: Option<u64>,
    /// The highest peer epoch accepted in this life: an epoch not above it
    /// needs proof of freshness (a Hello echoing ours).
    max_peer_epoch: u64,
    /// Our Open to `peer_epoch` is still to be sent (before anything else).
    open_due: bool,
    /// Receive window: the next sequence expected, once the peer's Open came.
    next_expected: Option<u64>,
    reorder: BTreeMap<u64, (Kind, Vec<Record>)>,
    /// An ACK is owed to the peer.
    ack_due: bool,
    /// A Hello is owed (an answer to the peer's), addressed to `hello_to`.
    hello_due: bool,
    hello_to: u64,
    /// When we last sent a Hello, and the probe interval (backoff) while we
    /// know no peer epoch.
    hello_sent: Option<Instant>,
    hello_every: Duration,
    /// A lower (or not newer) peer epoch we are checking: it, and the first
    /// Hello counter value we addressed to it.
    challenge: Option<(u64, u64)>,
    /// The peer's last Hello addressed to us: its epoch and counter (echoed in
    /// our Hellos' `ack`).
    echo: Option<(u64, u64)>,
    /// We asked for a bulk resync and have not received its end yet.
    awaiting_resync: bool,
    /// The peer's bulk resync completed (and nothing was lost since).
    in_sync: bool,
    /// The peer epoch we already owe or sent a bulk for.
    bulk_for_epoch: Option<u64>,
    /// Consecutive timeouts of the oldest frame without progress, and whether
    /// the peer is declared down.
    timeouts: u32,
    peer_down: bool,
    /// Records were dropped since the peer last had everything: it is owed a
    /// bulk when it acknowledges again.
    owe_bulk: bool,
    /// Bulks begun (the last one's [`BulkId`]).
    bulks_begun: u64,
    /// The round trip to the peer's acknowledgement (RFC 6298's smoothed
    /// estimate and variation), which sets the timeout of new frames: a
    /// peer applying a bulk acknowledges later than the base timeout, and
    /// resending what it has not applied yet only adds to its work.
    srtt: Option<Duration>,
    rttvar: Duration,
    /// The timeout backed off by a resend, kept for new frames until a
    /// round trip is measured again (Karn: a resent frame's acknowledgement
    /// measures nothing, so without it a peer slower than the timeout would
    /// see everything resent forever).
    rto_backoff: Duration,
    /// When the newest frame acknowledged since the last poll was sent
    /// (sent once): its round trip is measured at the next poll.
    rtt_sample: Option<Instant>,
    /// The peer was told so (`Incomplete`) since its last complete bulk.
    told_incomplete: bool,
    /// The bulk resync being sent, if any.
    bulk: Option<Bulk>,
    pub counters: Counters,
}

impl Session {
    /// A session of node `me` in `epoch` (see `driver::next_epoch`) with `peer`.
    pub fn new(key: &[u8; 32], me: u32, epoch: u64, peer: u32, settings: Settings) -> Self {
        Session {
            crypto: Crypto::new(key),
            settings,
            me,
            epoch,
            peer,
            next_seq: 1,
            unseq_sent: 0,
            unacked: VecDeque::new(),
            pending: Vec::new(),
            pending_since: None,
            pending_origin: None,
            acked: Vec::new(),
            control: VecDeque::new(),
            peer_epoch: None,
            max_peer_epoch: 0,
            open_due: false,
            next_expected: None,
            reorder: BTreeMap::new(),
            ack_due: false,
            hello_due: false,
            hello_to: 0,
            hello_sent: None,
            hello_every: settings.rto,
            challenge: None,
            echo: None,
            // Until the peer's bulk arrives we are not in sync; the Open we
            // send when we find the peer asks for it.
            awaiting_resync: true,
            in_sync: false,
            bulk_for_epoch: None,
            timeouts: 0,
            peer_down: false,
            owe_bulk: false,
            bulks_begun: 0,
            srtt: None,
            rttvar: Duration::ZERO,
            rto_backoff: Duration::ZERO,
            rtt_sample: None,
            told_incomplete: false,
            bulk: None,
            counters: Counters::default(),
        }
    }

    /// Whether a bulk resync from the peer completed (and the peer is not down).
    pub fn in_sync(&self) -> bool {
        self.in_sync
    }

    /// Whether the peer stopped acknowledging (see the module docs).
    pub fn peer_down(&self) -> bool {
        self.peer_down
    }

    /// Frames sent and not yet acknowledged (queue depth).
    pub fn queue_depth(&self) -> usize {
        self.unacked.len()
    }

    /// Asks the peer for a bulk resync. Idempotent while one is outstanding;
    /// before the peer is found, the Open we send then asks for it.
    pub fn request_resync(&mut self) {
        self.in_sync = false;
        if !self.awaiting_resync {
            self.awaiting_resync = true;
            if self.peer_epoch.is_some() && !self.open_due {
                self.control.push_back(Kind::Resync);
            }
        }
    }

    /// Asks the peer for a full bulk resync now, even if it sent one for
    /// this epoch already (an operator's `resync`). Until it completes, we
    /// are not in sync.
    pub fn force_resync(&mut self) {
        self.in_sync = false;
        self.awaiting_resync = true;
        if self.peer_epoch.is_some() && !self.open_due {
            self.control.push_back(Kind::Resync);
        }
    }

    /// Sends an acknowledgement with the next poll even if nothing is owed:
    /// a heartbeat, so each side knows the other is there when idle.
    pub fn keepalive(&mut self) {
        self.ack_due = true;
    }

    /// Records waiting for a frame (a bulk's not framed yet included).
    pub fn pending(&self) -> usize {
        self.pending.len() + self.bulk_left()
    }

    /// Records of the bulk being sent not framed yet.
    pub fn bulk_left(&self) -> usize {
        self.bulk.as_ref().map_or(0, |b| b.queue.len())
    }

    /// Whether a bulk resync is being sent.
    pub fn bulk_in_progress(&self) -> bool {
        self.bulk.is_some()
    }

    /// Whether a bulk resync is begun and its table not dumped yet.
    pub fn bulk_dumping(&self) -> bool {
        self.bulk.as_ref().is_some_and(|b| b.dumping)
    }

    /// Queues one record; frames go out from [`Session::poll`].
    pub fn push(&mut self, now: Instant, record: Record) {
        self.push_from(now, now, record);
    }

    /// Queues one record that stands for an event at `origin` (for the lag:
    /// see [`Session::take_acked`]).
    pub fn push_from(&mut self, now: Instant, origin: Instant, record: Record) {
        if self.pending.len() >= self.settings.max_pending {
            self.dropped();
            return;
        }
        if let Some(b) = &mut self.bulk {
            b.touched.insert(flow_id(&record));
        }
        self.pend(now, origin, record);
    }

    fn pend(&mut self, now: Instant, origin: Instant, record: Record) {
        self.pending.push(record);
        self.pending_since.get_or_insert(now);
        self.pending_origin = Some(self.pending_origin.map_or(origin, |o| o.min(origin)));
    }

    /// A record the peer should have had is lost: it is told it is out of
    /// sync (once until its next complete bulk), and owed a bulk (after the
    /// one being sent, which now ends without ResyncDone: owing the next at
    /// once would restart it at every loss and never finish).
    fn dropped(&mut self) {
        self.counters.records_dropped += 1;
        match &mut self.bulk {
            Some(b) => b.whole = false,
            None => self.owe_bulk = true,
        }
        if !self.told_incomplete {
            self.told_incomplete = true;
            self.counters.incomplete_sent += 1;
            self.control.push_back(Kind::Incomplete);
        }
    }

    /// The origins of the oldest record of each frame the peer acknowledged
    /// since the last call: `now - origin` is how long an event took to be
    /// applied there (the peer acknowledges after applying).
    pub fn take_acked(&mut self) -> Vec<Instant> {
        std::mem::take(&mut self.acked)
    }

    /// Queues a whole table (answer to a resync request) dumped now:
    /// [`Session::begin_bulk`], [`Session::extend_bulk`] and
    /// [`Session::end_bulk`] at once.
    pub fn queue_bulk(&mut self, records: impl IntoIterator<Item = Record>) {
        let id = self.begin_bulk();
        self.extend_bulk(id, records);
        self.end_bulk(id);
    }

    /// Begins a bulk resync, before its table is dumped (which takes
    /// seconds for a million flows, on another thread): from now on, a live
    /// record queued for a flow makes the dump's copy of it void (the dump
    /// may have read the flow before that record's change). A bulk still
    /// being sent is superseded (this dump is newer than all it held).
    pub fn begin_bulk(&mut self) -> BulkId {
        if self.bulk.take().is_some() {
            self.counters.bulks_superseded += 1;
        }
        self.control.retain(|k| *k != Kind::ResyncDone);
        self.owe_bulk = false;
        self.bulks_begun += 1;
        let id = BulkId(self.bulks_begun);
        self.bulk = Some(Bulk {
            queue: VecDeque::new(),
            touched: HashSet::new(),
            whole: true,
            dumping: true,
            id,
        });
        id
    }

    /// More of bulk `id`'s table, as the dump reads it: [`Session::poll`]
    /// frames it as the window drains. Live records go on meanwhile, ahead
    /// of what is left of the table; the table's copy of a flow a live
    /// record was queued for since the bulk began is not sent. Records for
    /// a bulk no longer current (superseded, or void with the peer's
    /// restart) or already ended are dropped: returns whether they were
    /// taken.
    pub fn extend_bulk(&mut self, id: BulkId, records: impl IntoIterator<Item = Record>) -> bool {
        match &mut self.bulk {
            Some(b) if b.id == id && b.dumping => {
                b.queue.extend(records);
                true
            }
            _ => false,
        }
    }

    /// Bulk `id`'s table is all read: once it went, `ResyncDone` follows
    /// if nothing was dropped meanwhile (otherwise no `ResyncDone`, and
    /// another bulk is owed: the peer stays out of sync).
    pub fn end_bulk(&mut self, id: BulkId) -> bool {
        match &mut self.bulk {
            Some(b) if b.id == id && b.dumping => {
                b.dumping = false;
                true
            }
            _ => false,
        }
    }

    /// Bulk `id` could not be dumped: it ends incomplete (the peer stays
    /// out of sync) and another is owed.
    pub fn fail_bulk(&mut self, id: BulkId) {
        if self.bulk.as_ref().is_some_and(|b| b.id == id) {
            self.bulk = None;
            self.counters.bulks_incomplete += 1;
            self.owe_bulk = true;
        }
    }

    /// Moves bulk records into `pending` as far as frames can go out now
    /// (so live records always find room); at the bulk's end,
    /// `ResyncDone` if it went whole, else another bulk is owed.
    fn feed_bulk(&mut self, now: Instant) {
        let Some(b) = &mut self.bulk else { return };
        let room = self
            .settings
            .max_unacked
            .min(self.settings.bulk_window)
            .saturating_sub(self.unacked.len())
            .saturating_mul(MAX_RECORDS)
            .min(self.settings.max_pending / 2);
        let mut moved = Vec::new();
        while self.pending.len() + moved.len() < room
            && let Some(r) = b.queue.pop_front()
        {
            if b.touched.contains(&flow_id(&r)) {
                self.counters.bulk_superseded_records += 1;
            } else {
                moved.push(r);
            }
        }
        let done = !b.dumping && b.queue.is_empty();
        let whole = b.whole;
        for r in moved {
            self.pend(now, now, r);
        }
        if done {
            self.bulk = None;
            if whole {
                self.counters.bulks_completed += 1;
                self.told_incomplete = false;
                self.control.push_back(Kind::ResyncDone);
            } else {
                self.counters.bulks_incomplete += 1;
                self.owe_bulk = true;
            }
        }
    }

    /// The timeout of a frame sent now: the base until a round trip was
    /// measured, then srtt + 4 rttvar within [base, max_rto].
    fn rto(&self) -> Duration {
        self.srtt
            .map_or(self.settings.rto, |srtt| srtt + 4 * self.rttvar)
            .max(self.rto_backoff)
            .clamp(self.settings.rto, self.settings.max_rto)
    }

    /// A round trip measured (RFC 6298, 2.2 and 2.3).
    fn rtt_measured(&mut self, r: Duration) {
        self.rto_backoff = Duration::ZERO;
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + r) / 8);
            }
        }
    }

    fn ack_field(&self) -> u64 {
        self.next_expected.map_or(0, |n| n - 1)
    }

    fn send_reliable(
        &mut self,
        now: Instant,
        kind: Kind,
        records: &[Record],
        out: &mut Vec<Vec<u8>>,
    ) {
        let Some(to_epoch) = self.peer_epoch else {
            return;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let h = Header {
            kind,
            sender: self.me,
            epoch: self.epoch,
            seq,
            ack: self.ack_field(),
            to_epoch,
        };
        let d = self.crypto.seal(&h, records);
        out.push(d.clone());
        let origin = if records.is_empty() {
            now
        } else {
            self.pending_origin.unwrap_or(now).min(now)
        };
        self.unacked.push_back(Unacked {
            seq,
            datagram: d,
            records: records.len(),
            sent: now,
            rto: self.rto(),
            resent: false,
            origin,
        });
        self.counters.frames_sent += 1;
        self.counters.records_sent += records.len() as u64;
        self.ack_due = false;
    }

    fn send_unsequenced(&mut self, kind: Kind, ack: u64, to_epoch: u64) -> Vec<u8> {
        self.unseq_sent += 1;
        self.crypto.seal(
            &Header {
                kind,
                sender: self.me,
                epoch: self.epoch,
                seq: UNSEQ_BIT | self.unseq_sent,
                ack,
                to_epoch,
            },
            &[],
        )
    }

    /// Datagrams to send now: Hellos, our Open, full frames, a partial frame
    /// that waited long enough, control frames, resends (bounded, with
    /// backoff), and an ACK if one is owed.
    pub fn poll(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if let Some(sent) = self.rtt_sample.take() {
            self.rtt_measured(now.saturating_sub(sent));
        }
        self.poll_hello(now, &mut out);
        if self.open_due && self.peer_epoch.is_some() {
            self.open_due = false;
            self.send_reliable(now, Kind::Open, &[], &mut out);
        }
        let connected = self.peer_epoch.is_some() && !self.peer_down;
        if connected {
            self.feed_bulk(now);
        }
        let flush = self
            .pending_since
            .is_some_and(|t| now.saturating_sub(t) >= self.settings.flush_after);
        while connected && self.unacked.len() < self.settings.max_unacked {
            // As many as fit a frame (44 IPv4 records, 17 IPv6, or a mix).
            let (take, full) = fitting(self.pending.iter().copied());
            if take == 0 || !(full || flush) {
                break;
            }
            let batch: Vec<Record> = self.pending.drain(..take).collect();
            self.send_reliable(now, Kind::Data, &batch, &mut out);
            // The rest are at most as old as now (origins are not kept per
            // record).
            self.pending_origin = (!self.pending.is_empty()).then_some(now);
        }
        if self.pending.is_empty() {
            self.pending_since = None;
            self.pending_origin = None;
        }
        // Control frames after the data queued before them (ResyncDone ends a bulk).
        while connected && let Some(kind) = self.control.pop_front() {
            if kind == Kind::ResyncDone && !self.pending.is_empty() {
                self.control.push_front(kind);
                break;
            }
            self.send_reliable(now, kind, &[], &mut out);
        }
        self.resend(now, &mut out);
        if self.ack_due
            && let Some(to_epoch) = self.peer_epoch
        {
            // ACKs are not sequenced (a lost ACK is simply superseded).
            let d = self.send_unsequenced(Kind::Ack, self.ack_field(), to_epoch);
            out.push(d);
        }
        self.ack_due = false;
        out
    }

    /// A Hello owed as an answer, or a probe while we know no peer epoch
    /// (backoff up to `max_rto`); at most one per `rto` either way, so a
    /// flood of (replayed) Hellos is not amplified.
    fn poll_hello(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        let since = self.hello_sent.map(|t| now.saturating_sub(t));
        let probe = self.peer_epoch.is_none() && since.is_none_or(|s| s >= self.hello_every);
        let answer = self.hello_due && since.is_none_or(|s| s >= self.settings.rto);
        if !(probe || answer) {
            return;
        }
        if probe {
            self.hello_every = (self.hello_every * 2).min(self.settings.max_rto);
        }
        self.hello_due = false;
        self.hello_sent = Some(now);
        let to = self.hello_to;
        let echo = match self.echo {
            Some((e, seq)) if e == to => seq,
            _ => 0,
        };
        let d = self.send_unsequenced(Kind::Hello, echo, to);
        out.push(d);
    }

    /// Resends what timed out: each frame with its own backoff, at most
    /// `max_resends_per_poll`; toward a peer that is down, only the oldest
    /// frame, once per `max_rto`.
    fn resend(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        let s = self.settings;
        let Some(front) = self.unacked.front() else {
            return;
        };
        if now.saturating_sub(front.sent) >= front.rto && !self.peer_down {
            self.timeouts += 1;
            if self.timeouts >= s.down_after {
                self.peer_down = true;
                self.in_sync = false;
                self.counters.peer_down += 1;
            }
        }
        if self.peer_down {
            // One probe: the oldest frame, once per `max_rto`.
            if let Some(f) = self.unacked.front_mut()
                && now.saturating_sub(f.sent) >= s.max_rto
            {
                out.push(f.datagram.clone());
                f.sent = now;
                f.resent = true;
                self.counters.frames_resent += 1;
            }
            return;
        }
        let mut sent = 0;
        for f in self.unacked.iter_mut() {
            if sent == s.max_resends_per_poll {
                break;
            }
            if now.saturating_sub(f.sent) >= f.rto {
                out.push(f.datagram.clone());
                f.sent = now;
                f.resent = true;
                f.rto = (f.rto * 2).min(s.max_rto);
                self.rto_backoff = self.rto_backoff.max(f.rto);
                self.counters.frames_resent += 1;
                sent += 1;
            }
        }
    }

    /// When [`Session::poll`] has work next.
    pub fn poll_at(&self) -> Option<Instant> {
        // Pending records are due only if a frame could go out now: with
        // no peer, a peer down or the window full, what changes that is a
        // datagram from the peer (the I/O layer wakes for it), not time.
        let can_send = self.peer_epoch.is_some()
            && !self.peer_down
            && self.unacked.len() < self.settings.max_unacked;
        let flush = self
            .pending_since
            .filter(|_| can_send)
            .map(|t| t + self.settings.flush_after);
        let resend = if self.peer_down {
            self.unacked.front().map(|f| f.sent + self.settings.max_rto)
        } else {
            self.unacked.iter().map(|f| f.sent + f.rto).min()
        };
        let last_hello = self.hello_sent.unwrap_or_default();
        let hello = if self.hello_due {
            Some(last_hello + self.settings.rto)
        } else if self.peer_epoch.is_none() {
            Some(last_hello + self.hello_every)
        } else {
            None
        };
        let now_due = (self.ack_due
            || (self.open_due && self.peer_epoch.is_some())
            || (!self.control.is_empty() && self.peer_epoch.is_some() && !self.peer_down))
            .then_some(Duration::ZERO);
        [flush, resend, hello, now_due].into_iter().flatten().min()
    }

    /// A datagram from the network. Rejections are counted and change nothing.
    pub fn on_datagram(&mut self, bytes: &[u8]) -> Result<Received, FrameError> {
        let result = self.receive(bytes);
        if let Err(e) = result {
            *self.counters.rejected.entry(e).or_default() += 1;
        }
        result
    }

    /// Checks on the clear header that need no key: a datagram that fails
    /// them is refused before the AEAD is run (cheap under a flood). Nothing
    /// here is trusted, it can only refuse.
    fn precheck(&self, h: &Header) -> Result<(), FrameError> {
        if h.sender != self.peer || h.sender == self.me {
            return Err(FrameError::Sender);
        }
        if h.kind == Kind::Hello {
            return Ok(());
        }
        if h.to_epoch != self.epoch {
            return Err(FrameError::NotAddressed);
        }
        match self.peer_epoch {
            Some(e) if h.epoch == e => {
                if h.kind != Kind::Ack
                    && let Some(next) = self.next_expected
                    && h.seq >= next.saturating_add(WINDOW)
                {
                    return Err(FrameError::OutOfWindow);
                }
                Ok(())
            }
            // Not newer than an epoch we accepted: only a Hello can prove it.
            _ if h.epoch <= self.max_peer_epoch => Err(FrameError::OldEpoch),
            _ => Ok(()),
        }
    }

    fn receive(&mut self, bytes: &[u8]) -> Result<Received, FrameError> {
        let clear = peek_header(bytes)?;
        match self.precheck(&clear) {
            Ok(()) => {}
            Err(FrameError::OldEpoch) => {
                // If genuine, the peer restarted with a lower epoch (its
                // epoch file lost, its clock behind) and never heard our
                // Hello: challenge it (rate-limited; a replay gets nothing
                // else).
                if self.crypto.open(bytes).is_ok() {
                    self.answer_hello(clear.epoch);
                }
                return Err(FrameError::OldEpoch);
            }
            Err(e) => return Err(e),
        }
        let (h, records) = self.crypto.open(bytes)?;
        let mut got = Received::default();
        if h.kind == Kind::Hello {
            if !records.is_empty() {
                return Err(FrameError::Malformed);
            }
            self.on_hello(&h)?;
            return Ok(got);
        }
        if h.ack >= self.next_seq {
            return Err(FrameError::BadAck);
        }
        if self.peer_epoch != Some(h.epoch) {
            // Addressed to this life of ours, from a peer epoch newer than
            // any we accepted (precheck): the peer (re)started.
            self.switch_peer(h.epoch);
        }
        self.on_ack(h.ack);
        self.on_alive(&mut got);
        if h.kind == Kind::Ack {
            return Ok(got);
        }
        let next = match self.next_expected {
            Some(next) => next,
            None if h.kind == Kind::Open => {
                // Nothing addressed to this epoch of ours precedes the Open.
                self.next_expected = Some(h.seq);
                h.seq
            }
            None => return Err(FrameError::NotOpen),
        };
        if h.seq < next || self.reorder.contains_key(&h.seq) {
            // A resend of something we had: the peer missed our ACK.
            self.ack_due = true;
            return Err(FrameError::Replay);
        }
        if h.seq >= next.saturating_add(WINDOW) {
            return Err(FrameError::OutOfWindow);
        }
        self.ack_due = true;
        self.reorder.insert(h.seq, (h.kind, records));
        self.deliver_ready(&mut got);
        Ok(got)
    }

    /// A Hello (already authenticated, no records): see the module docs.
    fn on_hello(&mut self, h: &Header) -> Result<(), FrameError> {
        if h.to_epoch != self.epoch {
            // The peer does not know this life of ours (yet), or a replay:
            // tell it who we are, addressed to the epoch it names.
            self.answer_hello(h.epoch);
            return Ok(());
        }
        // Made during this life of ours; its echo must be a Hello we sent.
        if h.ack != 0 && (h.ack & UNSEQ_BIT == 0 || h.ack > (UNSEQ_BIT | self.unseq_sent)) {
            return Err(FrameError::BadAck);
        }
        if self.echo.is_none_or(|(e, seq)| e != h.epoch || seq < h.seq) {
            self.echo = Some((h.epoch, h.seq));
        }
        match self.peer_epoch {
            Some(e) if e == h.epoch => {
                // It has not heard a Hello of ours: answer (it may need the
                // echo to prove a lower epoch).
                if h.ack == 0 {
                    self.answer_hello(h.epoch);
                }
                Ok(())
            }
            _ if h.epoch > self.max_peer_epoch => {
                self.switch_peer(h.epoch);
                Ok(())
            }
            _ => {
                let proven = self
                    .challenge
                    .is_some_and(|(e, floor)| e == h.epoch && h.ack >= floor);
                if proven {
                    self.switch_peer(h.epoch);
                    Ok(())
                } else {
                    self.answer_hello(h.epoch);
                    Err(FrameError::OldEpoch)
                }
            }
        }
    }

    /// Owes a Hello to `epoch` of the peer; if that epoch is one we would
    /// only accept with proof, the Hellos we send it from now on are the
    /// challenge its answer must echo.
    fn answer_hello(&mut self, epoch: u64) {
        self.hello_due = true;
        self.hello_to = epoch;
        if self.peer_epoch != Some(epoch)
            && epoch <= self.max_peer_epoch
            && self.challenge.is_none_or(|(e, _)| e != epoch)
        {
            self.challenge = Some((epoch, UNSEQ_BIT | (self.unseq_sent + 1)));
        }
    }

    /// Talks to `epoch` of the peer from now on: a new instance, which has
    /// none of our state and none of what we sent its predecessor.
    fn switch_peer(&mut self, epoch: u64) {
        self.peer_epoch = Some(epoch);
        self.max_peer_epoch = self.max_peer_epoch.max(epoch);
        self.challenge = None;
        self.hello_to = epoch;
        self.hello_every = self.settings.rto;
        self.next_expected = None;
        self.reorder.clear();
        // Frames addressed to the old instance: the new one refuses them and
        // gets a bulk instead. A bulk in progress for the old one is void.
        self.unacked.clear();
        self.control.clear();
        self.bulk = None;
        self.open_due = true;
        self.timeouts = 0;
        self.peer_down = false;
        self.owe_bulk = false;
        self.told_incomplete = false;
        // Our Open asks the new instance for its table.
        self.in_sync = false;
        self.awaiting_resync = true;
    }

    /// A cumulative acknowledgement (already checked against what we sent).
    fn on_ack(&mut self, ack: u64) {
        while self.unacked.front().is_some_and(|f| f.seq <= ack) {
            if let Some(f) = self.unacked.pop_front() {
                if !f.resent {
                    self.rtt_sample = Some(self.rtt_sample.map_or(f.sent, |t| t.max(f.sent)));
                }
                if f.records > 0 && self.acked.len() < 65_536 {
                    self.acked.push(f.origin);
                }
            }
            // Progress: the timeouts counted are no longer consecutive.
            self.timeouts = 0;
        }
    }

    /// An authenticated frame from the peer's current epoch: it is alive. A
    /// peer that was down is back: resends resume at the base timeout, and
    /// each side is owed a bulk (we may have dropped what it should have
    /// had, and it what we should have).
    fn on_alive(&mut self, got: &mut Received) {
        if self.peer_down {
            self.peer_down = false;
            self.timeouts = 0;
            for f in &mut self.unacked {
                f.rto = self.settings.rto;
            }
            self.request_resync();
        }
        if self.owe_bulk {
            self.owe_bulk = false;
            got.resync_requested = true;
        }
    }

    fn deliver_ready(&mut self, got: &mut Received) {
        let Some(mut next) = self.next_expected else {
            return;
        };
        while let Some((kind, records)) = self.reorder.remove(&next) {
            next += 1;
            match kind {
                Kind::Data => {
                    self.counters.records_received += records.len() as u64;
                    got.records.extend(records);
                }
                Kind::Open => {
                    if self.bulk_for_epoch != self.peer_epoch {
                        got.resync_requested = true;
                        self.bulk_for_epoch = self.peer_epoch;
                    }
                }
                Kind::Resync => got.resync_requested = true,
                Kind::ResyncDone => {
                    if self.awaiting_resync {
                        self.awaiting_resync = false;
                        self.in_sync = true;
                        got.in_sync = true;
                    }
                }
                Kind::Incomplete => {
                    // Records of ours were lost: the bulk it owes us now
                    // ends with the ResyncDone that makes us whole again.
                    self.in_sync = false;
                    self.awaiting_resync = true;
                    got.in_sync = false;
                    got.out_of_sync = true;
                }
                Kind::Ack | Kind::Hello => {}
            }
        }
        self.next_expected = Some(next);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::sync::record::RecordKind;

    const KEY: [u8; 32] = [42; 32];
    const A: u32 = 1;
    const B: u32 = 2;

    fn rec(i: u32) -> Record {
        Record::plain(
            RecordKind::Upsert,
            6,
            2,
            Ipv4Addr::from(0x0a00_0000 + i),
            Ipv4Addr::new(10, 1, 0, 10),
            (i % 60000) as u16,
            80,
        )
    }

    fn pair() -> (Session, Session) {
        (
            Session::new(&KEY, A, 100, B, Settings::default()),
            Session::new(&KEY, B, 200, A, Settings::default()),
        )
    }

    fn ms(v: u64) -> Instant {
        Duration::from_millis(v)
    }

    /// What one side received over a run.
    #[derive(Default, Debug)]
    struct Got {
        records: Vec<Record>,
        resync_requested: bool,
        in_sync: bool,
        out_of_sync: bool,
    }

    impl Got {
        fn add(&mut self, r: Received) {
            self.records.extend(r.records);
            self.resync_requested |= r.resync_requested;
            self.in_sync |= r.in_sync;
            self.out_of_sync |= r.out_of_sync;
        }
    }

    /// Runs both ends from `from` ms for `steps` ms over a link that drops
    /// datagrams where `drop(n)` says; a side asked for a resync answers
    /// with an empty bulk. Returns what `a` and `b` received.
    fn run_from(
        a: &mut Session,
        b: &mut Session,
        mut drop: impl FnMut(u64) -> bool,
        from: u64,
        steps: u64,
    ) -> (Got, Got) {
        let (mut got_a, mut got_b) = (Got::default(), Got::default());
        let mut n = 0;
        for step in from..from + steps {
            let now = ms(step);
            for d in a.poll(now) {
                n += 1;
                if !drop(n)
                    && let Ok(r) = b.on_datagram(&d)
                {
                    if r.resync_requested {
                        b.queue_bulk([]);
                    }
                    got_b.add(r);
                }
            }
            for d in b.poll(now) {
                n += 1;
                if !drop(n)
                    && let Ok(r) = a.on_datagram(&d)
                {
                    if r.resync_requested {
                        a.queue_bulk([]);
                    }
                    got_a.add(r);
                }
            }
        }
        (got_a, got_b)
    }

    fn run(
        a: &mut Session,
        b: &mut Session,
        drop: impl FnMut(u64) -> bool,
        steps: u64,
    ) -> Vec<Record> {
        run_from(a, b, drop, 0, steps).1.records
    }

    /// A connected, in-sync pair.
    fn connected() -> (Session, Session) {
        let (mut a, mut b) = pair();
        run(&mut a, &mut b, |_| false, 20);
        assert!(a.in_sync() && b.in_sync(), "{a:?}\n{b:?}");
        (a, b)
    }

    #[test]
    fn records_that_cannot_go_out_do_not_make_the_poll_due() {
        // No peer yet: records wait, and the next poll is the next Hello,
        // not "now" (the sync loop would wake every 200 us until the peer
        // came).
        let (mut a, _) = pair();
        let _ = a.poll(ms(0));
        a.push(ms(1), rec(1));
        assert!(a.poll_at().is_some_and(|t| t > ms(1)), "{:?}", a.poll_at());
        // Connected, the record is due at once.
        let (mut a, _) = connected();
        a.push(ms(100), rec(2));
        assert!(
            a.poll_at().is_some_and(|t| t <= ms(100)),
            "{:?}",
            a.poll_at()
        );
    }

    #[test]
    fn ipv4_and_ipv6_records_go_in_frames_packed_by_size() {
        let (mut a, mut b) = connected();
        let rec6 = |i: u32| Record {
            orig_src: std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16).into(),
            orig_dst: std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 10).into(),
            reply_src: std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 10).into(),
            reply_dst: std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16).into(),
            ..rec(i)
        };
        let sent: Vec<Record> = (0..300)
            .map(|i| if i % 4 == 0 { rec(i) } else { rec6(i) })
            .collect();
        for r in &sent {
            a.push(ms(100), *r);
        }
        let mut frames = 0;
        let mut got = Vec::new();
        for step in 100..200 {
            for d in a.poll(ms(step)) {
                assert!(
                    d.len() <= crate::sync::frame::MAX_FRAME,
                    "{} bytes",
                    d.len()
                );
                frames += 1;
                if let Ok(r) = b.on_datagram(&d) {
                    got.extend(r.records);
                }
            }
            for d in b.poll(ms(step)) {
                let _ = a.on_datagram(&d);
            }
        }
        assert_eq!(got, sent, "all, in order");
        // 75 IPv4 and 225 IPv6 records: 20,400 bytes, 15 frames of 1,416
        // at best; never one per 17 records as IPv6 alone would need (18).
        assert!((15..25).contains(&frames), "{frames} frames");
    }

    #[test]
    fn records_arrive_in_order_and_are_acknowledged() {
        let (mut a, mut b) = pair();
        for i in 0..1000 {
            a.push(ms(0), rec(i));
        }
        let got = run(&mut a, &mut b, |_| false, 50);
        assert!(
            got == (0..1000).map(rec).collect::<Vec<_>>(),
            "{} records, in order?",
            got.len()
        );
        assert_eq!(a.queue_depth(), 0, "everything acknowledged");
        // 1000 records in 23 frames of up to 44, the Open `a` sent when it
        // found `b`, and the end of the (empty) bulk it owed `b`.
        assert_eq!(a.counters.frames_sent, 23 + 2);
        assert_eq!(a.counters.frames_resent, 0);
        assert!(a.in_sync() && b.in_sync());
    }

    #[test]
    fn loss_is_repaired_by_resending_and_order_is_kept() {
        let (mut a, mut b) = pair();
        for i in 0..5000 {
            a.push(ms(0), rec(i));
        }
        // Drop every 3rd datagram in either direction, deterministically.
        let got = run(&mut a, &mut b, |n| n % 3 == 0, 20000);
        assert!(
            got == (0..5000).map(rec).collect::<Vec<_>>(),
            "{} records, in order?",
            got.len()
        );
        assert_eq!(a.queue_depth(), 0);
        assert!(a.counters.frames_resent > 0);
    }

    #[test]
    fn the_timeout_follows_a_slow_acknowledger_instead_of_resending() {
        // b acknowledges 100 ms after each frame (applying a bulk): after a
        // few round trips a's timeout exceeds it, and nothing is resent.
        let (mut a, mut b) = connected();
        let mut to_a: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut resent_late = 0;
        for step in 30..3_000u64 {
            let now = ms(step);
            if step % 10 == 0 && step < 2_500 {
                for i in 0..44 {
                    a.push(now, rec(step as u32 * 100 + i));
                }
            }
            let before = a.counters.frames_resent;
            for d in a.poll(now) {
                let _ = b.on_datagram(&d);
            }
            if step > 1_000 {
                resent_late += a.counters.frames_resent - before;
            }
            for d in b.poll(now) {
                to_a.push_back((step + 100, d));
            }
            while to_a.front().is_some_and(|(t, _)| *t <= step) {
                let (_, d) = to_a.pop_front().unwrap();
                let _ = a.on_datagram(&d);
            }
        }
        assert!(a.srtt.is_some_and(|r| r >= ms(95)), "{:?}", a.srtt);
        assert_eq!(resent_late, 0, "no resends once the round trip is known");
        assert_eq!(a.queue_depth(), 0);
    }

    #[test]
    fn bounded_queues_drop_and_count() {
        let settings = Settings {
            max_unacked: 4,
            max_pending: 100,
            ..Settings::default()
        };
        let (_, mut b) = connected();
        let mut a = Session::new(&KEY, A, 101, B, settings);
        let _ = run_from(&mut a, &mut b, |_| false, 20, 20);
        assert!(
            a.peer_epoch.is_some() && b.peer_epoch == Some(101),
            "{a:?}\n{b:?}"
        );
        let base = a.counters.records_sent;
        let total = 1000u64;
        for i in 0..total as u32 {
            a.push(ms(30), rec(i));
            if i % 44 == 43 {
                let _ = a.poll(ms(31)); // nothing is ever acknowledged
            }
        }
        assert_eq!(
            a.queue_depth(),
            4 + 1,
            "at most max_unacked data frames in flight, and the Incomplete telling b"
        );
        assert_eq!(a.counters.incomplete_sent, 1, "told once");
        assert_eq!(a.pending(), 100, "at most max_pending records waiting");
        assert_eq!(a.counters.records_sent - base, 4 * MAX_RECORDS as u64);
        assert_eq!(
            a.counters.records_sent - base + a.pending() as u64 + a.counters.records_dropped,
            total
        );
    }

    /// Runs both ends for `steps` ms, `a` answering every resync request
    /// with `table` (and `b` with nothing); `live(step)`: records `a` gets
    /// from its data plane at that step. Returns what `b` received.
    fn run_bulk(
        a: &mut Session,
        b: &mut Session,
        table: &[Record],
        mut live: impl FnMut(u64) -> Vec<Record>,
        from: u64,
        steps: u64,
    ) -> Got {
        let mut got = Got::default();
        for step in from..from + steps {
            let now = ms(step);
            for r in live(step) {
                a.push(now, r);
            }
            for d in a.poll(now) {
                if let Ok(r) = b.on_datagram(&d) {
                    if r.resync_requested {
                        b.queue_bulk([]);
                    }
                    got.add(r);
                }
            }
            for d in b.poll(now) {
                if let Ok(r) = a.on_datagram(&d)
                    && r.resync_requested
                {
                    a.queue_bulk(table.iter().copied());
                }
            }
        }
        got
    }

    fn small_queues() -> Settings {
        Settings {
            max_unacked: 8,
            max_pending: 300,
            ..Settings::default()
        }
    }

    #[test]
    fn a_bulk_far_larger_than_the_queues_arrives_whole() {
        // Found at scale: a bulk went into the pending queue and what did
        // not fit was dropped, yet ResyncDone followed: the peer reported
        // in sync with most of the table missing.
        let table: Vec<Record> = (0..20_000).map(rec).collect();
        let mut a = Session::new(&KEY, A, 100, B, small_queues());
        let mut b = Session::new(&KEY, B, 200, A, small_queues());
        let got = run_bulk(&mut a, &mut b, &table, |_| Vec::new(), 0, 2_000);
        assert!(got.in_sync && b.in_sync(), "{a:?}");
        assert_eq!(got.records, table, "the whole table, in order");
        assert_eq!(a.counters.records_dropped, 0);
        assert_eq!(a.counters.bulks_completed, 1);
        assert!(!a.bulk_in_progress());
        assert!(a.queue_depth() <= small_queues().max_unacked);
    }

    #[test]
    fn live_records_go_on_during_a_bulk_and_a_loss_keeps_the_peer_out_of_sync() {
        let table: Vec<Record> = (0..5_000).map(rec).collect();
        let mut a = Session::new(&KEY, A, 100, B, small_queues());
        let mut b = Session::new(&KEY, B, 200, A, small_queues());
        // While the bulk goes, flow 4,000 (not sent yet) closes and a new
        // flow opens: both go at once, and the dump's older copy of 4,000
        // never follows its delete.
        let closed = Record {
            kind: RecordKind::Delete,
            ..rec(4_000)
        };
        let got = run_bulk(
            &mut a,
            &mut b,
            &table,
            |step| match step {
                5 => vec![closed, rec(1_000_000)],
                _ => Vec::new(),
            },
            0,
            2_000,
        );
        assert!(got.in_sync && b.in_sync());
        let at = |r: &Record| got.records.iter().position(|g| g == r);
        let deleted = at(&closed).expect("the delete went");
        assert!(at(&rec(4_000)).is_none(), "the dump's copy was not sent");
        assert!(
            deleted < at(&rec(4_999)).unwrap(),
            "ahead of the rest of the table"
        );
        assert!(at(&rec(1_000_000)).is_some());
        let sent: Vec<Record> = got
            .records
            .iter()
            .copied()
            .filter(|r| flow_id(r) != flow_id(&closed) && *r != rec(1_000_000))
            .collect();
        assert_eq!(
            sent,
            table
                .iter()
                .copied()
                .filter(|r| *r != rec(4_000))
                .collect::<Vec<_>>()
        );
        assert_eq!(a.counters.bulk_superseded_records, 1);
        // Now a resync with a flood of live records while it goes (more
        // than max_pending at once): records are lost, so that bulk ends
        // without ResyncDone, b hears it is out of sync, and the bulk owed
        // next completes.
        b.force_resync();
        let got = run_bulk(
            &mut a,
            &mut b,
            &table,
            |step| {
                if step == 2_005 {
                    (0..400).map(|i| rec(2_000_000 + i)).collect()
                } else {
                    Vec::new()
                }
            },
            2_000,
            4_000,
        );
        assert!(got.out_of_sync, "b was told");
        assert!(a.counters.records_dropped > 0);
        assert_eq!(a.counters.bulks_incomplete, 1);
        assert_eq!(
            a.counters.bulks_completed, 2,
            "the first, and the one owed after the loss"
        );
        assert!(b.in_sync(), "in sync again once a bulk went whole");
        assert!(got.records.ends_with(&table), "the last bulk, whole");
    }

    #[test]
    fn a_bulk_dumped_elsewhere_voids_flows_touched_while_it_was_dumped() {
        // The dump of a million flows takes seconds on its own thread:
        // records queued meanwhile are newer than what it read, and a
        // table that comes after its bulk was superseded is not sent.
        let table: Vec<Record> = (0..1_000).map(rec).collect();
        let mut a = Session::new(&KEY, A, 100, B, small_queues());
        let mut b = Session::new(&KEY, B, 200, A, small_queues());
        let _ = run_bulk(&mut a, &mut b, &[], |_| Vec::new(), 0, 100);
        assert!(b.in_sync());
        b.force_resync();
        let mut got = Got::default();
        let mut dump = None;
        let closed = Record {
            kind: RecordKind::Delete,
            ..rec(500)
        };
        for step in 100..1_100u64 {
            let now = ms(step);
            match step {
                // Closed while the dump runs (which read it still open).
                120 => a.push(now, closed),
                // The table arrives.
                // The table arrives in two parts, then its end.
                150 | 170 | 171 => {
                    let id = dump.expect("begun");
                    match step {
                        150 => assert!(a.extend_bulk(id, table[..600].iter().copied())),
                        170 => assert!(a.extend_bulk(id, table[600..].iter().copied())),
                        _ => assert!(a.end_bulk(id)),
                    }
                }
                _ => {}
            }
            for d in a.poll(now) {
                if let Ok(r) = b.on_datagram(&d) {
                    got.add(r);
                }
            }
            for d in b.poll(now) {
                if let Ok(r) = a.on_datagram(&d)
                    && r.resync_requested
                {
                    dump = Some(a.begin_bulk());
                    assert!(a.bulk_dumping());
                }
            }
            if step <= 171 {
                assert!(!got.in_sync, "not in sync before the whole table went");
            }
        }
        assert!(got.in_sync && b.in_sync(), "{a:?}");
        assert!(got.records.contains(&closed));
        assert!(
            !got.records.contains(&rec(500)),
            "the dump's copy of a flow closed while it ran is not sent"
        );
        assert_eq!(got.records.len(), table.len(), "the rest, and the delete");
        // A table that comes after its bulk was superseded is not taken.
        let stale = a.begin_bulk();
        let current = a.begin_bulk();
        assert!(!a.extend_bulk(stale, table.iter().copied()));
        assert!(!a.end_bulk(stale));
        assert!(a.extend_bulk(current, table.iter().copied()) && a.end_bulk(current));
        assert_eq!(a.counters.bulks_superseded, 1);
        // A dump that fails: the bulk ends incomplete and another is owed.
        let _ = run_bulk(&mut a, &mut b, &table, |_| Vec::new(), 1_100, 500);
        assert!(b.in_sync() && !a.bulk_in_progress());
        b.force_resync();
        let mut failed = false;
        for step in 1_600..2_600u64 {
            let now = ms(step);
            if step % 100 == 0 {
                b.keepalive(); // as the driver does when idle
            }
            for d in a.poll(now) {
                let _ = b.on_datagram(&d);
            }
            for d in b.poll(now) {
                if let Ok(r) = a.on_datagram(&d)
                    && r.resync_requested
                {
                    let id = a.begin_bulk();
                    if failed {
                        a.extend_bulk(id, table.iter().copied());
                        a.end_bulk(id);
                    } else {
                        failed = true;
                        a.fail_bulk(id);
                        assert!(!a.bulk_in_progress());
                    }
                }
            }
        }
        assert!(failed);
        assert_eq!(a.counters.bulks_incomplete, 1);
        assert!(b.in_sync(), "the bulk owed after the failure completed");
    }

    #[test]
    fn live_records_dropped_put_the_peer_out_of_sync_until_a_bulk_completes() {
        let (mut a, mut b) = connected();
        assert!(b.in_sync());
        // More records at once than max_pending (65,536), nothing polled.
        for i in 0..70_000 {
            a.push(ms(30), rec(i));
        }
        assert!(a.counters.records_dropped > 0);
        let table: Vec<Record> = (0..10).map(rec).collect();
        let mut told = false;
        let mut in_sync_again = false;
        for step in 30..2_000 {
            let now = ms(step);
            for d in a.poll(now) {
                if let Ok(r) = b.on_datagram(&d) {
                    if r.out_of_sync {
                        told = true;
                        assert!(!b.in_sync());
                    }
                    in_sync_again |= told && r.in_sync;
                }
            }
            for d in b.poll(now) {
                if let Ok(r) = a.on_datagram(&d)
                    && r.resync_requested
                {
                    a.queue_bulk(table.iter().copied());
                }
            }
        }
        assert!(told, "b was told it is out of sync");
        assert!(
            in_sync_again && b.in_sync(),
            "and back in sync after the bulk"
        );
    }

    fn seal(kind: Kind, sender: u32, epoch: u64, seq: u64, ack: u64, to_epoch: u64) -> Vec<u8> {
        let records = if kind == Kind::Data {
            vec![rec(9)]
        } else {
            vec![]
        };
        Crypto::new(&KEY).seal(
            &Header {
                kind,
                sender,
                epoch,
                seq,
                ack,
                to_epoch,
            },
            &records,
        )
    }

    #[test]
    fn forged_replayed_garbage_and_out_of_window_frames_change_nothing() {
        let (mut a, mut b) = connected();
        a.push(ms(30), rec(1));
        let first = a.poll(ms(31)).remove(0);
        assert_eq!(b.on_datagram(&first).unwrap().records, vec![rec(1)]);
        let seq = peek_header(&first).unwrap().seq;
        let before = b.counters.rejected.values().sum::<u64>();
        // Replay of the same datagram.
        assert_eq!(b.on_datagram(&first).unwrap_err(), FrameError::Replay);
        // Forged with another key.
        let forged = Crypto::new(&[1; 32]).seal(&peek_header(&first).unwrap(), &[rec(666)]);
        assert_eq!(b.on_datagram(&forged).unwrap_err(), FrameError::Auth);
        // Garbage and truncation.
        assert!(b.on_datagram(&[0u8; 3]).is_err());
        assert_eq!(
            b.on_datagram(&first[..first.len() - 1]).unwrap_err(),
            FrameError::Auth
        );
        // Far ahead of the window (a real frame, correctly sealed).
        let ahead = seal(Kind::Data, A, 100, seq + WINDOW + 5, 0, 200);
        assert_eq!(b.on_datagram(&ahead).unwrap_err(), FrameError::OutOfWindow);
        // From ourselves, and from an older epoch.
        let own = seal(Kind::Data, B, 200, 2, 0, 200);
        assert_eq!(b.on_datagram(&own).unwrap_err(), FrameError::Sender);
        let old = seal(Kind::Data, A, 99, 2, 0, 200);
        assert_eq!(b.on_datagram(&old).unwrap_err(), FrameError::OldEpoch);
        // Addressed to another life of `b`.
        let elsewhere = seal(Kind::Data, A, 100, seq + 1, 0, 199);
        assert_eq!(
            b.on_datagram(&elsewhere).unwrap_err(),
            FrameError::NotAddressed
        );
        // Nothing of it was delivered; the channel still works.
        assert_eq!(b.counters.records_received, 1);
        a.push(ms(32), rec(2));
        let next = a.poll(ms(33)).remove(0);
        assert_eq!(b.on_datagram(&next).unwrap().records, vec![rec(2)]);
        assert_eq!(b.counters.rejected.values().sum::<u64>() - before, 8);
    }

    /// Cheap rejection: a header that cannot be for us is refused before
    /// the AEAD runs (the body here is garbage: it would fail `Auth`).
    #[test]
    fn cheap_checks_come_before_authentication() {
        let (_, mut b) = connected();
        let mut d = seal(Kind::Data, A, 100, 5, 0, 77);
        let n = d.len();
        d[n - 5] ^= 0xff;
        assert_eq!(b.on_datagram(&d).unwrap_err(), FrameError::NotAddressed);
        let mut d = seal(Kind::Data, 9, 100, 5, 0, 200);
        d[n - 5] ^= 0xff;
        assert_eq!(b.on_datagram(&d).unwrap_err(), FrameError::Sender);
        let mut d = seal(Kind::Data, A, 100, 10 * WINDOW, 0, 200);
        d[n - 5] ^= 0xff;
        assert_eq!(b.on_datagram(&d).unwrap_err(), FrameError::OutOfWindow);
    }

    /// The attack of issue 12: a frame recorded in the peer's current epoch,
    /// replayed right after the receiver restarted, set the new window and
    /// delivered a stale record; every genuine frame was refused after.
    #[test]
    fn a_frame_replayed_after_the_receiver_restarts_is_refused() {
        let (mut a, mut b) = connected();
        a.push(ms(30), rec(1));
        let captured = a.poll(ms(31)).remove(0);
        assert_eq!(b.on_datagram(&captured).unwrap().records, vec![rec(1)]);
        let _ = run_from(&mut a, &mut b, |_| false, 32, 10);
        drop(b);
        // `b` restarts (a new epoch); the attacker replays at once.
        let mut b2 = Session::new(&KEY, B, 201, A, Settings::default());
        assert_eq!(
            b2.on_datagram(&captured).unwrap_err(),
            FrameError::NotAddressed
        );
        // Genuine traffic flows (what `a` had in flight to the old `b` is
        // superseded by the bulk the new one gets), and the replayed record
        // was never delivered.
        let (got_a, got_b2) = run_from(&mut a, &mut b2, |_| false, 50, 30);
        assert!(got_a.resync_requested && got_b2.resync_requested);
        assert!(b2.in_sync() && a.in_sync(), "both resynced");
        for i in 2..200 {
            a.push(ms(80), rec(i));
        }
        let (_, got) = run_from(&mut a, &mut b2, |_| false, 80, 30);
        assert!(got.records == (2..200).map(rec).collect::<Vec<_>>());
        // And again, now that the window is set.
        assert!(b2.on_datagram(&captured).is_err());
        assert_eq!(b2.counters.records_received, 198);
    }

    /// Everything `a` ever sent to `b`'s previous life (its Hello, its Open,
    /// data, acks, the end of a bulk), replayed into the restarted `b`:
    /// nothing is delivered, no window is set, no peer epoch is taken; at
    /// most a Hello is owed (the answer to the replayed Hello).
    #[test]
    fn the_whole_previous_exchange_replayed_after_a_restart_does_nothing() {
        let (mut a, mut b) = pair();
        let mut recorded = Vec::new();
        for step in 0..60 {
            let now = ms(step);
            if step == 30 {
                for i in 0..100 {
                    a.push(now, rec(i));
                }
            }
            for d in a.poll(now) {
                recorded.push(d.clone());
                if let Ok(r) = b.on_datagram(&d)
                    && r.resync_requested
                {
                    b.queue_bulk([]);
                }
            }
            for d in b.poll(now) {
                if let Ok(r) = a.on_datagram(&d)
                    && r.resync_requested
                {
                    a.queue_bulk([rec(500)]);
                }
            }
        }
        assert_eq!(b.counters.records_received, 101);
        let mut b2 = Session::new(&KEY, B, 201, A, Settings::default());
        for d in &recorded {
            if let Ok(r) = b2.on_datagram(d) {
                assert!(r.records.is_empty() && !r.resync_requested && !r.in_sync);
            }
        }
        assert_eq!(b2.counters.records_received, 0);
        assert_eq!(b2.peer_epoch, None);
        assert_eq!(b2.next_expected, None);
        let out = b2.poll(ms(100));
        assert!(out.len() <= 1, "at most one Hello");
        assert!(
            out.iter()
                .all(|d| peek_header(d).unwrap().kind == Kind::Hello)
        );
    }

    /// A frame of the sender's previous life is refused by a receiver that
    /// saw its new one.
    #[test]
    fn a_frame_of_the_senders_previous_epoch_is_refused() {
        let (mut a, mut b) = connected();
        a.push(ms(30), rec(1));
        let captured = a.poll(ms(31)).remove(0);
        let mut a2 = Session::new(&KEY, A, 101, B, Settings::default());
        let _ = run_from(&mut a2, &mut b, |_| false, 40, 20);
        assert!(b.in_sync() && a2.in_sync());
        assert_eq!(b.on_datagram(&captured).unwrap_err(), FrameError::OldEpoch);
        assert_eq!(b.counters.records_received, 0);
    }

    #[test]
    fn a_forged_ack_beyond_what_was_sent_changes_nothing() {
        let (mut a, _b) = connected();
        for i in 0..200 {
            a.push(ms(30), rec(i));
        }
        let _ = a.poll(ms(31));
        let depth = a.queue_depth();
        assert!(depth >= 5);
        let beyond = a.next_seq;
        let ack = seal(Kind::Ack, B, 200, UNSEQ_BIT | 1000, beyond + 10, 100);
        assert_eq!(a.on_datagram(&ack).unwrap_err(), FrameError::BadAck);
        let ack = seal(Kind::Ack, B, 200, UNSEQ_BIT | 1001, beyond, 100);
        assert_eq!(a.on_datagram(&ack).unwrap_err(), FrameError::BadAck);
        assert_eq!(a.queue_depth(), depth, "nothing dropped from the queue");
        assert_eq!(a.counters.rejected[&FrameError::BadAck], 2);
        // The genuine acknowledgement of the last frame sent still works.
        let ack = seal(Kind::Ack, B, 200, UNSEQ_BIT | 1002, beyond - 1, 100);
        assert!(a.on_datagram(&ack).is_ok());
        assert_eq!(a.queue_depth(), 0);
    }

    /// A peer whose epoch went down (its epoch file lost, its clock behind)
    /// is let back in after a Hello round trip, and a replay from its former
    /// (higher) epoch cannot switch the session back.
    #[test]
    fn a_peer_with_a_lower_epoch_is_accepted_after_a_fresh_handshake() {
        let (mut a, mut b) = connected();
        a.push(ms(30), rec(1));
        let captured = a.poll(ms(31)).remove(0);
        let _ = b.on_datagram(&captured);
        let mut a2 = Session::new(&KEY, A, 50, B, Settings::default());
        for i in 2..100 {
            a2.push(ms(40), rec(i));
        }
        let (_, got) = run_from(&mut a2, &mut b, |_| false, 40, 100);
        assert!(got.records == (2..100).map(rec).collect::<Vec<_>>());
        assert!(b.in_sync() && a2.in_sync());
        assert_eq!(b.peer_epoch, Some(50));
        // A frame of epoch 100 (higher, but retired) switches nothing.
        assert!(b.on_datagram(&captured).is_err());
        assert_eq!(b.peer_epoch, Some(50));
        a2.push(ms(200), rec(100));
        let (_, got) = run_from(&mut a2, &mut b, |_| false, 200, 10);
        assert_eq!(got.records, vec![rec(100)]);
    }

    /// A dead peer: 300,000 records pushed, nothing acknowledged, 10 s of
    /// polls every millisecond. Each of the at most `max_unacked` frames is
    /// sent at most `1 + down_after` times before the peer is declared down,
    /// then one probe per `max_rto`: here 1490 frames (the pending queue caps
    /// what is framed), at most 1490 * 6 + 20 datagrams (7,459 measured),
    /// where the old code sent every frame every 20 ms (about 745,000). Then the peer answers: the queue drains and a resync is
    /// requested (records were dropped meanwhile).
    #[test]
    fn resends_to_a_dead_peer_back_off_and_sync_recovers() {
        let (mut a, mut b) = connected();
        let s = Settings::default();
        for i in 0..300_000 {
            a.push(ms(30), rec(i));
        }
        let mut sent = 0usize;
        let mut max_per_poll = 0;
        for t in 30..10_030 {
            let n = a.poll(ms(t)).len();
            sent += n;
            max_per_poll = max_per_poll.max(n);
        }
        // Every frame formed, 1 + down_after times at most, then a probe a
        // second (and a few Acks).
        let bound = a.counters.frames_sent as usize * (1 + s.down_after as usize) + 10 + 10;
        eprintln!("{sent} datagrams in 10 s to a dead peer (bound {bound})");
        assert!(sent <= bound, "{sent} datagrams in 10 s (bound {bound})");
        assert!(max_per_poll <= s.max_resends_per_poll + s.max_unacked);
        assert!(a.peer_down() && !a.in_sync());
        assert!(a.queue_depth() <= s.max_unacked, "the queue stays bounded");
        assert!(a.pending() <= s.max_pending);
        assert!(a.counters.records_dropped > 0);
        assert_eq!(a.counters.peer_down, 1);
        // The peer answers again.
        let (got_a, got_b) = run_from(&mut a, &mut b, |_| false, 10_030, 3000);
        assert!(!a.peer_down());
        assert!(
            got_a.resync_requested,
            "a owes b a bulk: it dropped records"
        );
        assert_eq!(a.queue_depth(), 0);
        assert_eq!(
            got_b.records.len() + a.counters.records_dropped as usize,
            300_000
        );
        assert!(a.in_sync() && b.in_sync());
    }

    #[test]
    fn bulk_resync_completes_and_a_restarted_peer_is_resynced() {
        let (mut a, mut b) = pair();
        let mut asked = false;
        let mut in_sync = false;
        for step in 0..50 {
            let now = ms(step);
            for d in b.poll(now) {
                if let Ok(r) = a.on_datagram(&d)
                    && r.resync_requested
                {
                    asked = true;
                    a.queue_bulk((0..300).map(rec));
                }
            }
            for d in a.poll(now) {
                if let Ok(r) = b.on_datagram(&d) {
                    in_sync |= r.in_sync;
                    if r.resync_requested {
                        b.queue_bulk([]);
                    }
                }
            }
        }
        assert!(asked && in_sync && b.in_sync());
        assert_eq!(b.counters.records_received, 300);

        // `a` restarts (new epoch): `b` asks it for everything again.
        let mut a2 = Session::new(&KEY, A, 101, B, Settings::default());
        let (got_a2, got_b) = run_from(&mut a2, &mut b, |_| false, 60, 20);
        assert!(
            got_a2.resync_requested,
            "b asked the restarted a for a bulk"
        );
        assert!(got_b.resync_requested, "a2 asked b for a bulk");
        assert!(b.in_sync() && a2.in_sync());
    }

    /// Property tests: whatever arrives, a session never panics, never
    /// delivers a record twice or out of order, and a genuine peer over a
    /// lossy, reordering, duplicating link with an attacker replaying and
    /// mutating its frames still delivers everything once the link clears.
    mod props {
        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// 1 ms passes; both ends poll.
            Step,
            /// `a` has `n` more records to send.
            Push(u8),
            /// The link delivers (index into the queue: reordering), drops
            /// or duplicates a datagram; direction a->b if `bool`.
            Deliver(bool, usize),
            Drop(bool, usize),
            Duplicate(bool, usize),
            /// An attacker: random bytes, a genuine datagram with a byte
            /// changed, a replay of anything sent so far.
            Garbage(bool, Vec<u8>),
            Mutate(bool, usize, usize, u8),
            Replay(bool, usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => Just(Op::Step),
                2 => (1u8..60).prop_map(Op::Push),
                8 => (any::<bool>(), any::<usize>()).prop_map(|(d, i)| Op::Deliver(d, i)),
                2 => (any::<bool>(), any::<usize>()).prop_map(|(d, i)| Op::Drop(d, i)),
                1 => (any::<bool>(), any::<usize>()).prop_map(|(d, i)| Op::Duplicate(d, i)),
                1 => (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200))
                    .prop_map(|(d, b)| Op::Garbage(d, b)),
                2 => (any::<bool>(), any::<usize>(), any::<usize>(), 1u8..)
                    .prop_map(|(d, i, at, x)| Op::Mutate(d, i, at, x)),
                2 => (any::<bool>(), any::<usize>()).prop_map(|(d, i)| Op::Replay(d, i)),
            ]
        }

        /// Both ends, the link's queues, and everything ever sent.
        struct Sim {
            a: Session,
            b: Session,
            now: u64,
            pushed: u32,
            queue: [Vec<Vec<u8>>; 2],
            sent: [Vec<Vec<u8>>; 2],
            delivered: Vec<Record>,
        }

        impl Sim {
            fn new() -> Self {
                let (a, b) = pair();
                Sim {
                    a,
                    b,
                    now: 0,
                    pushed: 0,
                    queue: [Vec::new(), Vec::new()],
                    sent: [Vec::new(), Vec::new()],
                    delivered: Vec::new(),
                }
            }

            fn poll(&mut self) {
                let now = ms(self.now);
                for (i, s) in [&mut self.a, &mut self.b].into_iter().enumerate() {
                    for d in s.poll(now) {
                        if self.sent[i].len() < 4096 {
                            self.sent[i].push(d.clone());
                        }
                        self.queue[i].push(d);
                    }
                }
            }

            /// Hands a datagram to the end it goes to (`to_b`) and checks
            /// what comes out.
            fn feed(&mut self, to_b: bool, d: &[u8]) {
                let end = if to_b { &mut self.b } else { &mut self.a };
                if let Ok(r) = end.on_datagram(d) {
                    if r.resync_requested {
                        end.queue_bulk([]);
                    }
                    if to_b {
                        self.delivered.extend(r.records);
                    } else {
                        assert!(r.records.is_empty(), "b sends no records");
                    }
                }
                let n = self.delivered.len() as u32;
                assert!(
                    self.delivered
                        .iter()
                        .eq((0..n).map(rec).collect::<Vec<_>>().iter()),
                    "delivered twice or out of order"
                );
            }

            fn apply(&mut self, op: Op) {
                let q = |d: bool| usize::from(!d);
                match op {
                    Op::Step => {
                        self.now += 1;
                        self.poll();
                    }
                    Op::Push(n) => {
                        for _ in 0..n {
                            self.a.push(ms(self.now), rec(self.pushed));
                            self.pushed += 1;
                        }
                    }
                    Op::Deliver(d, _) | Op::Drop(d, _) | Op::Duplicate(d, _)
                        if self.queue[q(d)].is_empty() => {}
                    Op::Deliver(d, i) => {
                        let len = self.queue[q(d)].len();
                        let dg = self.queue[q(d)].remove(i % len);
                        self.feed(d, &dg);
                    }
                    Op::Drop(d, i) => {
                        let len = self.queue[q(d)].len();
                        self.queue[q(d)].remove(i % len);
                    }
                    Op::Duplicate(d, i) => {
                        let len = self.queue[q(d)].len();
                        let dg = self.queue[q(d)][i % len].clone();
                        self.queue[q(d)].push(dg);
                    }
                    Op::Garbage(d, bytes) => self.feed(d, &bytes),
                    Op::Mutate(d, i, at, x) => {
                        if let Some(len) = Some(self.sent[q(d)].len()).filter(|l| *l > 0) {
                            let mut dg = self.sent[q(d)][i % len].clone();
                            let at = at % dg.len();
                            dg[at] ^= x;
                            self.feed(d, &dg);
                        }
                    }
                    Op::Replay(d, i) => {
                        if let Some(len) = Some(self.sent[q(d)].len()).filter(|l| *l > 0) {
                            let dg = self.sent[q(d)][i % len].clone();
                            self.feed(d, &dg);
                        }
                    }
                }
            }

            /// The link clears: everything queued and sent from now on
            /// arrives, in order.
            fn settle(&mut self) {
                for _ in 0..20_000 {
                    self.now += 1;
                    self.poll();
                    for d in [true, false] {
                        for dg in std::mem::take(&mut self.queue[usize::from(!d)]) {
                            self.feed(d, &dg);
                        }
                    }
                    if self.delivered.len() == self.pushed as usize
                        && self.a.queue_depth() == 0
                        && self.a.pending() == 0
                        && self.a.in_sync()
                        && self.b.in_sync()
                    {
                        return;
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_never_panic_nor_deliver(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
                let (_, mut b) = connected();
                let before = b.counters.records_received;
                let _ = b.on_datagram(&bytes);
                prop_assert_eq!(b.counters.records_received, before);
            }

            #[test]
            fn a_hostile_lossy_link_never_breaks_order_and_loses_nothing_in_the_end(
                ops in proptest::collection::vec(op(), 0..400)
            ) {
                let mut sim = Sim::new();
                for op in ops {
                    sim.apply(op);
                }
                sim.settle();
                prop_assert_eq!(sim.delivered.len(), sim.pushed as usize);
                prop_assert!(sim.a.in_sync() && sim.b.in_sync());
            }
        }
    }
}
