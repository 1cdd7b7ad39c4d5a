//! Issue 16: recommendations reach `shadowtap.recommendations` on a real Kafka-protocol broker
//! (nisshi on 127.0.0.1), survive an outage in the spool, and read back as CloudEvents.

use std::time::{Duration, Instant};

use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
};
use shadowtap_core::KafkaSettings;
use shadowtap_sweep::{
    canary::{InstanceWindow, evaluate_canary},
    events::{
        CANARY_DECISION_TYPE, CanaryDecisionData, CanaryDecisionEvent, ForecastLoad,
        RECOMMENDATION_TYPE, RECOMMENDATIONS_TOPIC, RecommendationData, SweepEvent, parse_event,
    },
    policy::{Policy, PolicyConfig},
    recommend::{RecommendConfig, Recommender, Verdict},
    sink::{EventSink, ensure_topic},
    synthetic::{grid_records, load},
    trial::{KpiName, Objective},
};
use shadowtap_tests::broker::LoopbackBroker as Broker;

/// (key, payload) of the records on the topic until `done` says so or `timeout`.
fn read_topic(
    settings: &KafkaSettings,
    done: impl Fn(&[(String, Vec<u8>)]) -> bool,
    timeout: Duration,
) -> Vec<(String, Vec<u8>)> {
    let consumer: BaseConsumer = settings
        .client_config(&[
            ("group.id", "sweep-test-reader"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
        ])
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(RECOMMENDATIONS_TOPIC), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(RECOMMENDATIONS_TOPIC, p.id(), Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while !done(&out) && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            out.push((key, m.payload().unwrap_or_default().to_vec()));
        }
    }
    out
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn a_recommendation_and_its_canary_decision_are_published_through_an_outage_and_read_back() {
    let mut broker = Broker::start();
    let settings = KafkaSettings::new(broker.bootstrap());
    let spool = tempfile::tempdir().expect("spool dir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let objective = Objective {
        kpi: KpiName::P99Ms,
        max_error_rate: 0.01,
    };
    let policy = Policy::fit(&grid_records(), objective, PolicyConfig::default()).expect("policy");
    let current = policy.recommend(&load(100.0)).expect("answer").params;
    let forecast = ForecastLoad {
        load: load(3200.0),
        window_start_ms: 1_764_806_400_000,
        window_end_ms: 1_764_810_000_000,
    };
    let Verdict::Recommend(rec) = Recommender::new(RecommendConfig::default())
        .consider(&policy, "nginx", &current, &forecast, 1_764_806_000_000)
        .expect("consider")
    else {
        panic!("the 100 rps optimum overloads at 3200 rps");
    };

    let mut sink = rt.block_on(async {
        ensure_topic(&settings, RECOMMENDATIONS_TOPIC, 2)
            .await
            .expect("topic");
        EventSink::kafka(
            &settings,
            RECOMMENDATIONS_TOPIC,
            spool.path(),
            1 << 20,
            Duration::from_secs(3),
        )
        .expect("sink")
    });
    let first = rt.block_on(sink.publish(&*rec)).expect("publish");
    assert_eq!((first.delivered, first.spooled), (1, 0));

    // The broker freezes: the canary decision waits in the spool, then goes out on recovery.
    let windows = [
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
            latency_us_p99: 7_000,
        },
    ];
    let canary = "nginx@10.0.0.2:80";
    let outcome = evaluate_canary(&rec.data.canary, canary, &windows, 0);
    let decision = CanaryDecisionEvent::canary_decision(
        "urn:test:sweep",
        &rec,
        canary,
        outcome,
        1_764_806_700_000,
    );
    broker.pause();
    let during = rt.block_on(sink.publish(&decision)).expect("publish");
    assert_eq!(
        (during.delivered, during.spooled),
        (0, 1),
        "spooled while down"
    );
    broker.resume();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let after = rt.block_on(sink.drain()).expect("drain");
        if after.spooled == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "spool never drained: {after:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let has = |records: &[(String, Vec<u8>)], event_type: &str| {
        records
            .iter()
            .any(|(_, v)| parse_event::<serde_json::Value>(v, event_type).is_some())
    };
    let records = read_topic(
        &settings,
        |r| has(r, RECOMMENDATION_TYPE) && has(r, CANARY_DECISION_TYPE),
        Duration::from_secs(20),
    );
    assert!(records.iter().all(|(key, _)| key == "nginx"), "{records:?}");
    let recs: Vec<SweepEvent<RecommendationData>> = records
        .iter()
        .filter_map(|(_, v)| parse_event(v, RECOMMENDATION_TYPE))
        .collect();
    let decisions: Vec<SweepEvent<CanaryDecisionData>> = records
        .iter()
        .filter_map(|(_, v)| parse_event(v, CANARY_DECISION_TYPE))
        .collect();
    // A delivery that timed out but had landed may be re-sent: consumers dedupe by id.
    assert!(
        !recs.is_empty() && recs.iter().all(|r| r.id == rec.id),
        "{records:?}"
    );
    assert!(!decisions.is_empty(), "{records:?}");
    assert!(decisions.iter().all(|d| d.id == decision.id));
    assert_eq!(recs[0].data.recommended_params, rec.data.recommended_params);
    assert_eq!(decisions[0].data.recommendation_id, rec.id);
    assert_eq!(decisions[0].data.decision, decision.data.decision);
}
