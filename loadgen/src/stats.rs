//! What a run records as it goes: three latency histograms (corrected, uncorrected, schedule
//! lag; µs), status classes, errors by kind and requests per connection. One recorder per
//! run, owned by the runtime's single thread, so recording is a few adds.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::report::{ErrorCounts, PerConnection, Percentiles, StatusCounts};

/// Why a request produced no response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    ConnectRefused,
    ConnectTimeout,
    ConnectOther,
    /// Reset by the peer (ECONNRESET, EPIPE).
    Reset,
    /// No complete response within `--timeout` of sending.
    ReadTimeout,
    /// The server closed the connection before the response was complete.
    Closed,
    /// The response was not valid HTTP/1.x.
    Parse,
    OtherIo,
}

/// Highest recordable latency: an hour, in µs. Larger values are clamped to it.
const MAX_US: u64 = 3_600_000_000;

pub struct Recorder {
    pub corrected: Histogram<u64>,
    pub uncorrected: Histogram<u64>,
    pub lag: Histogram<u64>,
    per_connection: Histogram<u64>,
    pub status: StatusCounts,
    pub errors: ErrorCounts,
    pub completed: u64,
    pub last_completion: Option<Instant>,
}

fn histogram(max: u64) -> Histogram<u64> {
    // 3 significant digits: 0.1% resolution, ~200 KiB per histogram at this range.
    #[allow(clippy::expect_used)]
    Histogram::new_with_max(max, 3).expect("constant bounds are valid")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            corrected: histogram(MAX_US),
            uncorrected: histogram(MAX_US),
            lag: histogram(MAX_US),
            per_connection: histogram(1 << 40),
            status: StatusCounts::default(),
            errors: ErrorCounts::default(),
            completed: 0,
            last_completion: None,
        }
    }
}

impl Recorder {
    /// A response to a request intended at `intended`, written at `sent`, complete at `done`.
    pub fn response(&mut self, status: u16, intended: Instant, sent: Instant, done: Instant) {
        self.corrected
            .saturating_record(micros(done.saturating_duration_since(intended)));
        self.uncorrected
            .saturating_record(micros(done.saturating_duration_since(sent)));
        self.lag
            .saturating_record(micros(sent.saturating_duration_since(intended)));
        self.status.count(status);
        self.completed += 1;
        self.last_completion = Some(done);
    }

    pub fn error(&mut self, kind: ErrorKind) {
        let e = &mut self.errors;
        *match kind {
            ErrorKind::ConnectRefused => &mut e.connect_refused,
            ErrorKind::ConnectTimeout => &mut e.connect_timeout,
            ErrorKind::ConnectOther => &mut e.connect_other,
            ErrorKind::Reset => &mut e.reset,
            ErrorKind::ReadTimeout => &mut e.read_timeout,
            ErrorKind::Closed => &mut e.closed,
            ErrorKind::Parse => &mut e.parse,
            ErrorKind::OtherIo => &mut e.other_io,
        } += 1;
        e.total += 1;
    }

    /// A TCP connection ended after serving `requests` responses.
    pub fn connection_closed(&mut self, requests: u64) {
        self.per_connection.saturating_record(requests);
    }

    pub fn per_connection(&self) -> PerConnection {
        let h = &self.per_connection;
        PerConnection {
            connections: h.len(),
            mean: if h.is_empty() { 0.0 } else { h.mean() },
            p50: h.value_at_quantile(0.5),
            max: h.max(),
        }
    }
}

impl Percentiles {
    /// The report's percentiles of a histogram of µs values.
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: if h.is_empty() { 0.0 } else { h.mean() },
        }
    }
}

impl StatusCounts {
    fn count(&mut self, status: u16) {
        *match status {
            200..=299 => &mut self.s2xx,
            300..=399 => &mut self.s3xx,
            400..=499 => &mut self.s4xx,
            500..=599 => &mut self.s5xx,
            _ => &mut self.other,
        } += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = histogram(MAX_US);
        // 1..=10_000 µs, once each.
        for v in 1..=10_000 {
            h.record(v).expect("in range");
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 10_000);
        // Within hdrhistogram's 3-significant-digit resolution.
        let near = |got: u64, want: u64| got.abs_diff(want) * 1000 <= want;
        assert!(near(p.p50_us, 5_000), "{p:?}");
        assert!(near(p.p90_us, 9_000), "{p:?}");
        assert!(near(p.p99_us, 9_900), "{p:?}");
        assert!(near(p.p999_us, 9_990), "{p:?}");
        assert!(near(p.max_us, 10_000), "{p:?}");
        assert!((p.mean_us - 5_000.5).abs() < 5.0, "{p:?}");
    }

    #[test]
    fn a_tail_of_one_in_a_thousand_shows_at_p999_only() {
        let mut r = Recorder::default();
        let t0 = Instant::now();
        for i in 0..10_000_u64 {
            let intended = t0 + Duration::from_millis(i);
            // Ten requests stuck behind a 200 ms stall (corrected), sent late (uncorrected
            // is short).
            let stall = if i < 11 {
                Duration::from_millis(200 - i * 10)
            } else {
                Duration::ZERO
            };
            let sent = intended + stall;
            r.response(200, intended, sent, sent + Duration::from_micros(100));
        }
        let corrected = Percentiles::of(&r.corrected);
        let uncorrected = Percentiles::of(&r.uncorrected);
        assert_eq!(corrected.p99_us, 100);
        assert!(corrected.p999_us >= 100_000, "{corrected:?}");
        assert!(corrected.max_us >= 200_000, "{corrected:?}");
        assert_eq!(uncorrected.max_us, 100);
        assert!(Percentiles::of(&r.lag).p999_us >= 100_000);
        assert_eq!(r.status.s2xx, 10_000);
    }

    #[test]
    fn counts_status_classes_errors_and_connections() {
        let mut r = Recorder::default();
        let t = Instant::now();
        for status in [200, 204, 301, 404, 418, 500, 503, 103, 600] {
            r.response(status, t, t, t);
        }
        let s = r.status;
        assert_eq!((s.s2xx, s.s3xx, s.s4xx, s.s5xx, s.other), (2, 1, 2, 2, 2));
        r.error(ErrorKind::Reset);
        r.error(ErrorKind::Reset);
        r.error(ErrorKind::ConnectRefused);
        assert_eq!(
            (r.errors.reset, r.errors.connect_refused, r.errors.total),
            (2, 1, 3)
        );
        for n in [1, 1, 10] {
            r.connection_closed(n);
        }
        let c = r.per_connection();
        assert_eq!((c.connections, c.p50, c.max), (3, 1, 10));
        assert!((c.mean - 4.0).abs() < 1e-9);
    }
}
