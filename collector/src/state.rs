//! The state topic: one JSON [`ResourceSnapshot`] per record, key = resource, written to the
//! same partition number as the resource's observations. A collector taking over observation
//! partition `p` reads state partition `p` to its end and keeps the latest snapshot per
//! resource (the topic is compacted, so that is also all Kafka keeps).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
};
use shadowtap_core::{KafkaSettings, ResourceSnapshot};

/// What loading a partition found.
#[derive(Debug, Default)]
pub struct LoadedState {
    pub snapshots: Vec<ResourceSnapshot>,
    /// Records that did not parse (skipped, counted).
    pub rejected: u64,
}

/// The group's committed offset of observation partition `partition` (blocking), as the
/// offset the consumer resumes at: `None` when the group has not committed it yet, or when
/// the commit lies past the end of the log (a truncated or recreated topic), where the
/// consumer starts over from the earliest record.
pub fn committed_offset(
    kafka: &KafkaSettings,
    group: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Option<i64>, rdkafka::error::KafkaError> {
    // A consumer that never subscribes does not join the group; it only asks for its offsets.
    let consumer: BaseConsumer = kafka
        .client_config(&[("group.id", group), ("enable.auto.commit", "false")])
        .create()?;
    let topic = &kafka.observations_topic;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let committed = committed
        .find_partition(topic, partition)
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        });
    let Some(offset) = committed else {
        return Ok(None);
    };
    let (_, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
    let resumed = resume_offset(offset, high);
    if resumed.is_none() {
        tracing::warn!(
            partition,
            committed = offset,
            log_end = high,
            "committed offset is past the end of the log (truncated or recreated topic); \
             applying the partition from its earliest record"
        );
    }
    Ok(resumed)
}

/// Where records of a partition count as new: at the committed offset, unless that lies past
/// the log's end (`high`, the next offset to be written), which no record can reach again.
pub(crate) fn resume_offset(committed: i64, high: i64) -> Option<i64> {
    (committed <= high).then_some(committed)
}

/// Read state partition `partition` of `topic` to its high watermark (blocking).
pub fn load_partition(
    kafka: &KafkaSettings,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<LoadedState, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer = kafka
        .client_config(&[
            ("group.id", "shadowtap-collector-state-loader"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
        ])
        .create()?;
    let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
    let mut out = LoadedState::default();
    if high <= low {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(low))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut latest: HashMap<String, ResourceSnapshot> = HashMap::new();
    let mut next = low;
    while next < high {
        if Instant::now() > deadline {
            return Err(rdkafka::error::KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg?;
        next = msg.offset() + 1;
        match msg
            .payload()
            .map(serde_json::from_slice::<ResourceSnapshot>)
        {
            Some(Ok(snap)) => {
                latest.insert(snap.resource.clone(), snap);
            }
            Some(Err(e)) => {
                tracing::warn!(partition, offset = msg.offset(), error = %e, "unreadable state snapshot");
                out.rejected += 1;
            }
            // A tombstone: the resource was dropped.
            None => {
                if let Some(key) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) {
                    latest.remove(key);
                }
            }
        }
    }
    out.snapshots = latest.into_values().collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::resume_offset;

    #[test]
    fn a_commit_past_the_log_end_does_not_hide_new_records() {
        assert_eq!(resume_offset(40, 41), Some(40));
        assert_eq!(resume_offset(41, 41), Some(41), "everything consumed");
        // Truncated (unclean leader election) or recreated topic: start from the earliest.
        assert_eq!(resume_offset(1000, 12), None);
    }
}
