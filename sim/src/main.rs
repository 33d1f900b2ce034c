//! `ha-sim` (run by `cargo xtask sim`): runs seeds of the deterministic
//! simulation in parallel and prints one summary line; a failing seed
//! prints its violations and its trace, and replays with `--seed`.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use ha_sim::{Outcome, run_seed};

/// Deterministic simulation of an ha-agent cluster.
#[derive(Debug, Parser)]
#[command(name = "ha-sim")]
struct Args {
    /// How many seeds to run (from --first).
    #[arg(long, default_value_t = 2000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Run this one seed only, and print its whole trace with --trace.
    #[arg(long)]
    seed: Option<u64>,
    /// Print the trace of --seed.
    #[arg(long)]
    trace: bool,
    /// Worker threads (default: the CPUs).
    #[arg(long)]
    jobs: Option<usize>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let start = Instant::now();
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first..args.first + args.seeds).collect(),
    };
    if let (Some(s), true) = (args.seed, args.trace) {
        let o = run_seed(s, true);
        println!("seed {s}: {}", o.scenario);
        print!("{}", o.trace.as_deref().unwrap_or(""));
        report_failure(&o, false);
        summary(&[o], start.elapsed());
        return std::process::ExitCode::SUCCESS;
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let next = AtomicU64::new(0);
    let results = Mutex::new(Vec::with_capacity(seeds.len()));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&seed) = seeds.get(k) else { break };
                    let o = run_seed(seed, false);
                    results.lock().unwrap_or_else(|e| e.into_inner()).push(o);
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|o| o.seed);
    let failed: Vec<&Outcome> = results
        .iter()
        .filter(|o| !o.violations.is_empty())
        .collect();
    for o in failed.iter().take(3) {
        report_failure(o, true);
    }
    summary(&results, start.elapsed());
    if failed.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        let mut by: std::collections::BTreeMap<String, usize> = Default::default();
        for o in &failed {
            let name = o.violations[0]
                .1
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned();
            *by.entry(name).or_default() += 1;
        }
        eprintln!("failing seeds by their first violation: {by:?}");
        eprintln!(
            "failing seeds: {}",
            failed
                .iter()
                .map(|o| o.seed.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
        std::process::ExitCode::FAILURE
    }
}

/// Prints a failing seed: its violations and the end of its trace (the run
/// again, traced: it replays exactly).
fn report_failure(o: &Outcome, with_trace: bool) {
    if o.violations.is_empty() {
        return;
    }
    eprintln!("\nseed {} FAILED: {}", o.seed, o.scenario);
    for (t, v) in &o.violations {
        eprintln!("  at {:.6}s: {v}", t.as_secs_f64());
    }
    if with_trace {
        let traced = run_seed(o.seed, true);
        let trace = traced.trace.unwrap_or_default();
        let lines: Vec<&str> = trace.lines().collect();
        let from = lines.len().saturating_sub(80);
        eprintln!("  ... the last {} lines of its trace:", lines.len() - from);
        for l in &lines[from..] {
            eprintln!("  {l}");
        }
        eprintln!("  replay: cargo xtask sim --seed {} --trace", o.seed);
    }
}

fn summary(results: &[Outcome], took: Duration) {
    let failovers: u64 = results.iter().map(|o| o.stats.failovers).sum();
    let violations: usize = results.iter().map(|o| o.violations.len()).sum();
    let deaths: u64 = results.iter().map(|o| o.deaths_checked).sum();
    let events: u64 = results.iter().map(|o| o.stats.events).sum();
    let hostile: u64 = results.iter().map(|o| o.stats.hostile).sum();
    let packets: u64 = results.iter().map(|o| o.stats.packets).sum();
    let drops: u64 = results.iter().map(|o| o.stats.drops).sum();
    let excess = results.iter().filter_map(|o| o.worst_failover_excess).max();
    let clean_at = results.iter().max_by_key(|o| o.dual_clean_max);
    let clean = clean_at.map(|o| o.dual_clean_max).unwrap_or_default();
    let impaired = results
        .iter()
        .map(|o| o.dual_impaired_max)
        .max()
        .unwrap_or_default();
    println!(
        "  {events} events, {packets} adverts sent ({drops} dropped), {hostile} hostile packets, {deaths} master deaths checked (worst takeover {} past MDI), two owners at most {:.3} ms without impairment (seed {}), {:.1} ms with, in {:.1} s",
        excess.map_or("-".into(), |e| format!("{:.3} ms", e.as_secs_f64() * 1e3)),
        clean.as_secs_f64() * 1e3,
        clean_at.map_or(0, |o| o.seed),
        impaired.as_secs_f64() * 1e3,
        took.as_secs_f64()
    );
    let replays: u64 = results.iter().map(|o| o.stats.replays).sum();
    let cuts: u64 = results.iter().map(|o| o.stats.path_cuts).sum();
    let steps: u64 = results.iter().map(|o| o.stats.wall_steps).sum();
    let checks: u64 = results.iter().map(|o| o.stats.path_checks).sum();
    println!(
        "  {replays} of the hostile packets replays of genuine adverts, {cuts} path cuts, {checks} path reports checked, {steps} wall-clock steps"
    );
    let hb_seeds = results.iter().filter(|o| o.heartbeat).count();
    let sum = |f: fn(&Outcome) -> u64| -> u64 { results.iter().map(f).sum() };
    println!(
        "  fast heartbeat in {hb_seeds} seeds: {} probes ({} lost or unanswered), {} replies, {} hostile frames ({} forged \"alive\", {} genuine replies replayed); {} PeerSilent verdicts ({} false: the peer's data plane owned), {} PeerLapsed ({} on a reply overtaken by the peer's new term, {} on an old proof replayed before the newer term's first advert came)",
        sum(|o| o.stats.probes),
        sum(|o| o.stats.probe_drops),
        sum(|o| o.stats.replies),
        sum(|o| o.stats.probe_hostile),
        sum(|o| o.stats.probe_forged),
        sum(|o| o.stats.probe_replayed),
        sum(|o| o.stats.verdicts_silent),
        sum(|o| o.stats.false_silent),
        sum(|o| o.stats.verdicts_lapsed),
        sum(|o| o.stats.lapsed_races),
        sum(|o| o.stats.lapsed_replays),
    );
    let odd: Vec<String> = results
        .iter()
        .filter(|o| o.stats.lapsed_races + o.stats.lapsed_replays > 0)
        .map(|o| o.seed.to_string())
        .collect();
    if !odd.is_empty() {
        println!(
            "  seeds with a PeerLapsed verdict while the peer owned under a newer term: {}",
            odd.join(" ")
        );
    }
    let worst = |f: fn(&Outcome) -> Option<(Duration, Duration)>| {
        results
            .iter()
            .filter_map(|o| f(o).map(|w| (w, o.seed)))
            .max_by_key(|((w, _), _)| *w)
            .map_or("-".into(), |((w, b), s)| {
                format!(
                    "{:.3} ms (bound {:.3} ms, seed {s})",
                    w.as_secs_f64() * 1e3,
                    b.as_secs_f64() * 1e3
                )
            })
    };
    println!(
        "  fast takeovers checked: {} after a machine crash (worst {} after it), {} after an agent's death or stall (worst {} after its lease's end)",
        sum(|o| o.detect_crash),
        worst(|o| o.detect_crash_worst),
        sum(|o| o.detect_lapse),
        worst(|o| o.detect_lapse_worst),
    );
    println!(
        "sim: {} seeds, {failovers} failovers, {violations} invariant violations",
        results.len()
    );
}
