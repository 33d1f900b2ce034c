//! Replication ceilings stage by stage (root), with synthetic input so that
//! no traffic generator is the limit: records per second through each stage
//! the agent owns, and the kernel's own ctnetlink limit as the physical
//! bound of the last one.
//!
//! - `enrich`: the master's lookups of new flows in kernel conntrack
//!   (`Enricher::enrich`, ring-buffer batches of 256) against a table
//!   holding them all.
//! - `seal_send`: records framed, sealed and sent over UDP (loopback), and
//!   the acknowledgements taken (`Session::push`/`poll`/`on_datagram`).
//! - `receive_open`: datagrams received, opened and put in order by the
//!   peer's session.
//! - `apply`: the peer's `Applier` (ctnetlink creates in batches, and its
//!   XDP flow table), in the batches the sync thread applies.
//! - `ctnetlink_apply_limit_per_s`: the same creates, written in advance
//!   and sent raw (256 per `send`), once with an acknowledgement per
//!   request and once with errors only (as `apply` asks);
//!   `ctnetlink_lookup_limit_per_s`: `enrich`'s lookups, likewise.
//!
//! The ring-buffer drain is measured by the data-plane benchmark
//! (`ringbuf.events_per_s`) and copied into the ceilings here when it ran.
//!
//! `HA_BENCH_STAGES_RECORDS` (default 200,000) records. Prints a table,
//! merges `ceiling_events_per_s` and `ctnetlink_apply_limit_per_s` into
//! `target/bench/sync.json`. Run with `cargo xtask bench`.

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use ha_agent::sync::{
    apply::Applier,
    conntrack::{self, Conntrack},
    enrich::{Ask, Enricher},
    flows::FlowTable,
    record::Record,
    session::{Session, Settings},
};
use ha_common::flow::FlowEventKind;
use ha_tests::{PinnedDataplane, merge_bench_json, require_root};

const KEY: [u8; 32] = [9; 32];

/// The `i`th synthetic connection.
fn flow(i: usize) -> Record {
    ha_tests::synthetic_udp_flow(0x0a02_0000, i)
}

fn flush(lab: &ha_lab::Lab, ns: &str) {
    let _ = lab.exec(ns, &["conntrack", "-F"]);
}

/// Per second, best of `runs` timings of `n` items.
fn best(n: usize, runs: impl IntoIterator<Item = Duration>) -> f64 {
    runs.into_iter()
        .map(|d| n as f64 / d.as_secs_f64())
        .fold(0.0, f64::max)
}

/// The master's lookups: every flow is in its conntrack.
fn enrich(lab: &ha_lab::Lab, records: &[Record]) -> f64 {
    flush(lab, "m");
    lab.run_in("m", || {
        let mut ct = Conntrack::open().expect("ctnetlink socket");
        for c in records.chunks(256) {
            ct.apply_batch(c, |_| 600);
        }
        let runs: Vec<Duration> = (0..3)
            .map(|_| {
                let mut enricher = Enricher::new(Conntrack::open().expect("ctnetlink socket"));
                let mut out = Vec::with_capacity(records.len());
                let t = Instant::now();
                for c in records.chunks(256) {
                    let asks = c
                        .iter()
                        .map(|r| Ask::event(*r, Some(FlowEventKind::New), Duration::ZERO))
                        .collect();
                    enricher.enrich(Duration::ZERO, asks, &mut out);
                }
                let took = t.elapsed();
                assert_eq!(out.len(), records.len(), "every flow found");
                took
            })
            .collect();
        best(records.len(), runs)
    })
    .unwrap()
}

