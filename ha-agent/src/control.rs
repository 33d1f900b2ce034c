//! The agent's control plane, on a normal-priority thread of its own (file
//! and network I/O never delay an advert):
//!
//! - a UNIX socket (`/run/ha-agent/<instance>.sock`) for the operator CLI:
//!   promote, demote, maintenance, resync, reload;
//! - the cluster control channel on the HA link (see
//!   [`crate::cluster::channel`]): node info for the primary's checks, and,
//!   on a secondary, the configuration the primary pushes;
//! - on a primary, config sync: the shared sections and listed files go to
//!   the secondary whenever their hash changes, retried until acknowledged;
//! - Prometheus metrics, when `metrics_listen` is set.
//!
//! What changes the VRRP state goes to the loop as a [`LoopCommand`].

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{info, warn};

use crate::{
    agent::status::{RUN_DIR, Status, unix_ms},
    cluster::{
        channel::{self, Bundle, Request, Response, SyncedFile},
        node,
    },
    config::{ClusterRole, Config, SharedConfig},
};

/// What the operator asks of the running agent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum LocalRequest {
    /// Become master now (priority 254, preempting), until `demote` or a restart.
    Promote,
    /// Hand over to the peer (priority 1), until `promote` or a restart.
    Demote,
    /// Persistent demotion (survives restarts), for upgrades.
    Maintenance(bool),
    /// Ask the peer for a full state resync.
    Resync,
    /// Re-read the configuration file.
    Reload,
}

/// The agent's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalResponse {
    pub ok: bool,
    pub message: String,
}

/// A request for the VRRP loop, with where to send its outcome.
#[derive(Debug)]
pub struct LoopCommand {
    pub request: LoopRequest,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// What the loop does.
#[derive(Debug, Clone)]
pub enum LoopRequest {
    Local(LocalRequest),
    /// Apply a validated configuration's VIPs (the fast half of a reload).
    Apply(Box<Config>),
}

/// Config sync as status shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ConfigSyncStatus {
    /// `Up to Date`, `Pending` or `Failed`.
    pub state: String,
    pub reason: Option<String>,
    /// Hash of the shared sections and files in force.
    pub hash: Option<String>,
    /// Unix ms of the last successful sync.
    pub synced_unix_ms: Option<u128>,
}

/// The socket path of an instance.
pub fn socket_path(instance: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{instance}.sock"))
}

/// Where a node keeps state that survives restarts (maintenance, the hash
/// of the last configuration synced from the primary): next to its config.
pub fn state_file(config_path: &Path, name: &str) -> PathBuf {
    config_path
        .parent()
        .unwrap_or(Path::new("/etc/ha-agent"))
        .join(name)
}

/// Sends a request to the running agent of `instance`.
pub async fn request(instance: &str, req: LocalRequest) -> anyhow::Result<LocalResponse> {
    let path = socket_path(instance);
    let mut s = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "no running agent for instance {instance} ({} missing: is `ha-agent run` running?)",
            path.display()
        )
    })?;
    let mut line = serde_json::to_vec(&req)?;
    line.push(b'\n');
    s.write_all(&line).await?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).await?;
    serde_json::from_str(&reply).context("malformed answer from the agent")
}

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

/// The shared sections of `config` as replicated text.
pub fn shared_text(config: &Config) -> String {
    toml::to_string(&config.shared()).unwrap_or_default()
}

/// The bundle a primary pushes.
pub fn bundle(config: &Config) -> anyhow::Result<Bundle> {
    let shared = shared_text(config);
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

/// Writes `bytes` to `path` atomically (temp file + rename) with `mode`.
pub fn write_file_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("ha-agent.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

/// Everything the control thread shares with the loop.
#[derive(Debug)]
pub struct Shared {
    pub instance: String,
    pub config_path: PathBuf,
    /// The configuration in force (updated by the loop on reload).
    pub config: Mutex<Config>,
    pub config_sync: Mutex<ConfigSyncStatus>,
    /// Wakes the config-sync pusher (a reload changed something).
    pub changed: tokio::sync::Notify,
}

/// Starts the control thread. `key`: the sync key (cluster channel).
pub fn spawn(
    shared: Arc<Shared>,
    key: Option<[u8; 32]>,
    to_loop: mpsc::UnboundedSender<LoopCommand>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            normal_priority();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!(cause = %e, "control thread could not start");
                    return;
                }
            };
            rt.block_on(run(shared, key, to_loop));
        })
        .context("start the control thread")
}

/// Leaves the realtime class this thread inherited from the loop's thread.
fn normal_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall on the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
}

