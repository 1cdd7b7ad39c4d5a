//! Rate curves learned elsewhere: a profile's hour-of-week curve and a forecast, both
//! time-compressed by `speed` (60: an hour of the curve in a minute of the run). Rates are
//! the curve's own requests per second, not multiplied by `speed`: a compressed day has the
//! day's shape and the day's rates.

use std::time::Duration;

use serde::Deserialize;
use shadowtap_core::profile::{HOURS_PER_WEEK, HourOfWeek};

use crate::RateCurve;

/// A profile's weekly rate curve, from hour-of-week slot `start_slot` on.
#[derive(Clone, Debug)]
pub struct HourOfWeekCurve {
    rates: Vec<f64>,
    start_slot: usize,
    speed: f64,
    scale: f64,
}

impl HourOfWeekCurve {
    /// `speed` > 0; `scale` multiplies every rate (what-if: ×2 traffic).
    pub fn new(curve: &HourOfWeek, start_slot: usize, speed: f64, scale: f64) -> Self {
        Self {
            rates: (0..HOURS_PER_WEEK).map(|h| curve.rate(h)).collect(),
            start_slot: start_slot % HOURS_PER_WEEK,
            speed,
            scale,
        }
    }

    /// The hour-of-week slot of now (UTC), to replay the curve from the current hour.
    pub fn current_slot() -> usize {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Monday 00:00 UTC is slot 0; the epoch was a Thursday (slot 72).
        ((secs / 3600 + 72) % HOURS_PER_WEEK as u64) as usize
    }
}

impl RateCurve for HourOfWeekCurve {
    fn rate_at(&self, elapsed: Duration) -> f64 {
        let curve_hours = elapsed.as_secs_f64() * self.speed / 3600.0;
        let slot = (self.start_slot + curve_hours as usize) % HOURS_PER_WEEK;
        self.rates[slot] * self.scale
    }

    fn integration_step(&self) -> Duration {
        Duration::from_millis(10)
    }

    fn describe(&self) -> String {
        format!(
            "hour-of-week curve from slot {} at {}x speed{}",
            self.start_slot,
            self.speed,
            if (self.scale - 1.0).abs() > f64::EPSILON {
                format!(", scaled {}x", self.scale)
            } else {
                String::new()
            }
        )
    }
}

/// Which line of a forecast to follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForecastBound {
    /// The point forecast.
    Point,
    /// The upper bound of the prediction interval (what the decision engine provisions for).
    Upper,
}

/// A demand forecast as a rate curve: each point's demand spread over its step.
#[derive(Clone, Debug)]
pub struct ForecastCurve {
    /// (start offset in curve time, requests per second).
    steps: Vec<(f64, f64)>,
    step_s: f64,
    speed: f64,
    bound: ForecastBound,
}

/// Why a forecast cannot drive a run.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("forecast JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("forecast has no points (cold start?)")]
    Empty,
    #[error("forecast point {index}: {reason}")]
    Point { index: usize, reason: String },
}

#[derive(Deserialize)]
struct DecisionDoc {
    explanation: ExplanationDoc,
}

#[derive(Deserialize)]
struct ExplanationDoc {
    window_start_ms: u64,
    window_end_ms: u64,
    forecast: Vec<PointDoc>,
}

#[derive(Deserialize)]
struct PointDoc {
    start_ms: u64,
    point: f64,
    upper: f64,
}

impl ForecastCurve {
    /// From the agent's `GET /v1/resources/{id}/forecast` answer (the last decision with the
    /// forecast it rested on; demand is requests per window).
    pub fn from_decision_json(
        text: &str,
        bound: ForecastBound,
        speed: f64,
    ) -> Result<Self, ForecastError> {
        let doc: DecisionDoc = serde_json::from_str(text)?;
        let e = doc.explanation;
        let points = e.forecast;
        let first = points.first().ok_or(ForecastError::Empty)?;
        let step_ms = match points.get(1) {
            Some(second) => second.start_ms.saturating_sub(first.start_ms),
            None => e.window_end_ms.saturating_sub(e.window_start_ms),
        };
        if step_ms == 0 {
            return Err(ForecastError::Point {
                index: 1,
                reason: "zero step".to_owned(),
            });
        }
        let step_secs = step_ms as f64 / 1000.0;
        let mut steps = Vec::with_capacity(points.len());
        for (index, p) in points.iter().enumerate() {
            let demand = match bound {
                ForecastBound::Point => p.point,
                ForecastBound::Upper => p.upper,
            };
            if !demand.is_finite() {
                return Err(ForecastError::Point {
                    index,
                    reason: "not finite".to_owned(),
                });
            }
            let at = p.start_ms.saturating_sub(first.start_ms) as f64 / 1000.0;
            steps.push((at, demand.max(0.0) / step_secs));
        }
        Ok(Self {
            steps,
            step_s: step_secs,
            speed,
            bound,
        })
    }

