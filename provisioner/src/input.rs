//! Where scale events come from: a Kafka consumer group (offsets committed only after an event
//! was handled, so a crash redelivers it) or a file / stdin of CloudEvent JSON lines (for
//! in-process runs, tests and replays; the whole file is read again after a restart, and the
//! handled-id memory drops what was already done).

use std::time::Duration;

use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer as _, StreamConsumer},
};
use shadowtap_core::KafkaSettings;
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, BufReader};

use crate::{Result, io_context};

/// One received record; pass it back to [`Input::commit`] once handled.
#[derive(Debug)]
pub struct Incoming {
    pub payload: Vec<u8>,
    position: Option<(String, i32, i64)>,
}

/// A source of scale events.
pub enum Input {
    Kafka(Box<StreamConsumer>),
    Lines(Box<dyn AsyncBufRead + Unpin + Send>),
}

impl Input {
    /// A consumer in `group` on `topic`, starting at the earliest offset, committing manually.
    pub fn kafka(settings: &KafkaSettings, topic: &str, group: &str) -> Result<Self> {
        let consumer: StreamConsumer = settings
            .client_config(&[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
            ])
            .create()?;
        consumer.subscribe(&[topic])?;
        Ok(Self::Kafka(Box::new(consumer)))
    }

    /// JSON lines from `path`, or from stdin when `path` is `-`.
    pub async fn file(path: &std::path::Path) -> Result<Self> {
        if path.as_os_str() == "-" {
            return Ok(Self::Lines(Box::new(BufReader::new(tokio::io::stdin()))));
        }
        let file = tokio::fs::File::open(path)
            .await
            .map_err(io_context(format!("opening {}", path.display())))?;
        Ok(Self::Lines(Box::new(BufReader::new(file))))
    }

    /// The next record; `None` at the end of a file (Kafka never ends).
    pub async fn next(&mut self) -> Result<Option<Incoming>> {
        match self {
            Self::Kafka(consumer) => loop {
                match consumer.recv().await {
                    Ok(m) => {
                        return Ok(Some(Incoming {
                            payload: m.payload().unwrap_or_default().to_vec(),
                            position: Some((m.topic().to_owned(), m.partition(), m.offset())),
                        }));
                    }
                    Err(e) => {
                        // Transient broker errors: librdkafka reconnects by itself.
                        tracing::warn!(error = %e, "consume error");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            },
            Self::Lines(reader) => loop {
                let mut line = String::new();
                let n = reader
                    .read_line(&mut line)
                    .await
                    .map_err(io_context("reading the events file"))?;
                if n == 0 {
                    return Ok(None);
                }
                if !line.trim().is_empty() {
                    return Ok(Some(Incoming {
                        payload: line.into_bytes(),
                        position: None,
                    }));
                }
            },
        }
    }

    /// Marks `incoming` as handled (commits its offset + 1).
    pub fn commit(&self, incoming: &Incoming) -> Result<()> {
        if let (Self::Kafka(consumer), Some((topic, partition, offset))) =
            (self, &incoming.position)
        {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(topic, *partition, Offset::Offset(offset + 1))?;
            consumer.commit(&tpl, CommitMode::Sync)?;
        }
        Ok(())
    }
}
