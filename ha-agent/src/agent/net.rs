//! Sockets of the agent: the VRRP raw socket on the HA link, gratuitous ARP on
//! the data interfaces, and interface link state. Everything here is opened
//! once at startup; the takeover path only calls `send`.

use std::{
    io,
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::Arc,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use ha_common::heartbeat;
use ha_core::vrrp::{
    auth,
    packet::ip_packet,
    wire::{self, MULTICAST, PROTOCOL},
};

use super::tx::{Datagram, Dest, Kind};
use crate::iface::{if_index, if_mac};

/// A duplicate of `s`'s descriptor (the same socket), for the sending
/// thread.
fn tx_fd(s: &Socket) -> io::Result<Arc<OwnedFd>> {
    Ok(Arc::new(OwnedFd::from(s.try_clone()?)))
}

/// The VRRP socket: raw IP protocol 112, bound to the HA interface, joined to
/// 224.0.0.18. It writes its own IPv4 header (IP_HDRINCL): source = our
/// address (the checksum covers it), TTL 255, DSCP CS6 like keepalived. It is
/// not bound to our address: a raw socket bound to a unicast address only
/// receives packets sent to that address, not to 224.0.0.18.
#[derive(Debug)]
pub struct VrrpSocket {
    /// The socket, registered with the reactor.
    fd: AsyncFd<Socket>,
    /// Our address (advert source and checksum pseudo-header).
    local: Ipv4Addr,
    /// Unicast peers; empty = multicast.
    unicast: Vec<Ipv4Addr>,
    /// The socket again, for the sending thread, and the interface.
    tx: Arc<OwnedFd>,
    iface: Arc<str>,
}

impl VrrpSocket {
    pub fn open(iface: &str, local: Ipv4Addr, unicast: Vec<Ipv4Addr>) -> io::Result<Self> {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(PROTOCOL))),
        )?;
        s.bind_device(Some(iface.as_bytes()))
            .map_err(|e| io::Error::new(e.kind(), format!("bind VRRP socket to {iface}: {e}")))?;
        s.set_header_included_v4(true)?;
        s.set_multicast_loop_v4(false)?;
        s.set_multicast_if_v4(&local)?;
        s.join_multicast_v4(&MULTICAST, &local)
            .map_err(|e| io::Error::new(e.kind(), format!("join 224.0.0.18 on {iface}: {e}")))?;
        s.set_nonblocking(true)?;
        s.set_recv_buffer_size(1 << 20)?;
        let tx = tx_fd(&s)?;
        // SAFETY: the Socket owns its fd until dropped together with the AsyncFd.
        let fd = unsafe { AsyncFd::register_with_interest(s, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(VrrpSocket {
            fd,
            local,
            unicast,
            tx,
            iface: iface.into(),
        })
    }

    /// An advert to 224.0.0.18, or one to every unicast peer, signed when
    /// `seal` says so: the datagrams to send.
    pub fn datagrams(&self, advert: &wire::Repr, seal: Option<Seal<'_>>) -> Vec<Datagram> {
        let single = [MULTICAST];
        let dsts: &[Ipv4Addr] = if self.unicast.is_empty() {
            &single
        } else {
            &self.unicast
        };
        dsts.iter()
            .map(|dst| Datagram {
                fd: self.tx.clone(),
                iface: self.iface.clone(),
                kind: Kind::Advert,
                bytes: ip_packet(self.local, *dst, &sealed(advert, self.local, *dst, seal)),
                dest: Dest::Ip(SocketAddrV4::new(*dst, 0)),
            })
            .collect()
    }

    /// Polls for readability (readiness cleared: the caller drains).
    pub fn poll_readable(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        poll_readable(&self.fd, cx)
    }

    /// Reads one waiting packet (IPv4 header included) into `buf`; `None`
    /// when nothing is waiting.
    pub fn recv<'b>(&self, buf: &'b mut [MaybeUninit<u8>]) -> Option<&'b [u8]> {
        recv(&self.fd, buf)
    }
}

