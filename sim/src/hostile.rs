//! The attacker, on any heartbeat path: packets that must change nothing
//! but a counter. Malformed adverts spoofing a peer's address (checksum,
//! version, type, length, a zero interval, the IPv4 header length), a wrong
//! TTL, an unknown VRID, a valid advert from a stranger, random bytes;
//! unsigned adverts at priority 255 or 0 spoofing a peer where signing is
//! required (enforce mode, or a data path); adverts with a forged trailer
//! (a random tag); and genuine signed adverts captured from the network and
//! replayed later, over the same path or another. Forged unsigned adverts
//! where unsigned ones are accepted (modes none, receive-only, permissive on
//! the HA link) are not among them: nothing tells them from the peer's.

use std::net::Ipv4Addr;

use ha_core::vrrp::{
    auth,
    packet::ip_packet,
    wire::{self, MULTICAST},
};
use rand::Rng;

use crate::{node::Origin, scenario::Scenario};

/// A genuine signed advert seen on the network.
#[derive(Debug, Clone)]
pub struct Capture {
    pub bytes: Vec<u8>,
    pub vrid: u8,
    pub src: Ipv4Addr,
    pub seq: u64,
}

/// A hostile packet for node `to` over `path`; `captures`: genuine signed
/// adverts the attacker recorded.
pub fn packet(
    rng: &mut impl Rng,
    sc: &Scenario,
    to: usize,
    path: usize,
    captures: &[Capture],
) -> (Vec<u8>, Origin) {
    let peers: Vec<Ipv4Addr> = (0..sc.nodes.len())
        .filter(|j| *j != to)
        .map(|j| sc.nodes[j].addrs[path])
        .collect();
    let peer = peers[rng.gen_range(0..peers.len())];
    let vrids: Vec<u8> = sc.nodes[to]
        .settings
        .groups
        .iter()
        .flat_map(|g| g.instances.iter().map(|(_, m)| m.vrid))
        .collect();
    let vrid = vrids[rng.gen_range(0..vrids.len())];
    let real_cs = sc.nodes[to].settings.groups[0].instances[0]
        .1
        .advert_interval_cs;
    let pdu = |vrid: u8, priority: u8, interval_cs: u16, src: Ipv4Addr| {
        wire::Repr {
            vrid,
            priority,
            interval_cs,
            addrs: vec![Ipv4Addr::new(10, 0, 0, 1).into()],
        }
        .to_bytes(src, MULTICAST)
    };
    let advert = |vrid: u8, priority: u8, interval_cs: u16, src: Ipv4Addr| {
        ip_packet(src, MULTICAST, &pdu(vrid, priority, interval_cs, src))
    };
    let prio = rng.gen_range(0..=255);
    let required = sc.auth.mode == auth::Mode::Enforce || path > 0;
    let mut kind = rng.gen_range(0..16);
    if kind == 10 && !required {
        kind = 11;
    }
    if kind >= 12 && (captures.is_empty() || !sc.auth.mode.signs()) {
        kind = 11;
    }
    let bytes = match kind {
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
        9 => {
            let mut p = advert(vrid, prio, 1, peer);
            p[0] = 0x4f;
            p
        }
        // Unsigned, spoofing a peer, where a trailer is required: take
        // over (255) or make the backup take over (0).
        10 => advert(vrid, if rng.gen_bool(0.5) { 255 } else { 0 }, real_cs, peer),
        // A forged trailer: a random tag (and sequence, key id, sometimes
        // another scheme).
        11 => {
            let mut p = pdu(
                vrid,
                *[255u8, 0, prio].get(rng.gen_range(0..3)).unwrap_or(&255),
                real_cs,
                peer,
            );
            let mut t = [0u8; auth::TRAILER_LEN];
            rng.fill(&mut t[..]);
            t[0] = if rng.gen_bool(0.9) {
                auth::EXT_HMAC_SHA256
            } else {
                t[0]
            };
            if rng.gen_bool(0.9) {
                t[1] = 1;
                t[2] = 0;
                t[3] = 0;
            }
            if let Some(c) = captures.last()
                && rng.gen_bool(0.5)
            {
                // A sequence just ahead of the genuine ones.
                t[4..12].copy_from_slice(&(c.seq + rng.gen_range(1..1 << 20)).to_be_bytes());
            }
            p.extend_from_slice(&t);
            ip_packet(peer, MULTICAST, &p)
        }
        // A genuine advert, replayed.
        _ => {
            let c = &captures[rng.gen_range(0..captures.len())];
            return (
                c.bytes.clone(),
                Origin::Replay {
                    vrid: c.vrid,
                    src: c.src,
                    seq: c.seq,
                },
            );
        }
    };
    (bytes, Origin::Hostile)
}
