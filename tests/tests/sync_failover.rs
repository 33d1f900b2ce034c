//! Established connections survive a hard failover: both firewalls run a
//! stateful nftables ruleset with strict TCP tracking, 1,000 long-lived TCP
//! connections, a batch opened 10 ms before the crash and a batch of 200
//! opened all at once 1 ms before it go client -> server through the VIP
//! gateway, and the master is hard-killed (links down and agent killed at
//! once). Routed, and source-NATed to the WAN VIP. A control
//! run without replication shows the connections dying, so the test measures
//! something.

use ha_tests::survival::{assert_survived, run};

#[test]
fn routed_connections_survive_a_hard_failover() {
    assert_survived(&run(true, false));
}

#[test]
fn source_nated_connections_survive_a_hard_failover() {
    assert_survived(&run(true, true));
}

#[test]
fn without_replication_the_connections_die() {
    let o = run(false, false);
    assert_eq!(o.replicated, 0, "nothing replicated in the control run");
    assert!(
        o.survived * 10 < o.total,
        "{}/{} survived without replication: the lab does not test what it claims",
        o.survived,
        o.total
    );
}
