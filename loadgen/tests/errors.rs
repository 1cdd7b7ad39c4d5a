//! The closed model, connection limits, and each kind of failure, against servers on
//! 127.0.0.1 that misbehave on purpose.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    net::TcpListener,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use common::{Behaviour, TestServer};
use shadowtap_loadgen::{
    ArrivalKind, ConstantRate, FixedSource, Report, RequestSpec, RunConfig, Schedule, StopReason,
    Target, run,
};

fn closed() -> Schedule {
    Schedule::Closed {
        think_time: Duration::ZERO,
    }
}

fn run_get(config: RunConfig, schedule: Schedule) -> Report {
    let request = RequestSpec::get(config.target.authority.clone(), "/")
        .build()
        .unwrap();
    run(
        config,
        schedule,
        Box::new(FixedSource::new(request)),
        Arc::default(),
    )
    .unwrap()
}

#[test]
fn closed_model_stops_at_max_requests() {
    let server = TestServer::start(Behaviour::Normal);
    let report = run_get(server.config(Duration::from_secs(30), 500, 3), closed());
    assert_eq!(report.stopped_by, StopReason::MaxRequests);
    assert_eq!(report.model, "closed");
    assert!(report.schedule_lag.is_none());
    let t = &report.throughput;
    assert_eq!((t.scheduled, t.sent, t.completed), (500, 500, 500));
    assert_eq!(report.status.s2xx, 500);
    assert_eq!(server.requests.load(Ordering::SeqCst), 500);
    // Closed: latency is from the send, so both figures are the same histogram.
    assert_eq!(report.latency.corrected, report.latency.uncorrected);
}

#[test]
fn closed_model_stops_at_the_duration() {
    let server = TestServer::start(Behaviour::Normal);
    let mut config = server.config(Duration::from_millis(300), 1_000_000, 2);
    config.timeout = Duration::from_secs(1);
    let report = run_get(
        config,
        Schedule::Closed {
            think_time: Duration::from_millis(10),
        },
    );
    assert_eq!(report.stopped_by, StopReason::Duration);
    // About 300 ms / (10 ms + a little) per connection, two connections.
    let done = report.throughput.completed;
    assert!((20..=62).contains(&done), "{done}");
}

#[test]
fn connections_close_after_n_requests() {
    let server = TestServer::start(Behaviour::Normal);
    // One connection slot: with more, how requests spread over them is up to the timing.
    let mut config = server.config(Duration::from_secs(30), 100, 1);
    config.requests_per_connection = Some(10);
    let report = run_get(config, closed());
    assert_eq!(report.throughput.completed, 100);
    assert_eq!(report.errors.total, 0);
    let per = &report.requests_per_connection;
    assert_eq!((per.connections, per.max, per.p50), (10, 10, 10), "{per:?}");
    // The last request of each connection said so.
    assert_eq!(server.closing.load(Ordering::SeqCst), 10);
    assert_eq!(server.connections.load(Ordering::SeqCst), 10);
}

#[test]
fn refused_connections_are_counted_per_request() {
    // A port that was free a moment ago; nothing listens on it now.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = RunConfig {
        target: Target::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
        connections: 2,
        duration: Duration::from_secs(10),
        max_requests: 20,
        timeout: Duration::from_secs(1),
        seed: 1,
        requests_per_connection: None,
    };
    let report = run_get(
        config,
        Schedule::Open {
            curve: Box::new(ConstantRate::new(200.0)),
            arrivals: ArrivalKind::Poisson,
        },
    );
    assert_eq!(report.errors.connect_refused, 20, "{:?}", report.errors);
    assert_eq!(report.errors.total, 20);
    assert_eq!(report.throughput.completed, 0);
}

#[test]
fn failures_are_classified() {
    let cases = [
        (Behaviour::Garbage, "parse"),
        (Behaviour::Reset, "reset"),
        (Behaviour::Silent, "read_timeout"),
    ];
    for (behaviour, kind) in cases {
        let server = TestServer::start(behaviour);
        let mut config = server.config(Duration::from_secs(10), 3, 1);
        config.timeout = Duration::from_millis(200);
        let report = run_get(config, closed());
        let e = report.errors;
        let counted = match kind {
            "parse" => e.parse,
            "reset" => e.reset,
            _ => e.read_timeout,
        };
        assert_eq!((counted, e.total), (3, 3), "{behaviour:?}: {e:?}");
        assert_eq!(report.throughput.completed, 0);
    }
}

#[test]
fn status_classes_are_counted() {
    let server = TestServer::start(Behaviour::Unavailable);
    let report = run_get(server.config(Duration::from_secs(10), 50, 2), closed());
    assert_eq!(report.status.s5xx, 50);
    assert_eq!(report.status.s2xx, 0);
    assert_eq!(report.errors.total, 0);
}
