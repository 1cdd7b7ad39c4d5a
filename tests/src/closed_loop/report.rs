//! What a run measured, computed from its raw logs: the loadgen's per-second latencies, HAProxy
//! samples, scale events, the provisioner's lifecycle events and the instances' access logs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::traffic::SecondLog;
use super::{BedConfig, Strategy, Transport};

pub fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// HAProxy's pool, sampled every 250 ms.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sample {
    pub at_s: f64,
    /// Servers in the backend (warming up, serving or draining: all cost).
    pub instances: u32,
    /// Of those, with a weight above 0.
    pub serving: u32,
}

/// One access-log line of an instance.
#[derive(Clone, Debug)]
pub struct Access {
    pub at_ms: u64,
    pub cache: String,
}

/// Everything a run left, before the bed is removed.
pub struct RawRun {
    pub strategy: Strategy,
    pub transport: Transport,
    /// The Kafka run's collector `/metrics` page at the end of the run.
    pub collector_metrics: Option<String>,
    pub curve: Vec<(Duration, f64)>,
    pub measured_from_s: f64,
    pub total_s: f64,
    pub start_unix_ms: u64,
    pub samples: Vec<Sample>,
    /// (seconds since the start, scale event JSON) as handed to the provisioner.
    pub scale_events: Vec<(f64, String)>,
    pub seconds: SecondLog,
    pub loadgen: shadowtap_loadgen::Report,
    pub lifecycle: Vec<serde_json::Value>,
    pub access_logs: BTreeMap<String, Vec<Access>>,
}

/// Reads `<inst>/<name>/access.log` of every instance (`$msec $upstream_cache_status …`).
pub fn access_logs(inst: &Path) -> Result<BTreeMap<String, Vec<Access>>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(inst) else {
        return Ok(out);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path().join("access.log");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines = Vec::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(msec), Some(cache)) = (f.next(), f.next()) else {
                continue;
            };
            let uri = f.nth(2).unwrap_or("");
            if uri == "/healthz" {
                continue;
            }
            let at_ms = msec
                .parse::<f64>()
                .with_context(|| format!("{}: bad $msec {msec:?}", path.display()))?;
            lines.push(Access {
                at_ms: (at_ms * 1000.0) as u64,
                cache: cache.to_owned(),
            });
        }
        out.insert(name, lines);
    }
    Ok(out)
}

/// One new instance's first window of traffic.
#[derive(Clone, Debug, Serialize)]
pub struct NewInstance {
    pub name: String,
    /// When traffic started shifting to it, seconds since the run's start.
    pub serving_at_s: f64,
    pub in_measured_day: bool,
    /// Requests through HAProxy in its first window (one series step) and the cache hits.
    pub first_window_requests: u64,
    pub first_window_hits: u64,
    pub first_window_hit_ratio: Option<f64>,
}

/// Per second of the run, for the plot and the raw numbers.
#[derive(Clone, Debug, Serialize)]
pub struct Second {
    pub at_s: u64,
    pub scheduled_rps: f64,
    pub responses: u64,
    pub p99_ms: Option<f64>,
    pub instances: f64,
    pub server_errors: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub strategy: Strategy,
    pub transport: Transport,
    /// The Kafka run: lifecycle events the collector applied to its decisions (read back
    /// from `shadowtap.lifecycle`), from its `shadowtap_collector_fleet_total` counters.
    pub collector_lifecycle_applied: Option<u64>,
    pub measured_from_s: f64,
    pub measured_to_s: f64,
    /// Seconds of the measured day whose p99 was above the SLO (or had traffic and no answer).
    pub slo_violation_seconds: u64,
    pub measured_seconds: u64,
    /// 5xx answers in the measured day plus transport errors of the whole run.
    pub failed_requests: u64,
    pub server_errors_measured: u64,
    pub transport_errors_run: u64,
    pub instance_seconds: f64,
    pub scale_events: u64,
    pub scale_events_run: u64,
    /// Mean first-window hit ratio of instances added in the measured day.
    pub new_instance_hit_ratio: Option<f64>,
    pub new_instances: Vec<NewInstance>,
    pub requests_completed: u64,
    /// Forecast models named by the measured day's scale events (`explanation.model`), counted
    /// (reactive decisions carry the forecast too, but do not act on it).
    pub decision_models: BTreeMap<String, u64>,
    pub per_second: Vec<Second>,
}

