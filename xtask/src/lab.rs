//! `cargo xtask lab`: sets up the machine, builds the agent and the lab
//! runner (release), and runs the failover lab (`tests/src/bin/failover-lab.rs`):
//! every scenario against ha-agent and keepalived + conntrackd, a table, JSON
//! and an SVG timeline. `lab up` leaves a lab running; `lab down` removes the
//! namespaces of any lab or test run that could not clean up after itself.

use anyhow::bail;

#[derive(Debug, clap::Args)]
pub struct LabArgs {
    #[command(subcommand)]
    action: Option<LabAction>,
    /// Scenario to run (repeatable): hard-crash, agent-crash, partition,
    /// switchover, graceful, return (the default list), and, only when
    /// named, the attacks hostile-sync and control-flood and the path and
    /// election scenarios partition-silent, lan-cut, all-paths-cut, stall
    /// and hostile-vrrp, and the load scenarios soak and probe-cost.
    #[arg(long)]
    scenario: Vec<String>,
    /// Runs per scenario and system.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// VRRP advert interval in ms (both systems).
    #[arg(long, default_value_t = 10)]
    adv_ms: u64,
    /// Long-lived TCP connections per run.
    #[arg(long, default_value_t = 200)]
    tcp: usize,
    /// `keepalived` (keepalived + conntrackd beside ha-agent) or `none`.
    #[arg(long, default_value = "keepalived")]
    compare: String,
    /// JSON report path (the SVG timeline is written next to it).
    #[arg(long, default_value = "target/lab/report.json")]
    json: String,
    /// `soak`: seconds of saturated CPUs and full-rate forwarding.
    #[arg(long, default_value_t = 600)]
    soak_s: u64,
    /// `probe-cost`: seconds measured with the fast heartbeat on, and again
    /// off.
    #[arg(long, default_value_t = 30)]
    probe_cost_s: u64,
    /// ha-agent with the VRRP virtual MAC (`vmac = true`), its client and
    /// server reaching their gateway VIP through a static neighbour entry
    /// for it (`static_neighbor_ok` per scenario).
    #[arg(long)]
    vmac: bool,
    /// The VIPs' address family: `ipv4`, `ipv6` (VRRP over IPv6, IPv6
    /// VIPs; probes, a Neighbor Solicitation sampler and TCP over IPv6) or
    /// `dual` (both families in one group; IPv6 measured, IPv4's gateway
    /// probe and ARP beside it). The failover scenarios only; not with
    /// `--vmac`. Example: `cargo xtask lab --family ipv6 --scenario
    /// hard-crash --runs 3`.
    #[arg(long, default_value = "ipv4", value_parser = ["ipv4", "ipv6", "dual"])]
    family: String,
}

#[derive(Debug, clap::Subcommand)]
enum LabAction {
    /// Build the lab with both agents and leave it running, with instructions.
    Up,
    /// Remove every lab namespace (`halab-*`) and the processes in it.
    Down,
}

pub fn run(args: &LabArgs) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!(
            "the lab creates network namespaces and loads XDP programs: run `cargo xtask lab` as root"
        );
    }
    match args.action {
        Some(LabAction::Down) => {
            let removed = ha_lab::down()?;
            if removed.is_empty() {
                println!("no lab namespaces left over");
            } else {
                println!(
                    "removed {} namespace(s): {}",
                    removed.len(),
                    removed.join(" ")
                );
            }
            let pins = crate::test::remove_test_pins(&[])?;
            if !pins.is_empty() {
                println!("removed test data-plane pins: {}", pins.join(" "));
            }
            // The instances `lab up` named like an operator's (`fw1`,
            // `fw2`), as its marker lists them.
            let marker = std::path::Path::new("/run/ha-agent/halab-up.instances");
            if let Ok(text) = std::fs::read_to_string(marker) {
                // Only the names `lab up` gives (the marker is not trusted
                // with paths).
                let names: Vec<String> = text
                    .split_whitespace()
                    .filter(|n| ["fw1", "fw2"].contains(n))
                    .map(str::to_owned)
                    .collect();
                let pins = crate::test::remove_pins(&names)?;
                let runs = crate::test::remove_run_files_of(&names)?;
                for name in &names {
                    let _ = std::fs::remove_dir_all(
                        std::env::temp_dir().join(format!("halab-up-{name}")),
                    );
                }
                std::fs::remove_file(marker)?;
                println!(
                    "removed the lab-up instances {} (pins of {}, {runs} run file(s))",
                    names.join(" "),
                    if pins.is_empty() {
                        "none".to_owned()
                    } else {
                        pins.join(" ")
                    }
                );
            }
            let runs = crate::test::remove_test_run_files()?;
            if !runs.is_empty() {
                println!(
                    "removed {} run file(s) of test agents in /run/ha-agent",
                    runs.len()
                );
            }
            Ok(())
        }
        Some(LabAction::Up) => {
            build()?;
            crate::run_step(
                "start the lab (left running)",
                lab_runner().args(["--up", "--adv-ms", &args.adv_ms.to_string()]),
            )
        }
        None => {
            build()?;
            let mut cmd = lab_runner();
            cmd.args([
                "--runs",
                &args.runs.to_string(),
                "--adv-ms",
                &args.adv_ms.to_string(),
                "--tcp",
                &args.tcp.to_string(),
                "--compare",
                &args.compare,
                "--json",
                &args.json,
                "--soak-s",
                &args.soak_s.to_string(),
                "--probe-cost-s",
                &args.probe_cost_s.to_string(),
                "--family",
                &args.family,
            ]);
            for s in &args.scenario {
                cmd.args(["--scenario", s]);
            }
            if args.vmac {
                cmd.arg("--vmac");
            }
            crate::run_step("failover lab", &mut cmd)
        }
    }
}

fn build() -> anyhow::Result<()> {
    crate::setup::run()?;
    crate::build::build_ebpf_only()?;
    crate::run_step(
        "build the release agent and the lab runner",
        crate::cargo().args([
            "build",
            "--release",
            "--package",
            "ha-agent",
            "--package",
            "ha-tests",
            "--bin",
            "ha-agent",
            "--bin",
            "failover-lab",
        ]),
    )
}

fn lab_runner() -> std::process::Command {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = std::process::Command::new(root.join("target/release/failover-lab"));
    cmd.current_dir(root);
    cmd
}
