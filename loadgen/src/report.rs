//! The result of a run: a stable serde struct (`--json`) and its human-readable print.
//!
//! Field names are part of the interface (the bench and scripts read them): add fields, do
//! not rename them, and bump [`REPORT_VERSION`] if a meaning changes.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};

use crate::rate::ArrivalKind;

/// Version of the report's JSON shape.
pub const REPORT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    pub target: String,
    /// `"open"` or `"closed"`.
    pub model: String,
    /// Open model: how arrivals are spaced.
    pub arrivals: Option<ArrivalKind>,
    /// Open model: the rate curve as described by it (e.g. `"1000 req/s"`).
    pub rate: Option<String>,
    /// Pool size (open) or number of connections (closed).
    pub connections: usize,
    pub duration_s: f64,
    pub max_requests: u64,
    pub timeout_s: f64,
    pub seed: u64,
    pub stopped_by: StopReason,
    pub throughput: Throughput,
    pub latency: LatencyReport,
    /// Open model: actual send time − intended send time.
    pub schedule_lag: Option<Percentiles>,
    pub status: StatusCounts,
    pub errors: ErrorCounts,
    pub requests_per_connection: PerConnection,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// `--duration` ran out.
    Duration,
    /// `--max-requests` were scheduled (open) or sent (closed).
    MaxRequests,
    /// Stopped early (Ctrl-C).
    Interrupted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// Arrivals the schedule put in the window (open model; closed: requests started).
    pub scheduled: u64,
    /// Requests written to a connection.
    pub sent: u64,
    /// Responses received (any status).
    pub completed: u64,
    /// Scheduled, but no connection came free before the run's end (the duration plus
    /// `--timeout`), or the run was interrupted (open model).
    pub unsent: u64,
    /// Seconds the schedule covered: the duration, or up to where the next arrival after
    /// `--max-requests` would have been (open); first send to last response (closed).
    pub window_s: f64,
    /// `scheduled / window_s` (open model).
    pub scheduled_rps: Option<f64>,
    /// `completed` over the window, extended to the last response if that came later.
    pub achieved_rps: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyReport {
    /// From the intended send time (coordinated-omission corrected). In the closed model
    /// there is no schedule and this equals `uncorrected`.
    pub corrected: Percentiles,
    /// From the moment the request was written.
    pub uncorrected: Percentiles,
}

/// Percentiles of a histogram, in µs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// Responses by status class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    pub s2xx: u64,
    pub s3xx: u64,
    pub s4xx: u64,
    pub s5xx: u64,
    /// 1xx that ended the exchange (101) or anything outside 100–599.
    pub other: u64,
}

/// Requests that got no response, by why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub connect_refused: u64,
    pub connect_timeout: u64,
    pub connect_other: u64,
    pub reset: u64,
    pub read_timeout: u64,
    /// The server closed the connection before the response was complete.
    pub closed: u64,
    pub parse: u64,
    pub other_io: u64,
    pub total: u64,
}

/// Responses per TCP connection, over the connections of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PerConnection {
    pub connections: u64,
    pub mean: f64,
    pub p50: u64,
    pub max: u64,
}

/// `812µs`, `3.41ms`, `1.204s`.
fn us(v: u64) -> String {
    match v {
        0..1_000 => format!("{v}µs"),
        1_000..1_000_000 => format!("{:.2}ms", v as f64 / 1e3),
        _ => format!("{:.3}s", v as f64 / 1e6),
    }
}

impl Report {
    /// The human-readable summary.
    pub fn print(&self, out: &mut impl Write) -> io::Result<()> {
        let t = &self.throughput;
        let what = match (&self.arrivals, &self.rate) {
            (Some(kind), Some(rate)) => format!(
                "open model, {} arrivals at {rate}",
                match kind {
                    ArrivalKind::Constant => "constant",
                    ArrivalKind::Poisson => "Poisson",
                }
            ),
            _ => "closed model (back to back)".to_owned(),
        };
        writeln!(out, "shadowtap-loadgen {} → {}", what, self.target)?;
        writeln!(
            out,
            "  {} connections, duration {}s, max {} requests, timeout {}s, seed {}; stopped by {}",
            self.connections,
            self.duration_s,
            self.max_requests,
            self.timeout_s,
            self.seed,
            match self.stopped_by {
                StopReason::Duration => "duration",
                StopReason::MaxRequests => "max-requests",
                StopReason::Interrupted => "interrupt",
            }
        )?;
        write!(out, "  throughput   ")?;
        if let Some(rps) = t.scheduled_rps {
            write!(out, "scheduled {} ({rps:.1} req/s), ", t.scheduled)?;
        }
        write!(
            out,
            "sent {}, completed {} in {:.3}s: {:.1} req/s",
            t.sent, t.completed, t.window_s, t.achieved_rps
        )?;
        if let Some(rps) = t.scheduled_rps.filter(|r| *r > 0.0) {
            write!(out, " ({:.2}% of schedule)", 100.0 * t.achieved_rps / rps)?;
        }
        if t.unsent > 0 {
            write!(out, "; {} unsent (no free connection in time)", t.unsent)?;
        }
        writeln!(out)?;
        self.print_latency(out)?;
        let s = &self.status;
        writeln!(
            out,
            "  status       2xx {}  3xx {}  4xx {}  5xx {}  other {}",
            s.s2xx, s.s3xx, s.s4xx, s.s5xx, s.other
        )?;
        self.print_errors(out)?;
        let c = &self.requests_per_connection;
        writeln!(
            out,
            "  connections  {} opened; requests per connection: mean {:.1}, p50 {}, max {}",
            c.connections, c.mean, c.p50, c.max
        )
    }

    fn print_latency(&self, out: &mut impl Write) -> io::Result<()> {
        writeln!(
            out,
            "  {:<26}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "latency", "p50", "p90", "p99", "p99.9", "max", "mean"
        )?;
        let mut row = |label: &str, p: &Percentiles| {
            writeln!(
                out,
                "    {label:<24}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
                us(p.p50_us),
                us(p.p90_us),
                us(p.p99_us),
                us(p.p999_us),
                us(p.max_us),
                us(p.mean_us.round() as u64)
            )
        };
        if self.schedule_lag.is_some() {
            row("corrected (from intent)", &self.latency.corrected)?;
            row("uncorrected (from send)", &self.latency.uncorrected)?;
        } else {
            row("from send", &self.latency.uncorrected)?;
        }
        if let Some(lag) = &self.schedule_lag {
            row("schedule lag", lag)?;
        }
        Ok(())
    }

    fn print_errors(&self, out: &mut impl Write) -> io::Result<()> {
        let e = &self.errors;
        let kinds = [
            ("connect refused", e.connect_refused),
            ("connect timeout", e.connect_timeout),
            ("connect other", e.connect_other),
            ("reset", e.reset),
            ("read timeout", e.read_timeout),
            ("closed early", e.closed),
            ("parse", e.parse),
            ("other I/O", e.other_io),
        ];
        let listed: Vec<String> = kinds
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if listed.is_empty() {
            writeln!(out, "  errors       none")
        } else {
            writeln!(out, "  errors       {} ({})", e.total, listed.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_durations_for_humans() {
        assert_eq!(us(812), "812µs");
        assert_eq!(us(3_410), "3.41ms");
        assert_eq!(us(1_204_000), "1.204s");
    }
}
