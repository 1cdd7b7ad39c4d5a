//! Factored Thompson sampling over a discrete (grid) space. With tens of trials and a grid of
//! a hundred points, one arm per point would only ever explore; one Gaussian arm per
//! (parameter, level) shares what a trial teaches across every point with that level.

use std::collections::BTreeSet;

use shadowtap_loadgen::LoadRng;
use shadowtap_loadgen::rand::RngExt as _;

use super::{Explorer, Space, key, rng, transform};
use crate::trial::Params;

pub struct Bandit {
    rng: LoadRng,
    observed: Vec<(Params, f64)>,
    visited: BTreeSet<String>,
}

impl Bandit {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: rng(seed),
            observed: Vec::new(),
            visited: BTreeSet::new(),
        }
    }

    fn normal(&mut self) -> f64 {
        // Box–Muller.
        let u1: f64 = self.rng.random::<f64>().max(1e-12);
        let u2: f64 = self.rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

impl Explorer for Bandit {
    fn name(&self) -> &'static str {
        "bandit"
    }

    fn propose(&mut self, space: &Space, _: &[f64]) -> Option<Params> {
        let costs: Vec<f64> = self.observed.iter().map(|(_, c)| *c).collect();
        let y = transform(&costs);
        let n = y.len() as f64;
        let mean = if y.is_empty() {
            0.0
        } else {
            y.iter().sum::<f64>() / n
        };
        let sd = if y.len() > 1 {
            (y.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0))
                .sqrt()
                .max(1e-6)
        } else {
            1.0
        };
        // A sampled value per (parameter, level): posterior of the level's mean cost with a
        // prior at the overall mean worth one observation.
        let mut samples: Vec<Vec<(crate::trial::ParamValue, f64)>> = Vec::new();
        for p in space.parameters() {
            let mut per_level = Vec::new();
            for level in &p.grid {
                let ys: Vec<f64> = self
                    .observed
                    .iter()
                    .zip(&y)
                    .filter(|((params, _), _)| params.get(&p.name) == Some(level))
                    .map(|(_, v)| *v)
                    .collect();
                let k = ys.len() as f64;
                let post_mean = (mean + ys.iter().sum::<f64>()) / (k + 1.0);
                let post_sd = sd / (k + 1.0).sqrt();
                per_level.push((level.clone(), post_mean + post_sd * self.normal()));
            }
            samples.push(per_level);
        }
        let mut best: Option<(f64, Params)> = None;
        for point in space.grid() {
            if self.visited.contains(&key(point)) {
                continue;
            }
            let score: f64 = space
                .parameters()
                .iter()
                .zip(&samples)
                .map(|(p, levels)| {
                    levels
                        .iter()
                        .find(|(l, _)| point.get(&p.name) == Some(l))
                        .map_or(0.0, |(_, s)| *s)
                })
                .sum();
            if best.as_ref().is_none_or(|(b, _)| score < *b) {
                best = Some((score, point.clone()));
            }
        }
        let (_, p) = best?;
        self.visited.insert(key(&p));
        Some(p)
    }

    fn observe(&mut self, _: &Space, _: &[f64], params: &Params, cost: f64) {
        self.observed.push((params.clone(), cost));
    }
}
