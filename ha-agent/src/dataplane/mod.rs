//! The XDP data plane as seen from userspace: the embedded object, loading,
//! attaching and pinning, the control API the election and sync code use, and
//! read-only inspection for the operator CLI.
//!
//! Everything the data plane needs to keep forwarding is pinned under
//! `/sys/fs/bpf/<instance>/` (`maps/`, `progs/`, `links/<program>@<iface>`), so
//! an agent that exits or restarts interrupts nothing: [`Dataplane::open`]
//! re-opens the pins, and only `ha-agent dataplane detach` removes them.

pub mod events;
pub mod inspect;
pub mod probe;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    EbpfError, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode, links::FdLink, xdp::XdpLinkId},
};
use ha_common::{
    addr_from_octets,
    data::{self, DATA_FLAG_TRACK_FLOWS, DataConfig, MAX_GROUPS, Ownership, VipEntry, VmacKey},
    flow,
    heartbeat::{self, PROBE_COUNTERS, ProbeConfig, ProbeTerm},
    link::{self, LinkConfig, MgmtPort},
};
use tracing::{info, warn};

/// The XDP object built by `build.rs` from `ha-ebpf`, embedded so the agent binary
/// is self-contained.
pub(crate) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ha-ebpf"));

/// The embedded XDP object (an ELF file for `bpfel-unknown-none`).
pub fn object() -> &'static [u8] {
    OBJECT
}

/// The embedded object, or [`DataplaneError::NotBuilt`] for a build made with
/// `HA_AGENT_SKIP_EBPF` (the fuzz targets), which embeds none.
pub(crate) fn embedded() -> Result<&'static [u8], DataplaneError> {
    if OBJECT.is_empty() {
        return Err(DataplaneError::NotBuilt);
    }
    Ok(OBJECT)
}

/// The build of the embedded object: its SHA-256 in hex.
fn object_build() -> Result<String, DataplaneError> {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(embedded()?);
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// Where bpffs is (or gets) mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Errors of the data plane, each naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// This binary was built with `HA_AGENT_SKIP_EBPF` (for fuzzing): it
    /// embeds no XDP object.
    #[error(
        "this ha-agent was built without the XDP programs (HA_AGENT_SKIP_EBPF); rebuild without it"
    )]
    NotBuilt,
    /// The kernel refused the object (verifier, missing privileges, BTF, ...).
    #[error("loading the XDP object failed (are you root?)")]
    Load(#[source] EbpfError),
    /// The object lacks a program the agent expects: a build mismatch.
    #[error("the XDP object has no program {0}")]
    MissingProgram(&'static str),
    /// The object lacks a map the agent expects: a build mismatch.
    #[error("the XDP object has no map {0}")]
    MissingMap(&'static str),
    /// Verifying/loading one program failed.
    #[error("loading XDP program {program} failed")]
    LoadProgram {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    /// Attaching to an interface failed in both native and generic mode.
    #[error("attaching XDP program {program} to {iface} failed")]
    Attach {
        program: &'static str,
        iface: String,
        #[source]
        source: ProgramError,
    },
    /// Reading or writing a map failed.
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// Nothing is pinned for this instance.
    #[error("no data plane is pinned at {0} (attach one with `ha-agent dataplane attach`)")]
    NotPinned(PathBuf),
    /// Pinning, mounting bpffs or removing pins failed.
    #[error("{what} {path}: {source}")]
    Pin {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A value the caller passed is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// How a program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (native XDP): the fast path we want.
    Native,
    /// In the generic (SKB) path: works everywhere, costs more per packet.
    Generic,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        })
    }
}

/// Attaches a loaded program to `iface` (current network namespace): native
/// mode first, generic mode as a logged fallback.
pub(crate) fn attach_xdp(
    prog: &mut Xdp,
    program: &'static str,
    iface: &str,
) -> Result<(AttachMode, XdpLinkId), DataplaneError> {
    let attach_err = |source| DataplaneError::Attach {
        program,
        iface: iface.to_owned(),
        source,
    };
    match prog.attach(iface, XdpMode::Driver) {
        Ok(id) => {
            info!(program, iface, mode = "native", "XDP program attached");
            Ok((AttachMode::Native, id))
        }
        Err(err @ ProgramError::UnknownInterface { .. }) => Err(attach_err(err)),
        Err(native_err) => {
            warn!(program, iface, cause = %native_err,
                "native XDP attach failed; falling back to generic mode (slower)");
            let id = prog.attach(iface, XdpMode::Skb).map_err(attach_err)?;
            info!(program, iface, mode = "generic", "XDP program attached");
            Ok((AttachMode::Generic, id))
        }
    }
}

/// CLOCK_MONOTONIC in ns: the clock the XDP programs read (`bpf_ktime_get_coarse_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Mounts bpffs at [`BPFFS`] unless a bpffs is already there (as bpftool does).
pub fn ensure_bpffs() -> Result<(), DataplaneError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = std::ffi::CString::new(BPFFS).expect("no NUL in a constant");
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fstype = std::ffi::CString::new("bpf").expect("no NUL in a constant");
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DataplaneError::Pin {
            what: "mount bpffs at",
            path: BPFFS.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    info!(path = BPFFS, "mounted bpffs");
    Ok(())
}

/// The pin directory of an instance.
pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new(BPFFS).join(instance)
}

