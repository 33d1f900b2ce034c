//! The loop's sends (adverts and heartbeat probes), made on a thread of
//! their own.
//!
//! A `sendto` on a veth or a bridge runs, when it re-enables bottom halves,
//! every softirq pending on its CPU: the NET_RX work of all the traffic
//! forwarded through the box, up to several milliseconds per call, and
//! again on the next call. Made from the loop, that put the loop (the only
//! thread still running on time when every CPU is saturated, being
//! SCHED_FIFO) in charge of the whole box's packet processing: a soak
//! measured 14 s of softirq in 15 s of the loop's run time, slices of up to
//! 400 ms, and ownership leases lapsing every few hundred milliseconds.
//!
//! So the loop only builds the datagrams and queues them here; this thread
//! (SCHED_FIFO one below the loop) sends them and takes that softirq work
//! instead, while the loop keeps its deadlines: the lease is renewed before
//! the advert is queued, so a late send only makes the peer's master-down
//! timer start later, never the lease outlast it. The queue is bounded and
//! never waits: a full one drops the datagram, counted as a send error of
//! its kind, like a full socket buffer.

use std::{
    io,
    net::SocketAddrV4,
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use ha_core::limit::Every;
use socket2::SockAddr;
use tracing::warn;

/// Datagrams waiting for the thread (a backup queues three probes a
/// millisecond).
const QUEUE: usize = 4096;

/// What a datagram is (counted and logged apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Advert,
    Probe,
}

/// Where it goes.
#[derive(Debug, Clone, Copy)]
pub enum Dest {
    /// An AF_PACKET address.
    Link(libc::sockaddr_ll),
    /// An IPv4 address (the raw VRRP socket).
    Ip(SocketAddrV4),
}

/// One datagram to send on a socket the loop opened (a duplicate of its
/// descriptor: the same socket).
#[derive(Debug)]
pub struct Datagram {
    pub fd: Arc<OwnedFd>,
    pub iface: Arc<str>,
    pub kind: Kind,
    pub bytes: Vec<u8>,
    pub dest: Dest,
}

