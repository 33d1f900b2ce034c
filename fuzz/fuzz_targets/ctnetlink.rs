//! ctnetlink replies (`sync::conntrack::entries_of_reply`, the I/O-free part
//! of `Conntrack::lookup`, and `entries_of_dump`, of `Conntrack::dump`): a
//! buffer of netlink messages as `recv` returns it, read into flows with
//! netlink-packet-core's attribute iterator. Never panics.
#![no_main]

use ha_agent::sync::conntrack::{entries_of_dump, entries_of_reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: how many requests the batch had; the sequence numbers of a
    // batch start at 1 here (as on a fresh socket).
    let Some((&n, rx)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8) + 1;
    let entries = entries_of_reply(rx, 1, n);
    assert_eq!(entries.len(), n);
    let mut dumped = Vec::new();
    let _ = entries_of_dump(rx, 1, &mut dumped);
    assert!(dumped.len() <= rx.len() / 16);
});
