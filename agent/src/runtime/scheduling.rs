//! `--scheduling yield`: the agent's loop runs in the idle scheduling class (`SCHED_IDLE`) and
//! returns to the normal class only while the ring buffer is filling.
//!
//! Why: on a busy host the workload's processes ping-pong (a server and its clients, each
//! waiting for the other), and any CPU the agent takes at normal priority preempts one side
//! while the other side idles waiting for it. Measured with perf on `bench live`'s testbed, the
//! agent's ~4% of CPU samples raised the machine's idle share from 15% to 24%. In the idle
//! class the agent runs on the CPU time the workload leaves unused and is preempted at once
//! when a workload task wakes.
//!
//! The risk is starvation: on a CPU that is never idle an idle-class thread gets a tiny share,
//! and the ring would fill. So a watchdog thread at normal priority moves the loop's thread
//! back to the normal class whenever a quarter of the ring is unread (the kernel's
//! early-wakeup mark, `Config::wakeup_bytes`): it wakes on the kernel's wakeup and also looks
//! at the ring's positions every 10 ms, since the wakeup can be missed (see [`WATCH_PERIOD`]).
//! The loop returns to the idle class once a drain leaves less than a sixteenth unread. Losses, if any,
//! stay counted by the kernel (`ringbuf_reserve_failed`), as with `--scheduling normal`.
//! `tests/tests/live_scheduling.rs` shows both halves on hogged cores: the idle class alone
//! loses records, yielding does not.

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context as _, Result, bail};
use tracing::{debug, info, warn};

/// How the agent's loop is scheduled (`--scheduling`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Scheduling {
    /// Idle class while the ring keeps up, normal class while it fills.
    Yield,
    /// Always the normal class (the agent competes with the workload for CPU).
    #[default]
    Normal,
    /// Tests and benchmarks only: the idle class and nothing to bring the loop back, to show
    /// what the watchdog is for (a starved loop loses records).
    #[value(hide = true)]
    Idle,
}

/// The two classes the loop moves between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Idle,
    Normal,
}

struct Shared {
    /// The loop's thread.
    tid: libc::pid_t,
    /// Whether the loop is meant to be in the idle class. No lock: the loop's thread must
    /// never hold one while it may be in the idle class (the moment it moves itself there it
    /// can be descheduled for hundreds of milliseconds, and a watchdog waiting on its lock
    /// could not promote it: measured, 0.8 s and thousands of records lost).
    idle: AtomicBool,
    /// Times the thread was moved back to the normal class because the ring was filling.
    promotions: AtomicU64,
    /// Set for good at shutdown: the final drain must not wait for idle CPU time.
    pinned_normal: AtomicBool,
    /// The ring's fill, read by the watchdog (promote) and after each drain (demote).
    positions: RingPositions,
}

impl Shared {
    /// The loop's own move to the idle class (it is the only one to demote).
    fn demote(&self, why: &str) {
        if self.pinned_normal.load(Ordering::Relaxed) {
            return;
        }
        self.idle.store(true, Ordering::SeqCst);
        debug!(why, "agent loop to the idle scheduling class");
        // A watchdog that promotes between the store and the call is overridden here; it
        // promotes again at its next look (it re-asserts the normal class while a quarter of
        // the ring is unread, whatever the flag says).
        if let Err(e) = set_class(self.tid, Class::Idle) {
            warn!("moving the agent's loop to the idle scheduling class: {e:#}");
            self.idle.store(false, Ordering::SeqCst);
        }
    }

    /// Move the loop to the normal class (from any thread). Counted as a promotion when it was
    /// meant to be idle, unless `why` is the shutdown's.
    fn promote(&self, why: &str) {
        let was_idle = self.idle.swap(false, Ordering::SeqCst);
        if let Err(e) = set_class(self.tid, Class::Normal) {
            warn!("moving the agent's loop to the normal scheduling class: {e:#}");
            return;
        }
        if was_idle {
            if why != SHUTDOWN {
                self.promotions.fetch_add(1, Ordering::Relaxed);
            }
            debug!(why, "agent loop to the normal scheduling class");
        }
    }
}

const SHUTDOWN: &str = "shutdown";

