//! Every verdict of `ha_link` and `ha_data`, checked with `BPF_PROG_TEST_RUN` on
//! crafted frames, through the real pinned maps.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use ha_agent::dataplane::{
    FlowSettings, LinkSettings, VipSpec, events::FlowEvents, inspect::Snapshot,
};
use ha_common::flow::{FlowEventKind, TcpState};
use ha_tests::{
    PinnedDataplane,
    frames::{self, ACK, FINACK, RST, SYN, SYNACK},
    require_root,
};

const ABORTED: u32 = 0;
const DROP: u32 = 1;
const PASS: u32 = 2;

const PEER: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 99);
const ME: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const PEER_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);

/// The cluster control (and join) port.
const CONTROL: u16 = 7789;

fn link_settings() -> LinkSettings {
    LinkSettings {
        address: ME,
        peers: vec![PEER],
        vrids: vec![51],
        sync_port: 7788,
        mgmt: vec![(6, 22), (17, 161)],
        control_port: CONTROL,
        join_port: CONTROL,
    }
}

/// A VIP of `group` on no particular interface, Accept_Mode as given.
fn vip_spec(addr: impl Into<IpAddr>, group: u32, accept: bool) -> VipSpec {
    VipSpec {
        addr: addr.into(),
        group,
        accept,
        vmac: None,
        ifindex: 0,
    }
}

