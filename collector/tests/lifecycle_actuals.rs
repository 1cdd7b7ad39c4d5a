//! Issue 14: the collector reads the provisioner's lifecycle topic and decides on the instances
//! that really serve. A lifecycle event published before the collector starts (2 healthy
//! instances) is replayed from the topic's start; the first decision then starts from 2, not
//! from the policy's minimum, and repeats of a target still in flight are not re-published.

// Counter values on the metrics page are small integers, exact in f64.
#![allow(clippy::float_cmp)]

mod common;

use std::time::Duration;

use common::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use shadowtap_core::{
    ObservationSink, SinkConfig,
    decision::LifecycleStage,
    lifecycle::{LIFECYCLE_DATA_VERSION, LIFECYCLE_TOPIC, LifecycleData, LifecycleEvent},
};

fn reported(healthy: u32) -> LifecycleEvent {
    LifecycleEvent::new(
        "urn:test:provisioner",
        LifecycleData {
            schema_version: LIFECYCLE_DATA_VERSION,
            resource: "shop".into(),
            scale_event_id: "before-start".into(),
            instance: "stp-2".into(),
            stage: LifecycleStage::ShiftTraffic,
            attempt: 1,
            ok: true,
            error: None,
            started_at: String::new(),
            finished_at: String::new(),
            started_at_ms: T0_MS - 2000,
            finished_at_ms: T0_MS - 1000,
            duration_ms: 1000,
            healthy_instances: healthy,
            target_instances: healthy,
            warm: None,
        },
    )
}

#[test]
fn decisions_start_from_the_instances_the_provisioner_reports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start();
    let rt = runtime();
    create_topics(&rt, &broker, 2);
    let policy = write_policy(dir.path(), POLICY);
    rt.block_on(async {
        shadowtap_collector::topics::ensure_topics(&kafka(&broker), &[(LIFECYCLE_TOPIC, false)], 2)
            .await
            .expect("lifecycle topic");
        let producer: FutureProducer = kafka(&broker)
            .producer_config(Duration::from_secs(10))
            .create()
            .expect("producer");
        let json = serde_json::to_string(&reported(2)).expect("json");
        for payload in [json.as_str(), "not a lifecycle event"] {
            producer
                .send(
                    FutureRecord::to(LIFECYCLE_TOPIC)
                        .key("shop")
                        .payload(payload),
                    Duration::from_secs(10),
                )
                .await
                .expect("produce lifecycle");
        }
    });
    let collector = spawn_collector(&broker, &policy, &dir.path().join("collector.log"), &[]);
    let fleet_total = |what: &str| {
        http_get(collector.metrics_port, "/metrics").and_then(|page| {
            metric(
                &page,
                &format!("shadowtap_collector_fleet_total{{what=\"{what}\"}}"),
            )
        })
    };
    // The report arrives before any observation of the resource: it is kept for it.
    assert!(
        wait_for(Duration::from_secs(60), || fleet_total("lifecycle_applied")
            == Some(1.0)),
        "lifecycle event not applied; log:\n{}",
        std::fs::read_to_string(dir.path().join("collector.log")).unwrap_or_default()
    );
    assert_eq!(fleet_total("lifecycle_invalid"), Some(1.0));

    // 500 requests per 1 s window at 100 per instance: 5 instances needed, for 8 windows.
    rt.block_on(async {
        let sink =
            ObservationSink::start(SinkConfig::new(kafka(&broker), dir.path().join("spool")))
                .expect("sink");
        for w in 0..8 {
            sink.send(&observation("agent-a", "shop", w, 500))
                .expect("send");
        }
        assert!(sink.flush(Duration::from_secs(20)).await);
        sink.shutdown().await;
    });
    assert!(
        wait_for(Duration::from_secs(60), || fleet_total("decisions")
            == Some(8.0)),
        "decisions did not arrive"
    );
    let events = read_topic(
        &broker,
        "shadowtap.scale-events",
        Duration::from_secs(20),
        Duration::from_secs(1),
        |r| !r.is_empty(),
    );
    let data: Vec<serde_json::Value> = events
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.value).expect("event json")["data"]
                .clone()
        })
        .collect();
    assert!(!data.is_empty(), "no scale event");
    assert_eq!(
        (
            data[0]["current_instances"].as_u64(),
            data[0]["target_instances"].as_u64()
        ),
        (Some(2), Some(5)),
        "the first decision starts from the reported 2: {}",
        data[0]
    );
    // Lead time 2 s: a request counts as in flight for 4 s of event time, so of the 8 closed
    // windows only the first and the one 4 s later publish.
    let suppressed = fleet_total("requests_in_flight").unwrap_or(0.0);
    assert_eq!(data.len(), 2, "{data:?}");
    assert_eq!(suppressed, 6.0);
    assert_eq!(fleet_total("requests_reissued"), Some(1.0));
    drop(collector);
}
