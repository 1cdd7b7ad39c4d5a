//! Pareto frontiers of a backtest: under-provisioned minutes against instance-hours, for the
//! reactive rule swept over its target utilisation and for the predictive policy swept over its
//! forecast's interval level. One operating point of each says little; the frontiers say which
//! policy buys fewer shortages for the same bill.

use serde::Serialize;

use super::{
    BacktestOptions, DemandSeries, PolicyTotals, Provisioner, ReactivePolicy, run_series_backtest,
    simulate::Accounting,
};

/// Target utilisations the reactive rule is swept over.
pub const REACTIVE_TARGETS: [f64; 6] = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// Interval levels the predictive policy is swept over.
pub const PREDICTIVE_LEVELS: [f64; 4] = [0.5, 0.8, 0.9, 0.95];

/// One operating point.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FrontierPoint {
    /// The swept setting: target utilisation (reactive) or interval level (predictive).
    pub setting: f64,
    /// Minutes with demand above the running capacity.
    pub under_provisioned_minutes: f64,
    /// Instance-hours billed.
    pub instance_hours: f64,
}

/// Both frontiers and how they compare.
#[derive(Debug, Clone, Serialize)]
pub struct Frontiers {
    /// The reactive rule at each of [`REACTIVE_TARGETS`].
    pub reactive: Vec<FrontierPoint>,
    /// The predictive policy at each of [`PREDICTIVE_LEVELS`].
    pub predictive: Vec<FrontierPoint>,
    /// Per predictive point: the reactive frontier's under-provisioned minutes at the same
    /// instance-hours (linear between its points; `None` below its cheapest point).
    pub reactive_at_equal_cost: Vec<Option<f64>>,
    /// Every predictive point lies on or below the reactive frontier.
    pub predictive_on_or_below: bool,
}

impl FrontierPoint {
    fn of(setting: f64, totals: &PolicyTotals) -> Self {
        Self {
            setting,
            under_provisioned_minutes: totals.under_provisioned_minutes,
            instance_hours: totals.instance_hours,
        }
    }
}