async fn ask_loop(
    to_loop: &mpsc::UnboundedSender<LoopCommand>,
    request: LoopRequest,
) -> Result<String, String> {
    let (tx, rx) = oneshot::channel();
    to_loop
        .send(LoopCommand { request, reply: tx })
        .map_err(|_| "the agent is stopping".to_owned())?;
    rx.await.map_err(|_| "the agent is stopping".to_owned())?
}

async fn run(
    shared: Arc<Shared>,
    key: Option<[u8; 32]>,
    to_loop: mpsc::UnboundedSender<LoopCommand>,
) {
    let local = local_server(shared.clone(), to_loop.clone());
    let peer = peer_server(shared.clone(), key, to_loop.clone());
    let push = pusher(shared.clone(), key);
    let metrics = metrics_server(shared.clone());
    tokio::join!(local, peer, push, metrics);
}

async fn local_server(shared: Arc<Shared>, to_loop: mpsc::UnboundedSender<LoopCommand>) {
    let path = socket_path(&shared.instance);
    let _ = std::fs::create_dir_all(RUN_DIR);
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(cause = %e, path = %path.display(), "control socket unavailable");
            return;
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let to_loop = to_loop.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(rd).read_line(&mut line).await.is_err() {
                return;
            }
            let resp = match serde_json::from_str::<LocalRequest>(&line) {
                Ok(LocalRequest::Reload) => {
                    match crate::agent::reload(&shared, false, &to_loop).await {
                        Ok(message) => LocalResponse { ok: true, message },
                        Err(message) => LocalResponse { ok: false, message },
                    }
                }
                Ok(req) => match ask_loop(&to_loop, LoopRequest::Local(req)).await {
                    Ok(message) => LocalResponse { ok: true, message },
                    Err(message) => LocalResponse { ok: false, message },
                },
                Err(e) => LocalResponse {
                    ok: false,
                    message: format!("malformed request: {e}"),
                },
            };
            if let Ok(mut bytes) = serde_json::to_vec(&resp) {
                bytes.push(b'\n');
                let _ = wr.write_all(&bytes).await;
            }
        });
    }
}

/// The cluster channel on the HA link: Info for checks, Push on a secondary.
async fn peer_server(
    shared: Arc<Shared>,
    key: Option<[u8; 32]>,
    to_loop: mpsc::UnboundedSender<LoopCommand>,
) {
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
                Request::Info => match node::info(true) {
                    Ok(i) => Response::Info(i),
                    Err(e) => Response::Refused(e.to_string()),
                },
                Request::Join { .. } => {
                    Response::Refused("this node is already part of a cluster".into())
                }
                Request::Push(bundle) => apply_push(&shared, bundle, &to_loop).await,
            })
            .await;
            if let Err(e) = r {
                warn!(%from, cause = %e, "cluster control request rejected");
            }
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A secondary applies what the primary pushed: files (atomically), the
/// shared sections into its configuration file, the reload, then the hook.
async fn apply_push(
    shared: &Shared,
    bundle: Bundle,
    to_loop: &mpsc::UnboundedSender<LoopCommand>,
) -> Response {
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
        if let Err(e) = write_file_atomically(&dest, &f.content, f.mode) {
            return fail(shared, format!("writing {}: {e}", dest.display()));
        }
        files_changed = true;
    }
    if let Err(e) = write_file_atomically(&shared.config_path, text.as_bytes(), 0o600) {
        return fail(
            shared,
            format!("writing {}: {e}", shared.config_path.display()),
        );
    }
    let synced = state_file(&shared.config_path, "synced.hash");
    let _ = std::fs::write(&synced, shared_text(&next));
    if let Err(e) = crate::agent::reload(shared, true, to_loop).await {
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

/// On a primary: pushes the bundle whenever its hash differs from what the
/// secondary acknowledged; retried every few seconds while it fails.
async fn pusher(shared: Arc<Shared>, key: Option<[u8; 32]>) {
    let Some(key) = key else { return };
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
                    match channel::call(SocketAddr::from((peer, port)), &key, &Request::Push(b))
                        .await
                    {
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
        let _ = tokio::time::timeout(Duration::from_secs(3), shared.changed.notified()).await;
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

/// Prometheus text metrics from the status the loop last wrote.
async fn metrics_server(shared: Arc<Shared>) {
    let Some(addr) = lock(&shared.config).metrics_listen else {
        return;
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(cause = %e, %addr, "metrics listener unavailable");
            return;
        }
    };
    info!(%addr, "metrics on /metrics");
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let instance = shared.instance.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
            )
            .await;
            let body = Status::read(&instance)
                .map(|s| crate::metrics::render(&s))
                .unwrap_or_default();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}
