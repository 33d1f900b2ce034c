//! The agent's control plane, on a normal-priority thread of its own (file
//! and network I/O never delay an advert):
//!
//! - the operator socket ([`local`]): promote, demote, maintenance, resync,
//!   reload ([`reload`]), a live status;
//! - the cluster control channel on the HA link ([`channel`]): node info
//!   ([`host`]) for the primary's checks and, on a secondary, the
//!   configuration the primary pushes; on a primary, config sync
//!   ([`config_sync`]);
//! - Prometheus metrics over HTTP ([`http`]), when `metrics_listen` is set;
//! - before any of this, the join of a node without a configuration
//!   ([`join`]).
//!
//! What changes the VRRP state goes to the loop through
//! [`crate::agent::request`]; the loop never calls in here.

pub mod channel;
pub mod config_sync;
pub mod host;
mod http;
pub mod join;
pub mod local;
pub mod reload;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use tokio::{net::TcpListener, sync::watch};
use tracing::warn;

use self::channel::{Request, Response};
use crate::{agent::request::ToLoop, config::Config, sched, status::ConfigSyncStatus};

/// Everything the control thread keeps.
#[derive(Debug)]
pub struct Shared {
    pub instance: String,
    pub config_path: PathBuf,
    /// The configuration in force (replaced by a successful reload).
    pub config: Mutex<Config>,
    /// Config sync as the status shows it (the loop reads it too).
    pub config_sync: Arc<Mutex<ConfigSyncStatus>>,
    /// Wakes the config-sync pusher (a reload changed something).
    pub changed: tokio::sync::Notify,
    /// `ha-agent cluster sync` asked for a push of the configuration of
    /// this hash (`config_sync = "manual"`).
    pub push_requested: Mutex<Option<String>>,
}

