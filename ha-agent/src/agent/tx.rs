//! The loop's sends (adverts and heartbeat probes): datagrams built on
//! sockets the loop opened, sent at once, failures counted and logged by
//! kind.
//!
//! They are sent on the loop itself, synchronously, although a `sendto`
//! on a veth or a bridge runs, when it re-enables bottom halves, softirq
//! work pending on its CPU. Sending from a thread of their own kept that
//! work off the loop under the soak, but broke two guarantees: the lease
//! is renewed with each advert, and an advert stuck behind a stalled
//! sender lets the peer's master-down timer expire while our lease is
//! still being renewed (two owners); and a probe round counts as sent
//! when the core asks for it, so a stalled sender reads as the peer's
//! silence. Both need the send to happen when the core decides it.
use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ha_core::limit::Every;
use socket2::SockAddr;
use tracing::warn;

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
    /// An IP address (the raw VRRP sockets).
    Ip(SocketAddr),
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

/// The sender: sends at once, counts failures.
#[derive(Debug)]
pub struct Tx {
    shared: Shared,
}

impl Tx {
    pub fn new() -> Tx {
        Tx {
            shared: Shared {
                advert_errors: AtomicU64::new(0),
                probe_errors: AtomicU64::new(0),
                log: Mutex::new((Every::new(), Every::new())),
                start: std::time::Instant::now(),
            },
        }
    }

    /// Sends `d` now (the socket is non-blocking: a full buffer is a
    /// failure, counted).
    pub fn send(&self, d: Datagram) {
        self.shared.send(&d);
    }

    /// Adverts and probes that could not be sent so far.
    pub fn errors(&self) -> (u64, u64) {
        (
            self.shared.advert_errors.load(Ordering::Relaxed),
            self.shared.probe_errors.load(Ordering::Relaxed),
        )
    }
}

impl Default for Tx {
    fn default() -> Self {
        Tx::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams sent in order and received; one the socket refuses counts
    /// as an error of its kind.
    #[test]
    fn sends_and_counts_failures() {
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let to = b.local_addr().unwrap();
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
        let tx = Tx::new();
        tx.send(d(Kind::Advert, b"one", Dest::Ip(to)));
        tx.send(d(Kind::Probe, b"bad", Dest::Link(ll)));
        tx.send(d(Kind::Probe, b"two", Dest::Ip(to)));
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
