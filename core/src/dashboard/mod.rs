//! The operator dashboard: one page of plain HTML, vanilla JS and inline SVG, embedded in the
//! binary (nothing is fetched from the internet), served at `/` by the agent's API and by the
//! collector. The page polls one JSON document, `/v1/dashboard`, which both processes render
//! with [`render`] from what they hold: per resource the demand history, the last decision's
//! forecast and band, the capacity line, a bounded decision timeline, the endpoint mix and the
//! hour-of-week profile; plus the loss counters (ring buffer, sampling, spool).

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::Serialize;

use crate::{
    decision::{Action, Decision, LifecycleStage, Reason},
    fleet::Fleet,
    forecast::ForecastPoint,
    metrics::Response,
};

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// The embedded asset at `path` (`/`, `/ui/`, `/ui/app.js`, `/ui/app.css`), or `None`.
pub fn asset(path: &str) -> Option<Response> {
    match path {
        "/" | "/ui" | "/ui/" | "/ui/index.html" => {
            Some(("200 OK", "text/html; charset=utf-8", INDEX_HTML.to_owned()))
        }
        "/ui/app.js" => Some((
            "200 OK",
            "text/javascript; charset=utf-8",
            APP_JS.to_owned(),
        )),
        "/ui/app.css" => Some(("200 OK", "text/css; charset=utf-8", APP_CSS.to_owned())),
        _ => None,
    }
}

/// Decisions kept per resource in the timeline.
pub const TIMELINE_LENGTH: usize = 50;

/// One decision as the timeline shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelineEntry {
    pub at_ms: u64,
    pub action: Action,
    pub current_instances: u32,
    pub desired_instances: u32,
    pub reason: Reason,
    pub stage: Option<LifecycleStage>,
    pub summary: String,
}

impl From<&Decision> for TimelineEntry {
    fn from(d: &Decision) -> Self {
        Self {
            at_ms: d.at_ms,
            action: d.action,
            current_instances: d.current_instances,
            desired_instances: d.desired_instances,
            reason: d.reason,
            stage: d.stage,
            summary: d.explanation.summary.clone(),
        }
    }
}

/// The last [`TIMELINE_LENGTH`] decisions of each resource, newest last. Fed by looking at
/// the fleet's last decision (once a second is enough: a decision is made per closed window),
/// so it needs no hook in the fleet; resources the fleet forgot are forgotten here too.
#[derive(Default)]
pub struct DecisionTimeline {
    by_resource: HashMap<String, VecDeque<TimelineEntry>>,
}

impl DecisionTimeline {
    pub fn observe(&mut self, fleet: &Fleet) {
        self.by_resource
            .retain(|id, _| fleet.last_decision(id).is_some());
        for id in fleet.resources() {
            let Some(decision) = fleet.last_decision(id) else {
                continue;
            };
            let entries = self.by_resource.entry(id.to_owned()).or_default();
            if entries.back().is_some_and(|e| e.at_ms >= decision.at_ms) {
                continue;
            }
            entries.push_back(decision.into());
            if entries.len() > TIMELINE_LENGTH {
                entries.pop_front();
            }
        }
    }

