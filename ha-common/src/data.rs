//! `ha_data`: XDP on every data interface (LAN, WAN, ...): the VIP ownership gate.
//!
//! VIPs map to an ownership group (0..63). One word says which groups this node
//! owns, together with a lease deadline: a single map write flips every VIP, and
//! ownership lapses by itself when the agent stops renewing it (fail-safe).
//! Not owner: ARP whose target is a VIP, and IPv4 to a VIP, are dropped. The
//! gate looks through one VLAN tag; frames with stacked tags (QinQ) are
//! dropped, counted.
//!
//! IPv6 VIPs live in a table of their own ([`VIPS6_MAP`], keyed by the 16
//! address bytes in network order) and are gated alike: a Neighbor
//! Solicitation or Advertisement (ICMPv6 135, 136) whose target is a VIP is
//! IPv6's ARP (passed only on the owner, never subject to Accept_Mode), and
//! IPv6 addressed to a VIP is IPv4's twin (owner only, Accept_Mode applies).
//! ND is recognised only as the IPv6 header's direct next header: an NS for
//! a VIP goes to the target's solicited-node multicast address, so it is
//! judged by its target before any destination check; ND behind extension
//! headers is judged by destination only (see `ha_data`'s `gate6`).
//! Untagged heartbeat frames (`heartbeat::ETHERTYPE`) go to the reflector
//! first ([`DataVerdict::Heartbeat`]).
//!
//! A VIP of an instance with a virtual MAC ([`VIP_FLAG_VMAC`], RFC 9568
//! section 7.3: `00-00-5E-00-01-{VRID}`) is answered by the program itself:
//! on the owner, an ARP request for it gets a reply naming the virtual MAC
//! (`XDP_TX`), and frames to the virtual MAC are readdressed to the
//! interface's own MAC (`heartbeat::MACS_MAP`) and go on through the gate;
//! elsewhere, frames to it are dropped. Clients then never learn a node's
//! MAC for the VIP, and a takeover needs no ARP change on them. An IPv6
//! instance's is `00-00-5E-00-02-{VRID}` ([`vmac6`], keyed apart with
//! [`VMAC_KEY_V6`]): the owner answers a host's Neighbor Solicitation for
//! the VIP with an advertisement naming it ([`DataVerdict::NaReplyVmac`]).

use crate::impl_pod;

/// Name of the XDP program in the object file.
pub const PROGRAM: &str = "ha_data";
/// `HashMap<u32 addr, VipEntry>`: the VIP table (IPv4).
pub const VIPS_MAP: &str = "HA_DATA_VIPS";
/// `HashMap<[u8; 16] addr (network order), VipEntry>`: the IPv6 VIP table
/// ([`MAX_VIPS`] entries of its own).
pub const VIPS6_MAP: &str = "HA_DATA_VIPS6";
/// `Array<Ownership, 1>`: the one word that decides ownership.
pub const OWNERSHIP_MAP: &str = "HA_DATA_OWNERSHIP";
/// `Array<DataConfig, 1>`: flow-tracking settings.
pub const CONFIG_MAP: &str = "HA_DATA_CONFIG";
/// `PerCpuArray<u64, DATA_VERDICTS>`: counters by [`DataVerdict`].
pub const VERDICTS_MAP: &str = "HA_DATA_VERDICTS";

/// Most VIPs in each table (IPv4, IPv6).
pub const MAX_VIPS: u32 = 4096;
/// [`VipEntry::flags`]: RFC 9568 Accept_Mode off: even the owner drops IPv4
/// or IPv6 addressed to this VIP (ARP and Neighbor Discovery are still
/// answered), unless it is the address owner (priority 255), for which the
/// agent leaves the flag clear.
pub const VIP_FLAG_NO_ACCEPT: u32 = 1;

/// [`VipEntry::flags`]: the VIP's instance uses the virtual MAC of the VRID
/// in bits [`VIP_VRID_SHIFT`].. of the flags.
pub const VIP_FLAG_VMAC: u32 = 2;
/// Where a virtual-MAC VIP's VRID sits in [`VipEntry::flags`] (8 bits).
pub const VIP_VRID_SHIFT: u32 = 8;
/// `HashMap<VmacKey, u32>`: the ownership group of the instance whose
/// virtual MAC is taken on that interface.
pub const VMACS_MAP: &str = "HA_DATA_VMACS";
/// Most (interface, VRID) pairs in [`VMACS_MAP`].
pub const MAX_VMACS: u32 = 1024;

