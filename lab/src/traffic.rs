//! Traffic for labs: many long-lived TCP connections that can be checked for
//! survival, an echo server for them, and RST counting with nftables.
//!
//! Run inside a namespace with [`crate::Lab::run_in`]; everything here is
//! bounded in time and only talks to the addresses it is given.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::{Lab, Result, fail};

/// Bytes per probe message: connection index and round, both u32.
const MSG: usize = 8;

/// What an echo server saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EchoStats {
    pub accepted: usize,
    /// Connections that ended with a reset.
    pub resets: usize,
    pub bytes: u64,
}

/// A listening socket with a backlog for a thousand connections arriving at
/// once (std's is 128: an overflowing accept queue drops handshakes).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Echoes every byte on every connection accepted on `listener` until `stop`
/// (or `limit` passes). Non-blocking, one thread for all connections.
pub fn echo_server(
    listener: TcpListener,
    stop: &AtomicBool,
    limit: Duration,
) -> io::Result<EchoStats> {
    listener.set_nonblocking(true)?;
    let started = Instant::now();
    let mut conns: Vec<TcpStream> = Vec::new();
    let mut stats = EchoStats::default();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
        let mut busy = false;
        loop {
            match listener.accept() {
                Ok((c, _)) => {
                    c.set_nonblocking(true)?;
                    let _ = c.set_nodelay(true);
                    conns.push(c);
                    stats.accepted += 1;
                    busy = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        conns.retain_mut(|c| match c.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                busy = true;
                stats.bytes += n as u64;
                // Small messages: the send buffer has room; a short write
                // would show as a missing echo, which is what we measure.
                let _ = c.write_all(&buf[..n]);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Err(e) => {
                if e.kind() == io::ErrorKind::ConnectionReset {
                    stats.resets += 1;
                }
                false
            }
        });
        if !busy {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(stats)
}

/// Many TCP connections to one server, probed in rounds.
#[derive(Debug, Default)]
pub struct Fleet {
    /// `None` once a connection failed.
    conns: Vec<Option<TcpStream>>,
    /// Connections that failed with a reset.
    pub resets: usize,
    /// Connections that failed otherwise.
    pub failed: usize,
    /// Local ports of the connections that did not answer the last round.
    pub silent: Vec<u16>,
}

impl Fleet {
    /// Opens `n` more connections to `to` (each retried for up to `timeout`).
    pub fn open(&mut self, to: SocketAddr, n: usize, timeout: Duration) -> io::Result<()> {
        for _ in 0..n {
            let started = Instant::now();
            let c = loop {
                match TcpStream::connect_timeout(&to, Duration::from_millis(500)) {
                    Ok(c) => break c,
                    Err(e) if started.elapsed() >= timeout => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            c.set_nonblocking(true)?;
            let _ = c.set_nodelay(true);
            self.conns.push(Some(c));
        }
        Ok(())
    }

    /// Opens `n` more connections to `to` all at once (non-blocking
    /// connects, then waits until every handshake completed, for at most
    /// `timeout`): a batch that is young all together. Returns when the
    /// last one is established; fails if any did not complete.
    pub fn open_at_once(&mut self, to: SocketAddr, n: usize, timeout: Duration) -> io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let started = Instant::now();
        let mut socks = Vec::with_capacity(n);
        for _ in 0..n {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(to),
                socket2::Type::STREAM,
                None,
            )?;
            s.set_nonblocking(true)?;
            match s.connect(&to.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            socks.push(s);
        }
        let mut pending: Vec<usize> = (0..n).collect();
        while !pending.is_empty() {
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} of {n} connections not established", pending.len()),
                ));
            }
            let mut fds: Vec<libc::pollfd> = pending
                .iter()
                .map(|&i| libc::pollfd {
                    fd: socks[i].as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                })
                .collect();
            let ms = left.as_millis().min(100) as i32;
            // SAFETY: `fds` is a valid array of pollfd of that length.
            if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) } < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut still = Vec::new();
            for (fd, &i) in fds.iter().zip(&pending) {
                if fd.revents == 0 {
                    still.push(i);
                } else if let Some(e) = socks[i].take_error()? {
                    return Err(e);
                }
            }
            pending = still;
        }
        for s in socks {
            let _ = s.set_nodelay(true);
            self.conns.push(Some(TcpStream::from(s)));
        }
        Ok(())
    }

    /// Connections opened.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Sends one message on every live connection and waits up to `deadline`
    /// for every echo. Returns how many connections answered.
    pub fn round(&mut self, round: u32, deadline: Duration) -> usize {
        self.round_each(round, deadline)
            .iter()
            .filter(|a| **a)
            .count()
    }

    /// [`Fleet::round`], connection by connection (in the order opened):
    /// whether each answered.
    pub fn round_each(&mut self, round: u32, deadline: Duration) -> Vec<bool> {
        let started = Instant::now();
        let mut got = vec![0usize; self.conns.len()];
        let mut want: Vec<usize> = Vec::new();
        for (i, c) in self.conns.iter_mut().enumerate() {
            let Some(conn) = c else { continue };
            let mut msg = [0u8; MSG];
            msg[..4].copy_from_slice(&(i as u32).to_be_bytes());
            msg[4..].copy_from_slice(&round.to_be_bytes());
            match conn.write(&msg) {
                Ok(MSG) => want.push(i),
                Ok(_) | Err(_) => {
                    self.failed += 1;
                    *c = None;
                }
            }
        }
        let mut answered = vec![false; self.conns.len()];
        let mut buf = [0u8; MSG];
        while !want.is_empty() && started.elapsed() < deadline {
            let mut progress = false;
            want.retain(|&i| {
                let Some(conn) = &mut self.conns[i] else {
                    return false;
                };
                match conn.read(&mut buf[..MSG - got[i]]) {
                    Ok(0) => {
                        self.failed += 1;
                        self.conns[i] = None;
                        false
                    }
                    Ok(n) => {
                        progress = true;
                        got[i] += n;
                        if got[i] == MSG {
                            answered[i] = true;
                            false
                        } else {
                            true
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
                    Err(e) => {
                        if e.kind() == io::ErrorKind::ConnectionReset {
                            self.resets += 1;
                        } else {
                            self.failed += 1;
                        }
                        self.conns[i] = None;
                        false
                    }
                }
            });
            if !progress {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.silent = want
            .iter()
            .filter_map(|&i| self.conns[i].as_ref()?.local_addr().ok())
            .map(|a| a.port())
            .collect();
        answered
    }
}

/// Counts TCP resets arriving in namespace `ns` (an nftables counter).
pub fn count_resets(lab: &Lab, ns: &str) -> Result<()> {
    lab.nft(
        ns,
        "table inet halab_rst {\n\
         counter rst {}\n\
         chain in {\n type filter hook input priority -300;\n tcp flags & rst == rst counter name rst\n }\n\
         }\n",
    )
}

/// The resets counted by [`count_resets`] so far.
pub fn resets_seen(lab: &Lab, ns: &str) -> Result<u64> {
    let out = lab.exec(ns, &["nft", "list", "counter", "inet", "halab_rst", "rst"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| fail(format!("read the reset counter in {ns}"), text.trim()))
}

/// Echoes UDP datagrams on `sock` until `stop` (or `limit`).
pub fn udp_echo(sock: std::net::UdpSocket, stop: &AtomicBool, limit: Duration) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(20)));
    let started = Instant::now();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}

/// Sends a numbered UDP probe to `to` every `every` until `stop` (at most
/// `limit`), and returns when each answer arrived.
pub fn udp_probe(
    to: SocketAddr,
    every: Duration,
    stop: &AtomicBool,
    limit: Duration,
) -> io::Result<Vec<Instant>> {
    let any: std::net::IpAddr = if to.is_ipv6() {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let sock = std::net::UdpSocket::bind((any, 0))?;
    sock.connect(to)?;
    sock.set_nonblocking(true)?;
    let started = Instant::now();
    let mut answers = Vec::new();
    let mut next = started;
    let mut seq: u32 = 0;
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
        let now = Instant::now();
        if now >= next {
            let _ = sock.send(&seq.to_be_bytes());
            seq = seq.wrapping_add(1);
            next += every;
        }
        while let Ok(n) = sock.recv(&mut buf) {
            if n >= 4 {
                answers.push(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(answers)
}

/// One answer [`arp_sample`] received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpAnswer {
    pub at: Instant,
    /// The MAC it names for the target.
    pub mac: [u8; 6],
    /// Which request it answers (they are numbered from 0).
    pub request: u64,
}

/// Sender addresses [`arp_sample`] takes turns with: each answer says which
/// request it answers (by the address it goes to), unless it comes after
/// 64 more requests (at 5 ms, 320 ms late).
pub const ARP_SAMPLE_SENDERS: u8 = 64;

/// Who answers ARP for `target`: from interface `iface` (of the calling
/// thread's namespace), a request every `every` until `stop`, from `src`,
/// `src + 1`, ... in turn ([`ARP_SAMPLE_SENDERS`] addresses); returns every
/// answer to them, with the request it answers: two answers to one request
/// are two answerers, even when both name the same MAC (a virtual MAC). The
/// addresses should be of the subnet and not the interface's own: then the
/// kernel's own requests (a ping from the namespace) and their replies are
/// not counted.
pub fn arp_sample(
    iface: &str,
    src: std::net::Ipv4Addr,
    target: std::net::Ipv4Addr,
    every: Duration,
    stop: &AtomicBool,
    limit: Duration,
) -> io::Result<Vec<ArpAnswer>> {
    use std::os::fd::AsRawFd as _;
    let (fd, my_mac) = packet_socket(iface, libc::ETH_P_ARP as u16)?;
    let mut req = [0u8; 42];
    req[..6].copy_from_slice(&[0xff; 6]);
    req[6..12].copy_from_slice(&my_mac);
    req[12..14].copy_from_slice(&[0x08, 0x06]);
    req[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    req[22..28].copy_from_slice(&my_mac);
    req[38..42].copy_from_slice(&target.octets());
    let senders = u64::from(ARP_SAMPLE_SENDERS);
    let sender = |k: u64| std::net::Ipv4Addr::from(u32::from(src).wrapping_add(k as u32)).octets();
    let started = Instant::now();
    let mut next = started;
    // The number of the next request.
    let mut sent = 0u64;
    let mut out = Vec::new();
    let mut buf = [0u8; 128];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
        if Instant::now() >= next {
            req[28..32].copy_from_slice(&sender(sent % senders));
            // SAFETY: valid fd, buffer, bound socket.
            unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
            sent += 1;
            // Never a burst to catch up after a stall: requests stay at
            // least `every` apart, so two answers close together are two
            // answerers (the virtual MAC's dual ownership), not two requests.
            next = Instant::now() + every;
        }
        loop {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 42 {
                break;
            }
            // An ARP reply (op 2) about the target, to one of our requests:
            // the latest sent from the address it goes to.
            let to = (0..senders).find(|&i| buf[38..42] == sender(i));
            if buf[20..22] == [0, 2]
                && buf[28..32] == target.octets()
                && let Some(i) = to
                && sent > 0
            {
                let last = sent - 1;
                let Some(request) = last.checked_sub((last + senders - i) % senders) else {
                    continue;
                };
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&buf[22..28]);
                out.push(ArpAnswer {
                    at: Instant::now(),
                    mac,
                    request,
                });
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(out)
}

/// A Neighbor Solicitation frame (RFC 4861 section 4.3) for `target` from
/// `src` (MAC `mac`) to the target's solicited-node multicast address, hop
/// limit 255, with the source link-layer address option (so the answer
/// comes back unicast without a solicitation of its own), ICMPv6 checksum
/// over the IPv6 pseudo-header.
pub fn neighbor_solicit_frame(
    mac: [u8; 6],
    src: std::net::Ipv6Addr,
    target: std::net::Ipv6Addr,
) -> [u8; 86] {
    let t = target.octets();
    let mut dst = [0u8; 16];
    dst[..2].copy_from_slice(&[0xff, 0x02]);
    dst[11..13].copy_from_slice(&[0x01, 0xff]);
    dst[13..].copy_from_slice(&t[13..]);
    let mut f = [0u8; 86];
    f[..6].copy_from_slice(&[0x33, 0x33, dst[12], dst[13], dst[14], dst[15]]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    // Version 6, payload 32 bytes (NS 24 + option 8), ICMPv6, hop limit 255.
    f[14..22].copy_from_slice(&[0x60, 0, 0, 0, 0, 32, 58, 255]);
    f[22..38].copy_from_slice(&src.octets());
    f[38..54].copy_from_slice(&dst);
    f[54] = 135;
    f[62..78].copy_from_slice(&t);
    f[78..80].copy_from_slice(&[1, 1]);
    f[80..86].copy_from_slice(&mac);
    let sum = icmpv6_checksum(&f[22..38], &f[38..54], &f[54..]);
    f[56..58].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The ICMPv6 checksum (RFC 4443 section 2.3) of `msg` (its checksum field
/// zero) from `src` to `dst`: one's complement sum over the pseudo-header
/// (addresses, length, next header 58) and the message.
fn icmpv6_checksum(src: &[u8], dst: &[u8], msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(src);
    add(dst);
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Who answers neighbour discovery for `target`, the IPv6 [`arp_sample`]:
/// from interface `iface` (of the calling thread's namespace), a Neighbor
/// Solicitation every `every` until `stop` (at most `limit`), from `src`,
/// `src + 1`, ... in turn ([`ARP_SAMPLE_SENDERS`] addresses, which need
/// not be configured: the answers are read from a packet socket); returns
/// every solicited Neighbor Advertisement for `target` sent to one of them,
/// with the MAC it names (its target link-layer address option, else the
/// frame's source) and the solicitation it answers: two answers to one
/// solicitation are two owners. Unsolicited NAs (to ff02::1) are not
/// counted.
pub fn ns_sample(
    iface: &str,
    src: std::net::Ipv6Addr,
    target: std::net::Ipv6Addr,
    every: Duration,
    stop: &AtomicBool,
    limit: Duration,
) -> io::Result<Vec<ArpAnswer>> {
    use std::os::fd::AsRawFd as _;
    let (fd, my_mac) = packet_socket(iface, 0x86dd)?;
    let senders = u64::from(ARP_SAMPLE_SENDERS);
    let sender = |k: u64| std::net::Ipv6Addr::from(u128::from(src).wrapping_add(u128::from(k)));
    let frames: Vec<[u8; 86]> = (0..senders)
        .map(|k| neighbor_solicit_frame(my_mac, sender(k), target))
        .collect();
    let addrs: Vec<[u8; 16]> = (0..senders).map(|k| sender(k).octets()).collect();
    let started = Instant::now();
    let mut next = started;
    let mut sent = 0u64;
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
        if Instant::now() >= next {
            let f = &frames[(sent % senders) as usize];
            // SAFETY: valid fd, buffer, bound socket.
            unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            sent += 1;
            // As arp_sample: never a burst to catch up after a stall.
            next = Instant::now() + every;
        }
        loop {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 78 {
                break;
            }
            let n = n as usize;
            // IPv6, ICMPv6 directly, a Neighbor Advertisement for the
            // target, to one of our senders.
            let to = addrs.iter().position(|a| buf[38..54] == a[..]);
            if buf[12..14] == [0x86, 0xdd]
                && buf[20] == 58
                && buf[54] == 136
                && buf[62..78] == target.octets()
                && let Some(i) = to
                && sent > 0
            {
                let last = sent - 1;
                let i = i as u64;
                let Some(request) = last.checked_sub((last + senders - i) % senders) else {
                    continue;
                };
                let mut mac = [0u8; 6];
                if n >= 86 && buf[78] == 2 && buf[79] == 1 {
                    mac.copy_from_slice(&buf[80..86]);
                } else {
                    mac.copy_from_slice(&buf[6..12]);
                }
                out.push(ArpAnswer {
                    at: Instant::now(),
                    mac,
                    request,
                });
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(out)
}

/// A raw packet socket bound to `iface` (of the calling thread's
/// namespace) for frames of `ethertype`, non-blocking, and the interface's
/// MAC.
fn packet_socket(iface: &str, ethertype: u16) -> io::Result<(std::os::fd::OwnedFd, [u8; 6])> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let name = std::ffi::CString::new(iface).map_err(io::Error::other)?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    let mac = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
    let mut my_mac = [0u8; 6];
    for (i, p) in mac.trim().split(':').enumerate().take(6) {
        my_mac[i] = u8::from_str_radix(p, 16).map_err(io::Error::other)?;
    }
    let proto = ethertype.to_be();
    // SAFETY: plain socket(2); owned right after.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            i32::from(proto),
        )
    };
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
    Ok((fd, my_mac))
}
