//! The open model's schedule: a [`RateCurve`] says how many requests per second are intended
//! at each moment of the run, and [`Arrivals`] turns it into intended send times.
//!
//! Both kinds of arrivals come from the same operation, integrated-rate inversion: with
//! `Λ(t) = ∫₀ᵗ rate`, the next arrival after `t₀` is where `Λ` has grown by a given *mass*.
//! A mass of exactly 1 gives evenly spaced ("constant") arrivals, a mass drawn from Exp(1)
//! gives a Poisson process of that (possibly time-varying) intensity. No upper bound on the
//! rate is needed, unlike thinning, so a curve can be anything a forecast produces.

use std::time::Duration;

use rand::{RngExt as _, SeedableRng as _};
use serde::{Deserialize, Serialize};

use crate::LoadRng;

/// A request rate that may vary over the run. Implement it to drive the open model from a
/// profile (hour-of-week, a forecast): only [`rate_at`](RateCurve::rate_at) is required.
pub trait RateCurve {
    /// Requests per second intended at `elapsed` since the start of the run. Negative and NaN
    /// rates count as 0 (no arrivals).
    fn rate_at(&self, elapsed: Duration) -> f64;

    /// The earliest `t ≥ from` with `∫_from^t rate = mass` (in requests), or `None` if the
    /// integral does not reach `mass` before `limit`.
    ///
    /// The default integrates with the trapezoid rule on a grid of
    /// [`integration_step`](RateCurve::integration_step) and solves the crossing inside the
    /// last step exactly (for a rate linear within a step): exact for piecewise-linear curves
    /// whose breakpoints lie on the grid. Override it when the integral has a closed form.
    fn advance(&self, from: Duration, mass: f64, limit: Duration) -> Option<Duration> {
        let step = self.integration_step().as_secs_f64().max(1e-9);
        let limit = limit.as_secs_f64();
        let mut t = from.as_secs_f64();
        let mut r0 = sanitize(self.rate_at(from));
        let mut need = mass.max(0.0);
        while t < limit {
            // Grid-aligned steps, so that the evaluation points do not depend on `from`.
            let mut t1 = ((t / step).floor() + 1.0) * step;
            if t1 <= t {
                t1 = t + step;
            }
            let t1 = t1.min(limit);
            let r1 = sanitize(self.rate_at(Duration::from_secs_f64(t1)));
            let dt = t1 - t;
            let area = f64::midpoint(r0, r1) * dt;
            if area >= need {
                // r0·x + a·x² = need with a = (r1 − r0) / 2dt, in the form that neither
                // cancels nor divides by a ≈ 0.
                let a = (r1 - r0) / (2.0 * dt);
                let disc = (r0 * r0 + 4.0 * a * need).max(0.0);
                let denom = r0 + disc.sqrt();
                let x = if denom > 0.0 { 2.0 * need / denom } else { 0.0 };
                return Some(Duration::from_secs_f64(t + x.clamp(0.0, dt)));
            }
            need -= area;
            t = t1;
            r0 = r1;
        }
        None
    }

    /// Grid of the default [`advance`](RateCurve::advance): the time over which the curve
    /// may be treated as linear. 1 ms unless overridden.
    fn integration_step(&self) -> Duration {
        Duration::from_millis(1)
    }

    /// How the report names the curve, e.g. `"1000 req/s"`.
    fn describe(&self) -> String {
        "time-varying rate".to_owned()
    }
}

/// Boxed curves (what [`crate::Schedule`] holds) forward every method, so a curve's own
/// closed-form [`advance`](RateCurve::advance) is kept.
impl<C: RateCurve + ?Sized> RateCurve for Box<C> {
    fn rate_at(&self, elapsed: Duration) -> f64 {
        (**self).rate_at(elapsed)
    }

    fn advance(&self, from: Duration, mass: f64, limit: Duration) -> Option<Duration> {
        (**self).advance(from, mass, limit)
    }

    fn integration_step(&self) -> Duration {
        (**self).integration_step()
    }

    fn describe(&self) -> String {
        (**self).describe()
    }
}

fn sanitize(rate: f64) -> f64 {
    if rate.is_finite() && rate > 0.0 {
        rate
    } else {
        0.0
    }
}

/// The same rate for the whole run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConstantRate {
    per_second: f64,
}

impl ConstantRate {
    /// `per_second` must be finite and positive (the CLI checks it, see [`crate::parse_rate`]).
    pub fn new(per_second: f64) -> Self {
        Self { per_second }
    }

    pub fn per_second(&self) -> f64 {
        self.per_second
    }
}

