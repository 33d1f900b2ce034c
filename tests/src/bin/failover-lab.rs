//! The failover lab behind `cargo xtask lab`: builds the lab of
//! docs/architecture.md, runs every scenario against ha-agent (and, with
//! `--compare keepalived`, keepalived + conntrackd in the same topology),
//! measures what clients see, prints a table, and writes JSON and an SVG
//! timeline. Everything it creates is removed at the end of each run,
//! failures included.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use ha_lab::{
    Lab,
    traffic::{
        ArpAnswer, Fleet, arp_sample, count_resets, echo_server, listen, ns_sample, resets_seen,
        udp_echo, udp_probe,
    },
};
use ha_tests::{
    AgentSpec, Family, Keepalived, RunningAgent, SyncKey, add_ipv6, agent_bin, conntrack_count,
    failover_lab, links_down_at_once, percentile, stateful_firewall,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    HardCrash,
    AgentCrash,
    Partition,
    Switchover,
    Graceful,
    Return,
    HostileSync,
    ControlFlood,
    PartitionSilent,
    LanCut,
    AllPathsCut,
    Stall,
    HostileVrrp,
    Soak,
    ProbeCost,
}

impl Scenario {
    /// The default list: the failovers. `hostile-sync`, `control-flood`
    /// (about 30 s a run each) and the path and election scenarios
    /// (`partition-silent`, `lan-cut`, `all-paths-cut`, `stall`,
    /// `hostile-vrrp`) are asked for by name.
    const ALL: [Scenario; 6] = [
        Scenario::HardCrash,
        Scenario::AgentCrash,
        Scenario::Partition,
        Scenario::Switchover,
        Scenario::Graceful,
        Scenario::Return,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::HardCrash => "hard-crash",
            Scenario::AgentCrash => "agent-crash",
            Scenario::Partition => "partition",
            Scenario::Switchover => "switchover",
            Scenario::Graceful => "graceful",
            Scenario::Return => "return",
            Scenario::HostileSync => "hostile-sync",
            Scenario::ControlFlood => "control-flood",
            Scenario::PartitionSilent => "partition-silent",
            Scenario::LanCut => "lan-cut",
            Scenario::AllPathsCut => "all-paths-cut",
            Scenario::Stall => "stall",
            Scenario::HostileVrrp => "hostile-vrrp",
            Scenario::Soak => "soak",
            Scenario::ProbeCost => "probe-cost",
        }
    }

    /// Role transitions the fault itself must cause, over both nodes (a
    /// node that is replaced by a new process is not counted: see
    /// [`Transitions`]); `None`: informational only (`stall`: the roles
    /// may move back and forth, the measure is dual ownership).
    fn expected_transitions(self, system: System) -> Option<u64> {
        Some(match (self, system) {
            // The backup takes over.
            (Scenario::HardCrash | Scenario::AgentCrash, _) => 1,
            // The master crashed long ago: the node that returns preempts
            // (once in sync), the survivor steps down.
            (Scenario::Return, _) => 2,
            // ha-agent: the peer is still heard on the LAN and WAN, losing
            // one path (the HA link, with or without carrier; or the LAN)
            // changes no role.
            (Scenario::Partition | Scenario::PartitionSilent | Scenario::LanCut, System::Agent) => {
                0
            }
            // keepalived hears its peer on the HA link only. Carrier lost
            // on fw1's ha0: fw1 enters FAULT, fw2 MASTER; carrier back: fw1
            // BACKUP then MASTER (preempts), fw2 BACKUP (counted in a run:
            // "Entering ..." lines in both logs).
            (Scenario::Partition, System::Keepalived) => 5,
            // Silent HA link: fw2 takes over, and steps down when it hears
            // fw1 again (keepalived has no other path).
            (Scenario::PartitionSilent, System::Keepalived) => 2,
            // keepalived sends no adverts on the LAN: nothing moves.
            (Scenario::LanCut, System::Keepalived) => 0,
            // A true partition: the backup takes over, one steps down after
            // the heal.
            (Scenario::AllPathsCut, _) => 2,
            // The master steps down (or stops), the backup takes over.
            (Scenario::Switchover | Scenario::Graceful, _) => 2,
            // Attacks must move nothing, nor must a saturated machine or idle
            // agents.
            (
                Scenario::HostileSync
                | Scenario::ControlFlood
                | Scenario::HostileVrrp
                | Scenario::Soak
                | Scenario::ProbeCost,
                _,
            ) => 0,
            (Scenario::Stall, _) => return None,
        })
    }

    /// The attacks on the sync and control channels (their agents get the
    /// control port and a cluster section).
    fn hostile(self) -> bool {
        matches!(self, Scenario::HostileSync | Scenario::ControlFlood)
    }

    /// Scenarios whose transitions are attributed in the notes.
    fn attack(self) -> bool {
        self.hostile() || self == Scenario::HostileVrrp
    }

    /// Both nodes run to the end of the scenario (in sync afterwards).
    fn both_run(self) -> bool {
        matches!(
            self,
            Scenario::Switchover
                | Scenario::Partition
                | Scenario::Return
                | Scenario::PartitionSilent
                | Scenario::LanCut
                | Scenario::AllPathsCut
                | Scenario::Stall
                | Scenario::HostileVrrp
                | Scenario::Soak
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Agent,
    Keepalived,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Agent => "ha-agent",
            System::Keepalived => "keepalived",
        }
    }
}

/// The failover lab: scenarios, measured as clients see them.
#[derive(Debug, Parser)]
struct Args {
    /// Scenarios to run (repeatable); by default the six failovers
    /// (the attacks and the path and election scenarios run only when
    /// named).
    #[arg(long, value_enum)]
    scenario: Vec<Scenario>,
    /// Runs per scenario and system.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// VRRP advert interval (ms), for both systems.
    #[arg(long, default_value_t = 10)]
    adv_ms: u64,
    /// Long-lived TCP connections through the VIP gateway in each run.
    #[arg(long, default_value_t = 200)]
    tcp: usize,
    /// Also run keepalived + conntrackd (`keepalived`), or not (`none`).
    #[arg(long, default_value = "keepalived", value_parser = ["keepalived", "none"])]
    compare: String,
    /// Where to write the JSON report (the SVG goes next to it).
    #[arg(long, default_value = "target/lab/report.json")]
    json: PathBuf,
    /// Build the lab with both agents running and leave it up.
    #[arg(long)]
    up: bool,
    /// How the firewalls' data interfaces and the lab's data switches are
    /// polled: `threaded` (kernel threads at nice -20: the agent's default,
    /// `[ha.napi]`) or `softirq` (the agents get `threaded = false` and the
    /// switch ports are left in softirq; keepalived's firewalls are never
    /// threaded), to measure what threaded NAPI costs and buys.
    #[arg(long, default_value = "threaded", value_parser = ["threaded", "softirq"])]
    napi: String,
    /// `soak`: seconds of saturated CPUs and full-rate forwarding.
    #[arg(long, default_value_t = 600)]
    soak_s: u64,
    /// `probe-cost`: seconds measured with the fast heartbeat on, and again
    /// with it off.
    #[arg(long, default_value_t = 30)]
    probe_cost_s: u64,
    /// ha-agent answers for the VIPs with the VRRP virtual MAC (`vmac =
    /// true`), and the client's and server's neighbour entries for their
    /// gateway VIP are static, set to it (nothing an announcement says can
    /// move them): `static_neighbor_ok` per scenario. keepalived gets
    /// `use_vmac`, which puts the virtual MAC on the interface it sends
    /// adverts on: two instances in a sync group, advertising on the LAN
    /// and the WAN (not on the HA link as without it).
    #[arg(long)]
    vmac: bool,
    /// The VIPs' address family: `ipv4` (instance VI_1), `ipv6` (VI_6, VRRP
    /// over IPv6 on the HA link, VIPs fe80::1 and fd00::1 on the LAN,
    /// fd00:1::1 on the WAN) or `dual` (both instances in one group). With
    /// IPv6 the probes, the neighbour sampler (Neighbor Solicitations for
    /// the client's gateway fe80::1 instead of ARP) and the TCP
    /// connections use IPv6 (client fd00::10 to server fd00:1::10); with
    /// `dual` IPv6 is the family under test and the IPv4 gateway probe and
    /// ARP sampler run beside it (`ipv4_outage_ms_max`,
    /// `ipv4_dual_owner_ms`). The failover scenarios only (not the attacks,
    /// soak or probe-cost, whose traffic is IPv4's); not with `--vmac`.
    #[arg(long, default_value = "ipv4", value_parser = ["ipv4", "ipv6", "dual"])]
    family: String,
}

/// One run's measurements.
#[derive(Debug, Clone, Default)]
struct Run {
    recovered: bool,
    /// Longest gap between answers through the VIP gateway (ms).
    outage_ms: f64,
    /// Longest gap between answers of the service on the VIP itself (ms).
    outage_vip_ms: f64,
    tcp_total: usize,
    tcp_survived: usize,
    rsts: u64,
    dual_owner_ms: f64,
    /// A fresh client resolved the VIP by ARP after the fault.
    arp_ok: bool,
    /// Connections in the backup's conntrack before the fault.
    flows_replicated: usize,
    /// Answers through the gateway, ms relative to the fault (timeline).
    answers_ms: Vec<f64>,
    /// Role transitions beyond the ones the fault must cause
    /// ([`Scenario::expected_transitions`]); `None`: not measurable.
    unexpected_transitions: Option<u64>,
    /// The backup's state sync works after the scenario (see
    /// [`one_run`]); `None`: not applicable (no peer left) or not exposed.
    in_sync_after: Option<bool>,
    /// The control surfaces answered during and after the scenario;
    /// `None`: the system has none.
    control_ok: Option<bool>,
    /// `all-paths-cut`: from the heal until a single owner remained (roles
    /// and ARP answers for the VIP), ms; `None`: not measured, or never.
    converged_ms: Option<f64>,
    /// `all-paths-cut`: after the heal, the client's and the server's
    /// neighbour entries for the VIPs point to the final master's MACs.
    vips_reannounced: Option<bool>,
    /// `--vmac`: traffic through the gateway came back with the client's
    /// and server's static neighbour entries (the virtual MAC); `None`:
    /// not run with it.
    static_neighbor_ok: Option<bool>,
    /// `--family dual`: the IPv4 gateway probe's longest gap (ms), beside
    /// the IPv6 one in `outage_ms`.
    ipv4_outage_ms: Option<f64>,
    /// `--family dual`: the ARP sampler's dual ownership (ms), beside the
    /// NS sampler's in `dual_owner_ms`.
    ipv4_dual_owner_ms: Option<f64>,
    /// The scenario does not apply to the system (no row figures).
    na: bool,
    /// ha-agent, after a takeover: the reason of the new master's last
    /// transition to MASTER during the run (`MasterDown`, `PeerSilent`,
    /// `PeerLapsed`, ...): which detector fired. `None`: no takeover, or
    /// keepalived.
    detected_by: Option<String>,
    /// ha-agent, after a fast-heartbeat takeover: how long the peer had
    /// been silent (since its last probe reply) when the verdict came, ms.
    detection_ms: Option<f64>,
    /// `soak`: its measurements (the JSON report's `soak`).
    soak: Option<serde_json::Value>,
    /// `probe-cost`: its measurements (the JSON report's `probe_cost`).
    probe_cost: Option<serde_json::Value>,
    notes: Vec<String>,
}

fn longest_gap(answers: &[Instant], from: Instant, to: Instant) -> f64 {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for &a in answers.iter().filter(|a| **a >= from && **a <= to) {
        gap = gap.max(a.saturating_duration_since(last));
        last = a;
    }
    gap = gap.max(to.saturating_duration_since(last));
    gap.as_secs_f64() * 1e3
}

/// The systems' processes on one firewall.
enum Node {
    Agent(RunningAgent),
    Keepalived(Keepalived, u32),
}

fn conntrackd_conf(dir: &std::path::Path, me: u8) -> PathBuf {
    let peer = 3 - me;
    let p = |f: &str| dir.join(format!("{f}{me}")).display().to_string();
    let conf = format!(
        "Sync {{\n Mode FTFW {{\n }}\n UDP {{\n  IPv4_address 10.255.0.{me}\n  IPv4_Destination_Address 10.255.0.{peer}\n  Port 3780\n  Interface ha0\n  Checksum on\n }}\n}}\nGeneral {{\n HashSize 32768\n HashLimit 131072\n LogFile {log}\n LockFile {lock}\n UNIX {{\n  Path {ctl}\n }}\n NetlinkBufferSize 2097152\n NetlinkBufferSizeMaxGrowth 8388608\n Filter From Kernelspace {{\n  Address Ignore {{\n   IPv4_address 127.0.0.1\n   IPv4_address 10.255.0.1\n   IPv4_address 10.255.0.2\n  }}\n }}\n}}\n",
        log = p("conntrackd.log."),
        lock = p("conntrackd.lock."),
        ctl = p("conntrackd.ctl."),
    );
    let path = dir.join(format!("conntrackd{me}.conf"));
    std::fs::write(&path, conf).expect("write conntrackd.conf");
    path
}

/// `--napi softirq`: the agents' data interfaces and the lab's switch
/// ports stay in softirq (set once by `main`).
static NAPI_SOFTIRQ: AtomicBool = AtomicBool::new(false);

/// `--vmac` (set once by `main`).
static VMAC: AtomicBool = AtomicBool::new(false);

/// `--family` (set once by `main`).
static FAMILY: OnceLock<Family> = OnceLock::new();

/// The VIPs' family of this lab (`--family`).
fn family() -> Family {
    FAMILY.get().copied().unwrap_or_default()
}

/// The addresses the probes use, of the family under test (IPv6 for
/// `ipv6` and `dual`).
#[derive(Debug, Clone, Copy)]
struct Addrs {
    /// The service on the firewall listens here (a global VIP).
    lan_vip: IpAddr,
    /// The client's gateway, whose neighbour entry a takeover must move:
    /// the LAN VIP, or over IPv6 the virtual router's link-local VIP
    /// fe80::1 (RFC 9568), as hosts learn it from router advertisements.
    lan_gateway: IpAddr,
    wan_vip: IpAddr,
    server: IpAddr,
}

fn addrs() -> Addrs {
    if family().has_v6() {
        let p = |s: &str| s.parse::<Ipv6Addr>().expect("lab IPv6 address").into();
        Addrs {
            lan_vip: p(ha_tests::LAN_VIP6),
            lan_gateway: p(ha_tests::LAN_LINK_LOCAL_VIP),
            wan_vip: p(ha_tests::WAN_VIP6),
            server: p(ha_tests::SERVER6),
        }
    } else {
        Addrs::V4
    }
}

impl Addrs {
    const V4: Addrs = Addrs {
        lan_vip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        lan_gateway: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        wan_vip: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)),
        server: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 10)),
    };
}

/// Whether this run of `system` uses the virtual MAC and static neighbours
/// (`--vmac`: both systems, keepalived with `use_vmac`).
fn vmac_for(_system: System) -> bool {
    VMAC.load(Ordering::Relaxed)
}

/// Starts the system on `fw` (node 1 or 2).
fn start(
    lab: &mut Lab,
    system: System,
    scenario: Scenario,
    node: u8,
    adv_ms: u64,
    key: &SyncKey,
    dir: &std::path::Path,
) -> Node {
    let fw = format!("fw{node}");
    let prio = if node == 1 { 200 } else { 100 };
    match system {
        System::Agent => {
            let mut spec = AgentSpec {
                ha_extra: key.ha_extra(),
                napi_softirq: NAPI_SOFTIRQ.load(Ordering::Relaxed),
                vmac: vmac_for(system),
                family: family(),
                ..AgentSpec::new(node, prio, adv_ms)
            };
            if scenario.hostile() {
                // The cluster control channel: fw2 is the secondary of a
                // cluster whose primary is fw1 (fw1 has no [cluster]
                // section, so it pushes nothing that could reload fw2
                // mid-run); the HA link lets the control port through, as
                // an operator must configure it today.
                spec.mgmt.push(format!("tcp/{CONTROL_PORT}"));
                if node == 2 {
                    spec.tail = format!(
                        "[cluster]\nrole = \"secondary\"\nprimary = \"10.255.0.1\"\npriority = {prio}\ncontrol_port = {CONTROL_PORT}\n"
                    );
                }
            }
            let agent = RunningAgent::start(lab, &fw, &spec);
            service_limits(agent.pid);
            Node::Agent(agent)
        }
        System::Keepalived => {
            let conf = conntrackd_conf(dir, node);
            let c = conf.display();
            // conntrackd's primary-backup.sh, as operators deploy it.
            let on_state = format!(
                "case \"$3\" in\n MASTER) conntrackd -C {c} -c; conntrackd -C {c} -f; conntrackd -C {c} -R; conntrackd -C {c} -B ;;\n BACKUP) conntrackd -C {c} -n ;;\n FAULT) conntrackd -C {c} -t; conntrackd -C {c} -n ;;\nesac"
            );
            let mut cmd = lab.command(
                &fw,
                &["conntrackd", "-C", conf.to_str().unwrap_or_default()],
            );
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let ctd = lab.spawn(&fw, cmd).expect("start conntrackd");
            std::thread::sleep(Duration::from_millis(200));
            let k = Keepalived::start_with(
                lab,
                &fw,
                node,
                prio,
                adv_ms,
                &ha_tests::KeepalivedOptions {
                    on_state,
                    vmac: VMAC.load(Ordering::Relaxed),
                    family: family(),
                    ..Default::default()
                },
            );
            Node::Keepalived(k, ctd)
        }
    }
}

impl Node {
    fn role(&self) -> Option<String> {
        match self {
            Node::Agent(a) => a.role(),
            Node::Keepalived(k, _) => k.state(),
        }
    }

    fn in_sync(&self) -> bool {
        match self {
            Node::Agent(a) => a.status().and_then(|s| s.sync).is_some_and(|s| s.in_sync),
            Node::Keepalived(..) => true,
        }
    }

