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
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    decision::{Decision, DecisionEngine, DecisionInput, PolicySet},
    forecast::{ForecastConfig, ResourceForecaster},
};

pub mod actuals;
mod budget;

pub use actuals::{Actuals, LifecycleApplied};
pub use budget::FitBudget;
use budget::FitTokens;

use crate::{
    scale_event::{ScaleEvent, WindowDigest},
    wire::{CountsDigest, Observation, WindowCounts},
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
    /// engine decides on the last observation. A forecast from a
    /// handful of points has uselessly wide intervals.
    pub min_forecast_history: usize,
    /// Merged demand points kept for snapshots (the forecaster is rebuilt from them).
    pub history_limit: usize,
    /// `CloudEvents` `source` of published events.
    pub source: String,
    /// How much of the stage's wall time its forecasters' refits may take.
    pub fit_budget: FitBudget,
    /// Catch up on a backlog: a window whose forecast horizon (`horizon_steps` windows past
    /// its end) has already passed on the wall clock when it closes is decided on its observed
    /// demand, and its forecaster learns it without refitting. Such a decision is about the
    /// past whatever the forecast says, and a collector replaying an outage's backlog spent
    /// most of its time in fits for them. Off by default: replays and tests run on event
    /// time only; the live daemons turn it on.
    pub catch_up: bool,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            top_k: 20,
            grace_windows: 1,
            merge_wait: Duration::from_millis(500),
            idle_close: Duration::from_secs(5),
            agent_expiry_windows: 10,
            // The collector forecasts windows of 1 s to 1 min: refit hourly, and at least every
            // 12 windows (2 min of 10 s windows), so the forecast follows the data.
            forecast: ForecastConfig {
                refit_max_steps: 12,
                ..ForecastConfig::default()
            },
            horizon_steps: 12,
            min_forecast_history: 8,
            history_limit: 512,
            source: "urn:shadowtap:collector".to_owned(),
            fit_budget: FitBudget::default(),
            catch_up: false,
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
    pub scale_events: u64,
    /// Windows closed after a stretch with no observations (a gap in the demand series).
    pub demand_gaps: u64,
    /// Lifecycle events applied, dropped as repeats, older than the last applied, or for a
    /// resource this fleet does not hold.
    pub lifecycle_applied: u64,
    pub lifecycle_duplicate: u64,
    pub lifecycle_stale: u64,
    pub lifecycle_unknown: u64,
    /// Provision attempts the provisioner reported as failed.
    pub provision_failures: u64,
    /// Scale events re-published after a failed provision's backoff.
    pub provision_retries: u64,
    /// Scale events re-published because the request went unanswered.
    pub requests_reissued: u64,
    /// Scale-outs not re-published because the same target was still in flight.
    pub requests_in_flight: u64,
    /// Forecaster fits (scheduled, and those a path that ran out could not wait for).
    #[serde(default)]
    pub forecast_fits: u64,
    /// Wall time spent in forecaster fits, microseconds.
    #[serde(default)]
    pub forecast_fit_us: u64,
    /// Scheduled refits put off because the [`FitBudget`] was spent.
    #[serde(default)]
    pub forecast_refits_deferred: u64,
    /// Windows of a resource whose first fit (the forecaster's warm start) was put off
    /// because the [`FitBudget`] was spent: decided on observed demand.
    #[serde(default)]
    pub forecast_first_fits_deferred: u64,
    /// Fits that re-estimated the ETS form chosen by an earlier search instead of searching
    /// every form (`ForecastConfig::model_search_every`).
    #[serde(default)]
    pub forecast_form_reuses: u64,
    /// Refits brought forward because the fitted path missed observations in a row
    /// ([`crate::forecast::SURPRISE_MISSES`]).
    #[serde(default)]
    pub forecast_surprise_refits: u64,
    /// Windows decided on observed demand because their forecast horizon had passed when
    /// they closed ([`FleetConfig::catch_up`]).
    #[serde(default)]
    pub windows_caught_up: u64,
}

