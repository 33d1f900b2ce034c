//! What the loop needs to authenticate adverts and send them over every
//! heartbeat path, set up before the loop runs: the keys (read from their
//! files, or derived from the cluster key), the paths' sockets and
//! addresses, and the persisted sequence floor and replay marks
//! (`adverts.seq` beside the configuration).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use ha_core::{
    node::PathSettings,
    vrrp::auth::{self, Key, Sequencer},
};

use super::net::PathSocket;
use crate::config::Config;

/// How far ahead of what was sent the persisted floor is kept: a restart
/// (even after the wall clock was stepped back) starts above every
/// sequence sent, and a receiver with `time` anti-replay (window >= 5 s)
/// still accepts the first adverts after it.
pub const RESERVE: u64 = 2 << 32;

/// The advert authentication of `config`: the listed keys, or key 1
/// derived from the cluster key.
pub fn settings(config: &Config, derived: Option<[u8; 32]>) -> anyhow::Result<auth::Settings> {
    let mode = config.auth_mode();
    let a = config.ha.auth.as_ref();
    let keys = match a.filter(|a| !a.keys.is_empty()) {
        Some(a) => a
            .keys
            .iter()
            .map(|k| read_key(k.id, &k.file))
            .collect::<anyhow::Result<Vec<_>>>()?,
        None => match derived {
            Some(k) => vec![Key::new(1, &k)?],
            None if mode == auth::Mode::None => Vec::new(),
            None => bail!(
                "advert authentication ({}) needs a key: [[ha.auth.key]] or the cluster key",
                mode.as_str()
            ),
        },
    };
    let s = auth::Settings {
        mode,
        anti_replay: config.anti_replay(),
        keys,
        active: a.map_or(1, |a| a.active_key),
    };
    s.validate().context("ha.auth")?;
    Ok(s)
}

/// A key file as keepalived's `key N file:` reads it: `hex:` and 64 to 128
/// hex digits, or the key's bytes themselves (one trailing newline
/// ignored).
pub fn read_key(id: u8, path: &Path) -> anyhow::Result<Key> {
    let bytes = std::fs::read(path).with_context(|| format!("key {id}: {}", path.display()))?;
    let key = match bytes.strip_prefix(b"hex:") {
        Some(hex) => {
            let hex = std::str::from_utf8(hex).unwrap_or("").trim();
            if !hex.len().is_multiple_of(2) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("key {id}: {}: not hex digits after `hex:`", path.display());
            }
            (0..hex.len() / 2)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()?
        }
        None => bytes.strip_suffix(b"\n").unwrap_or(&bytes).to_vec(),
    };
    Key::new(id, &key).with_context(|| format!("key file {}", path.display()))
}

/// `key 1 hex:...` for keepalived's `auth_hmac` block.
pub fn keepalived_line(key: &[u8]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("key 1 hex:{hex}")
}

/// The heartbeat paths of `config` (the HA link first) with our address on
/// each, and a socket for each data path.
pub fn open_paths(config: &Config) -> anyhow::Result<(Vec<PathSettings>, Vec<PathSocket>)> {
    let mut settings = vec![PathSettings {
        name: config.ha.interface.clone(),
        local: config.ha.address,
    }];
    let vips: Vec<Ipv4Addr> = config
        .groups
        .iter()
        .flat_map(|g| &g.instances)
        .flat_map(|i| i.parsed_vips())
        .map(|v| v.addr)
        .collect();
    let mut sockets = Vec::new();
    for iface in config.heartbeat_paths() {
        // Our own address there: the first that is not a VIP (the peer
        // holds the VIPs' addresses too).
        let local = crate::iface::ipv4_addrs(&iface)
            .with_context(|| format!("heartbeat path {iface}"))?
            .into_iter()
            .find(|a| !vips.contains(a))
            .with_context(|| {
                format!("heartbeat path {iface}: no IPv4 address of our own (only VIPs, or none); give it one or leave it out of ha.heartbeat")
            })?;
        let sock = PathSocket::open(&iface, local)
            .with_context(|| format!("heartbeat path {iface}: packet socket"))?;
        settings.push(PathSettings { name: iface, local });
        sockets.push(sock);
    }
    Ok((settings, sockets))
}

/// What `adverts.seq` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Persisted {
    /// Our next adverts' sequences start above it.
    pub floor: u64,
    /// The highest sequence accepted, by (VRID, source).
    pub marks: Vec<(u8, Ipv4Addr, u64)>,
}