/// The loop's scheduling, as `--scheduling` asks.
pub(crate) struct Yielding {
    shared: Option<Arc<Shared>>,
    stop: Option<OwnedFd>,
    watchdog: Option<JoinHandle<()>>,
}

impl Yielding {
    /// The loop's scheduling as `how` asks, on the calling thread, watching `ring`.
    pub(crate) fn new(how: Scheduling, ring: &impl AsFd, ring_bytes: u32) -> Result<Self> {
        match how {
            Scheduling::Yield => Self::start(ring, ring_bytes),
            Scheduling::Normal => Ok(Self::normal()),
            Scheduling::Idle => {
                warn!("--scheduling idle: the loop never returns to the normal class (tests only)");
                let mut idle = Self::start(ring, ring_bytes)?;
                idle.stop_watchdog();
                Ok(idle)
            }
        }
    }

    /// Always the normal class: nothing to manage.
    pub(crate) fn normal() -> Self {
        Self {
            shared: None,
            stop: None,
            watchdog: None,
        }
    }

    /// Start yielding on the calling thread (the loop's), with a watchdog on `ring`'s fd. If
    /// this process could not come back from the idle class (no `CAP_SYS_NICE` and an
    /// `RLIMIT_NICE` below 20), the loop stays in the normal class, with a warning.
    pub(crate) fn start(ring: &impl AsFd, ring_bytes: u32) -> Result<Self> {
        if let Err(e) = can_return_from_idle() {
            warn!(
                "--scheduling yield: {e:#}; the agent stays in the normal scheduling class \
                 (grant CAP_SYS_NICE or an RLIMIT_NICE of 20, or use --scheduling normal to \
                 silence this)"
            );
            return Ok(Self::normal());
        }
        let ring_fd = ring
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the ring buffer fd for the scheduling watchdog")?;
        let shared = Arc::new(Shared {
            tid: gettid(),
            idle: AtomicBool::new(false),
            promotions: AtomicU64::new(0),
            pinned_normal: AtomicBool::new(false),
            positions: RingPositions::map(&ring_fd, ring_bytes)?,
        });
        // SAFETY: plain syscall; the fd is checked below.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(std::io::Error::last_os_error()).context("creating an eventfd");
        }
        // SAFETY: `stop` is a fresh fd we own.
        let stop: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(stop) };
        let stop_watch = stop
            .try_clone()
            .context("duplicating the watchdog's stop eventfd")?;
        let watched = Arc::clone(&shared);
        let watchdog = std::thread::Builder::new()
            .name("shadowtap-sched".into())
            .spawn(move || {
                if let Err(e) = watch(&ring_fd, &stop_watch, &watched) {
                    warn!("scheduling watchdog stopped: {e:#}; the agent's loop stays in the normal class");
                    watched.pinned_normal.store(true, Ordering::Relaxed);
                    watched.promote(SHUTDOWN);
                }
            })
            .context("starting the scheduling watchdog thread")?;
        // The watchdog thread was created in the normal class; only the loop's thread yields.
        shared.demote("start");
        info!("agent loop in the idle scheduling class; back to normal while the ring fills");
        Ok(Self {
            shared: Some(shared),
            stop: Some(stop),
            watchdog: Some(watchdog),
        })
    }

    /// Times the loop was brought back to the normal class.
    pub(crate) fn promotions(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.promotions.load(Ordering::Relaxed))
    }

    /// Whether the loop is in the idle class now.
    pub(crate) fn idle(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|s| s.idle.load(Ordering::Relaxed))
    }

    /// After a drain: back to the idle class once less than a sixteenth of the ring is
    /// unread. Judged on the ring as it is now, so a drain that began before the watchdog
    /// promoted cannot undo the promotion on stale numbers (and if the ring refills, the
    /// watchdog promotes again within [`WATCH_PERIOD`]).
    pub(crate) fn after_drain(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        if !shared.idle.load(Ordering::Relaxed)
            && shared.positions.unread() < shared.positions.demote_bytes
        {
            shared.demote("caught up");
        }
    }

    /// Back to the normal class for good (shutdown's final drain).
    pub(crate) fn stay_normal(&self) {
        if let Some(shared) = &self.shared {
            shared.pinned_normal.store(true, Ordering::Relaxed);
            shared.promote(SHUTDOWN);
        }
    }
}

