//! This node's XDP flow tables (`HA_FLOWS`, and `HA_FLOWS6` for IPv6) from
//! the sync side: a dump for a bulk resync, and entries written for the
//! flows the peer replicated (so the new master's XDP tracks them from their
//! first packet). Keys are normalised by [`FlowKey::normalised`] and
//! [`FlowKey6::normalised`], shared with the XDP programs.

use std::net::IpAddr;

use aya::{
    Pod,
    maps::{HashMap as BpfHashMap, MapData},
};
use ha_common::{
    addr_from_octets,
    flow::{self, Endpoints, Endpoints6, FlowKey, FlowKey6, FlowState, TcpState},
};

use super::{
    conntrack::CtTuple,
    record::{Record, RecordKind},
};
use crate::dataplane::{open_map, pin_dir};

/// A tuple's key in a flow table of its family.
enum Key {
    V4(FlowKey),
    V6(FlowKey6),
}

/// A tuple's key in the flow table of its family, and whether its source
/// is `lo`. `None` for a tuple whose addresses are not of one family.
fn key_of(t: &CtTuple) -> Option<(Key, bool)> {
    match (t.src, t.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let (k, lo) = FlowKey::normalised(
                t.proto,
                Endpoints {
                    src_addr: addr_from_octets(src.octets()),
                    dst_addr: addr_from_octets(dst.octets()),
                    src_port: t.sport,
                    dst_port: t.dport,
                },
            );
            Some((Key::V4(k), lo))
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let (k, lo) = FlowKey6::normalised(
                t.proto,
                Endpoints6 {
                    src_addr: src.octets(),
                    dst_addr: dst.octets(),
                    src_port: t.sport,
                    dst_port: t.dport,
                },
            );
            Some((Key::V6(k), lo))
        }
        _ => None,
    }
}

/// One pinned flow table, keyed by `K`.
struct Table<K: Pod> {
    map: BpfHashMap<MapData, K, FlowState>,
    /// The same map, for the batched dump (aya has no batch operations).
    raw: Option<MapData>,
}

impl<K: Pod + Default> Table<K> {
    fn open(dir: &std::path::Path, name: &'static str) -> Option<Self> {
        let raw = MapData::from_pin(dir.join("maps").join(name)).ok();
        open_map(dir, name).ok().map(|map| Table { map, raw })
    }

    /// Every entry, batched if the kernel lets us, else one by one.
    fn entries(&self) -> Vec<(K, FlowState)> {
        self.entries_batched()
            .unwrap_or_else(|| self.map.iter().filter_map(Result::ok).collect())
    }

    /// Every entry, read `BATCH` at a time with `BPF_MAP_LOOKUP_BATCH` (one
    /// system call per batch instead of two per entry: a million entries in
    /// a fraction of a second); `None` if the kernel refuses it.
    fn entries_batched(&self) -> Option<Vec<(K, FlowState)>> {
        const BATCH: usize = 8192;
        let fd = raw_fd(self.raw.as_ref()?);
        let mut out: Vec<(K, FlowState)> = Vec::new();
        let mut keys = vec![K::default(); BATCH];
        let mut values = vec![FlowState::default(); BATCH];
        // The opaque position (a bucket index for hash maps).
        let mut token = [0u64; 2];
        let mut next = [0u64; 2];
        let mut first = true;
        loop {
            // SAFETY: the kernel writes at most BATCH keys and values into
            // buffers of that many, and a position into `next`; `token` is
            // one it gave.
            let (r, n) = unsafe {
                map_batch(
                    BPF_MAP_LOOKUP_BATCH,
                    fd,
                    if first { 0 } else { token.as_ptr() as u64 },
                    next.as_mut_ptr() as u64,
                    keys.as_mut_ptr() as u64,
                    values.as_mut_ptr() as u64,
                    BATCH,
                )
            };
            let err = (r < 0).then(std::io::Error::last_os_error);
            if err
                .as_ref()
                .is_some_and(|e| e.raw_os_error() != Some(libc::ENOENT))
            {
                return None;
            }
            out.extend(
                keys.iter()
                    .zip(&values)
                    .take(n.min(BATCH))
                    .map(|(k, v)| (*k, *v)),
            );
            if err.is_some() {
                // ENOENT: the end.
                return Some(out);
            }
            token = next;
            first = false;
        }
    }

