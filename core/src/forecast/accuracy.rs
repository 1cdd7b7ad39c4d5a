//! Online forecast accuracy: MASE against seasonal naive, prediction-interval coverage, and the
//! interval widening factors derived from recent misses.
//!
//! Every time an observation arrives for which a one-step-ahead forecast was issued, the tracker
//! records the model's absolute error, the absolute error the seasonal-naive forecast
//! (`y[t - m]`) would have made, and whether the interval contained the observation. MASE is the
//! ratio of the two mean absolute errors over the same points (a relative MAE, which is MASE with
//! the scale measured out of sample: below 1 means better than seasonal naive).
//!
//! Two MASE figures are kept. The cumulative one (since start or [`AccuracyTracker::reset_totals`])
//! is for reports. Decisions read the **recent** one: the same ratio over the rolling window, and
//! only over points scored against the reference the current model uses. A cumulative score of
//! a daemon that has run for weeks can hardly move whether its forecasts get better or worse,
//! and the reference changes with the model (naive `y[t-1]` for ETS, seasonal naive for MSTL and
//! seasonal naive itself), so a ratio against one says nothing about a model scored against
//! the other: when the reference changes, the recent score starts again.
//!
//! Widening is split-conformal over a rolling window, separately for each side of the interval:
//! an observation above the point scores `error / upper half-width`, one below scores
//! `|error| / lower half-width`, and each side's factor is the `1 − (1 − level) / 2` quantile of
//! its scores, never below 1. The model's intervals are kept while they cover; when coverage
//! falls below the nominal level the side that misses widens until it would have covered. Sides
//! are separate because a collapse in demand (an outage, a blizzard) says nothing about how high
//! demand can go, and must not inflate the capacity decisions that read the upper bound.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::model::same_season;

/// Minimum number of scored observations before the widening factor moves off 1, and before
/// the recent MASE is reported.
const MIN_SCORES_FOR_WIDENING: usize = 20;
/// Upper bound of the widening factor.
const MAX_WIDENING: f64 = 4.0;
/// A miss beyond this many half-widths is an outlier (an outage, a burst, a holiday), not a
/// sign of miscalibration: it counts against coverage but not towards widening, where it would
/// inflate the interval for a whole window after a single event. Outlier handling at refit time
/// and re-anchoring deal with such events.
const OUTLIER_SCORE: f64 = 4.0;

/// One scored one-step-ahead forecast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredPoint {
    /// The observed value.
    pub actual: f64,
    /// Point forecast.
    pub point: f64,
    /// Raw model interval (before widening).
    pub raw_lower: f64,
    /// Raw model interval (before widening).
    pub raw_upper: f64,
    /// The interval as issued (after widening).
    pub lower: f64,
    /// The interval as issued (after widening).
    pub upper: f64,
    /// What seasonal naive would have forecast for the same point, if enough history existed.
    pub seasonal_naive: Option<f64>,
    /// The season of that reference (1: naive, `y[t-1]`); it follows the model that issued the
    /// forecast.
    pub reference_period: usize,
    /// Scores of the observation against the raw interval, in the space the model works in
    /// (see [`interval_scores`]); they drive the widening factors.
    pub scores: IntervalScores,
}

/// How far beyond each side of its raw interval an observation fell (≤ 1 means inside).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IntervalScores {
    /// (actual − point) / (upper − point) when above the point, else 0.
    pub upper: f64,
    /// (point − actual) / (point − lower) when below the point, else 0.
    pub lower: f64,
}

/// Score `actual` against the raw interval `[lower, upper]` around `point`.
pub fn interval_scores(actual: f64, point: f64, lower: f64, upper: f64) -> IntervalScores {
    let ratio = |excess: f64, half_width: f64| {
        if excess <= 0.0 {
            0.0
        } else if half_width > f64::EPSILON {
            excess / half_width
        } else {
            f64::INFINITY
        }
    };
    IntervalScores {
        upper: ratio(actual - point, upper - point),
        lower: ratio(point - actual, point - lower),
    }
}

/// Exported accuracy of one resource's forecasts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AccuracySnapshot {
    /// Mean absolute error of the model divided by that of seasonal naive on the same points;
    /// `None` until a point with a seasonal-naive reference was scored or when naive is perfect.
    /// Cumulative since start or the last reset: for reports.
    pub mase: Option<f64>,
    /// The same ratio over the rolling window, on points scored against the current model's
    /// reference only (a seasonal period within 10% counts as the same); `None` until 20 such
    /// points. Decisions read this one.
    #[serde(default)]
    pub recent_mase: Option<f64>,
    /// Season of the reference the recent MASE is against (1: naive).
    #[serde(default)]
    pub reference_period: Option<usize>,
    /// Fraction of observations inside the issued (widened) interval.
    pub coverage: Option<f64>,
    /// Fraction of observations inside the raw model interval.
    pub raw_coverage: Option<f64>,
    /// Coverage of the issued interval over the rolling window.
    pub window_coverage: Option<f64>,
    /// Nominal interval level, e.g. 0.95.
    pub level: f64,
    /// Current multiplier on the upper half-width.
    pub widening: f64,
    /// Current multiplier on the lower half-width.
    pub widening_lower: f64,
    /// Scored observations since the last reset.
    pub samples: u64,
    /// Observations more than four half-widths outside the raw interval (kept out of the
    /// widening calibration).
    pub outlier_misses: u64,
}

