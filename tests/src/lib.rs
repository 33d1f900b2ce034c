//! Privileged integration tests (root, network namespaces, real XDP).
//!
//! The tests are in `tests/`; this library holds what they share. Run them with
//! `cargo xtask test` (as root); they are not part of a plain `cargo test`.
//! Test functions panic with context rather than return `Result`, so a failure
//! carries the step that failed.

/// Panics with a clear message unless running as root: these tests create
/// namespaces and load XDP programs.
pub fn require_root() {
    // SAFETY: plain syscall without arguments.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the privileged integration tests need root (network namespaces, XDP); \
         run `cargo xtask test` as root, or `cargo xtask test --unprivileged` to skip them"
    );
}

/// Holds the lock that runs a test binary's heavy labs one at a time (on a
/// small machine, several labs at 10 ms adverts at once stall each other's
/// loops past the lease, and their timings are measured); a test that
/// panicked leaves it usable.
pub fn one_lab_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A data-plane counter of an agent's instance (as `ha-agent maps` shows it).
pub fn data_counter(instance: &str, name: &str) -> u64 {
    let snap = ha_agent::dataplane::inspect::Snapshot::read(instance, 0).unwrap();
    snap.data_verdicts
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0, |(_, v)| *v)
}

pub mod frames;
pub mod survival;

use std::sync::atomic::{AtomicU32, Ordering};

use ha_agent::dataplane::{Dataplane, LoadOptions};

/// A unique instance name (`hatest-<tag>-<pid>-<n>`) whose pins are removed on
/// drop, panics included, so tests run in parallel and leave no pins behind.
#[derive(Debug)]
pub struct PinGuard(pub String);

impl PinGuard {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        PinGuard(format!(
            "hatest-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Err(e) = Dataplane::detach_all(&self.0) {
            eprintln!("remove pins of {}: {e}", self.0);
        }
    }
}

/// A data plane loaded and pinned under a [`PinGuard`] instance.
#[derive(Debug)]
pub struct PinnedDataplane {
    /// The instance name (`/sys/fs/bpf/<instance>`).
    pub instance: String,
    /// The control handle.
    pub dp: Dataplane,
    /// Removes the pins on drop (declared last: dropped after `dp`).
    _pins: PinGuard,
}

impl PinnedDataplane {
    /// Loads and pins a fresh data plane.
    pub fn new(tag: &str) -> Self {
        Self::with(tag, LoadOptions::default())
    }

    /// Loads and pins a fresh data plane with `opts`.
    pub fn with(tag: &str, opts: LoadOptions) -> Self {
        let pins = PinGuard::new(tag);
        let instance = pins.0.clone();
        let dp = Dataplane::create_or_open(&instance, opts)
            .unwrap_or_else(|e| panic!("load and pin data plane {instance}: {e:#}"));
        PinnedDataplane {
            instance,
            dp,
            _pins: pins,
        }
    }
}

/// The `ha-agent` binary next to this test binary (`target/<profile>/ha-agent`);
/// `cargo xtask test` builds it before the integration tests.
pub fn agent_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // Tests and benches live in target/<profile>/deps, binaries (the lab
    // runner) in target/<profile>.
    let dir = exe.parent().expect("target/<profile>[/deps]");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>")
    } else {
        dir
    };
    let bin = dir.join("ha-agent");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p ha-agent` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// The MACs (lower case) of every reply to two ARP requests the lab's client
/// sends for `addr` on its eth0, one entry per reply.
pub fn arp_answers(lab: &ha_lab::Lab, addr: std::net::Ipv4Addr) -> Vec<String> {
    let out = lab
        .command(
            "client",
            &[
                "arping",
                "-c",
                "2",
                "-w",
                "2",
                "-I",
                "eth0",
                &addr.to_string(),
            ],
        )
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("reply from"))
        .filter_map(|l| Some(l.split('[').nth(1)?.split(']').next()?.to_ascii_lowercase()))
        .collect()
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes; panics naming
/// `what` on timeout.
pub fn wait_for(what: &str, timeout: std::time::Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Starts `cmd` and returns once a line of its stderr contains `marker`
/// (tcpdump says "listening on" when its capture runs): a wait on the
/// condition, not a sleep. The rest of its stderr is drained in the
/// background. Panics after `timeout`.
pub fn spawn_when_ready(
    mut cmd: std::process::Command,
    marker: &str,
    timeout: std::time::Duration,
) -> std::process::Child {
    use std::io::BufRead as _;
    cmd.stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = marker.to_owned();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains(&marker) {
                let _ = tx.send(Ok(()));
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        let _ = tx.send(Err(seen));
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => child,
        Ok(Err(seen)) => panic!("the command ended before it was ready:\n{seen}"),
        Err(_) => panic!("the command was not ready after {timeout:?}"),
    }
}

/// The failover lab of docs/architecture.md:
///
/// ```text
/// client 10.0.0.10 --[lan]-- fw1 lan0 10.0.0.2 / fw2 lan0 10.0.0.3   (LAN VIP 10.0.0.1)
///                            fw1 wan0 10.1.0.2 / fw2 wan0 10.1.0.3   (WAN VIP 10.1.0.1) --[wan]-- server 10.1.0.10
///                            fw1 ha0 10.255.0.1 --[hasw]-- fw2 ha0 10.255.0.2 (HA link)
/// ```
/// The VIPs are not configured here: whoever runs on the firewalls adds them.
pub fn failover_lab() -> ha_lab::Lab {
    two_firewalls(false)
}

/// [`failover_lab`] with each firewall's LAN data interface a Linux bridge
/// (NethSecurity bridges extra LANs): `lan0` is a bridge whose port `lanp`
/// plugs into the LAN switch. The VIP and the data gate are on the bridge
/// device (generic XDP: a bridge has no native XDP). Same names and
/// addresses above the links, so every scenario runs unchanged; a hard
/// crash takes [`BRIDGED_CRASH_LINKS`] down. (VLAN devices and bonds, the
/// other rows of the seeds' matrix, cannot be made on this lab machine's
/// kernel: CONFIG_VLAN_8021Q and CONFIG_BONDING are not set.)
pub fn bridged_lan_lab() -> ha_lab::Lab {
    two_firewalls(true)
}

