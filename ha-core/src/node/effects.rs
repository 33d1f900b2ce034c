//! How the groups' actions become effects: the takeover order (commit, one
//! ownership write, the first GARP, adverts, hooks, status), a step-down's
//! ownership write first, and the lease: renewed with every advert of a
//! master, never extended by a step-down, never revived once lapsed.

use tracing::{info, warn};

use super::{Effect, Hook, Instant, Node, NotifyKind};
use crate::vrrp::{
    group::{Group, GroupAction},
    machine::{Action, Instance, Reason, Role},
    wire,
};

impl Node {
    /// Whether what we own is past its lease at `now`.
    pub(super) fn lease_passed(&self, now: Instant) -> bool {
        self.owned != 0 && self.lease_until.is_none_or(|t| now >= t)
    }

    /// Nothing in the ownership word is ours any more (`cause`: its lease
    /// lapsed, or a write failed): the masters it named step down at the end
    /// of the event. A takeover later in the same event writes afresh.
    pub(super) fn lapse(&mut self, cause: Reason) {
        self.owned = 0;
        self.lease_until = None;
        self.lapsed.get_or_insert(cause);
    }

    /// Whether group `gi` is ours under a running lease (GARP only then).
    pub(super) fn owns(&self, gi: usize, now: Instant) -> bool {
        self.owned & self.groups[gi].bit != 0 && self.lease_until.is_some_and(|t| now < t)
    }

    /// We stalled past our own lease (or the data plane says so): the peer
    /// may own the VIPs by now. The groups that were ours step down (priority
    /// 0, then backup) and win them again through the election, never by
    /// reviving the lease. A group that took over during this very event
    /// keeps what it wrote.
    pub(super) fn step_down_lapsed(&mut self, now: Instant, cause: Reason, out: &mut Vec<Effect>) {
        if cause == Reason::LeaseLapsed {
            self.counters.lease_lapses += 1;
            warn!("ownership lease lapsed before renewal; stepping down");
        } else {
            self.counters.write_failures += 1;
        }
        if self.owned == 0 {
            // First: the data plane's word still names the lapsed groups
            // (or a write failed and what it holds is unknown).
            out.push(Effect::WriteOwnership {
                groups: 0,
                lease: None,
            });
        }
        let mut released = false;
        for gi in 0..self.groups.len() {
            let g = &self.groups[gi];
            if g.group.role() == Role::Master && self.owned & g.bit == 0 {
                // Priority 0 only when the lease is known to have lapsed:
                // after a failed write the data plane may still answer for
                // the VIPs until the lease runs out, so the peer is left to
                // its master-down timer, which ends after that lease.
                let announce = cause == Reason::LeaseLapsed;
                let actions = self.groups[gi].group.release(now, cause, announce);
                self.apply(gi, actions, now, None, out);
                let actions = self.groups[gi].group.startup(now);
                self.apply(gi, actions, now, None, out);
                released = true;
            }
        }
        if released && cause == Reason::LeaseLapsed && self.state_sync {
            // A stalled node missed what the peer replicated meanwhile (and
            // the peer took over): it preempts back only once a full resync
            // has arrived, as a returning node does, never straight away.
            info!("holding preemption until a full state resync after the stall");
            out.push(Effect::ForceResync);
            self.set_preempt_allowed(false);
        }
    }

    /// Carries out a group's actions: the group's role change first (its
    /// ownership write and first GARP), then the members' adverts and
    /// notifications. `due`: when the timer that caused them was due.
    pub(super) fn apply(
        &mut self,
        gi: usize,
        actions: Vec<GroupAction>,
        now: Instant,
        due: Option<Instant>,
        out: &mut Vec<Effect>,
    ) {
        let mut transitioned = false;
        for a in &actions {
            if let GroupAction::Transition { to, reason } = a {
                self.transition(gi, *to, *reason, now, due, out);
                transitioned = true;
            }
        }
        for a in actions {
            let GroupAction::Member { member, action } = a else {
                continue;
            };
            match action {
                Action::SendAdvert { priority } => self.advert(gi, member, priority, now, out),
                Action::Transition { to, reason } => {
                    let g = &self.groups[gi];
                    let m = &g.group.members()[member];
                    info!(event = "transition", instance = %g.instances[member], vrid = m.config().vrid, role = to.as_str(), ?reason, "VRRP instance transition");
                    out.push(Effect::Hook {
                        group: gi,
                        hook: Hook::Notify {
                            kind: NotifyKind::Instance,
                            name: g.instances[member].clone(),
                            role: to,
                            priority: m.priority(),
                        },
                    });
                }
                Action::ResendGarp => {
                    let owns = self.owns(gi, now);
                    let g = &mut self.groups[gi];
                    // At most once a second: a one-way HA link would otherwise
                    // make both sides re-announce with every advert.
                    if owns && g.resend.allow(now) {
                        info!(group = %g.name, "competing master seen: VIPs re-announced");
                        out.push(Effect::SendGarp { group: gi });
                    }
                }
            }
        }
        if transitioned {
            out.push(Effect::WriteStatus);
        }
    }

