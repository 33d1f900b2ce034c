//! The stream of flow events from the XDP ring buffer: [`FlowEvent`]s
//! (IPv4, 48 bytes) and [`FlowEvent6`]s (IPv6, 72 bytes) on one ring, told
//! apart by the record's length and checked by their `family` byte, read as
//! [`Event`]s of either family.
//!
//! `ha_data` wakes us for an event only if we had read everything before it
//! (idle: the event is read at once) or once enough bytes wait; in a burst
//! it does not, and we read in batches. We wait on the ring buffer's fd with
//! `AsyncFd` and also drain on a short timer, so what a burst left behind
//! its last wakeup is never stuck.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use ha_common::{
    addr_octets,
    flow::{self, FAMILY_V4, FAMILY_V6, FlowEvent, FlowEvent6},
};
use tokio::io::unix::AsyncFd;

use super::{DataplaneError, open_map, pin_dir};

/// A flow event of either family as the agent reads it (the fields of
/// [`FlowEvent`], addresses as [`IpAddr`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Monotonic ns when emitted.
    pub ts_ns: u64,
    /// Packets seen so far.
    pub packets: u64,
    /// Bytes seen so far.
    pub bytes: u64,
    /// The originator.
    pub src: IpAddr,
    /// The responder.
    pub dst: IpAddr,
    /// Originator's port (ICMP: echo id), host order.
    pub src_port: u16,
    /// Responder's port (ICMP: echo id), host order.
    pub dst_port: u16,
    /// IP protocol.
    pub proto: u8,
    /// `TcpState` as a byte.
    pub state: u8,
    /// `FlowEventKind` as a byte.
    pub kind: u8,
    /// Ingress interface index of the packet that triggered the event.
    pub ifindex: u32,
}

impl From<FlowEvent> for Event {
    fn from(e: FlowEvent) -> Self {
        Event {
            ts_ns: e.ts_ns,
            packets: e.packets,
            bytes: e.bytes,
            src: Ipv4Addr::from(addr_octets(e.src_addr)).into(),
            dst: Ipv4Addr::from(addr_octets(e.dst_addr)).into(),
            src_port: e.src_port,
            dst_port: e.dst_port,
            proto: e.proto,
            state: e.state,
            kind: e.kind,
            ifindex: e.ifindex,
        }
    }
}

impl From<FlowEvent6> for Event {
    fn from(e: FlowEvent6) -> Self {
        Event {
            ts_ns: e.ts_ns,
            packets: e.packets,
            bytes: e.bytes,
            src: Ipv6Addr::from(e.src_addr).into(),
            dst: Ipv6Addr::from(e.dst_addr).into(),
            src_port: e.src_port,
            dst_port: e.dst_port,
            proto: e.proto,
            state: e.state,
            kind: e.kind,
            ifindex: e.ifindex,
        }
    }
}

/// A ring buffer record as an event: exactly a [`FlowEvent`] with family
/// [`FAMILY_V4`] or a [`FlowEvent6`] with [`FAMILY_V6`]; `None` for
/// anything else (a build mismatch: never expected, counted by the reader).
pub fn decode(record: &[u8]) -> Option<Event> {
    if record.len() == size_of::<FlowEvent>() {
        // SAFETY: the record holds exactly a FlowEvent (checked above), a
        // Pod whose every bit pattern is valid; read_unaligned copies it
        // out whatever the alignment.
        let e = unsafe { record.as_ptr().cast::<FlowEvent>().read_unaligned() };
        return (e.family == FAMILY_V4).then(|| e.into());
    }
    if record.len() == size_of::<FlowEvent6>() {
        // SAFETY: as above, for a FlowEvent6.
        let e = unsafe { record.as_ptr().cast::<FlowEvent6>().read_unaligned() };
        return (e.family == FAMILY_V6).then(|| e.into());
    }
    None
}

/// Reader of the flow-event ring buffer. Only one may read a ring buffer at a
/// time: the agent's sync task owns it.
pub struct FlowEvents {
    /// The ring buffer, registered with the tokio reactor.
    ring: AsyncFd<RingBuf<MapData>>,
    /// Longest a submitted event waits when no wakeup came.
    drain_every: Duration,
    /// Records that are no event of either family (never expected; counted,
    /// not parsed).
    malformed: u64,
}

