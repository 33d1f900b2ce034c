//! VRRPv3 wire format (`ha_core::vrrp::wire`): arbitrary bytes never panic
//! `Packet::new_checked` / `Repr::parse`; whatever parses re-emits to the
//! same message (reserved bits aside) and parses back to the same `Repr`.
#![no_main]

use std::net::Ipv4Addr;

use ha_core::vrrp::wire::{self, Packet, Repr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes are the pseudo-header's addresses, the rest the message.
    let (src, dst, msg) = match data {
        [a, b, c, d, e, f, g, h, rest @ ..] => (
            Ipv4Addr::new(*a, *b, *c, *d),
            Ipv4Addr::new(*e, *f, *g, *h),
            rest,
        ),
        _ => (Ipv4Addr::LOCALHOST, wire::MULTICAST, data),
    };
    let Ok(p) = Packet::new_checked(msg) else {
        return;
    };
    check(&p, src, dst);
    // The checksum stops almost every input: fix it up to reach the rest.
    let mut fixed = msg.to_vec();
    let mut q = Packet::new_unchecked(&mut fixed[..]);
    q.fill_checksum(src, dst);
    let q = Packet::new_checked(&fixed[..]).expect("fixing the checksum keeps it well-formed");
    check(&q, src, dst);
});

fn p_checksum(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[6], b[7]])
}

fn check(p: &Packet<&[u8]>, src: Ipv4Addr, dst: Ipv4Addr) {
    let Ok(repr) = Repr::parse(p, src, dst) else {
        return;
    };
    assert!(repr.interval_cs >= 1 && repr.interval_cs <= wire::MAX_INTERVAL_CS);
    assert_eq!(repr.addrs.len(), usize::from(p.count()));
    let bytes = repr.to_bytes(src, dst);
    // Byte for byte the message, but for the reserved nibble (sent as 0, and
    // then the checksum differs by exactly what the nibble contributed) and
    // the checksum's two ones'-complement zeros: a received 0xffff is as
    // valid as the 0x0000 we compute (RFC 1071; found by this target).
    let msg = p.message();
    assert_eq!(bytes.len(), msg.len());
    assert_eq!(bytes[..4], msg[..4]);
    assert_eq!(bytes[5], msg[5]);
    assert_eq!(bytes[4], msg[4] & 0x0f);
    assert_eq!(bytes[8..], msg[8..]);
    if msg[4] & 0xf0 == 0 {
        let (ours, theirs) = (p_checksum(&bytes), p_checksum(msg));
        assert!(
            ours == theirs || (ours == 0 && theirs == 0xffff),
            "checksum {theirs:#06x} accepted, {ours:#06x} emitted"
        );
    }
    let again = Packet::new_checked(&bytes[..]).expect("what we emit is well-formed");
    assert_eq!(Repr::parse(&again, src, dst).as_ref(), Ok(&repr));
}
