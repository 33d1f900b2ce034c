//! A seed becomes a scenario: the cluster (nodes, groups, priorities,
//! intervals, the kernel tick), the network (delay, jitter, loss,
//! duplication, delay spikes) and a timeline of faults. Everything random in
//! a run is drawn here or from streams seeded from the same seed, so a seed
//! replays exactly.

use std::{net::Ipv4Addr, time::Duration};

use ha_core::{
    heartbeat,
    node::{GroupSettings, PathSettings, Settings},
    vrrp::{auth, group::Track, machine},
};
use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha8Rng;

/// Simulated time since the start of a run.
pub type T = Duration;

pub fn ms(v: u64) -> T {
    Duration::from_millis(v)
}

/// The interface every node tracks (link faults take it down).
pub const TRACKED: &str = "wan0";

/// Path names: the HA link, then data interfaces.
pub const PATH_NAMES: [&str; 3] = ["ha0", "lan0", "lan1"];

/// Node `i`'s address on path `p`: 10.255.0.<i+1> on the HA link,
/// 10.<p>.255.<i+1> on data path p.
pub fn path_addr(p: usize, i: usize) -> Ipv4Addr {
    if p == 0 {
        Ipv4Addr::new(10, 255, 0, i as u8 + 1)
    } else {
        Ipv4Addr::new(10, p as u8, 255, i as u8 + 1)
    }
}

/// The Unix time (s) around which the nodes' wall clocks start.
pub const WALL_START_S: u64 = 1_800_000_000;

/// One node of the cluster.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Its address on the HA link (10.255.0.<i+1>).
    pub addr: Ipv4Addr,
    /// Its address on each heartbeat path (`addrs[0] == addr`).
    pub addrs: Vec<Ipv4Addr>,
    /// Its wall clock at simulated time 0 (since the Unix epoch, ns).
    pub wall0: i128,
    /// What its node core runs.
    pub settings: Settings,
    /// Clock rate error of its monotonic clock, parts per million.
    pub drift_ppm: i64,
}

/// The network between the nodes (each direction of each pair alike).
#[derive(Debug, Clone)]
pub struct NetSpec {
    /// One-way delay: base plus uniform jitter.
    pub delay: T,
    pub jitter: T,
    /// Probability that a packet is lost, or delivered twice.
    pub loss: f64,
    pub dup: f64,
    /// Probability of a delay spike (reordering), and its size.
    pub spike: f64,
    pub spike_max: T,
}

/// A fault, starting at its time in the timeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Nothing gets from `from` to `to` (and back, unless `one_way`).
    Partition {
        from: usize,
        to: usize,
        one_way: bool,
        dur: T,
    },
    /// Extra loss on both directions between two nodes (on one path, or
    /// on every path).
    Loss {
        a: usize,
        b: usize,
        p: f64,
        path: Option<usize>,
        dur: T,
    },
    /// One heartbeat path is cut, both directions, for every node: as a
    /// carrier loss (the nodes are told its link is down) or silently.
    PathCut { path: usize, carrier: bool, dur: T },
    /// `node`'s wall clock is stepped by `by_ms` (either way; its monotonic
    /// clock does not move).
    WallStep { node: usize, by_ms: i64 },
    /// The machine goes down (links down, processes and data plane gone),
    /// and boots again after `dur`.
    Crash { node: usize, dur: T },
    /// The agent is killed (the data plane keeps its lease), and started
    /// again after `dur`.
    AgentCrash { node: usize, dur: T },
    /// The agent stops gracefully (priority 0), and starts again after `dur`.
    Stop { node: usize, dur: T },
    /// The agent's loop is frozen for `dur` (its data plane runs on).
    Stall { node: usize, dur: T },
    /// The whole machine is frozen for `dur` (a VM pause): afterwards its
    /// clock has jumped forward by `dur`.
    Pause { node: usize, dur: T },
    /// A host on the HA segment sends `count` hostile packets to `node`
    /// over `span`.
    Hostile { node: usize, count: u32, span: T },
    /// An operator command on `node`.
    Command {
        node: usize,
        command: ha_core::node::Command,
    },
    /// The tracked link of `node` goes down for `dur`.
    LinkDown { node: usize, dur: T },
    /// The next `count` map writes of `node` (ownership, renewals) fail.
    WriteFail { node: usize, count: u8 },
    /// `node` reloads its configuration: a VIP is added to (or removed
    /// from) the first instance of each group.
    Reload { node: usize },
}

