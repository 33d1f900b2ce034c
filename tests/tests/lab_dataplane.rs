//! The data plane on two firewalls in a lab: the client's ARP for a VIP gets
//! exactly one answer, from the owner; one ownership write moves it; forwarded
//! TCP flows produce the expected events; re-opening the pins (an agent restart)
//! does not drop a ping stream through the VIP.
//!
//! ```text
//! client 10.0.0.10 --[lan]-- fw1 10.0.0.2 / fw2 10.0.0.3 (VIP 10.0.0.1 on both)
//!                            fw1 10.1.0.2 / fw2 10.1.0.3 (VIP 10.1.0.1) --[wan]-- server 10.1.0.10
//! ```

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpListener, TcpStream},
    time::Duration,
};

use ha_agent::dataplane::{
    Dataplane, LoadOptions,
    events::{Event as FlowEvent, FlowEvents},
};
use ha_common::flow::{FlowEventKind, TcpState};
use ha_lab::Lab;
use ha_tests::{PinnedDataplane, failover_lab};

const LAN_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const WAN_VIP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);

struct TwoFirewalls {
    lab: Lab,
    fw: [PinnedDataplane; 2],
}

fn two_firewalls(tag: &str) -> TwoFirewalls {
    let lab = failover_lab();
    for fw in ["fw1", "fw2"] {
        lab.add_addr((fw, "lan0"), &format!("{LAN_VIP}/24"))
            .unwrap();
        lab.add_addr((fw, "wan0"), &format!("{WAN_VIP}/24"))
            .unwrap();
    }

    let fw = [
        PinnedDataplane::new(&format!("{tag}1")),
        PinnedDataplane::new(&format!("{tag}2")),
    ];
    for (p, ns) in fw.iter().zip(["fw1", "fw2"]) {
        lab.run_in(ns, || {
            for iface in ["lan0", "wan0"] {
                let mode = p.dp.attach_data(iface, false).unwrap();
                assert_eq!(
                    mode,
                    Some(ha_agent::dataplane::AttachMode::Native),
                    "{ns} {iface}"
                );
            }
        })
        .unwrap();
    }
    let mut fw = fw;
    for p in &mut fw {
        p.dp.set_vips(&[(LAN_VIP, 0), (WAN_VIP, 0)]).unwrap();
    }
    TwoFirewalls { lab, fw }
}

/// Replies to the client's ARP for `vip`: how many, and from which MACs.
fn arp_answers(lab: &Lab, vip: Ipv4Addr) -> (usize, BTreeSet<String>) {
    let replies = ha_tests::arp_answers(lab, vip);
    (replies.len(), replies.into_iter().collect())
}

#[test]
fn arp_for_a_vip_is_answered_only_by_the_owner() {
    let mut t = two_firewalls("arp");
    let mac1 = t.lab.mac(("fw1", "lan0")).unwrap();
    let mac2 = t.lab.mac(("fw2", "lan0")).unwrap();

    // Control: with both owning, both answer (what the gate exists to prevent).
    t.fw[0].dp.set_ownership(1, None).unwrap();
    t.fw[1].dp.set_ownership(1, None).unwrap();
    let (n, macs) = arp_answers(&t.lab, LAN_VIP);
    assert_eq!(
        macs,
        BTreeSet::from([mac1.clone(), mac2.clone()]),
        "{n} replies"
    );

    // fw1 owns: two requests, two replies, all from fw1.
    t.fw[1].dp.set_ownership(0, None).unwrap();
    let (n, macs) = arp_answers(&t.lab, LAN_VIP);
    assert_eq!((n, macs), (2, BTreeSet::from([mac1.clone()])));

    // One write on each node moves the VIP.
    t.fw[0].dp.set_ownership(0, None).unwrap();
    t.fw[1].dp.set_ownership(1, None).unwrap();
    let (n, macs) = arp_answers(&t.lab, LAN_VIP);
    assert_eq!((n, macs), (2, BTreeSet::from([mac2])));

    // Neither owns: nobody answers.
    t.fw[1].dp.set_ownership(0, None).unwrap();
    assert_eq!(arp_answers(&t.lab, LAN_VIP).0, 0);
}

