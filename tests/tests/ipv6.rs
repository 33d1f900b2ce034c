//! IPv6 VIPs (RFC 9568 over IPv6): an IPv6 instance advertises over IPv6 on
//! the HA link (from its link-local address to ff02::12), the data gate
//! passes neighbour discovery and traffic for an IPv6 VIP only on the
//! owner, and a takeover announces the VIPs with unsolicited Neighbor
//! Advertisements (Router, Override) that move the hosts' entries. An IPv4
//! and an IPv6 instance in one group move together. Interop: Debian's
//! keepalived 2.2.7 with an IPv6 VRRPv3 instance, as the IPv4 interop
//! tests do.

use std::time::Duration;

use ha_tests::{
    AgentSpec, CLIENT6, Family, Keepalived, KeepalivedOptions, LAN_LINK_LOCAL_VIP, LinksDown,
    RunningAgent, SERVER6, WAN_VIP6, add_ipv6, data_counter, failover_lab, start_pair, wait_for,
};

/// The MAC in `ns`'s neighbour entry for `addr` ("" when none).
fn neighbour_mac(lab: &ha_lab::Lab, ns: &str, addr: &str) -> String {
    let out = lab
        .command(ns, &["ip", "-6", "neigh", "show", addr])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// One ping (IPv4 or IPv6, by the address).
fn ping6(lab: &ha_lab::Lab, from: &str, to: &str) -> bool {
    lab.command(from, &["ping", "-q", "-c", "1", "-W", "1", to])
        .output()
        .unwrap()
        .status
        .success()
}

/// The rejected adverts an agent counted, by reason.
fn rejected(a: &RunningAgent) -> u64 {
    a.status()
        .map_or(0, |s| s.rejected_by_reason.values().copied().sum::<u64>())
}

/// Both families in one group: the IPv6 instance's adverts go over IPv6 on
/// the HA link and keep the backup a backup; only the master answers for
/// the IPv6 VIP; a hard crash moves both families at once, and the
/// takeover's NAs move the client's and the server's entries (no wait for
/// neighbour unreachability detection).
#[test]
fn both_families_move_together_and_nas_move_the_hosts() {
    let _serial = ha_tests::one_lab_at_a_time();
    let mut lab = failover_lab();
    add_ipv6(&lab);
    let (a1, a2) = start_pair(&mut lab, 100, |s: AgentSpec| AgentSpec {
        family: Family::Dual,
        ..s
    });
    wait_for("fw1 MASTER, fw2 BACKUP", Duration::from_secs(15), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
    assert!(
        a1.log_text().contains("IPv6 instances advertise over IPv6"),
        "{}",
        a1.log_text()
    );
    // Traffic through the IPv6 VIP gateways both ways, and only fw1's MAC
    // answers for them.
    wait_for(
        "client reaches the server over IPv6",
        Duration::from_secs(5),
        || ping6(&lab, "client", SERVER6),
    );
    let fw1_lan = lab.mac(("fw1", "lan0")).unwrap();
    let fw2_lan = lab.mac(("fw2", "lan0")).unwrap();
    assert_eq!(neighbour_mac(&lab, "client", LAN_LINK_LOCAL_VIP), fw1_lan);
    assert!(data_counter(&a1.pins.0, "pass_nd_owner") >= 1);
    assert!(
        data_counter(&a2.pins.0, "drop_nd_not_owner") >= 1,
        "fw2 saw the NS and kept out"
    );
    // The backup stays a backup over 2 s (20 adverts of each family), none
    // refused.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(a2.role().as_deref(), Some("BACKUP"));
    let s2 = a2.status().unwrap();
    assert_eq!(rejected(&a2), 0, "{:?}", s2.rejected_by_reason);
    // Hard crash of fw1: fw2 takes both families in one ownership write.
    let down = LinksDown::prepare(&lab, "fw1", &["ha0", "lan0", "wan0"]);
    down.fire();
    a1.signal(libc::SIGKILL);
    wait_for("fw2 MASTER", Duration::from_secs(10), || {
        a2.role().as_deref() == Some("MASTER")
    });
    assert_eq!(a2.owned(), Some(1), "one group bit for both instances");
    // The NAs moved the client's entry for the VIP to fw2 (an existing
    // entry, Override set): no solicitation needed.
    wait_for(
        "the client's entry names fw2",
        Duration::from_secs(2),
        || neighbour_mac(&lab, "client", LAN_LINK_LOCAL_VIP) == fw2_lan,
    );
    assert!(ping6(&lab, "client", SERVER6), "through fw2");
    assert!(ping6(&lab, "server", CLIENT6), "and back");
    assert!(ping6(&lab, "client", "10.1.0.10"), "IPv4 moved with it");
}

/// keepalived 2.2.7 MASTER of an IPv6 VRRPv3 instance, the agent its
/// BACKUP: the agent parses keepalived's IPv6 adverts (no rejection, no
/// transition), and takes over when keepalived leaves (priority 0 advert).
#[test]
fn keepalived_master_agent_backup_over_ipv6() {
    let _serial = ha_tests::one_lab_at_a_time();
    let mut lab = failover_lab();
    add_ipv6(&lab);
    let ka = Keepalived::start_with(
        &mut lab,
        "fw1",
        1,
        200,
        100,
        &KeepalivedOptions {
            family: Family::Ipv6,
            ..KeepalivedOptions::default()
        },
    );
    wait_for("keepalived MASTER", Duration::from_secs(15), || {
        ka.state().as_deref() == Some("MASTER")
    });
    let agent = RunningAgent::start(
        &mut lab,
        "fw2",
        &AgentSpec {
            family: Family::Ipv6,
            ..AgentSpec::new(2, 100, 100)
        },
    );
    wait_for("agent BACKUP", Duration::from_secs(10), || {
        agent.role().as_deref() == Some("BACKUP")
    });
    std::thread::sleep(Duration::from_secs(3));
    let s = agent.status().unwrap();
    assert_eq!(
        agent.role().as_deref(),
        Some("BACKUP"),
        "{}",
        agent.log_text()
    );
    assert_eq!(rejected(&agent), 0, "{:?}", s.rejected_by_reason);
    assert!(s.adverts_received >= 20, "{}", s.adverts_received);
    assert!(ping6(&lab, "client", SERVER6), "through keepalived's VIP");
    ka.signal(libc::SIGTERM);
    wait_for("agent MASTER", Duration::from_secs(5), || {
        agent.role().as_deref() == Some("MASTER")
    });
    wait_for(
        "client reaches the server through the agent",
        Duration::from_secs(3),
        || ping6(&lab, "client", SERVER6),
    );
}

/// The agent MASTER, keepalived 2.2.7 its BACKUP over IPv6: keepalived
/// accepts the agent's IPv6 adverts (checksum over the IPv6 pseudo-header,
/// link-local source) and never becomes MASTER.
#[test]
fn agent_master_keepalived_backup_over_ipv6() {
    let _serial = ha_tests::one_lab_at_a_time();
    let mut lab = failover_lab();
    add_ipv6(&lab);
    let agent = RunningAgent::start(
        &mut lab,
        "fw1",
        &AgentSpec {
            family: Family::Ipv6,
            ..AgentSpec::new(1, 200, 100)
        },
    );
    wait_for("agent MASTER", Duration::from_secs(15), || {
        agent.role().as_deref() == Some("MASTER")
    });
    let ka = Keepalived::start_with(
        &mut lab,
        "fw2",
        2,
        100,
        100,
        &KeepalivedOptions {
            family: Family::Ipv6,
            ..KeepalivedOptions::default()
        },
    );
    wait_for("keepalived BACKUP", Duration::from_secs(10), || {
        ka.state().as_deref() == Some("BACKUP")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ka.states(), vec!["BACKUP".to_owned()], "{}", ka.log_text());
    assert_eq!(agent.role().as_deref(), Some("MASTER"));
    assert!(ping6(&lab, "client", SERVER6), "through the agent's VIP");
}

/// The IPv6 virtual MAC (`vmac = true` on an IPv6 instance): the master
/// answers neighbour solicitations for the VIPs with
/// `00:00:5e:00:02:<vrid>`, and a client whose entry for its gateway VIP is
/// **static** on that MAC keeps reaching the server through a hard crash.
#[test]
fn a_static_neighbour_on_the_ipv6_virtual_mac_survives_a_hard_crash() {
    let _serial = ha_tests::one_lab_at_a_time();
    let mut lab = failover_lab();
    add_ipv6(&lab);
    let (a1, a2) = start_pair(&mut lab, 100, |s: AgentSpec| AgentSpec {
        family: Family::Ipv6,
        vmac: true,
        ..s
    });
    wait_for("fw1 MASTER, fw2 BACKUP", Duration::from_secs(15), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
    let vmac = "00:00:5e:00:02:34";
    // The server learns the virtual MAC by solicitation (answered by XDP).
    wait_for(
        "the server reaches the client",
        Duration::from_secs(5),
        || ping6(&lab, "server", CLIENT6),
    );
    assert_eq!(neighbour_mac(&lab, "server", WAN_VIP6), vmac);
    assert!(data_counter(&a1.pins.0, "na_reply_vmac") >= 1);
    assert_eq!(data_counter(&a2.pins.0, "na_reply_vmac"), 0);
    // The client's entry is static, on the virtual MAC.
    lab.ip(
        "client",
        "static neighbour for the IPv6 VIP",
        &[
            "-6",
            "neigh",
            "replace",
            LAN_LINK_LOCAL_VIP,
            "lladdr",
            vmac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    )
    .unwrap();
    assert!(ping6(&lab, "client", SERVER6));
    assert!(data_counter(&a1.pins.0, "pass_vmac_owner") >= 1);
    LinksDown::prepare(&lab, "fw1", &["ha0", "lan0", "wan0"]).fire();
    a1.signal(libc::SIGKILL);
    wait_for("fw2 MASTER", Duration::from_secs(10), || {
        a2.role().as_deref() == Some("MASTER")
    });
    wait_for(
        "the client reaches the server through fw2",
        Duration::from_secs(3),
        || ping6(&lab, "client", SERVER6),
    );
    assert_eq!(
        neighbour_mac(&lab, "client", LAN_LINK_LOCAL_VIP),
        vmac,
        "the static entry, unchanged"
    );
    assert!(data_counter(&a2.pins.0, "pass_vmac_owner") >= 1);
}

/// A node whose HA link is down at start (no link-local address there yet)
/// still starts, and once the link comes up binds its IPv6 adverts to the
/// link-local address and follows the master's.
#[test]
fn an_agent_starts_with_its_ha_link_down_and_binds_when_it_comes_up() {
    let _serial = ha_tests::one_lab_at_a_time();
    let mut lab = failover_lab();
    add_ipv6(&lab);
    lab.link_down(("fw2", "ha0")).unwrap();
    let (a1, a2) = start_pair(&mut lab, 100, |s: AgentSpec| AgentSpec {
        family: Family::Ipv6,
        ..s
    });
    wait_for("fw2's agent running", Duration::from_secs(15), || {
        a2.status().is_some()
    });
    assert!(
        a2.log_text().contains("no usable IPv6 link-local address"),
        "{}",
        a2.log_text()
    );
    lab.link_up(("fw2", "ha0")).unwrap();
    wait_for(
        "fw1 MASTER, fw2 BACKUP over the HA link",
        Duration::from_secs(15),
        || a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP"),
    );
    wait_for("fw2 bound", Duration::from_secs(5), || {
        a2.log_text()
            .contains("IPv6 instances advertise over IPv6 on the HA link")
    });
    let before = a2.status().unwrap().adverts_received;
    std::thread::sleep(Duration::from_secs(1));
    assert!(a2.status().unwrap().adverts_received >= before + 5);
    assert_eq!(rejected(&a2), 0);
}
