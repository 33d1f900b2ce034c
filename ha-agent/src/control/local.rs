//! The operator socket (`/run/ha-agent/<instance>.sock`): one JSON request
//! per line, one JSON answer per line. `ha-agent promote|demote|maintenance|
//! resync|reload|status` are its clients ([`request`]).
//!
//! Its users are root and the agent's own user: the socket is 0600 from
//! the moment it exists, and `SO_PEERCRED` is checked too (refusals are
//! logged and counted). A request is one line of at most 64 KiB, read
//! within 5 s; at most 16 clients are served at once.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use ha_core::node::Command;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedReadHalf},
    sync::Semaphore,
};
use tracing::warn;

use super::{Shared, reload};
use crate::{
    agent::request::{self, ToLoop},
    paths,
    status::Status,
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
    /// The status, taken now.
    Status,
    /// On a primary: push the configuration to the secondary now (what
    /// `config_sync = "manual"` waits for).
    PushConfig,
    /// This node and its peer (asked over the cluster control channel).
    ClusterStatus,
}

/// The agent's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalResponse {
    pub ok: bool,
    pub message: String,
    /// The answer to [`LocalRequest::Status`].
    #[serde(default)]
    pub status: Option<Box<Status>>,
    /// The answer to [`LocalRequest::ClusterStatus`].
    #[serde(default)]
    pub cluster: Option<Box<crate::status::cluster::ClusterView>>,
}

impl LocalResponse {
    fn of(outcome: Result<String, String>) -> Self {
        match outcome {
            Ok(message) => LocalResponse {
                ok: true,
                message,
                status: None,
                cluster: None,
            },
            Err(message) => LocalResponse {
                ok: false,
                message,
                status: None,
                cluster: None,
            },
        }
    }
}

/// Sends a request to the running agent of `instance`.
pub async fn request(instance: &str, req: LocalRequest) -> anyhow::Result<LocalResponse> {
    let path = paths::socket(instance);
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

/// Limits of the operator socket: a local user who can reach it must not
/// tie up the control thread.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Longest request line.
    max_request: usize,
    /// Longest wait for the request line.
    read_timeout: Duration,
    /// Clients served at once; more are told so and closed.
    max_clients: usize,
}

const LIMITS: Limits = Limits {
    max_request: 64 << 10,
    read_timeout: Duration::from_secs(5),
    max_clients: 16,
};

/// Connections refused (peer not allowed, too many clients, oversized,
/// late or malformed requests), for the log.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Serves the operator socket until the thread stops; the socket file is
/// removed then.
pub(super) async fn serve(shared: Arc<Shared>, to_loop: ToLoop, key: Option<[u8; 32]>) {
    let path = paths::socket(&shared.instance);
    let listener = match bind_private(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(cause = %e, path = %path.display(), "control socket unavailable");
            return;
        }
    };
    let _remove = RemoveOnDrop(path);
    serve_on(listener, LIMITS, move |req| {
        let (shared, to_loop) = (shared.clone(), to_loop.clone());
        async move { answer(&shared, &to_loop, key, req).await }
    })
    .await;
}

