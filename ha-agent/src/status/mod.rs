//! What the running agent reports, in one model: the node core's report,
//! state sync, config sync and the last takeover's timing. Written as JSON
//! to the status file (atomically, off the loop: [`writer`]), answered live
//! on the operator socket, rendered as text for `ha-agent status` ([`text`])
//! and as Prometheus metrics ([`metrics`]).

pub mod cluster;
pub mod events;
pub mod metrics;
pub mod text;
pub mod writer;

use std::{collections::BTreeMap, net::Ipv4Addr, time::SystemTime};

use ha_core::node::{Instant, Report};
use serde::{Deserialize, Serialize};

use crate::paths;

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Timing of the last takeover, from the master-down timer's due instant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TakeoverTiming {
    pub group: String,
    /// Replicated records applied by the commit before the ownership write,
    /// and how long the commit took (us); absent without state sync.
    #[serde(default)]
    pub commit_records: Option<usize>,
    #[serde(default)]
    pub commit_us: Option<f64>,
    /// Timer due -> ownership word written (us).
    pub to_owned_us: f64,
    /// Timer due -> first round of gratuitous ARPs on the wire (us).
    pub to_first_garp_us: f64,
    pub garps_sent: usize,
}

/// A transition for the status history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Transition {
    pub group: String,
    pub role: String,
    pub reason: String,
    /// Unix time, ms.
    pub at_ms: u128,
}

/// What `ha-agent status` shows about state sync.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SyncStatus {
    pub peer: Option<Ipv4Addr>,
    pub port: u16,
    /// The peer's bulk resync reached us, and nothing was lost since.
    pub in_sync: bool,
    /// The peer stopped acknowledging (sync resends only a probe a second;
    /// a resync follows when it answers).
    #[serde(default)]
    pub peer_down: bool,
    /// Unix ms of the last authenticated frame from the peer.
    pub last_rx_unix_ms: Option<u128>,
    /// Frames sent and not yet acknowledged.
    pub queue_depth: usize,
    /// Records waiting for a frame.
    pub pending_records: usize,
    /// Event in XDP -> acknowledged as applied by the peer, over the last
    /// acknowledged frames (ms).
    pub lag_ms_p50: Option<f64>,
    pub lag_ms_p99: Option<f64>,
    pub lag_ms_max: Option<f64>,
    /// Connections the peer gave us that are in our conntrack.
    pub flows_from_peer: usize,
    pub frames_sent: u64,
    pub frames_resent: u64,
    pub records_sent: u64,
    pub records_received: u64,
    /// Records dropped because a queue was full (the peer needs a resync).
    pub records_dropped: u64,
    /// Records sent with a NAT mapping read from conntrack.
    pub records_nat: u64,
    /// Records the kernel refused to apply.
    pub apply_errors: u64,
    /// Rejected datagrams by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Bulk resyncs sent to the peer.
    pub bulks_sent: u64,
    /// A bulk resync to the peer is being sent now.
    #[serde(default)]
    pub bulk_sending: bool,
    /// Bulks that went whole (ended by ResyncDone), and bulks that lost a
    /// record on the way (another followed; the peer stayed out of sync).
    #[serde(default)]
    pub bulks_completed: u64,
    #[serde(default)]
    pub bulks_incomplete: u64,
    /// Times the peer was told it is out of sync (records dropped).
    #[serde(default)]
    pub incomplete_sent: u64,
    /// Flows aged out of this node's XDP flow table: kernel conntrack no
    /// longer has them and XDP saw no packet of them for 10 s (checked at
    /// each bulk resync and every 60 s).
    #[serde(default)]
    pub xdp_flows_aged: u64,
    /// The last commit before a takeover: records applied, how long (us),
    /// and whether it stopped before the socket was empty (its time budget,
    /// or the sync thread was applying a batch: the rest follows at once).
    pub last_commit_records: Option<usize>,
    pub last_commit_us: Option<f64>,
    #[serde(default)]
    pub last_commit_partial: bool,
}

