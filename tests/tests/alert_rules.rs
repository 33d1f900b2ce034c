//! The shipped Prometheus alert rules load in promtool (`promtool check
//! rules`): Debian's, or the one `cargo xtask setup` keeps in
//! `target/tools/`. That every metric they and the Grafana dashboard name is
//! exported is a unit test of `ha-agent` (status).

use std::{path::Path, process::Command};

#[test]
fn promtool_accepts_the_alert_rules() {
    let kept = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/promtool");
    let promtool = if kept.exists() {
        kept
    } else {
        "promtool".into()
    };
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/prometheus/ha-agent-rules.yml");
    let out = Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (cargo xtask setup fetches promtool into target/tools)",
                promtool.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}
