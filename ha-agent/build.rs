//! Builds the XDP programs (`ha-ebpf`) for the BPF target and leaves the object in
//! `OUT_DIR`, where `src/dataplane.rs` embeds it. The agent binary is therefore
//! self-contained, and a plain `cargo build -p ha-agent` rebuilds the object
//! whenever `ha-ebpf` or `ha-common` change (`ha-ebpf` is a build-dependency, and
//! aya-build adds `rerun-if-changed` on its directory), so it never embeds a
//! stale or missing object: it builds it, or fails saying what to run.
//!
//! `HA_AGENT_SKIP_EBPF=1` embeds an empty object instead (the data plane then
//! refuses to load with `DataplaneError::NotBuilt`): only for builds that
//! never load XDP, the fuzz targets in `fuzz/`, which would otherwise rebuild
//! the BPF object (nightly, build-std) in their own target directory.
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=HA_AGENT_SKIP_EBPF");
    if std::env::var_os("HA_AGENT_SKIP_EBPF").is_some_and(|v| !v.is_empty() && v != "0") {
        let out = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
        std::fs::write(std::path::Path::new(&out).join("ha-ebpf"), b"")
            .context("writing the empty XDP object")?;
        println!(
            "cargo:warning=HA_AGENT_SKIP_EBPF is set: this ha-agent embeds no XDP programs and cannot load a data plane"
        );
        return Ok(());
    }
    check_prerequisites()?;
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "ha-ebpf")
        .ok_or_else(|| anyhow!("package ha-ebpf not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("ha-ebpf manifest has no parent directory"))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    // The nested cargo's stderr comes back as `cargo:warning` lines; keep only
    // what matters (errors, warnings), not a "Compiling ..." line per crate.
    // SAFETY: the build script is single-threaded here; no other thread reads the
    // environment concurrently.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building the XDP programs (ha-ebpf) failed; `cargo xtask setup` installs the prerequisites")
}

/// Fails early, naming the fix, when the BPF toolchain is incomplete; otherwise
/// the nested cargo build fails with messages that do not say what to do.
fn check_prerequisites() -> anyhow::Result<()> {
    let hint = "run `cargo xtask setup` (or `cargo xtask build-ebpf`), which installs it";
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .context(format!(
            "running rustup to find the nightly toolchain: {hint}"
        ))?;
    if !sysroot.status.success() {
        bail!("the nightly toolchain is not installed: {hint}");
    }
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    let rust_src = std::path::Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
    if !rust_src.exists() {
        bail!("rust-src is missing from the nightly toolchain ({sysroot}): {hint}");
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !matches!(linker, Ok(ref out) if out.status.success()) {
        bail!("bpf-linker is not installed or does not run: {hint}");
    }
    // A reinstalled linker (another LLVM) must relink the object.
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v bpf-linker"])
        .output()
    {
        println!(
            "cargo:rerun-if-changed={}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}
