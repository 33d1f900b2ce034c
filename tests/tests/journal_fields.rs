//! Events reach the journal with structured fields when the agent runs as a
//! systemd service (its stderr is the journal stream `JOURNAL_STREAM`
//! names): a lone agent in the failover lab takes over, and its journal
//! entries carry `HA_EVENT=transition` / `group` with the group, role and
//! reason as `HA_*` fields.
//!
//! Without systemd (this lab machine), the test stands in for journald: it
//! binds the journal's socket itself (only if nothing is there) and reads
//! the datagrams in journald's native protocol. With a journald running, it
//! asks `journalctl` instead.

use std::{
    collections::BTreeMap,
    os::unix::{fs::MetadataExt as _, net::UnixDatagram},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use ha_tests::{AgentSpec, RunningAgent, failover_lab, wait_for};

const SOCKET: &str = "/run/systemd/journal/socket";

/// One entry of journald's native protocol: `KEY=value` lines, or `KEY`,
/// a little-endian u64 length and the value for values with a newline.
fn parse_entry(mut d: &[u8]) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    while !d.is_empty() {
        let line_end = d.iter().position(|b| *b == b'\n').unwrap_or(d.len());
        let line = &d[..line_end];
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            d = d.get(line_end + 1..).unwrap_or(&[]);
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &d[line_end + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            fields.insert(key, String::from_utf8_lossy(&rest[8..8 + len]).into_owned());
            d = rest.get(8 + len + 1..).unwrap_or(&[]);
        }
    }
    fields
}

/// Removes the stand-in socket, and the directories the test made.
struct Bound {
    made: Vec<&'static str>,
}

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(SOCKET);
        for d in &self.made {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A journald listens on the socket (a stand-in a killed run left behind
/// refuses the connection).
fn journald_listens() -> bool {
    UnixDatagram::unbound().is_ok_and(|s| s.connect(SOCKET).is_ok())
}

#[test]
fn events_go_to_the_journal_with_structured_fields() {
    ha_tests::require_root();
    let journald = journald_listens();
    if journald {
        eprintln!("a journald runs here: reading the entries back with journalctl");
    } else if Path::new(SOCKET).exists() {
        // Left by a killed run of this test.
        std::fs::remove_file(SOCKET).unwrap();
    }
    // Read as they come (a full socket would block the agent's logging,
    // as a stalled journald would).
    type Entries = Arc<Mutex<Vec<BTreeMap<String, String>>>>;
    let stand_in: Option<(Entries, Bound)> = if journald {
        None
    } else {
        let made: Vec<&'static str> = ["/run/systemd/journal", "/run/systemd"]
            .into_iter()
            .filter(|d| !Path::new(d).exists())
            .collect();
        std::fs::create_dir_all("/run/systemd/journal").unwrap();
        let bound = Bound { made };
        let sock = UnixDatagram::bind(SOCKET).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let got: Entries = Arc::default();
        let sink = got.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            // Ends when the socket file is gone and nothing came for a while.
            let mut idle = 0;
            while idle < 50 {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        idle = 0;
                        sink.lock().unwrap().push(parse_entry(&buf[..n]));
                    }
                    Err(_) if !Path::new(SOCKET).exists() => idle += 1,
                    Err(_) => {}
                }
            }
        });
        Some((got, bound))
    };

    let mut lab = failover_lab();
    let spec = AgentSpec::new(1, 200, 100);
    // The agent's stderr is a file; JOURNAL_STREAM names it, as systemd
    // names the stream it gives a service.
    let pins = ha_tests::PinGuard::new("journal");
    let dir = ha_tests::agent_dir(&pins.0);
    let config = dir.join("config.toml");
    std::fs::write(&config, spec.toml(&pins.0)).unwrap();
    let log = dir.join("agent.log");
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let bin = ha_tests::agent_bin();
    let mut cmd = lab.command(
        "fw1",
        &[
            bin.to_str().unwrap(),
            "run",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    cmd.env("HA_AGENT_LOG", "info")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let pid = lab.spawn("fw1", cmd).unwrap();
    let agent = RunningAgent {
        ns: "fw1".into(),
        pid,
        pins,
        log: log.clone(),
    };
    wait_for("the agent MASTER", Duration::from_secs(15), || {
        agent.role().as_deref() == Some("MASTER")
    });

    let entries: Vec<BTreeMap<String, String>> = match &stand_in {
        Some((got, _)) => {
            std::thread::sleep(Duration::from_millis(200));
            got.lock().unwrap().clone()
        }
        None => {
            // journald takes a moment to make entries readable.
            let read = || -> Vec<BTreeMap<String, String>> {
                let out = std::process::Command::new("journalctl")
                    .args(["-o", "json", "--no-pager", &format!("_PID={pid}")])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect()
            };
            let mut got = read();
            for _ in 0..50 {
                if got
                    .iter()
                    .any(|e| e.get("HA_EVENT").is_some_and(|v| v == "group"))
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
                got = read();
            }
            got
        }
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !entries.is_empty(),
        "nothing reached the journal; stderr had:\n{text}"
    );
    // Nothing went to stderr as well (one copy, in the journal).
    assert!(!text.contains("VRRP instance transition"), "{text}");
    let find = |event: &str, role: &str| {
        entries.iter().find(|e| {
            e.get("HA_EVENT").map(String::as_str) == Some(event)
                && e.get("HA_ROLE").map(String::as_str) == Some(role)
        })
    };
    let t = find("transition", "MASTER")
        .unwrap_or_else(|| panic!("no HA_EVENT=transition to MASTER in {entries:#?}"));
    assert_eq!(
        t.get("HA_INSTANCE").map(String::as_str),
        Some("VI_1"),
        "{t:#?}"
    );
    assert_eq!(t.get("HA_VRID").map(String::as_str), Some("51"), "{t:#?}");
    assert!(t.contains_key("HA_REASON"), "{t:#?}");
    assert_eq!(
        t.get("SYSLOG_IDENTIFIER").map(String::as_str),
        Some("ha-agent")
    );
    // tracing-journald files INFO as NOTICE (5), DEBUG as INFO (6).
    assert_eq!(t.get("PRIORITY").map(String::as_str), Some("5"), "{t:#?}");
    assert!(t.get("MESSAGE").is_some_and(|m| m.contains("transition")));
    let g = find("group", "MASTER")
        .unwrap_or_else(|| panic!("no HA_EVENT=group MASTER in {entries:#?}"));
    assert_eq!(g.get("HA_GROUP").map(String::as_str), Some("fw"), "{g:#?}");
    drop(agent);
    drop(lab);
}
