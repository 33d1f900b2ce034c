//! Interoperability of VRRP advert authentication (`auth_hmac` of keepalived
//! 2.4.2 and later, draft-cassen-vrrp-auth-hmac) with keepalived in the failover
//! lab, VRRPv3 multicast at 100 ms adverts, both sides in enforce mode with
//! time-based anti-replay and the same key under id 1:
//! 1. agent priority 200, keepalived 100: the agent is master, keepalived
//!    backup, stable for 10 s, and keepalived logs no authentication error
//!    (it verified the agent's signed adverts);
//! 2. keepalived 200, agent 100: the agent stays backup (it verified
//!    keepalived's signed adverts: in enforce mode an unverified advert is
//!    dropped and the agent would take over); keepalived killed hard: the
//!    agent takes over;
//! 3. keepalived with a different key: the agent rejects its adverts (bad
//!    HMAC) and becomes master, and so does keepalived.
//!
//! Debian's keepalived (2.2.7) has no `auth_hmac`, so these run only with a
//! keepalived >= 2.4.2 given in `HA_KEEPALIVED_HMAC` (a local build, e.g.
//! `./configure --prefix=/opt/keepalived-2.4.3 --disable-lvs --disable-snmp
//! --disable-dbus`, then `HA_KEEPALIVED_HMAC=/opt/keepalived-2.4.3/sbin/keepalived`);
//! without it they print "skipped" and pass. As root, after
//! `cargo build -p ha-agent`:
//! `HA_KEEPALIVED_HMAC=... cargo test -p ha-tests --test keepalived_hmac_interop -- --nocapture`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ha_tests::{AgentSpec, Keepalived, KeepalivedOptions, RunningAgent, failover_lab, wait_for};

const ENV: &str = "HA_KEEPALIVED_HMAC";
const ADVERT_MS: u64 = 100;
/// The key of keepalived's documentation (and of the wire fixture).
const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// A key that is not [`KEY`].
const WRONG_KEY: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

