//! A keepalived.conf (and conntrackd.conf) an operator imports: the block
//! parser and the mapping never panic; an import that succeeds is a
//! configuration the agent accepts (`import` validates it) whose file text
//! parses back to the same configuration.
#![no_main]

use std::path::{Path, PathBuf};

use ha_agent::{
    config::Config,
    import::{
        Options,
        keepalived::import,
        tree::{MemFiles, parse_file},
    },
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The same text as keepalived.conf, an included file and conntrackd.conf.
    let fs = MemFiles(
        [
            (PathBuf::from("/k/keepalived.conf"), text.to_owned()),
            (PathBuf::from("/k/inc.conf"), text.to_owned()),
        ]
        .into(),
    );
    let Ok(k) = parse_file(&fs, Path::new("/k/keepalived.conf"), true) else {
        return;
    };
    let c = parse_file(&fs, Path::new("/k/inc.conf"), false).ok();
    let opts = Options {
        ha_address: Some("10.255.0.1".parse().unwrap()),
        peer: Some("10.255.0.2".parse().unwrap()),
        ..Options::default()
    };
    let host = |_: &str| None;
    if let Ok(got) = import(&k, c.as_deref(), &opts, &host) {
        let file = got.file_text(&[PathBuf::from("/k/keepalived.conf")]);
        let back = Config::parse(&file, Path::new("imported.toml"))
            .unwrap_or_else(|e| panic!("the imported file does not parse: {e}\n{file}"));
        assert_eq!(back, got.config);
    }
});
