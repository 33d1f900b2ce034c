//! The master's side of replication: flow events from XDP become records,
//! with the NAT mapping and the TCP state read from kernel conntrack
//! (ctnetlink). An event can come before the kernel has seen the packet, and
//! behind source NAT the LAN-side XDP never sees the SYN-ACK: such flows are
//! looked up again later ([`Enricher::due`]).

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use ha_common::flow::{self, FlowEventKind, TcpState};
use tracing::warn;

use crate::dataplane::events::Event;

use super::{
    apply::CACHE_MAX,
    conntrack::{Conntrack, CtEntry, CtTuple},
    record::{FLAG_NAT, Record, RecordKind},
};

/// Lookups of a flow conntrack does not know yet (the event can come before
/// the kernel has seen the packet) before it is sent as XDP saw it.
const LOOKUP_TRIES: u8 = 3;
/// Between two lookups of the same flow; doubled for each try of a
/// handshake (below).
const LOOKUP_RETRY: Duration = Duration::from_millis(2);
/// Lookups of a connection still in its handshake. Behind source NAT, XDP on
/// the LAN side never sees the SYN-ACK (it arrives on the WAN, translated),
/// so no event says when the handshake completed: conntrack is asked again
/// (2, 4, ... 512 ms) until it says ESTABLISHED.
const HANDSHAKE_TRIES: u8 = 9;
/// Where the lookups of an untranslated handshake start (64, 128, 256, 512
/// ms): XDP sees its SYN-ACK and last ACK and reports the end itself; the
/// lookups only cover a reply that comes back by an interface without XDP.
/// Asking at 2 ms as behind NAT would cost a burst of new connections a
/// lookup each just as their handshakes end, delaying the events that
/// carry them.
const UNTRANSLATED_FIRST_TRY: u8 = 5;

/// A flow event of either family as a record, as XDP saw it (original
/// direction; a closed TCP flow is a delete).
pub fn record_of(e: &Event) -> Record {
    let kind = if e.proto == flow::PROTO_TCP && e.state == TcpState::Closed as u8 {
        RecordKind::Delete
    } else {
        RecordKind::Upsert
    };
    Record::plain(kind, e.proto, e.state, e.src, e.dst, e.src_port, e.dst_port)
}

/// Why a flow is looked up again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Again {
    /// Conntrack did not know it yet; sent as XDP saw it when tries run out.
    NotFound,
    /// Still in its handshake; dropped when tries run out (it was sent).
    Handshake,
    /// Sent ESTABLISHED as XDP saw it: conntrack must say so too. If it
    /// still has the flow in its handshake (it never took that ACK), the
    /// peer's entry goes and comes again in its handshake (an assured entry
    /// cannot be updated back: the kernel does not let the status bits be
    /// cleared); if it no longer has a flow it had (`tracked`: conntrack
    /// gave its record at the SYN), the peer forgets it; one it never had
    /// (traffic it does not track) stays as XDP saw it.
    Confirm { tracked: bool },
}

/// Lookups a confirmation tries through conntrack errors before it gives up.
const CONFIRM_TRIES: u8 = 5;

/// A flow event waiting for its lookup.
#[derive(Debug, Clone, Copy)]
pub struct Ask {
    /// As XDP saw it.
    pub record: Record,
    /// `None` for a retry.
    pub kind: Option<FlowEventKind>,
    /// When the event happened (session time base).
    pub origin: Duration,
    pub tries: u8,
    pub again: Again,
}

impl Ask {
    pub fn event(record: Record, kind: Option<FlowEventKind>, origin: Duration) -> Self {
        Ask {
            record,
            kind,
            origin,
            tries: 0,
            again: Again::NotFound,
        }
    }
}

/// What a bulk resync's table held, read from kernel conntrack by
/// [`bulk_of`] (its records went to `emit` meanwhile).
#[derive(Debug, Default)]
pub struct BulkRead {
    /// Records sent (the connections conntrack still has).
    pub live: usize,
    /// Flows of the XDP table conntrack no longer knows (to forget there).
    pub dead: Vec<Record>,
    /// Of the live ones, those with a NAT mapping.
    pub nat: u64,
}

/// Records handed to `emit` at a time by [`bulk_of`].
pub const BULK_PART: usize = 8192;

