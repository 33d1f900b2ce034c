//! A returning peer's bulk resync at scale (root). 150,000 UDP flows go
//! through the master; 30,000 of them are then deleted from its kernel
//! conntrack alone (its XDP flow table still has them: the flows a bulk used
//! to bring back on the peer). The backup's agent is killed, its conntrack
//! flushed, and the agent started again: it must report in sync only once it
//! has the whole live table, some 120,000 flows (a bulk was once cut at 65,536 and
//! reported complete all the same), and none of the deleted ones; the
//! deleted ones then leave the master's XDP flow table as well.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use ha_tests::{SyncKey, conntrack_total, replication_lab, udp_churn, wait_for};

const FLOWS: usize = 150_000;

/// UDP entries in `ns`'s conntrack to destination port `dport`.
fn udp_count(lab: &ha_lab::Lab, ns: &str, dport: u16) -> usize {
    let port = dport.to_string();
    lab.exec(ns, &["conntrack", "-L", "-p", "udp", "--dport", &port])
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0)
}

#[test]
fn a_returning_peer_gets_the_whole_live_table_and_no_dead_flow() {
    let key = SyncKey::new("resync", [6u8; 32]);
    // Aging passes every 5 s (the default is 60).
    let extra = format!("{}\nflow_aging_s = 5", key.ha_extra());
    let (mut lab, a1, mut a2) = replication_lab(&extra, true, Path::new("/nonexistent"), 0);
    // Ports 20000 and 20001: 60,000 flows each; 20002: 30,000. The lab
    // forwards fewer new flows per second than the raw socket sends: the
    // same flows go again until the master has (nearly) them all.
    let mut counts = [0; 3];
    for _ in 0..4 {
        udp_churn(&lab, FLOWS);
        std::thread::sleep(Duration::from_millis(500));
        counts = [20000, 20001, 20002].map(|p| udp_count(&lab, "fw1", p));
        if counts[0] + counts[1] > 119_000 && counts[2] > 29_000 {
            break;
        }
    }
    let live = counts[0] + counts[1];
    assert!(
        live > 110_000 && counts[2] > 25_000,
        "the flows in the master's conntrack: {counts:?}"
    );
    let out = lab
        .exec("fw1", &["conntrack", "-D", "-p", "udp", "--dport", "20002"])
        .unwrap();
    assert!(out.status.success(), "conntrack -D: {out:?}");
    assert_eq!(udp_count(&lab, "fw1", 20002), 0);

    // The backup returns with an empty table.
    a2.signal(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
    let _ = lab.exec("fw2", &["conntrack", "-F"]);
    assert!(conntrack_total(&lab, "fw2") < 100, "fw2's table flushed");
    let bulks_before = a1
        .status()
        .and_then(|s| s.sync)
        .map_or(0, |s| s.bulks_completed);
    let t = Instant::now();
    a2.restart(&mut lab);
    // The status of the old life says "in sync" until the new one writes.
    wait_for("fw2 in sync again", Duration::from_secs(120), || {
        a2.status()
            .is_some_and(|s| s.pid == a2.pid && s.sync.is_some_and(|s| s.in_sync))
    });
    let took = t.elapsed();
    let got = udp_count(&lab, "fw2", 20000) + udp_count(&lab, "fw2", 20001);
    let dead = udp_count(&lab, "fw2", 20002);
    let sync = a1.status().and_then(|s| s.sync).unwrap();
    println!(
        "resync of {got} flows (of {live} live, {dead} of the {} deleted) in {:.2} s; master: {} bulks completed, {} incomplete, {} records dropped",
        counts[2],
        took.as_secs_f64(),
        sync.bulks_completed - bulks_before,
        sync.bulks_incomplete,
        sync.records_dropped
    );
    assert_eq!(got, live, "in sync with the whole live table");
    assert_eq!(dead, 0, "no flow deleted on the master came back");
    assert!(sync.bulks_completed > bulks_before);

    // The deleted flows leave the master's XDP table too, once idle for
    // 10 s, by the bulk or an aging pass (every 5 s here); the live ones
    // stay.
    let in_xdp = |dport: u16| {
        ha_agent::sync::flows::FlowTable::open(&a1.pins.0)
            .expect("the master's flow table")
            .dump()
            .iter()
            .filter(|r| r.orig_dport == dport)
            .count()
    };
    wait_for(
        "the deleted flows aged out of XDP",
        Duration::from_secs(60),
        || in_xdp(20002) == 0,
    );
    // Counted: the status file follows within a second.
    let aged = || {
        a1.status()
            .and_then(|s| s.sync)
            .map_or(0, |s| s.xdp_flows_aged) as usize
    };
    wait_for("the aged flows counted", Duration::from_secs(5), || {
        aged() >= counts[2]
    });
    println!("aged out of the master's XDP table: {}", aged());
    assert!(
        in_xdp(20000) + in_xdp(20001) >= live,
        "the live flows stay in the XDP table"
    );
}
