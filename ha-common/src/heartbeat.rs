//! The fast heartbeat: probes one agent sends its peer on every heartbeat
//! path, answered by the peer's XDP programs (`ha_link` on the HA link,
//! `ha_data` on data interfaces) with `XDP_TX`, without its userspace.
//!
//! A probe is an Ethernet frame of ethertype [`ETHERTYPE`] (IEEE 802 local
//! experimental ethertype 1) carrying one [`ProbeWire`] right after the
//! Ethernet header (untagged). The prober fills the header, `seq` and `tag`
//! and leaves the rest zero; the reflector checks the magic, the version,
//! that the kind is [`KIND_PROBE`], that `to` is its own HA address and
//! `from` its configured peer ([`ProbeConfig`]), then turns it into a
//! [`KIND_REPLY`] in place:
//! - `groups`, `lease_left_ns`: its ownership word now (the lease left, 0
//!   when it has lapsed or nothing is owned);
//! - `term`, and `proof` only when the term has ended in the data plane
//!   (lease lapsed or nothing owned): [`ProbeTerm`], written by its agent
//!   when it takes over. The proof is an HMAC only the agent can compute,
//!   revealed only once the data plane let go, so a host that sees the
//!   probes cannot forge "the peer's daemon is gone";
//! - Ethernet: destination = the probe's source, source = the interface's
//!   MAC ([`MACS_MAP`]) or, if absent, the probe's destination.
//!
//! `seq` and `tag` travel back unchanged: the prober accepts a reply only
//! for a tag it sent, so a host that does not see the probes cannot forge
//! replies at all. All multi-byte fields are big-endian.
//!
//! Read order in the reflector: the term first, then the ownership word; the
//! agent writes the ownership word first, then the term. So a proof is
//! never revealed for a term whose lease is still running.

use crate::impl_pod;

/// Ethertype of probes and replies (IEEE 802 local experimental 1).
pub const ETHERTYPE: u16 = 0x88b5;
/// `ProbeWire::magic`.
pub const MAGIC: [u8; 4] = *b"HAHB";
/// `ProbeWire::version`.
pub const VERSION: u8 = 1;
/// `ProbeWire::kind` of a probe (prober -> reflector).
pub const KIND_PROBE: u8 = 1;
/// `ProbeWire::kind` of a reply (reflector -> prober).
pub const KIND_REPLY: u8 = 2;
/// Length of [`ProbeWire`] on the wire.
pub const WIRE_LEN: usize = core::mem::size_of::<ProbeWire>();

/// `Array<ProbeConfig, 1>`: whether and for whom the reflector answers.
pub const CONFIG_MAP: &str = "HA_PROBE_CONFIG";
/// `Array<ProbeTerm, 1>`: the current ownership term and its proof.
pub const TERM_MAP: &str = "HA_PROBE_TERM";
/// `HashMap<u32 ifindex, [u8; 8]>`: each attached interface's MAC (6 bytes
/// and 2 of padding), the source of replies.
pub const MACS_MAP: &str = "HA_PROBE_MACS";
/// `PerCpuArray<u64, PROBE_COUNTERS>`: by [`ProbeCounter`]. (Not
/// `HA_PROBE_COUNTERS`: that is the `ha_probe` program's map, in the same
/// object.)
pub const COUNTERS_MAP: &str = "HA_PROBE_VERDICTS";
/// Most interfaces in [`MACS_MAP`].
pub const MAX_IFACES: u32 = 64;

/// One probe or reply, right after the Ethernet header (80 bytes, alignment 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeWire {
    /// [`MAGIC`].
    pub magic: [u8; 4],
    /// [`VERSION`].
    pub version: u8,
    /// [`KIND_PROBE`] or [`KIND_REPLY`].
    pub kind: u8,
    /// Which heartbeat path of the prober sent it (its index; echoed back).
    pub path: u8,
    pub _reserved: u8,
    /// The prober's HA address (octets).
    pub from: [u8; 4],
    /// The reflector's HA address (octets).
    pub to: [u8; 4],
    /// The prober's sequence number (one per round, every path the same).
    pub seq: [u8; 8],
    /// Unpredictable per `seq` (keyed by the prober); copied back.
    pub tag: [u8; 16],
    /// Reply: the reflector's owned groups (bit per group), 0 in a probe.
    pub groups: [u8; 8],
    /// Reply: ns left on the reflector's lease (0: lapsed or owns nothing).
    pub lease_left_ns: [u8; 8],
    /// Reply: the reflector's ownership term (0: none since its load).
    pub term: [u8; 8],
    /// Reply: the term's proof, only when the term has ended; else zero.
    pub proof: [u8; 16],
}

