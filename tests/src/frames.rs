//! Crafted Ethernet frames for `BPF_PROG_TEST_RUN`, built with etherparse.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{EtherType, Ethernet2Header, Icmpv6Type, IpNumber, Ipv4Header, PacketBuilder};

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// An IPv4 frame carrying `payload` as IP protocol `proto` with `ttl`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    Ethernet2Header {
        source: SRC_MAC,
        destination: DST_MAC,
        ether_type: EtherType::IPV4,
    }
    .write(&mut out)
    .unwrap();
    Ipv4Header::new(
        payload.len() as u16,
        ttl,
        IpNumber(proto),
        src.octets(),
        dst.octets(),
    )
    .unwrap()
    .write(&mut out)
    .unwrap();
    out.extend_from_slice(payload);
    out
}

/// A VRRPv3 advertisement (RFC 9568 section 5.1) with one IPv4 address. The
/// checksum is left zero: the XDP filter does not check it, the agent does.
pub fn vrrp(
    src: Ipv4Addr,
    ttl: u8,
    vrid: u8,
    priority: u8,
    interval_cs: u16,
    vip: Ipv4Addr,
) -> Vec<u8> {
    let mut adv = vec![0x31, vrid, priority, 1];
    adv.extend_from_slice(&(interval_cs & 0x0fff).to_be_bytes());
    adv.extend_from_slice(&[0, 0]);
    adv.extend_from_slice(&vip.octets());
    ipv4(src, Ipv4Addr::new(224, 0, 0, 18), 112, ttl, &adv)
}

/// A UDP datagram.
pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// TCP flags for [`tcp`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

pub const SYN: Flags = Flags {
    syn: true,
    ack: false,
    fin: false,
    rst: false,
};
pub const SYNACK: Flags = Flags {
    syn: true,
    ack: true,
    fin: false,
    rst: false,
};
pub const ACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: false,
    rst: false,
};
pub const FINACK: Flags = Flags {
    syn: false,
    ack: true,
    fin: true,
    rst: false,
};
pub const RST: Flags = Flags {
    syn: false,
    ack: false,
    fin: false,
    rst: true,
};

/// A TCP segment with `flags`.
pub fn tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(SRC_MAC, DST_MAC).ipv4(src.octets(), dst.octets(), 64);
    tcp_over(ip, sport, dport, flags, payload)
}

/// An IPv6 TCP segment with `flags`.
pub fn tcp6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    flags: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(SRC_MAC, DST_MAC).ipv6(src.octets(), dst.octets(), 64);
    tcp_over(ip, sport, dport, flags, payload)
}

/// The TCP segment with `flags` over the IP header `ip` builds.
fn tcp_over(
    ip: etherparse::PacketBuilderStep<etherparse::IpHeaders>,
    sport: u16,
    dport: u16,
    flags: Flags,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = ip.tcp(sport, dport, 1000, 65535);
    if flags.syn {
        b = b.syn();
    }
    if flags.ack {
        b = b.ack(1);
    }
    if flags.fin {
        b = b.fin();
    }
    if flags.rst {
        b = b.rst();
    }
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// An IPv6 UDP datagram.
pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .write(&mut out, payload)
        .unwrap();
    out
}

/// An ICMPv6 echo request, or reply if `reply`.
pub fn ping6(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16, reply: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC).ipv6(src.octets(), dst.octets(), 64);
    if reply {
        b.icmpv6_echo_reply(id, seq).write(&mut out, b"ping")
    } else {
        b.icmpv6_echo_request(id, seq).write(&mut out, b"ping")
    }
    .unwrap();
    out
}

/// The untagged IPv6 frame `frame` with an 8-byte extension header of type
/// `next` (0 hop-by-hop, 43 routing, 44 fragment, 60 destination options)
/// put first after the IPv6 header, `fragment` its fragment field (offset
/// and M flag, for a fragment header). Checksums are left as they were.
pub fn ipv6_ext(frame: &[u8], next: u8, fragment: u16) -> Vec<u8> {
    let ip = 14;
    let mut out = frame[..ip + 40].to_vec();
    let inner = out[ip + 6];
    out[ip + 6] = next;
    let len = u16::from_be_bytes([out[ip + 4], out[ip + 5]]) + 8;
    out[ip + 4..ip + 6].copy_from_slice(&len.to_be_bytes());
    let mut ext = [0u8; 8];
    ext[0] = inner;
    if next == 44 {
        ext[2..4].copy_from_slice(&fragment.to_be_bytes());
    } else {
        // Length 0 (8 bytes); a PadN option filling the rest.
        ext[2..4].copy_from_slice(&[1, 4]);
    }
    out.extend_from_slice(&ext);
    out.extend_from_slice(&frame[ip + 40..]);
    out
}

