//! What the running agent reports: written as JSON to
//! `/run/ha-agent/<instance>.json` (atomically) on every transition and read by
//! `ha-agent status`.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, time::SystemTime};

use serde::{Deserialize, Serialize};

use super::net::Rejected;
use crate::{
    config::Config,
    vrrp::machine::{Reason, Role},
};

/// Directory of status files.
pub const RUN_DIR: &str = "/run/ha-agent";

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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub instance: String,
    pub pid: u32,
    /// (group, role, effective priority).
    #[serde(skip)]
    pub groups: Vec<(String, Role, u8)>,
    /// Roles by group, as written.
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
    #[serde(skip)]
    pub rejected: BTreeMap<Rejected, u64>,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Last accepted advert (source, priority, when).
    #[serde(skip)]
    pub last_advert: Option<(Ipv4Addr, u8, SystemTime)>,
    pub last_advert_from: Option<Ipv4Addr>,
    pub last_advert_priority: Option<u8>,
    pub last_advert_unix_ms: Option<u128>,
    pub last_takeover: Option<TakeoverTiming>,
    /// The most recent transitions, newest last (at most 20).
    pub transitions: Vec<Transition>,
    /// State sync, when configured.
    #[serde(default)]
    pub sync: Option<crate::sync::transport::SyncStatus>,
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
    pub config_sync: Option<crate::control::ConfigSyncStatus>,
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

impl Status {
    pub fn new(config: &Config) -> Self {
        Status {
            instance: config.instance.clone(),
            pid: std::process::id(),
            groups: Vec::new(),
            roles: BTreeMap::new(),
            priorities: BTreeMap::new(),
            owned: 0,
            adverts_sent: 0,
            adverts_received: 0,
            advert_send_errors: 0,
            interval_mismatches: 0,
            rejected: BTreeMap::new(),
            rejected_by_reason: BTreeMap::new(),
            last_advert: None,
            last_advert_from: None,
            last_advert_priority: None,
            last_advert_unix_ms: None,
            last_takeover: None,
            transitions: Vec::new(),
            sync: None,
            cluster_role: config.cluster.as_ref().map(|c| c.role.as_str().to_owned()),
            primary: config.cluster.as_ref().map(|c| c.primary),
            priority_override: None,
            maintenance: false,
            config_sync: None,
        }
    }

    pub fn record_transition(&mut self, group: &str, role: Role, reason: Reason) {
        self.transitions.push(Transition {
            group: group.to_owned(),
            role: role.as_str().to_owned(),
            reason: format!("{reason:?}"),
            at_ms: unix_ms(SystemTime::now()),
        });
        if self.transitions.len() > 20 {
            self.transitions.remove(0);
        }
    }

    /// Path of an instance's status file.
    pub fn path(instance: &str) -> PathBuf {
        PathBuf::from(RUN_DIR).join(format!("{instance}.json"))
    }

    /// Fills the serialized fields from the live ones.
    fn prepare(&mut self) {
        self.roles = self
            .groups
            .iter()
            .map(|(g, r, _)| (g.clone(), r.as_str().to_owned()))
            .collect();
        self.priorities = self
            .groups
            .iter()
            .map(|(g, _, p)| (g.clone(), *p))
            .collect();
        self.rejected_by_reason = self
            .rejected
            .iter()
            .map(|(r, n)| (format!("{r:?}"), *n))
            .collect();
        if let Some((src, prio, at)) = self.last_advert {
            self.last_advert_from = Some(src);
            self.last_advert_priority = Some(prio);
            self.last_advert_unix_ms = Some(unix_ms(at));
        }
    }

    /// The JSON of the status, for [`StatusWriter`].
    pub fn to_json(&mut self) -> Vec<u8> {
        self.prepare();
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Reads an instance's status file.
    pub fn read(instance: &str) -> std::io::Result<Status> {
        let bytes = std::fs::read(Self::path(instance))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

/// Writes status files on a thread of its own, so a slow disk never stalls
/// the agent's loop (where a stall lapses the ownership lease). Only the
/// latest status matters: queued older ones are skipped.
#[derive(Debug)]
pub struct StatusWriter {
    tx: std::sync::mpsc::Sender<Vec<u8>>,
}

impl StatusWriter {
    pub fn spawn(instance: &str) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let path = Status::path(instance);
        std::thread::Builder::new()
            .name("status-writer".into())
            .spawn(move || {
                // Normal scheduling: this thread is started before the agent
                // raises its own threads to SCHED_FIFO, and must not be raised.
                while let Ok(mut bytes) = rx.recv() {
                    while let Ok(newer) = rx.try_recv() {
                        bytes = newer;
                    }
                    if let Err(e) = crate::control::write_file_atomically(&path, &bytes, 0o644) {
                        tracing::debug!(cause = %e, "writing the status file failed");
                    }
                }
            })
            .expect("spawning the status writer thread");
        StatusWriter { tx }
    }

    /// Queues a status to write.
    pub fn write(&self, bytes: Vec<u8>) {
        let _ = self.tx.send(bytes);
    }
}
