//! Real `shadowtap-collector` processes for the bench, watched through their `/metrics` page.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::{Broker, ChildGuard, http_get, metric};

/// The topics and group one collector run uses (unique per run, so runs do not share state).
#[derive(Debug, Clone)]
pub struct RunTopics {
    pub observations: String,
    pub scale_events: String,
    pub state: String,
    pub dead_letter: String,
    pub group: String,
}

impl RunTopics {
    pub fn new(suffix: &str) -> Self {
        Self {
            observations: format!("bench.observations.{suffix}"),
            scale_events: format!("bench.scale-events.{suffix}"),
            state: format!("bench.state.{suffix}"),
            dead_letter: format!("bench.dlq.{suffix}"),
            group: format!("bench-collector-{suffix}"),
        }
    }
}

/// One collector process; killed on drop.
pub struct CollectorProc {
    guard: ChildGuard,
    pub metrics_port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Start the release binary of `shadowtap-collector` (`merge-wait 0s`: a window every known
/// agent has reported closes at once, so the latency measured is the pipeline's own).
pub fn spawn(
    broker: &Broker,
    topics: &RunTopics,
    policy: &Path,
    min_forecast_history: usize,
    run_args: &[&str],
    log: &Path,
) -> CollectorProc {
    let metrics_port = free_port();
    let log = std::fs::File::create(log).expect("collector log");
    // `BENCH_COLLECTOR_BIN`: another build of the collector, for A/B runs of code changes.
    let bin = std::env::var_os("BENCH_COLLECTOR_BIN").map_or_else(
        || env!("CARGO_BIN_EXE_shadowtap-collector").into(),
        std::path::PathBuf::from,
    );
    let child = Command::new(bin)
        .args([
            "--kafka-brokers",
            &broker.bootstrap(),
            "--policy",
            &policy.display().to_string(),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--observations-topic",
            &topics.observations,
            "--scale-events-topic",
            &topics.scale_events,
            "--state-topic",
            &topics.state,
            "--dead-letter-topic",
            &topics.dead_letter,
            "--group-id",
            &topics.group,
            "--lifecycle-topic",
            "",
            "--partitions",
            &crate::PARTITIONS.to_string(),
            "--merge-wait",
            "0s",
            "--idle-close",
            "2s",
            "--session-timeout",
            "6s",
            "--min-forecast-history",
            &min_forecast_history.to_string(),
        ])
        .args(run_args)
        // For A/B runs of settings: e.g. `--kafka-property fetch.wait.max.ms=500`.
        .args(extra_args())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn shadowtap-collector");
    CollectorProc {
        guard: ChildGuard(child),
        metrics_port,
    }
}

/// `BENCH_COLLECTOR_ARGS`, split on whitespace, appended to every collector's command line.
pub fn extra_args() -> Vec<String> {
    std::env::var("BENCH_COLLECTOR_ARGS")
        .map(|a| a.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// What the bench reads from a collector's page.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scrape {
    pub processed: u64,
    pub commits: u64,
    pub scale_events: u64,
    pub partitions: u64,
    /// Forecaster fits and the wall time they took (both 0 without the forecaster).
    pub forecast_fits: u64,
    pub forecast_fit_seconds: f64,
    /// Windows decided on observed demand because their forecast horizon had passed.
    pub windows_caught_up: u64,
}

impl CollectorProc {
    /// CPU time the process has used so far, every thread (`/proc/PID/task/*/schedstat`,
    /// nanoseconds: utime and stime move in 10 ms ticks, too coarse for runs of a second).
    /// Threads that already exited are not counted; the collector's live for its lifetime.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.guard.pid())).ok()?;
        let mut ns: u64 = 0;
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(ns as f64 / 1e9)
    }

    pub fn page(&self) -> Option<String> {
        http_get(self.metrics_port, "/metrics")
    }

    pub fn scrape(&self) -> Option<Scrape> {
        let page = self.page()?;
        let m = |name: &str| metric(&page, name).unwrap_or(0.0) as u64;
        Some(Scrape {
            processed: m("shadowtap_collector_observations_processed_total"),
            commits: m("shadowtap_collector_commits_total"),
            scale_events: m("shadowtap_collector_scale_events_total"),
            partitions: m("shadowtap_collector_partitions_owned"),
            forecast_fits: m("shadowtap_collector_fleet_total{what=\"forecast_fits\"}"),
            forecast_fit_seconds: metric(&page, "shadowtap_collector_forecast_fit_seconds_total")
                .unwrap_or(0.0),
            windows_caught_up: m("shadowtap_collector_fleet_total{what=\"windows_caught_up\"}"),
        })
    }

    /// Wait until the collector's page is up and it owns at least one partition.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.scrape().is_some_and(|s| s.partitions > 0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "collector did not join its group"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The event latency's stage `stage` at quantile `q` (see
    /// `shadowtap_collector::stats::EVENT_STAGES`).
    pub fn stage_quantile(&self, stage: &str, q: &str) -> Option<f64> {
        let page = self.page()?;
        metric(
            &page,
            &format!(
                "shadowtap_collector_event_stage_latency_ms{{stage=\"{stage}\",quantile=\"{q}\"}}"
            ),
        )
    }

    /// The event-latency summary's quantile `q` (as rendered: "0.5", "0.99", "0.999", "1").
    pub fn latency_quantile(&self, q: &str) -> Option<f64> {
        let page = self.page()?;
        metric(
            &page,
            &format!("shadowtap_collector_event_latency_ms{{quantile=\"{q}\"}}"),
        )
    }
}

/// Per collector: observations processed while the bench watched it work, over how long,
/// and the CPU time the process used meanwhile (0 when not measured, for a sum of several).
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub observations: u64,
    pub seconds: f64,
    pub cpu_seconds: f64,
    /// Observation partitions the collector owned at the end.
    pub partitions: u64,
}

impl Rate {
    pub fn per_second(&self) -> f64 {
        self.observations as f64 / self.seconds.max(1e-9)
    }