/// Two sessions over UDP on loopback: the sender's stage (push, seal,
/// send, acknowledgements) and the receiver's (receive, open, order) timed
/// apart. Returns both rates.
fn session_stages(records: &[Record]) -> (f64, f64) {
    // Receive buffers as the sync thread sets its own.
    let socket = || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.set_recv_buffer_size(8 << 20).unwrap();
        s.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        UdpSocket::from(s)
    };
    let (sa, sb) = (socket(), socket());
    sa.connect(sb.local_addr().unwrap()).unwrap();
    sb.connect(sa.local_addr().unwrap()).unwrap();
    sb.set_nonblocking(true).unwrap();
    let settings = Settings::default();
    let mut a = Session::new(&KEY, 1, 100, 2, settings);
    let mut b = Session::new(&KEY, 2, 200, 1, settings);
    let start = Instant::now();
    // Connected, and the (empty) bulks each owes the other sent.
    for _ in 0..200 {
        let now = start.elapsed();
        for d in a.poll(now) {
            if let Ok(r) = b.on_datagram(&d)
                && r.resync_requested
            {
                b.queue_bulk([]);
            }
        }
        for d in b.poll(now) {
            if let Ok(r) = a.on_datagram(&d)
                && r.resync_requested
            {
                a.queue_bulk([]);
            }
        }
        if a.in_sync() && b.in_sync() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(a.in_sync() && b.in_sync(), "sessions connected");
    let (mut send_t, mut recv_t) = (Duration::ZERO, Duration::ZERO);
    let mut buf = vec![0u8; 2048];
    let mut got = 0usize;
    let mut next = 0usize;
    let limit = Instant::now() + Duration::from_secs(60);
    while got < records.len() && Instant::now() < limit {
        let t = Instant::now();
        let now = start.elapsed();
        while next < records.len() && a.pending() < settings.max_pending / 2 {
            a.push(now, records[next]);
            next += 1;
        }
        for d in a.poll(now) {
            sa.send(&d).unwrap();
        }
        send_t += t.elapsed();
        let t = Instant::now();
        while let Ok(n) = sb.recv(&mut buf) {
            if let Ok(r) = b.on_datagram(&buf[..n]) {
                got += r.records.len();
            }
        }
        recv_t += t.elapsed();
        // The acknowledgements: the sender's work.
        let now = start.elapsed();
        let acks = b.poll(now);
        let t = Instant::now();
        for d in acks {
            let _ = a.on_datagram(&d);
        }
        send_t += t.elapsed();
    }
    assert_eq!(got, records.len(), "every record arrived");
    (
        records.len() as f64 / send_t.as_secs_f64(),
        records.len() as f64 / recv_t.as_secs_f64(),
    )
}

/// The peer's applier, into an empty table, in the sync thread's batches
/// (8 datagrams of 44 records).
fn apply(lab: &ha_lab::Lab, records: &[Record], table: &str) -> f64 {
    let runs: Vec<Duration> = (0..3)
        .map(|_| {
            flush(lab, "b");
            lab.run_in("b", || {
                let mut applier = Applier::new(
                    Conntrack::open().expect("ctnetlink socket"),
                    FlowTable::open(table),
                );
                let t = Instant::now();
                for c in records.chunks(8 * 44) {
                    applier.apply(c, Duration::ZERO);
                }
                let took = t.elapsed();
                assert_eq!(applier.errors(), 0, "the kernel refused records");
                took
            })
            .unwrap()
        })
        .collect();
    best(records.len(), runs)
}

/// The kernel's own limit: the same creates written in advance, sent raw.
fn limit(lab: &ha_lab::Lab, records: &[Record], ack: bool) -> f64 {
    let requests: Vec<Vec<u8>> = records
        .chunks(256)
        .enumerate()
        .map(|(k, c)| {
            c.iter()
                .enumerate()
                .flat_map(|(i, r)| conntrack::upsert_request(r, 600, (k * 256 + i + 1) as u32, ack))
                .collect()
        })
        .collect();
    let runs: Vec<Duration> = (0..3)
        .map(|_| {
            flush(lab, "b");
            lab.run_in("b", || {
                let sock = raw_socket();
                let (took, errors) = send_raw(&sock, &requests, 256, records.len(), ack);
                assert_eq!(errors, 0, "the kernel refused creates");
                took
            })
            .unwrap()
        })
        .collect();
    best(records.len(), runs)
}

/// The kernel's own lookup limit: the lookups of `enrich`, written in
/// advance and sent raw (256 per `send`), every answer read.
fn lookup_limit(lab: &ha_lab::Lab, records: &[Record]) -> f64 {
    use ha_agent::sync::conntrack::CtTuple;
    flush(lab, "m");
    let requests: Vec<Vec<u8>> = records
        .chunks(256)
        .enumerate()
        .map(|(k, c)| {
            c.iter()
                .enumerate()
                .flat_map(|(i, r)| {
                    conntrack::lookup_request(&CtTuple::orig_of(r), (k * 256 + i + 1) as u32)
                })
                .collect()
        })
        .collect();
    lab.run_in("m", || {
        let mut ct = Conntrack::open().expect("ctnetlink socket");
        for c in records.chunks(256) {
            ct.apply_batch(c, |_| 600);
        }
        let sock = raw_socket();
        let runs: Vec<Duration> = (0..3)
            .map(|_| {
                let (took, errors) = send_raw(&sock, &requests, 256, records.len(), true);
                assert_eq!(errors, 0, "lookups failed");
                took
            })
            .collect();
        best(records.len(), runs)
    })
    .unwrap()
}