/// [`failover_lab`], its LAN on a bridge of each firewall's if `bridged`.
fn two_firewalls(bridged: bool) -> ha_lab::Lab {
    require_root();
    let mut lab = ha_lab::Lab::new();
    for ns in ["client", "fw1", "fw2", "server"] {
        lab.add_netns(ns).unwrap();
    }
    lab.add_bridge("lan").unwrap();
    lab.add_bridge("wan").unwrap();
    lab.add_bridge_port("lan", ("client", "eth0")).unwrap();
    lab.add_bridge_port("wan", ("server", "eth0")).unwrap();
    // The HA link is a switch (a bridge of its own), as with more than two
    // nodes: a crashed peer does not take the survivor's HA link down.
    lab.add_bridge("hasw").unwrap();
    for (i, fw) in ["fw1", "fw2"].into_iter().enumerate() {
        if bridged {
            lab.add_bridge_port("lan", (fw, "lanp")).unwrap();
            lab.ip(
                fw,
                "bridge lan0",
                &["link", "add", "lan0", "type", "bridge"],
            )
            .unwrap();
            lab.ip(
                fw,
                "lanp into lan0",
                &["link", "set", "lanp", "master", "lan0"],
            )
            .unwrap();
            lab.link_up((fw, "lan0")).unwrap();
        } else {
            lab.add_bridge_port("lan", (fw, "lan0")).unwrap();
        }
        lab.add_bridge_port("wan", (fw, "wan0")).unwrap();
        lab.add_bridge_port("hasw", (fw, "ha0")).unwrap();
        lab.add_addr((fw, "lan0"), &format!("10.0.0.{}/24", i + 2))
            .unwrap();
        lab.add_addr((fw, "wan0"), &format!("10.1.0.{}/24", i + 2))
            .unwrap();
        lab.add_addr((fw, "ha0"), &format!("10.255.0.{}/24", i + 1))
            .unwrap();
        lab.sysctl(fw, "net.ipv4.ip_forward", "1").unwrap();
    }
    // The data switches forward in threads of their own, as switches on
    // hardware of their own would, never inside a firewall's VRRP loop
    // (`Lab::thread_napi`); the HA switch stays in softirq, like the
    // agents' HA links (`[ha.napi]`).
    let ports = if bridged {
        BRIDGED_SWITCH_PORTS
    } else {
        DATA_SWITCH_PORTS
    };
    for (bridge, ports) in ports {
        for port in ports {
            lab.thread_napi((bridge, port)).unwrap();
        }
    }
    lab.add_addr(("client", "eth0"), "10.0.0.10/24").unwrap();
    lab.add_route("client", "default", "10.0.0.1").unwrap();
    lab.add_addr(("server", "eth0"), "10.1.0.10/24").unwrap();
    lab.add_route("server", "default", "10.1.0.1").unwrap();
    lab
}

/// What a hard crash of a firewall of [`bridged_lan_lab`] takes down: its
/// physical links (the bridge goes with its port).
pub const BRIDGED_CRASH_LINKS: [&str; 3] = ["ha0", "lanp", "wan0"];

/// The data switches' ports of [`bridged_lan_lab`].
pub const BRIDGED_SWITCH_PORTS: [(&str, [&str; 3]); 2] = [
    ("lan", ["client-eth0", "fw1-lanp", "fw2-lanp"]),
    ("wan", ["server-eth0", "fw1-wan0", "fw2-wan0"]),
];

/// The ports of [`failover_lab`]'s data switches, by switch: polled by
/// threads (`Lab::thread_napi`).
pub const DATA_SWITCH_PORTS: [(&str, [&str; 3]); 2] = [
    ("lan", ["client-eth0", "fw1-lan0", "fw2-lan0"]),
    ("wan", ["server-eth0", "fw1-wan0", "fw2-wan0"]),
];

/// Settings of one firewall's agent in [`failover_lab`].
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// 1 or 2.
    pub node: u8,
    pub priority: u8,
    pub advert_ms: u64,
    pub preempt: bool,
    pub unicast: bool,
    /// Extra TOML appended to the group (notify, services, track).
    pub group_extra: String,
    /// Extra TOML appended to the [ha] section (sync settings).
    pub ha_extra: String,
    /// Sub-tables of the [ha] section (`[ha.auth]`, `[[ha.auth.key]]`),
    /// rendered after `ha_extra`'s plain keys, where TOML allows them.
    pub auth_extra: String,
    /// What the HA link lets through besides VRRP and our sync (`tcp/22`).
    pub mgmt: Vec<String>,
    /// `metrics_listen`, if any.
    pub metrics: Option<String>,
    /// Accept_Mode: the master takes traffic addressed to the VIPs (a
    /// service on the firewall itself, NAT to the VIP); the agent's default.
    pub accept: bool,
    /// TOML appended after the groups (e.g. a `[cluster]` section).
    pub tail: String,
    /// Writes `[ha.fast_heartbeat] enabled = false` (the fast heartbeat off).
    /// Nothing is written when `false`: the agent's configuration denies
    /// unknown keys, and an agent without the fast heartbeat must still
    /// accept the lab's configuration.
    pub fast_heartbeat_off: bool,
    /// Writes `[ha.napi] threaded = false` (data interfaces left in softirq).
    pub napi_softirq: bool,
    /// Writes `vmac = true` in the instance (the VRRP virtual MAC).
    pub vmac: bool,
    /// Which VIPs: IPv4 (`VI_1`, VRID 51), IPv6 (`VI_6`, VRID 52, over
    /// IPv6 on the HA link), or both in the one group. IPv6 needs the
    /// lab's IPv6 addressing ([`add_ipv6`]).
    pub family: Family,
}

/// The address families of a lab's VIPs and traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
    Dual,
}

impl Family {
    pub fn has_v4(self) -> bool {
        self != Family::Ipv6
    }
    pub fn has_v6(self) -> bool {
        self != Family::Ipv4
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
            Family::Dual => "dual",
        }
    }
}