fn counter(list: &[(String, u64)], name: &str) -> u64 {
    list.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

#[test]
fn ha_link_verdicts() {
    require_root();
    let mut p = PinnedDataplane::new("link");
    p.dp.set_link_settings(&link_settings()).unwrap();
    let run = |p: &PinnedDataplane, frame: &[u8]| p.dp.test_run("ha_link", frame, 1).unwrap().0;

    let cases: &[(&str, Vec<u8>, u32, &str)] = &[
        (
            "valid VRRP",
            frames::vrrp(PEER, 255, 51, 100, 1, VIP),
            PASS,
            "pass_vrrp",
        ),
        (
            "VRRP TTL 254",
            frames::vrrp(PEER, 254, 51, 100, 1, VIP),
            DROP,
            "drop_vrrp_ttl",
        ),
        (
            "VRRP unknown VRID",
            frames::vrrp(PEER, 255, 52, 100, 1, VIP),
            DROP,
            "drop_vrrp_unknown_vrid",
        ),
        (
            "VRRP not from a peer",
            frames::vrrp(STRANGER, 255, 51, 100, 1, VIP),
            DROP,
            "drop_vrrp_not_peer",
        ),
        (
            "VRRP truncated",
            frames::ipv4(PEER, ME, 112, 255, &[0x31, 51, 100]),
            DROP,
            "drop_vrrp_truncated",
        ),
        (
            "sync from peer",
            frames::udp(PEER, ME, 40000, 7788, b"sync"),
            PASS,
            "pass_sync",
        ),
        (
            "sync from stranger",
            frames::udp(STRANGER, ME, 40000, 7788, b"sync"),
            DROP,
            "drop_sync_not_peer",
        ),
        ("ARP", frames::arp(1, PEER, ME), PASS, "pass_arp"),
        (
            "ICMP echo",
            frames::ping(STRANGER, ME, 7, 1),
            PASS,
            "pass_icmp_echo",
        ),
        (
            "ssh (mgmt)",
            frames::tcp(STRANGER, ME, 40000, 22, SYN, b""),
            PASS,
            "pass_mgmt",
        ),
        (
            "telnet",
            frames::tcp(STRANGER, ME, 40000, 23, SYN, b""),
            DROP,
            "drop_not_allowed",
        ),
        (
            "other UDP",
            frames::udp(PEER, ME, 40000, 53, b"q"),
            DROP,
            "drop_not_allowed",
        ),
        ("IPv6", frames::ipv6_stub(), DROP, "drop_not_allowed"),
        (
            "VRRP over IPv6",
            frames::vrrp6(PEER_LL, 255, 51),
            PASS,
            "pass_vrrp",
        ),
        (
            "VRRP over IPv6, hop limit 64",
            frames::vrrp6(PEER_LL, 64, 51),
            DROP,
            "drop_vrrp_ttl",
        ),
        (
            "VRRP over IPv6 from a global address",
            frames::vrrp6(CLIENT6, 255, 51),
            DROP,
            "drop_vrrp_not_peer",
        ),
        (
            "VRRP over IPv6, unknown VRID",
            frames::vrrp6(PEER_LL, 255, 52),
            DROP,
            "drop_vrrp_unknown_vrid",
        ),
        (
            "MLD report (snooping switches)",
            frames::mld_report(PEER_LL, 1),
            PASS,
            "pass_mld",
        ),
        (
            "MLD with hop limit 255",
            frames::mld_report(PEER_LL, 255),
            DROP,
            "drop_not_allowed",
        ),
        (
            "snmp (mgmt, udp)",
            frames::udp(STRANGER, ME, 40000, 161, b"get"),
            PASS,
            "pass_mgmt",
        ),
        (
            "VRRP fragment",
            frames::fragment(PEER, ME, 112, 255, &[0x31, 51, 100, 1, 0, 1, 0, 0]),
            DROP,
            "drop_fragment",
        ),
        (
            "IPv4 header cut short",
            frames::vrrp(PEER, 255, 51, 100, 1, VIP)[..24].to_vec(),
            DROP,
            "drop_truncated",
        ),
    ];
    for (what, frame, want, _) in cases {
        assert_eq!(run(&p, frame), *want, "{what}");
    }

    let snap = Snapshot::read(&p.instance, 0).unwrap();
    for (what, _, _, reason) in cases {
        let expected = cases.iter().filter(|c| c.3 == *reason).count() as u64;
        assert_eq!(
            counter(&snap.link_verdicts, reason),
            expected,
            "{what}: counter {reason}"
        );
    }
    // Only the valid adverts were stamped, with their fields: the IPv4
    // one, then the IPv6 one (the last; its source is not an IPv4 address).
    assert_eq!(snap.adverts.len(), 1, "{:?}", snap.adverts);
    let a = &snap.adverts[0];
    assert_eq!(
        (a.vrid, a.priority, a.source, a.interval_cs, a.count),
        (51, 100, Ipv4Addr::UNSPECIFIED, 1, 2)
    );
    assert!(a.age_ms >= 0.0 && a.age_ms < 60_000.0, "{}", a.age_ms);

    // Settings are replaced, not merged: the old peer is gone.
    p.dp.set_link_settings(&LinkSettings {
        peers: vec![STRANGER],
        ..link_settings()
    })
    .unwrap();
    assert_eq!(run(&p, &frames::vrrp(PEER, 255, 51, 100, 1, VIP)), DROP);
    assert_eq!(run(&p, &frames::vrrp(STRANGER, 255, 51, 100, 1, VIP)), PASS);
}

#[test]
fn ha_data_gate_follows_ownership_and_lease() {
    require_root();
    let mut p = PinnedDataplane::new("gate");
    p.dp.set_vips(&[(VIP, 0), (Ipv4Addr::new(192, 0, 2, 2), 1)])
        .unwrap();
    let run = |p: &PinnedDataplane, frame: &[u8]| p.dp.test_run("ha_data", frame, 1).unwrap().0;
    let arp_vip = frames::arp(1, CLIENT, VIP);
    let reply_vip = frames::arp(2, CLIENT, VIP);
    let to_vip = frames::ping(CLIENT, VIP, 1, 1);
    let forwarded = frames::udp(CLIENT, SERVER, 5000, 53, b"q");
    let arp_other = frames::arp(1, CLIENT, SERVER);

    // A fresh node owns nothing.
    assert_eq!(p.dp.ownership().unwrap().groups, 0);
    assert_eq!(
        run(&p, &arp_vip),
        DROP,
        "ARP request for a VIP on the non-owner"
    );
    assert_eq!(
        run(&p, &reply_vip),
        DROP,
        "ARP reply for a VIP on the non-owner"
    );
    assert_eq!(run(&p, &to_vip), DROP, "IPv4 to a VIP on the non-owner");
    assert_eq!(run(&p, &forwarded), PASS, "no VIP involved");
    assert_eq!(run(&p, &arp_other), PASS, "ARP for a non-VIP");

    // One write: group 0 owned (group 1 still not).
    p.dp.set_ownership(0b01, Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(run(&p, &arp_vip), PASS);
    assert_eq!(run(&p, &to_vip), PASS);
    assert_eq!(
        run(&p, &frames::arp(1, CLIENT, Ipv4Addr::new(192, 0, 2, 2))),
        DROP,
        "group 1 not owned"
    );

    // An expired lease stops the owner passing (the XDP clock ticks at
    // CONFIG_HZ: wait well past one tick).
    p.dp.set_ownership(0b11, Some(Duration::from_millis(1)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(25));
    assert_eq!(run(&p, &arp_vip), DROP);
    assert_eq!(run(&p, &to_vip), DROP);
    let snap = Snapshot::read(&p.instance, 0).unwrap();
    assert_eq!(counter(&snap.data_verdicts, "drop_lease_expired"), 2);
    assert_eq!(counter(&snap.data_verdicts, "drop_arp_not_owner"), 3);
    assert_eq!(counter(&snap.data_verdicts, "drop_ipv4_not_owner"), 1);
    assert_eq!(snap.lease_remaining_ms, Some(0.0));
    assert!(snap.vips.iter().all(|v| !v.owner));

    // A lapsed lease is not revived by renewing (the peer may own the VIPs
    // now); ownership must be written again.
    assert!(!p.dp.renew_lease(Duration::from_secs(30)).unwrap());
    assert_eq!(run(&p, &arp_vip), DROP);
    p.dp.set_ownership(0b11, Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(run(&p, &arp_vip), PASS);
    // A running lease is extended without touching the groups.
    assert!(p.dp.renew_lease(Duration::from_secs(30)).unwrap());
    assert_eq!(p.dp.ownership().unwrap().groups, 0b11);
    assert_eq!(run(&p, &arp_vip), PASS);

    // The gate looks through one VLAN tag: a backup drops tagged ARP for a VIP.
    p.dp.set_ownership(0, None).unwrap();
    assert_eq!(run(&p, &frames::vlan(&arp_vip, 10)), DROP);
    assert_eq!(run(&p, &frames::vlan(&to_vip, 10)), DROP);
    assert_eq!(run(&p, &frames::vlan(&forwarded, 10)), PASS);
}

/// Accept_Mode off: the owner still answers ARP for the VIP but drops IPv4
/// addressed to it; with it on, both pass.
#[test]
fn accept_mode_off_drops_traffic_to_the_vip_on_the_owner() {
    require_root();
    let mut p = PinnedDataplane::new("accept");
    let other = Ipv4Addr::new(192, 0, 2, 2);
    p.dp.set_vip_table(&[
        VipSpec {
            addr: VIP.into(),
            group: 0,
            accept: false,
            vmac: None,
            ifindex: 0,
        },
        VipSpec {
            addr: other.into(),
            group: 0,
            accept: true,
            vmac: None,
            ifindex: 0,
        },
    ])
    .unwrap();
    p.dp.set_ownership(1, None).unwrap();
    let run = |f: &[u8]| p.dp.test_run("ha_data", f, 1).unwrap().0;
    assert_eq!(run(&frames::arp(1, CLIENT, VIP)), PASS);
    assert_eq!(run(&frames::ping(CLIENT, VIP, 1, 1)), DROP);
    assert_eq!(run(&frames::ping(CLIENT, other, 1, 1)), PASS);
    let snap = Snapshot::read(&p.instance, 0).unwrap();
    assert_eq!(counter(&snap.data_verdicts, "drop_no_accept"), 1);
    assert!(
        snap.vips
            .iter()
            .any(|v| v.vip == VIP && !v.accept && v.owner)
    );
}

/// `vmac = true`: the owner answers ARP for the VIP itself, with the
/// virtual MAC (`XDP_TX`), and takes frames to the virtual MAC, readdressed
/// to the interface's own; a backup does neither; another VRID's virtual
/// MAC is not ours.
#[test]
fn the_virtual_mac_is_answered_and_taken_by_the_owner_only() {
    require_root();
    use aya::maps::{HashMap, Map, MapData};
    use ha_common::{data::vmac, heartbeat};
    const TX: u32 = 3;
    let mut p = PinnedDataplane::new("vmac");
    let plain = Ipv4Addr::new(192, 0, 2, 2);
    let elsewhere = Ipv4Addr::new(192, 0, 2, 3);
    // The test run's ingress interface is loopback: the VIPs "on" it.
    let lo = ha_agent::iface::if_index("lo").unwrap() as u32;
    p.dp.set_vip_table(&[
        VipSpec {
            addr: VIP.into(),
            group: 0,
            accept: true,
            vmac: Some(7),
            ifindex: lo,
        },
        VipSpec {
            addr: plain.into(),
            group: 0,
            accept: true,
            vmac: None,
            ifindex: lo,
        },
        // A virtual-MAC VIP of another interface: not answered here (the
        // kernel's `arp_ignore=1` decides), its virtual MAC not taken here.
        VipSpec {
            addr: elsewhere.into(),
            group: 0,
            accept: true,
            vmac: Some(9),
            ifindex: lo + 1000,
        },
    ])
    .unwrap();
    // The test run's ingress interface is loopback: its "MAC" is what a
    // frame to the virtual MAC is readdressed to.
    let lo_mac = [0x02, 0xaa, 0, 0, 0, 1];
    let path = p.dp.dir().join("maps").join(heartbeat::MACS_MAP);
    let mut macs: HashMap<MapData, u32, [u8; 8]> =
        HashMap::try_from(Map::from_map_data(MapData::from_pin(&path).unwrap()).unwrap()).unwrap();
    macs.insert(lo, [0x02, 0xaa, 0, 0, 0, 1, 0, 0], 0).unwrap();
    let to = |mac: [u8; 6], mut f: Vec<u8>| {
        f[..6].copy_from_slice(&mac);
        f
    };
    let run = |p: &PinnedDataplane, f: &[u8]| p.dp.test_run_frame("ha_data", f).unwrap();
    let forwarded = frames::udp(CLIENT, SERVER, 5000, 53, b"q");

    // A backup: no answer, and nothing to the virtual MAC gets in.
    assert_eq!(run(&p, &frames::arp(1, CLIENT, VIP)).0, DROP);
    assert_eq!(run(&p, &to(vmac(7), forwarded.clone())).0, DROP);
    // Another cluster's virtual MAC: not ours to judge, left as it is.
    let (v, out) = run(&p, &to(vmac(8), forwarded.clone()));
    assert_eq!((v, &out[..6]), (PASS, &vmac(8)[..]));

    p.dp.set_ownership(1, None).unwrap();
    // The owner answers a request for the VIP with the virtual MAC.
    let (v, out) = run(&p, &frames::arp(1, CLIENT, VIP));
    assert_eq!(v, TX);
    assert_eq!(&out[0..6], &frames::SRC_MAC, "back to the requester");
    assert_eq!(&out[6..12], &vmac(7), "from the virtual MAC");
    assert_eq!(&out[12..14], &[0x08, 0x06]);
    assert_eq!(&out[14..22], &[0, 1, 0x08, 0x00, 6, 4, 0, 2], "a reply");
    assert_eq!(&out[22..28], &vmac(7), "sender: the virtual MAC");
    assert_eq!(&out[28..32], &VIP.octets(), "sender: the VIP");
    assert_eq!(&out[32..38], &frames::SRC_MAC, "target: the requester");
    assert_eq!(&out[38..42], &CLIENT.octets());
    // Through a VLAN tag too, the tag kept.
    let (v, out) = run(&p, &frames::vlan(&frames::arp(1, CLIENT, VIP), 10));
    assert_eq!(
        (v, &out[12..16], &out[26..32]),
        (TX, &[0x81, 0, 0, 10][..], &vmac(7)[..])
    );
    // An announcement (sender = target, as a peer's GARP) is not answered;
    // a VIP without a virtual MAC is the kernel's to answer.
    assert_eq!(run(&p, &frames::arp(1, VIP, VIP)).0, PASS);
    assert_eq!(run(&p, &frames::arp(1, CLIENT, plain)).0, PASS);
    assert_eq!(run(&p, &frames::arp(1, CLIENT, elsewhere)).0, PASS);
    let (v, out) = run(&p, &to(vmac(9), forwarded.clone()));
    assert_eq!((v, &out[..6]), (PASS, &vmac(9)[..]), "another interface's");
    // A frame to the virtual MAC goes on, to the interface's own MAC.
    let (v, out) = run(&p, &to(vmac(7), forwarded.clone()));
    assert_eq!((v, &out[..6]), (PASS, &lo_mac[..]));
    let (v, out) = run(&p, &to(vmac(7), frames::arp(1, CLIENT, VIP)));
    assert_eq!(
        (v, &out[6..12]),
        (TX, &vmac(7)[..]),
        "a unicast ARP refresh"
    );

    let snap = Snapshot::read(&p.instance, 0).unwrap();
    assert_eq!(counter(&snap.data_verdicts, "arp_reply_vmac"), 3);
    assert_eq!(counter(&snap.data_verdicts, "pass_vmac_owner"), 2);
    assert_eq!(counter(&snap.data_verdicts, "drop_vmac_not_owner"), 1);
    assert!(snap.vips.iter().any(|v| v.vip == VIP && v.vmac == Some(7)));
    assert!(snap.vips.iter().any(|v| v.vip == plain && v.vmac.is_none()));
}

/// The IPv6 virtual MAC (`00:00:5e:00:02:<vrid>`): the owner answers a
/// host's address resolution for the VIP with an NA naming it (Router,
/// Solicited, Override, checksummed), back to the requester, tag kept;
/// duplicate address detection and options-less probes are the kernel's;
/// frames to the MAC are taken by the owner only; the IPv4 virtual MAC of
/// the same VRID is another's.
#[test]
fn the_ipv6_virtual_mac_is_answered_and_taken_by_the_owner_only() {
    require_root();
    use aya::maps::{HashMap, Map, MapData};
    use ha_common::{
        data::{vmac, vmac6},
        heartbeat,
    };
    const TX: u32 = 3;
    let mut p = PinnedDataplane::new("vmac6");
    let lo = ha_agent::iface::if_index("lo").unwrap() as u32;
    // A link-local VIP of another interface: fe80::1 here is another
    // router's (an upstream gateway on the WAN, say), never gated.
    let router = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    p.dp.set_vip_table(&[
        VipSpec {
            addr: VIP6.into(),
            group: 0,
            accept: true,
            vmac: Some(7),
            ifindex: lo,
        },
        VipSpec {
            addr: router.into(),
            group: 0,
            accept: true,
            vmac: None,
            ifindex: lo + 1000,
        },
    ])
    .unwrap();
    let lo_mac = [0x02, 0xaa, 0, 0, 0, 1];
    let path = p.dp.dir().join("maps").join(heartbeat::MACS_MAP);
    let mut macs: HashMap<MapData, u32, [u8; 8]> =
        HashMap::try_from(Map::from_map_data(MapData::from_pin(&path).unwrap()).unwrap()).unwrap();
    macs.insert(lo, [0x02, 0xaa, 0, 0, 0, 1, 0, 0], 0).unwrap();
    let to = |mac: [u8; 6], mut f: Vec<u8>| {
        f[..6].copy_from_slice(&mac);
        f
    };
    let run = |p: &PinnedDataplane, f: &[u8]| p.dp.test_run_frame("ha_data", f).unwrap();
    let ns = frames::neighbor_solicit(CLIENT6, VIP6);
    let forwarded = frames::tcp6(CLIENT6, SERVER6, 40000, 80, SYN, b"");
    // A backup: no answer, nothing to the virtual MAC gets in; another
    // link's fe80::1 is not the VIP.
    assert_eq!(run(&p, &ns).0, DROP);
    assert_eq!(
        run(&p, &frames::neighbor_advert(router, ALL_NODES, router)).0,
        PASS
    );
    assert_eq!(
        run(&p, &frames::ping6(router, CLIENT6, 1, 1, false)).0,
        PASS
    );
    assert_eq!(run(&p, &to(vmac6(7), forwarded.clone())).0, DROP);

    p.dp.set_ownership(1, None).unwrap();
    let (v, out) = run(&p, &ns);
    assert_eq!(v, TX);
    assert_eq!(out.len(), ns.len());
    assert_eq!(&out[0..6], &frames::SRC_MAC, "back to the requester");
    assert_eq!(&out[6..12], &vmac6(7), "from the virtual MAC");
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    assert_eq!((out[14] >> 4, out[20], out[21]), (6, 58, 255));
    assert_eq!(&out[22..38], &VIP6.octets(), "from the VIP");
    assert_eq!(&out[38..54], &CLIENT6.octets(), "to the solicitor");
    assert_eq!((out[54], out[55], out[58]), (136, 0, 0xe0), "NA: R, S, O");
    assert_eq!(&out[62..78], &VIP6.octets(), "target");
    assert_eq!(&out[78..80], &[2, 1], "target link-layer option");
    assert_eq!(&out[80..86], &vmac6(7));
    // The checksum holds over the IPv6 pseudo-header.
    let mut sum: u32 = 32 + 58;
    for w in out[22..54].chunks(2).chain(out[54..86].chunks(2)) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert_eq!(sum, 0xffff, "ICMPv6 checksum");
    // Through a VLAN tag, the tag kept.
    let (v, out) = run(&p, &frames::vlan(&ns, 10));
    assert_eq!(
        (v, &out[12..16], &out[84..90]),
        (TX, &[0x81, 0, 0, 10][..], &vmac6(7)[..])
    );
    // Duplicate address detection (from ::, no option) is the kernel's.
    let dad = frames::neighbor_solicit(Ipv6Addr::UNSPECIFIED, VIP6);
    assert_eq!(run(&p, &dad).0, PASS);
    // A frame to the virtual MAC goes on, to the interface's own MAC; the
    // IPv4 virtual MAC of the same VRID is not this instance's.
    let (v, out) = run(&p, &to(vmac6(7), forwarded.clone()));
    assert_eq!((v, &out[..6]), (PASS, &lo_mac[..]));
    let (v, out) = run(&p, &to(vmac(7), forwarded.clone()));
    assert_eq!((v, &out[..6]), (PASS, &vmac(7)[..]));

    let snap = Snapshot::read(&p.instance, 0).unwrap();
    assert_eq!(counter(&snap.data_verdicts, "na_reply_vmac"), 2);
    assert_eq!(counter(&snap.data_verdicts, "pass_vmac_owner"), 1);
    assert_eq!(counter(&snap.data_verdicts, "drop_vmac_not_owner"), 1);
    assert!(snap.vips.iter().any(|v| v.vip == VIP6 && v.vmac == Some(7)));
}

/// IPv6 VIPs are gated as IPv4 ones: a Neighbor Solicitation or
/// Advertisement whose target is a VIP (IPv6's ARP) passes only on the
/// owner with a running lease and never meets Accept_Mode; IPv6 to a VIP
/// passes only on the owner, and only with Accept_Mode on; through one VLAN
/// tag, never through two; every verdict counted.
#[test]
fn ha_data_gates_ipv6_vips_and_neighbor_discovery() {
    require_root();
    let mut p = PinnedDataplane::new("gate6");
    // Group 0: VIP and VIP6; group 1: `noaccept`, Accept_Mode off.
    let noaccept = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    let stranger = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99);
    p.dp.set_vip_table(&[
        vip_spec(VIP, 0, true),
        vip_spec(VIP6, 0, true),
        vip_spec(noaccept, 1, false),
    ])
    .unwrap();
    // Runs `frame`, expects `want`, and tallies the counter it must bump.
    let mut tally = BTreeMap::<&str, u64>::new();
    let mut check =
        |p: &PinnedDataplane, what: &str, frame: &[u8], want: u32, reason: &'static str| {
            assert_eq!(
                p.dp.test_run("ha_data", frame, 1).unwrap().0,
                want,
                "{what} (expected {reason})"
            );
            *tally.entry(reason).or_default() += 1;
        };
    let ns = frames::neighbor_solicit(CLIENT6, VIP6);
    let dad = frames::neighbor_solicit(Ipv6Addr::UNSPECIFIED, VIP6);
    let na = frames::neighbor_advert(CLIENT6, ALL_NODES, VIP6);
    // The answer to an NS the owner sent from the VIP: to the VIP, the
    // target the neighbour's own address.
    let na_to_vip = frames::neighbor_advert(CLIENT6, VIP6, CLIENT6);
    let to_vip = frames::tcp6(CLIENT6, VIP6, 40000, 80, SYN, b"");
    let ping_vip = frames::ping6(CLIENT6, VIP6, 1, 1, false);
    let forwarded = frames::tcp6(CLIENT6, SERVER6, 40000, 80, SYN, b"");
    let ns_stranger = frames::neighbor_solicit(CLIENT6, stranger);
    let na_stranger = frames::neighbor_advert(stranger, ALL_NODES, stranger);
    let to_stranger = frames::tcp6(CLIENT6, stranger, 40000, 80, SYN, b"");
    assert_eq!(
        &ns[38..54],
        &[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 1],
        "an NS goes to the target's solicited-node address"
    );

    // A backup (owns nothing): nothing of a VIP passes, tagged or not.
    for (what, f) in [
        ("NS", &ns),
        ("DAD NS", &dad),
        ("unsolicited NA", &na),
        ("NA to the VIP", &na_to_vip),
    ] {
        check(&p, what, f, DROP, "drop_nd_not_owner");
        check(&p, what, &frames::vlan(f, 10), DROP, "drop_nd_not_owner");
    }
    for (what, f) in [("TCP to the VIP", &to_vip), ("ping to the VIP", &ping_vip)] {
        check(&p, what, f, DROP, "drop_ipv6_not_owner");
        check(&p, what, &frames::vlan(f, 10), DROP, "drop_ipv6_not_owner");
    }
    for (what, f) in [
        ("forwarded", &forwarded),
        ("NS for a non-VIP", &ns_stranger),
        ("NA for a non-VIP", &na_stranger),
        ("TCP to a non-VIP", &to_stranger),
    ] {
        check(&p, what, f, PASS, "pass_no_vip");
        check(&p, what, &frames::vlan(f, 10), PASS, "pass_no_vip");
    }

    // The owner of group 0 (group 1 not owned).
    p.dp.set_ownership(0b01, Some(Duration::from_secs(30)))
        .unwrap();
    for (what, f) in [
        ("NS", &ns),
        ("DAD NS", &dad),
        ("unsolicited NA", &na),
        ("NA to the VIP", &na_to_vip),
    ] {
        check(&p, what, f, PASS, "pass_nd_owner");
        check(&p, what, &frames::vlan(f, 10), PASS, "pass_nd_owner");
    }
    for (what, f) in [("TCP to the VIP", &to_vip), ("ping to the VIP", &ping_vip)] {
        check(&p, what, f, PASS, "pass_ipv6_owner");
        check(&p, what, &frames::vlan(f, 10), PASS, "pass_ipv6_owner");
    }
    check(&p, "forwarded", &forwarded, PASS, "pass_no_vip");
    let ns_noaccept = frames::neighbor_solicit(CLIENT6, noaccept);
    let to_noaccept = frames::tcp6(CLIENT6, noaccept, 40000, 80, SYN, b"");
    check(&p, "NS, group 1", &ns_noaccept, DROP, "drop_nd_not_owner");
    check(
        &p,
        "TCP, group 1",
        &to_noaccept,
        DROP,
        "drop_ipv6_not_owner",
    );

    // Accept_Mode off: ND for the VIP still passes, traffic to it does not.
    p.dp.set_ownership(0b11, Some(Duration::from_secs(30)))
        .unwrap();
    check(&p, "NS, no accept", &ns_noaccept, PASS, "pass_nd_owner");
    let na_noaccept = frames::neighbor_advert(CLIENT6, ALL_NODES, noaccept);
    check(&p, "NA, no accept", &na_noaccept, PASS, "pass_nd_owner");
    check(&p, "TCP, no accept", &to_noaccept, DROP, "drop_no_accept");
    let ping_noaccept = frames::ping6(CLIENT6, noaccept, 1, 1, false);
    check(
        &p,
        "ping, no accept",
        &ping_noaccept,
        DROP,
        "drop_no_accept",
    );

    // Cut short: an IPv6 header cut is passed, counted, as IPv4's is; ND
    // cut before the end of its target is no ND message, judged by its
    // destination (the kernel drops it as malformed).
    check(&p, "IPv6 header cut", &to_vip[..14 + 39], PASS, "truncated");
    let tagged_cut = &frames::vlan(&to_vip, 10)[..18 + 39];
    check(&p, "tagged IPv6 header cut", tagged_cut, PASS, "truncated");
    check(
        &p,
        "NS cut in its target",
        &ns[..14 + 40 + 23],
        PASS,
        "pass_no_vip",
    );
    // ND behind an extension header is judged by destination only (it
    // carries none in practice: documented in `gate6`).
    let hbh_ns = frames::with_hop_by_hop(&ns);
    check(&p, "NS behind hop-by-hop", &hbh_ns, PASS, "pass_no_vip");
    let hbh_to_vip = frames::with_hop_by_hop(&to_vip);
    check(
        &p,
        "TCP behind hop-by-hop",
        &hbh_to_vip,
        PASS,
        "pass_ipv6_owner",
    );

    // Stacked tags are dropped, whatever they carry, on the owner too.
    for (what, f) in [
        ("NS", &ns),
        ("TCP to the VIP", &to_vip),
        ("forwarded", &forwarded),
    ] {
        let stacked = frames::qinq(f, 0x88a8, 100, 10);
        check(&p, what, &stacked, DROP, "drop_stacked_vlan");
    }

    // A lapsed lease: the owner's group bits no longer pass anything.
    p.dp.set_ownership(0b11, Some(Duration::from_millis(1)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(25));
    check(&p, "NS, lease lapsed", &ns, DROP, "drop_lease_expired");
    check(&p, "NA, lease lapsed", &na, DROP, "drop_lease_expired");
    check(&p, "TCP, lease lapsed", &to_vip, DROP, "drop_lease_expired");
    check(
        &p,
        "forwarded, lease lapsed",
        &forwarded,
        PASS,
        "pass_no_vip",
    );

    let snap = Snapshot::read(&p.instance, 0).unwrap();
    for (reason, n) in &tally {
        assert_eq!(counter(&snap.data_verdicts, reason), *n, "counter {reason}");
    }
    // IPv6 VIPs are listed beside the IPv4 one, by group.
    let listed: Vec<(IpAddr, u32, bool)> = snap
        .vips
        .iter()
        .map(|v| (v.vip, v.group, v.accept))
        .collect();
    assert_eq!(
        listed,
        [
            (VIP.into(), 0, true),
            (VIP6.into(), 0, true),
            (noaccept.into(), 1, false)
        ]
    );
    let text = snap.to_string();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("2001:db8::2 "))
        .unwrap_or_else(|| panic!("no line for 2001:db8::2 in {text}"));
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        [
            "2001:db8::2",
            "group",
            "1",
            "owner",
            "no",
            "(accept",
            "mode",
            "off)"
        ]
    );

    // Stale IPv6 VIPs are removed: `noaccept` is no VIP any more.
    p.dp.set_ownership(0, None).unwrap();
    p.dp.set_vip_table(&[vip_spec(VIP, 0, true), vip_spec(VIP6, 0, true)])
        .unwrap();
    let run = |p: &PinnedDataplane, f: &[u8]| p.dp.test_run("ha_data", f, 1).unwrap().0;
    assert_eq!(run(&p, &ns_noaccept), PASS);
    assert_eq!(run(&p, &to_noaccept), PASS);
    assert_eq!(run(&p, &ns), DROP);
    let snap = Snapshot::read(&p.instance, 0).unwrap();
    assert_eq!(snap.vips.len(), 2, "{:?}", snap.vips);
}

/// Sync, management, control and ICMP over the HA link pass only when
/// addressed to this node's HA address: not to a VIP, another host, or
/// traffic routed through (item: `ha_link` checks the destination).
#[test]
fn ha_link_passes_services_only_to_this_node() {
    require_root();
    let mut p = PinnedDataplane::new("linkdst");
    p.dp.set_link_settings(&link_settings()).unwrap();
    let run = |p: &PinnedDataplane, f: &[u8]| p.dp.test_run("ha_link", f, 1).unwrap().0;
    let foreign = Ipv4Addr::new(10, 255, 0, 50);
    let cases: &[(&str, Vec<u8>, u32, &str)] = &[
        (
            "ICMP echo to me",
            frames::ping(STRANGER, ME, 1, 1),
            PASS,
            "pass_icmp_echo",
        ),
        (
            "ICMP echo to a VIP",
            frames::ping(STRANGER, VIP, 1, 1),
            DROP,
            "drop_not_local",
        ),
        (
            "ICMP echo to another host",
            frames::ping(PEER, foreign, 1, 1),
            DROP,
            "drop_not_local",
        ),
        (
            "ssh to a VIP",
            frames::tcp(STRANGER, VIP, 40000, 22, SYN, b""),
            DROP,
            "drop_not_local",
        ),
        (
            "ssh routed through",
            frames::tcp(STRANGER, SERVER, 40000, 22, SYN, b""),
            DROP,
            "drop_not_local",
        ),
        (
            "snmp to another host",
            frames::udp(STRANGER, foreign, 40000, 161, b"get"),
            DROP,
            "drop_not_local",
        ),
        (
            "sync from the peer to a VIP",
            frames::udp(PEER, VIP, 7788, 7788, b"sync"),
            DROP,
            "drop_not_local",
        ),
        (
            "sync from the peer to another host",
            frames::udp(PEER, foreign, 7788, 7788, b"sync"),
            DROP,
            "drop_not_local",
        ),
        (
            "control from the peer to a VIP",
            frames::tcp(PEER, VIP, 40000, CONTROL, SYN, b""),
            DROP,
            "drop_not_local",
        ),
        (
            "VRRP from the peer to another host (unicast)",
            frames::ipv4(PEER, foreign, 112, 255, &[0x31, 51, 100, 1, 0, 1, 0, 0]),
            DROP,
            "drop_not_local",
        ),
        (
            "VRRP from the peer to me (unicast)",
            frames::ipv4(PEER, ME, 112, 255, &[0x31, 51, 100, 1, 0, 1, 0, 0]),
            PASS,
            "pass_vrrp",
        ),
        (
            "control from the peer to me",
            frames::tcp(PEER, ME, 40000, CONTROL, SYN, b""),
            PASS,
            "pass_control",
        ),
        (
            "control from a stranger",
            frames::tcp(STRANGER, ME, 40000, CONTROL, SYN, b""),
            DROP,
            "drop_control_not_peer",
        ),
    ];
    for (what, frame, want, _) in cases {
        assert_eq!(run(&p, frame), *want, "{what}");
    }
    let snap = Snapshot::read(&p.instance, 0).unwrap();
    for (what, _, _, reason) in cases {
        let expected = cases.iter().filter(|c| c.3 == *reason).count() as u64;
        assert_eq!(
            counter(&snap.link_verdicts, reason),
            expected,
            "{what}: counter {reason}"
        );
    }

    // An unconfigured address (0.0.0.0) is addressed by nothing: fail closed.
    p.dp.set_link_settings(&LinkSettings {
        address: Ipv4Addr::UNSPECIFIED,
        ..link_settings()
    })
    .unwrap();
    assert_eq!(run(&p, &frames::ping(STRANGER, ME, 1, 1)), DROP);
    assert_eq!(run(&p, &frames::udp(PEER, ME, 7788, 7788, b"s")), DROP);
    assert_eq!(run(&p, &frames::vrrp(PEER, 255, 51, 100, 1, VIP)), PASS);
}

/// The control channel over a dedicated HA link: the SYN-ACK (and every
/// later segment) of a connection this node opened to the peer's control
/// port passes; the same to a VIP or another host does not; a spoofed peer
/// with source port 7789 reaches no other local port, listening or not.
///
/// The program looks up the socket in the namespace it runs in, so the test
/// runs in a namespace of its own where the peer's address is local too: a
/// real connection ME -> PEER:7789 gives the 4-tuple a reply must match.
#[test]
fn ha_link_control_replies_need_a_connected_socket() {
    require_root();
    let mut lab = ha_lab::Lab::new();
    lab.add_netns("fw").unwrap();
    lab.add_addr(("fw", "lo"), &format!("{ME}/32")).unwrap();
    lab.add_addr(("fw", "lo"), &format!("{PEER}/32")).unwrap();
    let mut p = PinnedDataplane::new("reply");
    p.dp.set_link_settings(&link_settings()).unwrap();
    let dp = &p.dp;
    lab.run_in("fw", || {
        use std::net::{SocketAddr, TcpListener, TcpStream};
        let run = |f: &[u8]| dp.test_run("ha_link", f, 1).unwrap().0;
        let control = TcpListener::bind(SocketAddr::from((PEER, CONTROL))).unwrap();
        // A listener on this node in the ephemeral range: a spoofed "reply"
        // must not reach it either.
        let service = TcpListener::bind(SocketAddr::from((ME, 0))).unwrap();
        let service_port = service.local_addr().unwrap().port();
        // Bound to our HA address, as the agent's connections leave from it.
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::from((ME, 0)).into()).unwrap();
        sock.connect_timeout(
            &SocketAddr::from((PEER, CONTROL)).into(),
            Duration::from_secs(2),
        )
        .unwrap();
        let conn: TcpStream = sock.into();
        let local = conn.local_addr().unwrap();
        assert_eq!(
            local.ip(),
            std::net::IpAddr::V4(ME),
            "bound to the HA address"
        );
        let eph = local.port();
        let foreign = Ipv4Addr::new(10, 255, 0, 50);
        let cases: &[(&str, Vec<u8>, u32, &str)] = &[
            (
                "SYN-ACK from the peer's control port to our connection",
                frames::tcp(PEER, ME, CONTROL, eph, SYNACK, b""),
                PASS,
                "pass_control_reply",
            ),
            (
                "data from the peer's control port to our connection",
                frames::tcp(PEER, ME, CONTROL, eph, ACK, b"answer"),
                PASS,
                "pass_control_reply",
            ),
            (
                "the same SYN-ACK to a VIP",
                frames::tcp(PEER, VIP, CONTROL, eph, SYNACK, b""),
                DROP,
                "drop_not_local",
            ),
            (
                "the same SYN-ACK to another host",
                frames::tcp(PEER, foreign, CONTROL, eph, SYNACK, b""),
                DROP,
                "drop_not_local",
            ),
            (
                "a bare SYN from the peer's control port to our connection's port",
                frames::tcp(PEER, ME, CONTROL, eph, SYN, b""),
                DROP,
                "drop_control_reply_no_socket",
            ),
            (
                "a spoofed SYN from the peer's control port to a listening port",
                frames::tcp(PEER, ME, CONTROL, service_port, SYN, b""),
                DROP,
                "drop_control_reply_no_socket",
            ),
            (
                "a spoofed ACK from the peer's control port to a listening port",
                frames::tcp(PEER, ME, CONTROL, service_port, ACK, b"x"),
                DROP,
                "drop_control_reply_no_socket",
            ),
            (
                "a spoofed SYN-ACK from the peer's control port to a closed port",
                frames::tcp(PEER, ME, CONTROL, 45678, SYNACK, b""),
                DROP,
                "drop_control_reply_no_socket",
            ),
            (
                "a reply from a stranger's port 7789",
                frames::tcp(STRANGER, ME, CONTROL, eph, SYNACK, b""),
                DROP,
                "drop_not_allowed",
            ),
            (
                "management still open from the peer's port 7789",
                frames::tcp(PEER, ME, CONTROL, 22, SYN, b""),
                PASS,
                "pass_mgmt",
            ),
        ];
        for (what, frame, want, _) in cases {
            assert_eq!(run(frame), *want, "{what}");
        }
        let snap = Snapshot::read(&p.instance, 0).unwrap();
        for (what, _, _, reason) in cases {
            let expected = cases.iter().filter(|c| c.3 == *reason).count() as u64;
            assert_eq!(
                counter(&snap.link_verdicts, reason),
                expected,
                "{what}: counter {reason}"
            );
        }
        // Once the connection is gone, its replies are not let in.
        drop(conn);
        drop(control);
        drop(service);
        wait_for_drop(|| run(&frames::tcp(PEER, ME, CONTROL, eph, ACK, b"late")));
    })
    .unwrap();
    // Without a control port configured, nothing comes back from it.
    p.dp.set_link_settings(&LinkSettings {
        control_port: 0,
        join_port: 0,
        ..link_settings()
    })
    .unwrap();
    assert_eq!(
        p.dp.test_run(
            "ha_link",
            &frames::tcp(PEER, ME, 40000, CONTROL, SYN, b""),
            1
        )
        .unwrap()
        .0,
        DROP
    );
}

