//! Heartbeat paths: the HA link (path 0) and the data interfaces adverts
//! also travel over (authenticated: see [`crate::vrrp::auth`]). Every path
//! feeds the same election, so a master is declared down only when every
//! path is silent; this module only tells which path is down while the
//! peer is heard over another ("HA link down: peer alive over lan0"), or
//! has no carrier here.
//!
//! A path is `up` while a peer's advert (or a fast-heartbeat reply) came
//! over it within the timeout (the
//! longest Master_Down_Interval of our groups), `down` when it has been
//! silent that long while another path still hears the peer, `no-carrier`
//! when its interface has no link here, and `quiet` when no path hears a
//! peer (we are master of everything, or the peer is gone: the election
//! decides, there is nothing to tell apart).

use std::{net::Ipv4Addr, time::Duration};

use super::Instant;

/// One heartbeat path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSettings {
    /// Its interface.
    pub name: String,
    /// Our address on it (our own adverts coming back are refused).
    pub local: Ipv4Addr,
}

/// What a path is doing (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathState {
    Up,
    Down,
    NoCarrier,
    Quiet,
}

impl PathState {
    pub const fn as_str(self) -> &'static str {
        match self {
            PathState::Up => "up",
            PathState::Down => "down",
            PathState::NoCarrier => "no-carrier",
            PathState::Quiet => "quiet",
        }
    }
    /// Whether this state is a fault to report (not just silence).
    pub const fn faulty(self) -> bool {
        matches!(self, PathState::Down | PathState::NoCarrier)
    }
}

/// A path as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathReport {
    pub name: String,
    pub state: PathState,
    /// When a peer's advert last came over it (node time).
    pub last_heard: Option<Instant>,
    /// Adverts accepted over it.
    pub adverts: u64,
    /// Fast-heartbeat replies accepted over it.
    pub replies: u64,
}

/// A path's state changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: usize,
    pub name: String,
    pub state: PathState,
    /// The paths that still hear the peer.
    pub alive_over: Vec<String>,
}

impl Change {
    /// The log line.
    pub fn describe(&self) -> String {
        let what = if self.path == 0 {
            format!("HA link ({})", self.name)
        } else {
            format!("heartbeat path {}", self.name)
        };
        let over = if self.alive_over.is_empty() {
            String::new()
        } else {
            format!(": peer alive over {}", self.alive_over.join(", "))
        };
        match self.state {
            PathState::Up => format!("{what} up again"),
            PathState::Down => format!("{what} down{over}"),
            PathState::NoCarrier => format!("{what} down (no carrier){over}"),
            PathState::Quiet => format!("{what}: no peer heard on any path"),
        }
    }
}

#[derive(Debug)]
struct Path {
    name: String,
    local: Ipv4Addr,
    carrier: bool,
    last_heard: Option<Instant>,
    adverts: u64,
    replies: u64,
    state: PathState,
}

/// Every path of the node.
#[derive(Debug)]
pub(super) struct Paths {
    paths: Vec<Path>,
    /// Since when some path hears a peer (`None`: none does). A path that
    /// has not heard it within a timeout of that is down: the first adverts
    /// of an episode arrive path by path.
    alive_since: Option<Instant>,
}

impl Paths {
    pub(super) fn new(settings: Vec<PathSettings>) -> Paths {
        Paths {
            paths: settings
                .into_iter()
                .map(|p| Path {
                    name: p.name,
                    local: p.local,
                    carrier: true,
                    last_heard: None,
                    adverts: 0,
                    replies: 0,
                    state: PathState::Quiet,
                })
                .collect(),
            alive_since: None,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.paths.len()
    }

    pub(super) fn names(&self) -> impl Iterator<Item = &str> {
        self.paths.iter().map(|p| p.name.as_str())
    }

    /// Whether `addr` is one of ours.
    pub(super) fn is_local(&self, addr: Ipv4Addr) -> bool {
        self.paths.iter().any(|p| p.local == addr)
    }

    /// A peer's advert was accepted over path `i`.
    pub(super) fn heard(&mut self, i: usize, now: Instant) {
        if let Some(p) = self.paths.get_mut(i) {
            p.last_heard = Some(now);
            p.adverts += 1;
        }
    }

    /// A fast-heartbeat reply came over path `i`: the peer's box answers
    /// there (even a master hears its backup this way).
    pub(super) fn heard_reply(&mut self, i: usize, now: Instant) {
        if let Some(p) = self.paths.get_mut(i) {
            p.last_heard = Some(now);
            p.replies += 1;
        }
    }

    /// The link state of `iface`, if it is a path's; whether it was one.
    pub(super) fn carrier(&mut self, iface: &str, up: bool) -> bool {
        let mut found = false;
        for p in self.paths.iter_mut().filter(|p| p.name == iface) {
            p.carrier = up;
            found = true;
        }
        found
    }

    fn hears(p: &Path, now: Instant, timeout: Duration) -> bool {
        p.carrier && p.last_heard.is_some_and(|t| now < t + timeout)
    }

    /// Re-evaluates every path; the changes.
    pub(super) fn evaluate(&mut self, now: Instant, timeout: Duration) -> Vec<Change> {
        let alive: Vec<String> = self
            .paths
            .iter()
            .filter(|p| Self::hears(p, now, timeout))
            .map(|p| p.name.clone())
            .collect();
        let since = if alive.is_empty() {
            self.alive_since = None;
            now
        } else {
            *self.alive_since.get_or_insert(now)
        };
        let mut changes = Vec::new();
        for (i, p) in self.paths.iter_mut().enumerate() {
            let state = if !p.carrier {
                PathState::NoCarrier
            } else if Self::hears(p, now, timeout) {
                PathState::Up
            } else if alive.is_empty() {
                PathState::Quiet
            } else if now >= since + timeout {
                PathState::Down
            } else if p.state == PathState::NoCarrier {
                PathState::Quiet
            } else {
                p.state
            };
            if state != p.state {
                let old = std::mem::replace(&mut p.state, state);
                // Faults and their end are news; hearing the peer where
                // nothing was heard, or no path hearing it, is the
                // election's business.
                if old.faulty() || state.faulty() {
                    changes.push(Change {
                        path: i,
                        name: p.name.clone(),
                        state,
                        alive_over: alive.clone(),
                    });
                }
            }
        }
        changes
    }

    /// When a path's state may change next by itself (an up path timing out).
    pub(super) fn next_change(&self, timeout: Duration) -> Option<Instant> {
        let silent = self
            .alive_since
            .filter(|_| self.paths.iter().any(|p| p.state == PathState::Quiet))
            .map(|t| t + timeout);
        self.paths
            .iter()
            .filter(|p| p.state == PathState::Up)
            .filter_map(|p| p.last_heard.map(|t| t + timeout))
            .chain(silent)
            .min()
    }

    pub(super) fn report(&self) -> Vec<PathReport> {
        self.paths
            .iter()
            .map(|p| PathReport {
                name: p.name.clone(),
                state: p.state,
                last_heard: p.last_heard,
                adverts: p.adverts,
                replies: p.replies,
            })
            .collect()
    }
}
