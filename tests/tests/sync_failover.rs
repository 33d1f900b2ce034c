//! Established connections survive a hard failover: both firewalls run a
//! stateful nftables ruleset with strict TCP tracking, 1,000 long-lived TCP
//! connections, a batch opened 10 ms before the crash and a batch of 200
//! opened all at once 1 ms before it go client -> server through the VIP
//! gateway, and the master is hard-killed (links down and agent killed at
//! once). Routed, and source-NATed to the WAN VIP. A control
//! run without replication shows the connections dying, so the test measures
//! something.

use ha_tests::survival::{LATE_BATCH, LONG_LIVED, Outcome, YOUNG_BATCH, run};

fn assert_survived(o: &Outcome) {
    assert_eq!(o.total, LONG_LIVED + LATE_BATCH + YOUNG_BATCH);
    // The long-lived and the 10 ms batch: >= 99.9 % (of 1,050, at most one
    // lost). The young batch: >= 99 % (of 200, at most two).
    let older = o.survived - o.young_survived;
    assert!(
        older * 1000 >= (LONG_LIVED + LATE_BATCH) * 999,
        "only {older}/{} of the long-lived and 10 ms connections survived",
        LONG_LIVED + LATE_BATCH
    );
    assert!(
        o.young_survived * 100 >= YOUNG_BATCH * 99,
        "only {}/{YOUNG_BATCH} of the connections opened 1 ms before the crash survived",
        o.young_survived
    );
    assert_eq!(o.rsts, 0, "no resets");
}

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
