//! The pre-shared cluster key, as read from its file.

use std::path::Path;

use anyhow::Context as _;

/// Reads the 32-byte pre-shared key: 32 raw bytes or 64 hex digits.
pub fn read_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    let bytes = std::fs::read(path).with_context(|| format!("sync key file {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let hex = text.trim();
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut key = [0u8; 32];
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
        }
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
