//! The KPI model: predicts every KPI for any parameters at any load, with an error estimate.
//!
//! **Choice: one Gaussian process per KPI**, on the standardised features of
//! [`crate::features`] (log load, log or linear numeric parameters, one-hot choices), with a
//! squared-exponential kernel with one length scale per feature (ARD) and a noise term, fitted
//! to the logarithm of the KPI. Why:
//! - a sweep yields tens to a few hundred trials: a GP's O(n³) fit is milliseconds there, and
//!   it is the most accurate smooth interpolator at that size;
//! - its posterior variance is a principled error estimate that grows away from the data
//!   (what the policy needs to know when the model is guessing), unlike a kNN spread;
//! - per-feature length scales switch off parameters that do not matter (an irrelevant
//!   parameter gets a long length scale), which an isotropic kernel or kNN cannot;
//! - log targets: latencies and resources are positive and vary multiplicatively, so relative
//!   errors are homogeneous in log space;
//! - overload is modelled apart: latency, throughput and resources are fitted on the stable
//!   trials (error rate below 1%), the error rate on all of them (see [`KpiModel::fit`]).
//!
//! Written here (~150 lines of linear algebra) rather than taken from a crate: `friedrich`
//! fits only an isotropic kernel by gradient steps on a fixed number of iterations, and `linfa`
//! has no Gaussian-process regressor; neither adds anything a plain Cholesky does not, and a
//! local implementation keeps the hyper-parameter search deterministic. Hyper-parameters
//! maximise the log marginal likelihood: a grid over a common length scale and the noise, then
//! one coordinate pass scaling each feature's length scale.

use crate::{
    features::{FeatureEncoder, mean_std},
    trial::{KpiName, Kpis, LoadFeatures, Objective, Params, TrialRecord},
};

/// Every KPI the model predicts, in [`Kpis`] field order.
pub const ALL_KPIS: [KpiName; 7] = [
    KpiName::P50Ms,
    KpiName::P99Ms,
    KpiName::P999Ms,
    KpiName::ThroughputRps,
    KpiName::ErrorRate,
    KpiName::CpuCores,
    KpiName::RssBytes,
];

/// Trials whose measured error rate is below this are stable (not overloaded).
pub const STABLE_ERROR_RATE: f64 = 0.01;

/// At most this many trials take part in the hyper-parameter search (the final fit uses all).
const SEARCH_ROWS: usize = 240;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ModelError {
    #[error("the KPI model needs at least {needed} usable trials, got {got}")]
    TooFewTrials { needed: usize, got: usize },
}

/// One KPI's prediction: the value and its one-sigma error, both in the KPI's unit.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Predicted {
    #[serde(with = "crate::json_f64")]
    pub value: f64,
    #[serde(with = "crate::json_f64")]
    pub error: f64,
}

/// Every KPI predicted for one (load, parameters).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KpiPrediction {
    pub kpis: Vec<(KpiName, Predicted)>,
}

impl KpiPrediction {
    pub fn get(&self, kpi: KpiName) -> Predicted {
        self.kpis.iter().find(|(k, _)| *k == kpi).map_or(
            Predicted {
                value: f64::NAN,
                error: f64::INFINITY,
            },
            |(_, p)| *p,
        )
    }

    /// The predicted values as a [`Kpis`] record (for [`Objective::cost`]).
    pub fn as_kpis(&self) -> Kpis {
        let v = |k| self.get(k).value;
        Kpis {
            p50_ms: v(KpiName::P50Ms),
            p99_ms: v(KpiName::P99Ms),
            p999_ms: v(KpiName::P999Ms),
            throughput_rps: v(KpiName::ThroughputRps),
            error_rate: v(KpiName::ErrorRate).max(0.0),
            cpu_cores: v(KpiName::CpuCores),
            rss_bytes: v(KpiName::RssBytes).max(0.0) as u64,
            objective_noise: None,
        }
    }

    /// The objective's cost and its one-sigma error (infinite cost when predicted infeasible).
    pub fn cost(&self, objective: &Objective) -> Predicted {
        let cost = objective.cost(&self.as_kpis());
        Predicted {
            value: cost,
            error: self.get(objective.kpi).error,
        }
    }
}

/// A fitted model of every KPI.
#[derive(Debug, Clone)]
pub struct KpiModel {
    encoder: FeatureEncoder,
    per_kpi: Vec<(KpiName, Gp)>,
    trials: usize,
}

