//! Sockets of the agent: the VRRP raw socket on the HA link, gratuitous ARP on
//! the data interfaces, and interface link state. Everything here is opened
//! once at startup; the takeover path only calls `send`.

use std::{
    io,
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::{
    iface::{if_index, if_mac},
    vrrp::wire::{self, MULTICAST, PROTOCOL, TTL},
};

/// Why a received packet was not an advert we act on (counted and logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Rejected {
    /// Shorter than an IPv4 header, or its header length is wrong.
    TruncatedIp,
    /// TTL was not 255 (it may have been routed).
    Ttl,
    /// VRRP version, type, length or checksum.
    Malformed,
    /// Not from a configured peer.
    NotPeer,
    /// A VRID we do not run.
    UnknownVrid,
    /// An advert interval of 0.
    ZeroInterval,
}

/// A received, validated advert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub src: Ipv4Addr,
    pub advert: wire::Repr,
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
        // SAFETY: the Socket owns its fd until dropped together with the AsyncFd.
        let fd = unsafe { AsyncFd::register_with_interest(s, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(VrrpSocket { fd, local, unicast })
    }

    /// Sends an advert to 224.0.0.18, or to every unicast peer (all of them
    /// even if one fails; the first error is returned).
    pub fn send(&self, advert: &wire::Repr) -> io::Result<()> {
        let single = [MULTICAST];
        let dsts: &[Ipv4Addr] = if self.unicast.is_empty() {
            &single
        } else {
            &self.unicast
        };
        let mut result = Ok(());
        for dst in dsts {
            let packet = ip_packet(self.local, *dst, &advert.to_bytes(self.local, *dst));
            if let Err(e) = self
                .fd
                .get_ref()
                .send_to(&packet, &SockAddr::from(SocketAddrV4::new(*dst, 0)))
            {
                result = result.and(Err(e));
            }
        }
        result
    }

    /// Waits until packets are readable.
    pub async fn readable(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Reads every waiting packet: `on_packet` gets each validated advert or
    /// the reason it was rejected (`known_vrid` and `is_peer` decide the last
    /// two checks).
    pub fn drain(
        &self,
        is_peer: impl Fn(Ipv4Addr) -> bool,
        known_vrid: impl Fn(u8) -> bool,
        mut on_packet: impl FnMut(Result<Received, (Rejected, Option<Ipv4Addr>)>),
    ) {
        let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
        loop {
            let n = match self.fd.get_ref().recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            };
            // SAFETY: recv initialised the first n bytes.
            let bytes: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
            on_packet(parse(bytes, self.local, &is_peer, &known_vrid));
        }
    }
}

/// An IPv4 header (TTL 255, protocol 112, DSCP CS6) followed by `payload`; the
/// kernel fills in the header checksum and packet id.
pub fn ip_packet(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0xc0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, TTL, PROTOCOL, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// Validates a raw-socket packet (IPv4 header + VRRP).
pub fn parse(
    bytes: &[u8],
    local: Ipv4Addr,
    is_peer: &impl Fn(Ipv4Addr) -> bool,
    known_vrid: &impl Fn(u8) -> bool,
) -> Result<Received, (Rejected, Option<Ipv4Addr>)> {
    if bytes.len() < 20 {
        return Err((Rejected::TruncatedIp, None));
    }
    let ihl = usize::from(bytes[0] & 0x0f) * 4;
    if ihl < 20 || bytes.len() < ihl {
        return Err((Rejected::TruncatedIp, None));
    }
    let src = Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]);
    let dst = Ipv4Addr::new(bytes[16], bytes[17], bytes[18], bytes[19]);
    if bytes[8] != TTL {
        return Err((Rejected::Ttl, Some(src)));
    }
    if !is_peer(src) {
        return Err((Rejected::NotPeer, Some(src)));
    }
    let _ = local;
    let packet =
        wire::Packet::new_checked(&bytes[ihl..]).map_err(|_| (Rejected::Malformed, Some(src)))?;
    let advert = wire::Repr::parse(&packet, src, dst).map_err(|e| {
        (
            if e == wire::WireError::ZeroInterval {
                Rejected::ZeroInterval
            } else {
                Rejected::Malformed
            },
            Some(src),
        )
    })?;
    if !known_vrid(advert.vrid) {
        return Err((Rejected::UnknownVrid, Some(src)));
    }
    Ok(Received { src, advert })
}

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
    pub fn open(iface: &str, vips: &[Ipv4Addr]) -> io::Result<Self> {
        let ifindex = if_index(iface)?;
        let mac = if_mac(iface)?;
        // Protocol 0: a send-only packet socket, so the kernel queues no
        // received frames on it.
        // SAFETY: plain socket(2); the fd is owned right after.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid fd.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let frames = vips.iter().map(|vip| garp_frame(mac, *vip)).collect();
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

    const PEER: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
    const ME: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);

    fn ip_packet(src: Ipv4Addr, ttl: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, ttl, 112, 0, 0];
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&MULTICAST.octets());
        p.extend_from_slice(payload);
        p
    }

    fn advert(src: Ipv4Addr) -> Vec<u8> {
        wire::Repr {
            vrid: 51,
            priority: 100,
            interval_cs: 1,
            addrs: vec![Ipv4Addr::new(10, 0, 0, 1)],
        }
        .to_bytes(src, MULTICAST)
    }

    fn check(bytes: &[u8]) -> Result<Received, Rejected> {
        parse(bytes, ME, &|a| a == PEER, &|v| v == 51).map_err(|(r, _)| r)
    }

    #[test]
    fn received_packets_are_validated_in_order() {
        assert_eq!(
            check(&ip_packet(PEER, 255, &advert(PEER)))
                .unwrap()
                .advert
                .priority,
            100
        );
        assert_eq!(
            check(&ip_packet(PEER, 254, &advert(PEER))),
            Err(Rejected::Ttl)
        );
        let stranger = Ipv4Addr::new(10, 255, 0, 9);
        assert_eq!(
            check(&ip_packet(stranger, 255, &advert(stranger))),
            Err(Rejected::NotPeer)
        );
        let mut bad = advert(PEER);
        bad[2] ^= 0xff;
        assert_eq!(check(&ip_packet(PEER, 255, &bad)), Err(Rejected::Malformed));
        let mut other = wire::Repr {
            vrid: 52,
            priority: 1,
            interval_cs: 1,
            addrs: vec![],
        }
        .to_bytes(PEER, MULTICAST);
        assert_eq!(
            check(&ip_packet(PEER, 255, &other)),
            Err(Rejected::UnknownVrid)
        );
        other.truncate(4);
        assert_eq!(
            check(&ip_packet(PEER, 255, &other)),
            Err(Rejected::Malformed)
        );
        assert_eq!(check(&[0x45; 10]), Err(Rejected::TruncatedIp));
        let zero = wire::Repr {
            vrid: 51,
            priority: 1,
            interval_cs: 0,
            addrs: vec![],
        }
        .to_bytes(PEER, MULTICAST);
        assert_eq!(
            check(&ip_packet(PEER, 255, &zero)),
            Err(Rejected::ZeroInterval)
        );
    }

    #[test]
    fn a_captured_keepalived_packet_passes_every_check() {
        let r = parse(
            &crate::vrrp::wire::tests::KEEPALIVED_ADVERT,
            ME,
            &|a| a == PEER,
            &|v| v == 51,
        )
        .unwrap();
        assert_eq!(
            (
                r.src,
                r.advert.vrid,
                r.advert.priority,
                r.advert.interval_cs
            ),
            (PEER, 51, 100, 100)
        );
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
