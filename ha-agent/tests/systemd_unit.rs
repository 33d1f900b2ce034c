//! The hardening of `packaging/ha-agent.service`, checked so a later edit
//! cannot drop a directive silently (no systemd needed: the file is parsed).

use std::collections::{BTreeMap, BTreeSet};

/// `section -> key -> values` (a key given twice keeps both).
fn unit() -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/ha-agent.service");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_owned();
            continue;
        }
        let (k, v) = line.split_once('=').expect("Key=Value");
        out.entry(section.clone())
            .or_default()
            .entry(k.trim().to_owned())
            .or_default()
            .push(v.trim().to_owned());
    }
    out
}

fn words(v: &[String]) -> BTreeSet<String> {
    v.iter()
        .flat_map(|v| v.split_whitespace())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_unit_keeps_its_hardening() {
    let u = unit();
    let service = &u["Service"];
    let one = |k: &str| -> &str {
        let v = service
            .get(k)
            .unwrap_or_else(|| panic!("[Service] {k}= missing"));
        assert_eq!(v.len(), 1, "{k}= given more than once");
        &v[0]
    };
    for (k, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("UMask", "0077"),
        ("LimitNOFILE", "65536"),
        ("LimitMEMLOCK", "infinity"),
        ("Restart", "always"),
        ("RuntimeDirectory", "ha-agent"),
    ] {
        assert_eq!(one(k), want, "[Service] {k}=");
    }
    assert_eq!(
        u["Unit"]["StartLimitIntervalSec"],
        ["0"],
        "restarts never give up"
    );
    assert_eq!(
        words(&service["CapabilityBoundingSet"]),
        words(&["CAP_BPF CAP_PERFMON CAP_SYS_ADMIN CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_NICE CAP_IPC_LOCK CAP_CHOWN".into()]),
        "exactly what the agent needs (each explained in the unit)"
    );
    assert_eq!(
        words(&service["RestrictAddressFamilies"]),
        words(&["AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET".into()])
    );
    let rw = words(&service["ReadWritePaths"]);
    let config_dir = std::path::Path::new(ha_agent::config::DEFAULT_PATH)
        .parent()
        .unwrap();
    for p in [
        config_dir.to_str().unwrap(),
        ha_agent::paths::RUN_DIR,
        "/sys/fs/bpf",
    ] {
        assert!(rw.contains(p), "ReadWritePaths= lacks {p}: {rw:?}");
    }
    // What would break the agent: realtime scheduling, the ARP sysctls.
    for k in [
        "RestrictRealtime",
        "ProtectKernelTunables",
        "AmbientCapabilities",
    ] {
        assert!(
            !service.contains_key(k),
            "{k}= must not be set (see the unit's comments)"
        );
    }
}
