//! Heartbeats over every path, authenticated (issue 13): two agents with the
//! cluster key sign their adverts (`enforce`, the default with a key) and
//! send them over the HA link and both VIP interfaces (lan0, wan0).
//! 1. Both report the mode and three paths; the backup hears the master on
//!    each.
//! 2. HA frames dropped at the HA switch, carrier up (a switch or VLAN
//!    fault): no role moves, the backup reports `ha0 down` (status and its
//!    notify script), and `up` again after.
//! 3. The master's HA port loses carrier: no role moves; the master reports
//!    `no-carrier`.
//! 4. Every path cut (a true partition): the backup takes over; after
//!    healing one master remains within a few intervals.

use std::time::Duration;

use ha_tests::{AgentSpec, RunningAgent, SyncKey, failover_lab, start_pair, wait_for};

/// Drops frames between fw1 and fw2 on `bridge` (its namespace) until
/// dropped itself; the carrier stays up.
struct Cut<'a> {
    lab: &'a ha_lab::Lab,
    bridges: Vec<(&'static str, &'static str)>,
}

impl<'a> Cut<'a> {
    fn new(lab: &'a ha_lab::Lab, bridges: &[(&'static str, &'static str)]) -> Self {
        for (bridge, port) in bridges {
            lab.nft(
                bridge,
                &format!(
                    "table bridge hacut {{
  chain cut {{
    type filter hook forward priority 0; policy accept;
    iifname \"fw1-{port}\" oifname \"fw2-{port}\" drop
    iifname \"fw2-{port}\" oifname \"fw1-{port}\" drop
  }}
}}
"
                ),
            )
            .expect("cut rule");
        }
        Cut {
            lab,
            bridges: bridges.to_vec(),
        }
    }
}

impl Drop for Cut<'_> {
    fn drop(&mut self) {
        for (bridge, _) in &self.bridges {
            let _ = self
                .lab
                .exec(bridge, &["nft", "delete", "table", "bridge", "hacut"]);
        }
    }
}

fn path_state(a: &RunningAgent, iface: &str) -> Option<String> {
    a.status()?
        .paths
        .into_iter()
        .find(|p| p.interface == iface)
        .map(|p| p.state)
}

fn transitions(a: &RunningAgent) -> u64 {
    a.status().map_or(u64::MAX, |s| s.transitions_total)
}

#[test]
fn a_cut_path_moves_no_role_and_is_reported() {
    let mut lab = failover_lab();
    let key = SyncKey::new("paths", [9u8; 32]);
    let dir = std::env::temp_dir().join(format!("hatest-paths-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let notify_log = dir.join("notify.log");
    let script = dir.join("notify.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", notify_log.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (a1, a2) = start_pair(&mut lab, 20, |spec| AgentSpec {
        ha_extra: key.ha_extra(),
        group_extra: format!("notify = \"{}\"", script.display()),
        ..spec
    });
    wait_for("roles", Duration::from_secs(10), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
    wait_for(
        "every path up on the backup",
        Duration::from_secs(5),
        || {
            ["ha0", "lan0", "wan0"]
                .iter()
                .all(|p| path_state(&a2, p).as_deref() == Some("up"))
        },
    );
    let st = a2.status().unwrap();
    assert_eq!(st.auth_mode, "enforce");
    assert_eq!(st.auth_active_key, 1);
    assert!(
        st.rejected_by_reason.keys().all(|r| !r.starts_with("Auth")),
        "genuine adverts verify: {:?}",
        st.rejected_by_reason
    );
    let (t1, t2) = (transitions(&a1), transitions(&a2));

    // 2. HA frames dropped at the switch, carrier up.
    {
        let _cut = Cut::new(&lab, &[("hasw", "ha0")]);
        wait_for("ha0 down on the backup", Duration::from_secs(3), || {
            path_state(&a2, "ha0").as_deref() == Some("down")
        });
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(a2.role().as_deref(), Some("BACKUP"));
        assert_eq!(a1.role().as_deref(), Some("MASTER"));
    }
    wait_for("ha0 up again", Duration::from_secs(3), || {
        path_state(&a2, "ha0").as_deref() == Some("up")
    });
    assert_eq!(
        (transitions(&a1), transitions(&a2)),
        (t1, t2),
        "no role moved"
    );
    // The hooks run on a task of their own, after the state changed: the
    // UP line may still be on its way when the status says up.
    let read = || std::fs::read_to_string(&notify_log).unwrap_or_default();
    wait_for("the PATH hooks", Duration::from_secs(3), || {
        let log = read();
        log.contains("PATH ha0 DOWN 0") && log.contains("PATH ha0 UP 0")
    });
    let log = read();
    assert!(log.contains("PATH ha0 DOWN 0"), "notify: {log}");
    assert!(
        a2.log_text()
            .contains("HA link (ha0) down: peer alive over lan0, wan0"),
        "the log line"
    );

    // 3. The master's HA port loses carrier.
    lab.link_down(("fw1", "ha0")).unwrap();
    wait_for("no-carrier on the master", Duration::from_secs(3), || {
        path_state(&a1, "ha0").as_deref() == Some("no-carrier")
    });
    std::thread::sleep(Duration::from_millis(500));
    lab.link_up(("fw1", "ha0")).unwrap();
    wait_for("ha0 back", Duration::from_secs(3), || {
        path_state(&a2, "ha0").as_deref() == Some("up")
    });
    assert_eq!(
        (transitions(&a1), transitions(&a2)),
        (t1, t2),
        "no role moved"
    );

    // 4. Every path cut: a true partition; both may own. After healing,
    // one master remains.
    {
        let _cut = Cut::new(&lab, &[("hasw", "ha0"), ("lan", "lan0"), ("wan", "wan0")]);
        wait_for("the backup takes over", Duration::from_secs(3), || {
            a2.role().as_deref() == Some("MASTER")
        });
    }
    wait_for("one master after healing", Duration::from_secs(3), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
    let _ = std::fs::remove_dir_all(&dir);
}
