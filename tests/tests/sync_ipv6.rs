//! State sync of IPv6 connections (issue 16), on the failover lab with its
//! IPv6 addressing (`add_ipv6`: the client's gateway the LAN's link-local
//! VIP, the server's the WAN's global VIP, both in an IPv6 instance), and
//! the stateful `inet` ruleset on both firewalls:
//!
//! - TCP connections forwarded by fw1 appear in fw2's kernel conntrack,
//!   ESTABLISHED and assured (XDP's IPv6 events, enriched through
//!   ctnetlink, applied with AF_INET6);
//! - connections opened while fw2's agent is down reach fw2 by the bulk
//!   resync of its return (the XDP IPv6 table read against an AF_UNSPEC
//!   dump);
//! - after a hard crash of fw1 (agent killed, links down) fw2 takes the
//!   IPv6 VIPs, its NAs move the hosts, and every connection goes on
//!   through fw2's stateful ruleset (strict TCP tracking: only a
//!   replicated entry lets a segment through).

use std::{
    io::{Read as _, Write as _},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use ha_tests::{
    AgentSpec, CLIENT6 as CLIENT, Family, RunningAgent, SERVER6 as SERVER, SyncKey, add_ipv6,
    failover_lab, links_down_at_once, start_pair, stateful_firewall, wait_for,
};

/// fw2's IPv6 TCP entries to `port`, as `conntrack -L -f ipv6` prints them.
fn fw2_entries(lab: &ha_lab::Lab, port: u16) -> Vec<String> {
    let port = port.to_string();
    lab.exec(
        "fw2",
        &[
            "conntrack",
            "-L",
            "-f",
            "ipv6",
            "-p",
            "tcp",
            "--dport",
            &port,
        ],
    )
    .map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

/// Entries of `port` that are what a replicated established connection
/// from the client must be.
fn established(lines: &[String]) -> usize {
    let want = format!("ESTABLISHED src={CLIENT} dst={SERVER}");
    lines
        .iter()
        .filter(|l| l.contains(&want) && l.contains("[ASSURED]"))
        .count()
}

/// `n` connections from the client to the server's `port`, each having
/// exchanged a first message with the echo server.
fn connect(lab: &ha_lab::Lab, port: u16, n: usize) -> Vec<TcpStream> {
    let to = SocketAddr::from((SERVER.parse::<Ipv6Addr>().unwrap(), port));
    let mut conns = lab
        .run_in("client", || {
            (0..n)
                .map(|_| {
                    (0..100)
                        .find_map(|_| {
                            TcpStream::connect_timeout(&to, Duration::from_secs(1))
                                .ok()
                                .or_else(|| {
                                    std::thread::sleep(Duration::from_millis(50));
                                    None
                                })
                        })
                        .expect("connect to the server over IPv6 through fw1")
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        echo(c, b"hello");
    }
    conns
}

/// Sends `msg` and reads it back from the echo server.
fn echo(c: &mut TcpStream, msg: &[u8]) {
    if let Err(e) = try_echo(c, msg) {
        panic!("echo over {:?}: {e}", c.local_addr());
    }
}

fn try_echo(c: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    c.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back)?;
    assert_eq!(back, msg);
    Ok(())
}

/// The packets fw2's forward chain dropped as invalid.
fn invalid_drops(lab: &ha_lab::Lab) -> u64 {
    let out = lab
        .exec(
            "fw2",
            &["nft", "list", "chain", "inet", "halab_fw", "forward"],
        )
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .find(|l| l.contains("ct state invalid"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "packets").nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// An echo server on `port` in the server namespace, serving `n`
/// connections, each until the client closes it.
fn echo_server(lab: &ha_lab::Lab, port: u16, n: usize) -> std::thread::JoinHandle<()> {
    let listener = lab
        .run_in("server", || {
            TcpListener::bind(SocketAddr::from((
                SERVER.parse::<Ipv6Addr>().unwrap(),
                port,
            )))
            .unwrap()
        })
        .unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(n) {
            let mut conn = conn.unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while let Ok(k) = conn.read(&mut buf) {
                    if k == 0 || conn.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
            });
        }
    })
}

#[test]
fn ipv6_connections_are_synced_resynced_and_survive_a_hard_crash() {
    let mut lab = failover_lab();
    for fw in ["fw1", "fw2"] {
        stateful_firewall(&lab, fw, None);
    }
    add_ipv6(&lab);
    let key = SyncKey::new("ipv6", [16u8; 32]);
    let ha_extra = key.ha_extra();
    let (a1, mut a2) = start_pair(&mut lab, 10, |spec| AgentSpec {
        ha_extra: ha_extra.clone(),
        family: Family::Ipv6,
        ..spec
    });
    let in_sync = |a: &RunningAgent| a.status().and_then(|s| s.sync).is_some_and(|s| s.in_sync);
    wait_for("roles and sync", Duration::from_secs(10), || {
        a1.role().as_deref() == Some("MASTER") && in_sync(&a1) && in_sync(&a2)
    });

    // Live replication.
    const LIVE: usize = 20;
    let _server = echo_server(&lab, 8090, LIVE);
    let mut live = connect(&lab, 8090, LIVE);
    wait_for(
        "the IPv6 connections ESTABLISHED in fw2's conntrack",
        Duration::from_secs(10),
        || established(&fw2_entries(&lab, 8090)) == LIVE,
    );
    println!(
        "live: {LIVE}/{LIVE} on fw2, e.g. {}",
        fw2_entries(&lab, 8090)[0]
    );

    // Bulk resync: connections opened while fw2's agent is down, and fw2's
    // table lost meanwhile, reach it when its agent returns.
    a2.signal(libc::SIGKILL);
    wait_for("fw2's sync port free", Duration::from_secs(5), || {
        lab.run_in("fw2", || {
            std::net::UdpSocket::bind("10.255.0.2:7788").is_ok()
        })
        .unwrap()
    });
    lab.exec("fw2", &["conntrack", "-F", "-f", "ipv6"]).unwrap();
    assert_eq!(fw2_entries(&lab, 8090).len(), 0, "fw2's IPv6 table flushed");
    const LATER: usize = 10;
    let _later_server = echo_server(&lab, 8091, LATER);
    let mut later = connect(&lab, 8091, LATER);
    a2.restart(&mut lab);
    wait_for("fw2 in sync again", Duration::from_secs(30), || {
        a2.status()
            .is_some_and(|s| s.pid == a2.pid && s.sync.is_some_and(|s| s.in_sync))
    });
    wait_for(
        "every IPv6 connection in fw2's conntrack after the bulk",
        Duration::from_secs(10),
        || {
            established(&fw2_entries(&lab, 8090)) == LIVE
                && established(&fw2_entries(&lab, 8091)) == LATER
        },
    );
    println!("bulk resync: {LIVE}/{LIVE} and {LATER}/{LATER} on fw2");

    // Hard crash of fw1: its agent killed and its links down at once; fw2
    // takes the IPv6 VIPs, whose strict stateful ruleset passes only what
    // it has entries for.
    a1.signal(libc::SIGKILL);
    links_down_at_once(&lab, "fw1", &["ha0", "lan0", "wan0"]);
    wait_for("fw2 MASTER", Duration::from_secs(5), || {
        a2.role().as_deref() == Some("MASTER")
    });
    for (i, c) in live.iter_mut().chain(later.iter_mut()).enumerate() {
        echo(c, format!("after the crash {i}").as_bytes());
    }
    let drops = invalid_drops(&lab);
    println!(
        "after the hard crash: {} connections carried on through fw2, {drops} invalid drops",
        LIVE + LATER
    );
    assert_eq!(drops, 0);
    drop(a1);
}

/// The control: without state sync, the same crash kills every IPv6
/// connection (fw2's strict ruleset drops their segments as invalid), so
/// the test above measures something.
#[test]
fn without_replication_ipv6_connections_die() {
    let mut lab = failover_lab();
    for fw in ["fw1", "fw2"] {
        stateful_firewall(&lab, fw, None);
    }
    add_ipv6(&lab);
    let (a1, a2) = start_pair(&mut lab, 10, |spec| AgentSpec {
        family: Family::Ipv6,
        ..spec
    });
    wait_for("roles", Duration::from_secs(10), || {
        a1.role().as_deref() == Some("MASTER")
    });
    const N: usize = 5;
    let _server = echo_server(&lab, 8092, N);
    let mut conns = connect(&lab, 8092, N);
    a1.signal(libc::SIGKILL);
    links_down_at_once(&lab, "fw1", &["ha0", "lan0", "wan0"]);
    wait_for("fw2 MASTER", Duration::from_secs(5), || {
        a2.role().as_deref() == Some("MASTER")
    });
    let mut survived = 0;
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        survived += usize::from(try_echo(c, b"after the crash").is_ok());
    }
    let drops = invalid_drops(&lab);
    println!("without replication: {survived}/{N} survived, {drops} invalid drops on fw2");
    assert_eq!(survived, 0);
    assert!(drops > 0, "fw2 dropped nothing as invalid");
}
