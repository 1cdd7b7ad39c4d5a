use std::time::Duration;

use super::tests::request;
use super::*;
use crate::windows::{BASE_NS, Level};

const S: u64 = BASE_NS;
const MONDAY: u64 = 1_704_067_200 * S;

fn busy_model() -> ModelStore {
    let mut model = ModelStore::new(ModelConfig {
        max_clients: 50,
        emit: EmitConfig {
            clients: true,
            ..EmitConfig::default()
        },
        ..ModelConfig::default()
    })
    .expect("config");
    for i in 0..3000u64 {
        let client = format!("192.0.2.{}", i % 97);
        let path = format!("/orders/{}/lines", i % 13);
        let host = ["a.example", "b.example"][(i % 2) as usize];
        model.observe(&request(MONDAY + i * S / 20, &client, Some(host), &path));
    }
    model
}

fn feed_more(model: &mut ModelStore) -> Vec<WindowSummary> {
    for i in 0..500u64 {
        let client = format!("192.0.2.{}", i % 7);
        model.observe(&request(
            MONDAY + 150 * S + i * S / 10,
            &client,
            Some("a.example"),
            "/x",
        ));
    }
    model.flush();
    model.drain_summaries().collect()
}

#[test]
fn snapshot_round_trip_resumes_identically() {
    let mut original = busy_model();
    let mut bytes = Vec::new();
    original.write_snapshot(&mut bytes).expect("snapshot");
    let mut restored = ModelStore::read_snapshot(&bytes[..]).expect("restore");
    // Connections are not snapshotted (neither tracked nor profile connections): gauges.
    let mut want = original.stats();
    want.profile_conns = 0;
    assert_eq!(restored.stats(), want);
    // Request profiles survive, but for what depends on open connections.
    let strip = |mut profiles: Vec<shadowtap_core::profile::ResourceProfile>| {
        for p in &mut profiles {
            p.connections.open = 0;
            p.connections.requests_per_connection =
                shadowtap_core::profile::Distribution::default();
        }
        profiles
    };
    let before = strip(original.profiles(None));
    assert_eq!(before.len(), 2);
    assert!(before.iter().all(|p| p.templates[0].params.is_some()));
    assert_eq!(strip(restored.profiles(None)), before);
    assert_eq!(restored.config(), original.config());
    let id = ResourceId::new("10.0.0.1:80".parse().expect("addr"), Some("a.example"));
    assert_eq!(
        restored
            .demand_series(&id, Duration::from_secs(60))
            .expect("series"),
        original
            .demand_series(&id, Duration::from_secs(60))
            .expect("series"),
    );
    assert_eq!(
        restored.hour_of_week(&EntityId::Resource(id.clone())),
        original.hour_of_week(&EntityId::Resource(id.clone())),
    );
    // Both continue the same way: same summaries, same counters.
    let a = feed_more(&mut original);
    let b = feed_more(&mut restored);
    assert!(a.iter().any(|s| s.level() == Some(Level::Minute)));
    assert_eq!(a, b);
    let (mut after_original, after_restored) = (original.stats(), restored.stats());
    after_original.profile_conns = after_restored.profile_conns;
    assert_eq!(after_restored, after_original);
    // And through a file.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.json");
    original.save_snapshot(&path).expect("save");
    let from_file = ModelStore::load_snapshot(&path).expect("load");
    let mut want = original.stats();
    want.profile_conns = 0;
    assert_eq!(from_file.stats(), want);
}

