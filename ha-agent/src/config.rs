//! The agent's configuration: one TOML file (default
//! `/etc/ha-agent/config.toml`). Validation names the file, the field and
//! what is wrong; a config that fails validation is never used.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use ha_core::{
    node,
    vrrp::{auth, group::Track, machine},
};

/// What the lease keeps below three advert intervals: one kernel tick (the
/// XDP programs read the clock at tick resolution), i.e. the resolution of
/// CLOCK_MONOTONIC_COARSE (4 ms at CONFIG_HZ=250, 10 ms at 100), in whole ms.
pub fn lease_margin_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC_COARSE exists on Linux.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } != 0 {
        return 10;
    }
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    ns.div_ceil(1_000_000).clamp(1, 10)
}

/// Default location of the configuration file.
pub const DEFAULT_PATH: &str = "/etc/ha-agent/config.toml";

/// A configuration error: which file, which field, what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("{file}: {field}: {problem}")]
    Invalid {
        file: PathBuf,
        field: String,
        problem: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of this node's data plane: pins under /sys/fs/bpf/<instance>.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// The dedicated HA link: VRRP and sync traffic.
    pub ha: HaLink,
    /// Groups of VRRP instances that change role together.
    #[serde(rename = "group")]
    pub groups: Vec<GroupConfig>,
    /// Data interfaces to gate besides those that carry VIPs.
    #[serde(default)]
    pub data_interfaces: Vec<String>,
    /// Prometheus metrics (`GET /metrics`) on this address, e.g.
    /// `127.0.0.1:9477`; off when absent.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Cluster management (`ha-agent cluster ...`): roles and config sync.
    pub cluster: Option<ClusterConfig>,
}

/// A node's place in a two-node cluster, as `ha-agent cluster` sets it up.
/// The primary's groups, data interfaces and listed files are pushed to the
/// secondary, where they are read-only.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub role: ClusterRole,
    /// The primary's HA address (where changes must be made).
    pub primary: Ipv4Addr,
    /// This node's VRRP priority for every instance (the synced groups carry
    /// the primary's).
    pub priority: Option<u8>,
    /// Files replicated from the primary (e.g. `/etc/nftables.conf`).
    #[serde(default)]
    pub sync_files: Vec<PathBuf>,
    /// Run (by `sh -c`) on the secondary after synced files changed.
    pub reload_hook: Option<String>,
    /// TCP port of the cluster control channel on the HA link.
    #[serde(default = "default_control_port")]
    pub control_port: u16,
    /// On a primary: `auto` pushes every change to the secondary at once;
    /// `manual` (OPNsense's choice, "to prevent issues spreading over both
    /// machines") holds changes until `ha-agent cluster sync`, and the
    /// status says Pending with what differs.
    #[serde(default)]
    pub config_sync: ConfigSyncMode,
    /// On a secondary: where synced files are written (their path below this
    /// root; default `/`). For labs and containers whose nodes share a
    /// filesystem.
    pub files_root: Option<PathBuf>,
}

/// When a primary pushes its configuration.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConfigSyncMode {
    #[default]
    Auto,
    Manual,
}

/// Primary or secondary.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRole {
    Primary,
    Secondary,
}

impl ClusterRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterRole::Primary => "PRIMARY",
            ClusterRole::Secondary => "SECONDARY",
        }
    }
}

fn default_control_port() -> u16 {
    7789
}

/// The part of the configuration the primary replicates to the secondary.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct SharedConfig {
    #[serde(rename = "group")]
    pub groups: Vec<GroupConfig>,
    #[serde(default)]
    pub data_interfaces: Vec<String>,
}

fn default_flow_aging_s() -> u64 {
    60
}

fn default_rt_priority() -> u8 {
    50
}

fn default_instance() -> String {
    "ha".into()
}

/// The HA link.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HaLink {
    /// Interface name, e.g. `ha0`.
    pub interface: String,
    /// Our address on it: the source of our adverts, the tie-breaker.
    pub address: Ipv4Addr,
    /// The peers' addresses on it: the only sources of VRRP and sync accepted.
    pub peers: Vec<Ipv4Addr>,
    /// Send adverts to each peer (unicast) instead of 224.0.0.18.
    #[serde(default)]
    pub unicast: bool,
    /// Management services reachable over the HA link (`tcp/22`).
    #[serde(default)]
    pub mgmt: Vec<String>,
    /// UDP port of state sync on the HA link (0 = no state sync).
    #[serde(default)]
    pub sync_port: u16,
    /// Pre-shared key of state sync: a file of 32 bytes or 64 hex digits.
    /// Required with `sync_port`.
    pub sync_key_file: Option<PathBuf>,
    /// The XDP flow table's size (flows tracked and replicated at most);
    /// default: the namespace's `nf_conntrack_max`. Takes effect when the
    /// data plane is loaded.
    #[serde(default)]
    pub max_flows: Option<u32>,
    /// Seconds between passes that age dead flows out of the XDP flow
    /// table (kernel conntrack no longer has them, and XDP saw no packet of
    /// them for 10 s); a bulk resync does it too. Each pass reads both
    /// tables (a few CPU seconds at 1,000,000 flows). 5..=3600, default 60.
    #[serde(default = "default_flow_aging_s")]
    pub flow_aging_s: u64,
    /// SCHED_FIFO priority of the agent's threads (0 = normal scheduling), so
    /// a saturated CPU cannot delay adverts and lease renewals into a false
    /// failover; keepalived's vrrp_rt_priority does the same.
    #[serde(default = "default_rt_priority")]
    pub realtime_priority: u8,
    /// Ownership lease in ms, renewed with every advert. Default and maximum:
    /// three shortest advert intervals minus [`lease_margin_ms`], so a dead
    /// agent's VIPs lapse before the peer's Master_Down_Interval (at least
    /// three intervals after our last advert) ends, even with the XDP clock's
    /// tick of lateness (see docs/architecture.md).
    pub lease_ms: Option<u64>,
    /// Heartbeat paths besides the HA link: data interfaces the adverts
    /// also travel over (signed, to one peer). Default: every interface
    /// carrying a VIP, when adverts are signed and there is one peer;
    /// `[]`: the HA link alone.
    pub heartbeat: Option<Vec<String>>,
    /// Advert authentication (keepalived's `auth_hmac`).
    pub auth: Option<AuthConfig>,
    /// The fast heartbeat: probes answered by the peer's XDP.
    pub fast_heartbeat: Option<FastHeartbeatConfig>,
    /// How the kernel polls the data interfaces.
    #[serde(default)]
    pub napi: NapiConfig,
}

