use super::*;

fn config(step_secs: u64) -> ForecastConfig {
    ForecastConfig {
        step: Duration::from_secs(step_secs),
        refit_interval: Duration::from_secs(step_secs * 12),
        max_horizon: 24,
        ..ForecastConfig::default()
    }
}

fn cycle(i: usize) -> f64 {
    let phase = (i % 24) as f64 / 24.0 * std::f64::consts::TAU;
    200.0 + 80.0 * phase.sin() + ((i * 7919) % 11) as f64
}

#[test]
fn invalid_config_names_the_field() {
    let cfg = ForecastConfig {
        level: 1.5,
        ..ForecastConfig::default()
    };
    let err = ResourceForecaster::new("r", cfg).expect_err("bad level");
    assert!(err.to_string().contains("`level`"), "{err}");
}

#[test]
fn cold_start_then_mstl_once_two_cycles_exist() {
    let mut f = ResourceForecaster::new("api", config(60)).expect("config");
    let mut kinds = Vec::new();
    for i in 0..24 * 8 {
        f.observe(i as u64 * 60_000, cycle(i)).expect("observe");
        kinds.push(f.model().cloned());
    }
    // With 5 points only naive is possible.
    assert_eq!(kinds[4], Some(ModelKind::Naive));
    // Before two cycles, no seasonal model.
    assert!(
        matches!(kinds[30], Some(ModelKind::Ets { .. })),
        "{:?}",
        kinds[30]
    );
    // The periodogram needs about three cycles; after eight, MSTL with the daily cycle.
    match f.model() {
        Some(ModelKind::Mstl { periods, .. }) => assert_eq!(periods, &vec![24]),
        other => panic!("expected MSTL, got {other:?}"),
    }
    let forecast = f.forecast(24).expect("forecast");
    assert_eq!(forecast.points.len(), 24);
    assert_eq!(forecast.points[0].start_ms, 24 * 8 * 60_000);
    for (k, p) in forecast.points.iter().enumerate() {
        let actual = cycle(24 * 8 + k);
        assert!(p.lower <= p.point && p.point <= p.upper);
        assert!(
            (p.point - actual).abs() < 30.0,
            "step {k}: {} vs {actual}",
            p.point
        );
    }
    let accuracy = f.accuracy();
    assert!(accuracy.samples > 100);
    assert!(accuracy.coverage.expect("scored") > 0.5);
}

#[test]
fn gaps_are_interpolated_and_counted() {
    let mut f = ResourceForecaster::new("api", config(60)).expect("config");
    f.observe(0, 10.0).expect("observe");
    f.observe(60_000, 10.0).expect("observe");
    f.observe(240_000, 40.0).expect("observe");
    assert_eq!(f.stats().gaps_filled, 2);
    assert_eq!(f.stats().observations, 5);
    // A gap longer than the whole training window restarts instead of interpolating.
    let mut g = ResourceForecaster::new(
        "api",
        ForecastConfig {
            max_fit_points: 16,
            ..config(60)
        },
    )
    .expect("config");
    g.observe(0, 1.0).expect("observe");
    g.observe(100 * 60_000, 2.0).expect("observe");
    assert_eq!(g.stats().restarts, 1);
    assert_eq!(g.stats().gaps_filled, 0);
    assert_eq!(g.model(), Some(&ModelKind::Naive));
    let err = f.observe(120_000, 1.0).expect_err("out of order");
    assert!(matches!(err, ForecastError::OutOfOrder { .. }));
    assert!(f.observe(300_000, f64::NAN).is_err());
    assert_eq!(f.stats().rejected, 2);
}

#[test]
fn re_anchoring_follows_a_level_shift_between_refits() {
    let mut cfg = config(60);
    cfg.refit_interval = Duration::from_mins(1000);
    let mut f = ResourceForecaster::new("api", cfg).expect("config");
    let history: Vec<f64> = (0..24 * 8).map(cycle).collect();
    f.warm_start(0, &history).expect("warm start");
    let before = f.forecast(1).expect("forecast").points[0].point;
    for i in 24 * 8..24 * 8 + 6 {
        f.observe(i as u64 * 60_000, cycle(i) + 500.0)
            .expect("observe");
    }
    let fits = f.stats().fits;
    let after = f.forecast(1).expect("forecast").points[0].point;
    let expected = cycle(24 * 8 + 6) + 500.0;
    assert_eq!(f.stats().fits, fits, "no refit happened in between");
    assert!(
        (after - expected).abs() < 150.0,
        "after {after}, expected about {expected} (before the shift {before})"
    );
}