/// Config sync as status shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConfigSyncStatus {
    /// `Up to Date`, `Pending` or `Failed`.
    pub state: String,
    pub reason: Option<String>,
    /// Hash of the shared sections and files in force.
    pub hash: Option<String>,
    /// Unix ms of the last successful sync.
    pub synced_unix_ms: Option<u128>,
    /// Pushes this secondary refused (bad path, not a listed file, symlink,
    /// invalid configuration, failed reload or hook), each with its reason.
    #[serde(default)]
    pub refused_total: u64,
    /// Cluster control channel: requests answered since start.
    #[serde(default)]
    pub control_served: u64,
    /// Cluster control channel: connections closed unanswered, by reason
    /// (`not_peer`, `evicted`, `busy`, `timeout`, `auth_failed`, ...).
    #[serde(default)]
    pub control_refused: BTreeMap<String, u64>,
}

/// The agent's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub instance: String,
    pub pid: u32,
    /// When this snapshot was taken (Unix ms): ages below are as of then.
    #[serde(default)]
    pub written_unix_ms: u128,
    /// Roles and effective priorities by group.
    pub roles: BTreeMap<String, String>,
    pub priorities: BTreeMap<String, u8>,
    /// The ownership word we last wrote.
    pub owned: u64,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    /// Adverts the socket refused to send.
    pub advert_send_errors: u64,
    /// Accepted adverts whose interval differs from ours (RFC 9568: a backup
    /// learns the master's interval; counted and logged, not rejected).
    pub interval_mismatches: u64,
    /// Rejected VRRP packets by reason.
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Last accepted advert: source, priority, when, and its age when this
    /// snapshot was taken.
    pub last_advert_from: Option<Ipv4Addr>,
    pub last_advert_priority: Option<u8>,
    pub last_advert_unix_ms: Option<u128>,
    #[serde(default)]
    pub last_advert_age_ms: Option<u64>,
    pub last_takeover: Option<TakeoverTiming>,
    /// The most recent transitions, newest last (at most 20: count with
    /// `transitions_total`).
    pub transitions: Vec<Transition>,
    /// Every group transition since the agent started, and by reason.
    #[serde(default)]
    pub transitions_total: u64,
    #[serde(default)]
    pub transitions_by_reason: BTreeMap<String, u64>,
    /// Ownership leases found lapsed (a stall), each a step-down.
    #[serde(default)]
    pub lease_lapses: u64,
    /// Whether this node may preempt (state sync complete, or none).
    #[serde(default)]
    pub preempt_allowed: bool,
    /// State sync, when configured.
    #[serde(default)]
    pub sync: Option<SyncStatus>,
    /// PRIMARY or SECONDARY, in a cluster.
    #[serde(default)]
    pub cluster_role: Option<String>,
    /// The primary's HA address, in a cluster.
    #[serde(default)]
    pub primary: Option<Ipv4Addr>,
    /// Operator's priority (promote 254, demote and maintenance 1).
    #[serde(default)]
    pub priority_override: Option<u8>,
    /// Persistently demoted (`maintenance on`).
    #[serde(default)]
    pub maintenance: bool,
    /// Config sync, in a cluster.
    #[serde(default)]
    pub config_sync: Option<ConfigSyncStatus>,
    /// Advert authentication: mode (`none`, `receive-only`, `permissive`,
    /// `enforce`) and the key id we sign with; rejections are in
    /// `rejected_by_reason` (`Auth*`).
    #[serde(default)]
    pub auth_mode: String,
    #[serde(default)]
    pub auth_active_key: u8,
    /// Heartbeat paths, HA link first.
    #[serde(default)]
    pub paths: Vec<PathStatus>,
    /// The fast heartbeat, when on.
    #[serde(default)]
    pub fast_heartbeat: Option<FastHeartbeatStatus>,
    /// Threaded NAPI on our interfaces (`[ha.napi]`), when on.
    #[serde(default)]
    pub napi: Vec<crate::napi::NapiIface>,
    /// The XDP flow table: its size (`ha.max_flows`) and kernel memory.
    #[serde(default)]
    pub flow_table: Option<crate::dataplane::FlowTableInfo>,
    /// What the hooks last did for each role-dependent service and role
    /// interface (`services`, `role_interfaces`): the "services running"
    /// of a cluster view.
    #[serde(default)]
    pub role_hooks: Vec<RoleHookStatus>,
}

