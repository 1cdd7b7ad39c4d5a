//! Fitting one forecast from a window of history: season detection (periodogram), MSTL
//! decomposition with an `AutoETS` trend model, cold-start models, outlier and changepoint flags.
//!
//! The output is a [`FittedPath`]: the forecast from the end of the window far enough ahead to
//! serve until the next scheduled refit, plus what the online forecaster needs to re-anchor it on
//! observations that arrive in between.

use std::time::{Duration, Instant};

use augurs::{
    Fit, Predict,
    changepoint::{Detector as _, NormalGammaDetector, dist::NormalGamma},
    ets::AutoETS,
    mstl::stlrs,
    outlier::{MADDetector, OutlierDetector},
    seasons::PeriodogramDetector,
};
use serde::{Deserialize, Serialize};

use super::{ForecastError, accuracy::normal_quantile};

/// Fewer points than this never yield a detected season (hinted seasons still apply).
const MIN_POINTS_FOR_DETECTION: usize = 64;

/// Which model produced a forecast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelKind {
    /// Too little history for anything else: the last value.
    Naive,
    /// Cold start with a known season but fewer than two cycles of it.
    SeasonalNaive {
        /// Season length in steps.
        period: usize,
    },
    /// The history lies on a straight line (a constant, such as an idle resource's zeros or a
    /// fixed-rate probe, or a steady ramp): the line, extended.
    Line,
    /// Cold start or no seasonality: non-seasonal `AutoETS` on the raw series.
    Ets {
        /// The selected ETS model, e.g. `AAN damped`.
        spec: String,
    },
    /// MSTL decomposition with an `AutoETS` model of the deseasonalised series.
    Mstl {
        /// Season lengths in steps.
        periods: Vec<usize>,
        /// The ETS model selected for the trend, e.g. "ANN".
        trend: String,
    },
}

impl ModelKind {
    /// Season used for the seasonal-naive reference in MASE (1 = naive).
    pub fn reference_period(&self) -> usize {
        match self {
            Self::Naive | Self::Line | Self::Ets { .. } => 1,
            Self::SeasonalNaive { period } => *period,
            Self::Mstl { periods, .. } => periods.first().copied().unwrap_or(1),
        }
    }
}

/// Settings of one fit, derived from [`super::ForecastConfig`].
#[derive(Debug, Clone)]
pub struct FitSettings {
    /// Interval level in (0, 1).
    pub level: f64,
    /// Season lengths known in advance (steps); fitted when the history holds two cycles.
    pub season_hints: Vec<usize>,
    /// Longest season the periodogram may report (steps).
    pub max_season: usize,
    /// Relative power (0..1) a periodogram peak needs to count as a season.
    pub season_threshold: f64,
    /// At most this many seasons in the MSTL model.
    pub max_seasons: usize,
    /// How much more a detected season must autocorrelate at its lag than at half of it.
    pub min_autocorrelation: f64,
    /// MAD score above which a remainder point is an outlier; 0 disables.
    pub outlier_threshold: f64,
    /// Expected run length between changepoints in steps; 0 disables detection.
    pub changepoint_hazard: f64,
    /// Seasons to reuse instead of running detection (set between full refits).
    pub fixed_seasons: Option<Vec<usize>>,
    /// The form chosen by an earlier fit: when this fit finds the same seasons, its ETS model
    /// re-estimates that form's parameters instead of searching all forms again (see
    /// [`EtsForm`]). `None` searches.
    pub reuse_form: Option<ModelForm>,
}

impl FitSettings {
    /// The ETS form to fit alone for a model with `seasons`: the reused form, if it was
    /// chosen for the same seasons.
    fn form_for(&self, seasons: &[usize]) -> Option<&EtsForm> {
        self.reuse_form
            .as_ref()
            .filter(|form| form.seasons == seasons)
            .map(|form| &form.ets)
    }
}

/// One ETS form (error, trend, damping) as `AutoETS` names it, e.g. `AAN` damped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtsForm {
    /// Error, trend and season letters, e.g. `AAN`.
    pub letters: String,
    /// Damped trend.
    pub damped: bool,
}

/// As a model's name reads: `AAN`, `AAN damped`.
impl std::fmt::Display for EtsForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.letters)?;
        if self.damped {
            f.write_str(" damped")?;
        }
        Ok(())
    }
}

