//! The Debian package (`cargo xtask package`, which `cargo xtask test` runs
//! first): installed with `dpkg -i`, its files checked, the seed's cluster
//! example run with both nodes from the installed binary, the unit's
//! command started without a configuration (the join wait), then removed
//! with `dpkg -r`: no process of it, no pin, no run file left.

#[path = "common/cluster_example.rs"]
mod cluster_example;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use ha_tests::{
    AgentSpec, PinGuard, RunningAgent, agent_dir, failover_lab, spawn_agent_of, wait_for,
};

const BIN: &str = "/usr/sbin/ha-agent";

fn deb() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    std::fs::read_dir(&dir)
        .ok()
        .and_then(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
        })
        .unwrap_or_else(|| {
            panic!(
                "no package in {}: run `cargo xtask package` (cargo xtask test does)",
                dir.display()
            )
        })
}

fn sh(argv: &[&str]) -> (bool, String) {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn installed() -> bool {
    status().starts_with("ii")
}

/// dpkg's status of the package: `ii` installed, `iF` half-configured, ...;
/// empty or `un`/`pn` when it is not there.
fn status() -> String {
    let (ok, st) = sh(&["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "ha-agent"]);
    if ok {
        st.trim().to_owned()
    } else {
        String::new()
    }
}

fn present() -> bool {
    let st = status();
    !st.is_empty() && !st.starts_with("un") && !st.starts_with("pn")
}

/// Processes running the installed binary.
fn package_processes() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == Path::new(BIN))
        })
        .collect()
}

/// Removes the package if the test installed it, whatever happens.
struct Installed {
    purge: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        // Half-installed or configured: removed either way.
        if present() {
            let how = if self.purge { "--purge" } else { "-r" };
            let _ = sh(&["dpkg", how, "ha-agent"]);
        }
    }
}

