//! Interfaces that follow the role (NethSecurity keeps the secondary's WANs
//! down unless it is master): `role_interfaces` is up on the MASTER and down
//! on the BACKUP, moves with a hard failover, and goes down when the agent
//! stops (root; a veth on each firewall stands for a PPPoE WAN). Meanwhile
//! `ha-agent events --json` follows the backup, and shows its takeover and
//! its stop.

use std::time::Duration;

use ha_tests::{
    AgentSpec, agent_bin, failover_lab, links_down_at_once, require_root, start_pair, wait_for,
};

/// Whether `iface` in `ns` is administratively up.
fn admin_up(lab: &ha_lab::Lab, ns: &str, iface: &str) -> bool {
    let out = lab
        .exec(ns, &["ip", "-o", "link", "show", "dev", iface])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .is_some_and(|(flags, _)| flags.split(',').any(|f| f == "UP"))
}

#[test]
fn role_interfaces_follow_the_role_through_a_failover_and_a_stop() {
    require_root();
    let mut lab = failover_lab();
    for fw in ["fw1", "fw2"] {
        let out = lab
            .exec(
                fw,
                &[
                    "ip", "link", "add", "ppp9", "type", "veth", "peer", "name", "ppp9p",
                ],
            )
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let (a1, a2) = start_pair(&mut lab, 100, |spec| AgentSpec {
        group_extra: "role_interfaces = [\"ppp9\"]".into(),
        ..spec
    });
    wait_for("roles", Duration::from_secs(10), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
    wait_for("ppp9 up on the master only", Duration::from_secs(5), || {
        admin_up(&lab, "fw1", "ppp9") && !admin_up(&lab, "fw2", "ppp9")
    });

    let mut events = std::process::Command::new(agent_bin())
        .args(["events", "--json", "--for", "60", "--instance", &a2.pins.0])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ha-agent events");
    std::thread::sleep(Duration::from_millis(300));

    // A hard crash of the master: the backup takes over, and its ppp9 comes
    // up (fw1's stays as the dead node left it).
    links_down_at_once(&lab, "fw1", &["ha0", "lan0", "wan0"]);
    a1.signal(libc::SIGKILL);
    wait_for("fw2 takes over", Duration::from_secs(10), || {
        a2.role().as_deref() == Some("MASTER")
    });
    wait_for("ppp9 up on the new master", Duration::from_secs(5), || {
        admin_up(&lab, "fw2", "ppp9")
    });

    // A graceful stop takes it down.
    a2.signal(libc::SIGTERM);
    wait_for(
        "ppp9 down once the agent stopped",
        Duration::from_secs(10),
        || !admin_up(&lab, "fw2", "ppp9"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let _ = events.kill();
    let out = events.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect();
    let kinds: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"agent_up"), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "transition" && l["role"] == "MASTER"),
        "the takeover: {lines:#?}"
    );
    assert_eq!(kinds.last(), Some(&"agent_gone"), "the stop: {lines:#?}");
}