/// Rolling accuracy and coverage tracker for one resource.
#[derive(Debug, Clone)]
pub struct AccuracyTracker {
    level: f64,
    window: usize,
    samples: u64,
    covered: u64,
    raw_covered: u64,
    model_abs_error: f64,
    naive_abs_error: f64,
    mase_samples: u64,
    /// (model, reference) absolute errors over the rolling window, all against references the
    /// same as `skill_period`, the latest (`model::same_season`).
    recent_errors: VecDeque<(f64, f64)>,
    skill_period: Option<usize>,
    recent_scores: VecDeque<IntervalScores>,
    recent_covered: VecDeque<bool>,
    widening_upper: f64,
    widening_lower: f64,
    outlier_misses: u64,
}

impl AccuracyTracker {
    /// A tracker for intervals at `level` (0..1) with a rolling window of `window` observations.
    pub fn new(level: f64, window: usize) -> Self {
        Self {
            level,
            window: window.max(MIN_SCORES_FOR_WIDENING),
            samples: 0,
            covered: 0,
            raw_covered: 0,
            model_abs_error: 0.0,
            naive_abs_error: 0.0,
            mase_samples: 0,
            recent_errors: VecDeque::new(),
            skill_period: None,
            recent_scores: VecDeque::new(),
            recent_covered: VecDeque::new(),
            widening_upper: 1.0,
            widening_lower: 1.0,
            outlier_misses: 0,
        }
    }

    /// Current multiplier for the upper half-width (≥ 1).
    pub fn widening(&self) -> f64 {
        self.widening_upper
    }

    /// Current multiplier for the lower half-width (≥ 1).
    pub fn widening_lower(&self) -> f64 {
        self.widening_lower
    }

    /// Forget cumulative totals (MASE, coverage) but keep the rolling state (widening, recent
    /// MASE), e.g. when a backtest moves from its training part to its evaluation part.
    pub fn reset_totals(&mut self) {
        self.samples = 0;
        self.covered = 0;
        self.raw_covered = 0;
        self.model_abs_error = 0.0;
        self.naive_abs_error = 0.0;
        self.mase_samples = 0;
        self.outlier_misses = 0;
    }

    /// Score one observation against the forecast issued for it.
    pub fn record(&mut self, scored: &ScoredPoint) {
        let ScoredPoint {
            actual,
            point,
            raw_lower,
            raw_upper,
            lower,
            upper,
            seasonal_naive,
            reference_period,
            scores,
        } = *scored;
        if !(actual.is_finite() && point.is_finite()) {
            return;
        }
        self.samples += 1;
        let inside = actual >= lower && actual <= upper;
        if inside {
            self.covered += 1;
        }
        if actual >= raw_lower && actual <= raw_upper {
            self.raw_covered += 1;
        }
        if let Some(naive) = seasonal_naive.filter(|v| v.is_finite()) {
            self.model_abs_error += (actual - point).abs();
            self.naive_abs_error += (actual - naive).abs();
            self.mase_samples += 1;
            // The same season as the detector tells them apart (naive only as naive):
            // restarting the score each time a refit moves the detected period by a step
            // would leave decisions without one for 20 windows after it.
            if !self
                .skill_period
                .is_some_and(|p| same_season(p, reference_period))
            {
                self.recent_errors.clear();
            }
            self.skill_period = Some(reference_period);
            push_bounded(
                &mut self.recent_errors,
                ((actual - point).abs(), (actual - naive).abs()),
                self.window,
            );
        }
        if scores.upper.max(scores.lower) > OUTLIER_SCORE {
            self.outlier_misses += 1;
        } else {
            push_bounded(&mut self.recent_scores, scores, self.window);
        }
        push_bounded(&mut self.recent_covered, inside, self.window);
        self.widening_upper = self.side_widening(|s| s.upper);
        self.widening_lower = self.side_widening(|s| s.lower);
    }

