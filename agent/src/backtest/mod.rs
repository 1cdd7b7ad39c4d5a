//! `shadowtap-agent backtest`: replay a demand series through the forecaster and the decision
//! engine with a simulated provisioner, next to a reactive baseline under the same delay.
//!
//! The first `--history` of the series (default: its first 25%) only trains the forecaster;
//! from then on, at the start of every bucket both policies decide on what has been observed so
//! far, the provisioner applies their decisions (new instances arrive after
//! `--provision-delay`), and the bucket's demand is played against the running capacity.

pub mod frontier;
mod pcap;
mod plot;
pub mod series;
pub mod simulate;

use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use shadowtap_core::{
    decision::{DecisionEngine, DecisionInput, Policy, PolicySet, parse_duration},
    forecast::{DemandForecast, DemandTransform, ForecastConfig, ModelKind, ResourceForecaster},
};

pub use series::DemandSeries;
pub use simulate::{Accounting, PolicyTotals, Provisioner, ReactivePolicy};

/// Arguments of `shadowtap-agent backtest`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["series", "pcap"])))]
pub struct BacktestArgs {
    /// Demand series as `timestamp,value` CSV (value = demand in that interval).
    #[arg(long, value_name = "FILE.csv")]
    pub series: Option<PathBuf>,
    /// Capture to derive the demand series from: HTTP requests and TLS client hellos per
    /// `--pcap-step`, through the same decode → events path as `replay`.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Bucket length of the demand series derived from `--pcap`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1s")]
    pub pcap_step: Duration,
    /// Demand one instance serves per series interval (overrides the policy file).
    #[arg(long, value_name = "N")]
    pub capacity_per_instance: f64,
    /// Time from requesting an instance until it serves (e.g. 10m); also the policy's lead time.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub provision_delay: Duration,
    /// Training-only prefix of the series [default: first 25%].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub history: Option<Duration>,
    /// Policy TOML; the resource is `--resource` or the series file stem, else `[defaults]`.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Resource name to look up in the policy file [default: the series file stem].
    #[arg(long)]
    pub resource: Option<String>,
    /// Print one JSON object instead of a text report.
    #[arg(long)]
    pub json: bool,
    /// Draw demand, forecast band and both capacity curves to this PNG (with `--frontier`,
    /// both frontiers to FILE-frontier.png too).
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    /// Also sweep the reactive rule's target utilisation and the forecast's interval level and
    /// print both Pareto frontiers (under-provisioned minutes against instance-hours).
    #[arg(long)]
    pub frontier: bool,
    /// Prediction-interval level of the forecast.
    #[arg(long, default_value_t = 0.95)]
    pub level: f64,
    /// Transform applied to demand before fitting.
    #[arg(long, value_enum, default_value_t = DemandTransform::None)]
    pub transform: DemandTransform,
    /// Refit the forecast model this often [default: every 24 intervals].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub refit_interval: Option<Duration>,
    /// Most recent points a fit uses.
    #[arg(long, default_value_t = 4032)]
    pub max_fit_points: usize,
    /// How often both policies decide (Kubernetes' HPA: every 15s); demand data still arrives
    /// once per series interval.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "1m")]
    pub decision_interval: Duration,
    /// Scale-in stabilisation window of the reactive baseline (Kubernetes HPA default: 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub reactive_stabilisation: Duration,
}

/// Settings of one backtest run, independent of the command line.
#[derive(Debug, Clone)]
pub struct BacktestOptions {
    /// Policy of the predictive engine; its limits and target also apply to the baseline.
    pub policy: Policy,
    /// Provisioning delay of both policies.
    pub provision_delay: Duration,
    /// Training-only prefix in buckets.
    pub history_points: usize,
    /// Forecaster settings (the step is taken from the series).
    pub forecast: ForecastConfig,
    /// How often both policies decide.
    pub decision_interval: Duration,
    /// Reactive baseline's scale-in stabilisation window.
    pub reactive_stabilisation: Duration,
    /// Show a progress bar (only honoured when stderr is a terminal).
    pub progress: bool,
    /// Keep the per-bucket trace (for plots).
    pub keep_trace: bool,
}

