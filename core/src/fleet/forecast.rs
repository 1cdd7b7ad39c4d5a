//! The collector's own forecast of a resource's merged demand, fed one closed window at a time.

use std::time::Duration;

use super::{FitTokens, FleetConfig, FleetStats, ResourceState};
use crate::forecast::{
    DemandForecast, ForecastConfig, ForecasterStats, ModelKind, Refit, ResourceForecaster,
};

/// A closed window as the forecaster sees it.
#[derive(Clone, Copy)]
pub(super) struct Window {
    pub start_ms: u64,
    pub end_ms: u64,
    pub demand: f64,
    /// Its forecast horizon has passed ([`FleetConfig::catch_up`]): learn it, do not fit or
    /// forecast.
    pub stale: bool,
}

/// What [`merged_forecast`] gives the engine.
pub(super) struct MergedForecast {
    pub forecast: DemandForecast,
    /// The resource has enough history for a forecaster, but its first fit waits for the
    /// fit budget: the window is decided on observed demand.
    pub first_fit_waits: bool,
}

/// The forecast the engine decides on: the collector's own forecast of merged demand (agents
/// send counts, not forecasts: the merged series is the one that is scaled). Before the
/// forecaster exists, an empty forecast with the last observation, so the engine decides on
/// what it sees. A stale window is decided the same way: its forecaster (if any) learns it
/// without fitting, and one that does not exist yet is created at the first fresh window.
#[allow(clippy::similar_names)]
pub(super) fn merged_forecast(
    name: &str,
    state: &mut ResourceState,
    config: &FleetConfig,
    stats: &mut FleetStats,
    tokens: &mut FitTokens,
    window: Window,
) -> MergedForecast {
    let Window {
        start_ms,
        end_ms,
        demand,
        stale,
    } = window;
    let step_ms = state.step_ms;
    let before = state.forecaster.as_ref().map(ResourceForecaster::stats);
    // `history` already holds this window. The forecaster is created once by a warm start on
    // the history so far (`forecast_origin` records which), then fed one window at a time.
    // After a restore the same calls are replayed from the merged history, so the restored
    // forecaster is the one that was lost, not merely a similar one.
    let needs_forecaster = state.forecaster.is_none()
        && !stale
        && (state.forecast_origin.is_some() || state.history.len() >= config.min_forecast_history);
    // A first fit searches every form on the whole history: 10-15 ms on a thousand windows.
    // A collector that starts on many resources at once (a restart, a backlog) would
    // otherwise spend all its time in first fits while every other window waits; the fit
    // budget holds them to its share, and a resource whose first fit waits is decided on its
    // observed demand (and says so) until its turn comes at a later window.
    let first_fit_waits = needs_forecaster && !tokens.allow(&config.fit_budget);
    if first_fit_waits {
        stats.forecast_first_fits_deferred += 1;
    }
    if needs_forecaster && !first_fit_waits {
        start_forecaster(name, state, config, stats, start_ms);
    }
    let refit = if stale {
        Refit::Skip
    } else if tokens.allow(&config.fit_budget) {
        Refit::AsScheduled
    } else {
        Refit::DeferWhileCovered {
            horizon: config.horizon_steps,
        }
    };
    let own = state.forecaster.as_mut().and_then(|f| {
        let forecast = f.observe_with(start_ms, demand, refit).and_then(|()| {
            if stale {
                Ok(None)
            } else {
                f.forecast(config.horizon_steps).map(Some)
            }
        });
        forecast.unwrap_or_else(|e| {
            tracing::debug!(resource = name, error = %e, "merged forecast failed");
            stats.forecast_errors += 1;
            None
        })
    });
    if let Some(after) = state.forecaster.as_ref().map(ResourceForecaster::stats) {
        charge_fits(&before.unwrap_or_default(), &after, stats, tokens);
    }
    let mut base = own.unwrap_or_else(|| DemandForecast {
        resource: name.to_owned(),
        issued_at_ms: end_ms,
        step_ms,
        level: config.forecast.level,
        widening: 1.0,
        model: ModelKind::Naive,
        points: Vec::new(),
        last_observed: Some(demand),
        outliers_ms: Vec::new(),
        changepoints_ms: Vec::new(),
    });
    base.last_observed = Some(demand);
    MergedForecast {
        forecast: base,
        first_fit_waits,
    }
}

/// Create the resource's forecaster by a warm start on its history before `start_ms`
/// (`forecast_origin` records which part, so a restore replays the same calls).
#[allow(clippy::similar_names)]
fn start_forecaster(
    name: &str,
    state: &mut ResourceState,
    config: &FleetConfig,
    stats: &mut FleetStats,
    start_ms: u64,
) {
    let step_ms = state.step_ms;
    let cfg = ForecastConfig {
        step: Duration::from_millis(step_ms),
        ..config.forecast.clone()
    };
    match ResourceForecaster::new(name, cfg) {
        Ok(mut f) => {
            let past: Vec<(u64, f64)> = state
                .history
                .iter()
                .filter(|(t, _)| *t < start_ms)
                .copied()
                .collect();
            let (skip, warm) = match state.forecast_origin {
                Some((first_ms, n)) => match past.iter().position(|(t, _)| *t == first_ms) {
                    Some(i) => (i, n.min(past.len() - i)),
                    // The origin fell out of the kept history: warm-start on what is left.
                    None => (0, past.len()),
                },
                None => (0, past.len()),
            };
            let mut ok = true;
            if warm > 0 {
                let values: Vec<f64> = past[skip..skip + warm].iter().map(|(_, v)| *v).collect();
                ok &= f.warm_start(past[skip].0, &values).is_ok();
                state.forecast_origin = Some((past[skip].0, warm));
            } else {
                state.forecast_origin = Some((start_ms, 0));
            }
            for (t, v) in &past[skip + warm..] {
                ok &= f.observe(*t, *v).is_ok();
            }
            if !ok {
                stats.forecast_errors += 1;
            }
            state.forecaster = Some(f);
        }
        Err(e) => {
            tracing::warn!(resource = name, error = %e, "collector forecaster config rejected");
            stats.forecast_errors += 1;
        }
    }
}

/// What the forecaster's fits since `before` cost: charged to the fit budget and counted.
fn charge_fits(
    before: &ForecasterStats,
    after: &ForecasterStats,
    stats: &mut FleetStats,
    tokens: &mut FitTokens,
) {
    let fit_us = after.total_fit_us.saturating_sub(before.total_fit_us);
    tokens.charge(fit_us);
    stats.forecast_fit_us += fit_us;
    stats.forecast_fits += after.fits.saturating_sub(before.fits);
    stats.forecast_refits_deferred += after.refits_deferred.saturating_sub(before.refits_deferred);
    stats.forecast_form_reuses += after.form_reuses.saturating_sub(before.form_reuses);
    stats.forecast_surprise_refits += after.surprise_refits.saturating_sub(before.surprise_refits);
}