/// The IPv4 VRRP virtual MAC of `vrid` (RFC 9568 section 7.3).
pub const fn vmac(vrid: u8) -> [u8; 6] {
    [0x00, 0x00, 0x5e, 0x00, 0x01, vrid]
}

/// The IPv6 VRRP virtual MAC of `vrid` (RFC 9568 section 7.3).
pub const fn vmac6(vrid: u8) -> [u8; 6] {
    [0x00, 0x00, 0x5e, 0x00, 0x02, vrid]
}

/// [`VmacKey::vrid`] of an IPv6 virtual MAC: the VRID plus this (the IPv4
/// virtual MAC of the same number is another router's: another cluster
/// on the segment may run it; ours never share a VRID).
pub const VMAC_KEY_V6: u32 = 0x100;

/// The [`VmacKey::vrid`] of a VRRP virtual MAC, IPv4 or IPv6, if `mac` is
/// one.
#[inline(always)]
pub const fn vmac_key_vrid(mac: &[u8; 6]) -> Option<u32> {
    if mac[0] != 0x00 || mac[1] != 0x00 || mac[2] != 0x5e || mac[3] != 0x00 {
        return None;
    }
    match mac[4] {
        0x01 => Some(mac[5] as u32),
        0x02 => Some(mac[5] as u32 | VMAC_KEY_V6),
        _ => None,
    }
}

/// The VRID of an IPv4 VRRP virtual MAC, if `mac` is one.
#[inline(always)]
pub const fn vmac_vrid(mac: &[u8; 6]) -> Option<u8> {
    if mac[0] == 0x00 && mac[1] == 0x00 && mac[2] == 0x5e && mac[3] == 0x00 && mac[4] == 0x01 {
        Some(mac[5])
    } else {
        None
    }
}

/// Ownership groups are bits of a `u64`.
pub const MAX_GROUPS: u32 = 64;

/// Value of the VIP table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipEntry {
    /// Ownership group (bit index into [`Ownership::groups`]), 0..63.
    pub group: u32,
    /// `VIP_FLAG_*` bits.
    pub flags: u32,
    /// The interface the VIP is on (0: unknown). XDP answers ARP for a
    /// virtual-MAC VIP only on it (as the kernel does with `arp_ignore=1`).
    pub ifindex: u32,
}

/// Key of [`VMACS_MAP`]: a virtual MAC is ours only on the interfaces
/// carrying its instance's VIPs (another router may use the same VRID on
/// another segment).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VmacKey {
    pub ifindex: u32,
    /// The VRID (the MAC's last byte), as a u32, plus [`VMAC_KEY_V6`] for
    /// the IPv6 virtual MAC.
    pub vrid: u32,
}

/// Which groups this node owns, and until when (slot 0 of [`OWNERSHIP_MAP`]).
///
/// Written as one `bpf_map_update_elem`. The XDP program treats a group as
/// owned only while `now < lease_expires_ns` (CLOCK_MONOTONIC, read in XDP with
/// `bpf_ktime_get_coarse_ns`, i.e. at kernel-tick resolution); the agent
/// renews the lease well before it runs out.
///
/// The two fields are written by one memcpy; a packet racing the write may see
/// the new groups with the old lease (or the reverse). Either way that single
/// packet is judged as if it had arrived just before or after the flip.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Bit `g` set: this node owns group `g`.
    pub groups: u64,
    /// CLOCK_MONOTONIC ns after which ownership lapses; `u64::MAX` = no lease
    /// (never lapses; only for tests and manual use).
    pub lease_expires_ns: u64,
}

impl Ownership {
    /// Whether group `group` is owned at monotonic time `now_ns`.
    #[inline(always)]
    pub const fn owns(&self, group: u32, now_ns: u64) -> bool {
        group < MAX_GROUPS && self.groups & (1 << group) != 0 && now_ns < self.lease_expires_ns
    }

    /// Whether any group is owned at `now_ns` (flow tracking runs only then).
    #[inline(always)]
    pub const fn owns_any(&self, now_ns: u64) -> bool {
        self.groups != 0 && now_ns < self.lease_expires_ns
    }
}