impl RateCurve for ConstantRate {
    fn rate_at(&self, _elapsed: Duration) -> f64 {
        self.per_second
    }

    fn advance(&self, from: Duration, mass: f64, limit: Duration) -> Option<Duration> {
        let rate = sanitize(self.per_second);
        if rate == 0.0 {
            return None;
        }
        let t = from.as_secs_f64() + mass.max(0.0) / rate;
        (t < limit.as_secs_f64()).then(|| Duration::from_secs_f64(t))
    }

    fn describe(&self) -> String {
        format!("{} req/s", self.per_second)
    }
}

/// A rate given at points in time and linear in between (constant before the first point
/// and after the last): ramps, steps (two points close together) and sampled forecasts.
#[derive(Clone, Debug, PartialEq)]
pub struct PiecewiseLinear {
    /// (seconds since start, requests per second), sorted by time.
    points: Vec<(f64, f64)>,
}

impl PiecewiseLinear {
    /// Points are sorted by time; an empty list is a rate of 0.
    pub fn new(points: impl IntoIterator<Item = (Duration, f64)>) -> Self {
        let mut points: Vec<(f64, f64)> = points
            .into_iter()
            .map(|(t, r)| (t.as_secs_f64(), r))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        Self { points }
    }
}

impl RateCurve for PiecewiseLinear {
    fn rate_at(&self, elapsed: Duration) -> f64 {
        let t = elapsed.as_secs_f64();
        let i = self.points.partition_point(|p| p.0 <= t);
        match (
            i.checked_sub(1).and_then(|j| self.points.get(j)),
            self.points.get(i),
        ) {
            (Some(&(t0, r0)), Some(&(t1, r1))) if t1 > t0 => r0 + (r1 - r0) * (t - t0) / (t1 - t0),
            (Some(&(_, r)), _) | (None, Some(&(_, r))) => r,
            (None, None) => 0.0,
        }
    }

    fn describe(&self) -> String {
        format!("piecewise-linear rate ({} points)", self.points.len())
    }
}

/// How arrivals are spaced for a given rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArrivalKind {
    /// Evenly spaced in integrated rate: arrival *k* (from 0) is where `Λ(t) = k + ½`, so a
    /// run of length `T` holds `round(Λ(T))` arrivals.
    Constant,
    /// A Poisson process of intensity `rate(t)`: exponential gaps in integrated rate.
    Poisson,
}

/// Intended send times, as offsets from the start of the run, strictly before `limit`.
pub struct Arrivals<C> {
    curve: C,
    kind: ArrivalKind,
    rng: LoadRng,
    /// Time of the previous arrival (0 before the first).
    last: Duration,
    first: bool,
    limit: Duration,
}

impl<C: RateCurve> Arrivals<C> {
    pub fn new(curve: C, kind: ArrivalKind, seed: u64, limit: Duration) -> Self {
        Self {
            curve,
            kind,
            rng: LoadRng::seed_from_u64(seed),
            last: Duration::ZERO,
            first: true,
            limit,
        }
    }

    pub fn curve(&self) -> &C {
        &self.curve
    }

    /// The next intended send time, or `None` once the schedule reaches `limit`.
    pub fn next_arrival(&mut self) -> Option<Duration> {
        let mass = match self.kind {
            ArrivalKind::Constant if self.first => 0.5,
            ArrivalKind::Constant => 1.0,
            // Exp(1) by inversion; 1 − u is in (0, 1], so the logarithm is finite.
            ArrivalKind::Poisson => -(1.0 - self.rng.random::<f64>()).ln(),
        };
        self.first = false;
        let at = self.curve.advance(self.last, mass, self.limit)?;
        self.last = at;
        Some(at)
    }
}

