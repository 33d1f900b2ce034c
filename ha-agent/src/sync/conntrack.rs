//! Kernel conntrack through ctnetlink.
//!
//! On the receiving node, replicated records become entries (created,
//! refreshed, deleted), so a node that takes over knows the flows its
//! stateful ruleset must accept. TCP entries carry the be-liberal window flag
//! (the new master has not seen the sequence numbers), like conntrackd's.
//! A NATed record is created with its un-NATed reply tuple plus a
//! `CTA_NAT_SRC`/`CTA_NAT_DST` range of one address and port: the kernel then
//! computes the same mapping and, unlike with a NATed reply tuple alone, sets
//! the status bits that make it translate packets.
//!
//! On the sending node, [`Conntrack::lookup`] reads an entry (by either
//! direction's tuple) to learn the NAT mapping the flow events of XDP cannot
//! see.
//!
//! IPv4 and IPv6 alike: a request's nfgenmsg family is its tuple's (AF_INET
//! or AF_INET6), addresses go as `CTA_IP_V4_*` or `CTA_IP_V6_*`, ICMPv6
//! echo as `CTA_PROTO_ICMPV6_*`, and a dump asks for every family at once
//! (AF_UNSPEC).
//!
//! Requests go out in batches (one `send` of many messages, then their
//! answers), which is what makes ctnetlink fast enough here.

use std::{
    io,
    net::{IpAddr, Ipv4Addr},
};

#[cfg(test)]
use netlink_packet_core::DefaultNla;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_DONE, NetlinkBuffer,
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator,
};
#[cfg(test)]
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Protocol, Status, TCPFlags,
    Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterProtoFamily, conntrack::ConntrackMessage,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::record::{FLAG_NAT, Record, RecordKind};
use ha_common::flow::TcpState;

/// Kernel TCP conntrack states (`enum tcp_conntrack`).
const TCP_SYN_SENT: u8 = 1;
const TCP_SYN_RECV: u8 = 2;
const TCP_ESTABLISHED: u8 = 3;
const TCP_FIN_WAIT: u8 = 4;
const TCP_TIME_WAIT: u8 = 7;
const TCP_CLOSE: u8 = 8;
/// IP_CT_TCP_FLAG_BE_LIBERAL: do not check the window (sequence numbers unknown).
const TCP_FLAG_BE_LIBERAL: u8 = 0x08;
/// CTA_NAT_SRC / CTA_NAT_DST and their nested attributes.
const CTA_NAT_SRC: u16 = 6;
const CTA_NAT_DST: u16 = 13;
const CTA_NAT_V4_MINIP: u16 = 1;
const CTA_NAT_V4_MAXIP: u16 = 2;
const CTA_NAT_V6_MINIP: u16 = 4;
const CTA_NAT_V6_MAXIP: u16 = 5;
const CTA_NAT_PROTO: u16 = 3;
const CTA_PROTONAT_PORT_MIN: u16 = 1;
const CTA_PROTONAT_PORT_MAX: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
/// Netlink's error/acknowledgement message type, and ctnetlink's subsystem
/// (the high byte of a netfilter message type): the only answers we decode.
const NLMSG_ERROR: u16 = 2;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// ctnetlink's message types: an entry (what a lookup answers with, and a
/// create), a lookup, a delete.
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
/// Conntrack status bits (`enum ip_conntrack_status`).
const IPS_SEEN_REPLY: u32 = 1 << 1;
const IPS_ASSURED: u32 = 1 << 2;
const IPS_CONFIRMED: u32 = 1 << 3;
/// Requests per `send`.
const BATCH: usize = 256;
/// The socket's receive buffer (bytes): a batch's answers fit whatever they
/// are.
const RCVBUF: usize = 1 << 20;

/// One direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CtTuple {
    pub proto: u8,
    /// Both of one family.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl CtTuple {
    /// Whether it is an IPv6 tuple.
    pub fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }

    /// The same connection seen from the other end.
    pub fn inverted(self) -> CtTuple {
        CtTuple {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }

    /// The original tuple of a record.
    pub fn orig_of(r: &Record) -> CtTuple {
        CtTuple {
            proto: r.proto,
            src: r.orig_src,
            dst: r.orig_dst,
            sport: r.orig_sport,
            dport: r.orig_dport,
        }
    }

    /// The reply tuple of a record.
    pub fn reply_of(r: &Record) -> CtTuple {
        CtTuple {
            proto: r.proto,
            src: r.reply_src,
            dst: r.reply_dst,
            sport: r.reply_sport,
            dport: r.reply_dport,
        }
    }
}

/// A kernel conntrack entry as far as replication cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtEntry {
    pub orig: CtTuple,
    pub reply: CtTuple,
    /// Kernel TCP state (`TCP_CONNTRACK_*`), 0 for other protocols.
    pub tcp_state: u8,
}

impl CtEntry {
    /// The entry as an upsert record; the flow state comes from conntrack.
    pub fn record(&self) -> Record {
        let state = match self.tcp_state {
            0 => TcpState::Active,
            TCP_SYN_SENT | TCP_SYN_RECV => TcpState::SynSent,
            TCP_ESTABLISHED => TcpState::Established,
            TCP_CLOSE => TcpState::Closed,
            _ => TcpState::Closing,
        };
        let nat = self.reply != self.orig.inverted();
        Record {
            kind: RecordKind::Upsert,
            proto: self.orig.proto,
            state: state as u8,
            flags: if nat { FLAG_NAT } else { 0 },
            orig_src: self.orig.src,
            orig_dst: self.orig.dst,
            orig_sport: self.orig.sport,
            orig_dport: self.orig.dport,
            reply_src: self.reply.src,
            reply_dst: self.reply.dst,
            reply_sport: self.reply.sport,
            reply_dport: self.reply.dport,
        }
    }
}

/// A ctnetlink socket in the current network namespace.
pub struct Conntrack {
    sock: Socket,
    seq: u32,
    rx: Vec<u8>,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack").finish_non_exhaustive()
    }
}

