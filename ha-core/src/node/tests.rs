//! The node core driven at fixed instants: takeover order, the lease, the
//! preemption gate, hostile input, operator commands.

use super::*;
use crate::vrrp::auth;
use crate::vrrp::{
    machine::Reason,
    wire::{self, MULTICAST},
};
use std::net::Ipv6Addr;

const ME: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn ms(v: u64) -> Instant {
    Duration::from_millis(v)
}

fn settings(priority: u8, state_sync: bool) -> Settings {
    Settings {
        peers: vec![PEER],
        lease: ms(26),
        state_sync,
        groups: vec![GroupSettings {
            name: "fw".into(),
            instances: vec![(
                "VI_1".into(),
                machine::Config {
                    vrid: 51,
                    priority,
                    advert_interval_cs: 1,
                    preempt: true,
                    preempt_delay: Duration::ZERO,
                    local_addr: ME,
                    vips: vec![VIP.into()],
                },
            )],
            tracks: vec![Track {
                iface: "wan0".into(),
                weight: 0,
            }],
            garp_count: 3,
            garp_interval: ms(10),
            garp_refresh: None,
        }],
        auth: Default::default(),
        paths: Vec::new(),
        heartbeat: None,
    }
}

fn started(priority: u8, state_sync: bool) -> (Node, Vec<Effect>) {
    start(settings(priority, state_sync))
}

/// A node of `s`, started at 0 owning nothing, and the effects of its start.
fn start(s: Settings) -> (Node, Vec<Effect>) {
    let mut n = Node::new(s).unwrap();
    let out = n.handle(
        ms(0),
        Event::Start {
            resumed: 0,
            maintenance: false,
            links: &[],
        },
    );
    (n, out)
}

/// An advert from `src` as the raw socket delivers it.
fn advert_from(src: Ipv4Addr, priority: u8) -> Vec<u8> {
    let vrrp = wire::Repr {
        vrid: 51,
        priority,
        interval_cs: 1,
        addrs: vec![VIP.into()],
    }
    .to_bytes(src, MULTICAST);
    packet::ip_packet(src, MULTICAST, &vrrp)
}

fn position(out: &[Effect], f: impl Fn(&Effect) -> bool) -> usize {
    out.iter()
        .position(f)
        .unwrap_or_else(|| panic!("not in {out:#?}"))
}

/// Runs timers until the node is master; returns the effects of that step.
fn until_master(n: &mut Node) -> (Instant, Vec<Effect>) {
    loop {
        let t = n.poll_at().expect("a timer");
        let out = n.handle(t, Event::Timer);
        if n.roles().all(|r| r == Role::Master) {
            return (t, out);
        }
    }
}

/// A packet over the HA link.
fn pkt(bytes: &[u8]) -> Event<'_> {
    Event::Packet {
        path: 0,
        bytes,
        wall: Duration::ZERO,
    }
}

#[test]
fn start_owns_nothing_and_goes_backup() {
    let (n, out) = started(100, false);
    assert_eq!(
        out[0],
        Effect::WriteOwnership {
            groups: 0,
            lease: None
        }
    );
    assert_eq!(n.roles().collect::<Vec<_>>(), vec![Role::Backup]);
    assert_eq!(
        n.poll_at(),
        Some(machine::master_down_interval(100, 1)),
        "master down after MDI"
    );
}

#[test]
fn takeover_commits_then_owns_then_announces_then_advertises() {
    let (mut n, _) = started(100, false);
    let (t, out) = until_master(&mut n);
    let commit = position(&out, |e| matches!(e, Effect::Commit { group: 0, .. }));
    let own = position(
        &out,
        |e| matches!(e, Effect::WriteOwnership { groups: 1, lease: Some(l) } if *l == ms(26)),
    );
    let garp = position(&out, |e| matches!(e, Effect::SendGarp { group: 0 }));
    let advert = position(
        &out,
        |e| matches!(e, Effect::SendAdvert(a) if a.priority == 100),
    );
    let hook = position(&out, |e| {
        matches!(
            e,
            Effect::Hook {
                hook: Hook::Services { role: Role::Master },
                ..
            }
        )
    });
    let status = position(&out, |e| *e == Effect::WriteStatus);
    assert!(
        commit < own && own < garp && garp < advert && garp < hook && hook < status,
        "{out:#?}"
    );
    assert!(
        matches!(out[commit], Effect::Commit { due, .. } if due == t),
        "timing starts when the timer was due"
    );
    assert!(
        !out.iter().any(|e| matches!(e, Effect::RenewLease { .. })),
        "the takeover's own write is the renewal: {out:#?}"
    );
    // Two more GARP rounds, 10 ms apart; then adverts renew the lease first.
    let out = n.handle(t + ms(10), Event::Timer);
    let renew = position(&out, |e| matches!(e, Effect::RenewLease { .. }));
    let advert = position(&out, |e| matches!(e, Effect::SendAdvert(_)));
    assert!(renew < advert, "{out:#?}");
    assert!(out.contains(&Effect::SendGarp { group: 0 }));
    let out = n.handle(t + ms(20), Event::Timer);
    assert!(out.contains(&Effect::SendGarp { group: 0 }));
    let out = n.handle(t + ms(30), Event::Timer);
    assert!(
        !out.contains(&Effect::SendGarp { group: 0 }),
        "three rounds"
    );
}

#[test]
fn a_higher_master_takes_over_and_we_write_ownership_before_anything_else() {
    let (mut n, _) = started(100, false);
    let (t, _) = until_master(&mut n);
    let out = n.handle(t + ms(1), pkt(&advert_from(PEER, 200)));
    assert_eq!(
        out[0],
        Effect::WriteOwnership {
            groups: 0,
            lease: None
        },
        "{out:#?}"
    );
    assert!(
        out.iter()
            .any(|e| matches!(e, Effect::SendAdvert(a) if a.priority == 100))
    );
    assert_eq!(n.roles().collect::<Vec<_>>(), vec![Role::Backup]);
    assert_eq!(n.owned(), 0);
}

