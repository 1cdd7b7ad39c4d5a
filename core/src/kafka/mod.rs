//! Agent → Kafka: observations go through the on-disk [`Spool`] to an idempotent producer.
//!
//! A pump task reads the spool head in batches, produces with `enable.idempotence=true`,
//! `acks=all` and compression, and advances the spool only past records Kafka acknowledged. When
//! the broker is unreachable deliveries time out (`delivery_timeout`), the records stay spooled
//! and the pump retries with backoff; in order, because the spool is a FIFO and the idempotent
//! producer keeps per-partition order. A record re-sent after a timed-out attempt that did land
//! is a duplicate with the same observation id, which the collector drops.

pub mod spool;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use rdkafka::{
    ClientConfig,
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
};
use tokio::sync::Notify;

use self::spool::{Spool, SpoolError, SpoolStats};
use crate::{
    metrics::Exposition,
    wire::{OBSERVATION_SCHEMA_HEADER, Observation, SCHEMA_HEADER_NAME, encode_observation},
};

/// Default topic of observations.
pub const OBSERVATIONS_TOPIC: &str = "shadowtap.observations";
/// Default topic of scale events.
pub const SCALE_EVENTS_TOPIC: &str = "shadowtap.scale-events";

/// Fetch settings of the collector's consumers (see [`KafkaSettings::consumer_config`]).
pub const CONSUMER_FETCH: &[(&str, &str)] =
    &[("fetch.wait.max.ms", "10"), ("fetch.min.bytes", "1")];

/// Where Kafka is and how to talk to it.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub observations_topic: String,
    pub scale_events_topic: String,
    /// Passed to librdkafka verbatim after the defaults, so they can override them: e.g.
    /// `security.protocol=SASL_SSL`, `sasl.mechanism=SCRAM-SHA-512`, `sasl.username=…`,
    /// `ssl.ca.location=…`.
    pub properties: Vec<(String, String)>,
}

impl KafkaSettings {
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            observations_topic: OBSERVATIONS_TOPIC.to_owned(),
            scale_events_topic: SCALE_EVENTS_TOPIC.to_owned(),
            properties: Vec::new(),
        }
    }

    /// A client config with the brokers, `defaults`, then the pass-through properties.
    pub fn client_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Parse one `key=value` pass-through property.
    pub fn parse_property(text: &str) -> Result<(String, String), String> {
        match text.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => Err(format!("expected key=value, got `{text}`")),
        }
    }

    /// Settings of a consumer that sees a record soon after it lands: librdkafka's default
    /// `fetch.wait.max.ms` (500 ms) is how long the broker may hold an empty fetch, and a
    /// broker that does not answer a held fetch when data arrives (nisshi) makes every record
    /// wait for it, 250 ms on average. `defaults` come after these (so they win), then the
    /// pass-through properties.
    pub fn consumer_config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut all: Vec<(&str, &str)> = CONSUMER_FETCH.to_vec();
        all.extend_from_slice(defaults);
        self.client_config(&all)
    }

    /// Settings of an idempotent, acks=all, compressing producer.
    pub fn producer_config(&self, delivery_timeout: Duration) -> ClientConfig {
        let timeout = delivery_timeout.as_millis().max(1).to_string();
        self.client_config(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("compression.type", "lz4"),
            ("linger.ms", "5"),
            ("message.timeout.ms", &timeout),
        ])
    }
}

/// Sink failures.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("spool lock poisoned")]
    Poisoned,
}

/// Settings of the observation sink.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub kafka: KafkaSettings,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// How long a delivery may take before the record counts as failed and is retried.
    pub delivery_timeout: Duration,
    /// Records produced per pump round.
    pub batch: usize,
}