/// An ICMP echo request.
pub fn ping(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_request(id, seq)
        .write(&mut out, b"ping")
        .unwrap();
    out
}

/// An ARP request (`oper` 1) or reply (2) about `target`.
pub fn arp(oper: u16, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&[0xff; 6]);
    out.extend_from_slice(&SRC_MAC);
    out.extend_from_slice(&[0x08, 0x06]);
    out.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    out.extend_from_slice(&oper.to_be_bytes());
    out.extend_from_slice(&SRC_MAC);
    out.extend_from_slice(&sender.octets());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&target.octets());
    out
}

/// An IPv6 frame header only (anything not IPv4/ARP).
/// A raw IPv6 packet (`next` header, hop limit `hop`) carrying `payload`,
/// to `dst`, in an Ethernet frame; upper-layer checksums left as given.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&ipv6_dst_mac(dst));
    out.extend_from_slice(&SRC_MAC);
    out.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(&[next, hop]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    out.extend_from_slice(payload);
    out
}

/// A VRRPv3 advert over IPv6 from `src` to ff02::12 (VRID `vrid`, one
/// address), hop limit `hop`.
pub fn vrrp6(src: Ipv6Addr, hop: u8, vrid: u8) -> Vec<u8> {
    let group = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
    let mut msg = vec![0x31, vrid, 100, 1, 0, 1, 0, 0];
    msg.extend_from_slice(&Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).octets());
    ipv6(src, group, 112, hop, &msg)
}

/// An MLDv2 listener report (ICMPv6 143) from `src` to ff02::16 behind a
/// hop-by-hop header with the router alert option, hop limit `hop`.
pub fn mld_report(src: Ipv6Addr, hop: u8) -> Vec<u8> {
    let mut payload = vec![58, 0, 5, 2, 0, 0, 1, 0];
    payload.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 0]);
    ipv6(
        src,
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16),
        0,
        hop,
        &payload,
    )
}

pub fn ipv6_stub() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&DST_MAC);
    out.extend_from_slice(&SRC_MAC);
    out.extend_from_slice(&[0x86, 0xdd]);
    out.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 59, 64]);
    out.extend_from_slice(&[0; 32]);
    out
}

/// The Ethernet destination of IPv6 to `dst`: 33-33 and its last four bytes
/// for a multicast address (RFC 2464 section 7), else the usual peer MAC.
fn ipv6_dst_mac(dst: Ipv6Addr) -> [u8; 6] {
    let o = dst.octets();
    if dst.is_multicast() {
        [0x33, 0x33, o[12], o[13], o[14], o[15]]
    } else {
        DST_MAC
    }
}

/// The solicited-node multicast address of `addr` (RFC 4291 section
/// 2.7.1): ff02::1:ff and its last three bytes.
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// An ICMPv6 message of type `type_` (code 0), its bytes 5 to 8 `word`,
/// then `body`, from `src` to `dst` with hop limit 255 (as ND requires).
fn icmpv6(src: Ipv6Addr, dst: Ipv6Addr, type_: u8, word: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, ipv6_dst_mac(dst))
        .ipv6(src.octets(), dst.octets(), 255)
        .icmpv6(Icmpv6Type::Unknown {
            type_u8: type_,
            code_u8: 0,
            bytes5to8: word,
        })
        .write(&mut out, body)
        .unwrap();
    out
}

/// A Neighbor Solicitation (RFC 4861 section 4.3) for `target` from `src`
/// to the target's solicited-node multicast address, with the sender's
/// link-layer address option (address resolution; `src` ::, without the
/// option, is duplicate address detection).
pub fn neighbor_solicit(src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut body = target.octets().to_vec();
    if !src.is_unspecified() {
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&SRC_MAC);
    }
    icmpv6(src, solicited_node(target), 135, [0; 4], &body)
}

