//! The decision state machine.
//!
//! Rules, in order:
//! 1. over the window [now, now + lead time + horizon), the highest point forecast runs at the
//!    target utilisation and the highest upper bound fits in full capacity, both plus headroom:
//!    required = max(ceil(point × (1 + headroom) / (capacity × target utilisation)),
//!    ceil(upper × (1 + headroom) / capacity)), clamped to [min, max] instances. The target
//!    utilisation's slack is what absorbs ordinary forecast error; the interval only has to
//!    fit in what the slack leaves, not be stacked on top of it;
//! 2. more than current → scale out at once, unless the scale-out cooldown is running;
//! 3. fewer → scale in only to the highest requirement seen within the stabilisation window,
//!    only once the engine has watched a whole window, and not within the scale-in cooldown of
//!    any scaling action; this is what prevents flapping.

use std::collections::VecDeque;

use crate::forecast::{DemandForecast, ForecastPoint};

use super::{
    Action, CeilingBasis, Decision, Explanation, LifecycleStage, LifecycleStep, Policy, Reason,
    SizingBasis,
    band::{POINT_FOLLOWING_MASE, ReactiveShadow, clamp_instances},
    fixed::Fixed,
    policy::{PolicyMode, format_duration},
};

/// What the engine decides on.
#[derive(Debug, Clone, Copy)]
pub struct DecisionInput<'a> {
    /// Now, unix ms.
    pub now_ms: u64,
    /// The latest forecast of the resource's demand.
    pub forecast: &'a DemandForecast,
    /// Instances running or being provisioned.
    pub current_instances: u32,
}

/// The forecast over the decision window, its highest upper bound and its highest point.
struct WindowPeak {
    end_ms: u64,
    points: Vec<ForecastPoint>,
    /// The forecast reaches the end of the window.
    covered: bool,
    peak_upper: f64,
    /// The highest point forecast in the window (the last observation when the forecast does
    /// not cover it).
    peak_point: f64,
    /// The bucket of `peak_upper`.
    peak_at_ms: u64,
}

impl WindowPeak {
    /// The reactive view: only the window just observed counts.
    fn observed(now: u64, forecast: &DemandForecast) -> Self {
        let last = forecast.last_observed.unwrap_or(0.0).max(0.0);
        Self {
            end_ms: now,
            points: Vec::new(),
            covered: true,
            peak_upper: last,
            peak_point: last,
            peak_at_ms: now,
        }
    }

    fn find(policy: &Policy, now: u64, forecast: &DemandForecast) -> Self {
        let end_ms = now
            .saturating_add(millis(policy.provisioning_lead_time))
            .saturating_add(millis(policy.horizon));
        let step = forecast.step_ms.max(1);
        let points: Vec<ForecastPoint> = forecast
            .points
            .iter()
            .filter(|p| p.start_ms < end_ms && p.start_ms.saturating_add(step) > now)
            .copied()
            .collect();
        let covered = points
            .last()
            .is_some_and(|p| p.start_ms.saturating_add(step) >= end_ms);
        let (peak_upper, peak_point, peak_at_ms) = if covered {
            let (upper, at) = points
                .iter()
                .map(|p| (p.upper, p.start_ms))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .unwrap_or((0.0, now));
            let point = points.iter().map(|p| p.point).fold(0.0, f64::max);
            (upper, point, at)
        } else {
            // The forecast does not reach the end of the window: decide on what was seen.
            let last = forecast.last_observed.unwrap_or(0.0).max(0.0);
            let peak = points.iter().map(|p| p.upper).fold(last, f64::max);
            (peak, last, now)
        };
        Self {
            end_ms,
            points,
            covered,
            peak_upper,
            peak_point,
            peak_at_ms,
        }
    }
}

