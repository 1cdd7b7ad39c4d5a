//! The cost band of a predictive decision: never fewer instances than the reactive rule would
//! run (`reactive_floor`), never more than `max_cost_ratio` above it.
//!
//! "What the reactive rule would run" is tracked beside the engine from the same observations:
//! the HPA-like rule scales out to `ceil(last window / threshold)` at once and scales in only to
//! the highest such count of the stabilisation window, so the count it runs is that maximum.
//! Bounding every predictive decision by it bounds the instance-hours of a run by the same
//! ratio, and a predictive count never below it never serves fewer windows than the rule would.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::Policy;

/// The reactive rule's recommendations within the stabilisation window, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReactiveShadow {
    recommendations: VecDeque<(u64, u32)>,
}

/// Record `value` at `now` in `recent` (time, value pairs, oldest first), drop what is older
/// than `window`, and return the highest value left: the maximum of the last `window`.
///
/// An entry no newer and no higher than the one recorded can never be the maximum again, so it
/// is dropped on the way in: on rising demand the queue holds one entry, not the whole
/// stabilisation window (the decision path walked hundreds per window). The answer is the
/// same; the walk over what is left keeps it right for queues restored from older snapshots,
/// which were kept whole.
pub(crate) fn window_max(
    recent: &mut VecDeque<(u64, u32)>,
    now: u64,
    value: u32,
    window: u64,
) -> u32 {
    while recent.back().is_some_and(|&(t, v)| t <= now && v <= value) {
        recent.pop_back();
    }
    recent.push_back((now, value));
    while recent
        .front()
        .is_some_and(|(t, _)| now.saturating_sub(*t) > window)
    {
        recent.pop_front();
    }
    recent.iter().map(|(_, v)| *v).max().unwrap_or(value)
}

/// Floor and ceiling of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostBand {
    /// What the reactive rule would run now.
    pub reactive: u32,
    /// Fewest instances a predictive decision may ask for.
    pub floor: Option<u32>,
    /// Most instances a predictive decision may ask for.
    pub ceiling: Option<u32>,
}

impl ReactiveShadow {
    /// Record the reactive rule's count for the window just observed (`last_observed`) at
    /// `now_ms` and return the band of `policy` around what the rule would run.
    pub fn band(&mut self, policy: &Policy, now_ms: u64, last_observed: f64) -> CostBand {
        let raw = reactive_count(policy, last_observed);
        let window = u64::try_from(policy.scale_in_stabilisation.as_millis()).unwrap_or(u64::MAX);
        let reactive = window_max(&mut self.recommendations, now_ms, raw, window);
        // Rounded down: the ceiling is a bound on cost, so 1.25 × 3 instances is 3, not 4.
        // Never below the rule itself, which the floor may ask for.
        let ceiling = policy.max_cost_ratio.map(|ratio| {
            let cap = (f64::from(reactive) * (1.0 + ratio) + 1e-9).floor();
            (cap as u32).max(reactive).min(policy.max_instances)
        });
        CostBand {
            reactive,
            floor: policy.reactive_floor.then_some(reactive),
            ceiling,
        }
    }
}

/// The ceiling follows the point forecast whenever the forecaster's recent MASE
/// (`AccuracySnapshot::recent_mase`) is below this: half of seasonal naive's error. A forecast
/// with less skill than that sees its point drift above the last window on noise alone (mean
/// reversion after every dip), which would lift the ceiling where nothing is coming; it lifts
/// the ceiling only for a rise its interval is sure of (`CeilingBasis::ExpectedRise`).
pub const POINT_FOLLOWING_MASE: f64 = 0.5;

impl CostBand {
    /// Let the ceiling follow a skilled forecast's point: a rise the point forecast expects
    /// within the window would be run by the reactive rule too once it arrives, so
    /// provisioning for it ahead costs the same instance-hours earlier; only the interval's
    /// width above the point stays capped at `max_cost_ratio`.
    #[must_use]
    pub fn following_point(mut self, policy: &Policy, peak_point: f64) -> Self {
        if let (Some(ceiling), Some(ratio)) = (self.ceiling, policy.max_cost_ratio) {
            let expected = reactive_count(policy, peak_point);
            let cap = (f64::from(expected) * (1.0 + ratio) + 1e-9).floor() as u32;
            self.ceiling = Some(ceiling.max(cap.min(policy.max_instances)));
        }
        self
    }
}