/// Forecast accuracy over the evaluation period.
#[derive(Debug, Clone, Serialize)]
pub struct ForecastSummary {
    /// One-step-ahead MAE relative to seasonal naive (below 1 = better).
    pub mase: Option<f64>,
    /// Fraction of observations inside the issued prediction interval.
    pub coverage: Option<f64>,
    /// Same for the model's raw interval, before automatic widening.
    pub raw_coverage: Option<f64>,
    /// Nominal level.
    pub level: f64,
    /// Interval widening in force at the end.
    pub final_widening: f64,
    /// Model in force at the end.
    pub model: Option<ModelKind>,
    /// Fits performed (including the initial one).
    pub fits: u64,
    /// Fits that failed (the previous forecast was kept).
    pub fit_failures: u64,
    /// Fits over the time budget.
    pub budget_overruns: u64,
    /// Mean wall time per fit in milliseconds.
    pub mean_fit_ms: f64,
}

/// How the predictive policy compares with the baseline.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Comparison {
    /// 1 − predictive / reactive under-provisioned minutes (1 = none left).
    pub under_provisioning_reduction: Option<f64>,
    /// Predictive / reactive instance-hours.
    pub instance_hours_ratio: f64,
    /// Reduction ≥ 80% at ≤ 110% of the instance-hours.
    pub goal_met: bool,
}

/// One evaluated bucket, for plots.
#[derive(Debug, Clone, Copy)]
pub struct TracePoint {
    /// Bucket start, unix ms.
    pub start_ms: u64,
    /// Observed demand.
    pub demand: f64,
    /// One-step-ahead forecast issued at the bucket start.
    pub point: f64,
    /// Its interval.
    pub lower: f64,
    /// Its interval.
    pub upper: f64,
    /// Predictive capacity (running instances × capacity) at bucket start and end.
    pub predictive_capacity: (f64, f64),
    /// Reactive capacity at bucket start and end.
    pub reactive_capacity: (f64, f64),
}

/// The result of a backtest.
#[derive(Debug, Clone, Serialize)]
pub struct BacktestReport {
    /// Series name.
    pub series: String,
    /// Series step in seconds.
    pub step_secs: u64,
    /// Buckets used for training only.
    pub history_points: usize,
    /// Buckets evaluated.
    pub evaluated_points: usize,
    /// Missing buckets interpolated while loading.
    pub gaps_filled: usize,
    /// Rows with repeated or off-grid timestamps, taken as the next bucket.
    pub irregular_rows: usize,
    /// Provisioning delay in seconds.
    pub provision_delay_secs: f64,
    /// Seconds between decisions.
    pub decision_interval_secs: f64,
    /// The predictive policy.
    pub policy: Policy,
    /// Forecast-driven engine.
    pub predictive: PolicyTotals,
    /// Reactive baseline.
    pub reactive: PolicyTotals,
    /// Forecast accuracy.
    pub forecast: ForecastSummary,
    /// Predictive vs reactive.
    pub comparison: Comparison,
    /// Wall time of the run in seconds.
    pub wall_secs: f64,
    /// Per-bucket trace (not serialised).
    #[serde(skip)]
    pub trace: Vec<TracePoint>,
}

/// The shared demand series directory: `SHADOWTAP_SHARED_DATA`/series, else
/// `<workspace>/../shared/data/series`.
pub fn shared_series_dir() -> PathBuf {
    std::env::var_os("SHADOWTAP_SHARED_DATA").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/series"),
        |dir| PathBuf::from(dir).join("series"),
    )
}