/// The LAN and WAN VIPs of [`add_ipv6`]'s addressing, and the virtual
/// router's link-local address on the LAN (RFC 9568: first in its adverts).
pub const LAN_LINK_LOCAL_VIP: &str = "fe80::1";
pub const LAN_VIP6: &str = "fd00::1";
pub const WAN_VIP6: &str = "fd00:1::1";
/// The client's and the server's IPv6 addresses.
pub const CLIENT6: &str = "fd00::10";
pub const SERVER6: &str = "fd00:1::10";

/// IPv6 on [`failover_lab`] (or [`bridged_lan_lab`]) beside its IPv4: LAN
/// fd00::/64 (client ::10, fw1 ::2, fw2 ::3, VIP ::1), WAN fd00:1::/64
/// (server ::10, firewalls ::2 and ::3, VIP ::1), the client's default
/// route via the LAN's link-local VIP fe80::1, the server's via the WAN
/// VIP, forwarding on the firewalls.
/// Addresses without duplicate address detection (usable at once); the
/// HA link keeps the link-local address the kernel gave it.
pub fn add_ipv6(lab: &ha_lab::Lab) {
    let add = |ns: &str, iface: &str, cidr: &str| {
        lab.ip(
            ns,
            &format!("{cidr} on {ns}/{iface}"),
            &["-6", "addr", "add", cidr, "dev", iface, "nodad"],
        )
        .unwrap();
    };
    for (i, fw) in ["fw1", "fw2"].into_iter().enumerate() {
        add(fw, "lan0", &format!("fd00::{}/64", i + 2));
        add(fw, "wan0", &format!("fd00:1::{}/64", i + 2));
        lab.sysctl(fw, "net.ipv6.conf.all.forwarding", "1").unwrap();
    }
    add("client", "eth0", &format!("{CLIENT6}/64"));
    add("server", "eth0", &format!("{SERVER6}/64"));
    // The client's gateway is the virtual router's link-local address, as
    // a host's learnt from router advertisements; the server's a global VIP.
    lab.ip(
        "client",
        "client IPv6 default route",
        &[
            "-6",
            "route",
            "add",
            "default",
            "via",
            LAN_LINK_LOCAL_VIP,
            "dev",
            "eth0",
        ],
    )
    .unwrap();
    lab.ip(
        "server",
        "server IPv6 default route",
        &["-6", "route", "add", "default", "via", WAN_VIP6],
    )
    .unwrap();
    // The HA link's link-local address out of duplicate address detection
    // before an agent binds it (the agent waits too, up to 5 s).
    for fw in ["fw1", "fw2"] {
        wait_for(
            &format!("{fw}'s ha0 link-local usable"),
            std::time::Duration::from_secs(5),
            || {
                let out = lab
                    .command(
                        fw,
                        &["ip", "-6", "addr", "show", "dev", "ha0", "scope", "link"],
                    )
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.contains("fe80") && !text.contains("tentative")
            },
        );
    }
}

impl AgentSpec {
    pub fn new(node: u8, priority: u8, advert_ms: u64) -> Self {
        AgentSpec {
            node,
            priority,
            advert_ms,
            preempt: true,
            unicast: false,
            group_extra: String::new(),
            ha_extra: String::new(),
            auth_extra: String::new(),
            mgmt: vec!["tcp/22".to_owned()],
            metrics: None,
            accept: true,
            tail: String::new(),
            fast_heartbeat_off: false,
            napi_softirq: false,
            vmac: false,
            family: Family::Ipv4,
        }
    }

    /// One `[[group.vrrp]]` of the group, with these settings and `vips`
    /// (the TOML array's items).
    fn instance(&self, name: &str, vrid: u8, vips: &str) -> String {
        format!(
            r#"[[group.vrrp]]
name = "{name}"
vrid = {vrid}
priority = {prio}
advert_interval_ms = {adv}
preempt = {preempt}
accept = {accept}
{vmac}
vips = [{vips}]"#,
            prio = self.priority,
            adv = self.advert_ms,
            preempt = self.preempt,
            accept = self.accept,
            vmac = if self.vmac { "vmac = true" } else { "" },
        )
    }

    /// The agent's TOML configuration for `instance`.
    pub fn toml(&self, instance: &str) -> String {
        let me = self.node;
        let peer = 3 - self.node;
        format!(
            r#"instance = "{instance}"
{metrics}
[ha]
interface = "ha0"
address = "10.255.0.{me}"
peers = ["10.255.0.{peer}"]
unicast = {unicast}
mgmt = {mgmt:?}
{ha_extra}
{auth_extra}
{fast_heartbeat}
{napi}

[[group]]
name = "fw"
garp_count = 3
garp_interval_ms = 10
{extra}

{v4}
{v6}
{tail}
"#,
            v4 = if self.family.has_v4() {
                self.instance(
                    "VI_1",
                    51,
                    r#"{ iface = "lan0", address = "10.0.0.1/24" }, { iface = "wan0", address = "10.1.0.1/24" }"#,
                )
            } else {
                String::new()
            },
            v6 = if self.family.has_v6() {
                self.instance(
                    "VI_6",
                    52,
                    &format!(
                        r#"{{ iface = "lan0", address = "{LAN_LINK_LOCAL_VIP}/64" }}, {{ iface = "lan0", address = "{LAN_VIP6}/64" }}, {{ iface = "wan0", address = "{WAN_VIP6}/64" }}"#
                    ),
                )
            } else {
                String::new()
            },
            tail = self.tail,
            unicast = self.unicast,
            extra = self.group_extra,
            ha_extra = self.ha_extra,
            auth_extra = self.auth_extra,
            fast_heartbeat = if self.fast_heartbeat_off {
                "[ha.fast_heartbeat]\nenabled = false"
            } else {
                ""
            },
            napi = if self.napi_softirq {
                "[ha.napi]\nthreaded = false"
            } else {
                ""
            },
            mgmt = self.mgmt,
            metrics = self
                .metrics
                .as_ref()
                .map(|m| format!("metrics_listen = \"{m}\""))
                .unwrap_or_default(),
        )
    }
}

/// Where [`agent_dir`] puts an instance's directory.
pub fn agent_dir_of(instance: &str) -> std::path::PathBuf {
    let name = if instance.starts_with("hatest-") {
        instance.to_owned()
    } else {
        format!("halab-up-{instance}")
    };
    std::env::temp_dir().join(name)
}

