use super::*;
use crate::{
    canary::{CanaryDecision, InstanceWindow, evaluate_canary},
    events::{
        CANARY_DECISION_TYPE, CanaryDecisionEvent, RECOMMENDATION_TYPE, RecommendationData,
        parse_event,
    },
    policy::{Explanation, PolicyConfig},
    synthetic::{grid_records, load, load_levels},
    trial::{KpiName, Objective, ParamValue, TrialRecord},
};

const NOW_MS: u64 = 1_764_806_400_000;

fn p99() -> Objective {
    Objective {
        kpi: KpiName::P99Ms,
        max_error_rate: 0.01,
    }
}

fn forecast(rate: f64) -> ForecastLoad {
    ForecastLoad {
        load: load(rate),
        window_start_ms: NOW_MS + 3_600_000,
        window_end_ms: NOW_MS + 7_200_000,
    }
}

/// The parameters measured best at `rate`, and one measured within `within` of the best there
/// but not the best (computed from the records, not assumed).
fn best_and_close(
    records: &[TrialRecord],
    rate: f64,
    within: f64,
) -> Option<(Params, Params, f64)> {
    let objective = p99();
    let mut at: Vec<(f64, &Params)> = records
        .iter()
        .filter(|r| (r.load.rate_rps - rate).abs() < 1e-9)
        .map(|r| (objective.cost(&r.kpis), &r.params))
        .collect();
    at.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (best_cost, best) = at[0];
    let (close_cost, close) = at[1..]
        .iter()
        .find(|(c, _)| c / best_cost - 1.0 > 0.01 && c / best_cost - 1.0 < within)?;
    Some((best.clone(), (*close).clone(), close_cost / best_cost - 1.0))
}

fn schema() -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../schema/recommendation.schema.json")).expect("schema");
    jsonschema::validator_for(&schema).expect("valid schema")
}

