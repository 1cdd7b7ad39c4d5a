//! `cargo xtask bench loadgen`: shadowtap-loadgen against wrk, on `bench live`'s testbed
//! (nginx, 1 worker, 300-byte file, in a server namespace; clients in a client namespace,
//! over a veth pair; everything removed on every exit path, Ctrl-C included).
//!
//! Each round, interleaved (the order of the two max-rate runs alternates):
//! 1. `wrk -t1 -c16 -dS` — the fastest a lean C client drives this nginx;
//! 2. `shadowtap-loadgen --rate max` (closed model, the same 16 connections) — goal: at least
//!    80% of wrk's rate;
//! 3. `shadowtap-loadgen --rate R/2` (open model at half of step 2's rate) — goals: achieved
//!    rate within 1% of the schedule, p99 schedule lag at most 1 ms.
//!
//! `SHADOWTAP_BENCH_SECONDS` (default 8) and `SHADOWTAP_BENCH_ROUNDS` (default 3) as in
//! `bench live`.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use shadowtap_tests::process::BackgroundProcess;

use crate::{
    bench_live::{
        env::{self, FILE_BYTES, Nginx, Testbed, WorkDir, check_interrupted},
        procs::wrk,
    },
    util,
};

/// wrk's `-c16` in `bench_live::procs::wrk`; loadgen uses the same.
const CONNECTIONS: u32 = 16;
const MIN_RATIO: f64 = 0.80;
const MAX_RATE_ERROR: f64 = 0.01;
const MAX_P99_LAG_US: f64 = 1000.0;

struct Settings {
    seconds: u64,
    rounds: u32,
}

impl Settings {
    fn from_env() -> Result<Self> {
        fn var(name: &str, default: u64) -> Result<u64> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .with_context(|| format!("{name}={v:?} is not a number ≥ 1")),
                Err(_) => Ok(default),
            }
        }
        Ok(Self {
            seconds: var("SHADOWTAP_BENCH_SECONDS", 8)?,
            rounds: u32::try_from(var("SHADOWTAP_BENCH_ROUNDS", 3)?)
                .context("SHADOWTAP_BENCH_ROUNDS is too large")?,
        })
    }
}

/// One round's figures.
struct Round {
    wrk_rps: f64,
    wrk_problems: Vec<String>,
    max: LoadgenRun,
    half: LoadgenRun,
}

/// What one loadgen run's JSON report says.
struct LoadgenRun {
    achieved_rps: f64,
    scheduled_rps: Option<f64>,
    lag_p50_us: f64,
    lag_p99_us: f64,
    lag_max_us: f64,
    errors: u64,
    unsent: u64,
}

impl LoadgenRun {
    fn from_report(report: &Value) -> Result<Self> {
        let num = |path: &str| -> Result<f64> {
            report
                .pointer(path)
                .and_then(Value::as_f64)
                .with_context(|| format!("no {path} in shadowtap-loadgen's report"))
        };
        let lag = report.pointer("/schedule_lag").filter(|v| !v.is_null());
        let lag_field = |name: &str| lag.map_or(Ok(0.0), |_| num(&format!("/schedule_lag/{name}")));
        Ok(Self {
            achieved_rps: num("/throughput/achieved_rps")?,
            scheduled_rps: report
                .pointer("/throughput/scheduled_rps")
                .and_then(Value::as_f64),
            lag_p50_us: lag_field("p50_us")?,
            lag_p99_us: lag_field("p99_us")?,
            lag_max_us: lag_field("max_us")?,
            errors: num("/errors/total")? as u64,
            unsent: num("/throughput/unsent")? as u64,
        })
    }

    /// |achieved / scheduled − 1| (open model).
    fn rate_error(&self) -> f64 {
        self.scheduled_rps
            .filter(|&s| s > 0.0)
            .map_or(f64::INFINITY, |s| (self.achieved_rps / s - 1.0).abs())
    }
}

pub fn run() -> Result<()> {
    if !util::is_root() {
        bail!("bench loadgen creates network namespaces: run it as root");
    }
    let settings = Settings::from_env()?;
    env::install_tools()?;
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "shadowtap-loadgen",
        "--bin",
        "shadowtap-loadgen",
    ])?;
    let bin = util::target_dir().join("release/shadowtap-loadgen");

    // Guards, dropped in reverse order on every exit path.
    env::install_signal_handlers()?;
    let work = WorkDir::create()?;
    let bed = Testbed::create()?;
    let nginx = Nginx::start(&bed, &work.path)?;
    let dir = work.path.as_path();
    let header = format!(
        "shadowtap-loadgen bench — nginx {} (1 worker, {FILE_BYTES}-byte file) on {} in \
         namespace {}; clients in {}; {CONNECTIONS} connections, {} s per run, {} rounds",
        nginx.version,
        bed.url(),
        bed.server().name(),
        bed.client().name(),
        settings.seconds,
        settings.rounds
    );
    eprintln!("xtask: {header}");
    eprintln!("xtask: warm-up (2 s of wrk, not measured)");
    wrk(bed.client(), &bed.url(), 2, dir)?;

    let mut rounds = Vec::new();
    for round in 0..settings.rounds {
        let n = round + 1;
        let run_wrk = || -> Result<_> {
            let r = wrk(bed.client(), &bed.url(), settings.seconds, dir)?;
            eprintln!(
                "xtask: round {n} wrk max                {:>10.0} req/s",
                r.requests_per_sec
            );
            Ok(r)
        };
        let run_max = || -> Result<_> {
            let r = loadgen(
                &bin,
                &bed,
                dir,
                settings.seconds,
                None,
                &format!("r{n}-max"),
            )?;
            eprintln!(
                "xtask: round {n} loadgen max            {:>10.0} req/s",
                r.achieved_rps
            );
            Ok(r)
        };
        let (wrk_result, max) = if round % 2 == 0 {
            let w = run_wrk()?;
            (w, run_max()?)
        } else {
            let m = run_max()?;
            (run_wrk()?, m)
        };
        let rate = (max.achieved_rps / 2.0).floor().max(1.0);
        let half = loadgen(
            &bin,
            &bed,
            dir,
            settings.seconds,
            Some(rate),
            &format!("r{n}-half"),
        )?;
        eprintln!(
            "xtask: round {n} loadgen open {rate:>6.0}/s  {:>10.0} req/s, p99 lag {:.0} µs",
            half.achieved_rps, half.lag_p99_us
        );
        rounds.push(Round {
            wrk_rps: wrk_result.requests_per_sec,
            wrk_problems: wrk_result.problems,
            max,
            half,
        });
    }
    drop(nginx);
    println!("{header}");
    print_report(&rounds);
    Ok(())
}

