//! `ha_link`: the HA-interface filter. See `ha_common::link`.

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, bpf_sock, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as SockTupleV4, xdp_action,
    },
    btf_maps::{Array, HashMap, PerCpuArray},
    helpers::generated::{bpf_sk_lookup_tcp, bpf_sk_release},
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
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    hdr::{IcmpEcho, TcpPorts, UdpPorts, VrrpHdr, is_fragment},
    heartbeat, now_ns, read,
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
    if heartbeat::is_heartbeat(&ctx) {
        count(LinkVerdict::Heartbeat);
        return heartbeat::handle(&ctx, heartbeat::Side::Link);
    }
    let verdict = classify(&ctx);
    count(verdict);
    if verdict.passes() {
        xdp_action::XDP_PASS
    } else {
        debug!(&ctx, "ha_link: drop, reason {}", verdict as u32);
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn count(verdict: LinkVerdict) {
    if let Some(slot) = HA_LINK_VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: this CPU's slot; per-CPU maps are not shared between CPUs.
        unsafe { *slot += 1 };
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

/// 224.0.0.18, the VRRP multicast group, in map encoding.
const VRRP_GROUP: u32 = u32::from_ne_bytes([224, 0, 0, 18]);
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Whether this node has a connected (not listening) TCP socket for exactly
/// the 4-tuple of the segment (`src`:`sport` -> `dst`:`dport`, ports in
/// network order), in the namespace of the receiving interface. This is what
/// makes a reply a reply: a connection we opened, not a guess at a port.
#[inline(always)]
fn connected_socket(ctx: &XdpContext, src: u32, dst: u32, sport: [u8; 2], dport: [u8; 2]) -> bool {
    // SAFETY: an all-zero tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    tuple.__bindgen_anon_1.ipv4 = SockTupleV4 {
        saddr: src,
        daddr: dst,
        sport: u16::from_ne_bytes(sport),
        dport: u16::from_ne_bytes(dport),
    };
    // SAFETY: the helper reads `size_of::<SockTupleV4>()` bytes of the
    // initialised tuple on our stack; the reference it returns is released
    // below on the only path that got one.
    let sk: *mut bpf_sock = unsafe {
        bpf_sk_lookup_tcp(
            ctx.ctx.cast(),
            &mut tuple,
            core::mem::size_of::<SockTupleV4>() as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a non-null socket from the lookup, read once, then released.
    let state = unsafe { (*sk).state };
    // SAFETY: releases the reference the lookup took, exactly once.
    unsafe { bpf_sk_release(sk.cast()) };
    state != BPF_TCP_LISTEN
}

fn classify(ctx: &XdpContext) -> LinkVerdict {
    let Ok(eth) = read::<EthHdr>(ctx, 0) else {
        return LinkVerdict::DropTruncated;
    };
    let ether_type = eth.ether_type;
    if ether_type == EtherType::Arp as u16 {
        return LinkVerdict::PassArp;
    }
    if ether_type == EtherType::Ipv6 as u16 {
        return ipv6(ctx);
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
    let (sync_port, control_port, join_port, local) =
        HA_LINK_CONFIG.get(0).map_or((0, 0, 0, 0), |c| {
            (c.sync_port, c.control_port, c.join_port, c.local_addr)
        });
    // Only traffic for this node itself: an address of 0 (not configured)
    // matches nothing, so an unconfigured filter passes no service.
    let to_me = local != 0 && u32::from_ne_bytes(ip.dst_addr) == local;
    let cfg = Ports {
        sync: sync_port,
        control: control_port,
        join: join_port,
    };
    let verdict = service(ctx, &ip, EthHdr::LEN + ihl, &cfg, to_me);
    // What would pass must be for this node: not a VIP, not another host,
    // not traffic routed through. (A drop keeps its own reason.)
    if verdict.passes() && !to_me && !matches!(verdict, LinkVerdict::PassVrrp) {
        return LinkVerdict::DropNotLocal;
    }
    verdict
}

/// IPv6 next headers: hop-by-hop options, ICMPv6.
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMPV6: u8 = 58;

/// ff02::12, the VRRP IPv6 multicast group.
const VRRP_GROUP6: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12];

/// IPv6 on the HA link: only VRRP of an IPv6 instance (RFC 9568 section
/// 5.1.2: next header 112 with no extension header, hop limit 255, from a
/// link-local address, to ff02::12, a configured VRID). The peers'
/// link-local addresses are not configured: any link-local source passes
/// here and the agent maps it to the one peer (authenticated adverts
/// verify it). MLD passes too (an MLD-snooping switch forwards ff02::12
/// only to listeners it hears). Everything else over IPv6 is dropped: the
/// cluster's own services run over the IPv4 HA address.
#[inline(always)]
fn ipv6(ctx: &XdpContext) -> LinkVerdict {
    let Ok(ip) = read::<Ipv6Hdr>(ctx, EthHdr::LEN) else {
        return LinkVerdict::DropTruncated;
    };
    let link_local = ip.src_addr[0] == 0xfe && ip.src_addr[1] & 0xc0 == 0x80;
    if ip.next_hdr == IPPROTO_HOPOPTS {
        // MLD: ICMPv6 behind the hop-by-hop header (router alert).
        let l4 = EthHdr::LEN + Ipv6Hdr::LEN;
        let Ok(hbh) = read::<[u8; 2]>(ctx, l4) else {
            return LinkVerdict::DropTruncated;
        };
        let Ok(icmp) = read::<[u8; 1]>(ctx, l4 + (usize::from(hbh[1]) + 1) * 8) else {
            return LinkVerdict::DropTruncated;
        };
        return if hbh[0] == IPPROTO_ICMPV6
            && matches!(icmp[0], 130 | 131 | 132 | 143)
            && ip.hop_limit == 1
            && link_local
        {
            LinkVerdict::PassMld
        } else {
            LinkVerdict::DropNotAllowed
        };
    }
    if ip.next_hdr != IPPROTO_VRRP {
        return LinkVerdict::DropNotAllowed;
    }
    if ip.hop_limit != VRRP_TTL {
        return LinkVerdict::DropVrrpTtl;
    }
    if !link_local {
        return LinkVerdict::DropVrrpSource;
    }
    if ip.dst_addr != VRRP_GROUP6 {
        return LinkVerdict::DropNotLocal;
    }
    let Ok(vrrp) = read::<VrrpHdr>(ctx, EthHdr::LEN + Ipv6Hdr::LEN) else {
        return LinkVerdict::DropVrrpTruncated;
    };
    stamp_vrrp(&vrrp, 0)
}

/// A VRRP advert of a configured VRID passes, stamped as its VRID's last
/// (`src`: the IPv4 source, 0 over IPv6); another VRID's is dropped.
#[inline(always)]
fn stamp_vrrp(vrrp: &VrrpHdr, src: u32) -> LinkVerdict {
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

/// The ports `ha_link` knows (host order; 0 = none).
struct Ports {
    sync: u16,
    control: u16,
    join: u16,
}

/// The verdict by protocol and port, before the destination check of
/// [`classify`] (which VRRP, checked here, is exempt from).
#[inline(always)]
fn service(ctx: &XdpContext, ip: &Ipv4Hdr, l4: usize, cfg: &Ports, to_me: bool) -> LinkVerdict {
    let src = u32::from_ne_bytes(ip.src_addr);
    let dst = u32::from_ne_bytes(ip.dst_addr);
    let sync_port = cfg.sync;
    let (control_port, join_port) = (cfg.control, cfg.join);
    match ip.proto {
        IPPROTO_VRRP => {
            if ip.ttl != VRRP_TTL {
                return LinkVerdict::DropVrrpTtl;
            }
            if !is_peer(src) {
                return LinkVerdict::DropVrrpSource;
            }
            if dst != VRRP_GROUP && !to_me {
                return LinkVerdict::DropNotLocal;
            }
            let Ok(vrrp) = read::<VrrpHdr>(ctx, l4) else {
                return LinkVerdict::DropVrrpTruncated;
            };
            stamp_vrrp(&vrrp, src)
        }
        17 => {
            let Ok(udp) = read::<UdpPorts>(ctx, l4) else {
                return LinkVerdict::DropTruncated;
            };
            let dport = u16::from_be_bytes(udp.dst);
            if sync_port != 0 && dport == sync_port {
                return if is_peer(src) {
                    LinkVerdict::PassSync
                } else {
                    LinkVerdict::DropSyncSource
                };
            }
            if mgmt_allowed(17, dport) {
                LinkVerdict::PassMgmt
            } else {
                LinkVerdict::DropNotAllowed
            }
        }
        6 => {
            let Ok(tcp) = read::<TcpPorts>(ctx, l4) else {
                return LinkVerdict::DropTruncated;
            };
            let dport = u16::from_be_bytes(tcp.dst);
            let sport = u16::from_be_bytes(tcp.src);
            let control = |p: u16| p != 0 && (p == control_port || p == join_port);
            if control(dport) {
                return if is_peer(src) {
                    LinkVerdict::PassControl
                } else {
                    LinkVerdict::DropControlSource
                };
            }
            let from_control = control(sport) && is_peer(src);
            if from_control && to_me {
                // A reply to a connection we opened: never a bare SYN (nothing
                // we opened answers with one), and only to a socket connected
                // with exactly this 4-tuple, so a spoofed peer with source
                // port 7789 reaches no listener and no other port (beyond the
                // management allow-list, open to any source anyway).
                let bare_syn = tcp.flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
                if !bare_syn && connected_socket(ctx, src, dst, tcp.src, tcp.dst) {
                    return LinkVerdict::PassControlReply;
                }
            }
            if mgmt_allowed(6, dport) {
                LinkVerdict::PassMgmt
            } else if from_control {
                if to_me {
                    LinkVerdict::DropControlReply
                } else {
                    LinkVerdict::DropNotLocal
                }
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