    /// Role transitions so far: the agent's `transitions_total` (asked live
    /// over its operator socket, else its status file), or the "Entering
    /// ... STATE" lines in keepalived's log.
    fn transitions(&self) -> Option<u64> {
        match self {
            Node::Agent(a) => live_status(&a.pins.0, Duration::from_secs(2))
                .or_else(|| a.status())
                .map(|s| s.transitions_total),
            Node::Keepalived(k, _) => Some(k.states().len() as u64),
        }
    }

    /// SIGKILL of the HA daemons (with `all`, conntrackd too).
    fn kill(&self, all: bool) {
        match self {
            Node::Agent(a) => a.signal(libc::SIGKILL),
            Node::Keepalived(k, ctd) => {
                k.signal(libc::SIGKILL);
                if all {
                    // SAFETY: plain kill(2) of a process we started.
                    unsafe { libc::kill(*ctd as i32, libc::SIGKILL) };
                }
            }
        }
    }

    fn stop(&self) {
        match self {
            Node::Agent(a) => a.signal(libc::SIGTERM),
            Node::Keepalived(k, _) => k.signal(libc::SIGTERM),
        }
    }

    /// The process that runs the election: the agent (all its threads), or
    /// keepalived's VRRP child (its `--vrrp_pid` file; the parent only
    /// watches it).
    fn election_pid(&self) -> Option<i32> {
        match self {
            Node::Agent(a) => Some(a.pid as i32),
            Node::Keepalived(k, _) => std::fs::read_to_string(k.dir.join("v.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        }
    }
}

/// 5 ms slots in `[from, to)` in which two nodes answered ARP for the VIP
/// (two MACs, or two answers to one request: with a virtual MAC every owner
/// names the same one): the start of each.
fn dual_slots(arp: &[ArpAnswer], from: Instant, to: Instant) -> Vec<Instant> {
    let slot = Duration::from_millis(5);
    let index = |t: Instant| (t.duration_since(from).as_nanos() / slot.as_nanos()) as u64;
    let mut slots = std::collections::BTreeMap::<u64, std::collections::BTreeSet<[u8; 6]>>::new();
    let mut twice = std::collections::BTreeSet::<u64>::new();
    let mut answered = std::collections::HashSet::<u64>::new();
    for a in arp.iter().filter(|a| a.at >= from && a.at < to) {
        slots.entry(index(a.at)).or_default().insert(a.mac);
        if !answered.insert(a.request) {
            twice.insert(index(a.at));
        }
    }
    slots
        .into_iter()
        .filter(|(i, m)| m.len() > 1 || twice.contains(i))
        .map(|(i, _)| from + slot * i as u32)
        .collect()
}

/// Exactly one node MASTER, the other BACKUP.
fn single_master(n1: &Node, n2: &Node) -> bool {
    let roles = [n1.role(), n2.role()];
    let is = |r: &Option<String>, w: &str| r.as_deref() == Some(w);
    (is(&roles[0], "MASTER") && is(&roles[1], "BACKUP"))
        || (is(&roles[0], "BACKUP") && is(&roles[1], "MASTER"))
}

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("timed out waiting for {what}"))
}

/// The lab for one run: the failover lab, a fresh-client namespace, the
/// stateful ruleset, services on the VIP and on the server. The hostile
/// scenarios add an attacker on the HA segment (`rogue`, 10.255.0.9) and,
/// for `control-flood`, a fresh node waiting to be joined (`joiner`,
/// 10.0.0.30 on the LAN and 10.255.0.30 on the HA segment).
fn build_lab(scenario: Scenario) -> Lab {
    let mut lab = failover_lab();
    if NAPI_SOFTIRQ.load(Ordering::Relaxed) {
        for (bridge, ports) in ha_tests::DATA_SWITCH_PORTS {
            for port in ports {
                lab.unthread_napi((bridge, port))
                    .expect("switch port back to softirq");
            }
        }
    }
    lab.add_netns("probe").expect("probe namespace");
    lab.add_bridge_port("lan", ("probe", "eth0"))
        .expect("probe port");
    lab.add_addr(("probe", "eth0"), "10.0.0.20/24")
        .expect("probe address");
    if family().has_v6() {
        add_ipv6(&lab);
        lab.ip(
            "probe",
            "probe IPv6 address",
            &["-6", "addr", "add", "fd00::20/64", "dev", "eth0", "nodad"],
        )
        .expect("probe IPv6 address");
    }
    for fw in ["fw1", "fw2"] {
        stateful_firewall(&lab, fw, None);
        // The service on the VIP (a DNS forwarder, a VPN endpoint).
        lab.nft(fw, "add rule inet halab_fw input udp dport 5353 accept\n")
            .expect("service rule");
    }
    for ns in ["client", "server"] {
        count_resets(&lab, ns).expect("reset counter");
    }
    if scenario.attack() {
        lab.add_netns("rogue").expect("rogue namespace");
        lab.add_bridge_port("hasw", ("rogue", "eth0"))
            .expect("rogue port");
        lab.add_addr(("rogue", "eth0"), "10.255.0.9/24")
            .expect("rogue address");
        // The attacker sends from the peers' addresses: pinned neighbours,
        // so its kernel never asks ARP with a spoofed sender address (that
        // would poison the firewalls' neighbour entries, a different
        // attack than the one measured here).
        for (fw, ip) in [("fw1", "10.255.0.1"), ("fw2", "10.255.0.2")] {
            let mac = lab.mac((fw, "ha0")).expect("HA MAC");
            lab.ip(
                "rogue",
                "pin a neighbour in rogue",
                &[
                    "neigh",
                    "replace",
                    ip,
                    "lladdr",
                    &mac,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ],
            )
            .expect("pin neighbour");
        }
    }
    if scenario == Scenario::HostileVrrp {
        // An attacker on the LAN too (it sends whole frames from a packet
        // socket: no address needed).
        lab.add_netns("roguelan").expect("roguelan namespace");
        lab.add_bridge_port("lan", ("roguelan", "eth0"))
            .expect("roguelan port");
    }
    if scenario == Scenario::ControlFlood {
        lab.add_netns("joiner").expect("joiner namespace");
        lab.add_bridge_port("lan", ("joiner", "eth0"))
            .expect("joiner LAN port");
        lab.add_addr(("joiner", "eth0"), "10.0.0.30/24")
            .expect("joiner LAN address");
        lab.add_bridge_port("hasw", ("joiner", "eth1"))
            .expect("joiner HA port");
        lab.add_addr(("joiner", "eth1"), "10.255.0.30/24")
            .expect("joiner HA address");
        // A LAN host tries the firewalls' HA addresses too (through fw2).
        lab.add_route("probe", "10.255.0.0/24", "10.0.0.3")
            .expect("probe route to the HA segment");
    }
    lab
}

fn one_run(system: System, scenario: Scenario, a: &Args) -> Run {
    if scenario == Scenario::ProbeCost {
        return probe_cost(system, a);
    }
    if system == System::Keepalived && scenario == Scenario::ControlFlood {
        return Run {
            na: true,
            notes: vec!["n/a: keepalived has no control or join port".into()],
            ..Run::default()
        };
    }
    let mut lab = build_lab(scenario);
    if vmac_for(system) {
        ha_tests::survival::gateways_on_the_virtual_mac(&lab);
    }
    let dir = std::env::temp_dir().join(format!("hatest-lab-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let key = SyncKey::new("lab", [11u8; 32]);
    let adv = a.adv_ms;
    let mdi = Duration::from_millis(3 * adv + adv);
    let n1 = start(&mut lab, system, scenario, 1, adv, &key, &dir);
    let n2 = start(&mut lab, system, scenario, 2, adv, &key, &dir);
    let mut run = Run::default();
    let setup = wait("fw1 MASTER, fw2 BACKUP", Duration::from_secs(20), || {
        n1.role().as_deref() == Some("MASTER") && n2.role().as_deref() == Some("BACKUP")
    })
    .and_then(|()| {
        wait("state sync", Duration::from_secs(10), || {
            n1.in_sync() && n2.in_sync()
        })
    });
    if let Err(e) = setup {
        run.notes.push(e);
        return run;
    }
    let joiner = (scenario == Scenario::ControlFlood)
        .then(|| Joiner::start(&mut lab, &dir))
        .and_then(|j| j.map_err(|e| run.notes.push(e)).ok());
    // Transitions so far: what the scenario adds is compared with what its
    // fault must cause.
    let base = [n1.transitions(), n2.transitions()];
    // fw2's sync daemon restarted by `hostile-sync`: its transitions before
    // the restart.
    let mut restarted: Option<u64> = None;
    // `stall`: (duration ms, stalled node, when it was stopped).
    let mut stalls: Vec<(u64, u8, Instant)> = Vec::new();
    // `all-paths-cut`: the heal, and when the roles showed a single master.
    let mut healed: Option<(Instant, Option<Instant>)> = None;
    // `soak`: its window (start, end), for the client outage during it.
    let mut soak_window: Option<(Instant, Instant)> = None;
    let stop = AtomicBool::new(false);
    let limit = Duration::from_secs(60)
        + if scenario == Scenario::Soak {
            Duration::from_secs(a.soak_s + 30)
        } else {
            Duration::ZERO
        };
    let lab_ref = &lab;
    // The family under test's addresses (IPv6 for `ipv6` and `dual`); with
    // `dual`, IPv4's gateway probe runs beside them.
    let at = addrs();
    let dual = family() == Family::Dual;
    let server_tcp = SocketAddr::new(at.server, 9001);
    let listener = lab
        .run_in("server", || listen(server_tcp))
        .unwrap()
        .expect("listen");
    let usock = lab
        .run_in("server", || UdpSocket::bind((at.server, 9000)))
        .unwrap()
        .expect("udp");
    let usock4 = dual.then(|| {
        lab.run_in("server", || UdpSocket::bind((Addrs::V4.server, 9000)))
            .unwrap()
            .expect("udp (IPv4)")
    });
    // Bound to the VIP (so answers come from it), freebind: keepalived's
    // backup does not have the address yet.
    let vip_socket = || -> std::io::Result<UdpSocket> {
        let vip = SocketAddr::new(at.lan_vip, 5353);
        let s = socket2::Socket::new(
            socket2::Domain::for_address(vip),
            socket2::Type::DGRAM,
            None,
        )?;
        if vip.is_ipv6() {
            s.set_freebind_ipv6(true)?;
        } else {
            s.set_freebind(true)?;
        }
        s.bind(&vip.into())?;
        Ok(s.into())
    };
    let vsock1 = lab.run_in("fw1", vip_socket).unwrap().expect("udp fw1");
    let vsock2 = lab.run_in("fw2", vip_socket).unwrap().expect("udp fw2");
    std::thread::scope(|s| {
        s.spawn(|| echo_server(listener, &stop, limit));
        s.spawn(|| udp_echo(usock, &stop, limit));
        if let Some(u) = usock4 {
            s.spawn(|| udp_echo(u, &stop, limit));
        }
        s.spawn(|| udp_echo(vsock1, &stop, limit));
        s.spawn(|| udp_echo(vsock2, &stop, limit));
        // The TCP fleet, opened before the probes.
        let mut fleet = lab_ref
            .run_in("client", || {
                let mut f = Fleet::default();
                let _ = f.open(server_tcp, a.tcp, Duration::from_secs(5));
                f.round(0, Duration::from_secs(5));
                f
            })
            .unwrap();
        run.tcp_total = fleet.len();
        if system == System::Agent {
            let _ = wait("replication", Duration::from_secs(5), || {
                conntrack_count(lab_ref, "fw2", 9001) >= run.tcp_total
            });
        } else {
            std::thread::sleep(Duration::from_millis(500));
        }
        run.flows_replicated = conntrack_count(lab_ref, "fw2", 9001);
        if scenario == Scenario::Return {
            // The old master crashed a while ago; the peer serves.
            links_down_at_once(lab_ref, "fw1", &["ha0", "lan0", "wan0"]);
            n1.kill(true);
            let _ = wait("fw2 MASTER", Duration::from_secs(10), || {
                n2.role().as_deref() == Some("MASTER")
            });
            for l in ["ha0", "lan0", "wan0"] {
                let _ = lab_ref.link_up(("fw1", l));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let gw = s.spawn(|| {
            lab_ref
                .run_in("client", || {
                    udp_probe(
                        SocketAddr::new(at.server, 9000),
                        Duration::from_millis(1),
                        &stop,
                        limit,
                    )
                })
                .unwrap()
                .unwrap_or_default()
        });
        let gw4 = dual.then(|| {
            s.spawn(|| {
                lab_ref
                    .run_in("client", || {
                        udp_probe(
                            SocketAddr::new(Addrs::V4.server, 9000),
                            Duration::from_millis(1),
                            &stop,
                            limit,
                        )
                    })
                    .unwrap()
                    .unwrap_or_default()
            })
        });
        let vip = s.spawn(|| {
            lab_ref
                .run_in("client", || {
                    udp_probe(
                        SocketAddr::new(at.lan_vip, 5353),
                        Duration::from_millis(1),
                        &stop,
                        limit,
                    )
                })
                .unwrap()
                .unwrap_or_default()
        });
        let arp4 = || {
            lab_ref
                .run_in("probe", || {
                    arp_sample(
                        "eth0",
                        // 10.0.0.100-163, not the probe's address
                        // (10.0.0.20): its kernel's ARP (the fresh-client
                        // ping) is not sampled.
                        Ipv4Addr::new(10, 0, 0, 100),
                        Ipv4Addr::new(10, 0, 0, 1),
                        Duration::from_millis(5),
                        &stop,
                        limit,
                    )
                })
                .unwrap()
                .unwrap_or_default()
        };
        // Who answers for the client's gateway: ARP for 10.0.0.1, or
        // neighbour discovery for fe80::1 (one solicitation every 5 ms,
        // from fd00::100-13f, not the probe's address fd00::20, as ARP's).
        let stop_ref = &stop;
        let arp = s.spawn(move || match at.lan_gateway {
            IpAddr::V4(_) => arp4(),
            IpAddr::V6(vip) => lab_ref
                .run_in("probe", || {
                    ns_sample(
                        "eth0",
                        "fd00::100".parse().expect("address"),
                        vip,
                        Duration::from_millis(5),
                        stop_ref,
                        limit,
                    )
                })
                .unwrap()
                .unwrap_or_default(),
        });
        let arp_v4 = dual.then(|| s.spawn(arp4));
        std::thread::sleep(Duration::from_millis(300));
        let fault = Instant::now();
        let settle = Duration::from_millis(1500) + 4 * mdi;
        let mut returned: Vec<std::process::Child> = Vec::new();
        match scenario {
            Scenario::HardCrash => {
                links_down_at_once(lab_ref, "fw1", &["ha0", "lan0", "wan0"]);
                n1.kill(true);
                std::thread::sleep(settle);
            }
            Scenario::AgentCrash => {
                n1.kill(false);
                std::thread::sleep(settle);
            }
            Scenario::Partition => {
                let _ = lab_ref.link_down(("fw1", "ha0"));
                std::thread::sleep(Duration::from_secs(1));
                let _ = lab_ref.link_up(("fw1", "ha0"));
                std::thread::sleep(settle);
            }
            Scenario::Switchover => match system {
                System::Agent => {
                    let Node::Agent(agent) = &n1 else {
                        unreachable!()
                    };
                    let out = lab_ref
                        .command(
                            "fw1",
                            &[
                                agent_bin().to_str().unwrap_or_default(),
                                "demote",
                                "--instance",
                                &agent.pins.0,
                            ],
                        )
                        .output();
                    if !out.is_ok_and(|o| o.status.success()) {
                        run.notes.push("demote failed".into());
                    }
                    std::thread::sleep(settle);
                }
                System::Keepalived => {
                    // keepalived has no planned switchover: its nearest is a
                    // graceful stop.
                    run.notes
                        .push("no switchover command: graceful stop instead".into());
                    n1.stop();
                    std::thread::sleep(settle);
                }
            },
            Scenario::Graceful => {
                n1.stop();
                std::thread::sleep(settle);
            }
            Scenario::Return => {
                // It comes back; it may preempt only once in sync.
                returned = respawn(lab_ref, &n1, &dir);
                std::thread::sleep(settle + Duration::from_secs(2));
            }
            Scenario::HostileSync => {
                let h = hostile_sync(lab_ref, system, &n2, &dir, &mut run);
                returned = h.children;
                restarted = Some(
                    h.before_restart
                        .zip(base[1])
                        .map_or(0, |(b, a)| b.saturating_sub(a)),
                );
                std::thread::sleep(Duration::from_millis(500));
            }
            Scenario::ControlFlood => {
                control_flood(lab_ref, &n1, &n2, joiner.as_ref(), &key, &mut run);
                std::thread::sleep(Duration::from_millis(500));
            }
            Scenario::PartitionSilent | Scenario::LanCut => {
                let bridge = if scenario == Scenario::LanCut {
                    ("lan", "lan0")
                } else {
                    ("hasw", "ha0")
                };
                cut_for(lab_ref, &[bridge], Duration::from_secs(1), &mut run);
                std::thread::sleep(settle);
            }
            Scenario::AllPathsCut => {
                let paths = [("hasw", "ha0"), ("lan", "lan0"), ("wan", "wan0")];
                let heal = cut_for(lab_ref, &paths, Duration::from_secs(1), &mut run);
                let single = wait("a single master", settle, || single_master(&n1, &n2))
                    .ok()
                    .map(|()| Instant::now());
                healed = Some((heal, single));
                std::thread::sleep(settle.saturating_sub(heal.elapsed()));
                run.vips_reannounced = vips_reannounced(lab_ref, &n1, &n2, &mut run.notes);
            }
            Scenario::Stall => {
                stalls = stall(&n1, &n2, &mut run);
            }
            Scenario::HostileVrrp => {
                hostile_vrrp(lab_ref, a.adv_ms, &n1, &n2, &mut run);
                std::thread::sleep(Duration::from_millis(500));
            }
            Scenario::Soak => {
                soak_window = Some(soak(lab_ref, &n1, &n2, a, &mut run));
                std::thread::sleep(Duration::from_millis(500));
            }
            // Measured by `probe_cost` (returned above).
            Scenario::ProbeCost => {}
        }
        match (system, scenario) {
            (_, Scenario::HostileSync | Scenario::ControlFlood) => {}
            (System::Agent, s) if s.both_run() => {
                // Both nodes run: the pair is back in sync.
                run.in_sync_after = Some(
                    wait("in sync", Duration::from_secs(5), || {
                        n1.in_sync() && n2.in_sync()
                    })
                    .is_ok(),
                );
                run.control_ok = Some(operator_socket_ok(&n1) && operator_socket_ok(&n2));
            }
            (System::Agent, _) => {
                // No sync peer left (crashed or stopped master): in_sync
                // does not apply; the survivor's operator socket answers.
                run.control_ok = Some(operator_socket_ok(&n2));
            }
            (System::Keepalived, _) => {}
        }
        // A fresh client must resolve the VIP by ARP now.
        let vip_text = at.lan_vip.to_string();
        run.arp_ok = lab_ref
            .command("probe", &["ping", "-c", "1", "-W", "1", &vip_text])
            .output()
            .is_ok_and(|o| o.status.success());
        run.tcp_survived = lab_ref
            .run_in("client", || fleet.round(1, Duration::from_secs(5)))
            .unwrap();
        run.rsts = fleet.resets as u64
            + resets_seen(lab_ref, "client").unwrap_or(0)
            + resets_seen(lab_ref, "server").unwrap_or(0);
        if scenario == Scenario::Soak {
            // iperf3's own resets (its connections torn down at the end)
            // are not the fleet's.
            let iperf = iperf_resets(lab_ref);
            run.rsts = run.rsts.saturating_sub(iperf);
            if let Some(v) = run.soak.as_mut() {
                v["iperf3_rsts"] = serde_json::json!(iperf);
            }
        }
        let end = Instant::now();
        stop.store(true, Ordering::Relaxed);
        let gw = gw.join().unwrap_or_default();
        let vip = vip.join().unwrap_or_default();
        let arp = arp.join().unwrap_or_default();
        if arp.is_empty() {
            // No answer at all is a sampler that did not work (the VIP is
            // answered for before the fault), not a clean record.
            run.notes.push(format!(
                "the {} sampler got no answers: dual ownership not measured",
                if at.lan_gateway.is_ipv6() {
                    "NS"
                } else {
                    "ARP"
                }
            ));
        }
        if let Some(gw4) = gw4 {
            let gw4 = gw4.join().unwrap_or_default();
            run.ipv4_outage_ms = Some(longest_gap(&gw4, fault - Duration::from_millis(50), end));
        }
        if let Some(arp_v4) = arp_v4 {
            let arp_v4 = arp_v4.join().unwrap_or_default();
            run.ipv4_dual_owner_ms = Some(dual_slots(&arp_v4, fault, end).len() as f64 * 5.0);
        }
        if std::env::var_os("HATEST_DEBUG").is_some() {
            eprintln!(
                "answers: gateway {} vip {} arp {}",
                gw.len(),
                vip.len(),
                arp.len()
            );
        }
        let from = fault - Duration::from_millis(50);
        run.outage_ms = longest_gap(&gw, from, end);
        run.outage_vip_ms = longest_gap(&vip, from, end);
        if let (Some((s0, s1)), Some(v)) = (soak_window, run.soak.as_mut()) {
            v["outage_max_ms"] = serde_json::json!(longest_gap(&gw, s0, s1));
            v["outage_vip_max_ms"] = serde_json::json!(longest_gap(&vip, s0, s1));
        }
        run.recovered = gw.iter().any(|t| *t > end - Duration::from_millis(500))
            && vip.iter().any(|t| *t > end - Duration::from_millis(500));
        if vmac_for(system) {
            run.static_neighbor_ok = Some(run.recovered);
        }
        run.answers_ms = gw
            .iter()
            .map(|t| {
                if *t >= fault {
                    t.duration_since(fault).as_secs_f64() * 1e3
                } else {
                    -(fault.duration_since(*t).as_secs_f64() * 1e3)
                }
            })
            .filter(|ms| (-200.0..1000.0).contains(ms))
            .collect();
        // Dual ownership: 5 ms slots after the fault in which two MACs
        // answered ARP for the VIP.
        run.dual_owner_ms = dual_slots(&arp, fault, end).len() as f64 * 5.0;
        if scenario == Scenario::Stall {
            // Per stall: from its SIGSTOP to the next one (or the end).
            let mut worst = 0.0f64;
            for (i, (ms, node, at)) in stalls.iter().enumerate() {
                let until = stalls.get(i + 1).map_or(end, |n| n.2);
                let dual = dual_slots(&arp, *at, until).len() as f64 * 5.0;
                worst = worst.max(dual);
                run.notes.push(format!(
                    "stall {} ({ms} ms of fw{node}): dual ownership {dual:.0} ms",
                    i + 1
                ));
            }
            run.dual_owner_ms = worst;
        }
        if let Some((heal, single)) = healed {
            // The last 5 ms slot after the heal in which both answered ARP.
            let arp_done = dual_slots(&arp, heal, end)
                .last()
                .map_or(Duration::ZERO, |t| {
                    (*t + Duration::from_millis(5)).saturating_duration_since(heal)
                });
            run.converged_ms = single.map(|s| {
                s.saturating_duration_since(heal)
                    .max(arp_done)
                    .as_secs_f64()
                    * 1e3
            });
            run.notes.push(match run.converged_ms {
                Some(ms) => format!(
                    "single owner {ms:.0} ms after the heal (roles {:.0} ms, ARP {:.0} ms)",
                    single.map_or(0.0, |s| s.saturating_duration_since(heal).as_secs_f64()
                        * 1e3),
                    arp_done.as_secs_f64() * 1e3
                ),
                None => "no single master after the heal".into(),
            });
        }
        if scenario == Scenario::Return && system == System::Agent {
            // Preempted only after its resync completed?
            let log = std::fs::read_to_string(dir.join("fw1-return.log")).unwrap_or_default();
            let synced = log.find("preemption allowed");
            let master = log.find("MASTER: VIPs owned");
            match (synced, master) {
                (Some(s), Some(m)) if s < m => {}
                (_, None) => run
                    .notes
                    .push("the returning node did not take over".into()),
                _ => run
                    .notes
                    .push("the returning node took over before its resync".into()),
            }
        }
        let replaced = [scenario == Scenario::Return, false];
        if system == System::Agent && !replaced[0] {
            (run.detected_by, run.detection_ms) = match detected_by([&n1, &n2], base) {
                Some((d, ms)) => (Some(d), ms),
                None => (None, None),
            };
        }
        let mut observed = Some(0u64);
        // Each node's transitions during the run, with their reasons: in the
        // notes for the attacks and stalls, and for any run with more than
        // its fault must cause (so a rare one can be read afterwards).
        let mut detail: Vec<String> = Vec::new();
        for (i, node) in [&n1, &n2].into_iter().enumerate() {
            if replaced[i] {
                continue;
            }
            let now = node.transitions();
            let delta = match (i, restarted, node) {
                // fw2's agent restarted: its transitions before the restart,
                // plus its new process's, less the start itself.
                (1, Some(carried), Node::Agent(a)) => {
                    live_status(&a.pins.0, Duration::from_secs(2))
                        .or_else(|| a.status())
                        .map(|s| {
                            let startups = s
                                .transitions
                                .iter()
                                .filter(|t| t.reason == "Startup")
                                .count();
                            carried + s.transitions_total.saturating_sub(startups as u64)
                        })
                }
                _ => now.zip(base[i]).map(|(n, b)| n.saturating_sub(b)),
            };
            observed = observed.zip(delta).map(|(o, d)| o + d);
            if delta.is_some_and(|d| d > 0) {
                let why = match node {
                    // A crashed agent's last status file.
                    Node::Agent(a) => live_status(&a.pins.0, Duration::from_secs(2))
                        .or_else(|| a.status())
                        .map(|s| {
                            s.transitions
                                .iter()
                                .rev()
                                .take(delta.unwrap_or(0) as usize)
                                .rev()
                                .map(|t| format!("{}({})", t.role, t.reason))
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default(),
                    Node::Keepalived(k, _) => {
                        let entered = k.states();
                        let d = (delta.unwrap_or(0) as usize).min(entered.len());
                        entered[entered.len() - d..].join(", ")
                    }
                };
                detail.push(format!(
                    "fw{} transitions during the run: {} {why}",
                    i + 1,
                    delta.unwrap_or(0),
                ));
            }
        }
        let unexpected = observed
            .zip(scenario.expected_transitions(system))
            .is_some_and(|(o, e)| o > e);
        if scenario.attack() || scenario == Scenario::Stall || unexpected {
            run.notes.append(&mut detail);
        }
        if std::env::var_os("HATEST_DEBUG").is_some()
            && let (Node::Agent(a1), Node::Agent(a2)) = (&n1, &n2)
        {
            let _ = std::fs::create_dir_all("target/lab");
            let _ = std::fs::copy(&a1.log, format!("target/lab/{}-fw1.log", scenario.name()));
            let _ = std::fs::copy(&a2.log, format!("target/lab/{}-fw2.log", scenario.name()));
        }
        run.unexpected_transitions = observed
            .zip(scenario.expected_transitions(system))
            .map(|(o, e)| o.saturating_sub(e));
        match (observed, scenario.expected_transitions(system)) {
            (Some(o), None) => run
                .notes
                .push(format!("transitions (informational): {o} over both nodes")),
            (Some(o), Some(e)) if o != e => run
                .notes
                .push(format!("transitions: {o} over both nodes, {e} expected")),
            _ => {}
        }
        if observed.is_none() {
            run.notes
                .push("transitions not readable (status or log missing)".into());
        }
        for mut c in returned {
            let _ = c.kill();
            let _ = c.wait();
        }
    });
    drop(joiner);
    drop(n2);
    drop(n1);
    let _ = std::fs::remove_dir_all(&dir);
    run
}

/// Starts fw1's system again after a crash (with the same files), outside
/// the lab's own process list (the caller kills what this returns).
fn respawn(lab: &Lab, n1: &Node, dir: &std::path::Path) -> Vec<std::process::Child> {
    let mut out = Vec::new();
    match n1 {
        Node::Agent(a) => {
            let config = std::env::temp_dir().join(&a.pins.0).join("config.toml");
            let log = std::fs::File::create(dir.join("fw1-return.log")).expect("log");
            let bin = agent_bin();
            let child = lab
                .command(
                    "fw1",
                    &[
                        bin.to_str().unwrap_or_default(),
                        "run",
                        "--config",
                        config.to_str().unwrap_or_default(),
                    ],
                )
                .env("HA_AGENT_LOG", "info")
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn();
            out.extend(child.ok());
        }
        Node::Keepalived(k, _) => {
            let conf = dir.join("conntrackd1.conf");
            out.extend(
                lab.command(
                    "fw1",
                    &["conntrackd", "-C", conf.to_str().unwrap_or_default()],
                )
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .ok(),
            );
            std::thread::sleep(Duration::from_millis(200));
            let p = |f: &str| k.dir.join(f).display().to_string();
            out.extend(
                lab.command(
                    "fw1",
                    &[
                        "keepalived",
                        "--dont-fork",
                        "--log-console",
                        "--vrrp",
                        "--use-file",
                        &p("keepalived.conf"),
                        "--pid",
                        &p("k2.pid"),
                        "--vrrp_pid",
                        &p("v2.pid"),
                        "--checkers_pid",
                        &p("c2.pid"),
                    ],
                )
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .ok(),
            );
        }
    }
    out
}

/// The control port of the cluster channel (and of the join).
const CONTROL_PORT: u16 = ha_agent::cluster::CONTROL_PORT;
/// The server's long-lived TCP service (the fleets' target).
const SERVER_TCP: ([u8; 4], u16) = ([10, 1, 0, 10], 9001);

/// Gives an agent the open-file limit it has as a service: `LimitNOFILE`
/// of packaging/ha-agent.service, or systemd's default soft limit (1024)
/// when the unit sets none. The lab itself runs with a much higher limit
/// (it holds the attackers' sockets), which agents would otherwise inherit
/// and hide exhaustion behind.
fn service_limits(pid: u32) {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/ha-agent.service"),
    )
    .unwrap_or_default();
    let soft = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("LimitNOFILE="))
        .filter_map(|v| v.split(':').next()?.trim().parse::<u64>().ok())
        .next_back()
        .unwrap_or(1024);
    if let Err(e) = ha_lab::hostile::set_nofile(pid, soft) {
        eprintln!("setting the open-file limit of {pid}: {e}");
    }
}

/// The agent's status taken live over its operator socket, `None` when it
/// does not answer within `limit` (the status file does not count: it is
/// what `ha-agent status` falls back to when the socket is dead).
fn live_status(instance: &str, limit: Duration) -> Option<ha_agent::status::Status> {
    use ha_agent::control::local::{LocalRequest, request};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        tokio::time::timeout(limit, request(instance, LocalRequest::Status))
            .await
            .ok()?
            .ok()?
            .status
            .map(|s| *s)
    })
}

/// The node's operator socket answers a status request (agents only).
fn operator_socket_ok(node: &Node) -> bool {
    match node {
        Node::Agent(a) => live_status(&a.pins.0, Duration::from_secs(2)).is_some(),
        Node::Keepalived(..) => false,
    }
}

/// A cluster verb's question over the control channel: `Info` from
/// namespace `from` to `to`, under the control key derived from the
/// cluster key, as `add-lan-interface` asks it of the backup.
fn control_info(
    lab: &Lab,
    from: &str,
    to: SocketAddr,
    cluster_key: &[u8; 32],
    limit: Duration,
) -> Result<(), String> {
    use ha_agent::sync::key::{Purpose, derive};
    info_call(lab, from, to, &derive(cluster_key, Purpose::Control), limit)
}

/// `Info` from namespace `from` to `to` under the channel key `key` (the
/// control key, or a join token's key), answered within `limit`.
fn info_call(
    lab: &Lab,
    from: &str,
    to: SocketAddr,
    key: &[u8; 32],
    limit: Duration,
) -> Result<(), String> {
    use ha_agent::control::channel::{Request, Response, call};
    lab.run_in(from, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            match tokio::time::timeout(limit, call(to, key, &Request::Info)).await {
                Ok(Ok(Response::Info(_))) => Ok(()),
                Ok(Ok(other)) => Err(format!("answered {other:?}")),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err(format!("no answer within {limit:?}")),
            }
        })
    })
    .map_err(|e| e.to_string())?
}