#[test]
fn the_package_installs_runs_the_cluster_example_and_removes_cleanly() {
    ha_tests::require_root();
    assert!(
        !present() && !Path::new(BIN).exists(),
        "ha-agent is installed on this machine ({BIN}, dpkg status {:?}): this test would replace and remove it",
        status()
    );
    // An operator's configuration is never purged by a test.
    let purge = !Path::new("/etc/ha-agent").exists();
    let guard = Installed { purge };
    let deb = deb();
    let (ok, said) = sh(&["dpkg", "-i", deb.to_str().unwrap()]);
    assert!(ok, "dpkg -i {}:\n{said}", deb.display());

    // Its files.
    for f in [
        BIN,
        "/usr/lib/systemd/system/ha-agent.service",
        "/usr/share/doc/ha-agent/examples/config.toml",
        "/usr/share/doc/ha-agent/README.md",
        "/usr/share/man/man1/ha-agent.1.gz",
        "/usr/share/man/man1/ha-agent-import-keepalived.1.gz",
        "/usr/share/man/man1/ha-agent-status.1.gz",
        "/usr/share/bash-completion/completions/ha-agent",
        "/usr/share/zsh/vendor-completions/_ha-agent",
        "/usr/share/fish/vendor_completions.d/ha-agent.fish",
        "/usr/share/ha-agent/grafana/ha-agent-dashboard.json",
        "/usr/share/ha-agent/prometheus/ha-agent-rules.yml",
    ] {
        assert!(Path::new(f).exists(), "{f} missing from the package");
    }
    let (ok, version) = sh(&[BIN, "--version"]);
    assert!(
        ok && version.contains(env!("CARGO_PKG_VERSION")),
        "{version}"
    );
    let (ok, page) = sh(&["sh", "-c", "zcat /usr/share/man/man1/ha-agent-status.1.gz"]);
    assert!(
        ok && page.contains(".TH") && page.contains("\\-\\-cluster"),
        "{page}"
    );
    let (ok, compl) = sh(&[
        "bash",
        "-c",
        ". /usr/share/bash-completion/completions/ha-agent && complete -p ha-agent",
    ]);
    assert!(ok && compl.contains("ha-agent"), "{compl}");
    // The unit as systemd reads it (offline: no systemd needs to run; it
    // leaves a marker in /run/systemd where none was). Debian's systemd
    // package has the tool; a machine without it skips this check, saying so.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let marker = Path::new("/run/systemd/systemd-units-load");
        let had_marker = marker.exists();
        let (_, verify) = sh(&[
            "systemd-analyze",
            "verify",
            "/usr/lib/systemd/system/ha-agent.service",
        ]);
        if !had_marker {
            let _ = std::fs::remove_file(marker);
        }
        assert!(
            !verify.contains("ha-agent.service"),
            "systemd-analyze verify:\n{verify}"
        );
    } else {
        eprintln!("no systemd-analyze here: the unit is not verified");
    }
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/ha-agent.service").unwrap();
    assert!(
        unit.contains(&format!(
            "ExecStart={BIN} run --config /etc/ha-agent/config.toml"
        )),
        "{unit}"
    );
    // The example configuration is one the agent accepts, bar its key files.
    let (_, checked) = sh(&[
        BIN,
        "check-config",
        "/usr/share/doc/ha-agent/examples/config.toml",
    ]);
    assert!(!checked.contains("invalid"), "{checked}");

    // The seed's cluster example, both nodes from the package.
    cluster_example::run(Path::new(BIN));

    // What the unit runs on a fresh machine: no configuration yet, so it
    // waits to be joined (in a lab namespace: it listens on every address).
    let mut lab = failover_lab();
    let fresh = std::env::temp_dir().join(format!("hatest-pkg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&fresh);
    std::fs::create_dir_all(&fresh).unwrap();
    let log = fresh.join("join-wait.log");
    let config = fresh.join("config.toml");
    let mut cmd = lab.command(
        "fw2",
        &[
            BIN,
            "run",
            "--config",
            config.to_str().unwrap(),
            "--instance",
            "hatest-pkgjoin",
        ],
    );
    let file = std::fs::File::create(&log).unwrap();
    cmd.env("HA_AGENT_LOG", "info")
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    let waiting = lab.spawn("fw2", cmd).unwrap();
    wait_for("the join wait", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("waiting to be joined"))
    });
    // And an agent with a configuration, pinned, as the service would run.
    let pins = PinGuard::new("pkg1");
    let dir = agent_dir(&pins.0);
    let agent_config = dir.join("config.toml");
    std::fs::write(&agent_config, AgentSpec::new(1, 200, 100).toml(&pins.0)).unwrap();
    let agent_log = dir.join("agent.log");
    let pid = spawn_agent_of(
        Path::new(BIN),
        &mut lab,
        "fw1",
        &agent_config,
        &[],
        std::fs::File::create(&agent_log).unwrap(),
    );
    let agent = RunningAgent {
        ns: "fw1".into(),
        pid,
        pins,
        log: agent_log,
    };
    wait_for("the packaged agent MASTER", Duration::from_secs(15), || {
        agent.role().as_deref() == Some("MASTER")
    });
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(&agent.pins.0);
    assert!(pin_dir.exists());
    let running = package_processes();
    assert!(
        running.contains(&pid) && running.contains(&waiting),
        "{running:?}"
    );

    // Removal: nothing of it stays.
    let how = if purge { "--purge" } else { "-r" };
    let (ok, said) = sh(&["dpkg", how, "ha-agent"]);
    assert!(ok, "dpkg {how} ha-agent:\n{said}");
    assert!(!installed());
    // The processes are gone (or zombies for the lab to reap).
    let zombie_or_gone = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"))
    };
    assert!(zombie_or_gone(pid), "the agent survived the removal");
    assert!(
        zombie_or_gone(waiting),
        "the join wait survived the removal"
    );
    assert!(!pin_dir.exists(), "{} left pinned", pin_dir.display());
    for f in ha_agent::paths::run_files(&agent.pins.0) {
        assert!(!f.exists(), "{} left behind", f.display());
    }
    assert!(!Path::new(BIN).exists());
    drop(agent);
    drop(lab);
    drop(guard);
    let _ = std::fs::remove_dir_all(&fresh);
}
