//! Bayesian optimisation with the GP of [`super::gp`]: a few random points, then the
//! candidate with the largest expected improvement. On a grid-only space every unvisited grid
//! point is a candidate (exact); otherwise random points and perturbations of the best.
//!
//! [`Contextual`] appends the load's features to the GP's inputs and maximises improvement
//! over the best *predicted* cost at the current load, so trials at one load inform the next.

use std::collections::BTreeSet;

use shadowtap_loadgen::LoadRng;
use shadowtap_loadgen::rand::RngExt as _;

use super::gp::{Gp, expected_improvement};
use super::{Explorer, Space, key, random_point, rng, transform};
use crate::trial::Params;

const INITIAL: usize = 5;

struct GpSearch {
    rng: LoadRng,
    with_context: bool,
    observed: Vec<(Vec<f64>, Params, f64)>,
    visited: BTreeSet<String>,
}

impl GpSearch {
    fn input(&self, space: &Space, p: &Params, context: &[f64]) -> Vec<f64> {
        let mut x = space.encode(p);
        if self.with_context {
            x.extend_from_slice(context);
        }
        x
    }

    fn visit_key(&self, p: &Params, context: &[f64]) -> String {
        if self.with_context {
            format!("{}@{context:.3?}", key(p))
        } else {
            key(p)
        }
    }

    fn candidates(&mut self, space: &Space, context: &[f64]) -> Vec<Params> {
        if space.grid_only {
            return space
                .grid()
                .iter()
                .filter(|p| !self.visited.contains(&self.visit_key(p, context)))
                .cloned()
                .collect();
        }
        let mut out = Vec::new();
        let none = BTreeSet::new();
        for _ in 0..400 {
            if let Some(p) = random_point(space, &none, &mut self.rng) {
                out.push(p);
            }
        }
        let best = self
            .observed
            .iter()
            .min_by(|a, b| a.2.total_cmp(&b.2))
            .map(|(_, p, _)| space.encode(p));
        if let Some(b) = best {
            for _ in 0..200 {
                let u: Vec<f64> = b
                    .iter()
                    .map(|x| (x + 0.08 * (self.rng.random::<f64>() - 0.5) * 2.0).clamp(0.0, 1.0))
                    .collect();
                let p = space.decode(&u);
                if space.feasible(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    fn propose(&mut self, space: &Space, context: &[f64]) -> Option<Params> {
        let choice = if self.observed.len() < INITIAL {
            let seen: BTreeSet<String> = if self.with_context {
                self.visited
                    .iter()
                    .filter_map(|k| k.rsplit_once('@').map(|(p, _)| p.to_owned()))
                    .collect()
            } else {
                self.visited.clone()
            };
            random_point(space, &seen, &mut self.rng)
                .or_else(|| random_point(space, &BTreeSet::new(), &mut self.rng))
        } else {
            let xs: Vec<Vec<f64>> = self.observed.iter().map(|(x, _, _)| x.clone()).collect();
            let costs: Vec<f64> = self.observed.iter().map(|(_, _, c)| *c).collect();
            let ys = transform(&costs);
            let gp = Gp::fit(&xs, &ys)?;
            // The incumbent: the best predicted cost among tried parameters at this context.
            let incumbent = self
                .observed
                .iter()
                .map(|(_, p, _)| gp.predict(&self.input(space, p, context)).0)
                .fold(f64::INFINITY, f64::min);
            let mut best: Option<(f64, Params)> = None;
            for p in self.candidates(space, context) {
                let (m, sd) = gp.predict(&self.input(space, &p, context));
                let ei = expected_improvement(m, sd, incumbent);
                if best.as_ref().is_none_or(|(b, _)| ei > *b) {
                    best = Some((ei, p));
                }
            }
            best.map(|(_, p)| p)
        }?;
        self.visited.insert(self.visit_key(&choice, context));
        Some(choice)
    }

    fn observe(&mut self, space: &Space, context: &[f64], params: &Params, cost: f64) {
        let x = self.input(space, params, context);
        self.observed.push((x, params.clone(), cost));
    }
}

/// GP + expected improvement over the parameters.
pub struct Bayes(GpSearch);

impl Bayes {
    pub fn new(seed: u64) -> Self {
        Self(GpSearch {
            rng: rng(seed),
            with_context: false,
            observed: Vec::new(),
            visited: BTreeSet::new(),
        })
    }
}

impl Explorer for Bayes {
    fn name(&self) -> &'static str {
        "bayes"
    }
    fn propose(&mut self, space: &Space, context: &[f64]) -> Option<Params> {
        self.0.propose(space, context)
    }
    fn observe(&mut self, space: &Space, context: &[f64], params: &Params, cost: f64) {
        self.0.observe(space, context, params, cost);
    }
}

/// GP + expected improvement over parameters and load features.
pub struct Contextual(GpSearch);

impl Contextual {
    pub fn new(seed: u64) -> Self {
        Self(GpSearch {
            rng: rng(seed),
            with_context: true,
            observed: Vec::new(),
            visited: BTreeSet::new(),
        })
    }
}

impl Explorer for Contextual {
    fn name(&self) -> &'static str {
        "contextual"
    }
    fn propose(&mut self, space: &Space, context: &[f64]) -> Option<Params> {
        self.0.propose(space, context)
    }
    fn observe(&mut self, space: &Space, context: &[f64], params: &Params, cost: f64) {
        self.0.observe(space, context, params, cost);
    }
}