/// A fresh node waiting to be joined (`ha-agent run` without a
/// configuration, `--join-listen 0.0.0.0:7789`, the default), with its
/// one-time token: the join port under attack in `control-flood`.
struct Joiner {
    name: ha_tests::PinGuard,
    token: String,
    pid: u32,
}

impl Joiner {
    fn start(lab: &mut Lab, dir: &std::path::Path) -> Result<Joiner, String> {
        let name = ha_tests::PinGuard::new("joiner");
        let config = dir.join("joiner").join("config.toml");
        let _ = std::fs::create_dir_all(dir.join("joiner"));
        let bin = agent_bin();
        let (bin, conf) = (
            bin.to_str().unwrap_or_default(),
            config.to_str().unwrap_or_default(),
        );
        let out = lab
            .exec("joiner", &[bin, "cluster", "--config", conf, "join-token"])
            .map_err(|e| format!("joiner: {e}"))?;
        let token = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let log = std::fs::File::create(dir.join("joiner").join("agent.log"))
            .map_err(|e| format!("joiner log: {e}"))?;
        let mut cmd = lab.command(
            "joiner",
            &[
                bin,
                "run",
                "--config",
                conf,
                "--instance",
                &name.0,
                "--join-listen",
                &format!("0.0.0.0:{CONTROL_PORT}"),
            ],
        );
        cmd.env("HA_AGENT_LOG", "info")
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let pid = lab.spawn("joiner", cmd).map_err(|e| e.to_string())?;
        service_limits(pid);
        wait("the joiner listening", Duration::from_secs(10), || {
            lab.exec("joiner", &["ss", "-Hltn", "sport = :7789"])
                .is_ok_and(|o| !o.stdout.is_empty())
        })?;
        Ok(Joiner { name, token, pid })
    }

    /// The join's `Info` (what `check-backup-node` asks first) from the
    /// would-be primary fw1 over the LAN, under the key of the joiner's
    /// token: the legitimate caller is a host of its own, not one of the
    /// flooding hosts (the probe host and `rogue`).
    fn check(&self, lab: &Lab, limit: Duration) -> Result<(), String> {
        let key = ha_agent::control::channel::join_key(&self.token);
        info_call(
            lab,
            "fw1",
            SocketAddr::from(([10, 0, 0, 30], 7789)),
            &key,
            limit,
        )
    }
}

impl Drop for Joiner {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of a process we started (the lab reaps it).
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        for f in ha_agent::paths::run_files(&self.name.0) {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// What `hostile-sync` leaves for the transition count and the cleanup.
struct HostileOutcome {
    /// Processes started outside the lab's list (killed by the caller).
    children: Vec<std::process::Child>,
    /// fw2's transitions just before its sync daemon restarted.
    before_restart: Option<u64>,
}

/// Copies of genuine frames, `header` bytes kept (sender, epoch), the
/// sequence number at `seq_at` moved ahead by 1.. and the rest random: what
/// a sender with another key (or none) makes of a recorded frame. Every
/// other one also claims a newer epoch when `epoch_at` is given.
fn forged_like(
    frames: &[Vec<u8>],
    header: usize,
    seq_at: usize,
    seq_len: usize,
    epoch_at: Option<usize>,
    g: &mut ha_lab::hostile::Garbage,
    n: usize,
) -> Vec<Vec<u8>> {
    let frames: Vec<&Vec<u8>> = frames.iter().filter(|f| f.len() > header).collect();
    (0..n)
        .filter_map(|i| {
            let f = frames.get(i % frames.len().max(1))?;
            let mut out = f[..header].to_vec();
            let bump = |b: &mut [u8], by: u64| {
                let mut v = 0u64;
                for x in b.iter() {
                    v = (v << 8) | u64::from(*x);
                }
                let v = v.wrapping_add(by).to_be_bytes();
                b.copy_from_slice(&v[8 - b.len()..]);
            };
            bump(&mut out[seq_at..seq_at + seq_len], 1 + i as u64);
            if let Some(e) = epoch_at
                && i % 2 == 1
            {
                bump(&mut out[e..e + 8], 1_000_000_000);
            }
            out.extend(g.bytes(f.len() - header));
            Some(out)
        })
        .collect()
}

/// conntrackd's external cache on fw2: entries toward the server's port.
fn conntrackd_cached(lab: &Lab, dir: &std::path::Path) -> usize {
    let conf = dir.join("conntrackd2.conf");
    lab.exec(
        "fw2",
        &["conntrackd", "-C", conf.to_str().unwrap_or_default(), "-e"],
    )
    .map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains("dport=9001"))
            .count()
    })
    .unwrap_or(0)
}