#[test]
fn a_stall_past_the_lease_steps_down_without_an_advert_at_our_priority() {
    let (mut n, _) = started(200, false);
    let (t, _) = until_master(&mut n);
    // The loop stalls for 40 ms: the advert due at t + 10 ms runs at t + 40.
    let out = n.handle(t + ms(40), Event::Timer);
    assert!(
        !out.iter()
            .any(|e| matches!(e, Effect::SendAdvert(a) if a.priority != 0)),
        "{out:#?}"
    );
    assert!(!out.iter().any(|e| matches!(e, Effect::RenewLease { .. })));
    assert!(!out.iter().any(|e| matches!(e, Effect::SendGarp { .. })));
    let clear = position(&out, |e| {
        *e == Effect::WriteOwnership {
            groups: 0,
            lease: None,
        }
    });
    let zero = position(
        &out,
        |e| matches!(e, Effect::SendAdvert(a) if a.priority == 0),
    );
    assert!(
        clear < zero,
        "ownership cleared before the priority-0 advert"
    );
    assert_eq!(n.roles().collect::<Vec<_>>(), vec![Role::Backup]);
    let c = n.counters();
    assert_eq!(c.lease_lapses, 1);
    assert_eq!(c.transitions_by_reason.get("LeaseLapsed"), Some(&1));
    assert!(!out.contains(&Effect::ForceResync), "no state sync here");
}

#[test]
fn after_a_stall_a_node_with_state_sync_preempts_only_after_a_resync() {
    let (mut n, _) = started(200, true);
    n.handle(ms(0), Event::SyncState { in_sync: true });
    let (t, _) = until_master(&mut n);
    let out = n.handle(t + ms(40), Event::Timer);
    assert!(out.contains(&Effect::ForceResync), "{out:#?}");
    assert!(!n.report().preempt_allowed);
    // The peer (priority 100) took over; our master-down timer runs out,
    // and we stay backup until the resync is complete.
    let mut now = t + ms(41);
    for _ in 0..50 {
        now += ms(10);
        n.handle(now, pkt(&advert_from(PEER, 100)));
        while let Some(due) = n.poll_at().filter(|d| *d <= now) {
            n.handle(due, Event::Timer);
        }
    }
    assert_eq!(n.roles().collect::<Vec<_>>(), vec![Role::Backup]);
    n.handle(now, Event::SyncState { in_sync: true });
    let (_, _) = until_master(&mut n);
}

#[test]
fn the_data_plane_refusing_a_renewal_steps_down() {
    let (mut n, _) = started(200, false);
    let (t, _) = until_master(&mut n);
    let out = n.handle(t + ms(1), Event::LeaseLapsed);
    assert_eq!(
        out[0],
        Effect::WriteOwnership {
            groups: 0,
            lease: None
        }
    );
    assert_eq!(n.owned(), 0);
    assert_eq!(n.roles().collect::<Vec<_>>(), vec![Role::Backup]);
}

#[test]
fn hostile_packets_change_nothing_but_counters() {
    let (mut n, _) = started(200, false);
    let (t, _) = until_master(&mut n);
    let before = n.election_state();
    let mut bad_checksum = advert_from(PEER, 255);
    bad_checksum[22] ^= 0x55;
    let mut v2 = advert_from(PEER, 255);
    v2[20] = 0x21;
    let mut ttl = advert_from(PEER, 255);
    ttl[8] = 64;
    let stranger = advert_from(Ipv4Addr::new(10, 255, 0, 66), 255);
    let inputs: Vec<Vec<u8>> = vec![
        bad_checksum,
        v2,
        ttl,
        stranger,
        vec![],
        vec![0x45; 19],
        advert_from(PEER, 255)[..27].to_vec(),
    ];
    for (i, bytes) in inputs.iter().enumerate() {
        let out = n.handle(t + ms(1), pkt(bytes));
        assert!(out.is_empty(), "input {i}: {out:#?}");
        assert_eq!(n.election_state(), before, "input {i}");
    }
    let c = n.counters();
    assert_eq!(c.rejected.values().sum::<u64>(), inputs.len() as u64);
    assert_eq!(c.adverts_received, 0);
}

#[test]
fn preemption_waits_for_state_sync() {
    let (mut n, _) = started(200, true);
    // A lower-priority master advertises every 10 ms for 200 ms.
    for i in 0..20 {
        let t = ms(i * 10);
        n.handle(t, pkt(&advert_from(PEER, 100)));
        n.handle(t + ms(5), Event::Timer);
        assert_eq!(
            n.roles().collect::<Vec<_>>(),
            vec![Role::Backup],
            "at {t:?}"
        );
    }
    n.handle(ms(200), Event::SyncState { in_sync: true });
    // Lower adverts are now discarded: the master-down timer preempts.
    let (_, out) = until_master(&mut n);
    assert!(out.iter().any(|e| matches!(e, Effect::Commit { .. })));
}

#[test]
fn a_restart_within_the_lease_resumes_as_master() {
    let mut n = Node::new(settings(100, false)).unwrap();
    let out = n.handle(
        ms(0),
        Event::Start {
            resumed: 1,
            maintenance: false,
            links: &[],
        },
    );
    let own = position(&out, |e| {
        matches!(e, Effect::WriteOwnership { groups: 1, .. })
    });
    let commit = position(&out, |e| matches!(e, Effect::Commit { .. }));
    assert!(commit < own);
    assert!(
        out.iter()
            .any(|e| matches!(e, Effect::SendAdvert(a) if a.priority == 100))
    );
    assert_eq!(
        n.counters().transitions.back().map(|t| t.reason),
        Some(Reason::Resumed)
    );
}

#[test]
fn a_tracked_link_down_at_start_faults_a_resumed_group() {
    let mut n = Node::new(settings(100, false)).unwrap();
    let out = n.handle(
        ms(0),
        Event::Start {
            resumed: 1,
            maintenance: false,
            links: &[("wan0".into(), false)],
        },
    );
    assert!(out.contains(&Effect::WriteOwnership {
        groups: 0,
        lease: None
    }));
    assert_eq!(n.roles().collect::<Vec<_>>(), vec![Role::Fault]);
    assert!(!out.iter().any(|e| matches!(e, Effect::SendGarp { .. })));
}

