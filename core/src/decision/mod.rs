//! Scaling decisions from demand forecasts.
//!
//! [`DecisionEngine`] is a pure state machine: given the time, a [`DemandForecast`] and the
//! current instance count it returns a [`Decision`] and remembers only what cooldowns and the
//! scale-in stabilisation window need. No I/O, no clock: the agent, the backtest and the
//! collector drive it with their own time and reuse the same [`Decision`] type, which is
//! self-contained (it carries the forecast points, interval, threshold and reason that led to it)
//! and serialisable.

pub mod band;
pub mod engine;
pub mod fixed;
pub mod policy;

use serde::{Deserialize, Serialize};

use crate::forecast::{ForecastPoint, ModelKind};

pub use engine::{DecisionEngine, DecisionInput};
pub use policy::{Policy, PolicyError, PolicyMode, PolicySet, format_duration, parse_duration};

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Add instances.
    ScaleOut,
    /// Remove instances.
    ScaleIn,
    /// Keep the current count.
    Hold,
}

/// Why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The forecast's upper bound would exceed the target with the current instances.
    ForecastAboveTarget,
    /// The forecast stayed below the target with fewer instances for the whole stabilisation
    /// window.
    ForecastBelowTarget,
    /// The current count matches what the forecast needs.
    Steady,
    /// More instances are needed but the scale-out cooldown is running.
    ScaleOutCooldown,
    /// Fewer instances would do but the scale-in cooldown is running.
    ScaleInCooldown,
    /// Fewer instances would do but not yet for the whole stabilisation window.
    Stabilising,
    /// More instances are needed than `max_instances` allows.
    AtMaxInstances,
    /// The forecast does not cover the decision window; decided on the last observation.
    NoForecastCoverage,
    /// Reactive policy: the last observed window exceeds the target with the current instances.
    ObservedAboveTarget,
    /// Reactive policy: fewer instances would have carried every window of the stabilisation
    /// window.
    ObservedBelowTarget,
    /// The forecast has no skill (recent MASE at or above the policy's
    /// `skill_fallback_mase`, or intervals widened by `skill_fallback_widening` or more): the
    /// last observation with headroom exceeds the target.
    ForecastWithoutSkill,
    /// The forecast needs fewer instances than the reactive rule would run for the last
    /// windows (policy `reactive_floor`): raised to the rule's count.
    BelowReactiveFloor,
    /// The forecast needs more than `max_cost_ratio` above what the reactive rule would run:
    /// cut to the ceiling (a scale-in if the count was above it).
    AboveCostCeiling,
}

/// A step in the life of a scaling operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleStage {
    /// Ask the platform for new instances.
    Provision,
    /// New instances start and copy state (caches, sessions) before serving.
    WarmUp,
    /// Move traffic: onto new instances, or off instances about to go.
    ShiftTraffic,
    /// Remove drained instances.
    Decommission,
}

/// One planned step of a decision's lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleStep {
    /// The stage.
    pub stage: LifecycleStage,
    /// When it should start, unix ms.
    pub at_ms: u64,
    /// How many instances it concerns.
    pub instances: u32,
    /// What to do, for people and automation (e.g. what state to copy).
    pub hint: String,
}

