//! A sub-millisecond sleep for the open model's scheduler.
//!
//! tokio's timer wheel has 1 ms ticks and mio rounds epoll timeouts up to whole milliseconds,
//! so `tokio::time::sleep_until` wakes up to ~2 ms late: arrivals would be sent in 1 ms
//! batches and the schedule lag would be mostly the timer's. A timerfd (an hrtimer, no slack)
//! registered with the same epoll instance as the sockets wakes the runtime within
//! microseconds of the deadline, without a second thread.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Instant,
};

use tokio::io::{Interest, unix::AsyncFd};

pub struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

impl PreciseTimer {
    /// Must be called inside a tokio runtime with I/O enabled.
    pub fn new() -> io::Result<Self> {
        // SAFETY: timerfd_create has no memory preconditions; the result is checked.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open, and returns the
        // same descriptor, for as long as it lives.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Self { fd })
    }

    /// Returns at or just after `deadline` (at once if it has passed).
    pub async fn sleep_until(&self, deadline: Instant) -> io::Result<()> {
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Ok(());
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(left.subsec_nanos()),
            },
        };
        // SAFETY: the descriptor is ours and open; `spec` outlives the call. Re-arming also
        // resets an expiry left unread by a cancelled sleep.
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                0,
                &raw const spec,
                std::ptr::null_mut(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0_u8; 8];
            // SAFETY: reads at most 8 bytes into a live 8-byte buffer.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            // Either way nothing is left to read until the next expiry, which the timer was
            // armed for only after this point, so its edge cannot be missed.
            guard.clear_ready();
            if n == 8 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::WouldBlock {
                return Err(err);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn wakes_close_to_the_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let timer = PreciseTimer::new().expect("timerfd");
            let mut late = Vec::new();
            for i in 0..50_u32 {
                let deadline = Instant::now() + Duration::from_micros(200 + 37 * u64::from(i));
                timer.sleep_until(deadline).await.expect("sleeps");
                let now = Instant::now();
                assert!(now >= deadline, "woke early");
                late.push(now - deadline);
            }
            late.sort();
            // The median is a few µs on an idle machine; tokio's sleep would be ~1 ms.
            assert!(late[25] < Duration::from_micros(500), "{late:?}");
        });
    }
}
