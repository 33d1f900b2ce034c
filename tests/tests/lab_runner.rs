//! `cargo xtask lab`'s runner, end to end on a short run: the hard crash and
//! the planned switchover against ha-agent, with the report's JSON keys
//! (issue 12's `unexpected_transitions`, `in_sync_after`, `control_ok`
//! among them).

use ha_tests::require_root;

#[test]
fn the_lab_reports_hard_crash_and_switchover() {
    require_root();
    let _serial = ha_tests::one_lab_at_a_time();
    let dir = std::env::temp_dir().join(format!("hatest-lab-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_failover-lab"))
        .args([
            "--runs",
            "1",
            "--tcp",
            "20",
            "--compare",
            "none",
            "--scenario",
            "hard-crash",
            "--scenario",
            "switchover",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let svg = std::fs::read_to_string(json.with_extension("svg")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(svg.starts_with("<svg"));
    let sys = &report["systems"][0];
    assert_eq!(sys["system"], "ha-agent");
    assert_eq!(sys["adv_ms"], 10);
    for (i, name) in ["hard-crash", "switchover"].into_iter().enumerate() {
        let s = &sys["scenarios"][i];
        assert_eq!(s["name"], name, "{stdout}");
        assert_eq!(s["runs"], 1);
        assert_eq!(s["recovered"], 1, "{name} recovered:\n{stdout}");
        assert_eq!(s["tcp_survived"], s["tcp_total"], "{name} TCP:\n{stdout}");
        assert_eq!(s["rsts"], 0, "{name} RSTs:\n{stdout}");
        for key in ["outage_ms_p50", "outage_ms_max", "dual_owner_ms"] {
            assert!(s[key].is_number(), "{name} {key}:\n{stdout}");
        }
        // Issue 12's keys: no transition beyond the one the fault causes,
        // the survivors' operator sockets answer, and (both nodes still
        // running after a switchover) the pair is in sync again.
        assert_eq!(s["unexpected_transitions"], 0, "{name}:\n{stdout}");
        assert_eq!(s["control_ok"], true, "{name}:\n{stdout}");
        let in_sync = if name == "switchover" {
            serde_json::Value::Bool(true)
        } else {
            serde_json::Value::Null
        };
        assert_eq!(s["in_sync_after"], in_sync, "{name}:\n{stdout}");
        assert!(s["notes"].is_array(), "{name}:\n{stdout}");
    }
}

/// `--family ipv6` (issue 16): the lab runs over IPv6 VIPs end to end (a
/// hard crash; IPv6 probes, the Neighbor Solicitation sampler and TCP over
/// IPv6) and says so in its JSON; the IPv6 connections are replicated and
/// survive, as IPv4's do.
#[test]
fn the_lab_runs_over_ipv6() {
    require_root();
    let _serial = ha_tests::one_lab_at_a_time();
    let dir = std::env::temp_dir().join(format!("hatest-lab-report6-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_failover-lab"))
        .args([
            "--runs",
            "1",
            "--tcp",
            "20",
            "--compare",
            "none",
            "--family",
            "ipv6",
            "--scenario",
            "hard-crash",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(stdout.contains("failover lab (IPv6"), "{stdout}");
    let sys = &report["systems"][0];
    assert_eq!(sys["system"], "ha-agent");
    assert_eq!(sys["family"], "ipv6");
    assert_eq!(sys["vmac"], false);
    let s = &sys["scenarios"][0];
    assert_eq!(s["name"], "hard-crash", "{stdout}");
    assert_eq!(s["recovered"], 1, "{stdout}");
    assert_eq!(s["tcp_total"], 20, "{stdout}");
    assert_eq!(s["flows_replicated"], 20, "{stdout}");
    assert_eq!(s["tcp_survived"], 20, "{stdout}");
    assert_eq!(s["rsts"], 0, "{stdout}");
    // A fresh host resolved the IPv6 VIP by neighbour discovery after the
    // fault; the NS sampler heard one owner at a time.
    assert_eq!(s["arp_resolved"], 1, "{stdout}");
    assert_eq!(s["dual_owner_ms"], 0.0, "{stdout}");
    for key in ["outage_ms_max", "vip_service_outage_ms_max"] {
        assert!(s[key].is_number(), "{key}:\n{stdout}");
    }
    assert_eq!(s["unexpected_transitions"], 0, "{stdout}");
    assert_eq!(s["control_ok"], true, "{stdout}");
    assert!(
        !s["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("sampler"))),
        "{stdout}"
    );
    assert!(s["ipv4_outage_ms_max"].is_null(), "{stdout}");
}
