//! `ha_data`: the VIP ownership gate and flow tracking on the data interfaces.
//! See `ha_common::data` and `ha_common::flow`.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, xdp_action},
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    helpers::generated::bpf_ringbuf_query,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use ha_common::{
    data::{
        DATA_FLAG_TRACK_FLOWS, DATA_VERDICTS, DataConfig, DataVerdict, MAX_VIPS, MAX_VMACS,
        Ownership, VIP_FLAG_NO_ACCEPT, VIP_FLAG_VMAC, VIP_VRID_SHIFT, VipEntry, VmacKey, vmac,
        vmac_key_vrid, vmac6,
    },
    flow::{
        EVENTS_BYTES, Endpoints, FAMILY_V4, FLOW_LO_IS_ORIGIN, FlowEvent, FlowEventKind, FlowKey,
        FlowState, MAX_FLOWS, PROTO_ICMP,
    },
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    flow, flow6,
    hdr::{ArpIpv4, NdTarget, is_fragment},
    heartbeat, now_ns, ptr_at, read,
};

/// 802.1Q and 802.1ad ethertypes as they sit in the header (network order).
const ETH_P_8021Q: u16 = 0x8100_u16.to_be();
const ETH_P_8021AD: u16 = 0x88a8_u16.to_be();
const VLAN_HLEN: usize = 4;
/// IPv6 next header: ICMPv6.
const IPPROTO_ICMPV6: u8 = 58;
/// ICMPv6 types of Neighbor Discovery's address resolution (RFC 4861).
const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;

#[btf_map]
static HA_DATA_VIPS: HashMap<u32, VipEntry, { MAX_VIPS as usize }> = HashMap::new();
/// The IPv6 VIPs, keyed by their 16 bytes as on the wire.
#[btf_map]
static HA_DATA_VIPS6: HashMap<[u8; 16], VipEntry, { MAX_VIPS as usize }> = HashMap::new();
/// Also read by the heartbeat reflector (`crate::heartbeat`).
#[btf_map]
pub(crate) static HA_DATA_OWNERSHIP: Array<Ownership, 1> = Array::new();
/// (interface, VRID) -> ownership group of the instance using that virtual MAC.
#[btf_map]
static HA_DATA_VMACS: HashMap<VmacKey, u32, { MAX_VMACS as usize }> = HashMap::new();
/// Also read by IPv6 flow tracking (`crate::flow6`).
#[btf_map]
pub(crate) static HA_DATA_CONFIG: Array<DataConfig, 1> = Array::new();
#[btf_map]
static HA_DATA_VERDICTS: PerCpuArray<u64, { DATA_VERDICTS as usize }> = PerCpuArray::new();
#[btf_map]
static HA_FLOWS: LruHashMap<FlowKey, FlowState, { MAX_FLOWS as usize }> = LruHashMap::new();
/// Shared with IPv6 flow tracking (`crate::flow6`): one stream of events.
#[btf_map]
pub(crate) static HA_FLOW_EVENTS: RingBuf<FlowEvent, { EVENTS_BYTES as usize }> = RingBuf::new();

#[inline(always)]
pub(crate) fn count(verdict: DataVerdict) {
    if let Some(slot) = HA_DATA_VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: this CPU's slot; per-CPU maps are not shared between CPUs.
        unsafe { *slot += 1 };
    }
}

/// The VIP table entry of `addr`, if it is a VIP.
#[inline(always)]
fn vip_of(addr: u32) -> Option<VipEntry> {
    // SAFETY: the pointer comes from a successful lookup and is read at once.
    HA_DATA_VIPS.get_ptr(addr).map(|p| unsafe { *p })
}

/// The IPv6 VIP table entry of `addr`, if it is a VIP here: a link-local
/// VIP (fe80::/10) only on its own interface (`ingress`), as a link-local
/// address means one link (an upstream router's fe80::1 on the WAN is not
/// the LAN's virtual router).
#[inline(always)]
fn vip6_of(addr: &[u8; 16], ingress: u32) -> Option<VipEntry> {
    // SAFETY: the pointer comes from a successful lookup and is read at once.
    let vip = HA_DATA_VIPS6.get_ptr(addr).map(|p| unsafe { *p })?;
    let link_local = addr[0] == 0xfe && addr[1] & 0xc0 == 0x80;
    (!link_local || vip.ifindex == 0 || vip.ifindex == ingress).then_some(vip)
}

