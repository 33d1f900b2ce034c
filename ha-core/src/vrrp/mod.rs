//! VRRPv3 (RFC 9568), IPv4: the wire format ([`wire`]), adverts framed in
//! IPv4 as the raw socket carries them ([`packet`]), the sans-IO state
//! machine of one virtual router ([`machine`]) and groups of routers that
//! change role together ([`group`]).

pub mod auth;
pub mod group;
pub mod machine;
pub mod packet;
#[cfg(test)]
mod proptests;
pub mod wire;
