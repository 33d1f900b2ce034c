//! `ha-agent run`: the daemon's threads, started in order and all joined on
//! the way out.
//!
//! ```text
//! main runtime (SCHED_FIFO)   the VRRP loop (agent), hook tasks
//! state-sync (FIFO - 1)       replication (sync::driver), when configured
//! control (normal)            operator socket, cluster channel, config sync, metrics
//! status-writer (normal)      the status file
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
    for thread in [Some(control_thread), sync_thread].into_iter().flatten() {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    agent.finish().await;
    tracing::info!("agent stopped");
    result
}
