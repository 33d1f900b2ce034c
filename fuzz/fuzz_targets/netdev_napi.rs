//! `netdev` generic-netlink answers to a NAPI dump (`napi::napi_answer`,
//! the I/O-free part of threading the data interfaces' NAPI): a buffer of
//! netlink messages as `recv` returns it, decoded by netlink-packet-generic
//! and read into NAPI instances. Never panics.
#![no_main]

use ha_agent::napi::napi_answer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, instances)) = napi_answer(data, 1) {
        // An instance needs an id (0 is none).
        assert!(instances.iter().all(|(_, n)| n.id != 0));
    }
});
