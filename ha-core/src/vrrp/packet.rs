//! Adverts as the raw socket carries them: an IPv4 header followed by the
//! VRRP message. [`parse`] validates a received packet in the order the
//! checks are cheapest and most telling (IPv4 header, TTL, peer, VRRP wire
//! format and checksum, VRID) and names the first that fails; [`ip_packet`]
//! frames an advert for sending (IP_HDRINCL).

use std::net::Ipv4Addr;

use super::wire::{self, PROTOCOL, TTL};

/// Why a received packet was not an advert we act on (counted and logged).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Rejected {
    /// Shorter than an IPv4 header, or its header length is wrong.
    TruncatedIp,
    /// TTL was not 255 (it may have been routed).
    Ttl,
    /// VRRP version, type, length or checksum.
    Malformed,
    /// Not from a configured peer.
    NotPeer,
    /// A VRID we do not run.
    UnknownVrid,
    /// An advert interval of 0.
    ZeroInterval,
}

impl Rejected {
    /// Every reason, in a fixed order (status, metrics).
    pub const ALL: [Rejected; 6] = [
        Rejected::TruncatedIp,
        Rejected::Ttl,
        Rejected::Malformed,
        Rejected::NotPeer,
        Rejected::UnknownVrid,
        Rejected::ZeroInterval,
    ];
}

/// A received, validated advert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub src: Ipv4Addr,
    pub advert: wire::Repr,
}

/// An IPv4 header (TTL 255, protocol 112, DSCP CS6 like keepalived)
/// followed by `payload`; the kernel fills in the header checksum and the
/// packet id.
pub fn ip_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0xc0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, TTL, PROTOCOL, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// Validates a raw-socket packet (IPv4 header + VRRP). The source address
/// comes with every rejection that got far enough to read it.
pub fn parse(
    bytes: &[u8],
    is_peer: impl Fn(Ipv4Addr) -> bool,
    known_vrid: impl Fn(u8) -> bool,
) -> Result<Received, (Rejected, Option<Ipv4Addr>)> {
    if bytes.len() < 20 {
        return Err((Rejected::TruncatedIp, None));
    }
    let ihl = usize::from(bytes[0] & 0x0f) * 4;
    if ihl < 20 || bytes.len() < ihl {
        return Err((Rejected::TruncatedIp, None));
    }
    let src = Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]);
    let dst = Ipv4Addr::new(bytes[16], bytes[17], bytes[18], bytes[19]);
    if bytes[8] != TTL {
        return Err((Rejected::Ttl, Some(src)));
    }
    if !is_peer(src) {
        return Err((Rejected::NotPeer, Some(src)));
    }
    let packet =
        wire::Packet::new_checked(&bytes[ihl..]).map_err(|_| (Rejected::Malformed, Some(src)))?;
    let advert = wire::Repr::parse(&packet, src, dst).map_err(|e| {
        (
            if e == wire::WireError::ZeroInterval {
                Rejected::ZeroInterval
            } else {
                Rejected::Malformed
            },
            Some(src),
        )
    })?;
    if !known_vrid(advert.vrid) {
        return Err((Rejected::UnknownVrid, Some(src)));
    }
    Ok(Received { src, advert })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vrrp::wire::MULTICAST;

    const PEER: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);

    fn framed(src: Ipv4Addr, ttl: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = ip_packet(src, MULTICAST, payload);
        p[8] = ttl;
        p
    }

    fn advert(src: Ipv4Addr) -> Vec<u8> {
        wire::Repr {
            vrid: 51,
            priority: 100,
            interval_cs: 1,
            addrs: vec![Ipv4Addr::new(10, 0, 0, 1)],
        }
        .to_bytes(src, MULTICAST)
    }

    fn check(bytes: &[u8]) -> Result<Received, Rejected> {
        parse(bytes, |a| a == PEER, |v| v == 51).map_err(|(r, _)| r)
    }

    #[test]
    fn received_packets_are_validated_in_order() {
        assert_eq!(
            check(&framed(PEER, 255, &advert(PEER)))
                .unwrap()
                .advert
                .priority,
            100
        );
        assert_eq!(check(&framed(PEER, 254, &advert(PEER))), Err(Rejected::Ttl));
        let stranger = Ipv4Addr::new(10, 255, 0, 9);
        assert_eq!(
            check(&framed(stranger, 255, &advert(stranger))),
            Err(Rejected::NotPeer)
        );
        let mut bad = advert(PEER);
        bad[2] ^= 0xff;
        assert_eq!(check(&framed(PEER, 255, &bad)), Err(Rejected::Malformed));
        let mut other = wire::Repr {
            vrid: 52,
            priority: 1,
            interval_cs: 1,
            addrs: vec![],
        }
        .to_bytes(PEER, MULTICAST);
        assert_eq!(
            check(&framed(PEER, 255, &other)),
            Err(Rejected::UnknownVrid)
        );
        other.truncate(4);
        assert_eq!(check(&framed(PEER, 255, &other)), Err(Rejected::Malformed));
        assert_eq!(check(&[0x45; 10]), Err(Rejected::TruncatedIp));
        let zero = wire::Repr {
            vrid: 51,
            priority: 1,
            interval_cs: 0,
            addrs: vec![],
        }
        .to_bytes(PEER, MULTICAST);
        assert_eq!(
            check(&framed(PEER, 255, &zero)),
            Err(Rejected::ZeroInterval)
        );
    }

    #[test]
    fn a_captured_keepalived_packet_passes_every_check() {
        let r = parse(
            &crate::vrrp::wire::tests::KEEPALIVED_ADVERT,
            |a| a == PEER,
            |v| v == 51,
        )
        .unwrap();
        assert_eq!(
            (
                r.src,
                r.advert.vrid,
                r.advert.priority,
                r.advert.interval_cs
            ),
            (PEER, 51, 100, 100)
        );
    }

    #[test]
    fn what_we_frame_is_what_we_accept() {
        let a = advert(PEER);
        let p = ip_packet(PEER, MULTICAST, &a);
        assert_eq!(&p[..2], &[0x45, 0xc0], "DSCP CS6");
        assert_eq!(check(&p).unwrap().src, PEER);
    }
}
