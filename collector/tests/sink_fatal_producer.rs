//! The agent's observation sink survives an idempotent producer's fatal error (nisshi 0.8.1
//! sometimes rejects an in-order batch with `OutOfOrderSequenceNumber`, after which librdkafka
//! sends nothing more on that producer): it replaces the producer and delivers what is spooled.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::*;
use shadowtap_core::{ObservationSink, SinkConfig, decode_observation};

#[test]
fn a_fatally_failed_producer_is_replaced_and_nothing_spooled_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start();
    let rt = runtime();
    create_topics(&rt, &broker, 2);
    let stats = rt.block_on(async {
        let sink =
            ObservationSink::start(SinkConfig::new(kafka(&broker), dir.path().join("spool")))
                .expect("sink");
        for w in 0..5 {
            sink.send(&observation("agent-f", "shop", w, 100 + w))
                .expect("send");
        }
        assert!(sink.flush(Duration::from_secs(20)).await, "first half");
        assert_eq!(sink.stats().producer_restarts, 0);
        sink.inject_fatal_error();
        for w in 5..10 {
            sink.send(&observation("agent-f", "shop", w, 100 + w))
                .expect("send");
        }
        assert!(
            sink.flush(Duration::from_secs(30)).await,
            "the spool drains through a replacement producer: {:?}",
            sink.stats()
        );
        let stats = sink.stats();
        sink.shutdown().await;
        stats
    });
    assert_eq!(stats.producer_restarts, 1, "{stats:?}");
    assert_eq!(stats.delivered, 10, "{stats:?}");
    let windows: BTreeSet<u64> = read_topic(
        &broker,
        "shadowtap.observations",
        Duration::from_secs(20),
        Duration::from_millis(500),
        |r| r.len() >= 10,
    )
    .iter()
    .map(|r| {
        decode_observation(Some(&r.key), &r.value)
            .expect("observation")
            .seq
    })
    .collect();
    assert_eq!(windows, (0..10).collect::<BTreeSet<u64>>());
}
