//! One replicated connection: a 32-byte record for IPv4 (pfsync's compressed
//! update is 84 bytes), an 80-byte one for IPv6. Addresses are in network
//! order as on the wire; the reply tuple carries NAT (for a masqueraded flow
//! it differs from the inverted original).
//!
//! The first byte, the wire kind, says both what the record asks and its
//! family, hence its length: 1 upsert and 2 delete are IPv4 records, 3
//! upsert and 4 delete IPv6 ones. Anything else is refused
//! ([`RecordError::Kind`]): a receiver cannot tell where the next record
//! would start.
//!
//! ```text
//! IPv4 (kinds 1, 2), 32 bytes:
//!  0 kind  1 proto  2 state  3 flags | 4 orig src | 8 orig dst | 12 sport 14 dport
//! 16 reply src | 20 reply dst | 24 reply sport 26 reply dport | 28 reserved (0)
//!
//! IPv6 (kinds 3, 4), 80 bytes:
//!  0 kind  1 proto  2 state  3 flags | 4 orig src (16) | 20 orig dst (16)
//! 36 sport 38 dport | 40 reply src (16) | 56 reply dst (16)
//! 72 reply sport 74 reply dport | 76 reserved (0)
//! ```
//!
//! A record is IPv6 if any of its addresses is; an IPv4 address in an IPv6
//! record goes as its IPv4-mapped form (never made by the agent: its tuples
//! come from one packet or one conntrack entry, of one family).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ha_common::{
    addr_octets,
    flow::{Endpoints, Endpoints6},
};

/// Bytes per IPv4 record.
pub const RECORD_LEN: usize = 32;
/// Bytes per IPv6 record.
pub const RECORD6_LEN: usize = 80;
// The budget the design sets for IPv4 (pfsync's compressed update is 84).
const _: () = assert!(RECORD_LEN <= 48);
const _: () = assert!(RECORD6_LEN <= 84);

/// Wire kinds (the record's first byte).
const WIRE_UPSERT: u8 = 1;
const WIRE_DELETE: u8 = 2;
const WIRE_UPSERT6: u8 = 3;
const WIRE_DELETE6: u8 = 4;

/// What the record asks of the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Create or refresh the connection.
    Upsert = 1,
    /// The connection is gone.
    Delete = 2,
}

/// [`Record::flags`]: the reply tuple is not the inverted original (NAT).
pub const FLAG_NAT: u8 = 1;

/// A connection as replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    /// IP protocol (6, 17, 1, 58).
    pub proto: u8,
    /// `ha_common::flow::TcpState` as a byte (0 for UDP/ICMP).
    pub state: u8,
    pub flags: u8,
    pub orig_src: IpAddr,
    pub orig_dst: IpAddr,
    pub orig_sport: u16,
    pub orig_dport: u16,
    pub reply_src: IpAddr,
    pub reply_dst: IpAddr,
    pub reply_sport: u16,
    pub reply_dport: u16,
}

/// Why bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record truncated: {have} bytes of {need}")]
    Truncated { have: usize, need: usize },
    #[error("unknown record kind {0}")]
    Kind(u8),
}

