//! Interface queries by ioctl on a socket, so they answer for the network
//! namespace of the calling thread (unlike /sys, which shows the namespace the
//! sysfs was mounted in).

use std::{ffi::CString, io, os::fd::AsRawFd as _};

use socket2::{Domain, Socket, Type};

fn ioctl_ifreq(iface: &str, request: libc::Ioctl) -> io::Result<libc::ifreq> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    ioctl_ifreq_on(&sock, iface, request)
}

/// A zeroed `ifreq` naming `iface` (checked: no NUL, fits IFNAMSIZ).
fn ifreq_named(iface: &str) -> io::Result<libc::ifreq> {
    let name = CString::new(iface)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    if name.as_bytes().len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {iface:?} too long"),
        ));
    }
    // SAFETY: zeroed ifreq is valid; the name fits (checked above).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

/// [`ioctl_ifreq`] on a socket the caller keeps.
fn ioctl_ifreq_on(sock: &Socket, iface: &str, request: libc::Ioctl) -> io::Result<libc::ifreq> {
    let mut req = ifreq_named(iface)?;
    // SAFETY: valid socket fd and ifreq pointer for a read-only interface query.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("interface {iface}: {e}")));
    }
    Ok(req)
}

/// Sets the interface administratively up or down (IFF_UP, as `ip link set
/// dev <iface> up|down`), leaving its other flags as they are.
pub fn set_admin_up(iface: &str, up: bool) -> io::Result<()> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    let mut req = ioctl_ifreq_on(&sock, iface, libc::SIOCGIFFLAGS)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let want = if up {
        flags | libc::IFF_UP as libc::c_short
    } else {
        flags & !(libc::IFF_UP as libc::c_short)
    };
    if want == flags {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = want;
    // SAFETY: valid socket fd and an ifreq naming the interface, with flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("interface {iface}: {e}")));
    }
    Ok(())
}

/// Interface index in the current network namespace.
pub fn if_index(iface: &str) -> io::Result<i32> {
    let req = ioctl_ifreq(iface, libc::SIOCGIFINDEX)?;
    // SAFETY: SIOCGIFINDEX fills the ifindex member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex })
}

/// The interface's driver, as `ethtool -i` names it (`veth`, `virtio_net`,
/// `bridge`, ...): `ETHTOOL_GDRVINFO`.
pub fn driver(iface: &str) -> io::Result<String> {
    /// `struct ethtool_drvinfo` (linux/ethtool.h).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    // SAFETY: all-zero bytes are a valid DrvInfo (integers and arrays).
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    let mut req = ifreq_named(iface)?;
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: valid socket fd; the ifreq names the interface and points at
    // a DrvInfo the kernel fills (it lives until after the call).
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("interface {iface}: {e}")));
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Whether `iface` is a veth (false if its driver cannot be read, with a
/// warning: callers fall back to what suits most drivers).
pub fn is_veth(iface: &str) -> bool {
    match driver(iface) {
        Ok(d) => d == "veth",
        Err(e) => {
            tracing::warn!(%iface, cause = %e, "cannot read the interface's driver");
            false
        }
    }
}

/// `00:00:5e:00:01:07`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Interface MAC address.
pub fn if_mac(iface: &str) -> io::Result<[u8; 6]> {
    let req = ioctl_ifreq(iface, libc::SIOCGIFHWADDR)?;
    // SAFETY: SIOCGIFHWADDR fills the hwaddr member of the union.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

/// The interface's IPv4 addresses, primary first (getifaddrs, i.e. netlink
/// in the calling thread's namespace).
pub fn ipv4_addrs(iface: &str) -> io::Result<Vec<std::net::Ipv4Addr>> {
    Ok(if_addrs(iface)?
        .into_iter()
        .filter_map(|a| match a {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(_) => None,
        })
        .collect())
}

/// The interface's IPv6 link-local addresses (fe80::/10), in the kernel's
/// order.
pub fn ipv6_link_locals(iface: &str) -> io::Result<Vec<std::net::Ipv6Addr>> {
    Ok(if_addrs(iface)?
        .into_iter()
        .filter_map(|a| match a {
            std::net::IpAddr::V6(a) if a.is_unicast_link_local() => Some(a),
            _ => None,
        })
        .collect())
}

/// The interface's IPv4 and IPv6 addresses (getifaddrs).
fn if_addrs(iface: &str) -> io::Result<Vec<std::net::IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, valid until freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) };
        // SAFETY: ifa_addr is non-null and points to a sockaddr.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if name.to_bytes() != iface.as_bytes() {
            continue;
        }
        if family == libc::AF_INET {
            // SAFETY: an AF_INET sockaddr is a sockaddr_in.
            let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
            out.push(std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into());
        } else if family == libc::AF_INET6 {
            // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
            let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
            out.push(std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr).into());
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Whether the interface is up with carrier (IFF_UP and IFF_RUNNING); a
/// missing interface counts as down.
pub fn link_up(iface: &str) -> bool {
    flags_up(ioctl_ifreq(iface, libc::SIOCGIFFLAGS))
}

/// Link state queries on one socket kept open: closing a UDP socket
/// re-enables bottom halves (`udp_destroy_sock`), which runs every softirq
/// pending on the CPU in the caller's context; the loop polls its links 20
/// times a second and must not take the box's packet processing on itself
/// each time (see `agent::tx`).
#[derive(Debug)]
pub struct LinkState {
    sock: Socket,
}

impl LinkState {
    pub fn new() -> io::Result<Self> {
        Ok(LinkState {
            sock: Socket::new(Domain::IPV4, Type::DGRAM, None)?,
        })
    }

    /// [`link_up`] on the kept socket.
    pub fn up(&self, iface: &str) -> bool {
        flags_up(ioctl_ifreq_on(&self.sock, iface, libc::SIOCGIFFLAGS))
    }
}

fn flags_up(req: io::Result<libc::ifreq>) -> bool {
    match req {
        Ok(req) => {
            // SAFETY: SIOCGIFFLAGS fills the flags member of the union.
            let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
            flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0
        }
        Err(_) => false,
    }
}
