//! Data-plane benchmarks (root): ns per packet for each XDP path with
//! `BPF_PROG_TEST_RUN` and repeat, the time to flip ownership of 1,000 VIPs,
//! and ring-buffer events per second drained by the agent (and lost).
//!
//! Run with `cargo xtask bench`. Prints a table and writes
//! `target/bench/dataplane.json`.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use ha_agent::dataplane::{FlowSettings, LinkSettings, events::FlowEvents, inspect::Snapshot};
use ha_tests::{
    PinnedDataplane,
    frames::{self, ACK, SYN},
    require_root,
};

const PEER: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
const ME: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
const REPEAT: u32 = 2_000_000;

fn ns_per_packet(p: &PinnedDataplane, program: &'static str, frame: &[u8], want: u32) -> f64 {
    // Best of 5 runs: the figure is the program's cost, not the machine's noise.
    (0..5)
        .map(|_| {
            let (verdict, per_run) = p.dp.test_run(program, frame, REPEAT).unwrap();
            assert_eq!(verdict, want, "{program}: unexpected verdict");
            per_run.as_nanos() as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    require_root();
    let mut results = serde_json::Map::new();
    let mut p = PinnedDataplane::new("bench");
    p.dp.set_link_settings(&LinkSettings {
        address: ME,
        peers: vec![PEER],
        vrids: vec![51],
        sync_port: 7788,
        mgmt: vec![(6, 22)],
        control_port: 7789,
        join_port: 7789,
    })
    .unwrap();

    // 1. ns per packet per path.
    let vips: Vec<(Ipv4Addr, u32)> = (0..1000u32)
        .map(|i| {
            (
                Ipv4Addr::from(u32::from(Ipv4Addr::new(192, 0, 2, 0)) + i),
                0,
            )
        })
        .collect();
    p.dp.set_vips(&vips).unwrap();
    // (name, program, frame, expected verdict, ownership groups to set first)
    type Path = (&'static str, &'static str, Vec<u8>, u32, Option<u64>);
    let paths: Vec<Path> = vec![
        (
            "ha_link drop (not allowed)",
            "ha_link",
            frames::tcp(PEER, ME, 1, 23, SYN, b""),
            1,
            None,
        ),
        (
            "ha_link pass VRRP (stamped)",
            "ha_link",
            frames::vrrp(PEER, 255, 51, 100, 1, VIP),
            2,
            None,
        ),
        (
            "ha_link pass sync",
            "ha_link",
            frames::udp(PEER, ME, 1, 7788, b"sync"),
            2,
            None,
        ),
        (
            "ha_link drop sync not to this node",
            "ha_link",
            frames::udp(PEER, VIP, 1, 7788, b"sync"),
            1,
            None,
        ),
        (
            "ha_link drop control reply (sk lookup)",
            "ha_link",
            frames::tcp(PEER, ME, 7789, 45678, ACK, b""),
            1,
            None,
        ),
        (
            "ha_data drop ARP for VIP (backup)",
            "ha_data",
            frames::arp(1, CLIENT, VIP),
            1,
            Some(0),
        ),
        (
            "ha_data drop IPv4 to VIP (backup)",
            "ha_data",
            frames::ping(CLIENT, VIP, 1, 1),
            1,
            Some(0),
        ),
        (
            "ha_data pass, no VIP (backup)",
            "ha_data",
            frames::udp(CLIENT, SERVER, 1, 53, b"q"),
            2,
            Some(0),
        ),
        (
            "ha_data pass ARP for VIP (master)",
            "ha_data",
            frames::arp(1, CLIENT, VIP),
            2,
            Some(1),
        ),
        (
            "ha_data flow-tracked UDP (master)",
            "ha_data",
            frames::udp(CLIENT, SERVER, 1, 53, b"q"),
            2,
            Some(1),
        ),
        (
            "ha_data flow-tracked TCP to VIP (master)",
            "ha_data",
            frames::tcp(CLIENT, VIP, 1, 80, frames::ACK, b"x"),
            2,
            Some(1),
        ),
        (
            "ha_data pass IPv6, untracked (backup)",
            "ha_data",
            frames::udp6(CLIENT6, SERVER6, 1, 53, b"q"),
            2,
            Some(0),
        ),
        (
            "ha_data flow-tracked IPv6 UDP (master)",
            "ha_data",
            frames::udp6(CLIENT6, SERVER6, 1, 53, b"q"),
            2,
            Some(1),
        ),
        (
            "ha_data flow-tracked IPv6 TCP (master)",
            "ha_data",
            frames::tcp6(CLIENT6, SERVER6, 1, 443, frames::ACK, b"x"),
            2,
            Some(1),
        ),
    ];
    println!(
        "{:<44} {:>10}",
        "XDP path (BPF_PROG_TEST_RUN, best of 5)", "ns/packet"
    );
    let mut per_path = serde_json::Map::new();
    for (name, program, frame, want, owner) in &paths {
        if let Some(groups) = owner {
            p.dp.set_ownership(*groups, None).unwrap();
        }
        let ns = ns_per_packet(&p, program, frame, *want);
        println!("{name:<44} {ns:>10.1}");
        per_path.insert((*name).into(), ns.into());
    }
    // The flow-tracked paths, for the state-sync figures.
    let flow_paths: serde_json::Map<String, serde_json::Value> = per_path
        .iter()
        .filter(|(k, _)| k.contains("flow-tracked"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let slowest = flow_paths
        .values()
        .filter_map(serde_json::Value::as_f64)
        .fold(0.0, f64::max);
    ha_tests::merge_bench_json(
        "sync.json",
        serde_json::json!({"xdp_flow_ns": slowest, "xdp_flow_ns_paths": flow_paths}),
    );
    results.insert("ns_per_packet".into(), per_path.into());

    // 2. Flip ownership of 1,000 VIPs: one map write, timed over many flips.
    let mut flips: Vec<f64> = (0..2000)
        .map(|i| {
            let t = Instant::now();
            p.dp.set_ownership(i & 1, Some(Duration::from_secs(10)))
                .unwrap();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    flips.sort_by(f64::total_cmp);
    p.dp.set_ownership(1, None).unwrap();
    // Every VIP follows the one write.
    for (vip, _) in vips.iter().step_by(97) {
        assert_eq!(
            p.dp.test_run("ha_data", &frames::arp(1, CLIENT, *vip), 1)
                .unwrap()
                .0,
            2,
            "{vip}"
        );
    }
    p.dp.set_ownership(0, None).unwrap();
    for (vip, _) in vips.iter().step_by(97) {
        assert_eq!(
            p.dp.test_run("ha_data", &frames::arp(1, CLIENT, *vip), 1)
                .unwrap()
                .0,
            1,
            "{vip}"
        );
    }
    let (p50, p99, max) = (
        flips[flips.len() / 2],
        flips[flips.len() * 99 / 100],
        flips[flips.len() - 1],
    );
    println!(
        "flip ownership of {} VIPs (one write): p50 {p50:.1} us, p99 {p99:.1} us, max {max:.1} us",
        vips.len()
    );
    results.insert(
        "flip_1000_vips_us".into(),
        serde_json::json!({"vips": vips.len(), "writes": 1, "p50": p50, "p99": p99, "max": max}),
    );

    // 3. Ring buffer: XDP emits one event per packet (benchmark flag)
    // while the agent's reader drains concurrently.
    p.dp.set_ownership(1, None).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    p.dp.set_flow_settings(&FlowSettings {
        emit_every_packet: true,
        ..FlowSettings::default()
    })
    .unwrap();
    {
        // Events left from the paths above are not part of the measurement.
        let _enter = rt.enter();
        let mut ev = FlowEvents::open(&p.instance, Duration::from_millis(1)).unwrap();
        ev.drain(&mut Vec::new());
    }
    let before = Snapshot::read(&p.instance, 0).unwrap();
    let counter = |s: &Snapshot, n: &str| s.data_verdicts.iter().find(|(k, _)| k == n).unwrap().1;
    let stop = AtomicBool::new(false);
    let produced_frames = 4_000_000u32;
    let frame = frames::udp(CLIENT, SERVER, 7, 53, b"q");
    let (drained, secs) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let _enter = rt.enter();
            let mut ev = FlowEvents::open(&p.instance, Duration::from_micros(200)).unwrap();
            let mut buf = Vec::with_capacity(1 << 16);
            let mut n = 0u64;
            let t = Instant::now();
            rt.block_on(async {
                while !stop.load(Ordering::Relaxed) {
                    buf.clear();
                    if let Ok(Ok(k)) =
                        tokio::time::timeout(Duration::from_millis(50), ev.recv(&mut buf)).await
                    {
                        n += k as u64;
                    }
                }
                buf.clear();
                n += ev.drain(&mut buf) as u64;
            });
            (n, t.elapsed().as_secs_f64())
        });
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..(produced_frames / 1_000_000) {
            p.dp.test_run("ha_data", &frame, 1_000_000).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap()
    });
    let after = Snapshot::read(&p.instance, 0).unwrap();
    let emitted: u64 = ["flow_new", "flow_state_change", "flow_refresh"]
        .iter()
        .map(|c| counter(&after, c) - counter(&before, c))
        .sum();
    let lost = counter(&after, "ringbuf_full") - counter(&before, "ringbuf_full");
    assert_eq!(drained, emitted, "every emitted event is drained");
    let rate = drained as f64 / secs;
    println!(
        "ring buffer: {emitted} events emitted, {drained} drained in {secs:.2} s ({:.2} M events/s), {lost} lost (ring full)",
        rate / 1e6
    );
    results.insert(
        "ringbuf".into(),
        serde_json::json!({"emitted": emitted, "drained": drained, "seconds": secs, "events_per_s": rate, "lost_ring_full": lost}),
    );

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dataplane.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&serde_json::Value::Object(results)).unwrap(),
    )
    .unwrap();
    println!("written {}", path.display());
}