/// What a fit chose: its seasons and its ETS form. A later fit that finds the same seasons can
/// fit only this form: `AutoETS` fits every form (six for a positive non-seasonal series, by
/// Nelder-Mead over the whole series each) and keeps the best by AICc, and between two refits
/// a dozen windows apart the best form rarely changes while its parameters do. Fitting one
/// form gives exactly the model the search would give if it chose that form again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelForm {
    /// Seasons of the model (empty for non-seasonal ETS).
    pub seasons: Vec<usize>,
    /// Its ETS form (the whole model for non-seasonal ETS, the trend's model under MSTL).
    pub ets: EtsForm,
}

/// A forecast path from the end of a training window.
#[derive(Debug, Clone)]
pub struct FittedPath {
    /// The model.
    pub kind: ModelKind,
    /// Point forecasts for steps 1..=len after the window.
    pub point: Vec<f64>,
    /// Distance from point to lower bound at each step (raw model interval).
    pub lower_width: Vec<f64>,
    /// Distance from point to upper bound at each step (raw model interval).
    pub upper_width: Vec<f64>,
    /// Gain for re-anchoring on new observations between refits (0 = none, 1 = jump to them).
    pub anchor_gain: f64,
    /// Window positions flagged as outliers (excluded from the trend fit).
    pub outliers: Vec<usize>,
    /// Window positions where a changepoint was detected.
    pub changepoints: Vec<usize>,
    /// Seasons detected or used, for reuse by cheaper refits.
    pub seasons: Vec<usize>,
    /// The ETS form fitted, if the model has one, and whether it was searched for (`false`:
    /// the settings' [`FitSettings::reuse_form`] was fitted alone).
    pub ets_form: Option<(EtsForm, bool)>,
    /// Wall time the fit took.
    pub duration: Duration,
}

impl FittedPath {
    /// A path with the same width on both sides and nothing flagged: the simple models'.
    fn plain(
        kind: ModelKind,
        point: Vec<f64>,
        widths: Vec<f64>,
        anchor_gain: f64,
        seasons: Vec<usize>,
    ) -> Self {
        Self {
            kind,
            point,
            lower_width: widths.clone(),
            upper_width: widths,
            anchor_gain,
            outliers: Vec::new(),
            changepoints: Vec::new(),
            seasons,
            ets_form: None,
            duration: Duration::ZERO,
        }
    }
}

/// Fit a forecast to `window` (oldest first) with `horizon` steps ahead.
pub fn fit_path(
    window: &[f64],
    settings: &FitSettings,
    horizon: usize,
) -> Result<FittedPath, ForecastError> {
    let started = Instant::now();
    if window.is_empty() {
        return Err(ForecastError::NotEnoughData { have: 0, need: 1 });
    }
    if let Some(bad) = window.iter().position(|v| !v.is_finite()) {
        return Err(ForecastError::NonFinite { position: bad });
    }
    let horizon = horizon.max(1);
    let seasons = match &settings.fixed_seasons {
        Some(seasons) => seasons
            .iter()
            .copied()
            .filter(|p| 2 * p <= window.len())
            .collect(),
        None => detect_seasons(window, settings),
    };
    let mut path = if seasons.is_empty() {
        cold_start(window, settings, horizon)
    } else {
        match fit_mstl(window, &seasons, settings, horizon) {
            Ok(path) => path,
            Err(err) => {
                // A decomposition or trend fit failure must not leave the resource without a
                // forecast: fall back to the cold-start model and say so.
                tracing::debug!(error = %err, "MSTL fit failed, falling back to cold-start model");
                cold_start(window, settings, horizon)
            }
        }
    };
    path.duration = started.elapsed();
    Ok(path)
}

/// `period` is the season `known` again: within 10% of it. Refits move a detected daily
/// period by a step or two (48 and 49 windows of 30 minutes). Naive (period 1) is the same
/// only as naive: no season is within 10% of 1 but 1 itself.
pub(crate) fn same_season(known: usize, period: usize) -> bool {
    (known as f64 - period as f64).abs() <= 0.1 * known as f64
}

