//! Turning timestamped demand (requests, bytes, connections) into a regular series at a fixed
//! step: the input of the per-resource forecaster.

use std::time::Duration;

use super::ForecastError;

/// One closed bucket of a demand series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Start of the bucket, unix milliseconds, aligned to the step.
    pub start_ms: u64,
    /// Demand inside the bucket.
    pub value: f64,
}

/// Accumulates demand into step-aligned buckets. Late samples (older than the open bucket) are
/// counted, not silently merged into a newer bucket.
#[derive(Debug, Clone)]
pub struct DemandAccumulator {
    step_ms: u64,
    open_start_ms: Option<u64>,
    open_value: f64,
    late_samples: u64,
}

impl DemandAccumulator {
    /// An accumulator with buckets of `step` (at least one millisecond).
    pub fn new(step: Duration) -> Result<Self, ForecastError> {
        let step_ms = u64::try_from(step.as_millis()).unwrap_or(u64::MAX);
        if step_ms == 0 {
            return Err(ForecastError::InvalidConfig {
                field: "step",
                reason: "must be at least 1ms".into(),
            });
        }
        Ok(Self {
            step_ms,
            open_start_ms: None,
            open_value: 0.0,
            late_samples: 0,
        })
    }

    /// Samples that arrived after their bucket had closed.
    pub fn late_samples(&self) -> u64 {
        self.late_samples
    }

    fn align(&self, ts_ms: u64) -> u64 {
        ts_ms - ts_ms % self.step_ms
    }

    /// Add `amount` of demand at `ts_ms`; returns the buckets this closed (empty ones included,
    /// as zero demand), oldest first.
    pub fn record(&mut self, ts_ms: u64, amount: f64) -> Vec<Bucket> {
        let bucket = self.align(ts_ms);
        let closed = match self.open_start_ms {
            Some(open) if bucket < open => {
                self.late_samples += 1;
                return Vec::new();
            }
            Some(open) if bucket == open => Vec::new(),
            Some(_) => self.close_before(bucket),
            None => Vec::new(),
        };
        if self.open_start_ms.is_none() {
            self.open_start_ms = Some(bucket);
        }
        self.open_value += amount;
        closed
    }

    /// Close every bucket that ends at or before `now_ms` (e.g. on a timer when no traffic came).
    pub fn close_until(&mut self, now_ms: u64) -> Vec<Bucket> {
        let current = self.align(now_ms);
        match self.open_start_ms {
            Some(open) if open < current => self.close_before(current),
            _ => Vec::new(),
        }
    }

    /// Close the open bucket and every empty bucket before `next_start`, which becomes open.
    fn close_before(&mut self, next_start: u64) -> Vec<Bucket> {
        let mut closed = Vec::new();
        if let Some(mut start) = self.open_start_ms {
            closed.push(Bucket {
                start_ms: start,
                value: self.open_value,
            });
            start += self.step_ms;
            while start < next_start {
                closed.push(Bucket {
                    start_ms: start,
                    value: 0.0,
                });
                start += self.step_ms;
            }
        }
        self.open_start_ms = Some(next_start);
        self.open_value = 0.0;
        closed
    }
}

#[cfg(test)]
// The compared values are exact by construction (small integers and halves).
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    #[test]
    fn buckets_close_in_order_with_empty_ones_as_zero() {
        let mut acc = DemandAccumulator::new(Duration::from_secs(60)).expect("valid step");
        assert!(acc.record(60_500, 1.0).is_empty());
        assert!(acc.record(61_000, 2.0).is_empty());
        let closed = acc.record(240_000, 5.0);
        assert_eq!(
            closed,
            vec![
                Bucket {
                    start_ms: 60_000,
                    value: 3.0
                },
                Bucket {
                    start_ms: 120_000,
                    value: 0.0
                },
                Bucket {
                    start_ms: 180_000,
                    value: 0.0
                },
            ]
        );
        let closed = acc.close_until(300_000);
        assert_eq!(
            closed,
            vec![Bucket {
                start_ms: 240_000,
                value: 5.0
            }]
        );
    }

    #[test]
    fn late_samples_are_counted_not_merged() {
        let mut acc = DemandAccumulator::new(Duration::from_secs(60)).expect("valid step");
        acc.record(120_000, 1.0);
        acc.record(200_000, 1.0);
        assert!(acc.record(100_000, 7.0).is_empty());
        assert_eq!(acc.late_samples(), 1);
        let closed = acc.close_until(240_000);
        assert_eq!(closed[0].value, 1.0);
    }

    #[test]
    fn zero_step_is_rejected() {
        let err = DemandAccumulator::new(Duration::ZERO).expect_err("zero step");
        assert!(err.to_string().contains("step"));
    }
}