impl RunReport {
    pub fn from_raw(config: &BedConfig, raw: &RawRun) -> Result<Self> {
        let step_s = config.step().as_secs_f64();
        let from = raw.measured_from_s;
        let to = raw.total_s;
        let slo_ms = config.slo_p99.as_secs_f64() * 1000.0;
        let rate_at = |t: f64| {
            let i = raw.curve.partition_point(|(d, _)| d.as_secs_f64() <= t);
            raw.curve.get(i.saturating_sub(1)).map_or(0.0, |p| p.1)
        };
        let mut per_second = Vec::new();
        let (mut violations, mut measured_seconds, mut server_errors) = (0, 0, 0);
        for (s, h) in raw.seconds.latency_us.iter().enumerate() {
            // Seconds after the curve's end are kept: answers to its last arrivals land there.
            let t = s as f64;
            let p99_ms = (!h.is_empty()).then(|| h.value_at_quantile(0.99) as f64 / 1000.0);
            let errors = raw.seconds.server_errors.get(s).copied().unwrap_or(0);
            let in_day = t >= from && t + 1.0 <= to;
            if in_day {
                measured_seconds += 1;
                server_errors += errors;
                if p99_ms.is_none_or(|p| p > slo_ms) && rate_at(t) > 0.0 {
                    violations += 1;
                }
            }
            per_second.push(Second {
                at_s: s as u64,
                scheduled_rps: rate_at(t),
                responses: h.len(),
                p99_ms,
                instances: mean_instances(&raw.samples, t, t + 1.0),
                server_errors: errors,
            });
        }
        let instance_seconds = integrate(&raw.samples, from, to);
        let scale_events = raw
            .scale_events
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .count() as u64;
        let new_instances = new_instances(raw, step_s);
        let measured: Vec<&NewInstance> = new_instances
            .iter()
            .filter(|n| n.in_measured_day && n.first_window_requests > 0)
            .collect();
        let new_instance_hit_ratio = (!measured.is_empty()).then(|| {
            measured
                .iter()
                .filter_map(|n| n.first_window_hit_ratio)
                .sum::<f64>()
                / measured.len() as f64
        });
        let mut decision_models = BTreeMap::new();
        for (_, line) in raw
            .scale_events
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
        {
            let event: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let model = &event["data"]["explanation"]["model"];
            // `{"kind": "mstl", …}`; none for reactive decisions and before the forecaster.
            let name = model["kind"].as_str().unwrap_or("none").to_owned();
            *decision_models.entry(name).or_insert(0) += 1;
        }
        let transport = raw.loadgen.errors.total;
        Ok(Self {
            strategy: raw.strategy,
            transport: raw.transport,
            collector_lifecycle_applied: raw
                .collector_metrics
                .as_deref()
                .and_then(|page| fleet_total(page, "lifecycle_applied")),
            measured_from_s: from,
            measured_to_s: to,
            slo_violation_seconds: violations,
            measured_seconds,
            failed_requests: server_errors + transport,
            server_errors_measured: server_errors,
            transport_errors_run: transport,
            instance_seconds,
            scale_events,
            scale_events_run: raw.scale_events.len() as u64,
            new_instance_hit_ratio,
            new_instances,
            requests_completed: raw.loadgen.throughput.completed,
            decision_models,
            per_second,
        })
    }
}

/// Mean instance count over [from, to) from the samples (each holds until the next).
fn mean_instances(samples: &[Sample], from: f64, to: f64) -> f64 {
    integrate(samples, from, to) / (to - from)
}

/// ∫ instances dt over [from, to), a sample holding until the next.
pub fn integrate(samples: &[Sample], from: f64, to: f64) -> f64 {
    let mut total = 0.0;
    for (i, s) in samples.iter().enumerate() {
        let end = samples.get(i + 1).map_or(to, |n| n.at_s);
        let (a, b) = (s.at_s.max(from), end.min(to));
        if b > a {
            total += f64::from(s.instances) * (b - a);
        }
    }
    total
}

/// Instances whose traffic shift started after the run's start, with their first window.
fn new_instances(raw: &RawRun, step_s: f64) -> Vec<NewInstance> {
    let mut out = Vec::new();
    for e in &raw.lifecycle {
        let d = &e["data"];
        if d["stage"] != "shift_traffic" || d["ok"] != true {
            continue;
        }
        // Scale-in also shifts traffic (away); a scale-out's shift follows a warm_up of the
        // same instance for the same scale event.
        let name = d["instance"].as_str().unwrap_or_default().to_owned();
        let warmed = raw.lifecycle.iter().any(|w| {
            let w = &w["data"];
            w["instance"] == d["instance"]
                && w["scale_event_id"] == d["scale_event_id"]
                && w["stage"] == "warm_up"
        });
        let Some(started_ms) = d["started_at_ms"].as_u64() else {
            continue;
        };
        if !warmed || started_ms < raw.start_unix_ms {
            continue;
        }
        let serving_at_s = (started_ms - raw.start_unix_ms) as f64 / 1000.0;
        let window_end = started_ms + (step_s * 1000.0) as u64;
        let lines = raw.access_logs.get(&name).map_or(&[][..], Vec::as_slice);
        let first: Vec<&Access> = lines
            .iter()
            .filter(|a| a.at_ms >= started_ms && a.at_ms < window_end)
            .collect();
        let hits = first.iter().filter(|a| a.cache == "HIT").count() as u64;
        let n = first.len() as u64;
        out.push(NewInstance {
            name,
            serving_at_s,
            in_measured_day: serving_at_s >= raw.measured_from_s && serving_at_s < raw.total_s,
            first_window_requests: n,
            first_window_hits: hits,
            first_window_hit_ratio: (n > 0).then(|| hits as f64 / n as f64),
        });
    }
    out
}

