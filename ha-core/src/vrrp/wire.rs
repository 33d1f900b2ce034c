//! VRRPv3 advertisements for IPv4 and IPv6 (RFC 9568 section 5), smoltcp
//! style: a [`Packet`] view over bytes whose only constructors for network
//! input are [`Packet::new_checked`] (IPv4) and [`Packet::new_checked_in`]
//! (either family: the family of the carrying IP packet says how long an
//! address is), and a [`Repr`] with `parse`/`emit`/`buffer_len`.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! |                       IPvX Address(es)                        |
//! ```
//! The checksum covers the VRRP message and the pseudo-header of the
//! carrying IP packet: IPv4 (source, destination, zero, protocol 112, VRRP
//! length) or IPv6 (RFC 8200 section 8.1: source, destination, 32-bit
//! length, next header 112), which sum alike.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of VRRP.
pub const PROTOCOL: u8 = 112;
/// The VRRP IPv4 multicast group.
pub const MULTICAST: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The VRRP IPv6 multicast group (ff02::12, link-local scope).
pub const MULTICAST6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);

/// The address family of an advert: how long each of its addresses is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// Bytes per address.
    pub const fn addr_len(self) -> usize {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    /// The family of `a`.
    pub const fn of(a: &IpAddr) -> Family {
        match a {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}
/// Adverts must be sent and received with this TTL.
pub const TTL: u8 = 255;
/// Version field of VRRPv3.
pub const VERSION: u8 = 3;
/// Type field of an ADVERTISEMENT.
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Fixed header length.
pub const HEADER_LEN: usize = 8;
/// Largest Max Adver Int (12 bits, centiseconds).
pub const MAX_INTERVAL_CS: u16 = 0x0fff;

mod field {
    use std::ops::Range;
    pub const VER_TYPE: usize = 0;
    pub const VRID: usize = 1;
    pub const PRIORITY: usize = 2;
    pub const COUNT: usize = 3;
    pub const INTERVAL: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
    pub const ADDRS: usize = 8;
}

/// Why bytes are not a valid advertisement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated: {len} bytes, need {need}")]
    Truncated { len: usize, need: usize },
    #[error("version {0}, not 3")]
    Version(u8),
    #[error("type {0}, not ADVERTISEMENT (1)")]
    Type(u8),
    #[error("bad checksum {found:#06x}, expected {expected:#06x}")]
    Checksum { found: u16, expected: u16 },
    #[error("advert interval 0")]
    ZeroInterval,
}

/// A read/write view of a VRRP message.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    family: Family,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps bytes without checks: only for buffers we are about to fill
    /// (IPv4 addresses).
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet {
            buffer,
            family: Family::V4,
        }
    }

    /// [`Packet::new_unchecked`] for addresses of `family`.
    pub const fn new_unchecked_in(buffer: T, family: Family) -> Self {
        Packet { buffer, family }
    }

    /// Wraps bytes from the network carried over IPv4: checks the length
    /// covers the header and the announced addresses, and the version and
    /// type.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        Self::new_checked_in(buffer, Family::V4)
    }

    /// [`Packet::new_checked`] for a message carried over `family`.
    pub fn new_checked_in(buffer: T, family: Family) -> Result<Self, WireError> {
        let p = Packet { buffer, family };
        let len = p.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated {
                len,
                need: HEADER_LEN,
            });
        }
        let need = HEADER_LEN + family.addr_len() * usize::from(p.count());
        if len < need {
            return Err(WireError::Truncated { len, need });
        }
        if p.version() != VERSION {
            return Err(WireError::Version(p.version()));
        }
        if p.kind() != TYPE_ADVERTISEMENT {
            return Err(WireError::Type(p.kind()));
        }
        Ok(p)
    }

    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }
    /// The family of the addresses.
    pub fn family(&self) -> Family {
        self.family
    }
    pub fn version(&self) -> u8 {
        self.b()[field::VER_TYPE] >> 4
    }
    pub fn kind(&self) -> u8 {
        self.b()[field::VER_TYPE] & 0x0f
    }
    pub fn vrid(&self) -> u8 {
        self.b()[field::VRID]
    }
    pub fn priority(&self) -> u8 {
        self.b()[field::PRIORITY]
    }
    pub fn count(&self) -> u8 {
        self.b()[field::COUNT]
    }
    /// Max Adver Int in centiseconds (12 bits).
    pub fn interval_cs(&self) -> u16 {
        u16::from_be_bytes([self.b()[4], self.b()[5]]) & MAX_INTERVAL_CS
    }
    pub fn checksum(&self) -> u16 {
        u16::from_be_bytes([self.b()[6], self.b()[7]])
    }
    /// The `i`th address (`i < count`, guaranteed by `new_checked`).
    pub fn addr(&self, i: usize) -> IpAddr {
        let o = field::ADDRS + self.family.addr_len() * i;
        let b = self.b();
        match self.family {
            Family::V4 => Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]).into(),
            Family::V6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[o..o + 16]);
                Ipv6Addr::from(a).into()
            }
        }
    }
    /// The message as covered by the checksum (header + addresses).
    pub fn message(&self) -> &[u8] {
        &self.b()[..HEADER_LEN + self.family.addr_len() * usize::from(self.count())]
    }
    /// Whether the checksum matches for this pseudo-header.
    pub fn verify_checksum(&self, src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> bool {
        checksum(src, dst, self.message()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_version_type(&mut self, version: u8, kind: u8) {
        self.m()[field::VER_TYPE] = (version << 4) | (kind & 0x0f);
    }
    pub fn set_vrid(&mut self, v: u8) {
        self.m()[field::VRID] = v;
    }
    pub fn set_priority(&mut self, v: u8) {
        self.m()[field::PRIORITY] = v;
    }
    pub fn set_count(&mut self, v: u8) {
        self.m()[field::COUNT] = v;
    }
    pub fn set_interval_cs(&mut self, cs: u16) {
        self.m()[field::INTERVAL].copy_from_slice(&(cs & MAX_INTERVAL_CS).to_be_bytes());
    }
    pub fn set_checksum(&mut self, v: u16) {
        self.m()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }
    /// Writes the `i`th address; one of the other family is not written.
    pub fn set_addr(&mut self, i: usize, a: IpAddr) {
        let o = field::ADDRS + self.family.addr_len() * i;
        match (self.family, a) {
            (Family::V4, IpAddr::V4(a)) => self.m()[o..o + 4].copy_from_slice(&a.octets()),
            (Family::V6, IpAddr::V6(a)) => self.m()[o..o + 16].copy_from_slice(&a.octets()),
            _ => {}
        }
    }
    /// Computes and stores the checksum.
    pub fn fill_checksum(&mut self, src: impl Into<IpAddr>, dst: impl Into<IpAddr>) {
        self.set_checksum(0);
        let c = checksum(src, dst, self.message());
        self.set_checksum(c);
    }
}

/// Internet checksum of the pseudo-header (IPv4 or IPv6, by the family of
/// the addresses) followed by `msg`. IPv6's 32-bit length and its three
/// zero bytes before the next header add the same words as IPv4's.
pub fn checksum(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, msg: &[u8]) -> u16 {
    let octets = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for chunk in bytes.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&octets(src.into()));
    add(&octets(dst.into()));
    add(&[0, PROTOCOL]);
    add(&(msg.len() as u16).to_be_bytes());
    add(msg);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A parsed advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repr {
    pub vrid: u8,
    pub priority: u8,
    /// Max Adver Int in centiseconds (1..=4095).
    pub interval_cs: u16,
    /// The virtual addresses. Emitted over one family, those of the other
    /// are left out (over a data path an IPv6 instance's advert, framed in
    /// IPv4, lists none: the election does not read them).
    pub addrs: Vec<IpAddr>,
}

impl Repr {
    /// Parses a checked packet received from `src` to `dst`, verifying the
    /// checksum.
    pub fn parse<T: AsRef<[u8]>>(
        p: &Packet<T>,
        src: impl Into<IpAddr>,
        dst: impl Into<IpAddr>,
    ) -> Result<Repr, WireError> {
        let (src, dst) = (src.into(), dst.into());
        if !p.verify_checksum(src, dst) {
            let expected = {
                let mut m = p.message().to_vec();
                m[6] = 0;
                m[7] = 0;
                checksum(src, dst, &m)
            };
            return Err(WireError::Checksum {
                found: p.checksum(),
                expected,
            });
        }
        if p.interval_cs() == 0 {
            return Err(WireError::ZeroInterval);
        }
        Ok(Repr {
            vrid: p.vrid(),
            priority: p.priority(),
            interval_cs: p.interval_cs(),
            addrs: (0..usize::from(p.count())).map(|i| p.addr(i)).collect(),
        })
    }

    /// The family of the instance advertising: IPv6 when its addresses are
    /// (an instance has addresses of one family).
    pub fn family(&self) -> Family {
        match self.addrs.first() {
            Some(a) => Family::of(a),
            None => Family::V4,
        }
    }

    /// The addresses emitted over `family` (at most 255).
    fn addrs_in(&self, family: Family) -> impl Iterator<Item = IpAddr> + '_ {
        self.addrs
            .iter()
            .copied()
            .filter(move |a| Family::of(a) == family)
            .take(255)
    }

    /// Bytes needed to emit this advert over `family`.
    pub fn buffer_len(&self, family: Family) -> usize {
        HEADER_LEN + family.addr_len() * self.addrs_in(family).count()
    }

    /// Writes the advert (checksummed for `src` -> `dst`) into `p`, whose
    /// family must be that of `src`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        p: &mut Packet<T>,
        src: impl Into<IpAddr>,
        dst: impl Into<IpAddr>,
    ) {
        let family = p.family();
        p.set_version_type(VERSION, TYPE_ADVERTISEMENT);
        p.set_vrid(self.vrid);
        p.set_priority(self.priority);
        p.set_count(self.addrs_in(family).count() as u8);
        p.set_interval_cs(self.interval_cs);
        for (i, a) in self.addrs_in(family).enumerate() {
            p.set_addr(i, a);
        }
        p.fill_checksum(src, dst);
    }

    /// Emits into a new vector, over the family of `src`.
    pub fn to_bytes(&self, src: impl Into<IpAddr>, dst: impl Into<IpAddr>) -> Vec<u8> {
        let src = src.into();
        let family = Family::of(&src);
        let mut buf = vec![0u8; self.buffer_len(family)];
        self.emit(
            &mut Packet::new_unchecked_in(&mut buf[..], family),
            src,
            dst,
        );
        buf
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);

    fn sample() -> Repr {
        Repr {
            vrid: 51,
            priority: 200,
            interval_cs: 1,
            addrs: vec![Ipv4Addr::new(10, 0, 0, 1).into()],
        }
    }

    #[test]
    fn emit_then_parse_roundtrips() {
        let bytes = sample().to_bytes(SRC, MULTICAST);
        assert_eq!(&bytes[..6], &[0x31, 51, 200, 1, 0x00, 0x01]);
        let p = Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(Repr::parse(&p, SRC, MULTICAST).unwrap(), sample());
    }

    #[test]
    fn checksum_covers_the_pseudo_header() {
        let bytes = sample().to_bytes(SRC, MULTICAST);
        let p = Packet::new_checked(&bytes[..]).unwrap();
        // Same bytes, claimed from another source: the checksum no longer fits.
        assert!(matches!(
            Repr::parse(&p, Ipv4Addr::new(10, 255, 0, 9), MULTICAST),
            Err(WireError::Checksum { .. })
        ));
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        let good = sample().to_bytes(SRC, MULTICAST);
        for len in 0..good.len() {
            assert!(
                matches!(
                    Packet::new_checked(&good[..len]),
                    Err(WireError::Truncated { .. })
                ),
                "{len} bytes"
            );
        }
        let mut v2 = good.clone();
        v2[0] = 0x21;
        assert_eq!(
            Packet::new_checked(&v2[..]).unwrap_err(),
            WireError::Version(2)
        );
        let mut t2 = good.clone();
        t2[0] = 0x32;
        assert_eq!(
            Packet::new_checked(&t2[..]).unwrap_err(),
            WireError::Type(2)
        );
        let mut flipped = good.clone();
        flipped[2] ^= 1;
        let p = Packet::new_checked(&flipped[..]).unwrap();
        assert!(matches!(
            Repr::parse(&p, SRC, MULTICAST),
            Err(WireError::Checksum { .. })
        ));
        let zero = Repr {
            interval_cs: 0,
            ..sample()
        }
        .to_bytes(SRC, MULTICAST);
        let p = Packet::new_checked(&zero[..]).unwrap();
        assert_eq!(
            Repr::parse(&p, SRC, MULTICAST).unwrap_err(),
            WireError::ZeroInterval
        );
        // A count larger than the bytes present.
        let mut big = good.clone();
        big[3] = 9;
        assert!(matches!(
            Packet::new_checked(&big[..]),
            Err(WireError::Truncated { need: 44, .. })
        ));
    }

    /// An advert captured from keepalived 2.2.7 (VRRPv3, VRID 51, priority 100,
    /// 1 s, two addresses) in the lab, IPv4 header included.
    pub(crate) const KEEPALIVED_ADVERT: [u8; 36] = [
        0x45, 0xc0, 0x00, 0x24, 0x00, 0x01, 0x00, 0x00, 0xff, 0x70, 0xcf, 0x95, 0x0a, 0xff, 0x00,
        0x02, 0xe0, 0x00, 0x00, 0x12, 0x31, 0x33, 0x64, 0x02, 0x00, 0x64, 0x6a, 0xcf, 0x0a, 0x00,
        0x00, 0x01, 0x0a, 0x01, 0x00, 0x01,
    ];

    #[test]
    fn parses_an_advert_captured_from_keepalived() {
        let vrrp = &KEEPALIVED_ADVERT[20..];
        let p = Packet::new_checked(vrrp).unwrap();
        let r = Repr::parse(&p, Ipv4Addr::new(10, 255, 0, 2), MULTICAST).unwrap();
        assert_eq!(
            r,
            Repr {
                vrid: 51,
                priority: 100,
                interval_cs: 100,
                addrs: vec![
                    Ipv4Addr::new(10, 0, 0, 1).into(),
                    Ipv4Addr::new(10, 1, 0, 1).into()
                ],
            }
        );
        // And we emit the very same bytes for the same advert.
        assert_eq!(r.to_bytes(Ipv4Addr::new(10, 255, 0, 2), MULTICAST), vrrp);
    }

    /// An IPv6 advert captured from keepalived 2.2.7 (VRRPv3, VRID 52,
    /// priority 100, 1 s, fd00::1 and fd00:1::1, from its link-local
    /// address to ff02::12), IPv6 header included.
    pub(crate) const KEEPALIVED_ADVERT6: [u8; 80] = [
        0x6c, 0x02, 0xd7, 0x15, 0x00, 0x28, 0x70, 0xff, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0xdc, 0x90, 0xb4, 0xff, 0xfe, 0xc8, 0xd7, 0x84, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x12, 0x31, 0x34, 0x64, 0x02, 0x00,
        0x64, 0x0a, 0x54, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x01, 0xfd, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x01,
    ];

    #[test]
    fn parses_an_ipv6_advert_captured_from_keepalived() {
        let (ip, vrrp) = KEEPALIVED_ADVERT6.split_at(40);
        let mut src = [0u8; 16];
        src.copy_from_slice(&ip[8..24]);
        let src = Ipv6Addr::from(src);
        assert!(src.is_unicast_link_local());
        assert_eq!(ip[7], TTL, "hop limit 255");
        let p = Packet::new_checked_in(vrrp, Family::V6).unwrap();
        let r = Repr::parse(&p, src, MULTICAST6).unwrap();
        let vips: Vec<IpAddr> = vec!["fd00::1".parse().unwrap(), "fd00:1::1".parse().unwrap()];
        assert_eq!(
            r,
            Repr {
                vrid: 52,
                priority: 100,
                interval_cs: 100,
                addrs: vips,
            }
        );
        assert_eq!(r.family(), Family::V6);
        // We emit the very same bytes for the same advert.
        assert_eq!(r.to_bytes(src, MULTICAST6), vrrp);
        // Read as IPv4 (4-byte addresses), its checksum does not hold.
        let as_v4 = Packet::new_checked(vrrp).unwrap();
        assert!(Repr::parse(&as_v4, Ipv4Addr::new(10, 255, 0, 2), MULTICAST).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed: u32 = 12345;
        for len in 0..64 {
            for _ in 0..50 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                        (seed >> 16) as u8
                    })
                    .collect();
                if let Ok(p) = Packet::new_checked(&bytes[..]) {
                    let _ = Repr::parse(&p, SRC, MULTICAST);
                }
            }
        }
    }
}
