//! The text of `ha-agent status`, cOS Core's `ha` command as the model:
//! "this node is the PRIMARY, currently MASTER (forwarding)", the peer
//! ALIVE or NOT HEARD, state sync, config sync, counters, the last
//! transition and takeover.

use super::Status;

fn ago(now_ms: u128, at_ms: u128) -> String {
    let d = now_ms.saturating_sub(at_ms);
    if d < 10_000 {
        format!("{d} ms ago")
    } else {
        format!("{} s ago", d / 1000)
    }
}

/// The text of `ha-agent status`.
pub fn render(st: &Status, dataplane_owned: Option<u64>) -> String {
    use std::fmt::Write as _;
    let now = super::unix_ms(std::time::SystemTime::now());
    let mut o = String::new();
    let roles: Vec<&String> = st.roles.values().collect();
    let vrrp_role = if roles.iter().all(|r| *r == "MASTER") {
        "MASTER (forwarding)".to_owned()
    } else if roles.iter().all(|r| *r == "BACKUP") {
        "BACKUP (standing by)".to_owned()
    } else {
        roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join("/")
    };
    let _ = match &st.cluster_role {
        Some(role) => writeln!(o, "this node is the {role}, currently {vrrp_role}"),
        None => writeln!(o, "this node is currently {vrrp_role}"),
    };
    for (group, role) in &st.roles {
        let prio = st.priorities.get(group).copied().unwrap_or(0);
        let _ = writeln!(o, "  group {group}: {role}, priority {prio}");
    }
    if st.maintenance {
        let _ = writeln!(
            o,
            "  maintenance mode: ON (stays backup; `ha-agent maintenance off` ends it)"
        );
    } else if let Some(p) = st.priority_override {
        let _ = writeln!(
            o,
            "  priority set by the operator: {p} ({})",
            if p >= 254 { "promoted" } else { "demoted" }
        );
    }
    let sync_rx = st.sync.as_ref().and_then(|s| s.last_rx_unix_ms);
    let advert = st.last_advert_unix_ms;
    let last_heard = advert.into_iter().chain(sync_rx).max();
    match (
        last_heard,
        st.last_advert_from
            .or(st.sync.as_ref().and_then(|s| s.peer)),
    ) {
        (Some(at), Some(peer)) => {
            let alive = now.saturating_sub(at) < 3_000;
            let _ = write!(
                o,
                "peer {peer}: {} (last heard {}",
                if alive { "ALIVE" } else { "NOT HEARD" },
                ago(now, at)
            );
            if let (Some(a), Some(p)) = (advert, st.last_advert_priority) {
                let _ = write!(o, "; last advert {}, priority {p}", ago(now, a));
            }
            let _ = writeln!(o, ")");
        }
        _ => {
            let _ = writeln!(o, "peer: not heard yet");
        }
    }
    if let Some(s) = &st.sync {
        let lag = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} ms"));
        let _ = writeln!(
            o,
            "state sync: {} (lag p50 {}, p99 {}; {} flows from the peer here, {} records sent; {} frames unacknowledged, {} records dropped, {} apply errors)",
            if s.in_sync {
                "up to date"
            } else {
                "waiting for the peer's bulk resync"
            },
            lag(s.lag_ms_p50),
            lag(s.lag_ms_p99),
            s.flows_from_peer,
            s.records_sent,
            s.queue_depth,
            s.records_dropped,
            s.apply_errors
        );
        if s.bulk_sending || s.bulks_incomplete > 0 {
            let _ = writeln!(
                o,
                "  bulk resync to the peer: {}; {} sent whole, {} incomplete (another followed){}",
                if s.bulk_sending {
                    format!("sending, {} records to go", s.pending_records)
                } else {
                    "idle".to_owned()
                },
                s.bulks_completed,
                s.bulks_incomplete,
                if s.incomplete_sent > 0 {
                    format!("; peer told it is out of sync {} times", s.incomplete_sent)
                } else {
                    String::new()
                }
            );
        }
        if s.xdp_flows_aged > 0 {
            let _ = writeln!(
                o,
                "  flows aged out of the XDP table (gone from conntrack): {}",
                s.xdp_flows_aged
            );
        }
        for (reason, n) in &s.rejected {
            let _ = writeln!(o, "  sync frames rejected ({reason}): {n}");
        }
    } else {
        let _ = writeln!(o, "state sync: not configured");
    }
    if let Some(c) = &st.config_sync {
        let state = if c.state.is_empty() {
            "Pending"
        } else {
            c.state.as_str()
        };
        let _ = write!(o, "config sync: {state}");
        if let Some(h) = &c.hash {
            let _ = write!(o, " (hash {h}");
            if let Some(at) = c.synced_unix_ms {
                let _ = write!(o, ", synced {}", ago(now, at));
            }
            let _ = write!(o, ")");
        }
        if let Some(r) = &c.reason {
            let _ = write!(o, ": {r}");
        }
        let _ = writeln!(o);
        if c.refused_total > 0 {
            let _ = writeln!(o, "  pushes refused: {}", c.refused_total);
        }
        let refused: u64 = c.control_refused.values().sum();
        let _ = write!(
            o,
            "  control channel: {} served, {refused} refused",
            c.control_served
        );
        if refused > 0 {
            let reasons: Vec<String> = c
                .control_refused
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            let _ = write!(o, " ({})", reasons.join(", "));
        }
        let _ = writeln!(o);
        if st.cluster_role.as_deref() == Some("SECONDARY")
            && let Some(p) = st.primary
        {
            let _ = writeln!(o, "  configuration is managed on the primary {p}");
        }
    }
    let _ = writeln!(
        o,
        "ownership word: {:#x} (data plane: {})",
        st.owned,
        dataplane_owned.map_or("not pinned".to_owned(), |g| format!("{g:#x}"))
    );
    let _ = writeln!(
        o,
        "adverts sent {}, received {}",
        st.adverts_sent, st.adverts_received
    );
    for (reason, n) in &st.rejected_by_reason {
        let _ = writeln!(o, "  rejected {reason}: {n}");
    }
    if !st.auth_mode.is_empty() {
        let key = if st.auth_mode == "none" {
            String::new()
        } else {
            format!(", signing with key {}", st.auth_active_key)
        };
        let _ = writeln!(o, "advert authentication: {}{key}", st.auth_mode);
    }
    if !st.paths.is_empty() {
        let paths: Vec<String> = st
            .paths
            .iter()
            .map(|p| match p.last_heard_age_ms {
                Some(a) if p.state != "quiet" => {
                    format!("{} {} (heard {a} ms ago)", p.interface, p.state)
                }
                _ => format!("{} {}", p.interface, p.state),
            })
            .collect();
        let _ = writeln!(o, "heartbeat paths: {}", paths.join(", "));
    }
    if let Some(h) = &st.fast_heartbeat {
        let rtt = match (h.rtt_us.p50, h.rtt_us.p99) {
            (Some(a), Some(b)) => format!(", rtt p50 <{a:.0} us p99 <{b:.0} us"),
            _ => String::new(),
        };
        let verdicts: Vec<String> = h
            .verdicts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(v, n)| format!("{v} {n}"))
            .collect();
        let _ = writeln!(
            o,
            "fast heartbeat: {} us, {} rate, k {} ({}..{}), replies {}/{} probes{rtt}{}",
            h.interval_us,
            h.rate,
            h.misses,
            h.misses_min,
            h.misses_max,
            h.replies,
            h.probes_sent,
            if verdicts.is_empty() {
                String::new()
            } else {
                format!(", verdicts: {}", verdicts.join(", "))
            },
        );
        if let (Some(g), Some(l)) = (h.peer_groups, h.peer_lease_left_us) {
            let _ = writeln!(
                o,
                "  peer: owns groups {g:#x}, lease left {} ms, term {} (its signed adverts: {})",
                l / 1000,
                h.peer_term.unwrap_or(0),
                h.peer_term_announced
                    .map_or("none, so no lapsed verdict".to_owned(), |t| format!(
                        "term {t} mod 65536"
                    ))
            );
        }
    }
    if !st.napi.is_empty() {
        let each: Vec<String> = st
            .napi
            .iter()
            .map(|n| match &n.error {
                Some(e) => format!("{} softirq ({e})", n.iface),
                None if n.instances.is_empty() && n.via.is_empty() => {
                    format!("{} (no NAPI of its own)", n.iface)
                }
                None if n.instances.is_empty() => {
                    format!("{} via {} (no NAPI there either)", n.iface, n.via.join(" "))
                }
                None => {
                    let threads: Vec<String> = n
                        .instances
                        .iter()
                        .map(|i| match (i.pid, i.nice) {
                            (Some(p), Some(nice)) => format!("pid {p} nice {nice}"),
                            (Some(p), None) => format!("pid {p}"),
                            _ => format!("napi {} not threaded", i.id),
                        })
                        .collect();
                    let via = if n.via.is_empty() {
                        String::new()
                    } else {
                        format!(" via {}", n.via.join(" "))
                    };
                    format!("{}{via} [{}]", n.iface, threads.join(", "))
                }
            })
            .collect();
        let _ = writeln!(o, "threaded NAPI: {}", each.join(", "));
    }
    if let Some(t) = &st.flow_table {
        let _ = writeln!(
            o,
            "XDP flow table: {} flows at most, {:.1} MiB of kernel memory ({:.0} bytes per flow)",
            t.max_flows,
            t.memlock_bytes as f64 / f64::from(1 << 20),
            t.bytes_per_flow()
        );
    }
    if st.transitions_total > 0 {
        let by: Vec<String> = st
            .transitions_by_reason
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        let _ = writeln!(
            o,
            "transitions: {} since start ({})",
            st.transitions_total,
            by.join(", ")
        );
    }
    if st.lease_lapses > 0 {
        let _ = writeln!(
            o,
            "  ownership lease lapsed {} times (a stalled loop; each a step-down)",
            st.lease_lapses
        );
    }
    if let Some(t) = st.transitions.last() {
        let _ = writeln!(
            o,
            "last transition: {} -> {} ({}) {}",
            t.group,
            t.role,
            t.reason,
            ago(now, t.at_ms)
        );
    }
    if let Some(t) = &st.last_takeover {
        let _ = writeln!(
            o,
            "last takeover ({}): timer due -> VIPs owned {:.0} us, -> first GARP {:.0} us",
            t.group, t.to_owned_us, t.to_first_garp_us
        );
        if let (Some(n), Some(us)) = (t.commit_records, t.commit_us) {
            let _ = writeln!(
                o,
                "  state commit before the ownership write: {n} records in {us:.0} us"
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Status {
        serde_json::from_value(serde_json::json!({
            "instance": "fw", "pid": 1, "roles": {"fw": "BACKUP"}, "priorities": {"fw": 100},
            "owned": 0, "adverts_sent": 0, "adverts_received": 120, "advert_send_errors": 0,
            "interval_mismatches": 0, "rejected_by_reason": {}, "last_advert_from": "10.255.0.1",
            "last_advert_priority": 200, "last_advert_unix_ms": null, "last_takeover": null,
            "transitions": [], "transitions_total": 25, "transitions_by_reason": {"MasterDown": 12, "HigherPriority": 13}
        }))
        .unwrap()
    }

    #[test]
    fn the_peer_age_and_the_transition_totals_are_shown() {
        let mut st = status();
        let now = super::super::unix_ms(std::time::SystemTime::now());
        st.last_advert_unix_ms = Some(now - 7);
        let text = render(&st, Some(0));
        assert!(
            text.contains("this node is currently BACKUP (standing by)"),
            "{text}"
        );
        assert!(text.contains("peer 10.255.0.1: ALIVE"), "{text}");
        assert!(
            text.contains("transitions: 25 since start (HigherPriority 13, MasterDown 12)"),
            "{text}"
        );
    }

    #[test]
    fn threaded_napi_is_shown_per_interface() {
        use crate::napi::{NapiIface, NapiInstance};
        let mut st = status();
        assert!(!render(&st, Some(0)).contains("threaded NAPI"));
        st.napi = vec![
            NapiIface {
                iface: "lan0".into(),
                instances: vec![NapiInstance {
                    id: 7,
                    threaded: true,
                    pid: Some(4882),
                    nice: Some(-20),
                }],
                error: None,
                via: Vec::new(),
            },
            NapiIface {
                iface: "lan0.100".into(),
                instances: Vec::new(),
                error: None,
                via: Vec::new(),
            },
            NapiIface {
                iface: "wan0".into(),
                instances: Vec::new(),
                error: Some("no interface wan0".into()),
                via: Vec::new(),
            },
            NapiIface {
                iface: "br0".into(),
                instances: vec![NapiInstance {
                    id: 9,
                    threaded: true,
                    pid: Some(4883),
                    nice: Some(-20),
                }],
                error: None,
                via: vec!["br0p".into()],
            },
        ];
        let text = render(&st, Some(0));
        assert!(
            text.contains("threaded NAPI: lan0 [pid 4882 nice -20], lan0.100 (no NAPI of its own), wan0 softirq (no interface wan0), br0 via br0p [pid 4883 nice -20]"),
            "{text}"
        );
    }
}
