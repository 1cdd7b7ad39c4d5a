//! Tests of `decision::engine`.

use std::time::Duration;

use super::*;
use crate::forecast::ModelKind;

const MIN: u64 = 60_000;

/// Full utilisation, so the upper bound (at full capacity) sizes every decision of the
/// helper's forecasts, as the rules under test expect; the point's own sizing has its test.
fn policy() -> Policy {
    Policy {
        capacity_per_instance: 50.0,
        target_utilisation: 1.0,
        provisioning_lead_time: Duration::from_secs(120),
        horizon: Duration::from_secs(60),
        min_instances: 1,
        max_instances: 20,
        scale_out_cooldown: Duration::ZERO,
        scale_in_cooldown: Duration::from_secs(120),
        scale_in_stabilisation: Duration::from_secs(300),
        headroom: 0.0,
        // The rules alone; the band has its own tests.
        max_cost_ratio: None,
        reactive_floor: false,
        ..Policy::default()
    }
}

/// A 1-minute forecast from `now` with the given upper bounds (point = 80% of upper).
fn forecast(now: u64, uppers: &[f64]) -> DemandForecast {
    DemandForecast {
        resource: "api".into(),
        issued_at_ms: now,
        step_ms: MIN,
        level: 0.95,
        widening: 1.0,
        model: ModelKind::Naive,
        points: uppers
            .iter()
            .enumerate()
            .map(|(k, &u)| ForecastPoint {
                start_ms: now + k as u64 * MIN,
                point: u * 0.8,
                lower: u * 0.6,
                upper: u,
            })
            .collect(),
        last_observed: uppers.first().map(|u| u * 0.8),
        outliers_ms: Vec::new(),
        changepoints_ms: Vec::new(),
    }
}

fn decide(engine: &mut DecisionEngine, now: u64, uppers: &[f64], current: u32) -> Decision {
    engine.decide(&DecisionInput {
        now_ms: now,
        forecast: &forecast(now, uppers),
        current_instances: current,
    })
}

#[test]
fn required_instances_cover_the_peak_upper_bound_in_the_window() {
    let mut engine = DecisionEngine::new("api", policy());
    // Window = lead 2m + horizon 1m = 3 buckets; the 4th (999) is outside it.
    let d = decide(&mut engine, 0, &[100.0, 120.0, 260.0, 999.0], 1);
    // 260 / 50 (full capacity) = 5.2 → 6.
    assert_eq!(d.action, Action::ScaleOut);
    assert_eq!(d.desired_instances, 6);
    assert_eq!(d.reason, Reason::ForecastAboveTarget);
    assert_eq!(d.explanation.peak_upper, 260.0);
    assert_eq!(d.explanation.peak_at_ms, 2 * MIN);
    assert_eq!(d.explanation.forecast.len(), 3);
    assert_eq!(d.explanation.threshold_per_instance, 50.0);
    assert_eq!(d.stage, Some(LifecycleStage::Provision));
    let stages: Vec<_> = d.lifecycle.iter().map(|s| s.stage).collect();
    assert_eq!(
        stages,
        vec![
            LifecycleStage::Provision,
            LifecycleStage::WarmUp,
            LifecycleStage::ShiftTraffic
        ]
    );
    assert_eq!(d.lifecycle[2].at_ms, 2 * MIN);
    assert!(d.lifecycle[1].hint.contains("copy"));
}

#[test]
fn headroom_and_limits_apply() {
    let mut p = policy();
    p.headroom = 0.5;
    p.max_instances = 4;
    let mut engine = DecisionEngine::new("api", p);
    // 100 × 1.5 / 50 = 3.
    let d = decide(&mut engine, 0, &[100.0; 3], 1);
    assert_eq!(d.desired_instances, 3);
    // 400 × 1.5 / 50 = 12 → clamped to 4.
    let d = decide(&mut engine, MIN, &[400.0; 3], 3);
    assert_eq!(d.desired_instances, 4);
    assert_eq!(d.reason, Reason::AtMaxInstances);
    // Exactly on the threshold needs no extra instance: 100 / 50 = 2.
    let mut engine = DecisionEngine::new("api", policy());
    let d = decide(&mut engine, 0, &[100.0; 3], 1);
    assert_eq!(d.desired_instances, 2);
    assert_eq!(d.action, Action::ScaleOut);
}

