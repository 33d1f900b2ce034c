//! Fast-heartbeat replies as the probe socket delivers them
//! (`ha_core::heartbeat::Prober::on_frame`): never panics; a refused frame
//! changes nothing but the rejection count; and no frame proves the peer's
//! term over (`Verdict::Lapsed`) without the proof only its agent can write.
//! The frame's sequence and tag are those of a probe just sent, so the
//! fuzzer gets past the tag to the rest of the reply.
#![no_main]

use std::{net::Ipv4Addr, time::Duration};

use ha_common::{
    data::Ownership,
    heartbeat::{ProbeConfig, ProbeTerm, WIRE_LEN, offset},
};
use ha_core::heartbeat::{Prober, Settings, Verdict, reflect, term_proof};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [3; 32];
const ME: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);

fuzz_target!(|data: &[u8]| {
    let mut p = Prober::new(
        Settings {
            interval: Duration::from_millis(1),
            misses_min: 3,
            misses_max: 29,
            key: KEY,
            session: [9; 16],
            local: ME,
            peer: PEER,
        },
        2,
    );
    p.start(Duration::ZERO);
    p.set_rate(true, Duration::from_millis(10), Duration::ZERO);
    // The peer master answers one round (term 4, owning): the prober is
    // armed, as in service.
    let cfg = ProbeConfig {
        enabled: 1,
        local_addr: u32::from_ne_bytes(PEER.octets()),
        peer_addr: u32::from_ne_bytes(ME.octets()),
        _pad: 0,
    };
    let term = ProbeTerm {
        term: 4,
        proof: term_proof(&KEY, PEER, 4),
    };
    let own = Ownership {
        groups: 1,
        lease_expires_ns: 1_000_000_000,
    };
    let mut out = Vec::new();
    p.tick(Duration::ZERO, &mut out);
    let genuine = reflect(&out[0].frame, &cfg, &term, &own, 0).expect("answered");
    assert_eq!(p.on_frame(0, [2; 6], &genuine, Duration::ZERO), Ok(None));
    out.clear();
    p.tick(Duration::from_millis(1), &mut out);
    let probe = out[0].frame;

    let before = p.report();
    check(&mut p, data, &before);
    // The same bytes with the sequence and tag of the probe just sent.
    if data.len() >= WIRE_LEN {
        let mut b = data.to_vec();
        b[offset::SEQ..offset::TAG + 16].copy_from_slice(&probe[offset::SEQ..offset::TAG + 16]);
        let before = p.report();
        check(&mut p, &b, &before);
    }
});

fn check(p: &mut Prober, bytes: &[u8], before: &ha_core::heartbeat::Report) {
    let path = usize::from(bytes.first().copied().unwrap_or(0) & 1);
    match p.on_frame(path, [2; 6], bytes, Duration::from_millis(1)) {
        Err(_) => {
            let after = p.report();
            assert_eq!(after.replies, before.replies);
            assert_eq!(after.peer, before.peer);
            assert_eq!(
                after.rejected.values().sum::<u64>(),
                before.rejected.values().sum::<u64>() + 1
            );
        }
        Ok(Some(Verdict::Lapsed)) => {
            let term =
                u64::from_be_bytes(bytes[offset::TERM..offset::TERM + 8].try_into().unwrap());
            assert_eq!(
                bytes[offset::PROOF..offset::PROOF + 16],
                term_proof(&KEY, PEER, term),
                "a Lapsed verdict without the peer's proof"
            );
        }
        Ok(_) => {}
    }
}
