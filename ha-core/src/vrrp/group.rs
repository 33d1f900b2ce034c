//! A group of virtual routers that change role together (keepalived's sync
//! group; the seeds' "all interfaces active" master): when one member becomes
//! master the others follow, when one steps down or fails the others do too.
//! The group also applies tracked interfaces: a link that goes down lowers the
//! members' priority by its weight, or (weight 0) puts the group in Fault.
//! Sans-IO like [`Instance`].

use std::collections::BTreeMap;

use super::machine::{Action, Instance, Instant, Reason, Role};

/// A tracked interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    pub iface: String,
    /// Priority lost while the link is down; 0 = Fault while it is down.
    pub weight: u8,
}

/// The group's output: per-member actions and group-level role changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupAction {
    /// Member `member` must perform `action` (send an advert, ...).
    Member { member: usize, action: Action },
    /// The group as a whole changed role: the I/O layer writes ownership and
    /// runs hooks.
    Transition { to: Role, reason: Reason },
}

/// Routers that change role together.
#[derive(Debug, Clone)]
pub struct Group {
    /// The members, each with its own state machine.
    members: Vec<Instance>,
    /// Configured priority of each member (before tracking).
    base_priority: Vec<u8>,
    /// Tracked interfaces.
    tracks: Vec<Track>,
    /// Link state by interface name (absent = up until told otherwise).
    links_down: BTreeMap<String, bool>,
    /// The group's role as last reported.
    role: Role,
    /// An operator's priority for every member (promote, demote,
    /// maintenance), replacing the configured one minus tracking.
    priority_override: Option<u8>,
}

/// Priority of a promoted node: above any configured backup.
pub const PROMOTED_PRIORITY: u8 = 254;
/// Priority of a demoted node or one in maintenance: below any peer.
pub const DEMOTED_PRIORITY: u8 = 1;

