//! Categorical choices with a temperature.

use rand::RngExt as _;

use crate::LoadRng;

/// Items with cumulative weights; `pick` is a binary search.
#[derive(Clone, Debug)]
pub struct Weighted<T> {
    items: Vec<T>,
    cumulative: Vec<f64>,
    /// Temperature 0: always the heaviest item (the first among equals).
    argmax: Option<usize>,
}

impl<T> Weighted<T> {
    /// Weights `w^(1/temperature)`; temperature 0 picks the heaviest item every time.
    /// `None` when no item has a positive weight.
    pub fn new(items: impl IntoIterator<Item = (T, f64)>, temperature: f64) -> Option<Self> {
        let mut out = Self {
            items: Vec::new(),
            cumulative: Vec::new(),
            argmax: None,
        };
        let mut total = 0.0;
        let mut best = f64::NEG_INFINITY;
        for (item, w) in items {
            if !(w.is_finite() && w > 0.0) {
                continue;
            }
            if w > best {
                best = w;
                out.argmax = Some(out.items.len());
            }
            total += if temperature > 0.0 {
                w.powf(1.0 / temperature)
            } else {
                0.0
            };
            out.items.push(item);
            out.cumulative.push(total);
        }
        if out.items.is_empty() {
            return None;
        }
        if temperature > 0.0 {
            out.argmax = None;
        }
        Some(out)
    }

    pub fn pick(&self, rng: &mut LoadRng) -> &T {
        let i = if let Some(i) = self.argmax {
            i
        } else {
            let total = self.cumulative.last().copied().unwrap_or(0.0);
            let u = rng.random::<f64>() * total;
            self.cumulative
                .partition_point(|&c| c <= u)
                .min(self.items.len() - 1)
        };
        &self.items[i]
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Probability of each item, in order.
    pub fn probabilities(&self) -> Vec<f64> {
        if let Some(i) = self.argmax {
            return (0..self.items.len())
                .map(|k| f64::from(u8::from(k == i)))
                .collect();
        }
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let mut prev = 0.0;
        self.cumulative
            .iter()
            .map(|&c| {
                let p = (c - prev) / total;
                prev = c;
                p
            })
            .collect()
    }
}

impl Weighted<u64> {
    /// Ranks `first..=last` with weights `rank^(−s)` (a Zipf law; `s` already tempered).
    pub fn zipf(first: u64, last: u64, s: f64) -> Self {
        Self::new(
            (first..=last.max(first)).map(|r| (r, (r as f64).powf(-s))),
            1.0,
        )
        .unwrap_or_else(|| Self {
            items: vec![first],
            cumulative: vec![1.0],
            argmax: None,
        })
    }
}
