//! `cargo xtask lab`: the failover lab. `cargo xtask lab down` removes the
//! namespaces of any lab or test run that could not clean up after itself.

use anyhow::bail;

#[derive(Debug, clap::Args)]
pub struct LabArgs {
    #[command(subcommand)]
    action: Option<LabAction>,
}

#[derive(Debug, clap::Subcommand)]
enum LabAction {
    /// Remove every lab namespace (`halab-*`) and the processes in it.
    Down,
}

pub fn run(args: &LabArgs) -> anyhow::Result<()> {
    match args.action {
        Some(LabAction::Down) => {
            if !crate::is_root() {
                bail!("removing network namespaces needs root: run `cargo xtask lab down` as root");
            }
            let removed = ha_lab::down()?;
            if removed.is_empty() {
                println!("no lab namespaces left over");
            } else {
                println!(
                    "removed {} namespace(s): {}",
                    removed.len(),
                    removed.join(" ")
                );
            }
            let pins = crate::test::remove_test_pins(&[])?;
            if !pins.is_empty() {
                println!("removed test data-plane pins: {}", pins.join(" "));
            }
            Ok(())
        }
        None => {
            crate::setup::run()?;
            crate::build::build_ebpf_only()?;
            bail!(
                "the failover lab (scenarios, report, keepalived comparison) is not built yet; \
             `cargo xtask test` runs what exists, `cargo xtask lab down` cleans up"
            )
        }
    }
}
