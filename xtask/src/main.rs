//! Project automation, run as `cargo xtask <command>` (alias in .cargo/config.toml).
//!
//! - `setup`: installs every prerequisite, idempotently (Debian packages,
//!   rust-src for nightly, bpf-linker against LLVM 22).
//! - `build-ebpf`: builds the XDP object and prints its path.
//! - `test`: setup, build, fmt, clippy, unit tests, privileged integration tests.
//! - `lab`: the failover lab; `lab down` removes leftovers of any lab.
//! - `bench`: data-plane benchmarks (figures in docs/benchmarks.md).
//! - `sim`: the deterministic simulation of the cluster (docs/simulation.md).
//! - `fuzz`: the cargo-fuzz targets, a time budget each (docs/fuzzing.md).
//! - `package`: the Debian package (target/debian/ha-agent_*.deb).

mod build;
mod fuzz;
mod lab;
mod package;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, test and lab automation for ha-agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install every prerequisite (as root): Debian packages, rust-src for the
    /// nightly toolchain, bpf-linker built against LLVM 22. Skips what is there.
    Setup,
    /// Build the XDP programs for the BPF target and print the object's path.
    BuildEbpf,
    /// Setup, build-ebpf, fmt --check, clippy -D warnings, unit tests, then the
    /// privileged integration tests (root required unless --unprivileged).
    Test(test::TestArgs),
    /// The failover lab (`cargo xtask lab`), or `cargo xtask lab down`.
    Lab(lab::LabArgs),
    /// Benchmarks (root): ns per packet per XDP path, ownership flip of 1,000
    /// VIPs, ring-buffer events per second; the failover benchmark
    /// (HA_BENCH_RUNS hard crashes per system and advert interval, default
    /// 20); replication stage ceilings; state sync beside conntrackd (churn,
    /// bursts, young flows); the resync of 1,000,000 flows.
    /// Writes target/bench/*.json; figures in docs/benchmarks.md.
    Bench,
    /// The deterministic simulation of a cluster (node cores over a seeded,
    /// fault-injecting network; docs/simulation.md). Prints `sim: N seeds, N
    /// failovers, N invariant violations`; a failing seed prints its trace.
    ///
    /// Example: `cargo xtask sim --seeds 100000`, `cargo xtask sim --seed 42 --trace`
    Sim(SimArgs),
    /// Run every fuzz target (fuzz/, docs/fuzzing.md) for a time budget each;
    /// fails on a crash, printing the input, minimized into
    /// fuzz/regressions/<target>/ (replayed by every later run).
    ///
    /// Example: `cargo xtask fuzz --seconds 600 --target sync_session`
    Fuzz(fuzz::FuzzArgs),
    /// The Debian package (cargo-deb): binary, systemd unit, example
    /// configuration, man pages, shell completions, Grafana dashboard and
    /// Prometheus rules. Prints the .deb's path (target/debian/).
    Package(package::PackageArgs),
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    /// Seeds to run.
    #[arg(long, default_value_t = 2000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Run only this seed (with --trace: print its whole trace).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    trace: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::BuildEbpf => build::build_ebpf().map(|path| println!("{}", path.display())),
        Command::Test(args) => test::run(&args),
        Command::Lab(args) => lab::run(&args),
        Command::Bench => bench(),
        Command::Sim(args) => sim(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Package(args) => package::run(&args).map(|_| ()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench() -> anyhow::Result<()> {
    if !is_root() {
        anyhow::bail!(
            "the benchmarks load XDP programs, which needs root: run `cargo xtask bench` as root"
        );
    }
    setup::run()?;
    build::build_ebpf_only()?;
    // The failover bench runs the release agent binary.
    run_step(
        "build the release agent",
        cargo().args(["build", "--release", "--package", "ha-agent"]),
    )?;
    run_step(
        "data-plane benchmarks",
        cargo().args(["bench", "--package", "ha-tests", "--bench", "dataplane"]),
    )?;
    run_step(
        "failover benchmark (ha-agent and keepalived, 1 s and 10 ms adverts)",
        cargo().args(["bench", "--package", "ha-tests", "--bench", "failover"]),
    )?;
    run_step(
        "replication stage ceilings (synthetic input, and the kernel's ctnetlink limit)",
        cargo().args(["bench", "--package", "ha-tests", "--bench", "stages"]),
    )?;
    run_step(
        "state-sync benchmark (ha-agent and conntrackd FTFW, bursts of new flows)",
        cargo().args(["bench", "--package", "ha-tests", "--bench", "sync"]),
    )?;
    run_step(
        "resync benchmark (a returning backup, 1,000,000 connections, ha-agent and conntrackd)",
        cargo().args(["bench", "--package", "ha-tests", "--bench", "resync"]),
    )
}

/// Runs the simulation (release build: it is CPU-bound).
fn sim(a: &SimArgs) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "--release", "--package", "ha-sim", "--"])
        .args([
            "--seeds",
            &a.seeds.to_string(),
            "--first",
            &a.first.to_string(),
        ]);
    if let Some(s) = a.seed {
        cmd.args(["--seed", &s.to_string()]);
    }
    if a.trace {
        cmd.arg("--trace");
    }
    run_step("deterministic simulation", &mut cmd)
}

/// The cargo that runs us (so nested builds use the same toolchain).
pub fn cargo() -> std::process::Command {
    std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs a command inheriting stdio; a failure names the step.
pub fn run_step(step: &str, cmd: &mut std::process::Command) -> anyhow::Result<()> {
    eprintln!("xtask: {step}");
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("{step}: cannot start {:?}: {e}", cmd.get_program()))?;
    if !status.success() {
        anyhow::bail!("{step} failed ({status})");
    }
    Ok(())
}

/// True when running as root.
fn is_root() -> bool {
    // SAFETY: plain syscall without arguments.
    unsafe { libc::geteuid() == 0 }
}
