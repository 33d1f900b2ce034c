//! The model of `ha-agent`'s loop around a node core: on each wake, state
//! sync is reported first, then every packet waiting in the socket is
//! handled, else the timers; effects are carried out in order, with the
//! checks of each batch; an ownership write the data plane refuses ends the
//! batch and is reported back, as is a renewal of a lapsed lease.

use ha_core::{
    node::{Effect, Event, Hook},
    vrrp::{
        auth::{self, AntiReplay},
        machine::{Reason, Role},
    },
};

use ha_common::heartbeat::ProbeTerm;

use super::{Item, Origin, T, TRACKED, World};
use crate::{node::ProbeFrom, scenario::ms};

impl World<'_> {
    pub(super) fn wake(&mut self, i: usize) {
        let t = self.now;
        if self.nodes[i].wake_at != Some(t) {
            return;
        }
        self.nodes[i].wake_at = None;
        let n = &self.nodes[i];
        if !n.up || n.core.is_none() {
            return;
        }
        let free = n.busy_until.max(n.frozen_until).max(n.paused_until);
        if free > t {
            self.schedule_wake(i, free);
            return;
        }
        let mut cur = t;
        // A failure left over from the last wake, then state sync, as the
        // shell does on every wake.
        if let Some(failure) = self.nodes[i].failure.take() {
            self.handle(i, cur, failure);
            cur += self.cost();
        }
        if self.nodes[i].told_sync != Some(self.nodes[i].in_sync) {
            let in_sync = self.nodes[i].in_sync;
            self.nodes[i].told_sync = Some(in_sync);
            self.handle(i, cur, Event::SyncState { in_sync });
            cur += self.cost();
        }
        if !self.nodes[i].inbox.is_empty() {
            while let Some(item) = self.nodes[i].inbox.pop_front() {
                if self.nodes[i].core.is_none() {
                    break;
                }
                self.item(i, cur, item);
                cur += self.cost();
            }
        } else if let Some(due) = self.due(i)
            && due <= cur
        {
            self.handle(i, cur, Event::Timer);
            cur += self.cost();
        }
        self.nodes[i].busy_until = cur;
        if !self.nodes[i].inbox.is_empty() {
            self.schedule_wake(i, cur);
        } else if let Some(due) = self.due(i) {
            self.schedule_wake(i, due.max(cur));
        }
    }

    /// When the core's next timer is due, in simulated time.
    fn due(&self, i: usize) -> Option<T> {
        let n = &self.nodes[i];
        let d = n.core.as_ref()?.poll_at()?;
        Some(n.to_sim(n.origin + d.as_nanos() as u64))
    }

    pub(super) fn item(&mut self, i: usize, t: T, item: Item) {
        match item {
            Item::Packet {
                bytes,
                path,
                origin,
                signed,
            } => {
                let wall = self.nodes[i].wall(t);
                if let Origin::Replay { vrid, src, seq } = origin {
                    if !self.replay_is_hostile(i, vrid, src, seq, wall) {
                        self.stats.replays_skipped += 1;
                        return;
                    }
                    self.stats.replays += 1;
                }
                self.check.before_packet(&self.nodes, i, origin);
                if origin.node().is_none() {
                    self.stats.hostile += 1;
                }
                let received = |n: &crate::world::SimNode| {
                    n.core.as_ref().map_or(0, |c| c.counters().adverts_received)
                };
                let before = received(&self.nodes[i]);
                let effects = self.handle(
                    i,
                    t,
                    Event::Packet {
                        path,
                        bytes: &bytes,
                        wall,
                    },
                );
                let accepted = self
                    .check
                    .after_packet(&self.nodes, i, origin, &bytes, effects, t);
                if accepted && let Some((vrid, src, seq, term)) = signed {
                    let m = self.nodes[i].seen.entry((vrid, src)).or_insert(seq);
                    *m = (*m).max(seq);
                    // Handed to a started core (its prober with it).
                    // The newest, as the prober counts it.
                    let took = received(&self.nodes[i]) > before;
                    let hb = &mut self.nodes[i].hb;
                    let newer = hb
                        .announced
                        .is_none_or(|(last, _)| auth::announces_newer(seq, last));
                    if took && newer {
                        hb.announced = Some((seq, term));
                    }
                }
            }
            Item::Probe {
                bytes,
                path,
                src,
                from,
            } => self.probe_item(i, t, &bytes, path, src, from),
            Item::Link(None, up) => {
                self.handle(i, t, Event::Link { iface: TRACKED, up });
            }
            Item::Link(Some(p), up) => {
                let iface = self.path_name(p);
                self.handle(i, t, Event::Link { iface: &iface, up });
            }
            Item::Command(c) => {
                self.handle(i, t, Event::Command(c));
            }
            Item::Reload => {
                self.nodes[i].reloads += 1;
                let extra = self.nodes[i].reloads % 2 == 1;
                let vips = self.sc.nodes[i]
                    .settings
                    .groups
                    .iter()
                    .enumerate()
                    .map(|(g, gs)| {
                        gs.instances
                            .iter()
                            .enumerate()
                            .map(|(m, (_, c))| {
                                let mut v = c.vips.clone();
                                if extra && m == 0 {
                                    v.push(std::net::Ipv4Addr::new(10, g as u8, 0, 100).into());
                                }
                                v
                            })
                            .collect()
                    })
                    .collect();
                self.handle(i, t, Event::SetVips(vips));
            }
        }
    }

    /// A frame of the fast heartbeat handed to node `i`'s core: what its
    /// prober was handed (for the checks), and the HOSTILE checks of the
    /// attacker's frames.
    fn probe_item(
        &mut self,
        i: usize,
        t: T,
        bytes: &[u8],
        path: usize,
        src: [u8; 6],
        from: ProbeFrom,
    ) {
        let Some(core) = &self.nodes[i].core else {
            return;
        };
        let hostile = !matches!(from, ProbeFrom::Node { .. });
        let state = hostile.then(|| core.election_state());
        let counts = |c: &ha_core::node::Node| {
            c.prober()
                .map_or((0, 0), |p| (p.replies(), p.rejected_total()))
        };
        let (replies, rejected) = counts(core);
        let transitions = core.counters().transitions_total;
        match from {
            ProbeFrom::Node { .. } => {}
            ProbeFrom::Hostile => self.stats.probe_hostile += 1,
            ProbeFrom::ForgedAlive { .. } => {
                self.stats.probe_hostile += 1;
                self.stats.probe_forged += 1;
            }
            ProbeFrom::Replayed { .. } => {
                self.stats.probe_hostile += 1;
                self.stats.probe_replayed += 1;
            }
        }
        self.probe_ctx = Some((from, crate::world::probe::term_of(bytes)));
        let effects = self.handle(i, t, Event::Probe { path, src, bytes });
        self.probe_ctx = None;
        let Some(core) = &self.nodes[i].core else {
            return;
        };
        let (replies_after, rejected_after) = counts(core);
        let accepted = replies_after > replies;
        let verdict = core.counters().transitions_total != transitions;
        let changed = state.is_some_and(|s| core.election_state() != s);
        let alive = bytes.len() >= 56 && bytes[40..48] != [0; 8] && bytes[48..56] != [0; 8];
        let term = crate::world::probe::term_of(bytes);
        let hb = &mut self.nodes[i].hb;
        if accepted {
            hb.answered = hb.answered.max(crate::world::probe::seq_of(bytes));
            if alive {
                hb.alive_max = hb.alive_max.max(term);
            }
            if let ProbeFrom::Node { alive, .. } = from {
                self.stats.replies += 1;
                hb.last_alive = Some(alive);
                let seq = crate::world::probe::seq_of(bytes);
                let sent = hb.rounds.back().map_or(seq, |&(s, _)| s);
                hb.depth_max = hb.depth_max.max((sent + 1).saturating_sub(seq));
            }
        }
        if !hostile {
            return;
        }
        let bad = match from {
            // Nothing in it can pass: refused, counted once, nothing else.
            ProbeFrom::Hostile => {
                effects != 0 || changed || accepted || rejected_after != rejected + 1
            }
            // May pass as a reply ("alive" forged, a genuine one replayed),
            // never move the election but by a verdict (LAPSED judges it).
            _ => !verdict && (changed || self.election_effects),
        };
        if bad {
            self.check.violation(
                t,
                format!(
                    "HOSTILE: node {i} changed on a hostile probe frame ({from:?}, {} bytes: {:02x?}): {effects} effects, rejections {rejected} -> {rejected_after}, accepted {accepted}",
                    bytes.len(),
                    &bytes[..bytes.len().min(80)]
                ),
            );
        }
    }

    /// Whether a replay of (VRID, source, sequence) is hostile to node `i`:
    /// it was handed a genuine advert at least as new from that source
    /// (with `time` anti-replay, one still within the window of its wall
    /// clock, or the replay itself is outside it). Otherwise it would be
    /// the genuine advert, not yet seen: the attacker does not send it.
    fn replay_is_hostile(
        &self,
        i: usize,
        vrid: u8,
        src: std::net::Ipv4Addr,
        seq: u64,
        wall: std::time::Duration,
    ) -> bool {
        let mark = self.nodes[i].seen.get(&(vrid, src)).copied();
        match self.sc.auth.anti_replay {
            AntiReplay::Monotonic => mark.is_some_and(|m| seq <= m),
            AntiReplay::Time { window_s } => {
                let within = |s: u64| {
                    let d = (wall.as_secs() as u32).wrapping_sub((s >> 32) as u32) as i32;
                    d.unsigned_abs() <= window_s
                };
                !within(seq) || mark.is_some_and(|m| seq <= m && within(m))
            }
        }
    }

    /// Hands `event` to node `i`'s core at `t` and carries out the effects;
    /// returns how many there were.
    pub(super) fn handle(&mut self, i: usize, t: T, event: Event<'_>) -> usize {
        let local = self.nodes[i].local(t);
        let Some(core) = &self.nodes[i].core else {
            return 0;
        };
        let before = core.counters().transitions_total;
        let label = self.trace.is_some().then(|| describe_event(&event));
        let rejected_before = label.as_ref().map(|_| core.counters().rejected.clone());
        let effects = match &mut self.nodes[i].core {
            Some(core) => core.handle(local, event),
            None => return 0,
        };
        if let (Some(label), Some(before), Some(core)) =
            (label, rejected_before, &self.nodes[i].core)
        {
            let effects = effects.clone();
            let rejected = core
                .counters()
                .rejected
                .iter()
                .find(|(r, n)| before.get(r) != Some(n))
                .map_or(String::new(), |(r, _)| format!(" (rejected: {})", r.name()));
            self.log(|| format!("node {i} @{local:?}: {label} -> {effects:?}{rejected}"));
        }
        let n = effects.len();
        // Effects beyond probes, status and path reports (a reply passed
        // marks its path up: the attacker that sees the probes can do that).
        self.election_effects = effects.iter().any(|e| {
            !matches!(
                e,
                Effect::SendProbe(_)
                    | Effect::WriteStatus
                    | Effect::Reply(_)
                    | Effect::Hook {
                        hook: Hook::Path { .. },
                        ..
                    }
            )
        });
        self.execute(i, t, effects, 0);
        self.after_handle(i, t, before);
        n
    }

    /// Carries out effects as the shell does.
    fn execute(&mut self, i: usize, t: T, effects: Vec<Effect>, depth: u8) {
        let mut followup = None;
        let mut muted = false;
        let mut batch = self.check.batch(i);
        for e in effects {
            match e {
                Effect::Commit { group, .. } => batch.commit(group),
                Effect::SendProbe(p) => self.send_probe(i, p),
                Effect::WriteProbeTerm { term, proof } => {
                    batch.probe_term(&mut self.check, &self.nodes[i], term, self.sc.tick, t);
                    // Written to disk, then to the map; neither fails in
                    // the model.
                    let n = &mut self.nodes[i];
                    n.disk_term = n.disk_term.max(term);
                    n.dp.term = ProbeTerm { term, proof };
                    n.term_began.insert(term, t);
                }
                Effect::WriteOwnership { groups, lease } => {
                    if self.nodes[i].dp.fail() {
                        self.log(|| format!("node {i}: ownership write fails"));
                        self.check.disturb(i, t, t + ms(100));
                        followup = Some(Event::OwnershipWriteFailed);
                        self.nodes[i].dp.stale = true;
                        if batch.took_over() {
                            // A takeover refused: nothing after it goes out.
                            break;
                        }
                        // A step-down or stop goes on, announcing nothing.
                        muted = true;
                        continue;
                    }
                    self.nodes[i].dp.stale = false;
                    let before: Vec<bool> = self.owned_groups(i, t);
                    let alive = self.nodes[i].alive(t, self.sc.tick);
                    let n = &mut self.nodes[i];
                    n.dp.groups = groups;
                    n.dp.expires = lease.map(|l| n.mono(t) + l.as_nanos() as u64);
                    if !alive && self.nodes[i].alive(t, self.sc.tick) {
                        batch.new_term_due(
                            self.nodes[i]
                                .core
                                .as_ref()
                                .is_some_and(|c| c.prober().is_some()),
                        );
                    }
                    let after = self.owned_groups(i, t);
                    for (g, (b, a)) in before.iter().zip(&after).enumerate() {
                        if !b && *a {
                            batch.gained(&mut self.check, g, t);
                        }
                        if *b && !*a {
                            batch.given_up(&mut self.check, g, t);
                        }
                    }
                    self.check.ownership_changed(&self.nodes, i, t);
                }
                Effect::RenewLease { groups, lease } => {
                    if self.nodes[i].dp.fail() {
                        self.log(|| format!("node {i}: lease renewal fails"));
                        self.check.disturb(i, t, t + ms(100));
                        self.nodes[i].dp.stale = true;
                        followup = Some(Event::OwnershipWriteFailed);
                        break;
                    }
                    let n = &mut self.nodes[i];
                    let mono = n.mono(t);
                    if n.dp.expires.is_some_and(|e| e <= mono) {
                        followup = Some(Event::LeaseLapsed);
                        break;
                    }
                    let before = self.owned_groups(i, t);
                    let n = &mut self.nodes[i];
                    n.dp.groups = groups;
                    n.dp.expires = Some(n.mono(t) + lease.as_nanos() as u64);
                    n.dp.stale = false;
                    let after = self.owned_groups(i, t);
                    for (g, (b, a)) in before.iter().zip(&after).enumerate() {
                        if !b && *a {
                            batch.gained(&mut self.check, g, t);
                        }
                    }
                    self.check.ownership_changed(&self.nodes, i, t);
                }
                Effect::SendAdvert(_) | Effect::SendGarp { .. } if muted => {}
                Effect::SendAdvert(advert) => self.send(i, &advert),
                Effect::SendGarp { group } => {
                    batch.garp(&mut self.check, &self.nodes[i], group, self.sc.tick, t);
                }
                Effect::Hook { group, hook } => {
                    if hook == (Hook::Services { role: Role::Master }) {
                        batch.services(&mut self.check, &self.nodes[i], group, self.sc.tick, t);
                    }
                }
                Effect::SaveMaintenance(on) => self.nodes[i].maintenance = on,
                Effect::ForceResync => {
                    if self.sc.nodes[i].settings.state_sync {
                        self.sync_restart(i);
                    }
                }
                Effect::WriteStatus | Effect::Reply(_) => {}
            }
        }
        batch.end(&mut self.check, t);
        match followup {
            Some(event) if depth == 0 => {
                let local = self.nodes[i].local(t);
                self.log(|| format!("node {i}: reported back {event:?}"));
                let effects = match &mut self.nodes[i].core {
                    Some(core) => core.handle(local, event),
                    None => return,
                };
                self.execute(i, t, effects, 1);
            }
            Some(event) => self.nodes[i].failure = Some(event),
            None => {}
        }
    }

    fn owned_groups(&self, i: usize, t: T) -> Vec<bool> {
        (0..self.check.groups())
            .map(|g| self.nodes[i].owns(g, t, self.sc.tick))
            .collect()
    }

    /// Checks after every event a core handled: transitions (failovers, the
    /// preemption gate) and data plane against core.
    fn after_handle(&mut self, i: usize, t: T, before: u64) {
        let Some(core) = &self.nodes[i].core else {
            return;
        };
        let c = core.counters();
        let new = (c.transitions_total - before) as usize;
        let recent: Vec<(Role, Reason, String)> = c
            .transitions
            .iter()
            .rev()
            .take(new)
            .map(|r| (r.role, r.reason, r.group.clone()))
            .collect();
        if new > 0 {
            self.nodes[i].last_transition = t;
        }
        let mut verdict = None;
        for (role, reason, group) in recent {
            if role != Role::Master {
                continue;
            }
            if let Some(g) = group.strip_prefix('g').and_then(|g| g.parse().ok()) {
                self.detect_took_over(i, g, t);
            }
            match reason {
                Reason::PeerSilent | Reason::PeerLapsed => verdict = Some(reason),
                Reason::MasterDown | Reason::MasterLeft => {
                    self.stats.failovers += 1;
                    self.check
                        .silent_takeover(&self.nodes, i, &group, reason, t);
                }
                Reason::Preempt
                    if self.sc.nodes[i].settings.state_sync
                        && !(self.nodes[i].in_sync && self.nodes[i].told_sync == Some(true)) =>
                {
                    self.check.violation(
                        t,
                        format!("GATE: node {i} preempted before its state sync was complete"),
                    );
                }
                _ => {}
            }
        }
        if let Some(reason) = verdict {
            self.verdict(i, t, reason);
        }
        self.check.consistent(&self.nodes, i, t);
    }
}

fn describe_event(e: &Event<'_>) -> String {
    match e {
        Event::Packet { bytes: b, path, .. } => {
            match ha_core::vrrp::packet::parse(b, |_| true, |_| true) {
                Ok(rx) => format!(
                    "advert from {} vrid {} prio {} int {}cs over path {path}{}",
                    rx.src,
                    rx.advert.vrid,
                    rx.advert.priority,
                    rx.advert.interval_cs,
                    rx.trailer.map_or(String::new(), |t| format!(
                        " seq {:#x}",
                        ha_core::vrrp::auth::trailer_seq(&t)
                    ))
                ),
                Err((r, src)) => format!("bad packet ({r:?}, from {src:?}, {} bytes)", b.len()),
            }
        }
        other => format!("{other:?}"),
    }
}