/// What signs an advert: the key and the sequence (one per advert, the same
/// on every path and to every peer: each path has its own source address,
/// which the tag binds, and receivers order each source apart).
#[derive(Debug, Clone, Copy)]
pub struct Seal<'a> {
    pub key: &'a auth::Key,
    pub seq: u64,
}

/// The VRRP message from `src` to `dst`, with its `auth_hmac` trailer when
/// sealed.
fn sealed(advert: &wire::Repr, src: Ipv4Addr, dst: Ipv4Addr, seal: Option<Seal<'_>>) -> Vec<u8> {
    let mut pdu = advert.to_bytes(src, dst);
    if let Some(s) = seal {
        let trailer = auth::seal(s.key, s.seq, src, &pdu);
        pdu.extend_from_slice(&trailer);
    }
    pdu
}

/// A heartbeat path over a data interface: an AF_PACKET socket (datagram
/// level: IPv4 packets without the Ethernet header) that sends adverts to
/// 224.0.0.18 from our address on that interface and receives those of
/// the peer. A packet socket sees frames before the firewall's input rules,
/// so the operator's ruleset need not open VRRP on a data interface; a
/// classic BPF filter keeps everything but VRRP to 224.0.0.18 out of it
/// (and our own outgoing frames). Only signed adverts count over it (the
/// core checks).
#[derive(Debug)]
pub struct PathSocket {
    fd: AsyncFd<Socket>,
    tx: Arc<OwnedFd>,
    ifindex: i32,
    local: Ipv4Addr,
    pub iface: Arc<str>,
}

/// `ldb pkttype; jeq OUTGOING drop; ldb [9]; jeq 112; ld [16]; jeq
/// 224.0.0.18; ret all | ret 0` (offsets from the IPv4 header: a datagram
/// packet socket filters after the link header).
const VRRP_FILTER: [libc::sock_filter; 8] = [
    bpf(0x30, 0, 0, 0xffff_f000 + 4),
    bpf(0x15, 5, 0, libc::PACKET_OUTGOING as u32),
    bpf(0x30, 0, 0, 9),
    bpf(0x15, 0, 3, PROTOCOL as u32),
    bpf(0x20, 0, 0, 16),
    bpf(0x15, 0, 1, 0xe000_0012),
    bpf(0x06, 0, 0, 0xffff),
    bpf(0x06, 0, 0, 0),
];

const fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

impl PathSocket {
    pub fn open(iface: &str, local: Ipv4Addr) -> io::Result<Self> {
        let ifindex = if_index(iface)?;
        let fd = packet_socket(ifindex, libc::ETH_P_IP as u16, &VRRP_FILTER)
            .map_err(|e| io::Error::new(e.kind(), format!("VRRP packet socket on {iface}: {e}")))?;
        let fd = Socket::from(fd);
        let tx = tx_fd(&fd)?;
        // SAFETY: the fd is owned by the AsyncFd and dropped with it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(PathSocket {
            fd,
            tx,
            ifindex,
            local,
            iface: iface.into(),
        })
    }

    /// Our address on this path.
    pub fn local(&self) -> Ipv4Addr {
        self.local
    }

    /// An advert to 224.0.0.18 on this interface: the datagram to send.
    pub fn datagram(&self, advert: &wire::Repr, seal: Option<Seal<'_>>) -> Datagram {
        let mut packet = ip_packet(
            self.local,
            MULTICAST,
            &sealed(advert, self.local, MULTICAST, seal),
        );
        // No IP layer below us: the header checksum is ours to fill.
        let c = ipv4_header_checksum(&packet[..20]);
        packet[10..12].copy_from_slice(&c.to_be_bytes());
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0x00, 0x00, 0x12]);
        Datagram {
            fd: self.tx.clone(),
            iface: self.iface.clone(),
            kind: Kind::Advert,
            bytes: packet,
            dest: Dest::Link(addr),
        }
    }

    /// Polls for readability (readiness cleared: the caller drains).
    pub fn poll_readable(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        poll_readable(&self.fd, cx)
    }

    /// Reads one waiting packet (IPv4 header included) into `buf`; `None`
    /// when nothing is waiting.
    pub fn recv<'b>(&self, buf: &'b mut [MaybeUninit<u8>]) -> Option<&'b [u8]> {
        recv(&self.fd, buf)
    }
}

