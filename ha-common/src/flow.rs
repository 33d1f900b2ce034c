//! Flow tracking on the owner: the LRU flow table and the events sent to the
//! agent through a ring buffer.
//!
//! A flow's key is its 5-tuple normalised so both directions hit one entry: the
//! endpoint that sorts lower (address, then port, compared in host order) is
//! `lo`. The state remembers which side opened the flow, so events report the
//! original direction (what kernel conntrack calls ORIGINAL).
//!
//! Events grow with flow churn, not packets: one when a flow appears, one per TCP
//! state change, and a refresh when a flow stays active past the refresh interval.
//!
//! IPv6 flows have a table and an event of their own ([`FlowKey6`] in
//! [`FLOWS6_MAP`], [`FlowEvent6`]), so the IPv4 path keeps its 16-byte keys and
//! 48-byte events. Both kinds of event share the ring buffer [`EVENTS_MAP`]; the
//! agent tells them apart by the record's length and checks the `family` byte
//! ([`FAMILY_V4`], [`FAMILY_V6`]) that sits in both.

use crate::impl_pod;

/// `LruHashMap<FlowKey, FlowState>`: the flow table.
pub const FLOWS_MAP: &str = "HA_FLOWS";
/// `RingBuf` of [`FlowEvent`]s to the agent.
pub const EVENTS_MAP: &str = "HA_FLOW_EVENTS";
/// `LruHashMap<FlowKey6, FlowState>`: the IPv6 flow table, sized as
/// [`FLOWS_MAP`] (kernel conntrack's limit counts both families).
pub const FLOWS6_MAP: &str = "HA_FLOWS6";
/// Entries in the flow table.
pub const MAX_FLOWS: u32 = 262_144;
/// Ring buffer size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 4 << 20;

/// IP protocols tracked.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// [`FlowEvent::family`]: an IPv4 flow.
pub const FAMILY_V4: u8 = 4;
/// [`FlowEvent6::family`]: an IPv6 flow.
pub const FAMILY_V6: u8 = 6;

/// Direction-normalised 5-tuple. For ICMP echo both ports are the echo id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Lower endpoint's address (map encoding).
    pub lo_addr: u32,
    /// Higher endpoint's address (map encoding).
    pub hi_addr: u32,
    /// Lower endpoint's port, host order.
    pub lo_port: u16,
    /// Higher endpoint's port, host order.
    pub hi_port: u16,
    /// IP protocol ([`PROTO_TCP`], [`PROTO_UDP`], [`PROTO_ICMP`]).
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// One direction of a flow: addresses in map encoding, ports in host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
}

impl FlowKey {
    /// The key of the flow a packet `src -> dst` belongs to, and whether its
    /// source is the `lo` endpoint. Both directions give the same key: the
    /// endpoint that sorts lower (address in host order, then port) is `lo`.
    /// The XDP programs and the agent's flow-table writes share this.
    #[inline(always)]
    pub const fn normalised(proto: u8, e: Endpoints) -> (FlowKey, bool) {
        let src = u32::from_be(e.src_addr);
        let dst = u32::from_be(e.dst_addr);
        let from_lo = src < dst || (src == dst && e.src_port <= e.dst_port);
        let key = if from_lo {
            FlowKey {
                lo_addr: e.src_addr,
                hi_addr: e.dst_addr,
                lo_port: e.src_port,
                hi_port: e.dst_port,
                proto,
                _pad: [0; 3],
            }
        } else {
            FlowKey {
                lo_addr: e.dst_addr,
                hi_addr: e.src_addr,
                lo_port: e.dst_port,
                hi_port: e.src_port,
                proto,
                _pad: [0; 3],
            }
        };
        (key, from_lo)
    }

    /// The flow in its original direction, given whether `lo` opened it
    /// ([`FLOW_LO_IS_ORIGIN`]): the inverse of [`FlowKey::normalised`].
    #[inline(always)]
    pub const fn oriented(&self, lo_is_origin: bool) -> Endpoints {
        if lo_is_origin {
            Endpoints {
                src_addr: self.lo_addr,
                dst_addr: self.hi_addr,
                src_port: self.lo_port,
                dst_port: self.hi_port,
            }
        } else {
            Endpoints {
                src_addr: self.hi_addr,
                dst_addr: self.lo_addr,
                src_port: self.hi_port,
                dst_port: self.lo_port,
            }
        }
    }
}

