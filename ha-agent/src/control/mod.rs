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
    net::SocketAddr,
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
                local::serve(shared.clone(), to_loop.clone()),
                peer_server(shared.clone(), key, to_loop.clone()),
                config_sync::pusher(shared.clone(), key),
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

/// The cluster channel on the HA link: Info for checks, Push on a secondary.
async fn peer_server(shared: Arc<Shared>, key: Option<[u8; 32]>, to_loop: ToLoop) {
    let (addr, port) = {
        let c = lock(&shared.config);
        let Some(cluster) = &c.cluster else { return };
        (c.ha.address, cluster.control_port)
    };
    let Some(key) = key else {
        warn!("cluster control channel off: it needs ha.sync_key_file");
        return;
    };
    let listener = match TcpListener::bind(SocketAddr::from((addr, port))).await {
        Ok(l) => l,
        Err(e) => {
            warn!(cause = %e, %addr, port, "cluster control channel unavailable");
            return;
        }
    };
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        let to_loop = to_loop.clone();
        tokio::spawn(async move {
            let r = channel::serve(stream, &[key], async |_, req| match req {
                Request::Info => match host::info(true) {
                    Ok(i) => Response::Info(i),
                    Err(e) => Response::Refused(e.to_string()),
                },
                Request::Join { .. } => {
                    Response::Refused("this node is already part of a cluster".into())
                }
                Request::Push(bundle) => config_sync::apply_push(&shared, bundle, &to_loop).await,
            })
            .await;
            if let Err(e) = r {
                warn!(%from, cause = %e, "cluster control request rejected");
            }
        });
    }
}
