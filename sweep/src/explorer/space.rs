//! The search space of a catalogue: parameters encoded to the unit cube (log scales made
//! linear) for the explorers, and decoded back to values — either anywhere in the domain, or
//! snapped to the grid levels (the tabular benchmark measures only those).

use crate::catalogue::{Catalogue, Domain, Parameter};
use crate::trial::{ParamValue, Params};

/// A catalogue's parameters as an explorer sees them.
#[derive(Debug, Clone)]
pub struct Space {
    catalogue: Catalogue,
    /// Proposals snap to grid levels (and must be points of [`Space::grid`]).
    pub grid_only: bool,
    grid: Vec<Params>,
}

fn unit(p: &Parameter, v: &ParamValue) -> f64 {
    let lin = |x: f64, lo: f64, hi: f64, log: bool| {
        if hi <= lo {
            0.0
        } else if log {
            (x.ln() - lo.ln()) / (hi.ln() - lo.ln())
        } else {
            (x - lo) / (hi - lo)
        }
    };
    match (&p.domain, v) {
        (Domain::Choice(values), ParamValue::Choice(s)) => {
            let i = values.iter().position(|x| x == s).unwrap_or(0);
            if values.len() > 1 {
                i as f64 / (values.len() - 1) as f64
            } else {
                0.0
            }
        }
        (Domain::Int { min, max, log, .. }, v) => {
            lin(v.as_f64().unwrap_or(0.0), *min as f64, *max as f64, *log)
        }
        (Domain::Float { min, max, log, .. }, v) => {
            lin(v.as_f64().unwrap_or(0.0), *min, *max, *log)
        }
        _ => 0.0,
    }
    .clamp(0.0, 1.0)
}

fn value_at(p: &Parameter, u: f64) -> ParamValue {
    let u = u.clamp(0.0, 1.0);
    let inv = |lo: f64, hi: f64, log: bool| {
        if log {
            (lo.ln() + u * (hi.ln() - lo.ln())).exp()
        } else {
            lo + u * (hi - lo)
        }
    };
    match &p.domain {
        Domain::Choice(values) => {
            let i = (u * (values.len() - 1) as f64).round() as usize;
            ParamValue::Choice(values[i.min(values.len() - 1)].clone())
        }
        Domain::Int {
            min,
            max,
            step,
            log,
        } => {
            let x = inv(*min as f64, *max as f64, *log);
            let k = ((x - *min as f64) / *step as f64).round() as i64;
            ParamValue::Int((min + k * step).clamp(*min, *max))
        }
        Domain::Float { min, max, log, .. } => ParamValue::Float(inv(*min, *max, *log)),
    }
}

impl Space {
    pub fn new(catalogue: &Catalogue, grid_only: bool) -> Self {
        Self {
            grid: catalogue.grid(),
            catalogue: catalogue.clone(),
            grid_only,
        }
    }

    pub fn dims(&self) -> usize {
        self.catalogue.parameters.len()
    }

    pub fn parameters(&self) -> &[Parameter] {
        &self.catalogue.parameters
    }

    /// Grid points that satisfy the constraints.
    pub fn grid(&self) -> &[Params] {
        &self.grid
    }

    pub fn feasible(&self, p: &Params) -> bool {
        self.catalogue.satisfies(p) && (!self.grid_only || self.grid.contains(p))
    }

    pub fn encode(&self, p: &Params) -> Vec<f64> {
        self.catalogue
            .parameters
            .iter()
            .map(|q| p.get(&q.name).map_or(0.0, |v| unit(q, v)))
            .collect()
    }

    /// The parameters at `u`; on a grid-only space each one at its nearest grid level.
    pub fn decode(&self, u: &[f64]) -> Params {
        self.catalogue
            .parameters
            .iter()
            .zip(u)
            .map(|(q, &x)| {
                let v = if self.grid_only {
                    q.grid
                        .iter()
                        .min_by(|a, b| (unit(q, a) - x).abs().total_cmp(&(unit(q, b) - x).abs()))
                        .cloned()
                        .unwrap_or_else(|| value_at(q, x))
                } else {
                    value_at(q, x)
                };
                (q.name.clone(), v)
            })
            .collect()
    }
}
