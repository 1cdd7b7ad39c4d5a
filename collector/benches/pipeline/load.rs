//! The bench's load and baselines: observations, preloading, a bare consumer, single-record
//! round trips, and the live latency run (windows closing on the wall clock).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rdkafka::{
    Message as _,
    consumer::{Consumer as _, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};
use shadowtap_agent::windows::LogHistogram;
use shadowtap_core::{
    KafkaSettings, Observation, ObservationSink, SinkConfig, WindowCounts, encode_observation,
};

use crate::{
    common::Broker,
    procs::{self, RunTopics},
};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An observation shaped like an agent's: 50 latency samples, 8 endpoints. Its latency
/// histogram is exported the agent's way (`LogHistogram::to_hdr`: 2 significant digits, sized
/// to its largest value); a 3-digit histogram has eight times the buckets an agent sends, and
/// decoding, merging and reading them dominated the collector's work per observation.
pub fn observation(resource: &str, start_ms: u64, step_ms: u64, requests: u64) -> Observation {
    agent_observation("bench-agent", resource, start_ms, step_ms, requests)
}

/// [`observation`] as agent `agent_id` made it.
pub fn agent_observation(
    agent_id: &str,
    resource: &str,
    start_ms: u64,
    step_ms: u64,
    requests: u64,
) -> Observation {
    let mut c = WindowCounts {
        requests,
        responses: requests,
        bytes_in: requests * 300,
        bytes_out: requests * 2000,
        ..WindowCounts::default()
    };
    let mut latency = LogHistogram::new();
    for i in 0..50 {
        latency.record(500 + i * 97);
    }
    c.latency_us = latency.to_hdr();
    for e in 0..8 {
        c.endpoints
            .insert(format!("GET /api/v1/items/{e}"), requests / 8);
    }
    Observation {
        agent_id: agent_id.to_owned(),
        resource: resource.to_owned(),
        window_start_ms: start_ms,
        window_end_ms: start_ms + step_ms,
        seq: start_ms / step_ms,
        summary: c,
    }
}

fn settings(broker: &Broker, topics: &RunTopics) -> KafkaSettings {
    KafkaSettings {
        observations_topic: topics.observations.clone(),
        scale_events_topic: topics.scale_events.clone(),
        ..KafkaSettings::new(broker.bootstrap())
    }
}

/// The shape of a throughput run's records.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub resources: u64,
    pub windows: u64,
    /// Agents reporting each resource's every window (a window closes on the last one).
    pub agents: u64,
}

impl Workload {
    pub fn observations(&self) -> u64 {
        self.resources * self.windows * self.agents
    }
}