#[inline(always)]
fn ownership() -> Ownership {
    HA_DATA_OWNERSHIP.get(0).copied().unwrap_or_default()
}

#[xdp]
pub fn ha_data(ctx: XdpContext) -> u32 {
    if heartbeat::is_heartbeat(&ctx) {
        count(DataVerdict::Heartbeat);
        return heartbeat::handle(&ctx, heartbeat::Side::Data);
    }
    let verdict = gate(&ctx);
    count(verdict);
    match verdict {
        DataVerdict::DropArpNotOwner
        | DataVerdict::DropIpv4NotOwner
        | DataVerdict::DropNdNotOwner
        | DataVerdict::DropIpv6NotOwner
        | DataVerdict::DropLeaseExpired
        | DataVerdict::DropNoAccept
        | DataVerdict::DropStackedVlan
        | DataVerdict::DropVmacNotOwner => {
            debug!(&ctx, "ha_data: drop, reason {}", verdict as u32);
            xdp_action::XDP_DROP
        }
        DataVerdict::ArpReplyVmac | DataVerdict::NaReplyVmac => xdp_action::XDP_TX,
        _ => xdp_action::XDP_PASS,
    }
}

/// The verdict for a VIP of `group` given the ownership word: pass if owned and
/// the lease runs, else why not. `now` is read only when the group bit is set,
/// so a backup never pays for the clock.
#[inline(always)]
fn vip_verdict(
    group: u32,
    own: &Ownership,
    now: &mut Option<u64>,
    pass: DataVerdict,
    drop: DataVerdict,
) -> DataVerdict {
    if group >= 64 || own.groups & (1 << group) == 0 {
        return drop;
    }
    let t = *now.get_or_insert_with(now_ns);
    if t < own.lease_expires_ns {
        pass
    } else {
        DataVerdict::DropLeaseExpired
    }
}