    /// Writes `keys` and `values` with `BPF_MAP_UPDATE_BATCH`: one system
    /// call for all (a bulk resync writes a million); one by one if the
    /// kernel refuses the batch.
    fn insert_many(&mut self, keys: Vec<K>, values: Vec<FlowState>) {
        if keys.is_empty() {
            return;
        }
        let batched = self.raw.as_ref().is_some_and(|raw| {
            // SAFETY: the kernel reads `count` keys and values from buffers
            // of that many.
            let (r, _) = unsafe {
                map_batch(
                    BPF_MAP_UPDATE_BATCH,
                    raw_fd(raw),
                    0,
                    0,
                    keys.as_ptr() as u64,
                    values.as_ptr() as u64,
                    keys.len(),
                )
            };
            r == 0
        });
        if !batched {
            for (key, st) in keys.into_iter().zip(values) {
                let _ = self.map.insert(key, st, 0);
            }
        }
    }
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

fn raw_fd(map: &MapData) -> i32 {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    map.fd().as_fd().as_raw_fd()
}

/// One batch command on map `fd` (aya has no batch operations): `union
/// bpf_attr`'s `batch` is in_batch, out_batch, keys, values (pointers as
/// u64), count | map_fd << 32, elem_flags, flags. Returns the system
/// call's result and the count the kernel wrote back.
///
/// # Safety
/// `keys` and `values` point to buffers of `count` entries of the map's
/// key and value types, `in_batch` is 0 or a position the kernel gave,
/// `out_batch` 0 or room for one.
unsafe fn map_batch(
    cmd: libc::c_long,
    fd: i32,
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: usize,
) -> (libc::c_long, usize) {
    let mut attr = [0u64; 8];
    attr[0] = in_batch;
    attr[1] = out_batch;
    attr[2] = keys;
    attr[3] = values;
    attr[4] = count as u64 | (u64::from(fd as u32) << 32);
    // SAFETY: `attr` is a valid `bpf_attr` prefix of 56 bytes; the buffers
    // are as the caller promised.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 56usize) };
    (r, (attr[4] & 0xffff_ffff) as usize)
}

/// The pinned flow tables of an instance, one per family.
pub struct FlowTable {
    v4: Table<FlowKey>,
    /// `None` with a data plane older than IPv6 flow tracking.
    v6: Option<Table<FlowKey6>>,
}

impl FlowTable {
    /// Opens the pinned tables; `None` when the data plane has none.
    pub fn open(instance: &str) -> Option<FlowTable> {
        let dir = pin_dir(instance);
        let v4 = Table::open(&dir, flow::FLOWS_MAP)?;
        Some(FlowTable {
            v4,
            v6: Table::open(&dir, flow::FLOWS6_MAP),
        })
    }

    /// Tracks the flow `t` (original direction) in `state`, seen at `now_ns`.
    pub fn insert(&mut self, t: &CtTuple, state: u8, now_ns: u64) {
        self.insert_many(&[(*t, state)], now_ns);
    }

    /// Tracks the flows `flows` (tuple in the original direction, state),
    /// seen at `now_ns`, a batch per family.
    pub fn insert_many(&mut self, flows: &[(CtTuple, u8)], now_ns: u64) {
        let (mut k4, mut s4, mut k6, mut s6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (t, state) in flows {
            match entry_of(t, *state, now_ns) {
                Some((Key::V4(k), st)) => {
                    k4.push(k);
                    s4.push(st);
                }
                Some((Key::V6(k), st)) => {
                    k6.push(k);
                    s6.push(st);
                }
                None => {}
            }
        }
        self.v4.insert_many(k4, s4);
        if let Some(v6) = &mut self.v6 {
            v6.insert_many(k6, s6);
        }
    }
}

/// A flow's key and its entry as written from the sync side.
fn entry_of(t: &CtTuple, state: u8, now_ns: u64) -> Option<(Key, FlowState)> {
    let (key, lo_origin) = key_of(t)?;
    let st = FlowState {
        first_ns: now_ns,
        last_ns: now_ns,
        emitted_ns: now_ns,
        packets: 0,
        bytes: 0,
        state,
        flags: if lo_origin {
            flow::FLOW_LO_IS_ORIGIN
        } else {
            0
        },
        _pad: [0; 6],
    };
    Some((key, st))
}

impl FlowTable {
    /// Forgets the flow `t`.
    pub fn remove(&mut self, t: &CtTuple) {
        match key_of(t) {
            Some((Key::V4(k), _)) => {
                let _ = self.v4.map.remove(&k);
            }
            Some((Key::V6(k), _)) => {
                if let Some(v6) = &mut self.v6 {
                    let _ = v6.map.remove(&k);
                }
            }
            None => {}
        }
    }

