//! The bottleneck report: the rate stepped up on a shadow, each template's latency per step
//! next to the primary's as the tap saw it, and the templates whose latency grows fastest
//! with rate, with the rate where each turns (the knee).

use std::collections::BTreeMap;

use serde::Serialize;
use shadowtap_core::profile::ResourceProfile;

/// One template's corrected latency at one step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepLatency {
    pub responses: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// One step of the ramp.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    /// Scheduled requests per second.
    pub rate: f64,
    /// Achieved requests per second.
    pub achieved: f64,
    pub templates: BTreeMap<String, StepLatency>,
}

/// A template across the steps.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TemplateGrowth {
    pub template: String,
    /// The primary's p99 as the tap measured it (request head to response head), µs.
    pub primary_p99_us: u64,
    /// The shadow's p99 per step, µs (0 where the template had no response).
    pub p99_us: Vec<u64>,
    /// p99 at the highest step over p99 at the lowest.
    pub growth: f64,
    /// p99 at the highest step minus p99 at the lowest, µs: what templates are ranked by
    /// (a ratio ranks a fast endpoint's scheduling noise, 0.3 → 3 ms, above a real queue).
    pub increase_us: u64,
    /// The lowest step rate at which p99 is at least twice the lowest step's and
    /// [`KNEE_MIN_US`] more.
    pub knee_rate: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BottleneckReport {
    pub steps: Vec<Step>,
    /// Largest p99 increase first.
    pub templates: Vec<TemplateGrowth>,
    /// Templates with a knee within the ramp, fastest-growing first.
    pub bottlenecks: Vec<String>,
}

/// Templates with fewer responses than this at a step are not judged at it.
const MIN_RESPONSES: u64 = 20;
/// Least p99 rise, µs, that counts as a knee.
pub const KNEE_MIN_US: u64 = 2000;

pub fn analyse(profile: &ResourceProfile, steps: Vec<Step>) -> BottleneckReport {
    let mut names: Vec<&String> = steps.iter().flat_map(|s| s.templates.keys()).collect();
    names.sort();
    names.dedup();
    let mut templates: Vec<TemplateGrowth> = names
        .into_iter()
        .map(|name| {
            let p99_us: Vec<u64> = steps
                .iter()
                .map(|s| {
                    s.templates
                        .get(name)
                        .filter(|l| l.responses >= MIN_RESPONSES)
                        .map_or(0, |l| l.p99_us)
                })
                .collect();
            let judged: Vec<(f64, u64)> = steps
                .iter()
                .zip(&p99_us)
                .filter(|(_, p)| **p > 0)
                .map(|(s, p)| (s.rate, *p))
                .collect();
            let (growth, increase_us, knee_rate) = match (judged.first(), judged.last()) {
                (Some(&(_, low)), Some(&(_, high))) if judged.len() >= 2 => (
                    high as f64 / low.max(1) as f64,
                    high.saturating_sub(low),
                    judged
                        .iter()
                        .find(|(_, p)| *p >= 2 * low && *p >= low + KNEE_MIN_US)
                        .map(|(r, _)| *r),
                ),
                _ => (1.0, 0, None),
            };
            TemplateGrowth {
                primary_p99_us: profile
                    .templates
                    .iter()
                    .find(|t| &t.template == name)
                    .map_or(0, |t| t.latency_us.p99),
                template: name.clone(),
                p99_us,
                growth,
                increase_us,
                knee_rate,
            }
        })
        .collect();
    templates.sort_by(|a, b| {
        b.increase_us
            .cmp(&a.increase_us)
            .then(a.template.cmp(&b.template))
    });
    let bottlenecks = templates
        .iter()
        .filter(|t| t.knee_rate.is_some())
        .map(|t| t.template.clone())
        .collect();
    BottleneckReport {
        steps,
        templates,
        bottlenecks,
    }
}

impl BottleneckReport {
    /// A table: one row per template, p99 per step, growth, knee, the primary's p99.
    pub fn print(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        write!(out, "{:<48}", "template (p99 ms per step)")?;
        for s in &self.steps {
            write!(out, " {:>8}", format!("{:.0}/s", s.rate))?;
        }
        writeln!(out, " {:>7} {:>9} {:>11}", "growth", "knee", "primary p99")?;
        for t in &self.templates {
            write!(out, "{:<48}", truncate(&t.template, 48))?;
            for p in &t.p99_us {
                if *p == 0 {
                    write!(out, " {:>8}", "-")?;
                } else {
                    write!(out, " {:>8.2}", *p as f64 / 1000.0)?;
                }
            }
            writeln!(
                out,
                " {:>6.1}x {:>9} {:>9.2}ms",
                t.growth,
                t.knee_rate.map_or("-".to_owned(), |r| format!("{r:.0}/s")),
                t.primary_p99_us as f64 / 1000.0
            )?;
        }
        if self.bottlenecks.is_empty() {
            writeln!(out, "no template's p99 doubled within the ramp")
        } else {
            writeln!(
                out,
                "latency grows fastest with rate: {}",
                self.bottlenecks.join(", ")
            )
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n - 1).chain(std::iter::once('…')).collect()
    }
}