impl Datagram {
    /// One `sendto` (the socket is non-blocking: a full buffer is an error).
    pub fn send(&self) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        let rc = match &self.dest {
            Dest::Link(addr) => {
                // SAFETY: valid fd, buffer and address of the right size.
                unsafe {
                    libc::sendto(
                        fd,
                        self.bytes.as_ptr().cast(),
                        self.bytes.len(),
                        0,
                        (&raw const *addr).cast(),
                        size_of::<libc::sockaddr_ll>() as u32,
                    )
                }
            }
            Dest::Ip(addr) => {
                let sa = SockAddr::from(*addr);
                // SAFETY: valid fd, buffer, and socket2's address storage of
                // the length it gives.
                unsafe {
                    libc::sendto(
                        fd,
                        self.bytes.as_ptr().cast(),
                        self.bytes.len(),
                        0,
                        sa.as_ptr().cast(),
                        sa.len(),
                    )
                }
            }
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Send failures by kind, and their log limits.
#[derive(Debug)]
struct Shared {
    advert_errors: AtomicU64,
    probe_errors: AtomicU64,
    log: Mutex<(Every, Every)>,
    start: std::time::Instant,
}

impl Shared {
    fn failed(&self, d: &Datagram, e: &io::Error) {
        let (counter, what) = match d.kind {
            Kind::Advert => (&self.advert_errors, "sending advert failed"),
            Kind::Probe => (&self.probe_errors, "sending a heartbeat probe failed"),
        };
        let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
        let now: Duration = self.start.elapsed();
        let Ok(mut log) = self.log.try_lock() else {
            return;
        };
        let limit = match d.kind {
            Kind::Advert => &mut log.0,
            Kind::Probe => &mut log.1,
        };
        if limit.allow(now) {
            warn!(cause = %e, iface = %d.iface, total, "{what}");
        }
    }

    fn send(&self, d: &Datagram) {
        if let Err(e) = d.send() {
            self.failed(d, &e);
        }
    }
}

/// The sender: inline until [`Tx::start`] (nothing is sent before the node
/// starts but in tests), then on its thread until [`Tx::finish`].
#[derive(Debug)]
pub struct Tx {
    shared: Arc<Shared>,
    queue: Option<mpsc::SyncSender<Datagram>>,
    thread: Option<JoinHandle<()>>,
}

impl Tx {
    pub fn new() -> Tx {
        Tx {
            shared: Arc::new(Shared {
                advert_errors: AtomicU64::new(0),
                probe_errors: AtomicU64::new(0),
                log: Mutex::new((Every::new(), Every::new())),
                start: std::time::Instant::now(),
            }),
            queue: None,
            thread: None,
        }
    }

    /// Starts the thread, SCHED_FIFO one below the calling thread when that
    /// one is realtime (call it after the process turned realtime).
    pub fn start(&mut self) -> io::Result<()> {
        if self.queue.is_some() {
            return Ok(());
        }
        let (queue, rx) = mpsc::sync_channel::<Datagram>(QUEUE);
        let shared = self.shared.clone();
        let thread =
            crate::sched::spawn_blocking("tx", crate::sched::Class::BelowLoop, move || {
                for d in rx {
                    shared.send(&d);
                }
            })?;
        self.queue = Some(queue);
        self.thread = Some(thread);
        Ok(())
    }

    /// Queues `d` (never waits: a full queue drops it, counted as a failed
    /// send), or sends it now when the thread is not running.
    pub fn send(&self, d: Datagram) {
        let Some(queue) = &self.queue else {
            self.shared.send(&d);
            return;
        };
        match queue.try_send(d) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(d)) => self.shared.failed(
                &d,
                &io::Error::new(io::ErrorKind::WouldBlock, "the send queue is full"),
            ),
            Err(mpsc::TrySendError::Disconnected(d)) => self.shared.send(&d),
        }
    }

    /// Adverts and probes that could not be sent so far.
    pub fn errors(&self) -> (u64, u64) {
        (
            self.shared.advert_errors.load(Ordering::Relaxed),
            self.shared.probe_errors.load(Ordering::Relaxed),
        )
    }

    /// Sends what is queued and ends the thread; later sends are inline.
    pub fn finish(&mut self) {
        self.queue = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Default for Tx {
    fn default() -> Self {
        Tx::new()
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams queued, sent by the thread in order, received; one the
    /// socket refuses counts as an error of its kind; inline after finish.
    #[test]
    fn sends_on_its_thread_and_counts_failures() {
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let std::net::SocketAddr::V4(to) = b.local_addr().unwrap() else {
            panic!("IPv4 bound");
        };
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = Arc::new(OwnedFd::from(a));
        let d = |kind, bytes: &[u8], dest| Datagram {
            fd: fd.clone(),
            iface: "lo".into(),
            kind,
            bytes: bytes.to_vec(),
            dest,
        };
        // SAFETY: zeroed sockaddr_ll is valid (a UDP socket refuses it).
        let ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut tx = Tx::new();
        tx.start().unwrap();
        tx.send(d(Kind::Advert, b"one", Dest::Ip(to)));
        tx.send(d(Kind::Probe, b"bad", Dest::Link(ll)));
        tx.send(d(Kind::Probe, b"two", Dest::Ip(to)));
        tx.finish();
        let mut buf = [0u8; 16];
        for want in [&b"one"[..], b"two"] {
            let n = b.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], want);
        }
        assert_eq!(tx.errors(), (0, 1));
        tx.send(d(Kind::Advert, b"three", Dest::Ip(to)));
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"three");
        tx.send(d(Kind::Advert, b"bad", Dest::Link(ll)));
        assert_eq!(tx.errors(), (1, 1));
    }
}