/// The keepalived to test against, or `None` (and a note) to skip.
fn keepalived_bin() -> Option<PathBuf> {
    let Some(path) = std::env::var_os(ENV).filter(|p| !p.is_empty()) else {
        println!("skipped: set {ENV}=/path/to/keepalived (>= 2.4.2)");
        return None;
    };
    let path = PathBuf::from(path);
    let out = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{ENV}={}: cannot run it: {e}", path.display()));
    // keepalived prints its version on stderr: "Keepalived v2.4.3 (...)".
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let version: Vec<u32> = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v').filter(|v| v.contains('.')))
        .map(|v| v.split('.').map_while(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    assert!(
        version.as_slice() >= [2, 4, 2].as_slice(),
        "{ENV}={}: keepalived >= 2.4.2 needed for auth_hmac, --version says:\n{text}",
        path.display()
    );
    Some(path)
}

/// A key file in keepalived's `file:` format (`hex:<64 hex digits>`), mode
/// 0600, removed on drop.
struct KeyFile {
    dir: PathBuf,
    path: PathBuf,
}

impl KeyFile {
    fn new(hex: &str) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hatest-hmac-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vrrp51.key");
        std::fs::write(&path, format!("hex:{hex}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        KeyFile { dir, path }
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The agent on firewall `node` at `priority`, enforcing auth with `key`.
fn agent_spec(node: u8, priority: u8, key: &Path) -> AgentSpec {
    AgentSpec {
        auth_extra: format!(
            r#"[ha.auth]
mode = "enforce"
anti_replay = "time"
active_key = 1
[[ha.auth.key]]
id = 1
file = "{}"
"#,
            key.display()
        ),
        ..AgentSpec::new(node, priority, ADVERT_MS)
    }
}

/// keepalived at `binary` signing with `key_hex` under id 1 (enforce mode
/// and time anti-replay: the defaults).
fn keepalived_opts(binary: &Path, key_hex: &str) -> KeepalivedOptions {
    KeepalivedOptions {
        binary: Some(binary.to_owned()),
        instance_extra: format!("auth_hmac {{\n    key 1 hex:{key_hex}\n    active_key 1\n  }}"),
        ..KeepalivedOptions::default()
    }
}

/// What keepalived logs when an advert fails authentication (or its length
/// does not fit a trailer), lower case.
const KEEPALIVED_AUTH_COMPLAINTS: [&str; 11] = [
    "missing authentication trailer",
    "malformed authentication trailer",
    "unknown authentication key",
    "invalid authentication hmac",
    "stale authentication trailer",
    "replayed authentication trailer",
    "bad",
    "stale",
    "replay",
    "too long",
    "too short",
];

fn assert_no_auth_complaints(ka: &Keepalived) {
    let log = ka.log_text();
    let lower = log.to_ascii_lowercase();
    for complaint in KEEPALIVED_AUTH_COMPLAINTS {
        assert!(
            !lower.contains(complaint),
            "keepalived complained ({complaint}):\n{log}"
        );
    }
}

/// The agent's rejections for a tag that does not verify (`AuthBadTag`).
fn hmac_rejections(agent: &RunningAgent) -> u64 {
    agent.status().map_or(0, |s| {
        s.rejected_by_reason.get("AuthBadTag").copied().unwrap_or(0)
    })
}

/// The agent's rejections for any authentication reason (trailer missing,
/// malformed, unknown key, bad HMAC, stale, replayed), by reason.
fn auth_rejections(agent: &RunningAgent) -> Vec<(String, u64)> {
    agent.status().map_or_else(Vec::new, |s| {
        s.rejected_by_reason
            .into_iter()
            .filter(|(r, n)| *n > 0 && r.starts_with("Auth"))
            .collect()
    })
}

#[test]
fn hmac_agent_master_keepalived_backup_stable() {
    let Some(bin) = keepalived_bin() else {
        return;
    };
    let key = KeyFile::new(KEY);
    let mut lab = failover_lab();
    let agent = RunningAgent::start(&mut lab, "fw1", &agent_spec(1, 200, &key.path));
    let ka = Keepalived::start_with(
        &mut lab,
        "fw2",
        2,
        100,
        ADVERT_MS,
        &keepalived_opts(&bin, KEY),
    );
    wait_for(
        "agent MASTER, keepalived BACKUP",
        Duration::from_secs(15),
        || agent.role().as_deref() == Some("MASTER") && ka.state().as_deref() == Some("BACKUP"),
    );
    let transitions = agent.status().unwrap().transitions_total;
    let log_start = ka.log_text().len();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        assert_eq!(
            agent.role().as_deref(),
            Some("MASTER"),
            "agent left MASTER after {:?}",
            start.elapsed()
        );
        assert_eq!(
            ka.state().as_deref(),
            Some("BACKUP"),
            "keepalived left BACKUP after {:?}:\n{}",
            start.elapsed(),
            ka.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = agent.status().unwrap();
    assert_eq!(
        st.transitions_total, transitions,
        "no flapping: {:?}",
        st.transitions
    );
    assert_eq!(agent.owned(), Some(1));
    let log = ka.log_text()[log_start..].to_owned();
    assert!(
        !log.contains("Entering MASTER STATE"),
        "keepalived became master:\n{log}"
    );
    // keepalived verified every advert of ours: no authentication error in
    // its whole log.
    assert_no_auth_complaints(&ka);
}

#[test]
fn hmac_agent_backup_to_keepalived_then_takes_over_hard_kill() {
    let Some(bin) = keepalived_bin() else {
        return;
    };
    let key = KeyFile::new(KEY);
    let mut lab = failover_lab();
    let ka = Keepalived::start_with(
        &mut lab,
        "fw1",
        1,
        200,
        ADVERT_MS,
        &keepalived_opts(&bin, KEY),
    );
    let agent = RunningAgent::start(&mut lab, "fw2", &agent_spec(2, 100, &key.path));
    wait_for(
        "keepalived MASTER, agent BACKUP",
        Duration::from_secs(15),
        || {
            ka.state().as_deref() == Some("MASTER")
                && agent.role().as_deref() == Some("BACKUP")
                && agent.status().is_some_and(|s| s.adverts_received > 2)
        },
    );
    // In enforce mode the agent accepts only adverts it verified: were
    // keepalived's dropped, it would take over after Master_Down_Interval
    // (~0.3 s at 100 ms). It stays backup, taking adverts all along.
    let received = agent.status().unwrap().adverts_received;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        assert_eq!(
            agent.role().as_deref(),
            Some("BACKUP"),
            "agent left BACKUP after {:?}; auth rejections {:?}",
            start.elapsed(),
            auth_rejections(&agent)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = agent.status().unwrap();
    assert!(
        st.adverts_received >= received + 30,
        "the agent took {} adverts in 5 s at 100 ms",
        st.adverts_received - received
    );
    assert_eq!(
        auth_rejections(&agent),
        vec![],
        "the agent rejected keepalived's signed adverts"
    );
    assert_eq!(agent.owned(), Some(0));
    assert_no_auth_complaints(&ka);

    for ifc in ["ha0", "lan0", "wan0"] {
        lab.link_down(("fw1", ifc)).unwrap();
    }
    ka.signal(libc::SIGKILL);
    wait_for("agent MASTER", Duration::from_secs(10), || {
        agent.role().as_deref() == Some("MASTER")
    });
    assert_eq!(agent.owned(), Some(1));
    let st = agent.status().unwrap();
    let t = st
        .transitions
        .iter()
        .rev()
        .find(|t| t.role == "MASTER")
        .expect("a MASTER transition");
    assert_eq!(t.reason, "MasterDown");
}

#[test]
fn hmac_agent_rejects_keepalived_with_another_key() {
    let Some(bin) = keepalived_bin() else {
        return;
    };
    let key = KeyFile::new(KEY);
    let mut lab = failover_lab();
    let ka = Keepalived::start_with(
        &mut lab,
        "fw1",
        1,
        200,
        ADVERT_MS,
        &keepalived_opts(&bin, WRONG_KEY),
    );
    let agent = RunningAgent::start(&mut lab, "fw2", &agent_spec(2, 100, &key.path));
    // Neither verifies the other: both are master, and each counts the
    // other's adverts as bad HMACs.
    wait_for(
        "agent and keepalived both MASTER, the agent rejecting bad HMACs",
        Duration::from_secs(15),
        || {
            agent.role().as_deref() == Some("MASTER")
                && ka.state().as_deref() == Some("MASTER")
                && hmac_rejections(&agent) > 5
        },
    );
    let st = agent.status().unwrap();
    assert_eq!(
        st.last_advert_from, None,
        "the agent accepted an advert signed with another key: {:?}",
        st.rejected_by_reason
    );
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        assert_eq!(agent.role().as_deref(), Some("MASTER"));
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for(
        "keepalived logging the agent's adverts as invalid HMAC",
        Duration::from_secs(5),
        || {
            ka.log_text()
                .to_ascii_lowercase()
                .contains("invalid authentication hmac")
        },
    );
}
