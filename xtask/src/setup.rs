//! `cargo xtask setup`: installs every prerequisite on a fresh Debian machine, as
//! root, idempotently. Each step checks first and says what it does.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{is_root, run_step};

/// Debian packages and why the project needs them.
const PACKAGES: &[(&str, &str)] = &[
    (
        "llvm-22-dev",
        "LLVM 22, which bpf-linker links against (the nightly's LLVM)",
    ),
    (
        "iproute2",
        "ip: namespaces, veths, bridges for the lab and tests",
    ),
    ("iputils-ping", "ping: reachability checks in tests"),
    (
        "iputils-arping",
        "arping: who answers ARP for a VIP, in tests",
    ),
    (
        "nftables",
        "nft: the stateful firewall ruleset on the lab firewalls",
    ),
    ("conntrack", "conntrack: inspect kernel connection tracking"),
    (
        "conntrackd",
        "conntrackd: the state-sync daemon we compare against",
    ),
    (
        "keepalived",
        "keepalived: the VRRP peer we interoperate and compare with",
    ),
    ("bpftool", "bpftool: inspect our pinned programs and maps"),
    ("tcpdump", "tcpdump: capture VRRP/ARP in lab tests"),
    ("iperf3", "iperf3: traffic for benchmarks"),
    ("xdp-tools", "xdp-loader/xdpdump: XDP diagnostics"),
];

/// Where bpf-linker finds LLVM 22.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> anyhow::Result<()> {
    debian_packages()?;
    services_off()?;
    stable_components()?;
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    cargo_deb()?;
    promtool()?;
    eprintln!("xtask: setup complete");
    Ok(())
}

fn need_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("{what} needs root: run `cargo xtask setup` as root (e.g. with sudo)");
    }
    Ok(())
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ii"))
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<_> = PACKAGES.iter().filter(|(p, _)| !is_installed(p)).collect();
    if missing.is_empty() {
        eprintln!("xtask: Debian packages: all {} installed", PACKAGES.len());
        return Ok(());
    }
    for (package, why) in &missing {
        eprintln!("xtask: will install {package}: {why}");
    }
    need_root("installing Debian packages")?;
    run_step(
        "apt-get update",
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    run_step(
        "apt-get install",
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing.iter().map(|(p, _)| p))
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// keepalived and conntrackd are installed as tools for the lab; their Debian
/// services must not run on the host (they would speak VRRP/sync on real
/// interfaces). Only acts where systemd is running.
fn services_off() -> anyhow::Result<()> {
    if !std::path::Path::new("/run/systemd/system").exists() {
        return Ok(());
    }
    for unit in ["keepalived.service", "conntrackd.service"] {
        let enabled = Command::new("systemctl")
            .args(["is-enabled", "--quiet", unit])
            .status()
            .is_ok_and(|s| s.success());
        let active = Command::new("systemctl")
            .args(["is-active", "--quiet", unit])
            .status()
            .is_ok_and(|s| s.success());
        if enabled || active {
            need_root("disabling the host's keepalived/conntrackd services")?;
            run_step(
                &format!("disable host service {unit} (the lab runs its own instances)"),
                Command::new("systemctl").args(["disable", "--now", unit]),
            )?;
        }
    }
    Ok(())
}

/// cargo-fuzz, which `cargo xtask fuzz` (and so `cargo xtask test`) runs with
/// the nightly. Skipped when `cargo +nightly fuzz` already runs.
pub fn cargo_fuzz() -> anyhow::Result<()> {
    let runs = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .is_ok_and(|o| o.status.success());
    if runs {
        eprintln!("xtask: cargo-fuzz: installed");
        return Ok(());
    }
    run_step(
        "cargo install cargo-fuzz (the fuzz targets in fuzz/; takes a minute or two)",
        crate::cargo().args(["install", "cargo-fuzz", "--version", "^0.13", "--locked"]),
    )
}

/// cargo-deb, which `cargo xtask package` builds the Debian package with.
pub fn cargo_deb() -> anyhow::Result<()> {
    let runs = crate::cargo()
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if runs {
        eprintln!("xtask: cargo-deb: installed");
        return Ok(());
    }
    run_step(
        "cargo install cargo-deb (the Debian package; takes a minute or two)",
        crate::cargo().args(["install", "cargo-deb", "--version", "^3.8", "--locked"]),
    )
}

/// Where `promtool` is kept when the system has none: `target/tools/`.
fn promtool_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/promtool")
}

