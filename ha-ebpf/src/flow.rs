//! What IPv4 ([`crate::data`]) and IPv6 ([`crate::flow6`]) flow tracking
//! share: reading the transport header and advancing a flow's state. The
//! tables, keys and events are per family (`ha_common::flow`).

use ha_common::{
    data::{DATA_FLAG_EMIT_EVERY_PACKET, DataConfig},
    flow::{
        FLOW_LO_IS_ORIGIN, FLOW_SYNACK, FlowEventKind, FlowState, PROTO_TCP, PROTO_UDP, TcpState,
        tcp_next,
    },
};

use aya_ebpf::programs::XdpContext;

use crate::{
    hdr::{IcmpEcho, TcpPorts, UdpPorts},
    read,
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// What a packet says of its flow: ports (ICMP echo: the id as both), TCP
/// flags (0 otherwise), and whether its sender is the originator should the
/// flow be new.
pub(crate) struct L4 {
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub sender_origin: bool,
}

/// Reads the transport header of protocol `proto` at `l4`; `icmp_proto`,
/// `echo_request` and `echo_reply` name the family's ICMP (1, 8, 0 or 58,
/// 128, 129). `None` for what is not tracked (other protocols, other ICMP
/// types, a truncated header).
#[inline(always)]
pub(crate) fn l4(
    ctx: &XdpContext,
    proto: u8,
    l4: usize,
    icmp_proto: u8,
    echo_request: u8,
    echo_reply: u8,
) -> Option<L4> {
    if proto == PROTO_TCP {
        let t = read::<TcpPorts>(ctx, l4).ok()?;
        // A SYN-ACK comes from the responder.
        let synack = t.flags & (TCP_SYN | TCP_ACK) == (TCP_SYN | TCP_ACK);
        return Some(L4 {
            sport: u16::from_be_bytes(t.src),
            dport: u16::from_be_bytes(t.dst),
            tcp_flags: t.flags,
            sender_origin: !synack,
        });
    }
    if proto == PROTO_UDP {
        let u = read::<UdpPorts>(ctx, l4).ok()?;
        return Some(L4 {
            sport: u16::from_be_bytes(u.src),
            dport: u16::from_be_bytes(u.dst),
            tcp_flags: 0,
            sender_origin: true,
        });
    }
    if proto == icmp_proto {
        let i = read::<IcmpEcho>(ctx, l4).ok()?;
        let id = u16::from_be_bytes(i.id);
        let sender_origin = if i.type_ == echo_request {
            true
        } else if i.type_ == echo_reply {
            false
        } else {
            return None;
        };
        return Some(L4 {
            sport: id,
            dport: id,
            tcp_flags: 0,
            sender_origin,
        });
    }
    None
}

/// Accounts a packet of `len` bytes to the known flow `st` at `now` (sent by
/// `lo` if `from_lo`); the event it calls for under `cfg`, if any (the caller emits it and sets `emitted_ns`).
#[inline(always)]
pub(crate) fn advance(
    st: &mut FlowState,
    proto: u8,
    p: &L4,
    from_lo: bool,
    now: u64,
    len: u64,
    cfg: &DataConfig,
) -> Option<FlowEventKind> {
    st.last_ns = now;
    st.packets += 1;
    st.bytes += len;
    let mut kind = None;
    if proto == PROTO_TCP {
        let (state, flags) = tcp_next(st.state, st.flags, p.tcp_flags, from_lo);
        if state != st.state {
            if state == TcpState::SynSent as u8 {
                // The tuple was reused for a new connection: a new flow.
                st.first_ns = now;
                st.packets = 1;
                st.bytes = len;
                kind = Some(FlowEventKind::New);
            } else {
                kind = Some(FlowEventKind::StateChange);
            }
            st.state = state;
        }
        st.flags = flags;
    }
    let refresh_due = cfg.refresh_ns != 0 && now.wrapping_sub(st.emitted_ns) >= cfg.refresh_ns;
    if kind.is_none() && (refresh_due || cfg.flags & DATA_FLAG_EMIT_EVERY_PACKET != 0) {
        kind = Some(FlowEventKind::Refresh);
    }
    kind
}

/// The state of a flow first seen with this packet (sent by `lo` if
/// `from_lo`), or `None` if it is not worth tracking (a lone FIN or RST).
#[inline(always)]
pub(crate) fn fresh(proto: u8, p: &L4, from_lo: bool, now: u64, len: u64) -> Option<FlowState> {
    let mut flags = 0;
    let state = if proto != PROTO_TCP {
        TcpState::Active
    } else if p.tcp_flags & TCP_SYN != 0 {
        if p.tcp_flags & TCP_ACK != 0 {
            flags = FLOW_SYNACK;
        }
        TcpState::SynSent
    } else if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        // A lone FIN or RST for a flow we never saw: nothing to replicate.
        return None;
    } else {
        // Mid-stream pickup (e.g. after a failover): already established.
        TcpState::Established
    };
    let lo_is_origin = from_lo == p.sender_origin;
    Some(FlowState {
        first_ns: now,
        last_ns: now,
        emitted_ns: 0,
        packets: 1,
        bytes: len,
        state: state as u8,
        flags: flags | if lo_is_origin { FLOW_LO_IS_ORIGIN } else { 0 },
        _pad: [0; 6],
    })
}
