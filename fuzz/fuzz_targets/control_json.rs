//! The control channel's JSON messages (`control::channel::{Request,
//! Response}`, after the AEAD) and the operator socket's `LocalRequest` (one
//! JSON line from a local user): arbitrary bytes never panic, and what
//! parses serializes and parses back.
#![no_main]

use ha_agent::control::{
    channel::{Request, Response},
    local::LocalRequest,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Request>(data) {
        let text = serde_json::to_vec(&r).expect("a parsed Request serializes");
        let again: Request = serde_json::from_slice(&text).expect("and parses back");
        assert_eq!(format!("{r:?}"), format!("{again:?}"));
    }
    if let Ok(r) = serde_json::from_slice::<Response>(data) {
        let text = serde_json::to_vec(&r).expect("a parsed Response serializes");
        let again: Response = serde_json::from_slice(&text).expect("and parses back");
        assert_eq!(format!("{r:?}"), format!("{again:?}"));
    }
    // The operator socket reads one line as text.
    if let Ok(line) = std::str::from_utf8(data)
        && let Ok(r) = serde_json::from_str::<LocalRequest>(line)
    {
        let text = serde_json::to_string(&r).expect("a LocalRequest serializes");
        assert_eq!(serde_json::from_str::<LocalRequest>(&text).ok(), Some(r));
    }
});
