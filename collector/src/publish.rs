//! What the collector publishes (scale events, dead letters, state snapshots), how it waits
//! for their acknowledgement, and the offset commit that follows.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer as _, StreamConsumer},
    message::{Header, Headers as _, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use shadowtap_core::{
    ClosedWindow, ResourceSnapshot,
    decision::Decision,
    scale_event::{self, WindowDigest},
};

use crate::{
    ownership::Ownership,
    service::{Collector, CollectorConfig, GroupContext, now_ms},
    stats::CollectorStats,
};

/// What a publish is for (decides what to count once it is acknowledged).
#[derive(Debug, Clone)]
pub(crate) enum Purpose {
    ScaleEvent {
        window_end_ms: u64,
        stamps: Option<Stamps>,
    },
    DeadLetter,
    Snapshot,
}

/// When the observation that closed a window went through each stage, unix ms, for the event
/// latency's breakdown.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamps {
    /// The observation record's timestamp (the agent's producer, `CreateTime`).
    pub produced: u64,
    /// Its batch was taken from the consumer.
    pub consumed: u64,
    /// Its batch was merged and decided.
    pub decided: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct Publish {
    pub purpose: Purpose,
    pub topic: String,
    pub partition: Option<i32>,
    pub key: Vec<u8>,
    pub body: Body,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A record's value. Events and snapshots are serialised by the publisher thread, not by the
/// loop that decides: their JSON was about a fifth of the loop's work.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    Bytes(Option<Vec<u8>>),
    /// A scale event's decision and window digest: the publisher writes the event itself
    /// (its id hash, timestamps and strings were a tenth of the loop's work).
    Event(Box<(Arc<Decision>, WindowDigest)>),
    Snapshot(Box<ResourceSnapshot>),
}

impl Body {
    /// The record's value: bytes as they are, or the event or snapshot written into
    /// `scratch`. A retry writes the same bytes again (both are pure functions of the parts);
    /// one buffer for every record spared an allocation per event, which librdkafka copies
    /// anyway. `source`: the events' source.
    fn payload<'a>(&'a self, source: &str, scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
        scratch.clear();
        match self {
            Body::Bytes(b) => return b.as_deref(),
            Body::Event(parts) => {
                let (decision, window) = &**parts;
                // `into_event_parts` let through only decisions that have an event.
                scale_event::write_event_json(source, decision, window, scratch);
            }
            // A snapshot is plain data: serialisation cannot fail.
            Body::Snapshot(s) => {
                let _ = serde_json::to_writer(&mut *scratch, s);
            }
        }
        Some(scratch.as_slice())
    }
}

/// Produces records and waits for their acknowledgement, counting what landed.
pub(crate) struct Producing {
    pub producer: FutureProducer,
    /// To replace `producer` after a fatal error.
    pub producer_config: rdkafka::ClientConfig,
    pub stats: std::sync::Arc<CollectorStats>,
    /// The scale events' CloudEvents `source`.
    pub source: String,
}

