//! `ha-agent events`: what changed between two status snapshots, as events
//! (one line or one JSON object each), for people who watch a failover
//! live. Sans-IO: the CLI takes the snapshots (the agent's status, asked
//! over its socket a few times a second) and prints what [`diff`] finds.
//! Transitions are never missed (the status keeps the last 20 and counts
//! them all; more between two snapshots are reported as skipped); a path or
//! sync state that changes and changes back between two snapshots is.

use serde::Serialize;

use super::Status;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The agent (a new process) is answering.
    AgentUp { pid: u32 },
    /// The agent stopped answering, and why.
    AgentGone { why: String },
    /// A group changed role.
    Transition {
        group: String,
        role: String,
        reason: String,
        at_ms: u128,
    },
    /// Transitions that happened between two snapshots beyond the ones the
    /// status keeps.
    TransitionsSkipped { count: u64 },
    /// A heartbeat path changed state (`up`, `down`, `no-carrier`, `quiet`).
    Path { interface: String, state: String },
    /// State sync: in sync with the peer or not, the peer answering or not.
    Sync { in_sync: bool, peer_down: bool },
    /// Config sync state (`Up to Date`, `Pending`, `Failed`) and why.
    ConfigSync {
        state: String,
        reason: Option<String>,
    },
}

impl Event {
    /// The event as one line of text.
    pub fn line(&self) -> String {
        match self {
            Event::AgentUp { pid } => format!("agent up (pid {pid})"),
            Event::AgentGone { why } => format!("agent not answering: {why}"),
            Event::Transition {
                group,
                role,
                reason,
                ..
            } => format!("group {group} -> {role} ({reason})"),
            Event::TransitionsSkipped { count } => {
                format!("{count} more transitions not shown (the status keeps the last 20)")
            }
            Event::Path { interface, state } => format!("heartbeat path {interface} {state}"),
            Event::Sync { in_sync, peer_down } => format!(
                "state sync {}{}",
                if *in_sync { "in sync" } else { "out of sync" },
                if *peer_down {
                    ", peer not answering"
                } else {
                    ""
                }
            ),
            Event::ConfigSync { state, reason } => match reason {
                Some(r) => format!("config sync {state}: {r}"),
                None => format!("config sync {state}"),
            },
        }
    }
}

/// The events from `prev` (none: the first snapshot) to `cur`. The first
/// snapshot reports the agent up and the current state of everything.
pub fn diff(prev: Option<&Status>, cur: &Status) -> Vec<Event> {
    let mut out = Vec::new();
    let prev = prev.filter(|p| p.pid == cur.pid);
    if prev.is_none() {
        out.push(Event::AgentUp { pid: cur.pid });
    }
    // Transitions: the new ones by the running count.
    let seen = prev.map_or(0, |p| p.transitions_total);
    let new = cur.transitions_total.saturating_sub(seen);
    let kept = cur.transitions.len() as u64;
    let shown = if prev.is_none() {
        kept.min(1)
    } else {
        new.min(kept)
    };
    if prev.is_some() && new > kept {
        out.push(Event::TransitionsSkipped { count: new - kept });
    }
    for t in &cur.transitions[(kept - shown) as usize..] {
        out.push(Event::Transition {
            group: t.group.clone(),
            role: t.role.clone(),
            reason: t.reason.clone(),
            at_ms: t.at_ms,
        });
    }
    for p in &cur.paths {
        let before = prev.and_then(|s| s.paths.iter().find(|q| q.interface == p.interface));
        if before.is_none_or(|b| b.state != p.state) {
            out.push(Event::Path {
                interface: p.interface.clone(),
                state: p.state.clone(),
            });
        }
    }
    if let Some(s) = &cur.sync {
        let before = prev.and_then(|p| p.sync.as_ref());
        if before.is_none_or(|b| b.in_sync != s.in_sync || b.peer_down != s.peer_down) {
            out.push(Event::Sync {
                in_sync: s.in_sync,
                peer_down: s.peer_down,
            });
        }
    }
    if let Some(c) = &cur.config_sync {
        let before = prev.and_then(|p| p.config_sync.as_ref());
        if before.is_none_or(|b| b.state != c.state || b.reason != c.reason) {
            out.push(Event::ConfigSync {
                state: c.state.clone(),
                reason: c.reason.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{PathStatus, SyncStatus, Transition};

    fn status(pid: u32) -> Status {
        crate::status::test_status("fw", pid)
    }

    fn transition(role: &str, at_ms: u128) -> Transition {
        Transition {
            group: "fw".into(),
            role: role.into(),
            reason: "MasterDown".into(),
            at_ms,
        }
    }

    #[test]
    fn transitions_paths_and_sync_changes_become_events() {
        let mut a = status(10);
        a.transitions = vec![transition("BACKUP", 1)];
        a.transitions_total = 1;
        a.paths = vec![PathStatus {
            interface: "ha0".into(),
            state: "up".into(),
            last_heard_age_ms: None,
            adverts: 0,
            replies: 0,
        }];
        a.sync = Some(SyncStatus {
            in_sync: true,
            ..SyncStatus::default()
        });
        let first = diff(None, &a);
        assert_eq!(first[0], Event::AgentUp { pid: 10 });
        assert!(first.contains(&Event::Path {
            interface: "ha0".into(),
            state: "up".into()
        }));
        assert_eq!(diff(Some(&a), &a), Vec::new(), "nothing changed");

        let mut b = a.clone();
        b.transitions.push(transition("MASTER", 2));
        b.transitions_total = 2;
        b.paths[0].state = "down".into();
        b.sync.as_mut().unwrap().peer_down = true;
        let events = diff(Some(&a), &b);
        assert_eq!(
            events,
            vec![
                Event::Transition {
                    group: "fw".into(),
                    role: "MASTER".into(),
                    reason: "MasterDown".into(),
                    at_ms: 2
                },
                Event::Path {
                    interface: "ha0".into(),
                    state: "down".into()
                },
                Event::Sync {
                    in_sync: true,
                    peer_down: true
                },
            ]
        );
        assert_eq!(events[0].line(), "group fw -> MASTER (MasterDown)");
        let json = serde_json::to_string(&events[0]).unwrap();
        assert!(json.contains("\"event\":\"transition\""), "{json}");
    }

    #[test]
    fn more_transitions_than_kept_are_counted_and_a_restart_is_an_agent_up() {
        let a = status(10);
        let mut b = status(10);
        b.transitions = (0..20).map(|i| transition("MASTER", i)).collect();
        b.transitions_total = 25;
        let events = diff(Some(&a), &b);
        assert_eq!(events[0], Event::TransitionsSkipped { count: 5 });
        assert_eq!(events.len(), 21);
        // Another process: the agent restarted.
        let c = status(11);
        assert_eq!(diff(Some(&b), &c)[0], Event::AgentUp { pid: 11 });
    }
}