/// `[ha.napi]`: poll the data interfaces (not the HA link) in kernel threads
/// of high normal priority (threaded NAPI), so forwarding work never runs
/// inside the VRRP loop's syscalls (`crate::napi`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NapiConfig {
    /// Turn threaded NAPI on (default); `false` leaves the interfaces as
    /// found.
    #[serde(default = "default_true")]
    pub threaded: bool,
    /// The nice value of the polling threads (-20 to 19; default -20).
    #[serde(default = "default_napi_nice")]
    pub nice: i32,
}

impl Default for NapiConfig {
    fn default() -> Self {
        NapiConfig {
            threaded: true,
            nice: default_napi_nice(),
        }
    }
}

fn default_napi_nice() -> i32 {
    -20
}

/// `[ha.fast_heartbeat]`: probes the peer's XDP programs answer, so a dead
/// box is seen in a few probe intervals and a dead daemon as soon as its
/// lease lapses (docs/architecture.md). VRRP stays the election and the
/// backstop.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FastHeartbeatConfig {
    /// Default: on between ha-agent nodes (a cluster key, one peer, signed
    /// adverts); off otherwise (a keepalived peer answers no probe).
    pub enabled: Option<bool>,
    /// Between rounds of probes while backup (µs, 100-100000).
    #[serde(default = "default_probe_interval_us")]
    pub interval_us: u64,
    /// Fewest rounds unanswered on every path that make the peer silent
    /// (2 or more); the agent raises it with the gaps it measures.
    #[serde(default = "default_misses_min")]
    pub misses_min: u32,
    /// Most (default: what VRRP's own Master_Down_Interval takes, in rounds).
    pub misses_max: Option<u32>,
}

fn default_probe_interval_us() -> u64 {
    1000
}

fn default_misses_min() -> u32 {
    3
}

/// The fast heartbeat as configured and in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastHeartbeat {
    pub interval: Duration,
    pub misses_min: u32,
    pub misses_max: u32,
}

/// `[ha.auth]`: how adverts are authenticated (docs/security.md).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `enforce` (default with a cluster key or listed keys), `permissive`,
    /// `receive-only` or `none` (plain VRRPv3, for keepalived 2.2 and
    /// other routers).
    pub mode: Option<auth::Mode>,
    /// `monotonic` (default: a growing sequence per sender, remembered
    /// across restarts; no clock agreement needed) or `time` (keepalived's
    /// default: also the sender's clock within `time_window_s`).
    #[serde(default)]
    pub anti_replay: AntiReplayConfig,
    /// The `time` window in seconds (1-300; default: three advert
    /// intervals, at least 5).
    pub time_window_s: Option<u32>,
    /// The key id adverts are signed with.
    #[serde(default = "default_active_key")]
    pub active_key: u8,
    /// Keys by id (keepalived's `key N file:`): a file holding
    /// `hex:<64-128 hex digits>` or 32-64 raw bytes. None listed: key 1 is
    /// derived from the cluster key (`sync_key_file`).
    #[serde(default, rename = "key")]
    pub keys: Vec<AuthKeyConfig>,
}

fn default_active_key() -> u8 {
    1
}

/// `anti_replay` in `[ha.auth]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AntiReplayConfig {
    #[default]
    Monotonic,
    Time,
}

/// One `[[ha.auth.key]]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthKeyConfig {
    pub id: u8,
    pub file: PathBuf,
}

/// A group: one ownership bit, one set of hooks.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    /// keepalived-compatible notify script:
    /// `<script> GROUP|INSTANCE <name> MASTER|BACKUP|FAULT <priority>`.
    pub notify: Option<PathBuf>,
    /// Commands of role-dependent services: started on MASTER, stopped on
    /// BACKUP and FAULT.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Longest a hook may run before it is killed (ms).
    #[serde(default = "default_hook_timeout_ms")]
    pub hook_timeout_ms: u64,
    /// Gratuitous ARPs per VIP on becoming master, and their spacing.
    #[serde(default = "default_garp_count")]
    pub garp_count: u32,
    #[serde(default = "default_garp_interval_ms")]
    pub garp_interval_ms: u64,
    /// While master, announce the VIPs again every this many ms (0: only
    /// at takeover; keepalived's `vrrp_garp_master_refresh`). With `vmac`,
    /// it keeps the switches' entry for the virtual MAC from ageing out.
    #[serde(default)]
    pub garp_refresh_ms: u64,
    /// Interfaces whose link state lowers priority (weight) or faults the group (weight 0).
    #[serde(default)]
    pub track: Vec<TrackConfig>,
    /// Interfaces that follow the group's role (NethSecurity's WANs on the
    /// secondary): up on MASTER, down on BACKUP, FAULT and when the agent
    /// stops, after the ownership write and never delaying it (hooks).
    /// For links that cannot share a VIP (DHCP, PPPoE); not the HA link, a
    /// VIP's or a heartbeat path's interface, nor a tracked one.
    #[serde(default)]
    pub role_interfaces: Vec<String>,
    #[serde(rename = "vrrp")]
    pub instances: Vec<InstanceConfig>,
}

fn default_hook_timeout_ms() -> u64 {
    10_000
}
fn default_garp_count() -> u32 {
    3
}
fn default_garp_interval_ms() -> u64 {
    10
}

/// A role-dependent service.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// Command run on MASTER (default `systemctl start <name>`).
    pub start: Option<Vec<String>>,
    /// Command run on BACKUP/FAULT (default `systemctl stop <name>`).
    pub stop: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrackConfig {
    pub iface: String,
    #[serde(default)]
    pub weight: u8,
}

