//! No false failover with both CPUs saturated: two agents keep their roles
//! for 30 s while four busy loops compete for two cores (the agents run
//! under SCHED_FIFO, and the lease tolerates a tick of lateness), and their
//! data interfaces are polled by threads at nice -20. 50 ms adverts (a
//! 146 ms lease): what is tested is that busy processes cannot delay the
//! loop, not the VM's own stalls, which reach 29 ms here even for a
//! SCHED_FIFO 99 thread that only sleeps (cyclictest, docs/benchmarks.md)
//! and so would lapse the 26 ms lease of 10 ms adverts now and then.
//! In a file of its own so the busy loops do not slow other tests.

use std::time::Duration;

use ha_tests::{AgentSpec, RunningAgent, failover_lab, wait_for};

#[test]
fn no_false_failover_with_the_cpus_saturated() {
    let mut lab = failover_lab();
    let a1 = RunningAgent::start(&mut lab, "fw1", &AgentSpec::new(1, 200, 50));
    let a2 = RunningAgent::start(&mut lab, "fw2", &AgentSpec::new(2, 100, 50));
    wait_for("fw1 MASTER and fw2 BACKUP", Duration::from_secs(10), || {
        a1.role().as_deref() == Some("MASTER") && a2.role().as_deref() == Some("BACKUP")
    });
    // The data interfaces are polled by kernel threads at nice -20 (their
    // forwarding work never runs inside the VRRP loop), the HA link not.
    let napi = a1.status().unwrap().napi;
    let ifaces: Vec<&str> = napi.iter().map(|n| n.iface.as_str()).collect();
    assert_eq!(ifaces, ["lan0", "wan0"], "{napi:?}");
    for n in &napi {
        assert!(n.done(-20), "{napi:?}");
        assert!(!n.instances.is_empty(), "{napi:?}");
        for i in &n.instances {
            let pid = i.pid.expect("a NAPI thread");
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
            assert!(comm.starts_with(&format!("napi/{}-", n.iface)), "{comm}");
        }
    }
    let before = (
        a1.status().unwrap().transitions_total,
        a2.status().unwrap().transitions_total,
    );
    let hogs: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new("timeout")
                .args(["30", "sh", "-c", "while :; do :; done"])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut h in hogs {
        let _ = h.wait();
    }
    let after = (
        a1.status().unwrap().transitions_total,
        a2.status().unwrap().transitions_total,
    );
    assert_eq!(
        after,
        before,
        "a role changed under load:\n{}\n{}",
        a1.log_text(),
        a2.log_text()
    );
    assert!(a1.log_text().contains("running under SCHED_FIFO"));
    assert!(!a1.log_text().contains("lease lapsed"));
    assert!(
        a2.status().unwrap().adverts_received > 400,
        "adverts kept flowing"
    );
}
