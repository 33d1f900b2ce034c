//! What the rest of the daemon (the control thread) may ask of the VRRP
//! loop, and how it answers. The control thread depends on this module;
//! the loop never depends on the control thread.

use ha_core::node::Command;
use tokio::sync::{mpsc, oneshot};

use crate::{config::Config, status::Status};

/// The outcome of a command: a message for the operator either way.
pub type Outcome = Result<String, String>;

/// A request for the loop, with where its answer goes.
#[derive(Debug)]
pub enum LoopRequest {
    /// An operator command for the node core.
    Command(Command, oneshot::Sender<Outcome>),
    /// Apply a validated configuration's VIPs (the loop's half of a reload:
    /// the VIP table, GARP sockets, advert addresses).
    Apply(Box<Config>, oneshot::Sender<Outcome>),
    /// A status snapshot taken now.
    Status(oneshot::Sender<Box<Status>>),
}

/// The control thread's handle on the loop.
pub type ToLoop = mpsc::UnboundedSender<LoopRequest>;

const STOPPING: &str = "the agent is stopping";

/// Sends `make(reply)` to the loop and waits for the answer.
async fn ask<T>(
    to_loop: &ToLoop,
    make: impl FnOnce(oneshot::Sender<T>) -> LoopRequest,
) -> Result<T, String> {
    let (tx, rx) = oneshot::channel();
    to_loop.send(make(tx)).map_err(|_| STOPPING.to_owned())?;
    rx.await.map_err(|_| STOPPING.to_owned())
}

/// Runs an operator command on the loop.
pub async fn command(to_loop: &ToLoop, c: Command) -> Outcome {
    ask(to_loop, |tx| LoopRequest::Command(c, tx)).await?
}

/// Applies a configuration's VIPs on the loop.
pub async fn apply(to_loop: &ToLoop, config: Config) -> Outcome {
    ask(to_loop, |tx| LoopRequest::Apply(Box::new(config), tx)).await?
}

/// A fresh status from the loop.
pub async fn status(to_loop: &ToLoop) -> Result<Box<Status>, String> {
    ask(to_loop, LoopRequest::Status).await
}
