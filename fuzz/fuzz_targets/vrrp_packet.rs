//! Adverts as the raw socket delivers them (`ha_core::vrrp::packet::parse`:
//! IPv4 header, TTL, peer, VRRP, VRID): never panics, rejects with a reason,
//! and an accepted advert framed again by `ip_packet` is accepted the same.
//! Its `auth_hmac` trailer, if any, goes through the verifier
//! (`ha_core::vrrp::auth`): never panics, and a trailer that verifies once
//! is a replay the second time. With bit 2 of the first byte set, the
//! rest is an advert received over IPv6 (`packet::parse6`: 16 bytes of
//! source, the hop limit, then the VRRP message): the same properties.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};

use ha_core::vrrp::{auth, packet, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Byte 0 picks which sources are peers and which VRIDs are known, so the
    // fuzzer reaches both sides of those checks.
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let is_peer = |a: Ipv4Addr| sel & 1 == 0 || a.octets()[3] & 1 == 0;
    let known_vrid = |v: u8| sel & 2 == 0 || v & 1 == 0;
    if sel & 4 != 0 {
        return over_ipv6(sel, bytes, known_vrid);
    }
    check(bytes, is_peer, known_vrid);
    // Fix the VRRP checksum (after the IPv4 header) to get past it.
    if bytes.len() >= 20 {
        let ihl = usize::from(bytes[0] & 0x0f) * 4;
        if ihl >= 20 && bytes.len() >= ihl + wire::HEADER_LEN {
            let mut fixed = bytes.to_vec();
            let src = Ipv4Addr::new(fixed[12], fixed[13], fixed[14], fixed[15]);
            let dst = Ipv4Addr::new(fixed[16], fixed[17], fixed[18], fixed[19]);
            if wire::Packet::new_checked(&fixed[ihl..]).is_ok() {
                wire::Packet::new_unchecked(&mut fixed[ihl..]).fill_checksum(src, dst);
                check(&fixed, is_peer, known_vrid);
            }
        }
    }
});

fn check(bytes: &[u8], is_peer: impl Fn(Ipv4Addr) -> bool, known_vrid: impl Fn(u8) -> bool) {
    match packet::parse(bytes, &is_peer, &known_vrid) {
        Ok(got) => {
            assert!(is_peer(got.src) && known_vrid(got.advert.vrid));
            let dst = Ipv4Addr::new(bytes[16], bytes[17], bytes[18], bytes[19]);
            let mut framed = packet::ip_packet(got.src, dst, &got.advert.to_bytes(got.src, dst));
            if let Some(t) = got.trailer {
                framed.extend_from_slice(&t);
                let total = framed.len() as u16;
                framed[2..4].copy_from_slice(&total.to_be_bytes());
            }
            let settings = auth::Settings {
                mode: auth::Mode::Enforce,
                anti_replay: auth::AntiReplay::Time { window_s: 5 },
                keys: vec![auth::Key::new(1, &[7; 32]).expect("a valid key")],
                active: 1,
            };
            let mut v = auth::Verifier::new(settings);
            let wall = std::time::Duration::from_secs(u64::from(bytes[0]) << 24);
            let pdu = &bytes[got.pdu.clone()];
            if v.check(wall, got.src, pdu, got.trailer.as_ref(), false) == Ok(true) {
                assert_eq!(
                    v.check(wall, got.src, pdu, got.trailer.as_ref(), false),
                    Err(auth::Failure::Replay)
                );
            }
            let again =
                packet::parse(&framed, &is_peer, &known_vrid).expect("what we frame parses");
            assert_eq!(
                (again.src, again.advert, again.trailer),
                (got.src, got.advert, got.trailer)
            );
        }
        Err((reason, src)) => {
            // Past the IPv4 header checks, the source is always named.
            assert_eq!(src.is_none(), reason == packet::Rejected::TruncatedIp);
        }
    }
}

/// An advert over IPv6: `bytes` is the source, the hop limit and the VRRP
/// message; checked as received, then with its checksum fixed.
fn over_ipv6(sel: u8, bytes: &[u8], known_vrid: impl Fn(u8) -> bool) {
    let Some((src, rest)) = bytes.split_first_chunk::<16>() else {
        return;
    };
    let Some((&hop_limit, msg)) = rest.split_first() else {
        return;
    };
    let header = packet::Header6 {
        src: Ipv6Addr::from(*src),
        dst: wire::MULTICAST6,
        hop_limit,
        own: Ipv6Addr::LOCALHOST,
    };
    let peer = Ipv4Addr::new(10, 255, 0, 2);
    let peer_of = |a: Ipv6Addr| (sel & 1 == 0 || a.octets()[15] & 1 == 0).then_some(peer);
    check6(msg, header, &peer_of, &known_vrid);
    if wire::Packet::new_checked_in(msg, wire::Family::V6).is_ok() {
        let mut fixed = msg.to_vec();
        wire::Packet::new_unchecked_in(&mut fixed[..], wire::Family::V6)
            .fill_checksum(header.src, header.dst);
        check6(&fixed, header, &peer_of, &known_vrid);
    }
}

fn check6(
    msg: &[u8],
    header: packet::Header6,
    peer_of: impl Fn(Ipv6Addr) -> Option<Ipv4Addr>,
    known_vrid: impl Fn(u8) -> bool,
) {
    match packet::parse6(msg, header, &peer_of, &known_vrid) {
        Ok(got) => {
            assert_eq!(Some(got.src), peer_of(header.src));
            assert!(header.hop_limit == 255 && header.src.is_unicast_link_local());
            assert!(known_vrid(got.advert.vrid));
            // What we emit for it parses to the same advert, and is the
            // message as received but for the reserved bits before the
            // interval (read as zero, sent as zero) and the checksum (0x0000
            // and 0xffff verify alike).
            let emitted = got.advert.to_bytes(header.src, header.dst);
            let again =
                packet::parse6(&emitted, header, &peer_of, &known_vrid).expect("what we emit parses");
            assert_eq!(again.advert, got.advert);
            let mut received = msg[got.pdu.clone()].to_vec();
            received[4] &= 0x0f;
            received[6..8].copy_from_slice(&emitted[6..8]);
            assert_eq!(received, emitted);
        }
        Err((_, src)) => assert_eq!(src, Some(header.src.into())),
    }
}