fn ip4(b: &[u8]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

fn ip6(b: &[u8]) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

fn port(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// The 4 bytes of an address in an IPv4 record (never called with an IPv6
/// one: such a record is IPv6).
fn octets4(a: IpAddr) -> [u8; 4] {
    match a {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED).octets(),
    }
}

/// The 16 bytes of an address in an IPv6 record.
fn octets6(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

impl Record {
    /// A record whose reply tuple is the inverted original (no NAT).
    pub fn plain(
        kind: RecordKind,
        proto: u8,
        state: u8,
        src: impl Into<IpAddr>,
        dst: impl Into<IpAddr>,
        sport: u16,
        dport: u16,
    ) -> Self {
        let (src, dst) = (src.into(), dst.into());
        Record {
            kind,
            proto,
            state,
            flags: 0,
            orig_src: src,
            orig_dst: dst,
            orig_sport: sport,
            orig_dport: dport,
            reply_src: dst,
            reply_dst: src,
            reply_sport: dport,
            reply_dport: sport,
        }
    }

    /// A record without NAT of a flow as XDP keeps it (addresses in map
    /// encoding, ports in host order, original direction).
    pub fn of_flow(kind: RecordKind, proto: u8, state: u8, e: Endpoints) -> Self {
        Record::plain(
            kind,
            proto,
            state,
            Ipv4Addr::from(addr_octets(e.src_addr)),
            Ipv4Addr::from(addr_octets(e.dst_addr)),
            e.src_port,
            e.dst_port,
        )
    }

    /// [`Record::of_flow`] for an IPv6 flow.
    pub fn of_flow6(kind: RecordKind, proto: u8, state: u8, e: Endpoints6) -> Self {
        Record::plain(
            kind,
            proto,
            state,
            Ipv6Addr::from(e.src_addr),
            Ipv6Addr::from(e.dst_addr),
            e.src_port,
            e.dst_port,
        )
    }

    /// Whether the record goes as an IPv6 one (any of its addresses is).
    pub fn is_v6(&self) -> bool {
        [self.orig_src, self.orig_dst, self.reply_src, self.reply_dst]
            .iter()
            .any(IpAddr::is_ipv6)
    }

    /// Its length on the wire: [`RECORD_LEN`] or [`RECORD6_LEN`].
    pub fn wire_len(&self) -> usize {
        if self.is_v6() {
            RECORD6_LEN
        } else {
            RECORD_LEN
        }
    }

    /// Writes the record into `out` (at least [`Record::wire_len`] bytes).
    pub fn emit(&self, out: &mut [u8]) {
        let v6 = self.is_v6();
        out[0] = match (self.kind, v6) {
            (RecordKind::Upsert, false) => WIRE_UPSERT,
            (RecordKind::Delete, false) => WIRE_DELETE,
            (RecordKind::Upsert, true) => WIRE_UPSERT6,
            (RecordKind::Delete, true) => WIRE_DELETE6,
        };
        out[1] = self.proto;
        out[2] = self.state;
        out[3] = self.flags;
        if v6 {
            out[4..20].copy_from_slice(&octets6(self.orig_src));
            out[20..36].copy_from_slice(&octets6(self.orig_dst));
            out[36..38].copy_from_slice(&self.orig_sport.to_be_bytes());
            out[38..40].copy_from_slice(&self.orig_dport.to_be_bytes());
            out[40..56].copy_from_slice(&octets6(self.reply_src));
            out[56..72].copy_from_slice(&octets6(self.reply_dst));
            out[72..74].copy_from_slice(&self.reply_sport.to_be_bytes());
            out[74..76].copy_from_slice(&self.reply_dport.to_be_bytes());
            // Reserved: sent as zero, ignored on receipt.
            out[76..80].fill(0);
        } else {
            out[4..8].copy_from_slice(&octets4(self.orig_src));
            out[8..12].copy_from_slice(&octets4(self.orig_dst));
            out[12..14].copy_from_slice(&self.orig_sport.to_be_bytes());
            out[14..16].copy_from_slice(&self.orig_dport.to_be_bytes());
            out[16..20].copy_from_slice(&octets4(self.reply_src));
            out[20..24].copy_from_slice(&octets4(self.reply_dst));
            out[24..26].copy_from_slice(&self.reply_sport.to_be_bytes());
            out[26..28].copy_from_slice(&self.reply_dport.to_be_bytes());
            // Reserved: sent as zero, ignored on receipt.
            out[28..32].fill(0);
        }
    }

    /// Parses the record at the start of `b` and returns it with its length
    /// (what follows is not read); `b` comes from an authenticated frame,
    /// but is still checked.
    pub fn parse(b: &[u8]) -> Result<(Record, usize), RecordError> {
        let Some(&wire) = b.first() else {
            return Err(RecordError::Truncated { have: 0, need: 1 });
        };
        let (kind, need) = match wire {
            WIRE_UPSERT => (RecordKind::Upsert, RECORD_LEN),
            WIRE_DELETE => (RecordKind::Delete, RECORD_LEN),
            WIRE_UPSERT6 => (RecordKind::Upsert, RECORD6_LEN),
            WIRE_DELETE6 => (RecordKind::Delete, RECORD6_LEN),
            k => return Err(RecordError::Kind(k)),
        };
        if b.len() < need {
            return Err(RecordError::Truncated {
                have: b.len(),
                need,
            });
        }
        let r = if need == RECORD6_LEN {
            Record {
                kind,
                proto: b[1],
                state: b[2],
                flags: b[3],
                orig_src: ip6(&b[4..20]),
                orig_dst: ip6(&b[20..36]),
                orig_sport: port(&b[36..38]),
                orig_dport: port(&b[38..40]),
                reply_src: ip6(&b[40..56]),
                reply_dst: ip6(&b[56..72]),
                reply_sport: port(&b[72..74]),
                reply_dport: port(&b[74..76]),
            }
        } else {
            Record {
                kind,
                proto: b[1],
                state: b[2],
                flags: b[3],
                orig_src: ip4(&b[4..8]),
                orig_dst: ip4(&b[8..12]),
                orig_sport: port(&b[12..14]),
                orig_dport: port(&b[14..16]),
                reply_src: ip4(&b[16..20]),
                reply_dst: ip4(&b[20..24]),
                reply_sport: port(&b[24..26]),
                reply_dport: port(&b[26..28]),
            }
        };
        Ok((r, need))
    }

    /// Parses records laid end to end, filling `b` exactly.
    pub fn parse_all(mut b: &[u8]) -> Result<Vec<Record>, RecordError> {
        let mut out = Vec::with_capacity(b.len() / RECORD_LEN);
        while !b.is_empty() {
            let (r, len) = Record::parse(b)?;
            out.push(r);
            b = &b[len..];
        }
        Ok(out)
    }

    /// Writes `records` end to end into `out` (cleared first).
    pub fn emit_all(records: &[Record], out: &mut Vec<u8>) {
        out.clear();
        for r in records {
            let at = out.len();
            out.resize(at + r.wire_len(), 0);
            r.emit(&mut out[at..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_size() {
        let mut r = Record::plain(
            RecordKind::Upsert,
            6,
            2,
            Ipv4Addr::new(10, 0, 0, 10),
            Ipv4Addr::new(10, 1, 0, 10),
            40000,
            80,
        );
        r.reply_dst = Ipv4Addr::new(10, 1, 0, 1).into();
        r.flags = FLAG_NAT;
        assert_eq!(r.wire_len(), RECORD_LEN);
        let mut buf = [0u8; RECORD_LEN];
        r.emit(&mut buf);
        assert_eq!(buf[0], 1);
        assert_eq!(Record::parse(&buf), Ok((r, RECORD_LEN)));
        assert_eq!(&buf[28..], &[0; 4], "reserved");

        assert_eq!(
            Record::parse(&buf[..31]),
            Err(RecordError::Truncated { have: 31, need: 32 })
        );
        buf[0] = 9;
        assert_eq!(Record::parse(&buf), Err(RecordError::Kind(9)));
        buf[0] = 0;
        assert_eq!(Record::parse(&buf), Err(RecordError::Kind(0)));
    }

    fn v6(last: u16) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
    }

    #[test]
    fn ipv6_records_roundtrip_in_80_bytes() {
        for kind in [RecordKind::Upsert, RecordKind::Delete] {
            let mut r = Record::plain(kind, 6, 2, v6(10), v6(0x10), 40000, 443);
            r.reply_dst = v6(1).into();
            r.reply_dport = 1025;
            r.flags = FLAG_NAT;
            assert!(r.is_v6());
            assert_eq!(r.wire_len(), RECORD6_LEN);
            let mut buf = [0xffu8; RECORD6_LEN];
            r.emit(&mut buf);
            assert_eq!(buf[0], if kind == RecordKind::Upsert { 3 } else { 4 });
            assert_eq!(&buf[76..], &[0; 4], "reserved");
            assert_eq!(Record::parse(&buf), Ok((r, RECORD6_LEN)));
        }
        // ICMPv6 echo: the id as both ports.
        let icmp = Record::plain(RecordKind::Upsert, 58, 0, v6(10), v6(20), 7, 7);
        let mut buf = [0u8; RECORD6_LEN];
        icmp.emit(&mut buf);
        assert_eq!(Record::parse(&buf).unwrap().0, icmp);
    }

    #[test]
    fn malformed_ipv6_records_are_refused() {
        let r = Record::plain(RecordKind::Upsert, 17, 0, v6(10), v6(20), 5353, 53);
        let mut buf = [0u8; RECORD6_LEN];
        r.emit(&mut buf);
        // Every cut short of 80 bytes, including one that would be a whole
        // IPv4 record: refused, never read as something else.
        for len in 0..RECORD6_LEN {
            assert_eq!(
                Record::parse(&buf[..len]),
                Err(if len == 0 {
                    RecordError::Truncated { have: 0, need: 1 }
                } else {
                    RecordError::Truncated {
                        have: len,
                        need: RECORD6_LEN,
                    }
                }),
                "{len} bytes"
            );
        }
        for k in [0u8, 5, 0x83, 0xff] {
            buf[0] = k;
            assert_eq!(Record::parse(&buf), Err(RecordError::Kind(k)));
        }
    }

    #[test]
    fn mixed_families_go_end_to_end_and_come_back_in_order() {
        let a = Record::plain(
            RecordKind::Upsert,
            6,
            2,
            Ipv4Addr::new(10, 0, 0, 10),
            Ipv4Addr::new(10, 1, 0, 10),
            1,
            2,
        );
        let b = Record::plain(RecordKind::Delete, 6, 4, v6(1), v6(2), 3, 4);
        let records = vec![a, b, a, b, b];
        let mut bytes = Vec::new();
        Record::emit_all(&records, &mut bytes);
        assert_eq!(bytes.len(), 2 * RECORD_LEN + 3 * RECORD6_LEN);
        assert_eq!(Record::parse_all(&bytes), Ok(records));
        // A trailing part of a record is refused, not dropped.
        assert!(Record::parse_all(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(Record::parse_all(&[]), Ok(vec![]));
    }

    #[test]
    fn an_ipv4_address_in_an_ipv6_record_goes_mapped() {
        let mut r = Record::plain(RecordKind::Upsert, 6, 2, v6(1), v6(2), 1, 2);
        r.reply_dst = Ipv4Addr::new(192, 0, 2, 1).into();
        let mut buf = [0u8; RECORD6_LEN];
        r.emit(&mut buf);
        let (back, _) = Record::parse(&buf).unwrap();
        assert_eq!(
            back.reply_dst,
            IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped())
        );
        // Parsed again, it stays what it became.
        let mut again = [0u8; RECORD6_LEN];
        back.emit(&mut again);
        assert_eq!(again, buf);
    }
}