/// promtool, which checks the shipped alert rules (a test). Taken out of
/// Debian's `prometheus` package (`apt-get download`, `dpkg-deb -x`) into
/// `target/tools/`: installing the package would also start a Prometheus
/// server on the host. Skipped when one is on the PATH or already there.
fn promtool() -> anyhow::Result<()> {
    let on_path = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let kept = promtool_path();
    if on_path || kept.exists() {
        eprintln!("xtask: promtool: present");
        return Ok(());
    }
    // Beside where it goes, not in a world-writable place: the binary is run
    // as root (apt warns that it downloads without its sandbox user).
    let tmp = kept
        .parent()
        .context("target/tools")?
        .join(format!(".prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> anyhow::Result<()> {
        let download = || {
            run_step(
                "apt-get download prometheus (for its promtool, which checks the alert rules)",
                Command::new("apt-get")
                    .args(["download", "-q", "prometheus"])
                    .current_dir(&tmp),
            )
        };
        // A machine whose packages were all there may have no package
        // lists (an image that cleaned them): update them once, and again.
        if download().is_err() {
            need_root("updating the package lists")?;
            run_step(
                "apt-get update (the package lists, to find prometheus)",
                Command::new("apt-get")
                    .args(["update", "-q"])
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
            download()?;
        }
        let deb = std::fs::read_dir(&tmp)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        let x = tmp.join("x");
        run_step(
            "dpkg-deb -x prometheus (promtool only goes to target/tools)",
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x),
        )?;
        std::fs::create_dir_all(kept.parent().context("target/tools")?)?;
        std::fs::copy(x.join("usr/bin/promtool"), &kept).context("copy promtool")?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// rustfmt and clippy on the default toolchain (`cargo xtask test` runs both).
fn stable_components() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output()
        .context("running rustup component list")?;
    let have = String::from_utf8_lossy(&installed.stdout).into_owned();
    let missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !have.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: rustfmt, clippy: installed");
        return Ok(());
    }
    run_step(
        &format!(
            "rustup component add {} (cargo xtask test runs them)",
            missing.join(" ")
        ),
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    )
}

fn rust_src() -> anyhow::Result<()> {
    let toolchains = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("running rustup (is it installed and on PATH?)")?;
    if !String::from_utf8_lossy(&toolchains.stdout)
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        run_step(
            "install the nightly toolchain (the XDP programs need it)",
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
        )?;
    }
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup component list")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("xtask: rust-src (nightly): installed");
        return Ok(());
    }
    run_step(
        "rustup component add rust-src --toolchain nightly (build-std for the BPF target)",
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    )
}

/// True when `bpf-linker` runs and links LLVM 22 (a linker built against
/// another LLVM emits objects the nightly's bitcode does not match).
fn bpf_linker_ok() -> bool {
    let Ok(path) = which_bpf_linker() else {
        return false;
    };
    let runs = Command::new(&path)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let llvm22 = Command::new("ldd")
        .arg(&path)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("libLLVM.so.22"));
    runs && llvm22
}

fn which_bpf_linker() -> anyhow::Result<std::path::PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v bpf-linker"])
        .output()?;
    if !out.status.success() {
        bail!("bpf-linker not on PATH");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().into())
}

fn bpf_linker() -> anyhow::Result<()> {
    if bpf_linker_ok() {
        eprintln!("xtask: bpf-linker (LLVM 22): installed");
        return Ok(());
    }
    if !std::path::Path::new(LLVM_PREFIX)
        .join("bin/llvm-config")
        .exists()
    {
        bail!(
            "bpf-linker needs LLVM 22 in {LLVM_PREFIX}: install llvm-22-dev (cargo xtask setup does, as root)"
        );
    }
    run_step(
        "cargo install bpf-linker against LLVM 22 (takes a minute or two)",
        crate::cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                "^0.13",
                "--force",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )?;
    if !bpf_linker_ok() {
        bail!(
            "bpf-linker was installed but does not run or does not link LLVM 22; is ~/.cargo/bin on PATH?"
        );
    }
    Ok(())
}
