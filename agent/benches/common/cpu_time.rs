//! CPU-time clocks shared by the benchmarks: figures taken on CPU time are not inflated by
//! whatever else the machine runs.

use std::time::Duration;

/// The time `clock` (a `CLOCK_*_CPUTIME_ID`) has counted.
fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the CPU-time clocks always exist on Linux.
    let rc = unsafe { libc::clock_gettime(clock, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock})");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time this process has used.
#[allow(dead_code, reason = "each benchmark uses the clock it needs")]
pub fn process() -> Duration {
    cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time of the calling thread.
#[allow(dead_code, reason = "each benchmark uses the clock it needs")]
pub fn thread() -> Duration {
    cpu_time(libc::CLOCK_THREAD_CPUTIME_ID)
}