fn pin_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DataplaneError + 'a {
    move |source| DataplaneError::Pin {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Opens a pinned map as a typed handle.
pub(crate) fn open_map<T>(dir: &Path, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = dir.join("maps").join(name);
    if !path.exists() {
        return Err(DataplaneError::NotPinned(dir.to_owned()));
    }
    let map_err = |source| DataplaneError::Map { map: name, source };
    let data = MapData::from_pin(&path).map_err(map_err)?;
    T::try_from(Map::from_map_data(data).map_err(map_err)?).map_err(map_err)
}

/// The maps every XDP program of the object uses, pinned under `maps/`.
const PINNED_MAPS: &[&str] = &[
    link::CONFIG_MAP,
    link::PEERS_MAP,
    link::VRIDS_MAP,
    link::MGMT_MAP,
    link::ADVERTS_MAP,
    link::VERDICTS_MAP,
    data::VIPS_MAP,
    data::VIPS6_MAP,
    data::VMACS_MAP,
    data::OWNERSHIP_MAP,
    data::CONFIG_MAP,
    data::VERDICTS_MAP,
    flow::FLOWS_MAP,
    flow::FLOWS6_MAP,
    flow::EVENTS_MAP,
    heartbeat::CONFIG_MAP,
    heartbeat::TERM_MAP,
    heartbeat::MACS_MAP,
    heartbeat::COUNTERS_MAP,
];

/// Load-time options (they cannot change without reloading the programs).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Enable debug logging from the XDP programs (aya-log; costs per packet).
    pub xdp_debug: bool,
    /// The XDP flow table's size (`HA_FLOWS`); `None`: the namespace's
    /// `nf_conntrack_max` (the kernel table it mirrors), else
    /// [`flow::MAX_FLOWS`].
    pub max_flows: Option<u32>,
}

/// Bounds of the XDP flow table's size.
pub const MAX_FLOWS_MIN: u32 = 1024;
pub const MAX_FLOWS_MAX: u32 = 16 << 20;

/// The flow table size to load: `configured`, or the namespace's
/// `nf_conntrack_max` (read from `conntrack_max`, its text), clamped to the
/// bounds, or [`flow::MAX_FLOWS`].
pub fn flow_table_size(configured: Option<u32>, conntrack_max: Option<&str>) -> u32 {
    configured
        .or_else(|| conntrack_max.and_then(|t| t.trim().parse().ok()))
        .unwrap_or(flow::MAX_FLOWS)
        .clamp(MAX_FLOWS_MIN, MAX_FLOWS_MAX)
}

/// The XDP flow table as loaded: its size and the kernel memory it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowTableInfo {
    pub max_flows: u32,
    /// The `memlock` of the IPv4 and the IPv6 table together (from their
    /// fdinfo): what the kernel charges. Each holds `max_flows`.
    pub memlock_bytes: u64,
}

impl FlowTableInfo {
    /// Of the tables pinned in `dir` (`HA_FLOWS`; `HA_FLOWS6` if pinned).
    fn of_pin(dir: &Path) -> Result<FlowTableInfo, DataplaneError> {
        let memlock = |info: &aya::maps::MapInfo| {
            info.fd()
                .ok()
                .and_then(|fd| {
                    use std::os::fd::{AsFd as _, AsRawFd as _};
                    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))
                        .ok()
                })
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("memlock:"))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                })
                .unwrap_or(0)
        };
        let path = dir.join("maps").join(flow::FLOWS_MAP);
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|source| DataplaneError::Map {
            map: flow::FLOWS_MAP,
            source,
        })?;
        let v6 = aya::maps::MapInfo::from_pin(dir.join("maps").join(flow::FLOWS6_MAP))
            .map_or(0, |i| memlock(&i));
        Ok(FlowTableInfo {
            max_flows: info.max_entries(),
            memlock_bytes: memlock(&info) + v6,
        })
    }

    /// Kernel memory per flow of `max_flows` (both families' tables).
    pub fn bytes_per_flow(&self) -> f64 {
        self.memlock_bytes as f64 / f64::from(self.max_flows.max(1))
    }
}

/// Flow-tracking settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSettings {
    /// Emit events at all.
    pub track: bool,
    /// Re-emit an active flow this long after its last event.
    pub refresh: Duration,
    /// Wake the agent once this many bytes of events wait; below, it drains on
    /// its own timer.
    pub wakeup_bytes: u64,
    /// Emit an event for every packet of a tracked flow: only for measuring
    /// the ring buffer (`cargo xtask bench`), never in service.
    pub emit_every_packet: bool,
}

impl Default for FlowSettings {
    fn default() -> Self {
        FlowSettings {
            track: true,
            // conntrack's shortest established-UDP timeout is 120 s; a refresh
            // every 10 s keeps the peer's entry alive with a wide margin.
            refresh: Duration::from_secs(10),
            // 1/16 of the ring: a burst wakes the agent early; at low rates the
            // drain timer keeps lag at a millisecond.
            wakeup_bytes: u64::from(flow::EVENTS_BYTES / 16),
            emit_every_packet: false,
        }
    }
}

/// The port `ha-agent cluster` verbs join a waiting node on (and the default
/// control port): replies from it pass `ha_link` to connections we opened.
pub const DEFAULT_JOIN_PORT: u16 = 7789;