#[cfg(test)]
fn tuple(t: &CtTuple) -> Vec<Tuple> {
    let proto_tuple = match t.proto {
        6 | 17 => vec![
            ProtoTuple::Protocol(if t.proto == 6 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            }),
            ProtoTuple::SourcePort(t.sport),
            ProtoTuple::DestinationPort(t.dport),
        ],
        58 => vec![ProtoTuple::Protocol(Protocol::Ipv6Icmp)],
        _ => vec![ProtoTuple::Protocol(Protocol::Icmp)],
    };
    vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(t.src),
            IPTuple::DestinationAddress(t.dst),
        ]),
        Tuple::Proto(proto_tuple),
    ]
}

#[cfg(test)]
fn parse_tuple(proto: u8, attrs: &[Tuple]) -> Option<CtTuple> {
    let mut t = CtTuple {
        proto,
        src: Ipv4Addr::UNSPECIFIED.into(),
        dst: Ipv4Addr::UNSPECIFIED.into(),
        sport: 0,
        dport: 0,
    };
    for a in attrs {
        match a {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => t.src = *a,
                        IPTuple::DestinationAddress(a) => t.dst = *a,
                        _ => return None,
                    }
                }
            }
            Tuple::Proto(p) => {
                for x in p {
                    match x {
                        ProtoTuple::SourcePort(v) => t.sport = *v,
                        ProtoTuple::DestinationPort(v) => t.dport = *v,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(t)
}

/// One netlink attribute (length, type, value, padding to 4 bytes).
#[cfg(test)]
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut b = Vec::with_capacity(len.next_multiple_of(4));
    b.extend_from_slice(&(len as u16).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(value);
    b.resize(len.next_multiple_of(4), 0);
    b
}

/// The NAT range attributes of an address's family (min, max) and its bytes.
fn nat_range(addr: &IpAddr) -> (u16, u16, Vec<u8>) {
    match addr {
        IpAddr::V4(a) => (CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP, a.octets().to_vec()),
        IpAddr::V6(a) => (CTA_NAT_V6_MINIP, CTA_NAT_V6_MAXIP, a.octets().to_vec()),
    }
}

/// A NAT range of exactly one address and port.
#[cfg(test)]
fn nat_to(kind: u16, addr: IpAddr, port: u16, with_port: bool) -> ConntrackAttribute {
    let (min, max, bytes) = nat_range(&addr);
    let mut v = nla(min, &bytes);
    v.extend(nla(max, &bytes));
    if with_port {
        let mut p = nla(CTA_PROTONAT_PORT_MIN, &port.to_be_bytes());
        p.extend(nla(CTA_PROTONAT_PORT_MAX, &port.to_be_bytes()));
        v.extend(nla(CTA_NAT_PROTO | NLA_F_NESTED, &p));
    }
    ConntrackAttribute::Other(DefaultNla::new(kind | NLA_F_NESTED, v))
}

/// The ctnetlink message creating or refreshing `r`'s entry, typed: the
/// reference [`write_upsert`] is checked against. The kernel takes NAT
/// ranges only when it creates an entry (an update with them fails with
/// EOPNOTSUPP): `with_nat` is for the create.
#[cfg(test)]
fn upsert_message(r: &Record, timeout_s: u32, with_nat: bool) -> ConntrackMessage {
    let orig = CtTuple::orig_of(r);
    let reply = CtTuple::reply_of(r);
    let mut attrs = vec![
        ConntrackAttribute::CtaTupleOrig(tuple(&orig)),
        // The un-NATed reply; the NAT ranges below make the kernel apply
        // (and mark) the mapping itself.
        ConntrackAttribute::CtaTupleReply(tuple(&orig.inverted())),
        ConntrackAttribute::CtaTimeout(timeout_s),
    ];
    let with_port = r.proto == 6 || r.proto == 17;
    if with_nat && (reply.dst != orig.src || reply.dport != orig.sport) {
        attrs.push(nat_to(CTA_NAT_SRC, reply.dst, reply.dport, with_port));
    }
    if with_nat && (reply.src != orig.dst || reply.sport != orig.dport) {
        attrs.push(nat_to(CTA_NAT_DST, reply.src, reply.sport, with_port));
    }
    // CONFIRMED too, as conntrack(8) sends it: the kernel refuses a status
    // that would clear a bit it does not let change.
    let syn_sent = r.proto == 6 && r.state == TcpState::SynSent as u8;
    attrs.push(ConntrackAttribute::CtaStatus(if syn_sent {
        Status::Confirmed
    } else {
        Status::SeenReply | Status::Assured | Status::Confirmed
    }));
    if r.proto == 6 {
        let state = tcp_state_of(r);
        let liberal = TCPFlags::parse(&[TCP_FLAG_BE_LIBERAL, TCP_FLAG_BE_LIBERAL])
            .expect("two bytes are a TCP flags attribute");
        attrs.push(ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(
            vec![
                ProtoInfoTCP::State(state),
                ProtoInfoTCP::OriginalFlags(liberal.clone()),
                ProtoInfoTCP::ReplyFlags(liberal),
            ],
        )]));
    }
    ConntrackMessage::New(attrs)
}

/// Appends request `msg` (for `family`, with `flags` besides NLM_F_REQUEST,
/// sequence number `seq`) to `buf`.
fn serialize(
    msg: ConntrackMessage,
    family: NetfilterProtoFamily,
    flags: u16,
    seq: u32,
    buf: &mut Vec<u8>,
) {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            msg,
        )),
    );
    nl.finalize();
    let at = buf.len();
    buf.resize(at + nl.buffer_len(), 0);
    nl.serialize(&mut buf[at..]);
}

/// The bytes of the request creating (or refreshing) `r`'s entry, as
/// [`Conntrack::apply_batch`] sends it (NAT ranges included, so a create),
/// with NLM_F_ACK if `ack`: for the benchmark that measures the kernel's own
/// ceiling with requests written in advance.
pub fn upsert_request(r: &Record, timeout_s: u32, seq: u32, ack: bool) -> Vec<u8> {
    let mut buf = Vec::new();
    let flags = NLM_F_CREATE | if ack { NLM_F_ACK } else { 0 };
    write_upsert(&mut buf, r, timeout_s, true, flags, seq);
    buf
}