/// The fast heartbeat on one path: an AF_PACKET datagram socket of the
/// probe ethertype (`ha_common::heartbeat`), bound to the interface. It
/// sends our probes to the peer's MAC (broadcast until the core learnt it)
/// past the qdisc, and receives the replies the peer's XDP sent back (ours
/// passed them: see `ha_link`/`ha_data`); a classic BPF filter keeps out
/// our own outgoing frames and anything but a reply.
#[derive(Debug)]
pub struct ProbeSocket {
    /// Not in the reactor: the loop reads it at every wake (a backup wakes
    /// for every round). Readiness through epoll would cost a
    /// `packet_poll` per reply, and `packet_poll` re-enables bottom halves,
    /// which runs every softirq pending on the CPU in the loop's context
    /// (see `agent::tx`).
    fd: Socket,
    tx: Arc<OwnedFd>,
    ifindex: i32,
    pub iface: Arc<str>,
}

/// `ldb pkttype; jeq OUTGOING drop; ldb [5]; jeq KIND_REPLY; ret all | ret 0`.
const PROBE_FILTER: [libc::sock_filter; 6] = [
    bpf(0x30, 0, 0, 0xffff_f000 + 4),
    bpf(0x15, 3, 0, libc::PACKET_OUTGOING as u32),
    bpf(0x30, 0, 0, 5),
    bpf(0x15, 0, 1, heartbeat::KIND_REPLY as u32),
    bpf(0x06, 0, 0, 0xffff),
    bpf(0x06, 0, 0, 0),
];

impl ProbeSocket {
    pub fn open(iface: &str) -> io::Result<Self> {
        let ifindex = if_index(iface)?;
        let fd = packet_socket(ifindex, heartbeat::ETHERTYPE, &PROBE_FILTER)
            .map_err(|e| io::Error::new(e.kind(), format!("probe socket on {iface}: {e}")))?;
        let one: libc::c_int = 1;
        // SAFETY: valid fd and an int option. Best effort: without it the
        // probes go through the qdisc (a little later under load).
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        let fd = Socket::from(fd);
        let tx = tx_fd(&fd)?;
        Ok(ProbeSocket {
            fd,
            tx,
            ifindex,
            iface: iface.into(),
        })
    }

    /// One probe to `dst` (`None`: broadcast): the datagram to send.
    pub fn datagram(&self, dst: Option<[u8; 6]>, frame: &[u8]) -> Datagram {
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = heartbeat::ETHERTYPE.to_be();
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&dst.unwrap_or([0xff; 6]));
        Datagram {
            fd: self.tx.clone(),
            iface: self.iface.clone(),
            kind: Kind::Probe,
            bytes: frame.to_vec(),
            dest: Dest::Link(addr),
        }
    }

    /// Reads one waiting reply into `buf`, with its Ethernet source; `None`
    /// when nothing is waiting.
    pub fn recv<'b>(&self, buf: &'b mut [u8]) -> Option<(&'b [u8], [u8; 6])> {
        // SAFETY: zeroed sockaddr_ll is valid; recvfrom fills it.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: valid fd, buffer and address storage of the sizes given.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut addr).cast(),
                &raw mut len,
            )
        };
        let n = usize::try_from(n).ok()?;
        let mut src = [0; 6];
        src.copy_from_slice(&addr.sll_addr[..6]);
        Some((&buf[..n.min(buf.len())], src))
    }
}

