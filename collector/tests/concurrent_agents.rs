//! Two agents writing one partition at the same time while the collector reads it. nisshi
//! 0.8.1 can then answer a fetch with a later batch than the one asked for (it hands out
//! offsets before it stores the batches), and librdkafka steps over the missing record; the
//! collector must notice the gap and re-fetch it (`ownership.rs`). Nothing may be lost.
#![allow(clippy::float_cmp)] // metric values are small integers

mod common;

use std::time::Duration;

use common::*;
use shadowtap_core::{ObservationSink, SinkConfig};

const WINDOWS: u64 = 200;

#[test]
fn two_agents_racing_on_one_partition_lose_no_observation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start();
    let rt = runtime();
    create_topics(&rt, &broker, 2);
    let policy = write_policy(dir.path(), POLICY);
    let collector = spawn_collector(&broker, &policy, &dir.path().join("collector.log"), &[]);
    let sinks = rt.block_on(async {
        // The agents' sinks, each round's two records in flight together (one produce request
        // per sink), then acknowledged: the pattern that makes nisshi serve a later batch
        // first, and sometimes reject an in-order batch as out of sequence (a fatal error that
        // the sinks survive by replacing their producer).
        let sinks: Vec<ObservationSink> = ["a", "b"]
            .iter()
            .map(|d| {
                ObservationSink::start(SinkConfig::new(kafka(&broker), dir.path().join(d)))
                    .expect("sink")
            })
            .collect();
        for w in 0..WINDOWS {
            for (agent, sink) in ["agent-a", "agent-b"].iter().zip(&sinks) {
                sink.send(&observation(agent, "shop", w, 100 + w % 7))
                    .expect("send");
            }
            let (a, b) = tokio::join!(
                sinks[0].flush(Duration::from_secs(30)),
                sinks[1].flush(Duration::from_secs(30))
            );
            assert!(a && b, "{:?} {:?}", sinks[0].stats(), sinks[1].stats());
        }
        let stats: Vec<_> = sinks.iter().map(ObservationSink::stats).collect();
        for sink in sinks {
            sink.shutdown().await;
        }
        stats
    });
    // Every (agent, window) once, merged or (if its window had closed) late; duplicates from
    // a replaced producer are counted apart and cannot hide a loss.
    let unique = |p: &str| {
        metric(p, "shadowtap_collector_fleet_total{what=\"merged\"}").unwrap_or(0.0)
            + metric(p, "shadowtap_collector_fleet_total{what=\"late\"}").unwrap_or(0.0)
    };
    let expected = (2 * WINDOWS) as f64;
    let ok = wait_for(Duration::from_secs(60), || {
        http_get(collector.metrics_port, "/metrics").is_some_and(|p| unique(&p) == expected)
    });
    let page = http_get(collector.metrics_port, "/metrics").unwrap_or_default();
    let log = std::fs::read_to_string(dir.path().join("collector.log")).unwrap_or_default();
    assert!(ok, "{page}\ncollector log:\n{log}");
    assert_eq!(
        metric(&page, "shadowtap_collector_offset_gaps_total"),
        Some(0.0),
        "{page}"
    );
    eprintln!(
        "offset rewinds: {:?}; producer restarts: {:?}",
        metric(&page, "shadowtap_collector_offset_rewinds_total"),
        sinks
            .iter()
            .map(|s| s.producer_restarts)
            .collect::<Vec<_>>()
    );
}
