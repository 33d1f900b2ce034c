//! The operator command line: `ha-agent <command>`.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::dataplane::{
    Dataplane, LinkSettings, LoadOptions, inspect::Snapshot, pin_dir, probe::Probe,
};

/// XDP-accelerated HA failover agent and operator CLI.
#[derive(Debug, Parser)]
#[command(name = "ha-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: load and attach the data plane, run the VRRP groups,
    /// take over and step down. Stops gracefully (priority-0 adverts) on
    /// SIGTERM or Ctrl-C.
    ///
    /// Example: `ha-agent run --config /etc/ha-agent/config.toml`
    Run {
        /// Configuration file.
        #[arg(long, default_value = crate::config::DEFAULT_PATH)]
        config: std::path::PathBuf,
    },
    /// Show the running agent's roles, peer, counters and last takeover
    /// (from its status file) and the data plane's ownership.
    Status {
        #[arg(long, default_value = "ha")]
        instance: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show the pinned data plane: VIPs and ownership, lease, last advert per
    /// VRID, flows, verdict counters. Needs no running agent.
    ///
    /// Example: `ha-agent maps --instance ha --top 20 --json`
    Maps {
        /// Instance name (pins under /sys/fs/bpf/<instance>).
        #[arg(long, default_value = "ha")]
        instance: String,
        /// How many of the busiest flows to list.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Load, attach and pin the XDP data plane, or remove it.
    #[command(subcommand)]
    Dataplane(DataplaneCommand),
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

#[derive(Debug, Subcommand)]
pub enum DataplaneCommand {
    /// Load and pin the programs (if not pinned yet), attach `ha_link` to the HA
    /// interface and `ha_data` to the data interfaces, and set the filter and VIP
    /// tables. Ownership is not changed: the election decides it.
    ///
    /// Example: `ha-agent dataplane attach --ha-iface ha0 --data-iface lan0
    /// --peer 10.255.0.2 --vrid 51 --sync-port 7788 --mgmt tcp/22 --vip 10.0.0.1`
    Attach(AttachArgs),
    /// Detach every program and remove every pin of the instance.
    Detach {
        #[arg(long, default_value = "ha")]
        instance: String,
    },
    /// Print the debug log of the XDP programs (loaded with `attach
    /// --xdp-debug`) until interrupted or for `--seconds`.
    Logs {
        #[arg(long, default_value = "ha")]
        instance: String,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
    },
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Instance name (pins under /sys/fs/bpf/<instance>).
    #[arg(long, default_value = "ha")]
    instance: String,
    /// The dedicated HA interface (gets `ha_link`).
    #[arg(long)]
    ha_iface: Option<String>,
    /// Data interfaces (get `ha_data`), repeatable.
    #[arg(long = "data-iface")]
    data_ifaces: Vec<String>,
    /// Peer address allowed to send VRRP and sync on the HA link, repeatable.
    #[arg(long = "peer")]
    peers: Vec<Ipv4Addr>,
    /// VRID this node runs, repeatable.
    #[arg(long = "vrid")]
    vrids: Vec<u8>,
    /// UDP port of state-sync frames on the HA link.
    #[arg(long, default_value_t = 0)]
    sync_port: u16,
    /// Management service allowed on the HA link, `tcp/22` or `udp/161`, repeatable.
    /// The HA-link tables (peers, VRIDs, sync port, management) and the VIP table
    /// are replaced only when options for them are given.
    #[arg(long = "mgmt", value_parser = parse_mgmt)]
    mgmt: Vec<(u8, u16)>,
    /// VIP, `ADDR` (group 0) or `ADDR@GROUP`, repeatable.
    #[arg(long = "vip", value_parser = parse_vip)]
    vips: Vec<(Ipv4Addr, u32)>,
    /// Enable debug logging inside the XDP programs (costs per packet; only at
    /// first load).
    #[arg(long)]
    xdp_debug: bool,
}

fn parse_mgmt(s: &str) -> Result<(u8, u16), String> {
    crate::config::parse_mgmt(s).map_err(|problem| format!("{s:?}: {problem}"))
}

fn parse_vip(s: &str) -> Result<(Ipv4Addr, u32), String> {
    let (addr, group) = s.split_once('@').unwrap_or((s, "0"));
    let addr = addr
        .parse()
        .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
    let group: u32 = group
        .parse()
        .map_err(|_| format!("{s:?}: group {group:?} is not a number"))?;
    if group >= ha_common::data::MAX_GROUPS {
        return Err(format!("{s:?}: group {group} is out of range 0..63"));
    }
    Ok((addr, group))
}

/// Runs one command to completion. `shutdown` resolves when the process is
/// asked to stop (only `main` touches signals).
pub async fn run(cli: Cli, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config } => {
            let config = crate::config::Config::load(&config)?;
            crate::agent::run(config, shutdown).await
        }
        Command::Status { instance, json } => status(&instance, json),
        Command::Maps {
            instance,
            top,
            json,
        } => maps(&instance, top, json),
        Command::Dataplane(DataplaneCommand::Attach(args)) => attach(&args),
        Command::Dataplane(DataplaneCommand::Detach { instance }) => {
            if Dataplane::detach_all(&instance)? {
                println!("detached and removed {}", pin_dir(&instance).display());
            } else {
                println!("nothing pinned at {}", pin_dir(&instance).display());
            }
            Ok(())
        }
        Command::Dataplane(DataplaneCommand::Logs { instance, seconds }) => {
            let logs = crate::dataplane::xdp_logs(&instance);
            match seconds {
                Some(s) => match tokio::time::timeout(Duration::from_secs(s), logs).await {
                    Ok(result) => result.map_err(Into::into),
                    Err(_elapsed) => Ok(()),
                },
                None => tokio::select! {
                    r = logs => r.map_err(Into::into),
                    () = shutdown => Ok(()),
                },
            }
        }
        Command::Probe { iface, seconds } => probe(&iface, Duration::from_secs(seconds)).await,
    }
}

