//! State-sync benchmark (root): replicated flow events per second end to end
//! (a new flow forwarded by the master -> an entry in the backup's kernel
//! conntrack) and the lag, for ha-agent and for conntrackd (FTFW over UDP on
//! the same HA link, `DisableExternalCache On` so it too writes straight into
//! the backup's kernel table) in the same lab, with the same churn.
//!
//! The churn: `HA_BENCH_FLOWS` (default 100,000) new UDP flows, one packet
//! each, sent from the client through the VIP gateway as fast as a raw socket
//! goes. Both firewalls run the stateful ruleset. In the conntrackd run our
//! agents still own the VIPs (same data path), with their replication off.
//!
//! Prints a table and writes `target/bench/sync.json`. Run with `cargo xtask bench`.

use std::time::{Duration, Instant};

use ha_tests::{
    ResyncOf, SyncKey, conntrack_total, links_down_at_once, merge_bench_json, replication_lab,
    require_root, time_resync, udp_churn, wait_for,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Agent,
    Conntrackd,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Agent => "ha-agent",
            System::Conntrackd => "conntrackd",
        }
    }
}

/// The lag under a burst of new flows at a set rate, with synthetic input
/// (the lab's traffic generator tops out near 74,000 new flows/s): the
/// flows' conntrack entries are written into the master's kernel first (as
/// if the kernel had seen them), then one packet of each is run through the
/// master's own XDP program (`BPF_PROG_TEST_RUN`, paced), which tracks it
/// and emits its event; the agent drains, enriches, sends, the backup
/// applies and acknowledges. The lag is the agent's own (event in XDP ->
/// acknowledged as applied by the peer, the last 1,024 frames).
#[derive(Debug, Clone, Copy)]
struct Burst {
    flows: usize,
    /// The rate asked for and the one the sender reached (flows/s).
    rate: f64,
    sent_rate: f64,
    /// Flows in the backup's conntrack afterwards.
    replicated: usize,
    /// Last packet -> every flow in the backup's conntrack (ms).
    tail_ms: f64,
    lag_p50_ms: Option<f64>,
    lag_p99_ms: Option<f64>,
}

fn burst(
    lab: &ha_lab::Lab,
    a1: &ha_tests::RunningAgent,
    base: u32,
    flows: usize,
    rate: f64,
) -> Burst {
    use ha_agent::sync::{conntrack::Conntrack, record::Record};
    let base_backup = conntrack_total(lab, "fw2");
    let records: Vec<Record> = (0..flows)
        .map(|i| ha_tests::synthetic_udp_flow(base, i))
        .collect();
    lab.run_in("fw1", || {
        let mut ct = Conntrack::open().expect("ctnetlink socket");
        for c in records.chunks(256) {
            let refused = ct
                .apply_batch(c, |_| 600)
                .iter()
                .filter(|r| r.is_err())
                .count();
            assert_eq!(refused, 0, "conntrack entries refused on the master");
        }
    })
    .unwrap();
    let frames: Vec<Vec<u8>> = records
        .iter()
        .map(|r| {
            let v4 = |a: std::net::IpAddr| match a {
                std::net::IpAddr::V4(a) => a,
                std::net::IpAddr::V6(_) => unreachable!("the bench's records are IPv4"),
            };
            ha_tests::frames::udp(
                v4(r.orig_src),
                v4(r.orig_dst),
                r.orig_sport,
                r.orig_dport,
                b"q",
            )
        })
        .collect();
    let dp = ha_agent::dataplane::Dataplane::open(&a1.pins.0).expect("the master's data plane");
    let prog = dp.test_program("ha_data").expect("ha_data");
    // Paced in ticks of a millisecond (sleeping between them: a sender
    // spinning would take a CPU from the two nodes on this VM).
    let per_tick = (rate / 1000.0).max(1.0) as usize;
    let start = Instant::now();
    for (k, tick) in frames.chunks(per_tick).enumerate() {
        let due = start + Duration::from_millis(k as u64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for f in tick {
            prog.run(f, 1).expect("test run");
        }
    }
    let sent = start.elapsed();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30)
        && conntrack_total(lab, "fw2").saturating_sub(base_backup) < flows
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let tail_ms = t.elapsed().as_secs_f64() * 1e3;
    let replicated = conntrack_total(lab, "fw2").saturating_sub(base_backup);
    // The status is written every 100 ms.
    std::thread::sleep(Duration::from_millis(300));
    let sync = a1.status().and_then(|s| s.sync);
    Burst {
        flows,
        rate,
        sent_rate: flows as f64 / sent.as_secs_f64(),
        replicated,
        tail_ms,
        lag_p50_ms: sync.as_ref().and_then(|s| s.lag_ms_p50),
        lag_p99_ms: sync.as_ref().and_then(|s| s.lag_ms_p99),
    }
}

