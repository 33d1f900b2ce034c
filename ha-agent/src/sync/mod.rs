//! Connection-state replication between the two nodes: compact records
//! ([`record`]), authenticated and encrypted frames ([`frame`]) and a
//! reliable, replay-protected session with bulk resync ([`session`]), all
//! sans-IO; and applying records to kernel conntrack through ctnetlink
//! ([`conntrack`]). Still to come: the UDP transport on the HA link, flow
//! events (and NAT from conntrack) in, and the commit before takeover.

pub mod conntrack;
pub mod frame;
pub mod record;
pub mod session;
pub mod transport;
