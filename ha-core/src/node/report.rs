//! What the node core knows about itself, for the status and metrics: roles,
//! counters, the last advert, and every transition (a bounded history and
//! totals that never stop counting).

use std::{collections::BTreeMap, collections::VecDeque, net::Ipv4Addr};

use super::Instant;
use crate::vrrp::{
    machine::{Reason, Role},
    packet::Rejected,
};

/// Transitions kept in [`Report::transitions`]; the totals count them all.
pub const HISTORY: usize = 20;

/// One group as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupReport {
    pub name: String,
    pub role: Role,
    /// Highest effective priority of its members.
    pub priority: u8,
}

/// The last accepted advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastAdvert {
    pub src: Ipv4Addr,
    pub priority: u8,
    /// When it was handled (node time).
    pub at: Instant,
}

/// A group's role change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRecord {
    pub group: String,
    pub role: Role,
    pub reason: Reason,
    /// When (node time).
    pub at: Instant,
}

/// Counters and history kept by the node core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Adverts the core asked to send.
    pub adverts_sent: u64,
    /// Valid adverts from a peer, for a VRID we run.
    pub adverts_received: u64,
    /// Accepted adverts whose interval differs from ours (RFC 9568: a backup
    /// learns the master's; counted and logged, not rejected).
    pub interval_mismatches: u64,
    /// Packets refused, by reason.
    pub rejected: BTreeMap<Rejected, u64>,
    pub last_advert: Option<LastAdvert>,
    /// The latest [`HISTORY`] transitions, oldest first.
    pub transitions: VecDeque<TransitionRecord>,
    /// Every group transition since start.
    pub transitions_total: u64,
    /// The same by reason ([`Reason::name`]).
    pub transitions_by_reason: BTreeMap<&'static str, u64>,
    /// Lease lapses found (before a renewal, or refused by the data plane).
    pub lease_lapses: u64,
    /// Ownership writes the data plane refused (each a step-down).
    pub write_failures: u64,
    /// Heartbeat path faults and recoveries reported.
    pub path_changes: u64,
}

impl Counters {
    pub(super) fn record_transition(
        &mut self,
        group: &str,
        role: Role,
        reason: Reason,
        at: Instant,
    ) {
        if self.transitions.len() == HISTORY {
            self.transitions.pop_front();
        }
        self.transitions.push_back(TransitionRecord {
            group: group.to_owned(),
            role,
            reason,
            at,
        });
        self.transitions_total += 1;
        *self.transitions_by_reason.entry(reason.name()).or_default() += 1;
    }
}

/// The node as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub groups: Vec<GroupReport>,
    /// The ownership word as last written.
    pub owned: u64,
    /// The operator's priority (promote 254, demote and maintenance 1).
    pub priority_override: Option<u8>,
    /// Persistent demotion on.
    pub maintenance: bool,
    /// Whether a returning node may preempt (state sync complete, or none).
    pub preempt_allowed: bool,
    pub counters: Counters,
    /// Advert authentication mode, and the key id we sign with.
    pub auth_mode: crate::vrrp::auth::Mode,
    pub auth_active_key: u8,
    /// The heartbeat paths, HA link first.
    pub paths: Vec<super::paths::PathReport>,
    /// The fast heartbeat, when on.
    pub heartbeat: Option<crate::heartbeat::Report>,
    /// Our ownership term (the reflector's), 0 before the first takeover.
    pub term: u64,
}