fn status(instance: &str, json: bool) -> anyhow::Result<()> {
    let st = crate::agent::status::Status::read(instance).with_context(|| {
        format!(
            "no status for instance {instance} at {} (is `ha-agent run` running?)",
            crate::agent::status::Status::path(instance).display()
        )
    })?;
    let own = crate::dataplane::Dataplane::open(instance)
        .and_then(|d| d.ownership())
        .ok();
    if json {
        let mut v = serde_json::to_value(&st)?;
        v["dataplane_ownership"] = serde_json::json!(own.map(|o| o.groups));
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for (group, role) in &st.roles {
        let prio = st.priorities.get(group).copied().unwrap_or(0);
        println!("group {group}: {role} (priority {prio})");
    }
    println!(
        "ownership word: {:#x} (data plane: {})",
        st.owned,
        own.map_or("not pinned".to_owned(), |o| format!("{:#x}", o.groups))
    );
    match (st.last_advert_from, st.last_advert_unix_ms) {
        (Some(src), Some(at)) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            println!(
                "peer {src}: last advert {} ms ago, priority {}",
                now.saturating_sub(at),
                st.last_advert_priority.unwrap_or(0)
            );
        }
        _ => println!("peer: no advert received yet"),
    }
    println!(
        "adverts sent {}, received {}",
        st.adverts_sent, st.adverts_received
    );
    for (reason, n) in &st.rejected_by_reason {
        println!("rejected {reason}: {n}");
    }
    if let Some(s) = &st.sync {
        let lag = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2} ms"));
        println!(
            "state sync: {} ({} flows from the peer; lag p50 {}, p99 {}; {} frames unacknowledged, {} records dropped, {} apply errors)",
            if s.in_sync {
                "up to date"
            } else {
                "waiting for the peer's bulk resync"
            },
            s.flows_from_peer,
            lag(s.lag_ms_p50),
            lag(s.lag_ms_p99),
            s.queue_depth,
            s.records_dropped,
            s.apply_errors
        );
        for (reason, n) in &s.rejected {
            println!("sync frames rejected ({reason}): {n}");
        }
    }
    if let Some(t) = &st.last_takeover {
        println!(
            "last takeover ({}): timer due -> VIPs owned {:.0} us, -> first GARP {:.0} us",
            t.group, t.to_owned_us, t.to_first_garp_us
        );
        if let (Some(n), Some(us)) = (t.commit_records, t.commit_us) {
            println!("  state commit before the ownership write: {n} records in {us:.0} us");
        }
    }
    if let Some(t) = st.transitions.last() {
        println!("last transition: {} -> {} ({})", t.group, t.role, t.reason);
    }
    Ok(())
}