/// The records of a bulk resync from `flows` (the XDP flow table): only
/// the connections kernel conntrack still has, read from it (state, NAT)
/// and handed to `emit` [`BULK_PART`] at a time as the dump goes (the
/// peer applies them meanwhile); a flow conntrack no longer knows is dead
/// and not sent (a bulk must not bring long-gone connections back on the
/// peer), nor is one closing. If conntrack cannot be dumped, the flows not
/// read yet are looked up one by one, and if that fails too they go as XDP
/// saw them (the peer would rather have them than not). Runs on the bulk's
/// own thread, with a socket of its own: seconds for a million flows.
pub fn bulk_of(
    ct: &mut Conntrack,
    flows: Vec<Record>,
    mut emit: impl FnMut(Vec<Record>),
) -> BulkRead {
    // Each flow by its original tuple; a conntrack entry is one of them if
    // its original tuple is that, or (the XDP side of a NATed flow) its
    // reply tuple is that one seen from the other end.
    let mut wanted: HashMap<CtTuple, usize> = flows
        .iter()
        .enumerate()
        .map(|(i, f)| (CtTuple::orig_of(f), i))
        .collect();
    let mut read = BulkRead::default();
    let mut part = Vec::with_capacity(BULK_PART);
    let mut take = |e: &CtEntry, read: &mut BulkRead, part: &mut Vec<Record>| {
        let rec = e.record();
        if rec.state == TcpState::Closed as u8 {
            return;
        }
        if rec.flags & FLAG_NAT != 0 {
            read.nat += 1;
        }
        read.live += 1;
        part.push(rec);
        if part.len() >= BULK_PART {
            emit(std::mem::replace(part, Vec::with_capacity(BULK_PART)));
        }
    };
    let dumped = ct.dump_each(|entries| {
        for e in entries {
            // Both: a NATed flow has an XDP entry for each side (the
            // original tuple, and the translated one seen from the other
            // interface), and neither is dead.
            let by_orig = wanted.remove(&e.orig).is_some();
            let by_reply = wanted.remove(&e.reply.inverted()).is_some();
            if by_orig || by_reply {
                take(e, &mut read, &mut part);
            }
        }
    });
    if let Err(e) = dumped {
        warn!(cause = %e, left = wanted.len(), "conntrack dump failed; looking the bulk's flows left up one by one");
        let left: Vec<usize> = wanted.drain().map(|(_, i)| i).collect();
        let tuples: Vec<CtTuple> = left.iter().map(|&i| CtTuple::orig_of(&flows[i])).collect();
        match ct.lookup(&tuples) {
            Ok(found) => {
                for (i, entry) in left.into_iter().zip(found) {
                    match entry {
                        Some(e) => take(&e, &mut read, &mut part),
                        None => read.dead.push(flows[i]),
                    }
                }
            }
            Err(e) => {
                warn!(cause = %e, "conntrack lookup failed; the bulk's flows left go as XDP saw them");
                read.live += left.len();
                part.extend(left.into_iter().map(|i| flows[i]));
            }
        }
    } else {
        read.dead = wanted.into_values().map(|i| flows[i]).collect();
    }
    if !part.is_empty() {
        emit(part);
    }
    read
}

/// The master's side: flow events become records, with the NAT mapping and
/// TCP state from kernel conntrack.
pub struct Enricher {
    ct: Conntrack,
    /// The tuple XDP reported -> the record it stands for.
    cache: HashMap<CtTuple, Record>,
    /// Lookups to do again: (when, a tie-breaker) -> what.
    retry: BTreeMap<(Duration, u64), Ask>,
    retry_seq: u64,
    /// Records sent with a NAT mapping read from conntrack.
    nat_records: u64,
}

impl Enricher {
    pub fn new(ct: Conntrack) -> Self {
        Enricher {
            ct,
            cache: HashMap::new(),
            retry: BTreeMap::new(),
            retry_seq: 0,
            nat_records: 0,
        }
    }

    /// Records sent with a NAT mapping read from conntrack.
    pub fn nat_records(&self) -> u64 {
        self.nat_records
    }

    /// Counts the NAT records a bulk sent (read by [`bulk_of`]).
    pub fn count_nat(&mut self, n: u64) {
        self.nat_records += n;
    }