/// The bytes of the request looking up the entry whose original tuple is
/// `t`, as [`Conntrack::lookup`] sends it: for the benchmark that measures
/// the kernel's own lookup ceiling.
pub fn lookup_request(t: &CtTuple, seq: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    Request::Get(*t, false).write(0, seq, &mut buf);
    buf
}

/// A request [`Conntrack::requests`] sends, written straight into the send
/// buffer (netlink-packet-netfilter's typed messages allocate for every
/// attribute: a bulk of a million creates spent a good share of its time
/// there; unit tests check both write the same bytes).
enum Request<'a> {
    /// Create or refresh: the record, its timeout (s), whether with its NAT
    /// ranges, flags.
    Upsert(&'a Record, u32, bool, u16),
    /// Look up the entry of a tuple, original (false) or reply (true).
    Get(CtTuple, bool),
    /// Delete the entry of an original tuple, with flags.
    Delete(CtTuple, u16),
}

impl Request<'_> {
    fn flags(&self) -> u16 {
        match self {
            Request::Upsert(.., f) | Request::Delete(_, f) => *f,
            Request::Get(..) => 0,
        }
    }

    /// Answered whatever happens (a lookup, or acknowledged).
    fn always_answered(&self) -> bool {
        self.flags() & NLM_F_ACK != 0 || matches!(self, Request::Get(..))
    }

    fn write(self, flags: u16, seq: u32, buf: &mut Vec<u8>) {
        match self {
            Request::Upsert(r, timeout_s, with_nat, _) => {
                write_upsert(buf, r, timeout_s, with_nat, flags, seq);
            }
            Request::Get(t, reply) => {
                let at = begin_message(buf, IPCTNL_MSG_CT_GET, t.is_v6(), flags, seq);
                let kind = if reply {
                    CTA_TUPLE_REPLY
                } else {
                    CTA_TUPLE_ORIG
                };
                put_tuple(buf, kind, &t);
                end_message(buf, at);
            }
            Request::Delete(t, _) => {
                let at = begin_message(buf, IPCTNL_MSG_CT_DELETE, t.is_v6(), flags, seq);
                put_tuple(buf, CTA_TUPLE_ORIG, &t);
                end_message(buf, at);
            }
        }
    }
}

/// Appends a ctnetlink request's headers (netlink, nfgenmsg for IPv4, or
/// IPv6 if `v6`); returns where it starts, for [`end_message`].
fn begin_message(buf: &mut Vec<u8>, msg: u16, v6: bool, flags: u16, seq: u32) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8 | msg).to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: the family, version 0, resource id 0.
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    buf.extend_from_slice(&[family as u8, 0, 0, 0]);
    at
}

/// Writes the length of the message begun at `at`.
fn end_message(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
}

/// Appends attribute `kind` with `value` (padded to 4 bytes).
fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len() + (len.next_multiple_of(4) - len), 0);
}

/// Appends nested attribute `kind` (NLA_F_NESTED) whose contents `f` writes.
fn put_nested(buf: &mut Vec<u8>, kind: u16, f: impl FnOnce(&mut Vec<u8>)) {
    put_attrs(buf, kind | NLA_F_NESTED, f);
}

/// Appends attribute `kind` (as given, flags included) whose value is the
/// attributes `f` writes.
fn put_attrs(buf: &mut Vec<u8>, kind: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    f(buf);
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    buf[at + 2..at + 4].copy_from_slice(&kind.to_ne_bytes());
}

