//! Adverts as the raw socket carries them: an IPv4 header followed by the
//! VRRP message. [`parse`] validates a received packet in the order the
//! checks are cheapest and most telling (IPv4 header, TTL, peer, VRRP wire
//! format and checksum, VRID) and names the first that fails; [`ip_packet`]
//! frames an advert for sending (IP_HDRINCL). [`parse6`] does the same for
//! an advert received over IPv6 on the HA link, whose header the raw socket
//! gives apart (source, destination, hop limit).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{
    auth::TRAILER_LEN,
    wire::{self, PROTOCOL, TTL},
};

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
    /// From one of our own addresses (a reflection or a replay of ours).
    Own,
    /// Authentication (see [`super::auth`]): no trailer where one is
    /// required (enforce mode, or a data path).
    AuthMissing,
    /// A trailer of another scheme, or one where none is expected.
    AuthMalformed,
    /// A key id we do not hold.
    AuthUnknownKey,
    /// The tag does not verify: forged, altered, or another key.
    AuthBadTag,
    /// The sender's clock is outside the `time` window.
    AuthStale,
    /// Not newer than what that sender already sent (a replay).
    AuthReplay,
}

impl Rejected {
    /// Every reason, in a fixed order (status, metrics).
    pub const ALL: [Rejected; 13] = [
        Rejected::TruncatedIp,
        Rejected::Ttl,
        Rejected::Malformed,
        Rejected::NotPeer,
        Rejected::UnknownVrid,
        Rejected::ZeroInterval,
        Rejected::Own,
        Rejected::AuthMissing,
        Rejected::AuthMalformed,
        Rejected::AuthUnknownKey,
        Rejected::AuthBadTag,
        Rejected::AuthStale,
        Rejected::AuthReplay,
    ];

    /// The metric label / status name.
    pub const fn name(self) -> &'static str {
        match self {
            Rejected::TruncatedIp => "truncated_ip",
            Rejected::Ttl => "ttl",
            Rejected::Malformed => "malformed",
            Rejected::NotPeer => "not_peer",
            Rejected::UnknownVrid => "unknown_vrid",
            Rejected::ZeroInterval => "zero_interval",
            Rejected::Own => "own_address",
            Rejected::AuthMissing => "auth_missing",
            Rejected::AuthMalformed => "auth_malformed",
            Rejected::AuthUnknownKey => "auth_unknown_key",
            Rejected::AuthBadTag => "auth_bad_tag",
            Rejected::AuthStale => "auth_stale",
            Rejected::AuthReplay => "auth_replay",
        }
    }

    /// Whether authentication refused it.
    pub const fn is_auth(self) -> bool {
        matches!(
            self,
            Rejected::AuthMissing
                | Rejected::AuthMalformed
                | Rejected::AuthUnknownKey
                | Rejected::AuthBadTag
                | Rejected::AuthStale
                | Rejected::AuthReplay
        )
    }
}

impl From<super::auth::Failure> for Rejected {
    fn from(f: super::auth::Failure) -> Rejected {
        use super::auth::Failure;
        match f {
            Failure::Missing => Rejected::AuthMissing,
            Failure::Malformed => Rejected::AuthMalformed,
            Failure::UnknownKey => Rejected::AuthUnknownKey,
            Failure::BadTag => Rejected::AuthBadTag,
            Failure::Stale => Rejected::AuthStale,
            Failure::Replay => Rejected::AuthReplay,
        }
    }
}

/// A received, validated advert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub src: Ipv4Addr,
    pub advert: wire::Repr,
    /// Where the VRRP PDU (header and addresses) is in the packet.
    pub pdu: std::ops::Range<usize>,
    /// The `auth_hmac` trailer: the packet had exactly
    /// [`TRAILER_LEN`] bytes after the PDU (checked by the core's
    /// [`super::auth::Verifier`]).
    pub trailer: Option<[u8; TRAILER_LEN]>,
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
    // What the IPv4 header says is the packet (a link layer may pad it).
    let total = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    let bytes = if (ihl..bytes.len()).contains(&total) {
        &bytes[..total]
    } else {
        bytes
    };
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
    let end = ihl + packet.message().len();
    let trailer = bytes
        .get(end..)
        .and_then(|rest| <[u8; TRAILER_LEN]>::try_from(rest).ok());
    Ok(Received {
        src,
        advert,
        pdu: ihl..end,
        trailer,
    })
}

