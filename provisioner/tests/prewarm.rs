//! Cache pre-warm of new instances from a request profile, against real HAProxy and nginx
//! (see `common`). Needs root; skips with a message otherwise.
//!
//! The profile is core's example shop: GET / (share 0.25), GET /items/{id} with values 1, 2, 3
//! (shares 0.1875, 0.09375, 0.0625 of all requests) and POST /cart (never warmed). A key is
//! warmed when it is likely (p ≥ ½) to be asked for within the predicted peak per instance,
//! i.e. share × peak / target ≥ ln 2.

mod common;

use std::time::Duration;

use common::{Bed, assert_schema_valid, can_run, scale_event};
use serde_json::Value;
use shadowtap_core::profile::{PROFILE_SCHEMA, PROFILE_VERSION, ProfileDocument, example::shop};

/// A scale event towards `target` whose forecast peaks at `peak` requests.
fn event_with_peak(id: &str, current: u32, target: u32, peak: f64) -> String {
    let mut e: Value =
        serde_json::from_str(&scale_event(id, "api", current, target)).expect("json");
    e["data"]["explanation"]["peak_point"] = peak.into();
    e.to_string()
}

/// Requests the instance `name` logged from the pre-warmer (path, status).
fn warm_requests(bed: &Bed, name: &str) -> Vec<(String, u16)> {
    bed.read(&format!("inst/{name}/access.log"))
        .lines()
        .filter(|l| l.contains("shadowtap-prewarm"))
        .filter_map(|l| {
            // combined format: ... "GET /path HTTP/1.1" 200 ...
            let request = l.split('"').nth(1)?;
            let path = request.split_whitespace().nth(1)?.to_owned();
            let status = l
                .split('"')
                .nth(2)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((path, status))
        })
        .collect()
}

#[test]
fn new_instances_are_warmed_with_the_keys_the_forecast_makes_likely() {
    if !can_run("new_instances_are_warmed_with_the_keys_the_forecast_makes_likely") {
        return;
    }
    let bed = Bed::start();
    let doc = ProfileDocument {
        schema: PROFILE_SCHEMA.to_owned(),
        version: PROFILE_VERSION,
        generated_at_ms: 0,
        source: "test".to_owned(),
        resources: vec![shop()],
    };
    let profile = bed.path("profile.json");
    std::fs::write(&profile, serde_json::to_string(&doc).expect("profile json")).expect("write");
    // 1 instance for a peak of 1 (nothing worth warming); then 2 for a peak of 40 (20 each:
    // every key has share × 20 ≥ 1.25 ≥ ln 2); then 3 for a peak of 30 (10 each: only / and
    // /items/1 and /items/2 reach ln 2; /items/3 has 0.625).
    let events = bed.path("events.jsonl");
    std::fs::write(
        &events,
        [
            event_with_peak("w-1", 0, 1, 1.0),
            event_with_peak("w-2", 1, 2, 40.0),
            event_with_peak("w-3", 2, 3, 30.0),
        ]
        .join("\n")
            + "\n",
    )
    .expect("events");
    let mut args = bed.provisioner_args("pw-");
    args.extend(
        [
            "--events-file",
            &events.display().to_string(),
            "--lifecycle-out",
            &bed.path("lifecycle.jsonl").display().to_string(),
            "--prewarm-profile",
            &profile.display().to_string(),
            "--prewarm-concurrency",
            "2",
        ]
        .map(str::to_owned),
    );
    bed.run_provisioner("warm", &args, Duration::from_secs(60));
    assert_eq!(bed.servers().len(), 3);

    let lifecycle = bed.lifecycle();
    assert_schema_valid(&lifecycle);
    let warm: Vec<(&str, &Value)> = lifecycle
        .iter()
        .filter(|e| e["data"]["stage"] == "warm_up")
        .map(|e| {
            (
                e["data"]["instance"].as_str().unwrap_or(""),
                &e["data"]["warm"],
            )
        })
        .collect();
    assert_eq!(warm.len(), 3, "{lifecycle:?}");

    // First instance: nothing warmed, nothing sent.
    let (first, report) = warm[0];
    assert_eq!(report["keys"], 0, "{report}");
    assert!(warm_requests(&bed, first).is_empty());

    // Second: the four keys, each sent once, straight to the instance (nginx serves / and
    // answers 404 for the items it does not have: they count as failed).
    let (second, report) = warm[1];
    assert_eq!(
        (report["keys"].as_u64(), report["sent"].as_u64()),
        (Some(4), Some(4)),
        "{report}"
    );
    assert_eq!(
        (report["ok"].as_u64(), report["failed"].as_u64()),
        (Some(1), Some(3))
    );
    let share = report["predicted_key_share"].as_f64().expect("share");
    assert!(
        (share - (0.25 + 0.1875 + 0.093_75 + 0.0625)).abs() < 1e-9,
        "{share}"
    );
    assert_eq!(
        report["predicted_requests_per_instance"].as_f64(),
        Some(20.0)
    );
    let mut got = warm_requests(&bed, second);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("/".to_owned(), 200),
            ("/items/1".to_owned(), 404),
            ("/items/2".to_owned(), 404),
            ("/items/3".to_owned(), 404),
        ]
    );

    // Third: three keys; the feedback compares the second set with the (same) profile: it
    // drew exactly the share predicted, so the threshold stays at ½.
    let (third, report) = warm[2];
    assert_eq!(report["keys"].as_u64(), Some(3), "{report}");
    assert_eq!(warm_requests(&bed, third).len(), 3);
    let observed = report["previous_set_observed_share"]
        .as_f64()
        .expect("observed");
    let predicted = report["previous_set_predicted_share"]
        .as_f64()
        .expect("predicted");
    assert!((observed - predicted).abs() < 1e-9 && (predicted - share).abs() < 1e-9);
    assert_eq!(report["threshold"].as_f64(), Some(0.5));
    assert_eq!(report["demand_bias"].as_f64(), Some(1.0));
}