/// Produce the workload's observations (1 s windows, demand rising every window) onto a
/// fresh 4-partition topic, window by window; returns how many. The windows are the last
/// `windows` seconds before the call: the backlog a collector finds after being down that
/// long.
pub async fn preload(broker: &Broker, topics: &RunTopics, load: Workload) -> u64 {
    let Workload {
        resources,
        windows,
        agents,
    } = load;
    let kafka = settings(broker, topics);
    shadowtap_collector::topics::ensure_topics(
        &kafka,
        &[(topics.observations.as_str(), false)],
        crate::PARTITIONS as i32,
    )
    .await
    .expect("topics");
    let producer: FutureProducer = kafka
        .producer_config(Duration::from_secs(30))
        .create()
        .expect("producer");
    let mut futures = Vec::new();
    let agent_ids: Vec<String> = (0..agents).map(|a| format!("agent-{a}")).collect();
    let first_ms = (now_ms() / 1000).saturating_sub(windows) * 1000;
    for w in 0..windows {
        for (r, (a, agent)) in
            (0..resources).flat_map(|r| agent_ids.iter().enumerate().map(move |a| (r, a)))
        {
            let resource = format!("svc-{r}");
            let value = encode_observation(&agent_observation(
                agent,
                &resource,
                first_ms + w * 1000,
                1000,
                crate::demand::requests(r, a as u64, w),
            ));
            loop {
                match producer.send_result(
                    FutureRecord::to(&topics.observations)
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
    load.observations()
}

/// Bare consumer with the collector's fetch settings: records/s from the first to the last.
pub async fn raw_consume(broker: &Broker, topics: &RunTopics, n: u64) -> f64 {
    let consumer: StreamConsumer = settings(broker, topics)
        .consumer_config(&[
            ("group.id", "bench-raw"),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
        ])
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[topics.observations.as_str()])
        .expect("subscribe");
    let mut got = 0u64;
    let mut bytes = 0usize;
    let mut first: Option<(Instant, u64)> = None;
    while got < n {
        let m = consumer.recv().await.expect("recv");
        bytes += m.payload().map_or(0, <[u8]>::len);
        got += 1;
        first.get_or_insert_with(|| (Instant::now(), got));
    }
    assert!(bytes > 0);
    let (t0, n0) = first.expect("consumed");
    (n - n0) as f64 / t0.elapsed().as_secs_f64()
}

/// Produce → consume round trips of single records (µs), with librdkafka's consumer defaults
/// plus `fetch`.
pub async fn roundtrip(
    broker: &Broker,
    name: &str,
    fetch: &[(&str, &str)],
    samples: u64,
) -> Histogram<u64> {
    let kafka = KafkaSettings::new(broker.bootstrap());
    let topic = format!("bench.roundtrip.{name}");
    shadowtap_collector::topics::ensure_topics(&kafka, &[(topic.as_str(), false)], 1)
        .await
        .expect("topic");
    let producer: FutureProducer = kafka
        .producer_config(Duration::from_secs(10))
        .create()
        .expect("producer");
    let group = format!("bench-rt-{name}");
    let mut config: Vec<(&str, &str)> = vec![
        ("group.id", &group),
        ("auto.offset.reset", "latest"),
        ("enable.auto.commit", "false"),
    ];
    config.extend_from_slice(fetch);
    let consumer: StreamConsumer = kafka.client_config(&config).create().expect("consumer");
    consumer.subscribe(&[topic.as_str()]).expect("subscribe");
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
                FutureRecord::to(&topic).key("k").payload(&payload[..]),
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
        h.record(t.elapsed().as_micros() as u64).expect("record");
        // Records arrive at random points of the consumer's fetch cycle, as windows do.
        tokio::time::sleep(Duration::from_millis(u64::from(i as u32 % 7) + 1)).await;
    }
    h
}

/// The live latency run's result (ms, from the collector's own histogram).
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub events: u64,
    pub sent: u64,
    /// Per stage of the collector's breakdown: (stage, p50, p99, max).
    pub stages: Vec<(&'static str, f64, f64, f64)>,
}

/// One collector process; one agent's sink sends `resources` observations per 100 ms window
/// closing on the wall clock, for `secs`.
pub fn live_latency(
    rt: &tokio::runtime::Runtime,
    broker: &Broker,
    dir: &std::path::Path,
    policy: &str,
    secs: u64,
    resources: u64,
    min_forecast_history: usize,
) -> Latency {
    let name = format!("live-{min_forecast_history}");
    let topics = RunTopics::new(&name);
    let policy = crate::common::write_policy(dir, policy);
    let collector = procs::spawn(
        broker,
        &topics,
        &policy,
        min_forecast_history,
        &[],
        &dir.join(format!("collector-{name}.log")),
    );
    collector.wait_ready(Duration::from_secs(60));
    let kafka = settings(broker, &topics);
    let sent = rt.block_on(async {
        let sink =
            ObservationSink::start(SinkConfig::new(kafka, dir.join(format!("spool-{name}"))))
                .expect("sink");
        let step = 100u64;
        let mut window = 0u64;
        // An agent's first window closes one window length (10 s by default) after it starts;
        // until then its producer connects and obtains its idempotent producer id. Without
        // this wait the first windows measure that start-up (about 1 s), not the pipeline.
        let warmup = std::env::var("BENCH_AGENT_WARMUP_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        tokio::time::sleep(Duration::from_millis(warmup)).await;
        let end = Instant::now() + Duration::from_secs(secs);
        let mut next = tokio::time::Instant::now();
        while Instant::now() < end {
            let now = now_ms();
            for r in 0..resources {
                sink.send(&observation(
                    &format!("live-{r}"),
                    now - step,
                    step,
                    crate::demand::requests(r, 0, window),
                ))
                .expect("send");
            }
            window += 1;
            next += Duration::from_millis(step);
            tokio::time::sleep_until(next).await;
        }
        assert!(sink.flush(Duration::from_secs(30)).await);
        sink.shutdown().await;
        window * resources
    });
    // Wait until every event the collector published is in its histogram.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut events = 0;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let s = collector.scrape().expect("collector page");
        // Every acknowledged event is one sample of the latency histogram.
        let count = s.scale_events;
        if s.processed >= sent && count == events {
            break;
        }
        events = count;
        assert!(Instant::now() < deadline, "collector did not finish: {s:?}");
    }
    let q = |q: &str| collector.latency_quantile(q).expect("latency quantile");
    let stages = shadowtap_collector::stats::EVENT_STAGES
        .iter()
        .map(|stage| {
            let q = |q: &str| collector.stage_quantile(stage, q).unwrap_or(f64::NAN);
            (*stage, q("0.5"), q("0.99"), q("1"))
        })
        .collect();
    Latency {
        stages,
        p50: q("0.5"),
        p99: q("0.99"),
        p999: q("0.999"),
        max: q("1"),
        events,
        sent,
    }
}
