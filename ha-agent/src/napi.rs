//! Threaded NAPI on the agent's data interfaces (`[ha.napi]`; the HA link
//! stays in softirq, see `Config::napi_interfaces`).
//!
//! Why: by default a NIC's receive work (NAPI polling, and with it the XDP
//! programs, forwarding and bridging) runs as a softirq, in whatever task
//! happens to re-enable bottom halves on that CPU. On a box saturated by
//! forwarding whose `ksoftirqd` is starved by busy processes, that task is
//! often the VRRP loop itself: each of its syscalls runs the pending
//! forwarding work, so the realtime loop ends up forwarding the box's
//! traffic (measured: 14 s of softirq in 15 s of the loop's run time) and
//! misses its lease renewals, and the master flaps (docs/benchmarks.md,
//! the soak). With threaded NAPI the kernel polls each interface in a
//! kernel thread (`napi/<iface>-<id>`) instead, which the agent gives a
//! high normal priority (nice -20 by default): forwarding then competes
//! with busy processes and wins, but never runs inside the loop, and never
//! at realtime priority (which would starve normal tasks until the
//! kernel's fair server stalls every realtime thread, the loop included).
//!
//! How: the `netdev` generic netlink family (Linux 6.17+: `napi-get` dumps
//! an interface's NAPI instances with their thread's pid, `napi-set`
//! turns threading on), so it works in the agent's network namespace
//! whatever `/sys` is mounted; on older kernels `/sys/class/net/<iface>/
//! threaded`, when that `/sys` is this namespace's. Re-checked every few
//! seconds off the loop, since a driver may recreate its NAPI instances
//! (a veth does when XDP is attached or detached).

use std::io;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, Nla, NlaBuffer, NlasIterator, Parseable, ParseableParametrized,
    emit_u32, parse_u32,
};
use netlink_packet_generic::{
    GenlFamily, GenlHeader, GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
use serde::{Deserialize, Serialize};

/// What went wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum NapiError {
    #[error("generic netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("the kernel has no `netdev` netlink family: {0}")]
    NoFamily(String),
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: undecodable answer: {detail}")]
    Decode { what: String, detail: String },
    #[error("no interface {0}")]
    NoInterface(String),
}

/// One NAPI instance of an interface, as the kernel reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NapiInstance {
    pub id: u32,
    /// Polled by a thread of its own.
    pub threaded: bool,
    /// That thread (`napi/<iface>-<id>`).
    #[serde(default)]
    pub pid: Option<u32>,
    /// Its nice value.
    #[serde(default)]
    pub nice: Option<i32>,
}

/// An interface's NAPI state after the agent set it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NapiIface {
    pub iface: String,
    #[serde(default)]
    pub instances: Vec<NapiInstance>,
    /// Why it could not be set (the interface keeps softirq polling).
    #[serde(default)]
    pub error: Option<String>,
    /// A device without NAPI of its own (a bridge, bond, VLAN): the lower
    /// devices whose instances are listed (its ports, its link).
    #[serde(default)]
    pub via: Vec<String>,
}

impl NapiIface {
    /// Every instance threaded at the wanted nice value.
    pub fn done(&self, nice: i32) -> bool {
        self.error.is_none()
            && self
                .instances
                .iter()
                .all(|n| n.threaded && n.nice == Some(nice))
    }
}

// The `netdev` family (include/uapi/linux/netdev.h).
const CMD_NAPI_GET: u8 = 11;
const CMD_NAPI_SET: u8 = 14;
const A_NAPI_IFINDEX: u16 = 1;
const A_NAPI_ID: u16 = 2;
const A_NAPI_PID: u16 = 4;
const A_NAPI_THREADED: u16 = 8;

/// An attribute of a `netdev` NAPI message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NapiAttr {
    Ifindex(u32),
    Id(u32),
    Pid(u32),
    Threaded(u32),
    Other(DefaultNla),
}

