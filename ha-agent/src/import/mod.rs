//! `ha-agent import keepalived`: a keepalived.conf (and the sync link of a
//! conntrackd.conf) as our TOML, for a node-by-node migration: the imported
//! node speaks plain VRRPv3 to the keepalived node that stays up.
//!
//! What cannot be mapped is listed with the file and line it came from,
//! never dropped silently. The mapping is sans-IO: files are read through
//! [`tree::Source`] and this host's addresses are asked through a closure.

pub mod keepalived;
pub mod tree;

use std::{net::Ipv4Addr, path::PathBuf};

pub use self::tree::{Loc, TreeError};

/// What the operator adds on the command line.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Our instance name (pins, run files).
    pub instance: Option<String>,
    /// This node's HA address (else keepalived's `unicast_src_ip`,
    /// conntrackd's address, this machine's on the VRRP interface).
    pub ha_address: Option<Ipv4Addr>,
    /// The peer's HA address (else keepalived's `unicast_peer`, or
    /// conntrackd's destination).
    pub peer: Option<Ipv4Addr>,
    /// keepalived's `config_id` for `@id` lines (keepalived's default:
    /// the host name up to its first dot).
    pub config_id: Option<String>,
    /// The cluster key file to name when conntrackd's sync is imported.
    pub sync_key_file: Option<PathBuf>,
}

/// A statement not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub at: Loc,
    pub what: String,
    pub why: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.at, self.what, self.why)
    }
}

/// The result: our configuration's TOML (validated), what was not
/// imported, and what the operator must do.
#[derive(Debug, Clone)]
pub struct Imported {
    pub toml: String,
    pub config: crate::config::Config,
    pub skipped: Vec<Skipped>,
    pub todo: Vec<String>,
}

impl Imported {
    /// The file to write: a header saying where it came from, what was not
    /// imported and what to do, then the configuration.
    pub fn file_text(&self, sources: &[PathBuf]) -> String {
        use std::fmt::Write as _;
        // A TOML comment holds no control character but tab: the input's
        // are shown escaped.
        let safe = |s: String| -> String {
            s.chars()
                .map(|c| {
                    if c.is_control() && c != '\t' {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect()
        };
        let mut o = String::new();
        let _ = writeln!(o, "# Imported by `ha-agent import keepalived` from:");
        for s in sources {
            let _ = writeln!(o, "#   {}", safe(s.display().to_string()));
        }
        if !self.todo.is_empty() {
            let _ = writeln!(o, "#\n# To do:");
            for t in &self.todo {
                let _ = writeln!(o, "#   - {}", safe(t.clone()));
            }
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(o, "#\n# Not imported:");
            for s in &self.skipped {
                let _ = writeln!(o, "#   {}", safe(s.to_string()));
            }
        }
        let _ = writeln!(o);
        o.push_str(&self.toml);
        o
    }
}

/// Everything that stops an import.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Read(#[from] TreeError),
    #[error("{at}: {problem}")]
    Invalid { at: Loc, problem: String },
    #[error("{0}")]
    Missing(String),
    #[error("the imported configuration does not validate: {0}\n{1}")]
    NotValid(String, String),
}
