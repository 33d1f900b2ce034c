//! `ha_probe`: counts frames, ICMP echo requests and replies in a per-CPU array,
//! and passes everything. See `ha_common::probe`.

use aya_ebpf::{
    bindings::xdp_action, btf_maps::PerCpuArray, macros::btf_map, macros::xdp, programs::XdpContext,
};
use ha_common::probe::{PROBE_COUNTERS, ProbeCounter};
use network_types::{
    eth::{EthHdr, EtherType},
    icmp::Icmpv4Hdr,
    ip::{IpProto, Ipv4Hdr},
};

use crate::read;

#[btf_map]
static HA_PROBE_COUNTERS: PerCpuArray<u64, { PROBE_COUNTERS as usize }> = PerCpuArray::new();

#[xdp]
pub fn ha_probe(ctx: XdpContext) -> u32 {
    count(ProbeCounter::Frames);
    if let Some(counter) = classify(&ctx) {
        count(counter);
    }
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count(counter: ProbeCounter) {
    if let Some(slot) = HA_PROBE_COUNTERS.get_ptr_mut(counter.index()) {
        // SAFETY: per-CPU slot of this CPU; no other context writes it concurrently.
        unsafe { *slot += 1 };
    }
}

/// Which counter, besides `Frames`, this frame belongs to.
#[inline(always)]
fn classify(ctx: &XdpContext) -> Option<ProbeCounter> {
    let Ok(eth) = read::<EthHdr>(ctx, 0) else {
        return Some(ProbeCounter::Truncated);
    };
    if eth.ether_type != EtherType::Ipv4 as u16 {
        return None;
    }
    let Ok(ip) = read::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return Some(ProbeCounter::Truncated);
    };
    let (vihl, proto) = (ip.vihl, ip.proto);
    if proto != IpProto::Icmp as u8 {
        return None;
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < Ipv4Hdr::LEN {
        return Some(ProbeCounter::Truncated);
    }
    let Ok(icmp) = read::<Icmpv4Hdr>(ctx, EthHdr::LEN + ihl) else {
        return Some(ProbeCounter::Truncated);
    };
    match icmp.type_ {
        8 => Some(ProbeCounter::Ipv4EchoRequest),
        0 => Some(ProbeCounter::Ipv4EchoReply),
        _ => None,
    }
}
