//! The pre-shared cluster key, as read from its file, and the keys derived
//! from it, one per purpose.
//!
//! The cluster key itself never keys anything on the wire: state sync, the
//! control channel and the VRRP adverts each use a key derived from it with
//! HKDF-SHA256 under a label of their own. Whoever learns one derived key (a
//! sync frame key recovered from a compromised peer process, say) can neither
//! derive the others nor the cluster key, so the key material on the HA wire
//! is not the one that authorises configuration.

use std::path::Path;

use anyhow::Context as _;

/// What a derived key is for; each has its own HKDF label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Sync frames (UDP on the HA link).
    StateSync,
    /// The cluster control channel (config push, node info).
    Control,
    /// VRRP advert authentication.
    Adverts,
    /// The fast heartbeat's probe tags and term proofs.
    Probes,
}

impl Purpose {
    const fn label(self) -> &'static [u8] {
        match self {
            Purpose::StateSync => b"state sync",
            Purpose::Control => b"control channel",
            Purpose::Adverts => b"vrrp adverts",
            Purpose::Probes => b"heartbeat probes",
        }
    }
}

/// The key for `purpose`, derived from the cluster key.
pub fn derive(cluster_key: &[u8; 32], purpose: Purpose) -> [u8; 32] {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(b"ha-agent cluster key v1"), cluster_key);
    let mut key = [0u8; 32];
    hk.expand(purpose.label(), &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

/// The bytes an even number of hex digits spell; `None` for anything else.
pub fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Reads the 32-byte pre-shared key: 32 raw bytes or 64 hex digits.
pub fn read_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let bytes = std::fs::read(path).with_context(|| format!("sync key file {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let hex = text.trim();
    if hex.len() == 64
        && let Some(key) = from_hex(hex).and_then(|k| <[u8; 32]>::try_from(k).ok())
    {
        return Ok(key);
    }
    bytes.try_into().map_err(|b: Vec<u8>| {
        anyhow::anyhow!(
            "sync key file {}: {} bytes; need 32 bytes or 64 hex digits",
            path.display(),
            b.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_purpose_has_its_own_key_and_none_is_the_cluster_key() {
        let k = [9u8; 32];
        let keys = [
            derive(&k, Purpose::StateSync),
            derive(&k, Purpose::Control),
            derive(&k, Purpose::Adverts),
            derive(&k, Purpose::Probes),
        ];
        for (i, a) in keys.iter().enumerate() {
            assert_ne!(a, &k);
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(derive(&k, Purpose::Control), keys[1], "deterministic");
        assert_ne!(derive(&[8u8; 32], Purpose::Control), keys[1]);
    }

    #[test]
    fn raw_or_hex_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("ha-agent-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("raw");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        assert_eq!(read_key(&raw).unwrap(), [7u8; 32]);
        let hex = dir.join("hex");
        std::fs::write(&hex, format!("{}\n", "0a".repeat(32))).unwrap();
        assert_eq!(read_key(&hex).unwrap(), [10u8; 32]);
        let short = dir.join("short");
        std::fs::write(&short, [1u8; 31]).unwrap();
        assert!(
            read_key(&short)
                .unwrap_err()
                .to_string()
                .contains("31 bytes; need 32 bytes or 64 hex digits")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
