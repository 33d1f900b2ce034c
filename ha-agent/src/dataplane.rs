//! The XDP data plane as seen from userspace: the embedded object, loading,
//! attaching, and reading maps.

use std::fmt;

use aya::{
    Ebpf, EbpfError,
    maps::{MapError, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode},
};
use ha_common::probe::{self, ProbeCounter};
use tracing::{info, warn};

/// The XDP object built by `build.rs` from `ha-ebpf`, embedded so the agent binary
/// is self-contained.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ha-ebpf"));

/// The embedded XDP object (an ELF file for `bpfel-unknown-none`).
pub fn object() -> &'static [u8] {
    OBJECT
}

/// Errors of the data plane, each naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
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

/// The loaded object. Programs stay attached while this lives (for now nothing
/// is pinned: dropping it detaches everything).
pub struct Dataplane {
    /// The loaded object: owns program fds, map fds and attachment links.
    ebpf: Ebpf,
}

impl fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataplane").finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Loads the embedded object into the kernel (maps created, programs not yet
    /// verified or attached).
    pub fn load() -> Result<Self, DataplaneError> {
        let ebpf = Ebpf::load(OBJECT).map_err(DataplaneError::Load)?;
        Ok(Self { ebpf })
    }

    /// Attaches the probe program to `iface` in the current network namespace.
    pub fn attach_probe(&mut self, iface: &str) -> Result<AttachMode, DataplaneError> {
        self.attach_xdp(probe::PROGRAM, iface)
    }

    /// Loads `program` (once) and attaches it to `iface`: native mode first,
    /// generic mode as a logged fallback.
    fn attach_xdp(
        &mut self,
        program: &'static str,
        iface: &str,
    ) -> Result<AttachMode, DataplaneError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(program)
            .ok_or(DataplaneError::MissingProgram(program))?
            .try_into()
            .map_err(|source| DataplaneError::LoadProgram { program, source })?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|source| DataplaneError::LoadProgram { program, source })?;
        }
        match prog.attach(iface, XdpMode::Driver) {
            Ok(_) => {
                info!(program, iface, mode = "native", "XDP program attached");
                Ok(AttachMode::Native)
            }
            Err(ProgramError::UnknownInterface { name }) => Err(DataplaneError::Attach {
                program,
                iface: iface.to_owned(),
                source: ProgramError::UnknownInterface { name },
            }),
            Err(native_err) => {
                warn!(program, iface, cause = %native_err,
                    "native XDP attach failed; falling back to generic mode (slower)");
                prog.attach(iface, XdpMode::Skb)
                    .map_err(|source| DataplaneError::Attach {
                        program,
                        iface: iface.to_owned(),
                        source,
                    })?;
                info!(program, iface, mode = "generic", "XDP program attached");
                Ok(AttachMode::Generic)
            }
        }
    }

    /// Reads the probe's counters, summed over all CPUs.
    pub fn probe_counters(&self) -> Result<ProbeCounters, DataplaneError> {
        let map = probe::COUNTERS_MAP;
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(map).ok_or(DataplaneError::MissingMap(map))?)
                .map_err(|source| DataplaneError::Map { map, source })?;
        let mut out = ProbeCounters::default();
        for counter in ProbeCounter::ALL {
            let per_cpu = counters
                .get(&counter.index(), 0)
                .map_err(|source| DataplaneError::Map { map, source })?;
            out.values[counter.index() as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }
}

/// The probe's counters summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProbeCounters {
    /// Indexed by [`ProbeCounter::index`].
    values: [u64; ProbeCounter::ALL.len()],
}

impl ProbeCounters {
    /// The value of one counter.
    pub fn get(&self, counter: ProbeCounter) -> u64 {
        self.values[counter.index() as usize]
    }
}

impl fmt::Display for ProbeCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, counter) in ProbeCounter::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", counter.name(), self.get(*counter))?;
        }
        Ok(())
    }
}
