//! Types shared by the XDP programs (`ha-ebpf`) and the agent (`ha-agent`).
//!
//! Everything here is `#[repr(C)]` with explicit padding and no `bool`/`Option`,
//! so the layout is identical on both sides of a map. The `user` feature adds
//! `aya::Pod` so the agent can read and write these types in maps.
//!
//! One module per map or feature:
//! - [`probe`]: the ICMP-echo counter program that proves the build/load/attach
//!   pipeline end to end.
#![no_std]

pub mod probe;