fn put_tuple(buf: &mut Vec<u8>, kind: u16, t: &CtTuple) {
    put_nested(buf, kind, |b| {
        put_nested(b, CTA_TUPLE_IP, |b| {
            for (a, v4, v6) in [
                (&t.src, CTA_IP_V4_SRC, CTA_IP_V6_SRC),
                (&t.dst, CTA_IP_V4_DST, CTA_IP_V6_DST),
            ] {
                match a {
                    IpAddr::V4(a) => put_attr(b, v4, &a.octets()),
                    IpAddr::V6(a) => put_attr(b, v6, &a.octets()),
                }
            }
        });
        put_nested(b, CTA_TUPLE_PROTO, |b| match t.proto {
            6 | 17 => {
                put_attr(b, CTA_PROTO_NUM, &[t.proto]);
                put_attr(b, CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
                put_attr(b, CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
            }
            // ICMPv6 echo likewise: request (128) one way, reply (129)
            // the other.
            58 => {
                put_attr(b, CTA_PROTO_NUM, &[58]);
                put_attr(b, CTA_PROTO_ICMPV6_ID, &t.sport.to_be_bytes());
                let icmp_type = if kind == CTA_TUPLE_REPLY { 129 } else { 128 };
                put_attr(b, CTA_PROTO_ICMPV6_TYPE, &[icmp_type]);
                put_attr(b, CTA_PROTO_ICMPV6_CODE, &[0]);
            }
            // ICMP echo: the kernel needs type, code and identifier (XDP
            // keeps the identifier as both ports); the original direction
            // is the request (8), the reply direction the reply (0).
            _ => {
                put_attr(b, CTA_PROTO_NUM, &[1]);
                put_attr(b, CTA_PROTO_ICMP_ID, &t.sport.to_be_bytes());
                let icmp_type = if kind == CTA_TUPLE_REPLY { 0 } else { 8 };
                put_attr(b, CTA_PROTO_ICMP_TYPE, &[icmp_type]);
                put_attr(b, CTA_PROTO_ICMP_CODE, &[0]);
            }
        });
    });
}

/// Appends the request [`upsert_message`] makes for `r`, written directly
/// (the typed message allocates for every attribute: a bulk of a million
/// creates spent a good share of its time there). A unit test checks that
/// both write the same bytes.
fn write_upsert(
    buf: &mut Vec<u8>,
    r: &Record,
    timeout_s: u32,
    with_nat: bool,
    flags: u16,
    seq: u32,
) {
    let orig = CtTuple::orig_of(r);
    let at = begin_message(buf, IPCTNL_MSG_CT_NEW, orig.is_v6(), flags, seq);
    let reply = CtTuple::reply_of(r);
    put_tuple(buf, CTA_TUPLE_ORIG, &orig);
    put_tuple(buf, CTA_TUPLE_REPLY, &orig.inverted());
    put_attr(buf, CTA_TIMEOUT, &timeout_s.to_be_bytes());
    let with_port = r.proto == 6 || r.proto == 17;
    let nat = |buf: &mut Vec<u8>, kind: u16, addr: IpAddr, port: u16| {
        // Without NLA_F_NESTED on the outer attribute, as the typed message
        // goes (netlink-packet-core drops the flags of a DefaultNla's kind;
        // ctnetlink reads it either way).
        let (min, max, bytes) = nat_range(&addr);
        put_attrs(buf, kind, |b| {
            put_attr(b, min, &bytes);
            put_attr(b, max, &bytes);
            if with_port {
                put_nested(b, CTA_NAT_PROTO, |b| {
                    put_attr(b, CTA_PROTONAT_PORT_MIN, &port.to_be_bytes());
                    put_attr(b, CTA_PROTONAT_PORT_MAX, &port.to_be_bytes());
                });
            }
        });
    };
    if with_nat && (reply.dst != orig.src || reply.dport != orig.sport) {
        nat(buf, CTA_NAT_SRC, reply.dst, reply.dport);
    }
    if with_nat && (reply.src != orig.dst || reply.sport != orig.dport) {
        nat(buf, CTA_NAT_DST, reply.src, reply.sport);
    }
    let syn_sent = r.proto == 6 && r.state == TcpState::SynSent as u8;
    let status: u32 = if syn_sent {
        IPS_CONFIRMED
    } else {
        IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED
    };
    put_attr(buf, CTA_STATUS, &status.to_be_bytes());
    if r.proto == 6 {
        put_nested(buf, CTA_PROTOINFO, |b| {
            put_nested(b, CTA_PROTOINFO_TCP, |b| {
                put_attr(b, CTA_PROTOINFO_TCP_STATE, &[tcp_state_of(r)]);
                let liberal = [TCP_FLAG_BE_LIBERAL, TCP_FLAG_BE_LIBERAL];
                put_attr(b, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &liberal);
                put_attr(b, CTA_PROTOINFO_TCP_FLAGS_REPLY, &liberal);
            });
        });
    }
    end_message(buf, at);
}

/// The conntrack TCP state a record's state becomes.
fn tcp_state_of(r: &Record) -> u8 {
    match TcpState::from_u8(r.state) {
        Some(TcpState::SynSent) => TCP_SYN_SENT,
        Some(TcpState::Closing) => TCP_FIN_WAIT,
        Some(TcpState::Closed) => TCP_TIME_WAIT,
        _ => TCP_ESTABLISHED,
    }
}

/// What one request got back.
enum Answer {
    Ok,
    Entry(CtEntry),
    Err(io::Error),
}

impl Conntrack {
    /// Opens a ctnetlink socket (needs CAP_NET_ADMIN).
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // A batch's answers whole: 256 errors echo their requests (some
        // 250 KB for refused NAT creates), over the default 212 KB.
        // SO_RCVBUFFORCE (CAP_NET_ADMIN, which ctnetlink needs anyway)
        // passes `rmem_max`; SO_RCVBUF if refused.
        let size = RCVBUF as libc::c_int;
        // SAFETY: setsockopt on our own socket with a valid int.
        let forced = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        } == 0;
        if !forced {
            let _ = sock.set_rx_buf_sz(RCVBUF);
        }
        Ok(Conntrack {
            sock,
            seq: 0,
            rx: vec![0u8; 64 * 1024],
        })
    }

    /// Reads and drops whatever waits on the socket, without blocking.
    fn drain(&mut self) {
        while self
            .sock
            .recv(&mut &mut self.rx[..], libc::MSG_DONTWAIT)
            .is_ok_and(|n| n > 0)
        {}
    }

    /// Applies a record: [`RecordKind::Upsert`] creates the entry or refreshes
    /// it (`timeout_s` is its lifetime), [`RecordKind::Delete`] removes it (a
    /// missing entry is not an error).
    pub fn apply(&mut self, r: &Record, timeout_s: u32) -> io::Result<()> {
        self.apply_batch(std::slice::from_ref(r), |_| timeout_s)
            .pop()
            .unwrap_or(Ok(()))
    }

    /// Deletes the entry whose original tuple is `orig`; missing is fine.
    pub fn delete(&mut self, orig: &CtTuple) -> io::Result<()> {
        match self.requests(vec![Request::Delete(*orig, NLM_F_ACK)]).pop() {
            Some(Answer::Err(e)) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(()),
        }
    }

    /// Applies records in order, in batches; one result per record.
    pub fn apply_batch(
        &mut self,
        records: &[Record],
        timeout_s: impl Fn(&Record) -> u32,
    ) -> Vec<io::Result<()>> {
        let nat = |r: &Record| r.flags & FLAG_NAT != 0;
        let msgs = records
            .iter()
            .map(|r| match r.kind {
                // A NATed entry is created exclusively (with its NAT ranges),
                // and updated below if it exists.
                RecordKind::Upsert if nat(r) => {
                    Request::Upsert(r, timeout_s(r), true, NLM_F_CREATE | NLM_F_EXCL)
                }
                // Without NLM_F_EXCL: an existing entry is updated (refreshed).
                RecordKind::Upsert => Request::Upsert(r, timeout_s(r), false, NLM_F_CREATE),
                RecordKind::Delete => Request::Delete(CtTuple::orig_of(r), 0),
            })
            .collect();
        let mut answers = self.requests(msgs);
        let exists: Vec<usize> = (0..records.len())
            .filter(|&i| {
                records[i].kind == RecordKind::Upsert
                    && nat(&records[i])
                    && matches!(&answers[i], Answer::Err(e) if e.raw_os_error() == Some(libc::EEXIST))
            })
            .collect();
        if !exists.is_empty() {
            let updates = exists
                .iter()
                .map(|&i| {
                    let r = &records[i];
                    Request::Upsert(r, timeout_s(r), false, 0)
                })
                .collect();
            for (&i, a) in exists.iter().zip(self.requests(updates)) {
                answers[i] = a;
            }
        }
        answers
            .into_iter()
            .zip(records)
            .map(|(a, r)| match a {
                Answer::Err(e)
                    if r.kind == RecordKind::Delete && e.raw_os_error() == Some(libc::ENOENT) =>
                {
                    Ok(())
                }
                Answer::Err(e) => Err(e),
                _ => Ok(()),
            })
            .collect()
    }

    /// Looks entries up by a tuple of either direction (the flow events of
    /// XDP on the WAN side carry the NATed reply direction). `None` where
    /// conntrack has no such entry.
    pub fn lookup(&mut self, tuples: &[CtTuple]) -> io::Result<Vec<Option<CtEntry>>> {
        let first = self.requests(tuples.iter().map(|t| Request::Get(*t, false)).collect());
        let mut out: Vec<Option<CtEntry>> = first.iter().map(entry_of).collect();
        // Not found as an original tuple: maybe it is a reply tuple.
        let missing: Vec<usize> = (0..out.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let second = self.requests(
                missing
                    .iter()
                    .map(|&i| Request::Get(tuples[i].inverted(), true))
                    .collect(),
            );
            for (&i, a) in missing.iter().zip(&second) {
                out[i] = entry_of(a);
            }
            // A lookup the kernel refused is not found (one odd flow must
            // not cost a whole batch its NAT mappings); the whole lookup
            // failed only if nothing was found and something failed
            // otherwise than "no such entry" (the socket).
            let failed = first.iter().chain(&second).find_map(|a| match a {
                Answer::Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Some(e),
                _ => None,
            });
            if let Some(e) = failed
                && out.iter().all(Option::is_none)
            {
                return Err(io::Error::new(e.kind(), format!("conntrack lookup: {e}")));
            }
        }
        Ok(out)
    }

    /// Sends requests in batches and collects one answer per request. A
    /// create, update or delete without NLM_F_ACK is answered only if it
    /// fails (the kernel then sends its error): its answer is `Ok` unless
    /// an error came. The last request of each batch is acknowledged
    /// whatever its flags, and the kernel answers in order, so once its
    /// answer is in, every error of the batch is. Half the messages the
    /// kernel writes for a bulk of creates: 290,000 creates/s acknowledged
    /// each, 480,000 with errors only (`cargo bench --bench stages`).
    fn requests(&mut self, msgs: Vec<Request<'_>>) -> Vec<Answer> {
        let mut answers = Vec::with_capacity(msgs.len());
        let mut msgs = msgs.into_iter().peekable();
        while msgs.peek().is_some() {
            let chunk: Vec<_> = msgs.by_ref().take(BATCH).collect();
            let n = chunk.len();
            let first_seq = self.seq.wrapping_add(1);
            let mut buf = Vec::new();
            for (i, req) in chunk.into_iter().enumerate() {
                self.seq = self.seq.wrapping_add(1);
                let flags = if i + 1 == n && !req.always_answered() {
                    req.flags() | NLM_F_ACK
                } else {
                    req.flags()
                };
                req.write(flags, self.seq, &mut buf);
            }
            let mut got: Vec<Option<Answer>> = (0..n).map(|_| None).collect();
            if let Err(e) = self.sock.send(&buf, 0) {
                answers
                    .extend((0..n).map(|_| Answer::Err(io::Error::new(e.kind(), e.to_string()))));
                continue;
            }
            // Until the last request's answer: the kernel answers in order.
            while got[n - 1].is_none() {
                let len = match self.sock.recv(&mut &mut self.rx[..], 0) {
                    Ok(len) => len,
                    Err(e) => {
                        for g in got.iter_mut().filter(|g| g.is_none()) {
                            *g = Some(Answer::Err(io::Error::new(e.kind(), e.to_string())));
                        }
                        // What is left of this batch's answers (after an
                        // ENOBUFS, some were lost) would keep the socket
                        // full and be read as the next batch's.
                        self.drain();
                        break;
                    }
                };
                read_answers(&self.rx[..len], first_seq, &mut got);
            }
            answers.extend(got.into_iter().map(|g| g.unwrap_or(Answer::Ok)));
        }
        answers
    }
}