/// What the hooks last did for one role-dependent service or interface.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoleHookStatus {
    pub group: String,
    /// `service` or `interface`.
    pub kind: String,
    pub name: String,
    /// What the role asked last: `start`/`stop` (a service), `up`/`down`
    /// (an interface).
    pub wanted: String,
    /// `pending` (queued or running), `done`, `failed`, `timed out`.
    pub outcome: String,
    /// Why it failed (exit status and stderr, or the error).
    #[serde(default)]
    pub detail: Option<String>,
    /// When the outcome was recorded.
    pub at_unix_ms: u128,
}

impl RoleHookStatus {
    /// Running as the role wants it: started or up, and done.
    pub fn running(&self) -> bool {
        self.outcome == "done" && (self.wanted == "start" || self.wanted == "up")
    }
}

/// The fast heartbeat: our prober, and our reflector (what our XDP
/// answered to the peer's probes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FastHeartbeatStatus {
    pub enabled: bool,
    pub interval_us: u64,
    /// `fast` (a backup: it may have to take over) or `idle`.
    pub rate: String,
    /// Rounds unanswered on every path that make the peer silent now (`k`),
    /// and its bounds.
    pub misses: u32,
    pub misses_min: u32,
    pub misses_max: u32,
    /// No silent verdict now: the gaps (or false verdicts) call for more
    /// rounds than `misses_max` (VRRP's timer decides; lapsed verdicts go
    /// on).
    #[serde(default)]
    pub silent_held: bool,
    pub probes_sent: u64,
    pub replies: u64,
    /// Replies refused, by reason (`bad_tag`, `bad_proof`, ...).
    pub rejected: BTreeMap<String, u64>,
    /// Takeovers it made: `silent`, `lapsed`; `false`: silent verdicts the
    /// peer then proved wrong (it answered, owning VIPs).
    pub verdicts: BTreeMap<String, u64>,
    /// Reply gaps at the fast rate, in rounds: `[gap, count]` for each gap
    /// seen (1: nothing missed; the last bucket counts that many or more).
    pub gap_hist: Vec<[u64; 2]>,
    pub gap_max_recent: u64,
    /// Round-trip times (µs; quantiles are histogram upper bounds).
    pub rtt_us: RttStatus,
    /// The peer as its last reply showed it.
    pub peer_groups: Option<u64>,
    pub peer_lease_left_us: Option<u64>,
    pub peer_term: Option<u64>,
    /// The low 16 bits of the term the peer's newest signed advert
    /// announced: the only term whose proof makes a Lapsed verdict.
    #[serde(default)]
    pub peer_term_announced: Option<u16>,
    pub peer_reply_age_ms: Option<u64>,
    /// The last verdict (`silent`, `lapsed`) and how long the peer had been
    /// silent then (since its last reply), µs.
    #[serde(default)]
    pub last_verdict: Option<String>,
    #[serde(default)]
    pub last_verdict_silence_us: Option<u64>,
    /// Our ownership term.
    pub term: u64,
    /// Our reflector's counters (by `ProbeCounter` name).
    pub reflector: BTreeMap<String, u64>,
    /// Probes the socket refused to send.
    pub send_errors: u64,
}