impl Nla for NapiAttr {
    fn value_len(&self) -> usize {
        match self {
            NapiAttr::Other(n) => n.value_len(),
            _ => 4,
        }
    }
    fn kind(&self) -> u16 {
        match self {
            NapiAttr::Ifindex(_) => A_NAPI_IFINDEX,
            NapiAttr::Id(_) => A_NAPI_ID,
            NapiAttr::Pid(_) => A_NAPI_PID,
            NapiAttr::Threaded(_) => A_NAPI_THREADED,
            NapiAttr::Other(n) => n.kind(),
        }
    }
    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            NapiAttr::Ifindex(v) | NapiAttr::Id(v) | NapiAttr::Pid(v) | NapiAttr::Threaded(v) => {
                // value_len is 4: the buffer is exactly that long.
                let _ = emit_u32(buffer, *v);
            }
            NapiAttr::Other(n) => n.emit_value(buffer),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for NapiAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            A_NAPI_IFINDEX => NapiAttr::Ifindex(parse_u32(v)?),
            A_NAPI_ID => NapiAttr::Id(parse_u32(v)?),
            A_NAPI_PID => NapiAttr::Pid(parse_u32(v)?),
            A_NAPI_THREADED => NapiAttr::Threaded(parse_u32(v)?),
            _ => NapiAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// A `netdev` family message about NAPI instances.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NapiMsg {
    cmd: u8,
    attrs: Vec<NapiAttr>,
}

impl GenlFamily for NapiMsg {
    fn family_name() -> &'static str {
        "netdev"
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for NapiMsg {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for NapiMsg {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let attrs = NlasIterator::new(buf)
            .map(|nla| nla.and_then(|nla| NapiAttr::parse(&nla)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NapiMsg {
            cmd: header.cmd,
            attrs,
        })
    }
}

impl NapiMsg {
    fn instance(&self) -> Option<(u32, NapiInstance)> {
        let mut ifindex = None;
        let mut n = NapiInstance {
            id: 0,
            threaded: false,
            pid: None,
            nice: None,
        };
        for a in &self.attrs {
            match a {
                NapiAttr::Ifindex(v) => ifindex = Some(*v),
                NapiAttr::Id(v) => n.id = *v,
                NapiAttr::Pid(v) => n.pid = Some(*v),
                NapiAttr::Threaded(v) => n.threaded = *v != 0,
                NapiAttr::Other(_) => {}
            }
        }
        // Older kernels have no `threaded` attribute: a thread means threaded.
        if n.pid.is_some()
            && !self
                .attrs
                .iter()
                .any(|a| matches!(a, NapiAttr::Threaded(_)))
        {
            n.threaded = true;
        }
        Some((ifindex?, n)).filter(|(_, n)| n.id != 0)
    }
}

/// A generic netlink socket speaking to the `netdev` family.
struct Netdev {
    sock: Socket,
    family: u16,
    seq: u32,
    rx: Vec<u8>,
}

/// Why an answer is no answer.
enum AnswerError {
    /// The kernel refused the request (its errno).
    Kernel(io::Error),
    /// The bytes are not netlink we can read.
    Decode(String),
}

/// Reads one received buffer into `out` (the messages of `F` answering
/// request `seq`); `Ok(true)` once the answer is complete (done, or the
/// kernel's acknowledgement).
fn read_answer<F>(rx: &[u8], seq: u32, out: &mut Vec<F>) -> Result<bool, AnswerError>
where
    F: GenlFamily + ParseableParametrized<[u8], GenlHeader> + Emitable + std::fmt::Debug,
{
    let mut off = 0;
    while off < rx.len() {
        let Ok(nb) = netlink_packet_core::NetlinkBuffer::new_checked(&rx[off..]) else {
            return Err(AnswerError::Decode("truncated netlink message".into()));
        };
        let len = (nb.length() as usize).max(16).next_multiple_of(4);
        let bytes = &rx[off..rx.len().min(off + len)];
        off += len;
        if nb.sequence_number() != seq {
            continue;
        }
        let msg = NetlinkMessage::<GenlMessage<F>>::deserialize(bytes)
            .map_err(|e| AnswerError::Decode(e.to_string()))?;
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => {
                return match e.code {
                    None => Ok(true),
                    Some(code) => Err(AnswerError::Kernel(io::Error::from_raw_os_error(
                        code.get().saturating_neg(),
                    ))),
                };
            }
            NetlinkPayload::InnerMessage(m) => out.push(m.payload),
            _ => {}
        }
    }
    Ok(false)
}

/// The NAPI instances a buffer of `netdev` answers to request `seq`
/// carries (interface index, instance), and whether the answer is complete:
/// the I/O-free part of a `napi-get` dump, public for the fuzz target
/// `netdev_napi`. The kernel's bytes, read as untrusted: never panics.
pub fn napi_answer(rx: &[u8], seq: u32) -> Result<(bool, Vec<(u32, NapiInstance)>), String> {
    let mut msgs: Vec<NapiMsg> = Vec::new();
    match read_answer(rx, seq, &mut msgs) {
        Ok(done) => Ok((done, msgs.iter().filter_map(NapiMsg::instance).collect())),
        Err(AnswerError::Kernel(e)) => Err(e.to_string()),
        Err(AnswerError::Decode(d)) => Err(d),
    }
}

impl Netdev {
    fn open() -> Result<Self, NapiError> {
        let mut sock = Socket::new(NETLINK_GENERIC).map_err(NapiError::Socket)?;
        sock.bind_auto().map_err(NapiError::Socket)?;
        // Never wait on the kernel for long (start-up calls this).
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: a valid socket and option of the size given.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NapiError::Socket)?;
        let mut me = Netdev {
            sock,
            family: 0,
            seq: 0,
            rx: vec![0; 64 * 1024],
        };
        let ctrl = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName("netdev".into())],
        });
        let answers = me
            .request(ctrl, NLM_F_REQUEST | NLM_F_ACK, "resolve the netdev family")
            .map_err(|e| NapiError::NoFamily(e.to_string()))?;
        me.family = answers
            .iter()
            .flat_map(|m| &m.nlas)
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| NapiError::NoFamily("no family id in the answer".into()))?;
        Ok(me)
    }

    fn request<F>(
        &mut self,
        mut msg: GenlMessage<F>,
        flags: u16,
        what: &str,
    ) -> Result<Vec<F>, NapiError>
    where
        F: GenlFamily + ParseableParametrized<[u8], GenlHeader> + Emitable + std::fmt::Debug,
    {
        if self.family != 0 {
            msg.set_resolved_family_id(self.family);
        }
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let mut buf = vec![0; nl.buffer_len()];
        nl.serialize(&mut buf);
        let fail = |source| NapiError::Request {
            what: what.into(),
            source,
        };
        self.sock.send(&buf, 0).map_err(fail)?;
        let mut out = Vec::new();
        loop {
            let len = self.sock.recv(&mut &mut self.rx[..], 0).map_err(fail)?;
            match read_answer(&self.rx[..len.min(self.rx.len())], self.seq, &mut out) {
                Ok(true) => return Ok(out),
                Ok(false) => {}
                Err(AnswerError::Kernel(e)) => return Err(fail(e)),
                Err(AnswerError::Decode(detail)) => {
                    return Err(NapiError::Decode {
                        what: what.into(),
                        detail,
                    });
                }
            }
        }
    }

    /// The NAPI instances of interface `ifindex`.
    fn instances(&mut self, ifindex: u32) -> Result<Vec<NapiInstance>, NapiError> {
        let msg = GenlMessage::from_payload(NapiMsg {
            cmd: CMD_NAPI_GET,
            attrs: vec![NapiAttr::Ifindex(ifindex)],
        });
        let answers = self.request(
            msg,
            NLM_F_REQUEST | NLM_F_DUMP,
            &format!("list the NAPI instances of interface {ifindex}"),
        )?;
        Ok(answers
            .iter()
            .filter_map(NapiMsg::instance)
            .filter(|(i, _)| *i == ifindex)
            .map(|(_, n)| n)
            .collect())
    }

    /// Turns threading on for NAPI instance `id`.
    fn set_threaded(&mut self, id: u32) -> Result<(), NapiError> {
        let msg = GenlMessage::from_payload(NapiMsg {
            cmd: CMD_NAPI_SET,
            attrs: vec![NapiAttr::Id(id), NapiAttr::Threaded(1)],
        });
        self.request(
            msg,
            NLM_F_REQUEST | NLM_F_ACK,
            &format!("thread NAPI instance {id}"),
        )
        .map(drop)
    }
}

