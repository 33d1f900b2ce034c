//! Wire headers the programs read beyond what network-types offers, laid out
//! byte-wise (alignment 1) so any offset is valid.

/// ARP for IPv4 over Ethernet (RFC 826), 28 bytes after the Ethernet header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArpIpv4 {
    pub htype: [u8; 2],
    pub ptype: [u8; 2],
    pub hlen: u8,
    pub plen: u8,
    pub oper: [u8; 2],
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

/// The first 14 bytes of a TCP header: ports, sequence numbers, offset, flags.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpPorts {
    pub src: [u8; 2],
    pub dst: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    pub off: u8,
    pub flags: u8,
}

/// UDP ports (the first 4 bytes of the header; length and checksum unused).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpPorts {
    pub src: [u8; 2],
    pub dst: [u8; 2],
}

/// ICMP echo header: type, code, checksum, identifier.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpEcho {
    pub type_: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub id: [u8; 2],
}

/// A Neighbor Solicitation or Advertisement up to its target address (RFC
/// 4861 sections 4.3 and 4.4), the first 24 bytes of the ICMPv6 message.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NdTarget {
    pub type_: u8,
    pub code: u8,
    pub check: [u8; 2],
    /// NS: reserved; NA: the R, S, O flags and reserved bits.
    pub flags: [u8; 4],
    pub target: [u8; 16],
}

/// VRRP header up to the checksum (RFC 9568 section 5.1), 8 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct VrrpHdr {
    pub version_type: u8,
    pub vrid: u8,
    pub priority: u8,
    pub count: u8,
    pub max_adver: [u8; 2],
    pub check: [u8; 2],
}

/// IPv4 fragment: MF flag or a non-zero offset (`frags` field, network order).
#[inline(always)]
pub fn is_fragment(frags: [u8; 2]) -> bool {
    u16::from_be_bytes(frags) & 0x3fff != 0
}
