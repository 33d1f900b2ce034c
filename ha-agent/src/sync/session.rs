//! The reliable, authenticated sync channel between two nodes, sans-IO: like
//! conntrackd's FTFW, frames carry sequence numbers, the receiver answers
//! with cumulative ACKs, the sender resends what stays unacknowledged, and
//! queues are bounded (with counters). On top: replay protection (epoch +
//! sliding window) and a bulk-resync handshake (Hello ... ResyncDone) after
//! which the receiver is "in sync".
//!
//! Records are delivered in sequence order (a frame that arrives early waits
//! in a bounded reorder buffer), so updates of one flow are never applied out
//! of order.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use super::{
    frame::{Crypto, FrameError, HEADER_LEN, Header, Kind, MAX_RECORDS, TAG_LEN},
    record::Record,
};

/// Monotonic time since an arbitrary origin.
pub type Instant = Duration;

/// Sequence numbers accepted ahead of the next expected one.
pub const WINDOW: u64 = 8192;
/// The `seq` field of an ACK frame has this bit set (see `acks_sent`).
const ACK_SEQ_BIT: u64 = 1 << 63;

/// Tunables.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Resend a frame not acknowledged after this long.
    pub rto: Duration,
    /// Frames kept for resending at most; beyond, new records are dropped
    /// (counted) and the peer will need a resync.
    pub max_unacked: usize,
    /// Longest a record waits for a frame to fill up.
    pub flush_after: Duration,
    /// Records waiting for a frame at most; beyond, they are dropped (counted).
    pub max_pending: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            rto: Duration::from_millis(20),
            max_unacked: 4096,
            flush_after: Duration::from_micros(500),
            max_pending: 65_536,
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
    /// Records dropped because the unacknowledged queue was full.
    pub records_dropped: u64,
    /// Rejected datagrams by reason.
    pub rejected: BTreeMap<FrameError, u64>,
}

/// What the I/O layer must act on after a received datagram.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Received {
    /// Records to apply, in order.
    pub records: Vec<Record>,
    /// The peer needs everything (it joined, restarted, or asked): dump the
    /// state with [`Session::queue_bulk`].
    pub resync_requested: bool,
    /// The bulk resync we asked for is complete.
    pub in_sync: bool,
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
    /// Next sequence number we send (Data, Hello, ResyncDone: the reliable
    /// frames).
    next_seq: u64,
    /// Counter of ACK frames sent: their nonces use it with the top bit set,
    /// so no nonce repeats though ACKs take no sequence number.
    acks_sent: u64,
    /// Sent, not yet acknowledged: (seq, datagram, last sent, origin of its
    /// oldest record).
    unacked: VecDeque<(u64, Vec<u8>, Instant, Instant)>,
    /// Records waiting to fill a frame, since when, and the origin (event
    /// time) of the oldest.
    pending: Vec<Record>,
    pending_since: Option<Instant>,
    pending_origin: Option<Instant>,
    /// Origins of frames acknowledged since [`Session::take_acked`].
    acked: Vec<Instant>,
    /// Kinds of control frames to send with the next poll.
    control: VecDeque<Kind>,
    /// Receive side: the peer's epoch, the next sequence expected from it,
    /// frames that arrived early, and which sequences were seen (replay).
    peer_epoch: Option<u64>,
    next_expected: u64,
    reorder: BTreeMap<u64, (Kind, Vec<Record>)>,
    /// An ACK is owed to the peer.
    ack_due: bool,
    /// We asked for a bulk resync and have not received its end yet.
    awaiting_resync: bool,
    /// The peer's bulk resync completed (and nothing was lost since).
    in_sync: bool,
    /// The peer epoch we already sent a bulk for (a Hello from the same
    /// epoch then needs no second one).
    bulk_for_epoch: Option<u64>,
    pub counters: Counters,
}

impl Session {
    /// A session of node `me` (epoch = its start time in ns) with `peer`.
    pub fn new(key: &[u8; 32], me: u32, epoch: u64, peer: u32, settings: Settings) -> Self {
        Session {
            crypto: Crypto::new(key),
            settings,
            me,
            epoch,
            peer,
            next_seq: 1,
            acks_sent: 0,
            unacked: VecDeque::new(),
            pending: Vec::new(),
            pending_since: None,
            pending_origin: None,
            acked: Vec::new(),
            control: VecDeque::new(),
            peer_epoch: None,
            next_expected: 1,
            reorder: BTreeMap::new(),
            ack_due: false,
            awaiting_resync: false,
            in_sync: false,
            bulk_for_epoch: None,
            counters: Counters::default(),
        }
    }

