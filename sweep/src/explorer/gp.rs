//! A small Gaussian process: RBF kernel, Gaussian noise, hyperparameters by marginal
//! likelihood over a coarse grid, expected improvement. Written here rather than taken from
//! egobox (ndarray + linfa + argmin: a large build for 2 cores, and its mixed-integer support
//! is more than a few dozen trials need) or friedrich (pins old nalgebra and rand 0.7/0.8
//! beside the workspace's rand 0.10, and has no acquisition functions). Sweeps have tens to a
//! few hundred observations, where a plain Cholesky is instant.

// Linear algebra reads best in its textbook letters.
#![allow(clippy::many_single_char_names)]

/// A fitted GP over points in the unit cube.
pub struct Gp {
    x: Vec<Vec<f64>>,
    alpha: Vec<f64>,
    chol: Vec<f64>,
    length: f64,
    y_mean: f64,
    y_std: f64,
}

fn rbf(a: &[f64], b: &[f64], length: f64) -> f64 {
    let d2: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    (-0.5 * d2 / (length * length)).exp()
}

/// Lower Cholesky factor of a symmetric positive definite n×n matrix (row-major).
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum();
            if i == j {
                let d = a[i * n + i] - s;
                if d <= 0.0 {
                    return None;
                }
                l[i * n + i] = d.sqrt();
            } else {
                l[i * n + j] = (a[i * n + j] - s) / l[j * n + j];
            }
        }
    }
    Some(l)
}

fn solve_lower(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut y = vec![0.0; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i * n + k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i * n + i];
    }
    y
}

fn solve_upper_t(l: &[f64], n: usize, y: &[f64]) -> Vec<f64> {
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * n + i];
    }
    x
}

impl Gp {
    /// Fits to `(x, y)`; `None` with no points.
    pub fn fit(x: &[Vec<f64>], y: &[f64]) -> Option<Self> {
        let n = x.len();
        if n == 0 {
            return None;
        }
        let y_mean = y.iter().sum::<f64>() / n as f64;
        let var = y.iter().map(|v| (v - y_mean).powi(2)).sum::<f64>() / n as f64;
        let y_std = if var > 1e-12 { var.sqrt() } else { 1.0 };
        let ys: Vec<f64> = y.iter().map(|v| (v - y_mean) / y_std).collect();
        let mut best: Option<(f64, Self)> = None;
        for length in [0.1, 0.2, 0.35, 0.6, 1.0] {
            for noise in [1e-4, 1e-2, 0.1, 0.3] {
                let mut k = vec![0.0; n * n];
                for i in 0..n {
                    for j in 0..n {
                        k[i * n + j] = rbf(&x[i], &x[j], length) + if i == j { noise } else { 0.0 };
                    }
                }
                let Some(l) = cholesky(&k, n) else { continue };
                let alpha = solve_upper_t(&l, n, &solve_lower(&l, n, &ys));
                let fit: f64 = ys.iter().zip(&alpha).map(|(a, b)| a * b).sum();
                let logdet: f64 = (0..n).map(|i| l[i * n + i].ln()).sum();
                let lml = -0.5 * fit - logdet;
                if best.as_ref().is_none_or(|(b, _)| lml > *b) {
                    best = Some((
                        lml,
                        Self {
                            x: x.to_vec(),
                            alpha,
                            chol: l,
                            length,
                            y_mean,
                            y_std,
                        },
                    ));
                }
            }
        }
        best.map(|(_, gp)| gp)
    }

    /// Posterior mean and standard deviation at `p`, in the units of `y`.
    pub fn predict(&self, p: &[f64]) -> (f64, f64) {
        let n = self.x.len();
        let k: Vec<f64> = self.x.iter().map(|xi| rbf(xi, p, self.length)).collect();
        let mean: f64 = k.iter().zip(&self.alpha).map(|(a, b)| a * b).sum();
        let v = solve_lower(&self.chol, n, &k);
        let var = (1.0 - v.iter().map(|x| x * x).sum::<f64>()).max(1e-12);
        (self.y_mean + mean * self.y_std, var.sqrt() * self.y_std)
    }
}

fn erf(x: f64) -> f64 {
    // Abramowitz and Stegun 7.1.26 (error below 1.5e-7).
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let r = 1.0 - poly * (-x * x).exp();
    if x >= 0.0 { r } else { -r }
}

/// Expected improvement below `best` (minimisation) of a normal(mean, sd) outcome.
pub fn expected_improvement(mean: f64, sd: f64, best: f64) -> f64 {
    if sd <= 1e-12 {
        return (best - mean).max(0.0);
    }
    let z = (best - mean) / sd;
    let pdf = (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let cdf = f64::midpoint(1.0, erf(z / std::f64::consts::SQRT_2));
    (best - mean) * cdf + sd * pdf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_a_smooth_function_and_knows_where_it_is_unsure() {
        let x: Vec<Vec<f64>> = (0..8).map(|i| vec![f64::from(i) / 7.0]).collect();
        let y: Vec<f64> = x.iter().map(|p| (3.0 * p[0]).sin()).collect();
        let gp = Gp::fit(&x, &y).expect("fit");
        let (m, sd) = gp.predict(&[0.5]);
        assert!((m - 1.5f64.sin()).abs() < 0.05, "{m}");
        let (_, far) = gp.predict(&[3.0]);
        assert!(far > 5.0 * sd);
        assert!(expected_improvement(0.0, 1.0, 0.0) > 0.39);
        assert!((erf(1.0) - 0.842_700_79).abs() < 1e-6);
    }
}
