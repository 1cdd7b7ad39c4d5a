//! The collector's logic, free of Kafka: merge the observations many agents make of a resource
//! into one window, combine forecasts, decide with the shared [`DecisionEngine`].
//!
//! Used by the `shadowtap-collector` service and, in-process, by the agent's embedded mode.
//!
//! Windows of a resource close in time order when any of these holds:
//! 1. every agent known for the resource has reported a later window (all moved on);
//! 2. every known agent has reported this window and it has been open for `merge_wait`;
//! 3. the resource's stream time (latest window end seen) is more than `grace_windows`
//!    windows past its end;
//! 4. it has been open for `idle_close` (agents stopped sending).
//!
//! A record for a closed window is a duplicate when its agent had already reported that window
//! (a redelivery: dropped, counted) and late otherwise (counted, not merged).

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    decision::{Decision, DecisionEngine, DecisionInput, PolicySet},
    forecast::{DemandForecast, ForecastConfig, ForecastPoint, ModelKind, ResourceForecaster},
};

use super::{
    scale_event::{ScaleEvent, WindowDigest},
    wire::{CountsDigest, Observation, WindowCounts, histogram_bytes, histogram_from_bytes},
};

/// Settings of the merge and decision stage.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Endpoints kept per merged window (the rest is summed as "other").
    pub top_k: usize,
    /// Close a window when stream time is this many windows past its end.
    pub grace_windows: u64,
    /// Close a window every known agent has reported after it was open this long.
    pub merge_wait: Duration,
    /// Close a window after it was open this long, whoever is missing.
    pub idle_close: Duration,
    /// Forget an agent that has not reported for this many windows.
    pub agent_expiry_windows: u64,
    /// Settings of the collector's own forecaster of merged demand (`step` is taken from the
    /// window length).
    pub forecast: ForecastConfig,
    /// Forecast buckets handed to the decision engine.
    pub horizon_steps: usize,
    /// Merged windows needed before the collector's own forecast is used; before that the
    /// engine decides on the last observation (and the agents' forecasts). A forecast from a
    /// handful of points has uselessly wide intervals.
    pub min_forecast_history: usize,
    /// Merged demand points kept for snapshots (the forecaster is rebuilt from them).
    pub history_limit: usize,
    /// `CloudEvents` `source` of published events.
    pub source: String,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            top_k: 20,
            grace_windows: 1,
            merge_wait: Duration::from_millis(500),
            idle_close: Duration::from_secs(5),
            agent_expiry_windows: 10,
            forecast: ForecastConfig::default(),
            horizon_steps: 12,
            min_forecast_history: 8,
            history_limit: 512,
            source: "urn:shadowtap:collector".to_owned(),
        }
    }
}

/// What happened to an ingested observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Merged into an open window.
    Merged,
    /// Same agent and window seen before: dropped.
    Duplicate,
    /// Its window had closed without it: counted, not merged.
    Late,
    /// Window length differs from the resource's: counted, not merged.
    StepMismatch,
}

/// Counters of the stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStats {
    pub observations_merged: u64,
    pub observations_duplicate: u64,
    pub observations_late: u64,
    pub observations_step_mismatch: u64,
    pub windows_closed: u64,
    pub decisions: u64,
    pub decisions_without_policy: u64,
    pub forecast_errors: u64,
    pub agent_forecasts_ignored: u64,
    pub scale_events: u64,
}

/// A merged window that closed, with the decision it led to.
#[derive(Debug, Clone)]
pub struct ClosedWindow {
    pub resource: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub agents: Vec<String>,
    pub merged: WindowCounts,
    /// `None` when no policy covers the resource.
    pub decision: Option<Decision>,
}

impl ClosedWindow {
    /// The scale event to publish, if the decision changes the instance count.
    pub fn scale_event(&self, source: &str) -> Option<ScaleEvent> {
        let decision = self.decision.as_ref()?;
        ScaleEvent::from_decision(
            source,
            decision,
            WindowDigest {
                start_ms: self.start_ms,
                end_ms: self.end_ms,
                agents: self.agents.clone(),
                counts: CountsDigest::from(&self.merged),
            },
        )
    }
}