#[test]
fn operator_commands_answer_and_persist() {
    let (mut n, _) = started(100, true);
    let out = n.handle(ms(1), Event::Command(Command::Maintenance(true)));
    assert!(out.contains(&Effect::SaveMaintenance(true)));
    assert!(matches!(out.last(), Some(Effect::Reply(Ok(m))) if m.starts_with("maintenance on")));
    assert_eq!(n.report().priority_override, Some(DEMOTED_PRIORITY));
    let out = n.handle(ms(2), Event::Command(Command::Promote));
    assert!(
        out.contains(&Effect::SaveMaintenance(false)),
        "promote ends maintenance"
    );
    assert!(
        matches!(out.last(), Some(Effect::Reply(Ok(m))) if m.contains("once state sync is complete"))
    );
    let out = n.handle(ms(3), Event::Command(Command::Resync));
    assert!(out.contains(&Effect::ForceResync));
    let (mut plain, _) = started(100, false);
    let out = plain.handle(ms(1), Event::Command(Command::Resync));
    assert!(matches!(out.last(), Some(Effect::Reply(Err(m))) if m.contains("not configured")));
}

#[test]
fn maintenance_at_start_stays_backup_against_a_lower_master() {
    let mut n = Node::new(settings(200, false)).unwrap();
    n.handle(
        ms(0),
        Event::Start {
            resumed: 0,
            maintenance: true,
            links: &[],
        },
    );
    for i in 0..50 {
        n.handle(ms(i * 10), pkt(&advert_from(PEER, 100)));
        n.handle(ms(i * 10 + 5), Event::Timer);
    }
    assert_eq!(n.roles().collect::<Vec<_>>(), vec![Role::Backup]);
    assert!(n.report().maintenance);
}

#[test]
fn transitions_are_counted_past_the_history() {
    let (mut n, _) = started(100, false);
    let mut t = ms(0);
    for _ in 0..15 {
        let (at, _) = until_master(&mut n);
        t = at + ms(1);
        n.handle(t, pkt(&advert_from(PEER, 200)));
    }
    let c = n.counters();
    assert_eq!(c.transitions.len(), HISTORY);
    assert_eq!(c.transitions_total, 31, "startup + 15 x (master, backup)");
    assert_eq!(c.transitions_by_reason.get("MasterDown"), Some(&15));
    assert_eq!(c.transitions_by_reason.get("HigherPriority"), Some(&15));
    assert!(t > ms(0));
}

#[test]
fn stop_releases_with_priority_zero_after_clearing_ownership() {
    let (mut n, _) = started(100, false);
    let (t, _) = until_master(&mut n);
    let out = n.handle(t + ms(1), Event::Stop);
    let clear = position(&out, |e| {
        matches!(e, Effect::WriteOwnership { groups: 0, .. })
    });
    let zero = position(
        &out,
        |e| matches!(e, Effect::SendAdvert(a) if a.priority == 0),
    );
    assert!(clear < zero);
    assert_eq!(n.owned(), 0);
}

#[test]
fn new_vips_are_advertised_and_announced_by_a_master() {
    let (mut n, _) = started(100, false);
    let (t, _) = until_master(&mut n);
    let other = Ipv4Addr::new(10, 0, 0, 2);
    let out = n.handle(
        t + ms(1),
        Event::SetVips(vec![vec![vec![VIP.into(), other.into()]]]),
    );
    assert!(out.contains(&Effect::SendGarp { group: 0 }));
    let out = n.handle(t + ms(10), Event::Timer);
    assert!(out.iter().any(
        |e| matches!(e, Effect::SendAdvert(a) if a.addrs == vec![IpAddr::from(VIP), other.into()])
    ));
}

#[test]
fn settings_the_core_cannot_run_are_refused() {
    let mut s = settings(100, false);
    s.groups.push(s.groups[0].clone());
    assert_eq!(Node::new(s).unwrap_err(), NodeError::DuplicateVrid(51));
    let mut s = settings(100, false);
    s.groups[0].instances.clear();
    assert!(matches!(Node::new(s), Err(NodeError::EmptyGroup(_))));
}

/// Two groups, one settings.
fn two_groups(priority: u8) -> Settings {
    let mut s = settings(priority, false);
    let mut g1 = s.groups[0].clone();
    g1.name = "g1".into();
    g1.instances[0].1.vrid = 52;
    g1.instances[0].0 = "VI_2".into();
    s.groups.push(g1);
    s
}

fn advert_for(src: Ipv4Addr, vrid: u8, priority: u8) -> Vec<u8> {
    let vrrp = wire::Repr {
        vrid,
        priority,
        interval_cs: 1,
        addrs: vec![VIP.into()],
    }
    .to_bytes(src, MULTICAST);
    packet::ip_packet(src, MULTICAST, &vrrp)
}

/// Found by the simulation in the code before the node core: after a stall
/// past the lease, one group stepping down rewrote the others with a fresh
/// lease, reviving ownership the peer may have taken over meanwhile.
#[test]
fn a_step_down_after_a_stall_revives_no_other_group() {
    let (mut n, _) = start(two_groups(200));
    let (t, _) = until_master(&mut n);
    assert_eq!(n.owned(), 0b11);
    // Stalled for 60 ms; the first thing handled is a better advert for g1.
    let out = n.handle(t + ms(60), pkt(&advert_for(PEER, 52, 254)));
    for e in &out {
        if let Effect::WriteOwnership { groups, lease } = e {
            assert!(
                *groups == 0 && lease.is_none(),
                "nothing may be written back under a lapsed lease: {out:#?}"
            );
        }
        assert!(
            !matches!(e, Effect::RenewLease { .. } | Effect::SendGarp { .. }),
            "{out:#?}"
        );
    }
    assert_eq!(n.owned(), 0);
    assert!(n.roles().all(|r| r == Role::Backup), "{out:#?}");
}