impl Fault {
    /// The same fault, over by `left` at the latest (every fault heals
    /// before the quiet tail of the run).
    fn clamped(mut self, left: T) -> Fault {
        match &mut self {
            Fault::Partition { dur, .. }
            | Fault::Loss { dur, .. }
            | Fault::Crash { dur, .. }
            | Fault::AgentCrash { dur, .. }
            | Fault::Stop { dur, .. }
            | Fault::Stall { dur, .. }
            | Fault::Pause { dur, .. }
            | Fault::LinkDown { dur, .. }
            | Fault::PathCut { dur, .. }
            | Fault::Hostile { span: dur, .. } => *dur = (*dur).min(left),
            Fault::Command { .. }
            | Fault::WriteFail { .. }
            | Fault::Reload { .. }
            | Fault::WallStep { .. } => {}
        }
        self
    }
}

/// A whole run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub nodes: Vec<NodeSpec>,
    /// Adverts to each peer instead of multicast.
    pub unicast: bool,
    /// The data plane's clock resolution (CLOCK_MONOTONIC_COARSE).
    pub tick: T,
    /// The network of each heartbeat path (index 0: the HA link).
    pub nets: Vec<NetSpec>,
    /// Advert authentication (every node alike).
    pub auth: auth::Settings,
    /// Time the core takes per event, min and max.
    pub cost: (T, T),
    /// Faults by start time.
    pub faults: Vec<(T, Fault)>,
    /// The attacker sees the probes (it can copy a current tag into a
    /// forged or replayed reply); only with the fast heartbeat.
    pub sniffer: bool,
    /// When faults stop; the run ends `tail` later (everything healed and
    /// restarted: the cluster must have converged by then).
    pub faults_until: T,
    pub tail: T,
}

impl Scenario {
    /// The longest advert interval of any group (for bounds).
    pub fn max_advert(&self) -> T {
        self.nodes
            .iter()
            .flat_map(|n| &n.settings.groups)
            .flat_map(|g| &g.instances)
            .map(|(_, m)| Duration::from_millis(10 * u64::from(m.advert_interval_cs)))
            .max()
            .unwrap_or(ms(1000))
    }

    /// The longest one-way delay of any path (jitter and spikes included).
    pub fn max_delay(&self) -> T {
        self.nets
            .iter()
            .map(|n| n.delay + n.jitter + if n.spike > 0.0 { n.spike_max } else { T::ZERO })
            .max()
            .unwrap_or(T::ZERO)
    }

    /// The heartbeat paths.
    pub fn paths(&self) -> usize {
        self.nets.len()
    }

    /// The fast heartbeat's settings (every node alike but its addresses
    /// and session), when on.
    pub fn heartbeat(&self) -> Option<&heartbeat::Settings> {
        self.nodes[0].settings.heartbeat.as_ref()
    }

    /// The end of the run.
    pub fn end(&self) -> T {
        self.faults_until + self.tail
    }

