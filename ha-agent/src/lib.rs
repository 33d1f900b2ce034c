//! ha-agent: the userspace side of the XDP-accelerated HA failover system.
//!
//! Module map:
//! - [`dataplane`]: loads the embedded XDP object, attaches programs to
//!   interfaces (native mode, generic only as a logged fallback) and reads maps.
//! - [`vrrp`]: VRRPv3 wire format, state machine and groups (sans-IO).
//! - [`iface`]: interface index, MAC and link state in the current namespace.
//! - [`config`]: the TOML configuration and its validation.
//! - [`agent`]: the daemon (`ha-agent run`): VRRP sockets, takeover, hooks.
//! - [`sync`]: connection-state replication protocol (records, AEAD frames,
//!   reliable session with replay protection and bulk resync; sans-IO).
//! - [`cli`]: the operator command line (`ha-agent <command>`).

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod iface;
pub mod metrics;
pub mod sync;
pub mod vrrp;