    /// Observations per second of the collector's own CPU time: what one collector does with
    /// a core to itself, whatever else shares the machine.
    pub fn per_cpu_second(&self) -> Option<f64> {
        (self.cpu_seconds > 0.0).then(|| self.observations as f64 / self.cpu_seconds)
    }
}

/// Watch `procs` until together they processed and committed `total` observations. Each
/// collector's rate runs from the first scrape that shows it processed anything to the first
/// that shows its last: the first batch (and the start-up before it) is left out of both the
/// count and the time, so process start and group join do not count.
pub fn watch(procs: &[CollectorProc], total: u64, timeout: Duration) -> (Vec<Rate>, Rate) {
    let deadline = Instant::now() + timeout;
    let n = procs.len();
    // (when, processed, CPU seconds) at the first and the last scrape that moved, and at the
    // scrape before the first (for a collector that did all its work between two scrapes).
    let mut first: Vec<Option<(Instant, u64, f64)>> = vec![None; n];
    let mut last: Vec<Option<(Instant, u64, f64)>> = vec![None; n];
    let mut before_first: Vec<Option<(Instant, u64, f64)>> = vec![None; n];
    let mut partitions = vec![0; n];
    let mut all_first: Option<(Instant, u64)> = None;
    let end = loop {
        let now = Instant::now();
        let mut sum = 0;
        for (i, p) in procs.iter().enumerate() {
            let Some(s) = p.scrape() else { continue };
            sum += s.processed;
            partitions[i] = s.partitions;
            // CPU time is read only on the scrapes that keep it (it walks every thread).
            let cpu = || p.cpu_seconds().unwrap_or(0.0);
            if s.processed > 0 && s.commits > 0 {
                // No last scrape means no first one either: the first that moved sets both.
                if last[i].is_none_or(|(_, seen, _)| s.processed > seen) {
                    let at = (now, s.processed, cpu());
                    first[i].get_or_insert(at);
                    last[i] = Some(at);
                }
            } else if first[i].is_none() {
                before_first[i] = Some((now, s.processed, cpu()));
            }
        }
        if sum > 0 && all_first.is_none() {
            all_first = Some((now, sum));
        }
        if sum >= total {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "collectors processed {sum} of {total} observations in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let rate = |f: Option<(Instant, u64, f64)>, l: Option<(Instant, u64, f64)>, parts| match (f, l)
    {
        (Some((t0, n0, c0)), Some((t1, n1, c1))) => Rate {
            observations: n1 - n0,
            seconds: (t1 - t0).as_secs_f64(),
            cpu_seconds: c1 - c0,
            partitions: parts,
        },
        _ => Rate {
            observations: 0,
            seconds: 0.0,
            cpu_seconds: 0.0,
            partitions: parts,
        },
    };
    // A collector seen moving in one scrape only did its work since the scrape before: count
    // from there (at most one 10 ms interval long), rather than report nothing.
    let per: Vec<Rate> = (0..n)
        .map(|i| {
            let from = match (first[i], last[i]) {
                (Some(f), Some(l)) if f.0 == l.0 => before_first[i].or(first[i]),
                _ => first[i],
            };
            rate(from, last[i], partitions[i])
        })
        .collect();
    let all = rate(
        all_first.map(|(t, n)| (t, n, 0.0)),
        Some((end, total, 0.0)),
        partitions.iter().sum(),
    );
    (per, all)
}
