//! A node-by-node migration from keepalived: both firewalls run Debian's
//! keepalived 2.2.7 with the lab's own configuration (VRRPv3, unicast,
//! 100 ms adverts); fw2's keepalived is stopped, its keepalived.conf
//! imported with `ha-agent import keepalived` (in fw2's namespace, as an
//! operator would on the box), checked with `ha-agent check-config`, and
//! the agent started from it. Then:
//! 1. the agent stays BACKUP under keepalived's MASTER (same VRID, plain
//!    VRRPv3 both ways) for 5 s, nothing moving;
//! 2. fw1's keepalived stops gracefully (priority 0, the next step of the
//!    migration): the agent takes over, alone answering for the VIP.

use std::time::{Duration, Instant};

use ha_tests::{
    Keepalived, KeepalivedOptions, PinGuard, RunningAgent, agent_bin, agent_dir, arp_answers,
    failover_lab, spawn_agent, wait_for,
};

#[test]
fn an_imported_keepalived_conf_interoperates_with_the_keepalived_it_came_from() {
    ha_tests::require_root();
    let mut lab = failover_lab();
    let ka_opts = KeepalivedOptions {
        unicast: true,
        ..KeepalivedOptions::default()
    };
    let ka1 = Keepalived::start_with(&mut lab, "fw1", 1, 200, 100, &ka_opts);
    let ka2 = Keepalived::start_with(&mut lab, "fw2", 2, 100, 100, &ka_opts);
    wait_for(
        "keepalived fw1 MASTER, fw2 BACKUP",
        Duration::from_secs(15),
        || ka1.state().as_deref() == Some("MASTER") && ka2.state().as_deref() == Some("BACKUP"),
    );

    // fw2 is migrated: its keepalived stops, its configuration is imported.
    let ka2_conf = ka2.dir.join("keepalived.conf");
    // Its notify script stays (keepalived's directory goes with `ka2`).
    ka2.signal(libc::SIGTERM);
    let pins = PinGuard::new("import2");
    let dir = agent_dir(&pins.0);
    let config = dir.join("config.toml");
    // A copy beside it (keepalived's directory goes with `ka2`); removed with it.
    let conf_copy = dir.join("keepalived.conf");
    std::fs::copy(&ka2_conf, &conf_copy).unwrap();
    let bin = agent_bin();
    let run = |args: &[&str]| {
        let mut argv = vec![bin.to_str().unwrap()];
        argv.extend_from_slice(args);
        let out = lab.command("fw2", &argv).output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, said) = run(&[
        "import",
        "keepalived",
        conf_copy.to_str().unwrap(),
        "--instance",
        &pins.0,
        "-o",
        config.to_str().unwrap(),
    ]);
    eprintln!("import:\n{said}");
    assert!(ok, "{said}");
    let text = std::fs::read_to_string(&config).unwrap();
    eprintln!("imported:\n{text}");
    assert!(
        text.contains("router_id fw2: ha-agent names a node"),
        "{text}"
    );
    assert!(
        text.contains("state BACKUP: ha-agent has no initial state"),
        "{text}"
    );
    let (ok, said) = run(&["check-config", config.to_str().unwrap()]);
    assert!(ok, "check-config refused the import:\n{said}");
    let imported = ha_agent::config::Config::load(&config).unwrap();
    let i = &imported.groups[0].instances[0];
    assert_eq!((i.vrid, i.priority, i.advert_interval_ms), (51, 100, 100));
    assert_eq!(i.vips.len(), 2);
    assert_eq!(
        imported.ha.peers,
        ["10.255.0.1".parse::<std::net::Ipv4Addr>().unwrap()]
    );

    let log = dir.join("agent.log");
    let pid = spawn_agent(
        &mut lab,
        "fw2",
        &config,
        &[],
        std::fs::File::create(&log).unwrap(),
    );
    let agent = RunningAgent {
        ns: "fw2".into(),
        pid,
        pins,
        log,
    };
    let status = || agent.status();
    // The group is named after keepalived's instance (no sync group).
    let role = || status().and_then(|s| s.roles.get("VI_1").cloned());
    wait_for("the imported agent BACKUP", Duration::from_secs(15), || {
        role().as_deref() == Some("BACKUP") && status().is_some_and(|s| s.adverts_received > 5)
    });
    let moved = status().unwrap().transitions_total;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        assert_eq!(role().as_deref(), Some("BACKUP"), "the agent left BACKUP");
        assert_eq!(
            ka1.state().as_deref(),
            Some("MASTER"),
            "keepalived left MASTER"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = status().unwrap();
    assert_eq!(st.transitions_total, moved, "{:?}", st.transitions);
    assert_eq!(st.last_advert_from, Some("10.255.0.1".parse().unwrap()));
    assert!(
        st.rejected_by_reason.values().all(|n| *n == 0),
        "{:?}",
        st.rejected_by_reason
    );

    // The next step: fw1's keepalived leaves (priority 0); the agent takes over.
    ka1.signal(libc::SIGTERM);
    wait_for("the imported agent MASTER", Duration::from_secs(10), || {
        role().as_deref() == Some("MASTER")
    });
    wait_for(
        "only fw2 answers for the VIP",
        Duration::from_secs(10),
        || arp_answers(&lab, "10.0.0.1".parse().unwrap()).len() == 2,
    );
    let answers = arp_answers(&lab, "10.0.0.1".parse().unwrap());
    let mut macs = answers.clone();
    macs.dedup();
    assert_eq!(macs.len(), 1, "one owner: {answers:?}");

    drop(agent);
    drop(lab);
}
