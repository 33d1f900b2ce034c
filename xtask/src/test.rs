//! `cargo xtask test`: everything CI checks, in order, stopping at the first
//! failure: setup, build-ebpf, fmt, clippy, unit tests, the fuzz targets for a
//! short budget each, privileged integration tests; then a one-line summary of
//! every test run.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{cargo, is_root, run_step};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Skip the privileged integration tests (namespaces, XDP) instead of
    /// failing when not root.
    #[arg(long)]
    unprivileged: bool,
    /// Seconds of fuzzing per fuzz target after the unit tests (0: none).
    /// The budget keeps `cargo xtask test` short; `cargo xtask fuzz` runs longer.
    #[arg(long, default_value_t = 10)]
    fuzz_seconds: u64,
}

/// Counts from cargo test's `test result:` lines.
#[derive(Debug, Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// Adds the counts of one `test result: ok. 4 passed; 0 failed; 1 ignored; ...` line.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    if !is_root() && !args.unprivileged {
        bail!(
            "the integration tests create network namespaces and load XDP programs, which needs root: \
             run `cargo xtask test` as root, or `cargo xtask test --unprivileged` to skip them"
        );
    }
    crate::setup::run()?;
    let object = crate::build::build_ebpf_only()?;
    eprintln!("xtask: XDP object: {}", object.display());
    run_step(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    run_step(
        "cargo clippy -D warnings",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;

    let mut tally = Tally::default();
    cargo_test(
        "unit tests",
        &[
            "--workspace",
            "--exclude",
            "ha-tests",
            "--exclude",
            "ha-ebpf",
        ],
        &mut tally,
    )?;
    run_step(
        "deterministic simulation (2,000 seeds; `cargo xtask sim --seeds 100000` for more)",
        cargo().args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "ha-sim",
            "--",
            "--seeds",
            "2000",
        ]),
    )?;
    if args.fuzz_seconds > 0 {
        crate::fuzz::run(&crate::fuzz::FuzzArgs {
            seconds: args.fuzz_seconds,
            targets: Vec::new(),
        })?;
    }
    if args.unprivileged {
        eprintln!("xtask: skipping the privileged integration tests (--unprivileged)");
    } else {
        // The Debian package the `package` test installs (the dev build's
        // binary: the same code, without minutes of optimisation).
        crate::package::run(&crate::package::PackageArgs {
            profile: "dev".into(),
        })?;
        let before = ha_lab::list_netns(ha_lab::PREFIX)?;
        let pins_before = test_pins();
        let run_before = run_files();
        let result = cargo_test(
            "privileged integration tests",
            &["--package", "ha-tests"],
            &mut tally,
        );
        let leaked: Vec<_> = ha_lab::list_netns(ha_lab::PREFIX)?
            .into_iter()
            .filter(|n| !before.contains(n))
            .collect();
        if !leaked.is_empty() {
            ha_lab::down_prefix(ha_lab::PREFIX).ok();
            bail!(
                "the integration tests left namespaces behind (now removed): {}",
                leaked.join(" ")
            );
        }
        result?;
        let left: Vec<String> = run_files()
            .into_iter()
            .filter(|f| !run_before.contains(f))
            .collect();
        if !left.is_empty() {
            for f in &left {
                let _ = std::fs::remove_file(std::path::Path::new(RUN_DIR).join(f));
            }
            bail!(
                "the integration tests left files behind in {RUN_DIR} (now removed): {}",
                left.join(" ")
            );
        }
        let pins = remove_test_pins(&pins_before)?;
        if !pins.is_empty() {
            bail!(
                "the integration tests left pins behind in /sys/fs/bpf (now removed): {}",
                pins.join(" ")
            );
        }
    }
    println!(
        "\nxtask test finished in {:.0}s\nsummary: {} passed, {} failed, {} skipped",
        start.elapsed().as_secs_f64(),
        tally.passed,
        tally.failed,
        tally.ignored
    );
    Ok(())
}

/// The agent's run directory (status files, operator sockets).
const RUN_DIR: &str = "/run/ha-agent";

/// Files in [`RUN_DIR`].
fn run_files() -> Vec<String> {
    std::fs::read_dir(RUN_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Removes the run files of test instances (`/run/ha-agent/hatest-*`:
/// status, socket, object stamp), which agents killed with their lab leave
/// behind; returns the names removed. For `lab down`, when no test runs.
pub fn remove_test_run_files() -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in run_files().into_iter().filter(|n| n.starts_with("hatest-")) {
        let path = std::path::Path::new(RUN_DIR).join(&name);
        std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        removed.push(name);
    }
    Ok(removed)
}

/// Pin directories of test data planes (`/sys/fs/bpf/hatest-*`).
fn test_pins() -> Vec<String> {
    std::fs::read_dir("/sys/fs/bpf")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("hatest-"))
        .collect()
}

/// Removes test pin directories except those in `keep` (removing a link pin
/// detaches its program); returns the names removed. `lab down` uses it too.
pub fn remove_test_pins(keep: &[String]) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = test_pins()
        .into_iter()
        .filter(|n| !keep.contains(n))
        .collect();
    remove_pins(&names)
}

/// Removes the pin directories of instances `names` (those that exist);
/// returns the names removed.
pub fn remove_pins(names: &[String]) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in names {
        let dir = std::path::Path::new("/sys/fs/bpf").join(name);
        if !dir.exists() {
            continue;
        }
        for sub in ["links", "progs", "maps"] {
            for entry in std::fs::read_dir(dir.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                std::fs::remove_file(entry.path())?;
            }
            let _ = std::fs::remove_dir(dir.join(sub));
        }
        std::fs::remove_dir(&dir)?;
        removed.push(name.clone());
    }
    Ok(removed)
}

/// Removes the run files of instances `names` (`/run/ha-agent/<instance>`
/// and one of the agent's suffixes: status, its temporary, socket, object
/// stamp; not another instance whose name merely starts the same);
/// returns how many.
pub fn remove_run_files_of(names: &[String]) -> anyhow::Result<usize> {
    const SUFFIXES: &[&str] = &[".json", ".json.tmp", ".sock", ".object"];
    let mut n = 0;
    for file in run_files() {
        if names.iter().any(|i| {
            file.strip_prefix(i.as_str())
                .is_some_and(|r| SUFFIXES.contains(&r))
        }) {
            let path = std::path::Path::new(RUN_DIR).join(&file);
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Runs `cargo test <args>`, echoing its output and adding its results to `tally`.
fn cargo_test(step: &str, args: &[&str], tally: &mut Tally) -> anyhow::Result<()> {
    eprintln!("xtask: {step}");
    let mut child = cargo()
        .arg("test")
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("{step}: starting cargo test"))?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        tally.add_line(&line);
        writeln!(out, "{line}").ok();
    }
    drop(out);
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_reads_cargo_test_result_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 4 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.19s");
        t.add_line(
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 5 tests");
        assert_eq!((t.passed, t.failed, t.ignored), (6, 3, 1));
    }
}
