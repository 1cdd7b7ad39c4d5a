use super::*;
use crate::{decision::Action, wire::WindowCounts};

const STEP: u64 = 60_000;

fn policies() -> PolicySet {
    PolicySet::from_toml(
        r#"
[defaults]
capacity_per_instance = 100.0
target_utilisation = 1.0
provisioning_lead_time = "1m"
horizon = "1m"
min_instances = 1
max_instances = 50
scale_in_cooldown = "10m"
scale_in_stabilisation = "10m"
"#,
    )
    .expect("policy")
}

fn obs(agent: &str, resource: &str, window: u64, requests: u64) -> Observation {
    let mut counts = WindowCounts {
        requests,
        responses: requests,
        ..WindowCounts::default()
    };
    counts.latency_us.record(1000 + window).expect("record");
    counts.endpoints.insert(format!("GET /{agent}"), requests);
    Observation {
        agent_id: agent.into(),
        resource: resource.into(),
        window_start_ms: window * STEP,
        window_end_ms: (window + 1) * STEP,
        seq: window,
        summary: counts,
    }
}

fn fleet() -> Fleet {
    Fleet::new(
        FleetConfig {
            merge_wait: Duration::from_secs(3600),
            idle_close: Duration::from_secs(3600),
            ..FleetConfig::default()
        },
        policies(),
    )
}

#[test]
fn two_agents_merge_to_the_sum() {
    let mut f = fleet();
    let now = Instant::now();
    let mut closed = Vec::new();
    for w in 0..4 {
        closed.extend(f.ingest(obs("a", "api", w, 10 + w), now).1);
        closed.extend(f.ingest(obs("b", "api", w, 100 * (w + 1)), now).1);
    }
    closed.extend(f.flush());
    assert_eq!(closed.len(), 4);
    for (w, c) in closed.iter().enumerate() {
        let w = w as u64;
        assert_eq!(c.start_ms, w * STEP);
        assert_eq!(c.merged.requests, 10 + w + 100 * (w + 1));
        assert_eq!(c.merged.latency_us.len(), 2);
        assert_eq!(c.agents, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(c.merged.endpoints.len(), 2);
    }
    assert_eq!(f.stats().observations_merged, 8);
}

#[test]
fn a_window_waits_for_known_agents_and_grace_closes_it() {
    let mut f = fleet();
    let now = Instant::now();
    assert!(f.ingest(obs("a", "api", 0, 1), now).1.is_empty());
    assert!(f.ingest(obs("b", "api", 0, 1), now).1.is_empty());
    // a moved on, b has not: window 0 stays open (grace is one window).
    assert!(f.ingest(obs("a", "api", 1, 1), now).1.is_empty());
    // Stream time now more than one window past window 0's end → it closes without b's
    // window 1; window 1 waits.
    let closed = f.ingest(obs("a", "api", 2, 1), now).1;
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].merged.requests, 2);
    let closed = f.ingest(obs("a", "api", 3, 1), now).1;
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!((closed[0].start_ms, closed[0].merged.requests), (STEP, 1));
    // b's window 1 arrives late; a's window 0 again is a duplicate.
    assert_eq!(f.ingest(obs("b", "api", 1, 1), now).0, Ingested::Late);
    assert_eq!(f.ingest(obs("a", "api", 0, 1), now).0, Ingested::Duplicate);
    assert_eq!(f.ingest(obs("a", "api", 2, 1), now).0, Ingested::Duplicate);
    let s = f.stats();
    assert_eq!((s.observations_late, s.observations_duplicate), (1, 2));
}

#[test]
fn idle_close_uses_the_clock() {
    let mut f = Fleet::new(
        FleetConfig {
            merge_wait: Duration::from_secs(3600),
            idle_close: Duration::from_millis(10),
            ..FleetConfig::default()
        },
        policies(),
    );
    let t0 = Instant::now();
    assert!(f.ingest(obs("a", "api", 0, 5), t0).1.is_empty());
    assert!(f.tick(t0 + Duration::from_millis(5)).is_empty());
    assert_eq!(f.tick(t0 + Duration::from_millis(20)).len(), 1);
}

