//! The rank-frequency law of parameter values: count(rank) ∝ rank^(−s).

use serde::{Deserialize, Serialize};

/// A Zipf law fitted to ranked counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ZipfFit {
    /// The exponent: 0 is uniform popularity, about 1 is classic Zipf, larger is more skewed.
    pub s: f64,
    /// Fraction of the variance of log(count) the law explains over the fitted ranks.
    pub r_squared: f64,
    /// Ranks the fit used.
    pub ranks: u64,
}

/// Least-squares fit of `ln count = c − s·ln rank` over counts sorted descending. A
/// log-log regression rather than a maximum-likelihood fit: the counts come from a bounded
/// counter table whose smallest counts are over-estimates, and the regression is what
/// operators read off a rank-frequency plot. `None` with fewer than 3 positive counts.
pub fn fit_zipf(counts_desc: &[u64]) -> Option<ZipfFit> {
    let points: Vec<(f64, f64)> = counts_desc
        .iter()
        .enumerate()
        .filter(|&(_, &c)| c > 0)
        .map(|(i, &c)| (((i + 1) as f64).ln(), (c as f64).ln()))
        .collect();
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let r_squared = if syy > 0.0 {
        (sxy * sxy) / (sxx * syy)
    } else {
        // All counts equal: a perfectly flat law.
        1.0
    };
    Some(ZipfFit {
        s: (-slope).max(0.0),
        r_squared,
        ranks: points.len() as u64,
    })
}

impl ZipfFit {
    /// Probability weights of ranks `first..=last` under the law (unnormalised).
    pub fn weight(&self, rank: u64) -> f64 {
        (rank.max(1) as f64).powf(-self.s)
    }
}
