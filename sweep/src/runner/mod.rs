//! The sweep runner: one trial = a cgroup and a network namespace of its own, a slow origin,
//! the service started from the catalogue's templates, a probe (which warms the cache and
//! decides early stopping), one or more measured load phases, and the teardown — on every exit
//! path, by drop guards, in reverse order of creation.

pub mod cgroup;
pub mod from_agent;
pub mod load;
pub mod netns;
pub mod origin;
pub mod shadow;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use shadowtap_loadgen::{ArrivalKind, ConstantRate, Live, Report, RunConfig, Schedule, Target};

use crate::catalogue::Catalogue;
use crate::trial::{Kpis, Objective, Params};
use cgroup::Cgroup;
pub use load::{LoadKind, LoadSpec, MixEntry};
use netns::Netns;
use origin::Origin;
use shadow::Shadow;

/// Why a trial produced no measurement.
#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    #[error("setting up the trial: {0}")]
    Setup(String),
    #[error("the shadow did not start: {0}")]
    StartFailed(String),
    #[error("the shadow is not healthy: {0}")]
    Unhealthy(String),
    #[error("driving load: {0}")]
    Load(String),
}

/// How trials are run.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Cores the sweep may use in all (shadows at their cgroup limit plus one core each for
    /// the load generator and origin).
    pub core_budget: f64,
    /// Stop a trial after its probe when the probe's p99 is this many times the best probe's
    /// (and at least 5 ms worse), or when half its probe requests failed.
    pub early_stop_factor: f64,
    /// Repeat the measurement when its cost is at most this share above the best cost so far
    /// (the difference is then of the order of the noise), below it, or the first at a load.
    pub repeat_band: f64,
    pub max_repeats: u32,
    /// Trial directories go here (`<dir>/<n>`), removed after each trial unless `keep_dirs`.
    pub work_dir: PathBuf,
    pub keep_dirs: bool,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            core_budget: 2.0,
            early_stop_factor: 5.0,
            repeat_band: 0.1,
            max_repeats: 3,
            work_dir: std::env::temp_dir().join(format!("shadowtap-sweep-{}", std::process::id())),
            keep_dirs: false,
        }
    }
}

/// What one trial gave.
#[derive(Debug, Clone)]
pub struct TrialOutcome {
    pub kpis: Kpis,
    pub repeats: u32,
    pub early_stopped: bool,
    /// Set when the trial failed (did not start, unhealthy, …); its KPIs are then the failure
    /// marker of [`failed_kpis`].
    pub failure: Option<String>,
}

/// KPIs recorded for a failed trial: every request failed, latency at the load generator's
/// timeout (finite, so the record stays valid JSON), nothing measured.
pub fn failed_kpis() -> Kpis {
    Kpis {
        p50_ms: TIMEOUT.as_secs_f64() * 1000.0,
        p99_ms: TIMEOUT.as_secs_f64() * 1000.0,
        p999_ms: TIMEOUT.as_secs_f64() * 1000.0,
        throughput_rps: 0.0,
        error_rate: 1.0,
        cpu_cores: 0.0,
        rss_bytes: 0,
        objective_noise: None,
    }
}

const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct BestSoFar {
    probe_p99_ms: Option<f64>,
    cost: Option<f64>,
}

/// Whether a measurement costing `cost` is measured again, given the best cost so far at this
/// load: when it is at most `band` above the best — the difference is then of the order of the
/// noise — or below it (a new best, the point a sweep will pick, is the one whose luck matters
/// most), or when there is no best yet (the first point is the best so far: measured once while
/// every later point within the band got three phases, a lucky single phase of the first point
/// decided a held-out recommendation in CI). An infeasible or unmeasurable cost is not repeated.
fn worth_repeating(cost: f64, best: Option<f64>, band: f64) -> bool {
    if !cost.is_finite() {
        return false;
    }
    match best {
        None => true,
        Some(b) if b.is_finite() && b > 0.0 => cost <= b * (1.0 + band),
        Some(_) => false,
    }
}

