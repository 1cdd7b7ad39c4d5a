use std::time::{Duration, Instant};

use super::*;
use crate::{
    FleetConfig,
    decision::PolicySet,
    wire::{Observation, WindowCounts},
};

const STEP: u64 = 1000;

fn fleet() -> Fleet {
    let policies = PolicySet::from_toml(
        r#"
[defaults]
capacity_per_instance = 5.0
target_utilisation = 1.0
provisioning_lead_time = "2s"
horizon = "2s"
min_instances = 1
max_instances = 50
scale_out_cooldown = "0s"
"#,
    )
    .expect("policy");
    Fleet::new(
        FleetConfig {
            merge_wait: Duration::from_secs(3600),
            idle_close: Duration::from_secs(3600),
            ..FleetConfig::default()
        },
        policies,
    )
}

fn obs(window: u64, requests: u64) -> Observation {
    Observation {
        agent_id: "a".into(),
        resource: "shop.example@10.0.0.2:80".into(),
        window_start_ms: window * STEP,
        window_end_ms: (window + 1) * STEP,
        seq: window,
        summary: WindowCounts {
            requests,
            responses: requests,
            ..WindowCounts::default()
        },
    }
}

#[test]
fn assets_are_served_at_the_root_and_under_ui() {
    let (status, kind, html) = asset("/").expect("index");
    assert_eq!((status, kind), ("200 OK", "text/html; charset=utf-8"));
    assert!(html.contains("/ui/app.js") && html.contains("/ui/app.css"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing is fetched from elsewhere"
    );
    assert_eq!(asset("/ui/").map(|r| r.2), Some(html));
    let js = asset("/ui/app.js").expect("js").2;
    assert!(js.contains("/v1/dashboard"));
    assert!(asset("/ui/app.css").is_some());
    assert!(asset("/ui/other.js").is_none() && asset("/metrics").is_none());
}

#[test]
fn losses_sum_the_samples_of_each_metric() {
    let page = "# HELP shadowtap_kernel_sampled_out_total x\n\
# TYPE shadowtap_kernel_sampled_out_total counter\n\
shadowtap_kernel_sampled_out_total{direction=\"ingress\"} 3\n\
shadowtap_kernel_sampled_out_total{direction=\"egress\"} 4\n\
shadowtap_kernel_sampled_out_totally 100\n\
shadowtap_kernel_ringbuf_reserve_failed_total{direction=\"ingress\"} 0\n";
    let losses = losses_from_metrics(page, AGENT_LOSSES);
    assert_eq!(losses["sampled_out"], Some(7.0));
    assert_eq!(losses["ring_buffer_full"], Some(0.0));
    assert_eq!(losses["spool_dropped"], None, "no spool without Kafka");
}

#[test]
fn fleet_views_carry_demand_forecast_capacity_and_the_timeline() {
    let mut f = fleet();
    let mut timeline = DecisionTimeline::default();
    let now = Instant::now();
    // Demand grows from 1 to 40 requests a window: the policy (5 per instance) scales out.
    for w in 0..20 {
        f.ingest(obs(w, 1 + 2 * w), now);
        f.flush();
        timeline.observe(&f);
    }
    let views = fleet_resources(&f, &timeline);
    assert_eq!(views.len(), 1);
    let v = &views[0];
    assert_eq!(v.id, "shop.example@10.0.0.2:80");
    assert!(v.demand.len() >= 20, "{:?}", v.demand);
    assert!((v.demand_step_secs - 1.0).abs() < f64::EPSILON);
    let desired = v.desired_instances.expect("a decision was made");
    assert!(desired > 1, "scaled out: {v:?}");
    assert!(!v.forecast.is_empty(), "forecast band: {v:?}");
    assert_eq!(v.capacity, Some(5.0 * f64::from(desired)));
    assert!(!v.decisions.is_empty());
    assert!(
        v.decisions.windows(2).all(|w| w[0].at_ms < w[1].at_ms),
        "one entry per decision, oldest first"
    );
    assert!(v.decisions.iter().any(|d| d.action == Action::ScaleOut));
    let doc: serde_json::Value =
        serde_json::from_str(&render("collector", &views, &BTreeMap::new())).expect("JSON");
    assert_eq!(doc["resources"][0]["id"], "shop.example@10.0.0.2:80");
    assert!(doc["resources"][0]["forecast"][0]["upper"].is_number());
    // A resource the fleet forgets leaves the timeline too.
    f.drop_resource("shop.example@10.0.0.2:80");
    timeline.observe(&f);
    assert!(timeline.entries("shop.example@10.0.0.2:80").is_empty());
}

#[test]
fn the_timeline_is_bounded() {
    let mut f = fleet();
    let mut timeline = DecisionTimeline::default();
    let now = Instant::now();
    for w in 0..(TIMELINE_LENGTH as u64 + 10) {
        f.ingest(obs(w, 3), now);
        f.flush();
        timeline.observe(&f);
    }
    assert_eq!(
        timeline.entries("shop.example@10.0.0.2:80").len(),
        TIMELINE_LENGTH
    );
}