/// Seasons found by the periodogram plus usable hints, shortest first; only those with at least
/// two full cycles in the window.
pub fn detect_seasons(window: &[f64], settings: &FitSettings) -> Vec<usize> {
    let n = window.len();
    let mut seasons: Vec<usize> = Vec::new();
    // The periodogram needs about three cycles of the longest period it looks for.
    let max_period = settings.max_season.min(n / 3);
    let near_known =
        |seasons: &[usize], period: usize| seasons.iter().any(|&s| same_season(s, period));
    // A few dozen points cannot tell a cycle from noise.
    if n >= MIN_POINTS_FOR_DETECTION && max_period >= 4 && settings.max_seasons > 0 {
        // Without the trend, low frequencies no longer swamp the daily peak; clipping keeps a
        // single spike from swamping every autocorrelation.
        let detrended = clip_robust(&detrend(window), 4.0);
        let variance: f64 = detrended.iter().map(|v| v * v).sum();
        let detector = PeriodogramDetector::builder()
            .min_period(4)
            .max_period(u32::try_from(max_period).unwrap_or(u32::MAX))
            .build();
        let periodogram = detector.periodogram(&detrended);
        // `peaks` is sorted by ascending power: walk it strongest first.
        let mut peaks: Vec<_> = periodogram.peaks(settings.season_threshold).collect();
        peaks.reverse();
        let mut found: Vec<(usize, f64)> = Vec::new();
        for peak in peaks {
            let Some((period, acf)) = refine_period(
                &detrended,
                (
                    peak.period as usize,
                    peak.prev_period as usize,
                    peak.next_period as usize,
                ),
                max_period,
            ) else {
                continue;
            };
            let (period, acf) =
                on_whole_cycles(window, period, &detrended, variance).unwrap_or((period, acf));
            // Persistence alone makes short lags correlate; a real cycle also anti-correlates
            // half a cycle away. Require the contrast, not just the correlation.
            let contrast = acf - autocorrelation(&detrended, variance, period / 2);
            let known: Vec<usize> = found.iter().map(|f| f.0).collect();
            if contrast >= settings.min_autocorrelation.max(contrast_floor(n, period))
                && !near_known(&known, period)
            {
                found.push((period, acf));
            }
        }
        // A weekly cycle shows up in the spectrum mostly as daily harmonics: look for a
        // multiple of each season that repeats clearly better than the season itself.
        for (period, acf) in found.clone() {
            let best_multiple = (2..=8)
                .map(|k| k * period)
                .take_while(|&lag| 2 * lag <= n)
                .map(|lag| (lag, autocorrelation(&detrended, variance, lag)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let known: Vec<usize> = found.iter().map(|f| f.0).collect();
            if let Some((lag, value)) = best_multiple
                && value > acf + 0.05
                && !near_known(&known, lag)
            {
                found.push((lag, value));
            }
        }
        for (period, _) in found {
            if seasons.len() < settings.max_seasons {
                seasons.push(period);
            }
        }
    }
    for &hint in &settings.season_hints {
        if hint >= 2 && !near_known(&seasons, hint) && seasons.len() < settings.max_seasons {
            seasons.push(hint);
        }
    }
    seasons.retain(|&p| p >= 2 && 2 * p <= n);
    seasons.sort_unstable();
    seasons
}

/// `period` refined once more on `window` detrended by the line through the means of its
/// first and last whole cycles of `period`, which the cycle itself does not move: with few
/// cycles in the window the least-squares line takes up part of the cycle, and the peak of
/// the autocorrelation it leaves moves a step or two (a 48-step cycle over 144 points was
/// found as 49 in half of the series). Returns the period within a twentieth of `period`
/// whose autocorrelations at its multiples that fit in the window (one cycle of overlap left)
/// sum highest and peak there, and its autocorrelation on `line_detrended` (of sum of
/// squares `line_variance`: what the detector's other comparisons use); `None` when the
/// window holds fewer than two cycles or no peak is near.
fn on_whole_cycles(
    window: &[f64],
    period: usize,
    line_detrended: &[f64],
    line_variance: f64,
) -> Option<(usize, f64)> {
    let n = window.len();
    if period < 4 || 2 * period > n {
        return None;
    }
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&window[..period]), mean(&window[n - period..]));
    let slope = (last - first) / (n - period) as f64;
    let centre = (period - 1) as f64 / 2.0;
    let level: Vec<f64> = window
        .iter()
        .enumerate()
        .map(|(t, v)| v - first - slope * (t as f64 - centre))
        .collect();
    let detrended = clip_robust(&level, 4.0);
    let span = (period / 20).max(1);
    let (low, high) = (
        period.saturating_sub(span).max(4),
        (period + span).min(n / 2),
    );
    // The correlation of the two overlapping stretches, each by its own energy: scaling the
    // whole series' autocorrelation by n / (n - lag) favours the longer lag by more than a
    // step of the cycle costs it when the overlap is two cycles (96/95 against cos(2π/48)).
    let acf = |lag: usize| {
        let (a, b) = (&detrended[..n - lag], &detrended[lag..]);
        let cross: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let energy = a.iter().map(|x| x * x).sum::<f64>() * b.iter().map(|y| y * y).sum::<f64>();
        if energy > 0.0 {
            cross / energy.sqrt()
        } else {
            0.0
        }
    };
    // Each multiple of a lag a step off the cycle is a step further off it: summed over the
    // multiples, the right length stands out of its neighbours by more than at one lag, where
    // noise and day-to-day changes move the peak a step (48-step cycles over four or five
    // cycles were found as 48 in 19–55% of seeded series at one lag, 33–98% this way).
    let multiples = ((n - period) / high).max(1);
    let score = |lag: usize| {
        (1..=multiples)
            .map(|k| k * lag)
            .take_while(|&l| l < n)
            .map(acf)
            .sum::<f64>()
    };
    let (best, best_acf) = (low..=high)
        .map(|lag| (lag, score(lag)))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    if score(best - 1) > best_acf || score(best + 1) > best_acf {
        return None;
    }
    Some((best, autocorrelation(line_detrended, line_variance, best)))
}

