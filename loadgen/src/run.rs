//! Drives a run on one thread: a current-thread tokio runtime holding one task per
//! connection and, in the open model, the scheduler task. One thread is what wrk -t1 uses,
//! and it lets the tasks share the recorder and the queue through `RefCell`s, with no locks
//! or atomics on the hot path (the progress counters are relaxed atomics for the display).

use std::{
    cell::{Cell, RefCell},
    future::Future,
    io,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use rand::SeedableRng as _;
use tokio::{sync::Notify, task::LocalSet};

use crate::{
    LoadRng,
    args::Target,
    conn::Conn,
    queue::{JobQueue, next_job},
    rate::{ArrivalKind, Arrivals, RateCurve},
    report::{LatencyReport, Percentiles, REPORT_VERSION, Report, StopReason, Throughput},
    source::RequestSource,
    stats::{ErrorKind, Recorder},
    timer::PreciseTimer,
};

/// What every run needs, whatever its schedule.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub target: Target,
    /// Pool size (open model) or number of back-to-back connections (closed model).
    pub connections: usize,
    /// Arrivals are scheduled (open) or requests started (closed) only within this time.
    pub duration: Duration,
    /// At most this many requests are scheduled (open) or started (closed).
    pub max_requests: u64,
    /// Limit for connecting, and for a whole response after sending.
    pub timeout: Duration,
    pub seed: u64,
    /// Close each connection after this many requests (the last carries
    /// `Connection: close`); `None` keeps connections open.
    pub requests_per_connection: Option<u64>,
}

/// When requests are sent.
pub enum Schedule {
    /// Arrivals from a rate curve, independent of responses.
    Open {
        curve: Box<dyn RateCurve>,
        arrivals: ArrivalKind,
    },
    /// Each connection sends its next request when the previous response is in, after
    /// `think_time`.
    Closed { think_time: Duration },
}

/// Counters for a progress display, updated as the run goes.
#[derive(Debug, Default)]
pub struct Live {
    pub scheduled: AtomicU64,
    pub sent: AtomicU64,
    pub completed: AtomicU64,
    pub errors: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("--connections must be at least 1")]
    NoConnections,
    #[error("starting the runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("the scheduler's timer: {0}")]
    Timer(#[source] io::Error),
}

/// Runs to the end of the duration or of `max_requests`, whichever comes first.
pub fn run(
    config: RunConfig,
    schedule: Schedule,
    source: Box<dyn RequestSource>,
    live: Arc<Live>,
) -> Result<Report, RunError> {
    run_until(config, schedule, source, live, std::future::pending())
}

