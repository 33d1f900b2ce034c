//! Config sync: on a primary, the shared sections of the configuration and
//! the listed files go to the secondary whenever their hash changes, retried
//! until acknowledged ([`pusher`]) — or, with `config_sync = "manual"`,
//! when `ha-agent cluster sync` asks, the status saying Pending and what
//! differs meanwhile; on a secondary, what the primary pushed is written
//! and reloaded ([`apply_push`]).

use std::{
    ffi::{OsStr, OsString},
    net::SocketAddr,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use rustix::fs::{Mode, OFlags};
use tracing::{info, warn};

use super::{
    Shared,
    channel::{self, Bundle, Request, Response, SyncedFile},
    lock, reload,
};
use crate::{
    agent::request::ToLoop,
    config::{ClusterRole, Config, ConfigSyncMode, GroupConfig, SharedConfig},
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

/// The bundle a primary pushes. Its own `reload_hook` is not sent: a
/// secondary runs only the hook of its own configuration.
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
        reload_hook: None,
        hash,
    })
}

/// Why a secondary refuses a push (nothing is written then).
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("pushed configuration does not match its hash")]
    Hash,
    #[error("pushed configuration unreadable: {0}")]
    Unreadable(String),
    #[error("pushed configuration is invalid here: {0}")]
    Invalid(String),
    #[error(
        "pushed file {path:?} refused: {problem} (only plain names below files_root are written)"
    )]
    BadPath {
        path: PathBuf,
        problem: &'static str,
    },
    #[error(
        "pushed file {0} refused: not in this node's cluster.sync_files (a secondary writes only the files its own configuration lists; add it there and reload)"
    )]
    NotListed(PathBuf),
    #[error("pushed file {path} refused: {problem}")]
    Unsafe { path: PathBuf, problem: String },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reload failed: {0}")]
    Reload(String),
    #[error("reload hook `{hook}` {problem}")]
    Hook { hook: String, problem: String },
}