/// Flow-tracking settings (slot 0 of [`CONFIG_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataConfig {
    /// Re-emit a flow that stays active this long after its last event (ns);
    /// 0 disables refresh events.
    pub refresh_ns: u64,
    /// Wake the agent when at least this many bytes wait in the ring buffer;
    /// below that, events are submitted without a wakeup and the agent drains
    /// on its own timer (batching).
    pub wakeup_bytes: u64,
    /// [`DATA_FLAG_TRACK_FLOWS`] and friends.
    pub flags: u32,
    pub _pad: u32,
}

/// [`DataConfig::flags`]: track flows and emit events (when owner).
pub const DATA_FLAG_TRACK_FLOWS: u32 = 1;
/// [`DataConfig::flags`]: emit a refresh event for every packet of a tracked
/// flow. Only for measuring ring-buffer throughput (`cargo xtask bench`); the
/// agent never sets it.
pub const DATA_FLAG_EMIT_EVERY_PACKET: u32 = 2;

impl_pod!(VipEntry, VmacKey, Ownership, DataConfig);

/// What `ha_data` did with a frame (index into [`VERDICTS_MAP`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataVerdict {
    /// No VIP involved: passed untouched.
    PassNoVip = 0,
    /// ARP for a VIP we own.
    PassArpOwner = 1,
    /// IPv4 to a VIP we own.
    PassIpv4Owner = 2,
    /// ARP whose target is a VIP we do not own.
    DropArpNotOwner = 3,
    /// IPv4 to a VIP we do not own.
    DropIpv4NotOwner = 4,
    /// Our group bit is set but the lease ran out (the agent stopped renewing).
    DropLeaseExpired = 5,
    /// A flow seen for the first time (event emitted).
    FlowNew = 6,
    /// A TCP state change (event emitted).
    FlowStateChange = 7,
    /// A refresh of an active flow (event emitted).
    FlowRefresh = 8,
    /// An event lost because the ring buffer was full.
    RingBufFull = 9,
    /// Frame too short for the headers it announces (passed: not ours to judge).
    Truncated = 10,
    /// IPv4 to a VIP we own whose instance has Accept_Mode off.
    DropNoAccept = 11,
    /// A frame with stacked VLAN tags (QinQ: 802.1Q or 802.1ad inside a tag),
    /// dropped whatever it carries: the gate looks through one tag only, and
    /// a firewall's data interface carries no QinQ, so passing it would pass
    /// ARP and IPv4 for a VIP ungated.
    DropStackedVlan = 12,
    /// An untagged frame of the fast heartbeat's ethertype
    /// (`heartbeat::ETHERTYPE`), handed to the reflector: answered
    /// (`XDP_TX`), a reply to our own probe or another cluster's frame
    /// passed, a malformed one dropped; `heartbeat::ProbeCounter` says which.
    Heartbeat = 13,
    /// An ARP request for a virtual-MAC VIP we own, answered by XDP with
    /// the virtual MAC (`XDP_TX`).
    ArpReplyVmac = 14,
    /// A frame to the virtual MAC of a group we own, readdressed to the
    /// interface's MAC and gated on (counted besides its own verdict).
    PassVmacOwner = 15,
    /// A frame to the virtual MAC of a group we do not own.
    DropVmacNotOwner = 16,
    /// A Neighbor Solicitation or Advertisement for a VIP we own (its
    /// target, or its destination: an NA answering the VIP's own NS).
    PassNdOwner = 17,
    /// IPv6 to a VIP we own.
    PassIpv6Owner = 18,
    /// A Neighbor Solicitation or Advertisement for a VIP we do not own.
    DropNdNotOwner = 19,
    /// IPv6 to a VIP we do not own.
    DropIpv6NotOwner = 20,
    /// A Neighbor Solicitation for a virtual-MAC IPv6 VIP we own, answered
    /// by XDP with an advertisement naming the IPv6 virtual MAC
    /// (`XDP_TX`).
    NaReplyVmac = 21,
}

/// Number of [`DataVerdict`]s.
pub const DATA_VERDICTS: u32 = 22;

