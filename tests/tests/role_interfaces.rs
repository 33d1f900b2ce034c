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
    // Its lines as they come.
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let reader = {
        let (stdout, lines) = (events.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for l in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let v = serde_json::from_str(&l).expect("a JSON object per line");
                lines.lock().unwrap().push(v);
            }
        })
    };
    let seen = |event: &str, role: Option<&str>| {
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l["event"] == event && role.is_none_or(|r| l["role"] == r))
    };
    wait_for("events follows fw2", Duration::from_secs(10), || {
        seen("agent_up", None)
    });

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

    // events saw the takeover.
    wait_for("events shows the takeover", Duration::from_secs(10), || {
        seen("transition", Some("MASTER"))
    });

    // A graceful stop takes it down.
    a2.signal(libc::SIGTERM);
    wait_for(
        "ppp9 down once the agent stopped",
        Duration::from_secs(10),
        || !admin_up(&lab, "fw2", "ppp9"),
    );
    wait_for("events shows the stop", Duration::from_secs(10), || {
        seen("agent_gone", None)
    });
    let _ = events.kill();
    let _ = events.wait();
    reader.join().unwrap();
    let lines = lines.lock().unwrap();
    assert_eq!(
        lines.first().map(|l| &l["event"]),
        Some(&"agent_up".into()),
        "{lines:#?}"
    );
    assert_eq!(
        lines.last().map(|l| &l["event"]),
        Some(&"agent_gone".into()),
        "{lines:#?}"
    );
}