#[derive(Debug, Clone)]
struct OpenWindow {
    end_ms: u64,
    opened: Instant,
    contributions: BTreeMap<String, WindowCounts>,
}

#[derive(Debug, Clone, Default)]
struct AgentMark {
    last_window_start_ms: u64,
    forecast: Option<DemandForecast>,
}

struct ResourceState {
    step_ms: u64,
    /// Windows starting before this have closed.
    closed_before_ms: u64,
    stream_time_ms: u64,
    agents: BTreeMap<String, AgentMark>,
    open: BTreeMap<u64, OpenWindow>,
    history: Vec<(u64, f64)>,
    instances: u32,
    last_decision: Option<Decision>,
    forecaster: Option<ResourceForecaster>,
    /// (first bucket, points) of the forecaster's warm start.
    forecast_origin: Option<(u64, usize)>,
    engine: Option<DecisionEngine>,
}

/// Merges observations and decides, for any number of resources.
pub struct Fleet {
    config: FleetConfig,
    policies: PolicySet,
    resources: HashMap<String, ResourceState>,
    stats: FleetStats,
}

/// Errors of the stage.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("snapshot of `{resource}`: {reason}")]
    Snapshot { resource: String, reason: String },
}

impl Fleet {
    pub fn new(config: FleetConfig, policies: PolicySet) -> Self {
        Self {
            config,
            policies,
            resources: HashMap::new(),
            stats: FleetStats::default(),
        }
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    pub fn stats(&self) -> FleetStats {
        self.stats
    }

    /// Resources with state.
    pub fn resources(&self) -> impl Iterator<Item = &str> {
        self.resources.keys().map(String::as_str)
    }

    /// Open windows across all resources (a gauge).
    pub fn open_windows(&self) -> usize {
        self.resources.values().map(|r| r.open.len()).sum()
    }

    /// The last decision made for `resource`.
    pub fn last_decision(&self, resource: &str) -> Option<&Decision> {
        self.resources.get(resource)?.last_decision.as_ref()
    }

    /// Online accuracy of the collector's forecaster of `resource` (MASE, coverage).
    pub fn accuracy(&self, resource: &str) -> Option<crate::forecast::AccuracySnapshot> {
        Some(
            self.resources
                .get(resource)?
                .forecaster
                .as_ref()?
                .accuracy(),
        )
    }

    /// Forget a resource (its partition moved to another collector).
    pub fn drop_resource(&mut self, resource: &str) {
        self.resources.remove(resource);
    }

    /// Merge one observation; returns the windows this closed, oldest first.
    pub fn ingest(&mut self, obs: Observation, now: Instant) -> (Ingested, Vec<ClosedWindow>) {
        let step = obs.window_end_ms - obs.window_start_ms;
        let state = self
            .resources
            .entry(obs.resource.clone())
            .or_insert_with(|| ResourceState::new(step, obs.window_start_ms));
        let outcome = state.merge(obs, step, self.config.top_k, now);
        match outcome {
            Ingested::Merged => self.stats.observations_merged += 1,
            Ingested::Duplicate => self.stats.observations_duplicate += 1,
            Ingested::Late => self.stats.observations_late += 1,
            Ingested::StepMismatch => self.stats.observations_step_mismatch += 1,
        }
        (outcome, self.close_ready(now))
    }

    /// Close what the clock alone makes ready (`merge_wait`, `idle_close`).
    pub fn tick(&mut self, now: Instant) -> Vec<ClosedWindow> {
        self.close_ready(now)
    }

    /// Close every open window now (shutdown).
    pub fn flush(&mut self) -> Vec<ClosedWindow> {
        let names: Vec<String> = self.resources.keys().cloned().collect();
        let mut out = Vec::new();
        for name in names {
            while let Some(closed) = self.close_oldest(&name) {
                out.push(closed);
            }
        }
        out
    }

    fn close_ready(&mut self, now: Instant) -> Vec<ClosedWindow> {
        let cfg = &self.config;
        let ready: Vec<String> = self
            .resources
            .iter()
            .filter(|(_, s)| s.oldest_ready(cfg, now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for name in ready {
            loop {
                let is_ready = self
                    .resources
                    .get(&name)
                    .is_some_and(|s| s.oldest_ready(&self.config, now));
                if !is_ready {
                    break;
                }
                match self.close_oldest(&name) {
                    Some(closed) => out.push(closed),
                    None => break,
                }
            }
        }
        out
    }

    fn close_oldest(&mut self, name: &str) -> Option<ClosedWindow> {
        let state = self.resources.get_mut(name)?;
        let (start_ms, window) = state.open.pop_first()?;
        state.closed_before_ms = state.closed_before_ms.max(start_ms + state.step_ms);
        let mut merged = WindowCounts::default();
        for counts in window.contributions.values() {
            merged.merge(counts, self.config.top_k);
        }
        let agents: Vec<String> = window.contributions.keys().cloned().collect();
        let end_ms = window.end_ms;
        let demand = merged.requests as f64;
        state.history.push((start_ms, demand));
        if state.history.len() > self.config.history_limit {
            let excess = state.history.len() - self.config.history_limit;
            state.history.drain(..excess);
        }
        // Expire agents that stopped reporting.
        let horizon = self
            .config
            .agent_expiry_windows
            .saturating_mul(state.step_ms);
        state
            .agents
            .retain(|_, m| m.last_window_start_ms.saturating_add(horizon) >= start_ms);
        self.stats.windows_closed += 1;

        let decision = match self.policies.policy_for(name) {
            Err(_) => {
                self.stats.decisions_without_policy += 1;
                None
            }
            Ok(policy) => {
                if state.instances == 0 {
                    state.instances = policy.min_instances;
                }
                let forecast = combined_forecast(
                    name,
                    state,
                    &agents,
                    &self.config,
                    &mut self.stats,
                    start_ms,
                    end_ms,
                    demand,
                );
                let engine = state
                    .engine
                    .get_or_insert_with(|| DecisionEngine::new(name, policy));
                let decision = engine.decide(&DecisionInput {
                    now_ms: end_ms,
                    forecast: &forecast,
                    current_instances: state.instances,
                });
                state.instances = decision.desired_instances;
                state.last_decision = Some(decision.clone());
                self.stats.decisions += 1;
                Some(decision)
            }
        };
        let closed = ClosedWindow {
            resource: name.to_owned(),
            start_ms,
            end_ms,
            agents,
            merged,
            decision,
        };
        if closed.decision.as_ref().is_some_and(|d| d.delta() != 0) {
            self.stats.scale_events += 1;
        }
        Some(closed)
    }

    /// Everything needed to resume `resource` elsewhere.
    pub fn snapshot(&self, resource: &str) -> Option<ResourceSnapshot> {
        let s = self.resources.get(resource)?;
        Some(ResourceSnapshot {
            version: SNAPSHOT_VERSION,
            resource: resource.to_owned(),
            step_ms: s.step_ms,
            closed_before_ms: s.closed_before_ms,
            stream_time_ms: s.stream_time_ms,
            agents: s
                .agents
                .iter()
                .map(|(k, m)| {
                    (
                        k.clone(),
                        AgentSnapshot {
                            last_window_start_ms: m.last_window_start_ms,
                            forecast: m.forecast.clone(),
                        },
                    )
                })
                .collect(),
            open: s
                .open
                .iter()
                .map(|(start, w)| OpenWindowSnapshot {
                    start_ms: *start,
                    end_ms: w.end_ms,
                    contributions: w
                        .contributions
                        .iter()
                        .map(|(a, c)| (a.clone(), CountsSnapshot::from(c)))
                        .collect(),
                })
                .collect(),
            history: s.history.clone(),
            instances: s.instances,
            last_decision: s.last_decision.clone(),
            forecast_origin: s.forecast_origin,
            engine: s.engine.clone(),
        })
    }

    /// Resume a resource from a snapshot (replacing any state it had here).
    pub fn restore(&mut self, snap: &ResourceSnapshot, now: Instant) -> Result<(), FleetError> {
        let err = |reason: String| FleetError::Snapshot {
            resource: snap.resource.clone(),
            reason,
        };
        if snap.version != SNAPSHOT_VERSION {
            return Err(err(format!("unsupported version {}", snap.version)));
        }
        if snap.step_ms == 0 {
            return Err(err("zero step".to_owned()));
        }
        let mut open = BTreeMap::new();
        for w in &snap.open {
            let mut contributions = BTreeMap::new();
            for (agent, c) in &w.contributions {
                contributions.insert(
                    agent.clone(),
                    c.to_counts().map_err(|e| err(e.to_string()))?,
                );
            }
            open.insert(
                w.start_ms,
                OpenWindow {
                    end_ms: w.end_ms,
                    opened: now,
                    contributions,
                },
            );
        }
        let mut state = ResourceState::new(snap.step_ms, snap.closed_before_ms);
        state.stream_time_ms = snap.stream_time_ms;
        state.agents = snap
            .agents
            .iter()
            .map(|(k, a)| {
                (
                    k.clone(),
                    AgentMark {
                        last_window_start_ms: a.last_window_start_ms,
                        forecast: a.forecast.clone(),
                    },
                )
            })
            .collect();
        state.open = open;
        state.instances = snap.instances;
        state.last_decision.clone_from(&snap.last_decision);
        state.history.clone_from(&snap.history);
        state.forecast_origin = snap.forecast_origin;
        // Timers come from the snapshot; the policy is the one in force here now.
        state.engine = snap.engine.clone().map(|mut engine| {
            if let Ok(policy) = self.policies.policy_for(&snap.resource) {
                engine.set_policy(policy);
            }
            engine
        });
        self.resources.insert(snap.resource.clone(), state);
        Ok(())
    }
}

impl ResourceState {
    fn new(step_ms: u64, first_start_ms: u64) -> Self {
        Self {
            step_ms,
            closed_before_ms: first_start_ms,
            stream_time_ms: 0,
            agents: BTreeMap::new(),
            open: BTreeMap::new(),
            history: Vec::new(),
            instances: 0,
            last_decision: None,
            forecaster: None,
            forecast_origin: None,
            engine: None,
        }
    }

    fn merge(&mut self, obs: Observation, step: u64, top_k: usize, now: Instant) -> Ingested {
        if step != self.step_ms {
            return Ingested::StepMismatch;
        }
        let start = obs.window_start_ms;
        let mark = self.agents.get(&obs.agent_id);
        if start < self.closed_before_ms {
            return if mark.is_some_and(|m| m.last_window_start_ms >= start) {
                Ingested::Duplicate
            } else {
                Ingested::Late
            };
        }
        let window = self.open.entry(start).or_insert_with(|| OpenWindow {
            end_ms: obs.window_end_ms,
            opened: now,
            contributions: BTreeMap::new(),
        });
        if window.contributions.contains_key(&obs.agent_id) {
            return Ingested::Duplicate;
        }
        let mut counts = obs.summary;
        counts.truncate_endpoints(top_k);
        window.contributions.insert(obs.agent_id.clone(), counts);
        self.stream_time_ms = self.stream_time_ms.max(obs.window_end_ms);
        let mark = self.agents.entry(obs.agent_id).or_default();
        if start >= mark.last_window_start_ms {
            mark.last_window_start_ms = start;
            if obs.forecast.is_some() {
                mark.forecast = obs.forecast;
            }
        }
        Ingested::Merged
    }

    fn oldest_ready(&self, cfg: &FleetConfig, now: Instant) -> bool {
        let Some((start, w)) = self.open.first_key_value() else {
            return false;
        };
        let open_for = now.saturating_duration_since(w.opened);
        let all_moved_on = self
            .agents
            .values()
            .all(|m| m.last_window_start_ms > *start);
        let all_reported = self.agents.keys().all(|a| w.contributions.contains_key(a));
        let grace = cfg.grace_windows.saturating_mul(self.step_ms);
        all_moved_on
            || (all_reported && open_for >= cfg.merge_wait)
            || self.stream_time_ms > w.end_ms.saturating_add(grace)
            || open_for >= cfg.idle_close
    }
}

/// The forecast the engine decides on: the collector's own forecast of merged demand, raised
/// pointwise to the sum of the agents' local forecasts where those cover the bucket. Never
/// provisioning for less than either view is the conservative combination.
#[allow(
    clippy::too_many_arguments,
    clippy::too_many_lines,
    clippy::similar_names
)]
fn combined_forecast(
    name: &str,
    state: &mut ResourceState,
    agents: &[String],
    config: &FleetConfig,
    stats: &mut FleetStats,
    start_ms: u64,
    end_ms: u64,
    demand: f64,
) -> DemandForecast {
    let step_ms = state.step_ms;
    // `history` already holds this window. The forecaster is created once by a warm start on
    // the history so far (`forecast_origin` records which), then fed one window at a time.
    // After a restore the same calls are replayed from the merged history, so the restored
    // forecaster is the one that was lost, not merely a similar one.
    let needs_forecaster = state.forecaster.is_none()
        && (state.forecast_origin.is_some() || state.history.len() >= config.min_forecast_history);
    if needs_forecaster {
        let cfg = ForecastConfig {
            step: Duration::from_millis(step_ms),
            ..config.forecast.clone()
        };
        match ResourceForecaster::new(name, cfg) {
            Ok(mut f) => {
                let past: Vec<(u64, f64)> = state
                    .history
                    .iter()
                    .filter(|(t, _)| *t < start_ms)
                    .copied()
                    .collect();
                let (skip, warm) = match state.forecast_origin {
                    Some((first_ms, n)) => match past.iter().position(|(t, _)| *t == first_ms) {
                        Some(i) => (i, n.min(past.len() - i)),
                        // The origin fell out of the kept history: warm-start on what is left.
                        None => (0, past.len()),
                    },
                    None => (0, past.len()),
                };
                let mut ok = true;
                if warm > 0 {
                    let values: Vec<f64> =
                        past[skip..skip + warm].iter().map(|(_, v)| *v).collect();
                    ok &= f.warm_start(past[skip].0, &values).is_ok();
                    state.forecast_origin = Some((past[skip].0, warm));
                } else {
                    state.forecast_origin = Some((start_ms, 0));
                }
                for (t, v) in &past[skip + warm..] {
                    ok &= f.observe(*t, *v).is_ok();
                }
                if !ok {
                    stats.forecast_errors += 1;
                }
                state.forecaster = Some(f);
            }
            Err(e) => {
                tracing::warn!(resource = name, error = %e, "collector forecaster config rejected");
                stats.forecast_errors += 1;
            }
        }
    }
    let own = state.forecaster.as_mut().and_then(|f| {
        f.observe(start_ms, demand)
            .and_then(|()| f.forecast(config.horizon_steps))
            .map_err(|e| tracing::debug!(resource = name, error = %e, "merged forecast failed"))
            .ok()
    });
    if own.is_none() && state.forecaster.is_some() {
        stats.forecast_errors += 1;
    }
    // Sum of the agents' forecasts, over buckets every contributing agent covers.
    let mut summed: Option<BTreeMap<u64, ForecastPoint>> = None;
    let mut model: Option<ModelKind> = None;
    for agent in agents {
        let Some(f) = state.agents.get(agent).and_then(|m| m.forecast.as_ref()) else {
            summed = None;
            break;
        };
        if f.step_ms != step_ms {
            stats.agent_forecasts_ignored += 1;
            summed = None;
            break;
        }
        model.get_or_insert_with(|| f.model.clone());
        let pts: BTreeMap<u64, ForecastPoint> = f
            .points
            .iter()
            .filter(|p| p.start_ms >= end_ms)
            .map(|p| (p.start_ms, *p))
            .collect();
        summed = Some(match summed {
            None => pts,
            Some(acc) => acc
                .into_iter()
                .filter_map(|(t, a)| {
                    pts.get(&t).map(|b| {
                        (
                            t,
                            ForecastPoint {
                                start_ms: t,
                                point: a.point + b.point,
                                lower: a.lower + b.lower,
                                upper: a.upper + b.upper,
                            },
                        )
                    })
                })
                .collect(),
        });
    }
    let mut base = own.unwrap_or_else(|| DemandForecast {
        resource: name.to_owned(),
        issued_at_ms: end_ms,
        step_ms,
        level: config.forecast.level,
        widening: 1.0,
        model: model.clone().unwrap_or(ModelKind::Naive),
        points: Vec::new(),
        last_observed: Some(demand),
        outliers_ms: Vec::new(),
        changepoints_ms: Vec::new(),
    });
    if let Some(summed) = summed.filter(|s| !s.is_empty()) {
        let mut by_start: BTreeMap<u64, ForecastPoint> =
            base.points.iter().map(|p| (p.start_ms, *p)).collect();
        for (t, s) in summed {
            by_start
                .entry(t)
                .and_modify(|p| {
                    p.point = p.point.max(s.point);
                    p.lower = p.lower.max(s.lower);
                    p.upper = p.upper.max(s.upper);
                })
                .or_insert(s);
        }
        base.points = by_start.into_values().collect();
    }
    base.last_observed = Some(demand);
    base
}

/// Version of [`ResourceSnapshot`].
pub const SNAPSHOT_VERSION: u32 = 1;

/// Serialisable state of one resource (merged windows, agents, history, instances, last
/// decision). The forecaster is rebuilt from `history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceSnapshot {
    pub version: u32,
    pub resource: String,
    pub step_ms: u64,
    pub closed_before_ms: u64,
    pub stream_time_ms: u64,
    pub agents: BTreeMap<String, AgentSnapshot>,
    pub open: Vec<OpenWindowSnapshot>,
    pub history: Vec<(u64, f64)>,
    pub instances: u32,
    pub last_decision: Option<Decision>,
    /// (first bucket, points) of the collector forecaster's warm start, replayed on restore.
    #[serde(default)]
    pub forecast_origin: Option<(u64, usize)>,
    /// The decision engine with its cooldown and stabilisation timers.
    #[serde(default)]
    pub engine: Option<DecisionEngine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSnapshot {
    pub last_window_start_ms: u64,
    pub forecast: Option<DemandForecast>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenWindowSnapshot {
    pub start_ms: u64,
    pub end_ms: u64,
    pub contributions: BTreeMap<String, CountsSnapshot>,
}

/// [`WindowCounts`] with the histogram as hex of its V2 serialisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountsSnapshot {
    pub requests: u64,
    pub responses: u64,
    pub errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency_us_hdr_hex: String,
    pub endpoints: BTreeMap<String, u64>,
    pub endpoints_other: u64,
}

impl From<&WindowCounts> for CountsSnapshot {
    fn from(c: &WindowCounts) -> Self {
        Self {
            requests: c.requests,
            responses: c.responses,
            errors: c.errors,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            latency_us_hdr_hex: super::scale_event::hex(&histogram_bytes(&c.latency_us)),
            endpoints: c.endpoints.clone(),
            endpoints_other: c.endpoints_other,
        }
    }
}

impl CountsSnapshot {
    fn to_counts(&self) -> Result<WindowCounts, super::wire::WireError> {
        let hex = self.latency_us_hdr_hex.as_bytes();
        let bad = || super::wire::WireError::Histogram("bad hex".to_owned());
        if !hex.len().is_multiple_of(2) {
            return Err(bad());
        }
        let mut bytes = Vec::with_capacity(hex.len() / 2);
        for pair in hex.chunks(2) {
            let s = std::str::from_utf8(pair).map_err(|_| bad())?;
            bytes.push(u8::from_str_radix(s, 16).map_err(|_| bad())?);
        }
        Ok(WindowCounts {
            requests: self.requests,
            responses: self.responses,
            errors: self.errors,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            latency_us: histogram_from_bytes(&bytes)?,
            endpoints: self.endpoints.clone(),
            endpoints_other: self.endpoints_other,
        })
    }
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
