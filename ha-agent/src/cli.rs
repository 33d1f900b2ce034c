//! The operator command line: `ha-agent <command>`.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::dataplane::Dataplane;

/// XDP-accelerated HA failover agent and operator CLI.
#[derive(Debug, Parser)]
#[command(name = "ha-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the probe XDP program to an interface for a while and print what it
    /// counted (frames, ICMP echo requests/replies): a check that XDP loads and
    /// sees traffic on this machine.
    ///
    /// Example: `ha-agent probe eth0 --seconds 5`
    Probe {
        /// Interface in the current network namespace.
        iface: String,
        /// How long to count before detaching.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

/// Runs one command to completion.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Probe { iface, seconds } => probe(&iface, Duration::from_secs(seconds)).await,
    }
}

async fn probe(iface: &str, duration: Duration) -> anyhow::Result<()> {
    let mut dataplane = Dataplane::load()?;
    let mode = dataplane
        .attach_probe(iface)
        .with_context(|| format!("probe on {iface}"))?;
    println!(
        "probe attached to {iface} ({mode} mode), counting for {}s",
        duration.as_secs()
    );
    tokio::time::sleep(duration).await;
    println!("{}", dataplane.probe_counters()?);
    Ok(())
}