/// `hostile-sync`: from `rogue` on the HA segment, toward the backup's
/// sync port with the master's address as source (10.255.0.1, spoofed):
/// random bytes, frames with a wrong key, truncated and replayed genuine
/// frames (captured at the switch port of fw1 first), the captured frames
/// again right after the backup's sync daemon restarted, and a flood of
/// 200,000 datagrams in about 2 s. Then: does sync still work (a
/// connection opened afterwards reaches the backup)?
fn hostile_sync(
    lab: &Lab,
    system: System,
    n2: &Node,
    dir: &std::path::Path,
    run: &mut Run,
) -> HostileOutcome {
    use ha_lab::hostile::{Garbage, capture_udp, flood, send_all, spoofed_socket};
    let mut out = HostileOutcome {
        children: Vec::new(),
        before_restart: None,
    };
    let port = match system {
        System::Agent => 7788,
        System::Keepalived => 3780,
    };
    let master = Ipv4Addr::new(10, 255, 0, 1);
    let target = std::net::SocketAddrV4::new(Ipv4Addr::new(10, 255, 0, 2), port);
    let server = SocketAddr::from(SERVER_TCP);
    // Genuine frames, as a host on the segment records them: new
    // connections through the gateway make records to replicate.
    let (captured, _fleet) = std::thread::scope(|s| {
        let cap = s.spawn(|| {
            lab.run_in("hasw", || {
                capture_udp("fw1-ha0", master, port, 400, Duration::from_secs(2))
            })
        });
        std::thread::sleep(Duration::from_millis(200));
        let fleet = lab.run_in("client", || {
            let mut f = Fleet::default();
            let _ = f.open(server, 50, Duration::from_secs(2));
            f
        });
        let cap = match cap.join() {
            Ok(Ok(Ok(c))) => c,
            Ok(Ok(Err(e))) => {
                run.notes.push(format!("capture: {e}"));
                Vec::new()
            }
            Ok(Err(e)) => {
                run.notes.push(format!("capture: {e}"));
                Vec::new()
            }
            Err(_) => {
                run.notes
                    .push("capture: the capture thread panicked".into());
                Vec::new()
            }
        };
        (cap, fleet)
    });
    let frames: Vec<Vec<u8>> = captured.iter().map(|c| c.payload.clone()).collect();
    let src = captured
        .first()
        .map_or(std::net::SocketAddrV4::new(master, port), |c| c.src);
    let sock = match lab.run_in("rogue", || spoofed_socket(src)) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            run.notes.push(format!("spoofed socket: {e}"));
            return out;
        }
        Err(e) => {
            run.notes.push(format!("spoofed socket: {e}"));
            return out;
        }
    };
    let mut g = Garbage::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    let gap = Duration::from_micros(20);
    let random: Vec<Vec<u8>> = (0..2000)
        .map(|_| {
            let n = (g.next_u64() % 1473) as usize;
            g.bytes(n)
        })
        .collect();
    // Header layouts: ours is 32 bytes (seq u64 at 16, epoch u64 at 8);
    // conntrackd's nethdr is 8 (seq u32 at 4) and has no key at all.
    let wrong = match system {
        System::Agent => forged_like(&frames, 32, 16, 8, Some(8), &mut g, 2000),
        System::Keepalived => forged_like(&frames, 8, 4, 4, None, &mut g, 2000),
    };
    let truncated: Vec<Vec<u8>> = frames
        .iter()
        .flat_map(|f| {
            let l = f.len();
            [0, 1, 2, 4, 8, 16, 31, 32, 33, 47, 48, l.saturating_sub(17)]
                .into_iter()
                .chain([l.saturating_sub(16), l.saturating_sub(1)])
                .filter(move |n| *n < l)
                .map(|n| f[..n].to_vec())
        })
        .collect();
    let mut sent = 0;
    sent += send_all(&sock, target, &random, gap).datagrams;
    sent += send_all(&sock, target, &wrong, gap).datagrams;
    sent += send_all(&sock, target, &truncated, gap).datagrams;
    for _ in 0..2 {
        sent += send_all(&sock, target, &frames, gap).datagrams;
    }
    run.notes.push(format!(
        "captured {} genuine frames; sent {sent} forged/truncated/replayed",
        frames.len()
    ));
    // More connections: the master's sequence moves past the recorded
    // frames, which are now stale (a replay of the newest frame would be
    // harmless: the next genuine frame follows it).
    let _later = lab.run_in("client", || {
        let mut f = Fleet::default();
        let _ = f.open(server, 50, Duration::from_secs(2));
        f
    });
    std::thread::sleep(Duration::from_millis(500));
    // The peer restarts; the recorded frames (the master's current epoch)
    // are replayed at it from the moment it comes back.
    out.before_restart = n2.transitions();
    if let Node::Agent(a) = n2
        && let Some(sy) = live_status(&a.pins.0, Duration::from_secs(2)).and_then(|s| s.sync)
    {
        run.notes.push(format!(
            "before the restart, the backup's sync rejected: {:?}",
            sy.rejected
        ));
    }
    let restart = std::time::Instant::now();
    match n2 {
        Node::Agent(a) => {
            a.signal(libc::SIGKILL);
            let stat = format!("/proc/{}/stat", a.pid);
            let _ = wait("fw2's agent gone", Duration::from_secs(5), || {
                std::fs::read_to_string(&stat).map_or(true, |s| s.contains(") Z"))
            });
            let config = std::env::temp_dir().join(&a.pins.0).join("config.toml");
            let log = std::fs::OpenOptions::new().append(true).open(&a.log);
            let bin = agent_bin();
            let child = log.and_then(|log| {
                lab.command(
                    "fw2",
                    &[
                        bin.to_str().unwrap_or_default(),
                        "run",
                        "--config",
                        config.to_str().unwrap_or_default(),
                    ],
                )
                .env("HA_AGENT_LOG", "info")
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
            });
            match child {
                Ok(c) => {
                    service_limits(c.id());
                    out.children.push(c);
                }
                Err(e) => run.notes.push(format!("restarting fw2's agent: {e}")),
            }
        }
        Node::Keepalived(_, ctd) => {
            // SAFETY: plain kill(2) of a process we started.
            unsafe { libc::kill(*ctd as i32, libc::SIGTERM) };
            let stat = format!("/proc/{ctd}/stat");
            let _ = wait("fw2's conntrackd gone", Duration::from_secs(5), || {
                std::fs::read_to_string(&stat).map_or(true, |s| s.contains(") Z"))
            });
            let _ = std::fs::remove_file(dir.join("conntrackd.lock.2"));
            let conf = dir.join("conntrackd2.conf");
            match lab
                .command(
                    "fw2",
                    &["conntrackd", "-C", conf.to_str().unwrap_or_default()],
                )
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
            {
                Ok(c) => out.children.push(c),
                Err(e) => run.notes.push(format!("restarting fw2's conntrackd: {e}")),
            }
        }
    }
    let new_pid = out.children.first().map(std::process::Child::id);
    let mut back = None;
    let mut replayed = 0u64;
    let mut polled = std::time::Instant::now();
    // A recorded frame every 50 us (20,000/s): the new process must meet
    // one between binding its socket and the master's first answer.
    while restart.elapsed() < Duration::from_secs(6) && !frames.is_empty() {
        if sock
            .send_to(&frames[replayed as usize % frames.len()], target)
            .is_ok()
        {
            replayed += 1;
        }
        std::thread::sleep(Duration::from_micros(50));
        if polled.elapsed() < Duration::from_millis(10) {
            continue;
        }
        polled = std::time::Instant::now();
        if back.is_none() {
            let up = match n2 {
                Node::Agent(a) => a.status().is_some_and(|s| {
                    Some(s.pid) == new_pid && s.roles.get("fw").is_some_and(|r| r == "BACKUP")
                }),
                Node::Keepalived(..) => restart.elapsed() > Duration::from_millis(500),
            };
            if up {
                back = Some(std::time::Instant::now());
            }
        }
        if back.is_some_and(|b| b.elapsed() > Duration::from_millis(500)) {
            break;
        }
    }
    run.notes.push(format!(
        "fw2's sync daemon restarted: {replayed} recorded frames replayed at it until {}",
        if back.is_some() {
            "0.5 s after it was back"
        } else {
            "6 s had passed (it did not come back as BACKUP)"
        }
    ));
    // The flood, from the spoofed peer address: recorded frames and forged
    // ones, 200,000 datagrams paced over 2 s (at most 3 s).
    let mix: Vec<Vec<u8>> = frames.iter().chain(wrong.iter()).cloned().collect();
    let cpu0 = match n2 {
        Node::Agent(_) => new_pid.and_then(ha_lab::hostile::cpu_seconds),
        Node::Keepalived(..) => None,
    };
    let (f, during) = std::thread::scope(|s| {
        let during = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(700));
            operator_socket_ok(n2)
        });
        let f = flood(
            &sock,
            target,
            &mix,
            200_000,
            Duration::from_secs(2),
            Duration::from_secs(3),
        );
        (f, during.join().unwrap_or(false))
    });
    let cpu = cpu0
        .zip(new_pid.and_then(ha_lab::hostile::cpu_seconds))
        .map(|(a, b)| {
            format!(
                ", fw2's agent used {:.0}% of a CPU",
                (b - a) / f.seconds.max(0.1) * 100.0
            )
        })
        .unwrap_or_default();
    run.notes.push(format!(
        "flood: {} datagrams in {:.1} s ({} not queued by the sender){cpu}",
        f.datagrams, f.seconds, f.refused
    ));
    // Afterwards: sync works if new connections reach the backup.
    std::thread::sleep(Duration::from_secs(1));
    let count = |lab: &Lab| match system {
        System::Agent => conntrack_count(lab, "fw2", 9001),
        System::Keepalived => conntrackd_cached(lab, dir),
    };
    let in_sync = match system {
        System::Agent => wait("fw2 in sync", Duration::from_secs(10), || n2.in_sync()).is_ok(),
        System::Keepalived => true,
    };
    let before = count(lab);
    let fresh = lab
        .run_in("client", || {
            let mut f = Fleet::default();
            let _ = f.open(server, 20, Duration::from_secs(2));
            f
        })
        .ok();
    let opened = fresh.as_ref().map_or(0, Fleet::len);
    let mut reached = 0;
    let _ = wait("new connections on fw2", Duration::from_secs(5), || {
        reached = count(lab).saturating_sub(before);
        reached >= opened && opened > 0
    });
    run.in_sync_after = Some(in_sync && opened > 0 && reached >= opened);
    let place = match system {
        System::Agent => "conntrack",
        System::Keepalived => "conntrackd external cache",
    };
    let reported = match system {
        System::Agent => format!("backup reports in sync: {in_sync}"),
        System::Keepalived => "conntrackd reports no sync state".into(),
    };
    run.notes.push(format!(
        "after: {reported}; {reached}/{opened} new connections reached the backup's {place}"
    ));
    match n2 {
        Node::Agent(a) => {
            let after = operator_socket_ok(n2);
            run.control_ok = Some(during && after);
            if let Some(sy) = a.status().and_then(|s| s.sync) {
                run.notes.push(format!(
                    "after the restart, the backup's sync rejected: {:?}",
                    sy.rejected
                ));
            }
        }
        Node::Keepalived(..) => {
            let conf = dir.join("conntrackd2.conf");
            if let Ok(o) = lab.exec(
                "fw2",
                &["conntrackd", "-C", conf.to_str().unwrap_or_default(), "-s"],
            ) {
                let stats: Vec<String> = String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| {
                        ["malformed", "lost", "error", "recv"]
                            .iter()
                            .any(|w| l.contains(w))
                    })
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect();
                run.notes
                    .push(format!("fw2 conntrackd -s: {}", stats.join("; ")));
            }
        }
    }
    drop(fresh);
    out
}

/// `control-flood`: a thousand idle and slow connections to fw2's control
/// port from the HA segment, 500 more from a LAN host (to fw2's LAN and HA
/// addresses, through fw2), and a thousand to a joining node's join port
/// (half from the LAN, half from the HA segment), held about 8 s; the
/// cluster verbs are asked before, during and after.
fn control_flood(
    lab: &Lab,
    n1: &Node,
    n2: &Node,
    joiner: Option<&Joiner>,
    key: &SyncKey,
    run: &mut Run,
) {
    use ha_lab::hostile::{Slowloris, cpu_seconds};
    let cluster_key: [u8; 32] = std::fs::read(&key.0)
        .ok()
        .and_then(|k| k.try_into().ok())
        .unwrap_or([11u8; 32]);
    let Node::Agent(a2) = n2 else { return };
    let _ = n1;
    let control = SocketAddr::from(([10, 255, 0, 2], CONTROL_PORT));
    // Every surface asked at once, each bounded: (control channel, join,
    // operator socket).
    let ask = || {
        std::thread::scope(|s| {
            let c =
                s.spawn(|| control_info(lab, "fw1", control, &cluster_key, Duration::from_secs(3)));
            let j = s.spawn(|| {
                joiner.map_or(Err("no joiner".into()), |j| {
                    j.check(lab, Duration::from_secs(5))
                })
            });
            let o = operator_socket_ok(n2);
            (
                c.join().unwrap_or(Err("panicked".into())),
                j.join().unwrap_or(Err("panicked".into())),
                o,
            )
        })
    };
    let show = |(c, j, o): &(Result<(), String>, Result<(), String>, bool)| {
        let r = |x: &Result<(), String>| match x {
            Ok(()) => "answered".to_owned(),
            Err(e) => format!("FAILED ({e})"),
        };
        format!(
            "control channel fw1->fw2 {}; join check {}; fw2 operator socket {}",
            r(c),
            r(j),
            if *o { "answered" } else { "FAILED" }
        )
    };
    let before = ask();
    run.notes.push(format!("before: {}", show(&before)));
    let cpu0 = cpu_seconds(a2.pid);
    let started = std::time::Instant::now();
    let stop = AtomicBool::new(false);
    let hold = Duration::from_secs(8);
    let (during, floods) = std::thread::scope(|s| {
        let targets: [(&str, SocketAddr, usize); 5] = [
            ("rogue", control, 1000),
            (
                "probe",
                SocketAddr::from(([10, 0, 0, 3], CONTROL_PORT)),
                250,
            ),
            ("probe", control, 250),
            (
                "probe",
                SocketAddr::from(([10, 0, 0, 30], CONTROL_PORT)),
                500,
            ),
            (
                "rogue",
                SocketAddr::from(([10, 255, 0, 30], CONTROL_PORT)),
                500,
            ),
        ];
        let stop = &stop;
        let handles: Vec<_> = targets
            .into_iter()
            .map(|(ns, to, n)| {
                s.spawn(move || {
                    lab.run_in(ns, || {
                        let l = Slowloris::open(to, n, Duration::from_secs(2))?;
                        let opened = (l.len(), l.established);
                        let t = std::time::Instant::now();
                        while !stop.load(Ordering::Relaxed) && t.elapsed() < hold {
                            l.trickle();
                            std::thread::sleep(Duration::from_millis(500));
                        }
                        Ok::<_, std::io::Error>((ns, to, opened.0, opened.1, l.closed_by_peer()))
                    })
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2500));
        let fds = std::fs::read_dir(format!("/proc/{}/fd", a2.pid)).map_or(0, Iterator::count);
        let limit = ha_lab::hostile::nofile(a2.pid).map_or(0, |l| l.0);
        let during = ask();
        stop.store(true, Ordering::Relaxed);
        let floods: Vec<String> = handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(Ok(Ok((ns, to, n, est, closed)))) => {
                    format!("{ns}->{to}: {est}/{n} established, {closed} closed by the server")
                }
                Ok(Ok(Err(e))) => format!("flood: {e}"),
                _ => "flood thread failed".into(),
            })
            .collect();
        (during, (floods, fds, limit))
    });
    let (floods, fds, limit) = floods;
    let cpu = cpu0
        .zip(cpu_seconds(a2.pid))
        .map(|(a, b)| {
            format!(
                "; fw2's agent used {:.0}% of a CPU meanwhile",
                (b - a) / started.elapsed().as_secs_f64() * 100.0
            )
        })
        .unwrap_or_default();
    run.notes.push(format!(
        "flood: {}{cpu}; fw2's agent held {fds} open files (soft limit {limit})",
        floods.join(", ")
    ));
    run.notes.push(format!("during: {}", show(&during)));
    // After: each surface gets 5 s to answer again.
    let t = std::time::Instant::now();
    let mut after = ask();
    while !(after.0.is_ok() && after.1.is_ok() && after.2) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(500));
        after = ask();
    }
    run.notes.push(format!("after: {}", show(&after)));
    let ok = |x: &(Result<(), String>, Result<(), String>, bool)| x.0.is_ok() && x.1.is_ok() && x.2;
    run.control_ok = Some(ok(&during) && ok(&after));
    run.in_sync_after = Some(
        wait("in sync", Duration::from_secs(5), || {
            n1.in_sync() && n2.in_sync()
        })
        .is_ok(),
    );
}