    /// Sends an advert; a master renews its lease first, unless the lease has
    /// lapsed (then it sends nothing at its priority and steps down).
    fn advert(
        &mut self,
        gi: usize,
        member: usize,
        priority: u8,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let bit = self.groups[gi].bit;
        if priority != 0 && self.groups[gi].group.role() == Role::Master {
            // A master whose bit is not in the word lost it earlier in this
            // event (a lapse, a failed write): it says nothing and steps
            // down. One that took over in this event has its bit.
            if self.owned & bit == 0 {
                self.lapsed.get_or_insert(Reason::LeaseLapsed);
                return;
            }
            if self.lease_passed(now) {
                self.lapse(Reason::LeaseLapsed);
                return;
            }
            // Written at this very instant already (a takeover): no second write.
            if self.lease_until != Some(now + self.lease) {
                self.lease_until = Some(now + self.lease);
                out.push(Effect::RenewLease {
                    groups: self.owned,
                    lease: self.lease,
                });
            }
        }
        let c = self.groups[gi].group.members()[member].config();
        out.push(Effect::SendAdvert(wire::Repr {
            vrid: c.vrid,
            priority,
            interval_cs: c.advert_interval_cs,
            addrs: c.vips.clone(),
        }));
        self.counters.adverts_sent += 1;
    }

    /// A group changed role: to MASTER, commit, one ownership write, the
    /// first GARP; away from it, the ownership write first. Then hooks.
    fn transition(
        &mut self,
        gi: usize,
        to: Role,
        reason: Reason,
        now: Instant,
        due: Option<Instant>,
        out: &mut Vec<Effect>,
    ) {
        let bit = self.groups[gi].bit;
        if to == Role::Master {
            // Everything the peer sent is in conntrack before the VIPs move
            // (the keepalived + conntrackd race that resets connections).
            out.push(Effect::Commit {
                group: gi,
                due: due.unwrap_or(now),
            });
            if self.lease_passed(now) {
                // What else the word holds lapsed: it is not carried over.
                self.lapse(Reason::LeaseLapsed);
            }
            let new_term = self.owned == 0;
            self.owned |= bit;
            self.lease_until = Some(now + self.lease);
            out.push(Effect::WriteOwnership {
                groups: self.owned,
                lease: Some(self.lease),
            });
            if new_term && let Some(p) = &self.prober {
                // Owning nothing before: a new term, after the word.
                self.term += 1;
                let s = p.settings();
                out.push(Effect::WriteProbeTerm {
                    term: self.term,
                    proof: crate::heartbeat::term_proof(&s.key, s.local, self.term),
                });
            }
            let g = &mut self.groups[gi];
            out.push(Effect::SendGarp { group: gi });
            g.garp_pending = g.garp_count.saturating_sub(1);
            g.garp_at = now + g.garp_interval;
            g.refresh_at = g.garp_refresh.map_or(Instant::MAX, |every| now + every);
            info!(event = "group", group = %g.name, role = "MASTER", ?reason, "MASTER: VIPs owned and announced");
        } else {
            if self.owned & bit != 0 {
                self.owned &= !bit;
                // A step-down never extends the lease of what remains: it
                // keeps the time it had, or, lapsed, is given up too.
                let left = self
                    .lease_until
                    .and_then(|t| t.checked_sub(now))
                    .filter(|d| !d.is_zero());
                let lease = match left {
                    Some(left) if self.owned != 0 => Some(left),
                    _ => {
                        if self.owned != 0 {
                            self.lapse(Reason::LeaseLapsed);
                        }
                        self.lease_until = None;
                        None
                    }
                };
                out.push(Effect::WriteOwnership {
                    groups: self.owned,
                    lease,
                });
            }
            self.groups[gi].garp_pending = 0;
            self.groups[gi].refresh_at = Instant::MAX;
            info!(event = "group", group = %self.groups[gi].name, role = to.as_str(), ?reason, "group left MASTER or started");
        }
        let g = &self.groups[gi];
        out.push(Effect::Hook {
            group: gi,
            hook: Hook::Services { role: to },
        });
        out.push(Effect::Hook {
            group: gi,
            hook: Hook::Notify {
                kind: NotifyKind::Group,
                name: g.name.clone(),
                role: to,
                priority: max_priority(&g.group),
            },
        });
        let name = g.name.clone();
        self.counters.record_transition(&name, to, reason, now);
    }
}

pub(super) fn max_priority(g: &Group) -> u8 {
    g.members()
        .iter()
        .map(Instance::priority)
        .max()
        .unwrap_or(0)
}