#[derive(Debug)]
struct Result {
    flows: usize,
    /// Send duration of the churn (s) and the rate it reached.
    send_s: f64,
    /// Entries the master's conntrack gained.
    on_master: usize,
    /// Entries that reached the backup.
    replicated: usize,
    /// First packet sent -> 99.9 % of the flows in the backup's conntrack.
    done_s: f64,
    /// Last packet sent -> 99.9 % replicated (the tail of the backlog).
    tail_ms: f64,
    /// ha-agent only: event in XDP -> acknowledged as applied by the peer.
    lag_p50_ms: Option<f64>,
    lag_p99_ms: Option<f64>,
    /// ha-agent only: the backup's commit before its ownership write when
    /// the master then crashes with all the flows replicated (us, records).
    commit_us: Option<f64>,
    commit_records: Option<usize>,
    resync: ha_tests::Resync,
    /// ha-agent only: the bursts, slowest rate first.
    bursts: Vec<Burst>,
}

fn run(system: System, flows: usize) -> Result {
    let key = SyncKey::new("bench", [5u8; 32]);
    let extra = if system == System::Agent {
        key.ha_extra()
    } else {
        String::new()
    };
    let dir = std::env::temp_dir().join(format!("hatest-bench-sync-{}", std::process::id()));
    let (lab, a1, a2) = replication_lab(&extra, system == System::Agent, &dir, 524_288);
    // The bursts first (on an idle lab): 1,000, 10,000 and 100,000 new
    // flows/s asked (`HA_BENCH_BURST_RATES`), 2 s of each (at most
    // `HA_BENCH_BURST_FLOWS`, default 100,000).
    let mut bursts = Vec::new();
    if system == System::Agent {
        let flows: usize = std::env::var("HA_BENCH_BURST_FLOWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let rates: Vec<f64> = std::env::var("HA_BENCH_BURST_RATES")
            .ok()
            .map(|v| v.split(',').filter_map(|r| r.parse().ok()).collect())
            .unwrap_or_else(|| vec![1_000.0, 10_000.0, 100_000.0]);
        for (k, rate) in rates.iter().enumerate() {
            let n = flows.min((*rate as usize).max(500) * 2);
            bursts.push(burst(&lab, &a1, 0x0a04_0000 + ((k as u32) << 16), n, *rate));
        }
    }
    let base_master = conntrack_total(&lab, "fw1");
    let base_backup = conntrack_total(&lab, "fw2");
    let mut lab_owned = lab;
    let lab = &lab_owned;
    let goal = flows * 999 / 1000;
    let finished = std::sync::atomic::AtomicBool::new(false);
    let (start, sent, done) = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            let r = udp_churn(lab, flows);
            finished.store(true, std::sync::atomic::Ordering::Release);
            r
        });
        let limit = Duration::from_secs(120);
        let t = Instant::now();
        let done = loop {
            let n = conntrack_total(lab, "fw2").saturating_sub(base_backup);
            // The lab forwards fewer new flows per second than the raw
            // socket sends: once all went, what the master has is the goal.
            let goal = if finished.load(std::sync::atomic::Ordering::Acquire) {
                goal.min(conntrack_total(lab, "fw1").saturating_sub(base_master) * 999 / 1000)
            } else {
                goal
            };
            if n >= goal {
                break Some(Instant::now());
            }
            if t.elapsed() > limit {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let (start, sent) = sender.join().unwrap();
        (start, sent, done)
    });
    std::thread::sleep(Duration::from_millis(500));
    let on_master = conntrack_total(lab, "fw1").saturating_sub(base_master);
    let replicated = conntrack_total(lab, "fw2").saturating_sub(base_backup);
    let sync = a1.status().and_then(|s| s.sync);
    // A returning backup: its agent (or conntrackd) restarted with an empty
    // table, until it has the master's table again. First the same flows
    // again (up to three times), until the master has (nearly) all of them.
    for _ in 0..3 {
        if conntrack_total(lab, "fw1").saturating_sub(base_master) >= goal {
            break;
        }
        udp_churn(lab, flows);
        std::thread::sleep(Duration::from_millis(500));
    }
    let master_table = conntrack_total(lab, "fw1");
    let mut a2 = a2;
    let of = match system {
        System::Agent => ResyncOf::Agent,
        System::Conntrackd => ResyncOf::Conntrackd,
    };
    let resync = time_resync(&mut lab_owned, of, &mut a2, &dir, master_table);
    let lab = &lab_owned;
    let mut commit = None;
    if system == System::Agent {
        links_down_at_once(lab, "fw1", &["ha0", "lan0", "wan0"]);
        a1.signal(libc::SIGKILL);
        wait_for("fw2 takes over", Duration::from_secs(10), || {
            a2.role().as_deref() == Some("MASTER")
        });
        commit = a2
            .status()
            .and_then(|s| s.last_takeover)
            .map(|t| (t.commit_us, t.commit_records));
    }
    if std::env::var_os("HATEST_DEBUG").is_some() {
        for me in [1, 2] {
            let log = std::fs::read_to_string(dir.join(format!("conntrackd{me}.log")))
                .unwrap_or_default();
            eprintln!("conntrackd{me}.log:\n{log}");
            let ctl = dir.join(format!("conntrackd{me}.conf"));
            let ns = if me == 1 { "fw1" } else { "fw2" };
            let o = lab
                .command(ns, &["conntrackd", "-C", ctl.to_str().unwrap(), "-s"])
                .output()
                .unwrap();
            eprintln!("{ns} stats: {}", String::from_utf8_lossy(&o.stdout));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let done = done.unwrap_or(Instant::now());
    Result {
        flows,
        send_s: sent.duration_since(start).as_secs_f64(),
        on_master,
        replicated,
        done_s: done.duration_since(start).as_secs_f64(),
        tail_ms: done.saturating_duration_since(sent).as_secs_f64() * 1e3,
        lag_p50_ms: sync.as_ref().and_then(|s| s.lag_ms_p50),
        lag_p99_ms: sync.as_ref().and_then(|s| s.lag_ms_p99),
        commit_us: commit.and_then(|c| c.0),
        commit_records: commit.and_then(|c| c.1),
        resync,
        bursts,
    }
}

fn main() {
    require_root();
    let flows: usize = std::env::var("HA_BENCH_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    println!(
        "{:<11} {:>8} {:>10} {:>10} {:>11} {:>12} {:>9} {:>9} {:>9}",
        "system",
        "flows",
        "sent/s",
        "on master",
        "replicated",
        "events/s",
        "tail ms",
        "lag p50",
        "lag p99"
    );
    let mut rows = Vec::new();
    let only = std::env::var("HA_BENCH_SYSTEM").ok();
    for system in [System::Agent, System::Conntrackd] {
        if only.as_deref().is_some_and(|o| o != system.name()) {
            continue;
        }
        let r = run(system, flows);
        let rate = r.replicated.min(r.flows) as f64 / r.done_s;
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        println!(
            "{:<11} {:>8} {:>10.0} {:>10} {:>11} {:>12.0} {:>9.1} {:>9} {:>9}",
            system.name(),
            r.flows,
            r.flows as f64 / r.send_s,
            r.on_master,
            r.replicated,
            rate,
            r.tail_ms,
            ms(r.lag_p50_ms),
            ms(r.lag_p99_ms)
        );
        println!(
            "  {}: a returning backup (restarted, its table flushed) back in sync with {} of the master's {} entries in {:.2} s{}",
            system.name(),
            r.resync.got,
            r.resync.flows,
            r.resync.seconds,
            if r.resync.complete {
                ""
            } else {
                " (incomplete)"
            }
        );
        for b in &r.bursts {
            let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
            println!(
                "  {}: a burst of {} new flows at {:.0}/s (sent at {:.0}/s, synthetic): {} replicated, {:.1} ms after the last; lag p50 {} ms, p99 {} ms",
                system.name(),
                b.flows,
                b.rate,
                b.sent_rate,
                b.replicated,
                b.tail_ms,
                ms(b.lag_p50_ms),
                ms(b.lag_p99_ms)
            );
        }
        if let (Some(us), Some(n)) = (r.commit_us, r.commit_records) {
            println!(
                "  {}: commit before the ownership write at takeover, with {} flows replicated: {n} records in {us:.0} us",
                system.name(),
                r.replicated
            );
        }
        rows.push((system, r, rate));
    }
    let ratio = if rows.len() == 2 {
        rows[0].2 / rows[1].2.max(1.0)
    } else {
        f64::NAN
    };
    println!("ha-agent / conntrackd events/s: {ratio:.2}x");
    let json = serde_json::json!({
        "systems": rows.iter().map(|(s, r, rate)| serde_json::json!({
            "system": s.name(),
            "flows": r.flows,
            "sent_per_s": r.flows as f64 / r.send_s,
            "on_master": r.on_master,
            "replicated": r.replicated,
            "events_per_s": rate,
            "tail_ms": r.tail_ms,
            "lag_ms_p50": r.lag_p50_ms,
            "lag_ms_p99": r.lag_p99_ms,
            "commit_us": r.commit_us,
            "commit_records": r.commit_records,
            "resync_flows": r.resync.flows,
            "resync_got": r.resync.got,
            "resync_complete": r.resync.complete,
            "resync_s": r.resync.seconds,
        })).collect::<Vec<_>>(),
        "ratio_events_per_s": ratio,
    });
    // Besides the per-system rows: the top-level keys (the resync
    // of 1,000,000 and the stage ceilings come from their own benchmarks).
    let agent = rows.iter().find(|(s, _, _)| *s == System::Agent);
    let mut json = json;
    // The lag keys: the fastest burst's.
    let bursts = agent.map(|(_, r, _)| r.bursts.clone()).unwrap_or_default();
    let b = bursts.last();
    json["lag_p50_ms"] = serde_json::json!(b.and_then(|b| b.lag_p50_ms));
    json["lag_p99_ms"] = serde_json::json!(b.and_then(|b| b.lag_p99_ms));
    json["lag_rate_asked_per_s"] = serde_json::json!(b.map(|b| b.rate));
    json["lag_rate_reached_per_s"] = serde_json::json!(b.map(|b| b.sent_rate));
    json["lag_bursts"] = serde_json::json!(
        bursts
            .iter()
            .map(|b| serde_json::json!({
                "flows": b.flows,
                "rate_per_s": b.rate,
                "sent_per_s": b.sent_rate,
                "replicated": b.replicated,
                "tail_ms": b.tail_ms,
                "lag_ms_p50": b.lag_p50_ms,
                "lag_ms_p99": b.lag_p99_ms,
            }))
            .collect::<Vec<_>>()
    );
    // Young flows: the survival scenario (routed), whose batch of 200 is
    // opened all at once 1 ms before the hard crash.
    if only.as_deref().is_none_or(|o| o == "ha-agent") {
        let o = ha_tests::survival::run(true, false);
        println!(
            "ha-agent: connections opened {:.1} ms before a hard crash: {}/{} survived; all: {}/{}",
            o.young_age.as_secs_f64() * 1e3,
            o.young_survived,
            ha_tests::survival::YOUNG_BATCH,
            o.survived,
            o.total
        );
        json["young_1ms_survived"] = o.young_survived.into();
        json["young_1ms_total"] = ha_tests::survival::YOUNG_BATCH.into();
        json["young_1ms_age_ms"] = (o.young_age.as_secs_f64() * 1e3).into();
    }
    merge_bench_json("sync.json", json);
}
