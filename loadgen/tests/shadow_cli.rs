//! The binary's shadow-traffic modes against a local test server: profile-driven runs with
//! their fidelity, the bottleneck report, a what-if scenario next to its baseline, and the
//! errors that name the flag or field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::{Behaviour, TestServer};
use serde_json::Value;
use shadowtap_core::profile::{
    ArrivalProfile, ConnectionProfile, Distribution, HOURS_PER_WEEK, HourOfWeek, PROFILE_SCHEMA,
    PROFILE_VERSION, ProfileDocument, ResourceProfile, StatusMix, TemplateProfile,
};

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shadowtap-loadgen"))
        .args(args)
        .output()
        .unwrap()
}

fn template(name: &str, requests: u64, latency_us: u64) -> TemplateProfile {
    let (method, path) = name.split_once(' ').unwrap();
    TemplateProfile {
        template: name.to_owned(),
        method: method.to_owned(),
        path: path.to_owned(),
        requests,
        share: 0.0,
        responses: requests,
        request_bytes: Distribution::from_values([200, 220, 240]),
        response_bytes: Distribution::default(),
        latency_us: Distribution::from_values([latency_us]),
        status: StatusMix::default(),
        params: None,
    }
}

/// A service whose `/report` endpoint is a fifth of the traffic, 100 requests per second
/// every hour of the week but Monday 10:00 (50/s) and 11:00 (200/s).
fn profile_file(dir: &std::path::Path) -> String {
    let resource = ResourceProfile {
        resource: "svc@10.0.0.1:80".into(),
        host: Some("svc".into()),
        connection_sample: 1,
        first_request_ms: 0,
        last_request_ms: 1000,
        requests: 1000,
        responses: 1000,
        templates: vec![
            template("GET /home", 400, 300),
            template("GET /items/{id}", 400, 400),
            template("GET /report/{id}", 200, 10_000),
        ],
        templates_other: 0,
        request_bytes: Distribution::from_values([200, 220, 240]),
        response_bytes: Distribution::default(),
        status: StatusMix::default(),
        connections: ConnectionProfile {
            ended: 10,
            complete: 0,
            open: 0,
            requests_per_connection: Distribution::from_values([100]),
            think_time_us: Distribution::default(),
            transitions: Vec::new(),
            transitions_other: 0,
        },
        arrivals: ArrivalProfile {
            mean_rate_per_s: 100.0,
            inter_arrival_us: Distribution::from_values([10_000]),
            cv: 1.0,
        },
        hour_of_week: HourOfWeek {
            requests: (0..HOURS_PER_WEEK)
                .map(|h| match h {
                    10 => 180_000,
                    11 => 720_000,
                    _ => 360_000,
                })
                .collect(),
            observed_seconds: vec![3600; HOURS_PER_WEEK],
        },
    };
    let doc = ProfileDocument {
        schema: PROFILE_SCHEMA.into(),
        version: PROFILE_VERSION,
        generated_at_ms: 0,
        source: "test".into(),
        resources: vec![resource],
    };
    let path = dir.join("profile.json");
    std::fs::write(&path, serde_json::to_string(&doc).unwrap()).unwrap();
    path.to_string_lossy().into_owned()
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn profile_run_reports_its_fidelity() {
    let server = TestServer::start(Behaviour::Normal);
    let dir = tempfile::tempdir().unwrap();
    let profile = profile_file(dir.path());
    let url = server.url();
    let out = loadgen(&[
        "--target",
        &url,
        "--duration",
        "3s",
        "--max-requests",
        "100000",
        "--rate",
        "1000",
        "--profile",
        &profile,
        "--json",
        "-",
        "--quiet",
    ]);
    let v = json_of(&out);
    assert_eq!(v["report"]["errors"]["total"], 0);
    let f = &v["fidelity"];
    assert!(f["template_mix_jsd"].as_f64().unwrap() < 0.01, "{f}");
    assert!(f["request_bytes_ks"].as_f64().unwrap() < 0.1, "{f}");
}

#[test]
fn rate_profile_follows_the_weekly_curve_time_compressed() {
    let server = TestServer::start(Behaviour::Normal);
    let dir = tempfile::tempdir().unwrap();
    let profile = profile_file(dir.path());
    let url = server.url();
    // An hour per second from Monday 10:00: 50/s for a second, then 200/s for a second.
    let out = loadgen(&[
        "--target",
        &url,
        "--duration",
        "2s",
        "--max-requests",
        "100000",
        "--rate",
        "profile",
        "--start-hour",
        "10",
        "--speed",
        "3600",
        "--profile",
        &profile,
        "--json",
        "-",
        "--quiet",
    ]);
    let v = json_of(&out);
    let scheduled = v["report"]["throughput"]["scheduled"].as_u64().unwrap();
    assert!((248..=252).contains(&scheduled), "{scheduled} of 50 + 200");
    // ×2 what-if on the same curve.
    let out = loadgen(&[
        "--target",
        &url,
        "--duration",
        "2s",
        "--max-requests",
        "100000",
        "--rate",
        "profile",
        "--start-hour",
        "10",
        "--speed",
        "3600",
        "--rate-scale",
        "2",
        "--profile",
        &profile,
        "--json",
        "-",
        "--quiet",
    ]);
    let scheduled = json_of(&out)["report"]["throughput"]["scheduled"]
        .as_u64()
        .unwrap();
    assert!((496..=504).contains(&scheduled), "{scheduled} of 100 + 400");
}

#[test]
fn bottleneck_report_names_the_saturating_endpoint() {
    let server = TestServer::start(Behaviour::Bottleneck);
    let dir = tempfile::tempdir().unwrap();
    let profile = profile_file(dir.path());
    let url = server.url();
    // /report is a fifth of the traffic and serves 100/s: 20%, 53% and 87% busy at the
    // three steps, so its queue (and p99) grows with rate while the others stay flat.
    let out = loadgen(&[
        "--target",
        &url,
        "--duration",
        "3s",
        "--max-requests",
        "100000",
        "--rate",
        "433",
        "--connections",
        "64",
        "--bottleneck-steps",
        "3",
        "--profile",
        &profile,
        "--json",
        "-",
        "--quiet",
    ]);
    let v = json_of(&out);
    assert_eq!(v["bottlenecks"][0], "GET /report/{id}", "{v:#}");
    let report = &v["templates"][0];
    assert_eq!(report["template"], "GET /report/{id}");
    assert_eq!(
        report["primary_p99_us"].as_u64(),
        Some(10_047),
        "the tap's p99 (bucket top)"
    );
    let p99: Vec<u64> = report["p99_us"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert!(p99[0] >= 10_000 && p99[2] > 2 * p99[0], "{p99:?}");
}

#[test]
fn scenario_runs_next_to_its_baseline_with_the_capacity_answer() {
    let server = TestServer::start(Behaviour::Normal);
    let dir = tempfile::tempdir().unwrap();
    let profile = profile_file(dir.path());
    let scenario = dir.path().join("flash.toml");
    std::fs::write(
        &scenario,
        "name = \"flash sale\"\nduration = \"20m\"\n[rate]\nshape = \"flash-sale\"\n\
         multiplier = 10\nramp = \"5m\"\nhold = \"10m\"\ndecay = \"5m\"\n[mix]\n\
         \"GET /report/{id}\" = 0.0\n",
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[defaults]\ncapacity_per_instance = 6000.0\ntarget_utilisation = 0.8\n\
         provisioning_lead_time = \"2m\"\nhorizon = \"10m\"\nmin_instances = 1\n\
         max_instances = 50\n",
    )
    .unwrap();
    let url = server.url();
    // 20 minutes at 400x: 3 s. Baseline 50/s, peak 500/s.
    let out = loadgen(&[
        "--target",
        &url,
        "--duration",
        "3s",
        "--max-requests",
        "100000",
        "--rate",
        "50",
        "--speed",
        "400",
        "--profile",
        &profile,
        "--scenario",
        &scenario.to_string_lossy(),
        "--policy",
        &policy.to_string_lossy(),
        "--json",
        "-",
        "--quiet",
    ]);
    let v = json_of(&out);
    let base = v["baseline"]["throughput"]["achieved_rps"]
        .as_f64()
        .unwrap();
    let what_if = v["what_if"]["throughput"]["achieved_rps"].as_f64().unwrap();
    // The flash sale's mean over its curve: (2.5·5 + 10·10 + 2.5·5... ) ≈ 6.25x baseline.
    assert!((45.0..55.0).contains(&base), "{base}");
    assert!(what_if > 4.0 * base, "{what_if} vs {base}");
    assert_eq!(
        v["capacity"]["needed_instances"], 7,
        "500/s at 80/s per instance: {v:#}"
    );
    assert!(v["capacity"]["provision_by_s"].as_u64().unwrap() < 300);
}

#[test]
fn bad_shadow_inputs_name_the_flag_or_field() {
    let dir = tempfile::tempdir().unwrap();
    let profile = profile_file(dir.path());
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--target",
            "http://127.0.0.1:9",
            "--duration",
            "1s",
            "--max-requests",
            "10",
        ];
        args.extend_from_slice(extra);
        let out = loadgen(&args);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["--rate", "profile"]).contains("--rate profile needs --profile"));
    assert!(run(&["--rate", "10", "--profile", &profile, "--resource", "nope"]).contains("nope"));
    assert!(
        run(&["--rate", "10", "--profile", &profile, "--temperature", "-1"])
            .contains("--temperature -1")
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"x\"\nduration = \"1m\"\n[mix]\n\"GET /ghost\" = 2.0\n",
    )
    .unwrap();
    let err = run(&[
        "--rate",
        "10",
        "--profile",
        &profile,
        "--scenario",
        &bad.to_string_lossy(),
    ]);
    assert!(err.contains("mix.\"GET /ghost\""), "{err}");
    let broken = dir.path().join("broken.json");
    std::fs::write(
        &broken,
        "{\"schema\": \"shadowtap.profile.v1\", \"version\": 7}",
    )
    .unwrap();
    assert!(run(&["--rate", "10", "--profile", &broken.to_string_lossy()]).contains("broken.json"));
}
