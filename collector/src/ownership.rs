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
//!
//! Offsets on the observation topic are contiguous (idempotent producers, no compaction, no
//! transactions), so a record past the next offset means the consumer stepped over records:
//! a stale copy fetched before a reassignment came first, or the broker answered a fetch with a
//! later batch than the one asked for. nisshi 0.8.1 does the latter when two producers append
//! to one partition at once: it hands out the offsets before it stores the batches, so a fetch
//! can find the second batch before the first. The partition is then rewound to its next offset
//! once; a gap still there on the second pass (a compacted topic, transaction markers) is
//! accepted and counted.

use std::collections::{BTreeSet, HashMap};

use rdkafka::Message;

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
    /// Per partition, the next offset it was last rewound to (a gap there is not re-fetched
    /// twice).
    rewound_to: HashMap<i32, i64>,
}

/// What to do with a record (see [`Ownership::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Apply it.
    Apply,
    /// Apply it, though `skipped` offsets before it never arrived (a re-fetch did not fill them).
    ApplyAfterGap { skipped: u64 },
    /// Already applied: skip it.
    Replayed,
    /// Records before it are missing: rewind the partition to `next` and drop this and the
    /// partition's later records of the batch (they come again).
    Rewind { next: i64 },
}

impl Ownership {
    /// Apply rebalance notes in order. Returns the resources whose state must be dropped (they
    /// belong to a revoked partition; a later assignment reloads them from the state topic) and
    /// removes from `batch` the records of partitions revoked and not owned any more.
    pub fn apply<M: Message>(
        &mut self,
        notes: Vec<RebalanceNote>,
        batch: &mut Vec<M>,
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
                        self.rewound_to.remove(p);
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
        self.rewound_to.remove(&partition);
        match committed {
            Some(next) => self.next_offset.insert(partition, next),
            None => self.next_offset.remove(&partition),
        };
    }

    /// Whether the record at `offset` of `partition` is still to be applied; if so, it counts
    /// as applied from now on. A record past the next offset asks for a rewind, once per gap;
    /// asked again (the re-fetch skipped it too, or no rewind could be made), it is applied
    /// after the gap.
    pub fn admit(&mut self, partition: i32, offset: i64) -> Admission {
        let next = self.next_offset.entry(partition).or_insert(offset);
        if offset < *next {
            return Admission::Replayed;
        }
        let skipped = offset.abs_diff(*next);
        if skipped > 0 && self.rewound_to.get(&partition) != Some(next) {
            self.rewound_to.insert(partition, *next);
            return Admission::Rewind { next: *next };
        }
        *next = offset + 1;
        if skipped > 0 {
            Admission::ApplyAfterGap { skipped }
        } else {
            Admission::Apply
        }
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::{Timestamp, message::OwnedMessage};

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
            .filter(|&o| own.admit(2, o) == Admission::Apply)
            .collect();
        assert_eq!(admitted, vec![5, 6, 7]);
    }

    #[test]
    fn a_gap_rewinds_the_partition_once_then_is_accepted_and_counted() {
        let mut own = Ownership::default();
        own.mark_loaded(0, Some(3));
        assert_eq!(own.admit(0, 3), Admission::Apply);
        // The broker handed over 5 before 4 was readable (nisshi's race): rewind to 4.
        assert_eq!(own.admit(0, 5), Admission::Rewind { next: 4 });
        // The re-fetch from 4 fills it.
        assert_eq!(own.admit(0, 4), Admission::Apply);
        assert_eq!(own.admit(0, 5), Admission::Apply);
        // A second gap is rewound too; if the re-fetch skips it again it stands, counted.
        assert_eq!(own.admit(0, 8), Admission::Rewind { next: 6 });
        assert_eq!(own.admit(0, 8), Admission::ApplyAfterGap { skipped: 2 });
        assert_eq!(own.admit(0, 9), Admission::Apply);
        // Rewinding to the same offset again after a reload is allowed.
        own.mark_loaded(0, Some(9));
        assert_eq!(own.admit(0, 11), Admission::Rewind { next: 9 });
    }

    #[test]
    fn a_stale_record_ahead_of_the_commit_rewinds_instead_of_skipping_the_commit() {
        // Revoked at position 9 with 5 committed and handed back in one rebalance: a stale copy
        // of 7 ahead of the re-fetch from 5 must not make 5 and 6 look applied.
        let mut own = Ownership::default();
        own.mark_loaded(2, Some(5));
        assert_eq!(own.admit(2, 7), Admission::Rewind { next: 5 });
        let admitted: Vec<i64> = [5, 6, 7, 8]
            .into_iter()
            .filter(|&o| own.admit(2, o) == Admission::Apply)
            .collect();
        assert_eq!(admitted, vec![5, 6, 7, 8]);
    }

    #[test]
    fn an_unmade_rewind_accepts_the_gap() {
        let mut own = Ownership::default();
        own.mark_loaded(1, Some(10));
        assert_eq!(own.admit(1, 13), Admission::Rewind { next: 10 });
        // The seek failed: asked again, the record is applied after the gap.
        assert_eq!(own.admit(1, 13), Admission::ApplyAfterGap { skipped: 3 });
        assert_eq!(own.admit(1, 13), Admission::Replayed);
        assert_eq!(own.admit(1, 14), Admission::Apply);
    }

    #[test]
    fn a_partition_without_a_commit_admits_from_its_first_record() {
        let mut own = Ownership::default();
        own.mark_loaded(1, None);
        assert_eq!(own.admit(1, 40), Admission::Apply);
        assert_eq!(own.admit(1, 40), Admission::Replayed);
        assert_eq!(own.admit(1, 41), Admission::Apply);
        // Reloading after a revocation starts from the commit again.
        own.mark_loaded(1, Some(38));
        assert_eq!(own.admit(1, 38), Admission::Apply);
    }
}
