//! VRRP between two agents in the failover lab: election, hard crash of the
//! master, graceful shutdown; the data plane follows the election.

use std::{collections::BTreeSet, time::Duration};

use ha_lab::Lab;
use ha_tests::{AgentSpec, RunningAgent, failover_lab, wait_for};

/// MACs that answered the client's ARP requests for the LAN VIP.
fn arp_answers(lab: &Lab) -> BTreeSet<String> {
    ha_tests::arp_answers(lab, "10.0.0.1".parse().unwrap())
        .into_iter()
        .collect()
}

fn elect(lab: &mut Lab, advert_ms: u64) -> (RunningAgent, RunningAgent) {
    let a1 = RunningAgent::start(lab, "fw1", &AgentSpec::new(1, 200, advert_ms));
    let a2 = RunningAgent::start(lab, "fw2", &AgentSpec::new(2, 100, advert_ms));
    wait_for("fw1 MASTER and fw2 BACKUP", Duration::from_secs(10), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
    (a1, a2)
}

#[test]
fn agents_elect_and_the_backup_takes_over_a_hard_crash() {
    let mut lab = failover_lab();
    let (a1, a2) = elect(&mut lab, 10);
    assert_eq!(
        (a1.owned(), a2.owned()),
        (Some(1), Some(0)),
        "one ownership bit, on the master"
    );
    // The agents set the ARP sysctls of their data interfaces themselves
    // (the lab leaves them at the kernel's 0), not of the HA link.
    for fw in ["fw1", "fw2"] {
        let get = |iface: &str, name: &str| {
            let key = format!("net.ipv4.conf.{iface}.{name}");
            let out = lab.exec(fw, &["sysctl", "-n", &key]).unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        for iface in ["lan0", "wan0"] {
            assert_eq!(get(iface, "arp_ignore"), "1", "{fw} {iface}");
            assert_eq!(get(iface, "arp_announce"), "2", "{fw} {iface}");
        }
        assert_eq!(
            get("ha0", "arp_ignore"),
            "0",
            "{fw} ha0 is not a data interface"
        );
    }
    let mac1 = lab.mac(("fw1", "lan0")).unwrap().to_ascii_lowercase();
    let mac2 = lab.mac(("fw2", "lan0")).unwrap().to_ascii_lowercase();
    assert_eq!(arp_answers(&lab), BTreeSet::from([mac1]));
    // Stable: still the same roles after a while at 10 ms adverts.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(a1.role().as_deref(), Some("MASTER"));
    assert!(a2.status().unwrap().adverts_received > 50);
    // `status` on the backup asks the agent: the last advert is as old as
    // it is (every 10 ms here), not as old as the last status file.
    for _ in 0..10 {
        let st = a2.cli_status(&lab);
        assert_eq!(st["live"], true, "{st}");
        let age = st["last_advert_age_ms"].as_u64().expect("an advert age");
        assert!(age <= 100, "last advert {age} ms ago at 10 ms adverts");
    }

    // Hard crash: links down and the agent killed at once (no priority 0).
    for ifc in ["ha0", "lan0", "wan0"] {
        lab.link_down(("fw1", ifc)).unwrap();
    }
    a1.signal(libc::SIGKILL);
    wait_for("fw2 MASTER", Duration::from_secs(5), || {
        a2.role().as_deref() == Some("MASTER")
    });
    assert_eq!(a2.owned(), Some(1));
    assert_eq!(arp_answers(&lab), BTreeSet::from([mac2]));
    let st = a2.status().unwrap();
    let t = st.last_takeover.expect("takeover timing recorded");
    assert!(t.garps_sent >= 2, "{t:?}");
    let last = st.transitions.last().unwrap();
    assert_eq!(
        (last.role.as_str(), last.reason.as_str()),
        ("MASTER", "MasterDown")
    );
    println!(
        "takeover: timer due -> owned {:.0} us, -> first GARP {:.0} us",
        t.to_owned_us, t.to_first_garp_us
    );
}

#[test]
fn graceful_stop_hands_over_with_priority_zero() {
    let mut lab = failover_lab();
    let (a1, a2) = elect(&mut lab, 100);
    a1.signal(libc::SIGTERM);
    // At 1 s adverts the master-down interval is 3.6 s; priority 0 makes the
    // backup take over after Skew_Time (0.61 s) instead.
    wait_for("fw2 MASTER", Duration::from_secs(2), || {
        a2.role().as_deref() == Some("MASTER")
    });
    wait_for("fw1 gave up ownership", Duration::from_secs(2), || {
        a1.owned() == Some(0)
    });
    assert!(a1.log_text().contains("agent stopped"), "{}", a1.log_text());
}

#[test]
fn higher_priority_node_returns_and_preempts() {
    let mut lab = failover_lab();
    let (a1, a2) = elect(&mut lab, 10);
    a1.signal(libc::SIGTERM);
    wait_for("fw2 MASTER", Duration::from_secs(2), || {
        a2.role().as_deref() == Some("MASTER")
    });
    drop(a1);
    let a1 = RunningAgent::start(&mut lab, "fw1", &AgentSpec::new(1, 200, 10));
    wait_for("fw1 back as MASTER", Duration::from_secs(5), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
    assert_eq!((a1.owned(), a2.owned()), (Some(1), Some(0)));
}

/// Adverts sent to the peer's address instead of 224.0.0.18 work the same.
#[test]
fn unicast_peers_elect_and_fail_over() {
    let mut lab = failover_lab();
    let a1 = RunningAgent::start(
        &mut lab,
        "fw1",
        &AgentSpec {
            unicast: true,
            ..AgentSpec::new(1, 200, 10)
        },
    );
    let a2 = RunningAgent::start(
        &mut lab,
        "fw2",
        &AgentSpec {
            unicast: true,
            ..AgentSpec::new(2, 100, 10)
        },
    );
    wait_for("fw1 MASTER and fw2 BACKUP", Duration::from_secs(10), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
    // The adverts really are unicast: none to 224.0.0.18 on the HA link.
    let out = lab
        .command(
            "fw2",
            &[
                "timeout",
                "1",
                "tcpdump",
                "-l",
                "-n",
                "-i",
                "ha0",
                "-c",
                "5",
                "ip proto 112",
            ],
        )
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(dump.contains("10.255.0.1 > 10.255.0.2"), "{dump}");
    assert!(!dump.contains("224.0.0.18"), "{dump}");
    a1.signal(libc::SIGKILL);
    lab.link_down(("fw1", "ha0")).unwrap();
    wait_for("fw2 MASTER", Duration::from_secs(5), || {
        a2.role().as_deref() == Some("MASTER")
    });
}

/// A tracked link with weight 0 going down puts the master's group in FAULT:
/// it announces priority 0 and the backup takes over.
#[test]
fn tracked_link_down_faults_the_master() {
    let mut lab = failover_lab();
    let spec = AgentSpec {
        group_extra: "track = [{ iface = \"wan0\", weight = 0 }]".into(),
        ..AgentSpec::new(1, 200, 10)
    };
    let a1 = RunningAgent::start(&mut lab, "fw1", &spec);
    let a2 = RunningAgent::start(&mut lab, "fw2", &AgentSpec::new(2, 100, 10));
    wait_for("fw1 MASTER", Duration::from_secs(10), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
    lab.link_down(("fw1", "wan0")).unwrap();
    wait_for("fw1 FAULT, fw2 MASTER", Duration::from_secs(5), || {
        a1.role().as_deref() == Some("FAULT") && a2.role().as_deref() == Some("MASTER")
    });
    assert_eq!((a1.owned(), a2.owned()), (Some(0), Some(1)));
    let last = a2.status().unwrap().transitions.last().cloned().unwrap();
    assert_eq!(
        last.reason, "MasterLeft",
        "fw1 announced priority 0 on its way to FAULT"
    );
    lab.link_up(("fw1", "wan0")).unwrap();
    wait_for("fw1 back and preempting", Duration::from_secs(5), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
}

/// Notify scripts get keepalived's arguments; a hook that hangs is killed
/// after its timeout, with what it started, and delays neither the takeover
/// nor (beyond its timeout) the hooks after it.
#[test]
fn hooks_run_with_keepalived_arguments_and_time_out() {
    let mut lab = failover_lab();
    let dir = std::env::temp_dir().join(format!("hatest-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let notify = dir.join("notify.sh");
    let calls = dir.join("calls");
    std::fs::write(
        &notify,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display()),
    )
    .unwrap();
    std::fs::set_permissions(&notify, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let started = dir.join("vpn-started");
    let extra = format!(
        "notify = \"{}\"\nhook_timeout_ms = 300\nservices = [{{ name = \"vpn\", start = [\"touch\", \"{}\"], stop = [\"sh\", \"-c\", \"sleep 30\"] }}]",
        notify.display(),
        started.display()
    );
    let a1 = RunningAgent::start(
        &mut lab,
        "fw1",
        &AgentSpec {
            group_extra: extra,
            ..AgentSpec::new(1, 200, 10)
        },
    );
    wait_for("fw1 MASTER", Duration::from_secs(10), || {
        a1.role().as_deref() == Some("MASTER")
    });
    wait_for("notify calls", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&calls).unwrap_or_default();
        text.contains("GROUP fw MASTER 200") && text.contains("INSTANCE VI_1 MASTER 200")
    });
    let text = std::fs::read_to_string(&calls).unwrap();
    assert!(text.contains("INSTANCE VI_1 MASTER 200"), "{text}");
    assert!(
        text.contains("GROUP fw BACKUP 200"),
        "the start as BACKUP is notified too: {text}"
    );
    // The stop at start-up (BACKUP) hung; the start (MASTER) ran after its
    // timeout, and the takeover itself did not wait for either.
    wait_for("the service start ran", Duration::from_secs(5), || {
        started.exists()
    });
    assert!(
        a1.log_text().contains("hook timed out; killed"),
        "{}",
        a1.log_text()
    );
    let t = a1.status().unwrap().last_takeover.unwrap();
    assert!(t.to_owned_us < 50_000.0, "{t:?}");
    // The hung hook's child goes with its process group: gone, or a zombie
    // until init reaps it, once the kill is delivered.
    let alive = || {
        let out = std::process::Command::new("ps")
            .args(["-eo", "stat=,args="])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().any(|l| {
            l.trim_start().split_once(' ').is_some_and(|(stat, args)| {
                !stat.starts_with('Z') && args.trim().ends_with("sleep 30")
            })
        })
    };
    wait_for("the hung hook's child gone", Duration::from_secs(2), || {
        !alive()
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Split brain: with the HA link cut both become master; when it returns the
/// lower-priority one steps down and the winner re-announces the VIPs.
#[test]
fn split_brain_heals_and_the_winner_re_announces() {
    let mut lab = failover_lab();
    let (a1, a2) = elect(&mut lab, 10);
    lab.link_down(("fw2", "ha0")).unwrap();
    wait_for("both MASTER", Duration::from_secs(5), || {
        a2.role().as_deref() == Some("MASTER")
    });
    assert_eq!(a1.role().as_deref(), Some("MASTER"));
    lab.link_up(("fw2", "ha0")).unwrap();
    wait_for("fw2 steps down", Duration::from_secs(5), || {
        a2.role().as_deref() == Some("BACKUP")
    });
    wait_for("fw1 re-announces", Duration::from_secs(5), || {
        a1.log_text().contains("VIPs re-announced")
    });
    assert_eq!((a1.owned(), a2.owned()), (Some(1), Some(0)));
    let mac1 = lab.mac(("fw1", "lan0")).unwrap().to_ascii_lowercase();
    assert_eq!(arp_answers(&lab), BTreeSet::from([mac1]));
}

/// Malformed, forged and out-of-spec adverts from the peer's address are
/// rejected and counted, by the XDP filter or the agent, and never change the
/// master's role, even when they claim a higher priority.
#[test]
fn bad_adverts_are_counted_and_change_nothing() {
    use ha_core::vrrp::{packet::ip_packet, wire};
    let mut lab = failover_lab();
    let a1 = RunningAgent::start(&mut lab, "fw1", &AgentSpec::new(1, 150, 10));
    wait_for("fw1 MASTER", Duration::from_secs(10), || {
        a1.role().as_deref() == Some("MASTER")
    });
    let transitions = a1.status().unwrap().transitions_total;

    let peer: std::net::Ipv4Addr = "10.255.0.2".parse().unwrap();
    let good = |prio: u8, vrid: u8, interval: u16| {
        wire::Repr {
            vrid,
            priority: prio,
            interval_cs: interval,
            addrs: vec!["10.0.0.1".parse().unwrap()],
        }
        .to_bytes(peer, wire::MULTICAST)
    };
    let mut bad_checksum = good(250, 51, 1);
    bad_checksum[7] ^= 0xff;
    let mut version2 = good(250, 51, 1);
    version2[0] = 0x21;
    let truncated = good(250, 51, 1)[..6].to_vec();
    let zero_interval = good(250, 51, 0);
    let mut ttl254 = ip_packet(peer, wire::MULTICAST, &good(250, 51, 1));
    ttl254[8] = 254;
    let unknown_vrid = ip_packet(peer, wire::MULTICAST, &good(250, 52, 1));
    let mut packets: Vec<Vec<u8>> = [bad_checksum, version2, truncated, zero_interval]
        .iter()
        .map(|p| ip_packet(peer, wire::MULTICAST, p))
        .collect();
    packets.push(ttl254);
    packets.push(unknown_vrid);
    lab.run_in("fw2", || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(112)),
        )
        .unwrap();
        s.set_header_included_v4(true).unwrap();
        s.bind_device(Some(b"ha0")).unwrap();
        let dst = socket2::SockAddr::from(std::net::SocketAddrV4::new(wire::MULTICAST, 0));
        for _ in 0..5 {
            for p in &packets {
                s.send_to(p, &dst).unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .unwrap();
    wait_for("rejections counted", Duration::from_secs(3), || {
        a1.status().is_some_and(|s| {
            s.rejected_by_reason
                .get("ZeroInterval")
                .copied()
                .unwrap_or(0)
                >= 5
        })
    });
    let st = a1.status().unwrap();
    // Bad checksum and version 2 (the truncated ones never get past XDP).
    assert_eq!(
        st.rejected_by_reason.get("Malformed"),
        Some(&10),
        "{:?}",
        st.rejected_by_reason
    );
    assert_eq!(
        st.rejected_by_reason.get("ZeroInterval"),
        Some(&5),
        "{:?}",
        st.rejected_by_reason
    );
    assert_eq!(st.adverts_received, 0, "nothing was accepted");
    assert_eq!(
        st.transitions_total,
        transitions,
        "no state change: {:?}\n{}",
        st.transitions,
        a1.log_text()
    );
    assert_eq!(a1.role().as_deref(), Some("MASTER"));
    // TTL, unknown VRID and truncation never reach the agent: XDP drops them.
    let snap = ha_agent::dataplane::inspect::Snapshot::read(&a1.pins.0, 0).unwrap();
    let count = |n: &str| snap.link_verdicts.iter().find(|(k, _)| k == n).unwrap().1;
    assert_eq!(count("drop_vrrp_ttl"), 5);
    assert_eq!(count("drop_vrrp_unknown_vrid"), 5);
    assert_eq!(count("drop_vrrp_truncated"), 5);
    assert!(a1.log_text().contains("VRRP packet rejected"), "logged");
}

/// Restarting the master's agent (SIGKILL and start again) within its lease
/// drops no forwarded packet: it re-opens the pins, renews the lease first and
/// resumes as master; the backup never takes over.
#[test]
fn restarting_the_master_agent_drops_no_forwarded_packet() {
    let mut lab = failover_lab();
    let (mut a1, a2) = elect(&mut lab, 100);
    let backup_transitions = a2.status().unwrap().transitions_total;
    let lab_ref = &mut lab;
    let ping = lab_ref
        .command(
            "client",
            &[
                "ping",
                "-q",
                "-i",
                "0.01",
                "-c",
                "400",
                "-W",
                "1",
                "10.1.0.10",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1200));
        a1.restart(lab_ref);
        wait_for("fw1 resumed", Duration::from_secs(2), || {
            a1.status().is_some_and(|s| {
                s.pid == a1.pid && s.roles.get("fw").map(String::as_str) == Some("MASTER")
            })
        });
    }
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("400 packets transmitted, 400 received"),
        "{text}"
    );
    assert_eq!(
        a2.status().unwrap().transitions_total,
        backup_transitions,
        "the backup never moved"
    );
    assert!(
        a1.log_text().contains("resuming as master"),
        "{}",
        a1.log_text()
    );
}

/// Forged adverts with a higher priority but a bad checksum, sent to a BACKUP
/// all along, do not hold off its master-down timer.
#[test]
fn bad_adverts_do_not_suppress_a_backup_takeover() {
    use ha_core::vrrp::{packet::ip_packet, wire};
    let mut lab = failover_lab();
    let peer: std::net::Ipv4Addr = "10.255.0.2".parse().unwrap();
    let mut forged = wire::Repr {
        vrid: 51,
        priority: 250,
        interval_cs: 1,
        addrs: vec!["10.0.0.1".parse().unwrap()],
    }
    .to_bytes(peer, wire::MULTICAST);
    forged[7] ^= 0xff;
    let packet = ip_packet(peer, wire::MULTICAST, &forged);
    // The agent starts first (it needs the lab mutably); its VRRP only begins
    // after loading the data plane, by when the forgeries are flowing.
    let a1 = RunningAgent::start(&mut lab, "fw1", &AgentSpec::new(1, 100, 10));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let lab_ref = &lab;
    std::thread::scope(|s| {
        s.spawn(|| {
            lab_ref
                .run_in("fw2", || {
                    let sock = socket2::Socket::new(
                        socket2::Domain::IPV4,
                        socket2::Type::RAW,
                        Some(socket2::Protocol::from(112)),
                    )
                    .unwrap();
                    sock.set_header_included_v4(true).unwrap();
                    sock.bind_device(Some(b"ha0")).unwrap();
                    let dst =
                        socket2::SockAddr::from(std::net::SocketAddrV4::new(wire::MULTICAST, 0));
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = sock.send_to(&packet, &dst);
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
                .unwrap();
        });
        wait_for(
            "fw1 MASTER despite the forgeries",
            Duration::from_secs(5),
            || a1.role().as_deref() == Some("MASTER"),
        );
        wait_for("forgeries counted", Duration::from_secs(3), || {
            a1.status()
                .is_some_and(|st| st.rejected_by_reason.get("Malformed").copied().unwrap_or(0) > 10)
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}
