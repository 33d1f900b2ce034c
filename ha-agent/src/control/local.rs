//! The operator socket (`/run/ha-agent/<instance>.sock`): one JSON request
//! per line, one JSON answer per line. `ha-agent promote|demote|maintenance|
//! resync|reload|status` are its clients ([`request`]).

use std::sync::Arc;

use anyhow::Context as _;
use ha_core::node::Command;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::warn;

use super::{Shared, reload};
use crate::{
    agent::request::{self, ToLoop},
    paths,
    status::Status,
};

/// What the operator asks of the running agent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum LocalRequest {
    /// Become master now (priority 254, preempting), until `demote` or a restart.
    Promote,
    /// Hand over to the peer (priority 1), until `promote` or a restart.
    Demote,
    /// Persistent demotion (survives restarts), for upgrades.
    Maintenance(bool),
    /// Ask the peer for a full state resync.
    Resync,
    /// Re-read the configuration file.
    Reload,
    /// The status, taken now.
    Status,
}

/// The agent's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalResponse {
    pub ok: bool,
    pub message: String,
    /// The answer to [`LocalRequest::Status`].
    #[serde(default)]
    pub status: Option<Box<Status>>,
}

impl LocalResponse {
    fn of(outcome: Result<String, String>) -> Self {
        match outcome {
            Ok(message) => LocalResponse {
                ok: true,
                message,
                status: None,
            },
            Err(message) => LocalResponse {
                ok: false,
                message,
                status: None,
            },
        }
    }
}

/// Sends a request to the running agent of `instance`.
pub async fn request(instance: &str, req: LocalRequest) -> anyhow::Result<LocalResponse> {
    let path = paths::socket(instance);
    let mut s = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "no running agent for instance {instance} ({} missing: is `ha-agent run` running?)",
            path.display()
        )
    })?;
    let mut line = serde_json::to_vec(&req)?;
    line.push(b'\n');
    s.write_all(&line).await?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).await?;
    serde_json::from_str(&reply).context("malformed answer from the agent")
}

/// Serves the operator socket until the thread stops; the socket file is
/// removed then.
pub(super) async fn serve(shared: Arc<Shared>, to_loop: ToLoop) {
    let path = paths::socket(&shared.instance);
    let _ = std::fs::create_dir_all(paths::RUN_DIR);
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!(cause = %e, path = %path.display(), "control socket unavailable");
            return;
        }
    };
    let _remove = RemoveOnDrop(path);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let to_loop = to_loop.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(rd).read_line(&mut line).await.is_err() {
                return;
            }
            let resp = match serde_json::from_str::<LocalRequest>(&line) {
                Ok(req) => answer(&shared, &to_loop, req).await,
                Err(e) => LocalResponse::of(Err(format!("malformed request: {e}"))),
            };
            if let Ok(mut bytes) = serde_json::to_vec(&resp) {
                bytes.push(b'\n');
                let _ = wr.write_all(&bytes).await;
            }
        });
    }
}

async fn answer(shared: &Shared, to_loop: &ToLoop, req: LocalRequest) -> LocalResponse {
    let command = |c| request::command(to_loop, c);
    match req {
        LocalRequest::Promote => LocalResponse::of(command(Command::Promote).await),
        LocalRequest::Demote => LocalResponse::of(command(Command::Demote).await),
        LocalRequest::Maintenance(on) => LocalResponse::of(command(Command::Maintenance(on)).await),
        LocalRequest::Resync => LocalResponse::of(command(Command::Resync).await),
        LocalRequest::Reload => LocalResponse::of(reload::reload(shared, false, to_loop).await),
        LocalRequest::Status => match request::status(to_loop).await {
            Ok(status) => LocalResponse {
                ok: true,
                message: String::new(),
                status: Some(status),
            },
            Err(message) => LocalResponse::of(Err(message)),
        },
    }
}

/// Removes a file when dropped (the socket, when the server ends).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