impl DataVerdict {
    /// Every counter in index order.
    pub const ALL: [DataVerdict; DATA_VERDICTS as usize] = [
        DataVerdict::PassNoVip,
        DataVerdict::PassArpOwner,
        DataVerdict::PassIpv4Owner,
        DataVerdict::DropArpNotOwner,
        DataVerdict::DropIpv4NotOwner,
        DataVerdict::DropLeaseExpired,
        DataVerdict::FlowNew,
        DataVerdict::FlowStateChange,
        DataVerdict::FlowRefresh,
        DataVerdict::RingBufFull,
        DataVerdict::Truncated,
        DataVerdict::DropNoAccept,
        DataVerdict::DropStackedVlan,
        DataVerdict::Heartbeat,
        DataVerdict::ArpReplyVmac,
        DataVerdict::PassVmacOwner,
        DataVerdict::DropVmacNotOwner,
        DataVerdict::PassNdOwner,
        DataVerdict::PassIpv6Owner,
        DataVerdict::DropNdNotOwner,
        DataVerdict::DropIpv6NotOwner,
        DataVerdict::NaReplyVmac,
    ];

    /// A short name for operators.
    pub const fn name(self) -> &'static str {
        match self {
            DataVerdict::PassNoVip => "pass_no_vip",
            DataVerdict::PassArpOwner => "pass_arp_owner",
            DataVerdict::PassIpv4Owner => "pass_ipv4_owner",
            DataVerdict::DropArpNotOwner => "drop_arp_not_owner",
            DataVerdict::DropIpv4NotOwner => "drop_ipv4_not_owner",
            DataVerdict::DropLeaseExpired => "drop_lease_expired",
            DataVerdict::FlowNew => "flow_new",
            DataVerdict::FlowStateChange => "flow_state_change",
            DataVerdict::FlowRefresh => "flow_refresh",
            DataVerdict::RingBufFull => "ringbuf_full",
            DataVerdict::Truncated => "truncated",
            DataVerdict::DropNoAccept => "drop_no_accept",
            DataVerdict::DropStackedVlan => "drop_stacked_vlan",
            DataVerdict::Heartbeat => "heartbeat",
            DataVerdict::ArpReplyVmac => "arp_reply_vmac",
            DataVerdict::PassVmacOwner => "pass_vmac_owner",
            DataVerdict::DropVmacNotOwner => "drop_vmac_not_owner",
            DataVerdict::PassNdOwner => "pass_nd_owner",
            DataVerdict::PassIpv6Owner => "pass_ipv6_owner",
            DataVerdict::DropNdNotOwner => "drop_nd_not_owner",
            DataVerdict::DropIpv6NotOwner => "drop_ipv6_not_owner",
            DataVerdict::NaReplyVmac => "na_reply_vmac",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` lists every counter at its own index, with a distinct name.
    #[test]
    fn verdict_table_is_consistent() {
        for (i, v) in DataVerdict::ALL.iter().enumerate() {
            assert_eq!(*v as usize, i, "{v:?}");
            let same = DataVerdict::ALL.iter().filter(|w| w.name() == v.name());
            assert_eq!(same.count(), 1, "{v:?}");
        }
    }

    #[test]
    fn a_virtual_mac_names_its_vrid() {
        assert_eq!(vmac(7), [0, 0, 0x5e, 0, 1, 7]);
        assert_eq!(vmac_vrid(&vmac(255)), Some(255));
        // The IPv6 virtual MAC (00-00-5E-00-02-XX) and any other: not ours.
        assert_eq!(vmac_vrid(&[0, 0, 0x5e, 0, 2, 7]), None);
        assert_eq!(vmac_vrid(&[2, 0, 0x5e, 0, 1, 7]), None);
    }

    #[test]
    fn the_ipv6_virtual_mac_is_not_the_ipv4_one() {
        assert_eq!(vmac6(7), [0, 0, 0x5e, 0, 2, 7]);
        assert_eq!(vmac6(255), [0, 0, 0x5e, 0, 2, 255]);
        assert_ne!(vmac6(7), vmac(7));
        assert_eq!(vmac_vrid(&vmac6(7)), None);
        assert_eq!(vmac_key_vrid(&vmac(7)), Some(7));
        assert_eq!(vmac_key_vrid(&vmac6(7)), Some(7 | VMAC_KEY_V6));
        assert_eq!(vmac_key_vrid(&[0, 0, 0x5e, 0, 3, 7]), None);
    }
}
