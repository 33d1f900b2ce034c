//! One replicated connection: a 32-byte record (pfsync's compressed update is
//! 84 bytes). Addresses are in network order as on the wire; the reply tuple
//! carries NAT (for a masqueraded flow it differs from the inverted original).
//!
//! ```text
//!  0 kind  1 proto  2 state  3 flags | 4 orig src | 8 orig dst | 12 sport 14 dport
//! 16 reply src | 20 reply dst | 24 reply sport 26 reply dport | 28 reserved (0)
//! ```

use std::net::Ipv4Addr;

use ha_common::{addr_octets, flow::Endpoints};

/// Bytes per record.
pub const RECORD_LEN: usize = 32;
// The budget the design sets (pfsync's compressed update is 84).
const _: () = assert!(RECORD_LEN <= 48);

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
    /// IP protocol (6, 17, 1).
    pub proto: u8,
    /// `ha_common::flow::TcpState` as a byte (0 for UDP/ICMP).
    pub state: u8,
    pub flags: u8,
    pub orig_src: Ipv4Addr,
    pub orig_dst: Ipv4Addr,
    pub orig_sport: u16,
    pub orig_dport: u16,
    pub reply_src: Ipv4Addr,
    pub reply_dst: Ipv4Addr,
    pub reply_sport: u16,
    pub reply_dport: u16,
}

/// Why bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record truncated: {0} bytes")]
    Truncated(usize),
    #[error("unknown record kind {0}")]
    Kind(u8),
}

fn ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn port(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

impl Record {
    /// A record whose reply tuple is the inverted original (no NAT).
    pub fn plain(
        kind: RecordKind,
        proto: u8,
        state: u8,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
    ) -> Self {
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

    /// Writes the record into `out` (at least [`RECORD_LEN`] bytes).
    pub fn emit(&self, out: &mut [u8]) {
        out[0] = self.kind as u8;
        out[1] = self.proto;
        out[2] = self.state;
        out[3] = self.flags;
        out[4..8].copy_from_slice(&self.orig_src.octets());
        out[8..12].copy_from_slice(&self.orig_dst.octets());
        out[12..14].copy_from_slice(&self.orig_sport.to_be_bytes());
        out[14..16].copy_from_slice(&self.orig_dport.to_be_bytes());
        out[16..20].copy_from_slice(&self.reply_src.octets());
        out[20..24].copy_from_slice(&self.reply_dst.octets());
        out[24..26].copy_from_slice(&self.reply_sport.to_be_bytes());
        out[26..28].copy_from_slice(&self.reply_dport.to_be_bytes());
        // Reserved: sent as zero, ignored on receipt.
        out[28..32].fill(0);
    }

    /// Parses a record; `b` comes from an authenticated frame, but is still
    /// checked.
    pub fn parse(b: &[u8]) -> Result<Record, RecordError> {
        if b.len() < RECORD_LEN {
            return Err(RecordError::Truncated(b.len()));
        }
        let kind = match b[0] {
            1 => RecordKind::Upsert,
            2 => RecordKind::Delete,
            k => return Err(RecordError::Kind(k)),
        };
        Ok(Record {
            kind,
            proto: b[1],
            state: b[2],
            flags: b[3],
            orig_src: ip(&b[4..8]),
            orig_dst: ip(&b[8..12]),
            orig_sport: port(&b[12..14]),
            orig_dport: port(&b[14..16]),
            reply_src: ip(&b[16..20]),
            reply_dst: ip(&b[20..24]),
            reply_sport: port(&b[24..26]),
            reply_dport: port(&b[26..28]),
        })
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
        r.reply_dst = Ipv4Addr::new(10, 1, 0, 1);
        r.flags = FLAG_NAT;
        let mut buf = [0u8; RECORD_LEN];
        r.emit(&mut buf);
        assert_eq!(Record::parse(&buf), Ok(r));
        assert_eq!(&buf[28..], &[0; 4], "reserved");

        assert_eq!(Record::parse(&buf[..31]), Err(RecordError::Truncated(31)));
        buf[0] = 9;
        assert_eq!(Record::parse(&buf), Err(RecordError::Kind(9)));
    }
}