/// The experiment: its configuration, every run, and the goals.
#[derive(Clone, Debug, Serialize)]
pub struct Experiment {
    pub config: BedConfig,
    pub runs: Vec<RunReport>,
    pub goals: Vec<Goal>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub name: String,
    pub met: Option<bool>,
    pub detail: String,
}

impl Experiment {
    pub fn new(config: BedConfig, runs: Vec<RunReport>) -> Self {
        // The goals compare the in-process runs; a Kafka run is reported beside them.
        let get = |s: Strategy| {
            runs.iter()
                .find(|r| r.strategy == s && r.transport == Transport::InProcess)
        };
        let mut goals = Vec::new();
        match (get(Strategy::Reactive), get(Strategy::PredictivePrewarm)) {
            (Some(r), Some(p)) => {
                let fewer = if r.slo_violation_seconds == 0 {
                    None
                } else {
                    Some(1.0 - p.slo_violation_seconds as f64 / r.slo_violation_seconds as f64)
                };
                let cost = p.instance_seconds / r.instance_seconds.max(1e-9);
                let met = fewer.map(|f| f >= 0.8 && cost <= 1.1);
                goals.push(Goal {
                    name: "predictive+prewarm: >= 80% fewer SLO-violation seconds than reactive at <= 110% of its instance-seconds".to_owned(),
                    met,
                    detail: format!(
                        "violation seconds {} vs {} ({}), instance-seconds {:.1} vs {:.1} ({:.0}%)",
                        p.slo_violation_seconds,
                        r.slo_violation_seconds,
                        fewer.map_or_else(
                            || "reactive had none: nothing to reduce".to_owned(),
                            |f| format!("{:.0}% fewer", f * 100.0)
                        ),
                        p.instance_seconds,
                        r.instance_seconds,
                        cost * 100.0
                    ),
                });
            }
            _ => goals.push(Goal {
                name: "SLO goal".to_owned(),
                met: None,
                detail: "needs both the reactive and the predictive+prewarm runs".to_owned(),
            }),
        }
        match (get(Strategy::Predictive), get(Strategy::PredictivePrewarm)) {
            (Some(c), Some(w)) => {
                let (cold, warm) = (c.new_instance_hit_ratio, w.new_instance_hit_ratio);
                goals.push(Goal {
                    name:
                        "pre-warmed instances reach >= 2x the first-window hit ratio of cold ones"
                            .to_owned(),
                    met: cold.zip(warm).map(|(c, w)| w >= 2.0 * c),
                    detail: format!("pre-warmed {} vs cold {}", pct(warm), pct(cold)),
                });
            }
            _ => goals.push(Goal {
                name: "pre-warm goal".to_owned(),
                met: None,
                detail: "needs both predictive runs".to_owned(),
            }),
        }
        Self {
            config,
            runs,
            goals,
        }
    }

    /// The table printed after the runs.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{:<20} {:>10} {:>8} {:>10} {:>7} {:>10} {:>9}",
            "run", "SLO-viol s", "failed", "inst-s", "scales", "new-hit%", "requests"
        );
        for r in &self.runs {
            let _ = writeln!(
                t,
                "{:<20} {:>10} {:>8} {:>10.1} {:>7} {:>10} {:>9}",
                r.label(),
                format!("{}/{}", r.slo_violation_seconds, r.measured_seconds),
                r.failed_requests,
                r.instance_seconds,
                r.scale_events,
                pct(r.new_instance_hit_ratio),
                r.requests_completed
            );
        }
        for g in &self.goals {
            let verdict = match g.met {
                Some(true) => "MET",
                Some(false) => "MISSED",
                None => "n/a",
            };
            let _ = writeln!(t, "goal [{verdict}] {}: {}", g.name, g.detail);
        }
        t
    }
}

impl RunReport {
    /// The run's name in tables and plots: the strategy, and the transport when not in-process.
    pub fn label(&self) -> String {
        match self.transport {
            Transport::InProcess => self.strategy.name().to_owned(),
            Transport::Kafka => format!("{} (kafka)", self.strategy.name()),
        }
    }
}

/// `shadowtap_collector_fleet_total{what="<what>"}` from a Prometheus text page.
fn fleet_total(page: &str, what: &str) -> Option<u64> {
    let prefix = format!("shadowtap_collector_fleet_total{{what=\"{what}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{:.0}%", v * 100.0))
}
