//! The join of a node that has no configuration yet (`ha-agent run` then
//! waits here): it serves the primary's `Info` and `Join` under the key of
//! its one-time join token, writes the configuration and cluster key it
//! receives, spends the token, and the agent starts.

use std::{net::SocketAddr, path::Path};

use anyhow::{Context as _, bail};
use tracing::{info, warn};

use super::{
    channel::{self, Request, Response},
    config_sync, host,
};
use crate::{
    config::Config,
    paths::{self, StateFile},
};

/// `ha-agent run` on a node without a configuration: serve the join
/// (Info, then Join) on `listen` until the primary has configured us.
pub async fn wait_for_join(
    config_path: &Path,
    instance: &str,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening for the join on {listen}"))?;
    info!(
        %listen,
        config = %config_path.display(),
        "no configuration yet: waiting to be joined by a primary (`ha-agent cluster join-token` makes the token)"
    );
    loop {
        let (stream, from) = listener.accept().await?;
        let Ok(token) = std::fs::read_to_string(StateFile::JoinToken.path(config_path)) else {
            warn!(%from, "join attempt, but no join token exists here (run `ha-agent cluster join-token`)");
            continue;
        };
        let key = channel::join_key(&token);
        let mut joined = false;
        let r = channel::serve(stream, &[key], async |_, req| match req {
            Request::Info => match host::info(false) {
                Ok(mut i) => {
                    i.instance = Some(instance.to_owned());
                    Response::Info(i)
                }
                Err(e) => Response::Refused(e.to_string()),
            },
            Request::Join { config, key } => match accept_join(config_path, &config, &key) {
                Ok(hash) => {
                    joined = true;
                    Response::Done { hash }
                }
                Err(e) => Response::Refused(format!("{e:#}")),
            },
            Request::Push(_) => Response::Refused("not joined yet".into()),
        })
        .await;
        match r {
            Err(e) => warn!(%from, cause = %e, "join request rejected"),
            Ok(()) if joined => {
                info!(%from, "joined the cluster; starting");
                return Ok(());
            }
            Ok(()) => {}
        }
    }
}

/// Writes the configuration and key a primary sent; the token is spent.
fn accept_join(config_path: &Path, text: &str, key: &[u8]) -> anyhow::Result<String> {
    if key.len() != 32 {
        bail!("sync key of {} bytes (need 32)", key.len());
    }
    let mut config = Config::parse(text, config_path)?;
    let key_path = StateFile::ClusterKey.path(config_path);
    config.ha.sync_key_file = Some(key_path.clone());
    let text = toml::to_string(&config)?;
    Config::parse(&text, config_path)?;
    paths::write_atomically(&key_path, key, 0o600)
        .with_context(|| format!("writing {}", key_path.display()))?;
    paths::write_atomically(config_path, text.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let shared = config.shared_text();
    let synced = StateFile::SyncedShared.path(config_path);
    paths::write_atomically(&synced, shared.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", synced.display()))?;
    let _ = std::fs::remove_file(StateFile::JoinToken.path(config_path));
    Ok(config_sync::bundle_hash(&shared, &[]))
}