impl SinkConfig {
    pub fn new(kafka: KafkaSettings, spool_dir: PathBuf) -> Self {
        Self {
            kafka,
            spool_dir,
            spool_max_bytes: 256 << 20,
            delivery_timeout: Duration::from_secs(10),
            batch: 1000,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    delivery_errors: AtomicU64,
    producer_restarts: AtomicU64,
    /// Test hook: make the pump's producer fail fatally at its next round.
    inject_fatal: AtomicBool,
    retries: AtomicU64,
    broker_up: AtomicBool,
}

/// Counters and gauges of the sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Observations accepted into the spool.
    pub accepted: u64,
    /// Observations Kafka acknowledged.
    pub delivered: u64,
    /// Failed delivery attempts (each is retried).
    pub delivery_errors: u64,
    /// Producers replaced after a fatal error.
    pub producer_restarts: u64,
    /// Pump rounds that had to retry.
    pub retries: u64,
    /// The last round delivered everything it tried.
    pub broker_up: bool,
    pub spool: SpoolStats,
}

/// The agent's producer of observations.
pub struct ObservationSink {
    spool: Arc<Mutex<Spool>>,
    notify: Arc<Notify>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ObservationSink {
    /// Open the spool and start the pump (needs a tokio runtime).
    pub fn start(config: SinkConfig) -> Result<Self, SinkError> {
        let spool = Arc::new(Mutex::new(Spool::open(
            &config.spool_dir,
            config.spool_max_bytes,
        )?));
        let producer_config = config.kafka.producer_config(config.delivery_timeout);
        let producer: FutureProducer = producer_config.create()?;
        let notify = Arc::new(Notify::new());
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(pump(
            producer,
            producer_config,
            config,
            spool.clone(),
            notify.clone(),
            counters.clone(),
            stop.clone(),
        ));
        Ok(Self {
            spool,
            notify,
            counters,
            stop,
            task,
        })
    }

    /// Queue an observation (durably, in the spool).
    pub fn send(&self, obs: &Observation) -> Result<(), SinkError> {
        let value = encode_observation(obs);
        self.spool
            .lock()
            .map_err(|_| SinkError::Poisoned)?
            .append(obs.resource.as_bytes(), &value)?;
        self.notify.notify_one();
        Ok(())
    }

    pub fn stats(&self) -> SinkStats {
        let spool = self.spool.lock().map(|s| s.stats()).unwrap_or_default();
        SinkStats {
            accepted: spool.appended,
            delivered: self.counters.delivered.load(Ordering::Relaxed),
            delivery_errors: self.counters.delivery_errors.load(Ordering::Relaxed),
            producer_restarts: self.counters.producer_restarts.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            broker_up: self.counters.broker_up.load(Ordering::Relaxed),
            spool,
        }
    }

    /// Test hook: the producer fails fatally before its next delivery round, as an idempotent
    /// producer does when the broker rejects its sequence numbers (librdkafka's
    /// `rd_kafka_test_fatal_error`).
    #[doc(hidden)]
    pub fn inject_fatal_error(&self) {
        self.counters.inject_fatal.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Wait until the spool is empty or `timeout` passes; true when empty.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.spool.lock().is_ok_and(|s| s.is_empty()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop the pump (what is still spooled stays on disk for the next start).
    pub async fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.notify.notify_one();
        let _ = self.task.await;
        if let Ok(mut s) = self.spool.lock() {
            let _ = s.sync();
        }
    }

    /// Add the sink's metrics to a Prometheus page.
    pub fn render_metrics(&self, page: &mut Exposition) {
        let s = self.stats();
        let counter = |page: &mut Exposition, name: &str, help: &str, v: u64| {
            page.family(name, "counter", help, &[(&[], v as f64)]);
        };
        counter(
            page,
            "shadowtap_sink_accepted_total",
            "Observations accepted into the spool.",
            s.accepted,
        );
        counter(
            page,
            "shadowtap_sink_delivered_total",
            "Observations acknowledged by Kafka.",
            s.delivered,
        );
        counter(
            page,
            "shadowtap_sink_delivery_errors_total",
            "Failed delivery attempts (retried).",
            s.delivery_errors,
        );
        counter(
            page,
            "shadowtap_sink_producer_restarts_total",
            "Kafka producers replaced after a fatal error (their records were sent again).",
            s.producer_restarts,
        );
        counter(
            page,
            "shadowtap_sink_spool_dropped_total",
            "Observations dropped because the spool was full.",
            s.spool.dropped_records,
        );
        counter(
            page,
            "shadowtap_sink_spool_corrupt_total",
            "Torn spool records found at start.",
            s.spool.corrupt_records,
        );
        page.family(
            "shadowtap_sink_spool_depth",
            "gauge",
            "Observations waiting in the spool.",
            &[(&[], s.spool.depth_records as f64)],
        );
        page.family(
            "shadowtap_sink_spool_bytes",
            "gauge",
            "Bytes waiting in the spool.",
            &[(&[], s.spool.depth_bytes as f64)],
        );
        page.family(
            "shadowtap_sink_broker_up",
            "gauge",
            "1 when the last delivery round succeeded.",
            &[(&[], f64::from(u8::from(s.broker_up)))],
        );
    }
}

/// The fatal error `producer` has hit, if any. A producer in that state sends nothing more;
/// librdkafka's guidance is to replace it (the new one gets a new producer id, so its sequence
/// numbers start afresh). Idempotent producers hit one when the broker rejects a sequence
/// number: nisshi 0.8.1 sometimes rejects an in-order batch with `OutOfOrderSequenceNumber`
/// while two producers append to one partition.
pub fn fatal_error(producer: &FutureProducer) -> Option<String> {
    producer
        .client()
        .fatal_error()
        .map(|(code, reason)| format!("{code:?}: {reason}"))
}

/// Replace `producer` with a new one from `config` if it has hit a fatal error; returns the
/// error when it did (the replacement may itself fail to build: then the old one stays and the
/// next round tries again).
pub fn replace_if_fatal(producer: &mut FutureProducer, config: &ClientConfig) -> Option<String> {
    let reason = fatal_error(producer)?;
    match config.create::<FutureProducer>() {
        Ok(fresh) => {
            tracing::error!(error = %reason, "Kafka producer failed fatally; replaced it");
            *producer = fresh;
        }
        Err(e) => {
            tracing::error!(error = %reason, replacement = %e, "Kafka producer failed fatally and could not be replaced yet");
        }
    }
    Some(reason)
}

/// Test hook: put `producer` in the fatal state (librdkafka's `rd_kafka_test_fatal_error`).
#[doc(hidden)]
pub fn inject_fatal_error(producer: &FutureProducer) {
    let reason = c"injected by a test";
    // SAFETY: the client pointer is live for the producer's lifetime and the reason is a
    // NUL-terminated string; librdkafka copies it.
    unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            producer.client().native_ptr(),
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            reason.as_ptr(),
        );
    }
}

async fn pump(
    mut producer: FutureProducer,
    producer_config: ClientConfig,
    config: SinkConfig,
    spool: Arc<Mutex<Spool>>,
    notify: Arc<Notify>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let topic = config.kafka.observations_topic.clone();
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Ordering::Relaxed) {
        if counters.inject_fatal.swap(false, Ordering::Relaxed) {
            inject_fatal_error(&producer);
        }
        let batch = match spool.lock() {
            Ok(s) => s.peek(config.batch),
            Err(_) => return,
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "spool read failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                () = notify.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        }
        let mut futures = Vec::with_capacity(batch.len());
        for rec in &batch {
            let headers = OwnedHeaders::new().insert(Header {
                key: SCHEMA_HEADER_NAME,
                value: Some(OBSERVATION_SCHEMA_HEADER),
            });
            let record = FutureRecord::to(&topic)
                .key(&rec.key)
                .payload(&rec.value)
                .headers(headers);
            match producer.send_result(record) {
                Ok(f) => futures.push(f),
                // Local queue full: deliver what is queued, the rest goes next round.
                Err((e, _)) => {
                    tracing::debug!(error = %e, "producer queue full");
                    break;
                }
            }
        }
        let mut delivered = 0usize;
        let mut failed = 0u64;
        for f in futures {
            match f.await {
                Ok(Ok(_)) if failed == 0 => delivered += 1,
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => {
                    if failed == 0 {
                        tracing::warn!(error = %e, "observation delivery failed; kept in spool");
                    }
                    failed += 1;
                }
                Err(_) => failed += 1,
            }
        }
        if delivered > 0 {
            let pos = batch[delivered - 1].next;
            if let Ok(mut s) = spool.lock()
                && let Err(e) = s.commit(pos, delivered as u64)
            {
                tracing::error!(error = %e, "spool commit failed");
            }
            counters
                .delivered
                .fetch_add(delivered as u64, Ordering::Relaxed);
        }
        if failed > 0 || delivered == 0 {
            // What a dead producer did not send stays in the spool for its replacement.
            if replace_if_fatal(&mut producer, &producer_config).is_some() {
                counters.producer_restarts.fetch_add(1, Ordering::Relaxed);
            }
            counters
                .delivery_errors
                .fetch_add(failed, Ordering::Relaxed);
            counters.retries.fetch_add(1, Ordering::Relaxed);
            counters.broker_up.store(false, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        } else {
            counters.broker_up.store(true, Ordering::Relaxed);
            backoff = Duration::from_millis(100);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fatally_failed_producer_is_replaced_by_a_working_one() {
        // No broker needed: the fatal state is librdkafka's own, set through its test hook.
        let config = KafkaSettings::new("127.0.0.1:1").producer_config(Duration::from_secs(5));
        let mut producer: FutureProducer = config.create().expect("producer");
        assert_eq!(replace_if_fatal(&mut producer, &config), None);
        inject_fatal_error(&producer);
        let reason = fatal_error(&producer).expect("fatal after the hook");
        assert!(reason.contains("OutOfOrderSequenceNumber"), "{reason}");
        assert_eq!(replace_if_fatal(&mut producer, &config), Some(reason));
        assert_eq!(fatal_error(&producer), None, "the replacement is healthy");
    }

    /// librdkafka rejects TLS and SCRAM settings at client creation when built without them,
    /// so creating (not connecting) a producer proves the pass-through settings can work.
    #[test]
    fn tls_and_sasl_settings_are_accepted_by_the_bundled_librdkafka() {
        let mut kafka = KafkaSettings::new("127.0.0.1:1");
        for p in [
            "security.protocol=SASL_SSL",
            "sasl.mechanism=SCRAM-SHA-512",
            "sasl.username=agent",
            "sasl.password=secret",
            "ssl.endpoint.identification.algorithm=https",
        ] {
            kafka
                .properties
                .push(KafkaSettings::parse_property(p).expect("property"));
        }
        let producer: Result<FutureProducer, _> =
            kafka.producer_config(Duration::from_secs(1)).create();
        assert!(producer.is_ok(), "{:?}", producer.err());
        // And an unknown property is an error naming it, not silently ignored.
        let mut bad = KafkaSettings::new("127.0.0.1:1");
        bad.properties.push(("no.such.property".into(), "1".into()));
        let err = bad
            .producer_config(Duration::from_secs(1))
            .create::<FutureProducer>()
            .err()
            .expect("unknown property rejected");
        assert!(err.to_string().contains("no.such.property"), "{err}");
    }
}