/// Polls `verdict` until it drops (a closed socket lingers in FIN_WAIT
/// states until the peer's side closes too).
fn wait_for_drop(mut verdict: impl FnMut() -> u32) {
    ha_tests::wait_for("the reply dropped", Duration::from_secs(5), || {
        verdict() == DROP
    });
}

/// Frames with stacked VLAN tags (QinQ) never pass the gate ungated: a backup
/// drops ARP and IPv4 for a VIP behind two tags, and every stacked frame is
/// dropped and counted (a data interface carries no QinQ).
#[test]
fn ha_data_drops_stacked_vlan_tags() {
    require_root();
    let mut p = PinnedDataplane::new("qinq");
    p.dp.set_vips(&[(VIP, 0)]).unwrap();
    let run = |p: &PinnedDataplane, f: &[u8]| p.dp.test_run("ha_data", f, 1).unwrap().0;
    let arp_vip = frames::arp(1, CLIENT, VIP);
    let to_vip = frames::ping(CLIENT, VIP, 1, 1);
    let forwarded = frames::udp(CLIENT, SERVER, 5000, 53, b"q");
    let stacked = [
        frames::qinq(&arp_vip, 0x88a8, 100, 10),
        frames::qinq(&to_vip, 0x88a8, 100, 10),
        frames::qinq(&arp_vip, 0x8100, 100, 10),
        frames::qinq(&to_vip, 0x8100, 100, 10),
        frames::qinq(&forwarded, 0x88a8, 100, 10),
    ];
    // A backup (owns nothing).
    for (i, f) in stacked.iter().enumerate() {
        assert_eq!(run(&p, f), DROP, "stacked frame {i} on the backup");
    }
    // One tag is still looked through and gated.
    assert_eq!(run(&p, &frames::vlan(&to_vip, 10)), DROP);
    assert_eq!(run(&p, &frames::vlan(&forwarded, 10)), PASS);
    // The owner drops stacked frames too: they are never looked into.
    p.dp.set_ownership(1, None).unwrap();
    assert_eq!(run(&p, &stacked[1]), DROP);
    assert_eq!(run(&p, &frames::vlan(&to_vip, 10)), PASS);
    let snap = Snapshot::read(&p.instance, 0).unwrap();
    assert_eq!(counter(&snap.data_verdicts, "drop_stacked_vlan"), 6);
}