/// Runs trials of one catalogue's service.
pub struct Runner {
    pub catalogue: Catalogue,
    pub objective: Objective,
    pub options: RunnerOptions,
    next: AtomicU32,
    best: Mutex<BestSoFar>,
}

static SWEEP_STALE: Once = Once::new();

impl Runner {
    /// A runner; the first one in a process removes cgroups and namespaces of dead sweeps.
    pub fn new(catalogue: Catalogue, objective: Objective, options: RunnerOptions) -> Self {
        SWEEP_STALE.call_once(|| {
            cgroup::sweep_stale();
            netns::sweep_stale();
        });
        Self {
            catalogue,
            objective,
            options,
            next: AtomicU32::new(0),
            best: Mutex::new(BestSoFar::default()),
        }
    }

    /// Trials that fit in the core budget at once.
    pub fn parallelism(&self) -> usize {
        let per_trial = self.catalogue.limits.cpu_cores() + 1.0;
        ((self.options.core_budget / per_trial).floor() as usize).max(1)
    }

    /// Forgets the best probe and cost (e.g. when the load changes).
    pub fn reset_best(&self) {
        if let Ok(mut b) = self.best.lock() {
            *b = BestSoFar::default();
        }
    }

    /// Runs trials, up to [`parallelism`](Self::parallelism) at a time; outcomes in order.
    pub fn run_batch(&self, trials: &[(Params, LoadSpec)]) -> Vec<TrialOutcome> {
        let mut out = Vec::with_capacity(trials.len());
        for chunk in trials.chunks(self.parallelism()) {
            std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|(p, l)| s.spawn(move || self.run_trial(p, l)))
                    .collect();
                for h in handles {
                    out.push(h.join().unwrap_or_else(|_| TrialOutcome {
                        kpis: failed_kpis(),
                        repeats: 0,
                        early_stopped: false,
                        failure: Some("trial thread panicked".into()),
                    }));
                }
            });
        }
        out
    }

    /// Runs one trial. Never panics on a bad configuration: failures come back as outcomes.
    pub fn run_trial(&self, params: &Params, load: &LoadSpec) -> TrialOutcome {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.options.work_dir.join(n.to_string());
        let result = self.trial_in(n, &dir, params, load);
        if !self.options.keep_dirs {
            let _ = std::fs::remove_dir_all(&dir);
        }
        match result {
            Ok(o) => o,
            Err(e) => TrialOutcome {
                kpis: failed_kpis(),
                repeats: 0,
                early_stopped: false,
                failure: Some(e.to_string()),
            },
        }
    }

    fn trial_in(
        &self,
        n: u32,
        dir: &std::path::Path,
        params: &Params,
        load: &LoadSpec,
    ) -> Result<TrialOutcome, TrialError> {
        if !self.catalogue.satisfies(params) {
            return Err(TrialError::Setup(
                "the parameters break a constraint".into(),
            ));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| TrialError::Setup(format!("creating {}: {e}", dir.display())))?;
        let limits = self.catalogue.limits;
        // Drop order (reverse of declaration): shadow, origin, namespace, cgroup.
        let group = Cgroup::create(n, limits.cpu_cores(), limits.memory_bytes())
            .map_err(|e| TrialError::Setup(e.to_string()))?;
        let ns = Netns::create(n).map_err(|e| TrialError::Setup(e.to_string()))?;
        let origin = Origin::start(&ns, Duration::from_millis(load.origin_delay_ms))
            .map_err(|e| TrialError::Setup(e.to_string()))?;
        let shadow = Shadow::start(&self.catalogue, params, dir, &ns, &group, origin.addr)?;
        if load.warm_cache {
            warm(&ns, shadow.listen, load)?;
        }
        let probe = drive(&ns, shadow.listen, load, load.probe(), u64::from(n))?;
        let probe_kpis = kpis_of(&probe, 0.0, 0);
        if self.stop_early(&probe_kpis) {
            shadow.stop();
            let mut kpis = probe_kpis;
            kpis.rss_bytes = group.memory_peak_bytes().unwrap_or(0);
            return Ok(TrialOutcome {
                kpis,
                repeats: 1,
                early_stopped: true,
                failure: None,
            });
        }
        let mut measured = Vec::new();
        loop {
            let cpu0 = group
                .cpu_usage_usec()
                .map_err(|e| TrialError::Setup(e.to_string()))?;
            let t0 = Instant::now();
            let seed = u64::from(n) * 100 + measured.len() as u64 + 1;
            let report = drive(&ns, shadow.listen, load, load.duration(), seed)?;
            let cpu1 = group
                .cpu_usage_usec()
                .map_err(|e| TrialError::Setup(e.to_string()))?;
            let cores = (cpu1.saturating_sub(cpu0)) as f64 / 1e6 / t0.elapsed().as_secs_f64();
            let rss = group.memory_peak_bytes().unwrap_or(0);
            measured.push(kpis_of(&report, cores, rss));
            if !self.should_repeat(&measured) {
                break;
            }
        }
        shadow.stop();
        drop(origin);
        let kpis = self.aggregate(&measured);
        self.record_best(&kpis);
        Ok(TrialOutcome {
            kpis,
            repeats: measured.len() as u32,
            early_stopped: false,
            failure: None,
        })
    }

    fn stop_early(&self, probe: &Kpis) -> bool {
        let Ok(mut best) = self.best.lock() else {
            return false;
        };
        if probe.error_rate > 0.5 {
            return true;
        }
        let clearly_worse = best.probe_p99_ms.is_some_and(|b| {
            probe.p99_ms > self.options.early_stop_factor * b && probe.p99_ms - b > 5.0
        });
        if probe.error_rate <= self.objective.max_error_rate {
            best.probe_p99_ms = Some(
                best.probe_p99_ms
                    .map_or(probe.p99_ms, |b| b.min(probe.p99_ms)),
            );
        }
        clearly_worse
    }

    fn should_repeat(&self, measured: &[Kpis]) -> bool {
        if measured.len() as u32 >= self.options.max_repeats {
            return false;
        }
        let cost = self.objective.cost(&self.aggregate(measured));
        let best = self.best.lock().ok().and_then(|b| b.cost);
        worth_repeating(cost, best, self.options.repeat_band)
    }

    fn record_best(&self, kpis: &Kpis) {
        let cost = self.objective.cost(kpis);
        if let Ok(mut b) = self.best.lock()
            && cost.is_finite()
        {
            b.cost = Some(b.cost.map_or(cost, |c| c.min(cost)));
        }
    }

    /// Means of the measurements; with more than one, the objective's standard deviation.
    fn aggregate(&self, measured: &[Kpis]) -> Kpis {
        let n = measured.len().max(1) as f64;
        let mean = |f: fn(&Kpis) -> f64| measured.iter().map(f).sum::<f64>() / n;
        let costs: Vec<f64> = measured.iter().map(|k| self.objective.cost(k)).collect();
        let noise = (measured.len() > 1 && costs.iter().all(|c| c.is_finite())).then(|| {
            let m = costs.iter().sum::<f64>() / n;
            (costs.iter().map(|c| (c - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        });
        Kpis {
            p50_ms: mean(|k| k.p50_ms),
            p99_ms: mean(|k| k.p99_ms),
            p999_ms: mean(|k| k.p999_ms),
            throughput_rps: mean(|k| k.throughput_rps),
            error_rate: mean(|k| k.error_rate),
            cpu_cores: mean(|k| k.cpu_cores),
            rss_bytes: measured.iter().map(|k| k.rss_bytes).max().unwrap_or(0),
            objective_noise: noise,
        }
    }
}

impl Drop for Runner {
    /// Removes the work directory when the trials left it empty (`remove_dir` refuses a
    /// non-empty one, e.g. with `keep_dirs`).
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.options.work_dir);
    }
}