/// TCP state as far as XDP can see it (UDP and ICMP flows stay `Active`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// Not TCP.
    Active = 0,
    /// SYN seen, handshake not complete.
    SynSent = 1,
    /// Handshake complete, or a mid-stream flow picked up.
    Established = 2,
    /// A FIN seen from one side.
    Closing = 3,
    /// FINs from both sides, or a RST.
    Closed = 4,
}

impl TcpState {
    /// Decodes the byte stored in maps and events; unknown values map to `None`.
    pub const fn from_u8(v: u8) -> Option<TcpState> {
        Some(match v {
            0 => TcpState::Active,
            1 => TcpState::SynSent,
            2 => TcpState::Established,
            3 => TcpState::Closing,
            4 => TcpState::Closed,
            _ => return None,
        })
    }

    /// A short name for operators.
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::Active => "active",
            TcpState::SynSent => "syn_sent",
            TcpState::Established => "established",
            TcpState::Closing => "closing",
            TcpState::Closed => "closed",
        }
    }
}

/// [`FlowState::flags`]: the `lo` endpoint opened the flow.
pub const FLOW_LO_IS_ORIGIN: u8 = 1;
/// [`FlowState::flags`]: a FIN was seen from `lo`.
pub const FLOW_FIN_LO: u8 = 2;
/// [`FlowState::flags`]: a FIN was seen from `hi`.
pub const FLOW_FIN_HI: u8 = 4;
/// [`FlowState::flags`]: a SYN+ACK was seen.
pub const FLOW_SYNACK: u8 = 8;

/// Value of the flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// Monotonic ns of the first packet.
    pub first_ns: u64,
    /// Monotonic ns of the latest packet.
    pub last_ns: u64,
    /// Monotonic ns of the latest event emitted for this flow.
    pub emitted_ns: u64,
    /// Packets seen, both directions (approximate under concurrency).
    pub packets: u64,
    /// Bytes seen (frame lengths), both directions.
    pub bytes: u64,
    /// [`TcpState`] as a byte.
    pub state: u8,
    /// `FLOW_*` bits.
    pub flags: u8,
    pub _pad: [u8; 6],
}

/// Why an event was emitted.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowEventKind {
    New = 0,
    StateChange = 1,
    Refresh = 2,
}

impl FlowEventKind {
    /// Decodes the byte in an event.
    pub const fn from_u8(v: u8) -> Option<FlowEventKind> {
        Some(match v {
            0 => FlowEventKind::New,
            1 => FlowEventKind::StateChange,
            2 => FlowEventKind::Refresh,
            _ => return None,
        })
    }
}

/// One record in the ring buffer (48 bytes). Addresses and ports are in the
/// original direction: `src` opened the flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// Monotonic ns when emitted.
    pub ts_ns: u64,
    /// Packets seen so far.
    pub packets: u64,
    /// Bytes seen so far.
    pub bytes: u64,
    /// Originator's address (map encoding).
    pub src_addr: u32,
    /// Responder's address (map encoding).
    pub dst_addr: u32,
    /// Originator's port (ICMP: echo id), host order.
    pub src_port: u16,
    /// Responder's port (ICMP: echo id), host order.
    pub dst_port: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`TcpState`] as a byte.
    pub state: u8,
    /// [`FlowEventKind`] as a byte.
    pub kind: u8,
    /// [`FAMILY_V4`] (was zero padding before IPv6 events existed).
    pub family: u8,
    /// Ingress interface index of the packet that triggered the event.
    pub ifindex: u32,
}

impl FlowEvent {
    /// The flow in its original direction.
    #[inline(always)]
    pub const fn endpoints(&self) -> Endpoints {
        Endpoints {
            src_addr: self.src_addr,
            dst_addr: self.dst_addr,
            src_port: self.src_port,
            dst_port: self.dst_port,
        }
    }
}