    fn side_widening(&self, side: impl Fn(&IntervalScores) -> f64) -> f64 {
        if self.recent_scores.len() < MIN_SCORES_FOR_WIDENING {
            return 1.0;
        }
        let mut scores: Vec<f64> = self.recent_scores.iter().map(side).collect();
        scores.sort_by(f64::total_cmp);
        // Finite-sample conformal quantile of one side: ceil((n + 1) * q)-th smallest score,
        // with q = 1 - (1 - level) / 2.
        let n = scores.len();
        let q = 1.0 - (1.0 - self.level) / 2.0;
        let rank = (((n + 1) as f64) * q).ceil() as usize;
        scores[rank.clamp(1, n) - 1].clamp(1.0, MAX_WIDENING)
    }

    /// The exported view.
    pub fn snapshot(&self) -> AccuracySnapshot {
        let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
        let window_covered = self.recent_covered.iter().filter(|c| **c).count();
        let (recent_model, recent_naive) = self
            .recent_errors
            .iter()
            .fold((0.0, 0.0), |(m, n), (em, en)| (m + em, n + en));
        AccuracySnapshot {
            mase: (self.mase_samples > 0 && self.naive_abs_error > 0.0)
                .then(|| self.model_abs_error / self.naive_abs_error),
            recent_mase: (self.recent_errors.len() >= MIN_SCORES_FOR_WIDENING
                && recent_naive > 0.0)
                .then(|| recent_model / recent_naive),
            reference_period: self.skill_period,
            coverage: ratio(self.covered, self.samples),
            raw_coverage: ratio(self.raw_covered, self.samples),
            window_coverage: ratio(window_covered as u64, self.recent_covered.len() as u64),
            level: self.level,
            widening: self.widening_upper,
            widening_lower: self.widening_lower,
            samples: self.samples,
            outlier_misses: self.outlier_misses,
        }
    }
}

fn push_bounded<T>(queue: &mut VecDeque<T>, value: T, capacity: usize) {
    if queue.len() == capacity {
        queue.pop_front();
    }
    queue.push_back(value);
}

