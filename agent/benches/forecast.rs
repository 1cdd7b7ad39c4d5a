//! Forecast fit + predict: augurs (MSTL with an `AutoETS` trend) next to Python statsforecast
//! (the same model) on the same series, in the same run.
//!
//! The series are windows of the real demand series in the shared data directory (nyc taxi at
//! 30 minutes, Twitter volumes at 5 minutes), 4,032 points each, with the next `horizon` points
//! held out to score both forecasts with the same MASE code.
//!
//! `cargo bench -p shadowtap-agent --bench forecast`
//!
//! Environment:
//! - `SHADOWTAP_BENCH_SERIES`: number of series (default 1000);
//! - `SHADOWTAP_BENCH_HORIZON`: forecast horizon in steps (default 48);
//! - `SHADOWTAP_BENCH_SKIP_BASELINE=1`: do not run statsforecast (no ratio is printed);
//! - `SHADOWTAP_BENCH_BASELINE_PROCS`: statsforecast processes over disjoint shards of the
//!   series (default: one per core). The ratio is of CPU time, so this shortens the
//!   baseline's wall time (about 7 CPU-seconds per series here) without changing the
//!   comparison;
//! - `SHADOWTAP_SHARED_DATA`: shared data directory.
//!
//! The baseline runs in a virtualenv under the target directory, created and filled with
//! `pip install statsforecast==2.1.1` on first use (later runs reuse it).

#[path = "common/cpu_time.rs"]
mod cpu_time;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use shadowtap_agent::backtest::{DemandSeries, shared_series_dir};
use shadowtap_core::forecast::{
    DemandTransform,
    model::{FitSettings, fit_path},
};

/// The same allocator as the shipped binaries (see `agent/src/main.rs`), so that what is
/// measured is what runs.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POINTS: usize = 4032;
const STATSFORECAST: &str = "statsforecast==2.1.1";

/// One benchmark series: a training window and the values that follow it.
struct BenchSeries {
    id: String,
    seasons: Vec<usize>,
    train: Vec<f64>,
    actual: Vec<f64>,
}

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v} is not a positive integer")),
        Err(_) => Ok(default),
    }
}

/// `count` windows of 4,032 + `horizon` points, spread evenly over the offsets each source
/// series allows, taken round-robin from the sources.
fn build_series(count: usize, horizon: usize) -> anyhow::Result<Vec<BenchSeries>> {
    let sources = [
        ("nyc_taxi.csv", vec![48, 336]),
        ("Twitter_volume_AMZN.csv", vec![288, 2016]),
        ("Twitter_volume_FB.csv", vec![288, 2016]),
    ];
    let dir = shared_series_dir();
    let mut loaded = Vec::new();
    for (file, seasons) in sources {
        let series = DemandSeries::load(&dir.join(file))?;
        let span = series.values.len().saturating_sub(POINTS + horizon);
        if span == 0 {
            bail!("{file} is too short for windows of {POINTS} + {horizon}");
        }
        loaded.push((series, seasons, span));
    }
    let per_source = count.div_ceil(loaded.len());
    let mut out = Vec::with_capacity(count);
    for k in 0..per_source {
        for (series, seasons, span) in &loaded {
            if out.len() == count {
                break;
            }
            let offset = k * span / per_source.max(1);
            let window = &series.values[offset..offset + POINTS + horizon];
            out.push(BenchSeries {
                id: format!("{}@{offset}", series.name),
                seasons: seasons.clone(),
                train: window[..POINTS].to_vec(),
                actual: window[POINTS..].to_vec(),
            });
        }
    }
    Ok(out)
}

/// MASE of `forecast` against the held-out values, scaled by the in-sample seasonal-naive
/// error at the shortest season.
fn mase(series: &BenchSeries, forecast: &[f64]) -> Option<f64> {
    let m = series.seasons[0];
    let y = &series.train;
    let scale = y[m..]
        .iter()
        .zip(y)
        .map(|(a, b)| (a - b).abs())
        .sum::<f64>()
        / (y.len() - m) as f64;
    if scale <= 0.0 || forecast.len() != series.actual.len() {
        return None;
    }
    let error = series
        .actual
        .iter()
        .zip(forecast)
        .map(|(a, f)| (a - f).abs())
        .sum::<f64>()
        / forecast.len() as f64;
    Some(error / scale)
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Wall and CPU time of one side's fit + predict.
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Duration,
}