    pub fn entries(&self, resource: &str) -> Vec<TimelineEntry> {
        self.by_resource
            .get(resource)
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// One resource on the dashboard. Fields a process does not know are `None`/empty (the
/// collector has no latency histograms of its own; the agent without an in-process collector
/// has no decisions).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResourceView {
    pub id: String,
    /// Requests per second over the last closed minute, or ten seconds before the first
    /// minute closes (agent), or the last merged window (collector).
    pub rate_per_sec: Option<f64>,
    pub error_rate: Option<f64>,
    pub latency_us_p50: Option<u64>,
    pub latency_us_p99: Option<u64>,
    pub current_instances: Option<u32>,
    pub desired_instances: Option<u32>,
    /// Seconds per demand bucket.
    pub demand_step_secs: f64,
    /// `(bucket start unix ms, requests in the bucket)`, oldest first.
    pub demand: Vec<(u64, f64)>,
    /// The last decision's forecast points (point and band), in the same unit as `demand`
    /// when the decision's step is the demand step.
    pub forecast: Vec<ForecastPoint>,
    /// Demand the desired instances carry at the target utilisation, in the forecast's unit.
    pub capacity: Option<f64>,
    pub decisions: Vec<TimelineEntry>,
    /// Endpoint templates and their requests in the same window as `rate_per_sec`, largest
    /// first.
    pub endpoints: Vec<(String, u64)>,
    /// Requests per hour of the week (Monday 00:00 UTC first), 168 values, or empty.
    pub hour_of_week: Vec<u64>,
}

impl ResourceView {
    /// Fills what the fleet knows of `self.id`: instances, forecast, capacity, decisions,
    /// and, when the caller has no demand series of its own, the fleet's merged history.
    #[must_use]
    pub fn with_fleet(mut self, fleet: &Fleet, timeline: &DecisionTimeline) -> Self {
        if let Some(d) = fleet.last_decision(&self.id) {
            self.current_instances = Some(d.current_instances);
            self.desired_instances = Some(d.desired_instances);
            self.forecast.clone_from(&d.explanation.forecast);
            self.capacity =
                Some(d.explanation.threshold_per_instance * f64::from(d.desired_instances.max(1)));
        }
        self.decisions = timeline.entries(&self.id);
        if self.demand.is_empty()
            && let Some(snap) = fleet.snapshot(&self.id)
        {
            let start = snap.history.len().saturating_sub(DEMAND_POINTS);
            self.demand = snap.history[start..].to_vec();
            self.demand_step_secs = snap.step_ms as f64 / 1000.0;
            if self.rate_per_sec.is_none() && self.demand_step_secs > 0.0 {
                self.rate_per_sec = self.demand.last().map(|(_, v)| v / self.demand_step_secs);
            }
        }
        self
    }

    pub fn set_endpoints(&mut self, endpoints: &BTreeMap<String, u64>) {
        let mut list: Vec<(String, u64)> = endpoints.iter().map(|(k, v)| (k.clone(), *v)).collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        self.endpoints = list;
    }
}

/// Demand buckets shown per resource.
pub const DEMAND_POINTS: usize = 120;

/// The views of every resource the fleet holds, for a process (the collector) whose only
/// model is the fleet.
pub fn fleet_resources(fleet: &Fleet, timeline: &DecisionTimeline) -> Vec<ResourceView> {
    let mut ids: Vec<&str> = fleet.resources().collect();
    ids.sort_unstable();
    ids.into_iter()
        .map(|id| {
            ResourceView {
                id: id.to_owned(),
                ..ResourceView::default()
            }
            .with_fleet(fleet, timeline)
        })
        .collect()
}

/// Named loss counters read from a rendered `/metrics` page: each is the sum of the samples
/// of `metric` (over its labels), `None` when the page does not carry it (e.g. no spool
/// without Kafka).
pub fn losses_from_metrics(page: &str, wanted: &[(&str, &str)]) -> BTreeMap<String, Option<f64>> {
    wanted
        .iter()
        .map(|(label, metric)| {
            let mut total = None;
            for line in page.lines().filter(|l| !l.starts_with('#')) {
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                if &line[..name_end] != *metric {
                    continue;
                }
                if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                    total = Some(total.unwrap_or(0.0) + v);
                }
            }
            ((*label).to_owned(), total)
        })
        .collect()
}

/// The agent's loss counters: records the ring buffer had no room for, L7 records sampled
/// out, observations the spool dropped.
pub const AGENT_LOSSES: &[(&str, &str)] = &[
    (
        "ring_buffer_full",
        "shadowtap_kernel_ringbuf_reserve_failed_total",
    ),
    ("sampled_out", "shadowtap_kernel_sampled_out_total"),
    ("spool_dropped", "shadowtap_sink_spool_dropped_total"),
];

/// The `/v1/dashboard` document.
#[derive(Debug, Serialize)]
pub struct Dashboard<'a> {
    /// `agent` or `collector`.
    pub source: &'a str,
    pub generated_ms: u64,
    pub resources: &'a [ResourceView],
    pub losses: &'a BTreeMap<String, Option<f64>>,
}

/// Renders the `/v1/dashboard` document.
pub fn render(
    source: &str,
    resources: &[ResourceView],
    losses: &BTreeMap<String, Option<f64>>,
) -> String {
    let generated_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    serde_json::to_string(&Dashboard {
        source,
        generated_ms,
        resources,
        losses,
    })
    .unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests;
