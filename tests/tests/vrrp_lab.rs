//! VRRP between two agents in the failover lab: election, hard crash of the
//! master, graceful shutdown; the data plane follows the election.

use std::{collections::BTreeSet, time::Duration};

use ha_lab::Lab;
use ha_tests::{AgentSpec, RunningAgent, failover_lab, wait_for};

/// MACs that answered the client's ARP requests for the LAN VIP.
fn arp_answers(lab: &Lab) -> BTreeSet<String> {
    let out = lab
        .command(
            "client",
            &["arping", "-c", "2", "-w", "2", "-I", "eth0", "10.0.0.1"],
        )
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("reply from"))
        .filter_map(|l| Some(l.split('[').nth(1)?.split(']').next()?.to_ascii_lowercase()))
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
    let mac1 = lab.mac(("fw1", "lan0")).unwrap().to_ascii_lowercase();
    let mac2 = lab.mac(("fw2", "lan0")).unwrap().to_ascii_lowercase();
    assert_eq!(arp_answers(&lab), BTreeSet::from([mac1]));
    // Stable: still the same roles after a while at 10 ms adverts.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(a1.role().as_deref(), Some("MASTER"));
    assert!(a2.status().unwrap().adverts_received > 50);

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