/// Standard normal quantile (inverse CDF), Acklam's rational approximation (|error| < 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const P_LOW: f64 = 0.024_25;
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    if p < P_LOW {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -normal_quantile(1.0 - p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(actual: f64, point: f64, half: f64, naive: Option<f64>, widening: f64) -> ScoredPoint {
        ScoredPoint {
            actual,
            point,
            raw_lower: point - half,
            raw_upper: point + half,
            lower: point - half * widening,
            upper: point + half * widening,
            seasonal_naive: naive,
            reference_period: 1,
            scores: interval_scores(actual, point, point - half, point + half),
        }
    }

    #[test]
    fn normal_quantile_matches_tables() {
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-5);
        assert!((normal_quantile(0.5)).abs() < 1e-9);
        assert!((normal_quantile(0.01) + 2.326_348).abs() < 1e-5);
        assert!((normal_quantile(0.9) - 1.281_552).abs() < 1e-5);
    }

    #[test]
    fn mase_is_ratio_of_mean_absolute_errors() {
        let mut tracker = AccuracyTracker::new(0.95, 50);
        // Model errors 1 and 3, naive errors 4 and 4: MASE = 4 / 8.
        tracker.record(&point(10.0, 9.0, 5.0, Some(6.0), 1.0));
        tracker.record(&point(10.0, 13.0, 5.0, Some(14.0), 1.0));
        let snapshot = tracker.snapshot();
        assert!((snapshot.mase.expect("scored") - 0.5).abs() < 1e-12);
        assert_eq!(snapshot.coverage, Some(1.0));
        assert_eq!(snapshot.samples, 2);
    }

    #[test]
    fn points_without_naive_reference_do_not_count_towards_mase() {
        let mut tracker = AccuracyTracker::new(0.95, 50);
        tracker.record(&point(10.0, 9.0, 5.0, None, 1.0));
        assert_eq!(tracker.snapshot().mase, None);
        assert_eq!(tracker.snapshot().coverage, Some(1.0));
    }

    #[test]
    fn widening_grows_when_coverage_falls_below_level() {
        let mut tracker = AccuracyTracker::new(0.9, 100);
        // Errors twice the half-width on both sides: the raw interval never covers.
        for i in 0..40 {
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            tracker.record(&point(100.0 + sign * 20.0, 100.0, 10.0, None, 1.0));
        }
        assert!(
            (tracker.widening() - 2.0).abs() < 1e-9,
            "{}",
            tracker.widening()
        );
        assert!((tracker.widening_lower() - 2.0).abs() < 1e-9);
        assert_eq!(tracker.snapshot().raw_coverage, Some(0.0));
    }

    #[test]
    fn a_collapse_in_demand_widens_only_the_lower_side() {
        let mut tracker = AccuracyTracker::new(0.95, 100);
        for _ in 0..40 {
            tracker.record(&point(101.0, 100.0, 10.0, None, 1.0));
        }
        // Demand drops to 70 for 20 buckets: three half-widths below the point.
        for _ in 0..20 {
            tracker.record(&point(70.0, 100.0, 10.0, None, 1.0));
        }
        assert!((tracker.widening() - 1.0).abs() < f64::EPSILON);
        assert!((tracker.widening_lower() - 3.0).abs() < 1e-9);
    }

    #[test]
    fn outlier_misses_count_against_coverage_but_do_not_widen() {
        let mut tracker = AccuracyTracker::new(0.95, 100);
        for _ in 0..40 {
            tracker.record(&point(101.0, 100.0, 10.0, None, 1.0));
        }
        // An outage: demand drops to zero, ten half-widths below the point.
        for _ in 0..10 {
            tracker.record(&point(0.0, 100.0, 10.0, None, 1.0));
        }
        let snapshot = tracker.snapshot();
        assert_eq!(snapshot.outlier_misses, 10);
        assert!((snapshot.coverage.expect("scored") - 0.8).abs() < 1e-12);
        assert!((tracker.widening_lower() - 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn widening_stays_at_one_when_intervals_cover() {
        let mut tracker = AccuracyTracker::new(0.95, 100);
        for _ in 0..60 {
            tracker.record(&point(101.0, 100.0, 10.0, Some(90.0), 1.0));
        }
        assert!((tracker.widening() - 1.0).abs() < f64::EPSILON);
        assert_eq!(tracker.snapshot().window_coverage, Some(1.0));
    }

    #[test]
    fn reset_totals_keeps_widening() {
        let mut tracker = AccuracyTracker::new(0.9, 100);
        for _ in 0..30 {
            tracker.record(&point(130.0, 100.0, 10.0, Some(100.0), 1.0));
        }
        let widening = tracker.widening();
        tracker.reset_totals();
        assert_eq!(tracker.snapshot().samples, 0);
        assert_eq!(tracker.snapshot().mase, None);
        assert!((tracker.widening() - widening).abs() < f64::EPSILON);
    }

    #[test]
    fn recent_mase_follows_the_window_not_the_whole_history() {
        let mut tracker = AccuracyTracker::new(0.95, 40);
        // 200 points as good as naive (MASE 1), then 40 at a quarter of naive's error.
        for _ in 0..200 {
            tracker.record(&point(10.0, 14.0, 5.0, Some(14.0), 1.0));
        }
        for _ in 0..40 {
            tracker.record(&point(10.0, 11.0, 5.0, Some(14.0), 1.0));
        }
        let snapshot = tracker.snapshot();
        // Cumulative: (200 * 4 + 40 * 1) / (240 * 4).
        let cumulative = snapshot.mase.expect("scored");
        assert!((cumulative - 840.0 / 960.0).abs() < 1e-12, "{cumulative}");
        let recent = snapshot.recent_mase.expect("40 recent points");
        assert!((recent - 0.25).abs() < 1e-12, "{recent}");
        assert_eq!(snapshot.reference_period, Some(1));
    }

    #[test]
    fn recent_mase_starts_again_when_the_reference_changes() {
        let mut tracker = AccuracyTracker::new(0.95, 100);
        for _ in 0..30 {
            tracker.record(&point(10.0, 14.0, 5.0, Some(14.0), 1.0));
        }
        assert_eq!(tracker.snapshot().recent_mase, Some(1.0));
        // A seasonal model is scored against seasonal naive from now on.
        let seasonal = |actual, forecast| ScoredPoint {
            reference_period: 48,
            ..point(actual, forecast, 5.0, Some(20.0), 1.0)
        };
        for _ in 0..19 {
            tracker.record(&seasonal(10.0, 11.0));
        }
        let snapshot = tracker.snapshot();
        assert_eq!(
            snapshot.recent_mase, None,
            "19 points against the new reference"
        );
        assert_eq!(snapshot.reference_period, Some(48));
        tracker.record(&seasonal(10.0, 11.0));
        assert_eq!(tracker.snapshot().recent_mase, Some(0.1));
        // A refit that detects the day as 49 windows keeps the score (same reference, within
        // 10%); one that finds a weekly season (336) starts it again.
        let at_period = |period, actual, forecast| ScoredPoint {
            reference_period: period,
            ..point(actual, forecast, 5.0, Some(20.0), 1.0)
        };
        tracker.record(&at_period(49, 10.0, 11.0));
        assert_eq!(tracker.snapshot().recent_mase, Some(0.1));
        assert_eq!(tracker.snapshot().reference_period, Some(49));
        tracker.record(&at_period(336, 10.0, 11.0));
        assert_eq!(tracker.snapshot().recent_mase, None);
        for _ in 0..19 {
            tracker.record(&at_period(336, 10.0, 11.0));
        }
        assert_eq!(tracker.snapshot().recent_mase, Some(0.1));
        // Resetting the totals for a report keeps the recent score.
        tracker.reset_totals();
        assert_eq!(tracker.snapshot().mase, None);
        assert_eq!(tracker.snapshot().recent_mase, Some(0.1));
    }
}
