//! Settings of a [`ResourceForecaster`](super::ResourceForecaster) and the transform it fits in.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ForecastError;

/// Settings of a [`ResourceForecaster`](super::ResourceForecaster).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastConfig {
    /// Length of one demand bucket.
    pub step: Duration,
    /// Prediction-interval level in (0, 1).
    pub level: f64,
    /// How often the model is refitted.
    pub refit_interval: Duration,
    /// Refit at least every this many steps, whatever `refit_interval` says: between fits the
    /// forecast is read off the fitted path and does not follow new observations, so with
    /// short steps (1 s windows, a time-compressed replay) an hourly refit would leave a
    /// model fitted on the first minutes in force for thousands of steps.
    pub refit_max_steps: usize,
    /// Refits between two searches of every ETS form: in between, a refit that finds the same
    /// seasons re-estimates the parameters of the form the last search chose (one
    /// Nelder-Mead fit instead of up to six). 1 searches on every refit.
    #[serde(default = "default_model_search_every")]
    pub model_search_every: usize,
    /// Wall-time budget of one fit; the training window shrinks when fits exceed it. Zero
    /// turns the adaptation off: every fit then uses `max_fit_points` (or all history), so
    /// the forecast depends on the data alone and not on how busy the machine is (backtests).
    pub fit_time_budget: Duration,
    /// Most recent points used for a fit (upper bound; the budget may lower it).
    pub max_fit_points: usize,
    /// Longest season the detector looks for.
    pub max_season: Duration,
    /// Seasons known in advance (e.g. one day); used once two cycles exist, and for the
    /// seasonal-naive cold start before that.
    pub season_hints: Vec<Duration>,
    /// Relative periodogram power a peak needs to count as a season (0..1).
    pub season_threshold: f64,
    /// At most this many seasons.
    pub max_seasons: usize,
    /// How much more a detected season must autocorrelate at its lag than at half of it (the
    /// trough of a real cycle), in autocorrelation units.
    pub min_autocorrelation: f64,
    /// MAD score above which a point is an outlier; 0 disables outlier handling.
    pub outlier_threshold: f64,
    /// Expected time between changepoints (the detector's prior); zero disables detection.
    pub changepoint_run_length: Duration,
    /// Observations in the rolling coverage window that drives interval widening.
    pub coverage_window: usize,
    /// Longest horizon (steps) that `forecast` will be asked for.
    pub max_horizon: usize,
    /// Transform applied before fitting.
    pub transform: DemandTransform,
}

fn default_model_search_every() -> usize {
    4
}

impl Default for ForecastConfig {
    fn default() -> Self {
        Self {
            step: Duration::from_secs(60),
            level: 0.95,
            refit_interval: Duration::from_secs(3600),
            refit_max_steps: usize::MAX,
            model_search_every: default_model_search_every(),
            fit_time_budget: Duration::from_millis(500),
            max_fit_points: 4032,
            max_season: Duration::from_hours(7 * 24),
            season_hints: Vec::new(),
            season_threshold: 0.1,
            max_seasons: 2,
            min_autocorrelation: 0.3,
            outlier_threshold: 6.0,
            changepoint_run_length: Duration::from_hours(7 * 24),
            coverage_window: 288,
            max_horizon: 120,
            transform: DemandTransform::None,
        }
    }
}

impl ForecastConfig {
    /// Check every field; the error names the first offending one.
    pub fn validate(&self) -> Result<(), ForecastError> {
        let bad = |field: &'static str, reason: &str| {
            Err(ForecastError::InvalidConfig {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.step.as_millis() == 0 {
            return bad("step", "must be at least 1ms");
        }
        if !(self.level > 0.0 && self.level < 1.0) {
            return bad("level", "must be strictly between 0 and 1");
        }
        if self.refit_interval < self.step {
            return bad("refit_interval", "must be at least one step");
        }
        if self.model_search_every == 0 {
            return bad(
                "model_search_every",
                "must be at least 1 (1: search every refit)",
            );
        }
        if self.max_fit_points < 16 {
            return bad("max_fit_points", "must be at least 16");
        }
        if !(0.0..1.0).contains(&self.season_threshold) {
            return bad("season_threshold", "must be in [0, 1)");
        }
        if !(0.0..=2.0).contains(&self.min_autocorrelation) {
            return bad("min_autocorrelation", "must be in [0, 2]");
        }
        if !(self.outlier_threshold == 0.0 || self.outlier_threshold >= 1.0) {
            return bad("outlier_threshold", "must be 0 (off) or at least 1");
        }
        if self.coverage_window == 0 {
            return bad("coverage_window", "must be positive");
        }
        if self.max_horizon == 0 {
            return bad("max_horizon", "must be positive");
        }
        Ok(())
    }

    pub(super) fn step_ms(&self) -> u64 {
        u64::try_from(self.step.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    pub(super) fn steps_in(&self, duration: Duration) -> usize {
        (duration.as_millis() / u128::from(self.step_ms())) as usize
    }
}

/// Transform applied to demand before fitting; forecasts are transformed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum DemandTransform {
    /// Model demand as is: additive errors, intervals of the same width at any level. The
    /// default: in the backtests it provisions less for the same protection, because bursts
    /// do not blow up multiplicatively.
    #[default]
    None,
    /// Model ln(1 + demand): errors proportional to the level, so intervals are narrow in
    /// quiet hours and wide at peaks. Slightly more accurate point forecasts on strongly
    /// seasonal counts, but upper bounds explode after bursts.
    Log1p,
}

impl DemandTransform {
    /// Demand → model space.
    pub fn forward(self, value: f64) -> f64 {
        match self {
            Self::None => value,
            Self::Log1p => value.max(0.0).ln_1p(),
        }
    }

    /// Model space → demand (never negative).
    pub fn inverse(self, value: f64) -> f64 {
        match self {
            Self::None => value.max(0.0),
            // Cap the exponent: a runaway upper bound must not become infinity.
            Self::Log1p => value.min(700.0).exp_m1().max(0.0),
        }
    }
}
