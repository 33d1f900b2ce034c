//! Network-namespace lab harness, shared by the privileged integration tests and
//! `cargo xtask lab`.
//!
//! A [`Lab`] declares namespaces, veth pairs, bridges (each inside a namespace of
//! its own), addresses, routes and sysctls; runs commands or spawns processes in
//! a namespace; and runs Rust code inside a namespace ([`Lab::run_in`]). Dropping
//! the lab kills what it spawned and deletes every namespace it made, panics
//! included.
//!
//! Names: every namespace of ours is `halab-<run>-<name>`, where `<run>` is unique
//! per lab (process id and a counter), so labs can run in parallel. Interfaces
//! live inside those namespaces and keep their plain names (`eth0`, `lan0`).
//! [`down`] removes the leftovers of labs that could not clean up (SIGKILL).
//!
//! Every error names the step that failed, e.g. `create veth fw1-lan0: File exists`.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

/// Every namespace a lab creates starts with this.
pub const PREFIX: &str = "halab-";

/// A failed step: what was being done and why it failed.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct LabError {
    /// What the harness was doing, e.g. `create veth fw1-lan0`.
    pub step: String,
    /// Why it failed, e.g. `File exists`.
    pub detail: String,
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

fn fail(step: impl Into<String>, detail: impl ToString) -> LabError {
    LabError {
        step: step.into(),
        detail: detail.to_string(),
    }
}

pub mod hostile;
pub mod traffic;

/// One end of a link: an interface name inside a namespace (logical name).
pub type End<'a> = (&'a str, &'a str);

/// A set of namespaces and links that is torn down on drop.
#[derive(Debug)]
pub struct Lab {
    /// `halab-<run>-`: the prefix of every namespace of this lab.
    run_prefix: String,
    /// Logical names of the namespaces created, in creation order (deleted in reverse).
    namespaces: Vec<String>,
    /// Processes spawned into the namespaces; killed before the namespaces go.
    children: Vec<Child>,
    /// Leave everything in place on drop (`cargo xtask lab up`).
    keep: bool,
}