/// With 1 s steps an hourly refit would keep one fitted path for 3,600 steps; the step cap
/// makes the model follow the data: a seasonal model replaces the early ETS once two cycles
/// exist, instead of an hour later.
#[test]
fn refit_max_steps_caps_the_refit_interval_in_steps() {
    let run = |cap: usize| {
        let mut f = ResourceForecaster::new(
            "api",
            ForecastConfig {
                step: Duration::from_secs(1),
                refit_interval: Duration::from_secs(3600),
                refit_max_steps: cap,
                max_horizon: 24,
                ..ForecastConfig::default()
            },
        )
        .expect("config");
        for i in 0..24 * 6 {
            f.observe(i as u64 * 1000, cycle(i)).expect("observe");
        }
        (f.model().cloned(), f.stats().fits)
    };
    let (stale, stale_fits) = run(usize::MAX);
    let (fresh, fresh_fits) = run(12);
    assert!(
        !matches!(stale, Some(ModelKind::Mstl { .. })),
        "uncapped: the first fitted model stays, {stale:?}"
    );
    assert!(matches!(fresh, Some(ModelKind::Mstl { .. })), "{fresh:?}");
    assert!(fresh_fits > stale_fits, "{fresh_fits} vs {stale_fits}");
}

#[test]
fn a_zero_fit_budget_keeps_the_window_whatever_fits_cost() {
    // 1 ns: every fit overruns, so the window shrinks towards its floor; zero: the window is
    // max_fit_points on every fit, however long the fits take.
    let last_window = |budget: Duration| {
        let mut f = ResourceForecaster::new(
            "api",
            ForecastConfig {
                fit_time_budget: budget,
                max_fit_points: 240,
                ..config(60)
            },
        )
        .expect("config");
        for i in 0..24 * 12 {
            f.observe(i as u64 * 60_000, cycle(i)).expect("observe");
        }
        f.refit().expect("refit");
        let stats = f.stats();
        (stats.last_fit_points, stats.budget_overruns)
    };
    let (shrunk, overruns) = last_window(Duration::from_nanos(1));
    assert!(overruns > 0);
    assert_eq!(
        shrunk, 64,
        "the floor: two 24-step cycles, at least 64 points"
    );
    assert_eq!(last_window(Duration::ZERO), (240, 0));
}

/// `Refit::Skip` learns observations without fitting, even past the end of the fitted path;
/// the next ordinary observation refits, on the history that includes the skipped ones.
#[test]
fn skipped_refits_learn_without_fitting() {
    let mut f = ResourceForecaster::new("api", config(60)).expect("config");
    for i in 0..24 * 4 {
        f.observe(i as u64 * 60_000, cycle(i)).expect("observe");
    }
    let before = f.stats();
    // Far past refit_interval (12) and the path's end (12 + max_horizon 24).
    let skipped = 60;
    for i in 24 * 4..24 * 4 + skipped {
        f.observe_with(i as u64 * 60_000, cycle(i), Refit::Skip)
            .expect("observe");
    }
    let after = f.stats();
    assert_eq!(after.fits, before.fits, "no fit while skipping");
    assert_eq!(after.refits_deferred, before.refits_deferred);
    assert_eq!(after.observations, before.observations + skipped as u64);
    let next = 24 * 4 + skipped;
    f.observe(next as u64 * 60_000, cycle(next))
        .expect("observe");
    assert_eq!(f.stats().fits, before.fits + 1, "due again at once");
    assert_eq!(
        f.stats().last_fit_points,
        (next + 1).min(f.config().max_fit_points)
    );
    let forecast = f.forecast(12).expect("forecast");
    assert_eq!(forecast.issued_at_ms, (next as u64 + 1) * 60_000);
}

