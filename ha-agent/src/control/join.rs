//! The join of a node that has no configuration yet (`ha-agent run` then
//! waits here): it serves the primary's `Info` and `Join` under the key of
//! its one-time join token, writes the configuration and cluster key it
//! receives, spends the token, and the agent starts.
//!
//! The token is the only thing that authorises the join, so it is short
//! lived (it carries its expiry in the token file, one hour by default) and
//! spent by the first successful join. The exchange is the control
//! channel's handshake: an ephemeral X25519 exchange bound to the token, so
//! a recorded join cannot be decrypted later by someone who learns the
//! token. Connections are served concurrently with the channel's limits:
//! idle connections from a host without the token cannot hold the port.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::{
    channel::{self, Counters, Request, Response},
    config_sync, host,
};
use crate::{
    config::Config,
    paths::{self, StateFile},
};

/// How long a join token is valid unless the operator says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// The longest validity a token may be given.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What the join listener counted since start.
pub(super) static COUNTERS: LazyLock<Arc<Counters>> = LazyLock::new(Arc::default);

/// A problem with a join token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a join token: expected 32 hex digits (from `ha-agent cluster join-token`)")]
    Format,
    #[error(
        "the join token file has no expiry (made by an older ha-agent): make a new one with `ha-agent cluster join-token`"
    )]
    NoExpiry,
    #[error(
        "the join token expired {ago} s ago: make a new one with `ha-agent cluster join-token` on the node to be joined"
    )]
    Expired { ago: u64 },
}

/// A one-time join token and when it stops being accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// 32 hex digits (128 random bits).
    pub secret: String,
    /// Seconds since the Unix epoch.
    pub expires_unix: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether `s` has the form of a token (32 hex digits).
pub fn check_secret(s: &str) -> Result<(), TokenError> {
    if s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(TokenError::Format)
    }
}

impl JoinToken {
    /// A new random token valid for `ttl` from `now`.
    pub fn generate(ttl: Duration, now: SystemTime) -> anyhow::Result<Self> {
        let mut raw = [0u8; 16];
        getrandom::getrandom(&mut raw).map_err(|e| anyhow::anyhow!("random: {e}"))?;
        Ok(JoinToken {
            secret: raw.iter().map(|b| format!("{b:02x}")).collect(),
            expires_unix: unix(now) + ttl.as_secs(),
        })
    }

    /// The file's text: the token on the first line (so the file itself
    /// can be given to `--token-file`), then its expiry.
    pub fn file_text(&self) -> String {
        format!("{}\nexpires-unix {}\n", self.secret, self.expires_unix)
    }

    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let secret = lines.next().ok_or(TokenError::Format)?.to_owned();
        check_secret(&secret)?;
        let expires_unix = lines
            .find_map(|l| l.strip_prefix("expires-unix "))
            .and_then(|n| n.trim().parse().ok())
            .ok_or(TokenError::NoExpiry)?;
        Ok(JoinToken {
            secret,
            expires_unix,
        })
    }

    /// Refuses the token once `now` is past its expiry.
    pub fn check_fresh(&self, now: SystemTime) -> Result<(), TokenError> {
        let now = unix(now);
        if now >= self.expires_unix {
            return Err(TokenError::Expired {
                ago: now - self.expires_unix,
            });
        }
        Ok(())
    }

    /// The token of this node, if one was made.
    pub fn read(config_path: &Path) -> Option<Result<Self, TokenError>> {
        let text = std::fs::read_to_string(StateFile::JoinToken.path(config_path)).ok()?;
        Some(Self::parse(&text))
    }
}

/// `ha-agent run` on a node without a configuration: serve the join
/// (Info, then Join) on `listen` until the primary has configured us.
pub async fn wait_for_join(
    config_path: &Path,
    instance: &str,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening for the join on {listen}"))?;
    if listen.ip().is_unspecified() {
        warn!(
            %listen,
            "listening for the join on every address: give `--join-listen <this node's HA address>:7789` so that only the HA segment reaches it"
        );
    }
    info!(
        %listen,
        config = %config_path.display(),
        "no configuration yet: waiting to be joined by a primary (`ha-agent cluster join-token` makes the token)"
    );
    serve_join(listener, config_path.to_owned(), instance.to_owned()).await
}

/// Serves the join on `listener` until a primary has joined us.
pub async fn serve_join(
    listener: TcpListener,
    config_path: PathBuf,
    instance: String,
) -> anyhow::Result<()> {
    // Whether the join happened (later joins are refused).
    let joined = Arc::new(Mutex::new(false));
    let done = Arc::new(tokio::sync::Notify::new());
    let admit = {
        let config_path = config_path.clone();
        move |_| match JoinToken::read(&config_path) {
            // An unreadable or expired token is still served, so that the
            // primary hears why (sealed) instead of a closed connection.
            Some(Ok(t)) => Ok(channel::join_key(&t.secret)),
            Some(Err(_)) | None => Err(channel::Reason::NoToken),
        }
    };
    let handle = {
        let done = done.clone();
        move |from: SocketAddr, req: Request| {
            let (config_path, instance, joined, done) = (
                config_path.clone(),
                instance.clone(),
                joined.clone(),
                done.clone(),
            );
            async move {
                let fresh = match JoinToken::read(&config_path) {
                    Some(Ok(t)) => t.check_fresh(SystemTime::now()),
                    Some(Err(e)) => Err(e),
                    None => return Response::Refused("no join token here (spent?)".into()),
                };
                if let Err(e) = fresh {
                    warn!(%from, cause = %e, "join refused");
                    return Response::Refused(e.to_string());
                }
                match req {
                    Request::Info => match host::info(false) {
                        Ok(mut i) => {
                            i.instance = Some(instance);
                            Response::Info(i)
                        }
                        Err(e) => Response::Refused(e.to_string()),
                    },
                    Request::Join { config, key } => {
                        let mut joined = super::lock(&joined);
                        if *joined {
                            return Response::Refused("already joined".into());
                        }
                        match accept_join(&config_path, &config, &key) {
                            Ok(hash) => {
                                *joined = true;
                                info!(%from, "joined the cluster; starting");
                                done.notify_one();
                                Response::Done { hash }
                            }
                            Err(e) => Response::Refused(format!("{e:#}")),
                        }
                    }
                    Request::Push(_) | Request::Status => {
                        Response::Refused("not joined yet".into())
                    }
                }
            }
        }
    };
    tokio::select! {
        () = channel::serve_loop(
            listener,
            "join",
            channel::Limits::default(),
            COUNTERS.clone(),
            admit,
            handle,
        ) => {}
        () = done.notified() => {}
    }
    Ok(())
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

#[cfg(test)]
mod tests;
