//! The loop's deadline: a timerfd (CLOCK_MONOTONIC, nanosecond resolution)
//! in the reactor. tokio's timer wheel counts milliseconds, too coarse for
//! the master-down timer and the fast heartbeat's 1 ms rounds; a timerfd
//! wakes the loop on time (a SCHED_FIFO thread has no timer slack) while it
//! still waits on its sockets.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use tokio::io::unix::AsyncFd;

#[derive(Debug)]
pub struct Deadline {
    fd: AsyncFd<OwnedFd>,
}

impl Deadline {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned right after.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid fd.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd is moved into the AsyncFd and dropped with it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Deadline { fd })
    }

    /// Fires `after` from now (at least 1 ns: zero would disarm it).
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
            },
        };
        // SAFETY: valid fd and itimerspec; the old value is not wanted.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits until it fired (since it was last armed).
    pub async fn wait(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut ticks = [0u8; 8];
            // SAFETY: valid fd and an 8-byte buffer.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), ticks.as_mut_ptr().cast(), 8) };
            if n == 8 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
            guard.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_on_time_and_rearms() {
        let d = Deadline::new().unwrap();
        for ms in [3u64, 1, 0] {
            let t = std::time::Instant::now();
            d.arm(Duration::from_millis(ms)).unwrap();
            d.wait().await.unwrap();
            let took = t.elapsed();
            assert!(took >= Duration::from_millis(ms), "{ms} ms: {took:?}");
            assert!(took < Duration::from_millis(ms + 500), "{ms} ms: {took:?}");
        }
    }
}