#[test]
fn min_instances_hold_when_demand_is_zero() {
    let mut p = policy();
    p.min_instances = 3;
    let mut engine = DecisionEngine::new("api", p);
    let d = decide(&mut engine, 0, &[0.0; 3], 3);
    assert_eq!(d.action, Action::Hold);
    assert_eq!(d.reason, Reason::Steady);
    assert!(d.lifecycle.is_empty());
    assert_eq!(d.stage, None);
}

#[test]
fn scale_in_waits_for_the_stabilisation_window() {
    let mut engine = DecisionEngine::new("api", policy());
    // Start high: 10 instances needed.
    let d = decide(&mut engine, 0, &[500.0; 3], 10);
    assert_eq!(d.action, Action::Hold);
    // Demand drops to 2 instances' worth. Within 5 minutes of the last high requirement,
    // no scale-in.
    for minute in 1..=5 {
        let d = decide(&mut engine, minute * MIN, &[100.0; 3], 10);
        assert_eq!(d.action, Action::Hold, "minute {minute}");
        assert_eq!(d.reason, Reason::Stabilising, "minute {minute}");
    }
    // At 6 minutes the high requirement is older than the window.
    let d = decide(&mut engine, 6 * MIN, &[100.0; 3], 10);
    assert_eq!(d.action, Action::ScaleIn);
    assert_eq!(d.desired_instances, 2);
    assert_eq!(d.reason, Reason::ForecastBelowTarget);
    let stages: Vec<_> = d.lifecycle.iter().map(|s| s.stage).collect();
    assert_eq!(
        stages,
        vec![LifecycleStage::ShiftTraffic, LifecycleStage::Decommission]
    );
}

#[test]
fn scale_in_goes_only_to_the_highest_recommendation_in_the_window() {
    let mut engine = DecisionEngine::new("api", policy());
    decide(&mut engine, 0, &[500.0; 3], 10);
    decide(&mut engine, 3 * MIN, &[300.0; 3], 10); // needs 6
    let d = decide(&mut engine, 6 * MIN, &[100.0; 3], 10); // needs 2, window max 6
    assert_eq!(d.action, Action::ScaleIn);
    assert_eq!(d.desired_instances, 6);
    assert_eq!(d.explanation.stabilised_instances, 6);
}

#[test]
fn scale_out_cooldown_delays_a_second_scale_out() {
    let mut p = policy();
    p.scale_out_cooldown = Duration::from_secs(180);
    let mut engine = DecisionEngine::new("api", p);
    let d = decide(&mut engine, 0, &[200.0; 3], 1);
    assert_eq!((d.action, d.desired_instances), (Action::ScaleOut, 4));
    let d = decide(&mut engine, MIN, &[400.0; 3], 4);
    assert_eq!(
        (d.action, d.reason),
        (Action::Hold, Reason::ScaleOutCooldown)
    );
    let d = decide(&mut engine, 3 * MIN, &[400.0; 3], 4);
    assert_eq!((d.action, d.desired_instances), (Action::ScaleOut, 8));
}

#[test]
fn scale_in_cooldown_follows_any_scaling_action() {
    let mut p = policy();
    p.scale_in_stabilisation = Duration::ZERO;
    p.scale_in_cooldown = Duration::from_secs(600);
    let mut engine = DecisionEngine::new("api", p);
    let d = decide(&mut engine, 0, &[500.0; 3], 1);
    assert_eq!(d.action, Action::ScaleOut);
    let d = decide(&mut engine, 5 * MIN, &[100.0; 3], 10);
    assert_eq!(
        (d.action, d.reason),
        (Action::Hold, Reason::ScaleInCooldown)
    );
    let d = decide(&mut engine, 10 * MIN, &[100.0; 3], 10);
    assert_eq!(d.action, Action::ScaleIn);
    // And after a scale-in, another scale-in waits too.
    let d = decide(&mut engine, 11 * MIN, &[0.0; 3], 2);
    assert_eq!(
        (d.action, d.reason),
        (Action::Hold, Reason::ScaleInCooldown)
    );
}

