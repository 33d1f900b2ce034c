//! The node core driven at fixed instants: takeover order, the lease, the
//! preemption gate, hostile input, operator commands.

use super::*;
use crate::vrrp::{
    machine::Reason,
    wire::{self, MULTICAST},
};

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
                    vips: vec![VIP],
                },
            )],
            tracks: vec![Track {
                iface: "wan0".into(),
                weight: 0,
            }],
            garp_count: 3,
            garp_interval: ms(10),
        }],
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
        addrs: vec![VIP],
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
    let out = n.handle(t + ms(1), Event::Packet(&advert_from(PEER, 200)));
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
        let out = n.handle(t + ms(1), Event::Packet(bytes));
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
        n.handle(t, Event::Packet(&advert_from(PEER, 100)));
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
        n.handle(ms(i * 10), Event::Packet(&advert_from(PEER, 100)));
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
        n.handle(t, Event::Packet(&advert_from(PEER, 200)));
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
    let out = n.handle(t + ms(1), Event::SetVips(vec![vec![vec![VIP, other]]]));
    assert!(out.contains(&Effect::SendGarp { group: 0 }));
    let out = n.handle(t + ms(10), Event::Timer);
    assert!(
        out.iter()
            .any(|e| matches!(e, Effect::SendAdvert(a) if a.addrs == vec![VIP, other]))
    );
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
        addrs: vec![VIP],
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
    let out = n.handle(t + ms(60), Event::Packet(&advert_for(PEER, 52, 254)));
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
    n.handle(t + ms(1), Event::Packet(&advert_for(PEER, 52, 254)));
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
    n.handle(t + ms(1), Event::Packet(&advert_for(PEER, 52, 254)));
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