impl Group {
    pub fn new(members: Vec<Instance>, tracks: Vec<Track>) -> Self {
        Group {
            base_priority: members.iter().map(Instance::priority).collect(),
            members,
            tracks,
            links_down: BTreeMap::new(),
            role: Role::Initialize,
            priority_override: None,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn members(&self) -> &[Instance] {
        &self.members
    }

    /// The tracked interfaces.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    pub fn member_mut(&mut self, i: usize) -> &mut Instance {
        &mut self.members[i]
    }

    /// Earliest timer of any member.
    pub fn poll_at(&self) -> Option<Instant> {
        self.members.iter().filter_map(Instance::poll_at).min()
    }

    /// Starts every member (or holds the group in Fault if a weight-0 tracked
    /// link is already down).
    pub fn startup(&mut self, now: Instant) -> Vec<GroupAction> {
        if self.tracked_fault() {
            let out = (0..self.members.len())
                .map(|i| (i, self.members[i].fault(now)))
                .collect();
            return self.settle(now, out);
        }
        let out = (0..self.members.len())
            .map(|i| (i, self.members[i].startup(now)))
            .collect();
        self.settle(now, out)
    }

    /// Starts every member as master at once (see [`Instance::resume_master`]).
    pub fn resume_master(&mut self, now: Instant) -> Vec<GroupAction> {
        let out = (0..self.members.len())
            .map(|i| (i, self.members[i].resume_master(now)))
            .collect();
        self.settle(now, out)
    }

    /// Runs due timers.
    pub fn poll(&mut self, now: Instant) -> Vec<GroupAction> {
        let out = (0..self.members.len())
            .map(|i| (i, self.members[i].poll(now)))
            .collect();
        self.settle(now, out)
    }

    /// An advert for member `member`.
    pub fn on_advert(
        &mut self,
        member: usize,
        now: Instant,
        src: std::net::Ipv4Addr,
        priority: u8,
        interval_cs: u16,
    ) -> Vec<GroupAction> {
        let out = self.members[member].on_advert(now, src, priority, interval_cs);
        self.settle(now, vec![(member, out)])
    }

    /// Graceful shutdown of every member (priority-0 adverts from a master).
    pub fn shutdown(&mut self, now: Instant) -> Vec<GroupAction> {
        self.release(now, Reason::Shutdown, true)
    }

    /// Every member back to Initialize for `reason` (with `announce`,
    /// priority-0 adverts from a master).
    pub fn release(&mut self, now: Instant, reason: Reason, announce: bool) -> Vec<GroupAction> {
        let out = (0..self.members.len())
            .map(|i| (i, self.members[i].release(now, reason, announce)))
            .collect();
        self.settle(now, out)
    }

    /// Every backup member takes over now (see [`Instance::take_over`]).
    pub fn take_over(&mut self, now: Instant, reason: Reason) -> Vec<GroupAction> {
        let out = (0..self.members.len())
            .map(|i| (i, self.members[i].take_over(now, reason)))
            .collect();
        self.settle(now, out)
    }

    /// Holds back or allows preemption in every member.
    pub fn set_preempt_allowed(&mut self, allowed: bool) {
        for m in &mut self.members {
            m.set_preempt_allowed(allowed);
        }
    }

    /// Sets (or, with `None`, clears) the operator's priority. A promoted
    /// group preempts a lower master even where `preempt` is off; a demoted
    /// master hands over when the peer, seeing its lower adverts, preempts
    /// (no moment without an owner, unlike a priority-0 release).
    pub fn set_priority_override(&mut self, priority: Option<u8>) {
        self.priority_override = priority;
        self.apply_priorities();
        let forced = priority.is_some_and(|p| p >= PROMOTED_PRIORITY);
        for m in &mut self.members {
            m.set_preempt_forced(forced);
        }
    }

    /// The operator's priority, if one is set.
    pub fn priority_override(&self) -> Option<u8> {
        self.priority_override
    }

    fn apply_priorities(&mut self) {
        let penalty = self.tracked_penalty();
        for (m, base) in self.members.iter_mut().zip(&self.base_priority) {
            m.set_priority(
                self.priority_override
                    .unwrap_or(base.saturating_sub(penalty)),
            );
        }
    }

    fn tracked_fault(&self) -> bool {
        self.tracks
            .iter()
            .any(|t| t.weight == 0 && self.links_down.get(&t.iface).copied().unwrap_or(false))
    }

    fn tracked_penalty(&self) -> u8 {
        self.tracks
            .iter()
            .filter(|t| self.links_down.get(&t.iface).copied().unwrap_or(false))
            .fold(0u8, |acc, t| acc.saturating_add(t.weight))
    }

    /// A tracked link changed state: adjust priorities, enter or leave Fault.
    pub fn set_link(&mut self, iface: &str, up: bool, now: Instant) -> Vec<GroupAction> {
        if !self.tracks.iter().any(|t| t.iface == iface) {
            return Vec::new();
        }
        let was_fault = self.tracked_fault();
        self.links_down.insert(iface.to_owned(), !up);
        self.apply_priorities();
        let fault = self.tracked_fault();
        let out = match (was_fault, fault) {
            (false, true) => (0..self.members.len())
                .map(|i| (i, self.members[i].fault(now)))
                .collect(),
            (true, false) => (0..self.members.len())
                .map(|i| (i, self.members[i].clear_fault(now)))
                .collect(),
            _ => Vec::new(),
        };
        self.settle(now, out)
    }

    /// Applies the group rule to member transitions and reports group-level
    /// transitions.
    fn settle(&mut self, now: Instant, mut pending: Vec<(usize, Vec<Action>)>) -> Vec<GroupAction> {
        let mut out = Vec::new();
        let mut cause = None;
        while let Some((i, actions)) = pending.pop() {
            for action in actions {
                if let Action::Transition { to, reason } = action {
                    cause.get_or_insert((to, reason));
                    let followers: Vec<(usize, Vec<Action>)> = (0..self.members.len())
                        .filter(|&j| j != i)
                        .map(|j| {
                            let m = &mut self.members[j];
                            let a = match to {
                                Role::Master => m.force_master(now),
                                Role::Backup => m.force_backup(now),
                                Role::Fault => m.fault(now),
                                Role::Initialize => Vec::new(),
                            };
                            (j, a)
                        })
                        .collect();
                    pending.extend(followers);
                }
                out.push(GroupAction::Member { member: i, action });
            }
        }
        let role = self.computed_role();
        if role != self.role {
            self.role = role;
            let reason = cause.map_or(Reason::Group, |(_, r)| r);
            out.push(GroupAction::Transition { to: role, reason });
        }
        out
    }

    fn computed_role(&self) -> Role {
        let roles: Vec<Role> = self.members.iter().map(Instance::role).collect();
        if roles.contains(&Role::Fault) {
            Role::Fault
        } else if !roles.is_empty() && roles.iter().all(|r| *r == Role::Master) {
            Role::Master
        } else if roles.contains(&Role::Backup) {
            Role::Backup
        } else {
            Role::Initialize
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use super::*;
    use crate::vrrp::machine::Config;

    fn member(vrid: u8, priority: u8) -> Instance {
        Instance::new(Config {
            vrid,
            priority,
            advert_interval_cs: 1,
            preempt: true,
            preempt_delay: Duration::ZERO,
            local_addr: Ipv4Addr::new(10, 255, 0, 1),
            vips: vec![],
        })
    }

    fn group_transitions(out: &[GroupAction]) -> Vec<Role> {
        out.iter()
            .filter_map(|a| match a {
                GroupAction::Transition { to, .. } => Some(*to),
                _ => None,
            })
            .collect()
    }

    const PEER: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);

    #[test]
    fn members_follow_the_first_to_become_master_and_to_step_down() {
        let mut g = Group::new(vec![member(1, 100), member(2, 100)], vec![]);
        assert_eq!(
            group_transitions(&g.startup(Duration::ZERO)),
            vec![Role::Backup]
        );
        // Member 0 hears the peer, member 1 does not: member 1's timer fires.
        g.on_advert(0, Duration::from_millis(30), PEER, 150, 1);
        let out = g.poll(Duration::from_millis(37));
        assert_eq!(group_transitions(&out), vec![Role::Master]);
        assert!(g.members().iter().all(|m| m.role() == Role::Master));
        // Both members advertise.
        let adverts = out
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    GroupAction::Member {
                        action: Action::SendAdvert { .. },
                        ..
                    }
                )
            })
            .count();
        assert_eq!(adverts, 2);
        // A higher-priority master on member 1 demotes the whole group.
        let out = g.on_advert(1, Duration::from_millis(40), PEER, 200, 1);
        assert_eq!(group_transitions(&out), vec![Role::Backup]);
        assert!(g.members().iter().all(|m| m.role() == Role::Backup));
    }

    #[test]
    fn tracked_links_lower_priority_or_fault_the_group() {
        let tracks = vec![
            Track {
                iface: "wan0".into(),
                weight: 60,
            },
            Track {
                iface: "lan0".into(),
                weight: 0,
            },
        ];
        let mut g = Group::new(vec![member(1, 150), member(2, 150)], tracks);
        g.startup(Duration::ZERO);
        g.poll(Duration::from_millis(40));
        assert_eq!(g.role(), Role::Master);
        g.set_link("wan0", false, Duration::from_millis(41));
        assert!(g.members().iter().all(|m| m.priority() == 90));
        // Now a priority-100 peer wins.
        let out = g.on_advert(0, Duration::from_millis(42), PEER, 100, 1);
        assert_eq!(group_transitions(&out), vec![Role::Backup]);
        g.set_link("wan0", true, Duration::from_millis(43));
        assert!(g.members().iter().all(|m| m.priority() == 150));
        // A weight-0 link down: Fault for everyone, with no timers.
        let out = g.set_link("lan0", false, Duration::from_millis(44));
        assert_eq!(group_transitions(&out), vec![Role::Fault]);
        assert_eq!(g.poll_at(), None);
        assert!(
            g.set_link("other0", false, Duration::from_millis(45))
                .is_empty(),
            "untracked"
        );
        let out = g.set_link("lan0", true, Duration::from_millis(46));
        assert_eq!(group_transitions(&out), vec![Role::Backup]);
    }

    #[test]
    fn a_member_fault_demotes_the_master_group_with_priority_zero() {
        let mut g = Group::new(
            vec![member(1, 150)],
            vec![Track {
                iface: "lan0".into(),
                weight: 0,
            }],
        );
        g.startup(Duration::ZERO);
        g.poll(Duration::from_millis(40));
        let out = g.set_link("lan0", false, Duration::from_millis(41));
        assert!(out.contains(&GroupAction::Member {
            member: 0,
            action: Action::SendAdvert { priority: 0 }
        }));
        assert_eq!(group_transitions(&out), vec![Role::Fault]);
    }
}
