//! Prometheus metrics, rendered from the status the agent last wrote (so a
//! scrape never touches the VRRP loop).

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabel {
    group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    group: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

fn counter(registry: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    registry.register(name, help, g);
}

fn gauge_f(registry: &mut Registry, name: &str, help: &str, v: f64) {
    let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    g.set(v);
    registry.register(name, help, g);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GapLabel {
    rounds: String,
}

/// The fast heartbeat's metrics (`ha_agent_fast_heartbeat_*`).
fn fast_heartbeat(r: &mut Registry, h: &super::FastHeartbeatStatus) {
    counter(
        r,
        "fast_heartbeat_probes_sent",
        "Fast-heartbeat probes sent (every path)",
        h.probes_sent,
    );
    counter(
        r,
        "fast_heartbeat_replies",
        "Fast-heartbeat replies accepted",
        h.replies,
    );
    let rejected = Family::<ReasonLabel, Counter>::default();
    for (reason, n) in &h.rejected {
        rejected
            .get_or_create(&ReasonLabel {
                reason: reason.clone(),
            })
            .inc_by(*n);
    }
    r.register(
        "fast_heartbeat_rejected",
        "Fast-heartbeat replies refused, by reason",
        rejected,
    );
    let verdicts = Family::<VerdictLabel, Counter>::default();
    for (v, n) in &h.verdicts {
        verdicts
            .get_or_create(&VerdictLabel { verdict: v.clone() })
            .inc_by(*n);
    }
    r.register(
        "fast_heartbeat_verdicts",
        "Takeovers the fast heartbeat made (silent, lapsed), silent verdicts proved false, and term-ended proofs refused (not the term the peer's signed adverts announced)",
        verdicts,
    );
    gauge(
        r,
        "fast_heartbeat_misses",
        "Rounds unanswered on every path that make the peer silent (k)",
        i64::from(h.misses),
    );
    gauge(
        r,
        "fast_heartbeat_gap_max_recent",
        "Longest recent reply gap, in rounds",
        h.gap_max_recent as i64,
    );
    let gaps = Family::<GapLabel, Counter>::default();
    for [gap, n] in &h.gap_hist {
        gaps.get_or_create(&GapLabel {
            rounds: gap.to_string(),
        })
        .inc_by(*n);
    }
    r.register(
        "fast_heartbeat_gaps",
        "Reply gaps at the fast rate, by length in rounds (1: none missed)",
        gaps,
    );
    if let Some(p99) = h.rtt_us.p99 {
        gauge_f(
            r,
            "fast_heartbeat_rtt_p99_seconds",
            "Probe round-trip time, 99th percentile (histogram bound)",
            p99 / 1e6,
        );
    }
    let reflector = Family::<ReasonLabel, Counter>::default();
    for (what, n) in &h.reflector {
        reflector
            .get_or_create(&ReasonLabel {
                reason: what.clone(),
            })
            .inc_by(*n);
    }
    r.register(
        "fast_heartbeat_reflected",
        "The peer's probes our XDP handled, by outcome",
        reflector,
    );
}

/// The text exposition of `st`.
pub fn render(st: &Status) -> String {
    let mut r = Registry::with_prefix("ha_agent");
    let roles = Family::<RoleLabel, Gauge>::default();
    for (group, role) in &st.roles {
        for candidate in ["MASTER", "BACKUP", "FAULT", "INIT"] {
            roles
                .get_or_create(&RoleLabel {
                    group: group.clone(),
                    role: candidate.into(),
                })
                .set(i64::from(role == candidate));
        }
    }
    r.register("role", "1 for the role each group is in", roles);
    let prio = Family::<GroupLabel, Gauge>::default();
    for (group, p) in &st.priorities {
        prio.get_or_create(&GroupLabel {
            group: group.clone(),
        })
        .set(i64::from(*p));
    }
    r.register("priority", "Effective VRRP priority", prio);
    let transitions = Family::<ReasonLabel, Counter>::default();
    for (reason, n) in &st.transitions_by_reason {
        transitions
            .get_or_create(&ReasonLabel {
                reason: reason.clone(),
            })
            .inc_by(*n);
    }
    r.register(
        "transitions",
        "Group role transitions since the agent started, by reason",
        transitions,
    );
    counter(
        &mut r,
        "lease_lapses",
        "Ownership leases found lapsed (a stalled loop), each a step-down",
        st.lease_lapses,
    );
    counter(&mut r, "adverts_sent", "VRRP adverts sent", st.adverts_sent);
    counter(
        &mut r,
        "adverts_received",
        "VRRP adverts accepted",
        st.adverts_received,
    );
    let rejected = Family::<ReasonLabel, Counter>::default();
    for (reason, n) in &st.rejected_by_reason {
        rejected
            .get_or_create(&ReasonLabel {
                reason: reason.clone(),
            })
            .inc_by(*n);
    }
    r.register("vrrp_rejected", "VRRP packets dropped, by reason", rejected);
    let mode = Family::<ModeLabel, Gauge>::default();
    mode.get_or_create(&ModeLabel {
        mode: st.auth_mode.clone(),
    })
    .set(1);
    r.register(
        "vrrp_auth_mode",
        "Advert authentication mode in force (the label; value 1)",
        mode,
    );
    let paths = Family::<PathLabel, Gauge>::default();
    for p in &st.paths {
        for state in ["up", "down", "no-carrier", "quiet"] {
            paths
                .get_or_create(&PathLabel {
                    path: p.interface.clone(),
                    state: state.into(),
                })
                .set(i64::from(p.state == state));
        }
    }
    r.register(
        "heartbeat_path",
        "Heartbeat paths by state (1 for the state each is in)",
        paths,
    );
    if let Some(h) = &st.fast_heartbeat {
        fast_heartbeat(&mut r, h);
    }
    gauge(
        &mut r,
        "ownership",
        "The ownership word written to the data plane",
        st.owned as i64,
    );
    if let Some(t) = &st.last_takeover {
        gauge_f(
            &mut r,
            "last_takeover_owned_ms",
            "The last takeover: master-down timer due -> ownership word written (ms)",
            t.to_owned_us / 1e3,
        );
        gauge_f(
            &mut r,
            "last_takeover_first_garp_ms",
            "The last takeover: master-down timer due -> first gratuitous ARPs sent (ms)",
            t.to_first_garp_us / 1e3,
        );
        if let Some(us) = t.commit_us {
            gauge_f(
                &mut r,
                "last_takeover_commit_ms",
                "The last takeover: replicated state committed before the ownership write (ms)",
                us / 1e3,
            );
        }
    }
    if let Some(s) = &st.sync {
        gauge(
            &mut r,
            "sync_in_sync",
            "1 once the peer's bulk resync completed",
            i64::from(s.in_sync),
        );
        gauge(
            &mut r,
            "sync_peer_down",
            "1 while the peer does not acknowledge (sync only probes it)",
            i64::from(s.peer_down),
        );
        gauge(
            &mut r,
            "sync_queue_depth",
            "Sync frames not yet acknowledged",
            s.queue_depth as i64,
        );
        gauge(
            &mut r,
            "sync_flows_from_peer",
            "Connections replicated from the peer",
            s.flows_from_peer as i64,
        );
        gauge_f(
            &mut r,
            "sync_lag_p99_ms",
            "Event to peer acknowledgement, p99 (ms)",
            s.lag_ms_p99.unwrap_or(0.0),
        );
        counter(
            &mut r,
            "sync_records_sent",
            "Sync records sent",
            s.records_sent,
        );
        counter(
            &mut r,
            "sync_records_received",
            "Sync records received",
            s.records_received,
        );
        counter(
            &mut r,
            "sync_records_dropped",
            "Sync records dropped (queue full)",
            s.records_dropped,
        );
        counter(
            &mut r,
            "sync_bulks_completed",
            "Bulk resyncs sent whole to the peer (ended by ResyncDone)",
            s.bulks_completed,
        );
        counter(
            &mut r,
            "sync_bulks_incomplete",
            "Bulk resyncs that lost a record on the way (the peer stayed out of sync; another followed)",
            s.bulks_incomplete,
        );
        counter(
            &mut r,
            "sync_xdp_flows_aged",
            "Flows aged out of the XDP flow table (conntrack no longer has them, no packet for 10 s)",
            s.xdp_flows_aged,
        );
        let rej = Family::<ReasonLabel, Counter>::default();
        for (reason, n) in &s.rejected {
            rej.get_or_create(&ReasonLabel {
                reason: reason.clone(),
            })
            .inc_by(*n);
        }
        r.register("sync_rejected", "Sync frames rejected, by reason", rej);
    }
    if let Some(c) = &st.config_sync {
        let states = Family::<StateLabel, Gauge>::default();
        for s in ["Up to Date", "Pending", "Failed"] {
            states
                .get_or_create(&StateLabel { state: s.into() })
                .set(i64::from(c.state == s));
        }
        r.register("config_sync", "1 for the config-sync state", states);
        let refused = Counter::<u64>::default();
        refused.inc_by(c.refused_total);
        r.register(
            "config_sync_refused",
            "Config pushes this secondary refused",
            refused,
        );
        let served = Counter::<u64>::default();
        served.inc_by(c.control_served);
        r.register(
            "control_served",
            "Cluster control channel requests answered",
            served,
        );
        let ctl = Family::<ReasonLabel, Counter>::default();
        for (reason, n) in &c.control_refused {
            ctl.get_or_create(&ReasonLabel {
                reason: reason.clone(),
            })
            .inc_by(*n);
        }
        r.register(
            "control_refused",
            "Cluster control channel connections closed unanswered, by reason",
            ctl,
        );
    }
    let mut out = String::new();
    let _ = encode(&mut out, &r);
    out
}