/// Validates a VRRP message received over IPv6 (RFC 9568 section 5.1.2:
/// from a link-local source, hop limit 255; the checksum over the IPv6
/// pseudo-header). `peer` names the peer a link-local source belongs to:
/// the election knows a peer by its HA address whichever family carried
/// its advert (so a tie between equal priorities is broken alike over
/// either). `own`: the receiving socket's own address (a reflection of our
/// advert).
pub fn parse6(
    bytes: &[u8],
    header: Header6,
    peer: impl Fn(Ipv6Addr) -> Option<Ipv4Addr>,
    known_vrid: impl Fn(u8) -> bool,
) -> Result<Received, (Rejected, Option<IpAddr>)> {
    let Header6 {
        src,
        dst,
        hop_limit,
        own,
    } = header;
    let from = Some(IpAddr::V6(src));
    if hop_limit != TTL {
        return Err((Rejected::Ttl, from));
    }
    if src == own {
        return Err((Rejected::Own, from));
    }
    if !src.is_unicast_link_local() {
        return Err((Rejected::NotPeer, from));
    }
    let Some(identity) = peer(src) else {
        return Err((Rejected::NotPeer, from));
    };
    let packet = wire::Packet::new_checked_in(bytes, wire::Family::V6)
        .map_err(|_| (Rejected::Malformed, from))?;
    let advert = wire::Repr::parse(&packet, src, dst).map_err(|e| {
        (
            if e == wire::WireError::ZeroInterval {
                Rejected::ZeroInterval
            } else {
                Rejected::Malformed
            },
            from,
        )
    })?;
    if !known_vrid(advert.vrid) {
        return Err((Rejected::UnknownVrid, from));
    }
    let end = packet.message().len();
    let trailer = bytes
        .get(end..)
        .and_then(|rest| <[u8; TRAILER_LEN]>::try_from(rest).ok());
    Ok(Received {
        src: identity,
        advert,
        pdu: 0..end,
        trailer,
    })
}

/// What an IPv6 raw socket tells of a received advert's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    /// The receiving socket's own (link-local) address.
    pub own: Ipv6Addr,
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
            addrs: vec![Ipv4Addr::new(10, 0, 0, 1).into()],
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

    const PEER6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
    const OWN6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

    fn advert6(src: Ipv6Addr) -> Vec<u8> {
        wire::Repr {
            vrid: 51,
            priority: 100,
            interval_cs: 1,
            addrs: vec!["fd00::1".parse().unwrap()],
        }
        .to_bytes(src, wire::MULTICAST6)
    }

    fn check6(bytes: &[u8], src: Ipv6Addr, hop_limit: u8) -> Result<Received, Rejected> {
        let header = Header6 {
            src,
            dst: wire::MULTICAST6,
            hop_limit,
            own: OWN6,
        };
        parse6(bytes, header, |a| (a == PEER6).then_some(PEER), |v| v == 51).map_err(|(r, _)| r)
    }

    #[test]
    fn ipv6_adverts_are_validated_in_order() {
        let ok = check6(&advert6(PEER6), PEER6, 255).unwrap();
        assert_eq!((ok.src, ok.pdu.clone(), ok.trailer), (PEER, 0..24, None));
        assert_eq!(ok.advert.addrs, vec!["fd00::1".parse::<IpAddr>().unwrap()]);
        assert_eq!(check6(&advert6(PEER6), PEER6, 64), Err(Rejected::Ttl));
        assert_eq!(check6(&advert6(OWN6), OWN6, 255), Err(Rejected::Own));
        let global: Ipv6Addr = "2001:db8::2".parse().unwrap();
        assert_eq!(
            check6(&advert6(global), global, 255),
            Err(Rejected::NotPeer)
        );
        let stranger = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 9);
        assert_eq!(
            check6(&advert6(stranger), stranger, 255),
            Err(Rejected::NotPeer)
        );
        // Checksummed for another source: not this one's.
        assert_eq!(check6(&advert6(OWN6), PEER6, 255), Err(Rejected::Malformed));
        // An IPv4 advert's 4-byte address read as IPv6: too short.
        let v4 = advert(PEER);
        assert_eq!(check6(&v4, PEER6, 255), Err(Rejected::Malformed));
        for len in 0..24 {
            assert_eq!(
                check6(&advert6(PEER6)[..len], PEER6, 255),
                Err(Rejected::Malformed)
            );
        }
        let mut other = advert6(PEER6);
        other[1] = 52;
        wire::Packet::new_unchecked_in(&mut other[..], wire::Family::V6)
            .fill_checksum(PEER6, wire::MULTICAST6);
        assert_eq!(check6(&other, PEER6, 255), Err(Rejected::UnknownVrid));
    }

    #[test]
    fn what_we_frame_is_what_we_accept() {
        let a = advert(PEER);
        let p = ip_packet(PEER, MULTICAST, &a);
        assert_eq!(&p[..2], &[0x45, 0xc0], "DSCP CS6");
        assert_eq!(check(&p).unwrap().src, PEER);
    }
}
