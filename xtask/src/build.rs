//! `cargo xtask build-ebpf`: the XDP object is built by `ha-agent`'s build script
//! (so the agent always embeds a fresh one); this builds the agent and reports
//! where that object is.

use std::{io::BufReader, path::PathBuf, process::Stdio};

use anyhow::{Context as _, bail};
use cargo_metadata::Message;

/// Builds `ha-agent` (and with it the XDP object) and returns the object's path.
pub fn build_ebpf() -> anyhow::Result<PathBuf> {
    crate::setup::run()?;
    build_ebpf_only()
}

/// [`build_ebpf`] without running setup first.
pub fn build_ebpf_only() -> anyhow::Result<PathBuf> {
    eprintln!("xtask: build ha-agent and the XDP object it embeds");
    let mut child = crate::cargo()
        .args([
            "build",
            "--package",
            "ha-agent",
            "--message-format=json-render-diagnostics",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo build")?;
    let stdout = child.stdout.take().context("cargo build stdout")?;
    let mut out_dir = None;
    for message in Message::parse_stream(BufReader::new(stdout)) {
        if let Message::BuildScriptExecuted(script) = message.context("reading cargo's output")?
            && script.package_id.repr.contains("/ha-agent#")
        {
            out_dir = Some(script.out_dir.into_std_path_buf());
        }
    }
    let status = child.wait().context("waiting for cargo build")?;
    if !status.success() {
        bail!("building ha-agent and its XDP object failed ({status})");
    }
    let object = out_dir
        .context("cargo did not report ha-agent's build script output directory")?
        .join("ha-ebpf");
    if !object.is_file() {
        bail!(
            "the XDP object is missing at {} after the build",
            object.display()
        );
    }
    Ok(object)
}
