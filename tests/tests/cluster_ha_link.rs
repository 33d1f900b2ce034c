//! The cluster verbs end to end with HA traffic on a dedicated HA link, as in
//! production: each firewall has a LAN (with the VIP), a second LAN-like
//! interface, and an HA link that is a veth pair of its own carrying nothing
//! else, with `ha_link` attached to it. The join, `check-backup-node`,
//! `init-backup-node`, `add-lan-interface` and the config push after
//! `add-vip` all run over that link (the control channel's replies have to
//! pass `ha_link`), then the VIP fails over when the primary's agent dies.
//!
//! ```text
//! client 10.0.0.10 --[lan]-- fw1 lan0 10.0.0.2 / fw2 lan0 10.0.0.3   (VIP 10.0.0.1)
//!                            fw1 wan0 10.1.0.2 / fw2 wan0 10.1.0.3   (added: VIP 10.1.0.1) --[wan]-- server
//!                            fw1 ha0 10.255.0.1 <--veth--> fw2 ha0 10.255.0.2
//! ```

use std::{path::Path, process::Output, time::Duration};

use ha_lab::Lab;
use ha_tests::{NodeFiles, PinGuard, agent_bin, require_root, spawn_agent, wait_for};

/// Runs `ha-agent <args>` in `ns`; stdin is the file `stdin` if given (a
/// redirect, as an operator feeds a token file), else empty.
fn cli(lab: &Lab, ns: &str, args: &[&str], stdin: Option<&Path>) -> Output {
    let bin = agent_bin();
    let mut argv = vec![bin.to_str().unwrap()];
    argv.extend_from_slice(args);
    let mut cmd = lab.command(ns, &argv);
    cmd.stdin(match stdin {
        Some(path) => std::process::Stdio::from(std::fs::File::open(path).unwrap()),
        None => std::process::Stdio::null(),
    })
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The lab: LAN and WAN are bridges shared with a client and a server; the
/// HA link is one veth pair between the firewalls.
fn lab() -> Lab {
    require_root();
    let mut lab = Lab::new();
    for ns in ["client", "fw1", "fw2", "server"] {
        lab.add_netns(ns).unwrap();
    }
    lab.add_bridge("lan").unwrap();
    lab.add_bridge("wan").unwrap();
    lab.add_bridge_port("lan", ("client", "eth0")).unwrap();
    lab.add_bridge_port("wan", ("server", "eth0")).unwrap();
    lab.add_veth(("fw1", "ha0"), ("fw2", "ha0")).unwrap();
    for (i, fw) in ["fw1", "fw2"].into_iter().enumerate() {
        lab.add_bridge_port("lan", (fw, "lan0")).unwrap();
        lab.add_bridge_port("wan", (fw, "wan0")).unwrap();
        lab.add_addr((fw, "lan0"), &format!("10.0.0.{}/24", i + 2))
            .unwrap();
        lab.add_addr((fw, "wan0"), &format!("10.1.0.{}/24", i + 2))
            .unwrap();
        lab.add_addr((fw, "ha0"), &format!("10.255.0.{}/24", i + 1))
            .unwrap();
        lab.sysctl(fw, "net.ipv4.ip_forward", "1").unwrap();
    }
    lab.add_addr(("client", "eth0"), "10.0.0.10/24").unwrap();
    lab.add_route("client", "default", "10.0.0.1").unwrap();
    lab.add_addr(("server", "eth0"), "10.1.0.10/24").unwrap();
    lab.add_route("server", "default", "10.1.0.1").unwrap();
    lab
}

/// The `ha_link` verdict counters of an instance (name, count).
fn link_verdicts(instance: &str) -> Vec<(String, u64)> {
    ha_agent::dataplane::inspect::Snapshot::read(instance, 0)
        .map(|s| s.link_verdicts)
        .unwrap_or_default()
}

fn verdict(list: &[(String, u64)], name: &str) -> u64 {
    list.iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
}

fn status(lab: &Lab, ns: &str, instance: &str) -> String {
    text(&cli(lab, ns, &["status", "--instance", instance], None))
}

/// Runs a cluster verb that must succeed; on failure the agents' logs are
/// shown. Returns its output.
fn ok(
    lab: &Lab,
    logs: &[std::path::PathBuf],
    ns: &str,
    args: &[&str],
    stdin: Option<&Path>,
) -> String {
    let o = cli(lab, ns, args, stdin);
    let t = text(&o);
    if !o.status.success() {
        for l in logs {
            eprintln!(
                "--- {}\n{}",
                l.display(),
                std::fs::read_to_string(l).unwrap_or_default()
            );
        }
        panic!("`ha-agent {}` failed:\n{t}", args.join(" "));
    }
    t
}

#[test]
fn cluster_verbs_over_a_dedicated_ha_link() {
    let pins1 = PinGuard::new("hal1");
    let pins2 = PinGuard::new("hal2");
    let dir = std::env::temp_dir().join(&pins1.0);
    let (d1, d2) = (dir.join("fw1"), dir.join("fw2"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let _rm = NodeFiles(dir.clone(), vec![pins1.0.clone(), pins2.0.clone()]);
    // Declared after the guards, so dropped before them: the agents (the
    // lab's children) are gone before their status files are removed.
    let mut lab = lab();
    let (c1, c2) = (d1.join("config.toml"), d2.join("config.toml"));
    let (c1s, c2s) = (c1.to_str().unwrap(), c2.to_str().unwrap());
    let logs = [d1.join("agent.log"), d2.join("agent.log")];
    // The backup: a join token (kept in a file, fed as a redirect), and its
    // agent waiting to be joined on its HA address.
    let t = ok(
        &lab,
        &logs,
        "fw2",
        &["cluster", "--config", c2s, "join-token"],
        None,
    );
    let token = t.lines().next().unwrap().trim().to_owned();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let log2 = std::fs::File::create(&logs[1]).unwrap();
    spawn_agent(
        &mut lab,
        "fw2",
        &c2,
        &["--instance", &pins2.0, "--join-listen", "10.255.0.2:7789"],
        log2,
    );
    wait_for(
        "the backup listening for the join",
        Duration::from_secs(10),
        || {
            lab.exec("fw2", &["ss", "-Hltn", "sport = :7789"])
                .is_ok_and(|o| !o.stdout.is_empty())
        },
    );

    // The primary, with HA on its own link: its agent attaches ha_link to
    // ha0 before any cluster verb talks to the backup over it.
    let t = ok(
        &lab,
        &logs,
        "fw1",
        &[
            "cluster",
            "--config",
            c1s,
            "init-primary-node",
            "10.255.0.1",
            "10.255.0.2",
            "10.0.0.1/24",
            "lan0",
            "--instance",
            &pins1.0,
        ],
        None,
    );
    assert!(t.contains("HA on ha0"), "a dedicated HA link: {t}");
    let log1 = std::fs::File::create(&logs[0]).unwrap();
    let primary = spawn_agent(&mut lab, "fw1", &c1, &["--instance", &pins1.0], log1);
    wait_for("fw1 master", Duration::from_secs(10), || {
        status(&lab, "fw1", &pins1.0).contains("currently MASTER")
    });
    assert!(
        std::fs::read_to_string(&logs[0])
            .unwrap_or_default()
            .contains("ha_link attached"),
        "ha_link must filter the HA link"
    );

    // The join, over the HA link.
    let t = ok(
        &lab,
        &logs,
        "fw1",
        &[
            "cluster",
            "--config",
            c1s,
            "check-backup-node",
            "10.255.0.2",
            "lan0",
        ],
        Some(&token_file),
    );
    assert!(t.contains("OK"), "{t}");
    let root2 = d2.join("root");
    let t = ok(
        &lab,
        &logs,
        "fw1",
        &[
            "cluster",
            "--config",
            c1s,
            "init-backup-node",
            "lan0",
            "--files-root",
            root2.to_str().unwrap(),
        ],
        Some(&token_file),
    );
    assert!(t.contains("initialized"), "{t}");
    wait_for("fw2 backup, in sync", Duration::from_secs(15), || {
        let s = status(&lab, "fw2", &pins2.0);
        s.contains("SECONDARY, currently BACKUP") && s.contains("state sync: up to date")
    });

    // A change on the primary is pushed over the HA link.
    ok(
        &lab,
        &logs,
        "fw1",
        &[
            "cluster",
            "--config",
            c1s,
            "add-vip",
            "lan0",
            "10.0.0.100/24",
        ],
        None,
    );
    wait_for(
        "the VIP pushed to the secondary",
        Duration::from_secs(15),
        || std::fs::read_to_string(&c2).is_ok_and(|c| c.contains("10.0.0.100/24")),
    );
    // add-lan-interface asks the backup about its interfaces over the link.
    ok(
        &lab,
        &logs,
        "fw1",
        &[
            "cluster",
            "--config",
            c1s,
            "add-lan-interface",
            "10.1.0.2",
            "10.1.0.3",
            "10.1.0.1/24",
        ],
        None,
    );
    wait_for(
        "the LAN interface pushed, config sync up to date",
        Duration::from_secs(15),
        || {
            std::fs::read_to_string(&c2).is_ok_and(|c| c.contains("10.1.0.1/24"))
                && status(&lab, "fw1", &pins1.0).contains("config sync: Up to Date")
        },
    );
    let s1 = status(&lab, "fw1", &pins1.0);
    let s2 = status(&lab, "fw2", &pins2.0);
    eprintln!("fw1:\n{s1}\nfw2:\n{s2}");
    if std::env::var_os("HATEST_DEBUG").is_some() {
        for l in &logs {
            eprintln!(
                "--- {}\n{}",
                l.display(),
                std::fs::read_to_string(l).unwrap_or_default()
            );
        }
    }
    assert!(s1.contains("peer 10.255.0.2: ALIVE"), "{s1}");
    assert!(
        s2.contains("configuration is managed on the primary 10.255.0.1"),
        "{s2}"
    );

    // Both ends of the HA link filtered: the control channel went through
    // ha_link on both (connections in, and replies to connections out).
    let (v1, v2) = (link_verdicts(&pins1.0), link_verdicts(&pins2.0));
    eprintln!("ha_link fw1: {v1:?}\nha_link fw2: {v2:?}");
    assert!(verdict(&v1, "pass_control_reply") > 0, "{v1:?}");
    assert!(verdict(&v2, "pass_control") > 0, "{v2:?}");

    // The VIP fails over: the primary's agent dies, the secondary takes it.
    // SAFETY: plain syscall on a pid this test started.
    unsafe { libc::kill(primary as i32, libc::SIGKILL) };
    wait_for("fw2 master", Duration::from_secs(10), || {
        status(&lab, "fw2", &pins2.0).contains("currently MASTER")
    });
    let fw2_mac = lab.mac(("fw2", "lan0")).unwrap().to_ascii_lowercase();
    wait_for(
        "the VIP answered by fw2 only",
        Duration::from_secs(10),
        || {
            let answers = ha_tests::arp_answers(&lab, "10.0.0.1".parse().unwrap());
            !answers.is_empty() && answers.iter().all(|m| *m == fw2_mac)
        },
    );
    wait_for(
        "a ping through the VIP gateway after the failover",
        Duration::from_secs(10),
        || {
            lab.exec("client", &["ping", "-c", "1", "-W", "1", "10.1.0.10"])
                .is_ok_and(|o| o.status.success())
        },
    );
}
