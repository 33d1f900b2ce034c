//! Records from the peer into this node's kernel conntrack (ctnetlink, in
//! batches) and its XDP flow table, as they arrive: the takeover then only
//! has to apply what is still in the socket.

use std::{collections::HashMap, time::Duration};

use ha_common::flow::{self, TcpState};
use ha_core::limit::Every;
use tracing::warn;

use super::{
    conntrack::{Conntrack, CtTuple},
    flows::FlowTable,
    record::{FLAG_NAT, Record, RecordKind},
};
use crate::dataplane::monotonic_ns;

/// Entries remembered before the cache is cleared (bounded memory).
pub const CACHE_MAX: usize = 2 * flow::MAX_FLOWS as usize;

/// Conntrack lifetime of a replicated entry (s); refreshed by refresh events.
fn timeout_for(r: &Record) -> u32 {
    match r.proto {
        flow::PROTO_TCP if r.state == TcpState::Closing as u8 => 120,
        flow::PROTO_TCP => 3600,
        _ => 180,
    }
}

/// Applies records to kernel conntrack and the XDP flow table.
pub struct Applier {
    ct: Conntrack,
    /// Original tuple -> reply tuple of what we created (a changed NAT
    /// mapping needs the entry re-created: the kernel does not change it).
    applied: HashMap<CtTuple, CtTuple>,
    /// The XDP flow table, when the data plane is pinned.
    flows: Option<FlowTable>,
    /// Records the kernel refused, and the log limit of that.
    errors: u64,
    error_log: Every,
}

impl Applier {
    pub fn new(ct: Conntrack, flows: Option<FlowTable>) -> Self {
        Applier {
            ct,
            applied: HashMap::new(),
            flows,
            errors: 0,
            error_log: Every::new(),
        }
    }

    /// Connections from the peer that are in our conntrack.
    pub fn flows_from_peer(&self) -> usize {
        self.applied.len()
    }

    /// Records the kernel refused.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Applies `records` in order (`now`: session time, for the log limit).
    pub fn apply(&mut self, records: &[Record], now: Duration) {
        if records.is_empty() {
            return;
        }
        if self.applied.len() > CACHE_MAX {
            self.applied.clear();
        }
        let mut batch = Vec::with_capacity(records.len());
        for r in records {
            let orig = CtTuple::orig_of(r);
            if r.kind == RecordKind::Upsert
                && self
                    .applied
                    .get(&orig)
                    .is_some_and(|reply| *reply != CtTuple::reply_of(r))
            {
                batch.push(Record {
                    kind: RecordKind::Delete,
                    ..*r
                });
            }
            batch.push(*r);
        }
        let results = self.ct.apply_batch(&batch, timeout_for);
        let now_ns = monotonic_ns();
        // XDP table writes, in order, batched up to each removal.
        let mut inserts: Vec<(CtTuple, u8)> = Vec::with_capacity(batch.len());
        for (r, res) in batch.iter().zip(results) {
            let orig = CtTuple::orig_of(r);
            // The XDP side: the original direction, and for NAT also the
            // translated side the new master sees on its other interface.
            let nat = (r.flags & FLAG_NAT != 0).then(|| CtTuple::reply_of(r).inverted());
            let keys = std::iter::once(orig).chain(nat);
            match (r.kind, res) {
                (RecordKind::Upsert, Ok(())) => {
                    self.applied.insert(orig, CtTuple::reply_of(r));
                    inserts.extend(keys.map(|t| (t, r.state)));
                }
                (RecordKind::Delete, Ok(())) => {
                    self.applied.remove(&orig);
                    if let Some(flows) = &mut self.flows {
                        flows.insert_many(&std::mem::take(&mut inserts), now_ns);
                        for t in keys {
                            flows.remove(&t);
                        }
                    }
                }
                (_, Err(e)) => {
                    self.errors += 1;
                    if self.error_log.allow(now) {
                        warn!(cause = %e, record = ?r, total = self.errors, "conntrack update failed");
                    }
                }
            }
        }
        if let Some(flows) = &mut self.flows {
            flows.insert_many(&inserts, now_ns);
        }
    }
}
