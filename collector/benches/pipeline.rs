//! Collector throughput and latency against a real broker (nisshi on 127.0.0.1), each next to
//! a baseline measured in the same run on the same broker:
//!
//! - throughput: observations/s through one collector (decode, merge, decide, publish events
//!   and state, commit) vs a bare consumer reading the same records;
//! - latency: wall time from a window closing at the agent (its observation handed to the
//!   spool) to the scale event it caused being acknowledged, vs a bare produce → consume round
//!   trip of one record.
//!
//! `cargo bench -p shadowtap-collector --bench pipeline` (env `BENCH_OBSERVATIONS`,
//! `BENCH_LATENCY_SECS` to change the sizes).

#[allow(dead_code)]
#[path = "../tests/common/broker.rs"]
mod broker;

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use broker::Broker;
use hdrhistogram::Histogram;
use rdkafka::{
    Message as _,
    consumer::{Consumer as _, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};
use shadowtap_collector::{Collector, CollectorConfig, CollectorStats};
use shadowtap_core::{
    FleetConfig, KafkaSettings, Observation, ObservationSink, SinkConfig, WindowCounts,
    decision::PolicySet, encode_observation,
};

/// The same allocator as the shipped binaries (see `agent/src/main.rs`), so that what is
/// measured is what runs.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POLICY: &str = r#"
[defaults]
capacity_per_instance = 100.0
target_utilisation = 1.0
provisioning_lead_time = "1s"
horizon = "1s"
min_instances = 1
max_instances = 100000000
scale_out_cooldown = "0s"
scale_in_cooldown = "1h"
scale_in_stabilisation = "1h"
"#;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn observation(resource: &str, start_ms: u64, step_ms: u64, requests: u64) -> Observation {
    let mut c = WindowCounts {
        requests,
        responses: requests,
        bytes_in: requests * 300,
        bytes_out: requests * 2000,
        ..WindowCounts::default()
    };
    for i in 0..50 {
        c.latency_us.record(500 + i * 97).expect("latency");
    }
    for e in 0..8 {
        c.endpoints
            .insert(format!("GET /api/v1/items/{e}"), requests / 8);
    }
    Observation {
        agent_id: "bench-agent".to_owned(),
        resource: resource.to_owned(),
        window_start_ms: start_ms,
        window_end_ms: start_ms + step_ms,
        seq: start_ms / step_ms,
        summary: c,
    }
}

fn settings(broker: &Broker, suffix: &str) -> KafkaSettings {
    KafkaSettings {
        observations_topic: format!("bench.observations.{suffix}"),
        scale_events_topic: format!("bench.scale-events.{suffix}"),
        ..KafkaSettings::new(broker.bootstrap())
    }
}

fn collector_config(
    kafka: KafkaSettings,
    suffix: &str,
    min_forecast_history: usize,
) -> CollectorConfig {
    let mut c = CollectorConfig::new(kafka, PolicySet::from_toml(POLICY).expect("policy"));
    c.group_id = format!("bench-collector-{suffix}");
    c.state_topic = format!("bench.state.{suffix}");
    c.dead_letter_topic = format!("bench.dlq.{suffix}");
    c.partitions = 4;
    c.fleet = FleetConfig {
        merge_wait: Duration::ZERO,
        idle_close: Duration::from_secs(2),
        min_forecast_history,
        ..FleetConfig::default()
    };
    c
}

