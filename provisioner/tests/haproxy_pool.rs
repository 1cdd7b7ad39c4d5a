//! The haproxy driver against real HAProxy and real nginx instances, in a namespace of its own
//! (see `common`). Needs root; skips with a message otherwise.

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::time::Duration;

use common::{Bed, assert_schema_valid, can_run, scale_event, wait_for};
use serde_json::Value;

fn write_events(bed: &Bed, lines: &[String]) -> String {
    let path = bed.path("events.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("events file");
    path.display().to_string()
}

fn file_args(bed: &Bed, prefix: &str, events: &str) -> Vec<String> {
    let mut args = bed.provisioner_args(prefix);
    args.extend(
        [
            "--events-file",
            events,
            "--lifecycle-out",
            &bed.path("lifecycle.jsonl").display().to_string(),
        ]
        .map(str::to_owned),
    );
    args
}

fn stages_of<'a>(events: &'a [Value], scale_event_id: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["data"]["scale_event_id"] == scale_event_id)
        .collect()
}

fn names_ok(events: &[&Value], stage: &str) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| e["data"]["stage"] == stage && e["data"]["ok"] == true)
        .map(|e| {
            e["data"]["instance"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn scale_out_to_three_then_in_to_one_never_below_one() {
    if !can_run("scale_out_to_three_then_in_to_one_never_below_one") {
        return;
    }
    let bed = Bed::start();
    // 1 → 3: the first event brings the pool to one, the second adds two.
    let events = write_events(
        &bed,
        &[
            scale_event("e-one", "api", 0, 1),
            scale_event("e-three", "api", 1, 3),
        ],
    );
    bed.run_provisioner(
        "out",
        &file_args(&bed, "so-", &events),
        Duration::from_secs(60),
    );
    let servers = bed.servers();
    assert_eq!(servers.len(), 3, "{servers:?}");
    assert!(servers.iter().all(|(_, w, _)| *w == 100), "{servers:?}");
    assert_eq!(bed.nginx_pids().len(), 3);

    let lifecycle = bed.lifecycle();
    assert_schema_valid(&lifecycle);
    let out = stages_of(&lifecycle, "e-three");
    let added = names_ok(&out, "provision");
    assert_eq!(added.len(), 2, "{out:#?}");
    assert_eq!(names_ok(&out, "warm_up"), added);
    assert_eq!(names_ok(&out, "shift_traffic"), added);
    for e in out.iter().filter(|e| e["data"]["stage"] == "shift_traffic") {
        // Four steps over 400 ms: three sleeps of 100 ms between them.
        assert!(e["data"]["duration_ms"].as_u64() >= Some(300), "{e}");
    }
    assert_eq!(
        out.last().map(|e| e["data"]["healthy_instances"].clone()),
        Some(3.into())
    );

    // Requests through HAProxy reach all three instances.
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        if let Some(name) = bed.get_through_haproxy() {
            seen.insert(name);
        }
    }
    let all: BTreeSet<String> = servers.iter().map(|(n, _, _)| n.clone()).collect();
    assert_eq!(seen, all, "answers came from {seen:?}");
    for name in &all {
        let log = bed.read(&format!("inst/{name}/access.log"));
        assert!(log.contains("GET / "), "{name} served nothing");
    }

    // 3 → 1, then 1 → 0 which must keep the last instance.
    let events = write_events(
        &bed,
        &[
            scale_event("e-in", "api", 3, 1),
            scale_event("e-zero", "api", 1, 0),
        ],
    );
    bed.run_provisioner(
        "in",
        &file_args(&bed, "so-", &events),
        Duration::from_secs(60),
    );
    let left = bed.servers();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(wait_for(Duration::from_secs(5), || bed.nginx_pids().len() == 1));
    assert_eq!(
        bed.get_through_haproxy().as_deref(),
        Some(left[0].0.as_str())
    );
    let lifecycle = bed.lifecycle();
    assert_schema_valid(&lifecycle);
    let scale_in = stages_of(&lifecycle, "e-in");
    let removed = names_ok(&scale_in, "decommission");
    assert_eq!(removed.len(), 2, "{scale_in:#?}");
    assert_eq!(names_ok(&scale_in, "shift_traffic"), removed);
    assert!(!removed.contains(&left[0].0));
    assert!(
        stages_of(&lifecycle, "e-zero").is_empty(),
        "nothing to do at target 0"
    );
}

#[test]
fn failed_provision_is_retried_with_backoff_and_reported() {
    if !can_run("failed_provision_is_retried_with_backoff_and_reported") {
        return;
    }
    let bed = Bed::start();
    let events = write_events(&bed, &[scale_event("e-fail", "api", 0, 1)]);
    let mut args = file_args(&bed, "fail-", &events);
    let at = args
        .iter()
        .position(|a| a == "--instance-cmd")
        .expect("arg")
        + 1;
    args[at] = "echo starting {name}; exit 3".to_owned();
    args.extend(["--provision-attempts", "3"].map(str::to_owned));
    bed.run_provisioner("fail", &args, Duration::from_secs(30));

    let lifecycle = bed.lifecycle();
    assert_schema_valid(&lifecycle);
    let attempts: Vec<&Value> = lifecycle.iter().collect();
    assert_eq!(attempts.len(), 3, "{attempts:#?}");
    for (n, e) in attempts.iter().enumerate() {
        assert_eq!(e["data"]["stage"], "provision");
        assert_eq!(e["data"]["ok"], false);
        assert_eq!(e["data"]["attempt"], n + 1);
        assert!(
            e["data"]["error"]
                .as_str()
                .is_some_and(|s| s.contains("exit")),
            "{e}"
        );
        assert_eq!(e["data"]["healthy_instances"], 0);
    }
    // Backoff 100 ms, then 200 ms.
    let starts: Vec<u64> = attempts
        .iter()
        .map(|e| e["data"]["started_at_ms"].as_u64().unwrap_or_default())
        .collect();
    assert!(starts[1] - starts[0] >= 100, "{starts:?}");
    assert!(starts[2] - starts[1] >= 200, "{starts:?}");
    let ids: BTreeSet<&str> = attempts.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), 3, "one id per attempt");
    assert!(bed.servers().is_empty());
}