#[test]
fn corrupt_snapshots_are_errors_not_panics() {
    let model = busy_model();
    let mut bytes = Vec::new();
    model.write_snapshot(&mut bytes).expect("snapshot");
    let text = String::from_utf8(bytes.clone()).expect("utf-8");

    // Truncated at many points, garbage, empty.
    for cut in (0..bytes.len()).step_by(bytes.len() / 37 + 1) {
        let err = ModelStore::read_snapshot(&bytes[..cut])
            .err()
            .expect("truncated");
        assert!(matches!(err, ModelError::Snapshot(_)), "{err}");
    }
    assert!(matches!(
        ModelStore::read_snapshot(&b"\x00\xffnot json"[..]),
        Err(ModelError::Snapshot(_))
    ));

    // Well-formed JSON whose content is inconsistent.
    let tamper = [
        (r#""version":1"#, r#""version":99"#),
        (r#""max_clients":50"#, r#""max_clients":5"#),
        (r#""templates":["(other)""#, r#""templates":["oops""#),
        (r#""buckets":[["#, r#""buckets":[[65000,1],["#),
        (r#""entries":[["#, r#""entries":[[4000000,1],["#),
        (r#""hour_of_week":["#, r#""hour_of_week":[1,"#),
        (r#""resource":"#, r#""resource":"not an id","x":"#),
    ];
    for (from, to) in tamper {
        assert!(text.contains(from), "snapshot has {from}");
        let bad = text.replacen(from, to, 1);
        let err = ModelStore::read_snapshot(bad.as_bytes()).err().expect(from);
        assert!(matches!(err, ModelError::Snapshot(_)), "{from}: {err}");
    }
    // A duplicated entity.
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut dup = v.clone();
    let first = dup["resources"][0].clone();
    dup["resources"].as_array_mut().expect("array").push(first);
    let err = ModelStore::read_snapshot(dup.to_string().as_bytes())
        .err()
        .expect("duplicate");
    assert!(err.to_string().contains("twice"), "{err}");

    let err = ModelStore::load_snapshot(std::path::Path::new("/nonexistent/model.json"))
        .err()
        .expect("missing");
    assert!(matches!(err, ModelError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/model.json"));
}

/// An edit of a snapshot's JSON.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

/// Each edit of snapshot `v` must make it a snapshot error whose message contains `names`.
fn assert_edits_are_errors<const N: usize>(
    v: &serde_json::Value,
    edits: [(&str, Edit); N],
    names: &str,
) {
    for (what, edit) in edits {
        let mut bad = v.clone();
        edit(&mut bad);
        let err = ModelStore::read_snapshot(bad.to_string().as_bytes())
            .err()
            .expect(what);
        assert!(matches!(err, ModelError::Snapshot(_)), "{what}: {err}");
        assert!(err.to_string().contains(names), "{what}: {err}");
    }
}

/// A model that saw one request (at MONDAY + 0.5 s), and its snapshot's JSON.
fn one_request_snapshot() -> (ModelStore, serde_json::Value) {
    let mut model = ModelStore::new(ModelConfig::default()).expect("config");
    model.observe(&request(
        MONDAY + S / 2,
        "192.0.2.1",
        Some("a.example"),
        "/x",
    ));
    let mut bytes = Vec::new();
    model.write_snapshot(&mut bytes).expect("snapshot");
    let v = serde_json::from_slice(&bytes).expect("json");
    (model, v)
}

#[test]
fn snapshots_with_windows_that_cannot_be_open_are_errors() {
    // A snapshot this build writes holds only windows that have not ended yet and none past
    // what the clock can have open. Anything else (edited by hand, or damaged) is reported as
    // corrupt, never a panic: a window that already ended would meet the next event in its
    // ring slot, and starts near the top of the range would overflow window arithmetic.
    let (_, v) = one_request_snapshot();
    let closed_until = v["clock"]["closed_until"].as_u64().expect("closed_until");
    assert_eq!(closed_until, MONDAY / S - 1, "the window of MONDAY is open");
    assert!(ModelStore::read_snapshot(v.to_string().as_bytes()).is_ok());
    let second = |v: &serde_json::Value| {
        let seconds = v["resources"][0]["windows"]["seconds"]
            .as_array()
            .expect("ring");
        seconds
            .iter()
            .position(|s| s["used"] == true)
            .expect("a used 1 s window")
    };
    let used = second(&v);
    let edits: [(&str, Edit); 4] = [
        (
            "the clock moved past the window's end",
            Box::new(move |v| v["clock"]["closed_until"] = (closed_until + 3).into()),
        ),
        (
            "a 1 s window at the top of the range",
            Box::new(move |v| {
                v["resources"][0]["windows"]["seconds"][used]["start"] = u64::MAX.into();
            }),
        ),
        (
            "a 10 s window at the top of the range",
            Box::new(|v| {
                let ten = &mut v["resources"][0]["windows"]["ten"];
                ten["used"] = true.into();
                ten["start"] = (u64::MAX - 5).into();
            }),
        ),
        (
            "a 1 min window that ended",
            Box::new(move |v| {
                let minute = &mut v["resources"][0]["windows"]["minute"];
                minute["used"] = true.into();
                minute["start"] = (closed_until / 60 * 60 - 120).into();
            }),
        ),
    ];
    assert_edits_are_errors(&v, edits, "window");
}

#[test]
fn snapshots_with_an_impossible_clock_are_errors() {
    // A clock this build writes has closed up to its watermark, and at most to the end of
    // the latest event's minute (end of stream). One behind its watermark would admit
    // windows further apart than an entity's ring holds, and closing them would lose data.
    let (mut model, v) = one_request_snapshot();
    let closed_until = v["clock"]["closed_until"].as_u64().expect("closed_until");
    let edits: [(&str, Edit); 3] = [
        (
            "closed far behind the watermark",
            Box::new(move |v| v["clock"]["closed_until"] = (closed_until - 1_000).into()),
        ),
        (
            "closed far past the latest event",
            Box::new(move |v| v["clock"]["closed_until"] = (closed_until + 1_000).into()),
        ),
        (
            "closed without any event",
            Box::new(|v| v["clock"]["max_ts_ns"] = serde_json::Value::Null),
        ),
    ];
    assert_edits_are_errors(&v, edits, "clock closed");
    // The end of stream's clock (closed to the end of the minute) is one this build writes.
    model.flush();
    let mut bytes = Vec::new();
    model.write_snapshot(&mut bytes).expect("snapshot");
    assert!(ModelStore::read_snapshot(&bytes[..]).is_ok());
}

#[test]
fn profile_sampling_keeps_one_connection_in_n_and_the_rate() {
    // 800 clients (one connection each, port 40000), 5 requests each, 10 requests a second.
    let feed = |sample: u32| {
        let mut model = ModelStore::new(ModelConfig {
            profile_sample: sample,
            ..ModelConfig::default()
        })
        .expect("config");
        for i in 0..4000u64 {
            let client = format!("192.0.{}.{}", (i % 800) / 200, (i % 800) % 200 + 1);
            model.observe(&request(
                MONDAY + i * S / 10,
                &client,
                Some("a.example"),
                "/x",
            ));
        }
        model.flush();
        model.profiles(None).remove(0)
    };
    let all = feed(1);
    let sampled = feed(4);
    assert_eq!(all.connections.open, 800);
    assert_eq!(all.requests, 4000);
    assert_eq!(sampled.connection_sample, 4);
    // A hash picks the connections: about a quarter, each with all its requests.
    assert!(
        (150..=250).contains(&sampled.connections.open),
        "{}",
        sampled.connections.open
    );
    assert_eq!(sampled.requests, 5 * sampled.connections.open);
    // The rate is of all requests either way.
    let ratio = sampled.arrivals.mean_rate_per_s / all.arrivals.mean_rate_per_s;
    assert!((0.8..1.25).contains(&ratio), "{ratio}");
    assert!(
        ModelStore::new(ModelConfig {
            profile_sample: 0,
            ..ModelConfig::default()
        })
        .is_err()
    );
}
