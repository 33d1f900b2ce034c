//! `ha_link`: XDP on the dedicated HA interface.
//!
//! Passes VRRP (IPv4 protocol 112, TTL 255, a configured VRID, a source in the
//! peer allow-list, to 224.0.0.18 or this node; or over IPv6, for an IPv6
//! instance: hop limit 255, a link-local source, to ff02::12) and stamps
//! the last advert per VRID; passes ARP, and MLD (so snooping switches keep
//! forwarding ff02::12). No other IPv6 passes. Everything else must be addressed to this node's HA address
//! ([`LinkConfig::local_addr`]): a VIP, another host or forwarded traffic is
//! dropped (`drop_not_local`), so the HA segment reaches only this node's own
//! services. Of those it passes sync frames (UDP to the sync port) only from a
//! peer; the cluster control channel (TCP to the control or join port) only
//! from a peer; replies to connections this node opened to a peer's control or
//! join port (see [`LinkVerdict::PassControlReply`]); ICMP echo and the
//! management allow-list; drops the rest, fragments included. Every verdict is
//! counted by reason. Untagged heartbeat frames (`heartbeat::ETHERTYPE`) go to
//! the reflector first ([`LinkVerdict::Heartbeat`]).

use crate::impl_pod;

/// Name of the XDP program in the object file.
pub const PROGRAM: &str = "ha_link";
/// `Array<LinkConfig, 1>`: the sync port and flags.
pub const CONFIG_MAP: &str = "HA_LINK_CONFIG";
/// `HashMap<u32 addr, u32>`: peer addresses allowed to send VRRP and sync.
pub const PEERS_MAP: &str = "HA_LINK_PEERS";
/// `Array<u32, 256>` indexed by VRID: non-zero when this node runs that VRID.
pub const VRIDS_MAP: &str = "HA_LINK_VRIDS";
/// `HashMap<MgmtPort, u32>`: management services reachable on the HA link.
pub const MGMT_MAP: &str = "HA_LINK_MGMT";
/// `Array<AdvertStamp, 256>` indexed by VRID: the last accepted advert.
pub const ADVERTS_MAP: &str = "HA_LINK_ADVERTS";
/// `PerCpuArray<u64, LINK_VERDICTS>`: verdict counters by [`LinkVerdict`].
pub const VERDICTS_MAP: &str = "HA_LINK_VERDICTS";

/// Most peer addresses in the allow-list.
pub const MAX_PEERS: u32 = 16;
/// Most management allow-list entries.
pub const MAX_MGMT: u32 = 64;
/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// VRRP packets must arrive with this TTL (RFC 9568 section 7.1).
pub const VRRP_TTL: u8 = 255;

/// Configuration of `ha_link` (slot 0 of [`CONFIG_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkConfig {
    /// UDP destination port of sync frames, host order; 0 = no sync accepted.
    pub sync_port: u16,
    /// TCP port of the cluster control channel, host order; 0 = none. Peers
    /// may connect to it, and replies from a peer's port pass (to a connection
    /// this node opened).
    pub control_port: u16,
    /// TCP port of the join listener, host order, treated as the control
    /// port; 0 = none (the same as `control_port` is fine).
    pub join_port: u16,
    pub _pad: u16,
    /// This node's address on the HA link (map encoding). Everything but VRRP
    /// and ARP must be addressed to it; 0 = nothing is (fail closed).
    pub local_addr: u32,
    pub _pad2: u32,
}

/// Key of the management allow-list: protocol and destination port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MgmtPort {
    /// IP protocol: 6 (TCP) or 17 (UDP).
    pub proto: u8,
    pub _pad: u8,
    /// Destination port, host order.
    pub port: u16,
}

/// The last VRRP advert accepted for one VRID (what the agent and CLI read).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdvertStamp {
    /// CLOCK_MONOTONIC (tick resolution, `bpf_ktime_get_coarse_ns`) when it arrived; 0 = never.
    pub last_ns: u64,
    /// Adverts accepted for this VRID since load (racy across CPUs: a hint).
    pub count: u64,
    /// Source address (map encoding); 0 for an advert over IPv6.
    pub src_addr: u32,
    /// Advertised priority (0 = master is leaving).
    pub priority: u8,
    /// VRRP version nibble (3).
    pub version: u8,
    /// Max advert interval in centiseconds (12 bits), from the packet.
    pub interval_cs: u16,
}

impl_pod!(LinkConfig, MgmtPort, AdvertStamp);