/// How far apart a cycle's autocorrelations at its period and at half of it must be before
/// the cycle is believed: [`SEASON_SIGNIFICANCE`] standard errors of that contrast on white
/// noise of `n` points. On white noise the overlap-normalised autocorrelation at lag `k` has a
/// standard error of about `1/sqrt(n - k)`, and the two lags are nearly independent. The fixed
/// `min_autocorrelation` (0.3) alone let about half of all 64-point noise series and a third of
/// 128-point ones through with a season, as the detector tries every periodogram peak and
/// refines each to its best lag; with this floor, under 3% at any length from 64 to 400
/// points, while a cycle whose amplitude is as large as the noise's standard deviation is still
/// found as often (`model_tests::seasons_on_noise_are_rare_and_real_cycles_are_found`).
fn contrast_floor(n: usize, period: usize) -> f64 {
    let n = n as f64;
    let p = period as f64;
    SEASON_SIGNIFICANCE * (1.0 / (n - p) + 1.0 / (n - p / 2.0)).sqrt()
}

/// Standard errors of white noise that a season's contrast must exceed ([`contrast_floor`]).
const SEASON_SIGNIFICANCE: f64 = 3.5;

/// The series minus its least-squares line, so a trend does not make every lag look seasonal.
fn detrend(y: &[f64]) -> Vec<f64> {
    let line = FittedLine::of(y);
    y.iter()
        .enumerate()
        .map(|(t, v)| line.residual(t, *v))
        .collect()
}

/// The least-squares line through a series against its positions 0, 1, ….
struct FittedLine {
    mean_t: f64,
    mean_y: f64,
    slope: f64,
}

impl FittedLine {
    fn of(y: &[f64]) -> Self {
        let n = y.len() as f64;
        let mean_t = (n - 1.0) / 2.0;
        let mean_y = y.iter().sum::<f64>() / n;
        let (mut sty, mut stt) = (0.0, 0.0);
        for (t, v) in y.iter().enumerate() {
            let dt = t as f64 - mean_t;
            sty += dt * (v - mean_y);
            stt += dt * dt;
        }
        let slope = if stt > 0.0 { sty / stt } else { 0.0 };
        Self {
            mean_t,
            mean_y,
            slope,
        }
    }

    /// The line at position `t` (past the series' end, too).
    fn at(&self, t: usize) -> f64 {
        self.mean_y + self.slope * (t as f64 - self.mean_t)
    }

