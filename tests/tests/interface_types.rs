//! A Linux bridge as a data interface (`bridged_lan_lab`: each firewall's
//! LAN `lan0` is a bridge whose port plugs into the LAN switch; the VIP is
//! on the bridge). The data gate attaches to it (generic XDP, the logged
//! fallback: a bridge has no native XDP), only the master answers ARP for
//! the VIP, a hard crash moves it, and established connections survive a
//! hard failover as on plain ports.
//!
//! VLAN devices and bonds, the seeds' other interface types, cannot be made
//! on this lab machine's kernel (no CONFIG_VLAN_8021Q, no CONFIG_BONDING);
//! one 802.1Q/802.1ad tag is looked through on any data interface, stacked
//! tags dropped and counted (`xdp_verdicts`).

use std::time::Duration;

use ha_tests::{
    AgentSpec, BRIDGED_CRASH_LINKS, LinksDown, arp_answers, bridged_lan_lab, start_pair, survival,
    wait_for,
};

#[test]
fn the_gate_holds_on_a_bridge_and_moves_with_a_hard_crash() {
    let _serial = ha_tests::one_lab_at_a_time();
    let mut lab = bridged_lan_lab();
    let (a1, a2) = start_pair(&mut lab, 100, |s: AgentSpec| s);
    wait_for("fw1 MASTER, fw2 BACKUP", Duration::from_secs(15), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
    for a in [&a1, &a2] {
        let log = a.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("ha_data attached") && l.contains("lan0"))
            .unwrap_or_else(|| panic!("ha_data not attached to the bridge lan0:\n{log}"));
        // A bridge has no native XDP: the generic fallback, logged.
        assert!(line.contains("generic"), "{line}");
    }
    // The bridge has no NAPI of its own: the agent looks below it, to its
    // port (a veth without XDP has none either; a NIC port would be
    // threaded). Needs the kernel's netdev netlink family (6.10+; this
    // lab's kernel has it), else the status says why and `via` is empty.
    let napi = a1.status().unwrap().napi;
    let lan = napi
        .iter()
        .find(|n| n.iface == "lan0")
        .expect("lan0 in the status");
    assert_eq!(lan.via, ["lanp"], "{napi:?}");
    let vip = "10.0.0.1".parse().unwrap();
    let mac1 = lab.mac(("fw1", "lan0")).unwrap().to_ascii_lowercase();
    let mac2 = lab.mac(("fw2", "lan0")).unwrap().to_ascii_lowercase();
    let answers = arp_answers(&lab, vip);
    assert!(
        !answers.is_empty() && answers.iter().all(|m| *m == mac1),
        "only the master's bridge ({mac1}) answers for the VIP: {answers:?}"
    );
    LinksDown::prepare(&lab, "fw1", &BRIDGED_CRASH_LINKS).fire();
    a1.signal(libc::SIGKILL);
    wait_for("fw2 MASTER", Duration::from_secs(10), || {
        a2.role().as_deref() == Some("MASTER")
    });
    wait_for("fw2 answers for the VIP", Duration::from_secs(10), || {
        let a = arp_answers(&lab, vip);
        !a.is_empty() && a.iter().all(|m| *m == mac2)
    });
}

#[test]
fn connections_survive_a_hard_failover_on_a_bridge() {
    let _serial = ha_tests::one_lab_at_a_time();
    let o = survival::run_on(bridged_lan_lab(), &BRIDGED_CRASH_LINKS, true, false, false);
    survival::assert_survived(&o);
}