#[test]
fn sigkill_mid_lifecycle_then_restart_ends_at_the_target() {
    if !can_run("sigkill_mid_lifecycle_then_restart_ends_at_the_target") {
        return;
    }
    let bed = Bed::start();
    let events = write_events(&bed, &[scale_event("e-kill", "api", 0, 3)]);
    let mut args = file_args(&bed, "kill-", &events);
    let at = args.iter().position(|a| a == "--ramp-time").expect("arg") + 1;
    args[at] = "2s".to_owned();
    // Kill twice: mid-ramp of the first instance, then mid-lifecycle of a later one.
    for (round, servers_before_kill) in [(0, 1), (1, 2)] {
        let mut p = bed.spawn_provisioner(&format!("kill{round}"), &args);
        let reached = wait_for(Duration::from_secs(30), || {
            bed.servers().len() >= servers_before_kill
        });
        assert!(reached, "{}", bed.read(&format!("prov-kill{round}.log")));
        std::thread::sleep(Duration::from_millis(300));
        p.0.kill().expect("SIGKILL");
        p.0.wait().expect("reap");
        let state: Value = serde_json::from_str(&bed.read("state.json")).expect("state JSON");
        assert!(
            !state["inflight"].is_null(),
            "killed after the lifecycle: {state}"
        );
    }
    bed.run_provisioner("final", &args, Duration::from_secs(60));
    let servers = bed.servers();
    assert_eq!(
        servers.len(),
        3,
        "{servers:?}\n{}",
        bed.read("prov-final.log")
    );
    assert!(servers.iter().all(|(_, w, _)| *w == 100), "{servers:?}");
    let names: BTreeSet<&String> = servers.iter().map(|(n, _, _)| n).collect();
    assert_eq!(names.len(), 3, "duplicate servers {servers:?}");
    assert!(
        wait_for(Duration::from_secs(5), || bed.nginx_pids().len() == 3),
        "orphaned or missing nginx: {:?}",
        bed.nginx_pids()
    );
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.extend(bed.get_through_haproxy());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    let state: Value = serde_json::from_str(&bed.read("state.json")).expect("state file JSON");
    let phases: Vec<&Value> = state["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| &i["phase"])
        .collect();
    assert_eq!(phases, vec!["serving"; 3]);
    assert!(state["inflight"].is_null());
    let lifecycle = bed.lifecycle();
    assert_schema_valid(&lifecycle);
    // Restarts may repeat a stage report; they repeat its id with it.
    let serving: BTreeSet<String> =
        names_ok(&lifecycle.iter().collect::<Vec<_>>(), "shift_traffic");
    for (name, _, _) in &servers {
        assert!(serving.contains(name), "{name} has no shift_traffic report");
    }
}

#[test]
fn scale_in_never_drains_the_last_healthy_instance() {
    if !can_run("scale_in_never_drains_the_last_healthy_instance") {
        return;
    }
    let bed = Bed::start();
    // One long-running provisioner fed through stdin, so it sees the instance die between two
    // events (a restart would have reconciled the dead instance away before the scale-in).
    let mut args = bed.provisioner_args("lh-");
    args.extend(
        [
            "--events-file",
            "-",
            "--lifecycle-out",
            &bed.path("lifecycle.jsonl").display().to_string(),
        ]
        .map(str::to_owned),
    );
    let mut p = bed.spawn_provisioner_stdin("stdin", &args);
    let mut stdin = p.0.stdin.take().expect("stdin piped");
    writeln!(stdin, "{}", scale_event("e-two", "api", 0, 2)).expect("write event");
    // The ramp is observable: weights between 0 and full (4 steps of 100 ms each).
    let mut partial = BTreeSet::new();
    let full = wait_for(Duration::from_secs(30), || {
        let s = bed.servers();
        partial.extend(
            s.iter()
                .map(|(_, w, _)| *w)
                .filter(|w| (1..100).contains(w)),
        );
        s.len() == 2 && s.iter().all(|(_, w, _)| *w == 100)
    });
    assert!(full, "{}", bed.read("prov-stdin.log"));
    assert!(!partial.is_empty(), "no intermediate weight seen");
    assert!(
        partial.iter().all(|w| [25, 50, 75].contains(w)),
        "{partial:?}"
    );
    assert!(wait_for(Duration::from_secs(5), || {
        stages_of(&bed.lifecycle(), "e-two").len() == 6
    }));
    // The older instance dies: the newer one, which a newest-first scale-in would pick, is
    // now the last healthy one.
    let state: Value = serde_json::from_str(&bed.read("state.json")).expect("state JSON");
    let old = &state["instances"][0];
    let newer = state["instances"][1]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    let pid = libc::pid_t::try_from(old["pid"].as_u64().expect("pid")).expect("pid fits");
    // SAFETY: kill(2) on the instance's process group, which this test's bed started.
    assert_eq!(unsafe { libc::kill(-pid, libc::SIGKILL) }, 0);
    assert!(wait_for(Duration::from_secs(5), || bed.nginx_pids().len() == 1));

    writeln!(stdin, "{}", scale_event("e-one", "api", 2, 1)).expect("write event");
    drop(stdin);
    let status = p.0.wait().expect("provisioner exit");
    assert!(status.success(), "{}", bed.read("prov-stdin.log"));
    let servers = bed.servers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0].0, newer, "the healthy instance was drained");
    assert_eq!(bed.get_through_haproxy().as_deref(), Some(newer.as_str()));
    let lifecycle = bed.lifecycle();
    assert_schema_valid(&lifecycle);
    let scale_in = stages_of(&lifecycle, "e-one");
    let removed = names_ok(&scale_in, "decommission");
    assert_eq!(removed.len(), 1, "{scale_in:#?}");
    assert!(!removed.contains(&newer));
    assert_eq!(
        scale_in
            .last()
            .map(|e| e["data"]["healthy_instances"].clone()),
        Some(1.into())
    );
}