impl Yielding {
    fn stop_watchdog(&mut self) {
        if let Some(stop) = &self.stop {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a local to an eventfd we own.
            unsafe {
                libc::write(stop.as_raw_fd(), std::ptr::from_ref(&one).cast(), 8);
            }
        }
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Yielding {
    fn drop(&mut self) {
        self.stop_watchdog();
    }
}

/// The watchdog: wake on the kernel's early wakeups on the ring (edge-triggered, so a ring
/// that simply holds records does not keep it awake) and every [`WATCH_PERIOD`], and promote
/// the loop whenever a quarter of the ring is unread.
fn watch(ring: &OwnedFd, stop: &OwnedFd, shared: &Shared) -> Result<()> {
    // SAFETY: plain syscalls on fds we own; results are checked.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error()).context("epoll_create1");
    }
    // SAFETY: `ep` is a fresh fd we own.
    let ep: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(ep) };
    for (fd, token, flags) in [
        (ring.as_raw_fd(), 1_u64, libc::EPOLLIN | libc::EPOLLET),
        (stop.as_raw_fd(), 2_u64, libc::EPOLLIN),
    ] {
        let mut ev = libc::epoll_event {
            events: flags as u32,
            u64: token,
        };
        // SAFETY: `ev` lives across the call.
        if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut ev) } < 0 {
            return Err(std::io::Error::last_os_error()).context("epoll_ctl");
        }
    }
    let period = i32::try_from(WATCH_PERIOD.as_millis()).unwrap_or(10);
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
    loop {
        // SAFETY: `events` outlives the call and its length is passed.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), 2, period) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err).context("epoll_wait");
        }
        let n = usize::try_from(n).unwrap_or(0);
        if events[..n].iter().any(|ev| ev.u64 == 2) {
            return Ok(());
        }
        // The kernel's wakeup (an event) or the period's check: either way, what counts is how
        // much is unread now.
        if shared.positions.unread() >= shared.positions.promote_bytes {
            shared.promote("ring filling");
        }
    }
}

/// How often the watchdog looks at the ring besides the kernel's wakeups. The kernel wakes on
/// the record that takes the unread bytes across the mark, and two CPUs reserving at once can
/// both step over it (each sees the other's reservation too): then no wakeup comes until the
/// ring is drained, and an idle-class loop on busy cores may wait half a second for CPU. A
/// look is two loads from a mapped page.
const WATCH_PERIOD: std::time::Duration = std::time::Duration::from_millis(10);

/// A read-only mapping of a ring buffer's consumer and producer position pages.
struct RingPositions {
    base: *mut libc::c_void,
    page: usize,
    /// Unread bytes at which the loop is brought back: a quarter of the ring (the kernel's
    /// early-wakeup mark).
    promote_bytes: u64,
    /// Unread bytes below which it returns to the idle class: a sixteenth of the ring.
    demote_bytes: u64,
}

// SAFETY: the mapping is only read (atomically, from any thread) and unmapped once, on drop.
unsafe impl Send for RingPositions {}
// SAFETY: as above; `unread` takes `&self` and only loads atomics.
unsafe impl Sync for RingPositions {}

impl RingPositions {
    fn map(ring: &OwnedFd, ring_bytes: u32) -> Result<Self> {
        // SAFETY: no arguments.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .context("sysconf(_SC_PAGESIZE)")?;
        // SAFETY: a fresh shared read-only mapping of the ring's first two pages (consumer
        // and producer positions), which the kernel allows for any ring buffer fd.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                ring.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .context("mapping the ring buffer's position pages");
        }
        Ok(Self {
            base,
            page,
            promote_bytes: u64::from(ring_bytes / 4),
            demote_bytes: u64::from(ring_bytes / 16),
        })
    }

    /// Bytes reserved by the kernel and not yet consumed.
    fn unread(&self) -> u64 {
        // SAFETY: both positions are 8-byte aligned at the start of their pages, within the
        // mapping for its whole life; the kernel and the consumer update them atomically.
        let (consumer, producer) = unsafe {
            (
                (*self.base.cast::<AtomicU64>()).load(Ordering::Acquire),
                (*self.base.byte_add(self.page).cast::<AtomicU64>()).load(Ordering::Acquire),
            )
        };
        producer.saturating_sub(consumer)
    }
}

