//! Where `shadowtap.lifecycle.v1` events go (Kafka, a file or stdout). The event type itself
//! lives in `shadowtap_core::lifecycle`, shared with the collectors that read it back.

use std::path::Path;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use shadowtap_core::KafkaSettings;
use tokio::io::AsyncWriteExt as _;

use crate::{Error, Result, io_context};

pub use shadowtap_core::lifecycle::{
    LIFECYCLE_DATA_VERSION, LIFECYCLE_TOPIC, LIFECYCLE_TYPE, LifecycleData, LifecycleEvent,
    lifecycle_id, stage_name,
};

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
