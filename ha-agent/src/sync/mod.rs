//! Connection-state replication between the two nodes.
//!
//! Sans-IO protocol: compact records ([`record`]), authenticated and
//! encrypted frames ([`frame`]), a reliable, replay-protected session with
//! bulk resync ([`session`]). At the edges: the key file ([`key`]), kernel
//! conntrack through ctnetlink ([`conntrack`]), the XDP flow table
//! ([`flows`]), the master's enrichment of flow events from conntrack
//! ([`enrich`]), the backup's apply ([`apply`]), and the thread that drives
//! it all with the handle the VRRP loop keeps ([`driver`]).

pub mod apply;
pub mod conntrack;
pub mod driver;
pub mod enrich;
pub mod flows;
pub mod frame;
pub mod key;
pub mod record;
pub mod session;
