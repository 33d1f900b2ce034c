//! Configuration TOML that comes from elsewhere: `Config::parse` (a pushed or
//! joined configuration) and the shared sections a secondary reads
//! (`toml::from_str::<SharedConfig>`). Never panics; a valid configuration's
//! shared part, as the primary sends it (`shared_text`), reads back equal on
//! the secondary.
#![no_main]

use std::path::Path;

use ha_agent::config::{Config, SharedConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text, Path::new("fuzz.toml")) {
        let _ = config.node_settings();
        let _ = config.data_interfaces();
        let _ = config.lease();
        for g in &config.groups {
            let _ = g.tracks();
            for i in &g.instances {
                let _ = config.machine_config(i);
                let _ = i.parsed_vips();
            }
        }
        let shared = config.shared_text();
        let back: SharedConfig = toml::from_str(&shared)
            .unwrap_or_else(|e| panic!("shared_text does not read back: {e}\n{shared}"));
        assert_eq!(back, config.shared());
    }
    if let Ok(shared) = toml::from_str::<SharedConfig>(text) {
        let again = toml::to_string(&shared).expect("a parsed SharedConfig serializes");
        let back: SharedConfig = toml::from_str(&again)
            .unwrap_or_else(|e| panic!("SharedConfig does not read back: {e}\n{again}"));
        assert_eq!(back, shared);
    }
});