/// Round-trip time quantiles, µs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RttStatus {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl FastHeartbeatStatus {
    fn of(
        h: &ha_core::heartbeat::Report,
        term: u64,
        now: Instant,
        extras: &Extras,
    ) -> FastHeartbeatStatus {
        let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
        FastHeartbeatStatus {
            enabled: true,
            interval_us: h.interval.as_micros() as u64,
            rate: if h.fast { "fast" } else { "idle" }.to_owned(),
            misses: h.misses,
            misses_min: h.misses_min,
            misses_max: h.misses_max,
            silent_held: h.silent_held,
            probes_sent: h.probes_sent,
            replies: h.replies,
            rejected: h
                .rejected
                .iter()
                .map(|(r, n)| (r.name().to_owned(), *n))
                .collect(),
            verdicts: [
                ("silent", h.verdicts_silent),
                ("lapsed", h.verdicts_lapsed),
                ("false", h.false_verdicts),
                ("refused", h.proofs_unannounced),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            gap_hist: h
                .gaps
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(g, n)| [g as u64, *n])
                .collect(),
            gap_max_recent: h.gap_max_recent,
            rtt_us: RttStatus {
                p50: h.rtt_quantile(0.5).map(us),
                p99: h.rtt_quantile(0.99).map(us),
                max: (h.replies > 0).then(|| us(h.rtt_max)),
            },
            peer_groups: h.peer.map(|p| p.groups),
            peer_lease_left_us: h.peer.map(|p| p.lease_left.as_micros() as u64),
            peer_term: h.peer.map(|p| p.term),
            peer_term_announced: h.term_announced,
            peer_reply_age_ms: h.peer.map(|p| now.saturating_sub(p.at).as_millis() as u64),
            last_verdict: h.last_verdict.map(|(v, _)| {
                match v {
                    ha_core::heartbeat::Verdict::Silent => "silent",
                    ha_core::heartbeat::Verdict::Lapsed => "lapsed",
                }
                .to_owned()
            }),
            last_verdict_silence_us: h.last_verdict.map(|(_, d)| d.as_micros() as u64),
            term,
            reflector: ha_common::heartbeat::ProbeCounter::ALL
                .iter()
                .zip(extras.reflector.unwrap_or_default())
                .map(|(c, n)| (c.name().to_owned(), n))
                .collect(),
            send_errors: extras.probe_send_errors,
        }
    }
}

/// One heartbeat path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PathStatus {
    pub interface: String,
    /// `up`, `down` (silent while the peer is heard over another path),
    /// `no-carrier`, `quiet` (no path hears a peer).
    pub state: String,
    /// Age of the last advert from a peer over it, as of this snapshot.
    pub last_heard_age_ms: Option<u64>,
    pub adverts: u64,
    /// Fast-heartbeat replies accepted over it.
    #[serde(default)]
    pub replies: u64,
}

/// What the loop adds to the node core's report.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    pub advert_send_errors: u64,
    pub last_takeover: Option<TakeoverTiming>,
    pub sync: Option<SyncStatus>,
    pub cluster_role: Option<String>,
    pub primary: Option<Ipv4Addr>,
    pub config_sync: Option<ConfigSyncStatus>,
    /// Our reflector's counters (`ProbeCounter` order), when read.
    pub reflector: Option<[u64; ha_common::heartbeat::PROBE_COUNTERS as usize]>,
    pub probe_send_errors: u64,
    /// Threaded NAPI as last set (`crate::napi`).
    pub napi: Vec<crate::napi::NapiIface>,
    pub flow_table: Option<crate::dataplane::FlowTableInfo>,
    pub role_hooks: Vec<RoleHookStatus>,
}

impl Status {
    /// A snapshot of `report` taken at node time `now` (wall clock `wall`),
    /// with what the loop adds.
    pub fn snapshot(
        instance: &str,
        report: &Report,
        now: Instant,
        wall: SystemTime,
        extras: Extras,
    ) -> Status {
        let wall_ms = unix_ms(wall);
        // Node time -> Unix ms, as of this snapshot.
        let at_ms = |t: Instant| wall_ms.saturating_sub(now.saturating_sub(t).as_millis());
        let c = &report.counters;
        let fast_heartbeat = report
            .heartbeat
            .as_ref()
            .map(|h| FastHeartbeatStatus::of(h, report.term, now, &extras));
        Status {
            fast_heartbeat,
            instance: instance.to_owned(),
            pid: std::process::id(),
            written_unix_ms: wall_ms,
            roles: report
                .groups
                .iter()
                .map(|g| (g.name.clone(), g.role.as_str().to_owned()))
                .collect(),
            priorities: report
                .groups
                .iter()
                .map(|g| (g.name.clone(), g.priority))
                .collect(),
            owned: report.owned,
            adverts_sent: c.adverts_sent,
            adverts_received: c.adverts_received,
            advert_send_errors: extras.advert_send_errors,
            interval_mismatches: c.interval_mismatches,
            rejected_by_reason: c
                .rejected
                .iter()
                .map(|(r, n)| (format!("{r:?}"), *n))
                .collect(),
            last_advert_from: c.last_advert.map(|a| a.src),
            last_advert_priority: c.last_advert.map(|a| a.priority),
            last_advert_unix_ms: c.last_advert.map(|a| at_ms(a.at)),
            last_advert_age_ms: c
                .last_advert
                .map(|a| now.saturating_sub(a.at).as_millis() as u64),
            last_takeover: extras.last_takeover,
            transitions: c
                .transitions
                .iter()
                .map(|t| Transition {
                    group: t.group.clone(),
                    role: t.role.as_str().to_owned(),
                    reason: format!("{:?}", t.reason),
                    at_ms: at_ms(t.at),
                })
                .collect(),
            transitions_total: c.transitions_total,
            transitions_by_reason: c
                .transitions_by_reason
                .iter()
                .map(|(r, n)| ((*r).to_owned(), *n))
                .collect(),
            lease_lapses: c.lease_lapses,
            preempt_allowed: report.preempt_allowed,
            sync: extras.sync,
            cluster_role: extras.cluster_role,
            primary: extras.primary,
            priority_override: report.priority_override,
            maintenance: report.maintenance,
            config_sync: extras.config_sync,
            napi: extras.napi,
            flow_table: extras.flow_table,
            role_hooks: extras.role_hooks,
            auth_mode: report.auth_mode.as_str().to_owned(),
            auth_active_key: report.auth_active_key,
            paths: report
                .paths
                .iter()
                .map(|p| PathStatus {
                    interface: p.name.clone(),
                    state: p.state.as_str().to_owned(),
                    last_heard_age_ms: p
                        .last_heard
                        .map(|t| now.saturating_sub(t).as_millis() as u64),
                    adverts: p.adverts,
                    replies: p.replies,
                })
                .collect(),
        }
    }

