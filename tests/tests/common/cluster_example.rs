//! The seed's `ns-ha-config` configuration example, end to end with our CLI
//! (`ha-agent cluster ...`) in the failover lab, all run "on the primary"
//! (fw1) except the join token and the agent waiting on the backup (fw2):
//! check-primary-node, check-backup-node (with idle connections from a LAN
//! host on the join port), init-primary-node, init-backup-node (token from
//! the backup's token file), add-vip, add-lan-interface; then status on both nodes,
//! a change on the primary appearing on the secondary (a VIP and a synced
//! file), a refused edit on the secondary, and a planned demote/promote that
//! loses no ping through the VIP gateway.

use std::{path::Path, process::Output, time::Duration};

use ha_lab::Lab;
use ha_tests::{NodeFiles, PinGuard, failover_lab, spawn_agent_of, wait_for};

/// The ha-agent binary every node and command of the example runs: the
/// build's (`cluster_lab`) or the installed package's (`package`).
static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

fn agent_bin() -> std::path::PathBuf {
    BIN.get().expect("run() sets the binary").clone()
}

/// Runs `ha-agent <args>` in `ns`, with `stdin` piped in if given.
fn cli(lab: &Lab, ns: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write as _;
    let bin = agent_bin();
    let mut argv = vec![bin.to_str().unwrap()];
    argv.extend_from_slice(args);
    let mut cmd = lab.command(ns, &argv);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a cluster verb that must succeed; returns its output.
fn ok(lab: &Lab, ns: &str, args: &[&str], stdin: Option<&str>) -> String {
    let o = cli(lab, ns, args, stdin);
    let t = text(&o);
    assert!(
        o.status.success(),
        "`ha-agent {}` failed:\n{t}",
        args.join(" ")
    );
    t
}

/// `ha-agent run` on a node of the cluster (`--instance`, `--join-listen`).
fn run_agent(
    lab: &mut Lab,
    ns: &str,
    config: &Path,
    instance: &str,
    join_listen: &str,
    log: &Path,
) {
    let log = std::fs::File::create(log).unwrap();
    spawn_agent_of(
        &agent_bin(),
        lab,
        ns,
        config,
        &["--instance", instance, "--join-listen", join_listen],
        log,
    );
}

fn status(lab: &Lab, ns: &str, instance: &str) -> String {
    text(&cli(lab, ns, &["status", "--instance", instance], None))
}

/// Pings the server from the client through the VIP gateway, `n` pings at
/// 100 Hz; `during` runs once the first reply came back. Returns (sent,
/// received).
fn ping_during(lab: &Lab, n: u32, during: impl FnOnce()) -> (u32, u32) {
    use std::io::BufRead as _;
    let count = n.to_string();
    let mut child = lab
        .command(
            "client",
            &[
                "ping",
                "-n",
                "-i",
                "0.01",
                "-W",
                "1",
                "-c",
                &count,
                "10.1.0.10",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (first, answered) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut summary = None;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("bytes from") {
                let _ = first.send(());
            }
            if line.contains("packets transmitted") {
                summary = Some(line);
            }
        }
        summary
    });
    answered
        .recv_timeout(Duration::from_secs(5))
        .expect("a first ping answered through the VIP gateway");
    during();
    child.wait().unwrap();
    let line = reader.join().unwrap().expect("the ping summary");
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// The whole example, every node and command run from `bin`.
pub fn run(bin: &Path) {
    BIN.set(bin.to_owned())
        .expect("the example runs once per process");
    let pins1 = PinGuard::new("cluster1");
    let pins2 = PinGuard::new("cluster2");
    let dir = std::env::temp_dir().join(&pins1.0);
    let (d1, d2) = (dir.join("fw1"), dir.join("fw2"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let _rm = NodeFiles(dir.clone(), vec![pins1.0.clone(), pins2.0.clone()]);
    // Declared after the guards, so dropped before them: the agents (the
    // lab's children) are gone before their status files are removed (a
    // live agent writes its status again; CI found one left behind).
    let mut lab = failover_lab();
    let (c1, c2) = (d1.join("config.toml"), d2.join("config.toml"));
    let (c1s, c2s) = (c1.to_str().unwrap(), c2.to_str().unwrap());

    // The backup: a join token, and the agent waiting to be joined.
    let token = ok(
        &lab,
        "fw2",
        &["cluster", "--config", c2s, "join-token"],
        None,
    );
    let token = token.lines().next().unwrap().trim().to_owned();
    assert_eq!(token.len(), 32, "token: {token}");
    run_agent(
        &mut lab,
        "fw2",
        &c2,
        &pins2.0,
        "10.0.0.3:7789",
        &d2.join("agent.log"),
    );
    wait_for(
        "the backup listening for the join",
        Duration::from_secs(10),
        || {
            lab.exec("fw2", &["ss", "-Hltn", "sport = :7789"])
                .is_ok_and(|o| !o.stdout.is_empty())
        },
    );

    // On the primary, the seed's commands.
    let t = ok(
        &lab,
        "fw1",
        &["cluster", "--config", c1s, "check-primary-node", "lan0"],
        None,
    );
    assert!(t.contains("OK"), "{t}");
    let wrong = cli(
        &lab,
        "fw1",
        &[
            "cluster",
            "--config",
            c1s,
            "check-backup-node",
            "10.0.0.3",
            "lan0",
        ],
        Some("00000000000000000000000000000000\n"),
    );
    assert!(!wrong.status.success(), "a wrong token must fail");
    assert!(
        text(&wrong).contains("wrong key or join token"),
        "{}",
        text(&wrong)
    );
    // Idle connections from a LAN host without the token do not hold the
    // join port (it served one connection at a time: three were enough).
    let idle: Vec<std::net::TcpStream> = lab
        .run_in("client", || {
            (0..100)
                .map(|_| std::net::TcpStream::connect("10.0.0.3:7789").unwrap())
                .collect()
        })
        .unwrap();
    let t = ok(
        &lab,
        "fw1",
        &[
            "cluster",
            "--config",
            c1s,
            "check-backup-node",
            "10.0.0.3",
            "lan0",
        ],
        Some(&format!("{token}\n")),
    );
    assert!(t.contains("OK"), "{t}");
    drop(idle);
    let t = ok(
        &lab,
        "fw1",
        &[
            "cluster",
            "--config",
            c1s,
            "init-primary-node",
            "10.0.0.2",
            "10.0.0.3",
            "10.0.0.1/24",
            "lan0",
            "--instance",
            &pins1.0,
        ],
        None,
    );
    assert!(t.contains("primary initialized"), "{t}");
    run_agent(
        &mut lab,
        "fw1",
        &c1,
        &pins1.0,
        "10.0.0.2:7789",
        &d1.join("agent.log"),
    );
    wait_for("fw1 master", Duration::from_secs(10), || {
        status(&lab, "fw1", &pins1.0).contains("currently MASTER")
    });
    let root2 = d2.join("root");
    let t = ok(
        &lab,
        "fw1",
        &[
            "cluster",
            "--config",
            c1s,
            "init-backup-node",
            "lan0",
            "--files-root",
            root2.to_str().unwrap(),
            // The backup's token file itself (stdin is not read then).
            "--token-file",
            d2.join("join.token").to_str().unwrap(),
        ],
        None,
    );
    assert!(t.contains("initialized"), "{t}");
    wait_for("fw2 backup, in sync", Duration::from_secs(15), || {
        let s = status(&lab, "fw2", &pins2.0);
        s.contains("SECONDARY, currently BACKUP") && s.contains("state sync: up to date")
    });
    // The token is spent.
    assert!(!d2.join("join.token").exists());
    // The control channel closes a LAN host (not a peer) at once, before
    // anything is read or sent: it reads end of file, not a hello.
    let first = lab
        .run_in("client", || {
            use std::io::Read as _;
            let mut s = std::net::TcpStream::connect("10.0.0.2:7789").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 64];
            s.read(&mut buf).map_err(|e| e.kind())
        })
        .unwrap();
    assert!(
        matches!(first, Ok(0) | Err(std::io::ErrorKind::ConnectionReset)),
        "a non-peer got {first:?}"
    );

    // Changes on the primary reach the secondary: a VIP, a LAN interface,
    // and a synced file with its reload hook.
    ok(
        &lab,
        "fw1",
        &[
            "cluster",
            "--config",
            c1s,
            "add-vip",
            "lan0",
            "10.0.0.100/24",
        ],
        None,
    );
    ok(
        &lab,
        "fw1",
        &[
            "cluster",
            "--config",
            c1s,
            "add-lan-interface",
            "10.1.0.2",
            "10.1.0.3",
            "10.1.0.1/24",
        ],
        None,
    );
    let rules = d1.join("rules.nft");
    std::fs::write(&rules, "# ruleset v1\n").unwrap();
    // A secondary writes only the files its own configuration lists and
    // runs only its own reload hook: list the file and set the hook there
    // first (once the pushes above are in, so none rewrites it meanwhile),
    // then on the primary, whose hook is not sent.
    wait_for("the pushes applied", Duration::from_secs(15), || {
        let c = std::fs::read_to_string(&c2).unwrap_or_default();
        c.contains("10.0.0.100/24")
            && c.contains("10.1.0.1/24")
            && status(&lab, "fw2", &pins2.0).contains("config sync: Up to Date")
    });
    let hook_out = d2.join("hook-ran");
    let primary_hook_out = d2.join("primary-hook-ran");
    for (c, node, pins, hook) in [
        (&c2, "fw2", &pins2, &hook_out),
        (&c1, "fw1", &pins1, &primary_hook_out),
    ] {
        let mut cfg: toml::Table = std::fs::read_to_string(c).unwrap().parse().unwrap();
        let cluster = cfg["cluster"].as_table_mut().unwrap();
        cluster.insert(
            "sync_files".into(),
            toml::Value::Array(vec![rules.display().to_string().into()]),
        );
        cluster.insert(
            "reload_hook".into(),
            format!("touch {}", hook.display()).into(),
        );
        std::fs::write(c, toml::to_string(&cfg).unwrap()).unwrap();
        ok(&lab, node, &["reload", "--instance", &pins.0], None);
    }
    let synced = root2.join(rules.strip_prefix("/").unwrap());
    wait_for("config on the secondary", Duration::from_secs(15), || {
        let c = std::fs::read_to_string(&c2).unwrap_or_default();
        c.contains("10.0.0.100/24")
            && c.contains("10.1.0.1/24")
            && std::fs::read_to_string(&synced).is_ok_and(|t| t == "# ruleset v1\n")
            && hook_out.exists()
    });
    let addrs = lab
        .exec("fw2", &["ip", "-4", "addr", "show", "wan0"])
        .unwrap();
    assert!(String::from_utf8_lossy(&addrs.stdout).contains("10.1.0.1/24"));
    wait_for(
        "config sync up to date on both",
        Duration::from_secs(10),
        || {
            status(&lab, "fw1", &pins1.0).contains("config sync: Up to Date")
                && status(&lab, "fw2", &pins2.0).contains("config sync: Up to Date")
        },
    );
    assert!(
        !primary_hook_out.exists(),
        "the primary's reload hook never runs on the secondary"
    );
    let s1 = status(&lab, "fw1", &pins1.0);
    let s2 = status(&lab, "fw2", &pins2.0);
    eprintln!("fw1:\n{s1}\nfw2:\n{s2}");
    if std::env::var_os("HATEST_DEBUG").is_some() {
        for d in [&d1, &d2] {
            eprintln!(
                "{}",
                std::fs::read_to_string(d.join("agent.log")).unwrap_or_default()
            );
        }
    }
    assert!(
        s1.contains("this node is the PRIMARY, currently MASTER (forwarding)"),
        "{s1}"
    );
    assert!(s1.contains("peer 10.0.0.3: ALIVE"), "{s1}");
    assert!(
        s2.contains("this node is the SECONDARY, currently BACKUP"),
        "{s2}"
    );
    assert!(
        s2.contains("configuration is managed on the primary 10.0.0.2"),
        "{s2}"
    );

    // Both nodes from one place: the primary asks the secondary over the
    // cluster control channel.
    let both = ok(
        &lab,
        "fw1",
        &["status", "--instance", &pins1.0, "--cluster"],
        None,
    );
    eprintln!("status --cluster on fw1:\n{both}");
    let row = |k: &str| {
        both.lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_else(|| panic!("no {k} row in\n{both}"))
            .to_owned()
    };
    assert!(row("cluster role").contains("PRIMARY"), "{both}");
    assert!(row("cluster role").contains("SECONDARY"), "{both}");
    assert!(row("group").contains("MASTER"), "{both}");
    assert!(row("group").contains("BACKUP"), "{both}");
    assert!(row("node").contains(&pins2.0), "{both}");
    assert!(!row("config").contains("differs"), "{both}");
    let json: serde_json::Value = serde_json::from_str(&ok(
        &lab,
        "fw2",
        &["status", "--instance", &pins2.0, "--cluster", "--json"],
        None,
    ))
    .expect("status --cluster --json is JSON");
    assert_eq!(json["peer"]["status"]["cluster_role"], "PRIMARY", "{json}");
    assert_eq!(
        json["local"]["status"]["cluster_role"], "SECONDARY",
        "{json}"
    );

    // The secondary refuses local edits, pointing to the primary.
    let refused = cli(
        &lab,
        "fw2",
        &[
            "cluster",
            "--config",
            c2s,
            "add-vip",
            "lan0",
            "10.0.0.200/24",
        ],
        None,
    );
    assert!(!refused.status.success());
    assert!(text(&refused).contains("make configuration changes on the primary (10.0.0.2)"));
    let before = std::fs::read_to_string(&c2).unwrap();
    std::fs::write(&c2, before.replace("10.0.0.100/24", "10.0.0.101/24")).unwrap();
    let refused = cli(&lab, "fw2", &["reload", "--instance", &pins2.0], None);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("synchronized from the primary (10.0.0.2)"),
        "{}",
        text(&refused)
    );
    std::fs::write(&c2, before).unwrap();
    // Unchanged, the configuration reloads on the secondary after pushes:
    // the join and every push record the synced sections under one name.
    let t = ok(&lab, "fw2", &["reload", "--instance", &pins2.0], None);
    assert!(t.contains("configuration reloaded"), "{t}");
    // Bad input gets a message naming the problem.
    let bad = cli(
        &lab,
        "fw1",
        &[
            "cluster",
            "--config",
            c1s,
            "add-vip",
            "lan0",
            "10.0.0.300/24",
        ],
        None,
    );
    assert!(
        text(&bad).contains("vip 10.0.0.300/24 on lan0: invalid IPv4 or IPv6 address"),
        "{}",
        text(&bad)
    );

    // Manual config sync on the primary: a change waits, the status says
    // so, and `cluster sync` pushes it.
    let mut cfg: toml::Table = std::fs::read_to_string(&c1).unwrap().parse().unwrap();
    cfg["cluster"]
        .as_table_mut()
        .unwrap()
        .insert("config_sync".into(), "manual".into());
    std::fs::write(&c1, toml::to_string(&cfg).unwrap()).unwrap();
    ok(&lab, "fw1", &["reload", "--instance", &pins1.0], None);
    ok(
        &lab,
        "fw1",
        &[
            "cluster",
            "--config",
            c1s,
            "add-vip",
            "lan0",
            "10.0.0.150/24",
        ],
        None,
    );
    wait_for(
        "the change pending on the primary",
        Duration::from_secs(10),
        || {
            let s = status(&lab, "fw1", &pins1.0);
            s.contains("config sync: Pending") && s.contains("manual config sync")
        },
    );
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !std::fs::read_to_string(&c2)
            .unwrap()
            .contains("10.0.0.150/24"),
        "pushed without being asked"
    );
    let pushed = ok(&lab, "fw1", &["cluster", "--config", c1s, "sync"], None);
    assert!(pushed.contains("is on the secondary"), "{pushed}");
    assert!(
        std::fs::read_to_string(&c2)
            .unwrap()
            .contains("10.0.0.150/24")
    );
    assert!(status(&lab, "fw1", &pins1.0).contains("config sync: Up to Date"));

    // Planned switchover both ways, with pings through the VIP gateway.
    let (sent, got) = ping_during(&lab, 200, || {
        ok(&lab, "fw1", &["demote", "--instance", &pins1.0], None);
        wait_for("fw2 master", Duration::from_secs(5), || {
            status(&lab, "fw2", &pins2.0).contains("currently MASTER")
        });
    });
    assert_eq!(got, sent, "pings lost during demote");
    assert!(status(&lab, "fw1", &pins1.0).contains("currently BACKUP"));
    let (sent, got) = ping_during(&lab, 200, || {
        ok(&lab, "fw1", &["promote", "--instance", &pins1.0], None);
        wait_for("fw1 master again", Duration::from_secs(5), || {
            status(&lab, "fw1", &pins1.0).contains("currently MASTER")
        });
    });
    assert_eq!(got, sent, "pings lost during promote");
    assert!(status(&lab, "fw2", &pins2.0).contains("currently BACKUP"));
}
