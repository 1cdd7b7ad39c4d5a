//! The binary: required bounds, errors that name the flag, and the JSON report.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};

use common::{Behaviour, TestServer};
use shadowtap_loadgen::Report;

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shadowtap-loadgen"))
        .args(args)
        .output()
        .unwrap()
}

/// Fails with a usage error (exit 2) whose message holds every one of `needles`.
fn refused(args: &[&str], needles: &[&str]) {
    let out = loadgen(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} not in {stderr}"
        );
    }
}

const TARGET: &str = "http://127.0.0.1:9";

#[test]
fn bounds_and_target_are_required() {
    let all = [
        "--target",
        TARGET,
        "--duration",
        "1s",
        "--max-requests",
        "10",
    ];
    refused(&all[2..], &["--target"]);
    refused(
        &["--target", TARGET, "--max-requests", "10", "--rate", "10"],
        &["--duration"],
    );
    refused(
        &["--target", TARGET, "--duration", "1s", "--rate", "10"],
        &["--max-requests"],
    );
    refused(&all, &["--rate"]);
}

#[test]
fn bad_values_name_their_flag() {
    let with = |flag: &str, value: &str| -> Vec<String> {
        let mut args: Vec<String> = [
            "--target",
            TARGET,
            "--duration",
            "1s",
            "--max-requests",
            "10",
            "--rate",
            "10",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = value.to_owned();
        args
    };
    let check = |flag: &str, value: &str, needles: &[&str]| {
        let args = with(flag, value);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut all = vec![flag, value];
        all.extend(needles);
        refused(&args, &all);
    };
    check("--duration", "10x", &["unknown unit"]);
    check("--duration", "10", &["missing unit"]);
    check("--duration", "0s", &["greater than 0"]);
    check("--rate", "0", &["> 0"]);
    check("--rate", "-3", &["> 0"]);
    check("--duration", "-1s", &["no number"]);
    check("--max-requests", "0", &[]);
    check("--target", "127.0.0.1:80", &["http://"]);
    check("--target", "http://127.0.0.1", &["port"]);
    refused(
        &[
            "--target",
            TARGET,
            "--duration",
            "1s",
            "--max-requests",
            "1",
            "--rate",
            "10",
            "--think-time",
            "1ms",
        ],
        &["--think-time", "closed model"],
    );
}

#[test]
fn writes_a_json_report_to_stdout() {
    let server = TestServer::start(Behaviour::Normal);
    let url = server.url();
    let out = loadgen(&[
        "--target",
        &url,
        "--duration",
        "500ms",
        "--max-requests",
        "100000",
        "--rate",
        "200",
        "--arrivals",
        "poisson",
        "--json",
        "-",
        "-H",
        "X-Test: 1",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Report = serde_json::from_slice(&out.stdout).expect("stdout is the JSON report");
    assert_eq!(report.model, "open");
    assert_eq!(report.errors.total, 0);
    assert_eq!(report.throughput.completed, report.throughput.scheduled);
    // The human-readable report went to stderr.
    assert!(stderr.contains("corrected (from intent)"), "{stderr}");
}
