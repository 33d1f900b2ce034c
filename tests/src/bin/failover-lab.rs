//! The failover lab behind `cargo xtask lab`: builds the lab of
//! docs/architecture.md, runs every scenario against ha-agent (and, with
//! `--compare keepalived`, keepalived + conntrackd in the same topology),
//! measures what clients see, prints a table, and writes JSON and an SVG
//! timeline. Everything it creates is removed at the end of each run,
//! failures included.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use clap::Parser;
use ha_lab::{
    Lab,
    traffic::{
        Fleet, arp_sample, count_resets, echo_server, listen, resets_seen, udp_echo, udp_probe,
    },
};
use ha_tests::{
    AgentSpec, Keepalived, RunningAgent, SyncKey, agent_bin, conntrack_count, failover_lab,
    links_down_at_once, percentile, stateful_firewall,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    HardCrash,
    AgentCrash,
    Partition,
    Switchover,
    Graceful,
    Return,
}

impl Scenario {
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
        }
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
    /// Scenarios to run (repeatable); all by default.
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
    note: Option<String>,
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

/// Starts the system on `fw` (node 1 or 2).
fn start(
    lab: &mut Lab,
    system: System,
    node: u8,
    adv_ms: u64,
    key: &SyncKey,
    dir: &std::path::Path,
) -> Node {
    let fw = format!("fw{node}");
    let prio = if node == 1 { 200 } else { 100 };
    match system {
        System::Agent => Node::Agent(RunningAgent::start(
            lab,
            &fw,
            &AgentSpec {
                ha_extra: key.ha_extra(),
                ..AgentSpec::new(node, prio, adv_ms)
            },
        )),
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
            let k = Keepalived::start_with_notify(lab, &fw, node, prio, adv_ms, false, &on_state);
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
/// stateful ruleset, services on the VIP and on the server.
fn build_lab() -> Lab {
    let mut lab = failover_lab();
    lab.add_netns("probe").expect("probe namespace");
    lab.add_bridge_port("lan", ("probe", "eth0"))
        .expect("probe port");
    lab.add_addr(("probe", "eth0"), "10.0.0.20/24")
        .expect("probe address");
    for fw in ["fw1", "fw2"] {
        stateful_firewall(&lab, fw, None);
        // The service on the VIP (a DNS forwarder, a VPN endpoint).
        lab.nft(fw, "add rule inet halab_fw input udp dport 5353 accept\n")
            .expect("service rule");
    }
    for ns in ["client", "server"] {
        count_resets(&lab, ns).expect("reset counter");
    }
    lab
}

fn one_run(system: System, scenario: Scenario, a: &Args) -> Run {
    let mut lab = build_lab();
    let dir = std::env::temp_dir().join(format!("hatest-lab-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let key = SyncKey::new("lab", [11u8; 32]);
    let adv = a.adv_ms;
    let mdi = Duration::from_millis(3 * adv + adv);
    let n1 = start(&mut lab, system, 1, adv, &key, &dir);
    let n2 = start(&mut lab, system, 2, adv, &key, &dir);
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
        run.note = Some(e);
        return run;
    }
    let stop = AtomicBool::new(false);
    let limit = Duration::from_secs(60);
    let lab_ref = &lab;
    let server_tcp = SocketAddr::from((Ipv4Addr::new(10, 1, 0, 10), 9001));
    let listener = lab
        .run_in("server", || listen(server_tcp))
        .unwrap()
        .expect("listen");
    let usock = lab
        .run_in("server", || UdpSocket::bind("10.1.0.10:9000"))
        .unwrap()
        .expect("udp");
    // Bound to the VIP (so answers come from it), freebind: keepalived's
    // backup does not have the address yet.
    let vip_socket = || -> std::io::Result<UdpSocket> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
        s.set_freebind(true)?;
        s.bind(&SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 5353)).into())?;
        Ok(s.into())
    };
    let vsock1 = lab.run_in("fw1", vip_socket).unwrap().expect("udp fw1");
    let vsock2 = lab.run_in("fw2", vip_socket).unwrap().expect("udp fw2");
    std::thread::scope(|s| {
        s.spawn(|| echo_server(listener, &stop, limit));
        s.spawn(|| udp_echo(usock, &stop, limit));
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
                        "10.1.0.10:9000".parse().unwrap(),
                        Duration::from_millis(1),
                        &stop,
                        limit,
                    )
                })
                .unwrap()
                .unwrap_or_default()
        });
        let vip = s.spawn(|| {
            lab_ref
                .run_in("client", || {
                    udp_probe(
                        "10.0.0.1:5353".parse().unwrap(),
                        Duration::from_millis(1),
                        &stop,
                        limit,
                    )
                })
                .unwrap()
                .unwrap_or_default()
        });
        let arp = s.spawn(|| {
            lab_ref
                .run_in("probe", || {
                    arp_sample(
                        "eth0",
                        Ipv4Addr::new(10, 0, 0, 20),
                        Ipv4Addr::new(10, 0, 0, 1),
                        Duration::from_millis(5),
                        &stop,
                        limit,
                    )
                })
                .unwrap()
                .unwrap_or_default()
        });
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
                        run.note = Some("demote failed".into());
                    }
                    std::thread::sleep(settle);
                }
                System::Keepalived => {
                    // keepalived has no planned switchover: its nearest is a
                    // graceful stop.
                    run.note = Some("no switchover command: graceful stop instead".into());
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
        }
        // A fresh client must resolve the VIP by ARP now.
        run.arp_ok = lab_ref
            .command("probe", &["ping", "-c", "1", "-W", "1", "10.0.0.1"])
            .output()
            .is_ok_and(|o| o.status.success());
        run.tcp_survived = lab_ref
            .run_in("client", || fleet.round(1, Duration::from_secs(5)))
            .unwrap();
        run.rsts = fleet.resets as u64
            + resets_seen(lab_ref, "client").unwrap_or(0)
            + resets_seen(lab_ref, "server").unwrap_or(0);
        let end = Instant::now();
        stop.store(true, Ordering::Relaxed);
        let gw = gw.join().unwrap_or_default();
        let vip = vip.join().unwrap_or_default();
        let arp = arp.join().unwrap_or_default();
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
        run.recovered = gw.iter().any(|t| *t > end - Duration::from_millis(500))
            && vip.iter().any(|t| *t > end - Duration::from_millis(500));
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
        let slot = Duration::from_millis(5);
        let mut slots =
            std::collections::BTreeMap::<u64, std::collections::BTreeSet<[u8; 6]>>::new();
        for (t, mac) in arp.iter().filter(|(t, _)| *t >= fault) {
            slots
                .entry((t.duration_since(fault).as_nanos() / slot.as_nanos()) as u64)
                .or_default()
                .insert(*mac);
        }
        run.dual_owner_ms = slots.values().filter(|m| m.len() > 1).count() as f64 * 5.0;
        if scenario == Scenario::Return && system == System::Agent {
            // Preempted only after its resync completed?
            let log = std::fs::read_to_string(dir.join("fw1-return.log")).unwrap_or_default();
            let synced = log.find("preemption allowed");
            let master = log.find("MASTER: VIPs owned");
            match (synced, master) {
                (Some(s), Some(m)) if s < m => {}
                (_, None) => run.note = Some("the returning node did not take over".into()),
                _ => run.note = Some("the returning node took over before its resync".into()),
            }
        }
        for mut c in returned {
            let _ = c.kill();
            let _ = c.wait();
        }
    });
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

