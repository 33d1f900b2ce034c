//! Writes the status file on a normal-priority thread of its own, so a slow
//! disk never stalls the agent's loop (where a stall lapses the ownership
//! lease). Only the latest status matters: queued older ones are skipped.
//! The same thread persists the loop's other small state (the advert
//! authentication's sequence floor and replay marks).

use std::{
    io,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
};

use super::Status;
use crate::{paths, sched};

/// What the thread writes.
#[derive(Debug)]
enum Job {
    Status(Box<Status>),
    File(PathBuf, Vec<u8>, Option<Ack>),
}

/// Told once a file is on disk: `value` stored into `to`.
#[derive(Debug, Clone)]
pub struct Ack {
    pub to: Arc<AtomicU64>,
    pub value: u64,
}

type FileJob = (PathBuf, Vec<u8>, Option<Ack>);

fn write_file(file: &Option<FileJob>) {
    let Some((path, bytes, ack)) = file else {
        return;
    };
    match paths::write_atomically(path, bytes, 0o600) {
        Ok(()) => {
            if let Some(a) = ack {
                a.to.fetch_max(a.value, Ordering::Release);
            }
        }
        Err(e) => {
            tracing::warn!(cause = %e, file = %path.display(), "writing a state file failed");
        }
    }
}

/// The writer thread and its queue.
#[derive(Debug)]
pub struct StatusWriter {
    /// Queue to the thread (closing it ends the thread).
    tx: mpsc::Sender<Job>,
    /// The thread, joined by [`StatusWriter::finish`].
    thread: JoinHandle<()>,
}

impl StatusWriter {
    pub fn spawn(instance: &str) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let path = paths::status_file(instance);
        let thread = sched::spawn_blocking("status-writer", sched::Class::Normal, move || {
            while let Ok(first) = rx.recv() {
                let (mut status, mut file) = (None, None);
                for job in std::iter::once(first).chain(rx.try_iter()) {
                    match job {
                        Job::Status(s) => status = Some(s),
                        Job::File(p, b, ack) => {
                            // Files are few and small: each kept; a newer
                            // copy of the same one replaces it.
                            if let Some((q, _, _)) = &file
                                && *q != p
                            {
                                write_file(&file.take());
                            }
                            file = Some((p, b, ack));
                        }
                    }
                }
                write_file(&file);
                if let Some(status) = status {
                    let bytes = serde_json::to_vec_pretty(&status).unwrap_or_default();
                    if let Err(e) = paths::write_atomically(&path, &bytes, 0o644) {
                        tracing::debug!(cause = %e, "writing the status file failed");
                    }
                }
            }
        })?;
        Ok(StatusWriter { tx, thread })
    }

    /// Queues a status to write (serialized on the writer's thread).
    pub fn write(&self, status: Status) {
        let _ = self.tx.send(Job::Status(Box::new(status)));
    }

    /// Queues a small state file to write (0600, atomically, synced); `ack`
    /// is stored once it is on disk.
    pub fn save(&self, path: PathBuf, bytes: Vec<u8>, ack: Option<Ack>) {
        let _ = self.tx.send(Job::File(path, bytes, ack));
    }

    /// Writes what is queued and ends the thread.
    pub fn finish(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}