/// Byte offsets of [`ProbeWire`]'s fields (for code that reads and writes
/// the frame as bytes: the prober, the simulation).
pub mod offset {
    use super::ProbeWire;
    use core::mem::offset_of;
    pub const KIND: usize = offset_of!(ProbeWire, kind);
    pub const PATH: usize = offset_of!(ProbeWire, path);
    pub const FROM: usize = offset_of!(ProbeWire, from);
    pub const TO: usize = offset_of!(ProbeWire, to);
    pub const SEQ: usize = offset_of!(ProbeWire, seq);
    pub const TAG: usize = offset_of!(ProbeWire, tag);
    pub const GROUPS: usize = offset_of!(ProbeWire, groups);
    pub const LEASE: usize = offset_of!(ProbeWire, lease_left_ns);
    pub const TERM: usize = offset_of!(ProbeWire, term);
    pub const PROOF: usize = offset_of!(ProbeWire, proof);
}

/// Configuration of the reflector (slot 0 of [`CONFIG_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Non-zero: answer probes.
    pub enabled: u32,
    /// This node's HA address (map encoding): probes must be `to` it.
    pub local_addr: u32,
    /// The peer's HA address (map encoding): probes must be `from` it.
    pub peer_addr: u32,
    pub _pad: u32,
}

/// The ownership term (slot 0 of [`TERM_MAP`]): from a takeover until the
/// data plane lets go (lease lapsed, or the groups cleared).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeTerm {
    /// Increases with every takeover, across restarts; 0 = none.
    pub term: u64,
    /// HMAC proof that the term ended (see the module docs).
    pub proof: [u8; 16],
}

impl_pod!(ProbeConfig, ProbeTerm);

/// What the reflector counted (index into [`COUNTERS_MAP`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeCounter {
    /// A probe answered without a proof: the lease runs, or there is no
    /// term (0) to prove ended.
    Answered = 0,
    /// A probe answered with the term's proof (a term, and the lease lapsed
    /// or nothing owned).
    AnsweredEnded = 1,
    /// A reply passed up to the prober's socket.
    ReplyPassed = 2,
    /// A probe or reply not for this node (other `to`, other `from`,
    /// reflector disabled): passed on a data interface, dropped on the HA link.
    NotOurs = 3,
    /// Too short, wrong magic, version or kind: dropped.
    Malformed = 4,
}

/// Number of [`ProbeCounter`]s.
pub const PROBE_COUNTERS: u32 = 5;

impl ProbeCounter {
    /// Every counter in index order.
    pub const ALL: [ProbeCounter; PROBE_COUNTERS as usize] = [
        ProbeCounter::Answered,
        ProbeCounter::AnsweredEnded,
        ProbeCounter::ReplyPassed,
        ProbeCounter::NotOurs,
        ProbeCounter::Malformed,
    ];

    /// A short name for operators.
    pub const fn name(self) -> &'static str {
        match self {
            ProbeCounter::Answered => "answered",
            ProbeCounter::AnsweredEnded => "answered_ended",
            ProbeCounter::ReplyPassed => "reply_passed",
            ProbeCounter::NotOurs => "not_ours",
            ProbeCounter::Malformed => "malformed",
        }
    }
}