/// The directory of a test agent's configuration and log: created fresh,
/// 0700 (root writes a configuration there that names commands it runs; a
/// directory another user made first is removed, not used).
/// `cargo xtask lab up`'s agents (`fw1`, `fw2`) get `halab-up-<name>`.
pub fn agent_dir(instance: &str) -> std::path::PathBuf {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = agent_dir_of(instance);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Starts `ha-agent run --config <config> <extra...>` in namespace `ns`,
/// logging to `log`.
pub fn spawn_agent(
    lab: &mut ha_lab::Lab,
    ns: &str,
    config: &std::path::Path,
    extra: &[&str],
    log: std::fs::File,
) -> u32 {
    spawn_agent_of(&agent_bin(), lab, ns, config, extra, log)
}

/// [`spawn_agent`] with the binary of choice (the installed package's).
pub fn spawn_agent_of(
    bin: &std::path::Path,
    lab: &mut ha_lab::Lab,
    ns: &str,
    config: &std::path::Path,
    extra: &[&str],
    log: std::fs::File,
) -> u32 {
    let mut argv = vec![
        bin.to_str().unwrap(),
        "run",
        "--config",
        config.to_str().unwrap(),
    ];
    argv.extend_from_slice(extra);
    let mut cmd = lab.command(ns, &argv);
    cmd.env("HA_AGENT_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    lab.spawn(ns, cmd).unwrap()
}

/// A running `ha-agent run` in a lab namespace, with its pins and status file
/// removed on drop.
#[derive(Debug)]
pub struct RunningAgent {
    pub ns: String,
    pub pid: u32,
    pub pins: PinGuard,
    pub log: std::path::PathBuf,
}

impl RunningAgent {
    /// Writes the config and starts the agent in namespace `ns`.
    pub fn start(lab: &mut ha_lab::Lab, ns: &str, spec: &AgentSpec) -> Self {
        Self::start_as(lab, ns, spec, PinGuard::new(&format!("agent{}", spec.node)))
    }

    /// [`RunningAgent::start`] under the instance name `pins` holds (`cargo
    /// xtask lab up` names its agents `fw1` and `fw2`, as an operator would).
    pub fn start_as(lab: &mut ha_lab::Lab, ns: &str, spec: &AgentSpec, pins: PinGuard) -> Self {
        let dir = agent_dir(&pins.0);
        let config = dir.join("config.toml");
        std::fs::write(&config, spec.toml(&pins.0)).unwrap();
        let log = dir.join("agent.log");
        let pid = spawn_agent(lab, ns, &config, &[], std::fs::File::create(&log).unwrap());
        RunningAgent {
            ns: ns.to_owned(),
            pid,
            pins,
            log,
        }
    }

    /// Kills the agent (SIGKILL) and starts it again at once with the same
    /// configuration and pins.
    pub fn restart(&mut self, lab: &mut ha_lab::Lab) {
        self.signal(libc::SIGKILL);
        // Wait until it is gone (or a zombie: the lab reaps it later).
        let stat = format!("/proc/{}/stat", self.pid);
        while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z")) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let config = agent_dir_of(&self.pins.0).join("config.toml");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap();
        self.pid = spawn_agent(lab, &self.ns, &config, &[], log);
    }

    /// The agent's status file, if written yet.
    pub fn status(&self) -> Option<ha_agent::status::Status> {
        ha_agent::status::Status::read(&self.pins.0).ok()
    }

    /// `ha-agent status --json` run in the agent's namespace, as an operator
    /// would: a snapshot the running agent takes when asked.
    pub fn cli_status(&self, lab: &ha_lab::Lab) -> serde_json::Value {
        let bin = agent_bin();
        let out = lab
            .command(
                &self.ns,
                &[
                    bin.to_str().unwrap(),
                    "status",
                    "--json",
                    "--instance",
                    &self.pins.0,
                ],
            )
            .output()
            .expect("run ha-agent status");
        assert!(
            out.status.success(),
            "ha-agent status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// The group's role as the agent reports it ("MASTER", "BACKUP", ...).
    pub fn role(&self) -> Option<String> {
        self.status()?.roles.get("fw").cloned()
    }

    /// The ownership word in the data plane.
    pub fn owned(&self) -> Option<u64> {
        Dataplane::open(&self.pins.0)
            .and_then(|d| d.ownership())
            .ok()
            .map(|o| o.groups)
    }

    /// Sends a signal to the agent.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on a pid we started.
        unsafe { libc::kill(self.pid as i32, sig) };
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        for f in ha_agent::paths::run_files(&self.pins.0) {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_dir_all(agent_dir_of(&self.pins.0));
    }
}

/// keepalived (Debian's 2.2.7, VRRPv3) on a firewall of [`failover_lab`],
/// configured like our agent: VRID 51 on ha0, VIPs 10.0.0.1 on lan0 and
/// 10.1.0.1 on wan0. Its state is read from its log.
#[derive(Debug)]
pub struct Keepalived {
    pub pid: u32,
    /// The instance whose states are the group's.
    stands_for_group: &'static str,
    /// Scratch directory: config, pid files, state file, log.
    pub dir: std::path::PathBuf,
}

impl Keepalived {
    pub fn start(
        lab: &mut ha_lab::Lab,
        ns: &str,
        node: u8,
        priority: u8,
        advert_ms: u64,
        unicast: bool,
    ) -> Self {
        Self::start_with_notify(lab, ns, node, priority, advert_ms, unicast, "")
    }

    /// Like [`Keepalived::start`]; `on_state` is shell run by the notify
    /// script with the new state in `$3` (e.g. conntrackd's commit on MASTER).
    pub fn start_with_notify(
        lab: &mut ha_lab::Lab,
        ns: &str,
        node: u8,
        priority: u8,
        advert_ms: u64,
        unicast: bool,
        on_state: &str,
    ) -> Self {
        Self::start_with(
            lab,
            ns,
            node,
            priority,
            advert_ms,
            &KeepalivedOptions {
                unicast,
                on_state: on_state.to_owned(),
                ..KeepalivedOptions::default()
            },
        )
    }

    /// Like [`Keepalived::start`], with a keepalived binary of choice and
    /// extra configuration inside the `vrrp_instance` block (an `auth_hmac`
    /// block, say).
    pub fn start_with(
        lab: &mut ha_lab::Lab,
        ns: &str,
        node: u8,
        priority: u8,
        advert_ms: u64,
        opts: &KeepalivedOptions,
    ) -> Self {
        let KeepalivedOptions {
            unicast,
            on_state,
            binary,
            instance_extra,
            vmac,
            family,
        } = opts;
        let unicast = *unicast;
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hatest-keepalived-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state");
        let notify = dir.join("notify.sh");
        std::fs::write(
            &notify,
            format!("#!/bin/sh\n{on_state}\necho \"$3\" > {}\n", state.display()),
        )
        .unwrap();
        std::fs::set_permissions(&notify, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let peer = 3 - node;
        let unicast = if unicast {
            format!("unicast_src_ip 10.255.0.{node}\n  unicast_peer {{\n    10.255.0.{peer}\n  }}")
        } else {
            String::new()
        };
        let global_defs = format!(
            "global_defs {{\n  router_id fw{node}\n  vrrp_version 3\n  script_user root\n  enable_script_security\n}}\n"
        );
        let conf = if *vmac {
            let instance = |name: &str, iface: &str, vip: &str| {
                format!(
                    r#"vrrp_instance {name} {{
  state BACKUP
  interface {iface}
  use_vmac vrrp.{iface}
  virtual_router_id 51
  priority {priority}
  advert_int {adv}
  virtual_ipaddress {{
    {vip}
  }}
}}
"#,
                    adv = advert_ms as f64 / 1000.0,
                )
            };
            format!(
                r#"{global_defs}vrrp_sync_group G {{
  group {{
    VI_LAN
    VI_WAN
  }}
  notify {notify}
}}
{lan}{wan}"#,
                notify = notify.display(),
                lan = instance("VI_LAN", "lan0", "10.0.0.1/24"),
                wan = instance("VI_WAN", "wan0", "10.1.0.1/24"),
            )
        } else if family.has_v6() {
            // The group's notify for both families; an instance's alone.
            let group_notify = format!("notify {}", notify.display());
            let (group, instance_notify) = if family.has_v4() {
                (
                    format!(
                        "vrrp_sync_group G {{\n  group {{\n    VI_1\n    VI_6\n  }}\n  {group_notify}\n}}\n"
                    ),
                    String::new(),
                )
            } else {
                (String::new(), group_notify)
            };
            let instance = |name: &str, vrid: u8, vips: &str| {
                format!(
                    r#"vrrp_instance {name} {{
  state BACKUP
  interface ha0
  virtual_router_id {vrid}
  priority {priority}
  advert_int {adv}
  {unicast}
  {instance_extra}virtual_ipaddress {{
    {vips}
  }}
  {instance_notify}
}}
"#,
                    adv = advert_ms as f64 / 1000.0,
                )
            };
            let v4 = if family.has_v4() {
                instance("VI_1", 51, "10.0.0.1/24 dev lan0\n    10.1.0.1/24 dev wan0")
            } else {
                String::new()
            };
            let v6 = instance(
                "VI_6",
                52,
                &format!(
                    "{LAN_LINK_LOCAL_VIP}/64 dev lan0\n    {LAN_VIP6}/64 dev lan0\n    {WAN_VIP6}/64 dev wan0"
                ),
            );
            format!("{global_defs}{group}{v4}{v6}")
        } else {
            format!(
                r#"{global_defs}vrrp_instance VI_1 {{
  state BACKUP
  interface ha0
  virtual_router_id 51
  priority {priority}
  advert_int {adv}
  {unicast}
  {instance_extra}virtual_ipaddress {{
    10.0.0.1/24 dev lan0
    10.1.0.1/24 dev wan0
  }}
  notify {notify}
}}
"#,
                adv = advert_ms as f64 / 1000.0,
                notify = notify.display(),
                instance_extra = if instance_extra.is_empty() {
                    String::new()
                } else {
                    format!("{instance_extra}\n  ")
                },
            )
        };
        let conf_path = dir.join("keepalived.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.join("keepalived.log")).unwrap();
        let p = |f: &str| dir.join(f).display().to_string();
        let program = binary
            .as_ref()
            .map_or_else(|| "keepalived".to_owned(), |b| b.display().to_string());
        let (conf, kpid, vpid, cpid) = (p("keepalived.conf"), p("k.pid"), p("v.pid"), p("c.pid"));
        let mut argv = vec![
            program.as_str(),
            "--dont-fork",
            "--log-console",
            "--log-detail",
        ];
        // A keepalived built without LVS (`--disable-lvs`) knows neither
        // `--vrrp` nor `--checkers_pid`, and getopt takes `--vrrp` for an
        // abbreviation of `--vrrp_pid`, eating the next argument. Without
        // virtual servers in the config it starts no checker process anyway.
        let lvs = binary.as_ref().is_none_or(|b| keepalived_has_lvs(b));
        if lvs {
            argv.push("--vrrp");
        }
        argv.extend(["--use-file", &conf, "--pid", &kpid, "--vrrp_pid", &vpid]);
        if lvs {
            argv.extend(["--checkers_pid", &cpid]);
        }
        let mut cmd = lab.command(ns, &argv);
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        let pid = lab.spawn(ns, cmd).unwrap();
        let stands_for_group = match (*vmac, *family) {
            (true, _) => "VI_LAN",
            (false, Family::Ipv6) => "VI_6",
            (false, _) => "VI_1",
        };
        Keepalived {
            pid,
            dir,
            stands_for_group,
        }
    }

    /// Its state (MASTER, BACKUP, FAULT) from the last "Entering ... STATE"
    /// line of its log (its notify scripts run concurrently and may finish out
    /// of order; the log is written in order).
    pub fn state(&self) -> Option<String> {
        self.states().pop()
    }

    /// Every state it entered, in order, from its log's "Entering ...
    /// STATE" lines of the instance that stands for the group: with `vmac`
    /// the LAN one (the WAN one follows it), with both families the IPv4
    /// one.
    pub fn states(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| !l.contains("(VI_") || l.contains(&format!("({})", self.stands_for_group)))
            .filter_map(|l| {
                let rest = l.split("Entering ").nth(1)?;
                Some(rest.split(' ').next()?.to_owned())
            })
            .collect()
    }

    /// keepalived's own log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("keepalived.log")).unwrap_or_default()
    }

    /// Signals the parent and the VRRP child process.
    pub fn signal(&self, sig: i32) {
        let child = std::fs::read_to_string(self.dir.join("v.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        for pid in [Some(self.pid as i32), child].into_iter().flatten() {
            // SAFETY: plain syscall on processes we started.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Options of [`Keepalived::start_with`].
#[derive(Debug, Clone, Default)]
pub struct KeepalivedOptions {
    /// Unicast adverts to the other firewall instead of multicast.
    pub unicast: bool,
    /// Shell the notify script runs with the new state in `$3`.
    pub on_state: String,
    /// The keepalived binary; `keepalived` from `PATH` (Debian's) if `None`.
    pub binary: Option<std::path::PathBuf>,
    /// Configuration inserted in the `vrrp_instance` block, before
    /// `virtual_ipaddress` (e.g. an `auth_hmac { ... }` block).
    pub instance_extra: String,
    /// keepalived's `use_vmac`, which puts the virtual MAC on the interface
    /// an instance advertises on: here two instances in a sync group, one
    /// on the LAN and one on the WAN (VRID 51 on each: the same virtual MAC
    /// as the agent's), each with a macvlan (`vrrp.lan0`, `vrrp.wan0`)
    /// holding its VIP and
    /// sending its adverts on that segment, not on the HA link.
    pub vmac: bool,
    /// The VIPs' family, as [`AgentSpec::family`]: IPv6 is instance `VI_6`
    /// (VRID 52, adverts over IPv6 on ha0 from its link-local address to
    /// ff02::12); both: `VI_1` and `VI_6` in a sync group. Not with `vmac`.
    pub family: Family,
}

/// Whether the keepalived at `binary` was built with LVS (its `--version`
/// lists `LVS` among its config options).
fn keepalived_has_lvs(binary: &std::path::Path) -> bool {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("run {} --version: {e}", binary.display()));
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.starts_with("Config options:"))
        .any(|l| l.split_whitespace().any(|w| w == "LVS"))
}

/// The value at fraction `p` (0..=1) of `values` (NaN when empty).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut s = values.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// Starts agents on fw1 (priority 200) and fw2 (priority 100) of
/// [`failover_lab`], each spec first shaped by `spec` (sync key, options).
pub fn start_pair(
    lab: &mut ha_lab::Lab,
    advert_ms: u64,
    spec: impl Fn(AgentSpec) -> AgentSpec,
) -> (RunningAgent, RunningAgent) {
    (
        RunningAgent::start(lab, "fw1", &spec(AgentSpec::new(1, 200, advert_ms))),
        RunningAgent::start(lab, "fw2", &spec(AgentSpec::new(2, 100, advert_ms))),
    )
}

/// Takes every link of `ns` in `links` down in one `ip -batch` (the
/// network side of a hard crash; the caller kills the processes).
pub fn links_down_at_once(lab: &ha_lab::Lab, ns: &str, links: &[&str]) {
    LinksDown::prepare(lab, ns, links).fire();
}

/// `ip -batch` started in advance, waiting for its script: [`LinksDown::fire`]
/// takes the links down within a fraction of a millisecond (starting the
/// process takes tens of milliseconds, which a crash timed to the
/// millisecond cannot wait for).
pub struct LinksDown {
    child: std::process::Child,
    script: String,
    ns: String,
}

impl LinksDown {
    pub fn prepare(lab: &ha_lab::Lab, ns: &str, links: &[&str]) -> LinksDown {
        let mut ip = lab.command(ns, &["ip", "-batch", "-"]);
        ip.stdin(std::process::Stdio::piped());
        let child = ip.spawn().expect("spawn ip -batch");
        let script = links
            .iter()
            .map(|l| format!("link set {l} down\n"))
            .collect();
        LinksDown {
            child,
            script,
            ns: ns.to_owned(),
        }
    }

    /// Takes the links down (returns once they are).
    pub fn fire(mut self) {
        use std::io::Write as _;
        self.child
            .stdin
            .take()
            .expect("stdin")
            .write_all(self.script.as_bytes())
            .expect("write ip -batch script");
        assert!(
            self.child.wait().expect("ip -batch").success(),
            "links down in {}",
            self.ns
        );
    }
}

/// A stateful firewall ruleset as operators run it, for both families (an
/// `inet` table), naming keepalived's `use_vmac` macvlans too (through
/// which its master receives and sends when the lab runs it with them):
/// established/related accepted, new connections only from the LAN, invalid dropped, strict TCP
/// tracking (`nf_conntrack_tcp_loose=0`, so a connection conntrack does not
/// know is not picked up mid-stream), ICMPv6 to the firewall accepted
/// (neighbour discovery: conntrack leaves NS and NA untracked, so no `ct
/// state` rule passes them). With `snat`, connections leaving on the
/// WAN are source-NATed to that address (the WAN VIP, so they survive a
/// failover).
pub fn stateful_firewall(lab: &ha_lab::Lab, fw: &str, snat: Option<std::net::Ipv4Addr>) {
    let mut rules = String::from(
        "table inet halab_fw {
  chain input {
    type filter hook input priority filter; policy drop;
    ct state invalid drop
    ct state established,related accept
    iifname \"lo\" accept
    iifname \"ha0\" accept
    ip protocol icmp accept
    meta l4proto ipv6-icmp accept
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state invalid counter drop
    ct state established,related accept
    iifname { \"lan0\", \"vrrp.lan0\" } oifname { \"wan0\", \"vrrp.wan0\" } ct state new accept
  }
}
",
    );
    if let Some(to) = snat {
        rules.push_str(&format!(
            "table ip halab_nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname {{ \"wan0\", \"vrrp.wan0\" }} snat to {to}
  }}
}}
"
        ));
    }
    lab.nft(fw, &rules).expect("load the firewall ruleset");
    // The ruleset loaded conntrack, so its sysctls exist now.
    lab.sysctl(fw, "net.netfilter.nf_conntrack_tcp_loose", "0")
        .expect("strict TCP tracking");
}