#[test]
fn rising_demand_scales_out_and_snapshot_restores_state() {
    let mut f = fleet();
    let now = Instant::now();
    let mut events = Vec::new();
    let mut holds = 0;
    for w in 0..12 {
        let (_, closed) = f.ingest(obs("a", "api", w, 50 + 60 * w), now);
        for c in closed {
            // The collector builds the event from the window's parts on another thread: the
            // same event, and none exactly when there is none (holds included).
            let from_parts = c
                .clone()
                .into_event_parts()
                .and_then(|(d, w)| crate::scale_event::event_json("urn:test", &d, &w));
            let event = c.scale_event("urn:test");
            holds += usize::from(
                c.decision
                    .as_ref()
                    .is_some_and(|d| d.action == Action::Hold),
            );
            assert_eq!(from_parts, event.as_ref().map(|e| e.to_json().into_bytes()));
            if let Some(e) = event {
                events.push(e);
            }
        }
    }
    assert!(!events.is_empty());
    assert!(holds > 0, "both paths also saw a hold");
    let first = &events[0];
    assert_eq!(first.subject, "api");
    assert_eq!(first.data.action, Action::ScaleOut);
    assert!(first.data.target_instances > first.data.current_instances);
    // The target covers at least the demand seen in the triggering window.
    assert!(
        f64::from(first.data.target_instances) * 100.0 >= first.data.window.counts.requests as f64
    );

    let snap = f.snapshot("api").expect("snapshot");
    let json = serde_json::to_string(&snap).expect("json");
    let back: ResourceSnapshot = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, snap);
    let mut g = fleet();
    g.restore(&back, now).expect("restore");
    assert_eq!(g.snapshot("api").expect("snapshot"), snap);
    // The restored fleet continues where the first one stopped: same merged window, same
    // instance count going in, same decision (the forecaster is replayed from the history).
    let next_a = f.ingest(obs("a", "api", 12, 800), now).1;
    let next_b = g.ingest(obs("a", "api", 12, 800), now).1;
    assert_eq!(next_a.len(), next_b.len());
    for (a, b) in next_a.iter().zip(&next_b) {
        assert_eq!(a.merged.requests, b.merged.requests);
        assert_eq!(
            a.decision.as_ref().map(|d| d.current_instances),
            b.decision.as_ref().map(|d| d.current_instances)
        );
        assert_eq!(
            a.decision.as_ref().map(|d| (d.action, d.desired_instances)),
            b.decision.as_ref().map(|d| (d.action, d.desired_instances))
        );
    }
}

#[test]
fn unknown_resources_without_policy_are_counted() {
    let mut f = Fleet::new(
        FleetConfig::default(),
        PolicySet::from_toml("[resources.api]\ncapacity_per_instance = 10.0\n").expect("policy"),
    );
    let now = Instant::now();
    f.ingest(obs("a", "other", 0, 5), now);
    let closed = f.flush();
    assert_eq!(closed.len(), 1);
    assert!(closed[0].decision.is_none());
    assert_eq!(f.stats().decisions_without_policy, 1);
}

fn cooldown_fleet() -> Fleet {
    let policies = PolicySet::from_toml(
        r#"
[defaults]
capacity_per_instance = 100.0
target_utilisation = 1.0
provisioning_lead_time = "1m"
horizon = "1m"
min_instances = 1
max_instances = 50
scale_out_cooldown = "30m"
"#,
    )
    .expect("policy");
    Fleet::new(
        FleetConfig {
            merge_wait: Duration::from_secs(3600),
            idle_close: Duration::from_secs(3600),
            // Decide on observed demand only: this test is about the engine's timers.
            min_forecast_history: usize::MAX,
            ..FleetConfig::default()
        },
        policies,
    )
}

#[test]
#[allow(clippy::many_single_char_names)] // f/g/fresh fleets and their a/b/c decisions, side by side
fn restored_fleet_keeps_the_scale_out_cooldown() {
    let mut f = cooldown_fleet();
    let now = Instant::now();
    // A first scale-out starts the 30-minute cooldown; then a snapshot moves the resource.
    for w in 0..6 {
        f.ingest(obs("a", "api", w, 300), now);
    }
    let snap = f.snapshot("api").expect("snapshot");
    assert!(
        snap.engine.is_some(),
        "engine state is part of the snapshot"
    );
    let json = serde_json::to_string(&snap).expect("json");
    let mut g = cooldown_fleet();
    g.restore(&serde_json::from_str(&json).expect("parse"), now)
        .expect("restore");
    let mut fresh = cooldown_fleet();
    let mut stripped: ResourceSnapshot = serde_json::from_str(&json).expect("parse");
    stripped.engine = None;
    fresh.restore(&stripped, now).expect("restore");
    let decision = |v: &[ClosedWindow]| {
        v.iter()
            .filter_map(|cw| {
                cw.decision
                    .as_ref()
                    .map(|d| (cw.start_ms, d.action, d.desired_instances, d.reason))
            })
            .collect::<Vec<_>>()
    };
    let (mut held, mut diverged_without_engine) = (false, false);
    for w in 6..12 {
        let a = decision(&f.ingest(obs("a", "api", w, 2000), now).1);
        let b = decision(&g.ingest(obs("a", "api", w, 2000), now).1);
        let c = decision(&fresh.ingest(obs("a", "api", w, 2000), now).1);
        assert_eq!(a, b, "window {w}: restored fleet decides like the original");
        held |= a
            .iter()
            .any(|d| d.3 == crate::decision::Reason::ScaleOutCooldown);
        diverged_without_engine |= a != c;
    }
    assert!(held, "the demand jump met the running cooldown");
    assert!(
        diverged_without_engine,
        "without the engine's timers the restored fleet would decide differently (else this test proves nothing)"
    );
}