impl Persisted {
    /// Reads it back; a missing or unreadable file is an empty state (a
    /// new node), said in the log.
    pub fn load(path: &Path) -> Persisted {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Persisted::default(),
            Err(e) => {
                tracing::warn!(file = %path.display(), cause = %e, "advert sequence state unreadable: starting from the clock");
                return Persisted::default();
            }
        };
        Persisted::parse(&text)
    }

    /// Parses the text; lines it cannot read are skipped.
    pub fn parse(text: &str) -> Persisted {
        let mut p = Persisted::default();
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["floor", n] => p.floor = n.parse().unwrap_or(0),
                ["mark", vrid, addr, seq] => {
                    if let (Ok(v), Ok(a), Ok(s)) = (vrid.parse(), addr.parse(), seq.parse()) {
                        p.marks.push((v, a, s));
                    }
                }
                _ => {}
            }
        }
        p
    }

    pub fn render(&self) -> String {
        let mut s = format!(
            "# ha-agent advert authentication state\nfloor {}\n",
            self.floor
        );
        for (v, a, q) in &self.marks {
            s.push_str(&format!("mark {v} {a} {q}\n"));
        }
        s
    }
}

/// The send side: the sequence, and what was last persisted.
#[derive(Debug)]
pub struct Signer {
    pub seq: Sequencer,
    file: PathBuf,
    /// The floor last handed to the writer.
    reserved: u64,
    /// The marks last handed to the writer.
    marks: Vec<(u8, Ipv4Addr, u64)>,
}

/// Now on the wall clock (since the Unix epoch).
pub fn wall() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

impl Signer {
    /// From what was persisted at `file`.
    pub fn new(file: PathBuf, persisted: &Persisted) -> Signer {
        Signer {
            seq: Sequencer::new(persisted.floor),
            file,
            reserved: persisted.floor,
            marks: persisted.marks.clone(),
        }
    }

    /// What to persist now, if anything changed enough: a new floor once
    /// the sequence comes within half the reserve of the last one, new
    /// marks.
    pub fn to_save(&mut self, marks: Vec<(u8, Ipv4Addr, u64)>) -> Option<(PathBuf, Vec<u8>)> {
        let last = self.seq.last().max(auth::clock_seq(wall()));
        let floor_due = last.saturating_add(RESERVE / 2) > self.reserved;
        if !floor_due && marks == self.marks {
            return None;
        }
        if floor_due {
            self.reserved = last.saturating_add(RESERVE);
        }
        self.marks = marks;
        let p = Persisted {
            floor: self.reserved,
            marks: self.marks.clone(),
        };
        Some((self.file.clone(), p.render().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_round_trips_and_skips_what_it_cannot_read() {
        let p = Persisted {
            floor: 7 << 32,
            marks: vec![(51, Ipv4Addr::new(10, 255, 0, 2), 99)],
        };
        assert_eq!(Persisted::parse(&p.render()), p);
        let odd = Persisted::parse("floor x\nmark 51 nope 3\nmark 52 10.0.0.3 4\n");
        assert_eq!(odd.floor, 0);
        assert_eq!(odd.marks, vec![(52, Ipv4Addr::new(10, 0, 0, 3), 4)]);
    }

    #[test]
    fn key_files_read_like_keepalived() {
        let dir = std::env::temp_dir().join(format!("ha-agent-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hex = dir.join("hex");
        std::fs::write(&hex, format!("hex:{}\n", "0a".repeat(32))).unwrap();
        let raw = dir.join("raw");
        std::fs::write(&raw, format!("{}\n", "p".repeat(40))).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "hex:0a0b").unwrap();
        let k = read_key(1, &hex).unwrap();
        assert_eq!(k, Key::new(1, &[0x0a; 32]).unwrap());
        assert_eq!(
            read_key(2, &raw).unwrap(),
            Key::new(2, &[b'p'; 40]).unwrap()
        );
        let e = format!("{:#}", read_key(3, &short).unwrap_err());
        assert!(e.contains("2 bytes"), "{e}");
        assert_eq!(
            keepalived_line(&[0xab; 2]),
            "key 1 hex:abab",
            "what keepalived's auth_hmac block takes"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_floor_is_persisted_ahead_of_what_is_sent() {
        let mut s = Signer::new(PathBuf::from("/nonexistent"), &Persisted::default());
        let sent = s.seq.next(wall(), auth::AntiReplay::Monotonic);
        let (_, bytes) = s.to_save(Vec::new()).expect("first save");
        let p = Persisted::parse(std::str::from_utf8(&bytes).unwrap());
        assert!(p.floor >= sent + RESERVE);
        assert!(s.to_save(Vec::new()).is_none(), "nothing new");
        let restarted = Signer::new(PathBuf::new(), &p)
            .seq
            .next(wall(), auth::AntiReplay::Monotonic);
        assert!(restarted > sent);
    }
}