fn gate(ctx: &XdpContext) -> DataVerdict {
    let Ok(eth) = read::<EthHdr>(ctx, 0) else {
        return DataVerdict::Truncated;
    };
    // One 802.1Q/802.1ad tag is looked through, so a VLAN trunk is gated too.
    // A second tag (QinQ) is dropped: looking through one tag only, the gate
    // would pass what it carries (ARP and IPv4 for a VIP on a backup), and a
    // firewall's data interface carries no QinQ.
    let (ether_type, l3) = if eth.ether_type == ETH_P_8021Q || eth.ether_type == ETH_P_8021AD {
        let Ok(inner) = read::<[u8; 2]>(ctx, EthHdr::LEN + 2) else {
            return DataVerdict::Truncated;
        };
        let inner = u16::from_ne_bytes(inner);
        if inner == ETH_P_8021Q || inner == ETH_P_8021AD {
            return DataVerdict::DropStackedVlan;
        }
        (inner, EthHdr::LEN + VLAN_HLEN)
    } else {
        (eth.ether_type, EthHdr::LEN)
    };
    // To a virtual MAC of ours: only the owner takes it, readdressed to the
    // interface's own MAC so the kernel takes it as its own; then gated as
    // any other frame.
    if let Some(vrid) = vmac_key_vrid(&eth.dst_addr) {
        let key = VmacKey {
            ifindex: heartbeat::ingress_ifindex(ctx),
            vrid,
        };
        // SAFETY: the pointer comes from a successful lookup and is read at once.
        if let Some(group) = HA_DATA_VMACS.get_ptr(key).map(|p| unsafe { *p }) {
            match vip_verdict(
                group,
                &ownership(),
                &mut None,
                DataVerdict::PassVmacOwner,
                DataVerdict::DropVmacNotOwner,
            ) {
                DataVerdict::PassVmacOwner => {
                    if readdress(ctx) {
                        count(DataVerdict::PassVmacOwner);
                    }
                }
                drop => return drop,
            }
        }
    }
    if ether_type == EtherType::Arp as u16 {
        let Ok(arp) = read::<ArpIpv4>(ctx, l3) else {
            return DataVerdict::Truncated;
        };
        // Only IPv4-over-Ethernet ARP can name a VIP.
        if arp.ptype != [0x08, 0x00] || arp.plen != 4 {
            return DataVerdict::PassNoVip;
        }
        let Some(vip) = vip_of(u32::from_ne_bytes(arp.tpa)) else {
            return DataVerdict::PassNoVip;
        };
        let verdict = vip_verdict(
            vip.group,
            &ownership(),
            &mut None,
            DataVerdict::PassArpOwner,
            DataVerdict::DropArpNotOwner,
        );
        // A request (not an announcement: sender and target the same) for a
        // virtual-MAC VIP we own, on its interface: answered here with the
        // virtual MAC, never by the kernel with the interface's (on another
        // interface the kernel decides, and `arp_ignore=1` says no).
        if verdict == DataVerdict::PassArpOwner
            && vip.flags & VIP_FLAG_VMAC != 0
            && vip.ifindex == heartbeat::ingress_ifindex(ctx)
            && arp.oper == [0, 1]
            && arp.htype == [0, 1]
            && arp.hlen == 6
            && arp.spa != arp.tpa
            && answer_arp(
                ctx,
                l3,
                &eth.src_addr,
                &arp,
                vmac((vip.flags >> VIP_VRID_SHIFT) as u8),
            )
        {
            return DataVerdict::ArpReplyVmac;
        }
        return verdict;
    }
    if ether_type != EtherType::Ipv4 as u16 {
        // Tested after IPv4's, so an IPv4 frame pays nothing for IPv6.
        if ether_type == EtherType::Ipv6 as u16 {
            return gate6(ctx, l3, &eth.src_addr);
        }
        return DataVerdict::PassNoVip;
    }
    let Ok(ip) = read::<Ipv4Hdr>(ctx, l3) else {
        return DataVerdict::Truncated;
    };
    let own = ownership();
    let mut now = None;
    let verdict = match vip_of(u32::from_ne_bytes(ip.dst_addr)) {
        Some(vip) => match vip_verdict(
            vip.group,
            &own,
            &mut now,
            DataVerdict::PassIpv4Owner,
            DataVerdict::DropIpv4NotOwner,
        ) {
            DataVerdict::PassIpv4Owner if vip.flags & VIP_FLAG_NO_ACCEPT != 0 => {
                DataVerdict::DropNoAccept
            }
            v => v,
        },
        None => DataVerdict::PassNoVip,
    };
    if matches!(verdict, DataVerdict::PassNoVip | DataVerdict::PassIpv4Owner) && own.groups != 0 {
        // Flow tracking only on the owner (a running lease), never on a backup.
        let t = *now.get_or_insert_with(now_ns);
        if own.owns_any(t) {
            track(ctx, &ip, l3, t);
        }
    }
    verdict
}