/// A lifecycle event from the provisioner for `api`.
fn lifecycle(id: &str, ok: bool, healthy: u32, at_ms: u64) -> crate::lifecycle::LifecycleEvent {
    crate::lifecycle::LifecycleEvent::new(
        "test",
        crate::lifecycle::LifecycleData {
            schema_version: crate::lifecycle::LIFECYCLE_DATA_VERSION,
            resource: "api".into(),
            scale_event_id: id.into(),
            instance: format!("stp-{id}"),
            stage: crate::decision::LifecycleStage::Provision,
            attempt: 1,
            ok,
            error: (!ok).then(|| "instance exited".to_owned()),
            started_at: String::new(),
            finished_at: String::new(),
            started_at_ms: at_ms,
            finished_at_ms: at_ms,
            duration_ms: 0,
            healthy_instances: healthy,
            target_instances: 5,
            warm: None,
        },
    )
}

/// Demand of 500 per window needs 5 instances at capacity 100. The provisioner reports that
/// only 2 serve: decisions start from 2, the same target is not re-published while in flight,
/// and after a failed provision it is re-published once the backoff (here 1 min, from the
/// policy default of 30 s overridden below) has passed.
#[test]
fn decisions_start_from_the_reported_count_and_failed_provisions_are_retried() {
    let policies = PolicySet::from_toml(
        r#"
[defaults]
capacity_per_instance = 100.0
target_utilisation = 1.0
provisioning_lead_time = "1m"
horizon = "1m"
provision_retry_backoff = "3m"
"#,
    )
    .expect("policy");
    let mut f = Fleet::new(
        FleetConfig {
            merge_wait: Duration::from_secs(3600),
            idle_close: Duration::from_secs(3600),
            ..FleetConfig::default()
        },
        policies,
    );
    let now = Instant::now();
    let run = |f: &mut Fleet, w: u64| -> Vec<ClosedWindow> {
        let mut closed = f.ingest(obs("a", "api", w, 500), now).1;
        closed.extend(f.ingest(obs("a", "api", w + 1, 500), now).1);
        closed
    };
    // Window 0 closes when window 1 arrives (grace one window): scale out 1 -> 5, published.
    let c = run(&mut f, 0);
    let d = c[0].decision.as_ref().expect("decision");
    assert_eq!((d.current_instances, d.desired_instances), (1, 5));
    assert!(c[0].scale_event("t").is_some());

    // The provisioner reports 2 healthy; the next window decides from 2, in flight: no event.
    assert_eq!(
        f.observe_lifecycle(&lifecycle("p1", true, 2, 2 * STEP)),
        LifecycleApplied::Applied
    );
    assert_eq!(
        f.observe_lifecycle(&lifecycle("p1", true, 2, 2 * STEP)),
        LifecycleApplied::Duplicate
    );
    let c = f.ingest(obs("a", "api", 2, 500), now).1;
    let d = c[0].decision.as_ref().expect("decision");
    assert_eq!(
        d.current_instances, 2,
        "the decision starts from the reported count"
    );
    assert_eq!(d.desired_instances, 5);
    assert!(c[0].scale_event("t").is_none(), "same target in flight");
    assert!(c[0].clone().into_event_parts().is_none());
    assert_eq!(f.stats().requests_in_flight, 1);

    // A failed provision at the end of window 2: backoff 3 min from there.
    f.observe_lifecycle(&lifecycle("p2", false, 2, 3 * STEP));
    assert_eq!(f.stats().provision_failures, 1);
    let mut published = Vec::new();
    for w in 3..8 {
        for c in f.ingest(obs("a", "api", w, 500), now).1 {
            if c.scale_event("t").is_some() {
                published.push(c.end_ms);
            }
        }
    }
    // Windows ending at 4..7 min close here; only the one at or after 3 + 3 = 6 min retries.
    assert_eq!(published, vec![6 * STEP]);
    assert_eq!(f.stats().provision_retries, 1);
    assert_eq!(f.stats().scale_events, 2);

    // The actual count survives a snapshot.
    let snap = f.snapshot("api").expect("snapshot");
    assert_eq!(snap.actuals.healthy, Some(2));
}

