//! `ha-agent check-config`: a configuration checked without running it, as
//! `keepalived -t` and `nginx -t` do. First what the agent checks when it
//! loads the file (the same messages), then what it would read at start: the
//! cluster key and the advert keys (errors), the notify scripts (warnings:
//! the agent starts, its hooks fail). Interfaces missing on this machine are
//! noted, not refused (a configuration is often checked elsewhere than
//! where it runs).

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use crate::config::Config;

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    /// Problems the agent would refuse to start with.
    pub errors: Vec<String>,
    /// Would fail later, not at start (a notify script that cannot run).
    pub warnings: Vec<String>,
    /// Worth knowing, not fatal (an interface absent here).
    pub notes: Vec<String>,
    /// One line on what the configuration holds, when it loaded.
    pub summary: Option<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Checks the configuration at `path`.
pub fn check(path: &Path) -> Report {
    let mut r = Report::default();
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            r.errors.push(e.to_string());
            return r;
        }
    };
    if config.ha.sync_port != 0
        && let Some(file) = &config.ha.sync_key_file
        && let Err(e) = crate::sync::key::read_key(file)
    {
        r.errors
            .push(format!("ha.sync_key_file {}: {e:#}", file.display()));
    }
    if let Some(a) = &config.ha.auth {
        for k in &a.keys {
            if let Err(e) = crate::agent::adverts::read_key(k.id, &k.file) {
                r.errors.push(format!("ha.auth.key {}: {e:#}", k.id));
            }
        }
    }
    for g in &config.groups {
        if let Some(script) = &g.notify
            && let Some(e) = not_executable(script)
        {
            r.warnings.push(format!(
                "group {} notify {}: {e} (every transition's hook would fail)",
                g.name,
                script.display()
            ));
        }
    }
    let mut ifaces = vec![config.ha.interface.clone()];
    ifaces.extend(config.data_interfaces());
    for g in &config.groups {
        ifaces.extend(g.track.iter().map(|t| t.iface.clone()));
        ifaces.extend(g.role_interfaces.iter().cloned());
    }
    let mut seen = std::collections::HashSet::new();
    ifaces.retain(|i| seen.insert(i.clone()));
    for iface in ifaces {
        if crate::iface::if_index(&iface).is_err() {
            r.notes.push(format!(
                "interface {iface} does not exist here (the agent needs it where it runs)"
            ));
        }
    }
    let instances: usize = config.groups.iter().map(|g| g.instances.len()).sum();
    let vips: usize = config
        .groups
        .iter()
        .flat_map(|g| &g.instances)
        .map(|i| i.vips.len())
        .sum();
    r.summary = Some(format!(
        "{} group(s), {instances} VRRP instance(s), {} VIP(s) on {}; HA link {} to {}; state sync {}; advert authentication {}",
        config.groups.len(),
        vips,
        config.vip_interfaces().join(", "),
        config.ha.interface,
        config.ha.peers_text(),
        if config.ha.sync_port == 0 {
            "off".to_owned()
        } else {
            format!("on port {}", config.ha.sync_port)
        },
        config.auth_mode().as_str(),
    ));
    r
}

/// Why `script` cannot be run as a hook, if it cannot.
fn not_executable(script: &Path) -> Option<String> {
    match std::fs::metadata(script) {
        Err(e) => Some(e.to_string()),
        Ok(m) if !m.is_file() => Some("not a file".into()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Some("not executable".into()),
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("ha-check-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const GOOD: &str = r#"
instance = "ha"
[ha]
interface = "nosuch0"
address = "10.255.0.1"
peers = ["10.255.0.2"]

[[group]]
name = "fw"
[[group.vrrp]]
name = "VI_1"
vrid = 51
priority = 100
advert_interval_ms = 1000
vips = [{ iface = "nosuch1", address = "192.0.2.1/24" }]
"#;

    #[test]
    fn a_good_file_passes_with_notes_on_missing_interfaces() {
        let d = dir("good");
        let f = d.join("config.toml");
        std::fs::write(&f, GOOD).unwrap();
        let r = check(&f);
        assert!(r.ok(), "{:?}", r.errors);
        assert!(
            r.notes.iter().any(|n| n.contains("nosuch1")),
            "{:?}",
            r.notes
        );
        let s = r.summary.unwrap();
        assert!(s.contains("1 VIP(s) on nosuch1"), "{s}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn the_agents_own_messages_and_missing_files_are_errors() {
        let d = dir("bad");
        let f = d.join("config.toml");
        // Invalid: the agent's own message names the field.
        std::fs::write(&f, GOOD.replace("vrid = 51", "vrid = 0")).unwrap();
        let r = check(&f);
        assert!(!r.ok());
        assert!(r.errors[0].contains("vrid"), "{:?}", r.errors);
        // A key file and a notify script that are not there.
        let with = GOOD
            .replace(
                "peers = [\"10.255.0.2\"]",
                "peers = [\"10.255.0.2\"]\nsync_port = 7788\nsync_key_file = \"/nonexistent/key\"",
            )
            .replace(
                "name = \"fw\"",
                "name = \"fw\"\nnotify = \"/nonexistent/notify\"",
            );
        std::fs::write(&f, with).unwrap();
        let r = check(&f);
        assert!(
            r.errors.iter().any(|e| e.contains("ha.sync_key_file")),
            "{:?}",
            r.errors
        );
        assert!(
            r.warnings.iter().any(|e| e.contains("notify")),
            "{:?}",
            r.warnings
        );
        // No file at all.
        let r = check(&d.join("missing.toml"));
        assert!(!r.ok());
        let _ = std::fs::remove_dir_all(d);
    }
}