/// A merged window that closed, with the decision it led to.
#[derive(Debug, Clone)]
pub struct ClosedWindow {
    pub resource: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub agents: Vec<String>,
    pub merged: WindowCounts,
    /// `None` when no policy covers the resource. Shared with the resource's last decision
    /// (metrics, dashboard, snapshots): a copy of it per window was a twentieth of the
    /// collector's work.
    pub decision: Option<Arc<Decision>>,
    /// False when the decision repeats a target that is still being provisioned (or waits
    /// out a failed provision's backoff): nothing new to tell the provisioner.
    pub publish: bool,
}

impl ClosedWindow {
    /// The scale event to publish, if the decision changes the instance count and is not a
    /// repeat of a request in flight.
    pub fn scale_event(&self, source: &str) -> Option<ScaleEvent> {
        if !self.publish {
            return None;
        }
        let decision = self.decision.as_ref()?;
        ScaleEvent::from_decision(source, decision, self.digest(self.agents.clone()))
    }

    /// The window as its scale event describes it.
    fn digest(&self, agents: Vec<String>) -> WindowDigest {
        WindowDigest {
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            agents,
            counts: CountsDigest::from(&self.merged),
        }
    }

    /// What [`scale_event`](Self::scale_event) is built from, taken out of the window: the
    /// shared decision and the digest of the counts, so that the event can be written
    /// elsewhere (the collector's publisher thread, with [`crate::scale_event::event_json`])
    /// while the histogram, which only the digest needs, is freed here. `None` exactly when
    /// `scale_event` is `None`.
    pub fn into_event_parts(mut self) -> Option<(Arc<Decision>, WindowDigest)> {
        if !self.publish {
            return None;
        }
        let decision = self.decision.take()?;
        if decision.action == crate::decision::Action::Hold {
            return None;
        }
        Some((
            decision,
            WindowDigest {
                start_ms: self.start_ms,
                end_ms: self.end_ms,
                agents: self.agents,
                counts: CountsDigest::from(self.merged),
            },
        ))
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
}

struct ResourceState {
    step_ms: u64,
    /// Windows starting before this have closed.
    closed_before_ms: u64,
    stream_time_ms: u64,
    agents: BTreeMap<String, AgentMark>,
    open: BTreeMap<u64, OpenWindow>,
    history: VecDeque<(u64, f64)>,
    instances: u32,
    last_decision: Option<Arc<Decision>>,
    forecaster: Option<ResourceForecaster>,
    /// (first bucket, points) of the forecaster's warm start.
    forecast_origin: Option<(u64, usize)>,
    engine: Option<DecisionEngine>,
    /// What the provisioner reported.
    actuals: Actuals,
}

/// Merges observations and decides, for any number of resources.
pub struct Fleet {
    config: FleetConfig,
    policies: PolicySet,
    resources: HashMap<String, ResourceState>,
    /// Lifecycle reports for resources not (yet) held: a collector replays the lifecycle
    /// topic before the resources' observations or snapshots arrive.
    pending_actuals: HashMap<String, Actuals>,
    stats: FleetStats,
    fit_tokens: FitTokens,
    /// Unix ms now, for [`FleetConfig::catch_up`].
    wall_clock: fn() -> u64,
}

/// Unix milliseconds on the system clock (0 before 1970): the wall clock of
/// [`FleetConfig::catch_up`], and the collector's.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
            policies,
            resources: HashMap::new(),
            pending_actuals: HashMap::new(),
            stats: FleetStats::default(),
            fit_tokens: FitTokens::new(&config.fit_budget),
            wall_clock: unix_now_ms,
            config,
        }
    }

    /// The same fleet with another wall clock (unix ms) for [`FleetConfig::catch_up`].
    #[must_use]
    pub fn with_wall_clock(mut self, clock: fn() -> u64) -> Self {
        self.wall_clock = clock;
        self
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
        self.resources.get(resource)?.last_decision.as_deref()
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

    /// Merge one observation; returns the windows of its resource this closed, oldest first.
    /// Only its resource is looked at (a scan of every resource per record cost the collector
    /// time proportional to the resources it owns): windows of other resources that the clock
    /// alone made ready close at the next [`Fleet::tick`].
    pub fn ingest(&mut self, obs: Observation, now: Instant) -> (Ingested, Vec<ClosedWindow>) {
        let step = obs.window_end_ms - obs.window_start_ms;
        let name = obs.resource.clone();
        let state = self.resources.entry(name.clone()).or_insert_with(|| {
            let mut state = ResourceState::new(step, obs.window_start_ms);
            if let Some(actuals) = self.pending_actuals.remove(&obs.resource) {
                state.actuals = actuals;
            }
            state
        });
        let outcome = state.merge(obs, step, self.config.top_k, now);
        match outcome {
            Ingested::Merged => self.stats.observations_merged += 1,
            Ingested::Duplicate => self.stats.observations_duplicate += 1,
            Ingested::Late => self.stats.observations_late += 1,
            Ingested::StepMismatch => self.stats.observations_step_mismatch += 1,
        }
        let mut closed = Vec::new();
        self.close_ready_of(&name, now, &mut closed);
        (outcome, closed)
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
            self.close_ready_of(&name, now, &mut out);
        }
        out
    }

    /// Close `name`'s ready windows, oldest first, into `out`.
    fn close_ready_of(&mut self, name: &str, now: Instant, out: &mut Vec<ClosedWindow>) {
        while self
            .resources
            .get(name)
            .is_some_and(|s| s.oldest_ready(&self.config, now))
        {
            match self.close_oldest(name) {
                Some(closed) => out.push(closed),
                None => break,
            }
        }
    }

    fn close_oldest(&mut self, name: &str) -> Option<ClosedWindow> {
        let state = self.resources.get_mut(name)?;
        let (start_ms, window) = state.open.pop_first()?;
        state.closed_before_ms = state.closed_before_ms.max(start_ms + state.step_ms);
        let end_ms = window.end_ms;
        let (merged, agents) = merge_contributions(window.contributions, self.config.top_k);
        let demand = merged.requests as f64;
        // Windows nobody reported between the last closed one and this one: silent agents,
        // or an agent clock that jumped. The decision says so rather than extrapolate quietly.
        let gap_windows = state.history.back().map_or(0, |(prev, _)| {
            (start_ms.saturating_sub(*prev) / state.step_ms.max(1)).saturating_sub(1)
        });
        if gap_windows > 0 {
            self.stats.demand_gaps += 1;
        }
        // A ring: dropping the oldest window from a Vec moved the whole history every window.
        state.history.push_back((start_ms, demand));
        while state.history.len() > self.config.history_limit {
            state.history.pop_front();
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

        let mut publish = false;
        let decision = match self.policies.policy_for(name) {
            Err(_) => {
                self.stats.decisions_without_policy += 1;
                None
            }
            Ok(policy) => {
                if state.instances == 0 {
                    state.instances = policy.min_instances;
                }
                let behind_ms = behind_ms(&self.config, self.wall_clock, end_ms, state.step_ms);
                if behind_ms > 0 {
                    self.stats.windows_caught_up += 1;
                }
                let MergedForecast {
                    forecast,
                    first_fit_waits,
                } = merged_forecast(
                    name,
                    state,
                    &self.config,
                    &mut self.stats,
                    &mut self.fit_tokens,
                    Window {
                        start_ms,
                        end_ms,
                        demand,
                        stale: behind_ms > 0,
                    },
                );
                let lead_time = policy.provisioning_lead_time;
                let engine = state
                    .engine
                    .get_or_insert_with(|| DecisionEngine::new(name, policy));
                engine.set_skill(
                    state
                        .forecaster
                        .as_ref()
                        .and_then(|f| f.accuracy().recent_mase),
                );
                let mut decision = engine.decide(&DecisionInput {
                    now_ms: end_ms,
                    forecast: &forecast,
                    current_instances: state.actuals.current(state.instances),
                });
                explain_series(&mut decision, behind_ms, gap_windows, first_fit_waits);
                state.instances = decision.desired_instances;
                if decision.delta() != 0 {
                    publish = state.actuals.should_publish(
                        &decision,
                        end_ms,
                        lead_time,
                        state.step_ms,
                        &mut self.stats,
                    );
                }
                let decision = Arc::new(decision);
                state.last_decision = Some(Arc::clone(&decision));
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
            publish,
        };
        if publish {
            self.stats.scale_events += 1;
        }
        Some(closed)
    }
}

/// How long ago (ms) the forecast horizon of a window ending at `end_ms` passed, when the
/// fleet catches up ([`FleetConfig::catch_up`]); 0 while it is still ahead, or without.
fn behind_ms(config: &FleetConfig, wall_clock: fn() -> u64, end_ms: u64, step_ms: u64) -> u64 {
    if !config.catch_up {
        return 0;
    }
    let horizon_end_ms =
        end_ms.saturating_add((config.horizon_steps as u64).saturating_mul(step_ms));
    wall_clock().saturating_sub(horizon_end_ms)
}

/// Say in the decision what was unusual about the demand series it was taken on: a window
/// decided late, on observed demand (catching up), a gap before it, or a first fit that
/// waits for the fit budget.
fn explain_series(
    decision: &mut Decision,
    behind_ms: u64,
    gap_windows: u64,
    first_fit_waits: bool,
) {
    use std::fmt::Write as _;
    // Appended in place: `format!("{}; ...", summary)` copied the summary through the
    // formatter, on every window of a backlog.
    let summary = &mut decision.explanation.summary;
    if behind_ms > 0 {
        decision.explanation.behind_ms = behind_ms;
        let _ = write!(
            summary,
            "; catching up: the forecast horizon of this window had passed {} s before it \
             closed, so it was decided on observed demand",
            behind_ms / 1000
        );
    }
    if gap_windows > 0 {
        decision.explanation.gap_windows = gap_windows;
        let _ = write!(
            summary,
            "; {gap_windows} window(s) before this one had no observations \
             (silent agents or a clock jump): the demand series has a gap"
        );
    }
    if first_fit_waits {
        summary.push_str(
            "; no forecast yet: this resource's first fit waits for the fit budget (other \
             resources' fits took it), so it was decided on observed demand",
        );
    }
}

/// A window's contributions merged, and who contributed. The first contribution becomes the
/// merged window and the rest are added to it: merging into an empty summary grew its latency
/// histogram from nothing to the contribution's range (a fresh zeroed allocation per window,
/// and every later quantile scanned the larger array), which was most of the collector's time
/// with one agent per resource. Contributions are already cut to `top_k` endpoints.
fn merge_contributions(
    contributions: BTreeMap<String, WindowCounts>,
    top_k: usize,
) -> (WindowCounts, Vec<String>) {
    let mut agents: Vec<String> = Vec::with_capacity(contributions.len());
    let mut contributions = contributions.into_iter();
    let mut merged = match contributions.next() {
        Some((agent, counts)) => {
            agents.push(agent);
            counts
        }
        None => WindowCounts::default(),
    };
    for (agent, counts) in contributions {
        merged.merge(&counts, top_k);
        agents.push(agent);
    }
    (merged, agents)
}

impl ResourceState {
    fn new(step_ms: u64, first_start_ms: u64) -> Self {
        Self {
            step_ms,
            closed_before_ms: first_start_ms,
            stream_time_ms: 0,
            agents: BTreeMap::new(),
            open: BTreeMap::new(),
            history: VecDeque::new(),
            instances: 0,
            last_decision: None,
            forecaster: None,
            forecast_origin: None,
            engine: None,
            actuals: Actuals::default(),
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
        mark.last_window_start_ms = mark.last_window_start_ms.max(start);
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

mod forecast;
mod metrics;
mod snapshot;

use forecast::{MergedForecast, Window, merged_forecast};

pub use snapshot::{
    AgentSnapshot, CountsSnapshot, OpenWindowSnapshot, ResourceSnapshot, SNAPSHOT_VERSION,
};

#[cfg(test)]
mod tests;
