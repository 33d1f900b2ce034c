//! IPv6 flow tracking on the owner: [`track6`], called by `ha_data`'s gate
//! for IPv6 frames under the same condition as IPv4's tracking (some group
//! owned, its lease running). Same rules as IPv4 (`crate::data`): one event
//! per new flow, per TCP state change, and a refresh; TCP, UDP and ICMPv6
//! echo. Its own table ([`HA_FLOWS6`], 16-byte addresses) and its own event
//! ([`FlowEvent6`]) on the shared ring buffer, so the IPv4 path keeps its
//! costs and its 48-byte events.
//!
//! Extension headers: up to [`MAX_EXT_HEADERS`] hop-by-hop, routing and
//! destination-options headers are walked. A fragment header is looked
//! through only for an atomic fragment (offset 0, no more fragments: RFC
//! 6946); a real fragment is not tracked, as IPv4 fragments are not (only
//! the first carries the ports; the flow's other packets track it). Any
//! other next header (AH, ESP, no next header, mobility, more than
//! [`MAX_EXT_HEADERS`] extensions, ...) leaves the packet untracked.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP},
    btf_maps::{LruHashMap, PerCpuArray},
    helpers::generated::bpf_ringbuf_query,
    macros::btf_map,
    programs::XdpContext,
};
use ha_common::{
    data::{DATA_FLAG_TRACK_FLOWS, DataVerdict},
    flow::{
        FAMILY_V6, FLOW_LO_IS_ORIGIN, FlowEvent6, FlowEventKind, FlowKey6, FlowState, MAX_FLOWS,
        PROTO_ICMPV6,
    },
};
use network_types::ip::Ipv6Hdr;

use crate::{
    data::{HA_DATA_CONFIG, HA_FLOW_EVENTS, count, count_event},
    flow, ptr_at, read,
};

/// The IPv6 flow table (`ha_common::flow::FLOWS6_MAP`); resized at load as
/// `HA_FLOWS`.
#[btf_map]
static HA_FLOWS6: LruHashMap<FlowKey6, FlowState, { MAX_FLOWS as usize }> = LruHashMap::new();

/// Per-CPU room for a packet's key and a new flow's state. On the stack,
/// beside the IPv4 path in `ha_data`'s one frame, IPv6's 16-byte addresses
/// took it past BPF's 512 bytes (a BPF-to-BPF call does not help: the
/// verifier counts the caller's frame and the callee's together); with this
/// the frame is 440 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct Scratch {
    key: FlowKey6,
    st: FlowState,
}

#[btf_map]
static HA_FLOW6_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

/// Extension headers walked before the transport header.
pub(crate) const MAX_EXT_HEADERS: usize = 4;

/// Offsets in the IPv6 header: next header, source (then destination).
const NEXT_HEADER_AT: usize = 6;
const SRC_AT: usize = 8;
const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_FRAGMENT: u8 = 44;
const NEXT_DEST_OPTS: u8 = 60;
/// ICMPv6 echo request and reply.
const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;

/// The transport protocol and where its header starts, past the extension
/// headers; `None` when the packet is not tracked (see the module docs).
#[inline(always)]
fn transport(ctx: &XdpContext, l3: usize) -> Option<(u8, usize)> {
    let mut next = read::<u8>(ctx, l3 + NEXT_HEADER_AT).ok()?;
    let mut off = l3 + Ipv6Hdr::LEN;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            NEXT_HOP_BY_HOP | NEXT_ROUTING | NEXT_DEST_OPTS => {
                // Next header, then the length in 8-byte units beyond the first 8.
                let h = read::<[u8; 2]>(ctx, off).ok()?;
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            NEXT_FRAGMENT => {
                // Next header, reserved, offset (13 bits) | res (2) | M (1), id.
                let h = read::<[u8; 4]>(ctx, off).ok()?;
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff9 != 0 {
                    return None;
                }
                next = h[0];
                off += 8;
            }
            _ => return Some((next, off)),
        }
    }
    // Still an extension header after the last one walked: untracked.
    None
}