/// `shadowtap-loadgen` in the client namespace; `rate` None is `--rate max`.
fn loadgen(
    bin: &Path,
    bed: &Testbed,
    dir: &Path,
    seconds: u64,
    rate: Option<f64>,
    label: &str,
) -> Result<LoadgenRun> {
    let rate = rate.map_or_else(|| "max".to_owned(), |r| format!("{r}"));
    let mut cmd = bed.client().command(bin);
    cmd.args(["--target", &bed.url(), "--rate", &rate])
        .args(["--duration", &format!("{seconds}s")])
        // The duration is the bound that matters; this one only has to be there.
        .args(["--max-requests", "1000000000"])
        .args(["--connections", &CONNECTIONS.to_string()])
        .args(["--seed", "1", "--json", "-", "--quiet"]);
    let mut process = BackgroundProcess::spawn(cmd, &format!("loadgen-{label}"), dir)?;
    let limit = Duration::from_secs(seconds + 30);
    let deadline = Instant::now() + limit;
    let status = loop {
        check_interrupted()?;
        if let Some(status) = process.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            bail!(
                "shadowtap-loadgen did not finish within {} s",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        bail!(
            "shadowtap-loadgen failed ({status}): {}",
            process.stderr_tail()
        );
    }
    let text = process.stdout()?;
    let report: Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing shadowtap-loadgen's JSON report: {text:.300}"))?;
    LoadgenRun::from_report(&report)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => f64::midpoint(values[n / 2 - 1], values[n / 2]),
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn print_report(rounds: &[Round]) {
    println!(
        "{:<6}{:>12}{:>14}{:>8}   {:>10}{:>12}{:>10}{:>10}{:>10}{:>10}",
        "round",
        "wrk req/s",
        "loadgen req/s",
        "ratio",
        "open at",
        "achieved",
        "error",
        "lag p50",
        "lag p99",
        "lag max"
    );
    for (i, r) in rounds.iter().enumerate() {
        println!(
            "{:<6}{:>12.0}{:>14.0}{:>8.3}   {:>10.0}{:>12.1}{:>9.3}%{:>8.0}µs{:>8.0}µs{:>8.0}µs",
            i + 1,
            r.wrk_rps,
            r.max.achieved_rps,
            r.max.achieved_rps / r.wrk_rps,
            r.half.scheduled_rps.unwrap_or(0.0),
            r.half.achieved_rps,
            100.0 * r.half.rate_error(),
            r.half.lag_p50_us,
            r.half.lag_p99_us,
            r.half.lag_max_us
        );
        for problem in &r.wrk_problems {
            println!("      wrk: {problem}");
        }
        for (what, run) in [("max", &r.max), ("open", &r.half)] {
            if run.errors > 0 || run.unsent > 0 {
                println!(
                    "      loadgen {what}: {} errors, {} unsent",
                    run.errors, run.unsent
                );
            }
        }
    }
    let wrk = median(rounds.iter().map(|r| r.wrk_rps).collect());
    let max = median(rounds.iter().map(|r| r.max.achieved_rps).collect());
    let ratio = max / wrk;
    println!(
        "max rate (medians): wrk {wrk:.0} req/s, shadowtap-loadgen {max:.0} req/s: ratio {ratio:.3} \
         (goal ≥ {MIN_RATIO:.2}): {}",
        verdict(ratio >= MIN_RATIO)
    );
    let error = median(rounds.iter().map(|r| r.half.rate_error()).collect());
    let lag = median(rounds.iter().map(|r| r.half.lag_p99_us).collect());
    let worst_error = rounds
        .iter()
        .map(|r| r.half.rate_error())
        .fold(0.0, f64::max);
    let worst_lag = rounds.iter().map(|r| r.half.lag_p99_us).fold(0.0, f64::max);
    println!(
        "open model at half of loadgen's max (medians): achieved within {:.3}% of schedule \
         (goal ≤ {:.0}%), p99 schedule lag {:.0} µs (goal ≤ {MAX_P99_LAG_US:.0} µs): {}; worst \
         round {:.3}%, {:.0} µs",
        100.0 * error,
        100.0 * MAX_RATE_ERROR,
        lag,
        verdict(error <= MAX_RATE_ERROR && lag <= MAX_P99_LAG_US),
        100.0 * worst_error,
        worst_lag
    );
}