/// A ctnetlink socket of the calling thread's namespace, for requests
/// written in advance.
fn raw_socket() -> netlink_sys::Socket {
    let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)
        .expect("netlink socket");
    sock.bind_auto().unwrap();
    sock.connect(&netlink_sys::SocketAddr::new(0, 0)).unwrap();
    sock
}

/// Sends `batches` (of `per_batch` requests each, `total` in all) raw; with
/// `answered`, reads every request's answer. Returns how long it took and
/// how many answers were errors.
fn send_raw(
    sock: &netlink_sys::Socket,
    batches: &[Vec<u8>],
    per_batch: usize,
    total: usize,
    answered: bool,
) -> (Duration, usize) {
    let mut rx = vec![0u8; 1 << 16];
    let t = Instant::now();
    let mut errors = 0usize;
    for (k, batch) in batches.iter().enumerate() {
        sock.send(batch, 0).unwrap();
        let mut left = if answered {
            total.saturating_sub(k * per_batch).min(per_batch)
        } else {
            0
        };
        while left > 0 {
            let len = sock.recv(&mut &mut rx[..], 0).unwrap();
            let (answers, errs) = count_answers(&rx[..len]);
            left = left.saturating_sub(answers);
            errors += errs;
        }
    }
    (t.elapsed(), errors)
}

/// Netlink answers in `b` (messages) and how many are errors (not ACKs).
fn count_answers(mut b: &[u8]) -> (usize, usize) {
    let (mut n, mut errors) = (0, 0);
    while b.len() >= 16 {
        let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(b[4..6].try_into().unwrap());
        if len < 16 || len > b.len() {
            break;
        }
        n += 1;
        if kind == 2 && b.len() >= 20 && i32::from_ne_bytes(b[16..20].try_into().unwrap()) != 0 {
            errors += 1;
        }
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    (n, errors)
}

fn main() {
    require_root();
    let n: usize = std::env::var("HA_BENCH_STAGES_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let records: Vec<Record> = (0..n).map(flow).collect();
    let mut lab = ha_lab::Lab::new();
    lab.add_netns("m").unwrap();
    lab.add_netns("b").unwrap();
    let pinned = PinnedDataplane::new("stages");

    let enrich = enrich(&lab, &records);
    let lookups = lookup_limit(&lab, &records);
    let (seal_send, receive_open) = session_stages(&records);
    let apply = apply(&lab, &records, &pinned.instance);
    let limit_acked = limit(&lab, &records, true);
    let limit_errors_only = limit(&lab, &records, false);
    flush(&lab, "m");
    flush(&lab, "b");
    lab.teardown().unwrap();

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    let ring: Option<f64> = std::fs::read(dir.join("dataplane.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["ringbuf"]["events_per_s"].as_f64());
    println!(
        "{:<34} {:>14} {:>8}",
        "stage (synthetic input)", "records/s", "goal"
    );
    let goal = 1_000_000.0;
    let row = |name: &str, v: f64, goal: Option<f64>| {
        println!(
            "{name:<34} {v:>14.0} {:>8}",
            goal.map_or("-".to_owned(), |g| if v >= g { "met" } else { "missed" }
                .to_owned())
        );
    };
    if let Some(r) = ring {
        row("ring_drain (data-plane bench)", r, Some(goal));
    }
    row("enrich (ctnetlink lookups)", enrich, Some(goal));
    row("seal_send", seal_send, Some(goal));
    row("receive_open", receive_open, Some(goal));
    row("apply (ctnetlink + XDP table)", apply, Some(goal));
    row("kernel ctnetlink lookup limit", lookups, None);
    row("kernel ctnetlink limit, acked", limit_acked, None);
    row(
        "kernel ctnetlink limit, errors only",
        limit_errors_only,
        None,
    );
    let mut ceilings = serde_json::json!({
        "enrich": enrich,
        "seal_send": seal_send,
        "receive_open": receive_open,
        "apply": apply,
    });
    if let Some(r) = ring {
        ceilings["ring_drain"] = r.into();
    }
    merge_bench_json(
        "sync.json",
        serde_json::json!({
            "ceiling_events_per_s": ceilings,
            "ctnetlink_apply_limit_per_s": limit_acked.max(limit_errors_only),
            "ctnetlink_apply_limit_acked_per_s": limit_acked,
            "ctnetlink_apply_limit_errors_only_per_s": limit_errors_only,
            "ctnetlink_lookup_limit_per_s": lookups,
            "stages_records": n,
        }),
    );
}
