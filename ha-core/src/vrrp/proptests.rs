//! Property tests of the VRRP parsers that see network bytes ([`wire`] and
//! [`packet`]): arbitrary bytes never panic, what we emit parses back to the
//! same advert, and a single changed byte is either rejected or describes
//! exactly the advert it now reads as (nothing in between is silently
//! accepted). The fuzz targets `vrrp_wire` and `vrrp_packet` (fuzz/) explore
//! the same properties for longer; these run with every `cargo test`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::{
    packet::{self, Rejected},
    wire::{self, Packet, Repr},
};

fn addr() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn addr6() -> impl Strategy<Value = Ipv6Addr> {
    any::<u128>().prop_map(Ipv6Addr::from)
}

fn link_local() -> impl Strategy<Value = Ipv6Addr> {
    any::<u64>().prop_map(|low| Ipv6Addr::from((0xfe80_u128 << 112) | u128::from(low)))
}

/// Any advert we could send: the interval's 12 bits, not 0; up to 255
/// addresses (the count is one byte). Mostly few addresses, like real ones.
fn repr() -> impl Strategy<Value = Repr> {
    (
        any::<u8>(),
        any::<u8>(),
        1..=wire::MAX_INTERVAL_CS,
        prop_oneof![
            4 => prop::collection::vec(addr(), 0..8),
            1 => prop::collection::vec(addr(), 0..=255),
        ],
    )
        .prop_map(|(vrid, priority, interval_cs, addrs)| Repr {
            vrid,
            priority,
            interval_cs,
            addrs: addrs.into_iter().map(IpAddr::V4).collect(),
        })
}

/// Any IPv6 advert we could send.
fn repr6() -> impl Strategy<Value = Repr> {
    (
        any::<u8>(),
        any::<u8>(),
        1..=wire::MAX_INTERVAL_CS,
        prop::collection::vec(addr6(), 0..=64),
    )
        .prop_map(|(vrid, priority, interval_cs, addrs)| Repr {
            vrid,
            priority,
            interval_cs,
            addrs: addrs.into_iter().map(IpAddr::V6).collect(),
        })
}

fn header6(src: Ipv6Addr, hop_limit: u8) -> packet::Header6 {
    packet::Header6 {
        src,
        dst: wire::MULTICAST6,
        hop_limit,
        own: Ipv6Addr::LOCALHOST,
    }
}

/// Parses VRRP message bytes as the receive path does.
fn parse_wire(bytes: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<Repr, wire::WireError> {
    Repr::parse(&Packet::new_checked(bytes)?, src, dst)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..1100),
        src in addr(),
        dst in addr(),
        peer in any::<bool>(),
        vrid in any::<bool>(),
    ) {
        let _ = parse_wire(&bytes, src, dst);
        match packet::parse(&bytes, |_| peer, |_| vrid) {
            Ok(r) => prop_assert!(peer && vrid, "accepted {r:?}"),
            // Every rejection past the IPv4 header names the source.
            Err((reason, from)) => prop_assert_eq!(from.is_none(), reason == Rejected::TruncatedIp),
        }
    }

    #[test]
    fn emit_then_parse_round_trips(r in repr(), src in addr(), dst in addr()) {
        let bytes = r.to_bytes(src, dst);
        prop_assert_eq!(bytes.len(), r.buffer_len(wire::Family::V4));
        prop_assert_eq!(parse_wire(&bytes, src, dst), Ok(r.clone()));
        // And framed in IPv4 as we send it, through the raw-socket checks.
        let framed = packet::ip_packet(src, dst, &bytes);
        let got = packet::parse(&framed, |a| a == src, |v| v == r.vrid);
        prop_assert_eq!(got, Ok(packet::Received { src, advert: r, pdu: 20..framed.len(), trailer: None }));
    }

    #[test]
    fn a_changed_byte_is_rejected_or_read_exactly(
        r in repr(),
        src in addr(),
        at in any::<prop::sample::Index>(),
        xor in 1..=255u8,
    ) {
        let dst = wire::MULTICAST;
        let mut bytes = r.to_bytes(src, dst);
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        if let Ok(got) = parse_wire(&bytes, src, dst) {
            prop_assert_eq!(got.to_bytes(src, dst), bytes, "byte {} accepted as {:?}", i, got);
        }
    }

    #[test]
    fn a_changed_byte_of_the_ip_packet_is_rejected_or_read_exactly(
        r in repr(),
        src in addr(),
        at in any::<prop::sample::Index>(),
        xor in 1..=255u8,
    ) {
        let dst = wire::MULTICAST;
        let mut framed = packet::ip_packet(src, dst, &r.to_bytes(src, dst));
        let i = at.index(framed.len());
        framed[i] ^= xor;
        if let Ok(got) = packet::parse(&framed, |a| a == src, |v| v == r.vrid) {
            // Only the IPv4 fields the receive path does not read may change
            // (TOS, length, id, fragment, protocol, header checksum: the
            // kernel has checked them); the advert is then read exactly.
            let ihl = usize::from(framed[0] & 0x0f) * 4;
            let emitted = got.advert.to_bytes(got.src, dst);
            prop_assert_eq!(&framed[ihl..ihl + emitted.len()], &emitted[..], "byte {} accepted", i);
            prop_assert_eq!(got.src, src);
        }
    }

    #[test]
    fn arbitrary_bytes_over_ipv6_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..1100),
        src in link_local(),
        hop_limit in any::<u8>(),
        vrid in any::<bool>(),
    ) {
        let peer = Ipv4Addr::new(10, 255, 0, 2);
        match packet::parse6(&bytes, header6(src, hop_limit), |_| Some(peer), |_| vrid) {
            Ok(r) => prop_assert!(vrid && hop_limit == 255 && r.src == peer, "accepted {r:?}"),
            Err((_, from)) => prop_assert_eq!(from, Some(IpAddr::V6(src))),
        }
    }

    #[test]
    fn ipv6_adverts_round_trip_and_a_changed_byte_is_rejected_or_read_exactly(
        r in repr6(),
        src in link_local(),
        at in any::<prop::sample::Index>(),
        xor in 1..=255u8,
    ) {
        let peer = Ipv4Addr::new(10, 255, 0, 2);
        let dst = wire::MULTICAST6;
        let mut bytes = r.to_bytes(src, dst);
        prop_assert_eq!(bytes.len(), r.buffer_len(wire::Family::V6));
        let got = packet::parse6(&bytes, header6(src, 255), |_| Some(peer), |v| v == r.vrid);
        prop_assert_eq!(got, Ok(packet::Received { src: peer, advert: r.clone(), pdu: 0..bytes.len(), trailer: None }));
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        if let Ok(got) = packet::parse6(&bytes, header6(src, 255), |_| Some(peer), |_| true) {
            prop_assert_eq!(got.advert.to_bytes(src, dst), bytes, "byte {} accepted", i);
        }
    }
}
