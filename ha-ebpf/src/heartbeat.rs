//! The fast heartbeat's reflector, shared by `ha_link` and `ha_data`: answers
//! a peer's probe with `XDP_TX`, without userspace. See `ha_common::heartbeat`
//! for the wire format and [`ha_common::heartbeat::reflect`], the reference
//! this module calls for the answer itself.

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, HashMap, PerCpuArray},
    macros::btf_map,
    programs::XdpContext,
};
use ha_common::heartbeat::{
    ETHERTYPE, KIND_REPLY, MAGIC, MAX_IFACES, PROBE_COUNTERS, ProbeConfig, ProbeCounter, ProbeTerm,
    ProbeWire, VERSION, reflect,
};
use network_types::eth::EthHdr;

use crate::{data::HA_DATA_OWNERSHIP, now_ns, ptr_at, read};

#[btf_map]
static HA_PROBE_CONFIG: Array<ProbeConfig, 1> = Array::new();
#[btf_map]
static HA_PROBE_TERM: Array<ProbeTerm, 1> = Array::new();
#[btf_map]
pub(crate) static HA_PROBE_MACS: HashMap<u32, [u8; 8], { MAX_IFACES as usize }> = HashMap::new();
#[btf_map]
static HA_PROBE_VERDICTS: PerCpuArray<u64, { PROBE_COUNTERS as usize }> = PerCpuArray::new();

/// The heartbeat's ethertype as it sits in the header (network order).
const ETH_P_HEARTBEAT: u16 = ETHERTYPE.to_be();

/// Where the reflector runs: what becomes of a frame that is not ours.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// `ha_link`: the HA segment carries only this cluster: drop.
    Link,
    /// `ha_data`: a LAN may carry another cluster's heartbeat: pass.
    Data,
}

/// Whether the frame is an untagged heartbeat frame (a frame too short for
/// an Ethernet header is not: the program's own truncation verdict takes it).
#[inline(always)]
pub(crate) fn is_heartbeat(ctx: &XdpContext) -> bool {
    matches!(read::<EthHdr>(ctx, 0), Ok(eth) if eth.ether_type == ETH_P_HEARTBEAT)
}

#[inline(always)]
fn count(counter: ProbeCounter) {
    if let Some(slot) = HA_PROBE_VERDICTS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's slot; per-CPU maps are not shared between CPUs.
        unsafe { *slot += 1 };
    }
}

/// Answers, passes or drops a heartbeat frame (see [`is_heartbeat`]) and
/// counts what it did; returns the XDP action.
#[inline(always)]
pub(crate) fn handle(ctx: &XdpContext, side: Side) -> u32 {
    let (counter, action) = judge(ctx, side);
    count(counter);
    action
}

#[inline(always)]
fn judge(ctx: &XdpContext, side: Side) -> (ProbeCounter, u32) {
    let not_ours = match side {
        Side::Link => xdp_action::XDP_DROP,
        Side::Data => xdp_action::XDP_PASS,
    };
    let malformed = (ProbeCounter::Malformed, xdp_action::XDP_DROP);
    let Ok(eth) = read::<EthHdr>(ctx, 0) else {
        return malformed;
    };
    let Ok(probe) = read::<ProbeWire>(ctx, EthHdr::LEN) else {
        return malformed;
    };
    if probe.magic != MAGIC || probe.version != VERSION {
        return malformed;
    }
    let cfg = HA_PROBE_CONFIG.get(0).copied().unwrap_or_default();
    if probe.kind == KIND_REPLY {
        // A reply to one of our own probes: the prober's AF_PACKET socket
        // reads it. Its `from` is us, its `to` our peer.
        let ours = cfg.enabled != 0
            && cfg.local_addr != 0
            && u32::from_ne_bytes(probe.from) == cfg.local_addr
            && u32::from_ne_bytes(probe.to) == cfg.peer_addr;
        return if ours {
            (ProbeCounter::ReplyPassed, xdp_action::XDP_PASS)
        } else {
            (ProbeCounter::NotOurs, not_ours)
        };
    }
    // The term first, then the ownership word (the agent writes them in the
    // other order), then the clock. Volatile reads keep that order.
    let term = HA_PROBE_TERM
        .get_ptr(0)
        // SAFETY: a valid array slot, read once.
        .map(|p| unsafe { core::ptr::read_volatile(p) })
        .unwrap_or_default();
    let own = HA_DATA_OWNERSHIP
        .get_ptr(0)
        // SAFETY: as above.
        .map(|p| unsafe { core::ptr::read_volatile(p) })
        .unwrap_or_default();
    let now = now_ns();
    let reply = match reflect(&probe, &cfg, &term, &own, now) {
        Ok(reply) => reply,
        Err(ProbeCounter::NotOurs) => return (ProbeCounter::NotOurs, not_ours),
        Err(_) => return malformed,
    };
    let ended = term.term != 0 && !own.owns_any(now);
    let src = match HA_PROBE_MACS.get_ptr(ingress_ifindex(ctx)) {
        Some(mac) => {
            // SAFETY: a live map value, read at once.
            let mac = unsafe { *mac };
            [mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]]
        }
        None => eth.dst_addr,
    };
    let (Ok(hdr), Ok(body)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<ProbeWire>(ctx, EthHdr::LEN),
    ) else {
        return malformed;
    };
    // SAFETY: `ptr_at` checked both lie inside the frame, which XDP may
    // write; both types have alignment 1 (`EthHdr` is packed bytes and a
    // u16, written field by field unaligned).
    unsafe {
        let hdr = hdr.cast_mut();
        core::ptr::addr_of_mut!((*hdr).dst_addr).write_unaligned(eth.src_addr);
        core::ptr::addr_of_mut!((*hdr).src_addr).write_unaligned(src);
        body.cast_mut().write_unaligned(reply);
    }
    let counter = if ended {
        ProbeCounter::AnsweredEnded
    } else {
        ProbeCounter::Answered
    };
    (counter, xdp_action::XDP_TX)
}

#[inline(always)]
pub(crate) fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    // SAFETY: reading a field of the XDP context the kernel gave us.
    unsafe { (*ctx.ctx).ingress_ifindex }
}
