//! The open model against a real server on 127.0.0.1: the schedule is kept, and a server
//! stall shows in the corrected latency but not in the uncorrected one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{sync::Arc, time::Duration};

use common::{Behaviour, STALL, TestServer};
use shadowtap_loadgen::{
    ArrivalKind, ConstantRate, FixedSource, LoadRng, Request, RequestSource, RequestSpec, Schedule,
    StopReason, run,
};

fn open(rate: f64, arrivals: ArrivalKind) -> Schedule {
    Schedule::Open {
        curve: Box::new(ConstantRate::new(rate)),
        arrivals,
    }
}

fn get(server: &TestServer, path: &str) -> Request {
    RequestSpec::get(server.addr.to_string(), path)
        .build()
        .unwrap()
}

#[test]
fn achieved_rate_is_within_one_percent_of_the_schedule() {
    let server = TestServer::start(Behaviour::Normal);
    for arrivals in [ArrivalKind::Constant, ArrivalKind::Poisson] {
        // Long enough that the last response's own latency is far below 1% of the window.
        let config = server.config(Duration::from_secs(4), 1_000_000, 4);
        let report = run(
            config,
            open(500.0, arrivals),
            Box::new(FixedSource::new(get(&server, "/"))),
            Arc::default(),
        )
        .unwrap();
        let t = &report.throughput;
        let scheduled_rps = t.scheduled_rps.unwrap();
        assert_eq!(report.stopped_by, StopReason::Duration);
        assert_eq!(report.errors.total, 0, "{report:#?}");
        assert_eq!(
            (t.sent, t.completed, t.unsent),
            (t.scheduled, t.scheduled, 0)
        );
        assert!(
            (t.achieved_rps / scheduled_rps - 1.0).abs() < 0.01,
            "{arrivals:?}: achieved {} vs scheduled {scheduled_rps}",
            t.achieved_rps
        );
        match arrivals {
            // Constant: exactly rate × duration.
            ArrivalKind::Constant => assert_eq!(t.scheduled, 2000),
            // Poisson: within 4 standard deviations (√2000 ≈ 45).
            ArrivalKind::Poisson => assert!(t.scheduled.abs_diff(2000) < 180, "{}", t.scheduled),
        }
        assert_eq!(report.status.s2xx, t.completed);
        assert_eq!(report.requests_per_connection.connections, 4);
    }
}

#[test]
fn max_requests_ends_the_schedule_early() {
    let server = TestServer::start(Behaviour::Normal);
    let config = server.config(Duration::from_secs(30), 300, 2);
    let report = run(
        config,
        open(1000.0, ArrivalKind::Constant),
        Box::new(FixedSource::new(get(&server, "/"))),
        Arc::default(),
    )
    .unwrap();
    let t = &report.throughput;
    assert_eq!(report.stopped_by, StopReason::MaxRequests);
    assert_eq!((t.scheduled, t.completed), (300, 300));
    // The window ends where arrival 301 would have been: 300.5 ms.
    assert!((t.window_s - 0.3005).abs() < 1e-6, "{}", t.window_s);
}

/// Sends `/stall` as request number `at` (counting from 1), `/` otherwise.
struct StallOnce {
    plain: Request,
    stall: Request,
    at: u64,
    count: u64,
}

impl RequestSource for StallOnce {
    fn next_request(&mut self, _conn: u64, _rng: &mut LoadRng) -> Request {
        self.count += 1;
        if self.count == self.at {
            self.stall.clone()
        } else {
            self.plain.clone()
        }
    }
}

/// wrk2's point: 2000 req/s for 3 s over 2 connections, and the server stops answering for
/// 200 ms after 1 s. The ~400 arrivals of the stall wait for a connection and are sent late:
/// measured from their intended time they carry the stall (corrected p99.9 ≥ 150 ms);
/// measured from the send they do not. Only the 2 requests in flight when it began saw it
/// from the send, far fewer than the 0.1% (6 of 6000) that p99.9 skips.
#[test]
fn a_stall_shows_in_corrected_but_not_in_uncorrected_latency() {
    let server = TestServer::start(Behaviour::Normal);
    let config = server.config(Duration::from_secs(3), 1_000_000, 2);
    let source = StallOnce {
        plain: get(&server, "/"),
        stall: get(&server, "/stall"),
        at: 2000,
        count: 0,
    };
    let report = run(
        config,
        open(2000.0, ArrivalKind::Constant),
        Box::new(source),
        Arc::default(),
    )
    .unwrap();
    let (corrected, uncorrected) = (&report.latency.corrected, &report.latency.uncorrected);
    let lag = report.schedule_lag.as_ref().unwrap();
    let ms = |us: u64| us as f64 / 1000.0;
    let summary = format!(
        "corrected p99 {} p99.9 {} max {} ms; uncorrected p99 {} p99.9 {} max {} ms; lag p99.9 {} ms",
        ms(corrected.p99_us),
        ms(corrected.p999_us),
        ms(corrected.max_us),
        ms(uncorrected.p99_us),
        ms(uncorrected.p999_us),
        ms(uncorrected.max_us),
        ms(lag.p999_us),
    );
    eprintln!("{summary}");
    assert_eq!(report.errors.total, 0, "{report:#?}");
    assert_eq!(report.throughput.completed, 6000, "{report:#?}");
    let stall_us = STALL.as_micros() as u64;
    assert!(corrected.p999_us >= stall_us * 3 / 4, "{summary}");
    assert!(corrected.max_us >= stall_us * 9 / 10, "{summary}");
    assert!(uncorrected.p999_us <= stall_us / 2, "{summary}");
    // The requests in flight when the stall began did wait it out.
    assert!(uncorrected.max_us >= stall_us * 3 / 4, "{summary}");
    // The queued ones were sent late: that is the schedule lag.
    assert!(lag.p999_us >= stall_us / 2, "{summary}");
}
