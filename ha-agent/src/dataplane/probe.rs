//! The probe program as seen from userspace: load it unpinned, attach it to one
//! interface, read its counters. Dropping the [`Probe`] detaches it.

use std::fmt;

use aya::{Ebpf, maps::PerCpuArray, programs::Xdp};
use ha_common::probe::{self, ProbeCounter};

use super::{AttachMode, DataplaneError, attach_xdp, embedded};

/// The loaded object with the probe program. Nothing is pinned: dropping it
/// detaches the probe.
pub struct Probe {
    /// The loaded object: owns program fds, map fds and attachment links.
    ebpf: Ebpf,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe").finish_non_exhaustive()
    }
}

impl Probe {
    /// Loads the embedded object into the kernel (maps created, programs not yet
    /// verified or attached).
    pub fn load() -> Result<Self, DataplaneError> {
        let ebpf = Ebpf::load(embedded()?).map_err(DataplaneError::Load)?;
        Ok(Self { ebpf })
    }

    /// Attaches the probe program to `iface` in the current network namespace.
    pub fn attach(&mut self, iface: &str) -> Result<AttachMode, DataplaneError> {
        let program = probe::PROGRAM;
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
        let (mode, _link) = attach_xdp(prog, program, iface)?;
        Ok(mode)
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