fn assert_valid(json: &str) {
    let value: serde_json::Value = serde_json::from_str(json).expect("event json");
    let errors: Vec<String> = schema()
        .iter_errors(&value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{json}");
}

#[test]
fn a_load_where_other_parameters_win_by_more_than_the_margin_is_recommended_once() {
    let records = grid_records();
    let policy = Policy::fit(&records, p99(), PolicyConfig::default()).expect("policy");
    let mut recommender = Recommender::new(RecommendConfig::default());
    // The best parameters at 100 rps overload at 1600 rps.
    let (low_best, _, _) = best_and_close(&records, 100.0, 0.5).expect("a runner-up");
    let verdict = recommender
        .consider(&policy, "nginx", &low_best, &forecast(1600.0), NOW_MS)
        .expect("consider");
    let Verdict::Recommend(event) = verdict else {
        panic!("expected a recommendation: {verdict:?}");
    };
    assert_eq!(event.event_type, RECOMMENDATION_TYPE);
    assert_eq!(event.subject, "nginx");
    assert_eq!(event.time, "2025-12-04T00:00:00.000Z");
    let data: &RecommendationData = &event.data;
    assert_eq!(data.current_params, low_best);
    assert_ne!(data.recommended_params, low_best);
    assert!(data.improvement.is_none_or(|g| g > data.margin), "{data:?}");
    assert!(matches!(data.explanation, Explanation::Neighbours { .. }));
    let json = event.to_json().expect("json");
    assert_valid(&json);
    let back: RecommendationEvent =
        parse_event(json.as_bytes(), RECOMMENDATION_TYPE).expect("parse back");
    assert_eq!(back.id, event.id);
    assert_eq!(back.data.recommended_params, data.recommended_params);
    // Another event type on the same topic is not mistaken for a recommendation.
    assert!(parse_event::<RecommendationData>(json.as_bytes(), CANARY_DECISION_TYPE).is_none());

    // The forecast stays in the region: not repeated.
    let again = recommender
        .consider(
            &policy,
            "nginx",
            &low_best,
            &forecast(1600.0),
            NOW_MS + 60_000,
        )
        .expect("consider");
    assert!(
        matches!(&again, Verdict::Keep(r) if r.contains("already")),
        "{again:?}"
    );
    // After a rollback the same recommendation may be made again, with the same id (the same
    // forecast window and parameters).
    recommender.rolled_back("nginx");
    let Verdict::Recommend(repeat) = recommender
        .consider(
            &policy,
            "nginx",
            &low_best,
            &forecast(1600.0),
            NOW_MS + 120_000,
        )
        .expect("consider")
    else {
        panic!("expected the recommendation again");
    };
    assert_eq!(repeat.id, event.id);
}

#[test]
fn a_gain_within_the_margin_keeps_the_current_parameters() {
    let records = grid_records();
    let policy = Policy::fit(&records, p99(), PolicyConfig::default()).expect("policy");
    // A load where a runner-up was measured 1–8% behind the best.
    let (rate, (best, close, gap)) = load_levels()
        .into_iter()
        .find_map(|rate| Some((rate, best_and_close(&records, rate, 0.08)?)))
        .expect("a close runner-up somewhere");
    assert_eq!(policy.recommend(&load(rate)).expect("answer").params, best);
    let mut strict = Recommender::new(RecommendConfig {
        margin: 0.10,
        ..RecommendConfig::default()
    });
    let verdict = strict
        .consider(&policy, "nginx", &close, &forecast(rate), NOW_MS)
        .expect("consider");
    assert!(
        matches!(&verdict, Verdict::Keep(r) if r.contains("within the margin")),
        "gap {gap}: {verdict:?}"
    );
    // The same gap is worth a recommendation with a margin below it.
    let mut eager = Recommender::new(RecommendConfig {
        margin: gap / 4.0,
        ..RecommendConfig::default()
    });
    let verdict = eager
        .consider(&policy, "nginx", &close, &forecast(rate), NOW_MS)
        .expect("consider");
    assert!(
        matches!(verdict, Verdict::Recommend(_)),
        "gap {gap}: {verdict:?}"
    );
    // And running the best already is never a recommendation.
    let verdict = eager
        .consider(&policy, "nginx", &best, &forecast(rate), NOW_MS)
        .expect("consider");
    assert!(matches!(verdict, Verdict::Keep(_)));
}

#[test]
fn the_canary_decision_is_its_own_event_naming_the_recommendation() {
    let records = grid_records();
    let policy = Policy::fit(&records, p99(), PolicyConfig::default()).expect("policy");
    let mut recommender = Recommender::new(RecommendConfig::default());
    let mut current = Params::new();
    current.insert("workers".into(), ParamValue::Int(1));
    current.insert("gzip".into(), ParamValue::Choice("on".into()));
    current.insert("keepalive_s".into(), ParamValue::Float(5.0));
    let Verdict::Recommend(rec) = recommender
        .consider(&policy, "nginx", &current, &forecast(3200.0), NOW_MS)
        .expect("consider")
    else {
        panic!("workers=1 cannot carry 3200 rps");
    };
    // Infeasible current parameters: an unbounded gain, published as null.
    assert_eq!(rec.data.improvement, None);
    assert_valid(&rec.to_json().expect("json"));
    let windows = vec![
        InstanceWindow {
            instance: "nginx@10.0.0.1:80".into(),
            requests: 90_000,
            window_secs: 600.0,
            error_rate: 0.0,
            latency_us_p99: 9_000,
        },
        InstanceWindow {
            instance: "nginx@10.0.0.2:80".into(),
            requests: 88_000,
            window_secs: 600.0,
            error_rate: 0.0,
            latency_us_p99: 6_000,
        },
    ];
    let canary = "nginx@10.0.0.2:80";
    let outcome = evaluate_canary(&rec.data.canary, canary, &windows, 0);
    assert_eq!(outcome.decision, CanaryDecision::Promote);
    let decision =
        CanaryDecisionEvent::canary_decision("urn:test", &rec, canary, outcome, NOW_MS + 600_000);
    assert_eq!(decision.event_type, CANARY_DECISION_TYPE);
    assert_eq!(decision.data.recommendation_id, rec.id);
    assert_ne!(decision.id, rec.id);
    assert_valid(&decision.to_json().expect("json"));
}