/// Direction-normalised 5-tuple of an IPv6 flow: [`FlowKey`] with 16-byte
/// addresses (network order, as in the packet). For ICMPv6 echo both ports are
/// the echo id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey6 {
    /// Lower endpoint's address.
    pub lo_addr: [u8; 16],
    /// Higher endpoint's address.
    pub hi_addr: [u8; 16],
    /// Lower endpoint's port, host order.
    pub lo_port: u16,
    /// Higher endpoint's port, host order.
    pub hi_port: u16,
    /// IP protocol ([`PROTO_TCP`], [`PROTO_UDP`], [`PROTO_ICMPV6`]).
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// One direction of an IPv6 flow: addresses in network order, ports in host
/// order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints6 {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
}

/// The address as two numbers in host order (high half first): comparing the
/// pairs compares the addresses, without a `memcmp` (none in BPF).
#[inline(always)]
const fn halves(a: &[u8; 16]) -> (u64, u64) {
    (
        u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    )
}

impl FlowKey6 {
    /// [`FlowKey::normalised`] for IPv6: the endpoint whose address (then
    /// port) sorts lower is `lo`.
    #[inline(always)]
    pub const fn normalised(proto: u8, e: Endpoints6) -> (FlowKey6, bool) {
        let (s0, s1) = halves(&e.src_addr);
        let (d0, d1) = halves(&e.dst_addr);
        let from_lo = s0 < d0 || (s0 == d0 && (s1 < d1 || (s1 == d1 && e.src_port <= e.dst_port)));
        let key = if from_lo {
            FlowKey6 {
                lo_addr: e.src_addr,
                hi_addr: e.dst_addr,
                lo_port: e.src_port,
                hi_port: e.dst_port,
                proto,
                _pad: [0; 3],
            }
        } else {
            FlowKey6 {
                lo_addr: e.dst_addr,
                hi_addr: e.src_addr,
                lo_port: e.dst_port,
                hi_port: e.src_port,
                proto,
                _pad: [0; 3],
            }
        };
        (key, from_lo)
    }

    /// The flow in its original direction (the inverse of
    /// [`FlowKey6::normalised`]).
    #[inline(always)]
    pub const fn oriented(&self, lo_is_origin: bool) -> Endpoints6 {
        if lo_is_origin {
            Endpoints6 {
                src_addr: self.lo_addr,
                dst_addr: self.hi_addr,
                src_port: self.lo_port,
                dst_port: self.hi_port,
            }
        } else {
            Endpoints6 {
                src_addr: self.hi_addr,
                dst_addr: self.lo_addr,
                src_port: self.hi_port,
                dst_port: self.lo_port,
            }
        }
    }
}

/// An IPv6 flow's event in the ring buffer (72 bytes): [`FlowEvent`] with
/// 16-byte addresses. The agent reads a 72-byte record whose `family` is
/// [`FAMILY_V6`] as one; anything else of that length is malformed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent6 {
    /// Monotonic ns when emitted.
    pub ts_ns: u64,
    /// Packets seen so far.
    pub packets: u64,
    /// Bytes seen so far.
    pub bytes: u64,
    /// Originator's address, network order.
    pub src_addr: [u8; 16],
    /// Responder's address, network order.
    pub dst_addr: [u8; 16],
    /// Originator's port (ICMPv6: echo id), host order.
    pub src_port: u16,
    /// Responder's port (ICMPv6: echo id), host order.
    pub dst_port: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`TcpState`] as a byte.
    pub state: u8,
    /// [`FlowEventKind`] as a byte.
    pub kind: u8,
    /// [`FAMILY_V6`].
    pub family: u8,
    /// Ingress interface index of the packet that triggered the event.
    pub ifindex: u32,
    pub _pad: u32,
}

impl FlowEvent6 {
    /// The flow in its original direction.
    #[inline(always)]
    pub const fn endpoints(&self) -> Endpoints6 {
        Endpoints6 {
            src_addr: self.src_addr,
            dst_addr: self.dst_addr,
            src_port: self.src_port,
            dst_port: self.dst_port,
        }
    }
}

