//! The XDP flow table sized for the box (`ha.max_flows`): loaded with
//! 1,000,000 entries, filled with 1,000,000 flows and dumped whole (what a
//! bulk resync reads), with the kernel memory it takes per flow.

use std::{net::Ipv4Addr, time::Instant};

use ha_agent::{
    dataplane::LoadOptions,
    sync::{conntrack::CtTuple, flows::FlowTable},
};
use ha_tests::{PinnedDataplane, require_root};

const FLOWS: u32 = 1_000_000;

#[test]
fn a_table_of_a_million_flows_holds_and_dumps_a_million() {
    require_root();
    let p = PinnedDataplane::with(
        "flows1m",
        LoadOptions {
            max_flows: Some(FLOWS),
            ..LoadOptions::default()
        },
    );
    let info = p.dp.flow_table().expect("the flow table's info");
    assert_eq!(info.max_flows, FLOWS);
    assert!(info.memlock_bytes > u64::from(FLOWS) * 64, "{info:?}");
    let mut table = FlowTable::open(&p.instance).expect("the pinned flow table");
    let t = Instant::now();
    for i in 0..FLOWS {
        let tuple = CtTuple {
            proto: 17,
            src: Ipv4Addr::from(0x0a00_0000 | (i >> 8)).into(),
            dst: Ipv4Addr::new(10, 1, 0, 10).into(),
            sport: 1024 + (i & 0xff) as u16,
            dport: 53,
        };
        table.insert(&tuple, 0, 1);
    }
    let inserted = t.elapsed();
    let t = Instant::now();
    let dump = table.dump();
    let dumped = t.elapsed();
    println!(
        "{} of {FLOWS} flows held; {:.1} MiB of kernel memory, {:.0} bytes per flow; inserted in {:.2} s, dumped in {:.2} s",
        dump.len(),
        info.memlock_bytes as f64 / f64::from(1 << 20),
        info.bytes_per_flow(),
        inserted.as_secs_f64(),
        dumped.as_secs_f64()
    );
    // An LRU hash may evict a little before it is full (per-CPU free
    // lists): nearly all, not exactly all.
    assert!(
        dump.len() as u32 >= FLOWS * 99 / 100,
        "{} flows held",
        dump.len()
    );
}
