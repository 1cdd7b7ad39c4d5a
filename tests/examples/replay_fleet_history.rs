//! Plays a fleet's saved demand history (`collector.json` in an agent's `--state-dir`; the
//! closed-loop experiment keeps one per in-process run) through the collector's forecaster
//! as the fleet builds it, and prints per window what the forecaster chose and what the
//! policy's skill gates read: the model, the recent MASE and the interval widening.
//!
//! `cargo run --release -p shadowtap-tests --example replay_fleet_history -- FILE [FROM]`
//! prints windows from index FROM (default 0). A decision's `window_start_ms` is its
//! window's end: the decision taken when window `w` closed shows as `w + 1` there.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use shadowtap_core::{
    FleetConfig, ResourceSnapshot,
    forecast::{ForecastConfig, ModelKind, ResourceForecaster},
};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        bail!("usage: replay_fleet_history FILE [FROM]");
    };
    let from: u64 = match args.next() {
        Some(text) => text.parse().context("FROM: a window index")?,
        None => 0,
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let snapshots: Vec<ResourceSnapshot> =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {path}"))?;
    for snap in snapshots {
        replay(&snap, from)?;
    }
    Ok(())
}

fn replay(snap: &ResourceSnapshot, from: u64) -> Result<()> {
    let fleet = FleetConfig::default();
    let config = ForecastConfig {
        step: Duration::from_millis(snap.step_ms),
        ..fleet.forecast.clone()
    };
    let history = &snap.history;
    let Some(&(first_ms, _)) = history.first() else {
        println!("{}: no history", snap.resource);
        return Ok(());
    };
    let step = snap.step_ms.max(1);
    let gaps = history
        .windows(2)
        .filter(|w| w[1].0 - w[0].0 != snap.step_ms)
        .count();
    println!(
        "{}: {} windows of {} ms from {first_ms}, {gaps} gaps, warm start {:?}",
        snap.resource,
        history.len(),
        snap.step_ms,
        snap.forecast_origin
    );
    // The fleet's own sequence: a warm start on the recorded origin, then one window at a
    // time (see `core/src/fleet/forecast.rs`).
    let (origin_ms, warm) = snap
        .forecast_origin
        .unwrap_or((first_ms, fleet.min_forecast_history.saturating_sub(1)));
    let start = history
        .iter()
        .position(|(t, _)| *t == origin_ms)
        .context("the warm start's first window is not in the history")?;
    let end = (start + warm).min(history.len());
    let values: Vec<f64> = history[start..end].iter().map(|(_, v)| *v).collect();
    let mut forecaster = ResourceForecaster::new(&snap.resource, config)?;
    forecaster.warm_start(origin_ms, &values)?;
    println!("window\tdemand\tmodel\trecent_mase\twidening");
    for (t, v) in &history[end..] {
        forecaster.observe(*t, *v)?;
        let w = (t - first_ms) / step;
        if w < from {
            continue;
        }
        let accuracy = forecaster.accuracy();
        let model = match forecaster.model() {
            Some(ModelKind::Mstl { periods, trend }) => format!("MSTL {periods:?} {trend}"),
            Some(other) => format!("{other:?}"),
            None => "-".to_owned(),
        };
        let mase = accuracy
            .recent_mase
            .map_or_else(|| "-".to_owned(), |m| format!("{m:.3}"));
        println!("{w}\t{v:.0}\t{model}\t{mase}\t{:.2}", accuracy.widening);
    }
    Ok(())
}