/// A Neighbor Advertisement (RFC 4861 section 4.4) for `target` from `src`
/// to `dst` (ff02::1: unsolicited; a solicitor's address: solicited),
/// Override set, with the target link-layer address option.
pub fn neighbor_advert(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let solicited = if dst.is_multicast() { 0 } else { 0x40 };
    let mut body = target.octets().to_vec();
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&SRC_MAC);
    icmpv6(src, dst, 136, [0x20 | solicited, 0, 0, 0], &body)
}

/// The same IPv6 frame with a hop-by-hop options header (8 bytes: PadN)
/// between the IPv6 header and its payload (untagged frames only).
pub fn with_hop_by_hop(frame: &[u8]) -> Vec<u8> {
    assert_eq!(&frame[12..14], &[0x86, 0xdd], "an untagged IPv6 frame");
    let mut out = frame[..54].to_vec();
    let next = out[20];
    out[20] = 0; // hop-by-hop
    let len = u16::from_be_bytes([out[18], out[19]]) + 8;
    out[18..20].copy_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    out.extend_from_slice(&frame[54..]);
    out
}

/// The same frame with an 802.1Q tag (VLAN `vid`) after the MAC addresses.
pub fn vlan(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&[0x81, 0x00]);
    out.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// An IPv4 fragment (MF set) carrying `payload` as protocol `proto`.
pub fn fragment(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = ipv4(src, dst, proto, ttl, payload);
    f[20] |= 0x20; // More Fragments
    // Fix the IPv4 header checksum is not needed: XDP does not verify it.
    f
}

/// The same frame with two VLAN tags (QinQ): an outer tag with TPID `outer`
/// (0x88a8 for 802.1ad, or 0x8100) and VLAN `outer_vid`, then an 802.1Q tag
/// with VLAN `inner_vid`.
pub fn qinq(frame: &[u8], outer: u16, outer_vid: u16, inner_vid: u16) -> Vec<u8> {
    let inner = vlan(frame, inner_vid);
    let mut out = inner[..12].to_vec();
    out.extend_from_slice(&outer.to_be_bytes());
    out.extend_from_slice(&(outer_vid & 0x0fff).to_be_bytes());
    out.extend_from_slice(&inner[12..]);
    out
}

/// The 80 bytes of a heartbeat probe or reply, field by field.
pub fn wire_bytes(w: &ha_common::heartbeat::ProbeWire) -> Vec<u8> {
    let mut out = Vec::with_capacity(ha_common::heartbeat::WIRE_LEN);
    out.extend_from_slice(&w.magic);
    out.extend_from_slice(&[w.version, w.kind, w.path, w._reserved]);
    for part in [&w.from[..], &w.to, &w.seq, &w.tag, &w.groups] {
        out.extend_from_slice(part);
    }
    for part in [&w.lease_left_ns[..], &w.term, &w.proof] {
        out.extend_from_slice(part);
    }
    assert_eq!(out.len(), ha_common::heartbeat::WIRE_LEN);
    out
}

/// A heartbeat probe or reply parsed back from its 80 bytes.
pub fn wire_parse(b: &[u8]) -> ha_common::heartbeat::ProbeWire {
    assert!(
        b.len() >= ha_common::heartbeat::WIRE_LEN,
        "{} bytes",
        b.len()
    );
    let mut at = 0;
    let mut take = |n: usize| {
        at += n;
        &b[at - n..at]
    };
    let mut w = ha_common::heartbeat::ProbeWire::default();
    w.magic.copy_from_slice(take(4));
    let head = take(4);
    (w.version, w.kind, w.path, w._reserved) = (head[0], head[1], head[2], head[3]);
    w.from.copy_from_slice(take(4));
    w.to.copy_from_slice(take(4));
    w.seq.copy_from_slice(take(8));
    w.tag.copy_from_slice(take(16));
    w.groups.copy_from_slice(take(8));
    w.lease_left_ns.copy_from_slice(take(8));
    w.term.copy_from_slice(take(8));
    w.proof.copy_from_slice(take(16));
    w
}

/// An untagged heartbeat frame (ethertype 0x88b5) carrying `w`.
pub fn heartbeat(dst: [u8; 6], src: [u8; 6], w: &ha_common::heartbeat::ProbeWire) -> Vec<u8> {
    let mut out = dst.to_vec();
    out.extend_from_slice(&src);
    out.extend_from_slice(&ha_common::heartbeat::ETHERTYPE.to_be_bytes());
    out.extend_from_slice(&wire_bytes(w));
    out
}
