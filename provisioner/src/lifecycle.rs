//! `shadowtap.lifecycle.v1`: one CloudEvent per executed lifecycle stage of one instance
//! (schema: `provisioner/schema/lifecycle.schema.json`).
//!
//! The id is a digest of (scale event id, instance, stage, attempt): a stage re-reported after a
//! restart carries the same id, so consumers drop the repeat.

use std::path::Path;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use shadowtap_core::{KafkaSettings, decision::LifecycleStage, scale_event::rfc3339_millis};
use tokio::io::AsyncWriteExt as _;

use crate::{Error, Result, io_context};

/// `CloudEvents` `type` of lifecycle events.
pub const LIFECYCLE_TYPE: &str = "shadowtap.lifecycle.v1";
/// Default topic.
pub const LIFECYCLE_TOPIC: &str = "shadowtap.lifecycle";
/// Version of the `data` payload.
pub const LIFECYCLE_DATA_VERSION: u32 = 1;

/// A lifecycle event (`CloudEvents` 1.0 structured JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The resource.
    pub subject: String,
    /// When the stage finished, RFC 3339 UTC.
    pub time: String,
    pub datacontenttype: String,
    pub data: LifecycleData,
}

/// What happened in one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleData {
    pub schema_version: u32,
    pub resource: String,
    pub scale_event_id: String,
    pub instance: String,
    pub stage: LifecycleStage,
    pub attempt: u32,
    pub ok: bool,
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: String,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub duration_ms: u64,
    /// Instances that passed their health check when the stage finished.
    pub healthy_instances: u32,
    pub target_instances: u32,
}

/// The deterministic id of one stage attempt.
pub fn lifecycle_id(event_id: &str, instance: &str, stage: LifecycleStage, attempt: u32) -> String {
    let mut h = Sha256::new();
    for part in [event_id, instance, stage_name(stage)] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(attempt.to_be_bytes());
    h.finalize()[..16]
        .iter()
        .fold(String::with_capacity(32), |mut out, b| {
            use std::fmt::Write as _;
            let _ = write!(out, "{b:02x}");
            out
        })
}

pub fn stage_name(stage: LifecycleStage) -> &'static str {
    match stage {
        LifecycleStage::Provision => "provision",
        LifecycleStage::WarmUp => "warm_up",
        LifecycleStage::ShiftTraffic => "shift_traffic",
        LifecycleStage::Decommission => "decommission",
    }
}

impl LifecycleEvent {
    pub fn new(source: &str, data: LifecycleData) -> Self {
        Self {
            specversion: "1.0".to_owned(),
            id: lifecycle_id(
                &data.scale_event_id,
                &data.instance,
                data.stage,
                data.attempt,
            ),
            source: source.to_owned(),
            event_type: LIFECYCLE_TYPE.to_owned(),
            subject: data.resource.clone(),
            time: rfc3339_millis(data.finished_at_ms),
            datacontenttype: "application/json".to_owned(),
            data,
        }
    }

    /// Fills the timestamps of a stage that ran from `started_ms` to now.
    pub fn timing(started_ms: u64, finished_ms: u64) -> (String, String, u64) {
        (
            rfc3339_millis(started_ms),
            rfc3339_millis(finished_ms),
            finished_ms.saturating_sub(started_ms),
        )
    }
}

/// Where lifecycle events go.
pub enum Sink {
    /// An idempotent, acks=all producer (as `core/src/kafka`), keyed by resource.
    Kafka {
        producer: Box<FutureProducer>,
        topic: String,
        timeout: Duration,
    },
    /// JSON lines appended to a file.
    File(tokio::fs::File),
    /// JSON lines on stdout.
    Stdout,
}

impl Sink {
    pub fn kafka(settings: &KafkaSettings, topic: &str, timeout: Duration) -> Result<Self> {
        let producer: FutureProducer = settings.producer_config(timeout).create()?;
        Ok(Self::Kafka {
            producer: Box::new(producer),
            topic: topic.to_owned(),
            timeout,
        })
    }

    pub async fn file(path: &Path) -> Result<Self> {
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(io_context(format!("opening {}", path.display())))?;
        Ok(Self::File(f))
    }

    /// Delivers one event (waits for the broker's acknowledgement).
    pub async fn emit(&mut self, event: &LifecycleEvent) -> Result<()> {
        let json = serde_json::to_string(event).map_err(|source| Error::Json {
            context: "serialising a lifecycle event".to_owned(),
            source,
        })?;
        match self {
            Self::Kafka {
                producer,
                topic,
                timeout,
            } => {
                let record = FutureRecord::to(topic)
                    .key(&event.data.resource)
                    .payload(&json);
                producer
                    .send(record, *timeout)
                    .await
                    .map_err(|(e, _)| Error::Kafka(e))?;
            }
            Self::File(f) => {
                f.write_all(format!("{json}\n").as_bytes())
                    .await
                    .and(f.flush().await)
                    .map_err(io_context("writing a lifecycle event"))?;
            }
            Self::Stdout => println!("{json}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_per_attempt() {
        let a = lifecycle_id("e", "i", LifecycleStage::Provision, 1);
        assert_eq!(a, lifecycle_id("e", "i", LifecycleStage::Provision, 1));
        assert_ne!(a, lifecycle_id("e", "i", LifecycleStage::Provision, 2));
        assert_ne!(a, lifecycle_id("e", "i", LifecycleStage::WarmUp, 1));
        assert_eq!(a.len(), 32);
    }
}