#[test]
fn a_takeover_after_a_stall_carries_no_lapsed_group() {
    let (mut n, _) = start(two_groups(200));
    let (t, _) = until_master(&mut n);
    // g1 steps down to a better peer; g0 stays master.
    n.handle(t + ms(1), pkt(&advert_for(PEER, 52, 254)));
    assert_eq!(n.owned(), 0b01);
    // Stall: g0's advert and g1's master-down timer are both long due.
    let out = n.handle(t + ms(200), Event::Timer);
    let k = position(&out, |e| matches!(e, Effect::Commit { group: 1, .. }));
    assert!(
        matches!(out[k + 1], Effect::WriteOwnership { groups: 0b10, .. }),
        "g0's lapsed lease is not carried: {out:#?}"
    );
    // Found in review: g1, which took over in this very event, keeps it
    // (it advertises, and nothing gives it up again).
    assert!(
        out[k..]
            .iter()
            .any(|e| matches!(e, Effect::SendAdvert(a) if a.vrid == 52 && a.priority == 200)),
        "{out:#?}"
    );
    assert!(
        !out[k + 2..]
            .iter()
            .any(|e| matches!(e, Effect::WriteOwnership { groups, .. } if groups & 0b10 == 0)),
        "{out:#?}"
    );
    assert_eq!(
        n.roles().collect::<Vec<_>>(),
        vec![Role::Backup, Role::Master],
        "g0 stepped down, g1 stays: {out:#?}"
    );
    assert_eq!(n.owned(), 0b10);
}

#[test]
fn a_failed_write_is_a_step_down_of_its_own_kind() {
    let (mut n, _) = started(200, false);
    let (t, _) = until_master(&mut n);
    let out = n.handle(t + ms(1), Event::OwnershipWriteFailed);
    assert_eq!(
        out[0],
        Effect::WriteOwnership {
            groups: 0,
            lease: None
        }
    );
    let c = n.counters();
    assert_eq!((c.write_failures, c.lease_lapses), (1, 0));
    assert_eq!(c.transitions_by_reason.get("WriteFailed"), Some(&1));
}

/// Found by the simulation: after a write that failed to give a group up,
/// a renewal that kept the data plane's word revived it. A renewal names
/// exactly what the node owns.
#[test]
fn a_renewal_names_only_what_the_node_owns() {
    let (mut n, _) = start(two_groups(200));
    let (t, _) = until_master(&mut n);
    n.handle(t + ms(1), pkt(&advert_for(PEER, 52, 254)));
    let out = n.handle(t + ms(10), Event::Timer);
    let renewals: Vec<u64> = out
        .iter()
        .filter_map(|e| match e {
            Effect::RenewLease { groups, .. } => Some(*groups),
            _ => None,
        })
        .collect();
    assert_eq!(renewals, vec![0b01], "{out:#?}");
}

// ----- authenticated adverts and heartbeat paths -----

const LAN_ME: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const LAN_PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const WALL: Duration = Duration::from_secs(1_800_000_000);

fn advert_key() -> auth::Key {
    auth::Key::new(1, &[0x42; 32]).unwrap()
}

/// `settings` with enforced authentication and heartbeats over ha0 and lan0.
fn authenticated(priority: u8) -> Settings {
    let mut s = settings(priority, false);
    s.auth = auth::Settings {
        mode: auth::Mode::Enforce,
        anti_replay: auth::AntiReplay::Monotonic,
        keys: vec![advert_key()],
        active: 1,
    };
    s.paths = vec![
        PathSettings {
            name: "ha0".into(),
            local: ME,
        },
        PathSettings {
            name: "lan0".into(),
            local: LAN_ME,
        },
    ];
    s
}

/// An advert from `src`, signed with sequence `seq` (or unsigned).
fn signed_from(src: Ipv4Addr, priority: u8, seq: Option<u64>) -> Vec<u8> {
    let mut p = advert_from(src, priority);
    if let Some(seq) = seq {
        let t = auth::seal(&advert_key(), seq, src, &p[20..]);
        p.extend_from_slice(&t);
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
    }
    p
}

fn over(path: usize, bytes: &[u8]) -> Event<'_> {
    Event::Packet {
        path,
        bytes,
        wall: WALL,
    }
}

#[test]
fn forged_unsigned_and_replayed_adverts_move_nothing() {
    let (mut n, _) = start(authenticated(100));
    let (t, _) = until_master(&mut n);
    let before = n.election_state();
    let seq = auth::clock_seq(WALL);
    // The peer's genuine advert at a lower priority: accepted, we stay.
    let genuine = signed_from(PEER, 50, Some(seq));
    n.handle(t + ms(1), over(0, &genuine));
    assert_eq!(n.counters().adverts_received, 1);
    let hostile = [
        (signed_from(PEER, 255, None), Rejected::AuthMissing),
        (genuine.clone(), Rejected::AuthReplay),
        // A priority-255 copy of a genuine advert with a newer sequence.
        (
            {
                let mut f = signed_from(PEER, 50, Some(seq + 1));
                f[22] = 255;
                wire::Packet::new_unchecked(&mut f[20..32]).fill_checksum(PEER, MULTICAST);
                f
            },
            Rejected::AuthBadTag,
        ),
        (
            signed_from(Ipv4Addr::new(10, 255, 0, 9), 255, Some(seq + 2)),
            Rejected::NotPeer,
        ),
        (signed_from(LAN_ME, 255, Some(seq + 2)), Rejected::Own),
    ];
    for (i, (bytes, reason)) in hostile.iter().enumerate() {
        let path = if i == hostile.len() - 1 { 1 } else { 0 };
        let out = n.handle(t + ms(2), over(path, bytes));
        assert!(out.is_empty(), "{reason:?}: {out:#?}");
        assert_eq!(n.counters().rejected.get(reason), Some(&1), "{reason:?}");
    }
    let after = n.election_state();
    assert_eq!(before.owned, after.owned);
    assert_eq!(n.roles().collect::<Vec<_>>(), vec![Role::Master]);
}

