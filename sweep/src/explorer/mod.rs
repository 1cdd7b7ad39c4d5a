//! Explorers: which trial next. All behind [`Explorer`], all deterministic given their seed.
//!
//! - [`Grid`]: every grid point in order.
//! - [`RandomSearch`]: uniform in the unit cube (on a grid-only space: unvisited grid points).
//! - [`LatinHypercube`]: stratified batches, one sample per stratum per dimension.
//! - [`Bandit`]: factored Thompson sampling for discrete spaces — a Gaussian posterior per
//!   (parameter, level), the score of a point the sum of its levels' samples.
//! - [`Bayes`]: Gaussian-process surrogate over the encoded (mixed) space, expected
//!   improvement.
//! - [`Contextual`]: the same GP over parameters *and* load features — a contextual bandit
//!   (GP-UCB/EI with context, Krause & Ong 2011): what it learnt at one load informs the next.

mod bandit;
mod bayes;
pub mod gp;
pub mod space;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use shadowtap_loadgen::LoadRng;
use shadowtap_loadgen::rand::{RngExt as _, SeedableRng as _};

pub use bandit::Bandit;
pub use bayes::{Bayes, Contextual};
pub use space::Space;

use crate::trial::Params;

/// Proposes trials and learns from their costs (lower is better; failed trials cost
/// `f64::INFINITY`). `context` is the load's feature vector (ignored by all but
/// [`Contextual`]).
pub trait Explorer {
    fn name(&self) -> &'static str;
    /// The next parameters to try; `None` when the explorer has nothing left (a finished
    /// grid, an exhausted grid-only space).
    fn propose(&mut self, space: &Space, context: &[f64]) -> Option<Params>;
    fn observe(&mut self, space: &Space, context: &[f64], params: &Params, cost: f64);
}

/// The names [`make`] knows.
pub const NAMES: &[&str] = &["grid", "random", "lhs", "bandit", "bayes", "contextual"];

/// An explorer by name.
pub fn make(name: &str, seed: u64, budget: usize) -> Option<Box<dyn Explorer>> {
    Some(match name {
        "grid" => Box::new(Grid::default()),
        "random" => Box::new(RandomSearch::new(seed)),
        "lhs" => Box::new(LatinHypercube::new(seed, budget)),
        "bandit" => Box::new(Bandit::new(seed)),
        "bayes" => Box::new(Bayes::new(seed)),
        "contextual" => Box::new(Contextual::new(seed)),
        _ => return None,
    })
}

fn rng(seed: u64) -> LoadRng {
    LoadRng::seed_from_u64(seed)
}

/// Keys of visited points (parameters print the same way every time).
fn key(p: &Params) -> String {
    serde_json::to_string(p).unwrap_or_default()
}

/// A uniformly drawn grid point not in `visited`.
fn random_unvisited(
    space: &Space,
    visited: &BTreeSet<String>,
    rng: &mut LoadRng,
) -> Option<Params> {
    let open: Vec<&Params> = space
        .grid()
        .iter()
        .filter(|p| !visited.contains(&key(p)))
        .collect();
    if open.is_empty() {
        return None;
    }
    Some(open[rng.random_range(0..open.len())].clone())
}

/// A feasible point drawn uniformly in the unit cube (grid-only: an unvisited grid point).
fn random_point(space: &Space, visited: &BTreeSet<String>, rng: &mut LoadRng) -> Option<Params> {
    if space.grid_only {
        return random_unvisited(space, visited, rng);
    }
    for _ in 0..1000 {
        let u: Vec<f64> = (0..space.dims()).map(|_| rng.random::<f64>()).collect();
        let p = space.decode(&u);
        if space.feasible(&p) {
            return Some(p);
        }
    }
    None
}

/// Every grid point, in the catalogue's order.
#[derive(Default)]
pub struct Grid {
    next: usize,
}

impl Explorer for Grid {
    fn name(&self) -> &'static str {
        "grid"
    }
    fn propose(&mut self, space: &Space, _: &[f64]) -> Option<Params> {
        let p = space.grid().get(self.next).cloned();
        self.next += 1;
        p
    }
    fn observe(&mut self, _: &Space, _: &[f64], _: &Params, _: f64) {}
}

pub struct RandomSearch {
    rng: LoadRng,
    visited: BTreeSet<String>,
}

impl RandomSearch {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: rng(seed),
            visited: BTreeSet::new(),
        }
    }
}

impl Explorer for RandomSearch {
    fn name(&self) -> &'static str {
        "random"
    }
    fn propose(&mut self, space: &Space, _: &[f64]) -> Option<Params> {
        let p = random_point(space, &self.visited, &mut self.rng)?;
        self.visited.insert(key(&p));
        Some(p)
    }
    fn observe(&mut self, _: &Space, _: &[f64], _: &Params, _: f64) {}
}

/// Batches of `batch` points, each dimension cut into `batch` strata visited once per batch.
pub struct LatinHypercube {
    rng: LoadRng,
    batch: usize,
    pending: Vec<Vec<f64>>,
    visited: BTreeSet<String>,
}

impl LatinHypercube {
    pub fn new(seed: u64, batch: usize) -> Self {
        Self {
            rng: rng(seed),
            batch: batch.max(2),
            pending: Vec::new(),
            visited: BTreeSet::new(),
        }
    }

    fn refill(&mut self, dims: usize) {
        let n = self.batch;
        let mut columns = Vec::with_capacity(dims);
        for _ in 0..dims {
            let mut perm: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                let j = self.rng.random_range(0..=i);
                perm.swap(i, j);
            }
            columns.push(perm);
        }
        self.pending = (0..n)
            .map(|i| {
                columns
                    .iter()
                    .map(|c| (c[i] as f64 + self.rng.random::<f64>()) / n as f64)
                    .collect()
            })
            .collect();
    }
}

impl Explorer for LatinHypercube {
    fn name(&self) -> &'static str {
        "lhs"
    }
    fn propose(&mut self, space: &Space, _: &[f64]) -> Option<Params> {
        for _ in 0..4 * self.batch {
            if self.pending.is_empty() {
                self.refill(space.dims());
            }
            let u = self.pending.remove(0);
            let p = space.decode(&u);
            if space.feasible(&p) && !self.visited.contains(&key(&p)) {
                self.visited.insert(key(&p));
                return Some(p);
            }
        }
        let p = random_point(space, &self.visited, &mut self.rng)?;
        self.visited.insert(key(&p));
        Some(p)
    }
    fn observe(&mut self, _: &Space, _: &[f64], _: &Params, _: f64) {}
}

/// Costs made fit for a surrogate: logarithms when all finite costs are positive (latencies
/// spread over orders of magnitude), failed trials one unit above the worst finite cost.
fn transform(costs: &[f64]) -> Vec<f64> {
    let finite: Vec<f64> = costs.iter().copied().filter(|c| c.is_finite()).collect();
    let use_log = !finite.is_empty() && finite.iter().all(|c| *c > 0.0);
    let f = |c: f64| if use_log { c.ln() } else { c };
    let worst = finite
        .iter()
        .copied()
        .map(f)
        .fold(f64::NEG_INFINITY, f64::max);
    let best = finite.iter().copied().map(f).fold(f64::INFINITY, f64::min);
    let penalty = if worst.is_finite() {
        worst + (worst - best).max(1.0)
    } else {
        1.0
    };
    costs
        .iter()
        .map(|c| if c.is_finite() { f(*c) } else { penalty })
        .collect()
}