/// Fit + predict every series with augurs; returns its timing and MASEs.
fn run_augurs(
    series: &[BenchSeries],
    horizon: usize,
    pipeline: bool,
) -> anyhow::Result<(Timing, Vec<f64>)> {
    let mut forecasts = Vec::with_capacity(series.len());
    let started = Instant::now();
    let cpu_started = cpu_time::process();
    for s in series {
        let transform = if pipeline {
            DemandTransform::Log1p
        } else {
            DemandTransform::None
        };
        let settings = FitSettings {
            level: 0.95,
            season_hints: Vec::new(),
            max_season: 2016,
            season_threshold: 0.1,
            max_seasons: 2,
            min_autocorrelation: 0.3,
            // The like-for-like row uses the known seasons and no extras, as statsforecast
            // does; the pipeline row detects seasons and handles outliers and changepoints
            // like the agent.
            outlier_threshold: if pipeline { 6.0 } else { 0.0 },
            // One expected change per week, as the agent's default.
            changepoint_hazard: if pipeline {
                s.seasons.last().copied().unwrap_or(0) as f64
            } else {
                0.0
            },
            fixed_seasons: (!pipeline).then(|| s.seasons.clone()),
            reuse_form: None,
        };
        let window: Vec<f64> = s.train.iter().map(|v| transform.forward(*v)).collect();
        let path = fit_path(&window, &settings, horizon)
            .with_context(|| format!("augurs fit of {}", s.id))?;
        forecasts.push(
            path.point
                .iter()
                .map(|v| transform.inverse(*v))
                .collect::<Vec<f64>>(),
        );
    }
    let elapsed = Timing {
        wall: started.elapsed(),
        cpu: cpu_time::process().saturating_sub(cpu_started),
    };
    let mases = series
        .iter()
        .zip(&forecasts)
        .filter_map(|(s, f)| mase(s, f))
        .collect();
    Ok((elapsed, mases))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    )
}