/// HA-link filter settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSettings {
    /// This node's address on the HA link. Everything but VRRP and ARP must be
    /// addressed to it; `0.0.0.0` passes nothing else (fail closed).
    pub address: Ipv4Addr,
    /// Peers allowed to send VRRP and sync frames.
    pub peers: Vec<Ipv4Addr>,
    /// VRIDs this node runs.
    pub vrids: Vec<u8>,
    /// UDP port of sync frames (0: none).
    pub sync_port: u16,
    /// Management services reachable over the HA link: (IP protocol, port).
    pub mgmt: Vec<(u8, u16)>,
    /// TCP port of the cluster control channel (0: none): peers may connect
    /// to it, and replies from a peer's port reach connections we opened.
    pub control_port: u16,
    /// TCP port of the join listener, handled as the control port (0: none).
    pub join_port: u16,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            address: Ipv4Addr::UNSPECIFIED,
            peers: Vec::new(),
            vrids: Vec::new(),
            sync_port: 0,
            mgmt: Vec::new(),
            control_port: 0,
            join_port: 0,
        }
    }
}

/// One VIP of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipSpec {
    /// An IPv4 VIP goes to `HA_DATA_VIPS`, an IPv6 one to `HA_DATA_VIPS6`.
    pub addr: IpAddr,
    /// Ownership group, 0..63.
    pub group: u32,
    /// RFC 9568 Accept_Mode: the owner accepts packets addressed to the VIP.
    pub accept: bool,
    /// The VRID whose virtual MAC answers for the VIP (`vmac = true`).
    /// IPv4 only: the gate does not answer Neighbor Solicitations with the
    /// IPv6 virtual MAC, so an IPv6 VIP with one is refused.
    pub vmac: Option<u8>,
    /// The interface the VIP is on (0: unknown; then no virtual MAC is
    /// answered or taken for it).
    pub ifindex: u32,
}

/// Control handle on a pinned data plane.
pub struct Dataplane {
    /// `/sys/fs/bpf/<instance>`: where everything is pinned.
    dir: PathBuf,
    /// The one word that decides ownership (and its lease).
    ownership: Array<MapData, Ownership>,
    /// IPv4 VIP -> ownership group.
    vips: HashMap<MapData, u32, VipEntry>,
    /// IPv6 VIP (its 16 bytes) -> ownership group.
    vips6: HashMap<MapData, [u8; 16], VipEntry>,
    /// (interface, VRID) -> ownership group of a virtual MAC.
    vmacs: HashMap<MapData, VmacKey, u32>,
    /// Flow-tracking settings of `ha_data`.
    data_config: Array<MapData, DataConfig>,
    /// Sync port of `ha_link`.
    link_config: Array<MapData, LinkConfig>,
    /// Peer allow-list of `ha_link`.
    peers: HashMap<MapData, u32, u32>,
    /// Configured VRIDs of `ha_link`.
    vrids: Array<MapData, u32>,
    /// Management allow-list of `ha_link`.
    mgmt: HashMap<MapData, MgmtPort, u32>,
    /// Whether and for whom the heartbeat reflector answers.
    probe_config: Array<MapData, ProbeConfig>,
    /// The ownership term the reflector reports, and its proof.
    probe_term: Array<MapData, ProbeTerm>,
}

/// A pinned XDP program opened for `BPF_PROG_TEST_RUN` (tests and
/// benchmarks: it goes through the real maps, so it counts and tracks).
pub struct TestProgram {
    prog: Xdp,
    program: &'static str,
}

impl TestProgram {
    /// Runs `frame` through the program `repeat` times; returns the XDP
    /// verdict and the mean time per run.
    pub fn run(&self, frame: &[u8], repeat: u32) -> Result<(u32, Duration), DataplaneError> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::new()
            })
            .map_err(|source| DataplaneError::LoadProgram {
                program: self.program,
                source,
            })?;
        Ok((result.return_value, result.duration))
    }
}