/// The components of a pushed path, each a plain name: absolute, no `..`,
/// `.`, empty component (`//`, a trailing `/`) or NUL. Checked on the raw
/// bytes, since [`Path::components`] silently drops `.` and empty ones.
fn plain_components(path: &Path) -> Result<Vec<&OsStr>, PushError> {
    use std::os::unix::ffi::OsStrExt as _;
    let bad = |problem| PushError::BadPath {
        path: path.to_owned(),
        problem,
    };
    let bytes = path.as_os_str().as_bytes();
    let Some(rest) = bytes.strip_prefix(b"/") else {
        return Err(bad("not an absolute path"));
    };
    let mut out = Vec::new();
    for c in rest.split(|b| *b == b'/') {
        match c {
            b"" => return Err(bad("empty path component")),
            b"." | b".." => return Err(bad("`.` or `..` component")),
            c if c.contains(&0) => return Err(bad("NUL in the path")),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

/// Opens the directories `dirs` below `root`, one at a time, never through
/// a symlink (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`);
/// missing ones are made (0755) when `create`, else `None` is returned.
fn open_dirs(
    root: BorrowedFd<'_>,
    dirs: &[&OsStr],
    create: bool,
    path: &Path,
) -> Result<Option<OwnedFd>, PushError> {
    use rustix::{fs::ResolveFlags, io::Errno};
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    // No O_NOFOLLOW: with O_DIRECTORY it turns a symlink into ENOTDIR;
    // RESOLVE_NO_SYMLINKS refuses it (ELOOP) and says why.
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let io = |source: Errno| PushError::Io {
        path: path.to_owned(),
        source: source.into(),
    };
    let mut cur = rustix::fs::openat2(root, ".", flags, Mode::empty(), resolve).map_err(io)?;
    for d in dirs {
        let mut opened = rustix::fs::openat2(&cur, *d, flags, Mode::empty(), resolve);
        if matches!(opened, Err(Errno::NOENT)) {
            if !create {
                return Ok(None);
            }
            match rustix::fs::mkdirat(&cur, *d, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(io(e)),
            }
            opened = rustix::fs::openat2(&cur, *d, flags, Mode::empty(), resolve);
        }
        cur = match opened {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::XDEV) => {
                return Err(PushError::Unsafe {
                    path: path.to_owned(),
                    problem: format!(
                        "{} is a symlink on the way (symlinks are never followed)",
                        d.display()
                    ),
                });
            }
            Err(Errno::NOTDIR) => {
                return Err(PushError::Unsafe {
                    path: path.to_owned(),
                    problem: format!("{} on the way is not a directory", d.display()),
                });
            }
            Err(e) => return Err(io(e)),
        };
    }
    Ok(Some(cur))
}

/// What is at the place of a synced file now: content, mode, owner.
struct Existing {
    content: Vec<u8>,
    mode: u32,
    owner: (u32, u32),
}

fn existing(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
) -> Result<Option<Existing>, PushError> {
    use std::io::Read as _;

    use rustix::{
        fs::{AtFlags, FileType, ResolveFlags},
        io::Errno,
    };
    let io = |source: Errno| PushError::Io {
        path: path.to_owned(),
        source: source.into(),
    };
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let problem = match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => None,
        FileType::Symlink => Some("it is a symlink here (symlinks are never followed)"),
        _ => Some("it is not a regular file here"),
    };
    if let Some(problem) = problem {
        return Err(PushError::Unsafe {
            path: path.to_owned(),
            problem: problem.into(),
        });
    }
    let fd = rustix::fs::openat2(
        parent,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
    .map_err(io)?;
    let mut content = Vec::new();
    std::fs::File::from(fd)
        .read_to_end(&mut content)
        .map_err(|source| PushError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(Some(Existing {
        content,
        mode: st.st_mode & 0o7777,
        owner: (st.st_uid, st.st_gid),
    }))
}

/// Writes the pushed `files` below `root`, confined: each must be one of
/// this node's own `listed` sync files and made of plain names; nothing on
/// the way may be a symlink; setuid, setgid and sticky bits are dropped;
/// a replaced file keeps its owner and group (a new one: root). Every file
/// is checked before any is written. Returns whether any file changed.
pub(crate) fn write_synced_files(
    root: &Path,
    listed: &[PathBuf],
    files: &[SyncedFile],
) -> Result<bool, PushError> {
    let mut plans = Vec::new();
    for f in files {
        let comps = plain_components(&f.path)?;
        if !listed.iter().any(|l| l.as_os_str() == f.path.as_os_str()) {
            return Err(PushError::NotListed(f.path.clone()));
        }
        plans.push((f, comps));
    }
    if plans.is_empty() {
        return Ok(false);
    }
    // The root comes from this node's own configuration: made if missing.
    std::fs::create_dir_all(root).map_err(|source| PushError::Io {
        path: root.to_owned(),
        source,
    })?;
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| PushError::Io {
        path: root.to_owned(),
        source: e.into(),
    })?;
    // First every check, then the writes.
    let mut todo = Vec::new();
    for (f, comps) in &plans {
        let Some((name, dirs)) = comps.split_last() else {
            return Err(PushError::BadPath {
                path: f.path.clone(),
                problem: "no file name",
            });
        };
        let now = match open_dirs(root_fd.as_fd(), dirs, false, &f.path)? {
            Some(parent) => existing(parent.as_fd(), name, &f.path)?,
            None => None,
        };
        let mode = f.mode & 0o777;
        if now
            .as_ref()
            .is_some_and(|e| e.content == f.content && e.mode == mode)
        {
            continue;
        }
        if f.mode & !0o777 != 0 {
            warn!(path = %f.path.display(), mode = format!("{:o}", f.mode), "pushed file: setuid, setgid and sticky bits dropped");
        }
        todo.push((*f, dirs, *name, mode, now.map_or((0, 0), |e| e.owner)));
    }
    for (f, dirs, name, mode, owner) in &todo {
        let parent = open_dirs(root_fd.as_fd(), dirs, true, &f.path)?
            .expect("open_dirs creates what is missing");
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(".ha-agent.tmp");
        paths::write_in_dir(parent.as_fd(), name, &tmp, &f.content, *mode, Some(*owner)).map_err(
            |source| PushError::Io {
                path: f.path.clone(),
                source,
            },
        )?;
    }
    Ok(!todo.is_empty())
}

/// The primary's groups as this node runs them: the commands (`notify`,
/// `services`) and their timeout stay this node's own for a group it
/// already has, and a new group gets none, so a holder of the cluster key
/// cannot make the secondary run anything. Also returns the new groups
/// whose commands were not taken.
pub(crate) fn merge_groups(
    own: &[GroupConfig],
    pushed: Vec<GroupConfig>,
) -> (Vec<GroupConfig>, Vec<String>) {
    let mut dropped = Vec::new();
    let groups = pushed
        .into_iter()
        .map(|mut g| {
            // The node's own hooks and the interfaces it takes down are
            // its own to decide (names differ between nodes, and the
            // primary must not decide which of the secondary's links go
            // down).
            if let Some(o) = own.iter().find(|o| o.name == g.name) {
                g.notify = o.notify.clone();
                g.services = o.services.clone();
                g.hook_timeout_ms = o.hook_timeout_ms;
                g.role_interfaces = o.role_interfaces.clone();
            } else {
                if g.notify.is_some() || !g.services.is_empty() || !g.role_interfaces.is_empty() {
                    dropped.push(g.name.clone());
                }
                g.notify = None;
                g.services.clear();
                g.role_interfaces.clear();
            }
            g
        })
        .collect();
    (groups, dropped)
}

/// The shared sections without the commands (what the primary decides).
pub(crate) fn without_commands(mut shared: SharedConfig) -> SharedConfig {
    for g in &mut shared.groups {
        g.notify = None;
        g.services.clear();
        g.hook_timeout_ms = 0;
        g.role_interfaces.clear();
    }
    shared
}

/// Hash of the files alone: their hook must run again while it differs
/// from the last push applied in full.
fn files_hash(files: &[SyncedFile]) -> String {
    bundle_hash("", files)
}

/// The last push applied in full (persisted, [`StateFile::SyncApplied`]):
/// its bundle hash and files hash.
fn last_applied(config_path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(StateFile::SyncApplied.path(config_path)).ok()?;
    let (hash, files) = text.trim().split_once(' ')?;
    Some((hash.to_owned(), files.to_owned()))
}

/// A secondary applies what the primary pushed: files (confined, atomic),
/// the shared sections into its configuration file, the reload, then its
/// own reload hook.
pub(super) async fn apply_push(shared: &Shared, bundle: Bundle, to_loop: &ToLoop) -> Response {
    apply_with(shared, bundle, async |shared: &Shared| {
        reload::reload(shared, true, to_loop).await.map(|_| ())
    })
    .await
}

/// [`apply_push`] with the reload passed in (tests give their own).
async fn apply_with(
    shared: &Shared,
    bundle: Bundle,
    reload: impl AsyncFnOnce(&Shared) -> Result<(), String>,
) -> Response {
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
    let hash = bundle.hash.clone();
    match apply_checked(shared, bundle, &files_root, reload).await {
        Ok(()) => {
            let mut s = lock(&shared.config_sync);
            *s = ConfigSyncStatus {
                state: "Up to Date".into(),
                reason: None,
                hash: Some(hash.clone()),
                synced_unix_ms: Some(unix_ms(SystemTime::now())),
                refused_total: s.refused_total,
                control_served: s.control_served,
                control_refused: std::mem::take(&mut s.control_refused),
            };
            Response::Done { hash }
        }
        Err(e) => {
            let reason = e.to_string();
            warn!(%reason, "configuration push refused");
            let mut s = lock(&shared.config_sync);
            s.state = "Failed".into();
            s.reason = Some(reason.clone());
            s.refused_total += 1;
            Response::Refused(reason)
        }
    }
}

async fn apply_checked(
    shared: &Shared,
    bundle: Bundle,
    files_root: &Path,
    reload: impl AsyncFnOnce(&Shared) -> Result<(), String>,
) -> Result<(), PushError> {
    if bundle_hash(&bundle.shared, &bundle.files) != bundle.hash {
        return Err(PushError::Hash);
    }
    // `bundle.reload_hook` is ignored: commands come from this node's own
    // configuration only.
    let last = last_applied(&shared.config_path);
    if last.as_ref().is_some_and(|(h, _)| *h == bundle.hash) {
        return Ok(());
    }
    let shared_cfg: SharedConfig =
        toml::from_str(&bundle.shared).map_err(|e| PushError::Unreadable(e.to_string()))?;
    // The new file: ours, with the primary's shared sections (and our own
    // commands); validated before anything is written.
    let mut next = lock(&shared.config).clone();
    let (groups, dropped) = merge_groups(&next.groups, shared_cfg.groups);
    if !dropped.is_empty() {
        warn!(groups = ?dropped, "the primary's notify/services of new groups are not taken: commands on this node come from its own configuration only (add them to these groups here, then restart the agent)");
    }
    next.groups = groups;
    next.data_interfaces = shared_cfg.data_interfaces;
    let text = toml::to_string(&next).map_err(|e| PushError::Invalid(e.to_string()))?;
    Config::parse(&text, &shared.config_path).map_err(|e| PushError::Invalid(e.to_string()))?;
    let listed = next
        .cluster
        .as_ref()
        .map(|c| c.sync_files.clone())
        .unwrap_or_default();
    let files_changed = write_synced_files(files_root, &listed, &bundle.files)?;
    let write = |path: &Path, bytes: &[u8]| {
        paths::write_atomically(path, bytes, 0o600).map_err(|source| PushError::Io {
            path: path.to_owned(),
            source,
        })
    };
    write(&shared.config_path, text.as_bytes())?;
    let synced = StateFile::SyncedShared.path(&shared.config_path);
    write(&synced, next.shared_text().as_bytes())?;
    reload(shared).await.map_err(PushError::Reload)?;
    // The hook runs when files changed, and again on every push until it
    // has succeeded for these files (a failed one is not recorded).
    let files_hash = files_hash(&bundle.files);
    let hook_due = !bundle.files.is_empty()
        && (files_changed || last.as_ref().map(|(_, f)| f) != Some(&files_hash));
    let hook = next.cluster.as_ref().and_then(|c| c.reload_hook.clone());
    if hook_due && let Some(hook) = hook {
        run_hook(&hook).await?;
    }
    write(
        &StateFile::SyncApplied.path(&shared.config_path),
        format!("{} {files_hash}\n", bundle.hash).as_bytes(),
    )?;
    info!(hash = %bundle.hash, files = bundle.files.len(), "configuration synced from the primary");
    Ok(())
}

/// Runs this node's own reload hook (`sh -c`, from its own configuration,
/// never from the wire) in a process group of its own, killed whole after
/// 30 s.
async fn run_hook(hook: &str) -> Result<(), PushError> {
    let failed = |problem: String| PushError::Hook {
        hook: hook.to_owned(),
        problem,
    };
    let child = tokio::process::Command::new("sh")
        .args(["-c", hook])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("did not start: {e}")))?;
    let pgid = child.id();
    match tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await {
        Ok(Ok(o)) if o.status.success() => {
            info!(%hook, "reload hook ran");
            Ok(())
        }
        Ok(Ok(o)) => Err(failed(format!(
            "failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Ok(Err(e)) => Err(failed(format!("{e}"))),
        Err(_) => {
            if let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: signals the hook's own process group only.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            Err(failed(
                "timed out (30 s): its process group was killed".into(),
            ))
        }
    }
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
    // What the secondary last acknowledged, to say what a pending change is.
    let mut acked_bundle: Option<Bundle> = None;
    let mut push_owed: Option<String> = None;
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
        let manual = config
            .cluster
            .as_ref()
            .is_some_and(|c| c.config_sync == ConfigSyncMode::Manual);
        // Asked for (manual mode), for the configuration in force when it
        // was asked: owed until the secondary acknowledges it (retried like
        // an automatic push); a later change waits for its own request.
        if let Some(h) = lock(&shared.push_requested).take() {
            push_owed = Some(h);
        }
        if primary && let Some(peer) = peer {
            let port = config.cluster.as_ref().map_or(7789, |c| c.control_port);
            match bundle(&config) {
                Err(e) => set_sync(&shared, "Failed", Some(e.to_string()), None),
                Ok(b) if acked.as_deref() == Some(b.hash.as_str()) => {
                    if push_owed.take().is_some() {
                        info!(hash = %b.hash, "config sync asked for: the secondary already has this configuration");
                    }
                    // Back to what the secondary has (a change reverted):
                    // the status says so, not the change's Pending or Failed.
                    let mut s = lock(&shared.config_sync);
                    if s.state != "Up to Date" || s.hash.as_deref() != Some(b.hash.as_str()) {
                        s.state = "Up to Date".into();
                        s.reason = None;
                        s.hash = Some(b.hash.clone());
                    }
                }
                Ok(b) if manual && push_owed.as_deref() != Some(b.hash.as_str()) => {
                    let what = pending_changes(acked_bundle.as_ref(), &b);
                    let what = if push_owed.is_some() {
                        format!("{what} (since `cluster sync` was asked: ask again)")
                    } else {
                        what
                    };
                    set_sync(
                        &shared,
                        "Pending",
                        Some(format!(
                            "manual config sync: {what}; `ha-agent cluster sync` pushes it"
                        )),
                        Some(b.hash.clone()),
                    );
                }
                Ok(b) => {
                    set_sync(&shared, "Pending", None, Some(b.hash.clone()));
                    let hash = b.hash.clone();
                    let sent = b.clone();
                    match push(SocketAddr::from((peer, port)), b).await {
                        Ok(Response::Done { hash: h }) if h == hash => {
                            info!(%hash, "configuration synced to the secondary");
                            acked = Some(hash.clone());
                            acked_bundle = Some(sent);
                            push_owed = None;
                            let mut s = lock(&shared.config_sync);
                            *s = ConfigSyncStatus {
                                state: "Up to Date".into(),
                                reason: None,
                                hash: Some(hash),
                                synced_unix_ms: Some(unix_ms(SystemTime::now())),
                                refused_total: s.refused_total,
                                control_served: s.control_served,
                                control_refused: std::mem::take(&mut s.control_refused),
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

/// What differs between what the secondary acknowledged (`None`: nothing
/// since this agent started) and `now`, in a few words.
fn pending_changes(acked: Option<&Bundle>, now: &Bundle) -> String {
    let Some(old) = acked else {
        return "not pushed since this agent started".into();
    };
    let mut what = Vec::new();
    if old.shared != now.shared {
        what.push("the shared configuration (groups, VIPs, data interfaces)".to_owned());
    }
    if old.reload_hook != now.reload_hook {
        what.push("the reload hook".to_owned());
    }
    for f in &now.files {
        match old.files.iter().find(|o| o.path == f.path) {
            None => what.push(format!("{} added", f.path.display())),
            Some(o) if o != f => what.push(format!("{} changed", f.path.display())),
            Some(_) => {}
        }
    }
    for o in &old.files {
        if !now.files.iter().any(|f| f.path == o.path) {
            what.push(format!("{} removed", o.path.display()));
        }
    }
    if what.is_empty() {
        "changed".into()
    } else {
        format!("changed: {}", what.join(", "))
    }
}

fn set_sync(shared: &Shared, state: &str, reason: Option<String>, hash: Option<String>) {
    let mut s = lock(&shared.config_sync);
    if s.state != state {
        let why = reason.as_deref().unwrap_or("");
        if state == "Failed" {
            warn!(
                event = "config_sync",
                state,
                reason = why,
                "config sync: {state}"
            );
        } else {
            info!(
                event = "config_sync",
                state,
                reason = why,
                "config sync: {state}"
            );
        }
    }
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

    use std::os::unix::ffi::OsStringExt as _;

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
            push_requested: Default::default(),
        })
    }

    /// `config_sync = "manual"`: nothing goes until asked; the status says
    /// Pending and what differs from what the secondary has.
    #[tokio::test(start_paused = true)]
    async fn a_manual_primary_pushes_only_when_asked_and_says_what_waits() {
        let shared = primary();
        lock(&shared.config).cluster.as_mut().unwrap().config_sync = ConfigSyncMode::Manual;
        let tries = Arc::new(AtomicU32::new(0));
        let task = tokio::spawn({
            let (shared, tries) = (shared.clone(), tries.clone());
            push_loop(shared, move |_, b| {
                let tries = tries.clone();
                async move {
                    tries.fetch_add(1, Ordering::SeqCst);
                    Ok(Response::Done { hash: b.hash })
                }
            })
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(tries.load(Ordering::SeqCst), 0, "not asked: not pushed");
        {
            let s = lock(&shared.config_sync);
            assert_eq!(s.state, "Pending");
            assert!(
                s.reason
                    .as_deref()
                    .is_some_and(|r| r.contains("not pushed since") && r.contains("cluster sync")),
                "{s:?}"
            );
        }
        // `ha-agent cluster sync`.
        shared.request_push(bundle(&lock(&shared.config)).unwrap().hash);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(tries.load(Ordering::SeqCst), 1);
        assert_eq!(lock(&shared.config_sync).state, "Up to Date");
        // A change waits, and the status says what it is.
        lock(&shared.config).groups[0].instances[0].vips[0].address = "10.0.0.2/24".into();
        shared.changed.notify_one();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(tries.load(Ordering::SeqCst), 1, "the change waits");
        {
            let s = lock(&shared.config_sync);
            assert_eq!(s.state, "Pending");
            assert!(
                s.reason
                    .as_deref()
                    .is_some_and(|r| r.contains("the shared configuration")),
                "{s:?}"
            );
        }
        shared.request_push(bundle(&lock(&shared.config)).unwrap().hash);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(tries.load(Ordering::SeqCst), 2);
        assert_eq!(lock(&shared.config_sync).state, "Up to Date");
        // A change reverted: up to date again, without a push.
        lock(&shared.config).groups[0].instances[0].vips[0].address = "10.0.0.3/24".into();
        shared.changed.notify_one();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(lock(&shared.config_sync).state, "Pending");
        lock(&shared.config).groups[0].instances[0].vips[0].address = "10.0.0.2/24".into();
        shared.changed.notify_one();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(lock(&shared.config_sync).state, "Up to Date");
        assert_eq!(tries.load(Ordering::SeqCst), 2);
        // A request is for the configuration it was made for: a change
        // made after it waits for its own.
        *lock(&shared.push_requested) = Some("an older hash".into());
        lock(&shared.config).groups[0].instances[0].vips[0].address = "10.0.0.4/24".into();
        shared.changed.notify_one();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(tries.load(Ordering::SeqCst), 2, "not the change asked for");
        assert!(
            lock(&shared.config_sync)
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("ask again")),
            "{:?}",
            lock(&shared.config_sync)
        );
        task.abort();
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

    /// A scratch directory for one test (removed at the end).
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d = std::env::temp_dir().join(format!("ha-agent-cs-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(d.join("root")).unwrap();
            Scratch(d)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn file(path: &str, content: &[u8], mode: u32) -> SyncedFile {
        SyncedFile {
            path: path.into(),
            content: content.to_vec(),
            mode,
        }
    }

    fn meta(p: &Path) -> (u32, u32, u32) {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.mode() & 0o7777, m.uid(), m.gid())
    }

    #[test]
    fn pushed_paths_are_confined_to_the_listed_files() {
        let t = Scratch::new("confine");
        let root = t.0.join("root");
        let listed: Vec<PathBuf> = [
            "/etc/app.conf",
            "/etc/sub/x.conf",
            "/etc/../escape",
            "/etc//app.conf",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        let push = |files: &[SyncedFile]| write_synced_files(&root, &listed, files);

        // Traversal, even of a listed path; `.`, empty components, NUL.
        for bad in [
            "/../../escape",
            "/etc/../escape",
            "/etc//app.conf",
            "/etc/./app.conf",
            "etc/app.conf",
            "/etc/app.conf/",
        ] {
            let e = push(&[file(bad, b"x", 0o644)]).unwrap_err();
            assert!(matches!(e, PushError::BadPath { .. }), "{bad}: {e}");
        }
        let nul = PathBuf::from(std::ffi::OsString::from_vec(b"/etc/a\0b".to_vec()));
        let e = write_synced_files(
            &root,
            std::slice::from_ref(&nul),
            &[SyncedFile {
                path: nul.clone(),
                content: vec![],
                mode: 0o644,
            }],
        )
        .unwrap_err();
        assert!(e.to_string().contains("NUL"), "{e}");
        assert!(!t.0.join("escape").exists() && !root.join("escape").exists());

        // Not one of this node's sync files.
        let e = push(&[file("/etc/cron.d/x", b"* * * * * root sh", 0o644)]).unwrap_err();
        assert!(matches!(e, PushError::NotListed(_)), "{e}");
        assert!(
            e.to_string()
                .contains("not in this node's cluster.sync_files"),
            "{e}"
        );
        assert!(!root.join("etc").exists(), "nothing written");

        // An absolute symlink on the way.
        let outside = t.0.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/sub")).unwrap();
        let e = push(&[file("/etc/sub/x.conf", b"x", 0o644)]).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(!outside.join("x.conf").exists());

        // A symlink as the file itself.
        let victim = t.0.join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        std::os::unix::fs::symlink(&victim, root.join("etc/app.conf")).unwrap();
        let e = push(&[file("/etc/app.conf", b"x", 0o644)]).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        std::fs::remove_file(root.join("etc/app.conf")).unwrap();

        // All or nothing: a bad file refuses the good one too.
        std::fs::remove_file(root.join("etc/sub")).unwrap();
        let e = push(&[
            file("/etc/app.conf", b"good", 0o644),
            file("/etc/nope", b"x", 0o644),
        ])
        .unwrap_err();
        assert!(matches!(e, PushError::NotListed(_)), "{e}");
        assert!(!root.join("etc/app.conf").exists());

        // setuid, setgid and sticky dropped; a new file is root's; missing
        // directories are made.
        assert!(
            push(&[
                file("/etc/app.conf", b"v1", 0o6755),
                file("/etc/sub/x.conf", b"x", 0o1644)
            ])
            .unwrap()
        );
        assert_eq!(meta(&root.join("etc/app.conf")), (0o755, 0, 0));
        assert_eq!(meta(&root.join("etc/sub/x.conf")).0, 0o644);
        assert!(
            !push(&[file("/etc/app.conf", b"v1", 0o6755)]).unwrap(),
            "unchanged"
        );

        // A replaced file keeps its owner and group.
        std::os::unix::fs::chown(root.join("etc/app.conf"), Some(1234), Some(5678)).unwrap();
        assert!(push(&[file("/etc/app.conf", b"v2", 0o640)]).unwrap());
        assert_eq!(meta(&root.join("etc/app.conf")), (0o640, 1234, 5678));
        assert_eq!(std::fs::read(root.join("etc/app.conf")).unwrap(), b"v2");
        let leftovers: Vec<_> = std::fs::read_dir(root.join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    /// A secondary in `t` with its own sync file, reload hook and notify.
    fn secondary(t: &Scratch, hook: &str) -> Arc<Shared> {
        let config_path = t.0.join("config.toml");
        let text = crate::config::TEST_CONFIG
            .replace(
                "[[group]]",
                &format!(
                    "[cluster]\nrole = \"secondary\"\nprimary = \"10.255.0.2\"\nsync_files = [\"/etc/app.conf\"]\nreload_hook = {hook:?}\nfiles_root = {:?}\n\n[[group]]",
                    t.0.join("root").display().to_string()
                ),
            )
            .replace("name = \"fw\"", "name = \"fw\"\nnotify = \"/usr/local/bin/own-notify\"");
        std::fs::write(&config_path, &text).unwrap();
        let config = Config::parse(&text, &config_path).unwrap();
        Arc::new(Shared {
            instance: "fw".into(),
            config_path,
            config: Mutex::new(config),
            config_sync: Arc::new(Mutex::new(ConfigSyncStatus::default())),
            changed: tokio::sync::Notify::new(),
            push_requested: Default::default(),
        })
    }

    /// The primary's bundle: its groups (with commands of its own and a new
    /// group), a file, and a reload hook of its own.
    fn primary_bundle(t: &Scratch, files: Vec<SyncedFile>) -> Bundle {
        let mut c = Config::parse(crate::config::TEST_CONFIG, Path::new("/p.toml")).unwrap();
        c.groups[0].notify = Some(t.0.join("evil-notify"));
        c.groups[0].services = vec![crate::config::Service {
            name: "evil".into(),
            start: Some(vec![
                "touch".into(),
                t.0.join("evil-start").display().to_string(),
            ]),
            stop: None,
        }];
        let mut extra = c.groups[0].clone();
        extra.name = "extra".into();
        extra.instances[0].vrid = 52;
        extra.instances[0].name = "VI_2".into();
        // A VIP of its own (an address appears once in a configuration).
        for v in &mut extra.instances[0].vips {
            v.address = v.address.replace("10.0.0.", "10.0.9.");
        }
        c.groups.push(extra);
        let shared = c.shared_text();
        let hash = bundle_hash(&shared, &files);
        Bundle {
            shared,
            files,
            reload_hook: Some(format!("touch {}", t.0.join("evil-hook").display())),
            hash,
        }
    }

    /// Stands in for the agent's reload: the file is read back as a reload
    /// would.
    async fn fake_reload(shared: &Shared) -> Result<(), String> {
        let c = Config::load(&shared.config_path).map_err(|e| e.to_string())?;
        *lock(&shared.config) = c;
        Ok(())
    }

    #[tokio::test]
    async fn the_secondary_runs_only_its_own_commands() {
        let t = Scratch::new("commands");
        let own_hook = t.0.join("own-hook");
        let shared = secondary(&t, &format!("touch {}", own_hook.display()));
        let b = primary_bundle(&t, vec![file("/etc/app.conf", b"v1", 0o644)]);
        let r = apply_with(&shared, b, fake_reload).await;
        assert!(matches!(r, Response::Done { .. }), "{r:?}");
        assert!(own_hook.exists(), "the secondary's own hook ran");
        assert!(
            !t.0.join("evil-hook").exists(),
            "the pushed hook never runs"
        );
        let c = Config::load(&shared.config_path).unwrap();
        assert_eq!(c.groups.len(), 2);
        let fw = &c.groups[0];
        assert_eq!(
            fw.notify.as_deref(),
            Some(Path::new("/usr/local/bin/own-notify"))
        );
        assert!(fw.services.is_empty(), "{fw:?}");
        let extra = &c.groups[1];
        assert_eq!((extra.notify.as_ref(), extra.services.len()), (None, 0));
        // The commands are ours, the rest is the primary's.
        let (merged, dropped) = merge_groups(&c.groups[..1], c.groups.clone());
        assert_eq!((merged, dropped), (c.groups.clone(), vec![]));
    }

    #[tokio::test]
    async fn a_traversal_push_is_refused_counted_and_writes_nothing() {
        let t = Scratch::new("refused");
        let shared = secondary(&t, "true");
        let before = std::fs::read_to_string(&shared.config_path).unwrap();
        let b = primary_bundle(
            &t,
            vec![file("/../../etc/cron.d/x", b"* * * * * root sh", 0o4755)],
        );
        let r = apply_with(&shared, b, fake_reload).await;
        let Response::Refused(reason) = r else {
            panic!("{r:?}")
        };
        assert!(reason.contains("/../../etc/cron.d/x"), "{reason}");
        let s = lock(&shared.config_sync).clone();
        assert_eq!((s.state.as_str(), s.refused_total), ("Failed", 1));
        assert_eq!(s.reason.as_deref(), Some(reason.as_str()));
        assert_eq!(
            std::fs::read_to_string(&shared.config_path).unwrap(),
            before
        );
        assert!(!t.0.join("etc").exists() && !t.0.join("root/etc").exists());
    }

    /// The old code skipped the hook on the retry (the files were already
    /// written) and reported "Up to Date" although the hook never succeeded.
    #[tokio::test]
    async fn a_failed_reload_hook_runs_again_until_it_succeeds() {
        let t = Scratch::new("retry");
        let (runs, flag) = (t.0.join("runs"), t.0.join("flag"));
        let hook = format!(
            "echo run >> {r}; test -e {f} || {{ touch {f}; exit 1; }}",
            r = runs.display(),
            f = flag.display()
        );
        let shared = secondary(&t, &hook);
        let b = primary_bundle(&t, vec![file("/etc/app.conf", b"v1", 0o644)]);
        let count = || {
            std::fs::read_to_string(&runs)
                .unwrap_or_default()
                .lines()
                .count()
        };

        let r = apply_with(&shared, b.clone(), fake_reload).await;
        assert!(
            matches!(&r, Response::Refused(m) if m.contains("reload hook")),
            "{r:?}"
        );
        assert_eq!(lock(&shared.config_sync).state, "Failed");
        assert_eq!(count(), 1);

        // The retry: files unchanged, the hook runs again and succeeds.
        let r = apply_with(&shared, b.clone(), fake_reload).await;
        assert!(matches!(r, Response::Done { .. }), "{r:?}");
        assert_eq!(count(), 2);
        assert_eq!(lock(&shared.config_sync).state, "Up to Date");

        // Applied in full and recorded: not again, even after a restart.
        let r = apply_with(&shared, b.clone(), fake_reload).await;
        assert!(matches!(r, Response::Done { .. }), "{r:?}");
        let restarted = secondary(&t, &hook);
        let r = apply_with(&restarted, b, fake_reload).await;
        assert!(matches!(r, Response::Done { .. }), "{r:?}");
        assert_eq!(lock(&restarted.config_sync).state, "Up to Date");
        assert_eq!(count(), 2);
    }
}
