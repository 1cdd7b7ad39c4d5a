//! `shadowtap-loadgen`: the command line of the load generator (see the library's docs).

use std::{
    fs,
    io::{self, IsTerminal as _, Write as _},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use shadowtap_core::profile::ResourceProfile;
use shadowtap_loadgen::{
    ArrivalKind, ConstantRate, FixedSource, Live, Rate, RateCurve, RequestSpec, RunConfig,
    Schedule, Target, parse_duration, parse_header, parse_positive_duration, parse_rate, run_until,
};

mod modes;

#[derive(Parser)]
#[allow(clippy::struct_excessive_bools)]
#[command(
    name = "shadowtap-loadgen",
    version,
    about = "Open-model HTTP/1.1 load generator: requests on a schedule, latency from the \
             intended send time (coordinated-omission corrected) and from the actual send."
)]
pub(crate) struct Cli {
    /// The server: http://ADDR:PORT[/path]. Required; there is no default target.
    #[arg(long, value_parser = parse_target)]
    pub(crate) target: Target,
    /// How long to send for, e.g. 30s, 2m. Required (a load test must end).
    #[arg(long, value_parser = parse_positive_duration, allow_hyphen_values = true)]
    pub(crate) duration: Duration,
    /// The most requests to send; the run ends at this or --duration, whichever comes first.
    /// Required.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_requests: u64,
    /// Requests per second, scheduled whatever the responses do (open model); "max": every
    /// connection back to back (closed model); "profile": the --profile's hour-of-week curve;
    /// "forecast": a running agent's forecast (--from-forecast). With --scenario, the
    /// baseline rate; with --bottleneck-steps, the highest step's.
    #[arg(long, value_parser = parse_rate, allow_hyphen_values = true)]
    pub(crate) rate: Rate,
    /// Spacing of open-model arrivals [default: constant].
    #[arg(long, value_enum)]
    pub(crate) arrivals: Option<Arrivals>,
    /// Connections: the pool's maximum (open model) or how many run back to back (closed).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub(crate) connections: u32,
    /// Seed of every random choice (Poisson gaps, request sources).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Limit on connecting, and on a whole response from sending the request.
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    pub(crate) timeout: Duration,
    /// Request method (HEAD responses are read without a body).
    #[arg(long, default_value = "GET")]
    pub(crate) method: String,
    /// Request path [default: the target's path, or /].
    #[arg(long)]
    pub(crate) path: Option<String>,
    /// Host header [default: the target's ADDR:PORT].
    #[arg(long)]
    pub(crate) host: Option<String>,
    /// Extra request header, "Name: value"; repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE", value_parser = parse_header)]
    pub(crate) headers: Vec<(String, String)>,
    /// Request body bytes (sent with Content-Length).
    #[arg(long, default_value_t = 0)]
    pub(crate) body_size: usize,
    /// Close each connection after this many requests (the last says Connection: close).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) requests_per_conn: Option<u64>,
    /// Pause between a response and the next request (closed model only).
    #[arg(long, value_parser = parse_duration)]
    pub(crate) think_time: Option<Duration>,
    /// Also write the report as JSON to FILE, or to stdout with "-" (the human-readable
    /// report then goes to stderr).
    #[arg(long, value_name = "FILE|-")]
    pub(crate) json: Option<PathBuf>,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long, short)]
    pub(crate) quiet: bool,
    #[command(flatten)]
    pub(crate) shadow: modes::ShadowArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Arrivals {
    /// Evenly spaced.
    Constant,
    /// Exponential gaps (a Poisson process).
    Poisson,
}

fn parse_target(text: &str) -> Result<Target, shadowtap_loadgen::ArgError> {
    Target::parse(text)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !cli.shadow.faults.is_empty() {
        return modes::faults(&cli);
    }
    let profile = modes::profile(&cli)?;
    let arrivals = match cli.arrivals.unwrap_or(Arrivals::Constant) {
        Arrivals::Constant => ArrivalKind::Constant,
        Arrivals::Poisson => ArrivalKind::Poisson,
    };
    if cli.shadow.scenario.is_some() {
        return modes::scenario(&cli, profile.as_ref(), arrivals);
    }
    if let Some(steps) = cli.shadow.bottleneck_steps {
        return modes::bottleneck(&cli, profile.as_ref(), arrivals, steps);
    }
    let curve: Box<dyn RateCurve> = match cli.rate {
        Rate::Max => {
            if cli.arrivals.is_some() {
                usage("--arrivals applies to the open model; --rate max is the closed model");
            }
            let source = modes::source(&cli, profile.as_ref())?;
            let schedule = Schedule::Closed {
                think_time: cli.think_time.unwrap_or_default(),
            };
            return run_and_report(&cli, schedule, source, profile.as_ref());
        }
        Rate::PerSecond(rate) => Box::new(ConstantRate::new(rate)),
        Rate::Profile => modes::profile_curve(&cli, profile.as_ref()),
        Rate::Forecast => modes::forecast_curve(&cli)?,
    };
    if cli.think_time.is_some() {
        usage("--think-time applies to the closed model (--rate max)");
    }
    let source = modes::source(&cli, profile.as_ref())?;
    run_and_report(
        &cli,
        Schedule::Open { curve, arrivals },
        source,
        profile.as_ref(),
    )
}

