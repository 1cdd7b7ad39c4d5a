//! An open-model HTTP/1.1 load generator, in the spirit of wrk2, Vegeta and k6.
//!
//! In the **open model** requests arrive on a schedule — a [`RateCurve`] turned into intended
//! send times by [`Arrivals`] (constant spacing or Poisson) — whether or not earlier responses
//! have come back. Latency is measured from the *intended* send time, so a server that stalls
//! is charged for every request that should have been sent during the stall (the correction
//! for "coordinated omission"); the latency from the *actual* send is reported beside it, and
//! the difference between the two send times is the schedule lag.
//!
//! A bounded pool of keep-alive connections serves the schedule: an arrival goes to an idle
//! connection, or waits in a FIFO until one is free. That wait is what makes the two
//! latencies differ the way wrk2's do — requests queued behind a stalled server are sent late,
//! so their uncorrected latency is short while their corrected latency carries the stall.
//!
//! In the **closed model** (`--rate max`) every connection sends back to back, optionally with
//! a think time: the fastest this client can drive the server.
//!
//! What is sent comes from a [`RequestSource`]; [`FixedSource`] repeats one request. Requests
//! are serialised once ([`RequestSpec::build`]) and responses are parsed by hand
//! ([`ResponseParser`]) into reused buffers, so the hot path allocates nothing.
//!
//! [`run`] drives a test on a single-threaded tokio runtime and returns a [`Report`] (a stable
//! serde struct, also printed for humans by [`Report::print`]).

mod args;
pub mod bottleneck;
mod conn;
pub mod faults;
pub mod generate;
mod parse;
pub mod plan;
mod queue;
mod rate;
mod report;
mod run;
pub mod scenario;
mod source;
mod stats;
mod timer;

pub use args::{
    ArgError, Rate, Target, parse_duration, parse_header, parse_positive_duration, parse_rate,
};
pub use parse::{ParseError, Response, ResponseParser, Step};
pub use rate::{ArrivalKind, Arrivals, ConstantRate, PiecewiseLinear, RateCurve};
pub use report::{
    ErrorCounts, LatencyReport, PerConnection, Percentiles, REPORT_VERSION, Report, StatusCounts,
    StopReason, Throughput,
};
pub use run::{Live, RunConfig, RunError, Schedule, run, run_until};
pub use source::{FixedSource, Request, RequestError, RequestSource, RequestSpec};

/// The random number generator handed to arrival processes and request sources: small, fast,
/// and reproducible from `--seed`.
pub type LoadRng = rand_pcg::Pcg64Mcg;

/// Re-exported so that request sources and rate curves can draw from a [`LoadRng`] with the
/// same `rand` version (`rand::RngExt::random`, …).
pub use rand;