    /// Draws a scenario from `seed`.
    pub fn generate(seed: u64) -> Scenario {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n_nodes = if rng.gen_bool(0.75) { 2 } else { 3 };
        let adv_ms: u64 = *[10u64, 10, 10, 10, 20, 50, 100, 1000]
            .choose(&mut rng)
            .unwrap_or(&10);
        let adv_cs = (adv_ms / 10) as u16;
        let tick = ms(*[1u64, 4, 4, 10].choose(&mut rng).unwrap_or(&4));
        let lease = ms(3 * adv_ms) - tick;
        let n_groups = if rng.gen_bool(0.8) { 1 } else { 2 };
        let members: Vec<usize> = (0..n_groups)
            .map(|_| if rng.gen_bool(0.8) { 1 } else { 2 })
            .collect();
        let unicast = rng.gen_bool(0.3);
        let state_sync = n_nodes == 2 && rng.gen_bool(0.6);
        let preempt = rng.gen_bool(0.85);
        let preempt_delay = if rng.gen_bool(0.2) {
            ms(rng.gen_range(1..=500))
        } else {
            Duration::ZERO
        };
        let garp_count = rng.gen_range(1..=3);
        // Priorities: distinct mostly, equal sometimes (the address breaks
        // the tie), the address owner (255) rarely.
        let mut prios: Vec<u8> = match rng.gen_range(0..10) {
            0 => vec![150; n_nodes],
            1 => (0..n_nodes)
                .map(|i| if i == 0 { 255 } else { 100 - i as u8 * 10 })
                .collect(),
            _ => (0..n_nodes).map(|i| 200 - 50 * i as u8).collect(),
        };
        if rng.gen_bool(0.3) {
            prios.shuffle(&mut rng);
        }
        // With two groups, half the time each is at home on another node
        // (active/active: one node master of one group, backup of the other).
        let active_active = n_groups == 2 && rng.gen_bool(0.5);
        let track_weight = if rng.gen_bool(0.5) { 0 } else { 60 };
        // Heartbeat paths (data paths need exactly one peer and signing).
        let n_paths = if n_nodes == 2 {
            *[1usize, 1, 2, 2, 3].choose(&mut rng).unwrap_or(&1)
        } else {
            1
        };
        let mode = if n_paths > 1 {
            if rng.gen_bool(0.8) {
                auth::Mode::Enforce
            } else {
                auth::Mode::Permissive
            }
        } else {
            match rng.gen_range(0..20) {
                0..=10 => auth::Mode::Enforce,
                11..=13 => auth::Mode::Permissive,
                14..=15 => auth::Mode::ReceiveOnly,
                _ => auth::Mode::None,
            }
        };
        let anti_replay = if mode != auth::Mode::None && rng.gen_bool(0.25) {
            auth::AntiReplay::Time {
                window_s: *[10u32, 30, 120].choose(&mut rng).unwrap_or(&30),
            }
        } else {
            auth::AntiReplay::Monotonic
        };
        let key_len = rng.gen_range(auth::KEY_MIN..=auth::KEY_MAX);
        let key_bytes: Vec<u8> = (0..key_len).map(|_| rng.r#gen()).collect();
        let auth = auth::Settings {
            mode,
            anti_replay,
            keys: if mode == auth::Mode::None {
                Vec::new()
            } else {
                auth::Key::new(1, &key_bytes).into_iter().collect()
            },
            active: 1,
        };
        // Named paths always with data paths; with the HA link alone, half
        // the seeds leave them unnamed (the default).
        let named = n_paths > 1 || rng.gen_bool(0.5);
        // The wall clocks: around WALL_START_S, a few seconds apart.
        let wall_base = i128::from(WALL_START_S) * 1_000_000_000
            + i128::from(rng.gen_range(0..86_400_000u64)) * 1_000_000;
        let addrs: Vec<Ipv4Addr> = (0..n_nodes).map(|i| path_addr(0, i)).collect();
        // The fast heartbeat, from a stream of its own (the rest of a seed
        // draws as it did before): 3 in 4 two-node seeds (the core refuses
        // it with two peers).
        let mut hb_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6865_6172_7462_6561);
        let hb = (n_nodes == 2 && hb_rng.gen_bool(0.75)).then(|| {
            let interval = Duration::from_micros(
                *[1000u64, 1000, 1000, 1000, 1000, 500, 2000, 5000]
                    .choose(&mut hb_rng)
                    .unwrap_or(&1000),
            );
            let misses_min = if hb_rng.gen_bool(0.7) {
                3
            } else {
                hb_rng.gen_range(2..=6)
            };
            heartbeat::Settings {
                interval,
                misses_min,
                misses_max: 30,
                key: hb_rng.r#gen(),
                // Drawn again at every start of an agent (the shell).
                session: [0; 16],
                local: addrs[0],
                peer: addrs[0],
            }
        });
        let sniffer = hb.is_some() && hb_rng.gen_bool(0.5);
        let nodes = (0..n_nodes)
            .map(|i| {
                let groups = (0..n_groups)
                    .map(|g| GroupSettings {
                        name: format!("g{g}"),
                        instances: (0..members[g])
                            .map(|m| {
                                let vrid = 10 * (g as u8 + 1) + m as u8;
                                (
                                    format!("VI_{vrid}"),
                                    machine::Config {
                                        vrid,
                                        priority: if active_active && g == 1 {
                                            prios[n_nodes - 1 - i]
                                        } else {
                                            prios[i]
                                        },
                                        advert_interval_cs: adv_cs,
                                        preempt,
                                        preempt_delay,
                                        local_addr: addrs[i],
                                        vips: vec![
                                            Ipv4Addr::new(10, g as u8, 0, m as u8 + 1).into(),
                                        ],
                                    },
                                )
                            })
                            .collect(),
                        tracks: vec![Track {
                            iface: TRACKED.into(),
                            weight: track_weight,
                        }],
                        garp_count,
                        garp_interval: ms(10),
                        garp_refresh: None,
                    })
                    .collect();
                let node_addrs: Vec<Ipv4Addr> = (0..n_paths).map(|p| path_addr(p, i)).collect();
                NodeSpec {
                    addr: addrs[i],
                    addrs: node_addrs.clone(),
                    wall0: wall_base + i128::from(rng.gen_range(-3_000_000i64..=3_000_000)) * 1_000,
                    settings: Settings {
                        peers: addrs.iter().copied().filter(|a| *a != addrs[i]).collect(),
                        lease,
                        state_sync,
                        groups,
                        heartbeat: hb.clone().map(|h| heartbeat::Settings {
                            local: addrs[i],
                            peer: addrs[1 - i],
                            ..h
                        }),
                        auth: auth.clone(),
                        paths: if named {
                            node_addrs
                                .iter()
                                .enumerate()
                                .map(|(p, a)| PathSettings {
                                    name: PATH_NAMES[p].into(),
                                    local: *a,
                                })
                                .collect()
                        } else {
                            Vec::new()
                        },
                    },
                    drift_ppm: rng.gen_range(-500..=500),
                }
            })
            .collect();
        let nets = (0..n_paths)
            .map(|_| NetSpec {
                delay: Duration::from_micros(rng.gen_range(10..=1000)),
                jitter: Duration::from_micros(rng.gen_range(0..=2000)),
                loss: *[0.0, 0.0, 0.001, 0.01, 0.05, 0.2]
                    .choose(&mut rng)
                    .unwrap_or(&0.0),
                dup: *[0.0, 0.0, 0.01, 0.1].choose(&mut rng).unwrap_or(&0.0),
                spike: *[0.0, 0.001, 0.01].choose(&mut rng).unwrap_or(&0.0),
                spike_max: ms(rng.gen_range(1..=30)),
            })
            .collect();
        let cost = (
            Duration::from_micros(rng.gen_range(1..=5)),
            Duration::from_micros(rng.gen_range(5..=40)),
        );
        // Long enough for the slowest interval to see a few failovers.
        let faults_until = ms((40 * adv_ms).clamp(4_000, 60_000));
        let n_faults = rng.gen_range(0..=12);
        let mut faults = Vec::new();
        // Time anti-replay: a node's wall clock stays within a margin of
        // the others' (the steps of each node add up to at most this), or
        // its adverts would be refused as stale (by design: see
        // docs/simulation.md).
        let mut step_budget_ms: Vec<i64> = vec![
            match anti_replay {
                auth::AntiReplay::Time { window_s } => (i64::from(window_s) / 2 - 4) * 1000,
                auth::AntiReplay::Monotonic => i64::MAX,
            };
            n_nodes
        ];
        for _ in 0..n_faults {
            let at = ms(rng.gen_range(200..faults_until.as_millis() as u64));
            let node = rng.gen_range(0..n_nodes);
            let other = (node + rng.gen_range(1..n_nodes)) % n_nodes;
            let short = ms(rng.gen_range(1..=(8 * adv_ms).max(50)));
            let long = ms(rng.gen_range(1..=(40 * adv_ms).max(500)));
            let fault = match rng.gen_range(0..125) {
                0..=14 => Fault::Partition {
                    from: node,
                    to: other,
                    one_way: rng.gen_bool(0.4),
                    dur: long,
                },
                15..=22 => Fault::Loss {
                    a: node,
                    b: other,
                    p: rng.gen_range(0.1..0.9),
                    path: None,
                    dur: long,
                },
                23..=34 => Fault::Crash { node, dur: long },
                35..=44 => Fault::AgentCrash {
                    node,
                    // A respawn within the lease as often as not.
                    dur: if rng.gen_bool(0.5) {
                        Duration::from_micros(rng.gen_range(100..=(2 * adv_ms * 1000)))
                    } else {
                        long
                    },
                },
                45..=51 => Fault::Stop { node, dur: long },
                52..=63 => Fault::Stall { node, dur: short },
                64..=69 => Fault::Pause { node, dur: short },
                70..=81 => Fault::Hostile {
                    node,
                    count: rng.gen_range(1..=400),
                    span: ms(rng.gen_range(1..=200)),
                },
                82..=91 => Fault::Command {
                    node,
                    command: match rng.gen_range(0..6) {
                        0 => ha_core::node::Command::Promote,
                        1 => ha_core::node::Command::Demote,
                        2 => ha_core::node::Command::Maintenance(true),
                        3 => ha_core::node::Command::Maintenance(false),
                        _ => ha_core::node::Command::Resync,
                    },
                },
                92..=96 => Fault::LinkDown { node, dur: long },
                97 => Fault::Reload { node },
                98..=99 => Fault::WriteFail {
                    node,
                    count: rng.gen_range(1..=3),
                },
                100..=111 => Fault::PathCut {
                    path: rng.gen_range(0..n_paths),
                    carrier: rng.gen_bool(0.5),
                    dur: long,
                },
                112..=119 => {
                    // Seconds, minutes or hours, either way.
                    let mag: i64 = match rng.gen_range(0..3) {
                        0 => rng.gen_range(1..=10_000),
                        1 => rng.gen_range(10_000..=600_000),
                        _ => rng.gen_range(600_000..=10_800_000),
                    };
                    let mag = mag.min(step_budget_ms[node]);
                    step_budget_ms[node] -= mag;
                    Fault::WallStep {
                        node,
                        by_ms: if rng.gen_bool(0.5) { mag } else { -mag },
                    }
                }
                _ => Fault::Loss {
                    a: node,
                    b: other,
                    p: rng.gen_range(0.1..0.9),
                    path: Some(rng.gen_range(0..n_paths)),
                    dur: long,
                },
            };
            faults.push((at, fault.clamped(faults_until - at)));
        }
        faults.sort_by_key(|(t, _)| *t);
        let tail = ms(3_000) + 12 * ms(adv_ms) + preempt_delay;
        Scenario {
            seed,
            nodes,
            unicast,
            tick,
            nets,
            auth,
            cost,
            faults,
            sniffer,
            faults_until,
            tail,
        }
    }
}