/// The gate for an IPv6 packet at `l3` (after the VLAN tag, if any).
///
/// A Neighbor Solicitation or Advertisement (ICMPv6 135/136, whole up to
/// its target) is IPv6's ARP: judged by its target if that is a VIP (an NS
/// goes to the target's solicited-node multicast address, never to the VIP,
/// so this comes before the destination check), else by its destination if
/// that is one (an NA answering an NS the owner sent from the VIP), and
/// never subject to Accept_Mode. Any other IPv6 packet to a VIP is gated as
/// IPv4 is, Accept_Mode included.
///
/// ND is recognised only as the IPv6 header's direct next header, where
/// every ND message in practice has it (RFC 4861 gives ND no extension
/// headers; RFC 6980 has nodes drop fragmented ND). ND behind an extension
/// header is judged by its destination like any IPv6 packet: an NS to the
/// solicited-node address passes (`PassNoVip`). Hop limit and code are not
/// checked: the kernel discards ND without hop limit 255 or with a non-zero
/// code itself, and judging those by target only drops more on a backup.
///
/// On the owner, an NS for a virtual-MAC VIP (`vmac = true`) arriving on
/// the VIP's interface from a unicast source, in the form a host's address
/// resolution takes (32 bytes: the source link-layer option and nothing
/// else) is answered here with an NA naming `00:00:5e:00:02:<vrid>`
/// ([`answer_ns`]); any other NS (duplicate address detection from `::`,
/// a unicast reachability probe without options) is left to the kernel,
/// whose answer carries no link-layer option or is not for a host's entry,
/// so the host's entry keeps the virtual MAC. `requester`: the frame's
/// Ethernet source.
#[inline(always)]
fn gate6(ctx: &XdpContext, l3: usize, requester: &[u8; 6]) -> DataVerdict {
    let Ok(ip) = read::<Ipv6Hdr>(ctx, l3) else {
        return DataVerdict::Truncated;
    };
    let ingress = heartbeat::ingress_ifindex(ctx);
    let dst_vip = vip6_of(&ip.dst_addr, ingress);
    if ip.next_hdr == IPPROTO_ICMPV6
        && let Ok(nd) = read::<NdTarget>(ctx, l3 + Ipv6Hdr::LEN)
        && (nd.type_ == ND_NEIGHBOR_SOLICIT || nd.type_ == ND_NEIGHBOR_ADVERT)
    {
        let target = vip6_of(&nd.target, ingress);
        if let Some(vip) = target.or(dst_vip) {
            let verdict = vip_verdict(
                vip.group,
                &ownership(),
                &mut None,
                DataVerdict::PassNdOwner,
                DataVerdict::DropNdNotOwner,
            );
            if verdict == DataVerdict::PassNdOwner
                && nd.type_ == ND_NEIGHBOR_SOLICIT
                && let Some(t) = target
                && t.flags & VIP_FLAG_VMAC != 0
                && t.ifindex == ingress
                // RFC 4861 section 7.1.1: on-link (hop limit 255), code 0,
                // from a unicast address.
                && ip.hop_limit == 255
                && nd.code == 0
                && ip.src_addr != [0; 16]
                && ip.src_addr[0] != 0xff
                && u16::from_be_bytes(ip.payload_len) == ND_WITH_LLADDR
                && answer_ns(
                    ctx,
                    l3,
                    requester,
                    &ip,
                    &nd.target,
                    vmac6((t.flags >> VIP_VRID_SHIFT) as u8),
                )
            {
                return DataVerdict::NaReplyVmac;
            }
            return verdict;
        }
    }
    let own = ownership();
    let mut now = None;
    let verdict = match dst_vip {
        Some(vip) => match vip_verdict(
            vip.group,
            &own,
            &mut now,
            DataVerdict::PassIpv6Owner,
            DataVerdict::DropIpv6NotOwner,
        ) {
            DataVerdict::PassIpv6Owner if vip.flags & VIP_FLAG_NO_ACCEPT != 0 => {
                DataVerdict::DropNoAccept
            }
            v => v,
        },
        None => DataVerdict::PassNoVip,
    };
    // Flow tracking only on the owner (a running lease), never on a
    // backup, as for IPv4 (ND for a VIP returned above; `track6` leaves
    // ICMPv6 other than echo alone).
    if matches!(verdict, DataVerdict::PassNoVip | DataVerdict::PassIpv6Owner) && own.groups != 0 {
        let t = *now.get_or_insert_with(now_ns);
        if own.owns_any(t) {
            flow6::track6(ctx, l3, t);
        }
    }
    verdict
}

/// Writes the MAC of the interface the frame came in on (the reflector's
/// [`heartbeat::HA_PROBE_MACS`], filled when the program is attached) as its
/// destination. False if the interface's MAC is not known.
#[inline(always)]
fn readdress(ctx: &XdpContext) -> bool {
    let Some(mac) = heartbeat::HA_PROBE_MACS.get_ptr(heartbeat::ingress_ifindex(ctx)) else {
        return false;
    };
    // SAFETY: a live map value, read at once.
    let mac = unsafe { *mac };
    let Ok(dst) = ptr_at::<[u8; 6]>(ctx, 0) else {
        return false;
    };
    // SAFETY: `ptr_at` checked the 6 bytes lie inside the frame, which XDP
    // may write; alignment 1.
    unsafe {
        dst.cast_mut()
            .write_unaligned([mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])
    };
    true
}

/// Turns the ARP request `arp` (at `l3`, from `requester`) into the reply
/// naming `mac` for its target, addressed back to the requester; the VLAN
/// tag, if any, stays. False if the frame cannot be written.
#[inline(always)]
fn answer_arp(
    ctx: &XdpContext,
    l3: usize,
    requester: &[u8; 6],
    arp: &ArpIpv4,
    mac: [u8; 6],
) -> bool {
    let (Ok(eth), Ok(body)) = (ptr_at::<[u8; 12]>(ctx, 0), ptr_at::<ArpIpv4>(ctx, l3)) else {
        return false;
    };
    let mut addrs = [0u8; 12];
    addrs[..6].copy_from_slice(requester);
    addrs[6..].copy_from_slice(&mac);
    let reply = ArpIpv4 {
        oper: [0, 2],
        sha: mac,
        spa: arp.tpa,
        tha: arp.sha,
        tpa: arp.spa,
        ..*arp
    };
    // SAFETY: `ptr_at` checked both lie inside the frame, which XDP may
    // write; both are byte arrays or structs of bytes (alignment 1).
    unsafe {
        eth.cast_mut().write_unaligned(addrs);
        body.cast_mut().write_unaligned(reply);
    }
    true
}