#[test]
fn a_data_path_keeps_a_backup_when_the_ha_link_is_silent_and_says_so() {
    let (mut n, _) = start(authenticated(100));
    let started = n.counters().transitions_total;
    let mut seq = auth::clock_seq(WALL);
    let mut t = ms(0);
    let mut hooks = Vec::new();
    // The peer is master at 200: its adverts over both paths, then over
    // lan0 only (the HA link cut), for many master-down intervals.
    for i in 0..200u64 {
        t = ms(i * 10);
        for path in if i < 20 { vec![0, 1] } else { vec![1] } {
            seq += 1;
            let src = if path == 0 { PEER } else { LAN_PEER };
            let bytes = signed_from(src, 200, Some(seq));
            let out = n.handle(t, over(path, &bytes));
            hooks.extend(out.into_iter().filter(|e| matches!(e, Effect::Hook { .. })));
        }
        while let Some(due) = n.poll_at().filter(|d| *d <= t) {
            let out = n.handle(due, Event::Timer);
            hooks.extend(out.into_iter().filter(|e| matches!(e, Effect::Hook { .. })));
        }
    }
    assert_eq!(
        n.roles().collect::<Vec<_>>(),
        vec![Role::Backup],
        "no takeover"
    );
    assert_eq!(
        n.counters().transitions_total,
        started,
        "no transition at all"
    );
    let paths = n.report().paths;
    assert_eq!(paths[0].state, PathState::Down, "{paths:?}");
    assert_eq!(paths[1].state, PathState::Up, "{paths:?}");
    assert_eq!(
        hooks,
        vec![Effect::Hook {
            group: 0,
            hook: Hook::Path {
                name: "ha0".into(),
                state: PathState::Down
            }
        }]
    );
    // Every path silent: the peer is down, we take over at the
    // master-down interval.
    let (took, _) = until_master(&mut n);
    assert!(took <= t + machine::master_down_interval(100, 1) + ms(1));
}

#[test]
fn unsigned_adverts_never_count_over_a_data_path() {
    let mut s = authenticated(100);
    s.auth.mode = auth::Mode::Permissive;
    let (mut n, _) = start(s);
    let plain = signed_from(LAN_PEER, 200, None);
    n.handle(ms(1), over(1, &plain));
    assert_eq!(n.counters().rejected.get(&Rejected::AuthMissing), Some(&1));
    // The same over the HA link is accepted in permissive mode.
    let plain = signed_from(PEER, 200, None);
    n.handle(ms(2), over(0, &plain));
    assert_eq!(n.counters().adverts_received, 1);
}

#[test]
fn data_paths_need_one_peer_and_signed_adverts() {
    let mut s = authenticated(100);
    s.auth.mode = auth::Mode::ReceiveOnly;
    assert!(matches!(Node::new(s), Err(NodeError::DataPaths(1))));
    let mut s = authenticated(100);
    s.peers.push(Ipv4Addr::new(10, 255, 0, 3));
    assert!(matches!(Node::new(s), Err(NodeError::DataPaths(2))));
}

#[test]
fn a_path_without_carrier_is_reported_and_moves_no_role() {
    let (mut n, _) = start(authenticated(100));
    let (t, _) = until_master(&mut n);
    let out = n.handle(
        t + ms(1),
        Event::Link {
            iface: "ha0",
            up: false,
        },
    );
    assert!(out.contains(&Effect::Hook {
        group: 0,
        hook: Hook::Path {
            name: "ha0".into(),
            state: PathState::NoCarrier
        }
    }));
    assert_eq!(n.report().paths[0].state, PathState::NoCarrier);
    assert_eq!(n.roles().collect::<Vec<_>>(), vec![Role::Master]);
    let out = n.handle(
        t + ms(2),
        Event::Link {
            iface: "ha0",
            up: true,
        },
    );
    assert!(out.iter().any(|e| matches!(
        e,
        Effect::Hook {
            hook: Hook::Path {
                state: PathState::Quiet,
                ..
            },
            ..
        }
    )));
}

#[test]
fn a_rejected_packet_reports_no_path_change() {
    // Found by the simulation: a hostile packet handled first after a
    // stall reported the HA link down (a path change due by then, which the
    // timer reports): hostile input must produce no effect at all.
    let (mut n, _) = start(authenticated(100));
    let mut seq = auth::clock_seq(WALL);
    for i in 0..=13u64 {
        let t = ms(i * 10);
        let paths: &[usize] = if i <= 10 { &[0, 1] } else { &[1] };
        for &path in paths {
            seq += 1;
            let src = if path == 0 { PEER } else { LAN_PEER };
            n.handle(t, over(path, &signed_from(src, 200, Some(seq))));
        }
    }
    // The HA link silent for its timeout; lan0 heard 7 ms ago.
    let at = ms(100) + machine::master_down_interval(100, 1) + ms(1);
    assert_eq!(n.report().paths[0].state, PathState::Up);
    let out = n.handle(at, over(0, &[0x45; 12]));
    assert!(out.is_empty(), "{out:#?}");
    let out = n.handle(at, Event::Timer);
    assert!(
        out.contains(&Effect::Hook {
            group: 0,
            hook: Hook::Path {
                name: "ha0".into(),
                state: PathState::Down
            }
        }),
        "{out:#?}"
    );
}

#[test]
fn a_path_without_carrier_at_start_is_reported() {
    // The I/O layer passes every link of `tracked_links()` (the paths'
    // too) in Event::Start: a path without carrier then is no-carrier.
    let mut n = Node::new(authenticated(100)).unwrap();
    let links = [
        ("wan0".to_owned(), true),
        ("ha0".to_owned(), true),
        ("lan0".to_owned(), false),
    ];
    n.handle(
        ms(0),
        Event::Start {
            resumed: 0,
            maintenance: false,
            links: &links,
        },
    );
    assert_eq!(n.report().paths[1].state, PathState::NoCarrier);
    let out = n.handle(
        ms(1),
        Event::Link {
            iface: "lan0",
            up: true,
        },
    );
    assert!(
        out.iter().any(|e| matches!(
            e,
            Effect::Hook {
                hook: Hook::Path { .. },
                ..
            }
        )),
        "{out:#?}"
    );
}

