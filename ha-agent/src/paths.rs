//! Every file the agent keeps outside its configuration, named once.
//!
//! Run files live in [`RUN_DIR`] while the agent runs (status, operator
//! socket); state that survives restarts lives next to the configuration
//! file ([`StateFile`]).

use std::{
    ffi::OsStr,
    io,
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use rustix::fs::{AtFlags, Gid, Mode, OFlags, Uid};

/// Directory of run files.
pub const RUN_DIR: &str = "/run/ha-agent";

/// The status file of an instance (written by the agent, read by `status`
/// and the metrics endpoint).
pub fn status_file(instance: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{instance}.json"))
}

/// The operator socket of an instance.
pub fn socket(instance: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{instance}.sock"))
}

/// Which build of the XDP object the instance's pinned data plane is (the
/// SHA-256 of the embedded object, in hex): an agent of another build
/// replaces the pins instead of re-opening them. In [`RUN_DIR`]: bpffs
/// holds no plain files, and both are gone after a reboot.
pub fn object_stamp(instance: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(format!("{instance}.object"))
}

/// Every run file an instance may leave in [`RUN_DIR`] (a killed agent does
/// not remove its own): the status file, its temporary twin, the socket.
pub fn run_files(instance: &str) -> [PathBuf; 3] {
    let status = status_file(instance);
    [temp_twin(&status), status, socket(instance)]
}

/// State a node keeps next to its configuration file, across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFile {
    /// `maintenance on` was given (persistent demotion).
    Maintenance,
    /// On a secondary: the shared sections as last received from the
    /// primary (at the join or by a push). A hand-edited reload must leave
    /// them as they are.
    SyncedShared,
    /// The one-time join token of a node waiting to be joined.
    JoinToken,
    /// The cluster key (state sync, the control channel).
    ClusterKey,
    /// The state-sync epoch counter (grows at every start).
    SyncEpoch,
    /// On a secondary: the hash of the last push applied in full (files,
    /// configuration, reload and hook all succeeded). A push whose hook
    /// failed is not recorded, so its retry runs the hook again.
    SyncApplied,
    /// Advert authentication: the sequence floor our next adverts start
    /// above, and the highest sequence accepted from each sender.
    AdvertAuth,
    /// The fast heartbeat: a ceiling of the ownership terms this node has
    /// used (reserved ahead), so a term is never reused after a reboot
    /// (which empties the reflector's map).
    HeartbeatTerm,
}

impl StateFile {
    /// The file's name.
    pub const fn name(self) -> &'static str {
        match self {
            StateFile::Maintenance => "maintenance",
            StateFile::SyncedShared => "synced.toml",
            StateFile::JoinToken => "join.token",
            StateFile::ClusterKey => "sync.key",
            StateFile::SyncEpoch => "sync.epoch",
            StateFile::SyncApplied => "synced.applied",
            StateFile::AdvertAuth => "adverts.seq",
            StateFile::HeartbeatTerm => "heartbeat.term",
        }
    }

    /// Where it is for the configuration at `config_path`.
    pub fn path(self, config_path: &Path) -> PathBuf {
        config_path
            .parent()
            .unwrap_or(Path::new("/etc/ha-agent"))
            .join(self.name())
    }
}

/// The temporary file [`write_atomically`] renames into `path`.
fn temp_twin(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically with `mode`; creates the directory
/// if needed. Used for secrets (the cluster key, the join token) and the
/// configuration, so: the temporary file is created with its final mode
/// (never 0666-minus-umask first), `O_EXCL|O_NOFOLLOW` after a stale one is
/// removed (a symlink planted there is not followed, and nobody who opened
/// a stale temporary file sees the new bytes), fsynced, renamed over `path`
/// (a symlink at `path` is replaced, not followed), and the directory is
/// fsynced so the rename survives a crash.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: no file name", path.display()),
        )
    })?;
    let dirfd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let tmp = temp_twin(path);
    let tmp = tmp.file_name().unwrap_or(name);
    write_in_dir(dirfd.as_fd(), name, tmp, bytes, mode, None)
}

