//! Issue 4, test 2: the broker is unreachable (SIGSTOP) for over twenty seconds mid-run, then
//! back. Every observation reaches the topic, every window's scale event reaches the
//! provisioner; duplicates only ever repeat an id.
#![allow(clippy::too_many_lines)] // long scenario tests; metric values are small integers

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::*;
use shadowtap_core::{ObservationSink, SinkConfig, decode_observation};

const WINDOWS: u64 = 36;
const OUTAGE: Duration = Duration::from_secs(22);

#[test]
fn nothing_is_lost_across_a_broker_outage() {
    let started = Instant::now();
    let resources: Vec<String> = vec!["checkout".into(), "search".into()];
    assert_staircase_reference(&resources, WINDOWS);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut broker = Broker::start();
    let rt = runtime();
    create_topics(&rt, &broker, 2);
    let policy = write_policy(dir.path(), STAIRCASE_POLICY);
    let collector = spawn_collector(
        &broker,
        &policy,
        &dir.path().join("collector.log"),
        DELIVERY_ARGS,
    );
    let (_provisioner, events_rx) = spawn_provisioner(&broker, "prov-outage");

    let (max_depth_during_outage, stats) = rt.block_on(async {
        let mut cfg = SinkConfig::new(kafka(&broker), dir.path().join("spool"));
        cfg.delivery_timeout = Duration::from_secs(3);
        let sink = ObservationSink::start(cfg).expect("sink");
        let mut max_depth = 0;
        let mut paused_at: Option<Instant> = None;
        for w in 0..WINDOWS {
            for r in &resources {
                sink.send(&observation("agent-1", r, w, staircase(w)))
                    .expect("spool");
            }
            if w == 6 {
                broker.pause();
                paused_at = Some(Instant::now());
            }
            if let Some(t) = paused_at {
                max_depth = max_depth.max(sink.stats().spool.depth_records);
                if t.elapsed() >= OUTAGE {
                    broker.resume();
                    paused_at = None;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if let Some(t) = paused_at {
            // Keep the broker away for the whole outage even when the agent has sent all.
            while t.elapsed() < OUTAGE {
                max_depth = max_depth.max(sink.stats().spool.depth_records);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            broker.resume();
        }
        assert!(
            sink.flush(Duration::from_secs(30)).await,
            "spool did not drain: {:?}",
            sink.stats()
        );
        let stats = sink.stats();
        sink.shutdown().await;
        (max_depth, stats)
    });
    assert!(max_depth_during_outage > 0, "the spool was never used");
    assert!(
        stats.delivery_errors > 0,
        "no delivery failed during the outage: {stats:?}"
    );
    assert_eq!(stats.spool.dropped_records, 0);
    assert_eq!(stats.spool.depth_records, 0);
    let total = WINDOWS * resources.len() as u64;

    // Every observation is on the topic (a re-sent record repeats the same observation id).
    let obs = read_topic(
        &broker,
        "shadowtap.observations",
        Duration::from_secs(20),
        Duration::from_millis(500),
        |r| r.len() as u64 >= total,
    );
    let ids: BTreeSet<String> = obs
        .iter()
        .map(|r| {
            decode_observation(Some(&r.key), &r.value)
                .expect("valid observation")
                .id()
        })
        .collect();
    assert_eq!(ids.len() as u64, total, "observations missing");

    // Every window's scale event reaches the provisioner; none twice there.
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while (seen.len() as u64) < total && Instant::now() < deadline {
        if let Ok(v) = events_rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(v["id"].as_str().expect("id").to_owned());
        }
    }
    let distinct: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(
        distinct.len(),
        seen.len(),
        "the provisioner handled an id twice"
    );
    let records = read_topic(
        &broker,
        "shadowtap.scale-events",
        Duration::from_secs(10),
        Duration::from_millis(500),
        |r| r.len() as u64 >= total,
    );
    let by_id = events_by_id(&records);
    let log = std::fs::read_to_string(dir.path().join("collector.log")).unwrap_or_default();
    assert_eq!(
        by_id.len() as u64,
        total,
        "scale events missing; collector log:\n{log}"
    );
    for r in &resources {
        for w in 0..WINDOWS {
            assert!(
                by_id.values().any(|v| v == &(r.clone(), w)),
                "no event for {r} window {w}"
            );
        }
    }
    assert_eq!(
        distinct.len() as u64,
        total,
        "provisioner saw {} of {total}",
        distinct.len()
    );
    eprintln!(
        "outage: {} observation records for {total} observations, {} event records for {total} events, spool peak {max_depth_during_outage}, {} delivery errors",
        obs.len(),
        records.len(),
        stats.delivery_errors
    );
    drop(collector);
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
}
