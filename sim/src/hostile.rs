//! The attacker on the HA segment: packets that must change nothing but a
//! counter. Malformed adverts spoofing a peer's address (checksum, version,
//! type, length, a zero interval, the IPv4 header length), a wrong TTL, an
//! unknown VRID, a valid advert from a stranger, random bytes. Forged valid
//! adverts from a peer's own address are not among them: nothing tells them
//! from the peer's until adverts are authenticated.

use std::net::Ipv4Addr;

use ha_core::vrrp::{
    packet::ip_packet,
    wire::{self, MULTICAST},
};
use rand::Rng;

use crate::scenario::Scenario;

/// A hostile packet for node `to`: malformed, or from a stranger, or
/// otherwise invalid. (Forged valid adverts from a peer's address are
/// indistinguishable from real ones until adverts are authenticated.)
pub fn packet(rng: &mut impl Rng, sc: &Scenario, to: usize) -> Vec<u8> {
    let peers: Vec<Ipv4Addr> = sc.nodes[to].settings.peers.clone();
    let peer = peers[rng.gen_range(0..peers.len())];
    let vrids: Vec<u8> = sc.nodes[to]
        .settings
        .groups
        .iter()
        .flat_map(|g| g.instances.iter().map(|(_, m)| m.vrid))
        .collect();
    let vrid = vrids[rng.gen_range(0..vrids.len())];
    let advert = |vrid: u8, priority: u8, interval_cs: u16, src: Ipv4Addr| {
        let r = wire::Repr {
            vrid,
            priority,
            interval_cs,
            addrs: vec![Ipv4Addr::new(10, 0, 0, 1)],
        };
        ip_packet(src, MULTICAST, &r.to_bytes(src, MULTICAST))
    };
    let prio = rng.gen_range(0..=255);
    match rng.gen_range(0..10) {
        0 => {
            let mut p = advert(vrid, prio, 1, peer);
            p[26] ^= 1 << rng.gen_range(0..8);
            p
        }
        1 => {
            let mut p = advert(vrid, prio, 1, peer);
            p[20] = 0x21;
            p
        }
        2 => {
            let mut p = advert(vrid, prio, 1, peer);
            p[20] = 0x32;
            p
        }
        3 => {
            let p = advert(vrid, prio, 1, peer);
            let len = rng.gen_range(0..p.len());
            p[..len].to_vec()
        }
        4 => advert(vrid, prio, 0, peer),
        5 => {
            let mut p = advert(vrid, prio, 1, peer);
            p[8] = rng.gen_range(0..255);
            p
        }
        6 => {
            let unknown = (1..=255).find(|v| !vrids.contains(v)).unwrap_or(255);
            advert(unknown, 255, 1, peer)
        }
        7 => advert(vrid, 255, 1, Ipv4Addr::new(10, 255, 0, 66)),
        8 => (0..rng.gen_range(0..80)).map(|_| rng.r#gen()).collect(),
        _ => {
            let mut p = advert(vrid, prio, 1, peer);
            p[0] = 0x4f;
            p
        }
    }
}