fn main() {
    let a = Args::parse();
    ha_tests::require_root();
    let _ = agent_bin();
    if a.up {
        return up(&a);
    }
    let scenarios: Vec<Scenario> = if a.scenario.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        a.scenario.clone()
    };
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
        "\nfailover lab: {} ms adverts, {} runs per scenario, {} TCP connections per run\n",
        a.adv_ms, a.runs, a.tcp
    );
    println!(
        "{:<12} {:<11} {:>9} {:>11} {:>11} {:>12} {:>11} {:>5} {:>10} {:>7} {:>6}",
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
        "flows"
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
            println!(
                "{:<12} {:<11} {:>9} {:>11.1} {:>11.1} {:>12.1} {:>11} {:>5} {:>10.0} {:>7} {:>6}",
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
                flows
            );
            for note in runs
                .iter()
                .filter_map(|r| r.note.as_ref())
                .collect::<std::collections::BTreeSet<_>>()
            {
                println!("{:<12} {:<11}   note: {note}", "", "");
            }
            js.push(serde_json::json!({
                "name": scenario.name(),
                "runs": runs.len(),
                "recovered": recovered,
                "outage_ms_p50": percentile(&outages, 0.5),
                "outage_ms_max": percentile(&outages, 1.0),
                "vip_service_outage_ms_max": vip_max,
                "tcp_total": tcp_total,
                "tcp_survived": tcp_alive,
                "rsts": rsts,
                "dual_owner_ms": dual,
                "arp_resolved": arp,
                "flows_replicated": flows,
            }));
        }
        json_systems.push(
            serde_json::json!({"system": system.name(), "adv_ms": a.adv_ms, "scenarios": js}),
        );
    }
    if systems.len() == 2 {
        println!("\nside by side (outage p50 / max in ms, dual ownership in ms):");
        println!(
            "{:<12} {:>19} {:>19} {:>14} {:>20}",
            "scenario", "ha-agent", "keepalived", "ratio (p50)", "dual own (ha / ka)"
        );
        for &scenario in scenarios {
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
                "{:<12} {:>19} {:>19} {:>13.1}x {:>20}",
                scenario.name(),
                format!("{a50:.1} / {amax:.1}"),
                format!("{k50:.1} / {kmax:.1}"),
                k50 / a50,
                format!("{adual:.0} / {kdual:.0}")
            );
        }
    }
    let json = serde_json::json!({ "systems": json_systems });
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

