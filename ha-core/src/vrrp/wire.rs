//! VRRPv3 advertisements for IPv4 (RFC 9568 section 5), smoltcp style: a
//! [`Packet`] view over bytes whose only constructor for network input is
//! [`Packet::new_checked`], and a [`Repr`] with `parse`/`emit`/`buffer_len`.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! |                       IPvX Address(es)                        |
//! ```
//! The checksum covers the VRRP message and the IPv4 pseudo-header (source,
//! destination, zero, protocol 112, VRRP length).

use std::net::Ipv4Addr;

/// IP protocol number of VRRP.
pub const PROTOCOL: u8 = 112;
/// The VRRP IPv4 multicast group.
pub const MULTICAST: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
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
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps bytes without checks: only for buffers we are about to fill.
    pub const fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Wraps bytes from the network: checks the length covers the header and
    /// the announced addresses, and the version and type.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Packet { buffer };
        let len = p.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated {
                len,
                need: HEADER_LEN,
            });
        }
        let need = HEADER_LEN + 4 * usize::from(p.count());
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
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        let o = field::ADDRS + 4 * i;
        Ipv4Addr::new(
            self.b()[o],
            self.b()[o + 1],
            self.b()[o + 2],
            self.b()[o + 3],
        )
    }
    /// The message as covered by the checksum (header + addresses).
    pub fn message(&self) -> &[u8] {
        &self.b()[..HEADER_LEN + 4 * usize::from(self.count())]
    }
    /// Whether the checksum matches for these IPv4 addresses.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
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
    pub fn set_addr(&mut self, i: usize, a: Ipv4Addr) {
        let o = field::ADDRS + 4 * i;
        self.m()[o..o + 4].copy_from_slice(&a.octets());
    }
    /// Computes and stores the checksum.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let c = checksum(src, dst, self.message());
        self.set_checksum(c);
    }
}

/// Internet checksum of the IPv4 pseudo-header followed by `msg`.
pub fn checksum(src: Ipv4Addr, dst: Ipv4Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for chunk in bytes.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
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
    pub addrs: Vec<Ipv4Addr>,
}

impl Repr {
    /// Parses a checked packet received from `src` to `dst`, verifying the
    /// checksum.
    pub fn parse<T: AsRef<[u8]>>(
        p: &Packet<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<Repr, WireError> {
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

    /// Bytes needed to emit this advert.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + 4 * self.addrs.len()
    }

    /// Writes the advert (checksummed for `src` -> `dst`) into `p`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        p: &mut Packet<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) {
        p.set_version_type(VERSION, TYPE_ADVERTISEMENT);
        p.set_vrid(self.vrid);
        p.set_priority(self.priority);
        p.set_count(self.addrs.len().min(255) as u8);
        p.set_interval_cs(self.interval_cs);
        for (i, a) in self.addrs.iter().take(255).enumerate() {
            p.set_addr(i, *a);
        }
        p.fill_checksum(src, dst);
    }

    /// Emits into a new vector.
    pub fn to_bytes(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut buf = vec![0u8; self.buffer_len()];
        self.emit(&mut Packet::new_unchecked(&mut buf[..]), src, dst);
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
            addrs: vec![Ipv4Addr::new(10, 0, 0, 1)],
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
                addrs: vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 1, 0, 1)],
            }
        );
        // And we emit the very same bytes for the same advert.
        assert_eq!(r.to_bytes(Ipv4Addr::new(10, 255, 0, 2), MULTICAST), vrrp);
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