/// The reason as the basis of the decision says it: the reactive rule and a forecast without
/// skill rest on the last observation; without a covering forecast the decision does too, and
/// says so unless a timer or limit is what actually held it.
fn basis_of(
    reason: Reason,
    reactive: bool,
    no_skill: bool,
    covered: bool,
    action: Action,
) -> Reason {
    let timer_or_limit = matches!(
        reason,
        Reason::ScaleOutCooldown
            | Reason::ScaleInCooldown
            | Reason::Stabilising
            | Reason::AtMaxInstances
            | Reason::BelowReactiveFloor
            | Reason::AboveCostCeiling
    );
    match reason {
        Reason::ForecastAboveTarget if no_skill => Reason::ForecastWithoutSkill,
        Reason::ForecastAboveTarget if reactive => Reason::ObservedAboveTarget,
        Reason::ForecastBelowTarget if reactive => Reason::ObservedBelowTarget,
        r if reactive || no_skill || covered || action == Action::ScaleIn || timer_or_limit => r,
        _ => Reason::NoForecastCoverage,
    }
}

fn action_text(action: Action) -> &'static str {
    match action {
        Action::ScaleOut => "scale out",
        Action::ScaleIn => "scale in",
        Action::Hold => "hold",
    }
}

/// Scaling state machine of one resource. Serializable, so its cooldown and stabilisation
/// timers survive a collector restart or a partition moving to another collector.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DecisionEngine {
    resource: String,
    policy: Policy,
    first_decision_ms: Option<u64>,
    last_scale_out_ms: Option<u64>,
    last_scale_in_ms: Option<u64>,
    /// (time, required instances), oldest first, covering the stabilisation window.
    recommendations: VecDeque<(u64, u32)>,
    /// The forecaster's recent MASE (rolling window, current reference), as last told
    /// ([`Self::set_skill`]).
    #[serde(default)]
    mase: Option<f64>,
    /// What the reactive rule would run: the floor and the base of the cost ceiling.
    #[serde(default)]
    shadow: ReactiveShadow,
}

/// What a window needs and what set it.
#[derive(Debug, Clone, Copy)]
struct Sizing {
    instances: u32,
    /// The policy's `max_instances` cut the count.
    at_max: bool,
    /// Instances for the point at the target utilisation (clamped).
    by_point: u32,
    /// Instances for the upper bound at full capacity (clamped; the minimum without a
    /// forecast).
    by_upper: u32,
    /// `None`: decided on the last observation.
    basis: Option<SizingBasis>,
}