impl_pod!(FlowKey, FlowState, FlowEvent, FlowKey6, FlowEvent6);

/// Advances the TCP state for a packet with `tcp_flags` (byte 13 of the TCP
/// header) sent by the `lo` side (`from_lo`). Shared by the XDP program and the
/// agent's tests, so the transition table is written once.
#[inline(always)]
pub const fn tcp_next(state: u8, flags: u8, tcp_flags: u8, from_lo: bool) -> (u8, u8) {
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    let mut flags = flags;
    if tcp_flags & RST != 0 {
        return (TcpState::Closed as u8, flags);
    }
    if tcp_flags & FIN != 0 && state == TcpState::Closed as u8 {
        // A FIN in flight after a RST: the connection is already gone.
        return (state, flags);
    }
    if tcp_flags & FIN != 0 {
        flags |= if from_lo { FLOW_FIN_LO } else { FLOW_FIN_HI };
        let both = flags & (FLOW_FIN_LO | FLOW_FIN_HI) == (FLOW_FIN_LO | FLOW_FIN_HI);
        return (
            if both {
                TcpState::Closed as u8
            } else {
                TcpState::Closing as u8
            },
            flags,
        );
    }
    if state == TcpState::SynSent as u8 {
        if tcp_flags & (SYN | ACK) == (SYN | ACK) {
            flags |= FLOW_SYNACK;
            return (state, flags);
        }
        // The handshake's last ACK comes from the originator: the agent
        // replicates this state at once, as it comes.
        let from_origin = from_lo == (flags & FLOW_LO_IS_ORIGIN != 0);
        if tcp_flags & ACK != 0 && flags & FLOW_SYNACK != 0 && from_origin {
            return (TcpState::Established as u8, flags);
        }
        return (state, flags);
    }
    if state == TcpState::Closed as u8 && tcp_flags & SYN != 0 && tcp_flags & ACK == 0 {
        // A new connection reusing the tuple.
        return (
            TcpState::SynSent as u8,
            if from_lo { FLOW_LO_IS_ORIGIN } else { 0 },
        );
    }
    (state, flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: u8 = 0x02;
    const SYNACK: u8 = 0x12;
    const ACK: u8 = 0x10;
    const FINACK: u8 = 0x11;
    const RST: u8 = 0x04;

    #[test]
    fn handshake_then_close() {
        let s = TcpState::SynSent as u8;
        let (s, f) = tcp_next(s, FLOW_LO_IS_ORIGIN, SYNACK, false);
        assert_eq!(s, TcpState::SynSent as u8);
        let (s, f) = tcp_next(s, f, ACK, true);
        assert_eq!(s, TcpState::Established as u8);
        let (s, f) = tcp_next(s, f, FINACK, true);
        assert_eq!(s, TcpState::Closing as u8);
        let (s, _) = tcp_next(s, f, FINACK, false);
        assert_eq!(s, TcpState::Closed as u8);
    }

    #[test]
    fn only_the_originators_ack_establishes() {
        let s = TcpState::SynSent as u8;
        let (s, f) = tcp_next(s, FLOW_LO_IS_ORIGIN, SYNACK, false);
        let (s, f) = tcp_next(s, f, ACK, false);
        assert_eq!(s, TcpState::SynSent as u8, "an ACK from the responder");
        assert_eq!(tcp_next(s, f, ACK, true).0, TcpState::Established as u8);
    }

    #[test]
    fn ack_before_synack_does_not_establish() {
        let (s, _) = tcp_next(TcpState::SynSent as u8, 0, ACK, true);
        assert_eq!(s, TcpState::SynSent as u8);
    }

    #[test]
    fn rst_closes_from_any_state() {
        for s in [TcpState::SynSent, TcpState::Established, TcpState::Closing] {
            assert_eq!(tcp_next(s as u8, 0, RST, true).0, TcpState::Closed as u8);
        }
    }

    #[test]
    fn fin_after_rst_stays_closed() {
        let (s, f) = tcp_next(TcpState::Established as u8, 0, RST, true);
        assert_eq!(tcp_next(s, f, FINACK, false).0, TcpState::Closed as u8);
    }

    #[test]
    fn syn_reopens_a_closed_tuple() {
        let (s, f) = tcp_next(TcpState::Closed as u8, FLOW_FIN_LO | FLOW_FIN_HI, SYN, true);
        assert_eq!(s, TcpState::SynSent as u8);
        assert_eq!(f & (FLOW_FIN_LO | FLOW_FIN_HI), 0);
    }

    #[test]
    fn both_directions_share_a_key_and_orientation_inverts_it() {
        let a = crate::addr_from_octets([10, 0, 0, 10]);
        let b = crate::addr_from_octets([10, 1, 0, 10]);
        let fwd = Endpoints {
            src_addr: a,
            dst_addr: b,
            src_port: 40000,
            dst_port: 80,
        };
        let back = Endpoints {
            src_addr: b,
            dst_addr: a,
            src_port: 80,
            dst_port: 40000,
        };
        let (k1, lo1) = FlowKey::normalised(PROTO_TCP, fwd);
        let (k2, lo2) = FlowKey::normalised(PROTO_TCP, back);
        assert_eq!(k1, k2);
        assert!(lo1 && !lo2, "10.0.0.10 sorts below 10.1.0.10");
        assert_eq!(k1.oriented(lo1), fwd);
        assert_eq!(k1.oriented(lo2), back);
        // Same address: the port decides (host order).
        let same = Endpoints {
            src_addr: a,
            dst_addr: a,
            src_port: 2,
            dst_port: 1,
        };
        let (k, lo) = FlowKey::normalised(PROTO_UDP, same);
        assert!(!lo && k.lo_port == 1);
        assert_eq!(k.oriented(lo), same);
    }

    #[test]
    fn event_is_48_bytes() {
        assert_eq!(core::mem::size_of::<FlowEvent>(), 48);
        assert_eq!(core::mem::size_of::<FlowKey>(), 16);
        assert_eq!(core::mem::size_of::<FlowState>(), 48);
        // IPv6: a key and an event of their own; the family byte at the
        // same place relative to the protocol in both.
        assert_eq!(core::mem::size_of::<FlowEvent6>(), 72);
        assert_eq!(core::mem::size_of::<FlowKey6>(), 40);
        assert_eq!(core::mem::offset_of!(FlowEvent, family), 39);
        assert_eq!(core::mem::offset_of!(FlowEvent6, family), 63);
    }

    #[test]
    fn ipv6_keys_are_normalised_by_address_then_port() {
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[1] = 0x01;
        a[2] = 0x0d;
        a[3] = 0xb8;
        let mut b = a;
        a[15] = 10;
        // Differs in the low half only, and sorts above `a` there.
        b[8] = 1;
        let fwd = Endpoints6 {
            src_addr: a,
            dst_addr: b,
            src_port: 40000,
            dst_port: 80,
        };
        let back = Endpoints6 {
            src_addr: b,
            dst_addr: a,
            src_port: 80,
            dst_port: 40000,
        };
        let (k1, lo1) = FlowKey6::normalised(PROTO_TCP, fwd);
        let (k2, lo2) = FlowKey6::normalised(PROTO_TCP, back);
        assert_eq!(k1, k2);
        assert!(lo1 && !lo2);
        assert_eq!(k1.oriented(lo1), fwd);
        assert_eq!(k1.oriented(lo2), back);
        // The high half decides before the low one.
        let mut c = a;
        c[0] = 0x30;
        c[15] = 0;
        let (k, lo) = FlowKey6::normalised(
            PROTO_UDP,
            Endpoints6 {
                src_addr: c,
                dst_addr: b,
                src_port: 1,
                dst_port: 2,
            },
        );
        assert!(!lo && k.lo_addr == b);
        // Same address: the port decides.
        let same = Endpoints6 {
            src_addr: a,
            dst_addr: a,
            src_port: 2,
            dst_port: 1,
        };
        let (k, lo) = FlowKey6::normalised(PROTO_UDP, same);
        assert!(!lo && k.lo_port == 1);
        assert_eq!(k.oriented(lo), same);
    }
}
