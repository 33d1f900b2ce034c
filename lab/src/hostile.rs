//! Hostile traffic for labs, as an attacker on a segment would send it:
//! capture of genuine datagrams from a switch port, forged, truncated and
//! replayed datagrams from a spoofed source, a bounded flood, and many idle
//! or slow TCP connections (slowloris).
//!
//! Run inside a namespace with [`crate::Lab::run_in`]. Everything here is
//! bounded in count and in time, and only talks to the addresses it is
//! given: the lab's own namespaces.

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

/// A UDP datagram seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: Vec<u8>,
}

/// A small xorshift generator: garbage for forged frames need not be
/// cryptographically random, and a seed makes a run reproducible.
#[derive(Debug, Clone)]
pub struct Garbage(u64);

impl Garbage {
    pub fn new(seed: u64) -> Self {
        Garbage(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Captures IPv4 UDP datagrams to `dport` from `src` seen on `iface` (of
/// the calling thread's namespace; a bridge port sees what the switch
/// forwards to or from it, like a mirror port), until `max` were seen or
/// `limit` passed.
pub fn capture_udp(
    iface: &str,
    src: Ipv4Addr,
    dport: u16,
    max: usize,
    limit: Duration,
) -> io::Result<Vec<Captured>> {
    capture_ipv4(iface, max, limit, |ip| {
        parse_udp(ip).filter(|c| *c.src.ip() == src && c.dst.port() == dport)
    })
}

/// What `keep` makes of each IPv4 packet (from its header on) seen on
/// `iface`, until it kept `max` or `limit` passed.
fn capture_ipv4<T>(
    iface: &str,
    max: usize,
    limit: Duration,
    mut keep: impl FnMut(&[u8]) -> Option<T>,
) -> io::Result<Vec<T>> {
    let fd = packet_socket(iface, true)?.0;
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while out.len() < max && started.elapsed() < limit {
        // SAFETY: valid fd and buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let frame = &buf[..n as usize];
        // Ethernet: IPv4 only (no VLAN tag on the lab's links).
        if frame.len() < 14 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        out.extend(keep(&frame[14..]));
    }
    Ok(out)
}

/// An `AF_PACKET` raw socket of all protocols bound to `iface` (of the
/// calling thread's namespace), non-blocking if asked; with the ifindex.
fn packet_socket(iface: &str, nonblocking: bool) -> io::Result<(OwnedFd, i32)> {
    let name = std::ffi::CString::new(iface).map_err(io::Error::other)?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // ETH_P_ALL: a bridge port hands its frames to the bridge before
    // protocol-specific taps run, so only an all-protocol tap sees them
    // (as tcpdump does).
    let proto = (libc::ETH_P_ALL as u16).to_be();
    let flags = if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain socket(2); owned right after.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | flags, i32::from(proto)) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh valid fd.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex;
    // SAFETY: valid fd and address.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok((fd, ifindex))
}

/// Captures the IPv4 packets of protocol `proto` from any of `srcs` seen on
/// `iface` (a bridge port, like a mirror port: see [`capture_udp`]), whole
/// from the IPv4 header on, until `max` were seen or `limit` passed.
pub fn capture_ip(
    iface: &str,
    proto: u8,
    srcs: &[Ipv4Addr],
    max: usize,
    limit: Duration,
) -> io::Result<Vec<Vec<u8>>> {
    capture_ipv4(iface, max, limit, |p| {
        if p.len() < 20 {
            return None;
        }
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        (p[0] >> 4 == 4 && p[9] == proto && srcs.contains(&src)).then(|| {
            let total = usize::from(u16::from_be_bytes([p[2], p[3]])).min(p.len());
            p[..total].to_vec()
        })
    })
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet (no options, TTL 255, DSCP CS6, header checksum filled
/// in: no kernel does it for a packet socket) carrying `payload` of
/// protocol `proto`.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0xc0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0, 0, 255, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = inet_checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An Ethernet frame (IPv4) around `ip`.
pub fn ether_frame(dst: [u8; 6], src: [u8; 6], ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(ip);
    f
}

/// A MAC address from its `aa:bb:..` text.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A packet socket sending whole Ethernet frames out of one interface: an
/// attacker's host on a segment, which chooses every header byte.
#[derive(Debug)]
pub struct FrameSender {
    fd: OwnedFd,
    /// The interface's own MAC (the source of the frames an attacker sends
    /// without also spoofing the switch's tables).
    pub mac: [u8; 6],
}

impl FrameSender {
    /// Opens the sender on `iface` of the calling thread's namespace (the
    /// socket stays usable from any thread).
    pub fn open(iface: &str) -> io::Result<Self> {
        let (fd, _) = packet_socket(iface, false)?;
        let mac = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
        let mac = parse_mac(&mac).ok_or_else(|| io::Error::other("bad MAC address"))?;
        let _ = socket2::SockRef::from(&fd).set_send_buffer_size(4 << 20);
        Ok(FrameSender { fd, mac })
    }

    /// Sends `count` frames cycling through `frames`, back to back (as fast
    /// as the socket takes them), for at most `limit`.
    pub fn burst(&self, frames: &[Vec<u8>], count: u64, limit: Duration) -> Sent {
        let started = Instant::now();
        let mut s = Sent::default();
        if frames.is_empty() {
            return s;
        }
        let mut i = 0usize;
        while s.datagrams + s.refused < count && started.elapsed() < limit {
            let f = &frames[i % frames.len()];
            i += 1;
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::send(self.fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            if n > 0 {
                s.datagrams += 1;
            } else {
                s.refused += 1;
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        s.seconds = started.elapsed().as_secs_f64();
        s
    }
}

/// An IPv4 UDP packet's addresses and payload (`None` for anything else).
pub fn parse_udp(p: &[u8]) -> Option<Captured> {
    if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 17 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]])).min(p.len());
    let udp = p.get(ihl..total)?;
    if udp.len() < 8 {
        return None;
    }
    let ip = |o: usize| Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
    let port = |o: usize| u16::from_be_bytes([udp[o], udp[o + 1]]);
    let ulen = usize::from(port(4)).clamp(8, udp.len());
    Some(Captured {
        src: SocketAddrV4::new(ip(12), port(0)),
        dst: SocketAddrV4::new(ip(16), port(2)),
        payload: udp[8..ulen].to_vec(),
    })
}

/// A UDP socket that sends from `from` although the calling thread's
/// namespace does not own that address (IP_FREEBIND, IP_TRANSPARENT): a
/// spoofed peer. The
/// caller pins the neighbours it sends to ([`pin_neighbour`]), so the
/// kernel never sends an ARP request carrying the spoofed address (which
/// would poison the real peer's neighbour entry on the target).
pub fn spoofed_socket(from: SocketAddrV4) -> io::Result<UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // FREEBIND binds the foreign address; TRANSPARENT lets the route
    // lookup use it as a source (root only: this is an attacker's tool).
    s.set_freebind(true)?;
    s.set_ip_transparent(true)?;
    s.set_reuse_address(true)?;
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&SocketAddr::V4(from).into())?;
    Ok(s.into())
}

/// What [`send_all`] and [`flood`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sent {
    pub datagrams: u64,
    /// Sends the kernel refused (a full queue: ENOBUFS, EAGAIN).
    pub refused: u64,
    pub seconds: f64,
}

/// Sends each datagram once to `to`, `gap` apart.
pub fn send_all(sock: &UdpSocket, to: SocketAddrV4, datagrams: &[Vec<u8>], gap: Duration) -> Sent {
    let started = Instant::now();
    let mut s = Sent::default();
    for d in datagrams {
        match sock.send_to(d, to) {
            Ok(_) => s.datagrams += 1,
            Err(_) => s.refused += 1,
        }
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    s.seconds = started.elapsed().as_secs_f64();
    s
}

/// Sends `count` datagrams to `to`, cycling through `datagrams`, paced to
/// `count` over `over` and never longer than `limit`. Batches of up to 64
/// per `sendmmsg` (one syscall per datagram would cap the rate well below
/// what a host on the segment can send).
pub fn flood(
    sock: &UdpSocket,
    to: SocketAddrV4,
    datagrams: &[Vec<u8>],
    count: u64,
    over: Duration,
    limit: Duration,
) -> Sent {
    const BATCH: usize = 64;
    let started = Instant::now();
    let mut s = Sent::default();
    if datagrams.is_empty() {
        return s;
    }
    let per_ns = count as f64 / over.as_nanos().max(1) as f64;
    // SAFETY: zeroed sockaddr_in is valid; fields set below.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as u16;
    addr.sin_port = to.port().to_be();
    addr.sin_addr.s_addr = u32::from(*to.ip()).to_be();
    let mut i = 0usize;
    while s.datagrams + s.refused < count && started.elapsed() < limit {
        // Never ahead of the schedule; sleeps when ahead (the attacker
        // shares the lab's CPUs with its victims: spinning would starve
        // them, an attack of another kind).
        let due = ((started.elapsed().as_nanos() as f64 * per_ns) as u64).min(count);
        let done = s.datagrams + s.refused;
        if done >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let n = ((due - done) as usize).min(BATCH);
        let mut iov: Vec<libc::iovec> = (0..n)
            .map(|k| {
                let d = &datagrams[(i + k) % datagrams.len()];
                libc::iovec {
                    iov_base: d.as_ptr() as *mut libc::c_void,
                    iov_len: d.len(),
                }
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: zeroed mmsghdr is valid; fields set below.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_name = (&raw mut addr).cast();
                m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        // SAFETY: valid fd; every header points at live buffers above.
        let sent = unsafe {
            libc::sendmmsg(
                std::os::fd::AsRawFd::as_raw_fd(sock),
                msgs.as_mut_ptr(),
                n as u32,
                0,
            )
        };
        if sent > 0 {
            s.datagrams += sent as u64;
            i += sent as usize;
        } else {
            // The first of the batch was refused (a full queue): count it
            // and move on.
            s.refused += 1;
            i += 1;
        }
    }
    s.seconds = started.elapsed().as_secs_f64();
    s
}

/// How a slowloris connection behaves once open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loris {
    /// Connects and sends nothing.
    Idle,
    /// Announces a 64 KiB message, then trickles one byte every `trickle`.
    Slow,
}

/// Many TCP connections held open: what [`Slowloris::open`] got.
#[derive(Debug, Default)]
pub struct Slowloris {
    conns: Vec<(socket2::Socket, Loris)>,
    /// Connections whose handshake completed (the peer's kernel accepted
    /// them; its application may not have).
    pub established: usize,
    /// Connections still in progress or refused when opening stopped.
    pub pending: usize,
}

impl Slowloris {
    /// Opens `n` connections to `to` (half idle, half slow), without
    /// blocking; waits at most `limit` for their handshakes.
    pub fn open(to: SocketAddr, n: usize, limit: Duration) -> io::Result<Self> {
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.set_nonblocking(true)?;
            match s.connect(&to.into()) {
                Ok(()) => {}
                Err(e)
                    if e.raw_os_error() == Some(libc::EINPROGRESS)
                        || e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => continue,
            }
            conns.push((s, if i % 2 == 0 { Loris::Idle } else { Loris::Slow }));
        }
        let mut l = Slowloris {
            conns,
            ..Slowloris::default()
        };
        let started = Instant::now();
        loop {
            l.established = l
                .conns
                .iter()
                .filter(|(s, _)| s.peer_addr().is_ok())
                .count();
            if l.established == l.conns.len() || started.elapsed() >= limit {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        l.pending = n - l.established;
        // The slow ones announce a large message (a 4-byte length prefix
        // and a JSON-ish opening byte), then trickle.
        for (s, kind) in &l.conns {
            if *kind == Loris::Slow {
                let _ = s.send(&[0, 1, 0, 0]);
            }
        }
        Ok(l)
    }

    /// One trickle step: a byte on every slow connection still open.
    pub fn trickle(&self) {
        for (s, kind) in &self.conns {
            if *kind == Loris::Slow {
                let _ = s.send(b"{");
            }
        }
    }

    /// Connections the peer closed or reset so far (it timed them out).
    pub fn closed_by_peer(&self) -> usize {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
        self.conns
            .iter()
            .filter(|(s, _)| match s.recv(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
            })
            .count()
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}

/// The soft and hard limits on open files of process `pid`.
pub fn nofile(pid: u32) -> io::Result<(u64, u64)> {
    // SAFETY: zeroed rlimit is valid; prlimit only reads (new is null).
    let mut old: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall with valid pointers.
    if unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((old.rlim_cur, old.rlim_max))
}

/// Sets the soft limit on open files of process `pid` (the hard limit
/// stays), as a service manager would have at its start.
pub fn set_nofile(pid: u32, soft: u64) -> io::Result<()> {
    let (_, hard) = nofile(pid)?;
    let new = libc::rlimit {
        rlim_cur: soft.min(hard),
        rlim_max: hard,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the calling process's soft limit on open files to its hard limit
/// (a lab holding thousands of client sockets).
pub fn raise_own_nofile() -> io::Result<u64> {
    let (_, hard) = nofile(0)?;
    set_nofile(0, hard)?;
    Ok(hard)
}

/// CPU time (user + system) process `pid` has used, in clock ticks turned
/// into seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: plain sysconf.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / hz.max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_is_parsed_and_other_packets_are_not() {
        let mut p = vec![
            0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 10, 255, 0, 1, 10, 255, 0, 2,
        ];
        p.extend_from_slice(&[0x1e, 0x6c, 0x1e, 0x6c, 0, 12, 0, 0, 1, 2, 3, 4]);
        let c = parse_udp(&p).unwrap();
        assert_eq!(c.src, "10.255.0.1:7788".parse().unwrap());
        assert_eq!(c.dst, "10.255.0.2:7788".parse().unwrap());
        assert_eq!(c.payload, [1, 2, 3, 4]);
        p[9] = 6;
        assert!(parse_udp(&p).is_none());
        assert!(parse_udp(&p[..10]).is_none());
    }

    #[test]
    fn garbage_has_the_length_asked() {
        let mut g = Garbage::new(7);
        assert_eq!(g.bytes(13).len(), 13);
        assert_ne!(g.bytes(8), g.bytes(8));
    }
}