impl Drop for RingPositions {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, once.
        unsafe {
            libc::munmap(self.base, 2 * self.page);
        }
    }
}

fn gettid() -> libc::pid_t {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::gettid() }
}

fn set_class(tid: libc::pid_t, class: Class) -> Result<()> {
    let policy = match class {
        Class::Idle => libc::SCHED_IDLE,
        Class::Normal => libc::SCHED_OTHER,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` lives across the call; `tid` is a thread of this process.
    if unsafe { libc::sched_setscheduler(tid, policy, &raw const param) } < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("sched_setscheduler({tid}, {class:?})"));
    }
    Ok(())
}

/// Try the round trip on a throwaway thread: a thread in the idle class may return to the
/// normal one only with `CAP_SYS_NICE` or an `RLIMIT_NICE` that allows nice 0.
fn can_return_from_idle() -> Result<()> {
    let probe = std::thread::Builder::new()
        .name("shadowtap-sched-probe".into())
        .spawn(|| {
            let tid = gettid();
            set_class(tid, Class::Idle)?;
            set_class(tid, Class::Normal)
        })
        .context("starting the scheduling probe thread")?;
    match probe.join() {
        Ok(r) => r.context("this process cannot return a thread from the idle class"),
        Err(_) => bail!("the scheduling probe thread panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real BPF ring buffer of `bytes` (the watchdog maps its position pages and polls it);
    /// created with the bpf syscall, which needs CAP_BPF (the agent needs it anyway).
    fn ringbuf(bytes: u32) -> OwnedFd {
        const BPF_MAP_CREATE: libc::c_long = 0;
        const BPF_MAP_TYPE_RINGBUF: u32 = 27;
        // bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, the rest 0.
        let mut attr = [0_u32; 32];
        attr[0] = BPF_MAP_TYPE_RINGBUF;
        attr[3] = bytes;
        // SAFETY: `attr` outlives the call and its size is passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_CREATE,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        assert!(
            fd >= 0,
            "creating a ring buffer map: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh fd we own.
        unsafe { std::os::fd::FromRawFd::from_raw_fd(i32::try_from(fd).expect("fd")) }
    }

    #[test]
    fn the_loop_moves_between_classes_and_shutdown_pins_it_normal() {
        let fd = ringbuf(1 << 20);
        let policy = || {
            // SAFETY: plain syscall on this thread.
            unsafe { libc::sched_getscheduler(0) }
        };
        let positions = RingPositions::map(&fd, 1 << 20).expect("mapping the positions");
        assert_eq!(
            (
                positions.promote_bytes,
                positions.demote_bytes,
                positions.unread()
            ),
            (1 << 18, 1 << 16, 0)
        );
        let y = Yielding::start(&fd, 1 << 20).expect("start");
        if y.shared.is_none() {
            // Not permitted here (no CAP_SYS_NICE): the fallback is the normal class.
            assert_eq!(policy(), libc::SCHED_OTHER);
            return;
        }
        assert_eq!(policy(), libc::SCHED_IDLE);
        assert!(y.idle());
        let shared = Arc::clone(y.shared.as_ref().expect("yielding"));
        let before = y.promotions();
        // As the watchdog does when a quarter of the ring is unread.
        shared.promote("test");
        assert_eq!(policy(), libc::SCHED_OTHER);
        assert_eq!(y.promotions(), before + 1);
        // The ring is empty: the next drain returns the loop to the idle class.
        y.after_drain();
        assert_eq!(policy(), libc::SCHED_IDLE);
        assert!(y.idle());
        y.stay_normal();
        assert_eq!(policy(), libc::SCHED_OTHER);
        assert_eq!(y.promotions(), before + 1, "shutdown is not a promotion");
        y.after_drain();
        assert_eq!(policy(), libc::SCHED_OTHER, "pinned for the final drain");
        drop(shared);
        drop(y);
    }
}