    /// Whether a bulk resync from the peer completed.
    pub fn in_sync(&self) -> bool {
        self.in_sync
    }

    /// Frames sent and not yet acknowledged (queue depth).
    pub fn queue_depth(&self) -> usize {
        self.unacked.len()
    }

    /// Asks the peer for a bulk resync (on start, or when it rejoined).
    /// Idempotent while one is outstanding.
    pub fn request_resync(&mut self) {
        self.in_sync = false;
        if !self.awaiting_resync {
            self.awaiting_resync = true;
            self.control.push_back(Kind::Hello);
        }
    }

    /// Asks the peer for a full bulk resync now, even if it sent one for
    /// this epoch already (an operator's `resync`). Until it completes, we
    /// are not in sync.
    pub fn force_resync(&mut self) {
        self.in_sync = false;
        self.awaiting_resync = true;
        self.control.push_back(Kind::Resync);
    }

    /// Sends an acknowledgement with the next poll even if nothing is owed:
    /// a heartbeat, so each side knows the other is there when idle.
    pub fn keepalive(&mut self) {
        self.ack_due = true;
    }

    /// Records waiting for a frame.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Queues one record; frames go out from [`Session::poll`].
    pub fn push(&mut self, now: Instant, record: Record) {
        self.push_from(now, now, record);
    }

    /// Queues one record that stands for an event at `origin` (for the lag:
    /// see [`Session::take_acked`]).
    pub fn push_from(&mut self, now: Instant, origin: Instant, record: Record) {
        if self.pending.len() >= self.settings.max_pending {
            self.counters.records_dropped += 1;
            return;
        }
        self.pending.push(record);
        self.pending_since.get_or_insert(now);
        self.pending_origin = Some(self.pending_origin.map_or(origin, |o| o.min(origin)));
    }

    /// The origins of the oldest record of each frame the peer acknowledged
    /// since the last call: `now - origin` is how long an event took to be
    /// applied there (the peer acknowledges after applying).
    pub fn take_acked(&mut self) -> Vec<Instant> {
        std::mem::take(&mut self.acked)
    }

    /// Queues a whole table (answer to a Hello), then marks its end.
    pub fn queue_bulk(&mut self, now: Instant, records: impl IntoIterator<Item = Record>) {
        for r in records {
            self.push(now, r);
        }
        self.control.push_back(Kind::ResyncDone);
    }

    fn header(&self, kind: Kind, seq: u64) -> Header {
        Header {
            kind,
            sender: self.me,
            epoch: self.epoch,
            seq,
            ack: self.next_expected - 1,
        }
    }

    fn send_reliable(
        &mut self,
        now: Instant,
        kind: Kind,
        records: &[Record],
        out: &mut Vec<Vec<u8>>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let d = self.crypto.seal(&self.header(kind, seq), records);
        out.push(d.clone());
        let origin = if records.is_empty() {
            now
        } else {
            self.pending_origin.unwrap_or(now).min(now)
        };
        self.unacked.push_back((seq, d, now, origin));
        self.counters.frames_sent += 1;
        self.counters.records_sent += records.len() as u64;
        self.ack_due = false;
    }