#[test]
fn restart_removes_an_instance_that_died_meanwhile() {
    if !can_run("restart_removes_an_instance_that_died_meanwhile") {
        return;
    }
    let bed = Bed::start();
    let events = write_events(&bed, &[scale_event("e-two", "api", 0, 2)]);
    let args = file_args(&bed, "dead-", &events);
    bed.run_provisioner("first", &args, Duration::from_secs(60));
    assert_eq!(bed.servers().len(), 2);
    let state: Value = serde_json::from_str(&bed.read("state.json")).expect("state JSON");
    let pid = libc::pid_t::try_from(state["instances"][0]["pid"].as_u64().expect("pid"))
        .expect("pid fits");
    // SAFETY: kill(2) on the instance's process group, which this test's bed started.
    assert_eq!(unsafe { libc::kill(-pid, libc::SIGKILL) }, 0);
    assert!(wait_for(Duration::from_secs(5), || bed.nginx_pids().len() == 1));
    // The event is already handled: the restart only reconciles, dropping the dead server.
    bed.run_provisioner("second", &args, Duration::from_secs(60));
    let servers = bed.servers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(
        Some(servers[0].0.as_str()),
        state["instances"][1]["name"].as_str()
    );
    assert!(bed.get_through_haproxy().is_some());
}
