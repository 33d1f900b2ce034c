//! State sync between two agents: a TCP connection forwarded by the master
//! appears in the backup's kernel conntrack, ESTABLISHED and assured.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use ha_tests::{
    AgentSpec, RunningAgent, SyncKey, failover_lab, start_pair, stateful_firewall, wait_for,
};

#[test]
fn a_forwarded_connection_reaches_the_backups_conntrack() {
    let mut lab = failover_lab();
    let key = SyncKey::new("forwarded", [3u8; 32]);
    let ha_extra = key.ha_extra();
    let (a1, a2) = start_pair(&mut lab, 10, |spec| AgentSpec {
        ha_extra: ha_extra.clone(),
        metrics: Some("127.0.0.1:9477".into()),
        ..spec
    });
    wait_for("roles", Duration::from_secs(10), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
    wait_for("both in sync", Duration::from_secs(5), || {
        a1.log_text().contains("state sync complete")
            && a2.log_text().contains("state sync complete")
    });
    // Prometheus metrics from the master's agent.
    wait_for("metrics", Duration::from_secs(5), || {
        let text = lab
            .run_in("fw1", || {
                let mut s = TcpStream::connect("127.0.0.1:9477").ok()?;
                s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
                let mut t = String::new();
                s.read_to_string(&mut t).ok()?;
                Some(t)
            })
            .unwrap()
            .unwrap_or_default();
        text.contains("ha_agent_role{group=\"fw\",role=\"MASTER\"} 1")
            && text.contains("ha_agent_sync_in_sync 1")
            && text.contains("ha_agent_adverts_sent_total")
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
}

/// XDP reports a handshake's end before the kernel's firewall has seen its
/// last ACK, and the master sends it at once. If the firewall drops that
/// ACK before conntrack sees it, conntrack stays in SYN_RECV: the master's confirming lookup must
/// take the backup's entry back out of ESTABLISHED (a backup that believed
/// it would pass a connection the master never let through).
#[test]
fn a_handshake_the_masters_firewall_refused_is_not_left_established_on_the_backup() {
    let mut lab = failover_lab();
    for fw in ["fw1", "fw2"] {
        stateful_firewall(&lab, fw, None);
    }
    let key = SyncKey::new("refused-ack", [5u8; 32]);
    let (_a1, _a2) = synced_pair(&mut lab, &key);
    // Every client -> server segment after the SYN is dropped by fw1's
    // firewall before conntrack sees it (the raw priority; XDP, before
    // both, still sees them).
    lab.nft(
        "fw1",
        "table inet refuse {\n chain raw {\n  type filter hook prerouting priority raw;\n  \
         tcp dport 8081 tcp flags & (syn | ack) == ack drop\n }\n}\n",
    )
    .unwrap();
    let lab = &lab;
    let listener = lab
        .run_in("server", || TcpListener::bind("10.1.0.10:8081").unwrap())
        .unwrap();
    let _client = lab
        .run_in("client", || {
            // The SYN and SYN-ACK pass: connect() returns.
            TcpStream::connect_timeout(&"10.1.0.10:8081".parse().unwrap(), Duration::from_secs(5))
                .expect("connect through the VIP gateway")
        })
        .unwrap();
    let state = |fw: &str| {
        let out = lab
            .exec(fw, &["conntrack", "-L", "-p", "tcp", "--dport", "8081"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(3)
            .map(str::to_owned)
    };
    wait_for(
        "the master's entry in SYN_RECV",
        Duration::from_secs(2),
        || state("fw1").as_deref() == Some("SYN_RECV"),
    );
    // The confirming lookup runs 64 ms after the handshake's end; then the
    // backup stays out of ESTABLISHED.
    wait_for(
        "the backup's entry out of ESTABLISHED",
        Duration::from_secs(3),
        || state("fw2").is_some_and(|s| s.starts_with("SYN_")),
    );
    std::thread::sleep(Duration::from_millis(300));
    let settled = state("fw2");
    assert!(
        settled.as_deref().is_some_and(|s| s.starts_with("SYN_")),
        "the backup's entry: {settled:?}"
    );
    drop(listener);
}

/// Both agents with state sync under `key`, fw1 MASTER, both in sync.
fn synced_pair(lab: &mut ha_lab::Lab, key: &SyncKey) -> (RunningAgent, RunningAgent) {
    let ha_extra = key.ha_extra();
    let (a1, a2) = start_pair(lab, 10, |spec| AgentSpec {
        ha_extra: ha_extra.clone(),
        ..spec
    });
    wait_for("roles and sync", Duration::from_secs(10), || {
        a1.role().as_deref() == Some("MASTER")
            && [&a1, &a2]
                .iter()
                .all(|a| a.status().and_then(|s| s.sync).is_some_and(|s| s.in_sync))
    });
    (a1, a2)
}

/// The sync counters of an agent's status, by rejection reason.
fn rejected(agent: &RunningAgent) -> std::collections::BTreeMap<String, u64> {
    agent
        .status()
        .and_then(|s| s.sync)
        .map(|s| s.rejected)
        .unwrap_or_default()
}

/// The UDP payload of the first packet in a pcap stream (Ethernet, IPv4).
fn first_udp_payload(pcap: &[u8]) -> Option<Vec<u8>> {
    let rec = pcap.get(24..)?;
    let caplen = u32::from_le_bytes(rec.get(8..12)?.try_into().ok()?) as usize;
    let frame = rec.get(16..16 + caplen)?;
    let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
    frame.get(14 + ihl + 8..).map(<[u8]>::to_vec)
}

#[test]
fn hostile_sync_frames_are_rejected_counted_and_change_nothing() {
    use ha_agent::sync::{
        frame::{Crypto, Header, Kind},
        record::{Record, RecordKind},
        session::WINDOW,
    };
    use std::net::{Ipv4Addr, UdpSocket};

    let mut lab = failover_lab();
    let key_bytes = [9u8; 32];
    let key = SyncKey::new("hostile", key_bytes);
    let (_a1, mut a2) = synced_pair(&mut lab, &key);

    // A genuine data frame from fw1 to fw2, captured on fw2's HA link while
    // a connection goes through fw1.
    let mut cmd = lab.command(
        "fw2",
        &[
            "tcpdump",
            "-i",
            "ha0",
            "-c",
            "1",
            "-U",
            "-w",
            "-",
            "udp",
            "and",
            "dst",
            "port",
            "7788",
            "and",
            "src",
            "10.255.0.1",
            "and",
            "greater",
            "120",
        ],
    );
    cmd.stdout(std::process::Stdio::piped());
    let capture = ha_tests::spawn_when_ready(cmd, "listening on", Duration::from_secs(10));
    let lab_ref = &lab;
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            lab_ref
                .run_in("server", || {
                    let listener = TcpListener::bind("10.1.0.10:8081").unwrap();
                    let _ = listener.accept().unwrap();
                })
                .unwrap()
        });
        lab_ref
            .run_in("client", || {
                (0..50)
                    .find_map(|_| {
                        TcpStream::connect("10.1.0.10:8081").ok().or_else(|| {
                            std::thread::sleep(Duration::from_millis(20));
                            None
                        })
                    })
                    .expect("connect through the VIP gateway")
            })
            .unwrap();
        server.join().unwrap();
    });
    let out = capture.wait_with_output().unwrap();
    let genuine = first_udp_payload(&out.stdout).expect("a captured sync frame");
    // Sync frames are sealed with the state-sync key derived from the cluster key.
    let crypto = Crypto::new(&ha_agent::sync::key::derive(
        &key_bytes,
        ha_agent::sync::key::Purpose::StateSync,
    ));
    let (header, _) = crypto
        .open(&genuine)
        .expect("the captured frame opens with the key");
    assert_eq!(header.kind, Kind::Data);

    let marker = Record::plain(
        RecordKind::Upsert,
        6,
        2,
        Ipv4Addr::new(10, 0, 0, 99),
        Ipv4Addr::new(10, 1, 0, 10),
        1111,
        80,
    );
    let forged = Crypto::new(&[1u8; 32]).seal(&header, &[marker]);
    let out_of_window = crypto.seal(
        &Header {
            seq: header.seq + WINDOW + 100,
            ..header
        },
        &[marker],
    );
    let cases: [(&str, Vec<u8>); 5] = [
        ("Auth", forged),
        ("NotSync", vec![0xAA; 100]),
        ("Truncated", genuine[..10].to_vec()),
        ("Replay", genuine.clone()),
        ("OutOfWindow", out_of_window),
    ];
    for (reason, datagram) in cases {
        let before = rejected(&a2).get(reason).copied().unwrap_or(0);
        lab.run_in("fw1", || {
            let sock = UdpSocket::bind("10.255.0.1:0").unwrap();
            sock.send_to(&datagram, "10.255.0.2:7788").unwrap();
        })
        .unwrap();
        wait_for(&format!("{reason} counted"), Duration::from_secs(5), || {
            rejected(&a2).get(reason).copied().unwrap_or(0) > before
        });
    }
    // No state changed: the marker is not in conntrack, sync is still up and
    // replication still works.
    let t = lab.exec("fw2", &["conntrack", "-L"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&t.stdout).contains("10.0.0.99"),
        "a rejected frame reached conntrack"
    );
    assert!(a2.status().and_then(|s| s.sync).is_some_and(|s| s.in_sync));
    wait_for("the connection on fw2", Duration::from_secs(5), || {
        let out = lab
            .exec("fw2", &["conntrack", "-L", "-p", "tcp", "--dport", "8081"])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("src=10.0.0.10")
    });

    // Replay across a restart of the receiver (issue 12): fw2's agent
    // restarts, and the frame recorded in its previous life is replayed at
    // once (and again until the new agent counts it). It is refused, as
    // addressed to fw2's previous epoch; it sets no window, and sync comes
    // back and replicates.
    // Killed first, and restarted once its sync port is free (the killed
    // process's last threads may still hold it after its main thread is a
    // zombie).
    a2.signal(libc::SIGKILL);
    wait_for("fw2's sync port free", Duration::from_secs(5), || {
        lab.run_in("fw2", || UdpSocket::bind("10.255.0.2:7788").is_ok())
            .unwrap()
    });
    a2.restart(&mut lab);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rejected(&a2).get("NotAddressed").copied().unwrap_or(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted agent did not count the replay as NotAddressed: {:?}\n{}",
            a2.status().and_then(|s| s.sync),
            a2.log_text()
        );
        lab.run_in("fw1", || {
            let sock = UdpSocket::bind("10.255.0.1:0").unwrap();
            sock.send_to(&genuine, "10.255.0.2:7788").unwrap();
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for("in sync after the restart", Duration::from_secs(10), || {
        a2.status().and_then(|s| s.sync).is_some_and(|s| s.in_sync)
    });
    let lab_ref = &lab;
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            lab_ref
                .run_in("server", || {
                    let listener = TcpListener::bind("10.1.0.10:8082").unwrap();
                    let _ = listener.accept().unwrap();
                })
                .unwrap()
        });
        let _conn = lab_ref
            .run_in("client", || {
                (0..50)
                    .find_map(|_| {
                        TcpStream::connect("10.1.0.10:8082").ok().or_else(|| {
                            std::thread::sleep(Duration::from_millis(20));
                            None
                        })
                    })
                    .expect("connect through the VIP gateway")
            })
            .unwrap();
        server.join().unwrap();
        wait_for(
            "a new connection on the restarted fw2",
            Duration::from_secs(5),
            || {
                let out = lab_ref
                    .exec("fw2", &["conntrack", "-L", "-p", "tcp", "--dport", "8082"])
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).contains("src=10.0.0.10")
            },
        );
    });
}
