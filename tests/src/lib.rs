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

/// A unique instance name (`hatest-<tag>-<pid>-<n>`) whose pins are removed on
/// drop, panics included, so tests run in parallel and leave no pins behind.
#[derive(Debug)]
pub struct PinGuard(pub String);

impl PinGuard {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        PinGuard(format!(
            "hatest-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Err(e) = Dataplane::detach_all(&self.0) {
            eprintln!("remove pins of {}: {e}", self.0);
        }
    }
}

/// A data plane loaded and pinned under a [`PinGuard`] instance.
#[derive(Debug)]
pub struct PinnedDataplane {
    /// The instance name (`/sys/fs/bpf/<instance>`).
    pub instance: String,
    /// The control handle.
    pub dp: Dataplane,
    /// Removes the pins on drop (declared last: dropped after `dp`).
    _pins: PinGuard,
}

impl PinnedDataplane {
    /// Loads and pins a fresh data plane.
    pub fn new(tag: &str) -> Self {
        let pins = PinGuard::new(tag);
        let instance = pins.0.clone();
        let dp = Dataplane::create_or_open(&instance, LoadOptions::default())
            .unwrap_or_else(|e| panic!("load and pin data plane {instance}: {e:#}"));
        PinnedDataplane {
            instance,
            dp,
            _pins: pins,
        }
    }
}

/// The `ha-agent` binary next to this test binary (`target/<profile>/ha-agent`);
/// `cargo xtask test` builds it before the integration tests.
pub fn agent_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join("ha-agent");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p ha-agent` (cargo xtask test does)",
        bin.display()
    );
    bin
}