impl<C: RateCurve> Iterator for Arrivals<C> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.next_arrival()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn constant_arrivals_are_evenly_spaced_and_counted_exactly() {
        let times: Vec<Duration> = Arrivals::new(
            ConstantRate::new(1000.0),
            ArrivalKind::Constant,
            1,
            secs(2.0),
        )
        .collect();
        assert_eq!(times.len(), 2000);
        assert!((times[0].as_secs_f64() - 0.0005).abs() < 1e-9);
        for pair in times.windows(2) {
            let gap = pair[1].as_secs_f64() - pair[0].as_secs_f64();
            assert!((gap - 0.001).abs() < 1e-8, "gap {gap}");
        }
    }

    #[test]
    fn poisson_arrivals_have_exponential_gaps() {
        let rate = 2000.0;
        let horizon = 20.0;
        let times: Vec<f64> = Arrivals::new(
            ConstantRate::new(rate),
            ArrivalKind::Poisson,
            42,
            secs(horizon),
        )
        .map(|t| t.as_secs_f64())
        .collect();
        let expected = rate * horizon;
        // 4 standard deviations of a Poisson count.
        assert!(
            (times.len() as f64 - expected).abs() < 4.0 * expected.sqrt(),
            "{} arrivals, expected about {expected}",
            times.len()
        );
        let gaps: Vec<f64> = times.windows(2).map(|p| p[1] - p[0]).collect();
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n;
        assert!((mean * rate - 1.0).abs() < 0.02, "mean gap {mean}");
        // An exponential's coefficient of variation is 1 (a constant schedule's is 0).
        let cv = var.sqrt() / mean;
        assert!((cv - 1.0).abs() < 0.03, "cv {cv}");
        // P(gap < mean) = 1 − 1/e for an exponential.
        let short = gaps.iter().filter(|&&g| g < 1.0 / rate).count() as f64 / n;
        assert!((short - (1.0 - (-1.0_f64).exp())).abs() < 0.01, "{short}");
        assert!(gaps.iter().all(|&g| g >= 0.0));
    }

    #[test]
    fn poisson_is_reproducible_from_the_seed() {
        let run = |seed| -> Vec<Duration> {
            Arrivals::new(
                ConstantRate::new(100.0),
                ArrivalKind::Poisson,
                seed,
                secs(5.0),
            )
            .collect()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    /// 0 → 2000 req/s over 2 s: Λ(1) = 500 and Λ(2) = 2000.
    fn ramp() -> PiecewiseLinear {
        PiecewiseLinear::new([(Duration::ZERO, 0.0), (secs(2.0), 2000.0)])
    }

    #[test]
    fn time_varying_constant_arrivals_follow_the_integral() {
        let times: Vec<f64> = Arrivals::new(ramp(), ArrivalKind::Constant, 1, secs(2.0))
            .map(|t| t.as_secs_f64())
            .collect();
        assert_eq!(times.len(), 2000);
        let first_half = times.iter().filter(|&&t| t < 1.0).count();
        assert_eq!(first_half, 500);
        // Arrival k sits where Λ(t) = 500·t² = k + ½.
        for (k, &t) in times.iter().enumerate().step_by(97) {
            let expected = ((k as f64 + 0.5) / 500.0).sqrt();
            assert!(
                (t - expected).abs() < 1e-6,
                "arrival {k} at {t}, expected {expected}"
            );
        }
    }

    #[test]
    fn time_varying_poisson_arrivals_follow_the_integral() {
        let mut first = 0_usize;
        let mut total = 0_usize;
        for seed in 0..20 {
            for t in Arrivals::new(ramp(), ArrivalKind::Poisson, seed, secs(2.0)) {
                total += 1;
                first += usize::from(t < secs(1.0));
            }
        }
        // 20 runs: 10 000 ± 4·100 arrivals in the first second, 40 000 ± 4·200 in all.
        assert!((first as f64 - 10_000.0).abs() < 400.0, "{first}");
        assert!((total as f64 - 40_000.0).abs() < 800.0, "{total}");
    }

    #[test]
    fn default_advance_matches_the_closed_form() {
        struct Plain(f64);
        impl RateCurve for Plain {
            fn rate_at(&self, _: Duration) -> f64 {
                self.0
            }
        }
        let exact = ConstantRate::new(333.0);
        for (from, mass) in [(0.0, 0.5), (0.1234, 1.0), (3.0, 17.25)] {
            let a = Plain(333.0).advance(secs(from), mass, secs(100.0));
            let b = exact.advance(secs(from), mass, secs(100.0));
            let (a, b) = (a.expect("reached"), b.expect("reached"));
            assert!((a.as_secs_f64() - b.as_secs_f64()).abs() < 1e-9);
        }
    }

    #[test]
    fn a_zero_rate_schedules_nothing() {
        let off = PiecewiseLinear::new([(Duration::ZERO, 0.0)]);
        assert_eq!(
            Arrivals::new(off, ArrivalKind::Poisson, 1, secs(1.0)).count(),
            0
        );
        // A step up at 1 s: nothing before it.
        let step = PiecewiseLinear::new([
            (Duration::ZERO, 0.0),
            (secs(1.0), 0.0),
            (secs(1.001), 100.0),
        ]);
        let times: Vec<Duration> =
            Arrivals::new(step, ArrivalKind::Constant, 1, secs(2.0)).collect();
        assert!(times[0] > secs(1.0));
        assert!(times.len().abs_diff(100) <= 1, "{}", times.len());
    }
}