    fn residual(&self, t: usize, v: f64) -> f64 {
        v - self.mean_y - self.slope * (t as f64 - self.mean_t)
    }
}

/// Clip values further than `k` robust standard deviations (1.4826 × MAD) from the median.
fn clip_robust(y: &[f64], k: f64) -> Vec<f64> {
    let Some((median, scale)) = median_and_scale(y) else {
        return y.to_vec();
    };
    let (low, high) = (median - k * scale, median + k * scale);
    y.iter().map(|v| v.clamp(low, high)).collect()
}

/// Median and robust scale (1.4826 × median absolute deviation); `None` when the scale is 0.
fn median_and_scale(y: &[f64]) -> Option<(f64, f64)> {
    if y.is_empty() {
        return None;
    }
    let mut sorted = y.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let mut deviations: Vec<f64> = sorted.iter().map(|v| (v - median).abs()).collect();
    deviations.sort_by(f64::total_cmp);
    let scale = 1.4826 * deviations[deviations.len() / 2];
    (scale > f64::EPSILON).then_some((median, scale))
}

/// Autocorrelation of the mean-zero series `y` at `lag`, normalised by the overlap so long lags
/// are not penalised for having fewer pairs.
fn autocorrelation(y: &[f64], variance: f64, lag: usize) -> f64 {
    if lag == 0 || lag >= y.len() || variance <= 0.0 {
        return 0.0;
    }
    let cross: f64 = y[lag..].iter().zip(y).map(|(a, b)| a * b).sum();
    cross / variance * y.len() as f64 / (y.len() - lag) as f64
}

/// Turn a periodogram peak into an exact season length.
///
/// The periodogram's FFT bins are coarse (a 1024-point FFT cannot say 288, only 256 or 341), so
/// the lag is refined by autocorrelation within half a bin on either side. The result must be a
/// local maximum of the autocorrelation (an edge of the search range means the peak belongs to
/// the neighbouring bin), and a multiple of a shorter season that repeats almost as well (two
/// weeks vs one week) is reduced to that season.
fn refine_period(
    y: &[f64],
    (period, longer, shorter): (usize, usize, usize),
    max_period: usize,
) -> Option<(usize, f64)> {
    let variance: f64 = y.iter().map(|v| v * v).sum();
    // The detector looks at periods of at least 4 steps; do not refine below that.
    let low = usize::midpoint(shorter, period).max(4);
    let high = if longer == 0 {
        max_period
    } else {
        (period + longer).div_ceil(2)
    }
    .min(max_period)
    .min(y.len() / 2);
    if low > high {
        return None;
    }
    let acf = |lag: usize| autocorrelation(y, variance, lag);
    let (mut best, mut best_acf) = (low..=high)
        .map(|lag| (lag, acf(lag)))
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    // A peak at the upper bound may lie just past it. With few cycles in the window the
    // least-squares line of the detrending takes up part of the cycle and moves its
    // autocorrelation peak a step or two later; a cycle of exactly a third of the window then
    // peaked past the bound and was dropped, and the stronger the cycle the more surely
    // (half of all 48-step cycles over 144 points at 8 times the noise). Follow the peak up,
    // by at most a tenth: what is found still has to pass the contrast test.
    if best == high {
        let limit = (high + high / 10).min(y.len() / 2);
        while best < limit && acf(best + 1) > best_acf {
            best += 1;
            best_acf = acf(best);
        }
    }
    if acf(best - 1) > best_acf || acf(best + 1) > best_acf {
        return None;
    }
    for divisor in 2..=8 {
        let base = best / divisor;
        if base < 4 {
            break;
        }
        let (lag, value) = (base.saturating_sub(2).max(4)..=base + 2)
            .map(|lag| (lag, acf(lag)))
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        // Short lags of a smooth cycle correlate too; only a lag that is itself a cycle (it
        // anti-correlates at its own half) replaces the longer one.
        if value >= 0.9 * best_acf && value - acf(lag / 2) >= 0.5 * best_acf {
            best = lag;
            best_acf = value;
            break;
        }
    }
    Some((best, best_acf))
}

