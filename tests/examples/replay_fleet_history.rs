//! Plays a fleet's saved demand history (`collector.json` in an agent's `--state-dir`; the
//! closed-loop experiment keeps one per in-process run, with its `policy.toml`) through a
//! fresh fleet with the default settings, one single-agent window at a time, and prints per
//! closed window what its decision read: the model, the recent MASE, the interval widening
//! and whether the policy's skill gates held it to the reactive rule. The fleet's own code
//! runs (warm start, refits, fit budget), so the forecaster is the live one when the live
//! fleet had the default settings.
//!
//! `cargo run --release -p shadowtap-tests --example replay_fleet_history -- FILE POLICY [FROM]`
//! prints windows from index FROM (default 0). A scale event's `window_start_ms` is its
//! window's end: the decision taken when window `w` closed shows as `w + 1` there.

use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use shadowtap_core::{
    Fleet, FleetConfig, Observation, ResourceSnapshot, decision::PolicySet, forecast::ModelKind,
    wire::WindowCounts,
};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(policy)) = (args.next(), args.next()) else {
        bail!("usage: replay_fleet_history FILE POLICY [FROM]");
    };
    let from: u64 = match args.next() {
        Some(text) => text.parse().context("FROM: a window index")?,
        None => 0,
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let snapshots: Vec<ResourceSnapshot> =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {path}"))?;
    let policy = std::fs::read_to_string(&policy).with_context(|| format!("reading {policy}"))?;
    let policies = PolicySet::from_toml(&policy).context("the policy")?;
    for snap in snapshots {
        replay(&snap, policies.clone(), from);
    }
    Ok(())
}

fn replay(snap: &ResourceSnapshot, policies: PolicySet, from: u64) {
    let history = &snap.history;
    let Some(&(first_ms, _)) = history.first() else {
        println!("{}: no history", snap.resource);
        return;
    };
    let step = snap.step_ms.max(1);
    let gaps = history
        .windows(2)
        .filter(|w| w[1].0 - w[0].0 != snap.step_ms)
        .count();
    println!(
        "{}: {} windows of {} ms from {first_ms}, {gaps} gaps",
        snap.resource,
        history.len(),
        snap.step_ms
    );
    let mut fleet = Fleet::new(FleetConfig::default(), policies);
    let now = Instant::now();
    let mut closed = Vec::new();
    for (seq, (start_ms, demand)) in (0..).zip(history) {
        let requests = demand.max(0.0).round() as u64;
        let obs = Observation {
            agent_id: "replay".to_owned(),
            resource: snap.resource.clone(),
            window_start_ms: *start_ms,
            window_end_ms: start_ms + step,
            seq,
            summary: WindowCounts {
                requests,
                responses: requests,
                ..WindowCounts::default()
            },
        };
        closed.extend(fleet.ingest(obs, now).1);
    }
    closed.extend(fleet.flush());
    println!("window\tdemand\tmodel\trecent_mase\twidening\tskill_fallback");
    for c in closed {
        let w = (c.start_ms - first_ms) / step;
        let Some(d) = c.decision.filter(|_| w >= from) else {
            continue;
        };
        let x = &d.explanation;
        let model = match &x.model {
            Some(ModelKind::Mstl { periods, trend }) => format!("MSTL {periods:?} {trend}"),
            Some(other) => format!("{other:?}"),
            None => "-".to_owned(),
        };
        let mase = x
            .recent_mase
            .map_or_else(|| "-".to_owned(), |m| format!("{m:.3}"));
        println!(
            "{w}\t{}\t{model}\t{mase}\t{:.2}\t{}",
            c.merged.requests, x.widening, x.skill_fallback
        );
    }
}
