//! Empty library target.
//!
//! `ha-agent` lists this crate as a build-dependency so that cargo re-runs the
//! agent's build script (which compiles the XDP programs in `main.rs` for the
//! BPF target) whenever this crate or `ha-common` changes. The programs themselves
//! live in the binary target.
#![no_std]