    /// Forgets the flow `t` if XDP saw no packet of it for `idle` (by
    /// `now_ns`, CLOCK_MONOTONIC like the programs' timestamps): a flow
    /// conntrack does not know may be one whose first packet the kernel has
    /// not confirmed yet. Whether it was forgotten.
    pub fn forget_idle(&mut self, t: &CtTuple, now_ns: u64, idle: std::time::Duration) -> bool {
        let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        fn forget<K: Pod>(t: &mut Table<K>, key: &K, now_ns: u64, idle_ns: u64) -> bool {
            match t.map.get(key, 0) {
                Ok(s) if now_ns.saturating_sub(s.last_ns) >= idle_ns => t.map.remove(key).is_ok(),
                _ => false,
            }
        }
        match (key_of(t), &mut self.v6) {
            (Some((Key::V4(k), _)), _) => forget(&mut self.v4, &k, now_ns, idle_ns),
            (Some((Key::V6(k), _)), Some(v6)) => forget(v6, &k, now_ns, idle_ns),
            _ => false,
        }
    }

    /// Every live flow of both families (closed TCP flows left out), in its
    /// original direction, as XDP saw it.
    pub fn dump(&self) -> Vec<Record> {
        let live = |proto: u8, s: &FlowState| {
            !(proto == flow::PROTO_TCP && s.state == TcpState::Closed as u8)
        };
        let origin = |s: &FlowState| s.flags & flow::FLOW_LO_IS_ORIGIN != 0;
        let v4 = self
            .v4
            .entries()
            .into_iter()
            .filter(|(k, s)| live(k.proto, s))
            .map(|(k, s)| {
                Record::of_flow(RecordKind::Upsert, k.proto, s.state, k.oriented(origin(&s)))
            });
        let v6 = self
            .v6
            .iter()
            .flat_map(Table::entries)
            .filter(|(k, s)| live(k.proto, s))
            .map(|(k, s)| {
                Record::of_flow6(RecordKind::Upsert, k.proto, s.state, k.oriented(origin(&s)))
            });
        v4.chain(v6).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use ha_common::addr_octets;

    use super::*;

    #[test]
    fn a_tuple_and_its_inverse_share_a_key_and_the_origin_is_kept() {
        let t = CtTuple {
            proto: flow::PROTO_TCP,
            src: Ipv4Addr::new(10, 1, 0, 10).into(),
            dst: Ipv4Addr::new(10, 0, 0, 10).into(),
            sport: 80,
            dport: 40000,
        };
        let Some((Key::V4(k), lo)) = key_of(&t) else {
            panic!("an IPv4 key")
        };
        let Some((Key::V4(k2), lo2)) = key_of(&t.inverted()) else {
            panic!("an IPv4 key")
        };
        assert_eq!(k, k2);
        assert!(!lo && lo2);
        let e = k.oriented(lo);
        assert_eq!(
            (
                IpAddr::from(addr_octets(e.src_addr)),
                e.src_port,
                e.dst_port
            ),
            (t.src, 80, 40000)
        );
    }

    #[test]
    fn an_ipv6_tuple_has_an_ipv6_key_and_a_mixed_one_none() {
        let a: IpAddr = "2001:db8::10".parse().unwrap();
        let b: IpAddr = "2001:db8:1::10".parse().unwrap();
        let t = CtTuple {
            proto: flow::PROTO_TCP,
            src: b,
            dst: a,
            sport: 443,
            dport: 40000,
        };
        let Some((Key::V6(k), lo)) = key_of(&t) else {
            panic!("an IPv6 key")
        };
        let Some((Key::V6(k2), lo2)) = key_of(&t.inverted()) else {
            panic!("an IPv6 key")
        };
        assert_eq!(k, k2);
        assert!(!lo && lo2);
        let e = k.oriented(lo);
        assert_eq!((IpAddr::from(e.src_addr), e.src_port), (b, 443));
        let mixed = CtTuple {
            src: Ipv4Addr::new(10, 0, 0, 1).into(),
            ..t
        };
        assert!(key_of(&mixed).is_none());
    }
}