/// The request every request is when no profile drives the run.
fn fixed_request(cli: &Cli) -> shadowtap_loadgen::Request {
    let spec = RequestSpec {
        method: cli.method.clone(),
        path: cli.path.clone().unwrap_or_else(|| cli.target.path.clone()),
        host: cli
            .host
            .clone()
            .unwrap_or_else(|| cli.target.authority.clone()),
        headers: cli.headers.clone(),
        body_len: cli.body_size,
    };
    match spec.build() {
        Ok(r) => r,
        Err(e) => usage(&format!("invalid request: {e}")),
    }
}

/// One run, its report printed (with the fidelity to the profile when one drove it).
fn run_and_report(
    cli: &Cli,
    schedule: Schedule,
    source: modes::Source,
    profile: Option<&ResourceProfile>,
) -> Result<()> {
    let (report, fidelity) = run_once(cli, schedule, source, cli.duration)?;
    let fidelity = fidelity.zip(profile).map(|(f, p)| {
        f.0.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fidelity(p)
    });
    let mut text = Vec::new();
    report.print(&mut text).context("formatting the report")?;
    if let Some(f) = &fidelity {
        modes::print_fidelity(&mut text, f).context("formatting the report")?;
    }
    // With a profile the JSON is {report, fidelity}; without, the report itself.
    let json = if fidelity.is_some() {
        serde_json::json!({ "report": &report, "fidelity": fidelity })
    } else {
        serde_json::to_value(&report)?
    };
    emit(cli, &text, &json)
}

/// Runs the load once; the profile source back for its fidelity.
fn run_once(
    cli: &Cli,
    schedule: Schedule,
    source: modes::Source,
    duration: Duration,
) -> Result<(shadowtap_loadgen::Report, Option<modes::SharedProfile>)> {
    let config = RunConfig {
        target: cli.target.clone(),
        connections: cli.connections as usize,
        duration,
        max_requests: cli.max_requests,
        timeout: cli.timeout,
        seed: cli.seed,
        requests_per_connection: cli.requests_per_conn,
    };

    let live = Arc::new(Live::default());
    let progress = (!cli.quiet && io::stderr().is_terminal())
        .then(|| Progress::start(live.clone(), duration))
        .transpose()?;
    let stop = async {
        // On Ctrl-C: stop sending, finish what is in flight, report. A second Ctrl-C (the
        // handler is gone by then) kills the process as usual.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let (boxed, shared): (Box<dyn shadowtap_loadgen::RequestSource>, _) = match source {
        modes::Source::Fixed => (Box::new(FixedSource::new(fixed_request(cli))), None),
        modes::Source::Profile(shared) => (Box::new(shared.clone()), Some(shared)),
        modes::Source::Mixed(mixed) => (Box::new(mixed), None),
    };
    let result = run_until(config, schedule, boxed, live, stop);
    if let Some(p) = progress {
        p.finish();
    }
    Ok((result.context("running the load")?, shared))
}

/// Prints the human report (stdout, or stderr when the JSON goes to stdout) and writes the
/// JSON where --json says.
fn emit(cli: &Cli, text: &[u8], json: &serde_json::Value) -> Result<()> {
    let human_to_stderr = cli.json.as_deref() == Some("-".as_ref());
    if human_to_stderr {
        io::stderr()
            .write_all(text)
            .context("writing the report to stderr")?;
    } else {
        io::stdout()
            .write_all(text)
            .context("writing the report to stdout")?;
    }
    if let Some(path) = &cli.json {
        let json = serde_json::to_string_pretty(json).context("serialising the report")?;
        if human_to_stderr {
            writeln!(io::stdout(), "{json}").context("writing the JSON report to stdout")?;
        } else {
            fs::write(path, json + "\n")
                .with_context(|| format!("writing the JSON report to {}", path.display()))?;
        }
    }
    Ok(())
}

/// A usage error in clap's format (names the flag, exit code 2).
pub(crate) fn usage(message: &str) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

/// The progress bar on stderr, redrawn from the live counters by a thread of its own, so
/// the runtime's thread never draws.
struct Progress {
    done: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl Progress {
    fn start(live: Arc<Live>, duration: Duration) -> Result<Self> {
        let bar = ProgressBar::new(duration.as_millis() as u64).with_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} [{wide_bar}] {msg}")
                .context("progress bar template")?
                .progress_chars("=> "),
        );
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let thread = thread::Builder::new()
            .name("progress".to_owned())
            .spawn(move || {
                let start = Instant::now();
                let (mut last_done, mut last_at) = (0, start);
                let mut rate = 0.0;
                while !flag.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    let completed = live.completed.load(Ordering::Relaxed);
                    let dt = now.duration_since(last_at).as_secs_f64();
                    if dt >= 0.5 {
                        rate = (completed - last_done) as f64 / dt;
                        (last_done, last_at) = (completed, now);
                    }
                    bar.set_position(now.duration_since(start).as_millis() as u64);
                    bar.set_message(format!(
                        "sent {} done {} errors {} | {rate:.0} req/s",
                        live.sent.load(Ordering::Relaxed),
                        completed,
                        live.errors.load(Ordering::Relaxed),
                    ));
                    thread::sleep(Duration::from_millis(100));
                }
                bar.finish_and_clear();
            })
            .context("starting the progress thread")?;
        Ok(Self { done, thread })
    }

    fn finish(self) {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}