impl Producing {
    /// Publish everything and wait for acknowledgements, retrying failures until they land
    /// (in order: a record is sent before every record queued after it).
    pub(crate) async fn publish_all(&mut self, mut pending: Vec<Publish>) {
        let mut backoff = Duration::from_millis(100);
        while !pending.is_empty() {
            let mut futures = Vec::with_capacity(pending.len());
            let mut not_queued = Vec::new();
            let mut scratch = Vec::with_capacity(4096);
            for p in pending {
                let mut headers = OwnedHeaders::new();
                for (k, v) in &p.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v),
                    });
                }
                let mut record = FutureRecord::to(&p.topic).key(&p.key).headers(headers);
                if let Some(payload) = p.body.payload(&self.source, &mut scratch) {
                    record = record.payload(payload);
                }
                if let Some(partition) = p.partition {
                    record = record.partition(partition);
                }
                match self.producer.send_result(record) {
                    Ok(f) => futures.push((p, f)),
                    Err(_) => not_queued.push(p),
                }
            }
            let mut failed = not_queued;
            for (p, f) in futures {
                match f.await {
                    Ok(Ok(_)) => self.acknowledged(&p.purpose),
                    Ok(Err((e, _))) => {
                        tracing::warn!(topic = %p.topic, error = %e, "publish failed; retrying");
                        failed.push(p);
                    }
                    Err(_) => failed.push(p),
                }
            }
            if !failed.is_empty() {
                // A producer that failed fatally sends nothing more: the retry goes through a
                // new one (in order, as before; duplicates carry the same event id).
                if shadowtap_core::kafka::replace_if_fatal(
                    &mut self.producer,
                    &self.producer_config,
                )
                .is_some()
                {
                    self.stats.producer_restarts.fetch_add(1, Ordering::Relaxed);
                }
                self.stats
                    .publish_retries
                    .fetch_add(failed.len() as u64, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            pending = failed;
        }
    }

    fn acknowledged(&self, purpose: &Purpose) {
        match purpose {
            Purpose::ScaleEvent {
                window_end_ms,
                stamps,
            } => {
                self.stats
                    .scale_events_published
                    .fetch_add(1, Ordering::Relaxed);
                let acked = now_ms();
                self.stats
                    .record_event_latency(acked.saturating_sub(*window_end_ms));
                if let Some(s) = stamps {
                    self.stats.record_event_stages([
                        s.produced.saturating_sub(*window_end_ms),
                        s.consumed.saturating_sub(s.produced),
                        s.decided.saturating_sub(s.consumed),
                        acked.saturating_sub(s.decided),
                    ]);
                }
            }
            Purpose::DeadLetter => {
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            }
            Purpose::Snapshot => {
                self.stats.snapshots_written.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Collector {
    pub(crate) fn commit(
        &self,
        consumer: &StreamConsumer<GroupContext>,
        own: &Ownership,
        offsets: &BTreeMap<i32, i64>,
    ) {
        let mut tpl = TopicPartitionList::new();
        for (p, next) in offsets {
            if !own.owned.contains(p) {
                continue;
            }
            if let Err(e) = tpl.add_partition_offset(
                &self.config.kafka.observations_topic,
                *p,
                Offset::Offset(*next),
            ) {
                tracing::warn!(partition = *p, error = %e, "offset not committable");
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // The partition moved; its next owner replays from the last commit.
                tracing::warn!(error = %e, "offset commit failed");
                self.stats.commit_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The scale event of a closed window, if it has one (built on the publisher thread);
/// `produced`: the record timestamp of the observation that closed it.
pub(crate) fn scale_event(
    cfg: &CollectorConfig,
    c: ClosedWindow,
    produced: Option<u64>,
) -> Option<Publish> {
    let end_ms = c.end_ms;
    let key = c.resource.as_bytes().to_vec();
    let parts = c.into_event_parts()?;
    Some(Publish {
        purpose: Purpose::ScaleEvent {
            window_end_ms: end_ms,
            stamps: produced.map(|produced| Stamps {
                produced,
                consumed: 0,
                decided: 0,
            }),
        },
        topic: cfg.kafka.scale_events_topic.clone(),
        partition: None,
        key,
        body: Body::Event(Box::new(parts)),
        headers: vec![(
            "content-type".to_owned(),
            b"application/cloudevents+json; charset=utf-8".to_vec(),
        )],
    })
}

pub(crate) fn dead_letter(cfg: &CollectorConfig, msg: &impl Message, error: &str) -> Publish {
    let mut headers = vec![
        ("shadowtap-error".to_owned(), error.as_bytes().to_vec()),
        (
            "shadowtap-source".to_owned(),
            format!("{}/{}/{}", msg.topic(), msg.partition(), msg.offset()).into_bytes(),
        ),
    ];
    if let Some(h) = msg.headers() {
        for header in h.iter() {
            if let Some(v) = header.value {
                headers.push((header.key.to_owned(), v.to_vec()));
            }
        }
    }
    Publish {
        purpose: Purpose::DeadLetter,
        topic: cfg.dead_letter_topic.clone(),
        partition: None,
        key: msg.key().unwrap_or_default().to_vec(),
        body: Body::Bytes(msg.payload().map(<[u8]>::to_vec)),
        headers,
    }
}