/// Seeded random frames and mutated valid ones (every kind both programs
/// parse, tagged and not) through `ha_link` and `ha_data`: never
/// XDP_ABORTED, always PASS or DROP, and the ownership word is unchanged.
#[test]
fn random_and_mutated_frames_never_abort() {
    require_root();
    let mut p = PinnedDataplane::new("fuzz");
    p.dp.set_link_settings(&link_settings()).unwrap();
    p.dp.set_vip_table(&[
        vip_spec(VIP, 0, true),
        vip_spec(Ipv4Addr::new(192, 0, 2, 2), 1, true),
        vip_spec(VIP6, 0, true),
    ])
    .unwrap();
    p.dp.set_ownership(0b1, Some(Duration::from_secs(3600)))
        .unwrap();
    let before = p.dp.ownership().unwrap();

    let mut corpus = vec![
        frames::vrrp(PEER, 255, 51, 100, 1, VIP),
        frames::arp(1, CLIENT, VIP),
        frames::arp(2, PEER, ME),
        frames::tcp(CLIENT, VIP, 1, 80, SYN, b"x"),
        frames::tcp(PEER, ME, CONTROL, 40000, SYNACK, b""),
        frames::tcp(PEER, ME, 40000, CONTROL, SYN, b""),
        frames::tcp(SERVER, CLIENT, 80, 40000, FINACK, b"bye"),
        frames::udp(PEER, ME, 7788, 7788, b"sync"),
        frames::udp(STRANGER, ME, 1, 161, b"get"),
        frames::ping(CLIENT, VIP, 1, 1),
        frames::fragment(PEER, ME, 6, 64, &[0; 20]),
        frames::ipv6_stub(),
        frames::neighbor_solicit(CLIENT6, VIP6),
        frames::neighbor_advert(CLIENT6, VIP6, CLIENT6),
        frames::tcp6(CLIENT6, VIP6, 1, 80, SYN, b"x"),
    ];
    let tagged: Vec<Vec<u8>> = corpus
        .iter()
        .flat_map(|f| [frames::vlan(f, 10), frames::qinq(f, 0x88a8, 1, 2)])
        .collect();
    corpus.extend(tagged);

    // xorshift64*: deterministic, no dependency.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut runs = 0u32;
    let mut seen = [0u32; 3];
    for i in 0..3000u32 {
        let frame: Vec<u8> = if i % 4 == 0 {
            // Random bytes of a random length (at least an Ethernet header).
            let len = 14 + (next() % 200) as usize;
            (0..len).map(|_| next() as u8).collect()
        } else {
            // A valid frame with 1..8 mutations: a flipped bit, a random or
            // boundary byte, or a cut.
            let mut f = corpus[(next() % corpus.len() as u64) as usize].clone();
            for _ in 0..1 + next() % 8 {
                let at = (next() % f.len() as u64) as usize;
                match next() % 4 {
                    0 => f[at] ^= 1 << (next() % 8),
                    1 => f[at] = next() as u8,
                    2 => f[at] = [0x00, 0xff, 0x45, 0x4f, 0x81, 0x88][(next() % 6) as usize],
                    _ => f.truncate(at.max(14)),
                }
            }
            f
        };
        for program in ["ha_link", "ha_data"] {
            let (verdict, _) =
                p.dp.test_run(program, &frame, 1)
                    .unwrap_or_else(|e| panic!("{program} on {frame:02x?}: {e:?}"));
            assert_ne!(verdict, ABORTED, "{program} aborted on {frame:02x?}");
            assert!(
                verdict == PASS || verdict == DROP,
                "{program}: verdict {verdict} on {frame:02x?}"
            );
            seen[verdict as usize] += 1;
            runs += 1;
        }
    }
    assert_eq!(runs, 6000);
    // Both verdicts were reached: the mutations got past the first checks.
    assert!(seen[1] > 100 && seen[2] > 100, "{seen:?}");
    assert_eq!(p.dp.ownership().unwrap(), before);
}

