use super::*;

fn settings() -> FitSettings {
    FitSettings {
        level: 0.95,
        season_hints: Vec::new(),
        max_season: 512,
        season_threshold: 0.1,
        max_seasons: 2,
        min_autocorrelation: 0.3,
        outlier_threshold: 5.0,
        changepoint_hazard: 0.0,
        fixed_seasons: None,
    }
}

/// A daily-like cycle of 24 steps with a slow level and a little deterministic jitter.
fn seasonal_series(cycles: usize) -> Vec<f64> {
    (0..cycles * 24)
        .map(|i| {
            let phase = (i % 24) as f64 / 24.0 * std::f64::consts::TAU;
            100.0 + 40.0 * phase.sin() + ((i * 7919) % 13) as f64 * 0.5
        })
        .collect()
}

#[test]
fn tiny_history_uses_naive() {
    let path = fit_path(&[5.0, 6.0], &settings(), 3).expect("fit");
    assert_eq!(path.kind, ModelKind::Naive);
    assert_eq!(path.point, vec![6.0; 3]);
    assert!(path.upper_width.iter().all(|w| *w > 0.0));
}

#[test]
fn short_history_without_season_uses_non_seasonal_ets() {
    // A random walk-ish series without a cycle.
    let y: Vec<f64> = (0..30)
        .map(|i| 50.0 + f64::from((i * i * 7919) % 17) * 0.3 + f64::from(i))
        .collect();
    let path = fit_path(&y, &settings(), 5).expect("fit");
    assert!(
        matches!(path.kind, ModelKind::Ets { .. }),
        "{:?}",
        path.kind
    );
    assert_eq!(path.point.len(), 5);
}

#[test]
fn hinted_season_with_one_cycle_uses_seasonal_naive() {
    let y = seasonal_series(1);
    let mut s = settings();
    s.season_hints = vec![24];
    let path = fit_path(&y[..30.min(y.len())], &s, 24).expect("fit");
    // 24 points: one full cycle, fewer than two.
    assert_eq!(path.kind, ModelKind::SeasonalNaive { period: 24 });
    assert!((path.point[0] - y[0]).abs() < 1e-9);
}

#[test]
fn two_cycles_of_a_detected_season_switch_to_mstl() {
    let y = seasonal_series(12);
    let seasons = detect_seasons(&y, &settings());
    assert_eq!(seasons, vec![24]);
    let path = fit_path(&y, &settings(), 48).expect("fit");
    match &path.kind {
        ModelKind::Mstl { periods, .. } => assert_eq!(periods, &vec![24]),
        other => panic!("expected MSTL, got {other:?}"),
    }
    // The forecast follows the cycle: peak near phase 6 of 24, trough near 18.
    assert!(path.point[6] > path.point[18] + 40.0);
}

#[test]
fn outliers_are_flagged_and_do_not_move_the_forecast() {
    let clean = seasonal_series(12);
    let mut spiked = clean.clone();
    let spike_at = spiked.len() - 30;
    spiked[spike_at] += 2_000.0;
    let a = fit_path(&clean, &settings(), 24).expect("fit");
    let b = fit_path(&spiked, &settings(), 24).expect("fit");
    assert!(
        b.outliers.contains(&spike_at),
        "{:?} {:?}",
        b.outliers,
        b.kind
    );
    let max_shift = a
        .point
        .iter()
        .zip(&b.point)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(max_shift < 20.0, "spike moved the forecast by {max_shift}");
}

#[test]
fn level_shift_is_reported_as_changepoint() {
    let mut y: Vec<f64> = (0..400)
        .map(|i| 10.0 + ((i * 7919) % 7) as f64 * 0.3)
        .collect();
    for v in &mut y[250..] {
        *v += 30.0;
    }
    let cps = detect_changepoints(&y, 10, 1000.0);
    assert!(
        cps.iter().any(|&cp| (240..=260).contains(&cp)),
        "changepoints {cps:?}"
    );
    assert!(cps.len() <= 3, "a single shift, changepoints {cps:?}");
}

#[test]
fn non_finite_input_is_an_error() {
    let err = fit_path(&[1.0, f64::NAN, 2.0], &settings(), 2).expect_err("NaN");
    assert!(matches!(err, ForecastError::NonFinite { position: 1 }));
}
