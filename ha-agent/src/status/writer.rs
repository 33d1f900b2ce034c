//! Writes the status file on a normal-priority thread of its own, so a slow
//! disk never stalls the agent's loop (where a stall lapses the ownership
//! lease). Only the latest status matters: queued older ones are skipped.

use std::{io, sync::mpsc, thread::JoinHandle};

use super::Status;
use crate::{paths, sched};

/// The writer thread and its queue.
#[derive(Debug)]
pub struct StatusWriter {
    /// Queue to the thread (closing it ends the thread).
    tx: mpsc::Sender<Box<Status>>,
    /// The thread, joined by [`StatusWriter::finish`].
    thread: JoinHandle<()>,
}

impl StatusWriter {
    pub fn spawn(instance: &str) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Box<Status>>();
        let path = paths::status_file(instance);
        let thread = sched::spawn_blocking("status-writer", sched::Class::Normal, move || {
            while let Ok(mut status) = rx.recv() {
                while let Ok(newer) = rx.try_recv() {
                    status = newer;
                }
                let bytes = serde_json::to_vec_pretty(&status).unwrap_or_default();
                if let Err(e) = paths::write_atomically(&path, &bytes, 0o644) {
                    tracing::debug!(cause = %e, "writing the status file failed");
                }
            }
        })?;
        Ok(StatusWriter { tx, thread })
    }

    /// Queues a status to write (serialized on the writer's thread).
    pub fn write(&self, status: Status) {
        let _ = self.tx.send(Box::new(status));
    }

    /// Writes what is queued and ends the thread.
    pub fn finish(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}
