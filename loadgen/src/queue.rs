//! Hands the open model's arrivals to connections: an arrival goes to the connection idle the
//! longest (round robin, so every connection stays warm and none times out on the server),
//! or waits in a FIFO until one finishes. Single-threaded: it lives in a `RefCell` shared by
//! the scheduler task and the connection tasks of one runtime.
//!
//! The FIFO is the point of the design: when the server stalls, every connection is soon
//! busy, later arrivals wait here, and are sent — late — as connections come free. Their
//! latency from the intended time carries the stall; from the actual send it does not.

use std::{
    cell::RefCell,
    collections::VecDeque,
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::Instant,
};

#[derive(Default)]
struct Slot {
    job: Option<Instant>,
    waker: Option<Waker>,
    idle: bool,
}

pub struct JobQueue {
    pending: VecDeque<Instant>,
    idle: VecDeque<usize>,
    slots: Vec<Slot>,
    /// No more arrivals will come.
    closed: bool,
    /// Waiting arrivals are only sent before this (the end of `--duration` plus a grace).
    send_until: Instant,
    /// Arrivals dropped unsent.
    unsent: u64,
}

impl JobQueue {
    pub fn new(connections: usize, send_until: Instant) -> Self {
        Self {
            pending: VecDeque::new(),
            idle: VecDeque::with_capacity(connections),
            slots: (0..connections).map(|_| Slot::default()).collect(),
            closed: false,
            send_until,
            unsent: 0,
        }
    }

    /// An arrival intended at `intended`.
    pub fn dispatch(&mut self, intended: Instant) {
        match self.idle.pop_front() {
            Some(i) => {
                let slot = &mut self.slots[i];
                slot.idle = false;
                slot.job = Some(intended);
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
            None => self.pending.push_back(intended),
        }
    }

    /// Arrivals waiting for a connection.
    #[cfg(test)]
    pub fn backlog(&self) -> usize {
        self.pending.len()
    }

    /// No more arrivals: idle connections end; busy ones take what is waiting (until
    /// `send_until`), then end.
    pub fn close(&mut self) {
        self.closed = true;
        self.wake_idle();
    }

    /// Stop now: what is waiting is dropped unsent.
    pub fn abandon(&mut self) {
        self.unsent += self.pending.len() as u64;
        self.pending.clear();
        self.close();
    }

    pub fn unsent(&self) -> u64 {
        self.unsent + self.pending.len() as u64
    }

    fn wake_idle(&mut self) {
        for &i in &self.idle {
            if let Some(waker) = self.slots[i].waker.take() {
                waker.wake();
            }
        }
    }

    fn poll_next(&mut self, slot: usize, cx: &mut Context<'_>) -> Poll<Option<Instant>> {
        if let Some(job) = self.slots[slot].job.take() {
            return Poll::Ready(Some(job));
        }
        if !self.pending.is_empty() {
            if Instant::now() < self.send_until {
                return Poll::Ready(self.pending.pop_front());
            }
            self.unsent += self.pending.len() as u64;
            self.pending.clear();
            return Poll::Ready(None);
        }
        if self.closed {
            return Poll::Ready(None);
        }
        let s = &mut self.slots[slot];
        s.waker = Some(cx.waker().clone());
        if !s.idle {
            s.idle = true;
            self.idle.push_back(slot);
        }
        Poll::Pending
    }
}

/// The next arrival for connection `slot`, or `None` when the run is over for it.
pub fn next_job(queue: &RefCell<JobQueue>, slot: usize) -> NextJob<'_> {
    NextJob { queue, slot }
}

pub struct NextJob<'a> {
    queue: &'a RefCell<JobQueue>,
    slot: usize,
}

impl Future for NextJob<'_> {
    type Output = Option<Instant>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Instant>> {
        self.queue.borrow_mut().poll_next(self.slot, cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, task::Wake, time::Duration};

    use super::*;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn idle_connections_first_then_fifo() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut q = JobQueue::new(2, t0 + Duration::from_secs(60));
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        // Both connections go idle, 1 first.
        assert!(q.poll_next(1, &mut cx).is_pending());
        assert!(q.poll_next(0, &mut cx).is_pending());
        q.dispatch(at(1));
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        q.dispatch(at(2));
        q.dispatch(at(3));
        q.dispatch(at(4));
        assert_eq!(q.backlog(), 2);
        assert_eq!(q.poll_next(1, &mut cx), Poll::Ready(Some(at(1))));
        assert_eq!(q.poll_next(0, &mut cx), Poll::Ready(Some(at(2))));
        // Busy connections coming back take the waiting arrivals in order.
        assert_eq!(q.poll_next(0, &mut cx), Poll::Ready(Some(at(3))));
        q.close();
        assert_eq!(q.poll_next(1, &mut cx), Poll::Ready(Some(at(4))));
        assert_eq!(q.poll_next(1, &mut cx), Poll::Ready(None));
        assert_eq!(q.unsent(), 0);
    }

    #[test]
    fn waiting_arrivals_past_the_end_are_unsent() {
        let t0 = Instant::now();
        let mut q = JobQueue::new(1, t0);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(q.poll_next(0, &mut cx).is_pending());
        q.dispatch(t0);
        q.dispatch(t0);
        q.dispatch(t0);
        assert_eq!(q.poll_next(0, &mut cx), Poll::Ready(Some(t0)));
        assert_eq!(q.poll_next(0, &mut cx), Poll::Ready(None));
        assert_eq!(q.unsent(), 2);
    }
}
