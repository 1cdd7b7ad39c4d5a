//! Issue 15's goals, on every shared series and on the held-out ones (`agent/data/heldout`),
//! run as the shared-series bar runs them: capacity per instance = median / 4, provisioning
//! delay 10 minutes, the default policy and forecast settings, the first 25% training only.
//! The backtest is deterministic; each test asserts the ratios.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::*;

/// Where the held-out series live (see their README for sources and licences).
fn heldout_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/heldout")
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        f64::midpoint(sorted[n / 2 - 1], sorted[n / 2])
    }
}

/// The shared-series bar for `series`, with the policy's and forecaster's defaults.
pub(super) fn bar_options(series: &DemandSeries) -> BacktestOptions {
    let delay = Duration::from_mins(10);
    let policy = PolicySet::from_toml("")
        .expect("empty policy")
        .policy_with(
            &series.name,
            Some(median(&series.values) / 4.0),
            Some(delay),
        )
        .expect("default policy");
    BacktestOptions {
        policy,
        provision_delay: delay,
        history_points: series.values.len() / 4,
        forecast: ForecastConfig {
            step: series.step,
            refit_interval: series.step * 24,
            max_fit_points: 4032,
            ..ForecastConfig::default()
        },
        decision_interval: Duration::from_mins(1),
        reactive_stabilisation: Duration::from_mins(5),
        progress: false,
        keep_trace: false,
    }
}

/// Run the bar on `path` and assert the default-policy goals: at most 1.25× reactive's
/// instance-hours and never more under-provisioned minutes.
fn assert_bounded(path: &Path) -> BacktestReport {
    let series = DemandSeries::load(path).expect("series loads");
    let report = run_series_backtest(&series, &bar_options(&series)).expect("backtest runs");
    let (p, r) = (&report.predictive, &report.reactive);
    eprintln!(
        "{}: under-provisioned min {:.0} / {:.0} ({}), instance-hours {:.1} / {:.1} ({:.1}%)",
        report.series,
        p.under_provisioned_minutes,
        r.under_provisioned_minutes,
        report
            .comparison
            .under_provisioning_reduction
            .map_or_else(|| "n/a".into(), |x| format!("{:.1}% fewer", x * 100.0)),
        p.instance_hours,
        r.instance_hours,
        report.comparison.instance_hours_ratio * 100.0
    );
    assert!(
        report.comparison.instance_hours_ratio <= 1.25,
        "{}: {:.3}x reactive's instance-hours",
        report.series,
        report.comparison.instance_hours_ratio
    );
    assert!(
        p.under_provisioned_minutes <= r.under_provisioned_minutes,
        "{}: {} under-provisioned minutes against reactive's {}",
        report.series,
        p.under_provisioned_minutes,
        r.under_provisioned_minutes
    );
    report
}

/// Bounded, and the nyc_taxi goal with the defaults: >= 80% fewer under-provisioned minutes
/// at <= 110% of reactive's instance-hours (94.7% fewer at 105.3% since stop 32; before it
/// the upper bound at the target utilisation cost 112.6%, see docs/backtest.md).
#[test]
fn nyc_taxi_with_defaults_is_bounded() {
    let report = assert_bounded(&shared_series_dir().join("nyc_taxi.csv"));
    let fewer = report
        .comparison
        .under_provisioning_reduction
        .expect("reactive runs short on nyc_taxi");
    assert!(fewer >= 0.8, "{:.1}% fewer", fewer * 100.0);
    assert!(
        report.comparison.instance_hours_ratio <= 1.10,
        "{:.3}x reactive's instance-hours",
        report.comparison.instance_hours_ratio
    );
}

#[test]
fn elb_request_count_with_defaults_is_bounded() {
    assert_bounded(&shared_series_dir().join("elb_request_count_8c0756.csv"));
}

#[test]
fn ec2_request_latency_with_defaults_is_bounded() {
    assert_bounded(&shared_series_dir().join("ec2_request_latency_system_failure.csv"));
}

#[test]
fn twitter_amzn_with_defaults_is_bounded() {
    assert_bounded(&shared_series_dir().join("Twitter_volume_AMZN.csv"));
}

#[test]
fn twitter_fb_with_defaults_is_bounded() {
    assert_bounded(&shared_series_dir().join("Twitter_volume_FB.csv"));
}

#[test]
fn heldout_taylor_with_defaults_is_bounded() {
    assert_bounded(&heldout_dir().join("taylor.csv"));
}

#[test]
fn heldout_msft_volume_with_defaults_is_bounded() {
    assert_bounded(&heldout_dir().join("msft_volume.csv"));
}

#[test]
fn heldout_sunspots_with_defaults_is_bounded() {
    assert_bounded(&heldout_dir().join("sunspots.csv"));
}

#[test]
fn heldout_co2_with_defaults_is_bounded() {
    assert_bounded(&heldout_dir().join("co2.csv"));
}

/// Both frontiers on `path` under the bar, printed; the reactive one is monotone (a lower
/// target utilisation buys fewer shortages with more instance-hours).
fn frontiers_of(path: &Path) -> frontier::Frontiers {
    let series = DemandSeries::load(path).expect("series loads");
    let frontiers = frontier::sweep(&series, &bar_options(&series)).expect("sweep runs");
    eprintln!("{}:", series.name);
    frontier::print(&frontiers);
    for pair in frontiers.reactive.windows(2) {
        assert!(pair[0].instance_hours >= pair[1].instance_hours, "{pair:?}");
        assert!(
            pair[0].under_provisioned_minutes <= pair[1].under_provisioned_minutes,
            "{pair:?}"
        );
    }
    assert_eq!(
        frontiers.predictive.len(),
        frontier::PREDICTIVE_LEVELS.len()
    );
    frontiers
}

/// The frontier goal holds on ELB since decisions size the point at the target utilisation
/// and the upper bound at full capacity (docs/backtest.md).
#[test]
fn frontier_on_the_shared_elb_series() {
    let f = frontiers_of(&shared_series_dir().join("elb_request_count_8c0756.csv"));
    assert!(
        f.predictive_on_or_below,
        "predictive frontier above reactive's on ELB: {:?}",
        f.predictive
    );
}

/// Printed, not asserted: on msft_volume the levels 0.9 and 0.95 lie 3.5% and 5.5% above the
/// reactive frontier at equal instance-hours (docs/backtest.md), a miss the issue asks to
/// report rather than tune away.
#[test]
fn frontier_on_the_heldout_msft_volume_series() {
    let f = frontiers_of(&heldout_dir().join("msft_volume.csv"));
    eprintln!("on or below: {}", f.predictive_on_or_below);
}
