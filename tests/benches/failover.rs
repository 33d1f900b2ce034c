//! Failover benchmark (root): in the failover lab, a 1 kHz UDP probe from the
//! client through the VIP gateway to the server and back, then a hard crash of
//! the master (links down and process killed at once). Measures the
//! client-visible outage (longest gap between answered probes around the
//! crash), whether traffic recovered, and, for ha-agent, the time from the
//! master-down timer to ownership written and first GARP sent.
//!
//! Runs ha-agent and keepalived (same topology, same VRID/VIPs, VRRPv3) at
//! 1 s and 10 ms adverts, `HA_BENCH_RUNS` runs each (default 20). Prints a
//! table and writes `target/bench/failover.json`. Run with `cargo xtask bench`.

use std::{
    net::UdpSocket,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use ha_lab::traffic::{udp_echo, udp_probe};
use ha_tests::{
    Keepalived, failover_lab, links_down_at_once, percentile, require_root, start_pair,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Agent,
    Keepalived,
}

struct Run {
    outage_ms: f64,
    recovered: bool,
    to_owned_us: Option<f64>,
    to_garp_us: Option<f64>,
}

/// One crash; `None` when the pair never settled into fw1 MASTER / fw2 BACKUP
/// (a set-up problem, not a failover result: the run is repeated).
fn one_run(system: System, advert_ms: u64) -> Option<Run> {
    let mut lab = failover_lab();
    // The master at priority 200 on fw1, the backup at 100 on fw2.
    let (agents, kas) = match system {
        System::Agent => {
            let (a1, a2) = start_pair(&mut lab, advert_ms, |spec| spec);
            (vec![a1, a2], vec![])
        }
        System::Keepalived => (
            vec![],
            vec![
                Keepalived::start(&mut lab, "fw1", 1, 200, advert_ms, false),
                Keepalived::start(&mut lab, "fw2", 2, 100, advert_ms, false),
            ],
        ),
    };
    let settled = || match system {
        System::Agent => {
            agents[0].role().as_deref() == Some("MASTER")
                && agents[1].role().as_deref() == Some("BACKUP")
        }
        System::Keepalived => {
            kas[0].state().as_deref() == Some("MASTER")
                && kas[1].state().as_deref() == Some("BACKUP")
        }
    };
    let start = Instant::now();
    while !settled() {
        if start.elapsed() > Duration::from_secs(20) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let fw1_mac = lab.mac(("fw1", "lan0")).unwrap().to_ascii_lowercase();
    let stop = AtomicBool::new(false);
    let lab_ref = &lab;
    let limit = Duration::from_secs(60);
    let echo = lab
        .run_in("server", || UdpSocket::bind("10.1.0.10:9000"))
        .unwrap()
        .unwrap();
    let (answers, crash_at) = std::thread::scope(|s| {
        s.spawn(|| udp_echo(echo, &stop, limit));
        let prober = s.spawn(|| {
            lab_ref
                .run_in("client", || {
                    udp_probe(
                        "10.1.0.10:9000".parse().unwrap(),
                        Duration::from_millis(1),
                        &stop,
                        limit,
                    )
                })
                .unwrap()
                .unwrap()
        });
        std::thread::sleep(Duration::from_millis(300));
        // The probes must be going through fw1 (the client resolved the
        // gateway VIP to fw1), or the crash would measure nothing.
        let neigh = lab_ref
            .exec("client", &["ip", "neigh", "show", "10.0.0.1"])
            .unwrap();
        let via_fw1 = String::from_utf8_lossy(&neigh.stdout)
            .to_ascii_lowercase()
            .contains(&fw1_mac);
        if !via_fw1 {
            stop.store(true, Ordering::Relaxed);
            return None;
        }
        // Hard crash: every link of fw1 down in one `ip -batch`, then SIGKILL.
        let crash_at = Instant::now();
        links_down_at_once(lab_ref, "fw1", &["ha0", "lan0", "wan0"]);
        match system {
            System::Agent => agents[0].signal(libc::SIGKILL),
            System::Keepalived => kas[0].signal(libc::SIGKILL),
        }
        let wait = Duration::from_millis(4 * advert_ms + 1500);
        std::thread::sleep(wait);
        stop.store(true, Ordering::Relaxed);
        Some((prober.join().unwrap(), crash_at))
    })?;
    let before: Vec<&Instant> = answers.iter().filter(|t| **t <= crash_at).collect();
    let after: Vec<&Instant> = answers.iter().filter(|t| **t > crash_at).collect();
    let recovered = after.len() > 100 && !before.is_empty();
    if !recovered {
        eprintln!(
            "{system:?} {advert_ms} ms: not recovered ({} answers before the crash, {} after)",
            before.len(),
            after.len()
        );
        if let Some(k) = kas.get(1) {
            eprintln!("{}", k.log_text());
        }
    }
    // The longest silence that spans the crash.
    let mut outage = Duration::ZERO;
    for w in answers.windows(2) {
        if w[1] > crash_at && w[0] <= crash_at + Duration::from_millis(4 * advert_ms + 1000) {
            outage = outage.max(w[1] - w[0]);
        }
    }
    let timing = if system == System::Agent {
        agents[1].status().and_then(|s| s.last_takeover)
    } else {
        None
    };
    Some(Run {
        outage_ms: outage.as_secs_f64() * 1e3,
        recovered,
        to_owned_us: timing.as_ref().map(|t| t.to_owned_us),
        to_garp_us: timing.as_ref().map(|t| t.to_first_garp_us),
    })
}

fn main() {
    require_root();
    let runs: usize = std::env::var("HA_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut systems = Vec::new();
    println!(
        "{:<11} {:>6} {:>9} {:>11} {:>11} {:>13} {:>8} {:>16}",
        "system",
        "adv_ms",
        "recovered",
        "outage p50",
        "outage max",
        "MDI+1ms",
        "within",
        "due->GARP max"
    );
    let only: Option<String> = std::env::var("HA_BENCH_ONLY").ok();
    for system in [System::Agent, System::Keepalived] {
        for advert_ms in [10u64, 1000] {
            if only
                .as_deref()
                .is_some_and(|o| o != format!("{system:?}-{advert_ms}"))
            {
                continue;
            }
            let results: Vec<Run> = (0..runs)
                .map(|_| {
                    (0..3)
                        .find_map(|_| one_run(system, advert_ms))
                        .unwrap_or_else(|| {
                            panic!("{system:?} at {advert_ms} ms never settled, 3 tries")
                        })
                })
                .collect();
            let mut outages: Vec<f64> = results
                .iter()
                .filter(|r| r.recovered)
                .map(|r| r.outage_ms)
                .collect();
            outages.sort_by(f64::total_cmp);
            let recovered = results.iter().filter(|r| r.recovered).count();
            let garp_max = results
                .iter()
                .filter_map(|r| r.to_garp_us)
                .fold(f64::NAN, f64::max);
            let owned_max = results
                .iter()
                .filter_map(|r| r.to_owned_us)
                .fold(f64::NAN, f64::max);
            let mdi = ha_core::vrrp::machine::master_down_interval(100, (advert_ms / 10) as u16)
                .as_secs_f64()
                * 1e3;
            let within = outages.iter().filter(|o| **o <= mdi + 1.0).count();
            let name = match system {
                System::Agent => "ha-agent",
                System::Keepalived => "keepalived",
            };
            println!(
                "{name:<11} {advert_ms:>6} {:>9} {:>9.1}ms {:>9.1}ms {:>11.1}ms {:>8} {:>14}",
                format!("{recovered}/{runs}"),
                percentile(&outages, 0.5),
                percentile(&outages, 1.0),
                mdi + 1.0,
                format!("{within}/{runs}"),
                if garp_max.is_nan() {
                    "-".to_owned()
                } else {
                    format!("{garp_max:.0}us")
                },
            );
            systems.push(serde_json::json!({
                "system": name,
                "adv_ms": advert_ms,
                "runs": runs,
                "recovered": recovered,
                "outage_ms_p50": percentile(&outages, 0.5),
                "outage_ms_max": percentile(&outages, 1.0),
                "outages_ms": outages,
                "master_down_interval_ms": mdi,
                "runs_within_mdi_plus_1ms": within,
                "due_to_owned_us_max": if owned_max.is_nan() { serde_json::Value::Null } else { owned_max.into() },
                "due_to_first_garp_us_max": if garp_max.is_nan() { serde_json::Value::Null } else { garp_max.into() },
                "due_to_first_garp_us": results.iter().filter_map(|r| r.to_garp_us).collect::<Vec<f64>>(),
            }));
        }
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("failover.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&serde_json::json!({ "systems": systems })).unwrap(),
    )
    .unwrap();
    println!("written {}", path.display());
}
