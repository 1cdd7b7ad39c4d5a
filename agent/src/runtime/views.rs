//! JSON views of the models for the local API, rendered once a second.

use std::collections::HashMap;

use serde_json::{Value, json};
use shadowtap_core::profile::ProfileDocument;

use super::http::ApiViews;
use crate::{
    model::{EntityId, ModelStore, WindowSummary},
    windows::Level,
};

/// The latest closed one-minute summary of each resource, for "what is it doing now".
#[derive(Default)]
pub struct LatestMinute {
    by_resource: HashMap<String, WindowSummary>,
    /// The latest closed ten-second summary: the dashboard shows it until a minute closes.
    ten_seconds: HashMap<String, WindowSummary>,
    /// The dashboard's decision timeline (of the in-process collector).
    pub timeline: shadowtap_core::dashboard::DecisionTimeline,
}

impl LatestMinute {
    pub fn absorb(&mut self, summaries: &[WindowSummary]) {
        for s in summaries {
            let table = match s.level() {
                Some(Level::Minute) => &mut self.by_resource,
                Some(Level::TenSeconds) => &mut self.ten_seconds,
                _ => continue,
            };
            if let EntityId::Resource(r) = &s.entity {
                let id = r.to_string();
                let newer = table
                    .get(&id)
                    .is_none_or(|old| old.window_start_ns <= s.window_start_ns);
                if newer {
                    table.insert(id, s.clone());
                }
            }
        }
    }

    /// Per-resource demand gauges from the last closed minute.
    pub fn render_metrics(&self, page: &mut shadowtap_core::metrics::Exposition) {
        let mut ids: Vec<&String> = self.by_resource.keys().collect();
        ids.sort_unstable();
        let requests: Vec<(Vec<(&str, &str)>, f64)> = ids
            .iter()
            .map(|id| {
                (
                    vec![("resource", id.as_str())],
                    self.by_resource[*id].requests as f64,
                )
            })
            .collect();
        let errors: Vec<(Vec<(&str, &str)>, f64)> = ids
            .iter()
            .map(|id| {
                (
                    vec![("resource", id.as_str())],
                    self.by_resource[*id].error_rate(),
                )
            })
            .collect();
        for (name, help, samples) in [
            (
                "shadowtap_resource_requests_last_minute",
                "Requests in the resource's last closed minute.",
                &requests,
            ),
            (
                "shadowtap_resource_error_rate_last_minute",
                "5xx share of responses in the last closed minute.",
                &errors,
            ),
        ] {
            if samples.is_empty() {
                continue;
            }
            let refs: Vec<(&[(&str, &str)], f64)> =
                samples.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
            page.family(name, "gauge", help, &refs);
        }
    }

    /// Renders `/v1/resources` and `/v1/resources/{id}` for the resources the model holds
    /// (evicted resources disappear from the views too, keeping this bounded).
    pub fn render(&mut self, model: &ModelStore, views: &mut ApiViews) {
        let live: Vec<_> = model.resources().cloned().collect();
        let live_ids: std::collections::HashSet<String> =
            live.iter().map(ToString::to_string).collect();
        self.by_resource.retain(|id, _| live_ids.contains(id));
        self.ten_seconds.retain(|id, _| live_ids.contains(id));
        let mut list = Vec::with_capacity(live.len());
        views.detail.clear();
        for resource in &live {
            let id = resource.to_string();
            let minute = self.by_resource.get(&id);
            let summary_view = minute.map(|s| {
                json!({
                    "window_start_ns": s.window_start_ns,
                    "requests": s.requests,
                    "responses": s.responses,
                    "connections_opened": s.connections_opened,
                    "concurrent_connections_max": s.concurrent_connections_max,
                    "bytes_in": s.bytes_in,
                    "bytes_out": s.bytes_out,
                    "error_rate": s.error_rate(),
                    "latency_us_p50": s.latency_us.value_at_quantile(0.5),
                    "latency_us_p99": s.latency_us.value_at_quantile(0.99),
                    "request_bytes_p50": s.request_size_bytes.value_at_quantile(0.5),
                    "status": s.status,
                    "endpoints": s.endpoints,
                    "endpoints_other": s.endpoints_other,
                })
            });
            list.push(json!({ "id": id, "last_minute": summary_view.clone() }));
            let entity = EntityId::Resource(resource.clone());
            let demand = model
                .demand_series(resource, model.demand_step())
                .unwrap_or_default();
            let recent: Vec<Value> = demand
                .iter()
                .rev()
                .take(60)
                .rev()
                .map(|(t, v)| json!([t, v]))
                .collect();
            let detail = json!({
                "id": id,
                "last_minute": summary_view,
                "peak_hours_of_week": model.peak_hours(&entity, 5),
                "demand_step_secs": model.demand_step().as_secs(),
                "demand_recent": recent,
            });
            views.detail.insert(id, detail.to_string());
        }
        views.resources = Value::Array(list).to_string();
    }
}

