//! Issue 4, test 3: two collectors in one group; one is killed (`SIGKILL`) mid-run. The survivor takes
//! its partitions over (state from the state topic, offsets from the last commit) and no scale
//! event is lost.
#![allow(clippy::float_cmp)] // long scenario tests; metric values are small integers

mod common;

use std::time::{Duration, Instant};

use common::*;
use shadowtap_core::{ObservationSink, SinkConfig};

const WINDOWS: u64 = 30;

fn owned(port: u16) -> f64 {
    http_get(port, "/metrics")
        .and_then(|p| metric(&p, "shadowtap_collector_partitions_owned"))
        .unwrap_or(0.0)
}

#[test]
fn the_survivor_takes_over_and_no_event_is_lost() {
    let started = Instant::now();
    let resources: Vec<String> = (0..8).map(|i| format!("svc-{i}")).collect();
    assert_staircase_reference(&resources, WINDOWS);
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start();
    let rt = runtime();
    create_topics(&rt, &broker, 4);
    let policy = write_policy(dir.path(), STAIRCASE_POLICY);
    let mut a = spawn_collector(&broker, &policy, &dir.path().join("a.log"), DELIVERY_ARGS);
    let b = spawn_collector(&broker, &policy, &dir.path().join("b.log"), DELIVERY_ARGS);
    assert!(
        wait_for(Duration::from_secs(30), || owned(a.metrics_port) > 0.0
            && owned(b.metrics_port) > 0.0
            && owned(a.metrics_port) + owned(b.metrics_port) == 4.0),
        "partitions not split: a {} b {}",
        owned(a.metrics_port),
        owned(b.metrics_port)
    );

    rt.block_on(async {
        let sink =
            ObservationSink::start(SinkConfig::new(kafka(&broker), dir.path().join("spool")))
                .expect("sink");
        for w in 0..WINDOWS {
            for r in &resources {
                sink.send(&observation("agent-1", r, w, staircase(w)))
                    .expect("spool");
            }
            if w == 10 {
                a.guard.kill();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(sink.flush(Duration::from_secs(20)).await);
        sink.shutdown().await;
    });
    assert!(
        wait_for(Duration::from_secs(20), || owned(b.metrics_port) == 4.0),
        "survivor owns {}",
        owned(b.metrics_port)
    );

    let total = WINDOWS * resources.len() as u64;
    let records = read_topic(
        &broker,
        "shadowtap.scale-events",
        Duration::from_secs(40),
        Duration::from_millis(500),
        |r| events_by_id(r).len() as u64 >= total,
    );
    let by_id = events_by_id(&records);
    let log_a = std::fs::read_to_string(dir.path().join("a.log")).unwrap_or_default();
    let log_b = std::fs::read_to_string(dir.path().join("b.log")).unwrap_or_default();
    assert_eq!(
        by_id.len() as u64,
        total,
        "events missing\nA:\n{log_a}\nB:\n{log_b}"
    );
    for r in &resources {
        for w in 0..WINDOWS {
            assert!(
                by_id.values().any(|v| v == &(r.clone(), w)),
                "no event for {r} window {w}"
            );
        }
    }
    let page = http_get(b.metrics_port, "/metrics").unwrap_or_default();
    assert!(
        metric(&page, "shadowtap_collector_snapshots_loaded_total").unwrap_or(0.0) > 0.0,
        "survivor restored no state: {page}"
    );
    eprintln!(
        "failover: {} event records for {total} distinct events",
        records.len()
    );
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
}