fn maps(instance: &str, top: usize, json: bool) -> anyhow::Result<()> {
    let snapshot = Snapshot::read(instance, top)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
    } else {
        print!("{snapshot}");
    }
    Ok(())
}

fn attach(a: &AttachArgs) -> anyhow::Result<()> {
    if a.ha_iface.is_none() && a.data_ifaces.is_empty() {
        bail!("nothing to attach: give --ha-iface and/or --data-iface");
    }
    let mut dp = Dataplane::create_or_open(
        &a.instance,
        LoadOptions {
            xdp_debug: a.xdp_debug,
        },
    )?;
    // Tables are replaced only when given: attaching one more interface later
    // must not empty the VIP table or the peer allow-list.
    if !(a.peers.is_empty() && a.vrids.is_empty() && a.mgmt.is_empty() && a.sync_port == 0) {
        dp.set_link_settings(&LinkSettings {
            peers: a.peers.clone(),
            vrids: a.vrids.clone(),
            sync_port: a.sync_port,
            mgmt: a.mgmt.clone(),
        })?;
    }
    if !a.vips.is_empty() {
        dp.set_vips(&a.vips)?;
    }
    let ifaces = a
        .ha_iface
        .iter()
        .map(|i| (true, i))
        .chain(a.data_ifaces.iter().map(|i| (false, i)));
    for (is_link, iface) in ifaces {
        let (program, mode) = if is_link {
            ("ha_link", dp.attach_link(iface))
        } else {
            ("ha_data", dp.attach_data(iface))
        };
        match mode.with_context(|| format!("attach {program} to {iface}"))? {
            Some(mode) => println!("{program} attached to {iface} ({mode} mode)"),
            None => println!("{program} already attached to {iface}"),
        }
    }
    println!(
        "pinned at {}; `ha-agent maps --instance {}` shows it",
        dp.dir().display(),
        a.instance
    );
    Ok(())
}

async fn probe(iface: &str, duration: Duration) -> anyhow::Result<()> {
    let mut probe = Probe::load()?;
    let mode = probe
        .attach(iface)
        .with_context(|| format!("probe on {iface}"))?;
    println!(
        "probe attached to {iface} ({mode} mode), counting for {}s",
        duration.as_secs()
    );
    tokio::time::sleep(duration).await;
    println!("{}", probe.probe_counters()?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mgmt_and_vip_arguments_parse_or_say_why() {
        assert_eq!(parse_mgmt("tcp/22"), Ok((6, 22)));
        assert_eq!(parse_mgmt("udp/161"), Ok((17, 161)));
        assert!(parse_mgmt("sctp/1").unwrap_err().contains("not tcp or udp"));
        assert!(parse_mgmt("tcp/x").unwrap_err().contains("not a port"));
        assert_eq!(parse_vip("10.0.0.1"), Ok((Ipv4Addr::new(10, 0, 0, 1), 0)));
        assert_eq!(parse_vip("10.0.0.1@3"), Ok((Ipv4Addr::new(10, 0, 0, 1), 3)));
        assert!(
            parse_vip("10.0.0.300")
                .unwrap_err()
                .contains("not an IPv4 address")
        );
        assert!(
            parse_vip("10.0.0.1@64")
                .unwrap_err()
                .contains("out of range")
        );
    }
}
