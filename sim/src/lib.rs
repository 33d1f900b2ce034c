//! Deterministic simulation of an ha-agent cluster (`cargo xtask sim`).
//!
//! Two or three node cores (`ha_core::node`, the very code the daemon
//! runs) behind a model of the daemon's shell, each with a data plane that
//! holds the ownership word and its lease, over a simulated network. A seed
//! draws the cluster, the network and a timeline of faults
//! ([`scenario`]): loss, delay, duplication, reordering, one-way and full
//! partitions, machine crashes and reboots, agent crashes and restarts
//! (within the lease or not), graceful stops, a loop frozen while its data
//! plane's lease runs, VM pauses (the clock jumps), clock drift, hostile and
//! malformed packets, operator commands, tracked-link faults, failed map
//! writes; heartbeat paths (the HA link and data paths) cut one at a time
//! or all together, authenticated adverts (forged, replayed), wall-clock
//! steps. [`world`] runs it; [`check`] holds the invariants, checked on
//! every step. Like smoltcp's netsim, FoundationDB's simulation and
//! TigerBeetle's VOPR: one seeded RNG per concern, one event queue, no wall
//! clock, so a failing seed replays exactly with its trace.

pub mod check;
pub mod hostile;
pub mod node;
pub mod scenario;
pub mod trace;
pub mod world;

use std::time::Duration;

use self::{scenario::Scenario, trace::Trace, world::World};

/// What one seed did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub seed: u64,
    pub violations: Vec<(Duration, String)>,
    pub stats: world::Stats,
    pub deaths_checked: u64,
    pub worst_failover_excess: Option<Duration>,
    pub dual_clean_max: Duration,
    pub dual_impaired_max: Duration,
    pub dual_total: Duration,
    /// The fast heartbeat was on; its detections checked (DETECT), and
    /// the longest of each kind with its bound.
    pub heartbeat: bool,
    pub detect_crash: u64,
    pub detect_lapse: u64,
    pub detect_crash_worst: Option<(Duration, Duration)>,
    pub detect_lapse_worst: Option<(Duration, Duration)>,
    /// The trace, when asked for.
    pub trace: Option<String>,
    /// One line about the scenario.
    pub scenario: String,
}

/// Runs `seed`; with `trace`, the whole trace comes back too.
pub fn run_seed(seed: u64, trace: bool) -> Outcome {
    let sc = Scenario::generate(seed);
    let mut tr = trace.then(Trace::default);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut w = World::new(&sc, tr.as_mut());
        w.run();
        let c = &w.check;
        Outcome {
            seed,
            violations: c.violations.clone(),
            stats: w.stats.clone(),
            deaths_checked: c.deaths_checked,
            worst_failover_excess: c.worst_failover_excess,
            dual_clean_max: c.dual_clean_max,
            dual_impaired_max: c.dual_impaired_max,
            dual_total: c.dual_total,
            heartbeat: sc.heartbeat().is_some(),
            detect_crash: c.detect_crash,
            detect_lapse: c.detect_lapse,
            detect_crash_worst: c.detect_crash_worst,
            detect_lapse_worst: c.detect_lapse_worst,
            trace: None,
            scenario: String::new(),
        }
    }));
    let mut out = result.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        Outcome {
            seed,
            violations: vec![(Duration::ZERO, format!("PANIC: {msg}"))],
            ..Outcome::default()
        }
    });
    out.trace = tr.map(|t| t.render(None));
    out.scenario = describe(&sc);
    out
}

/// A line about a scenario.
pub fn describe(sc: &Scenario) -> String {
    format!(
        "{} nodes, {} groups, adverts {:?}, tick {:?}, lease {:?}, {}, sync {}, auth {} {:?}, {} paths, loss {:?}, dup {:?}, delay {:?}+{:?}, {} faults until {:?}, heartbeat {}",
        sc.nodes.len(),
        sc.nodes[0].settings.groups.len(),
        sc.max_advert(),
        sc.tick,
        sc.nodes[0].settings.lease,
        if sc.unicast { "unicast" } else { "multicast" },
        sc.nodes[0].settings.state_sync,
        sc.auth.mode.as_str(),
        sc.auth.anti_replay,
        sc.paths(),
        sc.nets.iter().map(|n| n.loss).collect::<Vec<_>>(),
        sc.nets.iter().map(|n| n.dup).collect::<Vec<_>>(),
        sc.nets.iter().map(|n| n.delay).collect::<Vec<_>>(),
        sc.nets.iter().map(|n| n.jitter).collect::<Vec<_>>(),
        sc.faults.len(),
        sc.faults_until,
        sc.heartbeat().map_or("off".into(), |h| format!(
            "{:?} misses {}..{}{}",
            h.interval,
            h.misses_min,
            h.misses_max,
            if sc.sniffer {
                ", the attacker sees the probes"
            } else {
                ""
            }
        )),
    )
}