/// Like [`run`], and stops early (sending nothing more, waiting for what is in flight) when
/// `stop` completes, e.g. on Ctrl-C.
pub fn run_until(
    config: RunConfig,
    schedule: Schedule,
    source: Box<dyn RequestSource>,
    live: Arc<Live>,
    stop: impl Future<Output = ()> + 'static,
) -> Result<Report, RunError> {
    if config.connections == 0 {
        return Err(RunError::NoConnections);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    let local = LocalSet::new();
    runtime.block_on(local.run_until(drive(config, schedule, source, live, stop)))
}

struct Shared {
    config: RunConfig,
    start: Instant,
    /// `start + duration`.
    end: Instant,
    source: RefCell<Box<dyn RequestSource>>,
    rec: RefCell<Recorder>,
    live: Arc<Live>,
    next_id: Cell<u64>,
    /// Closed model: requests started so far.
    started: Cell<u64>,
    stopped: Cell<bool>,
    stop_notify: Notify,
    queue: RefCell<JobQueue>,
}

impl Shared {
    fn new_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    fn error(&self, kind: ErrorKind) {
        self.rec.borrow_mut().error(kind);
        self.live.errors.fetch_add(1, Relaxed);
    }

    fn end_connection(&self, conn: &mut Conn) {
        self.rec.borrow_mut().connection_closed(conn.served);
        self.source.borrow_mut().connection_closed(conn.id);
        conn.close();
    }
}

/// A distinct, reproducible stream per connection slot (SplitMix64 of seed and slot).
fn slot_rng(seed: u64, slot: usize) -> LoadRng {
    let mut z = seed.wrapping_add((slot as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    LoadRng::seed_from_u64(z ^ (z >> 31))
}

async fn drive(
    config: RunConfig,
    schedule: Schedule,
    source: Box<dyn RequestSource>,
    live: Arc<Live>,
    stop: impl Future<Output = ()> + 'static,
) -> Result<Report, RunError> {
    // Connect the whole pool before the clock starts, so the first arrivals do not pay for
    // it. A connection that fails here is not an error of any request: it retries when it
    // gets its first one, and that attempt is counted.
    let mut connects = Vec::new();
    for id in 0..config.connections as u64 {
        let (addr, timeout) = (config.target.addr, config.timeout);
        connects.push(tokio::task::spawn_local(async move {
            let mut conn = Conn::new();
            let result = conn.connect(addr, timeout, id).await;
            (conn, result)
        }));
    }
    let mut conns = Vec::new();
    for handle in connects {
        if let Ok((conn, _)) = handle.await {
            conns.push(conn);
        }
    }

    let start = Instant::now();
    let end = start + config.duration;
    let shared = Rc::new(Shared {
        next_id: Cell::new(config.connections as u64),
        // Arrivals still waiting for a connection when the duration is up get `timeout` more
        // to be sent: dropping them at once would count as unsent the last arrivals of any
        // run whose connections were all busy at its very end.
        queue: RefCell::new(JobQueue::new(config.connections, end + config.timeout)),
        config,
        start,
        end,
        source: RefCell::new(source),
        rec: RefCell::new(Recorder::default()),
        live,
        started: Cell::new(0),
        stopped: Cell::new(false),
        stop_notify: Notify::new(),
    });
    let stopper = {
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            stop.await;
            shared.stopped.set(true);
            shared.queue.borrow_mut().abandon();
            shared.stop_notify.notify_waiters();
        })
    };
    let think = match schedule {
        Schedule::Closed { think_time } => Some(think_time),
        Schedule::Open { .. } => None,
    };
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(slot, conn)| tokio::task::spawn_local(connection(shared.clone(), slot, conn, think)))
        .collect();
    let open = match schedule {
        Schedule::Open { curve, arrivals } => {
            let rate = curve.describe();
            let outcome = scheduler(&shared, curve, arrivals).await;
            shared.queue.borrow_mut().close();
            let (stopped_by, window, scheduled) = outcome?;
            Some(OpenOutcome {
                stopped_by,
                window,
                scheduled,
                rate,
                arrivals,
            })
        }
        Schedule::Closed { .. } => None,
    };
    for task in tasks {
        // A connection task only ends by returning; a panic would already have been
        // reported by the runtime.
        let _ = task.await;
    }
    stopper.abort();
    Ok(report(&shared, open.as_ref()))
}

/// How the open model's scheduler ended, for the report.
struct OpenOutcome {
    stopped_by: StopReason,
    /// The time the schedule covered.
    window: Duration,
    scheduled: u64,
    rate: String,
    arrivals: ArrivalKind,
}

/// The open model's arrivals: sleeps until each intended time and hands it to the pool.
/// Returns why it stopped and the schedule's window.
async fn scheduler(
    shared: &Shared,
    curve: Box<dyn RateCurve>,
    kind: ArrivalKind,
) -> Result<(StopReason, Duration, u64), RunError> {
    let timer = PreciseTimer::new().map_err(RunError::Timer)?;
    let config = &shared.config;
    let mut arrivals = Arrivals::new(curve, kind, config.seed, config.duration);
    let mut scheduled = 0_u64;
    loop {
        if shared.stopped.get() {
            let window = shared.start.elapsed().min(config.duration);
            return Ok((StopReason::Interrupted, window, scheduled));
        }
        let Some(at) = arrivals.next_arrival() else {
            return Ok((StopReason::Duration, config.duration, scheduled));
        };
        if scheduled >= config.max_requests {
            // The schedule covered everything up to where the next arrival would be.
            return Ok((StopReason::MaxRequests, at, scheduled));
        }
        let intended = shared.start + at;
        tokio::select! {
            biased;
            slept = timer.sleep_until(intended) => slept.map_err(RunError::Timer)?,
            () = shared.stop_notify.notified() => continue,
        }
        shared.queue.borrow_mut().dispatch(intended);
        scheduled += 1;
        shared.live.scheduled.fetch_add(1, Relaxed);
    }
}