/// What the reflector writes into a probe to answer it, given the term and
/// the ownership word it read (in that order) and the time: the reference
/// the XDP code follows and the simulation runs. Returns `None` when the
/// probe is not answered (see [`ProbeCounter`]).
pub fn reflect(
    probe: &ProbeWire,
    cfg: &ProbeConfig,
    term: &ProbeTerm,
    own: &crate::data::Ownership,
    now_ns: u64,
) -> Result<ProbeWire, ProbeCounter> {
    if probe.magic != MAGIC || probe.version != VERSION || probe.kind != KIND_PROBE {
        return Err(ProbeCounter::Malformed);
    }
    if cfg.enabled == 0
        || u32::from_ne_bytes(probe.to) != cfg.local_addr
        || u32::from_ne_bytes(probe.from) != cfg.peer_addr
        || cfg.local_addr == 0
    {
        return Err(ProbeCounter::NotOurs);
    }
    let mut r = *probe;
    r.kind = KIND_REPLY;
    let alive = own.owns_any(now_ns);
    r.groups = own.groups.to_be_bytes();
    r.term = term.term.to_be_bytes();
    if alive {
        r.lease_left_ns = (own.lease_expires_ns - now_ns).to_be_bytes();
        r.proof = [0; 16];
    } else {
        r.lease_left_ns = [0; 8];
        r.proof = if term.term != 0 { term.proof } else { [0; 16] };
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Ownership;

    #[test]
    fn layout() {
        assert_eq!(WIRE_LEN, 80);
        assert_eq!(core::mem::align_of::<ProbeWire>(), 1);
        use offset::*;
        assert_eq!(
            [KIND, PATH, FROM, TO, SEQ, TAG, GROUPS, LEASE, TERM, PROOF],
            [5, 6, 8, 12, 16, 24, 40, 48, 56, 64]
        );
    }

    fn probe() -> (ProbeWire, ProbeConfig) {
        let p = ProbeWire {
            magic: MAGIC,
            version: VERSION,
            kind: KIND_PROBE,
            from: [10, 0, 0, 2],
            to: [10, 0, 0, 1],
            seq: 7u64.to_be_bytes(),
            tag: [9; 16],
            ..Default::default()
        };
        let c = ProbeConfig {
            enabled: 1,
            local_addr: u32::from_ne_bytes([10, 0, 0, 1]),
            peer_addr: u32::from_ne_bytes([10, 0, 0, 2]),
            _pad: 0,
        };
        (p, c)
    }

    #[test]
    fn proof_only_after_the_lease() {
        let (p, c) = probe();
        let t = ProbeTerm {
            term: 5,
            proof: [3; 16],
        };
        let own = Ownership {
            groups: 1,
            lease_expires_ns: 100,
        };
        let r = reflect(&p, &c, &t, &own, 40).unwrap();
        assert_eq!(r.kind, KIND_REPLY);
        assert_eq!(u64::from_be_bytes(r.lease_left_ns), 60);
        assert_eq!(r.proof, [0; 16]);
        assert_eq!((r.seq, r.tag), (p.seq, p.tag));
        let r = reflect(&p, &c, &t, &own, 100).unwrap();
        assert_eq!(u64::from_be_bytes(r.lease_left_ns), 0);
        assert_eq!(r.proof, [3; 16]);
        let none = Ownership::default();
        assert_eq!(reflect(&p, &c, &t, &none, 1).unwrap().proof, [3; 16]);
        let zero = ProbeTerm::default();
        assert_eq!(reflect(&p, &c, &zero, &none, 1).unwrap().proof, [0; 16]);
    }

    #[test]
    fn refuses_what_is_not_ours() {
        let (p, c) = probe();
        let t = ProbeTerm::default();
        let o = Ownership::default();
        let mut q = p;
        q.kind = KIND_REPLY;
        assert_eq!(reflect(&q, &c, &t, &o, 0), Err(ProbeCounter::Malformed));
        let mut q = p;
        q.to = [10, 0, 0, 9];
        assert_eq!(reflect(&q, &c, &t, &o, 0), Err(ProbeCounter::NotOurs));
        let mut q = p;
        q.from = [10, 0, 0, 9];
        assert_eq!(reflect(&q, &c, &t, &o, 0), Err(ProbeCounter::NotOurs));
        let off = ProbeConfig { enabled: 0, ..c };
        assert_eq!(reflect(&p, &off, &t, &o, 0), Err(ProbeCounter::NotOurs));
    }
}
