//! Issue 15: the collector's batches grew (what the consumer holds, up to 5,000 records, no
//! wait) and its page is rendered less often. A backlog far larger than one batch, with the
//! collector killed (SIGKILL) mid-way, checks what must not change: an offset is committed
//! only after the scale events of every record below it are acknowledged, and across the
//! restart no window's event is lost and none is published for a window that was not sent.

#![allow(
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation,
    clippy::too_many_lines
)] // offsets and counts are small and non-negative; one scenario, top to bottom

mod common;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use common::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use shadowtap_core::{decode_observation, encode_observation};

const RESOURCES: u64 = 12;
const WINDOWS: u64 = 1000;
const PARTITIONS: i32 = 2;

fn committed(broker: &Broker) -> Vec<Option<i64>> {
    (0..PARTITIONS)
        .map(|p| {
            shadowtap_collector::state::committed_offset(
                &kafka(broker),
                "shadowtap-collector",
                p,
                Duration::from_secs(10),
            )
            .expect("committed offset")
        })
        .collect()
}

#[test]
fn large_batches_commit_only_acknowledged_events_and_lose_none_across_a_kill() {
    let started = Instant::now();
    let resources: Vec<String> = (0..RESOURCES).map(|i| format!("svc-{i}")).collect();
    assert_staircase_reference(&resources, 3);
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start();
    let rt = runtime();
    create_topics(&rt, &broker, PARTITIONS);
    let policy = write_policy(dir.path(), STAIRCASE_POLICY);

    // The whole backlog first: 12,000 records, several full batches.
    rt.block_on(async {
        let producer: FutureProducer = kafka(&broker)
            .producer_config(Duration::from_secs(30))
            .create()
            .expect("producer");
        let values: Vec<(&String, Vec<u8>)> = (0..WINDOWS)
            .flat_map(|w| {
                resources.iter().map(move |r| {
                    (
                        r,
                        encode_observation(&observation("agent-1", r, w, staircase(w))),
                    )
                })
            })
            .collect();
        let mut acks = Vec::new();
        for (r, value) in &values {
            let record = FutureRecord::to("shadowtap.observations")
                .key(r.as_str())
                .payload(value);
            acks.push(producer.send(record, Duration::from_secs(30)));
        }
        for a in acks {
            a.await.expect("produced");
        }
    });
    let total = RESOURCES * WINDOWS;

    let mut first = spawn_collector(&broker, &policy, &dir.path().join("a.log"), DELIVERY_ARGS);
    let commits = || {
        http_get(first.metrics_port, "/metrics")
            .and_then(|p| metric(&p, "shadowtap_collector_commits_total"))
            .unwrap_or(0.0)
    };
    assert!(
        wait_for(Duration::from_secs(60), || commits() >= 1.0),
        "no commit"
    );
    first.guard.kill();
    let at_kill = committed(&broker);
    let below: u64 = at_kill.iter().map(|o| o.unwrap_or(0) as u64).sum();
    assert!(below > 0, "nothing committed before the kill: {at_kill:?}");

    // Every record below the committed offsets has its event on the topic already.
    let observations = read_topic(
        &broker,
        "shadowtap.observations",
        Duration::from_secs(30),
        Duration::from_millis(200),
        |r| r.len() as u64 >= total,
    );
    let below_commit: BTreeSet<(String, u64)> = observations
        .iter()
        .filter(|r| at_kill[r.partition as usize].is_some_and(|c| r.offset < c))
        .map(|r| {
            let o = decode_observation(Some(&r.key), &r.value).expect("observation");
            (o.resource, (o.window_start_ms - T0_MS) / STEP_MS)
        })
        .collect();
    assert_eq!(
        below_commit.len() as u64,
        below,
        "records below the commits"
    );
    // A resource's latest window below the commit may still be open: it is in the state
    // snapshot, and whoever owns the partition next closes it. Every earlier one was closed
    // (its agent moved on), so its event must have been acknowledged before the commit.
    let latest: std::collections::BTreeMap<&String, u64> =
        below_commit
            .iter()
            .fold(std::collections::BTreeMap::default(), |mut m, (r, w)| {
                let e = m.entry(r).or_insert(*w);
                *e = (*e).max(*w);
                m
            });
    let must_have: BTreeSet<(String, u64)> = below_commit
        .iter()
        .filter(|(r, w)| latest.get(r).is_some_and(|l| w < l))
        .cloned()
        .collect();
    let events = read_topic(
        &broker,
        "shadowtap.scale-events",
        Duration::from_secs(10),
        Duration::from_millis(500),
        |_| false,
    );
    let published: BTreeSet<(String, u64)> = events_by_id(&events).into_values().collect();
    let missing: Vec<_> = must_have.difference(&published).take(5).collect();
    assert!(
        missing.is_empty(),
        "committed past windows whose events were not acknowledged, e.g. {missing:?} \
         (committed {at_kill:?}, {} events)",
        published.len()
    );

    // A successor finishes: every window has exactly its one event id, no other.
    let second = spawn_collector(&broker, &policy, &dir.path().join("b.log"), DELIVERY_ARGS);
    let events = read_topic(
        &broker,
        "shadowtap.scale-events",
        Duration::from_secs(120),
        Duration::from_millis(500),
        |r| events_by_id(r).len() as u64 >= total,
    );
    let by_id = events_by_id(&events);
    let expected: BTreeSet<(String, u64)> = resources
        .iter()
        .flat_map(|r| (0..WINDOWS).map(move |w| (r.clone(), w)))
        .collect();
    let got: BTreeSet<(String, u64)> = by_id.values().cloned().collect();
    let log = std::fs::read_to_string(dir.path().join("b.log")).unwrap_or_default();
    assert_eq!(by_id.len() as u64, total, "distinct events\n{log}");
    assert_eq!(got, expected, "events for exactly the windows sent");
    assert!(
        wait_for(Duration::from_secs(30), || committed(&broker)
            .iter()
            .map(|o| o.unwrap_or(0) as u64)
            .sum::<u64>()
            == total),
        "successor did not commit everything: {:?}",
        committed(&broker)
    );
    drop(second);
    eprintln!(
        "batching: {} of {total} records committed at the kill, {} event records for {total} windows",
        below,
        events.len()
    );
    assert!(
        started.elapsed() < Duration::from_secs(240),
        "took {:?}",
        started.elapsed()
    );
}
