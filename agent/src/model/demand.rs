//! Per-resource demand history: requests per step (default 1 min), bounded length, for the
//! forecast stage.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Requests per base step, contiguous (gaps are zeros), oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DemandSeries {
    /// Start of `values[0]`, seconds since the epoch, aligned to the step.
    first_start: u64,
    values: VecDeque<u64>,
}

impl DemandSeries {
    /// Adds `count` requests of the window starting at second `start`.
    pub fn add(&mut self, start: u64, count: u64, step: u64, history: usize) {
        if count == 0 {
            return;
        }
        let bucket = start - start % step;
        if self.values.is_empty() || bucket < self.first_start {
            if !self.values.is_empty() {
                // Older than the history kept (windows close in order, so only after a
                // restore with a different step): nothing to add it to.
                return;
            }
            self.first_start = bucket;
        }
        let pos = ((bucket - self.first_start) / step) as usize;
        if pos >= self.values.len() + history {
            // A gap longer than the history: only zeros before `bucket` remain in range.
            self.values.clear();
            self.first_start = bucket.saturating_sub((history.max(1) as u64 - 1) * step);
        }
        let pos = ((bucket - self.first_start) / step) as usize;
        while self.values.len() <= pos {
            self.values.push_back(0);
        }
        self.values[pos] += count;
        while self.values.len() > history {
            self.values.pop_front();
            self.first_start += step;
        }
    }

    /// Requests per `step * factor`, as `(start unix ms, requests)`, for every complete step
    /// from the first kept up to second `closed_until` (quiet steps are zeros), the last
    /// `history` base steps at most.
    pub fn series(
        &self,
        step: u64,
        factor: u64,
        history: usize,
        closed_until: u64,
    ) -> Vec<(u64, f64)> {
        if self.values.is_empty() {
            return Vec::new();
        }
        let end = closed_until - closed_until % step;
        let span = step * history as u64;
        let start = self.first_start.max(end.saturating_sub(span));
        let out_step = step * factor;
        let mut group = start.div_ceil(out_step) * out_step;
        let mut out = Vec::new();
        while group + out_step <= end {
            let mut sum = 0u64;
            let mut t = group;
            while t < group + out_step {
                if t >= self.first_start {
                    let pos = ((t - self.first_start) / step) as usize;
                    sum += self.values.get(pos).copied().unwrap_or(0);
                }
                t += step;
            }
            out.push((group * 1000, sum as f64));
            group += out_step;
        }
        out
    }

    pub fn validate(&self, step: u64, history: usize) -> Result<(), String> {
        if !self.first_start.is_multiple_of(step) {
            return Err(format!("demand series starts at {}", self.first_start));
        }
        if self.values.len() > history {
            return Err(format!("demand series of {} steps", self.values.len()));
        }
        Ok(())
    }

    pub fn heap_bytes(&self) -> usize {
        self.values.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_fills_gaps_and_bounds_history() {
        let mut d = DemandSeries::default();
        d.add(60, 3, 60, 4);
        d.add(61, 2, 60, 4);
        d.add(240, 7, 60, 4);
        // Minutes 1..=4 complete once second 300 has closed.
        let s = d.series(60, 1, 4, 300);
        assert_eq!(
            s,
            vec![
                (60_000, 5.0),
                (120_000, 0.0),
                (180_000, 0.0),
                (240_000, 7.0)
            ]
        );
        // A quiet stretch shows as zeros, and only the last 4 steps are kept.
        let s = d.series(60, 1, 4, 480);
        assert_eq!(s.len(), 4);
        assert_eq!(s[0], (240_000, 7.0));
        assert!(s[1..].iter().all(|&(_, v)| v == 0.0));
        d.add(600, 1, 60, 4);
        assert_eq!(d.values.len(), 4);
        assert_eq!(d.first_start, 420);
    }

    #[test]
    fn coarser_steps_sum_whole_groups() {
        let mut d = DemandSeries::default();
        for minute in 1..=7u64 {
            d.add(minute * 60, minute, 60, 100);
        }
        // 2-minute groups aligned to multiples of 120 s: [120,240) [240,360) [360,480).
        let s = d.series(60, 2, 100, 480);
        assert_eq!(s, vec![(120_000, 5.0), (240_000, 9.0), (360_000, 13.0)]);
    }
}
