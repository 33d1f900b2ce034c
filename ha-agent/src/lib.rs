//! ha-agent: the daemon and operator CLI of the XDP-accelerated HA failover
//! system. The decisions live in the sans-IO crate `ha-core`; this crate is
//! their I/O, on floors that depend only downwards:
//!
//! ```text
//! 6  cli, cluster                  the command line; ns-ha-config's verbs (clients)
//! 5  daemon                        `ha-agent run`: threads, started and joined
//! 4  control                       operator socket, reload, cluster channel,
//!                                  config sync, join, metrics over HTTP
//! 3  agent                         the VRRP loop: the node core's I/O shell
//! 2  sync                          state replication (sans-IO protocol + edges)
//!    status                        the status model, its writer, text, metrics,
//!                                  the cluster view
//!    import                        keepalived.conf to our TOML (sans-IO)
//! 1  dataplane, config, iface,     XDP programs and maps; the TOML file;
//!    paths, sched                  interfaces; file names; thread scheduling
//! ```
//!
//! Module map:
//! - [`dataplane`]: loads the embedded XDP object, attaches programs to
//!   interfaces (native mode, generic only as a logged fallback) and reads maps.
//! - [`config`]: the TOML configuration, its validation, the node core's
//!   settings.
//! - [`iface`]: interface index, MAC and link state in the current namespace.
//! - [`paths`]: every run file and state file, named once; atomic writes.
//! - [`sched`]: realtime and normal threads.
//! - [`status`]: what the agent reports (file, socket, text, Prometheus).
//! - [`sync`]: connection-state replication.
//! - [`import`]: `ha-agent import keepalived` (a block parser and the
//!   mapping; what cannot be mapped is listed with its line).
//! - [`agent`]: the VRRP loop around `ha_core::node`, and what it may be asked.
//! - [`control`]: the control thread.
//! - [`daemon`]: `ha-agent run`.
//! - [`cluster`]: `ha-agent cluster <verb>`.
//! - [`cli`]: the operator command line (`ha-agent <command>`).

pub mod agent;
pub mod check;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod iface;
pub mod import;
pub mod napi;
pub mod paths;
pub mod sched;
pub mod status;
pub mod sync;