/// Model for short histories: non-seasonal ETS, or seasonal naive when a hinted season has at
/// least one but fewer than two cycles, or naive when there are fewer than 10 points.
fn cold_start(window: &[f64], settings: &FitSettings, horizon: usize) -> FittedPath {
    let n = window.len();
    let z = normal_quantile(0.5 + settings.level / 2.0);
    if let Some(&period) = settings
        .season_hints
        .iter()
        .filter(|&&p| p >= 2 && p <= n && 2 * p > n)
        .max()
    {
        return seasonal_naive(window, period, z, horizon);
    }
    if n >= 10 {
        if let Some(path) = exact_line(window, horizon) {
            return path;
        }
        match fit_ets(window, settings.level, horizon, settings.form_for(&[])) {
            Ok(ets) => {
                let (point, lower_width, upper_width) = split_intervals(&ets.forecast, horizon);
                return FittedPath {
                    kind: ModelKind::Ets {
                        spec: ets.form.to_string(),
                    },
                    point,
                    lower_width,
                    upper_width,
                    anchor_gain: ets.gain,
                    outliers: Vec::new(),
                    changepoints: Vec::new(),
                    seasons: Vec::new(),
                    ets_form: Some((ets.form, ets.searched)),
                    duration: Duration::ZERO,
                };
            }
            Err(err) => tracing::debug!(error = %err, "ETS cold start failed, using naive"),
        }
    }
    naive(window, z, horizon)
}

/// Residuals of a least-squares line below this share of the series' scale: the series is
/// that line (float rounding of exact integers leaves about 1e-13).
const EXACT_LINE_TOLERANCE: f64 = 1e-9;

/// The path of a series that a straight line fits exactly, if it is one. ETS has no best fit
/// there: its likelihood (n ln of the squared errors) falls without bound as the fit nears
/// the line, so Nelder-Mead ran to its 2,000-iteration limit on every form. On 100 points a
/// constant took 59 ms to fit and an integer ramp 29 ms, against 2 ms for a noisy series.
/// Intervals are as wide as the residuals (nothing, as an ETS fit of the line would give);
/// the gain of 1 moves the path onto the first observation off the line at once.
fn exact_line(window: &[f64], horizon: usize) -> Option<FittedPath> {
    let n = window.len();
    let line = FittedLine::of(window);
    let scale = window.iter().map(|v| v.abs()).sum::<f64>() / n as f64;
    let rms = (window
        .iter()
        .enumerate()
        .map(|(t, v)| line.residual(t, *v).powi(2))
        .sum::<f64>()
        / n as f64)
        .sqrt();
    if rms > EXACT_LINE_TOLERANCE * scale.max(1.0) {
        return None;
    }
    let widths: Vec<f64> = (1..=horizon).map(|h| rms * (h as f64).sqrt()).collect();
    Some(FittedPath::plain(
        ModelKind::Line,
        (n..n + horizon).map(|t| line.at(t)).collect(),
        widths,
        1.0,
        Vec::new(),
    ))
}

fn naive(window: &[f64], z: f64, horizon: usize) -> FittedPath {
    let last = window.last().copied().unwrap_or(0.0);
    let sigma = if window.len() >= 3 {
        std_dev(window.windows(2).map(|w| w[1] - w[0]))
    } else {
        // No spread to learn from yet: be honest about knowing nothing.
        last.abs().max(1.0)
    };
    let widths: Vec<f64> = (1..=horizon)
        .map(|h| z * sigma * (h as f64).sqrt())
        .collect();
    FittedPath::plain(
        ModelKind::Naive,
        vec![last; horizon],
        widths,
        1.0,
        Vec::new(),
    )
}

fn seasonal_naive(window: &[f64], period: usize, z: f64, horizon: usize) -> FittedPath {
    let n = window.len();
    let last_cycle = &window[n - period..];
    let sigma = if n > period + 2 {
        std_dev((period..n).map(|i| window[i] - window[i - period]))
    } else {
        std_dev(window.windows(2).map(|w| w[1] - w[0])) * 2f64.sqrt()
    };
    let point = (0..horizon).map(|k| last_cycle[k % period]).collect();
    let widths: Vec<f64> = (0..horizon)
        .map(|k| z * sigma * ((k / period + 1) as f64).sqrt())
        .collect();
    FittedPath::plain(
        ModelKind::SeasonalNaive { period },
        point,
        widths,
        0.0,
        vec![period],
    )
}