fn main() {
    let a = Args::parse();
    ha_tests::require_root();
    // The attackers' sockets live in this process (agents get their own
    // limit: `service_limits`).
    if let Err(e) = ha_lab::hostile::raise_own_nofile() {
        eprintln!("raising the open-file limit: {e}");
    }
    let _ = agent_bin();
    NAPI_SOFTIRQ.store(a.napi == "softirq", Ordering::Relaxed);
    VMAC.store(a.vmac, Ordering::Relaxed);
    let fam = match a.family.as_str() {
        "ipv6" => Family::Ipv6,
        "dual" => Family::Dual,
        _ => Family::Ipv4,
    };
    let _ = FAMILY.set(fam);
    if a.up {
        if fam != Family::Ipv4 {
            eprintln!("--up builds the IPv4 lab only (no --family)");
            std::process::exit(2);
        }
        return up(&a);
    }
    let scenarios: Vec<Scenario> = if a.scenario.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        a.scenario.clone()
    };
    if fam != Family::Ipv4 {
        // The virtual MAC is IPv4's only (the agent refuses it on an IPv6
        // VIP); the attacks, soak and probe-cost drive IPv4 traffic and
        // IPv4 VRRP of their own.
        if a.vmac {
            eprintln!("--vmac is IPv4 only: not with --family {}", fam.as_str());
            std::process::exit(2);
        }
        let v4_only: Vec<&str> = scenarios
            .iter()
            .filter(|s| s.attack() || matches!(s, Scenario::Soak | Scenario::ProbeCost))
            .map(|s| s.name())
            .collect();
        if !v4_only.is_empty() {
            eprintln!(
                "with --family {}: the failover scenarios only ({} measure IPv4 traffic of their own)",
                fam.as_str(),
                v4_only.join(", ")
            );
            std::process::exit(2);
        }
    }
    let mut systems = vec![System::Agent];
    if a.compare == "keepalived" {
        systems.push(System::Keepalived);
    }
    let total = scenarios.len() * systems.len() * a.runs;
    let mut done = 0;
    let started = Instant::now();
    let mut results: Vec<(System, Scenario, Vec<Run>)> = Vec::new();
    for &system in &systems {
        for &scenario in &scenarios {
            let mut runs = Vec::new();
            for i in 0..a.runs {
                done += 1;
                eprint!(
                    "\r[{done}/{total}] {} {} run {}/{} ({:.0} s elapsed)   ",
                    system.name(),
                    scenario.name(),
                    i + 1,
                    a.runs,
                    started.elapsed().as_secs_f64()
                );
                runs.push(one_run(system, scenario, &a));
            }
            results.push((system, scenario, runs));
        }
    }
    eprintln!();
    report(&a, &systems, &scenarios, &results);
}

fn report(
    a: &Args,
    systems: &[System],
    scenarios: &[Scenario],
    results: &[(System, Scenario, Vec<Run>)],
) {
    println!(
        "\nfailover lab ({}): {} ms adverts, {} runs per scenario, {} TCP connections per run\n",
        match family() {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6: NS sampler, probes and TCP over IPv6",
            Family::Dual =>
                "dual: IPv4 and IPv6 VIPs in one group; IPv6 measured, IPv4's gateway probe and ARP beside",
        },
        a.adv_ms,
        a.runs,
        a.tcp
    );
    println!(
        "{:<16} {:<11} {:>9} {:>11} {:>11} {:>12} {:>11} {:>5} {:>10} {:>7} {:>6} {:>6} {:>8} {:>8}  detected by",
        "scenario",
        "system",
        "recovered",
        "outage p50",
        "outage max",
        "VIP svc max",
        "TCP alive",
        "RSTs",
        "dual own",
        "ARP ok",
        "flows",
        "unexp",
        "in sync",
        "control"
    );
    let mut json_systems = Vec::new();
    for &system in systems {
        let mut js = Vec::new();
        for &scenario in scenarios {
            let Some((_, _, runs)) = results
                .iter()
                .find(|(s, sc, _)| *s == system && *sc == scenario)
            else {
                continue;
            };
            let outages: Vec<f64> = runs
                .iter()
                .filter(|r| r.recovered)
                .map(|r| r.outage_ms)
                .collect();
            let vip_max = runs
                .iter()
                .filter(|r| r.recovered)
                .map(|r| r.outage_vip_ms)
                .fold(0.0, f64::max);
            let recovered = runs.iter().filter(|r| r.recovered).count();
            let tcp_total: usize = runs.iter().map(|r| r.tcp_total).sum();
            let tcp_alive: usize = runs.iter().map(|r| r.tcp_survived).sum();
            let rsts: u64 = runs.iter().map(|r| r.rsts).sum();
            let dual = runs.iter().map(|r| r.dual_owner_ms).fold(0.0, f64::max);
            let arp = runs.iter().filter(|r| r.arp_ok).count();
            let flows = runs.iter().map(|r| r.flows_replicated).max().unwrap_or(0);
            // Summed over the runs; null when no run could count them.
            let unexpected: Option<u64> = runs
                .iter()
                .filter_map(|r| r.unexpected_transitions)
                .reduce(|a, b| a + b);
            // True only if every run that measured it says so.
            let all = |f: fn(&Run) -> Option<bool>| {
                let v: Vec<bool> = runs.iter().filter_map(f).collect();
                (!v.is_empty()).then(|| v.iter().all(|b| *b))
            };
            let in_sync_after = all(|r| r.in_sync_after);
            let vips_reannounced = all(|r| r.vips_reannounced);
            let static_neighbor_ok = all(|r| r.static_neighbor_ok);
            let converged: Vec<f64> = runs.iter().filter_map(|r| r.converged_ms).collect();
            let converged_ms =
                (!converged.is_empty()).then(|| converged.iter().copied().fold(0.0, f64::max));
            let control_ok = all(|r| r.control_ok);
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            let notes: std::collections::BTreeSet<&String> =
                runs.iter().flat_map(|r| &r.notes).collect();
            // ha-agent: which detector made each takeover (runs without one
            // are not counted).
            let detected: Option<std::collections::BTreeMap<&str, usize>> =
                (system == System::Agent).then(|| {
                    let mut m = std::collections::BTreeMap::new();
                    for d in runs.iter().filter_map(|r| r.detected_by.as_deref()) {
                        *m.entry(d).or_default() += 1;
                    }
                    m
                });
            // How long the peer had been silent at each fast verdict.
            let detection: Vec<f64> = runs.iter().filter_map(|r| r.detection_ms).collect();
            let detected_text = detected
                .as_ref()
                .filter(|m| !m.is_empty())
                .map(|m| {
                    m.iter()
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .map(|t| {
                    if detection.is_empty() {
                        t
                    } else {
                        format!("{t} (silent {:.1} ms p50)", percentile(&detection, 0.5))
                    }
                })
                .unwrap_or_else(|| "-".into());
            if scenario == Scenario::ProbeCost && !runs.iter().all(|r| r.na) {
                println!(
                    "{:<16} {:<11} {:>9}   (see \"probe cost\" below)",
                    scenario.name(),
                    system.name(),
                    format!("{recovered}/{}", runs.len()),
                );
                for note in &notes {
                    println!("{:<16} {:<11}   note: {note}", "", "");
                }
                js.push(serde_json::json!({
                    "name": scenario.name(),
                    "runs": runs.len(),
                    "probe_cost": probe_cost_json(runs),
                    "notes": notes,
                }));
                continue;
            }
            if runs.iter().all(|r| r.na) {
                println!("{:<16} {:<11} {:>9}", scenario.name(), system.name(), "n/a");
                for note in &notes {
                    println!("{:<16} {:<11}   note: {note}", "", "");
                }
                js.push(serde_json::json!({
                    "name": scenario.name(),
                    "applicable": false,
                    "runs": 0,
                    "unexpected_transitions": null,
                    "in_sync_after": null,
                    "control_ok": null,
                    "notes": notes,
                }));
                continue;
            }
            println!(
                "{:<16} {:<11} {:>9} {:>11.1} {:>11.1} {:>12.1} {:>11} {:>5} {:>10.0} {:>7} {:>6} {:>6} {:>8} {:>8}  {}",
                scenario.name(),
                system.name(),
                format!("{recovered}/{}", runs.len()),
                percentile(&outages, 0.5),
                percentile(&outages, 1.0),
                vip_max,
                format!("{tcp_alive}/{tcp_total}"),
                rsts,
                dual,
                format!("{arp}/{}", runs.len()),
                flows,
                opt(unexpected.map(|u| u.to_string())),
                opt(in_sync_after.map(|b| b.to_string())),
                opt(control_ok.map(|b| b.to_string())),
                detected_text,
            );
            if static_neighbor_ok.is_some() {
                let ok = runs
                    .iter()
                    .filter(|r| r.static_neighbor_ok == Some(true))
                    .count();
                println!(
                    "{:<16} {:<11}   static neighbour (virtual MAC): {ok}/{} runs recovered",
                    "",
                    "",
                    runs.len()
                );
            }
            // `--family dual`: IPv4's figures beside IPv6's (the row's).
            let v4_outage = runs
                .iter()
                .filter(|r| r.recovered)
                .filter_map(|r| r.ipv4_outage_ms)
                .reduce(f64::max);
            let v4_dual = runs
                .iter()
                .filter_map(|r| r.ipv4_dual_owner_ms)
                .reduce(f64::max);
            if v4_outage.is_some() || v4_dual.is_some() {
                println!(
                    "{:<16} {:<11}   IPv4 beside it: outage max {} ms, dual ownership (ARP) {} ms",
                    "",
                    "",
                    v4_outage.map_or("-".to_owned(), |v| format!("{v:.1}")),
                    v4_dual.map_or("-".to_owned(), |v| format!("{v:.0}")),
                );
            }
            for note in &notes {
                println!("{:<16} {:<11}   note: {note}", "", "");
            }
            js.push(serde_json::json!({
                "name": scenario.name(),
                "runs": runs.len(),
                "recovered": recovered,
                "static_neighbor_ok": static_neighbor_ok,
                "outage_ms_p50": percentile(&outages, 0.5),
                "outage_ms_max": percentile(&outages, 1.0),
                "vip_service_outage_ms_max": vip_max,
                "tcp_total": tcp_total,
                "tcp_survived": tcp_alive,
                "rsts": rsts,
                "dual_owner_ms": dual,
                "arp_resolved": arp,
                "flows_replicated": flows,
                "unexpected_transitions": unexpected,
                "in_sync_after": in_sync_after,
                "control_ok": control_ok,
                "converged_ms": converged_ms,
                "vips_reannounced": vips_reannounced,
                "detected_by": detected,
                "detection_ms_p50": percentile(&detection, 0.5),
                "detection_ms_max": detection.iter().copied().fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))),
                "ipv4_outage_ms_max": v4_outage,
                "ipv4_dual_owner_ms": v4_dual,
                "notes": notes,
            }));
            if let Some(v) = soak_json(runs) {
                js.last_mut().expect("pushed")["soak"] = v;
            }
        }
        json_systems.push(
            serde_json::json!({"system": system.name(), "adv_ms": a.adv_ms, "napi": if system == System::Agent { a.napi.as_str() } else { "softirq" }, "family": family().as_str(), "vmac": vmac_for(system), "scenarios": js}),
        );
    }
    if systems.len() == 2 {
        println!("\nside by side (outage p50 / max in ms, dual ownership in ms):");
        println!(
            "{:<16} {:>19} {:>19} {:>14} {:>20}",
            "scenario", "ha-agent", "keepalived", "ratio (p50)", "dual own (ha / ka)"
        );
        for &scenario in scenarios {
            if scenario == Scenario::ControlFlood {
                continue;
            }
            let get = |system: System| {
                let runs = results
                    .iter()
                    .find(|(s, sc, _)| *s == system && *sc == scenario)
                    .map(|(_, _, r)| r.as_slice())
                    .unwrap_or_default();
                let o: Vec<f64> = runs
                    .iter()
                    .filter(|r| r.recovered)
                    .map(|r| r.outage_ms)
                    .collect();
                let dual = runs.iter().map(|r| r.dual_owner_ms).fold(0.0, f64::max);
                (percentile(&o, 0.5), percentile(&o, 1.0), dual)
            };
            let (a50, amax, adual) = get(System::Agent);
            let (k50, kmax, kdual) = get(System::Keepalived);
            println!(
                "{:<16} {:>19} {:>19} {:>13.1}x {:>20}",
                scenario.name(),
                format!("{a50:.1} / {amax:.1}"),
                format!("{k50:.1} / {kmax:.1}"),
                k50 / a50,
                format!("{adual:.0} / {kdual:.0}")
            );
        }
    }
    print_soak(results);
    print_probe_cost(results);
    let mut json = serde_json::json!({ "systems": json_systems });
    // The soak per system and the probe cost (ha-agent) at the top too.
    let mut soaks = serde_json::Map::new();
    for (system, scenario, runs) in results {
        if *scenario == Scenario::Soak
            && let Some(v) = soak_json(runs)
        {
            soaks.insert(system.name().into(), v);
        }
        if *scenario == Scenario::ProbeCost
            && *system == System::Agent
            && let Some(v) = probe_cost_json(runs)
        {
            json["probe_cost"] = v;
        }
    }
    if !soaks.is_empty() {
        json["soak"] = soaks.into();
    }
    if let Some(dir) = a.json.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::write(
        &a.json,
        serde_json::to_vec_pretty(&json).unwrap_or_default(),
    ) {
        Ok(()) => println!("\nJSON: {}", a.json.display()),
        Err(e) => eprintln!("writing {}: {e}", a.json.display()),
    }
    let svg = a.json.with_extension("svg");
    match std::fs::write(&svg, timeline_svg(a, systems, results)) {
        Ok(()) => println!("timeline: {}", svg.display()),
        Err(e) => eprintln!("writing {}: {e}", svg.display()),
    }
}

/// Probe answers through the gateway around the first recovered run of each
/// crash scenario that ran (`hard-crash`, `agent-crash`), one row per
/// system and scenario: one tick per answer, a gap is the outage (its
/// length, and for ha-agent the detector that fired, beside it). A row
/// without a recovered run says so.
fn timeline_svg(a: &Args, systems: &[System], results: &[(System, Scenario, Vec<Run>)]) -> String {
    let crashes: Vec<Scenario> = [Scenario::HardCrash, Scenario::AgentCrash]
        .into_iter()
        .filter(|sc| results.iter().any(|(_, s, _)| s == sc))
        .collect();
    let rows: Vec<(System, Scenario, Option<&Run>)> = crashes
        .iter()
        .flat_map(|sc| {
            systems.iter().map(move |sy| {
                let run = results
                    .iter()
                    .find(|(s, c, _)| s == sy && c == sc)
                    .and_then(|(_, _, runs)| runs.iter().find(|r| r.recovered));
                (*sy, *sc, run)
            })
        })
        .collect();
    let (w, row, left) = (900.0, 60.0, 170.0);
    // Wide enough for the longest outage drawn.
    let longest = rows
        .iter()
        .filter_map(|(_, _, r)| r.map(|r| r.outage_ms))
        .fold(0.0, f64::max);
    let span = (-50.0, ((8 * a.adv_ms) as f64 + 100.0).max(longest + 60.0));
    let x = |ms: f64| left + (ms - span.0) / (span.1 - span.0) * (w - left - 20.0);
    let h = 60.0 + row * rows.len().max(1) as f64;
    let names: Vec<&str> = crashes.iter().map(|c| c.name()).collect();
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"18\">1 kHz UDP probes through the VIP gateway around the master's crash at 0 ms ({}; {} ms adverts)</text>\n",
        if names.is_empty() {
            "no crash scenario ran".to_owned()
        } else {
            names.join(", ")
        },
        a.adv_ms
    );
    for (i, (system, scenario, run)) in rows.iter().enumerate() {
        let y = 40.0 + row * i as f64;
        s += &format!(
            "<text x=\"10\" y=\"{}\">{}</text>\n<text x=\"10\" y=\"{}\" font-size=\"10\">{}</text>\n",
            y + 20.0,
            system.name(),
            y + 34.0,
            scenario.name()
        );
        let Some(run) = run else {
            s += &format!(
                "<text x=\"{}\" y=\"{}\" fill=\"#c00\">no recovered run</text>\n",
                left,
                y + 25.0
            );
            continue;
        };
        for ms in run
            .answers_ms
            .iter()
            .filter(|m| **m >= span.0 && **m <= span.1)
        {
            s += &format!(
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1}\" y2=\"{2}\" stroke=\"#2a7\" stroke-width=\"1\"/>\n",
                x(*ms),
                y + 5.0,
                y + 40.0
            );
        }
        s += &format!(
            "<text x=\"{}\" y=\"{}\" fill=\"#c00\">outage {:.1} ms{}</text>\n",
            x(span.1) - 200.0,
            y + 55.0,
            run.outage_ms,
            run.detected_by
                .as_ref()
                .map(|d| format!(" (detected by {d})"))
                .unwrap_or_default()
        );
    }
    let y0 = 40.0 + row * rows.len() as f64;
    s += &format!(
        "<line x1=\"{0}\" x2=\"{0}\" y1=\"30\" y2=\"{1}\" stroke=\"#c00\" stroke-dasharray=\"4\"/>\n",
        x(0.0),
        y0
    );
    let mut t = 0.0;
    while t <= span.1 {
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\">{t:.0} ms</text>\n",
            x(t) - 10.0,
            y0 + 12.0
        );
        t += (span.1 / 5.0 / 10.0).ceil() * 10.0;
    }
    s + "</svg>\n"
}

/// Lists the instances `--up` started (`fw1`, `fw2`), for `cargo xtask lab
/// down` to remove their pins and run files.
const UP_MARKER: &str = "/run/ha-agent/halab-up.instances";