/// Drives the shadow from inside its namespace for `duration` at the load's rate and mix.
fn drive(
    ns: &Netns,
    listen: std::net::SocketAddr,
    load: &LoadSpec,
    duration: Duration,
    seed: u64,
) -> Result<Report, TrialError> {
    let target =
        Target::parse(&format!("http://{listen}/")).map_err(|e| TrialError::Load(e.to_string()))?;
    let source = load::MixSource::new(load, &target.authority)
        .map_err(|e| TrialError::Load(e.to_string()))?;
    let config = RunConfig {
        target,
        connections: load.connections,
        duration,
        max_requests: (load.rate_rps * duration.as_secs_f64() * 2.0) as u64 + 10,
        timeout: TIMEOUT,
        seed,
        requests_per_connection: None,
    };
    let rate = load.rate_rps;
    let handle = ns
        .run_in(move || {
            shadowtap_loadgen::run(
                config,
                Schedule::Open {
                    curve: Box::new(ConstantRate::new(rate)),
                    arrivals: ArrivalKind::Constant,
                },
                Box::new(source),
                Arc::new(Live::default()),
            )
        })
        .map_err(|e| TrialError::Load(e.to_string()))?;
    handle
        .join()
        .map_err(|_| TrialError::Load("load thread panicked".into()))?
        .map_err(|e| TrialError::Load(e.to_string()))
}