/// Frames of every length from 0 to 128 bytes, random and truncated valid ones,
/// never abort either program and never change ownership.
#[test]
fn garbage_never_aborts_or_changes_ownership() {
    require_root();
    let mut p = PinnedDataplane::new("garbage");
    p.dp.set_link_settings(&link_settings()).unwrap();
    p.dp.set_vip_table(&[vip_spec(VIP, 0, true), vip_spec(VIP6, 0, true)])
        .unwrap();
    p.dp.set_ownership(0b1, None).unwrap();
    let before = p.dp.ownership().unwrap();

    let valid = [
        frames::vrrp(PEER, 255, 51, 100, 1, VIP),
        frames::arp(1, CLIENT, VIP),
        frames::tcp(CLIENT, SERVER, 1, 2, SYN, b"x"),
        frames::udp(PEER, ME, 1, 7788, b"x"),
        frames::ping(CLIENT, VIP, 1, 1),
        frames::neighbor_solicit(CLIENT6, VIP6),
        frames::tcp6(CLIENT6, VIP6, 1, 80, SYN, b"x"),
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as u8
    };
    let mut runs = 0;
    for len in 0..=128usize {
        let mut inputs: Vec<Vec<u8>> = valid
            .iter()
            .map(|f| f[..len.min(f.len())].to_vec())
            .collect();
        for _ in 0..4 {
            inputs.push((0..len).map(|_| rand()).collect());
        }
        // Random bytes behind valid Ethernet+IPv4 headers (and the start of
        // an IPv6 one) reach deeper parsers.
        for f in &valid {
            let mut g = f.clone();
            g.resize(len.max(34), 0);
            for b in g.iter_mut().skip(23) {
                *b = rand();
            }
            g.truncate(len);
            inputs.push(g);
        }
        for frame in &inputs {
            for program in ["ha_link", "ha_data"] {
                match p.dp.test_run(program, frame, 1) {
                    Ok((verdict, _)) => {
                        assert_ne!(verdict, ABORTED, "{program} aborted on {frame:02x?}");
                        assert!(
                            verdict == PASS || verdict == DROP,
                            "{program}: verdict {verdict}"
                        );
                        runs += 1;
                    }
                    // The kernel refuses test frames shorter than an Ethernet
                    // header (EINVAL) before the program runs.
                    Err(e) => assert!(
                        frame.len() < 14 && format!("{e:?}").contains("InvalidInput"),
                        "{program} on {} bytes: {e:?}",
                        frame.len()
                    ),
                }
            }
        }
    }
    assert!(runs > 1000, "{runs}");
    assert_eq!(p.dp.ownership().unwrap(), before);
}