/// The dashboard's resources: the last closed minute and hour-of-week profile from the
/// model; instances, forecast, capacity, decisions and demand from the in-process collector's
/// fleet when there is one (its demand is in the forecast's unit), else the model's demand.
pub fn dashboard_resources(
    latest: &LatestMinute,
    model: &ModelStore,
    fleet: Option<&shadowtap_core::Fleet>,
    timeline: &shadowtap_core::dashboard::DecisionTimeline,
) -> Vec<shadowtap_core::dashboard::ResourceView> {
    use shadowtap_core::dashboard::{DEMAND_POINTS, ResourceView};
    let mut resources: Vec<_> = model.resources().cloned().collect();
    resources.sort_by_cached_key(ToString::to_string);
    resources
        .into_iter()
        .map(|resource| {
            let id = resource.to_string();
            let mut view = ResourceView {
                id: id.clone(),
                ..ResourceView::default()
            };
            let summary = latest
                .by_resource
                .get(&id)
                .or_else(|| latest.ten_seconds.get(&id));
            if let Some(s) = summary {
                let secs = s.window_end_ns().saturating_sub(s.window_start_ns) as f64 / 1e9;
                view.rate_per_sec = (secs > 0.0).then(|| s.requests as f64 / secs);
                view.error_rate = Some(s.error_rate());
                view.latency_us_p50 = Some(s.latency_us.value_at_quantile(0.5));
                view.latency_us_p99 = Some(s.latency_us.value_at_quantile(0.99));
                view.set_endpoints(&s.endpoints);
            }
            let entity = EntityId::Resource(resource.clone());
            view.hour_of_week = model
                .hour_of_week(&entity)
                .map(|h| h.to_vec())
                .unwrap_or_default();
            if let Some(fleet) = fleet {
                view = view.with_fleet(fleet, timeline);
            }
            if view.demand.is_empty() {
                let demand = model
                    .demand_series(&resource, model.demand_step())
                    .unwrap_or_default();
                let start = demand.len().saturating_sub(DEMAND_POINTS);
                view.demand = demand[start..].to_vec();
                view.demand_step_secs = model.demand_step().as_secs_f64();
            }
            view
        })
        .collect()
}

/// Seconds between renders of the request profiles for the API: they change slowly and
/// cost more to render than the other views.
const PROFILE_RENDER_SECONDS: u64 = 5;

/// When to render the API's request profiles, and their `source`.
pub struct ProfileViews {
    seconds: u64,
    /// `live:<interfaces>`.
    source: String,
}

impl ProfileViews {
    pub fn new(ifaces: &[String]) -> Self {
        Self {
            seconds: 0,
            source: format!("live:{}", ifaces.join(",")),
        }
    }

    /// Called every second: the rendered profiles on the first second and every
    /// [`PROFILE_RENDER_SECONDS`] after.
    pub fn tick(&mut self, model: &ModelStore) -> Option<(String, HashMap<String, String>)> {
        self.seconds += 1;
        (self.seconds % PROFILE_RENDER_SECONDS == 1).then(|| render_profiles(model, &self.source))
    }
}

/// Request profiles for the API: a document of every resource, and one per resource keyed by
/// resource id.
pub fn render_profiles(model: &ModelStore, source: &str) -> (String, HashMap<String, String>) {
    let doc = model.profile_document(None, source);
    let per_resource = doc
        .resources
        .iter()
        .map(|r| {
            let one = ProfileDocument {
                resources: vec![r.clone()],
                ..doc.clone_header()
            };
            (
                r.resource.clone(),
                serde_json::to_string(&one).unwrap_or_default(),
            )
        })
        .collect();
    (
        serde_json::to_string(&doc).unwrap_or_default(),
        per_resource,
    )
}