mod fast_heartbeat {
    use ha_common::{
        data::Ownership,
        heartbeat::{ProbeConfig, ProbeTerm},
    };

    use super::*;
    use crate::heartbeat::{self, reflect, term_proof};

    const KEY: [u8; 32] = [5; 32];

    fn with_heartbeat(priority: u8) -> Settings {
        Settings {
            heartbeat: Some(heartbeat::Settings {
                interval: ms(1),
                misses_min: 3,
                misses_max: 30,
                key: KEY,
                session: [2; 16],
                local: ME,
                peer: PEER,
            }),
            ..settings(priority, false)
        }
    }

    /// The peer's reflector.
    struct Peer {
        term: ProbeTerm,
        own: Ownership,
    }

    impl Peer {
        fn master(term: u64, lease_until: Instant) -> Peer {
            Peer {
                term: ProbeTerm {
                    term,
                    proof: term_proof(&KEY, PEER, term),
                },
                own: Ownership {
                    groups: 1,
                    lease_expires_ns: lease_until.as_nanos() as u64,
                },
            }
        }
    }

    /// Runs timers up to `until`, the peer (if any) answering every probe
    /// at once; the effects of every step.
    fn run(n: &mut Node, from: Instant, until: Instant, peer: Option<&Peer>) -> Vec<Effect> {
        let cfg = ProbeConfig {
            enabled: 1,
            local_addr: u32::from_ne_bytes(PEER.octets()),
            peer_addr: u32::from_ne_bytes(ME.octets()),
            _pad: 0,
        };
        let mut all = Vec::new();
        let mut now = from;
        while let Some(t) = n.poll_at().filter(|t| *t <= until) {
            now = now.max(t);
            let out = n.handle(now, Event::Timer);
            for e in &out {
                if let (Effect::SendProbe(p), Some(peer)) = (e, peer) {
                    let ns = now.as_nanos() as u64;
                    if let Some(reply) = reflect(&p.frame, &cfg, &peer.term, &peer.own, ns) {
                        let more = n.handle(
                            now,
                            Event::Probe {
                                path: p.path,
                                src: [2, 0, 0, 0, 0, 2],
                                bytes: &reply,
                            },
                        );
                        all.extend(more);
                    }
                }
            }
            all.extend(out);
        }
        all
    }

    fn takeover_reason(out: &[Effect]) -> Option<Role> {
        out.iter().find_map(|e| match e {
            Effect::Hook {
                hook: Hook::Services { role },
                ..
            } => Some(*role),
            _ => None,
        })
    }

    #[test]
    fn a_silent_peer_is_taken_over_after_k_rounds_in_order() {
        let (mut n, _) = start(with_heartbeat(100));
        let peer = Peer::master(9, ms(1_000));
        // A backup probes at the fast rate; the peer answers, owning.
        let out = run(&mut n, ms(0), ms(20), Some(&peer));
        assert!(
            out.iter()
                .filter(|e| matches!(e, Effect::SendProbe(_)))
                .count()
                >= 20
        );
        assert_eq!(n.roles().next(), Some(Role::Backup));
        // Its box dies at 20 ms: three rounds later (not 36 ms) we own.
        let out = run(&mut n, ms(20), ms(30), None);
        assert_eq!(takeover_reason(&out), Some(Role::Master), "{out:#?}");
        let r = n.report();
        let t = r.counters.transitions.back().unwrap();
        assert_eq!(t.reason, Reason::PeerSilent);
        assert!(t.at <= ms(24), "took over at {:?}", t.at);
        let commit = position(&out, |e| matches!(e, Effect::Commit { .. }));
        let own = position(&out, |e| {
            matches!(e, Effect::WriteOwnership { groups: 1, .. })
        });
        let term = position(&out, |e| {
            matches!(e, Effect::WriteProbeTerm { term: 1, .. })
        });
        let garp = position(&out, |e| matches!(e, Effect::SendGarp { .. }));
        assert!(commit < own && own < term && term < garp, "{out:#?}");
        assert_eq!(r.term, 1);
    }

    #[test]
    fn a_lapsed_peer_is_taken_over_at_its_proof() {
        // Without the peer's signed adverts (which announce its term), a
        // proof proves nothing: VRRP's timer decides.
        let (mut n, _) = start(with_heartbeat(100));
        let peer = Peer::master(3, ms(15));
        let out = run(&mut n, ms(0), ms(16), Some(&peer));
        assert_eq!(takeover_reason(&out), None, "{out:#?}");
        assert!(n.report().heartbeat.unwrap().proofs_unannounced > 0);
        // Its signed advert announces term 3.
        let mut s = with_heartbeat(100);
        s.auth = authenticated(100).auth;
        let (mut n, _) = start(s);
        n.handle(
            ms(0),
            over(0, &signed_from(PEER, 200, Some(auth::clock_seq(WALL) + 3))),
        );
        let out = run(&mut n, ms(0), ms(14), Some(&peer));
        assert_eq!(takeover_reason(&out), None);
        // Its lease lapses at 15 ms (its agent died): the next reply says so.
        let out = run(&mut n, ms(14), ms(16), Some(&peer));
        assert_eq!(takeover_reason(&out), Some(Role::Master), "{out:#?}");
        assert_eq!(
            n.report().counters.transitions.back().unwrap().reason,
            Reason::PeerLapsed
        );
        // Replies with a forged "term ended" are no replies: no PeerLapsed
        // verdict, only the silence they amount to.
        let (mut n, _) = start(with_heartbeat(100));
        let alive = Peer::master(3, ms(1_000));
        let forged = Peer {
            term: ProbeTerm {
                term: 3,
                proof: [1; 16],
            },
            own: Ownership::default(),
        };
        let out = run(&mut n, ms(0), ms(3), Some(&alive));
        assert_eq!(takeover_reason(&out), None);
        let out = run(&mut n, ms(3), ms(30), Some(&forged));
        assert_eq!(takeover_reason(&out), Some(Role::Master));
        assert_eq!(
            n.report().counters.transitions.back().unwrap().reason,
            Reason::PeerSilent,
            "a bad proof is no reply: only silence (no live reply) takes over"
        );
        assert!(n.report().heartbeat.unwrap().rejected[&heartbeat::Rejected::BadProof] > 0);
    }

