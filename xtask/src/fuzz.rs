//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` (one per parser
//! of untrusted bytes; docs/fuzzing.md) for a time budget each, and fails on
//! the first crash, naming the input. A crash is minimized (`cargo fuzz
//! tmin`) and copied to `fuzz/regressions/<target>/`, which every later run
//! replays first (it is one of the corpus directories), so a finding stays
//! fixed once fixed.
//!
//! The targets build with the nightly (cargo-fuzz needs it), without a
//! sanitizer (the code under test is safe Rust: what we look for are panics,
//! including arithmetic overflow, hence `--debug-assertions`), and with
//! `HA_AGENT_SKIP_EBPF=1` (no XDP object: the targets never load one, and
//! building it again in fuzz/target would cost a minute).

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, bail};

use crate::run_step;

/// Every target, in the order they run (fuzz/Cargo.toml has one `[[bin]]` each).
pub const TARGETS: &[&str] = &[
    "vrrp_wire",
    "vrrp_packet",
    "heartbeat_reply",
    "sync_frame",
    "sync_session",
    "control_json",
    "config_toml",
    "keepalived_conf",
    "ctnetlink",
    "netdev_napi",
];

#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Run only these targets (repeatable); default: all.
    #[arg(long = "target")]
    pub targets: Vec<String>,
}

/// What one target's run did (libFuzzer's final stats).
#[derive(Debug, Default, Clone, PartialEq)]
struct Stats {
    execs: u64,
    execs_per_sec: u64,
}

