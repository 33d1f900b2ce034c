//! This node's XDP flow table (`HA_FLOWS`) from the sync side: a dump for a
//! bulk resync, and entries written for the flows the peer replicated (so
//! the new master's XDP tracks them from their first packet). Keys are
//! normalised by [`FlowKey::normalised`], shared with the XDP programs.

use aya::maps::{HashMap as BpfHashMap, MapData};
use ha_common::{
    addr_from_octets,
    flow::{self, Endpoints, FlowKey, FlowState, TcpState},
};

use super::{
    conntrack::CtTuple,
    record::{Record, RecordKind},
};
use crate::dataplane::{open_map, pin_dir};

/// A tuple's key in the flow table, and whether its source is `lo`.
fn key_of(t: &CtTuple) -> (FlowKey, bool) {
    FlowKey::normalised(
        t.proto,
        Endpoints {
            src_addr: addr_from_octets(t.src.octets()),
            dst_addr: addr_from_octets(t.dst.octets()),
            src_port: t.sport,
            dst_port: t.dport,
        },
    )
}

/// The pinned flow table of an instance.
pub struct FlowTable {
    map: BpfHashMap<MapData, FlowKey, FlowState>,
    /// The same map, for the batched dump (aya has no batch operations).
    raw: Option<MapData>,
}

impl FlowTable {
    /// Opens the pinned table; `None` when the data plane has none.
    pub fn open(instance: &str) -> Option<FlowTable> {
        let dir = pin_dir(instance);
        let raw = MapData::from_pin(dir.join("maps").join(flow::FLOWS_MAP)).ok();
        open_map(&dir, flow::FLOWS_MAP)
            .ok()
            .map(|map| FlowTable { map, raw })
    }

    /// Every entry, read `BATCH` at a time with `BPF_MAP_LOOKUP_BATCH` (one
    /// system call per batch instead of two per entry: a million entries in
    /// a fraction of a second); `None` if the kernel refuses it.
    fn entries_batched(&self) -> Option<Vec<(FlowKey, FlowState)>> {
        const BATCH: usize = 8192;
        let fd = raw_fd(self.raw.as_ref()?);
        let mut out: Vec<(FlowKey, FlowState)> = Vec::new();
        let mut keys = vec![FlowKey::default(); BATCH];
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

    /// Tracks the flow `t` (original direction) in `state`, seen at `now_ns`.
    pub fn insert(&mut self, t: &CtTuple, state: u8, now_ns: u64) {
        let (key, st) = entry_of(t, state, now_ns);
        let _ = self.map.insert(key, st, 0);
    }

    /// Tracks the flows `flows` (tuple in the original direction, state),
    /// seen at `now_ns`, with `BPF_MAP_UPDATE_BATCH`: one system call for
    /// all (a bulk resync writes a million); one by one if the kernel
    /// refuses the batch.
    pub fn insert_many(&mut self, flows: &[(CtTuple, u8)], now_ns: u64) {
        if flows.is_empty() {
            return;
        }
        let (keys, values): (Vec<FlowKey>, Vec<FlowState>) = flows
            .iter()
            .map(|(t, state)| entry_of(t, *state, now_ns))
            .unzip();
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

/// A flow's key and its entry as written from the sync side.
fn entry_of(t: &CtTuple, state: u8, now_ns: u64) -> (FlowKey, FlowState) {
    let (key, lo_origin) = key_of(t);
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
    (key, st)
}

impl FlowTable {
    /// Forgets the flow `t`.
    pub fn remove(&mut self, t: &CtTuple) {
        let _ = self.map.remove(&key_of(t).0);
    }

    /// Forgets the flow `t` if XDP saw no packet of it for `idle` (by
    /// `now_ns`, CLOCK_MONOTONIC like the programs' timestamps): a flow
    /// conntrack does not know may be one whose first packet the kernel has
    /// not confirmed yet. Whether it was forgotten.
    pub fn forget_idle(&mut self, t: &CtTuple, now_ns: u64, idle: std::time::Duration) -> bool {
        let key = key_of(t).0;
        let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        match self.map.get(&key, 0) {
            Ok(s) if now_ns.saturating_sub(s.last_ns) >= idle_ns => self.map.remove(&key).is_ok(),
            _ => false,
        }
    }

    /// Every live flow (closed TCP flows left out), in its original
    /// direction, as XDP saw it.
    pub fn dump(&self) -> Vec<Record> {
        let entries = self
            .entries_batched()
            .unwrap_or_else(|| self.map.iter().filter_map(Result::ok).collect());
        entries
            .into_iter()
            .filter(|(k, s)| !(k.proto == flow::PROTO_TCP && s.state == TcpState::Closed as u8))
            .map(|(k, s)| {
                let e = k.oriented(s.flags & flow::FLOW_LO_IS_ORIGIN != 0);
                Record::of_flow(RecordKind::Upsert, k.proto, s.state, e)
            })
            .collect()
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
            src: Ipv4Addr::new(10, 1, 0, 10),
            dst: Ipv4Addr::new(10, 0, 0, 10),
            sport: 80,
            dport: 40000,
        };
        let (k, lo) = key_of(&t);
        let (k2, lo2) = key_of(&t.inverted());
        assert_eq!(k, k2);
        assert!(!lo && lo2);
        let e = k.oriented(lo);
        assert_eq!(
            (
                Ipv4Addr::from(addr_octets(e.src_addr)),
                e.src_port,
                e.dst_port
            ),
            (t.src, 80, 40000)
        );
    }
}