fn fit_mstl(
    window: &[f64],
    seasons: &[usize],
    settings: &FitSettings,
    horizon: usize,
) -> Result<FittedPath, ForecastError> {
    let decompose = |y: &[f64], robust: bool| {
        let mut stl = stlrs::StlParams::new();
        stl.robust(robust);
        stlrs::MstlParams::new()
            .stl_params(stl)
            .fit(y, seasons)
            .map_err(|err| ForecastError::Model(format!("MSTL decomposition: {err}")))
    };
    let mut decomposition = decompose(window, false)?;
    let outliers = if settings.outlier_threshold > 0.0 {
        flag_outliers(decomposition.remainder(), settings.outlier_threshold)
    } else {
        Vec::new()
    };
    if !outliers.is_empty() {
        // Outliers are one-off events (an incident, a holiday): they would bend the seasonal
        // pattern at their phase and drag the level. Decompose again with robustness weights
        // (bisquare on the remainder), which gives them no say in trend and seasons.
        decomposition = decompose(window, true)?;
    }
    let trend = decomposition.trend();
    let mut deseasonalised: Vec<f64> = trend
        .iter()
        .zip(decomposition.remainder())
        .map(|(t, r)| t + r)
        .collect();
    // The trend model does not see them either.
    for &i in &outliers {
        deseasonalised[i] = trend[i];
    }
    let changepoints = if settings.changepoint_hazard > 0.0 {
        detect_changepoints(&deseasonalised, seasons[0], settings.changepoint_hazard)
    } else {
        Vec::new()
    };
    // A level shift makes older data misleading for the trend model: fit from the last
    // changepoint when enough data follows it.
    let min_trend_points = (2 * seasons.iter().copied().max().unwrap_or(1)).max(64);
    let trend_start = changepoints
        .iter()
        .rev()
        .copied()
        .find(|&cp| window.len() - cp >= min_trend_points)
        .unwrap_or(0);

    let ets = fit_ets(
        &deseasonalised[trend_start..],
        settings.level,
        horizon,
        settings.form_for(seasons),
    )?;
    let (mut point, lower_width, upper_width) = split_intervals(&ets.forecast, horizon);
    for (period, component) in seasons.iter().zip(decomposition.seasonal()) {
        let last_cycle = &component[component.len() - period..];
        for (k, p) in point.iter_mut().enumerate() {
            *p += last_cycle[k % period];
        }
    }
    Ok(FittedPath {
        kind: ModelKind::Mstl {
            periods: seasons.to_vec(),
            trend: ets.form.to_string(),
        },
        point,
        lower_width,
        upper_width,
        anchor_gain: ets.gain,
        outliers,
        changepoints,
        seasons: seasons.to_vec(),
        ets_form: Some((ets.form, ets.searched)),
        duration: Duration::ZERO,
    })
}

/// A fitted non-seasonal ETS model, as the forecaster uses it.
struct EtsFit {
    forecast: augurs::Forecast,
    /// The re-anchoring gain.
    gain: f64,
    form: EtsForm,
    /// All forms were searched (not only `reuse`).
    searched: bool,
}

/// Non-seasonal `AutoETS`: forecast with intervals, the chosen form, and the re-anchoring gain.
/// With `reuse`, only that form is fitted; should it fail (e.g. a multiplicative error on a
/// series that is no longer positive), all forms are searched as without it.
fn fit_ets(
    y: &[f64],
    level: f64,
    horizon: usize,
    reuse: Option<&EtsForm>,
) -> Result<EtsFit, ForecastError> {
    let reused = reuse.and_then(|form| {
        AutoETS::new(1, form.letters.as_str())
            .and_then(|auto| auto.damped(form.damped))
            .and_then(|auto| auto.fit(y))
            .ok()
    });
    let searched = reused.is_none();
    let fitted = match reused {
        Some(fitted) => fitted,
        None => AutoETS::non_seasonal()
            .fit(y)
            .map_err(|err| ForecastError::Model(format!("AutoETS: {err}")))?,
    };
    let forecast = fitted
        .predict(horizon, level)
        .map_err(|err| ForecastError::Model(format!("AutoETS predict: {err}")))?;
    let in_sample = fitted
        .predict_in_sample(None)
        .map_err(|err| ForecastError::Model(format!("AutoETS in-sample: {err}")))?;
    let gain = anchor_gain(y, &in_sample.point);
    let model = fitted.model();
    let form = EtsForm {
        letters: model.model_type().to_string(),
        damped: model.damped(),
    };
    Ok(EtsFit {
        forecast,
        gain,
        form,
        searched,
    })
}

