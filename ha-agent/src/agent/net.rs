//! Sockets of the agent: the VRRP raw socket on the HA link, gratuitous ARP on
//! the data interfaces, and interface link state. Everything here is opened
//! once at startup; the takeover path only calls `send`.

use std::{
    io,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::Arc,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use ha_common::heartbeat;
use ha_core::vrrp::{
    auth,
    packet::{Header6, ip_packet},
    wire::{self, MULTICAST, MULTICAST6, PROTOCOL},
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
                dest: Dest::Ip(SocketAddrV4::new(*dst, 0).into()),
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

/// The VRRP socket of the IPv6 instances (RFC 9568 section 5.1.2): raw
/// IPv6 protocol 112 on the HA interface, bound to its link-local address
/// (the source the RFC requires, and the checksum's), joined to ff02::12,
/// hop limit 255, traffic class CS6 like keepalived. It receives each
/// advert's source, destination and hop limit apart (IPV6_PKTINFO,
/// IPV6_HOPLIMIT): an IPv6 raw socket gives no header. Multicast only: the
/// peers' link-local addresses are not configured.
#[derive(Debug)]
pub struct Vrrp6Socket {
    fd: AsyncFd<Socket>,
    /// Our link-local address on the HA interface, once bound.
    local: Option<Ipv6Addr>,
    /// Link-local VIPs: never our source.
    exclude: Vec<Ipv6Addr>,
    /// Our HA address: what a seal binds (the election knows a node by it,
    /// whichever family carried its advert).
    identity: Ipv4Addr,
    ifindex: u32,
    tx: Arc<OwnedFd>,
    iface: Arc<str>,
}

/// How long the agent waits at start for the HA interface's link-local
/// address to leave duplicate address detection (1 s by default).
const LINK_LOCAL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Vrrp6Socket {
    pub fn open(iface: &str, identity: Ipv4Addr, exclude: &[Ipv6Addr]) -> io::Result<Self> {
        let ifindex = u32::try_from(if_index(iface)?).unwrap_or(0);
        let s = Socket::new(
            Domain::IPV6,
            Type::RAW,
            Some(Protocol::from(i32::from(PROTOCOL))),
        )?;
        s.bind_device(Some(iface.as_bytes())).map_err(|e| {
            io::Error::new(e.kind(), format!("bind VRRP IPv6 socket to {iface}: {e}"))
        })?;
        s.set_multicast_hops_v6(u32::from(wire::TTL))?;
        s.set_unicast_hops_v6(u32::from(wire::TTL))?;
        s.set_multicast_loop_v6(false)?;
        s.set_multicast_if_v6(ifindex)?;
        s.set_tclass_v6(0xc0)?;
        s.join_multicast_v6(&MULTICAST6, ifindex)
            .map_err(|e| io::Error::new(e.kind(), format!("join ff02::12 on {iface}: {e}")))?;
        for opt in [libc::IPV6_RECVPKTINFO, libc::IPV6_RECVHOPLIMIT] {
            set_int(&s, libc::IPPROTO_IPV6, opt, 1)?;
        }
        s.set_nonblocking(true)?;
        s.set_recv_buffer_size(1 << 20)?;
        let tx = tx_fd(&s)?;
        // SAFETY: the Socket owns its fd until dropped together with the AsyncFd.
        let fd = unsafe { AsyncFd::register_with_interest(s, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        let mut sock = Vrrp6Socket {
            fd,
            local: None,
            exclude: exclude.to_vec(),
            identity,
            ifindex,
            tx,
            iface: iface.into(),
        };
        // The link-local address is usable once duplicate address
        // detection is over (a tentative one cannot be bound), and exists
        // only once the link is up: waited for a moment, then left to
        // `try_bind` (the agent starts without it: a node whose HA cable
        // is out still runs, heard and hearing over the data paths).
        let deadline = std::time::Instant::now() + LINK_LOCAL_WAIT;
        while !sock.try_bind() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(sock)
    }

    /// Binds the socket to the HA interface's own link-local address, if
    /// it is not bound yet and one is usable: the kernel's, never a VIP
    /// (`exclude`: a link-local VIP on a shared HA interface would be the
    /// same source on both nodes, each refusing the other's adverts as its
    /// own). Whether the socket is bound.
    pub fn try_bind(&mut self) -> bool {
        if self.local.is_some() {
            return true;
        }
        let candidates = crate::iface::ipv6_link_locals(&self.iface).unwrap_or_default();
        let s = self.fd.get_ref();
        self.local = candidates
            .into_iter()
            .filter(|a| !self.exclude.contains(a))
            .find(|a| {
                s.bind(&std::net::SocketAddrV6::new(*a, 0, 0, self.ifindex).into())
                    .is_ok()
            });
        self.local.is_some()
    }

    /// Our link-local address on the HA interface, once bound.
    pub fn local(&self) -> Option<Ipv6Addr> {
        self.local
    }

    /// An advert of an IPv6 instance to ff02::12, signed when `seal` says
    /// so (over our HA address, see [`Vrrp6Socket::identity`]); `None`
    /// until the socket is bound (no source to checksum it for).
    pub fn datagram(&self, advert: &wire::Repr, seal: Option<Seal<'_>>) -> Option<Datagram> {
        let local = self.local?;
        let mut pdu = advert.to_bytes(local, MULTICAST6);
        if let Some(s) = seal {
            pdu.extend_from_slice(&auth::seal(s.key, s.seq, self.identity, &pdu));
        }
        Some(Datagram {
            fd: self.tx.clone(),
            iface: self.iface.clone(),
            kind: Kind::Advert,
            bytes: pdu,
            dest: Dest::Ip(std::net::SocketAddrV6::new(MULTICAST6, 0, 0, self.ifindex).into()),
        })
    }

    /// Polls for readability (readiness cleared: the caller drains).
    pub fn poll_readable(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        poll_readable(&self.fd, cx)
    }

    /// Reads one waiting VRRP message into `buf`, with what the kernel
    /// tells of its header; `None` when nothing is waiting.
    pub fn recv<'b>(&self, buf: &'b mut [u8]) -> Option<(&'b [u8], Header6)> {
        let fd = self.fd.get_ref().as_raw_fd();
        // SAFETY: zeroed sockaddr_in6 and msghdr are valid; the pointers
        // set below outlive the call.
        let mut name: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&raw mut name).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in6>() as u32;
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        // SAFETY: a valid fd and a msghdr whose buffers are ours.
        let n = unsafe { libc::recvmsg(fd, &raw mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            return None;
        }
        // A message cut short by the buffer is refused whole (malformed),
        // never read as the advert its first bytes make.
        let bytes = if msg.msg_flags & libc::MSG_TRUNC == 0 {
            &buf[..n as usize]
        } else {
            &buf[..0]
        };
        let (mut dst, mut hop_limit) = (None, None);
        // SAFETY: the kernel filled `msg_controllen` bytes of `control`
        // with well-formed cmsgs; each is read within its own length.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                        let info = data.cast::<libc::in6_pktinfo>().read_unaligned();
                        dst = Some(Ipv6Addr::from(info.ipi6_addr.s6_addr));
                    }
                    (libc::IPPROTO_IPV6, libc::IPV6_HOPLIMIT) => {
                        hop_limit = u8::try_from(data.cast::<libc::c_int>().read_unaligned()).ok();
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(&raw const msg, c);
            }
        }
        // Without them (never seen: the options are set) the message is
        // refused by the core as one not sent with hop limit 255.
        let header = Header6 {
            src: Ipv6Addr::from(name.sin6_addr.s6_addr),
            dst: dst.unwrap_or(Ipv6Addr::UNSPECIFIED),
            hop_limit: hop_limit.unwrap_or(0),
            own: self.local.unwrap_or(Ipv6Addr::UNSPECIFIED),
        };
        Some((bytes, header))
    }
}

/// `setsockopt(level, name, value)` for an int option.
fn set_int(s: &Socket, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid fd and an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
pub type Announced = (IpAddr, Option<[u8; 6]>);

/// Gratuitous ARP for the IPv4 VIPs of one interface and unsolicited
/// Neighbor Advertisements for its IPv6 ones: frames built at startup, sent
/// with one `sendto` each on an AF_PACKET socket.
#[derive(Debug)]
pub struct GarpSender {
    /// The packet socket.
    fd: OwnedFd,
    /// Interface index (destination of every frame).
    ifindex: i32,
    /// One frame per VIP: an ARP request (sender = target = VIP,
    /// broadcast) or an NA (to all nodes), with its ethertype.
    frames: Vec<(u16, Vec<u8>)>,
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
            .map(|&(vip, vmac)| match vip {
                IpAddr::V4(vip) => (
                    libc::ETH_P_ARP as u16,
                    garp_frame(vmac.unwrap_or(mac), vip).to_vec(),
                ),
                IpAddr::V6(vip) => (
                    libc::ETH_P_IPV6 as u16,
                    na_frame(vmac.unwrap_or(mac), vip).to_vec(),
                ),
            })
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
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        let mut sent = 0;
        for (ethertype, frame) in &self.frames {
            addr.sll_protocol = ethertype.to_be();
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
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

/// An unsolicited Neighbor Advertisement of `vip` at `mac` (RFC 9568
/// section 6.4.2, RFC 4861 section 7.2.6): from the VIP to all nodes
/// (ff02::1), hop limit 255, Router and Override set, Solicited clear, the
/// target link-layer address option naming `mac`. A host updates the entry
/// it has for the VIP (Override); one without an entry ignores it.
pub fn na_frame(mac: [u8; 6], vip: Ipv6Addr) -> [u8; 86] {
    const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut f = [0u8; 86];
    f[0..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    // IPv6: version 6, payload 32 bytes, next header ICMPv6, hop limit 255.
    f[14] = 0x60;
    f[18..20].copy_from_slice(&32u16.to_be_bytes());
    f[20] = 58;
    f[21] = 255;
    f[22..38].copy_from_slice(&vip.octets());
    f[38..54].copy_from_slice(&ALL_NODES.octets());
    // ICMPv6 NA: type 136, code 0, R|O, target, option 2 (target MAC).
    f[54] = 136;
    f[58] = 0xa0;
    f[62..78].copy_from_slice(&vip.octets());
    f[78..80].copy_from_slice(&[2, 1]);
    f[80..86].copy_from_slice(&mac);
    let sum = wire_checksum6(vip, ALL_NODES, 58, &f[54..]);
    f[56..58].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The Internet checksum of an upper-layer message over IPv6 (RFC 8200
/// section 8.1).
fn wire_checksum6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, next_header]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsolicited_na_announces_the_vip_as_a_router() {
        let vip: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mac = [2, 0, 0, 0, 0, 1];
        let f = na_frame(mac, vip);
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!((f[20], f[21]), (58, 255), "ICMPv6, hop limit 255");
        assert_eq!((f[54], f[55], f[58]), (136, 0, 0xa0), "NA, R and O, not S");
        assert_eq!(&f[62..78], &vip.octets());
        assert_eq!(&f[78..86], &[2, 1, 2, 0, 0, 0, 0, 1]);
        // The checksum verifies: the sum over the message with it is 0.
        let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        assert_eq!(wire_checksum6(vip, dst, 58, &f[54..]), 0);
    }

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