/// The reactive rule's count for one observed window: `ceil(demand / threshold)` within the
/// policy's limits.
pub fn reactive_count(policy: &Policy, demand: f64) -> u32 {
    clamp_instances(
        policy,
        (demand.max(0.0) / policy.threshold_per_instance()).ceil(),
    )
}

/// A whole (already rounded) instance count within the policy's limits; `max_instances` when
/// it is not finite.
pub(crate) fn clamp_instances(policy: &Policy, raw: f64) -> u32 {
    if raw.is_finite() {
        (raw as u64).clamp(
            u64::from(policy.min_instances),
            u64::from(policy.max_instances),
        ) as u32
    } else {
        policy.max_instances
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn window_max_is_the_maximum_of_the_window_and_keeps_rising_queues_short() {
        // Against the whole-window walk it replaces, on a pseudo-random walk of values at
        // non-decreasing times (repeated times included).
        let window = 10 * MIN;
        let (mut kept, mut all) = (VecDeque::new(), Vec::<(u64, u32)>::new());
        let (mut now, mut x) = (0_u64, 12_345_u64);
        let mut longest = 0;
        for _ in 0..5_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            now += (x >> 33) % 3 * MIN / 2;
            let value = u32::try_from((x >> 40) % 50).expect("small");
            all.push((now, value));
            let naive = all
                .iter()
                .filter(|(t, _)| now - t <= window)
                .map(|(_, v)| *v)
                .max()
                .expect("the value itself");
            assert_eq!(window_max(&mut kept, now, value, window), naive, "at {now}");
            longest = longest.max(kept.len());
        }
        assert!(longest < all.len() / 100, "kept {longest}");
        // Rising values: one entry, whatever the window.
        let mut rising = VecDeque::new();
        for i in 0..1_000 {
            assert_eq!(
                window_max(
                    &mut rising,
                    i * MIN,
                    u32::try_from(i).expect("small"),
                    u64::MAX
                ),
                u32::try_from(i).expect("small")
            );
        }
        assert_eq!(rising.len(), 1);
        // A queue restored whole (as older snapshots hold it) still answers its maximum.
        let mut restored = VecDeque::from([(0, 9), (MIN, 3), (2 * MIN, 7)]);
        assert_eq!(window_max(&mut restored, 3 * MIN, 1, window), 9);
        assert_eq!(window_max(&mut restored, 2 * MIN + window, 1, window), 7);
    }

    fn policy(max_cost_ratio: Option<f64>, reactive_floor: bool) -> Policy {
        Policy {
            capacity_per_instance: 100.0,
            target_utilisation: 0.5,
            scale_in_stabilisation: Duration::from_secs(300),
            max_cost_ratio,
            reactive_floor,
            max_instances: 30,
            ..Policy::default()
        }
    }

    #[test]
    fn the_band_follows_the_stabilised_reactive_count() {
        let p = policy(Some(0.25), true);
        let mut shadow = ReactiveShadow::default();
        // 400 / 50 = 8: ceiling floor(8 × 1.25) = 10.
        let band = shadow.band(&p, 0, 400.0);
        assert_eq!(
            band,
            CostBand {
                reactive: 8,
                floor: Some(8),
                ceiling: Some(10)
            }
        );
        // Demand drops: the rule would hold 8 for the stabilisation window, then run 2.
        assert_eq!(shadow.band(&p, 5 * MIN, 100.0).reactive, 8);
        let band = shadow.band(&p, 6 * MIN, 100.0);
        // 2 × 1.25 = 2.5 rounds down to 2: the ceiling never rounds up past the ratio.
        assert_eq!(
            band,
            CostBand {
                reactive: 2,
                floor: Some(2),
                ceiling: Some(2)
            }
        );
    }

    /// A forecast for 5 one-minute buckets from `now`, after `last` was observed: the point
    /// stays at `point`, the upper bound at `upper`.
    fn forecast(now: u64, last: f64, point: f64, upper: f64) -> crate::forecast::DemandForecast {
        crate::forecast::DemandForecast {
            resource: "api".into(),
            issued_at_ms: now,
            step_ms: MIN,
            level: 0.95,
            widening: 1.0,
            model: crate::forecast::ModelKind::Naive,
            points: (0..5)
                .map(|k| crate::forecast::ForecastPoint {
                    start_ms: now + k * MIN,
                    point,
                    lower: upper * 0.6,
                    upper,
                })
                .collect(),
            last_observed: Some(last),
            outliers_ms: Vec::new(),
            changepoints_ms: Vec::new(),
        }
    }

    /// The engine keeps every predictive decision inside the band, whatever the forecast and
    /// the timers say, and says so.
    #[test]
    fn decisions_stay_between_the_reactive_floor_and_the_cost_ceiling() {
        use crate::decision::{Action, DecisionEngine, DecisionInput, Reason};
        let mut p = policy(Some(0.25), true);
        p.provisioning_lead_time = Duration::from_secs(120);
        p.horizon = Duration::from_secs(60);
        p.scale_in_cooldown = Duration::from_secs(600);
        let mut e = DecisionEngine::new("api", p);
        let mut decide = |now: u64, last: f64, point: f64, upper: f64, current: u32| {
            e.decide(&DecisionInput {
                now_ms: now,
                forecast: &forecast(now, last, point, upper),
                current_instances: current,
            })
        };
        // Observed 400 (rule: 8); the upper bound wants 2000 / 100 = 20 at full capacity: cut
        // to 10.
        let d = decide(0, 400.0, 400.0, 2000.0, 8);
        assert_eq!((d.action, d.desired_instances), (Action::ScaleOut, 10));
        assert!(d.explanation.cost_capped);
        assert_eq!(d.explanation.reactive_instances, 8);
        assert!(
            d.explanation.summary.contains("max_cost_ratio 0.25"),
            "{}",
            d.explanation.summary
        );
        // Observed 800 (rule: 16); the forecast says 100 (2 instances): raised to 16.
        let d = decide(MIN, 800.0, 100.0, 100.0, 10);
        assert_eq!((d.action, d.desired_instances), (Action::ScaleOut, 16));
        assert_eq!(d.reason, Reason::BelowReactiveFloor);
        assert!(d.explanation.reactive_floored);
        assert!(
            d.explanation.summary.contains("reactive_floor"),
            "{}",
            d.explanation.summary
        );
        // Demand falls to 100: the rule holds 16 for its stabilisation window, then runs 2,
        // and the ceiling (2) cuts a count the engine's 10-minute scale-in cooldown would
        // still hold.
        let d = decide(7 * MIN, 100.0, 100.0, 100.0, 16);
        assert_eq!((d.action, d.desired_instances), (Action::ScaleIn, 2));
        assert_eq!(d.reason, Reason::AboveCostCeiling);
    }

    /// A rise the point forecast expects lifts the ceiling: the rule would run it too once
    /// it arrives.
    #[test]
    fn a_skilled_point_forecast_lifts_the_ceiling() {
        let p = policy(Some(0.25), true);
        let band = ReactiveShadow::default().band(&p, 0, 400.0);
        // Point 800 → the rule would run 16 then; ceiling floor(16 × 1.25) = 20.
        assert_eq!(band.following_point(&p, 800.0).ceiling, Some(20));
        // A point below the last window leaves the ceiling at the rule's 10.
        assert_eq!(band.following_point(&p, 100.0).ceiling, Some(10));
    }

    #[test]
    fn without_floor_or_ratio_the_band_is_open() {
        let mut shadow = ReactiveShadow::default();
        let band = shadow.band(&policy(None, false), 0, 400.0);
        assert_eq!(
            band,
            CostBand {
                reactive: 8,
                floor: None,
                ceiling: None
            }
        );
        // The ceiling is within max_instances: 1000 / 50 = 20, × 1.75 = 35 → 30.
        let band = ReactiveShadow::default().band(&policy(Some(0.75), true), 0, 1000.0);
        assert_eq!(band.ceiling, Some(30));
    }
}
