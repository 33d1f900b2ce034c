//! Types shared by the XDP programs (`ha-ebpf`) and the agent (`ha-agent`).
//!
//! Everything here is `#[repr(C)]` with explicit padding and no `bool`/`Option`,
//! so the layout is identical on both sides of a map. The `user` feature adds
//! `aya::Pod` so the agent can read and write these types in maps.
//!
//! IPv4 addresses are stored as the four octets in network order read as a
//! native `u32` (`u32::from_ne_bytes(octets)`): exactly the bytes of the packet,
//! so the XDP programs never swap them.
//!
//! One module per program or feature:
//! - [`probe`]: the ICMP-echo counter program that proves the build/load/attach
//!   pipeline end to end.
//! - [`link`]: `ha_link`, the HA-interface filter (VRRP, sync, ARP, ICMP, mgmt).
//! - [`data`]: `ha_data`, the VIP ownership gate on the data interfaces.
//! - [`flow`]: flow tracking on the owner and the events it emits.
//! - [`heartbeat`]: the fast heartbeat's probes, answered by XDP.
#![no_std]

pub mod data;
pub mod flow;
pub mod heartbeat;
pub mod link;
pub mod probe;

/// Implements `aya::Pod` for plain `#[repr(C)]` types (userspace only).
macro_rules! impl_pod {
    ($($t:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: `#[repr(C)]`, only integer fields and explicit padding: every
            // bit pattern is valid and there are no implicit padding bytes.
            unsafe impl aya::Pod for $t {}
        )+
    };
}
pub(crate) use impl_pod;

/// An IPv4 address as stored in maps (see the crate docs).
#[inline(always)]
pub const fn addr_from_octets(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// The octets of an address stored in a map.
#[inline(always)]
pub const fn addr_octets(addr: u32) -> [u8; 4] {
    addr.to_ne_bytes()
}