impl Conntrack {
    /// Every IPv4 and IPv6 entry of the namespace's table, in one ctnetlink
    /// dump (AF_UNSPEC: every family; a
    /// bulk resync reads the whole table at once rather than asking for
    /// each flow), handed to `each` a received buffer at a time (so a bulk
    /// goes out while the dump is still being read).
    pub fn dump_each(&mut self, mut each: impl FnMut(&[CtEntry])) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut buf = Vec::new();
        serialize(
            ConntrackMessage::Get(Vec::new()),
            NetfilterProtoFamily::Unspec,
            NLM_F_DUMP,
            seq,
            &mut buf,
        );
        self.sock.send(&buf, 0)?;
        let mut part = Vec::new();
        loop {
            let len = self.sock.recv(&mut &mut self.rx[..], 0)?;
            let read = entries_of_dump(&self.rx[..len], seq, &mut part);
            each(&part);
            part.clear();
            match read {
                DumpPart::More => {}
                DumpPart::Done => return Ok(()),
                DumpPart::Failed(e) => return Err(e),
            }
        }
    }

    /// Every IPv4 and IPv6 entry of the namespace's table, in one ctnetlink
    /// dump.
    pub fn dump(&mut self) -> io::Result<Vec<CtEntry>> {
        let mut out = Vec::new();
        self.dump_each(|part| out.extend_from_slice(part))?;
        Ok(out)
    }
}