/// Sweep both policies on `series` with `options` (the predictive sweep reruns the backtest
/// once per level; the reactive one only simulates the rule).
pub fn sweep(series: &DemandSeries, options: &BacktestOptions) -> anyhow::Result<Frontiers> {
    let reactive: Vec<FrontierPoint> = REACTIVE_TARGETS
        .iter()
        .map(|&target| FrontierPoint::of(target, &reactive_totals(series, options, target)))
        .collect();
    let runs: Vec<anyhow::Result<FrontierPoint>> = std::thread::scope(|scope| {
        let handles: Vec<_> = PREDICTIVE_LEVELS
            .iter()
            .map(|&level| {
                scope.spawn(move || {
                    let mut at_level = options.clone();
                    at_level.forecast.level = level;
                    at_level.progress = false;
                    at_level.keep_trace = false;
                    let report = run_series_backtest(series, &at_level)?;
                    Ok(FrontierPoint::of(level, &report.predictive))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a sweep run panicked")))
            })
            .collect()
    });
    let predictive = runs.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(compare(reactive, predictive))
}

/// Compare `predictive` points with the reactive frontier at equal instance-hours.
pub fn compare(reactive: Vec<FrontierPoint>, predictive: Vec<FrontierPoint>) -> Frontiers {
    let reactive_at_equal_cost: Vec<Option<f64>> = predictive
        .iter()
        .map(|p| minutes_at(&reactive, p.instance_hours))
        .collect();
    // A tolerance of a hundredth of a minute: the totals are sums of float spans.
    let predictive_on_or_below = predictive
        .iter()
        .zip(&reactive_at_equal_cost)
        .all(|(p, r)| r.is_none_or(|r| p.under_provisioned_minutes <= r + 0.01));
    Frontiers {
        reactive,
        predictive,
        reactive_at_equal_cost,
        predictive_on_or_below,
    }
}

/// The reactive frontier's under-provisioned minutes at `instance_hours`: the lower envelope
/// of its points, linear between neighbours by cost, flat beyond the dearest (more instances
/// than the dearest point would not do worse), `None` below the cheapest.
fn minutes_at(points: &[FrontierPoint], instance_hours: f64) -> Option<f64> {
    let mut sorted: Vec<FrontierPoint> = points.to_vec();
    sorted.sort_by(|a, b| a.instance_hours.total_cmp(&b.instance_hours));
    let first = sorted.first()?;
    if instance_hours < first.instance_hours {
        return None;
    }
    let mut best = f64::INFINITY;
    for pair in sorted.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if instance_hours >= b.instance_hours {
            continue;
        }
        if instance_hours >= a.instance_hours {
            let span = b.instance_hours - a.instance_hours;
            let t = if span > 0.0 {
                (instance_hours - a.instance_hours) / span
            } else {
                0.0
            };
            best = best.min(
                a.under_provisioned_minutes
                    + t * (b.under_provisioned_minutes - a.under_provisioned_minutes),
            );
        }
    }
    // Every point at or below this cost is reachable too.
    for p in sorted.iter().filter(|p| p.instance_hours <= instance_hours) {
        best = best.min(p.under_provisioned_minutes);
    }
    Some(best)
}

/// The reactive rule alone at `target` utilisation, under the same delay, limits, decision
/// interval and stabilisation as the backtest's baseline.
pub fn reactive_totals(
    series: &DemandSeries,
    options: &BacktestOptions,
    target: f64,
) -> PolicyTotals {
    let policy = &options.policy;
    let capacity = policy.capacity_per_instance;
    let step_ms = series.step_ms();
    let tick_ms = u64::try_from(options.decision_interval.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, step_ms);
    let delay_ms = u64::try_from(options.provision_delay.as_millis()).unwrap_or(u64::MAX);
    let mut rule = ReactivePolicy::new(
        capacity * target,
        policy.min_instances,
        policy.max_instances,
        u64::try_from(options.reactive_stabilisation.as_millis()).unwrap_or(u64::MAX),
    );
    let history = options.history_points.max(1);
    let mut instances = Provisioner::new(rule.raw_desired(series.values[history - 1]), delay_ms);
    let mut accounting = Accounting::default();
    for i in history..series.values.len() {
        let start = series.start_of(i);
        let end = start + step_ms;
        let mut now = start;
        while now < end {
            let next = (now + tick_ms).min(end);
            let before = instances.requested();
            let desired = rule.decide(now, series.values[i - 1], before);
            if desired != before {
                instances.set_desired(now, desired);
                accounting.record_change(before, desired);
            }
            accounting.play_span(
                &mut instances,
                (now, next),
                step_ms,
                series.values[i],
                capacity,
            );
            now = next;
        }
    }
    accounting.totals()
}

/// Print both frontiers and the comparison.
pub fn print(frontiers: &Frontiers) {
    println!("reactive frontier (target utilisation: under-provisioned min, instance-hours)");
    for p in &frontiers.reactive {
        println!(
            "  {:>5.2}: {:>10.1} min {:>12.1} h",
            p.setting, p.under_provisioned_minutes, p.instance_hours
        );
    }
    println!(
        "predictive frontier (interval level: under-provisioned min, instance-hours; reactive \
         frontier at equal instance-hours)"
    );
    for (p, r) in frontiers
        .predictive
        .iter()
        .zip(&frontiers.reactive_at_equal_cost)
    {
        println!(
            "  {:>5.2}: {:>10.1} min {:>12.1} h   reactive {}",
            p.setting,
            p.under_provisioned_minutes,
            p.instance_hours,
            r.map_or_else(
                || "n/a (cheaper than every point)".to_owned(),
                |r| format!("{r:.1} min")
            ),
        );
    }
    println!(
        "at equal instance-hours, predictive's frontier lies on or below reactive's: {}",
        if frontiers.predictive_on_or_below {
            "yes"
        } else {
            "NO"
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(setting: f64, minutes: f64, hours: f64) -> FrontierPoint {
        FrontierPoint {
            setting,
            under_provisioned_minutes: minutes,
            instance_hours: hours,
        }
    }

    #[test]
    fn equal_cost_interpolates_the_reactive_frontier() {
        let reactive = vec![point(0.9, 100.0, 10.0), point(0.5, 0.0, 20.0)];
        let f = compare(
            reactive.clone(),
            vec![
                point(0.8, 40.0, 15.0),
                point(0.95, 0.0, 25.0),
                point(0.5, 500.0, 5.0),
            ],
        );
        assert_eq!(f.reactive_at_equal_cost, vec![Some(50.0), Some(0.0), None]);
        assert!(f.predictive_on_or_below);
        let f = compare(reactive, vec![point(0.8, 60.0, 15.0)]);
        assert!(!f.predictive_on_or_below, "60 min at 15 h is above 50");
    }
}
