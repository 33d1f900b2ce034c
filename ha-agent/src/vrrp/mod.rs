//! VRRPv3 (RFC 9568), IPv4: the wire format ([`wire`]) and the sans-IO state
//! machine of one virtual router ([`machine`]); groups of routers that change
//! role together ([`group`]).

pub mod group;
pub mod machine;
pub mod wire;
