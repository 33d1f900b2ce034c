//! `ha-agent` binary: parses the command line, sets up logging, runs the command.
use clap::Parser as _;

// One thread: the VRRP loop drives its own reactor, so a packet or a timer
// wakes it directly (a multi-thread runtime woke a worker that then woke the
// loop's thread: two switches per event, a fifth of a CPU at the fast
// heartbeat's 1 kHz). Hooks run on a runtime of their own (`agent::hooks`);
// side threads have theirs (`sched::spawn`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HA_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = ha_agent::cli::Cli::parse();
    match ha_agent::cli::run(cli, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ha-agent: error: {err:#}");
            std::process::ExitCode::from(exit_code(&err))
        }
    }
}

/// Exit codes (documented in the README): 1 an operation failed, 2 bad
/// command line (clap), 77 missing privileges, 78 invalid configuration.
fn exit_code(err: &anyhow::Error) -> u8 {
    if err
        .chain()
        .any(|c| c.downcast_ref::<ha_agent::config::ConfigError>().is_some())
    {
        return 78;
    }
    if err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    }) {
        return 77;
    }
    1
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