impl Shared {
    /// Asks the pusher for a push of the configuration of `hash` (what
    /// `ha-agent cluster sync` does with `config_sync = "manual"`).
    pub(crate) fn request_push(&self, hash: String) {
        *lock(&self.push_requested) = Some(hash);
        self.changed.notify_one();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts the control thread; it ends when `stop` turns true. `key`: the
/// cluster key (control channel, config sync).
pub fn spawn(
    shared: Arc<Shared>,
    key: Option<[u8; 32]>,
    to_loop: ToLoop,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<JoinHandle<()>> {
    sched::spawn("control", sched::Class::Normal, move || async move {
        let metrics = lock(&shared.config).metrics_listen;
        let servers = async {
            tokio::join!(
                local::serve(shared.clone(), to_loop.clone(), key),
                peer_server(shared.clone(), key, to_loop.clone()),
                config_sync::pusher(shared.clone(), key),
                publish_counters(shared.clone()),
                async {
                    if let Some(addr) = metrics {
                        http::serve(addr, shared.instance.clone()).await;
                    }
                },
            )
        };
        tokio::select! {
            _ = servers => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    })
}

/// This node for the cluster view: its status from the loop, and what is
/// read here (never in the loop): hostname, conntrack entries.
pub(crate) async fn node_view(
    shared: &Shared,
    to_loop: &ToLoop,
) -> Result<crate::status::cluster::NodeView, String> {
    let status = crate::agent::request::status(to_loop).await?;
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned());
    Ok(crate::status::cluster::NodeView {
        hostname: read("/proc/sys/kernel/hostname").unwrap_or_default(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        address: lock(&shared.config).ha.address,
        conntrack_entries: read("/proc/sys/net/netfilter/nf_conntrack_count")
            .ok()
            .and_then(|s| s.parse().ok()),
        status: *status,
    })
}

/// This node and its peer, asked over the cluster control channel (`key`:
/// the control key).
pub(crate) async fn cluster_view(
    shared: &Shared,
    to_loop: &ToLoop,
    key: Option<[u8; 32]>,
) -> Result<crate::status::cluster::ClusterView, String> {
    let local = node_view(shared, to_loop).await?;
    let (peer_addr, port) = {
        let c = lock(&shared.config);
        (
            c.ha.peers.first().copied(),
            c.cluster.as_ref().map(|c| c.control_port),
        )
    };
    let asked = match (peer_addr, port, key) {
        (None, _, _) => Err("no peer in ha.peers".to_owned()),
        (_, None, _) => Err(
            "no [cluster] section: without the cluster control channel the peer cannot be asked"
                .to_owned(),
        ),
        (_, _, None) => Err("no cluster key (ha.sync_key_file): the peer cannot be asked".into()),
        (Some(a), Some(port), Some(key)) => {
            match channel::try_call(SocketAddr::from((a, port)), &key, &Request::Status).await {
                Ok(Response::Status(v)) => Ok(*v),
                Ok(Response::Refused(why)) => Err(format!("refused: {why}")),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    let (peer, peer_error) = match asked {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    Ok(crate::status::cluster::ClusterView {
        local,
        peer_address: peer_addr,
        peer,
        peer_error,
    })
}

/// What the cluster channel's server counted since start (rejections by
/// reason, requests answered): for the status.
pub fn channel_rejections() -> channel::Rejections {
    PEER_COUNTERS.snapshot()
}

/// Copies the control channel's counters into the config-sync status once
/// a second, where the loop's status snapshot and the metrics find them
/// (the loop never calls in here).
async fn publish_counters(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let c = channel_rejections();
        let mut s = lock(&shared.config_sync);
        s.control_served = c.served;
        s.control_refused = c
            .rejected
            .iter()
            .map(|(r, n)| ((*r).to_owned(), *n))
            .collect();
    }
}

/// What the join listener counted since start.
pub fn join_rejections() -> channel::Rejections {
    join::COUNTERS.snapshot()
}

static PEER_COUNTERS: std::sync::LazyLock<Arc<channel::Counters>> =
    std::sync::LazyLock::new(Arc::default);

/// Where the cluster channel listens: the HA address only (never every
/// address, so a LAN host cannot even reach the port through another
/// interface), on the cluster's control port.
fn listen_addr(config: &Config) -> Option<SocketAddr> {
    let cluster = config.cluster.as_ref()?;
    Some(SocketAddr::from((config.ha.address, cluster.control_port)))
}

/// The cluster channel on the HA link: Info for checks, Push on a secondary.
/// Only the configured peers (`ha.peers`, as the configuration in force
/// now says) are served; any other source is closed before anything is
/// read. `key` is the control key derived from the cluster key.
async fn peer_server(shared: Arc<Shared>, key: Option<[u8; 32]>, to_loop: ToLoop) {
    let Some(addr) = listen_addr(&lock(&shared.config)) else {
        return;
    };
    let Some(key) = key else {
        warn!("cluster control channel off: it needs ha.sync_key_file");
        return;
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(cause = %e, %addr, "cluster control channel unavailable");
            return;
        }
    };
    let admit = {
        let shared = shared.clone();
        move |ip: IpAddr| {
            let c = lock(&shared.config);
            if c.ha.peers.iter().any(|p| IpAddr::V4(*p) == ip) {
                Ok(key)
            } else {
                Err(channel::Reason::NotPeer)
            }
        }
    };
    let handle = move |_from, req| {
        let shared = shared.clone();
        let to_loop = to_loop.clone();
        async move {
            match req {
                Request::Info => match host::info(true) {
                    Ok(i) => Response::Info(i),
                    Err(e) => Response::Refused(e.to_string()),
                },
                Request::Join { .. } => {
                    Response::Refused("this node is already part of a cluster".into())
                }
                Request::Push(bundle) => config_sync::apply_push(&shared, bundle, &to_loop).await,
                Request::Status => match node_view(&shared, &to_loop).await {
                    Ok(v) => Response::Status(Box::new(v)),
                    Err(e) => Response::Refused(e),
                },
            }
        }
    };
    channel::serve_loop(
        listener,
        "cluster control",
        channel::Limits::default(),
        PEER_COUNTERS.clone(),
        admit,
        handle,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_channel_listens_on_the_ha_address_only() {
        let text = r#"
instance = "t"
[ha]
interface = "ha0"
address = "10.255.0.1"
peers = ["10.255.0.2"]
[cluster]
role = "primary"
primary = "10.255.0.1"
control_port = 7790
[[group]]
name = "g"
[[group.vrrp]]
name = "lan0"
vrid = 1
priority = 100
vips = [{ iface = "lan0", address = "10.0.0.1/24" }]
"#;
        let config = Config::parse(text, std::path::Path::new("/nonexistent/config.toml"))
            .expect("a valid configuration");
        assert_eq!(
            listen_addr(&config),
            Some("10.255.0.1:7790".parse().unwrap())
        );
    }
}