impl fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataplane")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Opens the data plane pinned for `instance`, loading and pinning the
    /// programs and maps first if nothing is pinned yet. An existing pin set is
    /// reused as it is (maps keep their contents, attached programs keep running).
    pub fn create_or_open(instance: &str, opts: LoadOptions) -> Result<Self, DataplaneError> {
        ensure_bpffs()?;
        let dir = pin_dir(instance);
        // `progs/ha_data` is pinned last: without it, a load was interrupted
        // and whatever it left is removed before loading again.
        let stamp_file = crate::paths::object_stamp(instance);
        let build = object_build()?;
        let pinned_build = std::fs::read_to_string(&stamp_file).ok();
        if dir.join("progs").join(data::PROGRAM).exists()
            && pinned_build.as_deref().map(str::trim) == Some(build.as_str())
        {
            info!(dir = %dir.display(), "re-opening the pinned data plane");
            if let (Some(want), Ok(have)) = (opts.max_flows, FlowTableInfo::of_pin(&dir))
                && have.max_flows != flow_table_size(Some(want), None)
            {
                warn!(
                    configured = want,
                    pinned = have.max_flows,
                    "max_flows differs from the pinned XDP flow table's size: it takes effect when the data plane is loaded again (`ha-agent detach`, then start; the node must own nothing then)"
                );
            }
        } else {
            if dir.join("progs").join(data::PROGRAM).exists() {
                // Another build's programs and maps (an upgrade): their
                // layout may differ, so they are replaced. What they owned
                // is lost: a master hands over first (`maintenance on`).
                warn!(dir = %dir.display(), "the pinned data plane is from another build of ha-agent: replacing it (ownership starts empty)");
                Self::detach_all(instance)?;
            } else if dir.exists() {
                warn!(dir = %dir.display(), "removing an incomplete data plane left by an interrupted load");
                Self::detach_all(instance)?;
            }
            Self::load_and_pin(&dir, opts)?;
            if let Some(parent) = stamp_file.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            if let Err(e) = crate::paths::write_atomically(&stamp_file, build.as_bytes(), 0o644) {
                warn!(cause = %e, file = %stamp_file.display(), "cannot record the data plane's build: the next start replaces it");
            }
        }
        Self::open_dir(dir)
    }

    /// Opens the data plane pinned for `instance`; fails if nothing is pinned.
    pub fn open(instance: &str) -> Result<Self, DataplaneError> {
        Self::open_dir(pin_dir(instance))
    }

    fn open_dir(dir: PathBuf) -> Result<Self, DataplaneError> {
        Ok(Dataplane {
            ownership: open_map(&dir, data::OWNERSHIP_MAP)?,
            vips: open_map(&dir, data::VIPS_MAP)?,
            vips6: open_map(&dir, data::VIPS6_MAP)?,
            vmacs: open_map(&dir, data::VMACS_MAP)?,
            data_config: open_map(&dir, data::CONFIG_MAP)?,
            link_config: open_map(&dir, link::CONFIG_MAP)?,
            peers: open_map(&dir, link::PEERS_MAP)?,
            vrids: open_map(&dir, link::VRIDS_MAP)?,
            mgmt: open_map(&dir, link::MGMT_MAP)?,
            probe_config: open_map(&dir, heartbeat::CONFIG_MAP)?,
            probe_term: open_map(&dir, heartbeat::TERM_MAP)?,
            dir,
        })
    }

    /// Loads the embedded object (verifying both programs) and pins programs and
    /// maps under `dir`. Ownership starts empty: a fresh node owns nothing.
    fn load_and_pin(dir: &Path, opts: LoadOptions) -> Result<(), DataplaneError> {
        // aya-log's level byte: 0 = off, 4 = debug.
        let level: u8 = if opts.xdp_debug { 4 } else { 0 };
        let max_flows = flow_table_size(
            opts.max_flows,
            std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
                .ok()
                .as_deref(),
        );
        let mut ebpf = EbpfLoader::new()
            .override_global("AYA_LOG_LEVEL", &level, true)
            .map_max_entries(flow::FLOWS_MAP, max_flows)
            .map_max_entries(flow::FLOWS6_MAP, max_flows)
            .load(embedded()?)
            .map_err(DataplaneError::Load)?;
        info!(max_flows, "XDP flow table sized");
        // Configure before anything is pinned, then pin maps, then programs,
        // `ha_data` last: its pin marks a complete load.
        let mut config: Array<_, DataConfig> = Array::try_from(
            ebpf.map_mut(data::CONFIG_MAP)
                .ok_or(DataplaneError::MissingMap(data::CONFIG_MAP))?,
        )
        .map_err(|source| DataplaneError::Map {
            map: data::CONFIG_MAP,
            source,
        })?;
        config
            .set(0, data_config(&FlowSettings::default()), 0)
            .map_err(|source| DataplaneError::Map {
                map: data::CONFIG_MAP,
                source,
            })?;
        for sub in ["maps", "progs", "links"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(pin_err("create pin directory", &path))?;
        }
        for &name in PINNED_MAPS {
            let path = dir.join("maps").join(name);
            ebpf.map(name)
                .ok_or(DataplaneError::MissingMap(name))?
                .pin(&path)
                .map_err(|e| DataplaneError::Pin {
                    what: "pin map",
                    path: path.clone(),
                    source: std::io::Error::other(e),
                })?;
        }
        for program in [link::PROGRAM, data::PROGRAM] {
            let prog: &mut Xdp = ebpf
                .program_mut(program)
                .ok_or(DataplaneError::MissingProgram(program))?
                .try_into()
                .map_err(|source| DataplaneError::LoadProgram { program, source })?;
            prog.load()
                .map_err(|source| DataplaneError::LoadProgram { program, source })?;
            let path = dir.join("progs").join(program);
            prog.pin(&path).map_err(|e| DataplaneError::Pin {
                what: "pin program",
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
        }
        info!(dir = %dir.display(), xdp_debug = opts.xdp_debug, "XDP programs loaded and pinned");
        Ok(())
    }

    /// The pin directory.
    /// The XDP flow table's size and memory, if it can be read.
    pub fn flow_table(&self) -> Option<FlowTableInfo> {
        FlowTableInfo::of_pin(&self.dir).ok()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Attaches `ha_link` to the HA interface (no-op if already attached).
    /// Either way, records the interface's MAC for the heartbeat reflector.
    pub fn attach_link(&self, iface: &str) -> Result<Option<AttachMode>, DataplaneError> {
        self.attach(link::PROGRAM, iface)
    }

    /// Attaches `ha_data` to a data interface (no-op if already attached).
    /// Either way, records the interface's MAC for the heartbeat reflector.
    /// With `vmac` (the interface carries a virtual-MAC VIP), a veth gets
    /// the program in generic mode: veth's native XDP runs on a packet the
    /// kernel has already classed as another host's (its destination is not
    /// the veth's MAC), and readdressing it to the interface's MAC cannot
    /// undo that; generic XDP classes it again. Drivers that build the
    /// packet after XDP (NICs) and generic mode (bridges, bonds) need
    /// nothing.
    pub fn attach_data(
        &self,
        iface: &str,
        vmac: bool,
    ) -> Result<Option<AttachMode>, DataplaneError> {
        let generic = vmac && crate::iface::is_veth(iface);
        if generic {
            info!(
                iface,
                "a virtual MAC on a veth: ha_data attaches in generic mode (veth's native XDP cannot take frames to another MAC as its own)"
            );
        }
        self.attach_as(data::PROGRAM, iface, Some(generic))
    }

    /// [`Self::attach_data`] by hand (`ha-agent dataplane attach`, no
    /// configuration): an attachment in either mode is kept as it is.
    pub fn attach_data_by_hand(&self, iface: &str) -> Result<Option<AttachMode>, DataplaneError> {
        self.attach_as(data::PROGRAM, iface, None)
    }

    /// Records `iface`'s MAC under its index in the reflector's MAC map (the
    /// source of its replies on that interface).
    fn set_probe_mac(
        &self,
        program: &'static str,
        iface: &str,
        ifindex: u32,
    ) -> Result<(), DataplaneError> {
        let mac = crate::iface::if_mac(iface).map_err(|e| DataplaneError::Attach {
            program,
            iface: iface.to_owned(),
            source: ProgramError::IOError(e),
        })?;
        let map = heartbeat::MACS_MAP;
        let mut macs: HashMap<MapData, u32, [u8; 8]> = open_map(&self.dir, map)?;
        let mut value = [0u8; 8];
        value[..6].copy_from_slice(&mac);
        if macs.insert(ifindex, value, 0).is_err() {
            // Full: interfaces deleted since (a re-created interface gets a
            // new index) leave their entries; drop those and try again.
            let gone: Vec<u32> = macs
                .keys()
                .filter_map(Result::ok)
                .filter(|&i| !iface_exists(i))
                .collect();
            for i in gone {
                let _ = macs.remove(&i);
            }
            macs.insert(ifindex, value, 0)
                .map_err(|source| DataplaneError::Map { map, source })?;
        }
        Ok(())
    }

    /// The MAC the reflector answers from on interface `ifindex`, if any.
    pub fn probe_mac(&self, ifindex: u32) -> Result<Option<[u8; 6]>, DataplaneError> {
        let map = heartbeat::MACS_MAP;
        let macs: HashMap<MapData, u32, [u8; 8]> = open_map(&self.dir, map)?;
        match macs.get(&ifindex, 0) {
            Ok(v) => Ok(Some([v[0], v[1], v[2], v[3], v[4], v[5]])),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataplaneError::Map { map, source }),
        }
    }

    /// Sets whether the heartbeat reflector answers probes, and for whom:
    /// probes `from` `peer` `to` `local` (this node's HA address; 0.0.0.0
    /// answers nothing), and replies `from` `local` `to` `peer` pass up to
    /// the prober's socket.
    pub fn set_probe_config(
        &mut self,
        local: Ipv4Addr,
        peer: Ipv4Addr,
        enabled: bool,
    ) -> Result<(), DataplaneError> {
        let cfg = ProbeConfig {
            enabled: u32::from(enabled),
            local_addr: addr_from_octets(local.octets()),
            peer_addr: addr_from_octets(peer.octets()),
            _pad: 0,
        };
        self.probe_config
            .set(0, cfg, 0)
            .map_err(|source| DataplaneError::Map {
                map: heartbeat::CONFIG_MAP,
                source,
            })
    }

    /// The reflector's configuration as the XDP programs see it.
    pub fn probe_config(&self) -> Result<ProbeConfig, DataplaneError> {
        self.probe_config
            .get(&0, 0)
            .map_err(|source| DataplaneError::Map {
                map: heartbeat::CONFIG_MAP,
                source,
            })
    }

    /// Sets the ownership term the reflector reports and the proof it
    /// reveals once the term has ended in the data plane. Write it after
    /// the ownership word (the reflector reads it before).
    pub fn set_probe_term(&mut self, term: u64, proof: [u8; 16]) -> Result<(), DataplaneError> {
        self.probe_term
            .set(0, ProbeTerm { term, proof }, 0)
            .map_err(|source| DataplaneError::Map {
                map: heartbeat::TERM_MAP,
                source,
            })
    }

    /// The term the reflector reports (pinned: it survives an agent restart).
    pub fn probe_term(&self) -> Result<ProbeTerm, DataplaneError> {
        self.probe_term
            .get(&0, 0)
            .map_err(|source| DataplaneError::Map {
                map: heartbeat::TERM_MAP,
                source,
            })
    }

    /// The reflector's counters (`ProbeCounter` order), summed over CPUs.
    pub fn probe_counters(&self) -> Result<[u64; PROBE_COUNTERS as usize], DataplaneError> {
        let map = heartbeat::COUNTERS_MAP;
        let arr: PerCpuArray<MapData, u64> = open_map(&self.dir, map)?;
        let mut out = [0u64; PROBE_COUNTERS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = arr
                .get(&(i as u32), 0)
                .map_err(|source| DataplaneError::Map { map, source })?
                .iter()
                .sum();
        }
        Ok(out)
    }

    /// Attaches the pinned `program` to `iface` and pins the link, so it stays
    /// attached after we exit. Returns `None` when a link is already pinned.
    fn attach(
        &self,
        program: &'static str,
        iface: &str,
    ) -> Result<Option<AttachMode>, DataplaneError> {
        self.attach_as(program, iface, Some(false))
    }

    /// [`Self::attach`], in generic mode if `generic` (its pinned link's
    /// name says so: a link of the other mode is replaced).
    fn attach_as(
        &self,
        program: &'static str,
        iface: &str,
        generic: Option<bool>,
    ) -> Result<Option<AttachMode>, DataplaneError> {
        // The pin name carries the interface index: a link to an interface
        // that was deleted and re-created (new index) is stale, not "attached".
        let ifindex = crate::iface::if_index(iface).map_err(|e| DataplaneError::Attach {
            program,
            iface: iface.to_owned(),
            source: ProgramError::IOError(e),
        })?;
        let link = |g: bool| {
            self.dir.join("links").join(format!(
                "{program}@{iface}@{ifindex}{}",
                if g { "@generic" } else { "" }
            ))
        };
        // Also when already attached: a restarted agent re-records it.
        self.set_probe_mac(program, iface, ifindex as u32)?;
        // No mode asked for (by hand): whatever is attached stays.
        if generic.is_none() && (link(false).exists() || link(true).exists()) {
            return Ok(None);
        }
        let generic = generic.unwrap_or(false);
        let link_path = link(generic);
        if link_path.exists() {
            return Ok(None);
        }
        self.detach_iface(program, iface)?;
        let prog_path = self.dir.join("progs").join(program);
        let mut prog = Xdp::from_pin(&prog_path, aya_obj::programs::XdpAttachType::Interface)
            .map_err(|source| DataplaneError::LoadProgram { program, source })?;
        let (mode, id) = if generic {
            let id = prog
                .attach(iface, XdpMode::Skb)
                .map_err(|source| DataplaneError::Attach {
                    program,
                    iface: iface.to_owned(),
                    source,
                })?;
            info!(program, iface, mode = "generic", "XDP program attached");
            (AttachMode::Generic, id)
        } else {
            attach_xdp(&mut prog, program, iface)?
        };
        let link = prog
            .take_link(id)
            .map_err(|source| DataplaneError::Attach {
                program,
                iface: iface.to_owned(),
                source,
            })?;
        let link = FdLink::try_from(link).map_err(|e| DataplaneError::Attach {
            program,
            iface: iface.to_owned(),
            source: ProgramError::IOError(std::io::Error::other(format!(
                "the kernel attached without a bpf_link, which cannot be pinned: {e}"
            ))),
        })?;
        link.pin(&link_path).map_err(|e| DataplaneError::Pin {
            what: "pin link",
            path: link_path.clone(),
            source: std::io::Error::other(e),
        })?;
        Ok(Some(mode))
    }

    /// Runs the pinned `program` on `frame` with `BPF_PROG_TEST_RUN`, `repeat`
    /// times; returns the XDP verdict and the mean time per run. For tests and
    /// benchmarks: it goes through the real maps, so it counts and tracks.
    pub fn test_run(
        &self,
        program: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Duration), DataplaneError> {
        self.test_program(program)?.run(frame, repeat)
    }

    /// The pinned `program`, opened once to run many frames through it
    /// ([`TestProgram::run`]): a benchmark's synthetic traffic.
    pub fn test_program(&self, program: &'static str) -> Result<TestProgram, DataplaneError> {
        let prog = Xdp::from_pin(
            self.dir.join("progs").join(program),
            aya_obj::programs::XdpAttachType::Interface,
        )
        .map_err(|source| DataplaneError::LoadProgram { program, source })?;
        Ok(TestProgram { prog, program })
    }

    /// Runs the pinned `program` once on `frame` with `BPF_PROG_TEST_RUN` and
    /// returns the XDP verdict and the frame as the program left it (what an
    /// `XDP_TX` would send). For tests; the ingress interface is the
    /// caller's namespace's loopback.
    pub fn test_run_frame(
        &self,
        program: &'static str,
        frame: &[u8],
    ) -> Result<(u32, Vec<u8>), DataplaneError> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let prog = Xdp::from_pin(
            self.dir.join("progs").join(program),
            aya_obj::programs::XdpAttachType::Interface,
        )
        .map_err(|source| DataplaneError::LoadProgram { program, source })?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })
            .map_err(|source| DataplaneError::LoadProgram { program, source })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Detaches `program` from `iface` by removing its pinned link.
    pub fn detach_iface(&self, program: &'static str, iface: &str) -> Result<bool, DataplaneError> {
        let prefix = format!("{program}@{iface}@");
        let mut removed = false;
        let links = self.dir.join("links");
        for entry in std::fs::read_dir(&links)
            .map_err(pin_err("read", &links))?
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                std::fs::remove_file(entry.path())
                    .map_err(pin_err("remove pinned link", &entry.path()))?;
                removed = true;
            }
        }
        Ok(removed)
    }

    /// Replaces the VIP table with `(VIP, group)` pairs, Accept_Mode on for
    /// all (see [`Dataplane::set_vip_table`]).
    pub fn set_vips(&mut self, vips: &[(Ipv4Addr, u32)]) -> Result<(), DataplaneError> {
        let specs: Vec<VipSpec> = vips
            .iter()
            .map(|&(addr, group)| VipSpec {
                addr: addr.into(),
                group,
                accept: true,
                vmac: None,
                ifindex: 0,
            })
            .collect();
        self.set_vip_table(&specs)
    }

    /// Replaces the VIP tables (IPv4 and IPv6): adds what is new, updates
    /// what changed, removes what is gone. Ownership is untouched.
    pub fn set_vip_table(&mut self, vips: &[VipSpec]) -> Result<(), DataplaneError> {
        let mut want = std::collections::HashMap::new();
        let mut want6 = std::collections::HashMap::new();
        let mut vmacs = std::collections::HashMap::<VmacKey, u32>::new();
        for &VipSpec {
            addr,
            group,
            accept,
            vmac,
            ifindex,
        } in vips
        {
            if group >= MAX_GROUPS {
                return Err(DataplaneError::Invalid(format!(
                    "VIP {addr}: group {group} out of range 0..{MAX_GROUPS}"
                )));
            }
            let mut flags = if accept { 0 } else { data::VIP_FLAG_NO_ACCEPT };
            if let Some(vrid) = vmac {
                // The IPv6 virtual MAC (00:00:5e:00:02:<vrid>) is another.
                let family = if addr.is_ipv6() { data::VMAC_KEY_V6 } else { 0 };
                let key = VmacKey {
                    ifindex,
                    vrid: u32::from(vrid) | family,
                };
                if *vmacs.entry(key).or_insert(group) != group {
                    return Err(DataplaneError::Invalid(format!(
                        "VIP {addr}: the virtual MAC of VRID {vrid} is in two groups"
                    )));
                }
                flags |= data::VIP_FLAG_VMAC | u32::from(vrid) << data::VIP_VRID_SHIFT;
            }
            let entry = VipEntry {
                group,
                flags,
                ifindex,
            };
            match addr {
                IpAddr::V4(a) => want.insert(addr_from_octets(a.octets()), entry),
                IpAddr::V6(a) => want6.insert(a.octets(), entry),
            };
        }
        for (n, family) in [(want.len(), "IPv4"), (want6.len(), "IPv6")] {
            if n > data::MAX_VIPS as usize {
                return Err(DataplaneError::Invalid(format!(
                    "{n} {family} VIPs: at most {} fit the VIP table",
                    data::MAX_VIPS
                )));
            }
        }
        if vmacs.len() > data::MAX_VMACS as usize {
            return Err(DataplaneError::Invalid(format!(
                "{} virtual MACs on interfaces: at most {} fit",
                vmacs.len(),
                data::MAX_VMACS
            )));
        }
        let vmap = data::VMACS_MAP;
        let vmap_err = |source| DataplaneError::Map { map: vmap, source };
        // Virtual MACs taken first (a VIP naming one is answered only once
        // its frames are let in), given up last (after the VIPs naming them).
        for (key, group) in &vmacs {
            self.vmacs.insert(key, group, 0).map_err(vmap_err)?;
        }
        replace_entries(&mut self.vips, &want).map_err(|source| DataplaneError::Map {
            map: data::VIPS_MAP,
            source,
        })?;
        replace_entries(&mut self.vips6, &want6).map_err(|source| DataplaneError::Map {
            map: data::VIPS6_MAP,
            source,
        })?;
        let gone: Vec<VmacKey> = self
            .vmacs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !vmacs.contains_key(k))
            .collect();
        for key in gone {
            self.vmacs.remove(&key).map_err(vmap_err)?;
        }
        Ok(())
    }

    /// Sets which groups this node owns, with a lease: **one map write** that
    /// flips every VIP of every group at once. `lease = None` never lapses.
    pub fn set_ownership(
        &mut self,
        groups: u64,
        lease: Option<Duration>,
    ) -> Result<(), DataplaneError> {
        let lease_expires_ns = match lease {
            Some(lease) => monotonic_ns().saturating_add(lease.as_nanos() as u64),
            None => u64::MAX,
        };
        self.ownership
            .set(
                0,
                Ownership {
                    groups,
                    lease_expires_ns,
                },
                0,
            )
            .map_err(|source| DataplaneError::Map {
                map: data::OWNERSHIP_MAP,
                source,
            })
    }

    /// Extends the lease of the current ownership (one map write). A lease that
    /// has already lapsed is not revived: the peer may own the VIPs by now, so
    /// ownership must be won again (`set_ownership`). Returns whether it was
    /// renewed.
    pub fn renew_lease(&mut self, lease: Duration) -> Result<bool, DataplaneError> {
        let current = self.ownership()?;
        self.renew_ownership(current.groups, lease)
    }

    /// Extends the lease of what this node still owns, `groups` (which the
    /// word may name more of, after a write that failed): one map write, and
    /// only if the current lease still runs, so a lapsed lease is never
    /// revived, nor a group given up. Returns whether it was renewed.
    pub fn renew_ownership(
        &mut self,
        groups: u64,
        lease: Duration,
    ) -> Result<bool, DataplaneError> {
        let current = self.ownership()?;
        if current.lease_expires_ns <= monotonic_ns() {
            return Ok(false);
        }
        self.set_ownership(groups, Some(lease))?;
        Ok(true)
    }

    /// The ownership word as the XDP programs see it.
    pub fn ownership(&self) -> Result<Ownership, DataplaneError> {
        self.ownership
            .get(&0, 0)
            .map_err(|source| DataplaneError::Map {
                map: data::OWNERSHIP_MAP,
                source,
            })
    }

    /// Sets the flow-tracking settings.
    pub fn set_flow_settings(&mut self, settings: &FlowSettings) -> Result<(), DataplaneError> {
        self.data_config
            .set(0, data_config(settings), 0)
            .map_err(|source| DataplaneError::Map {
                map: data::CONFIG_MAP,
                source,
            })
    }

    /// Replaces the HA-link filter settings.
    pub fn set_link_settings(&mut self, s: &LinkSettings) -> Result<(), DataplaneError> {
        let cfg_err = |map| move |source| DataplaneError::Map { map, source };
        if s.peers.len() > link::MAX_PEERS as usize || s.mgmt.len() > link::MAX_MGMT as usize {
            return Err(DataplaneError::Invalid(format!(
                "at most {} peers and {} management entries",
                link::MAX_PEERS,
                link::MAX_MGMT
            )));
        }
        self.link_config
            .set(
                0,
                LinkConfig {
                    sync_port: s.sync_port,
                    control_port: s.control_port,
                    join_port: s.join_port,
                    _pad: 0,
                    local_addr: addr_from_octets(s.address.octets()),
                    _pad2: 0,
                },
                0,
            )
            .map_err(cfg_err(link::CONFIG_MAP))?;
        let peers: Vec<u32> = s
            .peers
            .iter()
            .map(|a| addr_from_octets(a.octets()))
            .collect();
        replace_keys(&mut self.peers, peers.iter().map(|&k| (k, 1u32)))
            .map_err(cfg_err(link::PEERS_MAP))?;
        let mgmt: Vec<MgmtPort> = s
            .mgmt
            .iter()
            .map(|&(proto, port)| MgmtPort {
                proto,
                _pad: 0,
                port,
            })
            .collect();
        replace_keys(&mut self.mgmt, mgmt.iter().map(|&k| (k, 1u32)))
            .map_err(cfg_err(link::MGMT_MAP))?;
        for vrid in 0..=255u8 {
            let on = u32::from(s.vrids.contains(&vrid));
            self.vrids
                .set(u32::from(vrid), on, 0)
                .map_err(cfg_err(link::VRIDS_MAP))?;
        }
        Ok(())
    }

    /// Detaches every program and removes every pin of `instance` (and the
    /// record of its build).
    pub fn detach_all(instance: &str) -> Result<bool, DataplaneError> {
        let dir = pin_dir(instance);
        let _ = std::fs::remove_file(crate::paths::object_stamp(instance));
        if !dir.exists() {
            return Ok(false);
        }
        // Links first (detaches the programs from the interfaces), then the rest.
        for sub in ["links", "progs", "maps"] {
            let path = dir.join(sub);
            if let Ok(entries) = std::fs::read_dir(&path) {
                for entry in entries.flatten() {
                    std::fs::remove_file(entry.path())
                        .map_err(pin_err("remove pin", &entry.path()))?;
                }
            }
            let _ = std::fs::remove_dir(&path);
        }
        std::fs::remove_dir(&dir).map_err(pin_err("remove pin directory", &dir))?;
        Ok(true)
    }
}

