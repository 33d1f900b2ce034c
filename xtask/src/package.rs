//! `cargo xtask package`: the Debian package (cargo-deb; metadata in
//! ha-agent/Cargo.toml): the release binary with its XDP programs, the
//! systemd unit and maintainer scripts (packaging/), the example
//! configuration, man pages and shell completions generated from the CLI,
//! the Grafana dashboard and the Prometheus rules.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{cargo, run_step};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[derive(Debug, clap::Args)]
pub struct PackageArgs {
    /// Cargo profile of the packaged binary: `release` (what to install),
    /// or `dev` (what `cargo xtask test` installs and tests: the same code
    /// without the optimised build's minutes).
    #[arg(long, default_value = "release")]
    pub profile: String,
}

/// Builds the package; returns its path.
pub fn run(args: &PackageArgs) -> anyhow::Result<PathBuf> {
    crate::setup::cargo_deb()?;
    crate::build::build_ebpf_only()?;
    let profile = args.profile.as_str();
    // cargo-deb reads assets of `target/release/` from the profile's
    // directory.
    let dir = match profile {
        "release" => "release",
        "dev" => "debug",
        other => bail!("profile {other}: `release` or `dev`"),
    };
    run_step(
        &format!("build the agent ({profile})"),
        cargo().args(["build", "--profile", profile, "--package", "ha-agent"]),
    )?;
    let root = root();
    let bin = root.join("target").join(dir).join("ha-agent");
    let assets = root.join("target").join(dir).join("package-assets");
    let _ = std::fs::remove_dir_all(&assets);
    let man = assets.join("man");
    let completions = assets.join("completions");
    std::fs::create_dir_all(&completions)?;
    run_step(
        "man pages from the CLI (clap_mangen)",
        Command::new(&bin).arg("man").arg(&man),
    )?;
    // Compressed, as Debian keeps them (-n: no name or time stamp inside).
    let pages: Vec<PathBuf> = std::fs::read_dir(&man)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    if pages.is_empty() {
        bail!("no man page was written into {}", man.display());
    }
    run_step(
        "gzip the man pages",
        Command::new("gzip").args(["-9", "-n", "-f"]).args(&pages),
    )?;
    for (shell, file) in [
        ("bash", "ha-agent.bash"),
        ("zsh", "_ha-agent"),
        ("fish", "ha-agent.fish"),
    ] {
        let out = Command::new(&bin)
            .args(["completions", shell])
            .output()
            .with_context(|| format!("{} completions {shell}", bin.display()))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "ha-agent completions {shell} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::write(completions.join(file), out.stdout)?;
    }
    let out_dir = root.join("target/debian");
    let _ = std::fs::remove_dir_all(&out_dir);
    run_step(
        "cargo deb (the Debian package)",
        cargo().args([
            "deb",
            "--package",
            "ha-agent",
            "--no-build",
            "--profile",
            profile,
        ]),
    )?;
    let deb = std::fs::read_dir(&out_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("no .deb in {}", out_dir.display()))?;
    eprintln!("xtask: package: {}", deb.display());
    println!("{}", deb.display());
    Ok(deb)
}
