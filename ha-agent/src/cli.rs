//! The operator command line: `ha-agent <command>`.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::{
    control::local::{self, LocalRequest},
    dataplane::{Dataplane, LinkSettings, LoadOptions, inspect::Snapshot, pin_dir, probe::Probe},
    paths,
    status::{self, Status},
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
    ///
    /// Without a configuration file, a node waits to be joined: it serves the
    /// join on `--join-listen` for a primary holding its join token
    /// (`ha-agent cluster join-token`), then starts with what it received.
    Run {
        /// Configuration file.
        #[arg(long, default_value = crate::config::DEFAULT_PATH)]
        config: std::path::PathBuf,
        /// Instance name this node runs under once joined.
        #[arg(long, default_value = "ha")]
        instance: String,
        /// Where to wait for the join (no configuration yet): give this
        /// node's HA address, e.g. `10.255.0.2:7789`; the default listens on
        /// every address (and says so in the log).
        #[arg(long, default_value = "0.0.0.0:7789")]
        join_listen: std::net::SocketAddr,
    },
    /// This node's role and state (cOS Core's `ha` is the model): cluster
    /// role, VRRP role, peer, state sync, config sync, last transition.
    ///
    /// With `--cluster`, both nodes side by side (the peer is asked over
    /// the cluster control channel): roles, priorities, heartbeat paths,
    /// flows, config hash, role-dependent services and interfaces.
    Status {
        #[arg(long, default_value = "ha")]
        instance: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Both nodes side by side (exits 1 if the peer does not answer).
        #[arg(long)]
        cluster: bool,
    },
    /// Follow what happens, one line (or JSON object) per event: role
    /// transitions, heartbeat paths, state sync and config sync, and the
    /// agent coming and going; until interrupted (or `--for`).
    ///
    /// Example: `ha-agent events --instance ha --json`
    Events {
        #[arg(long, default_value = "ha")]
        instance: String,
        /// Print JSON objects instead of text.
        #[arg(long)]
        json: bool,
        /// Stop after this many seconds (default: until interrupted).
        #[arg(long = "for")]
        for_s: Option<u64>,
    },
    /// Planned switchover: this node takes over (priority 254, preempting
    /// once state sync is complete) and stays master until `demote`.
    Promote {
        #[arg(long, default_value = "ha")]
        instance: String,
    },
    /// Planned switchover: this node hands over to the peer (priority 1)
    /// without a moment with no owner, and stays backup until `promote`.
    Demote {
        #[arg(long, default_value = "ha")]
        instance: String,
    },
    /// Persistent demotion for upgrades (survives restarts): `on` or `off`.
    Maintenance {
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[arg(long, default_value = "ha")]
        instance: String,
    },
    /// Ask the peer for a full connection-state resync.
    Resync {
        #[arg(long, default_value = "ha")]
        instance: String,
    },
    /// Re-read the configuration file (VIPs and data interfaces apply live;
    /// an invalid file changes nothing).
    Reload {
        #[arg(long, default_value = "ha")]
        instance: String,
    },
    /// Cluster setup and management: the verbs of NethSecurity's
    /// `ns-ha-config`, run on the primary.
    Cluster {
        /// This node's configuration file.
        #[arg(long, default_value = crate::config::DEFAULT_PATH)]
        config: std::path::PathBuf,
        #[command(subcommand)]
        verb: ClusterVerb,
    },
    /// Check a configuration without running it (as `keepalived -t`): the
    /// agent's own checks with the same messages, then the files it would
    /// read at start (cluster key, advert keys; notify scripts warned
    /// about). Interfaces missing on this machine are noted. Exits 1 if the
    /// agent would refuse the configuration.
    ///
    /// Example: `ha-agent check-config /etc/ha-agent/config.toml`
    CheckConfig {
        /// Configuration file.
        #[arg(default_value = crate::config::DEFAULT_PATH)]
        file: std::path::PathBuf,
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
    /// Print the advert key derived from the cluster key, as keepalived's
    /// `auth_hmac` block takes it (`key 1 hex:...`): for a mixed cluster
    /// migrating from keepalived >= 2.4.2 node by node. Keep it secret.
    ///
    /// Example: `ha-agent advert-key --config /etc/ha-agent/config.toml`
    AdvertKey {
        #[arg(long, default_value = crate::config::DEFAULT_PATH)]
        config: std::path::PathBuf,
    },
    /// Load, attach and pin the XDP data plane, or remove it.
    #[command(subcommand)]
    Dataplane(DataplaneCommand),
    /// Print a shell completion script: `ha-agent completions bash >
    /// /etc/bash_completion.d/ha-agent` (the package installs them).
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (ha-agent.1 and one per command) into a
    /// directory (the package installs them).
    #[command(hide = true)]
    Man { dir: PathBuf },
    /// Migrate from another HA system: writes our configuration from its
    /// own, listing what could not be mapped with the line it came from.
    #[command(subcommand)]
    Import(ImportFrom),
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
pub enum ImportFrom {
    /// A keepalived.conf (includes followed), and optionally the sync link
    /// of a conntrackd.conf, as our TOML: for a node-by-node migration (the
    /// keepalived node stays up while this one is replaced; adverts stay
    /// plain VRRPv3 until both run ha-agent). What is not imported, and
    /// what to do, is printed and written at the top of the file.
    ///
    /// Example: `ha-agent import keepalived /etc/keepalived/keepalived.conf
    /// --conntrackd /etc/conntrackd/conntrackd.conf -o /etc/ha-agent/config.toml`
    Keepalived {
        /// keepalived's configuration file.
        file: PathBuf,
        /// conntrackd's configuration file (its Sync section).
        #[arg(long)]
        conntrackd: Option<PathBuf>,
        /// Write here (mode 0600; refused if it exists, unless --force)
        /// instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Replace --output if it exists.
        #[arg(long)]
        force: bool,
        /// This node's HA address (else: unicast_src_ip, conntrackd's
        /// address, or this machine's address on the VRRP interface).
        #[arg(long)]
        ha_address: Option<std::net::Ipv4Addr>,
        /// The peer's HA address (else: unicast_peer, or conntrackd's
        /// destination).
        #[arg(long)]
        peer: Option<std::net::Ipv4Addr>,
        /// keepalived's config_id, for its `@id` lines (default: this
        /// host's name up to the first dot, as keepalived's).
        #[arg(long)]
        config_id: Option<String>,
        /// Our instance name (default `ha`).
        #[arg(long)]
        instance: Option<String>,
        /// The cluster key file to name when conntrackd's sync is imported
        /// (default /etc/ha-agent/sync.key).
        #[arg(long)]
        sync_key_file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterVerb {
    /// On the backup node, before the join: make a one-time join token
    /// (written to `join.token` next to the configuration).
    JoinToken {
        /// How long the token is accepted, e.g. `30m`, `2h`.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Check this node can be the primary: the LAN interface exists, is up
    /// and has a static address.
    CheckPrimaryNode { lan_if: String },
    /// Check the backup over the network: reachable, same version, same
    /// interface names, static address on the LAN. The join token is asked
    /// for at a prompt (no echo), or read from `--token-file`, or from
    /// stdin when it is not a terminal.
    CheckBackupNode {
        backup_ip: Ipv4Addr,
        lan_if: String,
        /// File holding the join token (the backup's `join.token` will do).
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
    },
    /// Make this node the primary: HA between the two addresses, the VIP on
    /// the LAN interface, state sync, the cluster key.
    InitPrimaryNode {
        primary_ip: Ipv4Addr,
        backup_ip: Ipv4Addr,
        vip_cidr: String,
        lan_if: String,
        /// Instance name (pins and status files).
        #[arg(long, default_value = "ha")]
        instance: String,
        /// VRRP advert interval.
        #[arg(long, default_value_t = 10)]
        advert_ms: u64,
    },
    /// Configure the backup from here (the join token as for
    /// `check-backup-node`); the cluster key goes to it encrypted, once.
    InitBackupNode {
        lan_if: String,
        /// File holding the join token (the backup's `join.token` will do).
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
        /// Root under which the backup writes synced files (labs whose nodes
        /// share a filesystem).
        #[arg(long)]
        files_root: Option<std::path::PathBuf>,
    },
    /// Add another LAN interface (found by the primary's address on it) with
    /// a VIP.
    AddLanInterface {
        primary_ip: Ipv4Addr,
        backup_ip: Ipv4Addr,
        vip_cidr: String,
    },
    /// Add a VIP that fails over with the others.
    AddVip { iface: String, vip_cidr: String },
    /// Remove a VIP.
    RemoveVip { iface: String, vip_cidr: String },
    /// Remove an interface (all its VIPs) from the cluster.
    RemoveInterface { iface: String },
    /// On the primary: push the configuration to the secondary now (with
    /// `config_sync = "manual"` changes wait for this), and wait for its
    /// acknowledgement.
    Sync,
    /// Print the cluster configuration of this node.
    ShowConfig,
    /// Same as `ha-agent status` for this node's instance.
    Status {
        #[arg(long)]
        json: bool,
        /// Both nodes side by side.
        #[arg(long)]
        cluster: bool,
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
        /// Every instance pinned under /sys/fs/bpf whose agent is not
        /// running (what the package's removal runs).
        #[arg(long, conflicts_with = "instance")]
        all: bool,
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
    /// This node's address on the HA link: sync, management, control and
    /// ICMP pass only when addressed to it. Default: the first IPv4 address
    /// of `--ha-iface`.
    #[arg(long)]
    address: Option<Ipv4Addr>,
    /// TCP port of the cluster control channel on the HA link (0: none).
    #[arg(long, default_value_t = 0)]
    control_port: u16,
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

fn parse_ttl(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 30m, 2h)"))
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
        Command::Run {
            config: path,
            instance,
            join_listen,
        } => {
            if !path.exists() {
                crate::control::join::wait_for_join(&path, &instance, join_listen).await?;
            }
            let config = crate::config::Config::load(&path)?;
            crate::daemon::run(config, path, shutdown).await
        }
        Command::Status {
            instance,
            json,
            cluster,
        } => show_status(&instance, json, cluster).await,
        Command::Events {
            instance,
            json,
            for_s,
        } => {
            let until = for_s.map(|s| std::time::Instant::now() + Duration::from_secs(s));
            tokio::select! {
                r = follow_events(&instance, json, until) => r,
                () = shutdown => Ok(()),
            }
        }
        Command::Promote { instance } => local(&instance, LocalRequest::Promote).await,
        Command::Demote { instance } => local(&instance, LocalRequest::Demote).await,
        Command::Maintenance { state, instance } => {
            local(&instance, LocalRequest::Maintenance(state == "on")).await
        }
        Command::Resync { instance } => local(&instance, LocalRequest::Resync).await,
        Command::Reload { instance } => local(&instance, LocalRequest::Reload).await,
        Command::Cluster { config, verb } => cluster(&config, verb).await,
        Command::Maps {
            instance,
            top,
            json,
        } => maps(&instance, top, json),
        Command::CheckConfig { file } => {
            let r = crate::check::check(&file);
            for e in &r.errors {
                eprintln!("error: {e}");
            }
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            for n in &r.notes {
                eprintln!("note: {n}");
            }
            if !r.ok() {
                bail!(
                    "{}: {} problem(s); the agent would not start with it",
                    file.display(),
                    r.errors.len()
                );
            }
            println!("{}: configuration OK", file.display());
            if let Some(s) = &r.summary {
                println!("{s}");
            }
            Ok(())
        }
        Command::AdvertKey { config } => {
            let c = crate::config::Config::load(&config)?;
            let Some(file) = c.ha.sync_key_file.as_ref().filter(|_| c.ha.sync_port != 0) else {
                bail!(
                    "{}: no cluster key (ha.sync_key_file with ha.sync_port): adverts use the keys listed in [[ha.auth.key]]",
                    config.display()
                );
            };
            let key = crate::sync::key::derive(
                &crate::sync::key::read_key(file)?,
                crate::sync::key::Purpose::Adverts,
            );
            println!("{}", crate::agent::adverts::keepalived_line(&key));
            Ok(())
        }
        Command::Dataplane(DataplaneCommand::Attach(args)) => attach(&args),
        Command::Dataplane(DataplaneCommand::Detach { all: true, .. }) => detach_all_idle().await,
        Command::Dataplane(DataplaneCommand::Detach { instance, .. }) => {
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
        Command::Import(from) => import(from),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            use std::io::Write as _;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ha-agent", &mut script);
            // A closed output (`| head`) ends the command quietly.
            match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
        Command::Man { dir } => {
            use clap::CommandFactory as _;
            std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
            man_pages(&Cli::command(), "ha-agent", &dir)
        }
    }
}

/// `cmd`'s man page as `<name>.1` in `dir`, and one for each visible
/// subcommand (`ha-agent-cluster-init-primary-node.1`), as git does.
fn man_pages(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    let cmd = cmd
        .clone()
        .name(name.to_owned())
        .display_name(name.to_owned());
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section("1")
        .manual("ha-agent manual")
        .source(format!("ha-agent {}", env!("CARGO_PKG_VERSION")))
        .render(&mut page)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| path.display().to_string())?;
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        man_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

/// `dataplane detach --all`: every instance pinned under bpffs (its
/// `ha_data` program pinned) whose agent does not answer on its socket.
async fn detach_all_idle() -> anyhow::Result<()> {
    let root = std::path::Path::new(crate::dataplane::BPFFS);
    let Ok(entries) = std::fs::read_dir(root) else {
        println!("nothing pinned ({} not mounted)", root.display());
        return Ok(());
    };
    let mut failed = 0;
    for e in entries.flatten() {
        let Some(instance) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !e
            .path()
            .join("progs")
            .join(ha_common::data::PROGRAM)
            .exists()
        {
            continue;
        }
        // Running: its status file names a live ha-agent process, or its
        // socket answers (or hangs: left alone too).
        let pid_alive = Status::read(&instance).is_ok_and(|st| {
            // `<pid> (<comm>) <state> ...`; a zombie (Z) or dead (X) one is gone.
            std::fs::read_to_string(format!("/proc/{}/stat", st.pid)).is_ok_and(|s| {
                s.split_once(" (")
                    .and_then(|(_, r)| r.rsplit_once(") "))
                    .is_some_and(|(comm, rest)| comm == "ha-agent" && !rest.starts_with(['Z', 'X']))
            })
        });
        let answers = !matches!(
            tokio::time::timeout(
                Duration::from_secs(2),
                local::request(&instance, LocalRequest::Status)
            )
            .await,
            Ok(Err(_))
        );
        if pid_alive || answers {
            println!("{instance}: its agent is running: left alone (stop it first)");
            continue;
        }
        // Its status and socket are stale too.
        for f in paths::run_files(&instance) {
            let _ = std::fs::remove_file(f);
        }
        match Dataplane::detach_all(&instance) {
            Ok(_) => println!("detached and removed {}", pin_dir(&instance).display()),
            Err(e) => {
                failed += 1;
                eprintln!("{instance}: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} instance(s) could not be removed");
    }
    Ok(())
}

/// `ha-agent import keepalived`.
fn import(from: ImportFrom) -> anyhow::Result<()> {
    let ImportFrom::Keepalived {
        file,
        conntrackd,
        output,
        force,
        ha_address,
        peer,
        instance,
        sync_key_file,
        config_id,
    } = from;
    let config_id = config_id.or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .and_then(|h| h.trim().split('.').next().map(str::to_owned))
    });
    let opts = crate::import::Options {
        instance,
        ha_address,
        peer,
        sync_key_file,
        config_id,
    };
    // This machine's address on an interface, when the file names none.
    let host = |iface: &str| {
        crate::control::host::interfaces()
            .ok()?
            .into_iter()
            .find(|i| i.name == iface)?
            .addrs
            .into_iter()
            .map(|a| a.addr)
            .next()
    };
    let got = crate::import::keepalived::import_files(&file, conntrackd.as_deref(), &opts, &host)?;
    let mut sources = vec![file];
    sources.extend(conntrackd);
    let text = got.file_text(&sources);
    match &output {
        Some(path) => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new();
            f.write(true).mode(0o600);
            if force {
                f.create(true).truncate(true);
            } else {
                f.create_new(true);
            }
            let mut f = f.open(path).with_context(|| {
                format!(
                    "{}{}",
                    path.display(),
                    if force {
                        ""
                    } else {
                        " (exists? --force replaces it)"
                    }
                )
            })?;
            f.write_all(text.as_bytes())
                .with_context(|| path.display().to_string())?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    for t in &got.todo {
        eprintln!("to do: {t}");
    }
    for s in &got.skipped {
        eprintln!("not imported: {s}");
    }
    if let Some(path) = &output {
        eprintln!("check it with: ha-agent check-config {}", path.display());
    }
    Ok(())
}

async fn local(instance: &str, req: LocalRequest) -> anyhow::Result<()> {
    let r = local::request(instance, req).await?;
    if r.ok {
        println!("{}", r.message);
        Ok(())
    } else {
        bail!("{}", r.message)
    }
}

async fn cluster(path: &std::path::Path, verb: ClusterVerb) -> anyhow::Result<()> {
    use crate::cluster as c;
    match verb {
        ClusterVerb::JoinToken { ttl } => c::join_token(path, ttl),
        ClusterVerb::CheckPrimaryNode { lan_if } => c::check_primary_node(&lan_if),
        ClusterVerb::CheckBackupNode {
            backup_ip,
            lan_if,
            token_file,
        } => c::check_backup_node(backup_ip, &lan_if, token_file.as_deref())
            .await
            .map(drop),
        ClusterVerb::InitPrimaryNode {
            primary_ip,
            backup_ip,
            vip_cidr,
            lan_if,
            instance,
            advert_ms,
        } => {
            c::init_primary_node(
                path, &instance, primary_ip, backup_ip, &vip_cidr, &lan_if, advert_ms,
            )
            .await
        }
        ClusterVerb::InitBackupNode {
            lan_if,
            files_root,
            token_file,
        } => c::init_backup_node(path, &lan_if, files_root, token_file.as_deref()).await,
        ClusterVerb::AddLanInterface {
            primary_ip,
            backup_ip,
            vip_cidr,
        } => c::add_lan_interface(path, primary_ip, backup_ip, &vip_cidr).await,
        ClusterVerb::AddVip { iface, vip_cidr } => c::add_vip(path, &iface, &vip_cidr).await,
        ClusterVerb::RemoveVip { iface, vip_cidr } => c::remove_vip(path, &iface, &vip_cidr).await,
        ClusterVerb::RemoveInterface { iface } => c::remove_interface(path, &iface).await,
        ClusterVerb::ShowConfig => c::show_config(path),
        ClusterVerb::Sync => {
            let config = crate::config::Config::load(path)?;
            local(&config.instance, LocalRequest::PushConfig).await
        }
        ClusterVerb::Status { json, cluster } => {
            let config = crate::config::Config::load(path)?;
            show_status(&config.instance, json, cluster).await
        }
    }
}

/// The status, taken now by the running agent; the status file when the
/// agent does not answer (it stopped: the file is its last word).
async fn read_status(instance: &str) -> anyhow::Result<(Status, bool)> {
    if let Ok(r) = local::request(instance, LocalRequest::Status).await
        && let Some(st) = r.status
    {
        return Ok((*st, true));
    }
    let st = Status::read(instance).with_context(|| {
        format!(
            "no status for instance {instance} at {} (is `ha-agent run` running?)",
            paths::status_file(instance).display()
        )
    })?;
    Ok((st, false))
}

/// `ha-agent events`: the agent's status asked 20 times a second, what
/// changed printed (see `status::events`).
async fn follow_events(
    instance: &str,
    json: bool,
    until: Option<std::time::Instant>,
) -> anyhow::Result<()> {
    use crate::status::events::{Event, diff};
    // A closed output (`| head`) ends the command quietly.
    let print = |e: &Event| -> std::io::Result<()> {
        use std::io::Write as _;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let line = if json {
            let mut v = serde_json::to_value(e).unwrap_or_default();
            v["instance"] = instance.into();
            v["seen_unix_ms"] = serde_json::json!(now);
            v.to_string()
        } else {
            format!("{} {instance} {}", humanish(now), e.line())
        };
        writeln!(std::io::stdout().lock(), "{line}")
    };
    let mut prev: Option<crate::status::Status> = None;
    let mut gone = false;
    while until.is_none_or(|t| std::time::Instant::now() < t) {
        let asked = tokio::time::timeout(
            Duration::from_secs(2),
            local::request(instance, LocalRequest::Status),
        )
        .await;
        let answer = match asked {
            Ok(Ok(r)) if r.ok => r.status.ok_or_else(|| "no status in the answer".to_owned()),
            Ok(Ok(r)) => Err(r.message),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err("no answer within 2 s".to_owned()),
        };
        match answer {
            Ok(cur) => {
                let cur = *cur;
                for e in diff(prev.as_ref(), &cur) {
                    if print(&e).is_err() {
                        return Ok(());
                    }
                }
                prev = Some(cur);
                gone = false;
            }
            Err(why) => {
                if !gone && print(&Event::AgentGone { why }).is_err() {
                    return Ok(());
                }
                gone = true;
                prev = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Unix ms as `HH:MM:SS.mmm` UTC, for event lines.
fn humanish(unix_ms: u128) -> String {
    let s = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        unix_ms % 1000
    )
}

async fn show_status(instance: &str, json: bool, cluster: bool) -> anyhow::Result<()> {
    if cluster {
        return show_cluster(instance, json).await;
    }
    let (st, live) = read_status(instance).await?;
    let own = crate::dataplane::Dataplane::open(instance)
        .and_then(|d| d.ownership())
        .ok();
    if json {
        let mut v = serde_json::to_value(&st)?;
        v["dataplane_ownership"] = serde_json::json!(own.map(|o| o.groups));
        v["live"] = serde_json::json!(live);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if !live {
        println!(
            "(the agent does not answer: its last status, pid {}, written {} s ago)",
            st.pid,
            status::unix_ms(std::time::SystemTime::now()).saturating_sub(st.written_unix_ms) / 1000
        );
    }
    print!("{}", status::text::render(&st, own.map(|o| o.groups)));
    Ok(())
}

/// `status --cluster`: the running agent asks its peer; both printed.
async fn show_cluster(instance: &str, json: bool) -> anyhow::Result<()> {
    let r = local::request(instance, LocalRequest::ClusterStatus).await?;
    let Some(view) = r.cluster else {
        anyhow::bail!("{}", r.message);
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!(
            "{}",
            status::cluster::render(&view, status::unix_ms(std::time::SystemTime::now()))
        );
    }
    match &view.peer_error {
        Some(e) => anyhow::bail!("the peer did not answer: {e}"),
        None => Ok(()),
    }
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
            ..LoadOptions::default()
        },
    )?;
    // Tables are replaced only when given: attaching one more interface later
    // must not empty the VIP table or the peer allow-list.
    if !(a.peers.is_empty()
        && a.vrids.is_empty()
        && a.mgmt.is_empty()
        && a.sync_port == 0
        && a.address.is_none()
        && a.control_port == 0)
    {
        let address = match (a.address, &a.ha_iface) {
            (Some(addr), _) => addr,
            (None, Some(iface)) => crate::control::host::info(false)?
                .iface(iface)
                .and_then(|i| i.addrs.first())
                .map(|a| a.addr)
                .with_context(|| {
                    format!("{iface} has no IPv4 address: give the HA address with --address")
                })?,
            (None, None) => Ipv4Addr::UNSPECIFIED,
        };
        dp.set_link_settings(&LinkSettings {
            address,
            peers: a.peers.clone(),
            vrids: a.vrids.clone(),
            sync_port: a.sync_port,
            mgmt: a.mgmt.clone(),
            control_port: a.control_port,
            join_port: 0,
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
            ("ha_data", dp.attach_data_by_hand(iface))
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
    fn the_join_token_flags_parse() {
        let cli =
            Cli::try_parse_from(["ha-agent", "cluster", "join-token", "--ttl", "30m"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster { verb: ClusterVerb::JoinToken { ttl }, .. } if ttl == Duration::from_secs(1800)
        ));
        let cli = Cli::try_parse_from(["ha-agent", "cluster", "join-token"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster { verb: ClusterVerb::JoinToken { ttl }, .. } if ttl == Duration::from_secs(3600)
        ));
        assert!(parse_ttl("soon").unwrap_err().contains("e.g. 30m"));
        let cli = Cli::try_parse_from([
            "ha-agent",
            "cluster",
            "init-backup-node",
            "lan0",
            "--token-file",
            "/tmp/t",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Cluster { verb: ClusterVerb::InitBackupNode { token_file: Some(ref f), .. }, .. }
                if f == std::path::Path::new("/tmp/t")
        ));
    }

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