impl Lab {
    /// A new, empty lab with a unique run prefix.
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self::with_run(&format!("{:x}-{n:x}", std::process::id()))
    }

    /// A lab whose namespaces are `halab-<run>-<name>`. The caller promises that
    /// no other live lab uses `run`.
    pub fn with_run(run: &str) -> Self {
        Lab {
            run_prefix: format!("{PREFIX}{run}-"),
            namespaces: Vec::new(),
            children: Vec::new(),
            keep: false,
        }
    }

    /// The prefix shared by this lab's namespaces (`halab-<run>-`).
    pub fn run_prefix(&self) -> &str {
        &self.run_prefix
    }

    /// The real (kernel) name of the namespace called `name` in this lab.
    pub fn netns_name(&self, name: &str) -> String {
        format!("{}{name}", self.run_prefix)
    }

    /// Do not tear anything down on drop (for `cargo xtask lab up`); `down`
    /// removes it later.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Creates namespace `name` with `lo` up.
    pub fn add_netns(&mut self, name: &str) -> Result<()> {
        let real = self.netns_name(name);
        run_ip(&format!("create netns {name}"), &["netns", "add", &real])?;
        self.namespaces.push(name.to_owned());
        self.ip(
            name,
            &format!("set lo up in {name}"),
            &["link", "set", "lo", "up"],
        )
    }

    /// Creates a veth pair between `a` and `b` and sets both ends up.
    pub fn add_veth(&mut self, a: End<'_>, b: End<'_>) -> Result<()> {
        let step = format!("create veth {}-{}", a.0, a.1);
        check_ifname(&step, a.1)?;
        check_ifname(&step, b.1)?;
        let peer_ns = self.netns_name(b.0);
        self.ip(
            a.0,
            &step,
            &[
                "link", "add", a.1, "type", "veth", "peer", "name", b.1, "netns", &peer_ns,
            ],
        )?;
        self.link_up(a)?;
        self.link_up(b)
    }

    /// Creates namespace `name` holding a bridge `br0` (up, no STP, no forwarding
    /// delay) that [`Lab::add_bridge_port`] plugs namespaces into.
    pub fn add_bridge(&mut self, name: &str) -> Result<()> {
        self.add_netns(name)?;
        let step = format!("create bridge {name}-br0");
        self.ip(
            name,
            &step,
            &[
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ],
        )?;
        self.link_up((name, "br0"))
    }

    /// Plugs `end` into `bridge`'s `br0` with a veth whose bridge-side port is
    /// named after the end's namespace (`<ns>-<if>`, shortened to fit). The
    /// port runs an `XDP_PASS` program ([`Lab::add_xdp_pass`]), so what a
    /// node's XDP program sends back with `XDP_TX` crosses the bridge.
    /// Returns the port's name.
    pub fn add_bridge_port(&mut self, bridge: &str, end: End<'_>) -> Result<String> {
        let port: String = format!("{}-{}", end.0, end.1).chars().take(15).collect();
        self.add_veth(end, (bridge, &port))?;
        self.add_xdp_pass((bridge, &port))?;
        self.ip(
            bridge,
            &format!("plug {} into bridge {bridge}", port),
            &["link", "set", &port, "master", "br0"],
        )?;
        Ok(port)
    }

    /// Attaches a program that passes every frame (`XDP_PASS`, multi-buffer
    /// aware) to a veth end in native mode, through netlink, so it stays
    /// attached for as long as the interface lives (a kept lab too).
    ///
    /// Why: a frame a veth's XDP program sends back with `XDP_TX` (the fast
    /// heartbeat's reflector answers probes that way) is queued on the peer
    /// veth's XDP ring, and the peer's NAPI is kicked to deliver it only when
    /// an XDP program is attached to the peer (`veth_xdp_flush` in
    /// drivers/net/veth.c). GRO alone (`ethtool -K <peer> gro on`, which
    /// since Linux 5.13 also enables NAPI on a veth) is not enough for
    /// `XDP_TX`: the frame is queued but sits there until other traffic
    /// kicks the peer (seen on Linux 6.18; `XDP_REDIRECT`, which flushes on
    /// its own, is fine with GRO). So every veth end that does not carry a
    /// node's XDP program needs one: [`Lab::add_bridge_port`] does it for
    /// the bridge side; for a direct pair, call this on an end that gets no
    /// node program (a node attaching later would find the slot taken).
    /// Being frags-aware, it leaves the peer its GSO and MTU.
    pub fn add_xdp_pass(&self, end: End<'_>) -> Result<()> {
        let step = format!("attach XDP_PASS to {}-{}", end.0, end.1);
        let iface = end.1.to_owned();
        self.run_in(end.0, move || attach_xdp_pass(&iface))?
            .map_err(|e| fail(step, e))
    }

    /// Polls a veth end (which has NAPI: an XDP program is attached) in a
    /// kernel thread at nice -20 instead of as a softirq, as the agent does
    /// with its own interfaces (`[ha.napi]`): the lab's switch then does its
    /// forwarding in threads of its own, like a real switch on hardware of
    /// its own, never inside whichever task's syscall happens to re-enable
    /// softirqs (the agents' VRRP loops included). Through `ip netns exec`,
    /// whose private /sys shows the namespace's interfaces; the thread is
    /// `napi/<iface>-<id>`.
    pub fn thread_napi(&self, end: End<'_>) -> Result<()> {
        let step = format!("thread NAPI of {}-{}", end.0, end.1);
        self.write_threaded(end, 1).map_err(|e| fail(&step, e))?;
        // Threads of a same-named end of another live lab get it too:
        // harmless, they are switch ports as well.
        let prefix = format!("napi/{}-", end.1);
        for task in std::fs::read_dir("/proc")
            .map_err(|e| fail(&step, e))?
            .flatten()
        {
            let Ok(pid) = task.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.starts_with(&prefix) {
                // SAFETY: plain syscall on a kernel thread.
                if unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, -20) } != 0 {
                    let e = std::io::Error::last_os_error();
                    // Gone meanwhile (another lab's port, torn down).
                    if e.raw_os_error() != Some(libc::ESRCH) {
                        return Err(fail(step, e));
                    }
                }
            }
        }
        Ok(())
    }

    /// Undoes [`Lab::thread_napi`]: the end is polled as a softirq again.
    pub fn unthread_napi(&self, end: End<'_>) -> Result<()> {
        self.write_threaded(end, 0)
            .map_err(|e| fail(format!("unthread NAPI of {}-{}", end.0, end.1), e))
    }

    /// Writes `/sys/class/net/<iface>/threaded` of `end`'s namespace.
    fn write_threaded(&self, end: End<'_>, value: u8) -> std::result::Result<(), String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns_name(end.0), "sh", "-c"])
            .arg(format!("echo {value} > /sys/class/net/{}/threaded", end.1))
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// Adds an address (`10.0.0.1/24`) to an interface.
    pub fn add_addr(&self, end: End<'_>, cidr: &str) -> Result<()> {
        self.ip(
            end.0,
            &format!("add address {cidr} to {}-{}", end.0, end.1),
            &["addr", "add", cidr, "dev", end.1],
        )
    }

    /// Adds a route (`default` or a prefix) via a gateway in namespace `ns`.
    pub fn add_route(&self, ns: &str, dest: &str, via: &str) -> Result<()> {
        self.ip(
            ns,
            &format!("add route {dest} via {via} in {ns}"),
            &["route", "add", dest, "via", via],
        )
    }

    /// Sets a sysctl (`net.ipv4.ip_forward`) inside namespace `ns`.
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<()> {
        self.exec(ns, &["sysctl", "-qw", &format!("{key}={value}")])
            .map_err(|e| fail(format!("set sysctl {key}={value} in {ns}"), e.detail))
            .map(drop)
    }

    /// Sets an interface up.
    pub fn link_up(&self, end: End<'_>) -> Result<()> {
        self.ip(
            end.0,
            &format!("set {}-{} up", end.0, end.1),
            &["link", "set", end.1, "up"],
        )
    }

    /// Sets an interface down.
    pub fn link_down(&self, end: End<'_>) -> Result<()> {
        self.ip(
            end.0,
            &format!("set {}-{} down", end.0, end.1),
            &["link", "set", end.1, "down"],
        )
    }

    /// The MAC address of an interface (`aa:bb:cc:dd:ee:ff`).
    pub fn mac(&self, end: End<'_>) -> Result<String> {
        let step = format!("read MAC of {}-{}", end.0, end.1);
        let out = self
            .exec(end.0, &["ip", "-br", "link", "show", "dev", end.1])
            .map_err(|e| fail(&step, e.detail))?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(2)
            .map(str::to_owned)
            .ok_or_else(|| fail(step, "no address in `ip -br link` output"))
    }

    /// Runs `ip <args>` in namespace `ns`; `step` names it in errors.
    pub fn ip(&self, ns: &str, step: &str, args: &[&str]) -> Result<()> {
        let real = self.netns_name(ns);
        let mut full = vec!["-n", real.as_str()];
        full.extend_from_slice(args);
        run_ip(step, &full).map(drop)
    }

    /// Runs a command in namespace `ns` to completion; a non-zero exit is an
    /// error carrying the command's stderr.
    pub fn exec(&self, ns: &str, argv: &[&str]) -> Result<Output> {
        let step = format!("run `{}` in {ns}", argv.join(" "));
        let out = self
            .command(ns, argv)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| fail(&step, e))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(fail(step, format!("{} ({})", stderr.trim(), out.status)));
        }
        Ok(out)
    }

    /// Loads an nftables ruleset (`nft -f -`) in namespace `ns`.
    pub fn nft(&self, ns: &str, ruleset: &str) -> Result<()> {
        use std::io::Write as _;
        let step = format!("load nftables ruleset in {ns}");
        let mut child = self
            .command(ns, &["nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(&step, e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(ruleset.as_bytes())
                .map_err(|e| fail(&step, e))?;
        }
        let out = child.wait_with_output().map_err(|e| fail(&step, e))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(fail(step, format!("{} ({})", stderr.trim(), out.status)));
        }
        Ok(())
    }

    /// A `Command` that runs `argv` inside namespace `ns` (not yet started).
    ///
    /// Only the network namespace changes (`nsenter --net`), unlike
    /// `ip netns exec`, which also gives the command a private mount namespace
    /// with its own /sys: there, /sys/fs/bpf is an empty directory, and pins
    /// made by an agent would vanish with it. Processes in the lab share the
    /// host's bpffs, as agents on real firewalls do.
    pub fn command(&self, ns: &str, argv: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns_name(ns)))
            .arg("--")
            .args(argv);
        cmd
    }

    /// Starts `cmd` (from [`Lab::command`]) and keeps it: the lab kills it on drop.
    /// Returns its process id.
    pub fn spawn(&mut self, ns: &str, mut cmd: Command) -> Result<u32> {
        let child = cmd
            .spawn()
            .map_err(|e| fail(format!("spawn {:?} in {ns}", cmd.get_program()), e))?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Runs `f` on a thread that has entered namespace `ns` (network namespace
    /// only: the filesystem view, including /sys, stays the caller's). Sockets,
    /// netlink and interface lookups made by `f` happen inside `ns`. A panic in
    /// `f` is re-raised here.
    pub fn run_in<R: Send>(&self, ns: &str, f: impl FnOnce() -> R + Send) -> Result<R> {
        let real = self.netns_name(ns);
        let step = format!("enter netns {ns}");
        let file = File::open(format!("/run/netns/{real}")).map_err(|e| fail(&step, e))?;
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                // SAFETY: `file` is an open netns file; setns only changes this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(fail(&step, std::io::Error::last_os_error()));
                }
                Ok(f())
            });
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Kills the processes spawned with [`Lab::spawn`] and everything else running
    /// in the lab's namespaces, then deletes the namespaces. Also run on drop;
    /// returns the first error (every step is still attempted).
    pub fn teardown(&mut self) -> Result<()> {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        let mut first_err = None;
        while let Some(name) = self.namespaces.pop() {
            if let Err(e) = delete_netns(&self.netns_name(&name)) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = self.teardown() {
            eprintln!("ha-lab: teardown: {e}");
        }
    }
}