/// The atomic write itself, in the open directory `dir`: `name` is replaced
/// by a new file made as `tmp` with `bytes`, exactly `mode` and, when given,
/// `owner` (uid, gid). Neither name is resolved through a symlink.
pub fn write_in_dir(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    tmp: &OsStr,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    use std::io::Write as _;
    match rustix::fs::unlinkat(dir, tmp, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = rustix::fs::openat(
        dir,
        tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode & 0o777),
    )?;
    let written = (|| -> io::Result<()> {
        // The umask may have taken bits off: set exactly `mode`, before the
        // owner changes (after it, only CAP_FOWNER could).
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
        let mut file = std::fs::File::from(fd);
        file.write_all(bytes)?;
        if let Some((uid, gid)) = owner {
            rustix::fs::fchown(&file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
        }
        file.sync_all()?;
        rustix::fs::renameat(dir, tmp, dir, name)?;
        rustix::fs::fsync(dir)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp, AtFlags::empty());
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_sit_next_to_the_configuration() {
        let c = Path::new("/etc/ha-agent/config.toml");
        assert_eq!(
            StateFile::SyncedShared.path(c),
            Path::new("/etc/ha-agent/synced.toml")
        );
        assert_eq!(
            StateFile::Maintenance.path(c),
            Path::new("/etc/ha-agent/maintenance")
        );
    }

    #[test]
    fn run_files_cover_the_temporary_status() {
        let files = run_files("fw");
        assert!(files.contains(&PathBuf::from("/run/ha-agent/fw.json")));
        assert!(files.contains(&PathBuf::from("/run/ha-agent/fw.json.tmp")));
        assert!(files.contains(&PathBuf::from("/run/ha-agent/fw.sock")));
    }

    #[test]
    fn atomic_writes_leave_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("ha-agent-paths-{}", std::process::id()));
        let f = dir.join("x.json");
        write_atomically(&f, b"one", 0o640).unwrap();
        write_atomically(&f, b"two", 0o640).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert!(!temp_twin(&f).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ha-agent-paths-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mode_of(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// A symlink planted at the temporary path is not followed (the old
    /// code wrote the secret through it), and one at the final path is
    /// replaced, not written through.
    #[test]
    fn planted_symlinks_are_not_followed() {
        let dir = temp_dir("symlink");
        let victim = dir.join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        let key = dir.join("sync.key");
        std::os::unix::fs::symlink(&victim, temp_twin(&key)).unwrap();
        write_atomically(&key, b"secret", 0o600).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(std::fs::read(&key).unwrap(), b"secret");
        assert!(!std::fs::symlink_metadata(&key).unwrap().is_symlink());

        let token = dir.join("join.token");
        std::os::unix::fs::symlink(&victim, &token).unwrap();
        write_atomically(&token, b"token", 0o600).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        assert!(!std::fs::symlink_metadata(&token).unwrap().is_symlink());
        assert_eq!(mode_of(&token), 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A stale temporary file someone holds open never receives the new
    /// bytes: the old code truncated and wrote that very file (0644 here),
    /// so its reader got the secret.
    #[test]
    fn a_stale_temporary_file_is_replaced_not_reused() {
        use std::io::Read as _;
        let dir = temp_dir("stale");
        let key = dir.join("sync.key");
        std::fs::write(temp_twin(&key), b"").unwrap();
        let mut spy = std::fs::File::open(temp_twin(&key)).unwrap();
        write_atomically(&key, b"secret", 0o600).unwrap();
        let mut seen = Vec::new();
        spy.read_to_end(&mut seen).unwrap();
        assert!(seen.is_empty(), "the secret leaked through a stale file");
        assert_eq!(std::fs::read(&key).unwrap(), b"secret");
        assert_eq!(mode_of(&key), 0o600);
        assert!(!temp_twin(&key).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The file gets exactly its mode, whatever the umask would have left.
    #[test]
    fn files_get_exactly_their_mode() {
        let dir = temp_dir("mode");
        let f = dir.join("status.json");
        write_atomically(&f, b"{}", 0o644).unwrap();
        assert_eq!(mode_of(&f), 0o644);
        write_atomically(&f, b"{}", 0o600).unwrap();
        assert_eq!(mode_of(&f), 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