    /// Reads an instance's status file.
    pub fn read(instance: &str) -> std::io::Result<Status> {
        let bytes = std::fs::read(paths::status_file(instance))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

/// The least a status holds, for tests.
#[cfg(test)]
pub(crate) fn test_status(instance: &str, pid: u32) -> Status {
    serde_json::from_value(serde_json::json!({
        "instance": instance, "pid": pid, "written_unix_ms": 0, "roles": {}, "priorities": {},
        "owned": 0, "adverts_sent": 0, "adverts_received": 0, "advert_send_errors": 0,
        "interval_mismatches": 0, "rejected_by_reason": {}, "last_advert_from": null,
        "last_advert_priority": null, "last_advert_unix_ms": null, "last_advert_age_ms": null,
        "last_takeover": null, "transitions": [], "transitions_total": 0,
        "transitions_by_reason": {}, "lease_lapses": 0
    }))
    .unwrap_or_else(|e| panic!("a status: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ha_core::{
        node::{Counters, GroupReport, LastAdvert},
        vrrp::machine::Role,
    };

    use super::*;

    /// The node core's report of one group `fw` in `role`.
    fn report(role: Role, priority: u8, owned: u64) -> Report {
        Report {
            groups: vec![GroupReport {
                name: "fw".into(),
                role,
                priority,
            }],
            owned,
            priority_override: None,
            maintenance: false,
            preempt_allowed: true,
            auth_mode: Default::default(),
            auth_active_key: 1,
            paths: Vec::new(),
            heartbeat: None,
            term: 0,
            counters: Counters::default(),
        }
    }

    #[test]
    fn ages_are_as_of_the_snapshot() {
        let report = Report {
            counters: Counters {
                last_advert: Some(LastAdvert {
                    src: Ipv4Addr::new(10, 255, 0, 1),
                    priority: 200,
                    at: Duration::from_millis(9_993),
                }),
                ..Counters::default()
            },
            ..report(Role::Backup, 100, 0)
        };
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let st = Status::snapshot(
            "fw",
            &report,
            Duration::from_secs(10),
            wall,
            Extras::default(),
        );
        assert_eq!(st.last_advert_age_ms, Some(7));
        assert_eq!(st.last_advert_unix_ms, Some(1_000_000_000 - 7));
        assert_eq!(st.written_unix_ms, 1_000_000_000);
        assert_eq!(st.roles["fw"], "BACKUP");
        let back: Status = serde_json::from_slice(&serde_json::to_vec(&st).unwrap()).unwrap();
        assert_eq!(back, st);
    }

    /// The fast heartbeat as the status, the text and the metrics show it.
    #[test]
    fn the_fast_heartbeat_is_reported() {
        use ha_core::heartbeat::{Prober, Settings};
        let mut p = Prober::new(
            Settings {
                interval: Duration::from_millis(1),
                misses_min: 3,
                misses_max: 29,
                key: [1; 32],
                session: [2; 16],
                local: Ipv4Addr::new(10, 255, 0, 2),
                peer: Ipv4Addr::new(10, 255, 0, 1),
            },
            2,
        );
        p.start(Duration::ZERO);
        p.set_rate(true, Duration::from_millis(10), Duration::ZERO);
        let mut out = Vec::new();
        p.tick(Duration::ZERO, &mut out);
        let report = Report {
            heartbeat: Some(p.report()),
            term: 4,
            ..report(Role::Backup, 100, 0)
        };
        let st = Status::snapshot(
            "fw",
            &report,
            Duration::from_secs(1),
            SystemTime::UNIX_EPOCH,
            Extras {
                reflector: Some([5, 0, 7, 0, 1]),
                ..Extras::default()
            },
        );
        let h = st.fast_heartbeat.as_ref().expect("reported");
        assert_eq!(
            (h.interval_us, h.misses, h.probes_sent, h.term),
            (1000, 3, 2, 4)
        );
        assert_eq!(h.rate, "fast");
        assert_eq!(h.reflector["answered"], 5);
        assert_eq!(h.reflector["reply_passed"], 7);
        let text = text::render(&st, None);
        assert!(
            text.contains("fast heartbeat: 1000 us, fast rate, k 3 (3..29)"),
            "{text}"
        );
        let m = metrics::render(&st);
        for name in [
            "ha_agent_fast_heartbeat_probes_sent_total 2",
            "ha_agent_fast_heartbeat_misses 3",
            "ha_agent_fast_heartbeat_verdicts_total{verdict=\"silent\"} 0",
            "ha_agent_fast_heartbeat_reflected_total{reason=\"answered\"} 5",
        ] {
            assert!(m.contains(name), "{name} in\n{m}");
        }
        let back: Status = serde_json::from_slice(&serde_json::to_vec(&st).unwrap()).unwrap();
        assert_eq!(back, st);
    }

    /// Every metric the shipped Grafana dashboard and Prometheus alert rules
    /// name is one the agent exports (a renamed metric would leave a panel
    /// empty and an alert silent, with nothing to say so).
    #[test]
    fn the_dashboard_and_alert_rules_name_only_exported_metrics() {
        let report = report(Role::Master, 200, 1);
        let mut st = Status::snapshot(
            "fw",
            &report,
            Duration::from_secs(1),
            SystemTime::UNIX_EPOCH,
            Extras {
                reflector: Some([0; 5]),
                ..Extras::default()
            },
        );
        st.sync = Some(SyncStatus::default());
        st.config_sync = Some(ConfigSyncStatus::default());
        st.last_takeover = Some(TakeoverTiming {
            group: "fw".into(),
            commit_records: Some(0),
            commit_us: Some(9.0),
            to_owned_us: 310.0,
            to_first_garp_us: 420.0,
            garps_sent: 3,
        });
        st.paths = vec![PathStatus {
            interface: "ha0".into(),
            state: "up".into(),
            last_heard_age_ms: Some(1),
            adverts: 1,
            replies: 1,
        }];
        let m = metrics::render(&st);
        if std::env::var_os("HA_PRINT_METRICS").is_some() {
            println!("{m}");
        }
        // Sample names: a family's name, and `_total` for a counter.
        let mut exported = std::collections::BTreeSet::new();
        for line in m.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                let (name, kind) = (it.next().unwrap(), it.next().unwrap_or(""));
                exported.insert(name.to_owned());
                if kind == "counter" {
                    exported.insert(format!("{name}_total"));
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
        for file in [
            "grafana/ha-agent-dashboard.json",
            "prometheus/ha-agent-rules.yml",
        ] {
            let text =
                std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            let mut named = 0;
            let mut rest = text.as_str();
            while let Some(at) = rest.find("ha_agent_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    exported.contains(&name),
                    "{file} names {name}, which the agent does not export:\n{exported:#?}"
                );
                named += 1;
                rest = &rest[at + name.len()..];
            }
            assert!(named > 5, "{file} names {named} metrics");
        }
    }
}