/// Connections in `ns`'s kernel conntrack whose original destination port is
/// `dport` (TCP), of both families (conntrack-tools 1.4.7 lists IPv4 and
/// IPv6 unless told `-f`).
pub fn conntrack_count(lab: &ha_lab::Lab, ns: &str, dport: u16) -> usize {
    let port = dport.to_string();
    lab.exec(ns, &["conntrack", "-L", "-p", "tcp", "--dport", &port])
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0)
}

/// A state-sync key file for a test, removed on drop (panics included).
#[derive(Debug)]
pub struct SyncKey(pub std::path::PathBuf);

impl SyncKey {
    pub fn new(tag: &str, key: [u8; 32]) -> Self {
        let path =
            std::env::temp_dir().join(format!("hatest-sync-key-{}-{tag}", std::process::id()));
        std::fs::write(&path, key).expect("write the sync key file");
        SyncKey(path)
    }

    /// The `[ha]` lines that turn state sync on with this key.
    pub fn ha_extra(&self) -> String {
        format!("sync_port = 7788\nsync_key_file = \"{}\"", self.0.display())
    }
}

impl Drop for SyncKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Every entry in `ns`'s kernel conntrack.
pub fn conntrack_total(lab: &ha_lab::Lab, ns: &str) -> usize {
    // All entries (`-C` takes no filter); the few of the lab's own traffic
    // are in the baseline taken before the churn.
    lab.exec(ns, &["conntrack", "-C"])
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

/// Sends `n` one-packet UDP flows from the client (10.0.0.10) to the server
/// (10.1.0.10) of [`failover_lab`] through the VIP gateway with a raw
/// socket: source ports 1024.. and destination port 20000 for the first
/// 60,000, 20001 for the next 60,000, and so on. Returns when the first and
/// the last went.
pub fn udp_churn(lab: &ha_lab::Lab, n: usize) -> (std::time::Instant, std::time::Instant) {
    lab.run_in("client", || {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh, valid descriptor.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let src = std::net::Ipv4Addr::new(10, 0, 0, 10);
        let dst = std::net::Ipv4Addr::new(10, 1, 0, 10);
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        let mut pkt = [0u8; 20 + 8 + 4];
        pkt[0] = 0x45;
        let len = pkt.len() as u16;
        pkt[2..4].copy_from_slice(&len.to_be_bytes());
        pkt[8] = 64;
        pkt[9] = 17;
        pkt[12..16].copy_from_slice(&src.octets());
        pkt[16..20].copy_from_slice(&dst.octets());
        pkt[24..26].copy_from_slice(&12u16.to_be_bytes());
        let start = std::time::Instant::now();
        for i in 0..n {
            let sport = 1024 + (i % 60_000) as u16;
            let dport = 20_000 + (i / 60_000) as u16;
            pkt[20..22].copy_from_slice(&sport.to_be_bytes());
            pkt[22..24].copy_from_slice(&dport.to_be_bytes());
            loop {
                // SAFETY: valid buffer and address for the call's duration.
                let r = unsafe {
                    libc::sendto(
                        std::os::fd::AsRawFd::as_raw_fd(&sock),
                        pkt.as_ptr().cast(),
                        pkt.len(),
                        0,
                        (&raw const to).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                if r >= 0 {
                    break;
                }
                // A full queue: wait for it to drain.
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
        (start, std::time::Instant::now())
    })
    .unwrap()
}

/// The configuration of conntrackd for firewall `me` (1 or 2) of
/// [`failover_lab`], written in `dir`: FTFW over UDP on the HA link,
/// `DisableExternalCache On` (it too writes straight into the backup's
/// kernel table), its cache holding `hash_limit` entries at most.
pub fn conntrackd_config(dir: &std::path::Path, me: u8, hash_limit: usize) -> std::path::PathBuf {
    let peer = 3 - me;
    let conf = format!(
        "Sync {{
    Mode FTFW {{
        DisableExternalCache On
    }}
    UDP {{
        IPv4_address 10.255.0.{me}
        IPv4_Destination_Address 10.255.0.{peer}
        Port 3780
        Interface ha0
        SndSocketBuffer 24985600
        RcvSocketBuffer 24985600
        Checksum on
    }}
}}
General {{
    HashSize 262144
    HashLimit {hash_limit}
    LogFile {log}
    LockFile {lock}
    UNIX {{
        Path {ctl}
    }}
    NetlinkBufferSize 33554432
    NetlinkBufferSizeMaxGrowth 67108864
    Filter From Kernelspace {{
        Address Ignore {{
            IPv4_address 127.0.0.1
            IPv4_address 10.255.0.1
            IPv4_address 10.255.0.2
        }}
    }}
}}
",
        hash_limit = hash_limit,
        log = dir.join(format!("conntrackd{me}.log")).display(),
        lock = dir.join(format!("conntrackd{me}.lock")).display(),
        ctl = dir.join(format!("conntrackd{me}.ctl")).display(),
    );
    let path = dir.join(format!("conntrackd{me}.conf"));
    std::fs::write(&path, conf).unwrap();
    path
}

/// What a returning backup's resync took.
#[derive(Debug, Clone, Copy)]
pub struct Resync {
    /// Entries in the master's table.
    pub flows: usize,
    /// Entries the backup had at the end (ha-agent: once it said it was in
    /// sync).
    pub got: usize,
    /// The backup had 99.9 % of the master's entries then (the lab's own
    /// few are not replicated), and (ha-agent) said it was in sync.
    pub complete: bool,
    /// Restart -> the backup's table at 99.9 % of the master's (s), or the
    /// limit.
    pub seconds: f64,
}

/// Whose replication a resync is timed of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncOf {
    Agent,
    /// conntrackd, configured by [`conntrackd_config`] in `dir`.
    Conntrackd,
}

/// Restarts the backup's replication (fw2 of [`failover_lab`]: its agent,
/// or its conntrackd) with its conntrack flushed, and times its return to
/// the master's table of `flows` entries.
pub fn time_resync(
    lab: &mut ha_lab::Lab,
    system: ResyncOf,
    a2: &mut RunningAgent,
    dir: &std::path::Path,
    flows: usize,
) -> Resync {
    let limit = std::time::Duration::from_secs(120);
    let goal = flows * 999 / 1000;
    let t;
    match system {
        ResyncOf::Agent => {
            a2.signal(libc::SIGKILL);
            std::thread::sleep(std::time::Duration::from_millis(200));
            let _ = lab.exec("fw2", &["conntrack", "-F"]);
            t = std::time::Instant::now();
            a2.restart(lab);
            // Timed as conntrackd's below: the backup's table at 99.9 % of
            // the master's (the status file, written every 500 ms, would
            // add its own delay); then it must also say it is in sync.
            while t.elapsed() < limit && conntrack_total(lab, "fw2") < goal {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let seconds = t.elapsed().as_secs_f64();
            while t.elapsed() < limit
                && !a2
                    .status()
                    .is_some_and(|s| s.pid == a2.pid && s.sync.is_some_and(|s| s.in_sync))
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let said = a2
                .status()
                .is_some_and(|s| s.pid == a2.pid && s.sync.is_some_and(|s| s.in_sync));
            let got = conntrack_total(lab, "fw2");
            return Resync {
                flows,
                got,
                complete: said && got * 1000 >= flows * 999,
                seconds,
            };
        }
        ResyncOf::Conntrackd => {
            let conf = dir.join("conntrackd2.conf");
            let conf = conf.to_str().unwrap();
            let _ = std::process::Command::new("pkill")
                .args(["-KILL", "-f", &format!("conntrackd -C {conf}")])
                .status();
            std::thread::sleep(std::time::Duration::from_millis(200));
            let _ = std::fs::remove_file(dir.join("conntrackd2.lock"));
            let _ = std::fs::remove_file(dir.join("conntrackd2.ctl"));
            let _ = lab.exec("fw2", &["conntrack", "-F"]);
            t = std::time::Instant::now();
            let cmd = lab.command("fw2", &["conntrackd", "-C", conf]);
            lab.spawn("fw2", cmd).unwrap();
            // Its resync request to the master (FTFW), once it is up.
            let start = std::time::Instant::now();
            while start.elapsed() < std::time::Duration::from_secs(10) {
                let asked = lab
                    .command("fw2", &["conntrackd", "-C", conf, "-n"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if asked {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let start = std::time::Instant::now();
            while start.elapsed() < limit && conntrack_total(lab, "fw2") < goal {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
    let seconds = t.elapsed().as_secs_f64();
    let got = conntrack_total(lab, "fw2");
    Resync {
        flows,
        got,
        complete: got * 1000 >= flows * 999,
        seconds,
    }
}

/// A replication lab: [`failover_lab`] with the stateful ruleset on both
/// firewalls (one-packet UDP flows kept 600 s instead of 30), the server
/// dropping [`udp_churn`] quietly, and agents at 100 ms adverts, fw1 MASTER
/// and fw2 BACKUP, with `ha_extra` in their `[ha]` (UDP 3780 open on the
/// HA link for conntrackd). With `replicating` (`ha_extra` turns state sync
/// on), returns once both are in sync; otherwise conntrackd runs on both
/// firewalls, configured in `dir` with a cache of `conntrackd_cache`.
pub fn replication_lab(
    ha_extra: &str,
    replicating: bool,
    dir: &std::path::Path,
    conntrackd_cache: usize,
) -> (ha_lab::Lab, RunningAgent, RunningAgent) {
    use std::time::Duration;
    let mut lab = failover_lab();
    for fw in ["fw1", "fw2"] {
        stateful_firewall(&lab, fw, None);
        lab.sysctl(fw, "net.netfilter.nf_conntrack_udp_timeout", "600")
            .unwrap();
    }
    // No ICMP port-unreachable storm from the churn.
    lab.nft(
        "server",
        "table inet churn {\n chain in {\n type filter hook input priority -10\n udp dport 20000-30000 drop\n }\n}\n",
    )
    .unwrap();
    let mgmt = vec!["tcp/22".to_owned(), "udp/3780".to_owned()];
    let (a1, a2) = start_pair(&mut lab, 100, |spec| AgentSpec {
        ha_extra: ha_extra.to_owned(),
        mgmt: mgmt.clone(),
        ..spec
    });
    wait_for("roles", Duration::from_secs(10), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
    if replicating {
        wait_for("in sync", Duration::from_secs(10), || {
            [&a1, &a2]
                .iter()
                .all(|a| a.status().and_then(|s| s.sync).is_some_and(|s| s.in_sync))
        });
    } else {
        std::fs::create_dir_all(dir).unwrap();
        for (ns, me) in [("fw1", 1), ("fw2", 2)] {
            let conf = conntrackd_config(dir, me, conntrackd_cache);
            let cmd = lab.command(ns, &["conntrackd", "-C", conf.to_str().unwrap()]);
            lab.spawn(ns, cmd).unwrap();
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    (lab, a1, a2)
}

/// Removes a test's node directory and its agents' status files and sockets
/// on drop (panics included). Declare it before the lab whose agents write
/// them, so the agents are gone first: a live agent writes its status again.
#[derive(Debug)]
pub struct NodeFiles(pub std::path::PathBuf, pub Vec<String>);

impl Drop for NodeFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        for f in self.1.iter().flat_map(|i| ha_agent::paths::run_files(i)) {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Merges the keys of `values` (an object) into `target/bench/<file>`:
/// objects key by key (so two benchmarks can each add to one object), other
/// values replaced. Each benchmark writes its own keys; none erases another's.
pub fn merge_bench_json(file: &str, values: serde_json::Value) {
    fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (slot, v) => *slot = v,
        }
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    let mut json: serde_json::Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    merge(&mut json, values);
    std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
}

/// The `i`th synthetic connection of a benchmark: UDP to the lab's server
/// (10.1.0.10:53) from `base` + `i / 16384` (an IPv4 address as a number),
/// port 1024 + `i % 16384`: 16,384 flows per source address.
pub fn synthetic_udp_flow(base: u32, i: usize) -> ha_agent::sync::record::Record {
    use ha_agent::sync::record::{Record, RecordKind};
    Record::plain(
        RecordKind::Upsert,
        17,
        0,
        std::net::Ipv4Addr::from(base + (i as u32 >> 14)),
        std::net::Ipv4Addr::new(10, 1, 0, 10),
        1024 + (i & 0x3fff) as u16,
        53,
    )
}