impl std::fmt::Debug for FlowEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowEvents")
            .field("drain_every", &self.drain_every)
            .finish_non_exhaustive()
    }
}

impl FlowEvents {
    /// Opens the ring buffer pinned for `instance`.
    pub fn open(instance: &str, drain_every: Duration) -> Result<Self, DataplaneError> {
        Self::open_dir(&pin_dir(instance), drain_every)
    }

    fn open_dir(dir: &Path, drain_every: Duration) -> Result<Self, DataplaneError> {
        let ring: RingBuf<MapData> = open_map(dir, flow::EVENTS_MAP)?;
        // SAFETY: the RingBuf owns its map fd, keeps it open and returns the same
        // fd from `as_raw_fd` until it is dropped together with the AsyncFd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| DataplaneError::Pin {
                what: "register ring buffer with the reactor",
                path: dir.join("maps").join(flow::EVENTS_MAP),
                source: e.into(),
            })?;
        Ok(FlowEvents {
            ring,
            drain_every,
            malformed: 0,
        })
    }

    /// Moves every waiting event into `out` without blocking; returns how many.
    pub fn drain(&mut self, out: &mut Vec<Event>) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            match decode(&item) {
                Some(e) => {
                    out.push(e);
                    n += 1;
                }
                None => self.malformed += 1,
            }
        }
        n
    }

    /// Waits for events (a wakeup from XDP or the drain timer) and moves them
    /// into `out`; returns how many (at least one).
    pub async fn recv(&mut self, out: &mut Vec<Event>) -> std::io::Result<usize> {
        loop {
            let n = self.drain(out);
            if n > 0 {
                return Ok(n);
            }
            tokio::select! {
                guard = self.ring.readable_mut() => guard?.clear_ready(),
                () = tokio::time::sleep(self.drain_every) => {}
            }
        }
    }

    /// Records that were no event (a build mismatch if ever non-zero).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

impl FlowEvents {
    /// The events as a stream (one item per event, batches drained in order);
    /// ends on a reactor error.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Event> {
        let state = (self, std::collections::VecDeque::<Event>::new(), Vec::new());
        futures_util::stream::unfold(state, |(mut events, mut queue, mut buf)| async move {
            if queue.is_empty() {
                buf.clear();
                events.recv(&mut buf).await.ok()?;
                queue.extend(buf.drain(..));
            }
            let next = queue.pop_front()?;
            Some((next, (events, queue, buf)))
        })
    }
}

#[cfg(test)]
mod tests {
    use ha_common::flow::FlowEventKind;

    use super::*;

    fn bytes<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a Pod without implicit padding.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn records_of_either_family_decode_and_nothing_else_does() {
        let e4 = FlowEvent {
            ts_ns: 1,
            packets: 2,
            bytes: 3,
            src_addr: ha_common::addr_from_octets([10, 0, 0, 10]),
            dst_addr: ha_common::addr_from_octets([10, 1, 0, 10]),
            src_port: 40000,
            dst_port: 80,
            proto: 6,
            state: 1,
            kind: FlowEventKind::New as u8,
            family: FAMILY_V4,
            ifindex: 7,
        };
        let got = decode(&bytes(&e4)).unwrap();
        assert_eq!(got.src, IpAddr::from([10, 0, 0, 10]));
        assert_eq!((got.src_port, got.dst_port, got.ifindex), (40000, 80, 7));
        let src: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let e6 = FlowEvent6 {
            ts_ns: 1,
            src_addr: src.octets(),
            dst_addr: "2001:db8:1::10".parse::<Ipv6Addr>().unwrap().octets(),
            src_port: 40000,
            dst_port: 443,
            proto: 6,
            family: FAMILY_V6,
            ..FlowEvent6::default()
        };
        let got = decode(&bytes(&e6)).unwrap();
        assert_eq!((got.src, got.dst_port), (IpAddr::V6(src), 443));
        // A wrong family byte, a wrong length: not events.
        let mut bad = bytes(&e6);
        bad[63] = FAMILY_V4;
        assert_eq!(decode(&bad), None);
        let mut bad = bytes(&e4);
        bad[39] = 0;
        assert_eq!(decode(&bad), None, "the padding of old objects");
        for len in [0, 47, 49, 71, 73] {
            assert_eq!(decode(&vec![0; len]), None, "{len} bytes");
        }
    }
}