    /// The highest rate over the forecast's horizon, requests per second (of the chosen
    /// bound): the load a shadow must take at the forecast peak.
    pub fn peak(&self) -> f64 {
        self.steps.iter().map(|s| s.1).fold(0.0, f64::max)
    }

    /// Curve time the forecast covers, in run time.
    pub fn run_length(&self) -> Duration {
        let end = self.steps.last().map_or(0.0, |s| s.0) + self.step_s;
        Duration::from_secs_f64(end / self.speed.max(f64::MIN_POSITIVE))
    }
}

impl RateCurve for ForecastCurve {
    fn rate_at(&self, elapsed: Duration) -> f64 {
        let t = elapsed.as_secs_f64() * self.speed;
        let i = self.steps.partition_point(|s| s.0 <= t);
        match i.checked_sub(1).and_then(|k| self.steps.get(k)) {
            Some(&(start, rate)) if t < start + self.step_s => rate,
            // Past the horizon: no forecast, no traffic (the run's duration bounds it).
            _ => 0.0,
        }
    }

    fn integration_step(&self) -> Duration {
        Duration::from_millis(10)
    }

    fn describe(&self) -> String {
        format!(
            "forecast ({:?}, {} steps of {} s) at {}x speed",
            self.bound,
            self.steps.len(),
            self.step_s,
            self.speed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_of_week_curve_is_compressed_not_rescaled() {
        let mut h = HourOfWeek {
            requests: vec![0; HOURS_PER_WEEK],
            observed_seconds: vec![3600; HOURS_PER_WEEK],
        };
        h.requests[10] = 3600 * 5;
        h.requests[11] = 3600 * 20;
        let c = HourOfWeekCurve::new(&h, 10, 60.0, 1.0);
        assert!((c.rate_at(Duration::from_secs(30)) - 5.0).abs() < 1e-9);
        assert!((c.rate_at(Duration::from_secs(90)) - 20.0).abs() < 1e-9);
        assert!(c.rate_at(Duration::from_secs(150)).abs() < 1e-9);
        // ×2 what-if.
        let c2 = HourOfWeekCurve::new(&h, 10, 60.0, 2.0);
        assert!((c2.rate_at(Duration::from_secs(90)) - 40.0).abs() < 1e-9);
        // 5·60 requests in the first compressed hour, then 20/s: 1490 are reached at 119.5 s.
        let t = c
            .advance(Duration::ZERO, 1490.0, Duration::from_secs(200))
            .expect("reached");
        assert!((t.as_secs_f64() - 119.5).abs() < 0.05, "{t:?}");
    }

    #[test]
    fn forecast_curve_follows_the_chosen_bound() {
        let json = r#"{"explanation": {"window_start_ms": 0, "window_end_ms": 60000,
            "forecast": [{"start_ms": 60000, "point": 600, "lower": 500, "upper": 1200},
                         {"start_ms": 120000, "point": 1200, "lower": 900, "upper": 2400}]}}"#;
        let point =
            ForecastCurve::from_decision_json(json, ForecastBound::Point, 60.0).expect("ok");
        let upper =
            ForecastCurve::from_decision_json(json, ForecastBound::Upper, 60.0).expect("ok");
        // 600 requests per 60 s step = 10/s; at 60x a step lasts one second of the run.
        assert!((point.rate_at(Duration::from_millis(500)) - 10.0).abs() < 1e-9);
        assert!((point.rate_at(Duration::from_millis(1500)) - 20.0).abs() < 1e-9);
        assert!((upper.rate_at(Duration::from_millis(1500)) - 40.0).abs() < 1e-9);
        assert!(point.rate_at(Duration::from_millis(2500)).abs() < 1e-9);
        assert_eq!(point.run_length(), Duration::from_secs(2));
        // Peaks: 1200 and 2400 requests per 60 s step.
        assert!((point.peak() - 1200.0 / 60.0).abs() < 1e-9);
        assert!((upper.peak() - 2400.0 / 60.0).abs() < 1e-9);
        assert!(matches!(
            ForecastCurve::from_decision_json(
                r#"{"explanation": {"window_start_ms": 0, "window_end_ms": 1, "forecast": []}}"#,
                ForecastBound::Point,
                1.0
            ),
            Err(ForecastError::Empty)
        ));
        assert!(ForecastCurve::from_decision_json("nope", ForecastBound::Point, 1.0).is_err());
    }
}
