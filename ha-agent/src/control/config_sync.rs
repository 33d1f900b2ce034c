//! Config sync: on a primary, the shared sections of the configuration and
//! the listed files go to the secondary whenever their hash changes, retried
//! until acknowledged ([`pusher`]); on a secondary, what the primary pushed
//! is written and reloaded ([`apply_push`]).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use tracing::info;

use super::{
    Shared,
    channel::{self, Bundle, Request, Response, SyncedFile},
    lock, reload,
};
use crate::{
    agent::request::ToLoop,
    config::{ClusterRole, Config, SharedConfig},
    paths::{self, StateFile},
    status::{ConfigSyncStatus, unix_ms},
};

/// Hash of what the primary replicates.
pub fn bundle_hash(shared: &str, files: &[SyncedFile]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(shared.as_bytes());
    for f in files {
        h.update(f.path.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(&f.content);
        h.update(f.mode.to_be_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The bundle a primary pushes.
pub fn bundle(config: &Config) -> anyhow::Result<Bundle> {
    let shared = config.shared_text();
    let mut files = Vec::new();
    if let Some(c) = &config.cluster {
        for path in &c.sync_files {
            use std::os::unix::fs::PermissionsExt as _;
            let content =
                std::fs::read(path).with_context(|| format!("sync file {}", path.display()))?;
            let mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
            files.push(SyncedFile {
                path: path.clone(),
                content,
                mode,
            });
        }
    }
    let hash = bundle_hash(&shared, &files);
    Ok(Bundle {
        shared,
        files,
        reload_hook: config.cluster.as_ref().and_then(|c| c.reload_hook.clone()),
        hash,
    })
}

/// A secondary applies what the primary pushed: files (atomically), the
/// shared sections into its configuration file, the reload, then the hook.
pub(super) async fn apply_push(shared: &Shared, bundle: Bundle, to_loop: &ToLoop) -> Response {
    let fail = |shared: &Shared, reason: String| {
        let mut s = lock(&shared.config_sync);
        s.state = "Failed".into();
        s.reason = Some(reason.clone());
        Response::Refused(reason)
    };
    let (role, files_root) = {
        let c = lock(&shared.config);
        let cluster = c.cluster.clone();
        (
            cluster.as_ref().map(|c| c.role),
            cluster
                .and_then(|c| c.files_root)
                .unwrap_or_else(|| "/".into()),
        )
    };
    if role != Some(ClusterRole::Secondary) {
        return Response::Refused("this node is not a secondary".into());
    }
    if bundle_hash(&bundle.shared, &bundle.files) != bundle.hash {
        return fail(
            shared,
            "pushed configuration does not match its hash".into(),
        );
    }
    if lock(&shared.config_sync).hash.as_deref() == Some(bundle.hash.as_str()) {
        return Response::Done { hash: bundle.hash };
    }
    let shared_cfg: SharedConfig = match toml::from_str(&bundle.shared) {
        Ok(s) => s,
        Err(e) => return fail(shared, format!("pushed configuration unreadable: {e}")),
    };
    // The new file: ours, with the primary's shared sections; validated
    // before anything is written.
    let mut next = lock(&shared.config).clone();
    next.groups = shared_cfg.groups;
    next.data_interfaces = shared_cfg.data_interfaces;
    let text = match toml::to_string(&next) {
        Ok(t) => t,
        Err(e) => return fail(shared, format!("cannot write the configuration: {e}")),
    };
    if let Err(e) = Config::parse(&text, &shared.config_path) {
        return fail(shared, format!("pushed configuration is invalid here: {e}"));
    }
    let mut files_changed = false;
    for f in &bundle.files {
        let rel = f.path.strip_prefix("/").unwrap_or(&f.path);
        let dest = files_root.join(rel);
        if std::fs::read(&dest).ok().as_deref() == Some(f.content.as_slice()) {
            continue;
        }
        if let Err(e) = paths::write_atomically(&dest, &f.content, f.mode) {
            return fail(shared, format!("writing {}: {e}", dest.display()));
        }
        files_changed = true;
    }
    if let Err(e) = paths::write_atomically(&shared.config_path, text.as_bytes(), 0o600) {
        return fail(
            shared,
            format!("writing {}: {e}", shared.config_path.display()),
        );
    }
    let synced = StateFile::SyncedShared.path(&shared.config_path);
    if let Err(e) = paths::write_atomically(&synced, next.shared_text().as_bytes(), 0o600) {
        return fail(shared, format!("writing {}: {e}", synced.display()));
    }
    if let Err(e) = reload::reload(shared, true, to_loop).await {
        return fail(shared, format!("reload failed: {e}"));
    }
    if files_changed && let Some(hook) = &bundle.reload_hook {
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new("sh")
                .args(["-c", hook])
                .output(),
        )
        .await;
        match out {
            Ok(Ok(o)) if o.status.success() => info!(%hook, "reload hook ran"),
            Ok(Ok(o)) => {
                return fail(
                    shared,
                    format!(
                        "reload hook `{hook}` failed ({}): {}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                );
            }
            Ok(Err(e)) => return fail(shared, format!("reload hook `{hook}`: {e}")),
            Err(_) => return fail(shared, format!("reload hook `{hook}` timed out")),
        }
    }
    {
        let mut s = lock(&shared.config_sync);
        *s = ConfigSyncStatus {
            state: "Up to Date".into(),
            reason: None,
            hash: Some(bundle.hash.clone()),
            synced_unix_ms: Some(unix_ms(SystemTime::now())),
        };
    }
    info!(hash = %bundle.hash, files = bundle.files.len(), "configuration synced from the primary");
    Response::Done { hash: bundle.hash }
}

/// How long a failed push waits before it is tried again (a change on the
/// primary pushes at once).
const RETRY: Duration = Duration::from_secs(3);

/// On a primary: pushes the bundle over the cluster channel whenever its
/// hash differs from what the secondary acknowledged; retried every
/// [`RETRY`] while it fails.
pub(super) async fn pusher(shared: Arc<Shared>, key: Option<[u8; 32]>) {
    let Some(key) = key else { return };
    push_loop(shared, |addr, bundle| async move {
        channel::call(addr, &key, &Request::Push(bundle)).await
    })
    .await;
}

/// The pusher's loop, with the exchange passed in (tests give their own).
async fn push_loop<F, Fut>(shared: Arc<Shared>, mut push: F)
where
    F: FnMut(SocketAddr, Bundle) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Response>>,
{
    let mut acked: Option<String> = None;
    loop {
        let (config, peer) = {
            let c = lock(&shared.config).clone();
            let peer = c.ha.peers.first().copied();
            (c, peer)
        };
        let primary = config
            .cluster
            .as_ref()
            .is_some_and(|c| c.role == ClusterRole::Primary);
        if primary && let Some(peer) = peer {
            let port = config.cluster.as_ref().map_or(7789, |c| c.control_port);
            match bundle(&config) {
                Err(e) => set_sync(&shared, "Failed", Some(e.to_string()), None),
                Ok(b) if acked.as_deref() == Some(b.hash.as_str()) => {}
                Ok(b) => {
                    set_sync(&shared, "Pending", None, Some(b.hash.clone()));
                    let hash = b.hash.clone();
                    match push(SocketAddr::from((peer, port)), b).await {
                        Ok(Response::Done { hash: h }) if h == hash => {
                            info!(%hash, "configuration synced to the secondary");
                            acked = Some(hash.clone());
                            let mut s = lock(&shared.config_sync);
                            *s = ConfigSyncStatus {
                                state: "Up to Date".into(),
                                reason: None,
                                hash: Some(hash),
                                synced_unix_ms: Some(unix_ms(SystemTime::now())),
                            };
                        }
                        Ok(Response::Refused(r)) => set_sync(
                            &shared,
                            "Failed",
                            Some(format!("secondary refused: {r}")),
                            Some(hash),
                        ),
                        Ok(other) => set_sync(
                            &shared,
                            "Failed",
                            Some(format!("unexpected answer: {other:?}")),
                            Some(hash),
                        ),
                        Err(e) => set_sync(&shared, "Failed", Some(format!("{e:#}")), Some(hash)),
                    }
                }
            }
        }
        let _ = tokio::time::timeout(RETRY, shared.changed.notified()).await;
    }
}

fn set_sync(shared: &Shared, state: &str, reason: Option<String>, hash: Option<String>) {
    let mut s = lock(&shared.config_sync);
    s.state = state.into();
    s.reason = reason;
    if hash.is_some() {
        s.hash = hash;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    fn primary() -> Arc<Shared> {
        // The test configuration, made a primary with state sync.
        let text = crate::config::TEST_CONFIG
            .replace(
                "peers = [\"10.255.0.2\"]",
                "peers = [\"10.255.0.2\"]\nsync_port = 7788\nsync_key_file = \"/nonexistent\"",
            )
            .replace(
                "[[group]]",
                "[cluster]\nrole = \"primary\"\nprimary = \"10.255.0.1\"\n\n[[group]]",
            );
        let config =
            Config::parse(&text, std::path::Path::new("/etc/ha-agent/config.toml")).unwrap();
        Arc::new(Shared {
            instance: "fw".into(),
            config_path: "/etc/ha-agent/config.toml".into(),
            config: Mutex::new(config),
            config_sync: Arc::new(Mutex::new(ConfigSyncStatus::default())),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// No network and no kernel clock here: time is paused and jumps from
    /// one retry to the next.
    #[tokio::test(start_paused = true)]
    async fn a_failing_push_is_retried_every_three_seconds_and_a_change_goes_at_once() {
        let shared = primary();
        let tries = Arc::new(AtomicU32::new(0));
        let up = Arc::new(AtomicU32::new(0));
        let task = tokio::spawn({
            let (shared, tries, up) = (shared.clone(), tries.clone(), up.clone());
            push_loop(shared, move |addr, b| {
                let (tries, up) = (tries.clone(), up.clone());
                async move {
                    assert_eq!(addr, SocketAddr::from(([10, 255, 0, 2], 7789)));
                    tries.fetch_add(1, Ordering::SeqCst);
                    if up.load(Ordering::SeqCst) == 1 {
                        Ok(Response::Done { hash: b.hash })
                    } else {
                        anyhow::bail!("connection refused")
                    }
                }
            })
        });
        tokio::time::sleep(Duration::from_millis(9_500)).await;
        assert_eq!(tries.load(Ordering::SeqCst), 4, "at 0, 3, 6 and 9 s");
        {
            let s = lock(&shared.config_sync);
            assert_eq!(s.state, "Failed");
            assert!(
                s.reason.as_deref().is_some_and(|r| r.contains("refused")),
                "{s:?}"
            );
        }
        up.store(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(lock(&shared.config_sync).state, "Up to Date");
        let after = tries.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            tries.load(Ordering::SeqCst),
            after,
            "acknowledged: nothing to push"
        );
        // A change (a reload) wakes the pusher at once, not 3 s later.
        lock(&shared.config).groups[0].instances[0].vips[0].address = "10.0.0.2/24".into();
        shared.changed.notify_one();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(tries.load(Ordering::SeqCst), after + 1);
        task.abort();
    }
}