#[test]
fn oscillating_forecast_does_not_flap() {
    let mut engine = DecisionEngine::new("api", policy());
    let mut current = 1;
    let mut direction_changes = 0;
    let mut last_action = Action::Hold;
    for minute in 0..60 {
        let upper = if minute % 2 == 0 { 400.0 } else { 100.0 };
        let d = decide(&mut engine, minute * MIN, &[upper; 3], current);
        if d.action != Action::Hold {
            if last_action != Action::Hold && d.action != last_action {
                direction_changes += 1;
            }
            last_action = d.action;
        }
        current = d.desired_instances;
    }
    assert_eq!(direction_changes, 0, "scaled out and in alternately");
    assert_eq!(current, 8);
}

#[test]
fn short_forecast_falls_back_to_last_observation() {
    let mut engine = DecisionEngine::new("api", policy());
    // Only one bucket: the 3-minute window is not covered.
    let mut f = forecast(0, &[50.0]);
    f.last_observed = Some(420.0);
    let d = engine.decide(&DecisionInput {
        now_ms: 0,
        forecast: &f,
        current_instances: 1,
    });
    assert_eq!(d.reason, Reason::NoForecastCoverage);
    assert_eq!(d.desired_instances, 9); // 420 / 50 = 8.4 → 9
}

#[test]
fn decision_round_trips_through_json() {
    let mut engine = DecisionEngine::new("api", policy());
    let d = decide(&mut engine, 0, &[100.0, 120.0, 260.0], 1);
    let json = serde_json::to_string(&d).expect("serialise");
    assert!(json.contains("\"action\":\"scale_out\""), "{json}");
    assert!(json.contains("\"stage\":\"provision\""), "{json}");
    let back: Decision = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, d);
}

/// The reactive baseline ignores the forecast: only the last observation (80% of the first
/// upper bound in these fixtures) counts, without headroom, and it scales in after the
/// stabilisation window like the predictive mode.
#[test]
fn reactive_mode_follows_the_last_observation_only() {
    let mut p = policy();
    p.mode = PolicyMode::Reactive;
    p.headroom = 0.5;
    let mut e = DecisionEngine::new("api", p);
    // Observed 400 (upper 500) with a forecast rising to 2000: 400 / 50 = 8, not 40.
    let d = decide(&mut e, 0, &[500.0, 2000.0, 2000.0, 2000.0], 1);
    assert_eq!((d.action, d.desired_instances), (Action::ScaleOut, 8));
    assert_eq!(d.reason, Reason::ObservedAboveTarget);
    assert!(
        d.explanation.summary.contains("reactive"),
        "{}",
        d.explanation.summary
    );
    assert!(d.explanation.forecast.is_empty());
    // Demand falls to 80: held while the stabilisation window runs, then 2.
    let d = decide(&mut e, MIN, &[100.0], 8);
    assert_eq!((d.action, d.desired_instances), (Action::Hold, 8));
    let d = decide(&mut e, 7 * MIN, &[100.0], 8);
    assert_eq!((d.action, d.desired_instances), (Action::ScaleIn, 2));
    assert_eq!(d.reason, Reason::ObservedBelowTarget);
}

/// What the forecaster saw reaches the decision: changepoints and outliers are carried in
/// the explanation, and a level change is said in the summary.
#[test]
fn changepoints_and_outliers_reach_the_explanation() {
    let mut e = DecisionEngine::new("api", policy());
    let mut f = forecast(10 * MIN, &[100.0, 100.0, 100.0, 100.0]);
    f.changepoints_ms = vec![3 * MIN, 7 * MIN];
    f.outliers_ms = vec![5 * MIN];
    let d = e.decide(&DecisionInput {
        now_ms: 10 * MIN,
        forecast: &f,
        current_instances: 2,
    });
    assert_eq!(d.explanation.changepoints_ms, vec![3 * MIN, 7 * MIN]);
    assert_eq!(d.explanation.outliers_ms, vec![5 * MIN]);
    assert!(
        d.explanation
            .summary
            .ends_with("demand changed level at 1970-01-01T00:07:00.000Z (changepoint)"),
        "{}",
        d.explanation.summary
    );
    let plain = decide(&mut e, 11 * MIN, &[100.0, 100.0, 100.0, 100.0], 2);
    assert!(plain.explanation.changepoints_ms.is_empty());
    assert!(!plain.explanation.summary.contains("changepoint"));
}