/// Entry point of `shadowtap-agent backtest`.
pub fn run_backtest(args: &BacktestArgs) -> anyhow::Result<()> {
    let series = match (&args.series, &args.pcap) {
        (Some(path), None) => DemandSeries::load(path)?,
        (None, Some(path)) => pcap::series_from_pcap(path, args.pcap_step)?,
        _ => bail!("give exactly one of --series or --pcap"),
    };
    let options = options_from_args(args, &series)?;
    let report = run_series_backtest(&series, &options)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("serialising the report")?
        );
    } else {
        print_text_report(&report);
    }
    if let Some(path) = &args.plot {
        plot::draw(&report, path).with_context(|| format!("drawing {}", path.display()))?;
        if !args.json {
            println!("plot written to {}", path.display());
        }
    }
    if args.frontier {
        let frontiers = frontier::sweep(&series, &options)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string(&frontiers).context("serialising the frontiers")?
            );
        } else {
            frontier::print(&frontiers);
        }
        if let Some(path) = &args.plot {
            let path = plot::frontier_path(path);
            plot::draw_frontiers(&report.series, &frontiers, &path)
                .with_context(|| format!("drawing {}", path.display()))?;
            if !args.json {
                println!("frontier plot written to {}", path.display());
            }
        }
    }
    Ok(())
}

fn options_from_args(
    args: &BacktestArgs,
    series: &DemandSeries,
) -> anyhow::Result<BacktestOptions> {
    let resource = args.resource.clone().unwrap_or_else(|| series.name.clone());
    let policies = match &args.policy {
        Some(path) => PolicySet::load(path)?,
        None => PolicySet::from_toml("").context("empty policy")?,
    };
    let policy = policies.policy_with(
        &resource,
        Some(args.capacity_per_instance),
        Some(args.provision_delay),
    )?;
    let history_points = match args.history {
        Some(history) => (history.as_millis() / series.step.as_millis().max(1)) as usize,
        None => series.values.len() / 4,
    };
    let refit_interval = args.refit_interval.unwrap_or(series.step * 24);
    let forecast = ForecastConfig {
        step: series.step,
        level: args.level,
        transform: args.transform,
        refit_interval,
        max_fit_points: args.max_fit_points,
        ..ForecastConfig::default()
    };
    Ok(BacktestOptions {
        policy,
        provision_delay: args.provision_delay,
        history_points,
        forecast,
        decision_interval: args.decision_interval,
        reactive_stabilisation: args.reactive_stabilisation,
        progress: true,
        keep_trace: args.plot.is_some(),
    })
}