impl KpiModel {
    /// Fits the model to the trials that ran to completion (early-stopped trials have partial
    /// KPIs and would teach it wrong values).
    pub fn fit(records: &[TrialRecord]) -> Result<Self, ModelError> {
        let usable: Vec<&TrialRecord> = records.iter().filter(|r| !r.early_stopped).collect();
        if usable.len() < 3 {
            return Err(ModelError::TooFewTrials {
                needed: 3,
                got: usable.len(),
            });
        }
        let encoder = FeatureEncoder::fit_trials(&usable);
        let x: Vec<Vec<f64>> = usable
            .iter()
            .map(|r| encoder.encode(&r.load, Some(&r.params)))
            .collect();
        // Latency, throughput and resources are fitted on the stable trials only: an overloaded
        // trial's latency is a cliff (×100 in one load step) that would force short length
        // scales everywhere and spoil the interpolation where the policy needs it. Overload is
        // the error-rate model's job, fitted on every trial; the objective marks a predicted
        // error rate above its ceiling infeasible whatever the predicted latency.
        let stable: Vec<usize> = (0..usable.len())
            .filter(|&i| usable[i].kpis.error_rate < STABLE_ERROR_RATE)
            .collect();
        let per_kpi = ALL_KPIS
            .iter()
            .map(|&kpi| {
                let rows: Vec<usize> = if kpi == KpiName::ErrorRate || stable.len() < 3 {
                    (0..usable.len()).collect()
                } else {
                    stable.clone()
                };
                let xs: Vec<Vec<f64>> = rows.iter().map(|&i| x[i].clone()).collect();
                let y: Vec<f64> = rows.iter().map(|&i| kpi.value(&usable[i].kpis)).collect();
                (kpi, Gp::fit(&xs, &y))
            })
            .collect();
        Ok(Self {
            encoder,
            per_kpi,
            trials: usable.len(),
        })
    }

    /// Trials the model was fitted to.
    pub fn trials(&self) -> usize {
        self.trials
    }

    /// Every KPI for `params` at `load`.
    pub fn predict(&self, load: &LoadFeatures, params: &Params) -> KpiPrediction {
        let x = self.encoder.encode(load, Some(params));
        KpiPrediction {
            kpis: self
                .per_kpi
                .iter()
                .map(|(kpi, gp)| (*kpi, gp.predict(&x)))
                .collect(),
        }
    }
}

/// A Gaussian process on one KPI, in log space.
#[derive(Debug, Clone)]
struct Gp {
    x: Vec<Vec<f64>>,
    /// 1 / length scale², per feature.
    inv_ls2: Vec<f64>,
    /// Noise variance relative to the signal variance (standardised targets).
    noise: f64,
    chol: Vec<f64>,
    alpha: Vec<f64>,
    /// Target transform: t = ln(v + offset), standardised by mean and std.
    offset: f64,
    y_mean: f64,
    y_std: f64,
}

impl Gp {
    fn fit(x: &[Vec<f64>], values: &[f64]) -> Self {
        let offset = log_offset(values);
        let t: Vec<f64> = values.iter().map(|v| (v.max(0.0) + offset).ln()).collect();
        let (y_mean, y_std) = mean_std(&t);
        let y_std = if y_std > 1e-12 { y_std } else { 1.0 };
        let y: Vec<f64> = t.iter().map(|v| (v - y_mean) / y_std).collect();
        let d = x.first().map_or(0, Vec::len);

        // Search on an evenly strided subset when there are many trials.
        let stride = x.len().div_ceil(SEARCH_ROWS).max(1);
        let xs: Vec<Vec<f64>> = x.iter().step_by(stride).cloned().collect();
        let ys: Vec<f64> = y.iter().step_by(stride).copied().collect();
        let scale = (d.max(1) as f64).sqrt();
        let mut best = (f64::NEG_INFINITY, vec![1.0; d], 1e-2);
        for base in [0.25, 0.5, 1.0, 2.0] {
            for noise in [1e-4, 1e-3, 1e-2, 1e-1] {
                let inv = vec![1.0 / (base * scale).powi(2); d];
                let lml = log_marginal_likelihood(&xs, &ys, &inv, noise);
                if lml > best.0 {
                    best = (lml, inv, noise);
                }
            }
        }
        let (mut best_lml, mut inv_ls2, noise) = best;
        for j in 0..d {
            let start = inv_ls2[j];
            for factor in [16.0, 4.0, 0.25, 1.0 / 64.0] {
                let mut trial = inv_ls2.clone();
                trial[j] = start * factor;
                let lml = log_marginal_likelihood(&xs, &ys, &trial, noise);
                if lml > best_lml + 1e-9 {
                    best_lml = lml;
                    inv_ls2 = trial;
                }
            }
        }
        let (chol, alpha) = factor(x, &y, &inv_ls2, noise).unwrap_or_else(|| {
            // Only a degenerate (all-identical) design fails even with jitter: fall back to
            // the mean with a large error.
            (Vec::new(), Vec::new())
        });
        Self {
            x: x.to_vec(),
            inv_ls2,
            noise,
            chol,
            alpha,
            offset,
            y_mean,
            y_std,
        }
    }