    /// Turns events into records to send now (with their origin); flows to
    /// look up again later wait in `retry`.
    pub fn enrich(&mut self, now: Duration, events: Vec<Ask>, out: &mut Vec<(Record, Duration)>) {
        if self.cache.len() > CACHE_MAX {
            self.cache.clear();
        }
        let mut ask = Vec::new();
        for e in events {
            let r = e.record;
            let seen = CtTuple::orig_of(&r);
            if r.kind == RecordKind::Delete {
                match self.cache.remove(&seen) {
                    Some(gone) => out.push((
                        Record {
                            kind: RecordKind::Delete,
                            ..gone
                        },
                        e.origin,
                    )),
                    // Not seen since this agent started (a flow a bulk
                    // sent, or older): conntrack still has the closing
                    // entry, whose original tuple the peer knows it by
                    // (XDP's may be the translated side of a NATed flow).
                    None => ask.push(e),
                }
                continue;
            }
            match self.cache.get(&seen) {
                // A refresh of a flow whose entry we know: nothing new to read.
                Some(c)
                    if e.kind == Some(FlowEventKind::Refresh)
                        && (c.proto != flow::PROTO_TCP
                            || c.state == TcpState::Established as u8) =>
                {
                    out.push((*c, e.origin));
                }
                // The end of a handshake XDP saw whole (SYN, SYN-ACK, last
                // ACK) of a flow conntrack told us about: sent at once with
                // conntrack's tuples and XDP's state, conntrack asked later
                // to confirm (a firewall that dropped that ACK leaves it in
                // SYN_RECV, and the retry sends that). A lookup here would
                // cost a burst of handshakes one each before any is sent:
                // the window in which a crash leaves them half-open on the
                // peer, where strict TCP tracking drops their next segment.
                // Without a record from conntrack, XDP's is right: a flow
                // whose whole handshake passed XDP under one tuple is not
                // translated (behind NAT the SYN-ACK comes translated, or
                // by the other interface).
                c if e.kind == Some(FlowEventKind::StateChange)
                    && r.proto == flow::PROTO_TCP
                    && r.state == TcpState::Established as u8
                    && c.is_none_or(|c| c.state == TcpState::SynSent as u8) =>
                {
                    let tracked = c.is_some();
                    let rec = Record {
                        state: TcpState::Established as u8,
                        kind: RecordKind::Upsert,
                        ..c.copied().unwrap_or(r)
                    };
                    self.cache.insert(seen, rec);
                    if rec.flags & FLAG_NAT != 0 {
                        self.nat_records += 1;
                    }
                    out.push((rec, e.origin));
                    self.later(
                        now + LOOKUP_RETRY * (1 << UNTRANSLATED_FIRST_TRY),
                        Ask {
                            kind: None,
                            tries: 0,
                            again: Again::Confirm { tracked },
                            ..e
                        },
                    );
                }
                _ => ask.push(e),
            }
        }
        if ask.is_empty() {
            return;
        }
        let tuples: Vec<CtTuple> = ask.iter().map(|a| CtTuple::orig_of(&a.record)).collect();
        let (found, failed) = match self.ct.lookup(&tuples) {
            Ok(f) => (f, false),
            Err(e) => {
                warn!(cause = %e, "conntrack lookup failed; sending flows as XDP saw them");
                (vec![None; tuples.len()], true)
            }
        };
        for (a, entry) in ask.into_iter().zip(found) {
            if let Again::Confirm { tracked } = a.again {
                self.confirm(now, a, entry, failed, tracked, out);
                continue;
            }
            if a.record.kind == RecordKind::Delete {
                let gone = entry.map_or(a.record, |e| e.record());
                self.cache.remove(&CtTuple::orig_of(&a.record));
                out.push((
                    Record {
                        kind: RecordKind::Delete,
                        ..gone
                    },
                    a.origin,
                ));
                continue;
            }
            match (entry, a.again) {
                (Some(e), _) => {
                    let mut rec = e.record();
                    if rec.state == TcpState::Closed as u8 {
                        // Closing down in conntrack (TIME_WAIT, CLOSE): gone.
                        rec.kind = RecordKind::Delete;
                    }
                    let seen = CtTuple::orig_of(&a.record);
                    if a.again == Again::Handshake
                        && rec.state == TcpState::SynSent as u8
                        && self
                            .cache
                            .get(&seen)
                            .is_some_and(|c| c.state == TcpState::Established as u8)
                    {
                        // Sent ESTABLISHED as XDP saw it, and conntrack has
                        // not caught up yet (or never will): its
                        // confirmation decides, not this older retry.
                        continue;
                    }
                    let changed = self.cache.insert(seen, rec) != Some(rec);
                    // A retry that learnt nothing new sends nothing.
                    if changed || a.kind.is_some() {
                        if rec.flags & FLAG_NAT != 0 {
                            self.nat_records += 1;
                        }
                        out.push((rec, a.origin));
                    }
                    let tries = if a.again == Again::Handshake {
                        a.tries
                    } else if rec.flags & FLAG_NAT == 0 {
                        UNTRANSLATED_FIRST_TRY
                    } else {
                        0
                    };
                    if rec.proto == flow::PROTO_TCP
                        && rec.state == TcpState::SynSent as u8
                        && tries < HANDSHAKE_TRIES
                    {
                        self.later(
                            now + LOOKUP_RETRY * (1 << tries),
                            Ask {
                                kind: None,
                                tries: tries + 1,
                                again: Again::Handshake,
                                ..a
                            },
                        );
                    }
                }
                (None, Again::NotFound) if a.tries + 1 < LOOKUP_TRIES => {
                    self.later(
                        now + LOOKUP_RETRY,
                        Ask {
                            kind: None,
                            tries: a.tries + 1,
                            ..a
                        },
                    );
                }
                // Conntrack never knew it (traffic it does not track): as XDP saw it.
                (None, Again::NotFound) => out.push((a.record, a.origin)),
                // Gone during its handshake: its delete event says so.
                (None, Again::Handshake) => {}
                // Handled above, before this match.
                (_, Again::Confirm { .. }) => {}
            }
        }
    }

