//! `ha-agent` binary: parses the command line, sets up logging, runs the command.
use clap::Parser as _;

// One thread: the VRRP loop drives its own reactor, so a packet or a timer
// wakes it directly (a multi-thread runtime woke a worker that then woke the
// loop's thread: two switches per event, a fifth of a CPU at the fast
// heartbeat's 1 kHz). Hooks run on a runtime of their own (`agent::hooks`);
// side threads have theirs (`sched::spawn`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    logging();
    let cli = ha_agent::cli::Cli::parse();
    match ha_agent::cli::run(cli, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ha-agent: error: {err:#}");
            std::process::ExitCode::from(exit_code(&err))
        }
    }
}

/// Logs go to stderr, or, when stderr is the journal (a systemd service),
/// to the journal with structured fields: each event's fields as `HA_<NAME>`
/// (`journalctl -u ha-agent HA_EVENT=transition`; events: `transition`,
/// `group`, `path`, `sync`, `config_sync`).
fn logging() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("HA_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journald = stderr_is_journal()
        .then(tracing_journald::layer)
        .and_then(Result::ok)
        .map(|l| {
            l.with_field_prefix(Some("HA".into()))
                .with_syslog_identifier("ha-agent".into())
        });
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(j) => registry.with(j).init(),
        None => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}

/// Whether stderr is the journal's stream: `JOURNAL_STREAM` (set by
/// systemd, `<device>:<inode>`) names it. Inherited by a process whose
/// stderr went elsewhere, it does not match.
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(st) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino)
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