/// The virtualenv's python, created and filled on first use.
fn baseline_python() -> anyhow::Result<PathBuf> {
    let venv = target_dir().join("statsforecast-venv");
    let python = venv.join("bin/python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import statsforecast"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if python.exists() && ready(&python) {
        return Ok(python);
    }
    eprintln!(
        "creating {} and installing {STATSFORECAST} (once)",
        venv.display()
    );
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("running python3 -m venv")?;
    if !status.success() {
        bail!("python3 -m venv {} failed", venv.display());
    }
    let status = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", STATSFORECAST])
        .status()
        .context("running pip install")?;
    if !status.success() || !ready(&python) {
        bail!("pip install {STATSFORECAST} into {} failed", venv.display());
    }
    Ok(python)
}

/// Run statsforecast on the same series, in `procs` single-threaded processes over disjoint
/// shards (wall time is the slowest shard, CPU time the sum); returns its timed fit +
/// predict and MASEs.
fn run_statsforecast(
    series: &[BenchSeries],
    horizon: usize,
    procs: usize,
) -> anyhow::Result<(Timing, Vec<f64>, String)> {
    let python = baseline_python()?;
    let work = target_dir().join("bench-forecast");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/statsforecast_baseline.py");
    let procs = procs.clamp(1, series.len().max(1));
    let mut children = Vec::with_capacity(procs);
    for shard in 0..procs {
        let input = work.join(format!("input-{shard}.json"));
        let output = work.join(format!("output-{shard}.json"));
        let spec = json!({
            "horizon": horizon,
            "level": 95,
            "series": series.iter().skip(shard).step_by(procs).map(|s| json!({
                "id": s.id, "seasons": s.seasons, "y": s.train,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(&input, serde_json::to_vec(&spec)?)
            .with_context(|| format!("writing {}", input.display()))?;
        let child = Command::new(&python)
            .arg(&script)
            .arg(&input)
            .arg(&output)
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("NUMBA_NUM_THREADS", "1")
            // Workarounds for old OpenBLAS builds that slow a current numpy down; the
            // baseline must not be handicapped.
            .env_remove("OPENBLAS_CORETYPE")
            .env_remove("OPENBLAS_L2_SIZE")
            .spawn()
            .with_context(|| format!("running {}", script.display()))?;
        children.push((child, output));
    }
    let mut wall = Duration::ZERO;
    let mut cpu = Duration::ZERO;
    let mut version = String::from("?");
    let mut forecasts = serde_json::Map::new();
    for (mut child, output) in children {
        let status = child
            .wait()
            .with_context(|| format!("waiting for {}", script.display()))?;
        if !status.success() {
            bail!("{} failed ({status})", script.display());
        }
        let text =
            std::fs::read(&output).with_context(|| format!("reading {}", output.display()))?;
        let mut result: Value = serde_json::from_slice(&text).context("parsing baseline output")?;
        let secs = result["fit_predict_secs"]
            .as_f64()
            .context("baseline output without fit_predict_secs")?;
        let cpu_secs = result["fit_predict_cpu_secs"]
            .as_f64()
            .context("baseline output without fit_predict_cpu_secs")?;
        wall = wall.max(Duration::from_secs_f64(secs));
        cpu += Duration::from_secs_f64(cpu_secs);
        result["statsforecast"]
            .as_str()
            .unwrap_or("?")
            .clone_into(&mut version);
        if let Value::Object(shard) = result["forecasts"].take() {
            forecasts.extend(shard);
        }
    }
    let mut mases = Vec::with_capacity(series.len());
    for s in series {
        let forecast: Vec<f64> = forecasts
            .get(&s.id)
            .and_then(|f| f["mean"].as_array())
            .with_context(|| format!("no baseline forecast for {}", s.id))?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        if let Some(m) = mase(s, &forecast) {
            mases.push(m);
        }
    }
    Ok((Timing { wall, cpu }, mases, version))
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run either way.
    let count = env_usize("SHADOWTAP_BENCH_SERIES", 1000)?;
    let horizon = env_usize("SHADOWTAP_BENCH_HORIZON", 48)?;
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let procs = env_usize("SHADOWTAP_BENCH_BASELINE_PROCS", cores)?;
    let series = build_series(count, horizon)?;
    println!(
        "forecast benchmark: {} series of {POINTS} points (nyc_taxi, Twitter AMZN/FB windows), \
         horizon {horizon}, fit + predict, single thread",
        series.len()
    );

    let (augurs_time, augurs_mase) = run_augurs(&series, horizon, false)?;
    let (pipeline_time, pipeline_mase) = run_augurs(&series, horizon, true)?;
    let per_series = |d: Duration| d.as_secs_f64() * 1000.0 / series.len().max(1) as f64;
    println!(
        "{:<58} {:>10} {:>10} {:>14} {:>10}",
        "method", "wall s", "CPU s", "CPU ms/series", "mean MASE"
    );
    let row = |name: &str, t: Timing, m: &[f64]| {
        println!(
            "{name:<58} {:>10.2} {:>10.2} {:>14.2} {:>10.4}",
            t.wall.as_secs_f64(),
            t.cpu.as_secs_f64(),
            per_series(t.cpu),
            mean(m)
        );
    };
    row(
        "augurs MSTL + AutoETS trend (known seasons)",
        augurs_time,
        &augurs_mase,
    );
    row(
        "shadowtap forecaster (detection, outliers, cp, log1p)",
        pipeline_time,
        &pipeline_mase,
    );

    if std::env::var_os("SHADOWTAP_BENCH_SKIP_BASELINE").is_some() {
        println!("baseline skipped (SHADOWTAP_BENCH_SKIP_BASELINE): no ratio");
        return Ok(());
    }
    let (sf_time, sf_mase, version) = run_statsforecast(&series, horizon, procs)?;
    row(
        &format!("statsforecast {version} MSTL + AutoETS(ZZN) trend ({procs} proc)"),
        sf_time,
        &sf_mase,
    );
    let ratio = sf_time.cpu.as_secs_f64() / augurs_time.cpu.as_secs_f64().max(f64::EPSILON);
    let wall_ratio = sf_time.wall.as_secs_f64() / augurs_time.wall.as_secs_f64().max(f64::EPSILON);
    let mase_delta = mean(&augurs_mase) / mean(&sf_mase) - 1.0;
    println!(
        "speed: augurs is {ratio:.1}x statsforecast in CPU time ({wall_ratio:.1}x wall); \
         MASE {:.4} vs {:.4} ({:+.1}%)",
        mean(&augurs_mase),
        mean(&sf_mase),
        mase_delta * 100.0
    );
    println!(
        "goal (>= 10x faster, MASE within 5%): {}",
        if ratio >= 10.0 && mase_delta <= 0.05 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