    /// What conntrack says of a flow sent ESTABLISHED as XDP saw it
    /// ([`Again::Confirm`]); `failed`: the lookup itself failed.
    fn confirm(
        &mut self,
        now: Duration,
        a: Ask,
        entry: Option<CtEntry>,
        failed: bool,
        tracked: bool,
        out: &mut Vec<(Record, Duration)>,
    ) {
        let seen = CtTuple::orig_of(&a.record);
        let sent = self.cache.get(&seen).copied();
        match entry {
            None if failed => {
                if a.tries + 1 < CONFIRM_TRIES {
                    self.later(
                        now + LOOKUP_RETRY * (1 << a.tries),
                        Ask {
                            tries: a.tries + 1,
                            ..a
                        },
                    );
                } else {
                    warn!(
                        "conntrack lookups keep failing: a handshake sent as established stays unconfirmed"
                    );
                }
            }
            // Conntrack does not track it: as XDP saw it.
            None if !tracked => {}
            // Conntrack no longer has it: neither may the peer.
            None => {
                self.cache.remove(&seen);
                let gone = sent.unwrap_or(a.record);
                out.push((
                    Record {
                        kind: RecordKind::Delete,
                        ..gone
                    },
                    a.origin,
                ));
            }
            Some(e) => {
                let mut rec = e.record();
                if rec.state == TcpState::Closed as u8 {
                    rec.kind = RecordKind::Delete;
                }
                if rec.proto == flow::PROTO_TCP && rec.state == TcpState::SynSent as u8 {
                    // It never took that ACK: back to the handshake on the
                    // peer, then looked up as any handshake.
                    out.push((
                        Record {
                            kind: RecordKind::Delete,
                            ..rec
                        },
                        a.origin,
                    ));
                    out.push((rec, a.origin));
                    self.cache.insert(seen, rec);
                    let tries = UNTRANSLATED_FIRST_TRY + 1;
                    self.later(
                        now + LOOKUP_RETRY * (1 << tries),
                        Ask {
                            tries: tries + 1,
                            again: Again::Handshake,
                            ..a
                        },
                    );
                    return;
                }
                if self.cache.insert(seen, rec) != Some(rec) {
                    out.push((rec, a.origin));
                }
            }
        }
    }

    fn later(&mut self, at: Duration, ask: Ask) {
        self.retry_seq += 1;
        self.retry.insert((at, self.retry_seq), ask);
    }

    /// Lookups due again.
    pub fn due(&mut self, now: Duration) -> Vec<Ask> {
        let mut v = Vec::new();
        while let Some(entry) = self.retry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            v.push(entry.remove());
        }
        v
    }

    pub fn next_retry(&self) -> Option<Duration> {
        self.retry.keys().next().map(|k| k.0)
    }
}
