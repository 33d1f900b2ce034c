//! Resync benchmark (root): the time until a returning backup is in sync
//! with a master holding `HA_BENCH_RESYNC_FLOWS` connections (default
//! 1,000,000), for ha-agent and for conntrackd (FTFW, its resync request
//! `conntrackd -n`) in the same lab.
//!
//! The table is synthetic, so the lab's traffic generator is not the limit:
//! UDP entries written into the master's kernel conntrack through ctnetlink
//! (and, for ha-agent, into its XDP flow table, which its bulk reads; for
//! conntrackd, its cache learns them from the kernel's events). Then the
//! backup's replication is restarted with its table flushed, and the time
//! until its table holds 99.9 % of the master's is measured (ha-agent must
//! also say it is in sync). The kernel's `nf_conntrack_max` (each namespace
//! counts its own entries against it) and its hash buckets (one table for
//! every namespace) are raised for the run and put back.
//!
//! Prints a table, writes `target/bench/resync.json` and adds the
//! `resync_*` keys to `target/bench/sync.json`. Run with `cargo xtask bench`.

use std::time::{Duration, Instant};

use ha_agent::sync::{
    conntrack::{Conntrack, CtTuple},
    flows::FlowTable,
    record::Record,
};
use ha_tests::{
    ResyncOf, SyncKey, conntrack_total, links_down_at_once, merge_bench_json, replication_lab,
    require_root, time_resync, wait_for,
};

const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
/// The kernel's conntrack hash table is one for every namespace.
const CONNTRACK_BUCKETS: &str = "/sys/module/nf_conntrack/parameters/hashsize";

/// The kernel's conntrack sized for the run (as an operator sizes it for a
/// table this big): `nf_conntrack_max` and the hash buckets raised, both put
/// back on drop (panics included).
struct ConntrackSized(String, String);

impl ConntrackSized {
    fn raise(to: usize) -> ConntrackSized {
        let read = |f| std::fs::read_to_string(f).unwrap_or_else(|e| panic!("read {f}: {e}"));
        let (max, buckets) = (read(CONNTRACK_MAX), read(CONNTRACK_BUCKETS));
        for (file, old) in [(CONNTRACK_MAX, &max), (CONNTRACK_BUCKETS, &buckets)] {
            if old.trim().parse::<usize>().is_ok_and(|v| v < to) {
                std::fs::write(file, to.to_string())
                    .unwrap_or_else(|e| panic!("raise {file}: {e}"));
            }
        }
        ConntrackSized(max, buckets)
    }
}

impl Drop for ConntrackSized {
    fn drop(&mut self) {
        let _ = std::fs::write(CONNTRACK_BUCKETS, self.1.trim());
        let _ = std::fs::write(CONNTRACK_MAX, self.0.trim());
    }
}

/// The `i`th synthetic connection.
fn flow(i: usize) -> Record {
    ha_tests::synthetic_udp_flow(0x0a02_0000, i)
}

struct Row {
    system: ResyncOf,
    /// Writing the master's table (s).
    fill_s: f64,
    r: ha_tests::Resync,
    /// ha-agent only: the backup's commit before its ownership write when
    /// the master then crashes with the whole table replicated (ms,
    /// records applied in it).
    commit: Option<(f64, usize)>,
}