/// A non-blocking AF_PACKET datagram socket of `ethertype`, with `filter`,
/// bound to `ifindex`.
fn packet_socket(
    ifindex: i32,
    ethertype: u16,
    filter: &[libc::sock_filter],
) -> io::Result<OwnedFd> {
    let proto = ethertype.to_be();
    // SAFETY: plain socket(2); the fd is owned right after.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid fd.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: valid fd and a filter program that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const prog).cast(),
            size_of::<libc::sock_fprog>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex;
    // SAFETY: valid fd and address of the right size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Polls `fd` for readability (readiness cleared: the caller drains).
fn poll_readable(
    fd: &AsyncFd<Socket>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<io::Result<()>> {
    fd.poll_read_ready(cx).map_ok(|mut g| g.clear_ready())
}

/// Reads one waiting packet from `fd` into `buf`; `None` when nothing waits.
fn recv<'b>(fd: &AsyncFd<Socket>, buf: &'b mut [MaybeUninit<u8>]) -> Option<&'b [u8]> {
    match fd.get_ref().recv(buf) {
        // SAFETY: recv initialised the first n bytes.
        Ok(n) => Some(unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) }),
        Err(_) => None,
    }
}

/// The IPv4 header checksum of `header` (its checksum field zero).
fn ipv4_header_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A VIP to announce, and its virtual MAC (`None`: the interface's MAC).
pub type Announced = (Ipv4Addr, Option<[u8; 6]>);

/// Gratuitous ARP for the VIPs of one interface: frames built at startup, sent
/// with one `sendto` each on an AF_PACKET socket.
#[derive(Debug)]
pub struct GarpSender {
    /// The packet socket.
    fd: OwnedFd,
    /// Interface index (destination of every frame).
    ifindex: i32,
    /// One ARP request per VIP (sender = target = VIP, broadcast).
    frames: Vec<[u8; 42]>,
}

impl GarpSender {
    /// For `vips` on `iface`, each from its virtual MAC if it has one, else
    /// from the interface's.
    pub fn open(iface: &str, vips: &[Announced]) -> io::Result<Self> {
        let ifindex = if_index(iface)?;
        let mac = if_mac(iface)?;
        // Protocol 0: a send-only packet socket, so the kernel queues no
        // received frames on it. Non-blocking: the loop sends from it, and
        // a full send buffer must drop a GARP (counted: `send_all` returns
        // what went out), never wait and stall the loop's adverts.
        // SAFETY: plain socket(2); the fd is owned right after.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid fd.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let frames = vips
            .iter()
            .map(|&(vip, vmac)| garp_frame(vmac.unwrap_or(mac), vip))
            .collect();
        Ok(GarpSender {
            fd,
            ifindex,
            frames,
        })
    }

    /// Sends one gratuitous ARP per VIP; returns how many went out.
    pub fn send_all(&self) -> usize {
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let mut sent = 0;
        for frame in &self.frames {
            // SAFETY: valid fd, buffer and address of the right size.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc == frame.len() as isize {
                sent += 1;
            }
        }
        sent
    }
}

/// An ARP request announcing `vip` at `mac` (RFC 5227 announcement form).
pub fn garp_frame(mac: [u8; 6], vip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&vip.octets());
    f[32..38].copy_from_slice(&[0; 6]);
    f[38..42].copy_from_slice(&vip.octets());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ip_header_checksum_verifies() {
        let mut p = ip_packet(Ipv4Addr::new(10, 0, 0, 2), MULTICAST, &[0; 12]);
        let c = ipv4_header_checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(ipv4_header_checksum(&p[..20]), 0);
    }

    #[test]
    fn garp_frame_announces_the_vip() {
        let f = garp_frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[28..32], &[10, 0, 0, 1]);
        assert_eq!(&f[38..42], &[10, 0, 0, 1]);
    }
}
