//! `ha-agent status --cluster`: both nodes side by side (OPNsense's status
//! page shows the backup's services; cOS Core compares the connection
//! counts of both). The local agent asks its peer over the cluster control
//! channel; this module holds what each node reports and the text (no I/O).

use serde::{Deserialize, Serialize};

use super::Status;

/// One node as the cluster view shows it: its status and what its control
/// thread adds (read outside the VRRP loop).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub hostname: String,
    pub version: String,
    /// Its HA address.
    pub address: std::net::Ipv4Addr,
    /// Kernel conntrack entries in its namespace (`nf_conntrack_count`),
    /// when readable.
    #[serde(default)]
    pub conntrack_entries: Option<u64>,
    pub status: Status,
}

/// Both nodes: this one, and the peer's answer or why there is none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    pub local: NodeView,
    pub peer_address: Option<std::net::Ipv4Addr>,
    pub peer: Option<NodeView>,
    /// Why the peer did not answer.
    #[serde(default)]
    pub peer_error: Option<String>,
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The rows of one node, by label (the same labels for both nodes, in the
/// same order; a node lacking a row shows "-").
fn rows(n: &NodeView, now_ms: u128) -> Vec<(String, String)> {
    let st = &n.status;
    let mut r: Vec<(String, String)> = Vec::new();
    let mut push = |k: &str, v: String| r.push((k.to_owned(), v));
    push(
        "node",
        format!("{} on {} ({})", st.instance, n.hostname, n.address),
    );
    push("version", n.version.clone());
    push(
        "cluster role",
        st.cluster_role.clone().unwrap_or_else(|| "-".into()),
    );
    for (group, role) in &st.roles {
        let prio = st.priorities.get(group).copied().unwrap_or(0);
        push(
            &format!("group {group}"),
            format!("{role}, priority {prio}"),
        );
    }
    push(
        "maintenance",
        if st.maintenance {
            "ON".into()
        } else {
            st.priority_override
                .map_or_else(|| "off".into(), |p| format!("off (priority set to {p})"))
        },
    );
    push("VIP groups owned", st.owned.count_ones().to_string());
    for p in &st.paths {
        let heard = p
            .last_heard_age_ms
            .map_or_else(String::new, |a| format!(", heard {a} ms ago"));
        push(
            &format!("path {}", p.interface),
            format!("{}{heard}", p.state),
        );
    }
    match &st.sync {
        Some(s) => {
            let state = if s.peer_down {
                "peer down"
            } else if s.in_sync {
                "in sync"
            } else {
                "out of sync"
            };
            push("state sync", state.into());
            push("flows from peer", thousands(s.flows_from_peer as u64));
        }
        None => push("state sync", "off".into()),
    }
    push(
        "conntrack entries",
        n.conntrack_entries.map_or_else(|| "-".into(), thousands),
    );
    if let Some(t) = &st.flow_table {
        push(
            "XDP flow table",
            format!("{} max", thousands(u64::from(t.max_flows))),
        );
    }
    match &st.config_sync {
        Some(c) => {
            let hash: String = c
                .hash
                .as_deref()
                .map_or_else(|| "-".into(), |h| h.chars().take(12).collect());
            push("config", format!("{hash} {}", c.state));
        }
        None => push("config", "-".into()),
    }
    for h in &st.role_hooks {
        let what = match (h.kind.as_str(), h.wanted.as_str(), h.outcome.as_str()) {
            ("service", "start", "done") => "running".to_owned(),
            ("service", "stop", "done") => "stopped".to_owned(),
            ("interface", w, "done") => w.to_owned(),
            (_, w, "pending") => format!("{w} pending"),
            (_, w, o) => format!("{w} {o}"),
        };
        push(&format!("{} {}", h.kind, h.name), what);
    }
    if let Some(t) = st.transitions.last() {
        push(
            "last transition",
            format!(
                "{} {} ({}), {} s ago",
                t.group,
                t.role,
                t.reason,
                now_ms.saturating_sub(t.at_ms) / 1000
            ),
        );
    }
    // What the peer says is printed on the operator's terminal: no
    // control characters (escape sequences) from it.
    r.into_iter().map(|(k, v)| (clean(&k), clean(&v))).collect()
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Both nodes side by side: one line per row label, this node first.
pub fn render(view: &ClusterView, now_ms: u128) -> String {
    use std::fmt::Write as _;
    let local = rows(&view.local, now_ms);
    let peer = view
        .peer
        .as_ref()
        .map(|p| rows(p, now_ms))
        .unwrap_or_default();
    // Labels in order of first appearance, the local node's first.
    let mut labels: Vec<&str> = local.iter().map(|(k, _)| k.as_str()).collect();
    for (k, _) in &peer {
        if !labels.contains(&k.as_str()) {
            labels.push(k);
        }
    }
    let get = |rows: &[(String, String)], k: &str| {
        rows.iter()
            .find(|(l, _)| l == k)
            .map_or_else(|| "-".to_owned(), |(_, v)| v.clone())
    };
    let label_w = labels.iter().map(|l| l.len()).max().unwrap_or(0);
    let local_w = local
        .iter()
        .map(|(_, v)| v.chars().count())
        .max()
        .unwrap_or(0)
        .max("this node".len());
    let mut o = String::new();
    let peer_head = match view.peer_address {
        Some(a) => format!("peer {a}"),
        None => "peer".into(),
    };
    let _ = writeln!(o, "{:label_w$}  {:local_w$}  {peer_head}", "", "this node");
    for k in labels {
        let l = get(&local, k);
        let p = if view.peer.is_some() {
            get(&peer, k)
        } else {
            String::new()
        };
        // What comes before a comma is the state; after it, ages.
        let state = |v: &str| v.split(',').next().unwrap_or("").to_owned();
        let mark = if view.peer.is_some() && differs(k) && state(&l) != state(&p) {
            "  <- differs"
        } else {
            ""
        };
        let _ = writeln!(o, "{k:label_w$}  {l:local_w$}  {p}{mark}");
    }
    if let Some(e) = &view.peer_error {
        let _ = writeln!(o, "the peer did not answer: {}", clean(e));
    }
    o
}

/// Rows that should read the same on both nodes in a healthy cluster.
fn differs(label: &str) -> bool {
    label == "version" || label == "config" || label.starts_with("path ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ConfigSyncStatus, RoleHookStatus};

    fn node(host: &str, role: &str, prio: u8, hash: &str, svc: (&str, &str)) -> NodeView {
        let mut st = crate::status::test_status("ha", 1);
        st.roles.insert("lan".into(), role.into());
        st.priorities.insert("lan".into(), prio);
        st.owned = u64::from(role == "MASTER");
        st.config_sync = Some(ConfigSyncStatus {
            state: "Up to Date".into(),
            hash: Some(hash.into()),
            ..Default::default()
        });
        st.role_hooks = vec![RoleHookStatus {
            group: "lan".into(),
            kind: "service".into(),
            name: "openvpn".into(),
            wanted: svc.0.into(),
            outcome: svc.1.into(),
            detail: None,
            at_unix_ms: 0,
        }];
        NodeView {
            hostname: host.into(),
            version: "0.1.0".into(),
            address: "10.255.0.1".parse().unwrap(),
            conntrack_entries: Some(1234),
            status: st,
        }
    }

    #[test]
    fn both_nodes_side_by_side_with_differences_marked() {
        let view = ClusterView {
            local: node("fw1", "MASTER", 200, "aaaaaaaaaaaaaaaa", ("start", "done")),
            peer_address: Some("10.255.0.2".parse().unwrap()),
            peer: Some(node(
                "fw2",
                "BACKUP",
                100,
                "bbbbbbbbbbbbbbbb",
                ("stop", "done"),
            )),
            peer_error: None,
        };
        let text = render(&view, 0);
        let line = |k: &str| {
            text.lines()
                .find(|l| l.starts_with(k))
                .unwrap_or_else(|| panic!("no {k} row in\n{text}"))
                .to_owned()
        };
        assert!(line("group lan").contains("MASTER, priority 200"), "{text}");
        assert!(line("group lan").contains("BACKUP, priority 100"), "{text}");
        assert!(line("service openvpn").contains("running"), "{text}");
        assert!(line("service openvpn").contains("stopped"), "{text}");
        assert!(line("conntrack entries").contains("1,234"), "{text}");
        assert!(line("config").ends_with("<- differs"), "{text}");
        assert!(!line("version").contains("differs"), "{text}");
        assert!(text.lines().next().unwrap().contains("peer 10.255.0.2"));
    }

    #[test]
    fn a_silent_peer_is_said_why() {
        let view = ClusterView {
            local: node("fw1", "MASTER", 200, "aaaa", ("start", "failed")),
            peer_address: Some("10.255.0.2".parse().unwrap()),
            peer: None,
            peer_error: Some("connect: refused".into()),
        };
        let text = render(&view, 0);
        assert!(
            text.contains("the peer did not answer: connect: refused"),
            "{text}"
        );
        assert!(text.contains("start failed"), "{text}");
    }

    #[test]
    fn what_the_peer_says_cannot_drive_the_terminal() {
        let mut peer = node(
            "fw2\u{1b}[2J",
            "BACKUP",
            100,
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
            ("stop", "done"),
        );
        peer.status.roles.insert("g\u{7}".into(), "MASTER".into());
        let view = ClusterView {
            local: node("fw1", "MASTER", 200, "aaaa", ("start", "done")),
            peer_address: None,
            peer: Some(peer),
            peer_error: None,
        };
        let text = render(&view, 0);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert!(text.contains("\\u{1b}[2J"), "{text}");
    }
}
