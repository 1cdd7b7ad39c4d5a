//! Which observation partitions this collector owns, and which of their records it still has to
//! apply.
//!
//! Rebalance notes and records reach the loop through different queues, so a batch can hold
//! records fetched before a revocation next to records fetched after the partition came back in
//! the same rebalance. Dropping every record of a revoked partition would lose the second kind:
//! the consumer has already moved past them, and the next commit would skip them for good. So the
//! batch keeps the records of every partition still owned, and each partition admits a record
//! only at or past its next offset: the group's committed offset when its state was loaded, then
//! one past each applied record. Stale copies replayed after a reassignment are skipped, and
//! nothing the consumer handed over is dropped.

use std::collections::{BTreeSet, HashMap};

use rdkafka::{Message as _, message::OwnedMessage};

/// A rebalance as the consumer context saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RebalanceNote {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

#[derive(Debug, Default)]
pub(crate) struct Ownership {
    pub owned: BTreeSet<i32>,
    /// Partitions whose state has been restored since they were (last) assigned.
    pub loaded: BTreeSet<i32>,
    pub resource_partition: HashMap<String, i32>,
    next_offset: HashMap<i32, i64>,
}

impl Ownership {
    /// Apply rebalance notes in order. Returns the resources whose state must be dropped (they
    /// belong to a revoked partition; a later assignment reloads them from the state topic) and
    /// removes from `batch` the records of partitions revoked and not owned any more.
    pub fn apply(
        &mut self,
        notes: Vec<RebalanceNote>,
        batch: &mut Vec<OwnedMessage>,
    ) -> Vec<String> {
        let mut revoked = BTreeSet::new();
        let mut gone = Vec::new();
        for note in notes {
            match note {
                RebalanceNote::Assigned(parts) => {
                    tracing::info!(?parts, "partitions assigned");
                    self.owned.extend(parts);
                }
                RebalanceNote::Revoked(parts) => {
                    tracing::info!(?parts, "partitions revoked");
                    for p in &parts {
                        self.owned.remove(p);
                        self.loaded.remove(p);
                        self.next_offset.remove(p);
                        revoked.insert(*p);
                    }
                    let moved: Vec<String> = self
                        .resource_partition
                        .iter()
                        .filter(|(_, p)| parts.contains(p))
                        .map(|(r, _)| r.clone())
                        .collect();
                    for r in moved {
                        self.resource_partition.remove(&r);
                        gone.push(r);
                    }
                }
            }
        }
        // Their new owner re-reads these from the committed offset.
        batch.retain(|m| !revoked.contains(&m.partition()) || self.owned.contains(&m.partition()));
        gone
    }

    /// The state of `partition` is restored; records before `committed` (the group's committed
    /// offset, if any) are already part of it.
    pub fn mark_loaded(&mut self, partition: i32, committed: Option<i64>) {
        self.loaded.insert(partition);
        match committed {
            Some(next) => self.next_offset.insert(partition, next),
            None => self.next_offset.remove(&partition),
        };
    }

    /// Whether the record at `offset` of `partition` is still to be applied; if so, it counts
    /// as applied from now on.
    pub fn admit(&mut self, partition: i32, offset: i64) -> bool {
        let next = self.next_offset.entry(partition).or_insert(offset);
        if offset < *next {
            return false;
        }
        *next = offset + 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;

    use super::*;

    fn record(partition: i32, offset: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "obs".to_owned(),
            Timestamp::NotAvailable,
            partition,
            offset,
            None,
        )
    }

    fn owning(parts: &[i32]) -> Ownership {
        let mut own = Ownership::default();
        for &p in parts {
            own.owned.insert(p);
            own.mark_loaded(p, Some(0));
            own.resource_partition.insert(format!("svc-{p}"), p);
        }
        own
    }

    #[test]
    fn records_of_a_partition_revoked_and_reassigned_in_one_rebalance_are_kept() {
        // The failover case: the survivor's own partitions are revoked and handed straight back
        // together with the dead peer's; records fetched after the reassignment are in the batch.
        let mut own = owning(&[2, 3]);
        let mut batch = vec![record(2, 7), record(3, 4), record(0, 11)];
        let gone = own.apply(
            vec![
                RebalanceNote::Revoked(vec![2, 3]),
                RebalanceNote::Assigned(vec![0, 1, 2, 3]),
            ],
            &mut batch,
        );
        assert_eq!(
            batch.len(),
            3,
            "no record the consumer handed over is dropped"
        );
        let mut gone_sorted = gone;
        gone_sorted.sort();
        assert_eq!(gone_sorted, vec!["svc-2", "svc-3"]);
        assert!(own.loaded.is_empty(), "every partition reloads its state");
        assert_eq!(own.owned, BTreeSet::from([0, 1, 2, 3]));
    }

    #[test]
    fn records_of_a_partition_that_moved_away_are_dropped() {
        let mut own = owning(&[0, 1]);
        let mut batch = vec![record(0, 1), record(1, 1), record(1, 2)];
        own.apply(vec![RebalanceNote::Revoked(vec![1])], &mut batch);
        assert_eq!(
            batch
                .iter()
                .map(rdkafka::Message::partition)
                .collect::<Vec<_>>(),
            vec![0]
        );
        assert!(!own.owned.contains(&1));
    }

    #[test]
    fn replayed_records_below_the_committed_offset_are_skipped_once_each() {
        let mut own = Ownership::default();
        own.mark_loaded(2, Some(5));
        // Stale copies fetched before the revocation (5, 6), then the re-fetch from the commit.
        let admitted: Vec<i64> = [5, 6, 5, 6, 7, 4]
            .into_iter()
            .filter(|&o| own.admit(2, o))
            .collect();
        assert_eq!(admitted, vec![5, 6, 7]);
    }

    #[test]
    fn a_partition_without_a_commit_admits_from_its_first_record() {
        let mut own = Ownership::default();
        own.mark_loaded(1, None);
        assert!(own.admit(1, 40));
        assert!(!own.admit(1, 40));
        assert!(own.admit(1, 41));
        // Reloading after a revocation starts from the commit again.
        own.mark_loaded(1, Some(38));
        assert!(own.admit(1, 38));
    }
}