/// `--up`: the lab with both agents, left running, their instances named
/// `fw1` and `fw2` like the namespaces they run in.
fn up(a: &Args) {
    if std::path::Path::new(UP_MARKER).exists() {
        eprintln!("a lab is already up ({UP_MARKER}): `cargo xtask lab down` first");
        std::process::exit(1);
    }
    for name in ["fw1", "fw2"] {
        if std::path::Path::new("/sys/fs/bpf").join(name).exists() {
            eprintln!(
                "an instance named {name} is pinned on this machine (/sys/fs/bpf/{name}) and is not a lab's: not touching it"
            );
            std::process::exit(1);
        }
    }
    let mut lab = build_lab(Scenario::HardCrash);
    let key = SyncKey::new("lab-up", [11u8; 32]);
    let _ = std::fs::create_dir_all("/run/ha-agent");
    std::fs::write(UP_MARKER, "fw1\nfw2\n").expect("write the lab-up marker");
    let agent = |lab: &mut Lab, node: u8| {
        let spec = AgentSpec {
            ha_extra: key.ha_extra(),
            napi_softirq: NAPI_SOFTIRQ.load(Ordering::Relaxed),
            ..AgentSpec::new(node, if node == 1 { 200 } else { 100 }, a.adv_ms)
        };
        let fw = format!("fw{node}");
        let agent = RunningAgent::start_as(lab, &fw, &spec, ha_tests::PinGuard(fw.clone()));
        service_limits(agent.pid);
        agent
    };
    let a1 = agent(&mut lab, 1);
    let a2 = agent(&mut lab, 2);
    let _ = wait("roles", Duration::from_secs(20), || {
        a1.role().as_deref() == Some("MASTER")
    });
    lab.keep();
    std::mem::forget(key);
    println!("the lab is up (namespaces stay until `cargo xtask lab down`):");
    for ns in ["client", "fw1", "fw2", "server", "probe"] {
        println!(
            "  {ns:<7} nsenter --net=/run/netns/{} bash",
            lab.netns_name(ns)
        );
    }
    let bin = agent_bin();
    println!("operator CLI (any namespace; status files are per instance):");
    println!("  {} status --instance fw1", bin.display());
    println!("  {} status --instance fw2", bin.display());
    println!("  {} maps --instance fw1", bin.display());
    println!("  {} demote --instance fw1", bin.display());
    std::mem::forget(a1);
    std::mem::forget(a2);
}

/// Drops every frame between fw1's and fw2's ports on the bridges of
/// `paths` ((bridge, interface): the ports are `fw1-<interface>` and
/// `fw2-<interface>`), both directions, for `hold`: an nftables `bridge`
/// table in each bridge's namespace (the carriers stay up; the rule goes
/// with the namespace if the run dies). Returns when the restoring began
/// (the heal: the first path restored); the drop counters go to the notes.
fn cut_for(lab: &Lab, paths: &[(&str, &str)], hold: Duration, run: &mut Run) -> Instant {
    let ruleset = |ifname: &str| {
        let (a, b) = (format!("fw1-{ifname}"), format!("fw2-{ifname}"));
        format!(
            "table bridge halab_cut {{\n chain forward {{\n  type filter hook forward priority -200; policy accept;\n  iifname \"{a}\" oifname \"{b}\" counter drop\n  iifname \"{b}\" oifname \"{a}\" counter drop\n }}\n}}\n"
        )
    };
    // Every path at once (one nft per bridge namespace, in parallel).
    let each = |what: &(dyn Fn(&str, &str) -> Result<(), String> + Sync)| -> Vec<String> {
        std::thread::scope(|s| {
            let handles: Vec<_> = paths
                .iter()
                .map(|(bridge, ifname)| s.spawn(move || what(bridge, ifname)))
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap_or(Err("panicked".into())).err())
                .collect()
        })
    };
    let errors = each(&|bridge, ifname| {
        lab.nft(bridge, &ruleset(ifname))
            .map_err(|e| format!("cutting {bridge}: {e}"))
    });
    run.notes.extend(errors);
    std::thread::sleep(hold);
    // The drop counters (read just before the heal).
    let dropped: Vec<String> = paths
        .iter()
        .map(|(bridge, _)| {
            let n: u64 = lab
                .exec(bridge, &["nft", "list", "table", "bridge", "halab_cut"])
                .map(|o| {
                    let text = String::from_utf8_lossy(&o.stdout).into_owned();
                    let words: Vec<&str> = text.split_whitespace().collect();
                    words
                        .windows(2)
                        .filter(|w| w[0] == "packets")
                        .filter_map(|w| w[1].parse::<u64>().ok())
                        .sum()
                })
                .unwrap_or(0);
            format!("{bridge} {n}")
        })
        .collect();
    // The heal: the moment the first path carries frames again (its
    // table deleted; each nft run takes tens of ms).
    let started = Instant::now();
    let restored = std::sync::Mutex::new(Vec::new());
    let errors = each(&|bridge, _| {
        let r = lab
            .nft(bridge, "delete table bridge halab_cut\n")
            .map_err(|e| format!("restoring {bridge}: {e}"));
        if r.is_ok() {
            restored.lock().map(|mut v| v.push(Instant::now())).ok();
        }
        r
    });
    run.notes.extend(errors);
    let restored = restored.into_inner().unwrap_or_default();
    let heal = restored.iter().min().copied().unwrap_or(started);
    let last = restored.iter().max().copied().unwrap_or(started);
    run.notes.push(format!(
        "cut {} ms; frames dropped between fw1 and fw2: {}; paths restored within {:.0} ms (the first after {:.0} ms: the heal)",
        hold.as_millis(),
        dropped.join(", "),
        last.saturating_duration_since(started).as_secs_f64() * 1e3,
        heal.saturating_duration_since(started).as_secs_f64() * 1e3
    ));
    heal
}

/// After a partition healed: the client's neighbour entry for the LAN VIP
/// (10.0.0.1, or its gateway fe80::1 with IPv6) and the server's for the WAN VIP
/// (10.1.0.1, fd00:1::1) (as their kernels hold them now) point to the
/// final master's lan0 and wan0 MACs. `None`: no single master.
fn vips_reannounced(lab: &Lab, n1: &Node, n2: &Node, notes: &mut Vec<String>) -> Option<bool> {
    let neigh = |ns: &str, ip: &str| -> String {
        lab.exec(ns, &["ip", "neigh", "show", ip, "dev", "eth0"])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let macs: Vec<[String; 2]> = ["fw1", "fw2"]
        .iter()
        .map(|fw| {
            [
                lab.mac((fw, "lan0")).unwrap_or_default(),
                lab.mac((fw, "wan0")).unwrap_or_default(),
            ]
        })
        .collect();
    let master = if !single_master(n1, n2) {
        None
    } else if n1.role().as_deref() == Some("MASTER") {
        Some(0)
    } else {
        Some(1)
    };
    let at = addrs();
    let (lan_vip, wan_vip) = (at.lan_gateway.to_string(), at.wan_vip.to_string());
    let (client, server) = (neigh("client", &lan_vip), neigh("server", &wan_vip));
    let who = |entry: &str, i: usize| {
        let mac = entry
            .split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)
            .unwrap_or("none");
        // The virtual MAC (`--vmac`) stands for whichever node owns it.
        let name = if mac.eq_ignore_ascii_case(ha_tests::survival::LAB_VMAC) {
            "virtual MAC".to_owned()
        } else {
            macs.iter()
                .position(|m| m[i].eq_ignore_ascii_case(mac))
                .map_or("?".to_owned(), |n| format!("fw{}", n + 1))
        };
        let state = entry.split_whitespace().last().unwrap_or("-");
        (name, format!("{mac} ({state})"))
    };
    let (c, s) = (who(&client, 0), who(&server, 1));
    notes.push(format!(
        "after the heal: master {}; client's {lan_vip} -> {} {}, server's {wan_vip} -> {} {}",
        master.map_or("none".to_owned(), |m| format!("fw{}", m + 1)),
        c.0,
        c.1,
        s.0,
        s.1
    ));
    let m = master?;
    let want = format!("fw{}", m + 1);
    let ok = |n: &str| n == want || n == "virtual MAC";
    Some(ok(&c.0) && ok(&s.0))
}