/// TCP handshake, close and a UDP flow produce exactly the expected events, in
/// the original direction, and nothing per packet.
#[test]
fn flow_events_follow_tcp_state_not_packets() {
    require_root();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let mut p = PinnedDataplane::new("flows");
    p.dp.set_flow_settings(&FlowSettings {
        refresh: Duration::from_millis(50),
        ..FlowSettings::default()
    })
    .unwrap();
    let mut events = FlowEvents::open(&p.instance, Duration::from_millis(1)).unwrap();
    let run =
        |p: &PinnedDataplane, f: &[u8]| assert_eq!(p.dp.test_run("ha_data", f, 1).unwrap().0, PASS);

    // Not owner: nothing is tracked.
    run(&p, &frames::tcp(CLIENT, SERVER, 40000, 80, SYN, b""));
    let mut got = Vec::new();
    assert_eq!(events.drain(&mut got), 0, "backup must not emit events");

    p.dp.set_ownership(0b1, Some(Duration::from_secs(30)))
        .unwrap();
    run(&p, &frames::tcp(CLIENT, SERVER, 40000, 80, SYN, b""));
    run(&p, &frames::tcp(SERVER, CLIENT, 80, 40000, SYNACK, b""));
    run(&p, &frames::tcp(CLIENT, SERVER, 40000, 80, ACK, b""));
    for _ in 0..20 {
        run(&p, &frames::tcp(CLIENT, SERVER, 40000, 80, ACK, b"data"));
        run(&p, &frames::tcp(SERVER, CLIENT, 80, 40000, ACK, b"data"));
    }
    run(&p, &frames::tcp(SERVER, CLIENT, 80, 40000, FINACK, b""));
    run(&p, &frames::tcp(CLIENT, SERVER, 40000, 80, FINACK, b""));
    run(&p, &frames::udp(CLIENT, SERVER, 5353, 53, b"q"));
    run(&p, &frames::udp(SERVER, CLIENT, 53, 5353, b"a"));
    // A RST for a flow never seen is not worth replicating.
    run(&p, &frames::tcp(CLIENT, SERVER, 40001, 80, RST, b""));

    assert!(events.drain(&mut got) > 0);
    let seen: Vec<_> = got
        .iter()
        .map(|e| {
            (
                FlowEventKind::from_u8(e.kind).unwrap(),
                e.proto,
                TcpState::from_u8(e.state).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (FlowEventKind::New, 6, TcpState::SynSent),
            (FlowEventKind::StateChange, 6, TcpState::Established),
            (FlowEventKind::StateChange, 6, TcpState::Closing),
            (FlowEventKind::StateChange, 6, TcpState::Closed),
            (FlowEventKind::New, 17, TcpState::Active),
        ]
    );
    for e in &got {
        assert_eq!(e.src, CLIENT, "original direction");
        assert_eq!(e.dst, SERVER);
    }
    assert_eq!((got[0].src_port, got[0].dst_port), (40000, 80));
    assert_eq!(got[3].packets, 45);

    // After the refresh interval, an active flow is re-emitted once.
    std::thread::sleep(Duration::from_millis(60));
    run(&p, &frames::udp(CLIENT, SERVER, 5353, 53, b"q"));
    run(&p, &frames::udp(CLIENT, SERVER, 5353, 53, b"q"));
    got.clear();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(2), events.recv(&mut got))
            .await
            .unwrap()
            .unwrap()
    });
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        FlowEventKind::from_u8(got[0].kind),
        Some(FlowEventKind::Refresh)
    );

    let snap = Snapshot::read(&p.instance, 5).unwrap();
    assert_eq!(snap.flow_count, 2);
    assert_eq!(counter(&snap.data_verdicts, "flow_new"), 2);
    assert_eq!(counter(&snap.data_verdicts, "flow_state_change"), 3);
    assert_eq!(counter(&snap.data_verdicts, "flow_refresh"), 1);
    assert_eq!(counter(&snap.data_verdicts, "ringbuf_full"), 0);
}