#[test]
fn lifecycle_events_that_come_before_their_resource_are_kept_for_it() {
    let mut f = fleet();
    assert_eq!(
        f.observe_lifecycle(&lifecycle("x", true, 3, 0)),
        LifecycleApplied::Applied
    );
    assert_eq!(f.actuals("api").and_then(|a| a.healthy), Some(3));
    let now = Instant::now();
    f.ingest(obs("a", "api", 0, 10), now);
    let closed = f.ingest(obs("a", "api", 1, 10), now).1;
    let d = closed[0].decision.as_ref().expect("decision");
    assert_eq!(
        d.current_instances, 3,
        "the pending report applies to the new resource"
    );
}

/// A level shift in merged demand reaches the decision: the collector's own forecaster finds
/// the changepoint and the decision's explanation carries it.
#[test]
fn a_level_shift_is_a_changepoint_in_the_decision() {
    let mut f = Fleet::new(
        FleetConfig {
            merge_wait: Duration::from_secs(3600),
            idle_close: Duration::from_secs(3600),
            forecast: ForecastConfig {
                refit_interval: Duration::from_secs(60),
                ..ForecastConfig::default()
            },
            ..FleetConfig::default()
        },
        policies(),
    );
    let now = Instant::now();
    for w in 0..144u64 {
        // A 12-window cycle, level 300, then 900 from window 96 (two cycles learned first).
        let level = if w < 96 { 300.0 } else { 900.0 };
        let cycle = (w % 12) as f64 / 12.0 * std::f64::consts::TAU;
        let demand = level + 250.0 * cycle.sin() + ((w * 7) % 5) as f64;
        f.ingest(obs("a", "api", w, demand as u64), now);
    }
    f.flush();
    let d = f.last_decision("api").expect("decision");
    // The detector runs on season-long block means of the deseasonalised series, and MSTL's
    // trend smoother spreads the step over about a season on each side: the block [72, 84)
    // already rises, so the change is placed two blocks (24 windows) before the true shift.
    assert_eq!(d.explanation.changepoints_ms, vec![72 * STEP]);
    assert!(
        d.explanation.summary.contains("changepoint"),
        "{}",
        d.explanation.summary
    );
}

/// A stretch of windows nobody reported (an agent down, or its clock jumped ahead) is said in
/// the next decision and counted.
#[test]
fn a_gap_in_the_demand_series_is_said_in_the_decision() {
    let mut f = fleet();
    let now = Instant::now();
    for w in [0, 1, 2, 3, 9, 10] {
        f.ingest(obs("a", "api", w, 100), now);
    }
    f.flush();
    let d = f.last_decision("api").expect("decision");
    assert_eq!(d.explanation.gap_windows, 0, "window 10 follows 9");
    assert_eq!(f.stats().demand_gaps, 1);
    let mut f = fleet();
    for w in [0, 1, 2, 3, 9] {
        f.ingest(obs("a", "api", w, 100), now);
    }
    f.flush();
    let d = f.last_decision("api").expect("decision");
    assert_eq!(d.explanation.gap_windows, 5, "windows 4..=8 are missing");
    assert!(
        d.explanation
            .summary
            .contains("5 window(s) before this one had no observations")
    );
}

/// Wall clock of `a_backlog_is_caught_up_on_observed_demand` (the only test that reads it).
static CATCH_UP_WALL_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn catch_up_wall_clock() -> u64 {
    CATCH_UP_WALL_MS.load(std::sync::atomic::Ordering::Relaxed)
}