fn ifindex(iface: &str) -> Option<u32> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (i != 0).then_some(i)
}

/// The nice value of task `pid`.
fn nice_of(pid: u32) -> Option<i32> {
    // /proc/<pid>/stat field 19 (after the parenthesised name, field 17).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(16)?.parse().ok()
}

/// Sets task `pid`'s nice value, if it is a NAPI thread.
fn renice(pid: u32, nice: i32) -> io::Result<()> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    if !comm.starts_with("napi/") {
        return Err(io::Error::other(format!(
            "task {pid} is `{}`, not a NAPI thread",
            comm.trim()
        )));
    }
    // SAFETY: plain syscall on another task; id_t is u32.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, nice) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The pre-6.17 way, through `/sys`, when that `/sys` is our namespace's
/// (the interface's index there is the one we resolved).
fn set_threaded_sysfs(iface: &str, ifindex: u32) -> io::Result<()> {
    let dir = std::path::Path::new("/sys/class/net").join(iface);
    let there: Option<u32> = std::fs::read_to_string(dir.join("ifindex"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if there != Some(ifindex) {
        return Err(io::Error::other(
            "this kernel cannot thread one NAPI instance through netlink (Linux 6.17+) and /sys is another network namespace's",
        ));
    }
    std::fs::write(dir.join("threaded"), "1")
}

/// Threads every NAPI instance of `ifaces` and gives their threads `nice`;
/// returns what each interface ended with. Failures are per interface and
/// reported, never fatal: the interface keeps softirq polling.
pub fn ensure(ifaces: &[String], nice: i32) -> Vec<NapiIface> {
    let mut nl = Netdev::open();
    ifaces
        .iter()
        .map(|iface| {
            let result = match nl.as_mut() {
                Ok(nl) => ensure_one(nl, iface, nice),
                Err(e) => Err(NapiError::NoFamily(e.to_string())),
            };
            let (mut instances, mut error) = match result {
                Ok(found) => (found, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            let mut via = Vec::new();
            if error.is_none() && instances.is_empty() {
                // Its traffic is polled below it: thread the lower devices.
                // A failure on one is said; what the others got stays.
                let mut failed = Vec::new();
                for lower in lower_devices(iface) {
                    match nl.as_mut() {
                        Ok(nl) => match ensure_one(nl, &lower, nice) {
                            Ok(found) => instances.extend(found),
                            Err(e) => failed.push(format!("{lower}: {e}")),
                        },
                        Err(e) => failed.push(format!("{lower}: {e}")),
                    }
                    via.push(lower);
                }
                if !failed.is_empty() {
                    error = Some(failed.join("; "));
                }
            }
            NapiIface {
                iface: iface.clone(),
                instances,
                error,
                via,
            }
        })
        .collect()
}

/// The devices below `iface` that receive its traffic: a bridge's or a
/// bond's ports, a VLAN's or macvlan's link; recursively (what is below a
/// bond port too), from `ip -j -d link` of this namespace.
fn lower_devices(iface: &str) -> Vec<String> {
    let Ok(out) = std::process::Command::new("ip")
        .args(["-j", "-d", "link", "show"])
        .output()
    else {
        return Vec::new();
    };
    lowers_in(&String::from_utf8_lossy(&out.stdout), iface)
}

/// [`lower_devices`] from `ip -j -d link show`'s JSON: the leaves, at most
/// four levels down, each once.
fn lowers_in(json: &str, iface: &str) -> Vec<String> {
    /// What is read of one link (leniently: an entry that is not what is
    /// expected is skipped, not the whole list).
    struct Link {
        ifname: String,
        master: Option<String>,
        link: Option<String>,
        kind: Option<String>,
    }
    let Ok(serde_json::Value::Array(all)) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let text =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let links: Vec<Link> = all
        .iter()
        .filter_map(|v| {
            Some(Link {
                ifname: text(v, "ifname")?,
                master: text(v, "master"),
                link: text(v, "link"),
                kind: v
                    .get("linkinfo")
                    .and_then(|i| i.get("info_kind"))
                    .and_then(|k| k.as_str())
                    .map(str::to_owned),
            })
        })
        .collect();
    let below = |name: &str| -> Vec<String> {
        let mut v: Vec<String> = links
            .iter()
            .filter(|l| l.master.as_deref() == Some(name))
            .map(|l| l.ifname.clone())
            .collect();
        let me = links.iter().find(|l| l.ifname == name);
        // Devices stacked on one link (a DSA user port on its conduit).
        let stacked = me.and_then(|l| l.kind.as_deref()).is_some_and(|k| {
            matches!(
                k,
                "vlan" | "macvlan" | "ipvlan" | "macvtap" | "ipvtap" | "macsec" | "dsa"
            )
        });
        if stacked && let Some(lower) = me.and_then(|l| l.link.clone()) {
            v.push(lower);
        }
        v
    };
    let mut out: Vec<String> = Vec::new();
    let mut level = vec![iface.to_owned()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for name in &level {
            let under = below(name);
            if under.is_empty() && name != iface && !out.contains(name) {
                out.push(name.clone());
            }
            next.extend(under);
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    // Whatever is still below the fourth level is taken as it is.
    for name in level {
        if name != iface && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// [`ensure`] for one interface.
fn ensure_one(nl: &mut Netdev, iface: &str, nice: i32) -> Result<Vec<NapiInstance>, NapiError> {
    let index = ifindex(iface).ok_or_else(|| NapiError::NoInterface(iface.to_owned()))?;
    let mut found = nl.instances(index)?;
    if found.iter().any(|n| !n.threaded) {
        for n in found.iter().filter(|n| !n.threaded) {
            if let Err(e) = nl.set_threaded(n.id) {
                set_threaded_sysfs(iface, index).map_err(|s| NapiError::Request {
                    what: format!("thread the NAPI instances of {iface}"),
                    source: io::Error::other(format!("{e}; {s}")),
                })?;
                break;
            }
        }
        found = nl.instances(index)?;
    }
    for n in &mut found {
        if let Some(pid) = n.pid {
            if nice_of(pid) != Some(nice) {
                renice(pid, nice).map_err(|source| NapiError::Request {
                    what: format!("renice NAPI thread {pid} of {iface}"),
                    source,
                })?;
            }
            n.nice = nice_of(pid);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_devices_are_ports_and_links_down_to_the_leaves() {
        let json = r#"[
            {"ifname":"lo"},
            {"ifname":"lanp","master":"lan0","link":"fw1-lanp"},
            {"ifname":"lan0","linkinfo":{"info_kind":"bridge"}},
            {"ifname":"wana","master":"wan0"},
            {"ifname":"wanb","master":"wan0"},
            {"ifname":"wan0","linkinfo":{"info_kind":"bond"}},
            {"ifname":"wan0.7","link":"wan0","linkinfo":{"info_kind":"vlan"}},
            {"ifname":"eth0","link":"peer0","linkinfo":{"info_kind":"veth"}}
        ]"#;
        assert_eq!(lowers_in(json, "lan0"), ["lanp"]);
        assert_eq!(lowers_in(json, "wan0.7"), ["wana", "wanb"]);
        // A veth's link is its peer, not a lower device.
        assert!(lowers_in(json, "eth0").is_empty());
        assert!(lowers_in("not json", "lan0").is_empty());
        // An odd entry is skipped, not the list; a null link is none.
        let odd = r#"[1, {"ifname":"p","master":"br"}, {"ifname":"br","link":null}]"#;
        assert_eq!(lowers_in(odd, "br"), ["p"]);
    }

    #[test]
    fn napi_messages_round_trip() {
        let m = NapiMsg {
            cmd: CMD_NAPI_SET,
            attrs: vec![NapiAttr::Id(7), NapiAttr::Threaded(1)],
        };
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        let back = NapiMsg::parse_with_param(
            &buf,
            GenlHeader {
                cmd: CMD_NAPI_SET,
                version: 1,
            },
        )
        .unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn an_instance_needs_an_interface_and_an_id() {
        let m = |attrs| NapiMsg {
            cmd: CMD_NAPI_GET,
            attrs,
        };
        assert_eq!(
            m(vec![
                NapiAttr::Ifindex(3),
                NapiAttr::Id(9),
                NapiAttr::Pid(40)
            ])
            .instance(),
            Some((
                3,
                NapiInstance {
                    id: 9,
                    threaded: true,
                    pid: Some(40),
                    nice: None
                }
            ))
        );
        assert_eq!(
            m(vec![
                NapiAttr::Ifindex(3),
                NapiAttr::Id(9),
                NapiAttr::Threaded(0)
            ])
            .instance()
            .map(|(_, n)| n.threaded),
            Some(false)
        );
        assert_eq!(m(vec![NapiAttr::Id(9)]).instance(), None);
        assert_eq!(m(vec![NapiAttr::Ifindex(3)]).instance(), None);
    }

    #[test]
    fn a_dump_answer_reads_into_instances() {
        let dump = include_bytes!("../../fuzz/corpus/netdev_napi/dump-one-instance");
        assert_eq!(
            napi_answer(dump, 1),
            Ok((
                true,
                vec![(
                    3,
                    NapiInstance {
                        id: 8197,
                        threaded: true,
                        pid: Some(4882),
                        nice: None
                    }
                )]
            ))
        );
        let err = include_bytes!("../../fuzz/corpus/netdev_napi/error-eopnotsupp");
        assert!(napi_answer(err, 1).unwrap_err().contains("os error 95"));
        assert_eq!(
            napi_answer(dump, 2),
            Ok((false, Vec::new())),
            "another request's"
        );
    }

    #[test]
    fn garbage_answers_are_errors_not_panics() {
        let mut out: Vec<NapiMsg> = Vec::new();
        for bytes in [
            &[][..],
            &[1, 2, 3],
            &[0xff; 40],
            &[16, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        ] {
            let _ = read_answer(bytes, 1, &mut out);
        }
    }
}
