//! Privileged integration tests (root, network namespaces, real XDP).
//!
//! The tests are in `tests/`; this library holds what they share. Run them with
//! `cargo xtask test` (as root); they are not part of a plain `cargo test`.
//! Test functions panic with context rather than return `Result`, so a failure
//! carries the step that failed.

/// Panics with a clear message unless running as root: these tests create
/// namespaces and load XDP programs.
pub fn require_root() {
    // SAFETY: plain syscall without arguments.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the privileged integration tests need root (network namespaces, XDP); \
         run `cargo xtask test` as root, or `cargo xtask test --unprivileged` to skip them"
    );
}

pub mod frames;

use std::sync::atomic::{AtomicU32, Ordering};

use ha_agent::dataplane::{Dataplane, LoadOptions};

/// A data plane pinned under a unique instance name, removed on drop (panics
/// included), so tests can run in parallel and leave no pins behind.
#[derive(Debug)]
pub struct PinnedDataplane {
    /// The instance name (`/sys/fs/bpf/<instance>`).
    pub instance: String,
    /// The control handle.
    pub dp: Dataplane,
}

impl PinnedDataplane {
    /// Loads and pins a fresh data plane.
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let instance = format!(
            "hatest-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dp = Dataplane::create_or_open(&instance, LoadOptions::default())
            .unwrap_or_else(|e| panic!("load and pin data plane {instance}: {e:#}"));
        PinnedDataplane { instance, dp }
    }
}

impl Drop for PinnedDataplane {
    fn drop(&mut self) {
        if let Err(e) = Dataplane::detach_all(&self.instance) {
            eprintln!("remove pins of {}: {e}", self.instance);
        }
    }
}
