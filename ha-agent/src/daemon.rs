//! `ha-agent run`: the daemon's threads, started in order and all joined on
//! the way out.
//!
//! ```text
//! main runtime (SCHED_FIFO)   the VRRP loop (agent), hook tasks
//! state-sync (FIFO - 1)       replication (sync::driver), when configured
//! control (normal)            operator socket, cluster channel, config sync, metrics
//! status-writer (normal)      the status file
//! napi (normal)               threaded NAPI on the data interfaces (napi.rs)
//! ```
//!
//! `run` returns when `shutdown` resolves, after a graceful stop: the loop
//! sends priority-0 adverts and clears ownership, then the control and sync
//! threads are told to stop and joined, the last hooks run, the status
//! writer flushes and ends. Only `main` touches signals.

use std::{
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};

use crate::{
    agent::Agent,
    config::Config,
    control, sched,
    status::ConfigSyncStatus,
    sync::{self, driver::SyncHandle, key::Purpose},
};

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: Config,
    config_path: PathBuf,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // The cluster key: state sync and the control channel each get a key
    // derived from it (see `sync::key`).
    let key = match &config.ha.sync_key_file {
        Some(file) if config.ha.sync_port != 0 => Some(sync::key::read_key(file)?),
        _ => None,
    };
    let config_sync = Arc::new(Mutex::new(ConfigSyncStatus::default()));
    let mut agent = Agent::open(
        config.clone(),
        &config_path,
        config_sync.clone(),
        key.map(|k| sync::key::derive(&k, Purpose::Adverts)),
        key.map(|k| sync::key::derive(&k, Purpose::Probes)),
    )
    .await?;
    sched::realtime(config.ha.realtime_priority);
    let (stop, stopped) = watch::channel(false);

    // Threaded NAPI on our interfaces (XDP is attached: a veth has its
    // NAPI instances only then), set before the loop starts and re-checked
    // off it.
    let napi_thread = if config.ha.napi.threaded {
        let napi = Arc::new(Mutex::new(Vec::new()));
        agent.set_napi(napi.clone());
        Some(spawn_napi(&config, napi, stopped.clone())?)
    } else {
        None
    };

    // State sync one realtime priority below the loop: a burst of
    // connections keeps it busy, and it must never delay an advert.
    let sync_thread = match key {
        Some(key) => {
            let handle = SyncHandle::open(
                &config,
                sync::key::derive(&key, Purpose::StateSync),
                &crate::paths::StateFile::SyncEpoch.path(&config_path),
            )?;
            agent.set_sync(handle.clone());
            let config = config.clone();
            let mut stopped = stopped.clone();
            Some(
                sched::spawn("state-sync", sched::Class::BelowLoop, move || async move {
                    let stop = async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    };
                    if let Err(e) = sync::driver::run(handle, &config, stop).await {
                        tracing::warn!(cause = %e, "state sync stopped");
                    }
                })
                .context("start the state-sync thread")?,
            )
        }
        None => None,
    };

    let (to_loop, requests) = mpsc::unbounded_channel();
    let shared = Arc::new(control::Shared {
        instance: config.instance.clone(),
        config_path,
        config: Mutex::new(config),
        config_sync,
        changed: tokio::sync::Notify::new(),
        push_requested: Default::default(),
    });
    let control_thread = control::spawn(
        shared,
        key.map(|k| sync::key::derive(&k, Purpose::Control)),
        to_loop,
        stopped,
    )
    .context("start the control thread")?;

    let result = match agent.start() {
        Ok(()) => agent.run(requests, shutdown).await,
        Err(e) => Err(e),
    };

    let _ = stop.send(true);
    for thread in [Some(control_thread), sync_thread, napi_thread]
        .into_iter()
        .flatten()
    {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    agent.finish().await;
    tracing::info!("agent stopped");
    result
}

/// How often the napi thread re-checks the interfaces.
const NAPI_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Threads the NAPI polling of our interfaces now, then starts the thread
/// that re-checks it every [`NAPI_EVERY`] (a driver may recreate its NAPI
/// instances) and publishes it for the status. Logs what changed.
fn spawn_napi(
    config: &Config,
    napi: Arc<Mutex<Vec<crate::napi::NapiIface>>>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let ifaces = config.napi_interfaces();
    let nice = config.ha.napi.nice;
    let log = move |now: &[crate::napi::NapiIface], before: &[crate::napi::NapiIface]| {
        for n in now.iter().filter(|n| !before.contains(n)) {
            match &n.error {
                Some(e) => tracing::warn!(iface = %n.iface, cause = %e,
                    "cannot thread this interface's NAPI polling: the VRRP loop may run its forwarding work under load"),
                None if n.instances.is_empty() => tracing::warn!(iface = %n.iface, via = ?n.via,
                    "no NAPI instance of its own nor below it: its polling is not threaded; thread the device that receives its traffic with `echo 1 > /sys/class/net/<dev>/threaded`"),
                None => {
                    tracing::info!(iface = %n.iface, via = ?n.via, instances = n.instances.len(),
                    threads = ?n.instances.iter().filter_map(|i| i.pid).collect::<Vec<_>>(), nice,
                    "NAPI polling threaded")
                }
            }
        }
    };
    let first = crate::napi::ensure(&ifaces, nice);
    log(&first, &[]);
    *napi.lock().unwrap_or_else(|e| e.into_inner()) = first;
    sched::spawn("napi", sched::Class::Normal, move || async move {
        loop {
            tokio::select! {
                _ = stopped.wait_for(|s| *s) => return,
                () = tokio::time::sleep(NAPI_EVERY) => {}
            }
            let now = crate::napi::ensure(&ifaces, nice);
            let mut shared = napi.lock().unwrap_or_else(|e| e.into_inner());
            log(&now, &shared);
            *shared = now;
        }
    })
    .context("start the napi thread")
}