/// With `catch_up`, windows whose forecast horizon has passed on the wall clock are decided
/// on observed demand without a fit, and say how late; the forecaster starts on the first
/// fresh window, having learnt the backlog. Without it, the same backlog is forecast.
#[test]
fn a_backlog_is_caught_up_on_observed_demand() {
    let config = |catch_up| FleetConfig {
        merge_wait: Duration::from_secs(3600),
        idle_close: Duration::from_secs(3600),
        catch_up,
        ..FleetConfig::default()
    };
    // Window w's horizon ends at (w + 1 + 12) windows: windows 0..=30 have passed it.
    let wall_ms = 43 * STEP + 5_000;
    CATCH_UP_WALL_MS.store(wall_ms, std::sync::atomic::Ordering::Relaxed);
    let demand = |w: u64| 300 + 100 * (w % 6);
    let now = Instant::now();
    let mut f = Fleet::new(config(true), policies()).with_wall_clock(catch_up_wall_clock);
    let mut closed = Vec::new();
    for w in 0..=31 {
        closed.extend(f.ingest(obs("a", "api", w, demand(w)), now).1);
    }
    assert_eq!(closed.len(), 31, "windows 0..=30 closed");
    assert_eq!(f.stats().windows_caught_up, 31);
    assert_eq!(f.stats().forecast_fits, 0, "no fit while catching up");
    for c in &closed {
        let d = c.decision.as_ref().expect("decision");
        let w = c.start_ms / STEP;
        assert_eq!(
            d.explanation.behind_ms,
            wall_ms - (w + 13) * STEP,
            "window {w}"
        );
        assert!(d.explanation.forecast.is_empty(), "window {w}");
        assert!(
            (d.explanation.peak_upper - demand(w) as f64).abs() < 1e-9,
            "window {w}"
        );
        assert!(
            d.explanation.summary.contains("catching up"),
            "{}",
            d.explanation.summary
        );
    }
    for w in 32..48 {
        closed.extend(f.ingest(obs("a", "api", w, demand(w)), now).1);
    }
    closed.extend(f.flush());
    assert_eq!(
        f.stats().windows_caught_up,
        31,
        "windows from 31 on are fresh"
    );
    assert!(f.stats().forecast_fits > 0);
    for c in &closed[31..] {
        let d = c.decision.as_ref().expect("decision");
        assert_eq!(d.explanation.behind_ms, 0);
        assert!(
            !d.explanation.forecast.is_empty(),
            "window {}",
            c.start_ms / STEP
        );
    }

    let mut f = Fleet::new(config(false), policies()).with_wall_clock(catch_up_wall_clock);
    for w in 0..48 {
        f.ingest(obs("a", "api", w, demand(w)), now);
    }
    f.flush();
    assert_eq!(f.stats().windows_caught_up, 0);
    assert!(f.stats().forecast_fits > 0);
}

/// First fits are charged to the fit budget like refits: once it is spent, a resource that
/// reaches the history for a forecaster is decided on observed demand, says why and is
/// counted, instead of holding every other window up while it fits.
#[test]
fn a_first_fit_waits_for_the_fit_budget() {
    let config = |burst| FleetConfig {
        merge_wait: Duration::from_secs(3600),
        idle_close: Duration::from_secs(3600),
        // No refill: the burst is all there is. The first warm start (tens of microseconds
        // at least) spends a microsecond's burst; with a second's, both resources fit.
        fit_budget: FitBudget { share: 0.0, burst },
        ..FleetConfig::default()
    };
    let demand = |w: u64| 300 + 100 * (w % 6);
    let now = Instant::now();
    let run = |burst| {
        let mut f = Fleet::new(config(burst), policies());
        let mut closed = Vec::new();
        for w in 0..16 {
            for resource in ["api", "web"] {
                closed.extend(f.ingest(obs("a", resource, w, demand(w)), now).1);
            }
        }
        closed.extend(f.flush());
        (f, closed)
    };
    let (f, closed) = run(Duration::from_micros(1));
    let min_history = FleetConfig::default().min_forecast_history as u64;
    // Windows 0..16 of each resource; the forecaster needs `min_history` windows of history
    // (its window included), so windows min_history-1..16 are the ones it could forecast.
    let eligible = 16 - (min_history - 1);
    assert_eq!(
        f.stats().forecast_first_fits_deferred,
        eligible,
        "every eligible window of the second resource"
    );
    for c in &closed {
        let d = c.decision.as_ref().expect("decision");
        let w = c.start_ms / STEP;
        let waits = d
            .explanation
            .summary
            .contains("first fit waits for the fit budget");
        match (c.resource.as_str(), w + 1 >= min_history) {
            ("api", true) => {
                assert!(!waits, "api window {w}: {}", d.explanation.summary);
                assert!(!d.explanation.forecast.is_empty(), "api window {w}");
            }
            ("web", true) => {
                assert!(waits, "web window {w}: {}", d.explanation.summary);
                assert!(d.explanation.forecast.is_empty(), "web window {w}");
                assert!(
                    (d.explanation.peak_upper - demand(w) as f64).abs() < 1e-9,
                    "web window {w} is decided on what it observed"
                );
            }
            _ => assert!(!waits, "window {w} is too early for a forecaster"),
        }
    }
    let (f, closed) = run(Duration::from_secs(1));
    assert_eq!(f.stats().forecast_first_fits_deferred, 0);
    assert!(closed.iter().all(|c| {
        let d = c.decision.as_ref().expect("decision");
        c.start_ms / STEP + 1 < min_history || !d.explanation.forecast.is_empty()
    }));
}