/// Why `ha_link` passed or dropped a frame (index into [`VERDICTS_MAP`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkVerdict {
    PassVrrp = 0,
    PassSync = 1,
    PassArp = 2,
    PassIcmpEcho = 3,
    PassMgmt = 4,
    DropVrrpTtl = 5,
    DropVrrpVrid = 6,
    DropVrrpSource = 7,
    DropVrrpTruncated = 8,
    DropSyncSource = 9,
    DropTruncated = 10,
    DropNotAllowed = 11,
    DropFragment = 12,
    /// TCP from a peer to our control or join port.
    PassControl = 13,
    /// TCP from a peer's control or join port to a socket this node has
    /// connected with exactly that 4-tuple (the SYN-ACK and every later
    /// segment of a connection we opened). A bare SYN never passes, nor a
    /// segment to a listening or absent socket: a spoofed peer source with
    /// the control port as source port reaches no local service.
    PassControlReply = 14,
    /// Sync, management, control or ICMP not addressed to this node's HA
    /// address (a VIP, another host, forwarded traffic), or VRRP to neither
    /// 224.0.0.18 nor this node.
    DropNotLocal = 15,
    /// TCP to the control or join port from a source that is not a peer.
    DropControlSource = 16,
    /// TCP from a peer's control or join port that is a bare SYN or matches
    /// no connected local socket.
    DropControlReply = 17,
    /// An untagged frame of the fast heartbeat's ethertype
    /// (`heartbeat::ETHERTYPE`), handed to the reflector: answered
    /// (`XDP_TX`), a reply to our own probe passed, or dropped (not ours,
    /// malformed); `heartbeat::ProbeCounter` says which.
    Heartbeat = 18,
    /// Multicast Listener Discovery (ICMPv6 130, 131, 132, 143 behind the
    /// hop-by-hop header, from a link-local address, hop limit 1): an
    /// MLD-snooping switch must hear this node's listener reports and its
    /// queries answered, or it stops forwarding ff02::12 to it.
    PassMld = 19,
}

/// Number of [`LinkVerdict`]s.
pub const LINK_VERDICTS: u32 = 20;

impl LinkVerdict {
    /// Every verdict in index order.
    pub const ALL: [LinkVerdict; LINK_VERDICTS as usize] = [
        LinkVerdict::PassVrrp,
        LinkVerdict::PassSync,
        LinkVerdict::PassArp,
        LinkVerdict::PassIcmpEcho,
        LinkVerdict::PassMgmt,
        LinkVerdict::DropVrrpTtl,
        LinkVerdict::DropVrrpVrid,
        LinkVerdict::DropVrrpSource,
        LinkVerdict::DropVrrpTruncated,
        LinkVerdict::DropSyncSource,
        LinkVerdict::DropTruncated,
        LinkVerdict::DropNotAllowed,
        LinkVerdict::DropFragment,
        LinkVerdict::PassControl,
        LinkVerdict::PassControlReply,
        LinkVerdict::DropNotLocal,
        LinkVerdict::DropControlSource,
        LinkVerdict::DropControlReply,
        LinkVerdict::Heartbeat,
        LinkVerdict::PassMld,
    ];

    /// Whether the frame goes on to the stack ([`LinkVerdict::Heartbeat`]:
    /// the reflector decides, not this).
    pub const fn passes(self) -> bool {
        matches!(
            self,
            LinkVerdict::PassVrrp
                | LinkVerdict::PassSync
                | LinkVerdict::PassArp
                | LinkVerdict::PassIcmpEcho
                | LinkVerdict::PassMgmt
                | LinkVerdict::PassControl
                | LinkVerdict::PassControlReply
                | LinkVerdict::PassMld
        )
    }

    /// A short name for operators.
    pub const fn name(self) -> &'static str {
        match self {
            LinkVerdict::PassVrrp => "pass_vrrp",
            LinkVerdict::PassSync => "pass_sync",
            LinkVerdict::PassArp => "pass_arp",
            LinkVerdict::PassIcmpEcho => "pass_icmp_echo",
            LinkVerdict::PassMgmt => "pass_mgmt",
            LinkVerdict::DropVrrpTtl => "drop_vrrp_ttl",
            LinkVerdict::DropVrrpVrid => "drop_vrrp_unknown_vrid",
            LinkVerdict::DropVrrpSource => "drop_vrrp_not_peer",
            LinkVerdict::DropVrrpTruncated => "drop_vrrp_truncated",
            LinkVerdict::DropSyncSource => "drop_sync_not_peer",
            LinkVerdict::DropTruncated => "drop_truncated",
            LinkVerdict::DropNotAllowed => "drop_not_allowed",
            LinkVerdict::DropFragment => "drop_fragment",
            LinkVerdict::PassControl => "pass_control",
            LinkVerdict::PassControlReply => "pass_control_reply",
            LinkVerdict::DropNotLocal => "drop_not_local",
            LinkVerdict::DropControlSource => "drop_control_not_peer",
            LinkVerdict::DropControlReply => "drop_control_reply_no_socket",
            LinkVerdict::Heartbeat => "heartbeat",
            LinkVerdict::PassMld => "pass_mld",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counter table is indexed by discriminant: `ALL` must list every
    /// verdict at its own index, with a distinct name, and exactly the
    /// `pass_*` ones pass (new verdicts are appended, so "passes" is no
    /// longer a range of indices; `heartbeat` is none: the reflector picks
    /// its own action).
    #[test]
    fn verdict_table_is_consistent() {
        for (i, v) in LinkVerdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i, "{v:?}");
            assert_eq!(v.passes(), v.name().starts_with("pass_"), "{v:?}");
            let same = LinkVerdict::ALL.iter().filter(|w| w.name() == v.name());
            assert_eq!(same.count(), 1, "{v:?}");
        }
    }

    /// The layout the XDP program reads: 16 bytes, the address at offset 8.
    #[test]
    fn config_layout() {
        assert_eq!(core::mem::size_of::<LinkConfig>(), 16);
        assert_eq!(core::mem::offset_of!(LinkConfig, local_addr), 8);
    }
}
