//! What goes into the node core and what comes out of it: [`Event`]s (with
//! the time, passed separately) in, [`Effect`]s in the order they must be
//! carried out.

use std::{net::IpAddr, time::Duration};

use super::Instant;
use crate::vrrp::{machine::Role, packet::Header6, wire};

/// Something that happened to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// The node starts. `resumed`: the groups the data plane still owns
    /// under a running lease, which the I/O layer has just renewed (0 when
    /// the lease had lapsed or nothing was owned). `maintenance`: the
    /// persistent demotion is on. `links`: the tracked links' state now.
    Start {
        resumed: u64,
        maintenance: bool,
        links: &'a [(String, bool)],
    },
    /// A packet from a VRRP socket: IPv4 header, VRRP message and any
    /// trailer, as received over heartbeat path `path` (0: the HA link) at
    /// wall-clock time `wall` (since the Unix epoch; for `time`
    /// anti-replay). Anything is possible here; it is validated by the core.
    Packet {
        path: usize,
        bytes: &'a [u8],
        wall: Duration,
    },
    /// A VRRP message received over IPv6 on the HA link (path 0), the
    /// header as the socket gave it apart. Validated by the core.
    Packet6 {
        bytes: &'a [u8],
        header: Header6,
        wall: Duration,
    },
    /// A frame of the fast heartbeat's ethertype received over heartbeat
    /// path `path` from Ethernet source `src`: the probe header onwards.
    /// Anything is possible here; it is validated by the core.
    Probe {
        path: usize,
        src: [u8; 6],
        bytes: &'a [u8],
    },
    /// The time reached [`super::Node::poll_at`] (or later).
    Timer,
    /// A tracked link or a heartbeat path's interface went up or down.
    Link { iface: &'a str, up: bool },
    /// New advert authentication settings (a reload: key rotation, mode).
    SetAuth(crate::vrrp::auth::Settings),
    /// State sync reached (or lost) the peer's whole table.
    SyncState { in_sync: bool },
    /// The data plane refused to renew the lease: it had lapsed already.
    LeaseLapsed,
    /// The data plane refused an ownership write (the I/O layer stopped
    /// carrying out that batch there).
    OwnershipWriteFailed,
    /// The VIPs of each group's members changed (a reload):
    /// `vips[group][member]`.
    SetVips(Vec<Vec<Vec<IpAddr>>>),
    /// An operator's command; answered by an [`Effect::Reply`].
    Command(Command),
    /// Graceful stop: priority-0 adverts from a master, ownership cleared.
    Stop,
}

/// What an operator asks of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Become master (priority 254, preempting) until `demote` or a restart.
    Promote,
    /// Hand over to the peer (priority 1) until `promote` or a restart.
    Demote,
    /// Persistent demotion (survives restarts), for upgrades.
    Maintenance(bool),
    /// Ask the peer for a full state resync.
    Resync,
}

/// A role hook for a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// keepalived's notify: `<script> GROUP|INSTANCE <name> <ROLE> <prio>`.
    Notify {
        kind: NotifyKind,
        name: String,
        role: Role,
        priority: u8,
    },
    /// Start (MASTER) or stop (any other role) the role-dependent services.
    Services { role: Role },
    /// A heartbeat path failed or recovered: the notify script gets
    /// `PATH <interface> UP|DOWN|NO-CARRIER|QUIET 0`.
    Path {
        name: String,
        state: super::paths::PathState,
    },
}

/// Whose role a notify reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyKind {
    Group,
    Instance,
}

impl NotifyKind {
    /// keepalived's spelling (the notify script's first argument).
    pub const fn as_str(self) -> &'static str {
        match self {
            NotifyKind::Group => "GROUP",
            NotifyKind::Instance => "INSTANCE",
        }
    }
}

/// What the I/O layer must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Apply the replicated state still waiting, before the ownership write
    /// that follows (takeover of `group`; `due` is when its timer was due,
    /// where takeover timing starts).
    Commit { group: usize, due: Instant },
    /// One map write: the groups this node owns, with a lease (`None`: owns
    /// nothing, or never lapses).
    WriteOwnership {
        groups: u64,
        lease: Option<Duration>,
    },
    /// Extend the running lease of `groups`, what the node owns (never
    /// revive a lapsed one: the data plane refuses, and the I/O layer
    /// answers [`Event::LeaseLapsed`]). The word is rewritten with exactly
    /// these groups, so a renewal never keeps one the node gave up.
    RenewLease { groups: u64, lease: Duration },
    /// Send this advert from our address (to 224.0.0.18 or each unicast peer).
    SendAdvert(wire::Repr),
    /// Send a fast-heartbeat probe over its path.
    SendProbe(crate::heartbeat::Probe),
    /// A new ownership term began (a takeover from owning nothing): write
    /// it and its proof into the reflector's term map, after the ownership
    /// word (the XDP reads them in the other order, so the proof is never
    /// shown for a term whose lease runs). The shell also keeps the term on
    /// disk, written before the map: the map does not survive a reboot,
    /// and a term reused after one makes its old proof, revealed when it
    /// ended before the reboot, prove the new term over while it runs
    /// (found by the simulation; see [`super::Node::set_term_floor`]).
    WriteProbeTerm { term: u64, proof: [u8; 16] },
    /// One round of gratuitous ARP for every VIP of `group`.
    SendGarp { group: usize },
    /// Queue a hook of `group` (never waited for).
    Hook { group: usize, hook: Hook },
    /// Persist the maintenance flag (on) or remove it (off).
    SaveMaintenance(bool),
    /// Ask the peer for a full state resync.
    ForceResync,
    /// The status changed: write it (off the loop).
    WriteStatus,
    /// The answer to the [`Event::Command`] being handled.
    Reply(Result<String, String>),
}