fn run(system: ResyncOf, n: usize) -> Row {
    let key = SyncKey::new("bench-resync", [7u8; 32]);
    let extra = match system {
        ResyncOf::Agent => format!("{}\nmax_flows = {}", key.ha_extra(), n + (n >> 4)),
        ResyncOf::Conntrackd => String::new(),
    };
    let dir = std::env::temp_dir().join(format!("hatest-bench-resync-{}", std::process::id()));
    let (mut lab, a1, mut a2) = replication_lab(&extra, system == ResyncOf::Agent, &dir, 2 * n);
    // The master's table.
    let t = Instant::now();
    let records: Vec<Record> = (0..n).map(flow).collect();
    let errors = lab
        .run_in("fw1", || {
            let mut ct = Conntrack::open().expect("ctnetlink socket");
            records
                .chunks(8192)
                .map(|c| {
                    ct.apply_batch(c, |_| 600)
                        .iter()
                        .filter(|r| r.is_err())
                        .count()
                })
                .sum::<usize>()
        })
        .unwrap();
    assert_eq!(errors, 0, "conntrack entries refused on the master");
    if system == ResyncOf::Agent {
        let mut table = FlowTable::open(&a1.pins.0).expect("the master's flow table");
        for r in &records {
            table.insert(&CtTuple::orig_of(r), 0, ha_agent::dataplane::monotonic_ns());
        }
    }
    let fill_s = t.elapsed().as_secs_f64();
    let flows = conntrack_total(&lab, "fw1");
    if system == ResyncOf::Conntrackd {
        // Its cache learns the entries from the kernel's events, which a
        // burst of a million overruns (it says so): read the kernel table
        // into its cache (`-R`), as an operator would, so that its resync
        // has the whole table to send.
        let conf = dir.join("conntrackd1.conf");
        let _ = lab
            .command("fw1", &["conntrackd", "-C", conf.to_str().unwrap(), "-R"])
            .output();
        // Its cache has them once its live replication brought them over.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120)
            && conntrack_total(&lab, "fw2") * 1000 < flows * 999
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let r = time_resync(&mut lab, system, &mut a2, &dir, flows);
    // The takeover with the table replicated: the master crashes (its
    // links down at once, its agent killed); the backup's commit is what
    // its status says of the takeover.
    let mut commit = None;
    if system == ResyncOf::Agent {
        links_down_at_once(&lab, "fw1", &["ha0", "lan0", "wan0"]);
        a1.signal(libc::SIGKILL);
        wait_for("fw2 takes over", Duration::from_secs(10), || {
            a2.role().as_deref() == Some("MASTER")
        });
        let mut took = None;
        let t = Instant::now();
        while took.is_none() && t.elapsed() < Duration::from_secs(5) {
            took = a2
                .status()
                .and_then(|s| s.last_takeover)
                .and_then(|t| Some((t.commit_us? / 1e3, t.commit_records?)));
            std::thread::sleep(Duration::from_millis(50));
        }
        commit = took;
    }
    if std::env::var_os("HATEST_DEBUG").is_some() {
        for a in [&a1, &a2] {
            eprintln!("{}", a.log_text());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Row {
        system,
        fill_s,
        r,
        commit,
    }
}

fn name(s: ResyncOf) -> &'static str {
    match s {
        ResyncOf::Agent => "ha-agent",
        ResyncOf::Conntrackd => "conntrackd",
    }
}

fn main() {
    require_root();
    let n: usize = std::env::var("HA_BENCH_RESYNC_FLOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let _sized = ConntrackSized::raise(2 * n + (1 << 18));
    println!(
        "{:<11} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "system", "master", "backup", "complete", "resync s", "fill s"
    );
    // `HA_BENCH_RESYNC_ONLY=ha-agent` (or `conntrackd`): one system only.
    let only = std::env::var("HA_BENCH_RESYNC_ONLY").ok();
    let mut rows = Vec::new();
    for system in [ResyncOf::Agent, ResyncOf::Conntrackd] {
        if only.as_deref().is_some_and(|o| o != name(system)) {
            continue;
        }
        let row = run(system, n);
        println!(
            "{:<11} {:>10} {:>10} {:>10} {:>9.2} {:>9.1}",
            name(system),
            row.r.flows,
            row.r.got,
            row.r.complete,
            row.r.seconds,
            row.fill_s
        );
        if let Some((ms, records)) = row.commit {
            println!(
                "  {}: commit before the ownership write at takeover, {} flows replicated: {records} records in {ms:.3} ms",
                name(system),
                row.r.got
            );
        }
        rows.push(row);
    }
    let of = |s: ResyncOf| rows.iter().find(|r| r.system == s).map(|r| r.r);
    let json = serde_json::json!({
        "systems": rows.iter().map(|r| serde_json::json!({
            "system": name(r.system),
            "flows": r.r.flows,
            "got": r.r.got,
            "complete": r.r.complete,
            "resync_s": r.r.seconds,
            "commit_ms": r.commit.map(|c| c.0),
            "commit_records": r.commit.map(|c| c.1),
        })).collect::<Vec<_>>(),
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("resync.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
    // The keys, beside the sync benchmark's.
    let agent = of(ResyncOf::Agent);
    merge_bench_json(
        "sync.json",
        serde_json::json!({
            "resync_flows": agent.map(|r| r.flows),
            "resync_complete": agent.map(|r| r.complete),
            "resync_s": agent.map(|r| r.seconds),
            "conntrackd_resync_s": of(ResyncOf::Conntrackd).map(|r| r.seconds),
            "conntrackd_resync_got": of(ResyncOf::Conntrackd).map(|r| r.got),
            "commit_ms_at_1m": rows
                .iter()
                .find(|r| r.system == ResyncOf::Agent)
                .and_then(|r| r.commit)
                .map(|c| c.0),
            "commit_flows": agent.map(|r| r.got),
        }),
    );
}
