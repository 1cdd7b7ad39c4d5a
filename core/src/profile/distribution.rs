//! A distribution as a profile carries it: log buckets (2 significant digits, the model's
//! histogram resolution) with a summary, usable for sampling and for comparisons.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Values in `[low, high]` (inclusive), `count` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub low: u64,
    pub high: u64,
    pub count: u64,
}

/// A distribution of non-negative integers (bytes, µs, counts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    pub count: u64,
    pub min: u64,
    pub max: u64,
    /// From bucket midpoints: within the bucket resolution (1%).
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    /// Ascending, non-overlapping, no zero counts.
    pub buckets: Vec<Bucket>,
}

impl Distribution {
    /// From buckets (ascending, non-overlapping); the summary is derived from them.
    pub fn from_buckets(buckets: Vec<Bucket>) -> Self {
        let buckets: Vec<Bucket> = buckets.into_iter().filter(|b| b.count > 0).collect();
        let count = buckets.iter().map(|b| b.count).sum();
        let mut d = Self {
            count,
            min: buckets.first().map_or(0, |b| b.low),
            max: buckets.last().map_or(0, |b| b.high),
            mean: 0.0,
            p50: 0,
            p90: 0,
            p99: 0,
            buckets,
        };
        if count > 0 {
            d.mean = d
                .buckets
                .iter()
                .map(|b| mid(b) * b.count as f64)
                .sum::<f64>()
                / count as f64;
            d.p50 = d.quantile(0.5);
            d.p90 = d.quantile(0.9);
            d.p99 = d.quantile(0.99);
        }
        d
    }

    /// From an `HdrHistogram` (one bucket per distinct recorded bucket).
    pub fn from_hdr(h: &Histogram<u64>) -> Self {
        Self::from_buckets(
            h.iter_recorded()
                .map(|v| {
                    let at = v.value_iterated_to();
                    Bucket {
                        low: h.lowest_equivalent(at),
                        high: h.highest_equivalent(at),
                        count: v.count_at_value(),
                    }
                })
                .collect(),
        )
    }

    /// From raw values, bucketed at the model's resolution (2 significant digits).
    pub fn from_values(values: impl IntoIterator<Item = u64>) -> Self {
        let mut h = Histogram::<u64>::new(2).expect("2 significant digits is valid");
        h.auto(true);
        for v in values {
            // Auto-resizing: recording a u64 cannot fail.
            let _ = h.record(v);
        }
        Self::from_hdr(&h)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Checks the bucket invariants sampling and comparisons rely on.
    pub fn validate(&self) -> Result<(), String> {
        let mut previous_high: Option<u64> = None;
        let mut total = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            if b.low > b.high {
                return Err(format!("buckets[{i}]: low > high"));
            }
            if b.count == 0 {
                return Err(format!("buckets[{i}]: zero count"));
            }
            if previous_high.is_some_and(|h| b.low <= h) {
                return Err(format!("buckets[{i}]: not ascending or overlapping"));
            }
            previous_high = Some(b.high);
            total = total.saturating_add(b.count);
        }
        if total != self.count {
            return Err(format!("count {} != bucket total {total}", self.count));
        }
        Ok(())
    }

    /// The highest value of the bucket holding quantile `q` (as `HdrHistogram` reports it).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for b in &self.buckets {
            seen += b.count;
            if seen >= rank {
                return b.high;
            }
        }
        self.max
    }

    /// P(X ≤ x), values spread evenly within each bucket.
    pub fn cdf(&self, x: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let mut below = 0.0;
        for b in &self.buckets {
            let (lo, hi) = (b.low as f64, b.high as f64 + 1.0);
            if x >= hi {
                below += b.count as f64;
            } else {
                if x >= lo {
                    below += b.count as f64 * (x - lo) / (hi - lo);
                }
                break;
            }
        }
        below / self.count as f64
    }

    /// Coefficient of variation (standard deviation / mean), from bucket midpoints.
    pub fn cv(&self) -> f64 {
        if self.count < 2 || self.mean <= 0.0 {
            return 0.0;
        }
        let var = self
            .buckets
            .iter()
            .map(|b| (mid(b) - self.mean).powi(2) * b.count as f64)
            .sum::<f64>()
            / self.count as f64;
        var.sqrt() / self.mean
    }

    /// A value drawn from the distribution: `u_bucket` picks the bucket by count, `u_within`
    /// the value within it (both uniform in `[0, 1)`). `None` when empty.
    pub fn sample(&self, u_bucket: f64, u_within: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let target = (u_bucket.clamp(0.0, 1.0) * self.count as f64) as u64;
        let mut seen = 0;
        for b in &self.buckets {
            seen += b.count;
            if target < seen {
                let width = (b.high - b.low) as f64 + 1.0;
                let off = (u_within.clamp(0.0, 1.0) * width) as u64;
                return Some((b.low + off).min(b.high));
            }
        }
        self.buckets.last().map(|b| b.high)
    }

    /// The most likely value: the midpoint of the fullest bucket (temperature 0 sampling).
    pub fn mode(&self) -> Option<u64> {
        self.buckets
            .iter()
            .max_by(|a, b| a.count.cmp(&b.count).then(b.low.cmp(&a.low)))
            .map(|b| b.low + (b.high - b.low) / 2)
    }
}

fn mid(b: &Bucket) -> f64 {
    f64::midpoint(b.low as f64, b.high as f64)
}
