//! The traffic of a run: a demand series (30-minute steps) compressed so that one step lasts
//! one observation window, played by loadgen as an open-model curve of `GET /item/{id}` with
//! Zipf-popular ids, and the latency of every response recorded per second of the run.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;
use shadowtap_loadgen::rand::RngExt as _;
use shadowtap_loadgen::{
    ArrivalKind, Live, LoadRng, PiecewiseLinear, Report, Request, RequestSource, RequestSpec,
    RunConfig, Schedule, Target,
};

/// A demand series: values at a fixed step.
#[derive(Clone, Debug)]
pub struct Series {
    pub values: Vec<f64>,
}

impl Series {
    /// Reads `timestamp,value` lines (with a header) and keeps `days` days (48 steps each)
    /// starting at the first midnight, after skipping `skip_days` whole days from there.
    pub fn load(path: &Path, skip_days: usize, days: usize) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut values = Vec::new();
        let mut started = false;
        let mut skip = skip_days * 48;
        for line in text.lines().skip(1) {
            let Some((stamp, value)) = line.split_once(',') else {
                continue;
            };
            started |= stamp.ends_with("00:00:00") && stamp.contains(' ');
            if !started {
                continue;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            values.push(
                value
                    .trim()
                    .parse::<f64>()
                    .with_context(|| format!("{}: bad value {value:?}", path.display()))?,
            );
            if values.len() == days * 48 {
                break;
            }
        }
        if values.len() < days * 48 {
            bail!(
                "{}: fewer than {days} whole days after skipping {skip_days}",
                path.display()
            );
        }
        Ok(Self { values })
    }

    /// The rate curve: step i at `i × step`, scaled so that the largest value is `peak_rps`.
    pub fn curve(&self, step: Duration, peak_rps: f64) -> Vec<(Duration, f64)> {
        let max = self.values.iter().copied().fold(1.0_f64, f64::max);
        self.values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    step * u32::try_from(i).unwrap_or(u32::MAX),
                    v / max * peak_rps,
                )
            })
            .collect()
    }
}

/// `GET /item/{id}` with ids drawn from a Zipf law over `keys` ids.
pub struct ZipfItems {
    requests: Vec<Request>,
    cumulative: Vec<f64>,
}

impl ZipfItems {
    pub fn new(host: &str, keys: usize, exponent: f64) -> Result<Self> {
        let mut cumulative = Vec::with_capacity(keys);
        let mut total = 0.0;
        for rank in 1..=keys {
            total += 1.0 / (rank as f64).powf(exponent);
            cumulative.push(total);
        }
        for c in &mut cumulative {
            *c /= total;
        }
        let requests = (0..keys)
            .map(|k| {
                RequestSpec::get(host, format!("/item/{}", 100_000 + k))
                    .build()
                    .context("building a request")
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            requests,
            cumulative,
        })
    }
}

/// Per second of the run: response latencies (corrected for coordinated omission) and 5xx.
#[derive(Clone)]
pub struct SecondLog {
    pub latency_us: Vec<Histogram<u64>>,
    pub server_errors: Vec<u64>,
}

/// The source handed to loadgen: Zipf items, recording each response into its second.
pub struct Measured {
    items: ZipfItems,
    start: Instant,
    log: Arc<Mutex<SecondLog>>,
}

impl Measured {
    pub fn new(
        items: ZipfItems,
        start: Instant,
        seconds: usize,
    ) -> Result<(Self, Arc<Mutex<SecondLog>>)> {
        let h = Histogram::new_with_bounds(1, 60_000_000, 2).context("histogram")?;
        let log = Arc::new(Mutex::new(SecondLog {
            latency_us: vec![h; seconds],
            server_errors: vec![0; seconds],
        }));
        Ok((
            Self {
                items,
                start,
                log: Arc::clone(&log),
            },
            log,
        ))
    }
}

impl RequestSource for Measured {
    fn next_request(&mut self, _conn: u64, rng: &mut LoadRng) -> Request {
        let u: f64 = rng.random();
        let i = self
            .items
            .cumulative
            .partition_point(|c| *c < u)
            .min(self.items.requests.len() - 1);
        self.items.requests[i].clone()
    }

    fn response(&mut self, _conn: u64, status: u16, corrected: Duration, _uncorrected: Duration) {
        let second = usize::try_from(self.start.elapsed().as_secs()).unwrap_or(usize::MAX);
        let Ok(mut log) = self.log.lock() else {
            return;
        };
        if let Some(h) = log.latency_us.get_mut(second) {
            let us = u64::try_from(corrected.as_micros()).unwrap_or(u64::MAX);
            h.saturating_record(us.max(1));
        }
        if status >= 500
            && let Some(e) = log.server_errors.get_mut(second)
        {
            *e += 1;
        }
    }
}

/// Plays `curve` against `target` from a thread in the client namespace; returns loadgen's
/// report when the curve ends.
pub fn play(
    ns: &crate::netns::Netns,
    target: &str,
    curve: Vec<(Duration, f64)>,
    duration: Duration,
    source: Measured,
    seed: u64,
) -> Result<std::thread::JoinHandle<Option<Result<Report>>>> {
    let target = Target::parse(target).context("target")?;
    let config = RunConfig {
        target,
        connections: 64,
        duration,
        max_requests: u64::MAX,
        timeout: Duration::from_secs(5),
        seed,
        requests_per_connection: None,
    };
    super::bed::in_namespace(ns, move || {
        let schedule = Schedule::Open {
            curve: Box::new(PiecewiseLinear::new(curve)),
            arrivals: ArrivalKind::Poisson,
        };
        shadowtap_loadgen::run(
            config,
            schedule,
            Box::new(source),
            Arc::new(Live::default()),
        )
        .context("loadgen")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three days at 30 minutes starting at 23:30 (the partial first step is not a midnight),
    /// each step's value its index.
    fn three_days() -> tempfile::NamedTempFile {
        use std::io::Write as _;
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        writeln!(file, "timestamp,value").expect("write");
        writeln!(file, "2014-06-30 23:30:00,-1").expect("write");
        for i in 0..3 * 48 {
            let day = 1 + i / 48;
            let (h, m) = ((i % 48) / 2, (i % 2) * 30);
            writeln!(file, "2014-07-{day:02} {h:02}:{m:02}:00,{i}").expect("write");
        }
        file
    }

    #[test]
    fn days_start_at_the_first_midnight_after_the_skipped_ones() {
        let file = three_days();
        let first = Series::load(file.path(), 0, 1).expect("one day");
        assert_eq!(first.values.len(), 48);
        assert!((first.values[0] - 0.0).abs() < f64::EPSILON);
        let third = Series::load(file.path(), 2, 1).expect("the third day");
        assert!((third.values[0] - 96.0).abs() < f64::EPSILON);
        assert!((third.values[47] - 143.0).abs() < f64::EPSILON);
        let err = Series::load(file.path(), 2, 2).expect_err("only one day left");
        assert!(
            err.to_string()
                .contains("fewer than 2 whole days after skipping 2"),
            "{err}"
        );
    }
}