/// Sends SIGCONT on drop: a stalled daemon resumes even if the lab fails
/// mid-stall.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of a process we started.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Until the pair has been stable for `hold` (one MASTER, one BACKUP, both
/// in sync), at most `limit`.
fn settle_pair(n1: &Node, n2: &Node, hold: Duration, limit: Duration) -> bool {
    let t = Instant::now();
    let mut since: Option<Instant> = None;
    while t.elapsed() < limit {
        if single_master(n1, n2) && n1.in_sync() && n2.in_sync() {
            if since.get_or_insert_with(Instant::now).elapsed() >= hold {
                return true;
            }
        } else {
            since = None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// `stall`: the current master's election process frozen (SIGSTOP) for 50,
/// 200 and 1000 ms in turn, then resumed (SIGCONT); between stalls the pair
/// settles (stable and in sync for 3 s, at most 15 s). Returns (duration,
/// node, when stopped) of each stall.
fn stall(n1: &Node, n2: &Node, run: &mut Run) -> Vec<(u64, u8, Instant)> {
    let mut out = Vec::new();
    for (i, ms) in [50u64, 200, 1000].into_iter().enumerate() {
        let (node, victim) = if n2.role().as_deref() == Some("MASTER") {
            (2u8, n2)
        } else {
            (1, n1)
        };
        let Some(pid) = victim.election_pid() else {
            run.notes
                .push(format!("stall {}: {ms} ms: no pid for fw{node}", i + 1));
            continue;
        };
        let before = [n1.transitions(), n2.transitions()];
        let at = Instant::now();
        {
            let _resume = Resume(pid);
            // SAFETY: plain kill(2) of a process we started.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            std::thread::sleep(Duration::from_millis(ms));
        }
        out.push((ms, node, at));
        let settled = settle_pair(n1, n2, Duration::from_secs(3), Duration::from_secs(15));
        let after = [n1.transitions(), n2.transitions()];
        let moved: Vec<String> = (0..2)
            .map(|i| {
                after[i]
                    .zip(before[i])
                    .map_or("?".into(), |(a, b)| a.saturating_sub(b).to_string())
            })
            .collect();
        let roles = [n1.role(), n2.role()].map(|r| r.unwrap_or_else(|| "?".into()));
        run.notes.push(format!(
            "stall {} ({ms} ms of fw{node}): transitions fw1 +{} fw2 +{}; then fw1 {} fw2 {}{}",
            i + 1,
            moved[0],
            moved[1],
            roles[0],
            roles[1],
            if settled {
                ""
            } else {
                " (not stable and in sync within 15 s)"
            }
        ));
    }
    out
}

/// An advert of the lab's VRID 51 (both VIPs) from `src` to `dst`: the VRRP
/// message, checksum filled in for these addresses.
fn vrrp_advert(src: Ipv4Addr, dst: Ipv4Addr, priority: u8, adv_ms: u64) -> Vec<u8> {
    ha_core::vrrp::wire::Repr {
        vrid: 51,
        priority,
        interval_cs: (adv_ms / 10).max(1) as u16,
        addrs: vec![
            Ipv4Addr::new(10, 0, 0, 1).into(),
            Ipv4Addr::new(10, 1, 0, 1).into(),
        ],
    }
    .to_bytes(src, dst)
}

/// The kinds of hostile adverts of `hostile-vrrp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forged {
    /// Bad checksum; and VRRPv2 (priority 255 both).
    Malformed,
    /// Unauthenticated priority 255, spoofing the backup toward the master
    /// and the master toward the backup.
    Priority255,
    /// Priority 0 spoofing the master, toward the backup.
    Priority0,
    /// Priority 255 (toward both) and 0 (toward the backup), each with a
    /// 28-byte garbage authentication trailer (type 1, key id 1, random
    /// sequence and MAC).
    Trailer,
}

/// `hostile-vrrp`: hostile adverts from `rogue` on the HA segment and from
/// `roguelan` on the LAN, sent as whole Ethernet frames from packet sockets
/// (their own source MAC: the switch's tables stay right), to the target's
/// MAC; the IPv4 destination is the VRRP group (on the LAN, every other
/// frame goes to the target's LAN address instead) and the source is the
/// spoofed node's HA address (on the LAN, every other frame its LAN
/// address). Each kind is a burst per segment (the HA segment's, then the
/// LAN's) of at most 20,000 frames or 1 s, back to back, then a pause of
/// 1 s (and up to 5 s more for a single master): malformed, forged priority 255, priority 0, garbage trailer,
/// and replays of the master's genuine adverts captured for 1 s at its
/// switch ports at the start.
fn hostile_vrrp(lab: &Lab, adv_ms: u64, n1: &Node, n2: &Node, run: &mut Run) {
    use ha_core::vrrp::wire::MULTICAST;
    use ha_lab::hostile::{
        FrameSender, Garbage, capture_ip, ether_frame, inet_checksum, ipv4_packet, parse_mac,
    };
    const BURST: u64 = 20_000;
    let ha_ip = |n: u8| Ipv4Addr::new(10, 255, 0, n);
    let lan_ip = |n: u8| Ipv4Addr::new(10, 0, 0, n + 1);
    let mac = |n: u8, ifname: &str| {
        lab.mac((&format!("fw{n}"), ifname))
            .ok()
            .and_then(|m| parse_mac(&m))
            .unwrap_or([0; 6])
    };
    let master_backup = || {
        if n2.role().as_deref() == Some("MASTER") {
            (2u8, 1u8)
        } else {
            (1, 2)
        }
    };
    let (m0, _) = master_backup();
    // The master's genuine adverts, as a host on each segment records them.
    let (cap_ha, cap_lan) = std::thread::scope(|s| {
        let ha = s.spawn(|| {
            lab.run_in("hasw", || {
                capture_ip(
                    &format!("fw{m0}-ha0"),
                    112,
                    &[ha_ip(m0)],
                    5000,
                    Duration::from_secs(1),
                )
            })
        });
        let lan = s.spawn(|| {
            lab.run_in("lan", || {
                capture_ip(
                    &format!("fw{m0}-lan0"),
                    112,
                    &[ha_ip(m0), lan_ip(m0)],
                    5000,
                    Duration::from_secs(1),
                )
            })
        });
        let get = |h: std::thread::ScopedJoinHandle<
            '_,
            ha_lab::Result<std::io::Result<Vec<Vec<u8>>>>,
        >| {
            match h.join() {
                Ok(Ok(Ok(c))) => Ok(c),
                Ok(Ok(Err(e))) => Err(e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the capture thread panicked".into()),
            }
        };
        (get(ha), get(lan))
    });
    let cap_ha = cap_ha.unwrap_or_else(|e| {
        run.notes.push(format!("capture on hasw: {e}"));
        Vec::new()
    });
    let cap_lan = cap_lan.unwrap_or_else(|e| {
        run.notes.push(format!("capture on lan: {e}"));
        Vec::new()
    });
    run.notes.push(format!(
        "captured fw{m0}'s adverts for 1 s: {} on the HA segment, {} on the LAN",
        cap_ha.len(),
        cap_lan.len()
    ));
    let open = |ns: &str| match lab.run_in(ns, || FrameSender::open("eth0")) {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("{ns}: {e}")),
        Err(e) => Err(format!("{ns}: {e}")),
    };
    let (ha, lan) = match (open("rogue"), open("roguelan")) {
        (Ok(h), Ok(l)) => (h, l),
        (Err(e), _) | (_, Err(e)) => {
            run.notes.push(format!("packet socket: {e}"));
            return;
        }
    };
    let mut g = Garbage::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    let rejected = |n: &Node| match n {
        Node::Agent(a) => live_status(&a.pins.0, Duration::from_secs(2))
            .map(|s| s.rejected_by_reason)
            .unwrap_or_default(),
        Node::Keepalived(..) => Default::default(),
    };
    let rejected_before = [rejected(n1), rejected(n2)];
    // The VRRP messages of one kind from `src` to `dst` (IPv4).
    let mut payloads = |kind: Forged, src: Ipv4Addr, dst: Ipv4Addr, toward_master: bool| {
        let mut out = Vec::new();
        match kind {
            Forged::Malformed => {
                let mut bad = vrrp_advert(src, dst, 255, adv_ms);
                bad[6] ^= 0x5a;
                out.push(bad);
                // VRRPv2: no authentication, interval 1 s, 8 bytes of
                // authentication data (zero); its checksum covers the
                // message only.
                let mut v2 = vec![0x21, 51, 255, 2, 0, 1, 0, 0, 10, 0, 0, 1, 10, 1, 0, 1];
                v2.extend_from_slice(&[0; 8]);
                let c = inet_checksum(&v2);
                v2[6..8].copy_from_slice(&c.to_be_bytes());
                out.push(v2);
            }
            Forged::Priority255 => out.push(vrrp_advert(src, dst, 255, adv_ms)),
            Forged::Priority0 => {
                if !toward_master {
                    out.push(vrrp_advert(src, dst, 0, adv_ms));
                }
            }
            Forged::Trailer => {
                for _ in 0..32 {
                    let mut prios = vec![255];
                    if !toward_master {
                        prios.push(0);
                    }
                    for p in prios {
                        let mut a = vrrp_advert(src, dst, p, adv_ms);
                        a.extend_from_slice(&[1, 28, 0, 1]);
                        a.extend(g.bytes(24));
                        out.push(a);
                    }
                }
            }
        }
        out
    };
    // Frames of one kind on one segment: toward the master spoofing the
    // backup, toward the backup spoofing the master, interleaved.
    let mut frames = |kind: Forged, on_lan: bool, sender_mac: [u8; 6]| {
        let (m, b) = master_backup();
        let mut out = Vec::new();
        let mut id = 0u16;
        for (target, spoofed, toward_master) in [(m, b, true), (b, m, false)] {
            let dst_mac = mac(target, if on_lan { "lan0" } else { "ha0" });
            let variants: Vec<(Ipv4Addr, Ipv4Addr)> = if on_lan {
                vec![
                    (ha_ip(spoofed), MULTICAST),
                    (lan_ip(spoofed), MULTICAST),
                    (ha_ip(spoofed), lan_ip(target)),
                    (lan_ip(spoofed), lan_ip(target)),
                ]
            } else {
                vec![(ha_ip(spoofed), MULTICAST)]
            };
            for (src, dst) in variants {
                for p in payloads(kind, src, dst, toward_master) {
                    id = id.wrapping_add(1);
                    out.push(ether_frame(
                        dst_mac,
                        sender_mac,
                        &ipv4_packet(src, dst, 112, id, &p),
                    ));
                }
            }
        }
        out
    };
    let group_mac = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x12];
    let replay_ha: Vec<Vec<u8>> = cap_ha
        .iter()
        .map(|p| ether_frame(group_mac, ha.mac, p))
        .collect();
    let replay_lan: Vec<Vec<u8>> = cap_lan
        .iter()
        .map(|p| ether_frame(group_mac, lan.mac, p))
        .collect();
    let kinds: [(&str, Option<Forged>); 5] = [
        (
            "(a) malformed: bad checksum, VRRPv2",
            Some(Forged::Malformed),
        ),
        ("(b) forged priority 255", Some(Forged::Priority255)),
        (
            "(c) forged priority 0 as the master",
            Some(Forged::Priority0),
        ),
        (
            "(d) forged with a garbage 28-byte trailer",
            Some(Forged::Trailer),
        ),
        ("(e) replayed genuine adverts", None),
    ];
    for (label, kind) in kinds {
        let (on_ha, on_lan) = match kind {
            Some(k) => (frames(k, false, ha.mac), frames(k, true, lan.mac)),
            None => (replay_ha.clone(), replay_lan.clone()),
        };
        let before = [n1.transitions(), n2.transitions()];
        let pids = [n1.election_pid(), n2.election_pid()];
        let cpu = |i: usize| pids[i].and_then(|p| ha_lab::hostile::cpu_seconds(p as u32));
        let cpu0 = [cpu(0), cpu(1)];
        let t0 = Instant::now();
        // One segment after the other: the attacker spins one of the
        // machine's CPUs, not all of them (it shares them with its victims;
        // starving them would be an attack of another kind).
        let sh = ha.burst(&on_ha, BURST, Duration::from_secs(1));
        let sl = lan.burst(&on_lan, BURST, Duration::from_secs(1));
        let spent = t0.elapsed().as_secs_f64().max(0.01);
        let load: Vec<String> = (0..2)
            .map(|i| {
                cpu0[i].zip(cpu(i)).map_or("?".into(), |(a, b)| {
                    format!("{:.0}%", (b - a) / spent * 100.0)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        let settled = wait("a single master", Duration::from_secs(5), || {
            single_master(n1, n2)
        })
        .is_ok();
        let after = [n1.transitions(), n2.transitions()];
        let moved: Vec<String> = (0..2)
            .map(|i| {
                after[i]
                    .zip(before[i])
                    .map_or("?".into(), |(a, b)| a.saturating_sub(b).to_string())
            })
            .collect();
        let roles = [n1.role(), n2.role()].map(|r| r.unwrap_or_else(|| "?".into()));
        let rate = |x: &ha_lab::hostile::Sent| format!("{} in {:.2} s", x.datagrams, x.seconds);
        run.notes.push(format!(
            "{label}: HA {}, LAN {} (CPU of the election process meanwhile: fw1 {} fw2 {}); transitions fw1 +{} fw2 +{}; then fw1 {} fw2 {}{}",
            rate(&sh),
            rate(&sl),
            load[0],
            load[1],
            moved[0],
            moved[1],
            roles[0],
            roles[1],
            if settled {
                ""
            } else {
                " (no single master 6 s later)"
            }
        ));
    }
    for (i, n) in [n1, n2].into_iter().enumerate() {
        if let Node::Agent(_) = n {
            let now = rejected(n);
            let delta: Vec<String> = now
                .iter()
                .filter_map(|(k, v)| {
                    let d = v.saturating_sub(*rejected_before[i].get(k).unwrap_or(&0));
                    (d > 0).then(|| format!("{k} {d}"))
                })
                .collect();
            run.notes.push(format!(
                "fw{}'s agent rejected meanwhile: {}",
                i + 1,
                if delta.is_empty() {
                    "nothing".into()
                } else {
                    delta.join(", ")
                }
            ));
        }
    }
}

/// The agent's status as raw JSON, taken live over its operator socket
/// (`ha-agent status --json`'s object, with fields the lab's `Status` type
/// does not know, such as `fast_heartbeat`), else its status file; `None`
/// when neither answers.
fn status_json(instance: &str, limit: Duration) -> Option<serde_json::Value> {
    use std::io::{BufRead as _, Write as _};
    let live = (|| -> std::io::Result<serde_json::Value> {
        let mut s = std::os::unix::net::UnixStream::connect(ha_agent::paths::socket(instance))?;
        s.set_read_timeout(Some(limit))?;
        s.set_write_timeout(Some(limit))?;
        let mut line = serde_json::to_vec(&ha_agent::control::local::LocalRequest::Status)?;
        line.push(b'\n');
        s.write_all(&line)?;
        let mut reply = String::new();
        std::io::BufReader::new(s).read_line(&mut reply)?;
        let mut v: serde_json::Value = serde_json::from_str(&reply)?;
        Ok(v["status"].take())
    })();
    match live {
        Ok(v) if v.is_object() => Some(v),
        _ => std::fs::read(ha_agent::paths::status_file(instance))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok()),
    }
}

impl Node {
    /// The agent's `fast_heartbeat` status object; null when the agent
    /// reports none (off, or an agent without it) and for keepalived.
    fn fast_heartbeat(&self) -> serde_json::Value {
        match self {
            Node::Agent(a) => status_json(&a.pins.0, Duration::from_secs(2))
                .and_then(|mut s| s.get_mut("fast_heartbeat").map(serde_json::Value::take))
                .unwrap_or(serde_json::Value::Null),
            Node::Keepalived(..) => serde_json::Value::Null,
        }
    }
}

/// The reason of the new master's last transition to MASTER since `base`
/// (the nodes' `transitions_total` before the fault): which detector made
/// the takeover (`MasterDown`, `PeerSilent`, `PeerLapsed`, ...). `None`
/// when no agent that is MASTER now (and was started by the lab: a
/// restarted one has another count) became MASTER during the run.
/// With it, for a fast-heartbeat verdict, how long the peer had been silent
/// then (ms).
fn detected_by(nodes: [&Node; 2], base: [Option<u64>; 2]) -> Option<(String, Option<f64>)> {
    for (node, base) in nodes.into_iter().zip(base) {
        let Node::Agent(a) = node else {
            return None;
        };
        let Some(s) = live_status(&a.pins.0, Duration::from_secs(2)) else {
            continue;
        };
        if s.pid != a.pid || s.roles.get("fw").map(String::as_str) != Some("MASTER") {
            continue;
        }
        let since = s.transitions_total.saturating_sub(base?) as usize;
        if let Some(t) = s
            .transitions
            .iter()
            .rev()
            .take(since)
            .find(|t| t.role == "MASTER")
        {
            let silence = s
                .fast_heartbeat
                .as_ref()
                .filter(|_| t.reason.starts_with("Peer"))
                .and_then(|h| h.last_verdict_silence_us)
                .map(|us| us as f64 / 1e3);
            return Some((t.reason.clone(), silence));
        }
    }
    None
}

/// Processes the lab runner started outside [`Lab::spawn`] (it holds the
/// lab only by shared reference then): killed and reaped on drop, panics
/// included. Whatever survives dies with its namespace anyway.
struct Reap(Vec<std::process::Child>);

impl Drop for Reap {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The packets received and sent on `ifname` in namespace `ns` so far
/// (the kernel's link counters, /sys/class/net/<if>/statistics/{rx,tx}_packets,
/// read over netlink: the lab's /sys shows the host's namespace).
fn link_packets(lab: &Lab, ns: &str, ifname: &str) -> Option<(u64, u64)> {
    let out = lab
        .exec(ns, &["ip", "-j", "-s", "link", "show", "dev", ifname])
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let st = &v[0]["stats64"];
    Some((st["rx"]["packets"].as_u64()?, st["tx"]["packets"].as_u64()?))
}

/// Counter `key` of a `fast_heartbeat` object, if present.
fn fb_u64(fb: &serde_json::Value, key: &str) -> Option<u64> {
    fb.get(key)?.as_u64()
}

/// `gap_hist` (`[[gap in probes, count], ...]`) of every object in `fbs`
/// summed per gap; `None` when none has one.
fn merge_gap_hist<'a>(
    fbs: impl IntoIterator<Item = &'a serde_json::Value>,
) -> Option<std::collections::BTreeMap<u64, u64>> {
    let mut out: Option<std::collections::BTreeMap<u64, u64>> = None;
    for fb in fbs {
        let Some(h) = fb.get("gap_hist").and_then(|h| h.as_array()) else {
            continue;
        };
        let m = out.get_or_insert_with(Default::default);
        for e in h {
            if let (Some(g), Some(n)) = (
                e.get(0).and_then(|g| g.as_u64()),
                e.get(1).and_then(|n| n.as_u64()),
            ) {
                *m.entry(g).or_default() += n;
            }
        }
    }
    out
}

fn gap_hist_json(h: &Option<std::collections::BTreeMap<u64, u64>>) -> serde_json::Value {
    h.as_ref().map_or(serde_json::Value::Null, |h| {
        serde_json::json!(h.iter().map(|(g, n)| [*g, *n]).collect::<Vec<_>>())
    })
}

/// `verdicts` of every object in `fbs` summed per verdict; `None` when none
/// has them.
fn sum_verdicts<'a>(
    fbs: impl IntoIterator<Item = &'a serde_json::Value>,
) -> Option<std::collections::BTreeMap<String, u64>> {
    let mut out: Option<std::collections::BTreeMap<String, u64>> = None;
    for fb in fbs {
        let Some(v) = fb.get("verdicts").and_then(|v| v.as_object()) else {
            continue;
        };
        let m = out.get_or_insert_with(Default::default);
        for (k, n) in v {
            *m.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
    }
    out
}

/// `soak`: for `--soak-s` seconds every CPU spun by a busy loop (one bash
/// loop per CPU at normal priority, in the firewalls' namespaces, each
/// ending by itself 5 s after the soak and killed at its end) while iperf3
/// sends TCP (4 streams) from the client through the VIP gateway to the
/// server as fast as the lab forwards it. Its figures go to `run.soak`;
/// returns its window (start, end), for the client outage during it.
fn soak(lab: &Lab, n1: &Node, n2: &Node, a: &Args, run: &mut Run) -> (Instant, Instant) {
    use std::process::Stdio;
    let secs = a.soak_s.max(1);
    let nodes = [n1, n2];
    let mut procs = Reap(Vec::new());
    for ns in ["client", "server"] {
        if let Err(e) = lab.nft(
            ns,
            "table inet halab_iperf {\n counter rst {}\n chain in {\n  type filter hook input priority -300;\n  tcp sport 5201 tcp flags & rst == rst counter name rst\n  tcp dport 5201 tcp flags & rst == rst counter name rst\n }\n}\n",
        ) {
            run.notes.push(format!("iperf3 reset counter in {ns}: {e}"));
        }
    }
    match lab
        .command(
            "server",
            &["iperf3", "-s", "-1", "-B", "10.1.0.10", "-p", "5201"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => procs.0.push(c),
        Err(e) => run.notes.push(format!("iperf3 server: {e}")),
    }
    if let Err(e) = wait("iperf3 listening", Duration::from_secs(5), || {
        lab.exec("server", &["ss", "-Hltn", "sport = :5201"])
            .is_ok_and(|o| !o.stdout.is_empty())
    }) {
        run.notes.push(e);
    }
    let master = if n2.role().as_deref() == Some("MASTER") {
        "fw2"
    } else {
        "fw1"
    };
    let pids = nodes.map(Node::election_pid);
    let cpu = |i: usize| pids[i].and_then(|p| ha_lab::hostile::cpu_seconds(p as u32));
    let before = nodes.map(Node::transitions);
    let fb0 = nodes.map(Node::fast_heartbeat);
    let fwd0 = link_packets(lab, master, "wan0");
    let cpu0 = [cpu(0), cpu(1)];
    let host0 = host_cpu();
    let start = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let spin = format!("while [ $SECONDS -lt {} ]; do :; done", secs + 5);
    for i in 0..cpus {
        let ns = if i % 2 == 0 { "fw1" } else { "fw2" };
        match lab
            .command(ns, &["bash", "-c", &spin])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => procs.0.push(c),
            Err(e) => run.notes.push(format!("busy loop in {ns}: {e}")),
        }
    }
    let client = lab
        .command(
            "client",
            &[
                "iperf3",
                "-c",
                "10.1.0.10",
                "-p",
                "5201",
                "-t",
                &secs.to_string(),
                "-P",
                "4",
                "-J",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut report = None;
    match client {
        Ok(mut c) => {
            let out = c.stdout.take();
            report = Some(std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut o) = out {
                    let _ = std::io::Read::read_to_string(&mut o, &mut text);
                }
                text
            }));
            procs.0.push(c);
        }
        Err(e) => run.notes.push(format!("iperf3 client: {e}")),
    }
    // Until the client is done (it stops after `secs`), at most 15 s more.
    let deadline = Duration::from_secs(secs + 15);
    let client_at = procs.0.len().saturating_sub(1);
    while start.elapsed() < deadline {
        if start.elapsed() >= Duration::from_secs(secs)
            && (report.is_none() || procs.0[client_at].try_wait().is_ok_and(|s| s.is_some()))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let end = Instant::now();
    let wall = end.duration_since(start).as_secs_f64().max(0.001);
    let cpu1 = [cpu(0), cpu(1)];
    let host1 = host_cpu();
    let fwd1 = link_packets(lab, master, "wan0");
    // The busy loops and iperf3 stop here.
    drop(procs);
    let after = nodes.map(Node::transitions);
    let fb1 = nodes.map(Node::fast_heartbeat);
    let iperf: serde_json::Value = report
        .and_then(|r| r.join().ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(e) = iperf.get("error").and_then(|e| e.as_str()) {
        run.notes.push(format!("iperf3: {e}"));
    }
    let bps = iperf["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .or_else(|| iperf["end"]["sum"]["bits_per_second"].as_f64());
    let fwd_pps = fwd0
        .zip(fwd1)
        .map(|(a, b)| b.1.saturating_sub(a.1) as f64 / wall);
    let per_node =
        |f: &dyn Fn(usize) -> serde_json::Value| serde_json::json!({"fw1": f(0), "fw2": f(1)});
    let moved: [Option<u64>; 2] =
        [0, 1].map(|i| after[i].zip(before[i]).map(|(a, b)| a.saturating_sub(b)));
    let cpu_pct: [Option<f64>; 2] =
        [0, 1].map(|i| cpu0[i].zip(cpu1[i]).map(|(a, b)| (b - a) / wall * 100.0));
    let gap_hist = merge_gap_hist(&fb1);
    let verdicts = sum_verdicts(&fb1);
    let fb_field =
        |k: &'static str| per_node(&|i| fb1[i].get(k).cloned().unwrap_or(serde_json::Value::Null));
    let delta = |k: &'static str| {
        per_node(&|i| {
            serde_json::json!(
                fb_u64(&fb1[i], k)
                    .zip(fb_u64(&fb0[i], k))
                    .map(|(b, a)| b.saturating_sub(a))
            )
        })
    };
    run.soak = Some(serde_json::json!({
        "duration_s": wall,
        "busy_loops": cpus,
        "transitions": {
            "fw1": moved[0],
            "fw2": moved[1],
            "total": moved[0].zip(moved[1]).map(|(a, b)| a + b),
        },
        // Filled in by the caller from the probes' answers.
        "outage_max_ms": null,
        "outage_vip_max_ms": null,
        "traffic": "iperf3 TCP, 4 streams, client -> server through the VIP gateway",
        "forwarded_mbps": bps.map(|b| b / 1e6),
        "forwarded_pps": fwd_pps,
        "forwarded_by": master,
        "cpu_pct": {"fw1": cpu_pct[0], "fw2": cpu_pct[1]},
        "host_cpu_busy_pct": host_busy_pct(host0, host1),
        "gap_hist": gap_hist_json(&gap_hist),
        "misses": fb_field("misses"),
        "verdicts": verdicts,
        "probes_sent": delta("probes_sent"),
        "replies": delta("replies"),
        "fast_heartbeat": {"fw1": fb1[0], "fw2": fb1[1]},
    }));
    (start, end)
}

/// `probe-cost`: both agents idle (no traffic, no load), measured for
/// `--probe-cost-s` with the fast heartbeat on (the default), then with
/// `[ha.fast_heartbeat] enabled = false` (agents restarted in a fresh lab).
/// keepalived: n/a.
fn probe_cost(system: System, a: &Args) -> Run {
    if system == System::Keepalived {
        return Run {
            na: true,
            notes: vec!["n/a: keepalived has no fast heartbeat".into()],
            ..Run::default()
        };
    }
    let mut run = Run::default();
    let key = SyncKey::new("probe-cost", [11u8; 32]);
    let on = probe_cost_phase(a, &key, false, &mut run.notes);
    // An agent without the fast heartbeat refuses the key (its
    // configuration denies unknown fields): then "off" is the same
    // configuration, and says so.
    let spec = AgentSpec {
        ha_extra: key.ha_extra(),
        fast_heartbeat_off: true,
        ..AgentSpec::new(1, 200, a.adv_ms)
    };
    let known = match ha_agent::config::Config::parse(
        &spec.toml("probe-cost-check"),
        std::path::Path::new("probe-cost.toml"),
    ) {
        Err(e) => !e.to_string().contains("fast_heartbeat"),
        Ok(_) => true,
    };
    let off = if known {
        probe_cost_phase(a, &key, true, &mut run.notes)
    } else {
        run.notes.push(
            "this agent does not know [ha.fast_heartbeat]: the off phase ran the same configuration"
                .into(),
        );
        let mut off = probe_cost_phase(a, &key, false, &mut run.notes);
        off["config"] = serde_json::json!("unchanged (the agent has no fast heartbeat)");
        off
    };
    run.recovered = on.get("error").is_none() && off.get("error").is_none();
    run.probe_cost = Some(serde_json::json!({
        "duration_s": a.probe_cost_s,
        "on": on,
        "off": off,
    }));
    run
}

/// One phase of `probe-cost`: a fresh lab, both agents (`off`: with the
/// fast heartbeat off), settled, then measured for `--probe-cost-s`: each
/// agent's CPU (% of one CPU), its probes sent and replies per second (from
/// its status) and the packets per second on its ha0.
fn probe_cost_phase(
    a: &Args,
    key: &SyncKey,
    off: bool,
    notes: &mut Vec<String>,
) -> serde_json::Value {
    let phase = if off { "off" } else { "on" };
    let mut lab = build_lab(Scenario::ProbeCost);
    let nodes: Vec<Node> = [(1u8, 200u8), (2, 100)]
        .into_iter()
        .map(|(node, prio)| {
            let spec = AgentSpec {
                ha_extra: key.ha_extra(),
                fast_heartbeat_off: off,
                ..AgentSpec::new(node, prio, a.adv_ms)
            };
            let agent = RunningAgent::start(&mut lab, &format!("fw{node}"), &spec);
            service_limits(agent.pid);
            Node::Agent(agent)
        })
        .collect();
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let setup = wait("fw1 MASTER, fw2 BACKUP", Duration::from_secs(20), || {
        n1.role().as_deref() == Some("MASTER") && n2.role().as_deref() == Some("BACKUP")
    })
    .and_then(|()| {
        wait("state sync", Duration::from_secs(10), || {
            n1.in_sync() && n2.in_sync()
        })
    });
    if let Err(e) = setup {
        notes.push(format!("probe-cost {phase}: {e}"));
        return serde_json::json!({ "error": e });
    }
    // Past the start-up (GARPs, the first full sync).
    std::thread::sleep(Duration::from_secs(2));
    let sample = || {
        let fb = [n1.fast_heartbeat(), n2.fast_heartbeat()];
        let cpu = [n1, n2].map(|n| {
            n.election_pid()
                .and_then(|p| ha_lab::hostile::cpu_seconds(p as u32))
        });
        let ha = ["fw1", "fw2"].map(|ns| link_packets(&lab, ns, "ha0"));
        let tr = [n1.transitions(), n2.transitions()];
        (Instant::now(), cpu, fb, ha, tr, host_cpu())
    };
    let (t0, cpu0, fb0, ha0, tr0, host0) = sample();
    std::thread::sleep(Duration::from_secs(a.probe_cost_s.max(1)));
    let (t1, cpu1, fb1, ha1, tr1, host1) = sample();
    if std::env::var_os("HATEST_DEBUG").is_some() {
        for (i, n) in nodes.iter().enumerate() {
            if let Node::Agent(a) = n {
                let _ = std::fs::create_dir_all("target/lab");
                let _ = std::fs::copy(
                    &a.log,
                    format!("target/lab/probe-cost-{phase}-fw{}.log", i + 1),
                );
            }
        }
    }
    let secs = t1.duration_since(t0).as_secs_f64().max(0.001);
    let node = |i: usize| {
        let rate = |k: &str| {
            fb_u64(&fb1[i], k)
                .zip(fb_u64(&fb0[i], k))
                .map(|(b, a)| b.saturating_sub(a) as f64 / secs)
        };
        serde_json::json!({
            "cpu_pct": cpu0[i].zip(cpu1[i]).map(|(a, b)| (b - a) / secs * 100.0),
            "probes_sent_per_s": rate("probes_sent"),
            "replies_per_s": rate("replies"),
            "ha0_rx_pps": ha0[i].zip(ha1[i]).map(|(a, b)| b.0.saturating_sub(a.0) as f64 / secs),
            "ha0_tx_pps": ha0[i].zip(ha1[i]).map(|(a, b)| b.1.saturating_sub(a.1) as f64 / secs),
            "transitions": tr0[i].zip(tr1[i]).map(|(a, b)| b.saturating_sub(a)),
            "fast_heartbeat": fb1[i],
        })
    };
    serde_json::json!({
        "config": if off { "[ha.fast_heartbeat] enabled = false" } else { "default" },
        "duration_s": secs,
        // The whole machine's, the lab included: other work on the host
        // shows here (and disturbs the agents).
        "host_cpu_busy_pct": host_busy_pct(host0, host1),
        "fw1": node(0),
        "fw2": node(1),
    })
}

/// The JSON report's `soak` of one system: its runs' figures combined
/// (transitions summed, outage and CPU the worst, the forwarded rate the
/// mean, gap histograms and verdicts summed over runs and nodes, misses of
/// the last run) and each run's in `per_run`.
fn soak_json(runs: &[Run]) -> Option<serde_json::Value> {
    use serde_json::{Value, json};
    let soaks: Vec<&Value> = runs.iter().filter_map(|r| r.soak.as_ref()).collect();
    let last = *soaks.last()?;
    let sum = |f: &dyn Fn(&Value) -> Option<u64>| {
        soaks
            .iter()
            .map(|s| f(s))
            .try_fold(0u64, |t, v| Some(t + v?))
    };
    let max = |f: &dyn Fn(&Value) -> Option<f64>| {
        soaks
            .iter()
            .filter_map(|s| f(s))
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    let rates: Vec<f64> = soaks
        .iter()
        .filter_map(|s| s["forwarded_mbps"].as_f64())
        .collect();
    let pps: Vec<f64> = soaks
        .iter()
        .filter_map(|s| s["forwarded_pps"].as_f64())
        .collect();
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let fbs: Vec<&Value> = soaks
        .iter()
        .flat_map(|s| [&s["fast_heartbeat"]["fw1"], &s["fast_heartbeat"]["fw2"]])
        .collect();
    Some(json!({
        "runs": soaks.len(),
        "duration_s": last["duration_s"],
        "transitions": {
            "fw1": sum(&|s| s["transitions"]["fw1"].as_u64()),
            "fw2": sum(&|s| s["transitions"]["fw2"].as_u64()),
            "total": sum(&|s| s["transitions"]["total"].as_u64()),
        },
        "outage_max_ms": max(&|s| s["outage_max_ms"].as_f64()),
        "outage_vip_max_ms": max(&|s| s["outage_vip_max_ms"].as_f64()),
        "forwarded_mbps": mean(&rates),
        "forwarded_pps": mean(&pps),
        "cpu_pct": {
            "fw1": max(&|s| s["cpu_pct"]["fw1"].as_f64()),
            "fw2": max(&|s| s["cpu_pct"]["fw2"].as_f64()),
        },
        "gap_hist": gap_hist_json(&merge_gap_hist(fbs.iter().copied())),
        "misses": last["misses"],
        "verdicts": sum_verdicts(fbs.iter().copied()),
        "per_run": soaks,
    }))
}

/// The JSON report's `probe_cost`: `on` and `off` of the first run (each
/// run's in `per_run` when there are more).
fn probe_cost_json(runs: &[Run]) -> Option<serde_json::Value> {
    let all: Vec<&serde_json::Value> = runs.iter().filter_map(|r| r.probe_cost.as_ref()).collect();
    let mut v = (*all.first()?).clone();
    if all.len() > 1 {
        v["per_run"] = serde_json::json!(all);
    }
    Some(v)
}

fn fmt_opt(v: &serde_json::Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

/// The soak's section of the printed report: one line per system and run,
/// then the fast heartbeat's figures at the end of each ha-agent run.
fn print_soak(results: &[(System, Scenario, Vec<Run>)]) {
    let soaks: Vec<(System, usize, &serde_json::Value)> = results
        .iter()
        .filter(|(_, sc, _)| *sc == Scenario::Soak)
        .flat_map(|(sy, _, runs)| {
            runs.iter()
                .enumerate()
                .filter_map(move |(i, r)| Some((*sy, i + 1, r.soak.as_ref()?)))
        })
        .collect();
    if soaks.is_empty() {
        return;
    }
    println!(
        "\nsoak: every CPU spun by a busy loop, iperf3 TCP through the VIP gateway (CPU: the HA daemon, % of one CPU)"
    );
    println!(
        "{:<11} {:>3} {:>8} {:>12} {:>11} {:>12} {:>10} {:>10} {:>8} {:>8} {:>9}",
        "system",
        "run",
        "secs",
        "transitions",
        "outage max",
        "VIP svc max",
        "fwd Mbit/s",
        "fwd pps",
        "CPU fw1",
        "CPU fw2",
        "host CPU"
    );
    for (system, i, s) in &soaks {
        let t = &s["transitions"];
        println!(
            "{:<11} {:>3} {:>8} {:>12} {:>11} {:>12} {:>10} {:>10} {:>8} {:>8} {:>9}",
            system.name(),
            i,
            fmt_opt(&s["duration_s"], 0),
            format!(
                "{} ({}+{})",
                t["total"].as_u64().map_or("?".into(), |n| n.to_string()),
                t["fw1"].as_u64().map_or("?".into(), |n| n.to_string()),
                t["fw2"].as_u64().map_or("?".into(), |n| n.to_string()),
            ),
            fmt_opt(&s["outage_max_ms"], 1),
            fmt_opt(&s["outage_vip_max_ms"], 1),
            fmt_opt(&s["forwarded_mbps"], 0),
            fmt_opt(&s["forwarded_pps"], 0),
            fmt_opt(&s["cpu_pct"]["fw1"], 1),
            fmt_opt(&s["cpu_pct"]["fw2"], 1),
            fmt_opt(&s["host_cpu_busy_pct"], 1),
        );
    }
    for (system, i, s) in &soaks {
        if *system != System::Agent {
            continue;
        }
        for fw in ["fw1", "fw2"] {
            let fb = &s["fast_heartbeat"][fw];
            if fb.is_null() {
                println!("ha-agent run {i} {fw}: fast_heartbeat null (not reported)");
                continue;
            }
            let g = |k: &str| fb.get(k).map_or("-".into(), |v| v.to_string());
            println!(
                "ha-agent run {i} {fw}: fast heartbeat rate {} misses {} ({}..{}) probes sent {} replies {} during the soak ({} / {} in all), verdicts {}, gap max recent {}, rtt {}, rejected {}",
                g("rate"),
                g("misses"),
                g("misses_min"),
                g("misses_max"),
                s["probes_sent"][fw],
                s["replies"][fw],
                g("probes_sent"),
                g("replies"),
                g("verdicts"),
                g("gap_max_recent"),
                g("rtt_us"),
                g("rejected"),
            );
        }
        if let Some(h) = s["gap_hist"].as_array() {
            let text: Vec<String> = h.iter().map(|e| format!("{}: {}", e[0], e[1])).collect();
            println!(
                "ha-agent run {i}: gap histogram, both nodes (gap in probes: count): {}",
                text.join(", ")
            );
        }
    }
}

/// The probe cost's section of the printed report: the fast heartbeat on
/// and off side by side, per node.
fn print_probe_cost(results: &[(System, Scenario, Vec<Run>)]) {
    let Some(v) = results
        .iter()
        .find(|(sy, sc, _)| *sy == System::Agent && *sc == Scenario::ProbeCost)
        .and_then(|(_, _, runs)| probe_cost_json(runs))
    else {
        return;
    };
    println!(
        "\nprobe cost: ha-agent idle, {} s each (CPU: % of one CPU)",
        v["duration_s"]
    );
    for phase in ["on", "off"] {
        println!("  {phase}: {}", v[phase]["config"]);
        if let Some(e) = v[phase].get("error") {
            println!("  {phase}: not measured: {e}");
        }
    }
    println!("{:<22} {:>14} {:>14}", "", "fast hb on", "fast hb off");
    println!(
        "{:<22} {:>14} {:>14}",
        "host CPU busy %",
        fmt_opt(&v["on"]["host_cpu_busy_pct"], 1),
        fmt_opt(&v["off"]["host_cpu_busy_pct"], 1),
    );
    for fw in ["fw1", "fw2"] {
        for (label, key, digits) in [
            ("CPU %", "cpu_pct", 2),
            ("probes sent/s", "probes_sent_per_s", 0),
            ("replies/s", "replies_per_s", 0),
            ("ha0 rx packets/s", "ha0_rx_pps", 0),
            ("ha0 tx packets/s", "ha0_tx_pps", 0),
            ("transitions", "transitions", 0),
        ] {
            println!(
                "{:<22} {:>14} {:>14}",
                format!("{fw} {label}"),
                fmt_opt(&v["on"][fw][key], digits),
                fmt_opt(&v["off"][fw][key], digits),
            );
        }
    }
}

/// TCP resets of iperf3's connections (port 5201) that arrived in the client
/// and server namespaces (counted apart by `soak`).
fn iperf_resets(lab: &Lab) -> u64 {
    ["client", "server"]
        .into_iter()
        .filter_map(|ns| {
            let out = lab
                .exec(
                    ns,
                    &["nft", "list", "counter", "inet", "halab_iperf", "rst"],
                )
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The machine's CPU time so far from /proc/stat: (busy, total) jiffies
/// over every CPU.
fn host_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3)? + f.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// The machine's busy share between two [`host_cpu`] readings, % of all
/// its CPUs.
fn host_busy_pct(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = a.zip(b)?;
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64 * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The NS sampler's solicitation is the one the gate tests build with
    /// etherparse (its checksum over the IPv6 pseudo-header included).
    #[test]
    fn the_ns_samplers_solicitation_is_a_valid_one() {
        let src: Ipv6Addr = "fd00::100".parse().unwrap();
        let target: Ipv6Addr = ha_tests::LAN_VIP6.parse().unwrap();
        let ours = ha_lab::traffic::neighbor_solicit_frame(ha_tests::frames::SRC_MAC, src, target);
        assert_eq!(
            ours.to_vec(),
            ha_tests::frames::neighbor_solicit(src, target)
        );
        // To fd00::1's solicited-node group, ff02::1:ff00:1.
        assert_eq!(&ours[..6], &[0x33, 0x33, 0xff, 0, 0, 1]);
    }

    /// Two MACs in a slot are two owners, and so are two answers to one
    /// request (under a virtual MAC both name the same); one answer per
    /// request, however close, is one owner.
    #[test]
    fn dual_ownership_by_mac_or_by_answers_to_one_request() {
        let t0 = Instant::now();
        let ans = |ms: f64, mac: [u8; 6], request: u64| ArpAnswer {
            at: t0 + Duration::from_secs_f64(ms / 1e3),
            mac,
            request,
        };
        let end = t0 + Duration::from_millis(20);
        let (a, b, v) = (
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            [0, 0, 0x5e, 0, 1, 0x33],
        );
        let by_mac = [
            ans(1.0, a, 0),
            ans(1.2, b, 0),
            ans(6.0, a, 1),
            ans(11.0, a, 2),
        ];
        assert_eq!(dual_slots(&by_mac, t0, end), vec![t0]);
        // A stalled reader: answers to two requests read at once.
        let one = [
            ans(1.0, v, 0),
            ans(1.1, v, 1),
            ans(6.0, v, 2),
            ans(11.0, v, 3),
        ];
        assert_eq!(dual_slots(&one, t0, end), Vec::<Instant>::new());
        let two = [
            ans(1.0, v, 0),
            ans(1.3, v, 0),
            ans(6.0, v, 1),
            ans(11.0, v, 2),
        ];
        assert_eq!(dual_slots(&two, t0, end), vec![t0]);
    }

    /// A `fast_heartbeat` object as the agent with the fast heartbeat
    /// reports it.
    fn fb(sent: u64, hist: &[[u64; 2]]) -> serde_json::Value {
        serde_json::json!({
            "enabled": true, "interval_us": 1000, "rate": "fast",
            "misses": 3, "misses_min": 3, "misses_max": 30,
            "probes_sent": sent, "replies": sent - 1,
            "rejected": {"bad_mac": 2},
            "verdicts": {"silent": 0, "lapsed": 1, "false": 2},
            "gap_hist": hist,
            "gap_max_recent": 4,
            "rtt_us": {"p50": 40.0, "p99": 90.0, "max": 300.0},
        })
    }

    #[test]
    fn gap_histograms_and_verdicts_sum_over_nodes() {
        let a = fb(100, &[[1, 90], [2, 5]]);
        let b = fb(200, &[[1, 180], [4, 1]]);
        let h = merge_gap_hist([&a, &b, &serde_json::Value::Null]).unwrap();
        assert_eq!(
            h.into_iter().collect::<Vec<_>>(),
            [(1, 270), (2, 5), (4, 1)]
        );
        let v = sum_verdicts([&a, &b]).unwrap();
        assert_eq!(v["lapsed"], 2);
        assert_eq!(v["false"], 4);
        // Today's agent: no object, no figures.
        assert!(merge_gap_hist([&serde_json::Value::Null]).is_none());
        assert!(sum_verdicts([&serde_json::Value::Null]).is_none());
    }

    #[test]
    fn soak_json_combines_runs() {
        let run = |t: u64, out: f64, fw1: serde_json::Value| Run {
            soak: Some(serde_json::json!({
                "duration_s": 20.0,
                "transitions": {"fw1": t, "fw2": 0, "total": t},
                "outage_max_ms": out,
                "forwarded_mbps": 900.0,
                "forwarded_pps": 80000.0,
                "cpu_pct": {"fw1": 5.0, "fw2": 4.0},
                "misses": {"fw1": fw1["misses"], "fw2": null},
                "fast_heartbeat": {"fw1": fw1, "fw2": null},
            })),
            ..Run::default()
        };
        let v = soak_json(&[
            run(0, 12.0, fb(10, &[[1, 9]])),
            run(1, 30.0, fb(10, &[[1, 8], [3, 1]])),
        ])
        .unwrap();
        assert_eq!(v["transitions"]["total"], 1);
        assert_eq!(v["outage_max_ms"], 30.0);
        assert_eq!(v["gap_hist"], serde_json::json!([[1, 17], [3, 1]]));
        assert_eq!(v["verdicts"]["false"], 4);
        assert_eq!(v["misses"]["fw1"], 3);
        // Without the fast heartbeat: nulls, not errors.
        let v = soak_json(&[run(0, 12.0, serde_json::Value::Null)]).unwrap();
        assert!(v["gap_hist"].is_null() && v["verdicts"].is_null());
    }

    #[test]
    fn fast_heartbeat_off_is_written_only_when_asked() {
        let key = SyncKey::new("unit", [1u8; 32]);
        let on = AgentSpec {
            ha_extra: key.ha_extra(),
            ..AgentSpec::new(1, 200, 10)
        };
        assert!(!on.toml("x").contains("fast_heartbeat"));
        let off = AgentSpec {
            fast_heartbeat_off: true,
            ..on
        };
        let text = off.toml("x");
        let v: toml::Value = toml::from_str(&text).expect("valid TOML");
        assert_eq!(v["ha"]["fast_heartbeat"]["enabled"].as_bool(), Some(false));
        assert_eq!(v["ha"]["interface"].as_str(), Some("ha0"));
    }
}
