//! The sans-IO cores of the HA agent. Nothing here touches a socket, a file,
//! a clock or a thread: time is an argument, input is bytes or events, output
//! is a list of effects. The daemon (`ha-agent`) carries the effects out; the
//! deterministic simulation (`ha-sim`) runs the same code over a simulated
//! network with seeded faults.
//!
//! Module map (each floor uses only those below it):
//! - [`node`]: the node's decisions: events and time in, ordered effects out.
//! - [`vrrp`]: VRRPv3 (RFC 9568) wire format, framing, state machine, groups.
//! - [`heartbeat`]: the fast heartbeat's prober (probes answered by the
//!   peer's XDP; verdicts that hasten a takeover).
//! - [`limit`]: log rate limits (once a second per problem).

pub mod heartbeat;
pub mod limit;
pub mod node;
pub mod vrrp;