/// How much one-step predictions move per unit of one-step error: for simple exponential
/// smoothing this is exactly alpha; for trend models it is alpha plus beta. Estimated by least
/// squares from the in-sample predictions because augurs does not expose the fitted parameters.
fn anchor_gain(y: &[f64], fitted: &[f64]) -> f64 {
    let mut cross = 0.0;
    let mut square = 0.0;
    for t in 0..y.len().min(fitted.len()).saturating_sub(1) {
        let error = y[t] - fitted[t];
        let moved = fitted[t + 1] - fitted[t];
        if error.is_finite() && moved.is_finite() {
            cross += error * moved;
            square += error * error;
        }
    }
    if square > 0.0 {
        (cross / square).clamp(0.0, 1.0)
    } else {
        1.0
    }
}

fn split_intervals(forecast: &augurs::Forecast, horizon: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let point: Vec<f64> = forecast.point.iter().copied().take(horizon).collect();
    let (lower_width, upper_width) = match &forecast.intervals {
        Some(intervals) => (
            point
                .iter()
                .zip(&intervals.lower)
                .map(|(p, l)| (p - l).max(0.0))
                .collect(),
            point
                .iter()
                .zip(&intervals.upper)
                .map(|(p, u)| (u - p).max(0.0))
                .collect(),
        ),
        None => (vec![0.0; point.len()], vec![0.0; point.len()]),
    };
    (point, lower_width, upper_width)
}

/// Remainder positions whose MAD score exceeds `threshold` (augurs' MAD detector on one series).
fn flag_outliers(remainder: &[f64], threshold: f64) -> Vec<usize> {
    let detector = MADDetector::with_threshold(threshold);
    let Ok(processed) = detector.preprocess(&[remainder]) else {
        // MAD is zero (constant remainder): nothing stands out.
        return Vec::new();
    };
    let Ok(output) = detector.detect(&processed) else {
        return Vec::new();
    };
    let Some(series) = output.series_results.first() else {
        return Vec::new();
    };
    series
        .scores
        .iter()
        .enumerate()
        .filter(|(_, score)| **score > threshold)
        .map(|(i, _)| i)
        .collect()
}

/// Bayesian online changepoint detection (augurs, Normal-Gamma model) on block means of the
/// deseasonalised series. Point by point, the autocorrelated remainder looks like a change every
/// few steps; averaged over a season-long block it keeps only shifts in level. The block means
/// are standardised robustly so the unit prior fits any scale; `hazard` is the expected run
/// length in steps. Returns the first step of each block where a new run starts.
fn detect_changepoints(deseasonalised: &[f64], block: usize, hazard: f64) -> Vec<usize> {
    let block = block.max(1);
    let means: Vec<f64> = deseasonalised
        .chunks_exact(block)
        .map(|c| c.iter().sum::<f64>() / block as f64)
        .collect();
    if means.len() < 8 {
        return Vec::new();
    }
    let Some((median, scale)) = median_and_scale(&means) else {
        return Vec::new();
    };
    let standardised: Vec<f64> = means.iter().map(|v| (v - median) / scale).collect();
    let hazard_blocks = (hazard / block as f64).max(2.0);
    let mut detector = NormalGammaDetector::normal_gamma(
        hazard_blocks,
        NormalGamma::new_unchecked(0.0, 1.0, 1.0, 1.0),
    );
    detector
        .detect_changepoints(&standardised)
        .into_iter()
        .filter(|&cp| cp > 0)
        .map(|cp| cp * block)
        .collect()
}

fn std_dev(values: impl Iterator<Item = f64>) -> f64 {
    let (mut n, mut mean, mut m2) = (0.0, 0.0, 0.0);
    for v in values {
        n += 1.0;
        let delta = v - mean;
        mean += delta / n;
        m2 += delta * (v - mean);
    }
    if n > 1.0 {
        (m2 / (n - 1.0)).sqrt()
    } else {
        0.0
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
pub(in crate::forecast) mod tests;
