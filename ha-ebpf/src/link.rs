//! `ha_link`: the HA-interface filter. See `ha_common::link`.

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, HashMap, PerCpuArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use ha_common::link::{
    AdvertStamp, IPPROTO_VRRP, LINK_VERDICTS, LinkConfig, LinkVerdict, MAX_MGMT, MAX_PEERS,
    MgmtPort, VRRP_TTL,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
};

use crate::{
    hdr::{IcmpEcho, UdpPorts, VrrpHdr, is_fragment},
    now_ns, read,
};

#[btf_map]
static HA_LINK_CONFIG: Array<LinkConfig, 1> = Array::new();
#[btf_map]
static HA_LINK_PEERS: HashMap<u32, u32, { MAX_PEERS as usize }> = HashMap::new();
#[btf_map]
static HA_LINK_VRIDS: Array<u32, 256> = Array::new();
#[btf_map]
static HA_LINK_MGMT: HashMap<MgmtPort, u32, { MAX_MGMT as usize }> = HashMap::new();
#[btf_map]
static HA_LINK_ADVERTS: Array<AdvertStamp, 256> = Array::new();
#[btf_map]
static HA_LINK_VERDICTS: PerCpuArray<u64, { LINK_VERDICTS as usize }> = PerCpuArray::new();

#[xdp]
pub fn ha_link(ctx: XdpContext) -> u32 {
    let verdict = classify(&ctx);
    if let Some(slot) = HA_LINK_VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: this CPU's slot; per-CPU maps are not shared between CPUs.
        unsafe { *slot += 1 };
    }
    if verdict.passes() {
        xdp_action::XDP_PASS
    } else {
        debug!(&ctx, "ha_link: drop, reason {}", verdict as u32);
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn is_peer(addr: u32) -> bool {
    HA_LINK_PEERS.get_ptr(addr).is_some()
}

#[inline(always)]
fn mgmt_allowed(proto: u8, port: u16) -> bool {
    let key = MgmtPort {
        proto,
        _pad: 0,
        port,
    };
    HA_LINK_MGMT.get_ptr(key).is_some()
}

fn classify(ctx: &XdpContext) -> LinkVerdict {
    let Ok(eth) = read::<EthHdr>(ctx, 0) else {
        return LinkVerdict::DropTruncated;
    };
    let ether_type = eth.ether_type;
    if ether_type == EtherType::Arp as u16 {
        return LinkVerdict::PassArp;
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return LinkVerdict::DropNotAllowed;
    }
    let Ok(ip) = read::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return LinkVerdict::DropTruncated;
    };
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    if ihl < Ipv4Hdr::LEN {
        return LinkVerdict::DropTruncated;
    }
    if is_fragment(ip.frags) {
        return LinkVerdict::DropFragment;
    }
    let l4 = EthHdr::LEN + ihl;
    let src = u32::from_ne_bytes(ip.src_addr);
    match ip.proto {
        IPPROTO_VRRP => {
            if ip.ttl != VRRP_TTL {
                return LinkVerdict::DropVrrpTtl;
            }
            if !is_peer(src) {
                return LinkVerdict::DropVrrpSource;
            }
            let Ok(vrrp) = read::<VrrpHdr>(ctx, l4) else {
                return LinkVerdict::DropVrrpTruncated;
            };
            let vrid = u32::from(vrrp.vrid);
            match HA_LINK_VRIDS.get(vrid) {
                Some(&configured) if configured != 0 => {}
                _ => return LinkVerdict::DropVrrpVrid,
            }
            if let Some(stamp) = HA_LINK_ADVERTS.get_ptr_mut(vrid) {
                // SAFETY: a valid array slot; writers on other CPUs only race on
                // which advert is "last", which is what the stamp means anyway.
                let stamp = unsafe { &mut *stamp };
                stamp.last_ns = now_ns();
                stamp.count += 1;
                stamp.src_addr = src;
                stamp.priority = vrrp.priority;
                stamp.version = vrrp.version_type >> 4;
                stamp.interval_cs = u16::from_be_bytes(vrrp.max_adver) & 0x0fff;
            }
            LinkVerdict::PassVrrp
        }
        17 => {
            let Ok(udp) = read::<UdpPorts>(ctx, l4) else {
                return LinkVerdict::DropTruncated;
            };
            let dst = u16::from_be_bytes(udp.dst);
            let sync_port = HA_LINK_CONFIG.get(0).map_or(0, |c| c.sync_port);
            if sync_port != 0 && dst == sync_port {
                return if is_peer(src) {
                    LinkVerdict::PassSync
                } else {
                    LinkVerdict::DropSyncSource
                };
            }
            if mgmt_allowed(17, dst) {
                LinkVerdict::PassMgmt
            } else {
                LinkVerdict::DropNotAllowed
            }
        }
        6 => {
            // Destination port: bytes 2..4 of the TCP header.
            let Ok(ports) = read::<UdpPorts>(ctx, l4) else {
                return LinkVerdict::DropTruncated;
            };
            let dst = u16::from_be_bytes(ports.dst);
            if mgmt_allowed(6, dst) {
                LinkVerdict::PassMgmt
            } else {
                LinkVerdict::DropNotAllowed
            }
        }
        1 => {
            let Ok(icmp) = read::<IcmpEcho>(ctx, l4) else {
                return LinkVerdict::DropTruncated;
            };
            match icmp.type_ {
                0 | 8 => LinkVerdict::PassIcmpEcho,
                _ => LinkVerdict::DropNotAllowed,
            }
        }
        _ => LinkVerdict::DropNotAllowed,
    }
}