    #[test]
    fn a_master_probes_slowly_and_never_takes_over_on_probes() {
        let (mut n, _) = start(with_heartbeat(100));
        let (_, _) = until_master(&mut n);
        let from = n.poll_at().unwrap();
        let out = run(&mut n, from, from + ms(100), None);
        let probes = out
            .iter()
            .filter(|e| matches!(e, Effect::SendProbe(_)))
            .count();
        assert!(probes <= 12, "{probes} probes in 100 ms as master");
        assert_eq!(n.roles().next(), Some(Role::Master));
    }

    #[test]
    fn hostile_probe_frames_change_nothing() {
        let (mut n, _) = start(with_heartbeat(100));
        let peer = Peer::master(9, ms(1_000));
        run(&mut n, ms(0), ms(5), Some(&peer));
        let before = n.election_state();
        for bytes in [&[0u8; 3][..], &[0xff; 80][..], &[0; 200][..]] {
            let out = n.handle(
                ms(5),
                Event::Probe {
                    path: 0,
                    src: [0; 6],
                    bytes,
                },
            );
            assert!(out.is_empty(), "{out:?}");
        }
        assert_eq!(n.election_state(), before);
        let rejected: u64 = n.report().heartbeat.unwrap().rejected.values().sum();
        assert_eq!(rejected, 3);
    }

    #[test]
    fn the_heartbeat_needs_exactly_its_one_peer() {
        let mut s = with_heartbeat(100);
        s.peers.push(Ipv4Addr::new(10, 255, 0, 3));
        assert_eq!(Node::new(s).unwrap_err(), NodeError::HeartbeatPeers(2));
    }
}

const VIP6: &str = "fd00::1";
const PEER_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
const OWN_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The node of `settings` with its one instance an IPv6 one.
fn started6(priority: u8) -> Node {
    let mut s = settings(priority, false);
    s.groups[0].instances[0].1.vips = vec![VIP6.parse().unwrap()];
    start(s).0
}

/// An IPv6 advert from `src` as the raw socket delivers it (the VRRP
/// message; the header apart).
fn advert6_from(src: Ipv6Addr, priority: u8) -> Vec<u8> {
    wire::Repr {
        vrid: 51,
        priority,
        interval_cs: 1,
        addrs: vec![VIP6.parse().unwrap()],
    }
    .to_bytes(src, wire::MULTICAST6)
}

fn pkt6(bytes: &[u8], src: Ipv6Addr) -> Event<'_> {
    Event::Packet6 {
        bytes,
        header: packet::Header6 {
            src,
            dst: wire::MULTICAST6,
            hop_limit: 255,
            own: OWN_LL,
        },
        wall: Duration::ZERO,
    }
}

/// An IPv6 instance is driven by the peer's IPv6 adverts on the HA link
/// (known by its HA address), advertises its IPv6 VIPs, and takes an IPv4
/// advert of its VRID on the HA link for another virtual router's.
#[test]
fn an_ipv6_instance_follows_the_peers_ipv6_adverts_only() {
    let mut n = started6(100);
    // The peer, higher, keeps it backup past several Master_Down_Intervals.
    for i in 0..40 {
        let out = n.handle(ms(5 * i), pkt6(&advert6_from(PEER_LL, 200), PEER_LL));
        assert!(
            !out.iter().any(|e| matches!(e, Effect::Commit { .. })),
            "{out:?}"
        );
        n.handle(ms(5 * i + 1), Event::Timer);
    }
    assert!(n.roles().all(|r| r == Role::Backup));
    assert_eq!(n.counters().last_advert.as_ref().map(|a| a.src), Some(PEER));
    // The same VRID over IPv4 on the HA link: another virtual router.
    let before = n.counters().rejected.get(&Rejected::UnknownVrid).copied();
    n.handle(ms(201), pkt(&advert_from(PEER, 200)));
    assert_eq!(
        n.counters().rejected.get(&Rejected::UnknownVrid).copied(),
        Some(before.unwrap_or(0) + 1)
    );
    // Our own advert reflected back, and one from a global address.
    n.handle(ms(202), pkt6(&advert6_from(OWN_LL, 200), OWN_LL));
    assert_eq!(n.counters().rejected.get(&Rejected::Own), Some(&1));
    let global: Ipv6Addr = "2001:db8::2".parse().unwrap();
    n.handle(ms(203), pkt6(&advert6_from(global, 200), global));
    assert_eq!(n.counters().rejected.get(&Rejected::NotPeer), Some(&1));
    // The peer silent: master, advertising the IPv6 VIP.
    let (_, out) = until_master(&mut n);
    let t = n.poll_at().unwrap();
    let out2 = n.handle(t, Event::Timer);
    assert!(
        out.iter()
            .chain(&out2)
            .any(|e| matches!(e, Effect::SendAdvert(a)
            if a.addrs == vec![VIP6.parse::<IpAddr>().unwrap()])),
        "{out:?} {out2:?}"
    );
}

/// An IPv4 instance refuses IPv6 adverts of its VRID.
#[test]
fn an_ipv4_instance_refuses_ipv6_adverts() {
    let (mut n, _) = started(100, false);
    n.handle(ms(1), pkt6(&advert6_from(PEER_LL, 200), PEER_LL));
    assert_eq!(n.counters().rejected.get(&Rejected::UnknownVrid), Some(&1));
}