/// Names of the namespaces on this machine that start with `prefix`.
pub fn list_netns(prefix: &str) -> Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map_err(|e| fail("list netns", e))?;
    if !out.status.success() {
        return Err(fail(
            "list netns",
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

/// Removes every namespace whose name starts with `prefix` (killing what runs in
/// it), and returns their names. [`down`] is this with [`PREFIX`].
pub fn down_prefix(prefix: &str) -> Result<Vec<String>> {
    let names = list_netns(prefix)?;
    let mut first_err = None;
    for name in &names {
        if let Err(e) = delete_netns(name) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(names), Err)
}

/// Removes the leftovers of every lab on this machine (`cargo xtask lab down`).
pub fn down() -> Result<Vec<String>> {
    down_prefix(PREFIX)
}

/// Kills every process in namespace `real` and deletes it.
fn delete_netns(real: &str) -> Result<()> {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", real]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<libc::pid_t>() {
                // SAFETY: plain syscall; a pid that is already gone yields ESRCH.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    run_ip(&format!("delete netns {real}"), &["netns", "del", real]).map(drop)
}

/// Runs `ip <args>`; on failure the error is `<step>: <ip's message>`, with
/// iproute2's "RTNETLINK answers: " stripped so the cause reads plainly.
/// Loads `r0 = XDP_PASS; exit` as a frags-aware XDP program and attaches it
/// to `iface` (calling thread's namespace) in native mode with
/// `RTM_SETLINK`/`IFLA_XDP`: a netlink attachment, which holds the program
/// once our fd is closed. No libbpf, no ELF: two instructions.
fn attach_xdp_pass(iface: &str) -> std::io::Result<()> {
    use std::{io, os::fd::FromRawFd as _};
    let last = io::Error::last_os_error;
    let name = std::ffi::CString::new(iface).map_err(io::Error::other)?;
    // SAFETY: a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    if ifindex == 0 {
        return Err(last());
    }
    // BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, ..., prog_flags.
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;
    // mov64 r0, 2 (XDP_PASS); exit
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_XDP.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[44..48].copy_from_slice(&BPF_F_XDP_HAS_FRAGS.to_ne_bytes());
    attr[48..56].copy_from_slice(b"lab_pass");
    // SAFETY: bpf(2) with an initialised attr of the size given; the
    // pointers in it (insns, license) outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: a fresh fd from the kernel, owned (closed) here.
    let prog = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };

    // RTM_SETLINK { ifinfomsg, IFLA_XDP { IFLA_XDP_FD, IFLA_XDP_FLAGS } }
    const IFLA_XDP: u16 = 43;
    const NLA_F_NESTED: u16 = 0x8000;
    const IFLA_XDP_FD: u16 = 1;
    const IFLA_XDP_FLAGS: u16 = 3;
    const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
    let mut msg = Vec::with_capacity(52);
    msg.extend_from_slice(&52u32.to_ne_bytes());
    msg.extend_from_slice(&libc::RTM_SETLINK.to_ne_bytes());
    msg.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
    msg.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    msg.extend_from_slice(&ifindex.to_ne_bytes());
    msg.extend_from_slice(&[0; 8]); // flags, change
    msg.extend_from_slice(&20u16.to_ne_bytes());
    msg.extend_from_slice(&(IFLA_XDP | NLA_F_NESTED).to_ne_bytes());
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&IFLA_XDP_FD.to_ne_bytes());
    msg.extend_from_slice(&(fd as i32).to_ne_bytes());
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&IFLA_XDP_FLAGS.to_ne_bytes());
    msg.extend_from_slice(&XDP_FLAGS_DRV_MODE.to_ne_bytes());
    debug_assert_eq!(msg.len(), 52);
    // SAFETY: plain socket(2), owned right after.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(last());
    }
    // SAFETY: a fresh fd, owned here.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid socket and buffer; the kernel is the default destination.
    if unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(last());
    }
    let mut ack = [0u8; 512];
    // SAFETY: a valid socket and buffer.
    let n = unsafe { libc::recv(sock.as_raw_fd(), ack.as_mut_ptr().cast(), ack.len(), 0) };
    if n < 20 {
        return Err(if n < 0 {
            last()
        } else {
            io::Error::other("short netlink answer")
        });
    }
    // nlmsghdr (16 bytes), then NLMSG_ERROR's error code (0: done).
    let kind = u16::from_ne_bytes([ack[4], ack[5]]);
    let code = i32::from_ne_bytes([ack[16], ack[17], ack[18], ack[19]]);
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::other(format!("netlink answered type {kind}")));
    }
    drop(prog);
    if code != 0 {
        return Err(io::Error::from_raw_os_error(-code));
    }
    Ok(())
}