async fn preload(kafka: &KafkaSettings, resources: u64, windows: u64) -> u64 {
    shadowtap_collector::topics::ensure_topics(
        kafka,
        &[(kafka.observations_topic.as_str(), false)],
        4,
    )
    .await
    .expect("topics");
    let producer: FutureProducer = kafka
        .producer_config(Duration::from_secs(30))
        .create()
        .expect("producer");
    let mut futures = Vec::new();
    for w in 0..windows {
        for r in 0..resources {
            let resource = format!("svc-{r}");
            let value = encode_observation(&observation(
                &resource,
                1_700_000_000_000 + w * 1000,
                1000,
                1000 * (w + 1),
            ));
            loop {
                match producer.send_result(
                    FutureRecord::to(&kafka.observations_topic)
                        .key(&resource)
                        .payload(&value),
                ) {
                    Ok(f) => {
                        futures.push(f);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }
    }
    for f in futures {
        f.await.expect("delivery").expect("delivered");
    }
    resources * windows
}

/// Bare consumer: records/s from the first record to the last.
async fn raw_consume(kafka: &KafkaSettings, n: u64) -> f64 {
    let consumer: StreamConsumer = kafka
        .client_config(&[
            ("group.id", "bench-raw"),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
        ])
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[kafka.observations_topic.as_str()])
        .expect("subscribe");
    let mut got = 0u64;
    let mut bytes = 0usize;
    let mut first: Option<Instant> = None;
    while got < n {
        let m = consumer.recv().await.expect("recv");
        first.get_or_insert_with(Instant::now);
        bytes += m.payload().map_or(0, <[u8]>::len);
        got += 1;
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    assert!(bytes > 0);
    n as f64 / secs
}

/// The collector: observations/s from the first consumed to all processed and committed.
async fn collector_throughput(config: CollectorConfig, n: u64) -> (f64, Arc<CollectorStats>) {
    let collector = Collector::new(config);
    let stats = collector.stats();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(collector.run(async {
        let _ = stop_rx.await;
    }));
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let consumed = stats.observations_consumed.load(Ordering::Relaxed);
        if consumed > 0 {
            first.get_or_insert_with(Instant::now);
        }
        if stats.observations_processed.load(Ordering::Relaxed) >= n
            && stats.commits.load(Ordering::Relaxed) > 0
        {
            break;
        }
        assert!(Instant::now() < deadline, "collector did not finish");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let _ = stop_tx.send(());
    task.await.expect("join").expect("collector run");
    (n as f64 / secs, stats)
}

fn pct(h: &Histogram<u64>, q: f64) -> u64 {
    h.value_at_quantile(q)
}

/// Produce → consume round trip of single records (the broker's own latency floor).
async fn raw_roundtrip(kafka: &KafkaSettings, samples: u64) -> Histogram<u64> {
    let topic = "bench.roundtrip";
    shadowtap_collector::topics::ensure_topics(kafka, &[(topic, false)], 1)
        .await
        .expect("topic");
    let producer: FutureProducer = kafka
        .producer_config(Duration::from_secs(10))
        .create()
        .expect("producer");
    let consumer: StreamConsumer = kafka
        .client_config(&[
            ("group.id", "bench-rt"),
            ("auto.offset.reset", "latest"),
            ("enable.auto.commit", "false"),
        ])
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    // Wait for the assignment before measuring.
    while consumer.assignment().map_or(0, |a| a.count()) == 0 {
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut h = Histogram::<u64>::new(3).expect("hist");
    for i in 0..samples {
        let t = Instant::now();
        let payload = i.to_le_bytes();
        producer
            .send(
                FutureRecord::to(topic).key("k").payload(&payload[..]),
                Duration::from_secs(5),
            )
            .await
            .expect("produce");
        loop {
            let m = consumer.recv().await.expect("recv");
            if m.payload() == Some(&payload[..]) {
                break;
            }
        }
        h.record(t.elapsed().as_millis() as u64).expect("record");
    }
    h
}

/// Live: windows closing on the wall clock, one agent, `resources` resources per window.
async fn live_latency(broker: &Broker, secs: u64, resources: u64) -> (Histogram<u64>, u64) {
    let kafka = settings(broker, "live");
    let config = collector_config(kafka.clone(), "live", 1_000_000);
    shadowtap_collector::topics::ensure_topics(
        &kafka,
        &[
            (kafka.observations_topic.as_str(), false),
            (kafka.scale_events_topic.as_str(), false),
            (config.state_topic.as_str(), true),
            (config.dead_letter_topic.as_str(), false),
        ],
        4,
    )
    .await
    .expect("topics");
    let collector = Collector::new(config);
    let stats = collector.stats();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(collector.run(async {
        let _ = stop_rx.await;
    }));
    let spool = tempfile::tempdir().expect("tempdir");
    let sink =
        ObservationSink::start(SinkConfig::new(kafka, spool.path().join("spool"))).expect("sink");
    // Let the collector join its group first.
    while stats.partitions_owned.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let step = 100u64;
    let mut window = 0u64;
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let now = now_ms();
        let start = now - step;
        for r in 0..resources {
            sink.send(&observation(
                &format!("live-{r}"),
                start,
                step,
                1000 * (window + 1),
            ))
            .expect("send");
        }
        window += 1;
        tokio::time::sleep(Duration::from_millis(step)).await;
    }
    assert!(sink.flush(Duration::from_secs(30)).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sink.shutdown().await;
    let _ = stop_tx.send(());
    task.await.expect("join").expect("collector");
    (
        stats.event_latency().expect("scale events were published"),
        window * resources,
    )
}

fn main() {
    let n_obs = env_or("BENCH_OBSERVATIONS", 20_000);
    let latency_secs = env_or("BENCH_LATENCY_SECS", 10);
    let resources = 200u64;
    let windows = n_obs.div_ceil(resources);
    let broker = Broker::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let plain = settings(&broker, "plain");
        let full = settings(&broker, "full");
        let n = preload(&plain, resources, windows).await;
        preload(&full, resources, windows).await;
        println!("collector pipeline bench: {n} observations ({resources} resources x {windows} windows), nisshi on 127.0.0.1");
        let raw = raw_consume(&plain, n).await;
        let (merge_only, _) = collector_throughput(collector_config(plain.clone(), "plain", 1_000_000), n).await;
        let (with_forecast, stats) = collector_throughput(collector_config(full.clone(), "full", 8), n).await;
        println!("throughput (observations/s):");
        println!("  baseline: bare consumer, same records          {raw:>10.0}");
        println!("  collector, decisions on observed demand        {merge_only:>10.0}   ({:.3}x baseline)", merge_only / raw);
        println!(
            "  collector, + own forecaster (augurs) per window {with_forecast:>10.0}   ({:.3}x baseline; {} scale events, {} snapshots)",
            with_forecast / raw,
            stats.scale_events_published.load(Ordering::Relaxed),
            stats.snapshots_written.load(Ordering::Relaxed)
        );

        let rt_hist = raw_roundtrip(&plain, 200).await;
        let (lat, sent) = live_latency(&broker, latency_secs, 20).await;
        println!("latency (ms):                                      p50    p99    max  samples");
        println!(
            "  baseline: produce -> consume one record        {:>6} {:>6} {:>6} {:>8}",
            pct(&rt_hist, 0.5),
            pct(&rt_hist, 0.99),
            rt_hist.max(),
            rt_hist.len()
        );
        println!(
            "  window closed -> scale event acknowledged      {:>6} {:>6} {:>6} {:>8}   (p50 {:.2}x, p99 {:.2}x baseline; {sent} observations sent)",
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            lat.max(),
            lat.len(),
            pct(&lat, 0.5) as f64 / pct(&rt_hist, 0.5).max(1) as f64,
            pct(&lat, 0.99) as f64 / pct(&rt_hist, 0.99).max(1) as f64
        );
    });
}
