//! What the loop needs to authenticate adverts and send them over every
//! heartbeat path, set up before the loop runs: the keys (read from their
//! files, or derived from the cluster key), the paths' sockets and
//! addresses, and the persisted sequence floor and replay marks
//! (`adverts.seq` beside the configuration).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use ha_core::{
    node::PathSettings,
    vrrp::auth::{self, Key, Sequencer},
};

use super::net::PathSocket;
use crate::{config::Config, status::writer::Ack};

/// The write-ahead rule of the sequence (found by the simulation): no
/// advert goes out with a sequence more than this above the floor on disk,
/// and a restart resumes this far above it ([`Sequencer::resume`]). After
/// the wall clock was stepped back the sequence counts one per advert
/// above the clock; a restart from a floor taken a moment earlier would
/// hand out sequences the peer has seen, refused as replays (it would
/// take over).
pub const STALE_FLOOR: Duration = Duration::from_secs(2);
/// A new floor is asked of the writer once the sequence is this far above
/// the last one asked for, so it is on disk well before [`STALE_FLOOR`].
const WRITE_EARLY: Duration = Duration::from_millis(500);

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
        Some(hex) => std::str::from_utf8(hex)
            .ok()
            .and_then(|h| crate::sync::key::from_hex(h.trim()))
            .with_context(|| {
                format!("key {id}: {}: not hex digits after `hex:`", path.display())
            })?,
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
    let vips: Vec<Ipv4Addr> = super::setup::all_vips(config)
        .into_iter()
        .filter_map(|v| match v.addr {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    let mut sockets = Vec::new();
    let explicit = config.ha.heartbeat.is_some();
    for iface in config.heartbeat_paths() {
        match open_path(&iface, &vips) {
            Ok((local, sock)) => {
                settings.push(PathSettings { name: iface, local });
                sockets.push(sock);
            }
            // Listed by the operator: a configuration that cannot work.
            Err(e) if explicit => return Err(e),
            // A default path (a VIP interface): without an address of our
            // own there it carries no heartbeat; the HA link and the other
            // paths still do.
            Err(e) => {
                tracing::warn!(cause = %format!("{e:#}"), "heartbeat path left out");
            }
        }
    }
    Ok((settings, sockets))
}

/// Our address on `iface` (the first that is not a VIP: the peer holds the
/// VIPs' addresses too) and its socket.
fn open_path(iface: &str, vips: &[Ipv4Addr]) -> anyhow::Result<(Ipv4Addr, PathSocket)> {
    let local = crate::iface::ipv4_addrs(iface)
        .with_context(|| format!("heartbeat path {iface}"))?
        .into_iter()
        .find(|a| !vips.contains(a))
        .with_context(|| {
            format!("heartbeat path {iface}: no IPv4 address of our own (only VIPs, or none); give it one or leave it out of ha.heartbeat")
        })?;
    let sock = PathSocket::open(iface, local)
        .with_context(|| format!("heartbeat path {iface}: packet socket"))?;
    Ok((local, sock))
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

/// The send side: the sequence, and what of it is on disk.
#[derive(Debug)]
pub struct Signer {
    pub seq: Sequencer,
    file: PathBuf,
    /// The floor last handed to the writer.
    asked: u64,
    /// The floor on disk (the writer stores it once written).
    on_disk: Arc<AtomicU64>,
    /// The marks last handed to the writer.
    marks: Vec<(u8, Ipv4Addr, u64)>,
    /// Adverts sent beyond the write-ahead limit (a writer that fell more
    /// than a second behind), for the log.
    pub beyond_floor: u64,
}

/// Now on the wall clock (since the Unix epoch).
pub fn wall() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

impl Signer {
    /// From what was persisted at `file`: resumes [`STALE_FLOOR`] above
    /// its floor.
    pub fn new(file: PathBuf, persisted: &Persisted) -> Signer {
        // Above anything sent before (resume), and at least the clock: that
        // is the floor from now on (written by `open`), so the first adverts
        // are within reach of it.
        let floor = Sequencer::resume(persisted.floor, STALE_FLOOR)
            .last()
            .max(auth::clock_seq(wall()));
        let seq = Sequencer::new(floor);
        Signer {
            seq,
            file,
            asked: floor,
            on_disk: Arc::new(AtomicU64::new(floor)),
            marks: persisted.marks.clone(),
            beyond_floor: 0,
        }
    }

    /// [`Signer::new`], with the new floor written before any advert goes
    /// out (at start-up, where slow work belongs): a crash straight after
    /// the restart resumes above it.
    pub fn open(file: PathBuf, persisted: &Persisted) -> anyhow::Result<Signer> {
        let s = Signer::new(file, persisted);
        let (path, bytes, _) = s.render();
        crate::paths::write_atomically(&path, &bytes, 0o600)
            .with_context(|| format!("advert sequence state {}", path.display()))?;
        Ok(s)
    }

    /// The sequence for the next advert at `wall`, and the floor to write
    /// first when it is due (off the loop: the writer thread stores it in
    /// the ack once on disk, long before the sequence can pass it by
    /// [`STALE_FLOOR`]).
    pub fn next(
        &mut self,
        wall: Duration,
        anti_replay: auth::AntiReplay,
        term: u64,
        marks: impl FnOnce() -> Vec<(u8, Ipv4Addr, u64)>,
    ) -> (u64, Option<(PathBuf, Vec<u8>, Ack)>) {
        let seq = self.seq.next(wall, anti_replay, term);
        if seq.wrapping_sub(self.on_disk.load(Ordering::Acquire)) as i64
            > auth::clock_seq(STALE_FLOOR) as i64
        {
            self.beyond_floor += 1;
        }
        let save = (seq.wrapping_sub(self.asked) as i64 > auth::clock_seq(WRITE_EARLY) as i64)
            .then(|| {
                self.asked = seq;
                self.marks = marks();
                self.render()
            });
        (seq, save)
    }

    /// The marks to persist, if they changed (the floor goes with them).
    pub fn marks_to_save(
        &mut self,
        marks: Vec<(u8, Ipv4Addr, u64)>,
    ) -> Option<(PathBuf, Vec<u8>, Ack)> {
        if marks == self.marks {
            return None;
        }
        self.marks = marks;
        Some(self.render())
    }

    fn render(&self) -> (PathBuf, Vec<u8>, Ack) {
        let p = Persisted {
            floor: self.asked,
            marks: self.marks.clone(),
        };
        (
            self.file.clone(),
            p.render().into_bytes(),
            Ack {
                to: self.on_disk.clone(),
                value: self.asked,
            },
        )
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
    fn no_sequence_goes_out_beyond_the_floor_a_restart_resumes_above() {
        let t0 = wall();
        let mut s = Signer::new(PathBuf::from("/nonexistent"), &Persisted::default());
        let mono = auth::AntiReplay::Monotonic;
        // What `open` writes: at least the clock.
        let (_, bytes, _) = s.render();
        let on_disk = Persisted::parse(std::str::from_utf8(&bytes).unwrap());
        assert!(on_disk.floor >= auth::clock_seq(t0));
        let (first, _) = s.next(t0, mono, 1, Vec::new);
        // The clock stepped back an hour: one step per advert from here,
        // 3,000 adverts (30 s at 10 ms); floors written as they come due.
        let back = t0 - Duration::from_secs(3600);
        let mut sent = first;
        let mut floor = on_disk.floor;
        for i in 0..3000u64 {
            let (q, save) = s.next(back + Duration::from_millis(i * 10), mono, 1, Vec::new);
            sent = q;
            if let Some((_, b, a)) = save {
                floor = Persisted::parse(std::str::from_utf8(&b).unwrap()).floor;
                a.to.store(a.value, Ordering::Release);
            }
        }
        assert_eq!(s.beyond_floor, 0);
        let mut restarted = Signer::new(
            PathBuf::new(),
            &Persisted {
                floor,
                marks: Vec::new(),
            },
        );
        let (again, _) = restarted.next(back, mono, 1, Vec::new);
        assert!(again > sent, "a restart never reuses a sequence");
    }
}
