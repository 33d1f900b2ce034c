//! The master's side of replication: flow events from XDP become records,
//! with the NAT mapping and the TCP state read from kernel conntrack
//! (ctnetlink). An event can come before the kernel has seen the packet, and
//! behind source NAT the LAN-side XDP never sees the SYN-ACK: such flows are
//! looked up again later ([`Enricher::due`]).

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use ha_common::flow::{self, FlowEvent, FlowEventKind, TcpState};
use tracing::warn;

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

/// A flow event as a record, as XDP saw it (original direction; a closed TCP
/// flow is a delete).
pub fn record_of(e: &FlowEvent) -> Record {
    let kind = if e.proto == flow::PROTO_TCP && e.state == TcpState::Closed as u8 {
        RecordKind::Delete
    } else {
        RecordKind::Upsert
    };
    Record::of_flow(kind, e.proto, e.state, e.endpoints())
}

/// Why a flow is looked up again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Again {
    /// Conntrack did not know it yet; sent as XDP saw it when tries run out.
    NotFound,
    /// Still in its handshake; dropped when tries run out (it was sent).
    Handshake,
}

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

    /// The records of a bulk resync from `flows` (the XDP flow table): only
    /// the connections kernel conntrack still has, read from it (state, NAT);
    /// a flow conntrack no longer knows is dead and not sent (a bulk must not
    /// bring long-gone connections back on the peer), nor is one closing.
    /// Returns the records and the dead flows (to forget in the XDP table).
    /// If conntrack cannot be asked, the flows go as XDP saw them (the peer
    /// would rather have them than not).
    pub fn bulk(&mut self, flows: Vec<Record>) -> (Vec<Record>, Vec<Record>) {
        // One dump of the whole table (a lookup per flow costs a netlink
        // round trip each: seconds for a million), each flow then found in
        // it by its original tuple or, seen from the other end (the XDP
        // side of a NATed flow), by its reply tuple.
        let found = match self.ct.dump() {
            Ok(entries) => {
                let by_orig: HashMap<CtTuple, usize> = entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.orig, i))
                    .collect();
                let mut found: Vec<Option<CtEntry>> = flows
                    .iter()
                    .map(|f| by_orig.get(&CtTuple::orig_of(f)).map(|&i| entries[i]))
                    .collect();
                // Those not found: by the reply tuple (indexed only then).
                if found.iter().any(Option::is_none) {
                    let by_reply: HashMap<CtTuple, usize> = entries
                        .iter()
                        .enumerate()
                        .map(|(i, e)| (e.reply, i))
                        .collect();
                    for (f, slot) in flows.iter().zip(&mut found) {
                        if slot.is_none() {
                            *slot = by_reply
                                .get(&CtTuple::orig_of(f).inverted())
                                .map(|&i| entries[i]);
                        }
                    }
                }
                found
            }
            Err(e) => {
                warn!(cause = %e, "conntrack dump failed; looking the bulk's flows up one by one");
                let tuples: Vec<CtTuple> = flows.iter().map(CtTuple::orig_of).collect();
                match self.ct.lookup(&tuples) {
                    Ok(f) => f,
                    Err(e) => {
                        warn!(cause = %e, "conntrack lookup failed; the bulk goes as XDP saw the flows");
                        return (flows, Vec::new());
                    }
                }
            }
        };
        let (mut live, mut dead) = (Vec::with_capacity(flows.len()), Vec::new());
        for (flow, entry) in flows.into_iter().zip(found) {
            match entry {
                Some(e) => {
                    let rec = e.record();
                    if rec.state == TcpState::Closed as u8 {
                        continue;
                    }
                    if rec.flags & FLAG_NAT != 0 {
                        self.nat_records += 1;
                    }
                    self.cache.insert(CtTuple::orig_of(&flow), rec);
                    live.push(rec);
                }
                None => dead.push(flow),
            }
        }
        (live, dead)
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
                let gone = self.cache.remove(&seen).unwrap_or(r);
                out.push((
                    Record {
                        kind: RecordKind::Delete,
                        ..gone
                    },
                    e.origin,
                ));
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
                _ => ask.push(e),
            }
        }
        if ask.is_empty() {
            return;
        }
        let tuples: Vec<CtTuple> = ask.iter().map(|a| CtTuple::orig_of(&a.record)).collect();
        let found = match self.ct.lookup(&tuples) {
            Ok(f) => f,
            Err(e) => {
                warn!(cause = %e, "conntrack lookup failed; sending flows as XDP saw them");
                vec![None; tuples.len()]
            }
        };
        for (a, entry) in ask.into_iter().zip(found) {
            match (entry, a.again) {
                (Some(e), _) => {
                    let mut rec = e.record();
                    if rec.state == TcpState::Closed as u8 {
                        // Closing down in conntrack (TIME_WAIT, CLOSE): gone.
                        rec.kind = RecordKind::Delete;
                    }
                    let changed = self.cache.insert(CtTuple::orig_of(&a.record), rec) != Some(rec);
                    // A retry that learnt nothing new sends nothing.
                    if changed || a.kind.is_some() {
                        if rec.flags & FLAG_NAT != 0 {
                            self.nat_records += 1;
                        }
                        out.push((rec, a.origin));
                    }
                    let tries = if a.again == Again::Handshake {
                        a.tries
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