    fn predict(&self, x: &[f64]) -> Predicted {
        let n = self.x.len();
        let (mu, var) = if self.alpha.is_empty() {
            (0.0, 1.0 + self.noise)
        } else {
            let k: Vec<f64> = self
                .x
                .iter()
                .map(|xi| kernel(xi, x, &self.inv_ls2))
                .collect();
            let mu = k.iter().zip(&self.alpha).map(|(a, b)| a * b).sum::<f64>();
            let v = forward(&self.chol, n, &k);
            let var = (1.0 - v.iter().map(|a| a * a).sum::<f64>()).max(0.0) + self.noise;
            (mu, var)
        };
        let log_mu = mu * self.y_std + self.y_mean;
        let log_sd = var.sqrt() * self.y_std;
        let value = (log_mu.exp() - self.offset).max(0.0);
        // Half the width of the one-sigma band, back in the KPI's unit.
        let error = ((log_mu + log_sd).exp() - (log_mu - log_sd).exp()) / 2.0;
        Predicted { value, error }
    }
}

/// A small positive offset so zero values (an error rate of 0) have a logarithm: 1% of the
/// median positive value, which keeps relative resolution above it.
fn log_offset(values: &[f64]) -> f64 {
    let mut positive: Vec<f64> = values.iter().copied().filter(|v| *v > 0.0).collect();
    if positive.is_empty() {
        return 1e-6;
    }
    positive.sort_by(f64::total_cmp);
    (positive[positive.len() / 2] * 0.01).max(1e-12)
}

fn kernel(a: &[f64], b: &[f64], inv_ls2: &[f64]) -> f64 {
    let d2: f64 = a
        .iter()
        .zip(b)
        .zip(inv_ls2)
        .map(|((x, y), w)| (x - y).powi(2) * w)
        .sum();
    (-0.5 * d2).exp()
}

/// Cholesky factor of K + noise·I (row-major lower triangle) and α = K⁻¹y; `None` when not
/// positive definite even with jitter.
#[allow(clippy::many_single_char_names)] // linear-algebra notation (L, x, y, z, n)
fn factor(x: &[Vec<f64>], y: &[f64], inv_ls2: &[f64], noise: f64) -> Option<(Vec<f64>, Vec<f64>)> {
    let n = x.len();
    for jitter in [0.0, 1e-8, 1e-6, 1e-4] {
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                a[i * n + j] = kernel(&x[i], &x[j], inv_ls2);
            }
            a[i * n + i] += noise + jitter;
        }
        if cholesky_in_place(&mut a, n) {
            let z = forward(&a, n, y);
            let alpha = backward(&a, n, &z);
            return Some((a, alpha));
        }
    }
    None
}

fn log_marginal_likelihood(x: &[Vec<f64>], y: &[f64], inv_ls2: &[f64], noise: f64) -> f64 {
    let n = x.len();
    let Some((l, alpha)) = factor(x, y, inv_ls2, noise) else {
        return f64::NEG_INFINITY;
    };
    let fit: f64 = y.iter().zip(&alpha).map(|(a, b)| a * b).sum();
    let log_det: f64 = (0..n).map(|i| l[i * n + i].ln()).sum();
    -0.5 * fit - log_det - 0.5 * n as f64 * std::f64::consts::TAU.ln()
}

fn cholesky_in_place(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return false;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    true
}

/// Solves L z = b.
#[allow(clippy::many_single_char_names)] // linear-algebra notation (L, x, y, z, n)
fn forward(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut z = vec![0.0; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i * n + k] * z[k]).sum();
        z[i] = (b[i] - s) / l[i * n + i];
    }
    z
}

/// Solves Lᵀ x = z.
#[allow(clippy::many_single_char_names)] // linear-algebra notation (L, x, y, z, n)
fn backward(l: &[f64], n: usize, z: &[f64]) -> Vec<f64> {
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k]).sum();
        x[i] = (z[i] - s) / l[i * n + i];
    }
    x
}
