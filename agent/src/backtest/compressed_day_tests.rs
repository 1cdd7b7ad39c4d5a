//! The closed-loop experiment's demand (docs/experiment.md), simulated: nyc_taxi's Monday
//! 2014-07-07 to Friday 2014-07-11 at one 30-minute step per 1 s window, scaled to a peak of
//! 240 requests per window, drawn as counts, through the collector's forecaster settings.
//! Four days train, the fifth is measured, as in the experiment.
//!
//! Live runs of the experiment give one realisation each; their forecasters' skill on the
//! measured day moved between runs (recent MASE 0.86–0.96 in one, 1.05–1.11 in the next), and
//! with it whether the skill gate (MASE 1.0) let the decisions follow the forecast. This
//! plays many realisations of the same day to see the spread, and holds the forecaster to it.

use std::time::Duration;

use shadowtap_core::{
    FleetConfig,
    forecast::{ModelKind, ResourceForecaster},
};

use super::shared_series_dir;
use crate::windows::tests::xorshift;

const STEPS_PER_DAY: usize = 48;
const DAYS: usize = 5;
/// The experiment skips six days from the series' first midnight (Tuesday 2014-07-01).
const SKIP_DAYS: usize = 6;
const PEAK: f64 = 240.0;

/// The five days' rates, scaled so the largest is [`PEAK`] per window.
fn week_rates() -> Vec<f64> {
    let path = shared_series_dir().join("nyc_taxi.csv");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} (set SHADOWTAP_SHARED_DATA): {e}", path.display()));
    let values: Vec<f64> = text
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(','))
        .skip_while(|(stamp, _)| !stamp.ends_with(" 00:00:00"))
        .skip(SKIP_DAYS * STEPS_PER_DAY)
        .take(DAYS * STEPS_PER_DAY)
        .map(|(_, value)| value.trim().parse::<f64>().expect("a number"))
        .collect();
    assert_eq!(values.len(), DAYS * STEPS_PER_DAY);
    let max = values.iter().copied().fold(1.0, f64::max);
    values.iter().map(|v| v / max * PEAK).collect()
}

/// A seeded generator: uniform draws and counts around a rate.
struct Draws(u64);

impl Draws {
    fn uniform(&mut self) -> f64 {
        (xorshift(&mut self.0) >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// A Poisson count of mean `rate` (normal approximation: every rate here but the
    /// night's lowest is above 15).
    fn count(&mut self, rate: f64) -> f64 {
        let u = self.uniform().max(1e-12);
        let v = self.uniform();
        let z = (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos();
        (rate + z * rate.sqrt()).round().max(0.0)
    }
}

/// One realisation: the windows start `phase` of a step into the schedule (the rate is linear
/// between steps, as loadgen plays it), counts drawn around each window's mean rate.
fn realisation(rates: &[f64], seed: u64) -> Vec<f64> {
    let mut draws = Draws(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let phase = draws.uniform();
    let last = rates.len() - 1;
    let rate_at = |t: f64| {
        let i = t.floor() as usize;
        let (a, b) = (rates[i.min(last)], rates[(i + 1).min(last)]);
        a + (b - a) * t.fract()
    };
    (0..last)
        .map(|k| {
            let mean = (0..10)
                .map(|j| rate_at(k as f64 + phase + (f64::from(j) + 0.5) / 10.0))
                .sum::<f64>()
                / 10.0;
            draws.count(mean)
        })
        .collect()
}

/// What the measured day looked like to the forecaster.
struct MeasuredDay {
    /// Median of the recent MASE over the measured day's windows.
    median_mase: f64,
    /// Windows of the measured day forecast by MSTL on a period other than 48.
    off_length_windows: usize,
    /// Windows of the measured day whose upper interval was widened ×2 or more (the default
    /// `skill_fallback_widening`: the decision falls back to the reactive rule there).
    wide_windows: usize,
}

fn play(counts: &[f64]) -> MeasuredDay {
    // The collector's forecaster, as the fleet builds it for 1 s windows; without the fit
    // time budget, so the run depends on the counts alone and not on the machine's load.
    let fleet = FleetConfig::default();
    let config = shadowtap_core::forecast::ForecastConfig {
        step: Duration::from_secs(1),
        fit_time_budget: Duration::ZERO,
        ..fleet.forecast
    };
    let mut forecaster = ResourceForecaster::new("day", config).expect("config");
    let warm = fleet.min_forecast_history;
    forecaster
        .warm_start(0, &counts[..warm])
        .expect("warm start");
    let measured_from = (DAYS - 1) * STEPS_PER_DAY;
    let mut mase = Vec::new();
    let mut off_length_windows = 0;
    let mut wide_windows = 0;
    for (k, count) in counts.iter().enumerate().skip(warm) {
        forecaster
            .observe(k as u64 * 1000, *count)
            .expect("observe");
        if k < measured_from {
            continue;
        }
        if let Some(m) = forecaster.accuracy().recent_mase {
            mase.push(m);
        }
        if forecaster.accuracy().widening >= 2.0 {
            wide_windows += 1;
        }
        if let Some(ModelKind::Mstl { periods, .. }) = forecaster.model()
            && periods.first() != Some(&STEPS_PER_DAY)
        {
            off_length_windows += 1;
        }
    }
    mase.sort_by(f64::total_cmp);
    MeasuredDay {
        wide_windows,
        median_mase: mase.get(mase.len() / 2).copied().unwrap_or(f64::INFINITY),
        off_length_windows,
    }
}

#[test]
fn the_compressed_day_is_forecast_with_skill_in_most_realisations() {
    let rates = week_rates();
    let days: Vec<MeasuredDay> = (1..=60)
        .map(|seed| play(&realisation(&rates, seed)))
        .collect();
    let without_skill = days.iter().filter(|d| d.median_mase >= 1.0).count();
    let mean = days.iter().map(|d| d.median_mase).sum::<f64>() / days.len() as f64;
    let off_length: usize = days.iter().map(|d| d.off_length_windows).sum();
    let wide: usize = days.iter().map(|d| d.wide_windows).sum();
    let wide_days = days.iter().filter(|d| d.wide_windows > 0).count();
    let measured = days.len() * (STEPS_PER_DAY - 1);
    eprintln!(
        "60 realisations: mean median MASE {mean:.3}, {without_skill} at or above 1.0, \
         {off_length} of {measured} measured windows on a period other than 48"
    );
    // Not asserted: what the widening gate does to the same days (docs/limits.md). At stop 39,
    // 17 of 60 days had windows widened ×2 or more, 6 of them the whole day.
    eprintln!(
        "widened x2 or more (the widening gate): {wide} of {measured} measured windows, \
         in {wide_days} of 60 realisations"
    );
    // Stop 37's detector, which refined a period on its single best lag, forecast 634 of the
    // 2,820 measured windows on 49 steps (a step off the day, drifting a step per cycle), at a
    // mean of 0.876 with 2 realisations at or above the gate; since stop 38, 86, 0.857 and 0.
    assert!(
        off_length * 10 <= measured,
        "{off_length} of {measured} windows on a period other than the day"
    );
    assert!(mean < 0.9, "mean median MASE {mean:.3}");
    assert!(
        without_skill <= 3,
        "{without_skill} of 60 realisations without skill on the measured day"
    );
}
