//! First end-to-end proof: the agent's data-plane module loads the embedded
//! object, attaches the probe in native mode to a veth inside a namespace, and
//! its per-CPU map counts exactly the ICMP echo requests a ping sent.

use ha_agent::dataplane::{AttachMode, probe::Probe};
use ha_common::probe::ProbeCounter;
use ha_lab::Lab;
use ha_tests::require_root;

#[test]
fn probe_counts_exactly_the_pings_sent() {
    require_root();
    const PINGS: u64 = 7;
    let mut lab = Lab::new();
    lab.add_netns("pinger").unwrap();
    lab.add_netns("target").unwrap();
    lab.add_veth(("pinger", "eth0"), ("target", "eth0"))
        .unwrap();
    lab.add_addr(("pinger", "eth0"), "192.0.2.1/24").unwrap();
    lab.add_addr(("target", "eth0"), "192.0.2.2/24").unwrap();

    let (mode, before, after) = lab
        .run_in("target", || {
            let mut dp = Probe::load().expect("load the embedded XDP object");
            let mode = dp.attach("eth0").expect("attach the probe to eth0");
            let before = dp.probe_counters().unwrap();
            let out = lab
                .exec(
                    "pinger",
                    &[
                        "ping",
                        "-c",
                        &PINGS.to_string(),
                        "-i",
                        "0.05",
                        "-W",
                        "2",
                        "192.0.2.2",
                    ],
                )
                .expect("ping through the probed veth");
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&format!("{PINGS} received")),
                "every ping answered"
            );
            (mode, before, dp.probe_counters().unwrap())
        })
        .unwrap();

    assert_eq!(mode, AttachMode::Native, "veth supports native XDP");
    assert_eq!(before.get(ProbeCounter::Ipv4EchoRequest), 0);
    assert_eq!(after.get(ProbeCounter::Ipv4EchoRequest), PINGS, "{after}");
    // Replies leave the target; XDP only sees what arrives.
    assert_eq!(after.get(ProbeCounter::Ipv4EchoReply), 0, "{after}");
    assert!(after.get(ProbeCounter::Frames) >= PINGS, "{after}");
    assert_eq!(after.get(ProbeCounter::Truncated), 0, "{after}");
}

/// An interface that does not exist is a clear error, not a panic.
#[test]
fn attach_to_missing_interface_names_it() {
    require_root();
    let mut lab = Lab::new();
    lab.add_netns("n").unwrap();
    let err = lab
        .run_in("n", || {
            let mut dp = Probe::load().unwrap();
            dp.attach("nosuch0").unwrap_err()
        })
        .unwrap();
    let text = format!("{err:#}");
    assert!(text.contains("nosuch0"), "{text}");
}
