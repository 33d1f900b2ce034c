//! The VRRP virtual MAC (`vmac = true`): the master answers ARP for the
//! VIPs with `00:00:5e:00:01:<vrid>` from XDP, only it takes frames to that
//! MAC, and a hard crash moves it without any client changing its
//! neighbour entry. The proof: clients whose entry for their gateway VIP is
//! **static** (pointing at the virtual MAC, which no ARP announcement can
//! move) keep their connections through a hard failover.

use std::time::Duration;

use ha_tests::{
    AgentSpec, BRIDGED_CRASH_LINKS, LinksDown, arp_answers, bridged_lan_lab, data_counter,
    failover_lab, start_pair, survival, survival::LAB_VMAC, wait_for,
};

#[test]
fn only_the_master_answers_with_the_virtual_mac_and_a_crash_moves_it() {
    answers_and_moves(failover_lab(), &["ha0", "lan0", "wan0"]);
}

/// The LAN a Linux bridge (`bridged_lan_lab`): the virtual MAC is a local
/// entry of the bridge's forwarding table, so frames to it go up to the
/// bridge, where the gate runs, instead of out of its ports.
#[test]
fn the_virtual_mac_on_a_bridge() {
    answers_and_moves(bridged_lan_lab(), &BRIDGED_CRASH_LINKS);
}

fn answers_and_moves(mut lab: ha_lab::Lab, crash_links: &[&str]) {
    let _serial = ha_tests::one_lab_at_a_time();
    let (a1, a2) = start_pair(&mut lab, 100, |s: AgentSpec| AgentSpec { vmac: true, ..s });
    wait_for("fw1 MASTER, fw2 BACKUP", Duration::from_secs(15), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
    let vip = "10.0.0.1".parse().unwrap();
    let answers = arp_answers(&lab, vip);
    assert!(
        !answers.is_empty() && answers.iter().all(|m| m == LAB_VMAC),
        "only the virtual MAC answers for the VIP: {answers:?}"
    );
    assert!(data_counter(&a1.pins.0, "arp_reply_vmac") >= 1);
    assert_eq!(data_counter(&a2.pins.0, "arp_reply_vmac"), 0);
    // The client learnt the virtual MAC, and traffic to it reaches fw1.
    let ping = |lab: &ha_lab::Lab| {
        lab.command("client", &["ping", "-c", "1", "-W", "1", "10.1.0.10"])
            .status()
            .unwrap()
            .success()
    };
    assert!(ping(&lab), "through the VIP gateway");
    let neigh = lab
        .command("client", &["ip", "neigh", "show", "10.0.0.1"])
        .output()
        .unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout).into_owned();
    assert!(neigh.contains(LAB_VMAC), "{neigh}");
    assert!(data_counter(&a1.pins.0, "pass_vmac_owner") >= 1);
    LinksDown::prepare(&lab, "fw1", crash_links).fire();
    a1.signal(libc::SIGKILL);
    wait_for("fw2 MASTER", Duration::from_secs(10), || {
        a2.role().as_deref() == Some("MASTER")
    });
    // The client's entry still names the virtual MAC; fw2 now takes it.
    wait_for("through fw2", Duration::from_secs(10), || ping(&lab));
    let answers = arp_answers(&lab, vip);
    assert!(
        !answers.is_empty() && answers.iter().all(|m| m == LAB_VMAC),
        "{answers:?}"
    );
    assert!(data_counter(&a2.pins.0, "pass_vmac_owner") >= 1);
}

#[test]
fn static_neighbour_clients_keep_their_connections_through_a_hard_crash() {
    let _serial = ha_tests::one_lab_at_a_time();
    let o = survival::run_on(failover_lab(), &["ha0", "lan0", "wan0"], true, false, true);
    // What the virtual MAC answers for: the clients' path moves with it.
    survival::assert_survived(&o);
}
