//! The fit-time budget of a fleet's forecasters.

use std::time::{Duration, Instant};

/// A token bucket of forecaster fit time. Each fit's duration is charged to it; while it is
/// empty, scheduled refits are put off (the fitted path, re-anchored on every observation,
/// keeps serving while it reaches the decision horizon; then the refit runs whatever the
/// budget). Under a backlog (a collector catching up, every observation closing a window) this
/// keeps fits to `share` of the time instead of most of it; at ordinary rates it never binds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitBudget {
    /// Share of wall time that fits may take (0..=1; 1 or more: no limit).
    pub share: f64,
    /// Fit time that may be spent at once before `share` applies.
    pub burst: Duration,
}

impl Default for FitBudget {
    fn default() -> Self {
        Self {
            share: 0.25,
            burst: Duration::from_secs(1),
        }
    }
}

impl FitBudget {
    /// No limit: every refit runs when scheduled.
    pub const UNLIMITED: Self = Self {
        share: 1.0,
        burst: Duration::MAX,
    };

    fn unlimited(&self) -> bool {
        self.share >= 1.0
    }
}

/// The fit time left in a [`FitBudget`] (seconds; negative after a fit that could not wait).
#[derive(Debug, Clone)]
pub(super) struct FitTokens {
    seconds: f64,
    refilled: Instant,
}

impl FitTokens {
    pub(super) fn new(budget: &FitBudget) -> Self {
        Self {
            seconds: budget.burst.as_secs_f64().min(1e9),
            refilled: Instant::now(),
        }
    }

    /// Whether a scheduled refit may run now.
    pub(super) fn allow(&mut self, budget: &FitBudget) -> bool {
        if budget.unlimited() {
            return true;
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.seconds = (self.seconds + elapsed * budget.share.max(0.0))
            .min(budget.burst.as_secs_f64().min(1e9));
        self.seconds > 0.0
    }

    pub(super) fn charge(&mut self, fit_us: u64) {
        self.seconds -= fit_us as f64 / 1e6;
    }
}
