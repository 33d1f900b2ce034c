//! The stream of [`FlowEvent`]s from the XDP ring buffer.
//!
//! `ha_data` wakes us for an event only if we had read everything before it
//! (idle: the event is read at once) or once enough bytes wait; in a burst
//! it does not, and we read in batches. We wait on the ring buffer's fd with
//! `AsyncFd` and also drain on a short timer, so what a burst left behind
//! its last wakeup is never stuck.

use std::{path::Path, time::Duration};

use aya::maps::{MapData, RingBuf};
use ha_common::flow::{self, FlowEvent};
use tokio::io::unix::AsyncFd;

use super::{DataplaneError, open_map, pin_dir};

/// Reader of the flow-event ring buffer. Only one may read a ring buffer at a
/// time: the agent's sync task owns it.
pub struct FlowEvents {
    /// The ring buffer, registered with the tokio reactor.
    ring: AsyncFd<RingBuf<MapData>>,
    /// Longest a submitted event waits when no wakeup came.
    drain_every: Duration,
    /// Records shorter than a `FlowEvent` (never expected; counted, not parsed).
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
    pub fn drain(&mut self, out: &mut Vec<FlowEvent>) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            if item.len() < size_of::<FlowEvent>() {
                self.malformed += 1;
                continue;
            }
            // SAFETY: the record holds at least a FlowEvent (checked above);
            // read_unaligned copies it out whatever the alignment.
            out.push(unsafe { item.as_ptr().cast::<FlowEvent>().read_unaligned() });
            n += 1;
        }
        n
    }

    /// Waits for events (a wakeup from XDP or the drain timer) and moves them
    /// into `out`; returns how many (at least one).
    pub async fn recv(&mut self, out: &mut Vec<FlowEvent>) -> std::io::Result<usize> {
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

    /// Records too short to be an event (a build mismatch if ever non-zero).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }
}

impl FlowEvents {
    /// The events as a stream (one item per event, batches drained in order);
    /// ends on a reactor error.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = FlowEvent> {
        let state = (
            self,
            std::collections::VecDeque::<FlowEvent>::new(),
            Vec::new(),
        );
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