    /// Datagrams to send now: full frames, a partial frame that waited long
    /// enough, control frames, resends, and an ACK if one is owed.
    pub fn poll(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let flush = self
            .pending_since
            .is_some_and(|t| now.saturating_sub(t) >= self.settings.flush_after);
        while (self.pending.len() >= MAX_RECORDS || (flush && !self.pending.is_empty()))
            && self.unacked.len() < self.settings.max_unacked
        {
            let take = self.pending.len().min(MAX_RECORDS);
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
        while let Some(kind) = self.control.pop_front() {
            if kind == Kind::ResyncDone && !self.pending.is_empty() {
                self.control.push_front(kind);
                break;
            }
            self.send_reliable(now, kind, &[], &mut out);
        }
        for (_, d, sent, _) in self.unacked.iter_mut() {
            if now.saturating_sub(*sent) >= self.settings.rto {
                out.push(d.clone());
                *sent = now;
                self.counters.frames_resent += 1;
            }
        }
        if self.ack_due {
            // ACKs are not sequenced (a lost ACK is simply superseded), but
            // each has a nonce of its own.
            self.acks_sent += 1;
            out.push(
                self.crypto
                    .seal(&self.header(Kind::Ack, ACK_SEQ_BIT | self.acks_sent), &[]),
            );
            self.ack_due = false;
        }
        out
    }

    /// When [`Session::poll`] has work next.
    pub fn poll_at(&self) -> Option<Instant> {
        let flush = self.pending_since.map(|t| t + self.settings.flush_after);
        let resend = self
            .unacked
            .iter()
            .map(|(_, _, t, _)| *t + self.settings.rto)
            .min();
        [flush, resend].into_iter().flatten().min()
    }

    /// A datagram from the network. Rejections are counted and change nothing.
    pub fn on_datagram(&mut self, bytes: &[u8]) -> Result<Received, FrameError> {
        let result = self.receive(bytes);
        if let Err(e) = result {
            *self.counters.rejected.entry(e).or_default() += 1;
        }
        result
    }

    fn receive(&mut self, bytes: &[u8]) -> Result<Received, FrameError> {
        let (h, records) = self.crypto.open(bytes)?;
        if h.sender != self.peer || h.sender == self.me {
            return Err(FrameError::Sender);
        }
        let mut got = Received::default();
        let sequenced = h.kind != Kind::Ack;
        match self.peer_epoch {
            Some(e) if h.epoch < e => return Err(FrameError::OldEpoch),
            Some(e) if h.epoch == e => {}
            _ if !sequenced => {
                // An ACK from an epoch we have not seen a frame of: it can only
                // acknowledge what that instance received; apply it below.
            }
            _ => {
                // First contact, or the peer restarted: its sequence space
                // starts here, and neither side can have the other's state.
                // Ask for everything (the peer asks us too, on its side).
                self.peer_epoch = Some(h.epoch);
                self.next_expected = h.seq;
                self.reorder.clear();
                self.request_resync();
                // It cannot have our state either: send it everything now,
                // without waiting for its Hello (which it may have sent before
                // we listened, and which we would then never deliver).
                got.resync_requested = true;
                self.bulk_for_epoch = Some(h.epoch);
            }
        }
        // Acknowledgement of what we sent (cumulative; an old or repeated ACK
        // changes nothing).
        while self
            .unacked
            .front()
            .is_some_and(|(seq, _, _, _)| *seq <= h.ack)
        {
            if let Some((_, d, _, origin)) = self.unacked.pop_front()
                && d.len() > HEADER_LEN + TAG_LEN
                && self.acked.len() < 65_536
            {
                self.acked.push(origin);
            }
        }
        if !sequenced {
            return Ok(got);
        }
        if h.seq < self.next_expected || self.reorder.contains_key(&h.seq) {
            // A resend of something we had: the peer missed our ACK.
            self.ack_due = true;
            return Err(FrameError::Replay);
        }
        if h.seq >= self.next_expected + WINDOW {
            return Err(FrameError::OutOfWindow);
        }
        self.ack_due = true;
        self.reorder.insert(h.seq, (h.kind, records));
        self.deliver_ready(&mut got);
        Ok(got)
    }

    fn deliver_ready(&mut self, got: &mut Received) {
        while let Some((kind, records)) = self.reorder.remove(&self.next_expected) {
            self.next_expected += 1;
            match kind {
                Kind::Data => {
                    self.counters.records_received += records.len() as u64;
                    got.records.extend(records);
                }
                Kind::Hello => {
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
                Kind::Ack => {}
            }
        }
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

    /// Runs both ends over a link that drops datagrams where `drop(n)` says,
    /// until quiet; returns what `b` received.
    fn run(
        a: &mut Session,
        b: &mut Session,
        mut drop: impl FnMut(u64) -> bool,
        steps: u64,
    ) -> Vec<Record> {
        let mut got = Vec::new();
        let mut n = 0;
        for step in 0..steps {
            let now = ms(step);
            for d in a.poll(now) {
                n += 1;
                if !drop(n) {
                    got.extend(b.on_datagram(&d).map(|r| r.records).unwrap_or_default());
                }
            }
            for d in b.poll(now) {
                n += 1;
                if !drop(n) {
                    let _ = a.on_datagram(&d);
                }
            }
        }
        got
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
        // 1000 records in 23 frames of up to 44, plus the Hello `a` sent when
        // it first heard from `b` (a new peer gets a bulk resync).
        assert_eq!(a.counters.frames_sent, 23 + 1);
        assert_eq!(a.counters.frames_resent, 0);
    }

    #[test]
    fn loss_is_repaired_by_resending_and_order_is_kept() {
        let (mut a, mut b) = pair();
        for i in 0..5000 {
            a.push(ms(0), rec(i));
        }
        // Drop every 3rd datagram in either direction, deterministically.
        let got = run(&mut a, &mut b, |n| n % 3 == 0, 2000);
        assert!(
            got == (0..5000).map(rec).collect::<Vec<_>>(),
            "{} records, in order?",
            got.len()
        );
        assert_eq!(a.queue_depth(), 0);
        assert!(a.counters.frames_resent > 0);
    }

    #[test]
    fn bounded_queues_drop_and_count() {
        let settings = Settings {
            max_unacked: 4,
            max_pending: 100,
            ..Settings::default()
        };
        let mut a = Session::new(&KEY, A, 100, B, settings);
        let total = 1000u64;
        for i in 0..total as u32 {
            a.push(ms(0), rec(i));
            if i % 44 == 43 {
                let _ = a.poll(ms(1)); // nothing is ever acknowledged
            }
        }
        assert_eq!(a.queue_depth(), 4, "at most max_unacked frames in flight");
        assert_eq!(a.pending(), 100, "at most max_pending records waiting");
        assert_eq!(a.counters.records_sent, 4 * MAX_RECORDS as u64);
        assert_eq!(
            a.counters.records_sent + a.pending() as u64 + a.counters.records_dropped,
            total
        );
    }

    #[test]
    fn forged_replayed_garbage_and_out_of_window_frames_change_nothing() {
        let (mut a, mut b) = pair();
        a.push(ms(0), rec(1));
        let first = a.poll(ms(1)).remove(0);
        assert_eq!(b.on_datagram(&first).unwrap().records, vec![rec(1)]);
        // Replay of the same datagram.
        assert_eq!(b.on_datagram(&first).unwrap_err(), FrameError::Replay);
        // Forged with another key.
        let mut forger = Session::new(&[1; 32], A, 100, B, Settings::default());
        forger.push(ms(0), rec(666));
        let forged = forger.poll(ms(1)).remove(0);
        assert_eq!(b.on_datagram(&forged).unwrap_err(), FrameError::Auth);
        // Garbage and truncation.
        assert!(b.on_datagram(&[0u8; 3]).is_err());
        assert_eq!(
            b.on_datagram(&first[..first.len() - 1]).unwrap_err(),
            FrameError::Auth
        );
        // Far ahead of the window (a real frame, correctly sealed).
        let crypto = Crypto::new(&KEY);
        let ahead = crypto.seal(
            &Header {
                kind: Kind::Data,
                sender: A,
                epoch: 100,
                seq: 2 + WINDOW + 5,
                ack: 0,
            },
            &[rec(9)],
        );
        assert_eq!(b.on_datagram(&ahead).unwrap_err(), FrameError::OutOfWindow);
        // From ourselves, and from an older epoch.
        let own = crypto.seal(
            &Header {
                kind: Kind::Data,
                sender: B,
                epoch: 200,
                seq: 2,
                ack: 0,
            },
            &[rec(9)],
        );
        assert_eq!(b.on_datagram(&own).unwrap_err(), FrameError::Sender);
        let old = crypto.seal(
            &Header {
                kind: Kind::Data,
                sender: A,
                epoch: 99,
                seq: 2,
                ack: 0,
            },
            &[rec(9)],
        );
        assert_eq!(b.on_datagram(&old).unwrap_err(), FrameError::OldEpoch);
        // Nothing of it was delivered; the channel still works.
        assert_eq!(b.counters.records_received, 1);
        a.push(ms(2), rec(2));
        let next = a.poll(ms(3)).remove(0);
        assert_eq!(b.on_datagram(&next).unwrap().records, vec![rec(2)]);
        assert_eq!(b.counters.rejected.values().sum::<u64>(), 7);
    }

    #[test]
    fn bulk_resync_completes_and_a_restarted_peer_is_resynced() {
        let (mut a, mut b) = pair();
        b.request_resync();
        assert!(!b.in_sync());
        let mut asked = false;
        let mut in_sync = false;
        for step in 0..50 {
            let now = ms(step);
            for d in b.poll(now) {
                if let Ok(r) = a.on_datagram(&d)
                    && r.resync_requested
                {
                    asked = true;
                    a.queue_bulk(now, (0..300).map(rec));
                }
            }
            for d in a.poll(now) {
                if let Ok(r) = b.on_datagram(&d) {
                    in_sync |= r.in_sync;
                }
            }
        }
        assert!(asked && in_sync && b.in_sync());
        assert_eq!(b.counters.records_received, 300);

        // `a` restarts (new epoch): `b` asks it for everything again.
        let mut a2 = Session::new(&KEY, A, 101, B, Settings::default());
        a2.push(ms(60), rec(7));
        let d = a2.poll(ms(61)).remove(0);
        assert_eq!(b.on_datagram(&d).unwrap().records, vec![rec(7)]);
        assert!(!b.in_sync(), "needs a new bulk resync");
        let out = b.poll(ms(62));
        let hello = out
            .iter()
            .any(|d| a2.on_datagram(d).is_ok_and(|r| r.resync_requested));
        assert!(hello, "b sent a Hello to the restarted peer");
    }
}