/// A handshake picked up at the SYN-ACK credits the client as originator; a
/// tuple reused after a close is a new flow.
#[test]
fn synack_pickup_and_reused_tuples() {
    require_root();
    let mut p = PinnedDataplane::new("pickup");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let mut events = FlowEvents::open(&p.instance, Duration::from_millis(1)).unwrap();
    p.dp.set_ownership(1, None).unwrap();
    let run =
        |p: &PinnedDataplane, f: &[u8]| assert_eq!(p.dp.test_run("ha_data", f, 1).unwrap().0, PASS);
    run(&p, &frames::tcp(SERVER, CLIENT, 80, 40000, SYNACK, b""));
    run(&p, &frames::tcp(CLIENT, SERVER, 40000, 80, ACK, b""));
    run(&p, &frames::tcp(CLIENT, SERVER, 40000, 80, RST, b""));
    run(&p, &frames::tcp(SERVER, CLIENT, 80, 40000, FINACK, b""));
    run(&p, &frames::tcp(CLIENT, SERVER, 40000, 80, SYN, b""));
    let mut got = Vec::new();
    events.drain(&mut got);
    let seen: Vec<_> = got
        .iter()
        .map(|e| {
            (
                FlowEventKind::from_u8(e.kind).unwrap(),
                TcpState::from_u8(e.state).unwrap(),
                e.packets,
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (FlowEventKind::New, TcpState::SynSent, 1),
            (FlowEventKind::StateChange, TcpState::Established, 2),
            (FlowEventKind::StateChange, TcpState::Closed, 3),
            // the FIN after the RST changes nothing; the new SYN is a new flow
            (FlowEventKind::New, TcpState::SynSent, 1),
        ]
    );
    for e in &got {
        assert_eq!(e.src, CLIENT, "{e:?}");
    }
}

/// A full ring buffer loses events and counts every one it lost; a reader
/// that only waits on wakeups is woken once `wakeup_bytes` wait, or by the
/// first event after it read everything.
#[test]
fn ring_buffer_full_is_counted_and_wakeups_happen() {
    require_root();
    let mut p = PinnedDataplane::new("ring");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    p.dp.set_ownership(1, None).unwrap();
    p.dp.set_flow_settings(&FlowSettings {
        emit_every_packet: true,
        ..FlowSettings::default()
    })
    .unwrap();
    let frame = frames::udp(CLIENT, SERVER, 9, 53, b"q");
    let n = 200_000u64;
    p.dp.test_run("ha_data", &frame, n as u32).unwrap();
    let snap = Snapshot::read(&p.instance, 0).unwrap();
    let emitted =
        counter(&snap.data_verdicts, "flow_new") + counter(&snap.data_verdicts, "flow_refresh");
    let lost = counter(&snap.data_verdicts, "ringbuf_full");
    assert!(lost > 0, "a 4 MiB ring cannot hold {n} events");
    assert_eq!(
        emitted + lost,
        n,
        "every packet either emitted or counted lost"
    );
    let mut events = FlowEvents::open(&p.instance, Duration::from_secs(30)).unwrap();
    let mut got = Vec::new();
    assert_eq!(events.drain(&mut got) as u64, emitted);

    // The reader, drained, waits on an empty ring with a 30 s timer; one
    // event arrives 200 ms later from another thread, so only a wakeup can
    // end the wait before the 5 s timeout. Whether it did.
    let mut woken_with = |events: &mut FlowEvents, settings: FlowSettings| {
        p.dp.set_flow_settings(&settings).unwrap();
        let mut got = Vec::new();
        events.drain(&mut got);
        got.clear();
        let woke = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                p.dp.test_run("ha_data", &frame, 1).unwrap();
            });
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), events.recv(&mut got)).await
            })
        });
        matches!(woke, Ok(Ok(1)))
    };
    // A wakeup threshold of one event makes the next event wake it.
    assert!(woken_with(
        &mut events,
        FlowSettings {
            emit_every_packet: true,
            wakeup_bytes: 1,
            ..FlowSettings::default()
        }
    ));
    // With the default threshold (far above one event): a reader that has
    // read everything is woken by the next event all the same (it was
    // idle), so a flow at idle is not held back by the threshold.
    assert!(
        woken_with(
            &mut events,
            FlowSettings {
                emit_every_packet: true,
                ..FlowSettings::default()
            }
        ),
        "an idle reader is woken"
    );
}

