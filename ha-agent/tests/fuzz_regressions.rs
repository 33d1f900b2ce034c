//! Inputs the fuzz targets (fuzz/, docs/fuzzing.md) found, replayed as
//! tests (their fixtures are in `fuzz/regressions/<target>/`, replayed by
//! every fuzz run too).

use std::panic::{AssertUnwindSafe, catch_unwind};

use ha_agent::sync::{
    frame::{Crypto, FrameError, Header, Kind},
    session::{Session, Settings},
};

const KEY: [u8; 32] = [0x5a; 32];
const A: u32 = 0x0aff_0001;
const B: u32 = 0x0aff_0002;

/// fuzz/regressions/sync_session/seq-u64-max: one Data frame, authenticated
/// (a key holder's), epoch and seq `u64::MAX`, as the first frame B sees.
/// B takes its seq as the next expected one, then computes
/// `next_expected + WINDOW`, which overflows: the sync thread panics in a
/// build with overflow checks, and in a release build the comparison wraps
/// (the frame is called out of window, but the session already adopted the
/// epoch `u64::MAX`, so every genuine frame after it is rejected as an old
/// epoch until the agent restarts).
#[test]
fn a_frame_with_the_largest_sequence_number_is_rejected_without_panicking() {
    let crypto = Crypto::new(&KEY);
    let mut b = Session::new(&KEY, B, 2_000, A, Settings::default());
    let forged = crypto.seal(
        &Header {
            kind: Kind::Data,
            sender: A,
            epoch: u64::MAX,
            seq: u64::MAX,
            ack: 0,
            to_epoch: 2_000,
        },
        &[],
    );
    let got = catch_unwind(AssertUnwindSafe(|| b.on_datagram(&forged)));
    assert!(got.is_ok(), "on_datagram panicked");
    // And the genuine peer is still heard afterwards.
    let genuine = crypto.seal(
        &Header {
            kind: Kind::Hello,
            sender: A,
            epoch: 1_000,
            seq: 1,
            ack: 0,
            to_epoch: 0,
        },
        &[],
    );
    assert_ne!(b.on_datagram(&genuine), Err(FrameError::OldEpoch));
}