/// Probe answers through the gateway around the first hard crash of each
/// system: one tick per answer, a gap is the outage.
fn timeline_svg(a: &Args, systems: &[System], results: &[(System, Scenario, Vec<Run>)]) -> String {
    let (w, row, left) = (900.0, 60.0, 110.0);
    let span = (-50.0, (8 * a.adv_ms) as f64 + 100.0);
    let x = |ms: f64| left + (ms - span.0) / (span.1 - span.0) * (w - left - 20.0);
    let h = 60.0 + row * systems.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"18\">1 kHz UDP probes through the VIP gateway around a hard crash of the master at 0 ms ({} ms adverts)</text>\n",
        a.adv_ms
    );
    for (i, system) in systems.iter().enumerate() {
        let y = 40.0 + row * i as f64;
        s += &format!(
            "<text x=\"10\" y=\"{}\">{}</text>\n",
            y + 25.0,
            system.name()
        );
        let run = results
            .iter()
            .find(|(sy, sc, _)| sy == system && *sc == Scenario::HardCrash)
            .and_then(|(_, _, runs)| runs.iter().find(|r| r.recovered));
        if let Some(run) = run {
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
                "<text x=\"{}\" y=\"{}\" fill=\"#c00\">outage {:.1} ms</text>\n",
                x(span.1) - 110.0,
                y + 55.0,
                run.outage_ms
            );
        }
    }
    let y0 = 40.0 + row * systems.len() as f64;
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

/// `--up`: the lab with both agents, left running.
fn up(a: &Args) {
    let mut lab = build_lab();
    let key = SyncKey::new("lab-up", [11u8; 32]);
    let dir = std::env::temp_dir();
    let n1 = start(&mut lab, System::Agent, 1, a.adv_ms, &key, &dir);
    let n2 = start(&mut lab, System::Agent, 2, a.adv_ms, &key, &dir);
    let _ = wait("roles", Duration::from_secs(20), || {
        n1.role().as_deref() == Some("MASTER")
    });
    lab.keep();
    std::mem::forget(key);
    let (Node::Agent(a1), Node::Agent(a2)) = (&n1, &n2) else {
        return;
    };
    println!("the lab is up (namespaces stay until `cargo xtask lab down`):");
    for ns in ["client", "fw1", "fw2", "server", "probe"] {
        println!(
            "  {ns:<7} nsenter --net=/run/netns/{} bash",
            lab.netns_name(ns)
        );
    }
    let bin = agent_bin();
    println!("operator CLI (any namespace; status files are per instance):");
    println!("  {} status --instance {}", bin.display(), a1.pins.0);
    println!("  {} status --instance {}", bin.display(), a2.pins.0);
    println!("  {} maps --instance {}", bin.display(), a1.pins.0);
    println!("  {} demote --instance {}", bin.display(), a1.pins.0);
    std::mem::forget(n1);
    std::mem::forget(n2);
}