/// Drains `events` into `got` until `n` events match `want`, or 2 s pass.
fn wait_for_events(
    events: &mut FlowEvents,
    got: &mut Vec<FlowEvent>,
    want: impl Fn(&FlowEvent) -> bool,
    n: usize,
) {
    let start = std::time::Instant::now();
    while got.iter().filter(|e| want(e)).count() < n && start.elapsed() < Duration::from_secs(2) {
        if events.drain(got) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn forwarded_tcp_flow_produces_its_events_on_the_owner_only() {
    let mut t = two_firewalls("flow");
    t.fw[0].dp.set_ownership(1, None).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let mut ev1 = FlowEvents::open(&t.fw[0].instance, Duration::from_millis(1)).unwrap();
    let mut ev2 = FlowEvents::open(&t.fw[1].instance, Duration::from_millis(1)).unwrap();

    let lab = &t.lab;
    let client_port = std::thread::scope(|s| {
        let server = s.spawn(|| {
            lab.run_in("server", || {
                let listener = TcpListener::bind("10.1.0.10:8080").unwrap();
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 5];
                conn.read_exact(&mut buf).unwrap();
                conn.write_all(b"world").unwrap();
                // Wait for the client's FIN, then close our side.
                assert_eq!(conn.read(&mut buf).unwrap(), 0);
            })
            .unwrap()
        });
        let port = lab
            .run_in("client", || {
                let mut conn = None;
                for _ in 0..50 {
                    match TcpStream::connect("10.1.0.10:8080") {
                        Ok(c) => {
                            conn = Some(c);
                            break;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
                let mut conn = conn.expect("connect to the server through the VIP gateway");
                conn.write_all(b"hello").unwrap();
                let mut buf = [0u8; 5];
                conn.read_exact(&mut buf).unwrap();
                assert_eq!(&buf, b"world");
                let port = conn.local_addr().unwrap().port();
                conn.shutdown(std::net::Shutdown::Write).unwrap();
                let _ = conn.read(&mut buf);
                port
            })
            .unwrap();
        server.join().unwrap();
        port
    });
    // The owner's XDP wrote the events before forwarding the packets that
    // caused them; read until the four are there.
    let mut got = Vec::new();
    wait_for_events(
        &mut ev1,
        &mut got,
        |e| e.proto == 6 && e.src_port == client_port,
        4,
    );
    let tcp: Vec<&FlowEvent> = got
        .iter()
        .filter(|e| e.proto == 6 && e.src_port == client_port)
        .collect();
    let seen: Vec<(FlowEventKind, TcpState)> = tcp
        .iter()
        .map(|e| {
            (
                FlowEventKind::from_u8(e.kind).unwrap(),
                TcpState::from_u8(e.state).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (FlowEventKind::New, TcpState::SynSent),
            (FlowEventKind::StateChange, TcpState::Established),
            (FlowEventKind::StateChange, TcpState::Closing),
            (FlowEventKind::StateChange, TcpState::Closed),
        ],
        "{got:?}"
    );
    for e in &tcp {
        assert_eq!(e.src, std::net::IpAddr::from([10, 0, 0, 10]));
        assert_eq!(e.dst, std::net::IpAddr::from([10, 1, 0, 10]));
        assert_eq!(e.dst_port, 8080);
    }
    let mut other = Vec::new();
    assert_eq!(ev2.drain(&mut other), 0, "the backup emitted {other:?}");
}

#[test]
fn reopening_the_pins_does_not_drop_a_ping_stream() {
    let mut t = two_firewalls("restart");
    let lease = Duration::from_secs(3);
    t.fw[0].dp.set_ownership(1, Some(lease)).unwrap();
    let lab = &t.lab;
    let instance = t.fw[0].instance.clone();
    std::thread::scope(|s| {
        let ping = s.spawn(|| {
            lab.exec(
                "client",
                &[
                    "ping",
                    "-q",
                    "-i",
                    "0.01",
                    "-c",
                    "300",
                    "-W",
                    "1",
                    &LAN_VIP.to_string(),
                ],
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        });
        // The "agent" renews its lease every 300 ms and restarts twice during
        // the stream: its handle goes away, a new one re-opens the pins, finds
        // the programs still attached and carries on renewing.
        let mut dp = Dataplane::open(&instance).unwrap();
        let mut restarts = 0;
        for tick in 0.. {
            if ping.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
            if tick % 4 == 3 {
                drop(dp);
                dp = Dataplane::create_or_open(&instance, LoadOptions::default()).unwrap();
                let again = lab
                    .run_in("fw1", || dp.attach_data("lan0", false).unwrap())
                    .unwrap();
                assert_eq!(again, None, "still attached from before");
                assert_eq!(dp.ownership().unwrap().groups, 1);
                restarts += 1;
            }
            dp.renew_lease(lease).unwrap();
        }
        assert!(restarts >= 2, "{restarts} restarts during the stream");
        let out = ping.join().unwrap().expect("ping through the VIP");
        assert!(
            out.contains("300 packets transmitted, 300 received"),
            "{out}"
        );
    });
}