/// Bytes of an NS or NA with its one link-layer address option (RFC 4861
/// sections 4.3, 4.4): 24 + 8.
const ND_WITH_LLADDR: u16 = 32;

/// Turns the Neighbor Solicitation at `l3` (from `requester`, for
/// `target`, [`ND_WITH_LLADDR`] bytes whose option is its source link-layer
/// address) into the solicited Neighbor Advertisement naming `mac`: from
/// the target to the solicitation's source, hop limit 255, Router,
/// Solicited and Override set, the target link-layer option; the VLAN tag,
/// if any, stays. Written field by field in the frame, and checksummed
/// from it, to keep `ha_data`'s stack small. False if the frame is not
/// that NS or cannot be written.
#[inline(always)]
fn answer_ns(
    ctx: &XdpContext,
    l3: usize,
    requester: &[u8; 6],
    ip: &Ipv6Hdr,
    target: &[u8; 16],
    mac: [u8; 6],
) -> bool {
    let (Ok(eth), Ok(hdr), Ok(msg)) = (
        ptr_at::<[u8; 12]>(ctx, 0),
        ptr_at::<Ipv6Hdr>(ctx, l3),
        ptr_at::<NdMessage>(ctx, l3 + Ipv6Hdr::LEN),
    ) else {
        return false;
    };
    let (eth, hdr, msg) = (eth.cast_mut(), hdr.cast_mut(), msg.cast_mut());
    // SAFETY: `ptr_at` checked each lies inside the frame, which XDP may
    // write; all are byte arrays or structs of bytes (alignment 1), each
    // field written by `write_unaligned` or as a byte.
    unsafe {
        // The NS's one option: its source link-layer address, 8 bytes.
        if (*msg).option != [1, 1] {
            return false;
        }
        eth.cast::<[u8; 6]>().write_unaligned(*requester);
        eth.cast::<[u8; 6]>().add(1).write_unaligned(mac);
        (*hdr).vcf = [0x60, 0, 0, 0];
        (*hdr).hop_limit = 255;
        (*hdr).dst_addr = ip.src_addr;
        (*hdr).src_addr = *target;
        (*msg).type_ = ND_NEIGHBOR_ADVERT;
        (*msg).code = 0;
        (*msg).check = [0, 0];
        (*msg).flags = [0xe0, 0, 0, 0];
        (*msg).option = [2, 1];
        (*msg).lladdr = mac;
        let sum = icmp6_checksum(&*hdr, &*msg);
        (*msg).check = sum.to_be_bytes();
    }
    true
}

/// An NS or NA with its one link-layer address option, as in the frame.
#[repr(C)]
struct NdMessage {
    type_: u8,
    code: u8,
    check: [u8; 2],
    flags: [u8; 4],
    target: [u8; 16],
    option: [u8; 2],
    lladdr: [u8; 6],
}