/// How a buffer of a dump ended.
pub enum DumpPart {
    /// More buffers follow.
    More,
    Done,
    Failed(io::Error),
}

/// Reads one received buffer of a ctnetlink dump (sequence `seq`; the
/// kernel's bytes: checked, never trusted) into `out`. Messages of other
/// sequences and entries that do not decode are skipped; nothing here
/// panics (fuzz target `ctnetlink`).
pub fn entries_of_dump(rx: &[u8], seq: u32, out: &mut Vec<CtEntry>) -> DumpPart {
    let len = rx.len();
    let mut off = 0;
    while off < len {
        let Ok(nb) = NetlinkBuffer::new_checked(&rx[off..len]) else {
            return DumpPart::Failed(io::Error::other("ctnetlink dump: a truncated message"));
        };
        let msg_len = (nb.length() as usize).max(16).next_multiple_of(4);
        let kind = nb.message_type();
        let bytes = &rx[off..len.min(off + msg_len)];
        off += msg_len;
        if nb.sequence_number() != seq {
            continue;
        }
        if kind == NLMSG_DONE {
            return DumpPart::Done;
        }
        if kind == NLMSG_ERROR {
            let mut got = [None];
            read_answers(bytes, seq, &mut got);
            return match got {
                [Some(Answer::Err(e))] => DumpPart::Failed(e),
                _ => DumpPart::Done,
            };
        }
        if kind >> 8 != NFNL_SUBSYS_CTNETLINK {
            continue;
        }
        // The attributes after the netlink header and the nfgenmsg.
        if let Some(e) = bytes.get(20..).and_then(entry_of_attrs) {
            out.push(e);
        }
    }
    DumpPart::More
}

// ctnetlink attribute numbers (linux/netfilter/nfnetlink_conntrack.h).
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_TIMEOUT: u16 = 7;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;