impl Stats {
    /// Reads `stat::number_of_executed_units: N` / `stat::average_exec_per_sec: N`.
    fn add_line(&mut self, line: &str) {
        let value = |prefix: &str| {
            line.strip_prefix(prefix)
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(v) = value("stat::number_of_executed_units:") {
            self.execs = v;
        }
        if let Some(v) = value("stat::average_exec_per_sec:") {
            self.execs_per_sec = v;
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `cargo +nightly fuzz <sub>` from the workspace root, with the environment
/// the targets build in (and none of the outer cargo's toolchain choice).
fn cargo_fuzz(sub: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args(["+nightly", "fuzz", sub])
        .env("HA_AGENT_SKIP_EBPF", "1")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO");
    cmd
}

/// The build flags; `build`, `run` and `tmin` must agree or each rebuilds.
const BUILD_FLAGS: &[&str] = &["--sanitizer", "none", "--debug-assertions"];

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    crate::setup::cargo_fuzz()?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &args.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!("no fuzz target {t}; targets: {}", TARGETS.join(", "));
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    run_step(
        "build the fuzz targets (cargo +nightly fuzz build)",
        cargo_fuzz("build").args(BUILD_FLAGS),
    )?;
    let built = start.elapsed();
    let mut summary = Vec::new();
    for target in &targets {
        let stats = run_target(target, args.seconds)?;
        summary.push((target, stats));
    }
    println!(
        "\nfuzz: {} targets, {} s each, build {:.0} s, total {:.0} s",
        targets.len(),
        args.seconds,
        built.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    for (target, s) in summary {
        println!(
            "  {target:<14} {:>12} execs  {:>8} execs/s",
            s.execs, s.execs_per_sec
        );
    }
    Ok(())
}

/// Fuzzes one target for `seconds`: new inputs go to the (untracked)
/// `fuzz/target/corpus/<target>`; the committed seeds in `fuzz/corpus/<target>`
/// and the findings in `fuzz/regressions/<target>` are read (and so replayed)
/// first.
fn run_target(target: &str, seconds: u64) -> anyhow::Result<Stats> {
    let root = root();
    let work = root.join("fuzz/target/corpus").join(target);
    let seeds = root.join("fuzz/corpus").join(target);
    let regressions = root.join("fuzz/regressions").join(target);
    for dir in [&work, &seeds, &regressions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let artifacts = root.join("fuzz/artifacts").join(target);
    let began = SystemTime::now();
    eprintln!("xtask: fuzz {target} for {seconds} s");
    let mut child = cargo_fuzz("run")
        .args(BUILD_FLAGS)
        .arg(target)
        .args([&work, &seeds, &regressions])
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args([
            "-print_final_stats=1",
            // One input taking over 10 s is a finding (a hang), as is 2 GiB.
            "-timeout=10",
            "-rss_limit_mb=2048",
            "-max_len=4096",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting cargo fuzz run {target}"))?;
    let stderr = child.stderr.take().context("cargo fuzz stderr")?;
    let mut stats = Stats::default();
    let mut tail: Vec<String> = Vec::new();
    // The panic message (its first lines), then the end of the output:
    // libFuzzer prints a status line per new input, a backtrace, the input.
    let mut panic: Vec<String> = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading cargo fuzz output")?;
        stats.add_line(&line);
        if (line.contains("panicked at") && panic.is_empty()) || (1..6).contains(&panic.len()) {
            panic.push(line.clone());
        }
        tail.push(line);
        if tail.len() > 30 {
            tail.remove(0);
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    if status.success() {
        eprintln!(
            "xtask: fuzz {target}: {} execs, {} execs/s, no crash",
            stats.execs, stats.execs_per_sec
        );
        return Ok(stats);
    }
    for line in panic.iter().chain(&[String::from("...")]).chain(&tail) {
        eprintln!("{line}");
    }
    let crashes = new_files(&artifacts, began);
    if crashes.is_empty() {
        bail!(
            "fuzz target {target} failed ({status}) without leaving an input in {}",
            artifacts.display()
        );
    }
    for crash in &crashes {
        eprintln!("xtask: fuzz {target}: crash input {}", crash.display());
        let kept = minimize(target, crash, &regressions)?;
        eprintln!(
            "xtask: fuzz {target}: minimized into {} (replayed by every run; fix the bug, keep the file)",
            kept.display()
        );
    }
    bail!(
        "fuzz target {target} found {} crashing input(s): {}",
        crashes.len(),
        crashes
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Files in `dir` modified since `since`.
fn new_files(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// `cargo fuzz tmin` the crash, then copies the smallest input that still
/// crashes (or the original, if minimizing fails) into `regressions`.
fn minimize(target: &str, crash: &Path, regressions: &Path) -> anyhow::Result<PathBuf> {
    let name = crash
        .file_name()
        .context("crash file name")?
        .to_string_lossy()
        .into_owned();
    let began = SystemTime::now();
    let tmin = cargo_fuzz("tmin")
        .args(BUILD_FLAGS)
        .arg(target)
        .arg(crash)
        .args(["--", "-runs=2000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let minimized = new_files(&root().join("fuzz/artifacts").join(target), began)
        .into_iter()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("minimized-"))
        });
    let source = match (tmin, minimized) {
        (Ok(_), Some(m)) => m,
        _ => crash.to_path_buf(),
    };
    let dest = regressions.join(name);
    std::fs::copy(&source, &dest)
        .with_context(|| format!("copying {} to {}", source.display(), dest.display()))?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_read_libfuzzer_final_lines() {
        let mut s = Stats::default();
        s.add_line("stat::number_of_executed_units: 1234567");
        s.add_line("stat::average_exec_per_sec:     123456");
        s.add_line("#2 INITED cov: 5 ft: 6 corp: 1/1b exec/s: 0 rss: 30Mb");
        assert_eq!(
            s,
            Stats {
                execs: 1_234_567,
                execs_per_sec: 123_456
            }
        );
    }

    #[test]
    fn every_target_has_a_bin_in_the_fuzz_manifest() {
        let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap();
        for t in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "{t} missing from fuzz/Cargo.toml"
            );
            assert!(root().join(format!("fuzz/fuzz_targets/{t}.rs")).is_file());
        }
    }
}