/// One VRRP instance (virtual router) on the HA link.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    pub name: String,
    pub vrid: u8,
    pub priority: u8,
    /// Advert interval in ms: a multiple of 10, from 10 to 40950.
    #[serde(default = "default_advert_ms")]
    pub advert_interval_ms: u64,
    #[serde(default = "default_true")]
    pub preempt: bool,
    #[serde(default)]
    pub preempt_delay_ms: u64,
    /// Accept packets addressed to the VIPs when master (RFC 9568 Accept_Mode).
    #[serde(default = "default_true")]
    pub accept: bool,
    /// Answer for the VIPs with the VRRP virtual MAC (`00:00:5e:00:01:<vrid>`,
    /// RFC 9568 section 7.3) instead of each node's own: clients keep the same
    /// MAC through a failover (a static neighbour entry works), frames to it
    /// are taken by the owner only.
    #[serde(default)]
    pub vmac: bool,
    pub vips: Vec<VipConfig>,
}

fn default_advert_ms() -> u64 {
    1000
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// Data interface that carries the VIP.
    pub iface: String,
    /// `10.0.0.1/24`.
    pub address: String,
}

/// A VIP after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub iface: String,
    pub addr: IpAddr,
    pub prefix: u8,
}

impl HaLink {
    /// The peers' addresses, comma-separated (for people).
    pub fn peers_text(&self) -> String {
        self.peers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates TOML text (`file` names it in errors).
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.into(),
            message: e.to_string(),
        })?;
        config.validate(file)?;
        Ok(config)
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |field: String, problem: String| ConfigError::Invalid {
            file: file.into(),
            field,
            problem,
        };
        if self.instance.is_empty() || self.instance.contains('/') {
            return Err(bad(
                "instance".into(),
                format!("{:?} is not a valid name", self.instance),
            ));
        }
        if self.ha.peers.is_empty() {
            return Err(bad(
                "ha.peers".into(),
                "at least one peer address is needed".into(),
            ));
        }
        for m in &self.ha.mgmt {
            parse_mgmt(m).map_err(|p| bad(format!("ha.mgmt {m:?}"), p))?;
        }
        use crate::dataplane::{MAX_FLOWS_MAX, MAX_FLOWS_MIN};
        if let Some(n) = self.ha.max_flows
            && !(MAX_FLOWS_MIN..=MAX_FLOWS_MAX).contains(&n)
        {
            return Err(bad(
                "ha.max_flows".into(),
                format!("{n} is outside {MAX_FLOWS_MIN}..={MAX_FLOWS_MAX} flows"),
            ));
        }
        let mut role_owner: std::collections::HashMap<&str, &str> = Default::default();
        let vip_ifaces = self.vip_interfaces();
        let paths = self.heartbeat_paths();
        for g in &self.groups {
            for iface in &g.role_interfaces {
                let field = format!("group {} role_interfaces {iface:?}", g.name);
                let clash = if iface.is_empty()
                    || iface.len() >= 16
                    || iface.contains(['/', ':'])
                    || iface.chars().any(char::is_whitespace)
                {
                    // ':' is an alias label: setting one down deletes its
                    // address.
                    Some("not an interface name")
                } else if *iface == self.ha.interface {
                    Some("the HA link cannot follow the role")
                } else if vip_ifaces.contains(iface) {
                    Some("it carries a VIP: it must stay up on both nodes")
                } else if paths.contains(iface) {
                    Some("it is a heartbeat path: it must stay up on both nodes")
                } else if self
                    .groups
                    .iter()
                    .any(|o| o.track.iter().any(|t| t.iface == *iface))
                {
                    Some("it is tracked: down on the backup, it would fault the group")
                } else if role_owner.insert(iface, &g.name).is_some() {
                    Some("listed twice (or by two groups)")
                } else {
                    None
                };
                if let Some(why) = clash {
                    return Err(bad(field, why.into()));
                }
            }
        }
        if !(5..=3600).contains(&self.ha.flow_aging_s) {
            return Err(bad(
                "ha.flow_aging_s".into(),
                format!("{} s is outside 5..=3600 s", self.ha.flow_aging_s),
            ));
        }
        if (self.ha.sync_port != 0) != self.ha.sync_key_file.is_some() {
            return Err(bad(
                "ha.sync_port / ha.sync_key_file".into(),
                "state sync needs both a port and a key file (or neither)".into(),
            ));
        }
        if self.groups.is_empty() {
            return Err(bad("group".into(), "at least one group is needed".into()));
        }
        let mode = self.auth_mode();
        if mode != auth::Mode::None && !self.has_advert_keys() {
            return Err(bad(
                "ha.auth".into(),
                format!(
                    "mode {} needs a key: list [[ha.auth.key]] or set the cluster key (ha.sync_key_file)",
                    mode.as_str()
                ),
            ));
        }
        if let Some(a) = &self.ha.auth {
            if let Some(w) = a.time_window_s
                && !(auth::WINDOW_MIN_S..=auth::WINDOW_MAX_S).contains(&w)
            {
                return Err(bad(
                    "ha.auth.time_window_s".into(),
                    format!("{w}: must be 1-300"),
                ));
            }
            for (i, k) in a.keys.iter().enumerate() {
                if a.keys[..i].iter().any(|o| o.id == k.id) {
                    return Err(bad(
                        format!("ha.auth.key {}", k.id),
                        "key id defined twice".into(),
                    ));
                }
            }
            if !a.keys.is_empty() && !a.keys.iter().any(|k| k.id == a.active_key) {
                return Err(bad(
                    "ha.auth.active_key".into(),
                    format!("key {} is not defined", a.active_key),
                ));
            }
            if a.keys.is_empty() && a.active_key != 1 {
                return Err(bad(
                    "ha.auth.active_key".into(),
                    "the key derived from the cluster key is key 1".into(),
                ));
            }
        }
        if let Some(paths) = &self.ha.heartbeat {
            if !paths.is_empty() && (!mode.signs() || self.ha.peers.len() != 1) {
                return Err(bad(
                    "ha.heartbeat".into(),
                    "heartbeats over data interfaces need signed adverts (auth mode permissive or enforce) and exactly one peer".into(),
                ));
            }
            if paths.contains(&self.ha.interface) {
                return Err(bad(
                    "ha.heartbeat".into(),
                    format!("{} is the HA link (always a path)", self.ha.interface),
                ));
            }
        }
        if !(-20..=19).contains(&self.ha.napi.nice) {
            return Err(bad(
                "ha.napi.nice".into(),
                format!("{} is not a nice value (-20 to 19)", self.ha.napi.nice),
            ));
        }
        if let Some(f) = &self.ha.fast_heartbeat {
            let field = |k: &str| format!("ha.fast_heartbeat.{k}");
            if f.enabled == Some(true) {
                if !self.cluster_key() {
                    return Err(bad(
                        field("enabled"),
                        "the fast heartbeat needs the cluster key (ha.sync_key_file): its probes and proofs are keyed by it".into(),
                    ));
                }
                if self.ha.peers.len() != 1 {
                    return Err(bad(
                        field("enabled"),
                        format!(
                            "the fast heartbeat needs exactly one peer (there are {})",
                            self.ha.peers.len()
                        ),
                    ));
                }
            }
            if !(100..=100_000).contains(&f.interval_us) {
                return Err(bad(
                    field("interval_us"),
                    format!("{}: must be 100-100000", f.interval_us),
                ));
            }
            if !(2..=1000).contains(&f.misses_min)
                || f.misses_max.is_some_and(|m| m < f.misses_min || m > 1000)
            {
                return Err(bad(
                    field("misses_min / misses_max"),
                    "need 2 <= misses_min <= misses_max <= 1000".into(),
                ));
            }
        }
        if let Some(c) = &self.cluster {
            if c.priority.is_some_and(|p| p == 0 || p == 255) {
                return Err(bad("cluster.priority".into(), "must be 1-254".into()));
            }
            if c.control_port == 0 || c.control_port == self.ha.sync_port {
                return Err(bad(
                    "cluster.control_port".into(),
                    format!("{} is not usable (0, or the sync port)", c.control_port),
                ));
            }
            for f in &c.sync_files {
                if !f.is_absolute() {
                    return Err(bad(
                        format!("cluster.sync_files {}", f.display()),
                        "must be an absolute path".into(),
                    ));
                }
            }
        }
        if self.groups.len() > ha_common::data::MAX_GROUPS as usize {
            return Err(bad(
                "group".into(),
                format!("at most {} groups", ha_common::data::MAX_GROUPS),
            ));
        }
        if let Some(lease) = self.ha.lease_ms {
            let shortest = self.shortest_advert_ms();
            let max = self.max_lease_ms();
            if lease > max || lease <= shortest {
                return Err(bad(
                    "ha.lease_ms".into(),
                    format!(
                        "{lease} ms: must be longer than the advert interval ({shortest} ms) and at most \
                         {max} ms (three intervals minus one kernel tick, {} ms), or a dead agent could \
                         hold the VIPs after the peer takes over",
                        lease_margin_ms()
                    ),
                ));
            }
        }
        let mut vrids = std::collections::BTreeSet::new();
        let mut addrs = std::collections::BTreeSet::new();
        for g in &self.groups {
            if g.instances.is_empty() {
                return Err(bad(
                    format!("group {}", g.name),
                    "has no vrrp instance".into(),
                ));
            }
            if g.garp_refresh_ms != 0 && !(1_000..=86_400_000).contains(&g.garp_refresh_ms) {
                return Err(bad(
                    format!("group {} garp_refresh_ms", g.name),
                    format!(
                        "{}: 0 (off) or 1000 to 86400000 (a second to a day)",
                        g.garp_refresh_ms
                    ),
                ));
            }
            for i in &g.instances {
                let field = |f: &str| format!("group {} vrrp {} {f}", g.name, i.name);
                if i.vrid == 0 {
                    return Err(bad(field("vrid"), "must be 1-255".into()));
                }
                if !vrids.insert(i.vrid) {
                    return Err(bad(field("vrid"), format!("VRID {} is used twice", i.vrid)));
                }
                if i.priority == 0 {
                    return Err(bad(
                        field("priority"),
                        "must be 1-255 (0 is reserved for leaving)".into(),
                    ));
                }
                if i.advert_interval_ms % 10 != 0 || !(10..=40950).contains(&i.advert_interval_ms) {
                    return Err(bad(
                        field("advert_interval_ms"),
                        format!(
                            "{} is not a multiple of 10 ms between 10 and 40950",
                            i.advert_interval_ms
                        ),
                    ));
                }
                for v in &i.vips {
                    parse_vip(v)
                        .map_err(|p| bad(format!("vip {} on {}", v.address, v.iface), p))?;
                }
                let vips = i.parsed_vips();
                for v in &vips {
                    // The gate knows a VIP by its address alone.
                    if !addrs.insert(v.addr) {
                        return Err(bad(
                            format!("vip {} on {}", v.addr, v.iface),
                            "listed twice: a VIP address may appear once (a link-local one too: give each interface its own, fe80::1 on lan0, fe80::2 on wan0)".into(),
                        ));
                    }
                }
                let v6 = vips.iter().filter(|v| v.addr.is_ipv6()).count();
                if v6 != 0 && v6 != vips.len() {
                    return Err(bad(
                        field("vips"),
                        "mixes IPv4 and IPv6 addresses: an instance advertises one family (RFC 9568); put the IPv6 VIPs in an instance of their own, in the same group to move together".into(),
                    ));
                }
                if v6 != 0
                    && !vips
                        .iter()
                        .any(|v| matches!(v.addr, IpAddr::V6(a) if a.is_unicast_link_local()))
                {
                    return Err(bad(
                        field("vips"),
                        "an IPv6 instance needs a link-local VIP (RFC 9568 section 5.2.9: the first address of its adverts; hosts' router advertisements name the gateway by it): add e.g. { iface = \"lan0\", address = \"fe80::1/64\" }".into(),
                    ));
                }
                // An advert lists them all: 64 keep a signed one within a
                // 1,500-byte HA link, unfragmented (ha_link drops fragments).
                if v6 > MAX_IPV6_VIPS {
                    return Err(bad(
                        field("vips"),
                        format!(
                            "{v6} IPv6 VIPs: at most {MAX_IPV6_VIPS} in an instance (its adverts list them all and must fit the HA link unfragmented): spread them over instances of the group"
                        ),
                    ));
                }
                if v6 != 0 && self.ha.peers.len() != 1 {
                    return Err(bad(
                        field("vips"),
                        format!(
                            "an IPv6 instance needs exactly one peer in ha.peers (there are {}): its adverts come from the peer's link-local address, known as that one peer",
                            self.ha.peers.len()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The interfaces whose NAPI polling `[ha.napi]` threads: every data
    /// interface but the HA link. The HA link carries only the cluster's
    /// own traffic (adverts, probes, state sync), whose softirq work is
    /// small and bounded, and the peer's probes are answered there in the
    /// sender's own softirq, without waiting for a thread to be scheduled.
    pub fn napi_interfaces(&self) -> Vec<String> {
        self.data_interfaces()
            .into_iter()
            .filter(|i| *i != self.ha.interface)
            .collect()
    }

    /// Every data interface: those carrying VIPs and the listed ones.
    pub fn data_interfaces(&self) -> Vec<String> {
        let mut out: Vec<String> = self.data_interfaces.clone();
        for iface in self.vip_interfaces() {
            if !out.contains(&iface) {
                out.push(iface);
            }
        }
        out
    }

    /// Whether an instance is IPv6 (its adverts go over IPv6 on the HA
    /// link).
    pub fn has_ipv6_instances(&self) -> bool {
        self.groups
            .iter()
            .flat_map(|g| &g.instances)
            .any(|i| i.parsed_vips().first().is_some_and(|v| v.addr.is_ipv6()))
    }

    /// The interfaces carrying VIPs, each once, in order of appearance.
    pub fn vip_interfaces(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for v in self
            .groups
            .iter()
            .flat_map(|g| &g.instances)
            .flat_map(|i| &i.vips)
        {
            if !out.contains(&v.iface) {
                out.push(v.iface.clone());
            }
        }
        out
    }

    /// The advert authentication mode in force: as configured, else
    /// `enforce` when there is a key (listed, or the cluster key).
    pub fn auth_mode(&self) -> auth::Mode {
        match self.ha.auth.as_ref().and_then(|a| a.mode) {
            Some(m) => m,
            None if self.has_advert_keys() => auth::Mode::Enforce,
            None => auth::Mode::None,
        }
    }

    /// The cluster key is configured (state sync's key file).
    fn cluster_key(&self) -> bool {
        self.ha.sync_key_file.is_some() && self.ha.sync_port != 0
    }

    /// The fast heartbeat, if on: as configured, else on between ha-agent
    /// nodes (the cluster key, one peer, signed adverts).
    pub fn fast_heartbeat(&self) -> Option<FastHeartbeat> {
        let f = self
            .ha
            .fast_heartbeat
            .clone()
            .unwrap_or(FastHeartbeatConfig {
                enabled: None,
                interval_us: default_probe_interval_us(),
                misses_min: default_misses_min(),
                misses_max: None,
            });
        let on = f.enabled.unwrap_or_else(|| {
            self.cluster_key() && self.ha.peers.len() == 1 && self.auth_mode().signs()
        });
        if !on {
            return None;
        }
        // VRRP's own bound in rounds: three intervals (plus skew) of the
        // shortest advert interval.
        let bound = (3 * self.shortest_advert_ms() * 1000 / f.interval_us).saturating_sub(1);
        let misses_max = f
            .misses_max
            .unwrap_or(bound as u32)
            .clamp(f.misses_min, 1000);
        Some(FastHeartbeat {
            interval: Duration::from_micros(f.interval_us),
            misses_min: f.misses_min,
            misses_max,
        })
    }

    fn has_advert_keys(&self) -> bool {
        self.ha.auth.as_ref().is_some_and(|a| !a.keys.is_empty())
            || (self.ha.sync_key_file.is_some() && self.ha.sync_port != 0)
    }

    /// The anti-replay rule in force.
    pub fn anti_replay(&self) -> auth::AntiReplay {
        match self.ha.auth.as_ref() {
            Some(a) if a.anti_replay == AntiReplayConfig::Time => auth::AntiReplay::Time {
                window_s: a.time_window_s.unwrap_or_else(|| {
                    (3 * self.shortest_advert_ms()).div_ceil(1000).clamp(5, 300) as u32
                }),
            },
            _ => auth::AntiReplay::Monotonic,
        }
    }

    /// The data interfaces adverts also travel over (see `ha.heartbeat`).
    pub fn heartbeat_paths(&self) -> Vec<String> {
        match &self.ha.heartbeat {
            Some(p) => p.clone(),
            None if self.auth_mode().signs() && self.ha.peers.len() == 1 => {
                let mut v = self.vip_interfaces();
                v.retain(|i| *i != self.ha.interface);
                v
            }
            None => Vec::new(),
        }
    }

    fn shortest_advert_ms(&self) -> u64 {
        self.groups
            .iter()
            .flat_map(|g| &g.instances)
            .map(|i| i.advert_interval_ms)
            .min()
            .unwrap_or(1000)
    }

    fn max_lease_ms(&self) -> u64 {
        3 * self.shortest_advert_ms() - lease_margin_ms()
    }

    /// The ownership lease.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.ha.lease_ms.unwrap_or_else(|| self.max_lease_ms()))
    }

    /// The replicated part.
    pub fn shared(&self) -> SharedConfig {
        SharedConfig {
            groups: self.groups.clone(),
            data_interfaces: self.data_interfaces.clone(),
        }
    }

    /// The replicated part as text (what a secondary receives and keeps).
    pub fn shared_text(&self) -> String {
        toml::to_string(&self.shared()).unwrap_or_default()
    }

    /// What the node core runs.
    pub fn node_settings(&self) -> node::Settings {
        node::Settings {
            peers: self.ha.peers.clone(),
            lease: self.lease(),
            state_sync: self.ha.sync_port != 0,
            groups: self
                .groups
                .iter()
                .map(|g| node::GroupSettings {
                    name: g.name.clone(),
                    instances: g
                        .instances
                        .iter()
                        .map(|i| (i.name.clone(), self.machine_config(i)))
                        .collect(),
                    tracks: g.tracks(),
                    garp_count: g.garp_count,
                    garp_interval: Duration::from_millis(g.garp_interval_ms),
                    garp_refresh: (g.garp_refresh_ms > 0)
                        .then(|| Duration::from_millis(g.garp_refresh_ms)),
                })
                .collect(),
            // Filled in by the agent: the keys are read from files, the
            // paths' addresses from the interfaces.
            auth: auth::Settings::none(),
            paths: Vec::new(),
            heartbeat: None,
        }
    }

    /// The state machine configuration of an instance.
    pub fn machine_config(&self, i: &InstanceConfig) -> machine::Config {
        let own = self.cluster.as_ref().and_then(|c| c.priority);
        machine::Config {
            vrid: i.vrid,
            priority: if i.priority == 255 {
                255
            } else {
                own.unwrap_or(i.priority)
            },
            advert_interval_cs: (i.advert_interval_ms / 10) as u16,
            preempt: i.preempt,
            preempt_delay: Duration::from_millis(i.preempt_delay_ms),
            local_addr: self.ha.address,
            vips: advertised(i),
        }
    }
}

/// Most IPv6 VIPs in an instance: its adverts (8 + 16 each, the
/// authentication trailer, 40 of IPv6 header) fit 1,500 bytes.
pub const MAX_IPV6_VIPS: usize = 64;

/// An instance's VIPs in advert order: an IPv6 instance's link-local ones
/// first (RFC 9568 section 5.2.9: the first address is the virtual
/// router's link-local address), the rest as listed.
pub fn advertised(i: &InstanceConfig) -> Vec<IpAddr> {
    let mut vips: Vec<IpAddr> = i.parsed_vips().into_iter().map(|v| v.addr).collect();
    vips.sort_by_key(|a| !matches!(a, IpAddr::V6(a) if a.is_unicast_link_local()));
    vips
}

impl InstanceConfig {
    /// The instance's VIPs, parsed (a loaded config has been validated, so
    /// none is dropped here).
    pub fn parsed_vips(&self) -> Vec<Vip> {
        self.vips.iter().filter_map(|v| parse_vip(v).ok()).collect()
    }
}

impl GroupConfig {
    pub fn tracks(&self) -> Vec<Track> {
        self.track
            .iter()
            .map(|t| Track {
                iface: t.iface.clone(),
                weight: t.weight,
            })
            .collect()
    }
}

/// `tcp/22` -> (6, 22).
pub fn parse_mgmt(s: &str) -> Result<(u8, u16), String> {
    let (proto, port) = s
        .split_once('/')
        .ok_or_else(|| "expected tcp/PORT or udp/PORT".to_owned())?;
    let proto = match proto {
        "tcp" => 6,
        "udp" => 17,
        other => return Err(format!("protocol {other:?} is not tcp or udp")),
    };
    let port = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number"))?;
    Ok((proto, port))
}

/// Validates a VIP: an IPv4 or IPv6 address with a prefix length (32 or
/// 128 when none). An IPv6 VIP is a unicast address a host may use as its
/// gateway or service address (a link-local one too: the virtual router's,
/// RFC 9568): not multicast, loopback or unspecified.
pub fn parse_vip(v: &VipConfig) -> Result<Vip, String> {
    let (addr, prefix) = match v.address.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (v.address.as_str(), None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| "invalid IPv4 or IPv6 address".to_owned())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = match prefix {
        None => max,
        Some(p) => p
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| "invalid prefix length".to_owned())?,
    };
    if let IpAddr::V6(a) = addr
        && (a.is_multicast() || a.is_loopback() || a.is_unspecified())
    {
        return Err(format!(
            "{a} is not a usable IPv6 VIP (multicast, loopback or unspecified)"
        ));
    }
    if v.iface.is_empty() || v.iface.len() > 15 {
        return Err(format!("invalid interface name {:?}", v.iface));
    }
    Ok(Vip {
        iface: v.iface.clone(),
        addr,
        prefix,
    })
}

/// A small valid configuration for the tests of other modules.
#[cfg(test)]
pub(crate) const TEST_CONFIG: &str = r#"
[ha]
interface = "ha0"
address = "10.255.0.1"
peers = ["10.255.0.2"]

[[group]]
name = "fw"

[[group.vrrp]]
name = "VI_1"
vrid = 51
priority = 200
vips = [{ iface = "lan0", address = "10.0.0.1/24" }]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
instance = "fw"
[ha]
interface = "ha0"
address = "10.255.0.1"
peers = ["10.255.0.2"]
mgmt = ["tcp/22"]

[[group]]
name = "fw"
notify = "/usr/local/bin/notify"
track = [{ iface = "wan0", weight = 50 }]
services = [{ name = "openvpn" }]

[[group.vrrp]]
name = "VI_1"
vrid = 51
priority = 200
advert_interval_ms = 10
vips = [{ iface = "lan0", address = "10.0.0.1/24" }, { iface = "wan0", address = "203.0.113.1/24" }]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/ha-agent/config.toml"))
    }

    #[test]
    fn a_good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.instance, "fw");
        let g = &c.groups[0];
        assert_eq!(
            (g.garp_count, g.garp_interval_ms, g.hook_timeout_ms),
            (3, 10, 10_000)
        );
        let i = &g.instances[0];
        assert!(i.preempt && i.accept);
        assert_eq!(
            c.data_interfaces(),
            vec!["lan0".to_owned(), "wan0".to_owned()]
        );
        assert_eq!(
            c.lease(),
            Duration::from_millis(30 - lease_margin_ms()),
            "3 x 10 ms - one tick"
        );
        let m = c.machine_config(i);
        assert_eq!((m.advert_interval_cs, m.vips.len()), (1, 2));
    }

    #[test]
    fn the_documented_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.example.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.groups[0].instances[0].vips.len(), 2);
        assert_eq!(c.lease(), Duration::from_millis(30 - lease_margin_ms()));
    }

    /// IPv6 VIPs: in an instance of their own, without the virtual MAC,
    /// with one peer; usable unicast addresses only.
    #[test]
    fn ipv6_vips_go_in_an_instance_of_their_own() {
        let v6 = GOOD
            .replace("10.0.0.1/24", "2001:db8::1/64")
            .replace("203.0.113.1/24", "fe80::1/64");
        let c = parse(&v6).unwrap();
        assert!(c.has_ipv6_instances());
        let vip = &c.groups[0].instances[0].parsed_vips()[0];
        assert_eq!(
            (vip.addr.to_string(), vip.prefix),
            ("2001:db8::1".into(), 64)
        );
        let m = c.machine_config(&c.groups[0].instances[0]);
        assert_eq!(m.family(), ha_core::vrrp::wire::Family::V6);
        assert_eq!(
            m.vips,
            vec![
                "fe80::1".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap()
            ],
            "the link-local first"
        );
        let err = parse(&v6.replace("fe80::1/64", "2001:db8:1::1/64"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a link-local VIP"), "{err}");
        let err = parse(&v6.replace("fe80::1/64", "2001:db8::1/64"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("listed twice"), "{err}");
        let bare = parse(&v6.replace("2001:db8::1/64", "2001:db8::1")).unwrap();
        assert_eq!(bare.groups[0].instances[0].parsed_vips()[0].prefix, 128);
        assert!(!parse(GOOD).unwrap().has_ipv6_instances());
        let err = parse(&GOOD.replace("10.0.0.1/24", "2001:db8::1/64"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mixes IPv4 and IPv6"), "{err}");
        assert!(
            parse(&v6.replace("vrid = 51", "vrid = 51\nvmac = true"))
                .unwrap()
                .groups[0]
                .instances[0]
                .vmac
        );
        for bad in ["ff02::1", "::1", "::", "2001:db8::1/129"] {
            let e = parse(&v6.replace("2001:db8::1/64", bad))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("IPv6 VIP") || e.contains("prefix length"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn errors_name_file_field_and_problem() {
        let err = parse(&GOOD.replace("10.0.0.1/24", "10.0.0.300/24"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "/etc/ha-agent/config.toml: vip 10.0.0.300/24 on lan0: invalid IPv4 or IPv6 address"
        );
        let err = parse(&GOOD.replace("advert_interval_ms = 10", "advert_interval_ms = 15"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("group fw vrrp VI_1 advert_interval_ms: 15 is not a multiple of 10 ms"),
            "{err}"
        );
        let err = parse(&GOOD.replace("priority = 200", "priority = 0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("priority: must be 1-255"), "{err}");
        let err = parse(&GOOD.replace("tcp/22", "tcp/ssh"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ha.mgmt \"tcp/ssh\": \"ssh\" is not a port number"),
            "{err}"
        );
        let err = parse(&GOOD.replace("peers = [\"10.255.0.2\"]", "peers = []"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ha.peers: at least one peer"), "{err}");
        let err = parse(&GOOD.replace("vrid = 51", "vrid = 51\nbogus = 1"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/ha-agent/config.toml: ") && err.contains("bogus"),
            "{err}"
        );
        let err = parse(&GOOD.replace("mgmt = [\"tcp/22\"]", "mgmt = [\"tcp/22\"]\nlease_ms = 30"))
            .unwrap_err()
            .to_string();
        let max = 30 - lease_margin_ms();
        assert!(
            err.contains(&format!("ha.lease_ms: 30 ms: must be longer than the advert interval (10 ms) and at most {max} ms")),
            "{err}"
        );
        let err = parse(&GOOD.replace("mgmt = [\"tcp/22\"]", "mgmt = [\"tcp/22\"]\nlease_ms = 10"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ha.lease_ms: 10 ms"), "{err}");
        let err = Config::load(Path::new("/nonexistent/ha.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/nonexistent/ha.toml: cannot read"),
            "{err}"
        );
    }

    /// `GOOD` with `extra` added to its [ha] section.
    fn with_ha(extra: &str) -> String {
        GOOD.replace(
            "mgmt = [\"tcp/22\"]",
            &format!("mgmt = [\"tcp/22\"]\n{extra}"),
        )
    }

    #[test]
    fn adverts_are_signed_and_sent_over_the_vip_interfaces_with_a_cluster_key() {
        let plain = parse(GOOD).unwrap();
        assert_eq!(plain.auth_mode(), auth::Mode::None, "no key: plain VRRPv3");
        assert!(plain.heartbeat_paths().is_empty());
        let keyed = parse(&with_ha(
            "sync_port = 7788\nsync_key_file = \"/etc/ha-agent/sync.key\"",
        ))
        .unwrap();
        assert_eq!(keyed.auth_mode(), auth::Mode::Enforce);
        assert_eq!(keyed.anti_replay(), auth::AntiReplay::Monotonic);
        assert_eq!(keyed.heartbeat_paths(), vec!["lan0", "wan0"]);
        let only_ha = parse(&with_ha(
            "sync_port = 7788\nsync_key_file = \"/k\"\nheartbeat = []",
        ))
        .unwrap();
        assert!(only_ha.heartbeat_paths().is_empty());
        let time = parse(&with_ha(
            "sync_port = 7788\nsync_key_file = \"/k\"\n[ha.auth]\nanti_replay = \"time\"",
        ))
        .unwrap();
        assert_eq!(
            time.anti_replay(),
            auth::AntiReplay::Time { window_s: 5 },
            "3 x 10 ms, at least 5 s"
        );
    }

    #[test]
    fn the_fast_heartbeat_is_on_between_ha_agent_nodes_only() {
        assert_eq!(
            parse(GOOD).unwrap().fast_heartbeat(),
            None,
            "no cluster key"
        );
        let keyed = parse(&with_ha("sync_port = 7788\nsync_key_file = \"/k\"")).unwrap();
        assert_eq!(
            keyed.fast_heartbeat(),
            Some(FastHeartbeat {
                interval: Duration::from_millis(1),
                misses_min: 3,
                misses_max: 29,
            }),
            "10 ms adverts: VRRP's bound is 30 rounds of 1 ms"
        );
        let off = parse(&with_ha(
            "sync_port = 7788\nsync_key_file = \"/k\"\n[ha.fast_heartbeat]\nenabled = false",
        ))
        .unwrap();
        assert_eq!(off.fast_heartbeat(), None);
        for (extra, field) in [
            (
                "[ha.fast_heartbeat]\nenabled = true",
                "ha.fast_heartbeat.enabled",
            ),
            (
                "sync_port = 7788\nsync_key_file = \"/k\"\n[ha.fast_heartbeat]\ninterval_us = 50",
                "ha.fast_heartbeat.interval_us",
            ),
            (
                "sync_port = 7788\nsync_key_file = \"/k\"\n[ha.fast_heartbeat]\nmisses_min = 1",
                "ha.fast_heartbeat.misses_min / misses_max",
            ),
        ] {
            match parse(&with_ha(extra)) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{extra}"),
                other => panic!("{extra}: {other:?}"),
            }
        }
    }

    #[test]
    fn napi_threads_the_data_interfaces_not_the_ha_link() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.ha.napi, NapiConfig::default());
        assert!(c.ha.napi.threaded && c.ha.napi.nice == -20);
        assert!(!c.napi_interfaces().contains(&c.ha.interface));
        assert_eq!(c.napi_interfaces(), c.data_interfaces());
        let off = parse(&with_ha("[ha.napi]\nthreaded = false")).unwrap();
        assert!(!off.ha.napi.threaded);
        for nice in ["-21", "20"] {
            match parse(&with_ha(&format!("[ha.napi]\nnice = {nice}"))) {
                Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "ha.napi.nice"),
                other => panic!("nice {nice}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_flow_table_size_is_bounded_and_defaults_to_conntrack_max() {
        use crate::dataplane::{MAX_FLOWS_MAX, MAX_FLOWS_MIN, flow_table_size};
        assert_eq!(flow_table_size(None, Some("262144\n")), 262_144);
        assert_eq!(flow_table_size(None, Some("1048576")), 1 << 20);
        assert_eq!(flow_table_size(Some(1_000_000), Some("262144")), 1_000_000);
        assert_eq!(flow_table_size(None, None), ha_common::flow::MAX_FLOWS);
        assert_eq!(
            flow_table_size(None, Some("garbage")),
            ha_common::flow::MAX_FLOWS
        );
        assert_eq!(flow_table_size(None, Some("16")), MAX_FLOWS_MIN);
        assert_eq!(flow_table_size(None, Some("999999999")), MAX_FLOWS_MAX);
        let with = |v: &str| parse(&GOOD.replace("[ha]", &format!("[ha]\nmax_flows = {v}")));
        assert_eq!(with("1000000").unwrap().ha.max_flows, Some(1_000_000));
        for bad in ["100", "99999999"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("ha.max_flows"), "{e}");
        }
        let aging = |v: &str| parse(&GOOD.replace("[ha]", &format!("[ha]\nflow_aging_s = {v}")));
        assert_eq!(parse(GOOD).unwrap().ha.flow_aging_s, 60);
        assert_eq!(aging("5").unwrap().ha.flow_aging_s, 5);
        for bad in ["0", "4", "3601"] {
            let e = aging(bad).unwrap_err().to_string();
            assert!(e.contains("ha.flow_aging_s"), "{e}");
        }
    }

    #[test]
    fn role_interfaces_are_checked() {
        let with = |v: &str| {
            parse(&GOOD.replace(
                "services = [{ name = \"openvpn\" }]",
                &format!("services = [{{ name = \"openvpn\" }}]\nrole_interfaces = {v}"),
            ))
        };
        assert_eq!(
            with("[\"ppp0\"]").unwrap().groups[0].role_interfaces,
            vec!["ppp0".to_owned()]
        );
        for (bad, why) in [
            ("[\"ha0\"]", "HA link"),
            ("[\"lan0\"]", "carries a VIP"),
            ("[\"ppp0\", \"ppp0\"]", "twice"),
            ("[\"\"]", "not an interface name"),
            ("[\"eth0:1\"]", "not an interface name"),
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(
                e.contains("role_interfaces") && e.contains(why),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn auth_settings_that_cannot_work_are_refused() {
        for (extra, field) in [
            ("[ha.auth]\nmode = \"enforce\"", "ha.auth"),
            ("heartbeat = [\"lan0\"]", "ha.heartbeat"),
            (
                "sync_port = 7788\nsync_key_file = \"/k\"\nheartbeat = [\"ha0\"]",
                "ha.heartbeat",
            ),
            (
                "[ha.auth]\nactive_key = 2\n[[ha.auth.key]]\nid = 1\nfile = \"/k\"",
                "ha.auth.active_key",
            ),
            (
                "[ha.auth]\n[[ha.auth.key]]\nid = 1\nfile = \"/a\"\n[[ha.auth.key]]\nid = 1\nfile = \"/b\"",
                "ha.auth.key 1",
            ),
            (
                "[ha.auth]\nanti_replay = \"time\"\ntime_window_s = 0\n[[ha.auth.key]]\nid = 1\nfile = \"/k\"",
                "ha.auth.time_window_s",
            ),
        ] {
            match parse(&with_ha(extra)) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{extra}"),
                other => panic!("{extra}: {other:?}"),
            }
        }
        let keys = parse(&with_ha(
            "[ha.auth]\nmode = \"permissive\"\n[[ha.auth.key]]\nid = 1\nfile = \"/k\"",
        ))
        .unwrap();
        assert_eq!(keys.auth_mode(), auth::Mode::Permissive);
    }
}