/// Records an IPv6 packet (its header at `l3`) in [`HA_FLOWS6`] and emits an
/// event on a new flow, a TCP state change, or when a refresh is due.
#[inline(always)]
pub fn track6(ctx: &XdpContext, l3: usize, now: u64) {
    let Some(cfg) = HA_DATA_CONFIG.get(0) else {
        return;
    };
    if cfg.flags & DATA_FLAG_TRACK_FLOWS == 0 {
        return;
    }
    let Some((proto, l4)) = transport(ctx, l3) else {
        return;
    };
    let Some(p) = flow::l4(ctx, proto, l4, PROTO_ICMPV6, ECHO_REQUEST, ECHO_REPLY) else {
        return;
    };
    let Some(scratch) = HA_FLOW6_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU map; XDP does not nest on a CPU.
    let scratch = unsafe { &mut *scratch };
    // Both addresses, one bounds check: separate reads each yielding a
    // Result let LLVM compute with a failed one's undefined value, which the
    // verifier refuses (an uninitialised register).
    let Ok(addrs) = ptr_at::<[u8; 32]>(ctx, l3 + SRC_AT) else {
        return;
    };
    let addrs = addrs.cast::<u8>();
    // SAFETY: `ptr_at` checked the 32 bytes at `addrs` lie inside the frame;
    // byte arrays, read unaligned.
    let bytes = |at: usize| unsafe { addrs.add(at).cast::<[u8; 8]>().read_unaligned() };
    // Which endpoint sorts lower (address, then port): as
    // `FlowKey6::normalised`, read straight from the packet.
    let (s0, s1) = (u64::from_be_bytes(bytes(0)), u64::from_be_bytes(bytes(8)));
    let (d0, d1) = (u64::from_be_bytes(bytes(16)), u64::from_be_bytes(bytes(24)));
    let from_lo = s0 < d0 || (s0 == d0 && (s1 < d1 || (s1 == d1 && p.sport <= p.dport)));
    let key = &mut scratch.key;
    let (lo_at, hi_at) = if from_lo { (0, 16) } else { (16, 0) };
    // SAFETY: as above; copied into the map value.
    unsafe {
        key.lo_addr = addrs.add(lo_at).cast::<[u8; 16]>().read_unaligned();
        key.hi_addr = addrs.add(hi_at).cast::<[u8; 16]>().read_unaligned();
    }
    (key.lo_port, key.hi_port) = if from_lo {
        (p.sport, p.dport)
    } else {
        (p.dport, p.sport)
    };
    key.proto = proto;
    key._pad = [0; 3];
    let key = &scratch.key;
    let len = (ctx.data_end() - ctx.data()) as u64;

    if let Some(st) = HA_FLOWS6.get_ptr_mut(key) {
        // SAFETY: a live map value; concurrent updates from other CPUs only race
        // on counters and timestamps.
        let st = unsafe { &mut *st };
        if let Some(kind) = flow::advance(st, proto, &p, from_lo, now, len, cfg)
            && emit6(ctx, key, st, kind, cfg.wakeup_bytes)
        {
            st.emitted_ns = now;
        }
        return;
    }
    let Some(st) = flow::fresh(proto, &p, from_lo, now, len) else {
        return;
    };
    scratch.st = st;
    if emit6(
        ctx,
        &scratch.key,
        &scratch.st,
        FlowEventKind::New,
        cfg.wakeup_bytes,
    ) {
        scratch.st.emitted_ns = now;
    }
    // Another CPU may have inserted it first; theirs wins.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value they would be copied to the stack; the helper takes the scratch map's pointers"
    )]
    let _ = HA_FLOWS6.insert(&scratch.key, &scratch.st, u64::from(BPF_NOEXIST));
}

/// Writes one IPv6 event to the shared ring buffer, waking the agent as
/// IPv4's `emit` does. Returns false (and counts) when the ring buffer is
/// full. Fields are written in place (no event-sized copy on the stack).
#[inline(always)]
fn emit6(
    ctx: &XdpContext,
    key: &FlowKey6,
    st: &FlowState,
    kind: FlowEventKind,
    wakeup_bytes: u64,
) -> bool {
    let Some(mut entry) = HA_FLOW_EVENTS.reserve_untyped::<FlowEvent6>(0) else {
        count(DataVerdict::RingBufFull);
        return false;
    };
    let (src, dst, sport, dport) = if st.flags & FLOW_LO_IS_ORIGIN != 0 {
        (&key.lo_addr, &key.hi_addr, key.lo_port, key.hi_port)
    } else {
        (&key.hi_addr, &key.lo_addr, key.hi_port, key.lo_port)
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to the reserved record, sized and aligned for a
    // FlowEvent6 (the ring buffer aligns records to 8); every field is
    // written before the submit below.
    unsafe {
        (&raw mut (*e).ts_ns).write(crate::now_precise_ns());
        (&raw mut (*e).packets).write(st.packets);
        (&raw mut (*e).bytes).write(st.bytes);
        (&raw mut (*e).src_addr).write(*src);
        (&raw mut (*e).dst_addr).write(*dst);
        (&raw mut (*e).src_port).write(sport);
        (&raw mut (*e).dst_port).write(dport);
        (&raw mut (*e).proto).write(key.proto);
        (&raw mut (*e).state).write(st.state);
        (&raw mut (*e).kind).write(kind as u8);
        (&raw mut (*e).family).write(FAMILY_V6);
        // Reading a field of the XDP context the kernel gave us.
        (&raw mut (*e).ifindex).write((*ctx.ctx).ingress_ifindex);
        (&raw mut (*e)._pad).write(0);
    }
    // SAFETY: the map's own address is what the helper expects.
    let avail = unsafe {
        bpf_ringbuf_query(
            core::ptr::from_ref(&HA_FLOW_EVENTS).cast_mut().cast(),
            u64::from(BPF_RB_AVAIL_DATA),
        )
    };
    let wake = if avail + size_of::<FlowEvent6>() as u64 >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        0
    };
    entry.submit(u64::from(wake));
    count_event(kind);
    true
}
