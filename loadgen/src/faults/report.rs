//! Counts of outcomes per fault kind.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{FaultError, FaultKind, FaultOutcome};

/// Outcomes counted per fault kind, plus faults that could not be run at all.
///
/// As JSON: `{"counts": {"bad-checksum": {"2xx": 10}, ...}, "errors": {"slow-client": 1}}`.
/// Kinds and outcomes that never occurred are absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultReport {
    pub counts: BTreeMap<FaultKind, BTreeMap<FaultOutcome, u64>>,
    /// Faults that failed before the target could answer ([`FaultError`]).
    #[serde(default)]
    pub errors: BTreeMap<FaultKind, u64>,
}

impl FaultReport {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&mut self, kind: FaultKind, outcome: FaultOutcome) {
        *self
            .counts
            .entry(kind)
            .or_default()
            .entry(outcome)
            .or_default() += 1;
    }

    pub fn record_error(&mut self, kind: FaultKind) {
        *self.errors.entry(kind).or_default() += 1;
    }

    /// Records what [`super::run_fault`] returned.
    pub fn record_result(&mut self, kind: FaultKind, result: &Result<FaultOutcome, FaultError>) {
        match result {
            Ok(outcome) => self.record(kind, *outcome),
            Err(_) => self.record_error(kind),
        }
    }

    pub fn count(&self, kind: FaultKind, outcome: FaultOutcome) -> u64 {
        self.counts
            .get(&kind)
            .and_then(|m| m.get(&outcome))
            .copied()
            .unwrap_or(0)
    }

    /// Outcomes recorded for `kind` (errors not included).
    pub fn total(&self, kind: FaultKind) -> u64 {
        self.counts.get(&kind).map_or(0, |m| m.values().sum())
    }

    /// Adds another report's counts (e.g. from parallel workers).
    pub fn merge(&mut self, other: &Self) {
        for (kind, outcomes) in &other.counts {
            let mine = self.counts.entry(*kind).or_default();
            for (outcome, n) in outcomes {
                *mine.entry(*outcome).or_default() += n;
            }
        }
        for (kind, n) in &other.errors {
            *self.errors.entry(*kind).or_default() += n;
        }
    }

    /// `(kind, outcome, count)` for every non-zero count, in kind then outcome order.
    pub fn rows(&self) -> impl Iterator<Item = (FaultKind, FaultOutcome, u64)> + '_ {
        self.counts
            .iter()
            .flat_map(|(kind, m)| m.iter().map(move |(outcome, n)| (*kind, *outcome, *n)))
    }
}

/// A table for humans: one line per (kind, outcome), then errors.
impl fmt::Display for FaultReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<24} {:<24} {:>8}", "fault", "outcome", "count")?;
        for (kind, outcome, n) in self.rows() {
            writeln!(f, "{:<24} {:<24} {n:>8}", kind.as_str(), outcome.as_str())?;
        }
        for (kind, n) in &self.errors {
            writeln!(f, "{:<24} {:<24} {n:>8}", kind.as_str(), "error (not run)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_and_round_trip_through_json() {
        let mut a = FaultReport::new();
        a.record(FaultKind::BadChecksum, FaultOutcome::Status2xx);
        a.record(FaultKind::BadChecksum, FaultOutcome::Status2xx);
        a.record(FaultKind::MalformedRequestLine, FaultOutcome::Status4xx);
        let mut b = FaultReport::new();
        b.record(FaultKind::BadChecksum, FaultOutcome::Timeout);
        b.record_result(
            FaultKind::SlowClient,
            &Err(FaultError::NoSuchInterface("x".to_owned())),
        );
        a.merge(&b);
        assert_eq!(a.count(FaultKind::BadChecksum, FaultOutcome::Status2xx), 2);
        assert_eq!(a.count(FaultKind::BadChecksum, FaultOutcome::Timeout), 1);
        assert_eq!(a.total(FaultKind::BadChecksum), 3);
        assert_eq!(a.count(FaultKind::OutOfOrder, FaultOutcome::Status2xx), 0);
        assert_eq!(a.errors.get(&FaultKind::SlowClient), Some(&1));

        let json = serde_json::to_value(&a).expect("serialises");
        assert_eq!(json["counts"]["bad-checksum"]["2xx"], 2);
        assert_eq!(json["counts"]["malformed-request-line"]["4xx"], 1);
        assert_eq!(json["errors"]["slow-client"], 1);
        let back: FaultReport = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, a);

        let table = a.to_string();
        assert!(table.contains("bad-checksum"), "{table}");
        assert!(table.contains("error (not run)"), "{table}");
    }
}