/// Why the cost ceiling followed the point forecast, with the figures the summary quotes.
#[derive(Debug, Clone, Copy)]
struct PointFollowing {
    basis: CeilingBasis,
    /// The highest lower bound of the window's interval.
    lower: f64,
    /// The window just observed.
    last: f64,
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl DecisionEngine {
    /// An engine for `resource` with a validated `policy`.
    pub fn new(resource: impl Into<String>, policy: Policy) -> Self {
        Self {
            resource: resource.into(),
            policy,
            first_decision_ms: None,
            last_scale_out_ms: None,
            last_scale_in_ms: None,
            recommendations: VecDeque::new(),
            mase: None,
            shadow: ReactiveShadow::default(),
        }
    }

    /// The forecaster's recent MASE against its reference (`AccuracySnapshot::recent_mase`;
    /// `None`: not scored yet, or the model's reference changed too recently).
    /// With `skill_fallback_mase` in the policy, a forecast without skill is not followed.
    pub fn set_skill(&mut self, mase: Option<f64>) {
        self.mase = mase;
    }

    /// Adopts a (possibly changed) policy, keeping the timers and recommendation history.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Decide. Calls must come with non-decreasing `now_ms`.
    // One pass from forecast to explanation; splitting it would scatter the rule order.
    #[allow(clippy::too_many_lines)]
    pub fn decide(&mut self, input: &DecisionInput<'_>) -> Decision {
        let now = input.now_ms;
        let current = input.current_instances;
        let forecast = input.forecast;
        let reactive = self.policy.mode == PolicyMode::Reactive;
        // A forecast that does no better than seasonal naive, or reaches its coverage only by
        // widening its intervals, is not worth its cost: follow the last observation (with the
        // policy's headroom) until it regains skill.
        let no_skill = !reactive && (self.without_skill() || self.too_wide(forecast.widening));
        let window = if reactive || no_skill {
            WindowPeak::observed(now, forecast)
        } else {
            WindowPeak::find(&self.policy, now, forecast)
        };
        let threshold = self.policy.threshold_per_instance();
        let sizing = self.required_instances(&window, !(reactive || no_skill));
        let (mut required, at_max) = (sizing.instances, sizing.at_max);
        let follows = if reactive || no_skill || !window.covered {
            None
        } else {
            self.point_following(&window, forecast)
        };
        // The cost band: never more than `max_cost_ratio` above what the reactive rule would
        // run, never fewer than it (`reactive_floor`).
        let band = (!reactive).then(|| {
            let band = self
                .shadow
                .band(&self.policy, now, forecast.last_observed.unwrap_or(0.0));
            if follows.is_some() {
                band.following_point(&self.policy, window.peak_point)
            } else {
                band
            }
        });
        let ceiling = band.and_then(|b| b.ceiling);
        let mut capped = ceiling.is_some_and(|cap| required > cap);
        if let Some(cap) = ceiling {
            required = required.min(cap);
        }
        let stabilised = self.stabilised(now, required);
        let cooling = self.scale_out_cooling(now);
        let (action, desired, reason) = self.choose(now, current, required, stabilised, at_max);
        // The band holds whatever the timers say: a count left above the ceiling by the
        // stabilisation window is cut, one below the floor is raised.
        let (action, desired, reason, floored) = match (band.and_then(|b| b.floor), ceiling) {
            (_, Some(cap)) if desired > cap => {
                capped = true;
                let (action, desired) = self.enforce(now, current, cap);
                (action, desired, Reason::AboveCostCeiling, false)
            }
            // The floor waits for a running scale-out cooldown like any scale-out.
            (Some(floor), _) if desired < floor && !cooling => {
                let (action, desired) = self.enforce(now, current, floor);
                (action, desired, Reason::BelowReactiveFloor, true)
            }
            _ => (action, desired, reason, false),
        };
        let reason = basis_of(reason, reactive, no_skill, window.covered, action);

        let lifecycle = self.lifecycle(now, current, desired);
        let summary = if reactive {
            format!(
                "{action} {current} -> {desired}: reactive policy: last window {last} needs \
                 {required} x {threshold} per instance ({reason:?})",
                action = action_text(action),
                last = Fixed(window.peak_upper, 1),
                threshold = Fixed(threshold, 1),
            )
        } else {
            format!(
                "{action} {current} -> {desired}: over the next {span} point {peak_point} at \
                 {threshold} per instance needs {by_point}, peak upper bound {peak_upper} \
                 ({level}% interval, widening x{widening}) at full capacity {capacity} needs \
                 {by_upper}, with {headroom}% headroom: {required} ({reason:?})",
                action = action_text(action),
                peak_upper = Fixed(window.peak_upper, 1),
                peak_point = Fixed(window.peak_point, 1),
                by_point = sizing.by_point,
                by_upper = sizing.by_upper,
                level = Fixed(forecast.level * 100.0, 0),
                widening = Fixed(forecast.widening, 2),
                headroom = Fixed(self.policy.headroom * 100.0, 0),
                threshold = Fixed(threshold, 1),
                capacity = Fixed(self.policy.capacity_per_instance, 1),
                span = format_duration(std::time::Duration::from_millis(window.end_ms - now)),
            )
        };
        let summary = self.annotate(
            summary,
            (no_skill, forecast.widening),
            (
                capped.then_some(ceiling).flatten(),
                floored.then_some(desired),
            ),
            follows,
            (!reactive)
                .then(|| forecast.changepoints_ms.last())
                .flatten(),
        );
        Decision {
            resource: self.resource.clone(),
            at_ms: now,
            action,
            current_instances: current,
            desired_instances: desired,
            reason,
            stage: lifecycle.first().map(|s| s.stage),
            lifecycle,
            explanation: Explanation {
                summary,
                window_start_ms: now,
                window_end_ms: window.end_ms,
                // A fallback decision still shows what the forecaster predicted (dashboards,
                // the API), though it did not follow it.
                forecast: if no_skill {
                    WindowPeak::find(&self.policy, now, forecast).points
                } else {
                    window.points
                },
                level: forecast.level,
                widening: forecast.widening,
                model: Some(forecast.model.clone()),
                peak_upper: window.peak_upper,
                peak_point: window.peak_point,
                peak_at_ms: window.peak_at_ms,
                headroom: self.policy.headroom,
                threshold_per_instance: threshold,
                required_instances: required,
                sized_by: sizing.basis,
                stabilised_instances: stabilised,
                outliers_ms: forecast.outliers_ms.clone(),
                changepoints_ms: forecast.changepoints_ms.clone(),
                gap_windows: 0,
                behind_ms: 0,
                skill_fallback: no_skill,
                recent_mase: if reactive { None } else { self.mase },
                ceiling_follows_point: follows.map(|f| f.basis),
                cost_capped: capped,
                reactive_instances: band.map_or(0, |b| b.reactive),
                reactive_floored: floored,
            },
        }
    }

    /// Why the cost ceiling may follow the point forecast in `window`, if it may: a strongly
    /// skilled forecaster (recent MASE below [`POINT_FOLLOWING_MASE`]), or a rise the
    /// forecast is sure of at its own interval level (the interval's lower bound somewhere in
    /// the window above the window just observed). The second is what a daily ramp looks like
    /// to a forecaster that is skilled but not twice as good as seasonal naive; mean reversion
    /// after an ordinary dip stays inside the interval and does not lift the ceiling.
    fn point_following(
        &self,
        window: &WindowPeak,
        forecast: &DemandForecast,
    ) -> Option<PointFollowing> {
        let mase = self.mase?;
        let last = forecast.last_observed.unwrap_or(0.0);
        let highest_lower = window.points.iter().map(|p| p.lower).fold(0.0, f64::max);
        let basis = if mase < POINT_FOLLOWING_MASE {
            CeilingBasis::StrongSkill
        } else if highest_lower > last {
            CeilingBasis::ExpectedRise
        } else {
            return None;
        };
        Some(PointFollowing {
            basis,
            lower: highest_lower,
            last,
        })
    }

    /// The recent MASE is at or above the policy's `skill_fallback_mase`.
    fn without_skill(&self) -> bool {
        matches!((self.policy.skill_fallback_mase, self.mase), (Some(limit), Some(m)) if m >= limit)
    }

    /// The forecaster widened its intervals by `skill_fallback_widening` or more.
    fn too_wide(&self, widening: f64) -> bool {
        self.policy
            .skill_fallback_widening
            .is_some_and(|limit| widening >= limit)
    }

    /// The scale-out cooldown is running.
    fn scale_out_cooling(&self, now: u64) -> bool {
        self.last_scale_out_ms
            .is_some_and(|t| now.saturating_sub(t) < millis(self.policy.scale_out_cooldown))
    }

    /// Move to `target` because of the cost band, recording the action for the timers.
    fn enforce(&mut self, now: u64, current: u32, target: u32) -> (Action, u32) {
        match target.cmp(&current) {
            std::cmp::Ordering::Greater => {
                self.last_scale_out_ms = Some(now);
                (Action::ScaleOut, target)
            }
            std::cmp::Ordering::Less => {
                self.last_scale_in_ms = Some(now);
                (Action::ScaleIn, target)
            }
            std::cmp::Ordering::Equal => (Action::Hold, target),
        }
    }

    /// Adds to the summary what else shaped the decision: no forecast skill, the cost
    /// ceiling, a recent level change (the forecast then rests on a short history).
    fn annotate(
        &self,
        mut summary: String,
        (no_skill, widening): (bool, f64),
        (capped_at, floored_at): (Option<u32>, Option<u32>),
        follows: Option<PointFollowing>,
        changepoint_ms: Option<&u64>,
    ) -> String {
        use std::fmt::Write as _;
        if no_skill && self.without_skill() {
            let _ = write!(
                summary,
                "; the forecast has no skill (recent MASE {:.2} >= {:.2}): decided on the last \
                 observation with headroom",
                self.mase.unwrap_or_default(),
                self.policy.skill_fallback_mase.unwrap_or_default()
            );
        } else if no_skill {
            let _ = write!(
                summary,
                "; the forecast has no skill (intervals widened x{widening:.2} >= x{:.2} to \
                 reach their coverage): decided on the last observation with headroom",
                self.policy.skill_fallback_widening.unwrap_or_default()
            );
        }
        if let Some(cap) = capped_at {
            let _ = write!(
                summary,
                "; capped at {cap} instances by max_cost_ratio {:.2} over the reactive rule",
                self.policy.max_cost_ratio.unwrap_or_default()
            );
        }
        match follows {
            Some(PointFollowing {
                basis: CeilingBasis::StrongSkill,
                ..
            }) => {
                let _ = write!(
                    summary,
                    "; the cost ceiling follows the point forecast (recent MASE {:.2} < \
                     {POINT_FOLLOWING_MASE:.2})",
                    self.mase.unwrap_or_default()
                );
            }
            Some(
                f @ PointFollowing {
                    basis: CeilingBasis::ExpectedRise,
                    ..
                },
            ) => {
                let _ = write!(
                    summary,
                    "; the cost ceiling follows the point forecast (expected rise: the \
                     interval's lower bound {} is above the last window {})",
                    Fixed(f.lower, 1),
                    Fixed(f.last, 1)
                );
            }
            None => {}
        }
        if let Some(floor) = floored_at {
            let _ = write!(
                summary,
                "; raised to {floor} instances, what the reactive rule runs (reactive_floor)"
            );
        }
        if let Some(at) = changepoint_ms {
            let _ = write!(
                summary,
                "; demand changed level at {} (changepoint)",
                crate::scale_event::rfc3339_millis(*at)
            );
        }
        summary
    }

    /// Instances the window needs, clamped to the limits; whether the limit cut it; and which
    /// of the forecast's point and upper bound set the count.
    ///
    /// On a forecast (`on_forecast`) the point runs at the target utilisation and the upper
    /// bound fits in full capacity: the slack the target utilisation leaves is the margin for
    /// ordinary forecast error, so stacking the interval on top of it (the upper bound at the
    /// target utilisation) would pay for the same error twice, all day. On the last
    /// observation (the reactive rule, a forecast without skill) there is no interval: it runs
    /// at the target utilisation.
    fn required_instances(&self, window: &WindowPeak, on_forecast: bool) -> Sizing {
        let policy = &self.policy;
        // Headroom is the operator's extra margin; the reactive baseline has none, as an HPA
        // has none.
        let headroom = match policy.mode {
            PolicyMode::Predictive => policy.headroom,
            PolicyMode::Reactive => 0.0,
        };
        let count = |demand: f64, per_instance: f64| {
            (demand.max(0.0) * (1.0 + headroom) / per_instance).ceil()
        };
        let by_point = count(window.peak_point, policy.threshold_per_instance());
        let by_upper = if on_forecast {
            count(window.peak_upper, policy.capacity_per_instance)
        } else {
            0.0
        };
        let raw = by_point.max(by_upper);
        let clamp = |raw: f64| clamp_instances(policy, raw);
        Sizing {
            instances: clamp(raw),
            at_max: raw > f64::from(policy.max_instances),
            by_point: clamp(by_point),
            by_upper: clamp(by_upper),
            basis: on_forecast.then_some(if by_upper > by_point {
                SizingBasis::UpperBound
            } else {
                SizingBasis::Point
            }),
        }
    }

    /// Record `required` and return the highest requirement within the stabilisation window.
    fn stabilised(&mut self, now: u64, required: u32) -> u32 {
        self.first_decision_ms.get_or_insert(now);
        let window = millis(self.policy.scale_in_stabilisation);
        super::band::window_max(&mut self.recommendations, now, required, window)
    }

    /// Apply cooldowns and the stabilisation window.
    fn choose(
        &mut self,
        now: u64,
        current: u32,
        required: u32,
        stabilised: u32,
        at_max: bool,
    ) -> (Action, u32, Reason) {
        let policy = &self.policy;
        let since = |t: Option<u64>| t.map(|t| now.saturating_sub(t));
        if required > current {
            let cooling = since(self.last_scale_out_ms)
                .is_some_and(|age| age < millis(policy.scale_out_cooldown));
            if cooling {
                return (Action::Hold, current, Reason::ScaleOutCooldown);
            }
            self.last_scale_out_ms = Some(now);
            let reason = if at_max {
                Reason::AtMaxInstances
            } else {
                Reason::ForecastAboveTarget
            };
            return (Action::ScaleOut, required, reason);
        }
        if stabilised < current {
            let watched = since(self.first_decision_ms).unwrap_or(0);
            let last_action = self.last_scale_out_ms.max(self.last_scale_in_ms);
            if watched < millis(policy.scale_in_stabilisation) {
                return (Action::Hold, current, Reason::Stabilising);
            }
            if since(last_action).is_some_and(|age| age < millis(policy.scale_in_cooldown)) {
                return (Action::Hold, current, Reason::ScaleInCooldown);
            }
            self.last_scale_in_ms = Some(now);
            return (Action::ScaleIn, stabilised, Reason::ForecastBelowTarget);
        }
        let reason = if required < current {
            Reason::Stabilising
        } else if at_max {
            Reason::AtMaxInstances
        } else {
            Reason::Steady
        };
        (Action::Hold, current, reason)
    }

    fn lifecycle(&self, now: u64, current: u32, desired: u32) -> Vec<LifecycleStep> {
        let policy = &self.policy;
        let state = policy
            .state_copy
            .as_deref()
            .unwrap_or("caches and session state");
        match desired.cmp(&current) {
            std::cmp::Ordering::Greater => {
                let n = desired - current;
                let ready = now.saturating_add(millis(policy.provisioning_lead_time));
                vec![
                    LifecycleStep {
                        stage: LifecycleStage::Provision,
                        at_ms: now,
                        instances: n,
                        hint: format!("provision {n} instance(s) of {}", self.resource),
                    },
                    LifecycleStep {
                        stage: LifecycleStage::WarmUp,
                        at_ms: ready.saturating_sub(millis(policy.warm_up)),
                        instances: n,
                        hint: format!("warm up: copy {state} from a running instance"),
                    },
                    LifecycleStep {
                        stage: LifecycleStage::ShiftTraffic,
                        at_ms: ready,
                        instances: n,
                        hint: format!("shift traffic onto {n} new instance(s)"),
                    },
                ]
            }
            std::cmp::Ordering::Less => {
                let n = current - desired;
                vec![
                    LifecycleStep {
                        stage: LifecycleStage::ShiftTraffic,
                        at_ms: now,
                        instances: n,
                        hint: format!("drain {n} instance(s): route no new requests to them"),
                    },
                    LifecycleStep {
                        stage: LifecycleStage::Decommission,
                        at_ms: now.saturating_add(millis(policy.drain)),
                        instances: n,
                        hint: format!("decommission {n} drained instance(s)"),
                    },
                ]
            }
            std::cmp::Ordering::Equal => Vec::new(),
        }
    }
}

#[cfg(test)]
// The compared values are exact by construction (small integers and halves).
#[allow(clippy::float_cmp)]
mod tests;