/// Run a backtest on a loaded series.
pub fn run_series_backtest(
    series: &DemandSeries,
    options: &BacktestOptions,
) -> anyhow::Result<BacktestReport> {
    let started = Instant::now();
    let n = series.values.len();
    let history = options.history_points;
    if history < 2 || history >= n {
        bail!(
            "--history covers {history} of {n} intervals of {}: it must leave at least 2 \
             for training and 1 to evaluate",
            series.name
        );
    }
    let policy = &options.policy;
    policy.validate()?;
    let step_ms = series.step_ms();
    let delay_ms = u64::try_from(options.provision_delay.as_millis()).unwrap_or(u64::MAX);
    let capacity = policy.capacity_per_instance;
    let tick_ms = u64::try_from(options.decision_interval.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, step_ms);
    // The last decision inside a bucket looks lead time + horizon beyond its end.
    let decision_buckets = (u128::from(step_ms)
        + (policy.provisioning_lead_time + policy.horizon).as_millis())
    .div_ceil(u128::from(step_ms)) as usize
        + 1;
    let mut forecaster = trained_forecaster(series, options, decision_buckets)?;
    let mut engine = DecisionEngine::new(series.name.clone(), policy.clone());
    let mut reactive = ReactivePolicy::new(
        policy.threshold_per_instance(),
        policy.min_instances,
        policy.max_instances,
        u64::try_from(options.reactive_stabilisation.as_millis()).unwrap_or(u64::MAX),
    );
    // Both start in the steady state the baseline would be in.
    let initial = reactive.raw_desired(series.values[history - 1]);
    let mut predictive = Simulated::new(initial, delay_ms);
    let mut baseline = Simulated::new(initial, delay_ms);
    let mut trace = Vec::with_capacity(if options.keep_trace { n - history } else { 0 });
    let progress = progress_bar(options.progress, (n - history) as u64);

    for i in history..n {
        let bucket_start = series.start_of(i);
        // New data arrives once per bucket; decisions are taken every tick within it.
        let forecast = forecaster
            .forecast(decision_buckets)
            .with_context(|| format!("forecasting at interval {i}"))?;
        // The engine falls back to the reactive rule while the forecast has no skill.
        engine.set_skill(forecaster.accuracy().recent_mase);
        let capacity_at_start = (predictive.capacity(capacity), baseline.capacity(capacity));
        let bucket = Bucket {
            start_ms: bucket_start,
            step_ms,
            tick_ms,
            demand: series.values[i],
            last_observed: series.values[i - 1],
            capacity_per_instance: capacity,
        };
        bucket.play(
            (&mut engine, &forecast, &mut predictive),
            (&mut reactive, &mut baseline),
        );
        if options.keep_trace {
            let next = forecast.points.first();
            trace.push(TracePoint {
                start_ms: bucket_start,
                demand: bucket.demand,
                point: next.map_or(f64::NAN, |p| p.point),
                lower: next.map_or(f64::NAN, |p| p.lower),
                upper: next.map_or(f64::NAN, |p| p.upper),
                predictive_capacity: (capacity_at_start.0, predictive.capacity(capacity)),
                reactive_capacity: (capacity_at_start.1, baseline.capacity(capacity)),
            });
        }
        forecaster
            .observe(bucket_start, bucket.demand)
            .with_context(|| format!("observing interval {i}"))?;
        if let Some(bar) = &progress {
            bar.inc(1);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }

    let predictive = predictive.totals.totals();
    let reactive = baseline.totals.totals();
    Ok(BacktestReport {
        series: series.name.clone(),
        step_secs: series.step.as_secs(),
        history_points: history,
        evaluated_points: n - history,
        gaps_filled: series.gaps_filled,
        irregular_rows: series.irregular_rows,
        provision_delay_secs: options.provision_delay.as_secs_f64(),
        decision_interval_secs: tick_ms as f64 / 1000.0,
        policy: policy.clone(),
        comparison: compare(&predictive, &reactive),
        predictive,
        reactive,
        forecast: ForecastSummary::of(&forecaster),
        wall_secs: started.elapsed().as_secs_f64(),
        trace,
    })
}

/// A forecaster trained on the history part of `series`, accuracy totals reset.
fn trained_forecaster(
    series: &DemandSeries,
    options: &BacktestOptions,
    decision_buckets: usize,
) -> anyhow::Result<ResourceForecaster> {
    let history = options.history_points;
    let mut config = options.forecast.clone();
    config.step = series.step;
    // A backtest must give the same figures on every run: with a wall-time fit budget the
    // training window would shrink whenever the machine is busy, and the figures with it.
    config.fit_time_budget = Duration::ZERO;
    config.max_horizon = config.max_horizon.max(decision_buckets);
    let mut forecaster = ResourceForecaster::new(series.name.clone(), config)?;
    forecaster
        .warm_start(series.start_ms, &series.values[..history])
        .with_context(|| format!("training the forecaster on {history} intervals"))?;
    forecaster.reset_accuracy();
    Ok(forecaster)
}

impl ForecastSummary {
    fn of(forecaster: &ResourceForecaster) -> Self {
        let accuracy = forecaster.accuracy();
        let stats = forecaster.stats();
        Self {
            mase: accuracy.mase,
            coverage: accuracy.coverage,
            raw_coverage: accuracy.raw_coverage,
            level: accuracy.level,
            final_widening: accuracy.widening,
            model: forecaster.model().cloned(),
            fits: stats.fits,
            fit_failures: stats.fit_failures,
            budget_overruns: stats.budget_overruns,
            mean_fit_ms: stats.total_fit_us as f64 / 1000.0 / stats.fits.max(1) as f64,
        }
    }
}

/// One bucket of the evaluation period: constant demand, decisions every tick.
struct Bucket {
    start_ms: u64,
    step_ms: u64,
    tick_ms: u64,
    demand: f64,
    last_observed: f64,
    capacity_per_instance: f64,
}

impl Bucket {
    fn play(
        &self,
        (engine, forecast, predictive): (&mut DecisionEngine, &DemandForecast, &mut Simulated),
        (reactive, baseline): (&mut ReactivePolicy, &mut Simulated),
    ) {
        let end = self.start_ms + self.step_ms;
        let mut now = self.start_ms;
        while now < end {
            let next = (now + self.tick_ms).min(end);
            let decision = engine.decide(&DecisionInput {
                now_ms: now,
                forecast,
                current_instances: predictive.instances.requested(),
            });
            predictive.apply(now, decision.desired_instances);
            let desired = reactive.decide(now, self.last_observed, baseline.instances.requested());
            baseline.apply(now, desired);
            for policy in [&mut *predictive, &mut *baseline] {
                policy.totals.play_span(
                    &mut policy.instances,
                    (now, next),
                    self.step_ms,
                    self.demand,
                    self.capacity_per_instance,
                );
            }
            now = next;
        }
    }
}

/// One simulated policy: its instances and its accounting.
struct Simulated {
    instances: Provisioner,
    totals: Accounting,
}

impl Simulated {
    fn new(initial: u32, delay_ms: u64) -> Self {
        Self {
            instances: Provisioner::new(initial, delay_ms),
            totals: Accounting::default(),
        }
    }

    fn apply(&mut self, now_ms: u64, desired: u32) {
        let before = self.instances.requested();
        if desired != before {
            self.instances.set_desired(now_ms, desired);
            self.totals.record_change(before, desired);
        }
    }

    fn capacity(&self, capacity_per_instance: f64) -> f64 {
        f64::from(self.instances.ready()) * capacity_per_instance
    }
}

fn compare(predictive: &PolicyTotals, reactive: &PolicyTotals) -> Comparison {
    let under_provisioning_reduction = (reactive.under_provisioned_minutes > 0.0)
        .then(|| 1.0 - predictive.under_provisioned_minutes / reactive.under_provisioned_minutes);
    let instance_hours_ratio = if reactive.instance_hours > 0.0 {
        predictive.instance_hours / reactive.instance_hours
    } else {
        f64::INFINITY
    };
    Comparison {
        under_provisioning_reduction,
        instance_hours_ratio,
        goal_met: under_provisioning_reduction.is_some_and(|r| r >= 0.8)
            && instance_hours_ratio <= 1.1,
    }
}

fn progress_bar(wanted: bool, len: u64) -> Option<indicatif::ProgressBar> {
    if !wanted || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} backtest [{bar:40}] {pos}/{len} intervals ({eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}

fn print_text_report(report: &BacktestReport) {
    let fmt_opt = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"));
    println!(
        "backtest {}: {} intervals of {}s evaluated after {} of training, provisioning delay {}s",
        report.series,
        report.evaluated_points,
        report.step_secs,
        report.history_points,
        report.provision_delay_secs
    );
    println!(
        "{:<12} {:>24} {:>16} {:>14} {:>16}",
        "policy", "under-provisioned min", "instance-hours", "scale events", "unserved demand"
    );
    for (name, totals) in [
        ("predictive", &report.predictive),
        ("reactive", &report.reactive),
    ] {
        println!(
            "{:<12} {:>24.1} {:>16.1} {:>14} {:>15.3}%",
            name,
            totals.under_provisioned_minutes,
            totals.instance_hours,
            totals.scale_events,
            totals.unserved_fraction * 100.0
        );
    }
    println!(
        "forecast: MASE {} (vs seasonal naive), coverage {} at {:.0}% (raw {}), model {:?}, \
         {} fits, {:.1} ms/fit",
        fmt_opt(report.forecast.mase),
        fmt_opt(report.forecast.coverage),
        report.forecast.level * 100.0,
        fmt_opt(report.forecast.raw_coverage),
        report.forecast.model,
        report.forecast.fits,
        report.forecast.mean_fit_ms,
    );
    println!(
        "predictive vs reactive: {} fewer under-provisioned minutes at {:.1}% of the \
         instance-hours; goal (>= 80% fewer at <= 110%) {}",
        report
            .comparison
            .under_provisioning_reduction
            .map_or_else(|| "n/a".to_owned(), |r| format!("{:.1}%", r * 100.0)),
        report.comparison.instance_hours_ratio * 100.0,
        if report.comparison.goal_met {
            "met"
        } else {
            "NOT met"
        }
    );
}

#[cfg(test)]
mod compressed_day_tests;
#[cfg(test)]
mod goal_tests;
#[cfg(test)]
mod tests;