/// Everything that led to a decision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// One line a person can read.
    pub summary: String,
    /// Start of the window the decision covers (now), unix ms.
    pub window_start_ms: u64,
    /// End of the window: now + provisioning lead time + horizon, unix ms.
    pub window_end_ms: u64,
    /// The forecast points inside the window.
    pub forecast: Vec<ForecastPoint>,
    /// Nominal interval level of the forecast.
    pub level: f64,
    /// Interval widening the forecaster applied after coverage misses.
    pub widening: f64,
    /// The model that produced the forecast.
    pub model: Option<ModelKind>,
    /// Highest upper bound in the window (it must fit in full capacity, with headroom), or the
    /// last observation when the forecast does not cover the window.
    pub peak_upper: f64,
    /// Highest point forecast in the window (it runs at the target utilisation, with
    /// headroom), or the last observation when the forecast does not cover the window.
    pub peak_point: f64,
    /// Start of `peak_upper`'s bucket, unix ms.
    pub peak_at_ms: u64,
    /// Headroom fraction added on top of the demand sized for.
    pub headroom: f64,
    /// Capacity per instance × target utilisation.
    pub threshold_per_instance: f64,
    /// Instances the window needs (after min/max clamping).
    pub required_instances: u32,
    /// Which part of the forecast set `required_instances`: the point at the target
    /// utilisation or the upper bound at full capacity (`None`: the last observation, in
    /// reactive mode or without skill).
    #[serde(default)]
    pub sized_by: Option<SizingBasis>,
    /// Highest requirement within the scale-in stabilisation window.
    pub stabilised_instances: u32,
    /// Observations the forecaster treated as outliers (bucket starts, unix ms), within the
    /// history it fitted on.
    #[serde(default)]
    pub outliers_ms: Vec<u64>,
    /// Where the demand's level changed (bucket starts, unix ms): the forecast rests on what
    /// came after the last one.
    #[serde(default)]
    pub changepoints_ms: Vec<u64>,
    /// Windows with no observations right before the decision's window (a gap in the demand
    /// series: silent agents or a clock jump); 0 normally.
    #[serde(default)]
    pub gap_windows: u64,
    /// How long ago (ms) the forecast horizon of the decision's window had passed when it
    /// closed: a collector catching up on a backlog decides such windows on observed demand
    /// (`catch_up`); 0 normally.
    #[serde(default)]
    pub behind_ms: u64,
    /// The forecast had no skill (policy `skill_fallback_mase`): decided on the last
    /// observation with headroom.
    #[serde(default)]
    pub skill_fallback: bool,
    /// The forecaster's recent MASE the decision was taken with (`None`: no score yet, or
    /// the model's reference changed within the last 20 windows); below 0.5 the cost ceiling
    /// follows the point forecast (see `ceiling_follows_point`), at `skill_fallback_mase` the
    /// decision falls back.
    #[serde(default)]
    pub recent_mase: Option<f64>,
    /// Why the cost ceiling followed the point forecast instead of staying at
    /// `max_cost_ratio` over the reactive rule's count now (`None`: it did not).
    #[serde(default)]
    pub ceiling_follows_point: Option<CeilingBasis>,
    /// The requirement was cut to the policy's `max_cost_ratio` over the reactive rule.
    #[serde(default)]
    pub cost_capped: bool,
    /// What the reactive rule would run now (the floor and the base of the cost ceiling).
    #[serde(default)]
    pub reactive_instances: u32,
    /// The decision was raised to the reactive rule's count (policy `reactive_floor`).
    #[serde(default)]
    pub reactive_floored: bool,
}

/// What set a predictive decision's instance count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizingBasis {
    /// The window's highest point forecast at the target utilisation.
    Point,
    /// The window's highest upper bound at full capacity.
    UpperBound,
}

/// Why a decision's cost ceiling followed the point forecast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CeilingBasis {
    /// The forecaster's recent MASE is below `band::POINT_FOLLOWING_MASE`.
    StrongSkill,
    /// The forecast's interval lies above the window just observed somewhere in the
    /// decision's window: a rise it is sure of at its own level.
    ExpectedRise,
}

/// A scaling decision for one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The resource.
    pub resource: String,
    /// When it was made, unix ms.
    pub at_ms: u64,
    /// What to do.
    pub action: Action,
    /// Instances before the decision (running or being provisioned).
    pub current_instances: u32,
    /// Instances after it.
    pub desired_instances: u32,
    /// Why.
    pub reason: Reason,
    /// The lifecycle stage this decision starts (none for a hold).
    pub stage: Option<LifecycleStage>,
    /// The planned lifecycle of the change, in order.
    pub lifecycle: Vec<LifecycleStep>,
    /// What led to it.
    pub explanation: Explanation,
}

impl Decision {
    /// Instances added (positive) or removed (negative).
    pub fn delta(&self) -> i64 {
        i64::from(self.desired_instances) - i64::from(self.current_instances)
    }
}
