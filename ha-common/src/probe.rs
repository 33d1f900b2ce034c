//! The probe program: counts packets on an interface by class, in a per-CPU array.
//!
//! It is the smallest program that exercises every step of the pipeline (build
//! for BPF, embed in the agent, load, attach in driver mode inside a namespace,
//! read a per-CPU map back), so a failure there shows before the real data plane
//! is involved.

/// Name of the XDP program in the object file.
pub const PROGRAM: &str = "ha_probe";
/// Name of the per-CPU counter map (`PerCpuArray<u64, PROBE_COUNTERS>`).
pub const COUNTERS_MAP: &str = "HA_PROBE_COUNTERS";

/// Index into the probe's counter map: what kind of frame was seen.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeCounter {
    /// Every frame the program saw.
    Frames = 0,
    /// IPv4 ICMP echo requests (type 8).
    Ipv4EchoRequest = 1,
    /// IPv4 ICMP echo replies (type 0).
    Ipv4EchoReply = 2,
    /// Frames too short for the headers they claim to carry.
    Truncated = 3,
}

/// Number of slots in the probe's counter map.
pub const PROBE_COUNTERS: u32 = 4;

impl ProbeCounter {
    /// Every counter, in index order (for printing and tests).
    pub const ALL: [ProbeCounter; PROBE_COUNTERS as usize] = [
        ProbeCounter::Frames,
        ProbeCounter::Ipv4EchoRequest,
        ProbeCounter::Ipv4EchoReply,
        ProbeCounter::Truncated,
    ];

    /// The map index of this counter.
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// A short name for operators and logs.
    pub const fn name(self) -> &'static str {
        match self {
            ProbeCounter::Frames => "frames",
            ProbeCounter::Ipv4EchoRequest => "ipv4_echo_request",
            ProbeCounter::Ipv4EchoReply => "ipv4_echo_reply",
            ProbeCounter::Truncated => "truncated",
        }
    }
}
