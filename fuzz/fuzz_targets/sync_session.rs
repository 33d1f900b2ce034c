//! The sync session state machine (`ha_agent::sync::session::Session`) fed
//! arbitrary datagrams, frames sealed with the fuzz key (so they pass the
//! AEAD: what a holder of the key can send), replays of genuine frames and
//! genuine traffic between two sessions, in any order. Never panics; every
//! rejection is counted; no frame it sends exceeds the MTU.
#![no_main]

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use arbitrary::Arbitrary;
use ha_agent::sync::{
    frame::{Crypto, Header, Kind, MAX_FRAME},
    record::{Record, RecordKind},
    session::{Session, Settings},
};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [0x5a; 32];
const A: u32 = 0x0aff_0001;
const B: u32 = 0x0aff_0002;

#[derive(Debug, Arbitrary)]
enum Op {
    /// Arbitrary bytes to B.
    Raw(Vec<u8>),
    /// A frame sealed under the key (a key holder's forgery) to B.
    Forged {
        kind: u8,
        sender_is_a: bool,
        epoch: u64,
        seq: u64,
        ack: u64,
        /// Addressed to B's epoch (else to "not known yet").
        addressed: bool,
        records: Vec<(bool, u8, u16)>,
    },
    /// Deliver A's next datagram to B (or B's to A).
    Deliver {
        to_b: bool,
    },
    /// Deliver again a datagram seen earlier (replay).
    Replay {
        to_b: bool,
        index: u8,
    },
    /// Time passes; both poll.
    Tick(u16),
    /// A queues records.
    Push(u8),
    /// A restarts with a later (or earlier) epoch.
    RestartA {
        later: bool,
    },
    ResyncB,
}

/// Record `i`: IPv4, or IPv6 for every third (frames carry both, packed
/// by size).
fn rec(i: u16) -> Record {
    if i % 3 == 2 {
        return Record::plain(
            RecordKind::Upsert,
            6,
            2,
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i),
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 10),
            i,
            443,
        );
    }
    Record::plain(
        RecordKind::Upsert,
        6,
        2,
        Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8),
        Ipv4Addr::new(10, 1, 0, 10),
        i,
        80,
    )
}

fn settings() -> Settings {
    Settings {
        max_unacked: 64,
        max_pending: 1024,
        ..Settings::default()
    }
}

fn deliver(s: &mut Session, d: &[u8]) {
    let before: u64 = s.counters.rejected.values().sum();
    let r = s.on_datagram(d);
    let after: u64 = s.counters.rejected.values().sum();
    assert_eq!(
        after - before,
        u64::from(r.is_err()),
        "rejection counted once"
    );
}

fuzz_target!(|ops: Vec<Op>| {
    let crypto = Crypto::new(&KEY);
    let mut epoch_a = 1_000u64;
    let mut a = Session::new(&KEY, A, epoch_a, B, settings());
    let mut b = Session::new(&KEY, B, 2_000, A, settings());
    a.request_resync();
    b.request_resync();
    let (mut to_b, mut to_a) = (Vec::<Vec<u8>>::new(), Vec::<Vec<u8>>::new());
    let (mut seen_b, mut seen_a) = (Vec::<Vec<u8>>::new(), Vec::<Vec<u8>>::new());
    let mut now = Duration::ZERO;
    for op in ops.into_iter().take(256) {
        match op {
            Op::Raw(bytes) => deliver(&mut b, &bytes),
            Op::Forged {
                kind,
                sender_is_a,
                epoch,
                seq,
                ack,
                addressed,
                records,
            } => {
                let kind = match kind % 6 {
                    0 => Kind::Data,
                    1 => Kind::Ack,
                    2 => Kind::Hello,
                    3 => Kind::ResyncDone,
                    4 => Kind::Open,
                    _ => Kind::Resync,
                };
                let records: Vec<Record> = records
                    .into_iter()
                    .take(44)
                    .map(|(del, proto, i)| Record {
                        kind: if del {
                            RecordKind::Delete
                        } else {
                            RecordKind::Upsert
                        },
                        proto,
                        ..rec(i)
                    })
                    .collect();
                let h = Header {
                    kind,
                    sender: if sender_is_a { A } else { B },
                    epoch,
                    // Any sequence number: one near u64::MAX once overflowed
                    // the window check (fuzz/regressions/sync_session/).
                    seq,
                    ack,
                    to_epoch: if addressed { 2_000 } else { 0 },
                };
                deliver(&mut b, &crypto.seal(&h, &records));
            }
            Op::Deliver { to_b: true } => {
                if !to_b.is_empty() {
                    let d = to_b.remove(0);
                    deliver(&mut b, &d);
                    seen_b.push(d);
                }
            }
            Op::Deliver { to_b: false } => {
                if !to_a.is_empty() {
                    let d = to_a.remove(0);
                    deliver(&mut a, &d);
                    seen_a.push(d);
                }
            }
            Op::Replay { to_b: true, index } => {
                if let Some(d) = seen_b.get(usize::from(index)) {
                    deliver(&mut b, &d.clone());
                }
            }
            Op::Replay { to_b: false, index } => {
                if let Some(d) = seen_a.get(usize::from(index)) {
                    deliver(&mut a, &d.clone());
                }
            }
            Op::Tick(ms) => {
                now += Duration::from_millis(u64::from(ms));
                for d in a.poll(now) {
                    assert!(d.len() <= MAX_FRAME);
                    if to_b.len() < 512 {
                        to_b.push(d);
                    }
                }
                for d in b.poll(now) {
                    assert!(d.len() <= MAX_FRAME);
                    if to_a.len() < 512 {
                        to_a.push(d);
                    }
                }
            }
            Op::Push(n) => {
                for i in 0..u16::from(n) {
                    a.push(now, rec(i));
                }
            }
            Op::RestartA { later } => {
                epoch_a = if later {
                    epoch_a + 1
                } else {
                    epoch_a.saturating_sub(1)
                };
                a = Session::new(&KEY, A, epoch_a, B, settings());
                a.request_resync();
                to_b.clear();
            }
            Op::ResyncB => b.force_resync(),
        }
    }
});
