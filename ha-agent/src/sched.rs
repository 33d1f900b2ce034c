//! Thread scheduling: the VRRP loop runs under SCHED_FIFO so a saturated CPU
//! cannot delay adverts and lease renewals into a false failover (as
//! keepalived's `vrrp_rt_priority`); state sync runs one realtime priority
//! below it; everything that does file or network I/O for operators runs at
//! normal priority. Each side thread has its own single-threaded runtime.

use std::{future::Future, io, thread::JoinHandle};

use tracing::{info, warn};

/// How a thread is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// One realtime priority below the loop (when the loop is realtime).
    BelowLoop,
    /// Normal scheduling (SCHED_OTHER).
    Normal,
}

/// Names of the threads that must stay at normal priority when the process
/// turns realtime (they may already run).
const NORMAL_THREADS: &[&str] = &["status-writer", "control", "hooks"];

/// Puts every thread of the process under SCHED_FIFO at `priority` (0: leave
/// the scheduling alone), except the normal-priority ones, and locks memory,
/// so neither a saturated CPU nor a page fault stalls the adverts. Failing
/// is logged, not fatal.
pub fn realtime(priority: u8) {
    if priority == 0 {
        return;
    }
    let param = libc::sched_param {
        sched_priority: i32::from(priority.min(99)),
    };
    let mut failed = None;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if NORMAL_THREADS.contains(&comm.trim()) {
            continue;
        }
        if let Ok(tid) = task.file_name().to_string_lossy().parse::<i32>() {
            // SAFETY: plain syscall on one of our own threads.
            if unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) } != 0 {
                failed = Some(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: plain syscall; failure only means pages may be swapped.
    let locked = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } == 0;
    match failed {
        None => info!(priority, memory_locked = locked, "running under SCHED_FIFO"),
        Some(e) => {
            warn!(cause = %e, "cannot use realtime scheduling; adverts may be delayed under load")
        }
    }
}

/// Applies `class` to the calling thread (which inherited its creator's
/// scheduling).
pub fn set_current(class: Class) {
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        match class {
            Class::Normal => {
                let param = libc::sched_param { sched_priority: 0 };
                libc::sched_setscheduler(0, libc::SCHED_OTHER, &param);
            }
            Class::BelowLoop => {
                if libc::sched_getscheduler(0) != libc::SCHED_FIFO {
                    return;
                }
                let mut param = libc::sched_param { sched_priority: 0 };
                if libc::sched_getparam(0, &mut param) != 0 {
                    return;
                }
                param.sched_priority = (param.sched_priority - 1).max(1);
                libc::sched_setscheduler(0, libc::SCHED_FIFO, &param);
            }
        }
    }
}

/// The calling thread at normal priority until this is dropped, then back
/// to the scheduling it had: for seconds of bulk work on a realtime thread
/// (a bulk resync's dump), which would otherwise starve every
/// normal-priority thread of its CPU (the status and state writer among
/// them).
pub struct NormalForNow(Option<(i32, libc::sched_param)>);

impl NormalForNow {
    pub fn enter() -> NormalForNow {
        // SAFETY: plain syscalls on the calling thread.
        unsafe {
            let policy = libc::sched_getscheduler(0);
            let mut param = libc::sched_param { sched_priority: 0 };
            if policy != libc::SCHED_FIFO || libc::sched_getparam(0, &mut param) != 0 {
                return NormalForNow(None);
            }
            let normal = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_OTHER, &normal);
            NormalForNow(Some((policy, param)))
        }
    }
}

impl Drop for NormalForNow {
    fn drop(&mut self) {
        if let Some((policy, param)) = self.0 {
            // SAFETY: plain syscall on the calling thread, restoring what
            // it had.
            unsafe { libc::sched_setscheduler(0, policy, &param) };
        }
    }
}

/// Starts thread `name` in `class` running `body`.
pub fn spawn_blocking(
    name: &str,
    class: Class,
    body: impl FnOnce() + Send + 'static,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            set_current(class);
            body();
        })
}

/// Starts thread `name` in `class` with a single-threaded tokio runtime of
/// its own, running the future `make` returns until it ends.
pub fn spawn<F>(
    name: &str,
    class: Class,
    make: impl FnOnce() -> F + Send + 'static,
) -> io::Result<JoinHandle<()>>
where
    F: Future<Output = ()>,
{
    let thread = name.to_owned();
    spawn_blocking(
        name,
        class,
        move || match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(make()),
            Err(e) => warn!(thread, cause = %e, "thread could not start its runtime"),
        },
    )
}