/// Forwards the XDP programs' aya-log records (debug level, only when loaded
/// with [`LoadOptions::xdp_debug`]) to the `log`/`tracing` output, until an
/// error. Reads the pinned programs' log ring buffer, so it needs no agent.
pub async fn xdp_logs(instance: &str) -> Result<(), DataplaneError> {
    let program = data::PROGRAM;
    let path = pin_dir(instance).join("progs").join(program);
    if !path.exists() {
        return Err(DataplaneError::NotPinned(pin_dir(instance)));
    }
    let prog = Xdp::from_pin(&path, aya_obj::programs::XdpAttachType::Interface)
        .map_err(|source| DataplaneError::LoadProgram { program, source })?;
    let id = prog
        .info()
        .map_err(|source| DataplaneError::LoadProgram { program, source })?
        .id();
    let logger = aya_log::EbpfLogger::init_from_id(id).map_err(|e| DataplaneError::Pin {
        what: "open the XDP log ring buffer of",
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    // SAFETY: the logger owns the ring buffer fd for as long as the AsyncFd lives.
    let mut logger = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(|e| DataplaneError::Pin {
        what: "register XDP log ring buffer",
        path,
        source: e.into(),
    })?;
    loop {
        logger.get_mut().flush();
        tokio::select! {
            guard = logger.readable_mut() => {
                if let Ok(mut g) = guard { g.clear_ready() }
            }
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

fn data_config(s: &FlowSettings) -> DataConfig {
    DataConfig {
        refresh_ns: s.refresh.as_nanos() as u64,
        wakeup_bytes: s.wakeup_bytes,
        flags: if s.track { DATA_FLAG_TRACK_FLOWS } else { 0 }
            | if s.emit_every_packet {
                data::DATA_FLAG_EMIT_EVERY_PACKET
            } else {
                0
            },
        _pad: 0,
    }
}

/// Whether an interface with index `ifindex` exists in the current namespace.
fn iface_exists(ifindex: u32) -> bool {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: a buffer of IF_NAMESIZE bytes, as the call requires.
    !unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null()
}

/// Makes `map` exactly `want`: stale keys removed first (so replacing a
/// full table never overflows it), then every wanted entry written.
fn replace_entries<K, V>(
    map: &mut HashMap<MapData, K, V>,
    want: &std::collections::HashMap<K, V>,
) -> Result<(), MapError>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.contains_key(k))
        .collect();
    for k in stale {
        map.remove(&k)?;
    }
    for (k, v) in want {
        map.insert(k, v, 0)?;
    }
    Ok(())
}

/// Makes `map`'s keys exactly `want`.
fn replace_keys<K, V>(
    map: &mut HashMap<MapData, K, V>,
    want: impl Iterator<Item = (K, V)>,
) -> Result<(), MapError>
where
    K: aya::Pod + PartialEq,
    V: aya::Pod,
{
    let want: Vec<(K, V)> = want.collect();
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !want.iter().any(|(w, _)| w == k))
        .collect();
    for k in stale {
        map.remove(&k)?;
    }
    for (k, v) in &want {
        map.insert(k, v, 0)?;
    }
    Ok(())
}