/// Binds the socket at `path` with mode 0600 and no moment where it is
/// wider: it is bound in a fresh 0700 directory beside it, set to 0600
/// there, then renamed into place (the umask is process-wide, so it is not
/// touched).
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let dir = path.parent().unwrap_or(Path::new(paths::RUN_DIR));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let mut private = path.as_os_str().to_owned();
    private.push(".d");
    let private = PathBuf::from(private);
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let bound = (|| {
        let staged = private.join("sock");
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Root and the agent's own user may use the socket.
fn peer_allowed(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// The accept loop with its limits; `handle` answers a request.
async fn serve_on<F, Fut>(listener: UnixListener, limits: Limits, handle: F)
where
    F: Fn(LocalRequest) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = LocalResponse> + Send,
{
    let slots = Arc::new(Semaphore::new(limits.max_clients));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, most likely: wait instead of spinning.
                warn!(cause = %e, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let r = refused(format!(
                "refused: {} clients are being served, try again",
                limits.max_clients
            ));
            // Best effort and without waiting: the slots are the bound.
            if let Ok(mut bytes) = serde_json::to_vec(&r) {
                bytes.push(b'\n');
                let _ = stream.try_write(&bytes);
            }
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let uid = stream.peer_cred().map(|c| c.uid());
            let (rd, mut wr) = stream.into_split();
            // A refused peer's request is still read (bounded), so the
            // refusal reaches it instead of a connection reset.
            let request = read_request(rd, limits).await;
            let resp = match (uid, request) {
                (Ok(uid), _) if !peer_allowed(uid) => refused(format!(
                    "refused: uid {uid} may not use this socket (root or the agent's user only)"
                )),
                (Err(e), _) => refused(format!("refused: no peer credentials: {e}")),
                (Ok(_), Ok(req)) => handle(req).await,
                (Ok(_), Err(why)) => refused(why),
            };
            write_response(&mut wr, &resp).await;
        });
    }
}

fn refused(why: String) -> LocalResponse {
    let n = REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
    warn!(reason = %why, refused_total = n, "control socket: client refused");
    LocalResponse::of(Err(why))
}

/// Reads one request line of at most `limits.max_request` bytes within
/// `limits.read_timeout`.
async fn read_request(rd: OwnedReadHalf, limits: Limits) -> Result<LocalRequest, String> {
    let mut line = Vec::new();
    let mut bounded = BufReader::new(rd).take(limits.max_request as u64 + 1);
    match tokio::time::timeout(limits.read_timeout, bounded.read_until(b'\n', &mut line)).await {
        Err(_) => {
            return Err(format!(
                "refused: no request line within {:?}",
                limits.read_timeout
            ));
        }
        Ok(Err(e)) => return Err(format!("reading the request: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.len() > limits.max_request {
        return Err(format!(
            "refused: request longer than {} bytes",
            limits.max_request
        ));
    }
    serde_json::from_slice(&line).map_err(|e| format!("malformed request: {e}"))
}

async fn write_response(wr: &mut (impl AsyncWrite + Unpin), resp: &LocalResponse) {
    if let Ok(mut bytes) = serde_json::to_vec(resp) {
        bytes.push(b'\n');
        let _ = tokio::time::timeout(LIMITS.read_timeout, wr.write_all(&bytes)).await;
    }
}

/// Asks the pusher for a push now and waits (up to 45 s) for its outcome.
async fn push_config(shared: &Shared) -> Result<String, String> {
    let primary = super::lock(&shared.config)
        .cluster
        .as_ref()
        .is_some_and(|c| c.role == crate::config::ClusterRole::Primary);
    if !primary {
        return Err("not a primary: the configuration is pushed from the primary".into());
    }
    let want = super::config_sync::bundle(&super::lock(&shared.config))
        .map_err(|e| format!("{e:#}"))?
        .hash;
    // Pending from now on, so an earlier attempt's outcome is not taken for
    // this one's.
    {
        let mut s = super::lock(&shared.config_sync);
        s.state = "Pending".into();
        s.reason = Some("pushing, as `ha-agent cluster sync` asked".into());
        s.hash = Some(want.clone());
    }
    shared.request_push(want.clone());
    // Longer than the secondary's reload hook may run (30 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    loop {
        {
            let s = super::lock(&shared.config_sync);
            let ours = s.hash.as_deref() == Some(want.as_str());
            match s.state.as_str() {
                "Up to Date" if ours => {
                    return Ok(format!("configuration {want} is on the secondary"));
                }
                "Failed" if ours => {
                    return Err(format!(
                        "push of {want} failed: {} (retried every 3 s)",
                        s.reason.as_deref().unwrap_or("no reason given")
                    ));
                }
                _ => {}
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "push of {want} not acknowledged within 45 s (still retried; see `ha-agent status`)"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn answer(
    shared: &Shared,
    to_loop: &ToLoop,
    key: Option<[u8; 32]>,
    req: LocalRequest,
) -> LocalResponse {
    let command = |c| request::command(to_loop, c);
    match req {
        LocalRequest::Promote => LocalResponse::of(command(Command::Promote).await),
        LocalRequest::Demote => LocalResponse::of(command(Command::Demote).await),
        LocalRequest::Maintenance(on) => LocalResponse::of(command(Command::Maintenance(on)).await),
        LocalRequest::Resync => LocalResponse::of(command(Command::Resync).await),
        LocalRequest::Reload => LocalResponse::of(reload::reload(shared, false, to_loop).await),
        LocalRequest::PushConfig => LocalResponse::of(push_config(shared).await),
        LocalRequest::Status => match request::status(to_loop).await {
            Ok(status) => LocalResponse {
                ok: true,
                message: String::new(),
                status: Some(status),
                cluster: None,
            },
            Err(message) => LocalResponse::of(Err(message)),
        },
        LocalRequest::ClusterStatus => match super::cluster_view(shared, to_loop, key).await {
            Ok(view) => LocalResponse {
                ok: true,
                message: String::new(),
                status: None,
                cluster: Some(Box::new(view)),
            },
            Err(message) => LocalResponse::of(Err(message)),
        },
    }
}

/// Removes a file when dropped (the socket, when the server ends).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use tokio::io::AsyncReadExt as _;

    use super::*;

    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A socket served in a scratch directory with `limits`; every request
    /// is answered "pong".
    fn served(tag: &str, limits: Limits) -> (Scratch, PathBuf) {
        let dir = std::env::temp_dir().join(format!("ha-agent-local-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("fw.sock");
        let listener = bind_private(&path).unwrap();
        tokio::spawn(serve_on(listener, limits, |_| async {
            LocalResponse::of(Ok("pong".into()))
        }));
        (Scratch(dir), path)
    }

    async fn answer_of(s: &mut UnixStream) -> LocalResponse {
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut reply))
            .await
            .expect("an answer, then the connection closed")
            .unwrap();
        serde_json::from_slice(&reply).unwrap()
    }

    #[tokio::test]
    async fn the_socket_is_private_from_the_start_and_answers_root() {
        let (dir, path) = served("mode", LIMITS);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        let left: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
        assert_eq!(left.len(), 1, "the staging directory is gone: {left:?}");
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"\"Status\"\n").await.unwrap();
        let r = answer_of(&mut s).await;
        assert!(r.ok && r.message == "pong", "{r:?}");
    }

    /// Even with its mode widened by hand, another user is refused by
    /// SO_PEERCRED. The client thread alone changes its uid (the raw
    /// syscall is per thread, unlike glibc's setresuid).
    #[tokio::test]
    async fn other_users_are_refused_by_their_credentials() {
        let (_dir, path) = served("peercred", LIMITS);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let before = REFUSED.load(Ordering::Relaxed);
        let p = path.clone();
        let reply = tokio::task::spawn_blocking(move || {
            std::thread::spawn(move || {
                use std::io::{Read as _, Write as _};
                // SAFETY: changes this thread's credentials only.
                let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
                assert_eq!(rc, 0, "setresuid");
                let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
                let _ = s.write_all(b"\"Promote\"\n");
                let mut reply = String::new();
                s.read_to_string(&mut reply).unwrap();
                reply
            })
            .join()
            .unwrap()
        })
        .await
        .unwrap();
        let r: LocalResponse = serde_json::from_str(&reply).unwrap();
        assert!(
            !r.ok && r.message.contains("uid 65534 may not use this socket"),
            "{r:?}"
        );
        assert!(REFUSED.load(Ordering::Relaxed) > before);
    }

    #[tokio::test]
    async fn requests_are_bounded_in_size_time_and_number() {
        let limits = Limits {
            max_request: 1024,
            read_timeout: Duration::from_millis(300),
            max_clients: 2,
        };
        let (_dir, path) = served("limits", limits);
        // Too long: refused without waiting for an end of line.
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(&[b' '; 4096]).await.unwrap();
        let r = answer_of(&mut s).await;
        assert!(
            !r.ok && r.message.contains("longer than 1024 bytes"),
            "{r:?}"
        );
        // Silent: refused once the read timeout has passed.
        let mut s = UnixStream::connect(&path).await.unwrap();
        let r = answer_of(&mut s).await;
        assert!(
            !r.ok && r.message.contains("no request line within"),
            "{r:?}"
        );
        // Two idle clients hold the two slots: a third is told at once.
        let _a = UnixStream::connect(&path).await.unwrap();
        let _b = UnixStream::connect(&path).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut c = UnixStream::connect(&path).await.unwrap();
        let r = answer_of(&mut c).await;
        assert!(
            !r.ok && r.message.contains("2 clients are being served"),
            "{r:?}"
        );
    }
}
