use super::*;
use crate::kpi_model::Predicted;

fn window(instance: &str, requests: u64, error_rate: f64, p99_us: u64) -> InstanceWindow {
    InstanceWindow {
        instance: instance.to_owned(),
        requests,
        window_secs: 600.0,
        error_rate,
        latency_us_p99: p99_us,
    }
}

fn fleet(canary: InstanceWindow) -> Vec<InstanceWindow> {
    vec![
        window("web@10.0.0.1:80", 60_000, 0.001, 20_000),
        canary,
        window("web@10.0.0.3:80", 20_000, 0.005, 30_000),
    ]
}

const CANARY: &str = "web@10.0.0.2:80";

#[test]
fn a_canary_no_worse_than_the_rest_is_promoted() {
    let plan = CanaryPlan::default();
    let out = evaluate_canary(
        &plan,
        CANARY,
        &fleet(window(CANARY, 40_000, 0.002, 21_000)),
        0,
    );
    assert_eq!(out.decision, CanaryDecision::Promote, "{out:?}");
    // The baseline is the request-weighted merge: 0.75·20 ms + 0.25·30 ms.
    let b = out.baseline.expect("baseline");
    assert_eq!((b.requests, b.latency_us_p99), (80_000, 22_500));
    assert!((b.error_rate - 0.002).abs() < 1e-12);
    assert_eq!(out.reasons.len(), 2);
}

#[test]
fn a_slower_or_failing_canary_is_rolled_back_with_the_reason() {
    let plan = CanaryPlan::default();
    let slow = evaluate_canary(
        &plan,
        CANARY,
        &fleet(window(CANARY, 40_000, 0.002, 25_000)),
        0,
    );
    assert_eq!(slow.decision, CanaryDecision::Rollback);
    assert!(
        slow.reasons
            .iter()
            .any(|r| r.starts_with("p99") && r.ends_with("worse"))
    );
    let failing = evaluate_canary(
        &plan,
        CANARY,
        &fleet(window(CANARY, 40_000, 0.02, 15_000)),
        0,
    );
    assert_eq!(failing.decision, CanaryDecision::Rollback);
    assert!(
        failing
            .reasons
            .iter()
            .any(|r| r.starts_with("error rate") && r.ends_with("worse"))
    );
}

#[test]
fn too_little_evidence_extends_then_rolls_back() {
    let plan = CanaryPlan::default();
    // Shedding traffic: a tenth of a baseline instance's rate.
    let shy = fleet(window(CANARY, 4_000, 0.0, 5_000));
    let first = evaluate_canary(&plan, CANARY, &shy, 0);
    assert_eq!(first.decision, CanaryDecision::Extend, "{first:?}");
    let last = evaluate_canary(&plan, CANARY, &shy, plan.max_extensions);
    assert_eq!(last.decision, CanaryDecision::Rollback, "{last:?}");
    let missing = evaluate_canary(&plan, "web@10.0.0.9:80", &shy[..1], 0);
    assert_eq!(missing.decision, CanaryDecision::Extend);
    assert!(missing.reasons[0].contains("not seen"));
}

#[test]
fn windows_are_read_from_the_agents_resources_view() {
    let body = r#"[
        {"id":"web@10.0.0.1:80","last_minute":{"window_start_ns":1,"requests":6000,
         "responses":6000,"connections_opened":3,"concurrent_connections_max":2,
         "bytes_in":1,"bytes_out":2,"error_rate":0.01,"latency_us_p50":900,
         "latency_us_p99":4100,"request_bytes_p50":300,"status":{},"endpoints":{},
         "endpoints_other":0}},
        {"id":"idle@10.0.0.9:80","last_minute":null}
    ]"#;
    let windows = InstanceWindow::from_agent_resources(body).expect("parse");
    assert_eq!(
        windows,
        vec![InstanceWindow {
            instance: "web@10.0.0.1:80".into(),
            requests: 6000,
            window_secs: 60.0,
            error_rate: 0.01,
            latency_us_p99: 4100,
        }]
    );
    assert!((windows[0].rate_per_sec() - 100.0).abs() < 1e-9);
}

fn prediction(p99_ms: f64, error: f64) -> KpiPrediction {
    KpiPrediction {
        kpis: vec![
            (
                KpiName::P99Ms,
                Predicted {
                    value: p99_ms,
                    error,
                },
            ),
            (
                KpiName::ErrorRate,
                Predicted {
                    value: 0.001,
                    error: 0.0005,
                },
            ),
        ],
    }
}

#[test]
fn drift_is_flagged_once_after_consecutive_windows_outside_the_band() {
    let mut drift = DriftDetector::new(DriftConfig::default());
    let load = crate::synthetic::load(400.0);
    let params = Params::new();
    let pred = prediction(10.0, 1.0);
    let observe = |d: &mut DriftDetector, p99_us: u64, at: u64| {
        d.observe(
            "web",
            &params,
            &load,
            &pred,
            &window("web@p", 6000, 0.001, p99_us),
            at,
        )
    };
    // Within 2σ (±2 ms): never flagged.
    for at in 0..5 {
        assert!(observe(&mut drift, 11_500, at).is_none());
    }
    // Two out, one back in, resets the streak.
    assert!(observe(&mut drift, 15_000, 10).is_none());
    assert!(observe(&mut drift, 15_000, 11).is_none());
    assert!(observe(&mut drift, 10_000, 12).is_none());
    assert!(observe(&mut drift, 15_000, 13).is_none());
    assert!(observe(&mut drift, 15_000, 14).is_none());
    let flag = observe(&mut drift, 15_000, 15).expect("third consecutive window flags");
    assert_eq!(flag.kpi, KpiName::P99Ms);
    assert!((flag.z - 5.0).abs() < 1e-9, "{flag:?}");
    assert!(drift.is_flagged("web"));
    assert_eq!(drift.flagged_total(), 1);
    // Still drifting: not flagged again until re-evaluated.
    assert!(observe(&mut drift, 15_000, 16).is_none());
    assert_eq!(drift.flagged_total(), 1);
    drift.clear("web");
    assert!(!drift.is_flagged("web"));
    for at in 17..19 {
        assert!(observe(&mut drift, 15_000, at).is_none());
    }
    assert!(observe(&mut drift, 15_000, 19).is_some());
    assert_eq!(drift.flagged_total(), 2);
}
