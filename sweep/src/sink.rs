//! Where the sweep's events go: Kafka (`shadowtap.recommendations`), or a JSON-lines file in
//! in-process mode.
//!
//! The Kafka sink is core's recipe (`shadowtap_core::kafka`): every event is appended to an
//! on-disk [`Spool`] first and leaves it only once an idempotent, acks=all producer had it
//! acknowledged, so a broker outage delays events instead of losing them; the next publish (or
//! [`EventSink::drain`]) retries what is spooled, oldest first. Events are rare (a few per
//! forecast window), so delivery is awaited inline rather than by a background pump.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::RDKafkaErrorCode,
    producer::{FutureProducer, FutureRecord},
};
use serde::Serialize;
use shadowtap_core::{
    KafkaSettings,
    kafka::spool::{Spool, SpoolError},
};
use tokio::io::AsyncWriteExt as _;

use crate::events::SweepEvent;

/// Sink failures, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("recommendation spool: {0}")]
    Spool(#[from] SpoolError),
    #[error("creating the Kafka producer: {0}")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {source}")]
    Topic {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding a {event_type} event: {source}")]
    Json {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Creates `topic` with `partitions` unless it exists (as the collector does for its topics).
pub async fn ensure_topic(
    settings: &KafkaSettings,
    topic: &str,
    partitions: i32,
) -> Result<(), SinkError> {
    let err = |source| SinkError::Topic {
        topic: topic.to_owned(),
        source,
    };
    let admin: AdminClient<DefaultClientContext> =
        settings.client_config(&[]).create().map_err(err)?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics([&new], &opts).await.map_err(err)? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(err(rdkafka::error::KafkaError::AdminOp(code))),
        }
    }
    Ok(())
}

/// What one publish achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Events the broker acknowledged in this call (earlier spooled ones included).
    pub delivered: usize,
    /// Events still spooled (the broker was unreachable).
    pub spooled: u64,
}

/// The sink.
pub enum EventSink {
    Kafka {
        producer: Box<FutureProducer>,
        topic: String,
        spool: Spool,
        timeout: Duration,
    },
    File {
        path: PathBuf,
        file: tokio::fs::File,
    },
}

impl EventSink {
    /// An idempotent producer to `topic`, spooling in `spool_dir` (at most `spool_max_bytes`).
    pub fn kafka(
        settings: &KafkaSettings,
        topic: &str,
        spool_dir: &Path,
        spool_max_bytes: u64,
        timeout: Duration,
    ) -> Result<Self, SinkError> {
        let producer: FutureProducer = settings
            .producer_config(timeout)
            .create()
            .map_err(SinkError::Producer)?;
        Ok(Self::Kafka {
            producer: Box::new(producer),
            topic: topic.to_owned(),
            spool: Spool::open(spool_dir, spool_max_bytes)?,
            timeout,
        })
    }

    /// JSON lines appended to `path`.
    pub async fn file(path: &Path) -> Result<Self, SinkError> {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(|source| SinkError::Io {
                context: format!("opening {}", path.display()),
                source,
            })?;
        Ok(Self::File {
            path: path.to_owned(),
            file,
        })
    }

    /// Publishes one event keyed by its subject (the service).
    pub async fn publish<T: Serialize>(
        &mut self,
        event: &SweepEvent<T>,
    ) -> Result<Published, SinkError> {
        let json = event.to_json().map_err(|source| SinkError::Json {
            event_type: event.event_type.clone(),
            source,
        })?;
        match self {
            Self::Kafka { spool, .. } => {
                spool.append(event.subject.as_bytes(), json.as_bytes())?;
                self.drain().await
            }
            Self::File { path, file } => {
                file.write_all(format!("{json}\n").as_bytes())
                    .await
                    .and(file.flush().await)
                    .map_err(|source| SinkError::Io {
                        context: format!("writing an event to {}", path.display()),
                        source,
                    })?;
                Ok(Published {
                    delivered: 1,
                    spooled: 0,
                })
            }
        }
    }

    /// Delivers what is spooled, oldest first, stopping at the first failure (a file sink has
    /// nothing spooled).
    pub async fn drain(&mut self) -> Result<Published, SinkError> {
        let Self::Kafka {
            producer,
            topic,
            spool,
            timeout,
        } = self
        else {
            return Ok(Published {
                delivered: 0,
                spooled: 0,
            });
        };
        let mut delivered = 0;
        loop {
            let batch = spool.peek(64)?;
            if batch.is_empty() {
                break;
            }
            let mut acked = None;
            for (i, rec) in batch.iter().enumerate() {
                let record = FutureRecord::to(topic.as_str())
                    .key(&rec.key)
                    .payload(&rec.value);
                match producer.send(record, *timeout).await {
                    Ok(_) => acked = Some(i),
                    Err((e, _)) => {
                        tracing::warn!(error = %e, "recommendation delivery failed; kept in spool");
                        break;
                    }
                }
            }
            let Some(last) = acked else { break };
            spool.commit(batch[last].next, last as u64 + 1)?;
            delivered += last + 1;
            if last + 1 < batch.len() {
                break;
            }
        }
        Ok(Published {
            delivered,
            spooled: spool.stats().depth_records,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        canary::{CanaryDecision, CanaryOutcome},
        events::{CANARY_DECISION_TYPE, CanaryDecisionData, parse_event},
        policy::{Policy, PolicyConfig},
        recommend::{RecommendConfig, Recommender, Verdict},
        synthetic::{grid_records, load},
        trial::{KpiName, Objective},
    };

    #[tokio::test]
    async fn in_process_mode_appends_json_lines_to_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("recommendations.jsonl");
        let objective = Objective {
            kpi: KpiName::P99Ms,
            max_error_rate: 0.01,
        };
        let policy = Policy::fit(&grid_records(), objective, PolicyConfig::default()).expect("fit");
        let current = policy.recommend(&load(100.0)).expect("answer").params;
        let forecast = crate::events::ForecastLoad {
            load: load(3200.0),
            window_start_ms: 0,
            window_end_ms: 60_000,
        };
        let Verdict::Recommend(rec) = Recommender::new(RecommendConfig::default())
            .consider(&policy, "nginx", &current, &forecast, 1000)
            .expect("consider")
        else {
            panic!("the 100 rps optimum overloads at 3200 rps");
        };
        let outcome = CanaryOutcome {
            decision: CanaryDecision::Rollback,
            reasons: vec!["canary not seen at the tap".into()],
            canary: None,
            baseline: None,
        };
        let decision = crate::events::CanaryDecisionEvent::canary_decision(
            "urn:test",
            &rec,
            "nginx@10.0.0.2:80",
            outcome,
            2000,
        );
        let mut sink = EventSink::file(&path).await.expect("open");
        sink.publish(&*rec).await.expect("publish");
        sink.publish(&decision).await.expect("publish");
        drop(sink);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let back: crate::events::SweepEvent<CanaryDecisionData> =
            parse_event(lines[1].as_bytes(), CANARY_DECISION_TYPE).expect("decision");
        assert_eq!(back.data.recommendation_id, rec.id);
        assert_eq!(back.data.decision, CanaryDecision::Rollback);
    }
}
