//! The collector's HTTP endpoint (127.0.0.1 by default): Prometheus `/metrics`, `/healthz`,
//! and the operator dashboard — the same embedded page as the agent's at `/` (assets under
//! `/ui/`) and its document `/v1/dashboard`, rendered from the fleet after every batch.

use std::{net::SocketAddr, sync::Arc};

use shadowtap_core::{
    Fleet,
    dashboard::{self, DecisionTimeline},
    metrics::{MetricsPage, Response, serve_http},
};

/// The collector's loss counters: observations it could not decode or use.
pub const COLLECTOR_LOSSES: &[(&str, &str)] = &[
    ("malformed", "shadowtap_collector_malformed_total"),
    ("dead_lettered", "shadowtap_collector_dead_lettered_total"),
];

/// Rendered pages shared between the service loop (writer) and the responder (reader).
#[derive(Clone, Default)]
pub struct Pages {
    pub metrics: MetricsPage,
    pub dashboard: MetricsPage,
}

impl Pages {
    /// Renders `/v1/dashboard` from the fleet; `metrics` is the page just rendered.
    pub fn render_dashboard(&self, fleet: &Fleet, timeline: &mut DecisionTimeline, metrics: &str) {
        timeline.observe(fleet);
        let resources = dashboard::fleet_resources(fleet, timeline);
        let losses = dashboard::losses_from_metrics(metrics, COLLECTOR_LOSSES);
        self.dashboard
            .set(dashboard::render("collector", &resources, &losses));
    }

    fn respond(&self, path: &str) -> Response {
        if let Some(asset) = dashboard::asset(path) {
            return asset;
        }
        match path {
            "/metrics" => ("200 OK", "text/plain; version=0.0.4", self.metrics.get()),
            "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
            "/v1/dashboard" => {
                let body = self.dashboard.get();
                let body = if body.is_empty() {
                    dashboard::render("collector", &[], &std::collections::BTreeMap::new())
                } else {
                    body
                };
                ("200 OK", "application/json", body)
            }
            _ => ("404 Not Found", "text/plain", "not found\n".into()),
        }
    }
}

/// Serves `pages` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, pages: Pages) -> std::io::Result<()> {
    serve_http(addr, Arc::new(move |path: &str| pages.respond(path))).await
}

/// Refuses a non-loopback address unless `expose` (`--expose-api`) says it is intended: the
/// endpoint has no authentication.
pub fn check_listen(addr: SocketAddr, expose: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || expose {
        Ok(())
    } else {
        Err(format!(
            "--metrics-addr {addr} is not a loopback address; the metrics and dashboard \
             endpoint has no authentication: pass --expose-api to serve it there anyway"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use shadowtap_core::{
        FleetConfig,
        decision::PolicySet,
        wire::{Observation, WindowCounts},
    };

    use super::*;

    #[test]
    fn serves_the_page_and_the_fleet_view() {
        let pages = Pages::default();
        assert_eq!(pages.respond("/").0, "200 OK");
        assert_eq!(pages.respond("/").2, dashboard::asset("/").expect("page").2);
        let empty: serde_json::Value =
            serde_json::from_str(&pages.respond("/v1/dashboard").2).expect("JSON");
        assert_eq!(empty["resources"], serde_json::json!([]));

        let policies = PolicySet::from_toml(
            "[defaults]\ncapacity_per_instance = 5.0\nmin_instances = 1\nmax_instances = 9\n",
        )
        .expect("policy");
        let mut fleet = Fleet::new(
            FleetConfig {
                merge_wait: Duration::from_secs(3600),
                idle_close: Duration::from_secs(3600),
                ..FleetConfig::default()
            },
            policies,
        );
        for w in 0..12_u64 {
            let obs = Observation {
                agent_id: "a".into(),
                resource: "shop.example@10.0.0.2:80".into(),
                window_start_ms: w * 1000,
                window_end_ms: (w + 1) * 1000,
                seq: w,
                summary: WindowCounts {
                    requests: 10 + w,
                    ..WindowCounts::default()
                },
            };
            fleet.ingest(obs, Instant::now());
            fleet.flush();
        }
        let mut timeline = DecisionTimeline::default();
        let metrics = "shadowtap_collector_malformed_total 2\n";
        pages.render_dashboard(&fleet, &mut timeline, metrics);
        let doc: serde_json::Value =
            serde_json::from_str(&pages.respond("/v1/dashboard").2).expect("JSON");
        assert_eq!(doc["source"], "collector");
        assert_eq!(doc["resources"][0]["id"], "shop.example@10.0.0.2:80");
        assert_eq!(
            doc["resources"][0]["demand"].as_array().map(Vec::len),
            Some(12)
        );
        assert!(doc["resources"][0]["desired_instances"].is_number());
        assert_eq!(
            doc["resources"][0]["decisions"].as_array().map(Vec::len),
            Some(1)
        );
        assert_eq!(doc["losses"]["malformed"], 2.0);
        assert!(doc["losses"]["dead_lettered"].is_null());
    }

    #[test]
    fn listen_address_off_loopback_needs_the_flag() {
        let public: SocketAddr = "0.0.0.0:9465".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:9465".parse().expect("addr");
        assert!(check_listen(local, false).is_ok());
        assert!(check_listen(public, false).is_err_and(|e| e.contains("--expose-api")));
        assert!(check_listen(public, true).is_ok());
    }
}