/// One connection slot: serves arrivals (open model) or loops back to back (closed model,
/// `think` is `Some`).
async fn connection(shared: Rc<Shared>, slot: usize, mut conn: Conn, think: Option<Duration>) {
    let mut rng = slot_rng(shared.config.seed, slot);
    match think {
        None => {
            while let Some(intended) = next_job(&shared.queue, slot).await {
                serve(&shared, &mut conn, &mut rng, Some(intended)).await;
            }
        }
        Some(think) => {
            let mut now = Instant::now();
            while !shared.stopped.get()
                && now < shared.end
                && shared.started.get() < shared.config.max_requests
            {
                shared.started.set(shared.started.get() + 1);
                shared.live.scheduled.fetch_add(1, Relaxed);
                now = serve(&shared, &mut conn, &mut rng, None).await;
                if !think.is_zero() {
                    tokio::time::sleep(think).await;
                    now = Instant::now();
                }
            }
        }
    }
    if conn.is_open() {
        shared.end_connection(&mut conn);
    }
}

/// One request on `conn` (connecting first if needed); returns when it ended. `intended`
/// is the scheduled send time (open model); without it latency is measured from the send.
async fn serve(
    shared: &Shared,
    conn: &mut Conn,
    rng: &mut LoadRng,
    intended: Option<Instant>,
) -> Instant {
    let config = &shared.config;
    if !conn.is_open() {
        let id = shared.new_id();
        if let Err(kind) = conn.connect(config.target.addr, config.timeout, id).await {
            shared.error(kind);
            return Instant::now();
        }
    }
    let request = shared.source.borrow_mut().next_request(conn.id, rng);
    let close = request.closes()
        || config
            .requests_per_connection
            .is_some_and(|n| conn.served + 1 >= n);
    let sent = Instant::now();
    shared.live.sent.fetch_add(1, Relaxed);
    let result = tokio::time::timeout(config.timeout, conn.exchange(&request, close)).await;
    let done = Instant::now();
    match result {
        Ok(Ok((status, must_close))) => {
            let from = intended.unwrap_or(sent);
            shared.rec.borrow_mut().response(status, from, sent, done);
            shared
                .source
                .borrow_mut()
                .response(conn.id, status, done - from, done - sent);
            shared.live.completed.fetch_add(1, Relaxed);
            if must_close {
                shared.end_connection(conn);
            }
        }
        Ok(Err(kind)) => {
            shared.error(kind);
            shared.end_connection(conn);
        }
        Err(_) => {
            shared.error(ErrorKind::ReadTimeout);
            // The response may still come: the connection is out of step, drop it.
            shared.end_connection(conn);
        }
    }
    done
}

fn report(shared: &Shared, open: Option<&OpenOutcome>) -> Report {
    let config = &shared.config;
    let rec = shared.rec.borrow();
    let live = &shared.live;
    let last = rec.last_completion.map_or(Duration::ZERO, |t| {
        t.saturating_duration_since(shared.start)
    });
    let (stopped_by, window, scheduled) = if let Some(o) = open {
        (o.stopped_by, o.window, o.scheduled)
    } else {
        let started = shared.started.get();
        let reason = if shared.stopped.get() {
            StopReason::Interrupted
        } else if started >= config.max_requests {
            StopReason::MaxRequests
        } else {
            StopReason::Duration
        };
        (reason, last, started)
    };
    // Responses still arriving after the window stretch it: a server that falls behind
    // shows as a lower achieved rate.
    let span = window.max(last).as_secs_f64();
    let per_second = |n: u64| if span > 0.0 { n as f64 / span } else { 0.0 };
    let window_s = window.as_secs_f64();
    Report {
        version: REPORT_VERSION,
        target: config.target.url.clone(),
        model: if open.is_some() { "open" } else { "closed" }.to_owned(),
        arrivals: open.map(|o| o.arrivals),
        rate: open.map(|o| o.rate.clone()),
        connections: config.connections,
        duration_s: config.duration.as_secs_f64(),
        max_requests: config.max_requests,
        timeout_s: config.timeout.as_secs_f64(),
        seed: config.seed,
        stopped_by,
        throughput: Throughput {
            scheduled,
            sent: live.sent.load(Relaxed),
            completed: rec.completed,
            unsent: shared.queue.borrow().unsent(),
            window_s,
            scheduled_rps: open.is_some().then(|| {
                if window_s > 0.0 {
                    scheduled as f64 / window_s
                } else {
                    0.0
                }
            }),
            achieved_rps: per_second(rec.completed),
        },
        latency: LatencyReport {
            corrected: Percentiles::of(&rec.corrected),
            uncorrected: Percentiles::of(&rec.uncorrected),
        },
        schedule_lag: open.is_some().then(|| Percentiles::of(&rec.lag)),
        status: rec.status,
        errors: rec.errors,
        requests_per_connection: rec.per_connection(),
    }
}