/// The ICMPv6 checksum of `msg` (its checksum field zero) under `ip`'s
/// addresses (RFC 8200 section 8.1 pseudo-header).
#[inline(always)]
fn icmp6_checksum(ip: &Ipv6Hdr, msg: &NdMessage) -> u16 {
    let word = |b: &[u8], i: usize| u32::from(u16::from_be_bytes([b[2 * i], b[2 * i + 1]]));
    let mut sum: u32 = u32::from(ND_WITH_LLADDR) + u32::from(IPPROTO_ICMPV6);
    for i in 0..8 {
        sum += word(&ip.src_addr, i) + word(&ip.dst_addr, i) + word(&msg.target, i);
    }
    sum += u32::from(u16::from_be_bytes([msg.type_, msg.code]));
    sum += word(&msg.check, 0) + word(&msg.flags, 0) + word(&msg.flags, 1);
    sum += word(&msg.option, 0);
    sum += word(&msg.lladdr, 0) + word(&msg.lladdr, 1) + word(&msg.lladdr, 2);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Records the packet in the flow table and emits an event on a new flow, a TCP
/// state change, or when a refresh is due.
#[inline(always)]
fn track(ctx: &XdpContext, ip: &Ipv4Hdr, l3: usize, now: u64) {
    let Some(cfg) = HA_DATA_CONFIG.get(0) else {
        return;
    };
    if cfg.flags & DATA_FLAG_TRACK_FLOWS == 0 || is_fragment(ip.frags) {
        return;
    }
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    if ihl < Ipv4Hdr::LEN {
        return;
    }
    let Some(p) = flow::l4(ctx, ip.proto, l3 + ihl, PROTO_ICMP, 8, 0) else {
        return;
    };
    let (key, from_lo) = FlowKey::normalised(
        ip.proto,
        Endpoints {
            src_addr: u32::from_ne_bytes(ip.src_addr),
            dst_addr: u32::from_ne_bytes(ip.dst_addr),
            src_port: p.sport,
            dst_port: p.dport,
        },
    );
    let len = (ctx.data_end() - ctx.data()) as u64;

    if let Some(st) = HA_FLOWS.get_ptr_mut(key) {
        // SAFETY: a live map value; concurrent updates from other CPUs only race
        // on counters and timestamps.
        let st = unsafe { &mut *st };
        if let Some(kind) = flow::advance(st, ip.proto, &p, from_lo, now, len, cfg)
            && emit(ctx, &key, st, kind, cfg.wakeup_bytes)
        {
            st.emitted_ns = now;
        }
        return;
    }
    let Some(mut st) = flow::fresh(ip.proto, &p, from_lo, now, len) else {
        return;
    };
    if emit(ctx, &key, &st, FlowEventKind::New, cfg.wakeup_bytes) {
        st.emitted_ns = now;
    }
    // Another CPU may have inserted it first; theirs wins.
    let _ = HA_FLOWS.insert(key, st, u64::from(BPF_NOEXIST));
}

/// Writes one event to the ring buffer. Wakes the agent if it was idle (had
/// read everything) or once enough bytes are waiting; in between it drains
/// what a burst left on its own timer. Returns false (and counts) when the
/// ring buffer is full.
#[inline(always)]
fn emit(
    ctx: &XdpContext,
    key: &FlowKey,
    st: &FlowState,
    kind: FlowEventKind,
    wakeup_bytes: u64,
) -> bool {
    let Some(mut entry) = HA_FLOW_EVENTS.reserve(0) else {
        count(DataVerdict::RingBufFull);
        return false;
    };
    let e = key.oriented(st.flags & FLOW_LO_IS_ORIGIN != 0);
    entry.write(FlowEvent {
        // Exact (the coarse `now` is up to a tick early): the agent measures
        // the replication lag from it. Per event, not per packet.
        ts_ns: crate::now_precise_ns(),
        packets: st.packets,
        bytes: st.bytes,
        src_addr: e.src_addr,
        dst_addr: e.dst_addr,
        src_port: e.src_port,
        dst_port: e.dst_port,
        proto: key.proto,
        state: st.state,
        kind: kind as u8,
        family: FAMILY_V4,
        // SAFETY: reading a field of the XDP context the kernel gave us.
        ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
    });
    // SAFETY: the map's own address is what the helper expects.
    let avail = unsafe {
        bpf_ringbuf_query(
            core::ptr::from_ref(&HA_FLOW_EVENTS).cast_mut().cast(),
            u64::from(BPF_RB_AVAIL_DATA),
        )
    };
    // Below the threshold, the kernel's adaptive notification (no flag):
    // the reader is woken only if it had caught up (this is the first event
    // since it drained), so an event at idle is read at once and a burst
    // is read in batches.
    let wake = if avail + 48 >= wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        0
    };
    entry.submit(u64::from(wake));
    count_event(kind);
    true
}

/// Counts an emitted event by its kind.
#[inline(always)]
pub(crate) fn count_event(kind: FlowEventKind) {
    count(match kind {
        FlowEventKind::New => DataVerdict::FlowNew,
        FlowEventKind::StateChange => DataVerdict::FlowStateChange,
        FlowEventKind::Refresh => DataVerdict::FlowRefresh,
    });
}