/// Requests every key of the load's mix once (closed model, a few connections); a failure to
/// connect or answer is the trial's failure.
fn warm(ns: &Netns, listen: std::net::SocketAddr, load: &LoadSpec) -> Result<(), TrialError> {
    let target =
        Target::parse(&format!("http://{listen}/")).map_err(|e| TrialError::Load(e.to_string()))?;
    let source = load::WarmSource::new(load, &target.authority)
        .map_err(|e| TrialError::Load(e.to_string()))?;
    if source.is_empty() {
        return Ok(());
    }
    let config = RunConfig {
        target,
        connections: load.connections.clamp(1, 8),
        duration: Duration::from_secs(30),
        max_requests: source.len() as u64,
        timeout: TIMEOUT,
        seed: 0,
        requests_per_connection: None,
    };
    let handle = ns
        .run_in(move || {
            shadowtap_loadgen::run(
                config,
                Schedule::Closed {
                    think_time: Duration::ZERO,
                },
                Box::new(source),
                Arc::new(Live::default()),
            )
        })
        .map_err(|e| TrialError::Load(e.to_string()))?;
    let report = handle
        .join()
        .map_err(|_| TrialError::Load("warm-up thread panicked".into()))?
        .map_err(|e| TrialError::Load(e.to_string()))?;
    let failed = report.errors.total + report.status.s4xx + report.status.s5xx;
    if failed > 0 {
        return Err(TrialError::Load(format!(
            "cache warm-up: {failed} of {} requests failed",
            report.throughput.scheduled
        )));
    }
    Ok(())
}

/// KPIs from a load report (latency corrected for coordinated omission).
pub fn kpis_of(report: &Report, cpu_cores: f64, rss_bytes: u64) -> Kpis {
    let c = &report.latency.corrected;
    let t = &report.throughput;
    let failed = report.errors.total + report.status.s4xx + report.status.s5xx + t.unsent;
    let error_rate = if t.scheduled == 0 {
        1.0
    } else {
        (failed as f64 / t.scheduled as f64).min(1.0)
    };
    Kpis {
        p50_ms: c.p50_us as f64 / 1000.0,
        p99_ms: c.p99_us as f64 / 1000.0,
        p999_ms: c.p999_us as f64 / 1000.0,
        throughput_rps: t.achieved_rps,
        error_rate,
        cpu_cores,
        rss_bytes,
        objective_noise: None,
    }
}

#[cfg(test)]
mod tests {
    use super::worth_repeating;

    #[test]
    fn the_first_point_and_every_new_best_are_measured_again() {
        assert!(
            worth_repeating(0.08, None, 0.5),
            "the first point is the best so far"
        );
        assert!(
            worth_repeating(0.02, Some(0.08), 0.5),
            "far below the best: a new best"
        );
        assert!(
            worth_repeating(0.119, Some(0.08), 0.5),
            "within the band above the best"
        );
        assert!(!worth_repeating(0.121, Some(0.08), 0.5), "beyond the band");
        assert!(!worth_repeating(f64::INFINITY, None, 0.5), "infeasible");
        assert!(!worth_repeating(0.1, Some(f64::INFINITY), 0.5));
    }
}