/// `skill_fallback_mase`: while the forecaster does no better than seasonal naive, the
/// decision follows the last observation (plus headroom) and says so.
#[test]
fn a_forecast_without_skill_is_not_followed() {
    let mut p = policy();
    p.skill_fallback_mase = Some(1.0);
    p.headroom = 0.25;
    let mut e = DecisionEngine::new("api", p);
    // Observed 400 (80% of the first upper bound); the forecast's peak says 2000.
    e.set_skill(Some(0.6));
    let d = decide(&mut e, 0, &[500.0, 2000.0, 2000.0, 2000.0], 1);
    assert_eq!(
        d.desired_instances, 20,
        "skilled: 2000 x 1.25 / 50, capped at max 20"
    );
    assert!(!d.explanation.skill_fallback);
    assert_eq!(d.explanation.recent_mase, Some(0.6));
    e.set_skill(Some(1.3));
    let d = decide(&mut e, MIN, &[500.0, 2000.0, 2000.0, 2000.0], 1);
    // 400 x 1.25 / 50 = 10.
    assert_eq!((d.action, d.desired_instances), (Action::ScaleOut, 10));
    assert_eq!(d.reason, Reason::ForecastWithoutSkill);
    assert!(d.explanation.skill_fallback);
    assert_eq!(d.explanation.recent_mase, Some(1.3));
    assert!(
        d.explanation
            .summary
            .contains("no skill (recent MASE 1.30 >= 1.00)")
    );
}

/// `max_cost_ratio`: the requirement is cut to that fraction over the reactive rule's
/// count for the last observation (or for the point forecast, when that is higher).
#[test]
fn the_cost_ceiling_caps_the_requirement() {
    let mut p = policy();
    p.max_cost_ratio = Some(0.5);
    let mut e = DecisionEngine::new("api", p);
    // Reactive needs 400 / 50 = 8; the point forecast stays at 400 but the upper bound
    // would need 2000 / 50 = 40 -> 20 (max); the ceiling is 8 x 1.5 = 12.
    let mut f = forecast(0, &[500.0, 2000.0, 2000.0, 2000.0]);
    for p in &mut f.points {
        p.point = 400.0;
    }
    let d = e.decide(&DecisionInput {
        now_ms: 0,
        forecast: &f,
        current_instances: 1,
    });
    assert_eq!(d.desired_instances, 12);
    assert!(d.explanation.cost_capped);
    assert!(
        d.explanation
            .summary
            .contains("capped at 12 instances by max_cost_ratio 0.50")
    );
    // Under the ceiling nothing changes.
    let d = decide(&mut e, MIN, &[500.0, 520.0], 12);
    assert!(!d.explanation.cost_capped);
    assert_eq!(d.desired_instances, 12, "stabilisation holds the 12");
}