/// Between two searches of every ETS form (`model_search_every` fits apart), a refit fits only
/// the form the last search chose.
#[test]
fn refits_reuse_the_searched_form_between_searches() {
    let run = |search_every: usize| {
        let mut f = ResourceForecaster::new(
            "api",
            ForecastConfig {
                model_search_every: search_every,
                fit_time_budget: Duration::ZERO,
                refit_interval: Duration::from_mins(4),
                ..config(60)
            },
        )
        .expect("config");
        // Under 64 points no season is looked for: non-seasonal ETS throughout. One fit at
        // the warm start, then one every 4 observations.
        let y = super::model::tests::trending(20 + 4 * 8);
        f.warm_start(0, &y[..20]).expect("warm start");
        for (i, v) in y.iter().enumerate().skip(20) {
            f.observe(i as u64 * 60_000, *v).expect("observe");
        }
        assert!(
            matches!(f.model(), Some(ModelKind::Ets { .. })),
            "{:?}",
            f.model()
        );
        f.stats()
    };
    let every = run(1);
    assert_eq!((every.fits, every.form_reuses), (9, 0));
    // Fits 1, 5 and 9 search; 2–4 and 6–8 reuse.
    let fourth = run(4);
    assert_eq!((fourth.fits, fourth.form_reuses), (9, 6));
}

#[test]
fn model_search_every_zero_is_refused() {
    let err = ResourceForecaster::new(
        "r",
        ForecastConfig {
            model_search_every: 0,
            ..ForecastConfig::default()
        },
    )
    .expect_err("zero");
    assert!(err.to_string().contains("`model_search_every`"), "{err}");
}

/// The collector's forecaster settings on 1 s windows, fits independent of machine speed.
fn one_second_windows() -> ForecastConfig {
    ForecastConfig {
        step: Duration::from_secs(1),
        refit_max_steps: 12,
        fit_time_budget: Duration::ZERO,
        ..ForecastConfig::default()
    }
}

/// A first fit on an irregular start (a partial first window, then a quiet night) can be flat
/// with no gain: its path ignored a morning ramp for the 12 windows to the next scheduled
/// refit, and those errors weighed on the skill score for hundreds of windows. Three
/// observations in a row outside its interval now refit at once.
#[test]
fn a_path_that_misses_three_times_in_a_row_is_refitted_early() {
    let mut f = ResourceForecaster::new("api", one_second_windows()).expect("config");
    let start = [5.0, 77.0, 40.0, 30.0, 19.0, 18.0, 20.0, 19.0];
    f.warm_start(0, &start).expect("warm start");
    let mut t = start.len() as u64;
    let mut observe = |f: &mut ResourceForecaster, v: f64| {
        f.observe(t * 1000, v).expect("observe");
        t += 1;
        f.forecast(1).expect("forecast").points[0].point
    };
    for v in [22.0, 21.0] {
        observe(&mut f, v);
    }
    let fits = f.stats().fits;
    let flat = observe(&mut f, 36.0);
    assert!(flat < 30.0, "the first fit is flat: {flat}");
    let mut followed = Vec::new();
    for v in [80.0, 115.0, 145.0, 150.0] {
        followed.push(observe(&mut f, v));
    }
    assert_eq!(f.stats().surprise_refits, 1, "{:?}", f.stats());
    assert_eq!(
        f.stats().fits,
        fits + 1,
        "one refit, before the 12-window schedule"
    );
    assert!(
        followed[1] < 30.0 && followed[2] > 130.0 && followed[3] > 130.0,
        "after three misses (80, 115, 145) the forecast follows the ramp: {followed:?}"
    );
}

/// On a series its model describes, misses in a row are rare: surprise refits stay a small
/// fraction of the scheduled ones.
#[test]
fn a_calibrated_path_is_rarely_refitted_early() {
    let mut f = ResourceForecaster::new("api", one_second_windows()).expect("config");
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = move || {
        // Sum of four uniforms: close enough to normal, deterministic.
        (0..4)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1_u64 << 53) as f64 - 0.5
            })
            .sum::<f64>()
    };
    for i in 0..600_u64 {
        f.observe(i * 1000, 200.0 + 20.0 * noise())
            .expect("observe");
    }
    let counters = f.stats();
    assert!(counters.fits >= 45, "{counters:?}");
    assert!(counters.surprise_refits <= 4, "{counters:?}");
}