/// Hostile IPv6 adverts to a master of an IPv6 instance change nothing but
/// counters: a higher priority with the hop limit lowered, from a global
/// or our own address, a bad checksum, truncated, another VRID.
#[test]
fn hostile_ipv6_packets_change_nothing_but_counters() {
    let mut n = started6(200);
    let (t, _) = until_master(&mut n);
    let before = n.election_state();
    let higher = advert6_from(PEER_LL, 255);
    let mut bad_checksum = higher.clone();
    bad_checksum[2] ^= 0x55;
    let mut other_vrid = higher.clone();
    other_vrid[1] = 99;
    wire::Packet::new_unchecked_in(&mut other_vrid[..], wire::Family::V6)
        .fill_checksum(PEER_LL, wire::MULTICAST6);
    let global: Ipv6Addr = "2001:db8::2".parse().unwrap();
    let with = |bytes: &[u8], src: Ipv6Addr, hop_limit: u8| {
        (
            bytes.to_vec(),
            packet::Header6 {
                src,
                dst: wire::MULTICAST6,
                hop_limit,
                own: OWN_LL,
            },
        )
    };
    let inputs = [
        with(&higher, PEER_LL, 64),
        with(&advert6_from(global, 255), global, 255),
        with(&advert6_from(OWN_LL, 255), OWN_LL, 255),
        with(&bad_checksum, PEER_LL, 255),
        with(&higher[..23], PEER_LL, 255),
        with(&[], PEER_LL, 255),
        with(&other_vrid, PEER_LL, 255),
        // An IPv4 advert's bytes over IPv6.
        with(&advert_from(PEER, 255)[20..], PEER_LL, 255),
    ];
    for (i, (bytes, header)) in inputs.iter().enumerate() {
        let ev = Event::Packet6 {
            bytes,
            header: *header,
            wall: Duration::ZERO,
        };
        let out = n.handle(t + ms(1), ev);
        assert!(out.is_empty(), "input {i}: {out:#?}");
        assert_eq!(n.election_state(), before, "input {i}");
    }
    let c = n.counters();
    assert_eq!(c.rejected.values().sum::<u64>(), inputs.len() as u64);
    assert_eq!(c.adverts_received, 0);
}

/// An IPv6 instance's adverts reach the peer over the data paths too
/// (framed in IPv4 there, no addresses listed): with the HA link silent
/// (cut), the peer's signed adverts over lan0 keep the backup a backup,
/// as for an IPv4 instance; an IPv4-framed advert of the IPv6 VRID on the
/// HA link is another router's. And the IPv6 advert itself, signed over
/// the sender's HA address, verifies.
#[test]
fn an_ipv6_instance_hears_its_peer_over_the_data_paths() {
    let mut s = authenticated(100);
    s.groups[0].instances[0].1.vips = vec![VIP6.parse().unwrap()];
    let (mut n, _) = start(s);
    let seq = auth::clock_seq(WALL);
    let framed = |src: Ipv4Addr, seq: u64| {
        let mut pdu = wire::Repr {
            vrid: 51,
            priority: 200,
            interval_cs: 1,
            addrs: vec![VIP6.parse().unwrap()],
        }
        .to_bytes(src, MULTICAST);
        assert_eq!(
            pdu.len(),
            wire::HEADER_LEN,
            "no IPv6 address in an IPv4 frame"
        );
        pdu.extend_from_slice(&auth::seal(&advert_key(), seq, src, &pdu));
        packet::ip_packet(src, MULTICAST, &pdu)
    };
    for i in 0..40u64 {
        let out = n.handle(ms(5 * i), over(1, &framed(LAN_PEER, seq + i)));
        assert!(
            !out.iter().any(|e| matches!(e, Effect::Commit { .. })),
            "{out:?}"
        );
        n.handle(ms(5 * i + 1), Event::Timer);
    }
    assert!(n.roles().all(|r| r == Role::Backup));
    assert_eq!(n.counters().adverts_received, 40);
    n.handle(ms(201), over(0, &framed(PEER, seq + 100)));
    assert_eq!(n.counters().rejected.get(&Rejected::UnknownVrid), Some(&1));
    // Over IPv6 on the HA link, sealed over the peer's HA address.
    let mut pdu = advert6_from(PEER_LL, 200);
    pdu.extend_from_slice(&auth::seal(&advert_key(), seq + 200, PEER, &pdu));
    let ev = Event::Packet6 {
        bytes: &pdu,
        header: packet::Header6 {
            src: PEER_LL,
            dst: wire::MULTICAST6,
            hop_limit: 255,
            own: OWN_LL,
        },
        wall: WALL,
    };
    n.handle(ms(202), ev);
    assert_eq!(n.counters().adverts_received, 41);
    assert!(n.roles().all(|r| r == Role::Backup));
}

/// `garp_refresh`: a master announces its VIPs again at that period, from
/// its takeover on; a backup never; a step-down stops it.
#[test]
fn a_master_refreshes_its_announcements() {
    let mut s = settings(200, false);
    s.groups[0].garp_refresh = Some(ms(1000));
    let (mut n, _) = start(s);
    let (t, _) = until_master(&mut n);
    let mut garps = Vec::new();
    let mut now = t;
    while now < t + ms(3500) {
        now = n.poll_at().unwrap();
        let out = n.handle(now, Event::Timer);
        if out.contains(&Effect::SendGarp { group: 0 }) {
            garps.push(now - t);
        }
    }
    // The takeover's two more rounds at 10 ms, then one a second.
    assert_eq!(garps, vec![ms(10), ms(20), ms(1000), ms(2000), ms(3000)]);
    // A higher-priority peer: backup, no more refreshes.
    n.handle(now + ms(1), pkt(&advert_from(PEER, 255)));
    assert!(n.roles().all(|r| r == Role::Backup));
    for i in 1..=500 {
        let at = now + ms(5 * i);
        n.handle(at, pkt(&advert_from(PEER, 255)));
        let out = n.handle(at, Event::Timer);
        assert!(!out.contains(&Effect::SendGarp { group: 0 }), "{out:?}");
    }
    assert!(n.roles().all(|r| r == Role::Backup));
}