/// The cost ceiling follows the point forecast of a strongly skilled forecaster, or of a
/// skilled one whose interval is sure of a rise; a rise inside the interval (what mean
/// reversion after a dip looks like) leaves it at `max_cost_ratio` over the reactive rule.
#[test]
fn the_ceiling_follows_the_point_on_strong_skill_or_a_sure_rise() {
    let engine = |mase: Option<f64>| {
        let mut p = policy();
        p.max_cost_ratio = Some(0.25);
        p.skill_fallback_mase = Some(1.0);
        let mut e = DecisionEngine::new("api", p);
        e.set_skill(mase);
        e
    };
    // Observed 400: the rule runs 8, the ceiling is 10. The window's lower bounds reach 600:
    // a sure rise. Its point (800) would have the rule run 16, so the ceiling is 20, which
    // the upper bound (1000 / 50) needs.
    let rising = [500.0, 1000.0, 1000.0, 1000.0];
    let d = decide(&mut engine(Some(0.7)), 0, &rising, 8);
    assert_eq!(d.desired_instances, 20);
    assert!(!d.explanation.cost_capped);
    assert_eq!(
        d.explanation.ceiling_follows_point,
        Some(CeilingBasis::ExpectedRise)
    );
    assert!(
        d.explanation.summary.contains(
            "follows the point forecast (expected rise: the interval's lower bound 600.0 is \
             above the last window 400.0)"
        ),
        "{}",
        d.explanation.summary
    );
    // Unscored: the ceiling stays.
    let d = decide(&mut engine(None), 0, &rising, 8);
    assert_eq!(d.desired_instances, 10);
    assert_eq!(d.explanation.ceiling_follows_point, None);

    // Lower bounds at most 360, under the observed 400: the upper bound's 12 is cut to 10.
    let within = [500.0, 600.0, 600.0, 600.0];
    let d = decide(&mut engine(Some(0.7)), 0, &within, 8);
    assert_eq!(d.desired_instances, 10);
    assert!(d.explanation.cost_capped);
    assert_eq!(d.explanation.ceiling_follows_point, None);
    // A strongly skilled forecaster's point (480, the rule's 10) sets the ceiling at 12.
    let d = decide(&mut engine(Some(0.3)), 0, &within, 8);
    assert_eq!(d.desired_instances, 12);
    assert_eq!(
        d.explanation.ceiling_follows_point,
        Some(CeilingBasis::StrongSkill)
    );
    assert!(
        d.explanation
            .summary
            .contains("follows the point forecast (recent MASE 0.30 < 0.50)"),
        "{}",
        d.explanation.summary
    );
}

/// The point runs at the target utilisation and the upper bound fits in full capacity: the
/// larger count wins, and the explanation says which.
#[test]
fn the_point_runs_at_the_target_utilisation_and_the_upper_bound_fits_in_capacity() {
    let mut p = policy();
    p.capacity_per_instance = 100.0;
    p.target_utilisation = 0.5;
    p.headroom = 0.1;
    let sized = |upper: f64, point: f64| {
        let mut f = forecast(0, &[upper; 3]);
        for q in &mut f.points {
            q.point = point;
        }
        DecisionEngine::new("api", p.clone()).decide(&DecisionInput {
            now_ms: 0,
            forecast: &f,
            current_instances: 1,
        })
    };
    // Narrow interval: 200 × 1.1 / 50 = 4.4 → 5 by the point; 260 × 1.1 / 100 = 2.86 → 3.
    let d = sized(260.0, 200.0);
    assert_eq!(d.desired_instances, 5);
    assert_eq!(d.explanation.sized_by, Some(SizingBasis::Point));
    assert_eq!(d.explanation.peak_point, 200.0);
    assert!(
        d.explanation.summary.contains("needs 5")
            && d.explanation.summary.contains("needs 3")
            && d.explanation.summary.contains("10% headroom: 5"),
        "{}",
        d.explanation.summary
    );
    // Wide interval: 200 by the point is still 5; 600 × 1.1 / 100 = 6.6 → 7 by the upper bound.
    let d = sized(600.0, 200.0);
    assert_eq!(d.desired_instances, 7);
    assert_eq!(d.explanation.sized_by, Some(SizingBasis::UpperBound));
    // Each side rounds up on its own: 250 × 1.1 / 50 = 5.5 → 6 by the point, 550 × 1.1 / 100
    // = 6.05 → 7 by the upper bound.
    assert_eq!(sized(550.0, 250.0).desired_instances, 7);
    // The reactive rule and a forecast without skill size on the last window alone.
    let mut reactive = p.clone();
    reactive.mode = PolicyMode::Reactive;
    let d = DecisionEngine::new("api", reactive).decide(&DecisionInput {
        now_ms: 0,
        forecast: &forecast(0, &[600.0; 3]),
        current_instances: 1,
    });
    // Last observed 480 (80% of the first upper), no headroom: 480 / 50 = 9.6 → 10.
    assert_eq!(d.desired_instances, 10);
    assert_eq!(d.explanation.sized_by, None);
}