/// The entry a ctnetlink message's attributes carry, read only as far as
/// replication needs with netlink-packet-core's attribute iterator: what
/// netlink-packet-netfilter's typed messages read (a test checks it),
/// without its allocation per attribute (a dump of a million entries spent
/// most of its time there). `None` for anything but a TCP, UDP or ICMP
/// (IPv4) or ICMPv6 (IPv6) entry whose tuples are of one family, or
/// attributes that do not decode.
fn entry_of_attrs(attrs: &[u8]) -> Option<CtEntry> {
    let (mut orig, mut reply, mut tcp_state) = (None, None, 0);
    for nla in NlasIterator::new(attrs) {
        let nla = nla.ok()?;
        match nla.kind() {
            CTA_TUPLE_ORIG => orig = Some(tuple_of_attrs(nla.value())?),
            CTA_TUPLE_REPLY => reply = Some(tuple_of_attrs(nla.value())?),
            CTA_PROTOINFO => {
                for p in NlasIterator::new(nla.value()) {
                    let p = p.ok()?;
                    if p.kind() != CTA_PROTOINFO_TCP {
                        continue;
                    }
                    for x in NlasIterator::new(p.value()) {
                        let x = x.ok()?;
                        if x.kind() == CTA_PROTOINFO_TCP_STATE {
                            tcp_state = *x.value().first()?;
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let (orig, reply): (CtTuple, CtTuple) = (orig?, reply?);
    (orig.proto == reply.proto && orig.is_v6() == reply.is_v6()).then_some(CtEntry {
        orig,
        reply,
        tcp_state,
    })
}

fn tuple_of_attrs(b: &[u8]) -> Option<CtTuple> {
    let mut t = CtTuple {
        proto: 0,
        src: Ipv4Addr::UNSPECIFIED.into(),
        dst: Ipv4Addr::UNSPECIFIED.into(),
        sport: 0,
        dport: 0,
    };
    let (mut v4, mut v6) = (0, 0);
    let ip4 = |v: &[u8]| <[u8; 4]>::try_from(v).ok().map(IpAddr::from);
    let ip6 = |v: &[u8]| <[u8; 16]>::try_from(v).ok().map(IpAddr::from);
    let port = |v: &[u8]| <[u8; 2]>::try_from(v).ok().map(u16::from_be_bytes);
    for nla in NlasIterator::new(b) {
        let nla = nla.ok()?;
        match nla.kind() {
            CTA_TUPLE_IP => {
                for ip in NlasIterator::new(nla.value()) {
                    let ip = ip.ok()?;
                    match ip.kind() {
                        CTA_IP_V4_SRC => (t.src, v4) = (ip4(ip.value())?, v4 + 1),
                        CTA_IP_V4_DST => (t.dst, v4) = (ip4(ip.value())?, v4 + 1),
                        CTA_IP_V6_SRC => (t.src, v6) = (ip6(ip.value())?, v6 + 1),
                        CTA_IP_V6_DST => (t.dst, v6) = (ip6(ip.value())?, v6 + 1),
                        // Anything else: not ours.
                        _ => return None,
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for p in NlasIterator::new(nla.value()) {
                    let p = p.ok()?;
                    match p.kind() {
                        CTA_PROTO_NUM => t.proto = *p.value().first()?,
                        CTA_PROTO_SRC_PORT => t.sport = port(p.value())?,
                        CTA_PROTO_DST_PORT => t.dport = port(p.value())?,
                        // ICMP echo: the identifier stands for both ports,
                        // as in XDP's flow keys.
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                            t.sport = port(p.value())?;
                            t.dport = t.sport;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // Both addresses, of one family; ICMP with IPv4, ICMPv6 with IPv6.
    let family_ok = (v4 == 2 && v6 == 0 && t.proto != 58) || (v6 == 2 && v4 == 0 && t.proto != 1);
    (family_ok && matches!(t.proto, 6 | 17 | 1 | 58)).then_some(t)
}

/// Reads one received buffer of netlink messages (the kernel's bytes: checked,
/// never trusted) into `got`, the answer to request `i` being the message of
/// sequence `first_seq + i`. Messages of
/// other sequences, repeats and undecodable bytes are skipped or become
/// [`Answer::Err`]; nothing here panics (fuzz target `ctnetlink`).
fn read_answers(rx: &[u8], first_seq: u32, got: &mut [Option<Answer>]) {
    let (len, n) = (rx.len(), got.len());
    let mut off = 0;
    while off < len {
        let Ok(nb) = NetlinkBuffer::new_checked(&rx[off..len]) else {
            break;
        };
        let msg_len = (nb.length() as usize).max(16).next_multiple_of(4);
        let seq = nb.sequence_number();
        let kind = nb.message_type();
        let bytes = &rx[off..len.min(off + msg_len)];
        off += msg_len;
        let i = seq.wrapping_sub(first_seq) as usize;
        if i >= n || got[i].is_some() {
            continue;
        }
        // Only ctnetlink answers and errors are ours (netlink-packet-
        // netfilter 0.4 even panicked on some malformed messages of its
        // other subsystems: fuzz/regressions/ctnetlink/).
        if kind != NLMSG_ERROR && kind >> 8 != NFNL_SUBSYS_CTNETLINK {
            got[i] = Some(Answer::Err(io::Error::other(format!(
                "ctnetlink reply: unexpected message type {kind:#06x}"
            ))));
            continue;
        }
        // Read lean, as a dump is ([`entry_of_attrs`]; the typed messages
        // cost an allocation per attribute): an error's code after the
        // header, an entry's attributes after the nfgenmsg.
        let answer = if kind == NLMSG_ERROR {
            match bytes.get(16..20) {
                None => Answer::Err(io::Error::other("ctnetlink reply: a truncated error")),
                Some(code) => match i32::from_ne_bytes(code.try_into().unwrap_or_default()) {
                    0 => Answer::Ok,
                    // A negated errno; the kernel never sends i32::MIN, but a
                    // corrupt buffer may (fuzz/regressions/ctnetlink/).
                    code => Answer::Err(io::Error::from_raw_os_error(code.saturating_neg())),
                },
            }
        } else if kind & 0xff == IPCTNL_MSG_CT_NEW {
            match bytes.get(20..).and_then(entry_of_attrs) {
                Some(e) => Answer::Entry(e),
                None => Answer::Ok,
            }
        } else {
            Answer::Ok
        };
        got[i] = Some(answer);
    }
}

/// The entries a buffer of ctnetlink replies to `n` lookups (sequences from
/// `first_seq`) carries, as [`Conntrack::lookup`] reads them: the I/O-free
/// part of a lookup, public for the fuzz target `ctnetlink`.
pub fn entries_of_reply(rx: &[u8], first_seq: u32, n: usize) -> Vec<Option<CtEntry>> {
    let mut got: Vec<Option<Answer>> = (0..n).map(|_| None).collect();
    read_answers(rx, first_seq, &mut got);
    got.iter().map(|a| a.as_ref().and_then(entry_of)).collect()
}

fn entry_of(a: &Answer) -> Option<CtEntry> {
    match a {
        Answer::Entry(e) => Some(*e),
        _ => None,
    }
}

/// The entry of a ctnetlink answer as netlink-packet-netfilter's typed
/// messages read it: what the lean reader is checked against.
#[cfg(test)]
fn typed_entry(bytes: &[u8]) -> Option<CtEntry> {
    let m = NetlinkMessage::<NetfilterMessage>::deserialize(bytes).ok()?;
    let NetlinkPayload::InnerMessage(inner) = m.payload else {
        return None;
    };
    let netlink_packet_netfilter::NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) =
        inner.inner
    else {
        return None;
    };
    let mut proto = 0;
    for a in &attrs {
        if let ConntrackAttribute::CtaTupleOrig(t) = a {
            for x in t {
                if let Tuple::Proto(p) = x {
                    for y in p {
                        if let ProtoTuple::Protocol(p) = y {
                            proto = match p {
                                Protocol::Tcp => 6,
                                Protocol::Udp => 17,
                                Protocol::Icmp => 1,
                                Protocol::Ipv6Icmp => 58,
                                _ => return None,
                            };
                        }
                    }
                }
            }
        }
    }
    let (mut orig, mut reply, mut tcp_state) = (None, None, 0);
    for a in &attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = parse_tuple(proto, t),
            ConntrackAttribute::CtaTupleReply(t) => reply = parse_tuple(proto, t),
            ConntrackAttribute::CtaProtoInfo(p) => {
                for x in p {
                    if let ProtoInfo::TCP(v) = x {
                        for y in v {
                            if let ProtoInfoTCP::State(s) = y {
                                tcp_state = *s;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Some(CtEntry {
        orig: orig?,
        reply: reply?,
        tcp_state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family_of(t: &CtTuple) -> NetfilterProtoFamily {
        if t.is_v6() {
            NetfilterProtoFamily::IPv6
        } else {
            NetfilterProtoFamily::IPv4
        }
    }

    /// A ctnetlink reply buffer (after the fuzz target's count byte): the
    /// entry answering request 1 (a NATed TCP flow, ESTABLISHED), then
    /// ENOENT for request 2. Also the seed of the fuzz target `ctnetlink`.
    const REPLY: &[u8] = include_bytes!("../../../fuzz/corpus/ctnetlink/seed-entry-and-enoent");

    fn t(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> CtTuple {
        CtTuple {
            proto: 6,
            src: src.into(),
            dst: dst.into(),
            sport,
            dport,
        }
    }

    #[test]
    fn a_reply_buffer_is_read_into_entries_by_sequence() {
        let got = entries_of_reply(&REPLY[1..], 1, 2);
        assert_eq!(
            got,
            vec![
                Some(CtEntry {
                    orig: t([10, 0, 0, 10], 40000, [10, 1, 0, 10], 80),
                    reply: t([10, 1, 0, 10], 80, [10, 1, 0, 1], 40000),
                    tcp_state: 3,
                }),
                None,
            ]
        );
        // Sequences outside the batch are ignored.
        assert_eq!(entries_of_reply(&REPLY[1..], 100, 2), vec![None, None]);
    }

    #[test]
    fn the_lean_reader_of_a_dump_reads_what_the_typed_one_reads() {
        // The entry of the seed, read both ways.
        let rx = &REPLY[1..];
        let len = NetlinkBuffer::new_checked(rx).unwrap().length() as usize;
        let typed = typed_entry(&rx[..len]);
        assert!(typed.is_some());
        assert_eq!(entry_of_attrs(&rx[20..len]), typed);
        assert_eq!(entries_of_reply(rx, 1, 1)[0], typed, "a lookup's answer");
        // As a dump buffer (the seed's sequence is 1), then its end.
        let mut out = Vec::new();
        assert!(matches!(
            entries_of_dump(&rx[..len], 1, &mut out),
            DumpPart::More
        ));
        assert_eq!(out, vec![typed.unwrap()]);
        // Every truncation reads nothing or the same tuples (the state may
        // be cut off), never panics.
        let t = typed.unwrap();
        for cut in 20..len {
            let e = entry_of_attrs(&rx[20..cut]);
            assert!(
                e.is_none_or(|e| e.orig == t.orig && e.reply == t.reply),
                "cut at {cut}: {e:?}"
            );
        }
    }

    #[test]
    fn the_lean_writer_of_a_lookup_or_delete_writes_what_the_typed_one_writes() {
        let v4: [IpAddr; 2] = [[10, 0, 0, 1].into(), [10, 1, 0, 10].into()];
        let v6: [IpAddr; 2] = [
            "2001:db8::1".parse().unwrap(),
            "2001:db8:1::10".parse().unwrap(),
        ];
        for (proto, [src, dst]) in [(6u8, v4), (17, v4), (6, v6), (17, v6)] {
            let tup = CtTuple {
                proto,
                src,
                dst,
                sport: 40000,
                dport: 443,
            };
            for (lean, typed) in [
                (
                    Request::Get(tup, false),
                    ConntrackMessage::Get(vec![ConntrackAttribute::CtaTupleOrig(tuple(&tup))]),
                ),
                (
                    Request::Get(tup, true),
                    ConntrackMessage::Get(vec![ConntrackAttribute::CtaTupleReply(tuple(&tup))]),
                ),
                (
                    Request::Delete(tup, NLM_F_ACK),
                    ConntrackMessage::Delete(vec![ConntrackAttribute::CtaTupleOrig(tuple(&tup))]),
                ),
            ] {
                let flags = lean.flags();
                let mut a = Vec::new();
                lean.write(flags, 9, &mut a);
                let mut b = Vec::new();
                serialize(typed, family_of(&tup), flags, 9, &mut b);
                assert_eq!(a, b, "{tup:?}");
            }
        }
    }

    #[test]
    fn the_lean_writer_of_a_create_writes_what_the_typed_one_writes() {
        fn a4(x: u8) -> IpAddr {
            IpAddr::from([10, 0, 0, x])
        }
        fn a6(x: u8) -> IpAddr {
            IpAddr::from(std::net::Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                0,
                x.into(),
            ))
        }
        let mut records = Vec::new();
        // ICMP: the typed messages have no type, code and identifier (which
        // the kernel needs); conntrack_apply checks those against it.
        for (proto, a) in [(6u8, a4 as fn(u8) -> IpAddr), (17, a4), (6, a6), (17, a6)] {
            for state in [
                TcpState::SynSent,
                TcpState::Established,
                TcpState::Closing,
                TcpState::Closed,
            ] {
                let plain = Record::plain(
                    RecordKind::Upsert,
                    proto,
                    state as u8,
                    a(1),
                    a(2),
                    40000,
                    80,
                );
                records.push(plain);
                // Source NAT, destination NAT, both.
                records.push(Record {
                    flags: FLAG_NAT,
                    reply_dst: a(9),
                    reply_dport: 1025,
                    ..plain
                });
                records.push(Record {
                    flags: FLAG_NAT,
                    reply_src: a(8),
                    reply_sport: 8080,
                    ..plain
                });
                records.push(Record {
                    flags: FLAG_NAT,
                    reply_src: a(8),
                    reply_dst: a(9),
                    ..plain
                });
            }
        }
        for r in &records {
            for with_nat in [false, true] {
                for flags in [NLM_F_CREATE, NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK] {
                    let mut typed = Vec::new();
                    let family = family_of(&CtTuple::orig_of(r));
                    serialize(
                        upsert_message(r, 600, with_nat),
                        family,
                        flags,
                        7,
                        &mut typed,
                    );
                    let mut lean = Vec::new();
                    write_upsert(&mut lean, r, 600, with_nat, flags, 7);
                    assert_eq!(lean, typed, "{r:?} with_nat {with_nat}");
                }
            }
        }
    }

    #[test]
    fn truncated_or_garbage_replies_yield_nothing_and_never_panic() {
        for len in 0..REPLY.len() {
            let got = entries_of_reply(&REPLY[1..len.max(1)], 1, 2);
            assert_eq!(got.len(), 2);
        }
        assert_eq!(entries_of_reply(&[0xff; 64], 1, 3), vec![None, None, None]);
    }
}

#[cfg(test)]
mod fuzz_regressions {
    use super::*;

    /// Replays fuzz/regressions/ctnetlink/ as the fuzz target does (first
    /// byte: the batch size): a message of another netfilter subsystem that
    /// made netlink-packet-netfilter panic, and an error code of `i32::MIN`
    /// whose negation overflowed. Both panicked before the fix.
    #[test]
    fn fuzz_findings_are_rejected_without_panicking() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/regressions/ctnetlink");
        let mut replayed = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            let Some((&n, rx)) = data.split_first() else {
                continue;
            };
            let n = usize::from(n % 8) + 1;
            assert_eq!(entries_of_reply(rx, 1, n).len(), n);
            replayed += 1;
        }
        assert!(replayed >= 2, "the fixtures are missing from {dir}");
    }
}