/// IPv6 flows are tracked as IPv4 ones are, in a table and events of their
/// own: on the owner only; TCP by state (New, then StateChange with the
/// original direction's tuple), UDP and ICMPv6 echo once; through
/// hop-by-hop, routing, destination-options headers and an atomic
/// fragment, never a real fragment. IPv4 tracking beside it is unchanged.
#[test]
fn ipv6_flows_are_tracked_on_the_owner_only() {
    use std::net::{IpAddr, Ipv6Addr};
    require_root();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let mut p = PinnedDataplane::new("flows6");
    let mut events = FlowEvents::open(&p.instance, Duration::from_millis(1)).unwrap();
    let run =
        |p: &PinnedDataplane, f: &[u8]| assert_eq!(p.dp.test_run("ha_data", f, 1).unwrap().0, PASS);
    let c6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
    // Sorts below the client in the low half only: the responder is `lo`.
    let s6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x09);
    let tcp = |src, dst, sport, dport, flags| frames::tcp6(src, dst, sport, dport, flags, b"");

    // A backup (nothing owned) tracks nothing.
    run(&p, &tcp(c6, s6, 40000, 443, SYN));
    run(&p, &frames::udp6(c6, s6, 5353, 53, b"q"));
    let mut got = Vec::new();
    assert_eq!(events.drain(&mut got), 0, "a backup emitted {got:?}");
    // Nor does a lease run out.
    p.dp.set_ownership(0b1, Some(Duration::from_millis(1)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    run(&p, &tcp(c6, s6, 40000, 443, SYN));
    assert_eq!(
        events.drain(&mut got),
        0,
        "an expired lease emitted {got:?}"
    );

    p.dp.set_ownership(0b1, Some(Duration::from_secs(30)))
        .unwrap();
    run(&p, &tcp(c6, s6, 40000, 443, SYN));
    run(&p, &tcp(s6, c6, 443, 40000, SYNACK));
    run(&p, &tcp(c6, s6, 40000, 443, ACK));
    for _ in 0..5 {
        run(&p, &frames::tcp6(c6, s6, 40000, 443, ACK, b"data"));
        run(&p, &frames::tcp6(s6, c6, 443, 40000, ACK, b"data"));
    }
    run(&p, &tcp(s6, c6, 443, 40000, FINACK));
    run(&p, &tcp(c6, s6, 40000, 443, FINACK));
    run(&p, &frames::udp6(c6, s6, 5353, 53, b"q"));
    run(&p, &frames::udp6(s6, c6, 53, 5353, b"a"));
    run(&p, &frames::ping6(c6, s6, 77, 1, false));
    run(&p, &frames::ping6(s6, c6, 77, 1, true));
    // An IPv4 flow in between: its own event, unchanged.
    run(&p, &frames::tcp(CLIENT, SERVER, 40000, 80, SYN, b""));
    // Extension headers walked (a new flow each), a fragment not.
    for (i, next) in [0u8, 43, 60].into_iter().enumerate() {
        let f = tcp(c6, s6, 41000 + i as u16, 443, SYN);
        run(&p, &frames::ipv6_ext(&f, next, 0));
    }
    let atomic = frames::ipv6_ext(&tcp(c6, s6, 42000, 443, SYN), 44, 0);
    run(&p, &atomic);
    for frag in [1u16, 8, 9] {
        let f = frames::ipv6_ext(&tcp(c6, s6, 43000, 443, SYN), 44, frag);
        run(&p, &f);
    }
    // Two extension headers, then more than four: untracked past the limit.
    let two = frames::ipv6_ext(
        &frames::ipv6_ext(&tcp(c6, s6, 44000, 443, SYN), 60, 0),
        0,
        0,
    );
    run(&p, &two);
    let mut five = tcp(c6, s6, 45000, 443, SYN);
    for _ in 0..5 {
        five = frames::ipv6_ext(&five, 60, 0);
    }
    run(&p, &five);

    assert!(events.drain(&mut got) > 0);
    let seen: Vec<_> = got
        .iter()
        .map(|e| {
            (
                FlowEventKind::from_u8(e.kind).unwrap(),
                e.proto,
                TcpState::from_u8(e.state).unwrap(),
                e.src_port,
                e.src.is_ipv6(),
            )
        })
        .collect();
    use FlowEventKind::{New, StateChange};
    assert_eq!(
        seen,
        vec![
            (New, 6, TcpState::SynSent, 40000, true),
            (StateChange, 6, TcpState::Established, 40000, true),
            (StateChange, 6, TcpState::Closing, 40000, true),
            (StateChange, 6, TcpState::Closed, 40000, true),
            (New, 17, TcpState::Active, 5353, true),
            (New, 58, TcpState::Active, 77, true),
            (New, 6, TcpState::SynSent, 40000, false),
            (New, 6, TcpState::SynSent, 41000, true),
            (New, 6, TcpState::SynSent, 41001, true),
            (New, 6, TcpState::SynSent, 41002, true),
            (New, 6, TcpState::SynSent, 42000, true),
            (New, 6, TcpState::SynSent, 44000, true),
        ]
    );
    // The original direction's tuple, whichever endpoint sorts lower.
    for e in got.iter().filter(|e| e.src.is_ipv6()) {
        assert_eq!(e.src, IpAddr::V6(c6), "{e:?}");
        assert_eq!(e.dst, IpAddr::V6(s6), "{e:?}");
    }
    assert_eq!(got[0].dst_port, 443);
    assert_eq!(got[3].packets, 15, "SYN, SYN-ACK, ACK, 10 data, 2 FINs");
    assert_eq!(got[5].dst_port, 77, "ICMPv6 echo: the id as both ports");

    let snap = Snapshot::read(&p.instance, 20).unwrap();
    assert_eq!(snap.flow_count, 9, "8 IPv6 flows and an IPv4 one");
    assert!(
        snap.top_flows
            .iter()
            .any(|f| f.proto == "tcp" && f.hi == "[2001:db8::10]:40000" && f.state == "closed"),
        "{:?}",
        snap.top_flows
    );
    assert_eq!(counter(&snap.data_verdicts, "flow_new"), 9);
    assert_eq!(counter(&snap.data_verdicts, "flow_state_change"), 3);
    assert_eq!(counter(&snap.data_verdicts, "ringbuf_full"), 0);
}
