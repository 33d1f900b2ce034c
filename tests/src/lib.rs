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
