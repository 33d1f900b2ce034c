//! Kernel conntrack through ctnetlink: creating (or refreshing) and deleting
//! entries for replicated connections, so a node that takes over knows the
//! flows its stateful ruleset must accept. TCP entries are created
//! ESTABLISHED with the be-liberal window flag (the new master has not seen
//! the sequence numbers), like conntrackd does.

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterProtoFamily,
    conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple,
        Protocol, Status, TCPFlags, Tuple,
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::record::{Record, RecordKind};

/// TCP_CONNTRACK_ESTABLISHED.
const TCP_ESTABLISHED: u8 = 3;
/// IP_CT_TCP_FLAG_BE_LIBERAL: do not check the window (sequence numbers unknown).
const TCP_FLAG_BE_LIBERAL: u8 = 0x08;

/// A ctnetlink socket in the current network namespace.
pub struct Conntrack {
    sock: Socket,
    seq: u32,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack").finish_non_exhaustive()
    }
}

fn tuple(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    proto: u8,
    sport: u16,
    dport: u16,
) -> Vec<Tuple> {
    let proto_tuple = match proto {
        6 => vec![
            ProtoTuple::Protocol(Protocol::Tcp),
            ProtoTuple::SourcePort(sport),
            ProtoTuple::DestinationPort(dport),
        ],
        17 => vec![
            ProtoTuple::Protocol(Protocol::Udp),
            ProtoTuple::SourcePort(sport),
            ProtoTuple::DestinationPort(dport),
        ],
        _ => vec![ProtoTuple::Protocol(Protocol::Icmp)],
    };
    vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(IpAddr::V4(src)),
            IPTuple::DestinationAddress(IpAddr::V4(dst)),
        ]),
        Tuple::Proto(proto_tuple),
    ]
}

impl Conntrack {
    /// Opens a ctnetlink socket (needs CAP_NET_ADMIN).
    pub fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Conntrack { sock, seq: 0 })
    }

    /// Applies a record: [`RecordKind::Upsert`] creates the entry or refreshes
    /// it (`timeout_s` is its lifetime), [`RecordKind::Delete`] removes it.
    pub fn apply(&mut self, r: &Record, timeout_s: u32) -> io::Result<()> {
        match r.kind {
            RecordKind::Upsert => self.upsert(r, timeout_s),
            RecordKind::Delete => self.delete(r),
        }
    }

    /// Creates the entry, or refreshes it if it exists.
    pub fn upsert(&mut self, r: &Record, timeout_s: u32) -> io::Result<()> {
        let mut attrs = vec![
            ConntrackAttribute::CtaTupleOrig(tuple(
                r.orig_src,
                r.orig_dst,
                r.proto,
                r.orig_sport,
                r.orig_dport,
            )),
            ConntrackAttribute::CtaTupleReply(tuple(
                r.reply_src,
                r.reply_dst,
                r.proto,
                r.reply_sport,
                r.reply_dport,
            )),
            ConntrackAttribute::CtaTimeout(timeout_s),
            // CONFIRMED too, as conntrack(8) sends it: the kernel refuses a
            // status that would clear a bit it does not let change.
            ConntrackAttribute::CtaStatus(Status::SeenReply | Status::Assured | Status::Confirmed),
        ];
        if r.proto == 6 {
            let liberal = TCPFlags::parse(&[TCP_FLAG_BE_LIBERAL, TCP_FLAG_BE_LIBERAL])
                .map_err(|e| io::Error::other(e.to_string()))?;
            attrs.push(ConntrackAttribute::CtaProtoInfo(vec![ProtoInfo::TCP(
                vec![
                    ProtoInfoTCP::State(TCP_ESTABLISHED),
                    ProtoInfoTCP::OriginalFlags(liberal.clone()),
                    ProtoInfoTCP::ReplyFlags(liberal),
                ],
            )]));
        }
        // Without NLM_F_EXCL: an existing entry is updated (refreshed).
        self.request(ConntrackMessage::New(attrs), NLM_F_CREATE)
    }

    /// Deletes the entry of `r`'s original tuple; a missing entry is not an error.
    pub fn delete(&mut self, r: &Record) -> io::Result<()> {
        let attrs = vec![ConntrackAttribute::CtaTupleOrig(tuple(
            r.orig_src,
            r.orig_dst,
            r.proto,
            r.orig_sport,
            r.orig_dport,
        ))];
        match self.request(ConntrackMessage::Delete(attrs), 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Sends one request and waits for its ACK; a NACK becomes the error.
    fn request(&mut self, msg: ConntrackMessage, flags: u16) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(
            header,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
                msg,
            )),
        );
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut rx = vec![0u8; 8192];
        loop {
            let n = self.sock.recv(&mut &mut rx[..], 0)?;
            let reply = NetlinkMessage::<NetfilterMessage>::deserialize(&rx[..n])
                .map_err(|e| io::Error::other(format!("ctnetlink reply: {e}")))?;
            if reply.header.sequence_number != self.seq {
                continue;
            }
            return match reply.payload {
                NetlinkPayload::Error(e) => match e.code {
                    None => Ok(()),
                    Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                },
                _ => Ok(()),
            };
        }
    }
}
