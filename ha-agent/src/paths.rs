//! Every file the agent keeps outside its configuration, named once.
//!
//! Run files live in [`RUN_DIR`] while the agent runs (status, operator
//! socket); state that survives restarts lives next to the configuration
//! file ([`StateFile`]).

use std::{
    io,
    path::{Path, PathBuf},
};

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

/// Writes `bytes` to `path` atomically (a temporary file in the same
/// directory, then a rename) with `mode`; creates the directory if needed.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = temp_twin(path);
    std::fs::write(&tmp, bytes)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
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
}
