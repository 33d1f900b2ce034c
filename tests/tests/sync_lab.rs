//! State sync between two agents: a TCP connection forwarded by the master
//! appears in the backup's kernel conntrack, ESTABLISHED and assured.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use ha_tests::{AgentSpec, RunningAgent, failover_lab, wait_for};

#[test]
fn a_forwarded_connection_reaches_the_backups_conntrack() {
    let mut lab = failover_lab();
    let key = std::env::temp_dir().join(format!("hatest-sync-key-{}", std::process::id()));
    std::fs::write(
        &key,
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let ha_extra = format!("sync_port = 7788\nsync_key_file = \"{}\"", key.display());
    let a1 = RunningAgent::start(
        &mut lab,
        "fw1",
        &AgentSpec {
            ha_extra: ha_extra.clone(),
            ..AgentSpec::new(1, 200, 10)
        },
    );
    let a2 = RunningAgent::start(
        &mut lab,
        "fw2",
        &AgentSpec {
            ha_extra,
            ..AgentSpec::new(2, 100, 10)
        },
    );
    wait_for("roles", Duration::from_secs(10), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
    wait_for("both in sync", Duration::from_secs(5), || {
        a1.log_text().contains("state sync complete")
            && a2.log_text().contains("state sync complete")
    });

    let lab = &lab;
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            lab.run_in("server", || {
                let listener = TcpListener::bind("10.1.0.10:8080").unwrap();
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 5];
                conn.read_exact(&mut buf).unwrap();
                conn.write_all(b"world").unwrap();
                let _ = conn.read(&mut buf); // until the client closes
            })
            .unwrap()
        });
        lab.run_in("client", || {
            let mut conn = (0..50)
                .find_map(|_| {
                    TcpStream::connect("10.1.0.10:8080").ok().or_else(|| {
                        std::thread::sleep(Duration::from_millis(20));
                        None
                    })
                })
                .expect("connect through the VIP gateway");
            conn.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).unwrap();
            wait_for(
                "the connection in fw2's conntrack",
                Duration::from_secs(5),
                || {
                    let out = lab
                        .exec("fw2", &["conntrack", "-L", "-p", "tcp", "--dport", "8080"])
                        .unwrap();
                    let t = String::from_utf8_lossy(&out.stdout);
                    t.contains("ESTABLISHED src=10.0.0.10 dst=10.1.0.10") && t.contains("[ASSURED]")
                },
            );
        })
        .unwrap();
        server.join().unwrap();
    });
    let _ = std::fs::remove_file(&key);
}
