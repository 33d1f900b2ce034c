//! Connection-state replication between the two nodes: compact records
//! ([`record`]), authenticated and encrypted frames ([`frame`]) and a
//! reliable, replay-protected session with bulk resync ([`session`]), all
//! sans-IO. The I/O (UDP on the HA link, flow events in, kernel conntrack
//! out) builds on these.

pub mod frame;
pub mod record;
pub mod session;