fn run_ip(step: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(step, format!("cannot run ip: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let detail = stderr
            .lines()
            .map(|l| l.trim_start_matches("RTNETLINK answers: ").trim())
            .find(|l| !l.is_empty())
            .unwrap_or("failed without a message")
            .to_owned();
        return Err(fail(step, detail));
    }
    Ok(out)
}

/// Interface names are at most 15 bytes (IFNAMSIZ - 1).
fn check_ifname(step: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
        return Err(fail(
            step,
            format!("invalid interface name {name:?} (1-15 characters, no '/' or spaces)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_unique_per_lab() {
        let a = Lab::new();
        let b = Lab::new();
        assert!(a.netns_name("fw1").starts_with(PREFIX));
        assert!(a.netns_name("fw1").ends_with("-fw1"));
        assert_ne!(a.run_prefix(), b.run_prefix());
    }

    #[test]
    fn interface_names_are_checked() {
        let err = check_ifname("create veth fw1-x", "a-very-long-interface").unwrap_err();
        assert_eq!(err.step, "create veth fw1-x");
        assert!(
            err.to_string()
                .starts_with("create veth fw1-x: invalid interface name")
        );
        assert!(check_ifname("s", "lan0").is_ok());
        assert!(check_ifname("s", "").is_err());
    }
}
