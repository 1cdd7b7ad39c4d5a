//! `cargo xtask bench collector`: real `shadowtap-collector` processes against a real broker
//! (nisshi on 127.0.0.1), each figure next to a baseline measured in the same run on the same
//! broker:
//!
//! - latency: wall time from a window closing at the agent (its observation handed to the
//!   agent's spool and producer, [`ObservationSink`]) to the scale event it caused being
//!   acknowledged by the broker (the collector's own histogram), vs a produce → consume round
//!   trip of one record, with librdkafka's default consumer and with the collector's;
//! - throughput: observations/s through one collector and through two sharing a 4-partition
//!   topic (each one's own rate), vs a bare consumer reading the same records.
//!
//! Sizes: env `BENCH_OBSERVATIONS` (default 200,000), `BENCH_LATENCY_SECS` (default 20).
//! The observed-demand run is repeated (`BENCH_OBSERVED_REPEATS`, default 3) and judged on
//! its median: one run of the same binary moved ±23% around the median in one hour on one
//! VM (docs/benchmarks.md, stop 40), so a single run's verdict was a coin toss near the goal.

#[allow(unused_imports)]
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../core/benches/common/demand.rs"]
mod demand;
#[path = "pipeline/load.rs"]
mod load;
#[path = "pipeline/procs.rs"]
mod procs;

use std::time::Duration;

use common::Broker;
use hdrhistogram::Histogram;
use load::Workload;
use procs::{CollectorProc, Rate, RunTopics};

/// The same allocator as the shipped binaries, so that the bench's own producers cost what
/// the agent's do.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Capacity 100 per instance and demand that grows every window: every window of every
/// resource scales out, so every closed window publishes a scale event.
const POLICY: &str = r#"
[defaults]
capacity_per_instance = 100.0
target_utilisation = 1.0
provisioning_lead_time = "1s"
horizon = "1s"
min_instances = 1
max_instances = 100000000
scale_out_cooldown = "0s"
scale_in_cooldown = "1h"
scale_in_stabilisation = "1h"
"#;

/// The collector's default: its own forecaster of merged demand once 8 windows are merged.
const DEFAULT_MIN_FORECAST_HISTORY: usize = 8;
/// Never reached: decisions on the last observed window only.
const NO_FORECASTER: usize = 1_000_000;
const THROUGHPUT_GOAL: f64 = 100_000.0;
const LATENCY_P99_GOAL_MS: f64 = 200.0;
/// Partitions of the bench's observation topic (`--partitions` in `procs::spawn`).
const PARTITIONS: u64 = 4;
/// Each of two collectors does at least this share of one collector's observations per
/// CPU-second: splitting the partitions adds no work of its own beyond this.
const SCALING_EFFICIENCY: f64 = 0.8;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `values` (the mean of the middle two for an even count); None when empty.
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some(f64::midpoint(sorted[n / 2 - 1], sorted[n / 2])),
    }
}

fn goal(met: bool, text: &str) {
    println!(
        "{}  {text}",
        if met {
            "goal met     "
        } else {
            "goal NOT met "
        }
    );
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

struct Throughput {
    label: String,
    per: Vec<Rate>,
    all: Rate,
    scale_events: u64,
    forecast_fits: u64,
    forecast_fit_seconds: f64,
    windows_caught_up: u64,
}

/// One throughput run's set-up.
#[derive(Clone, Copy)]
struct Run {
    /// Names the run's topics and logs.
    suffix: &'static str,
    collectors: usize,
    min_forecast_history: usize,
    workload: Workload,
    /// Start the collectors on the whole backlog (else several join first, then the records
    /// follow).
    backlog_first: bool,
    /// The collector's default: windows whose forecast horizon passed before they closed are
    /// decided on observed demand without a refit. The backlog ends when it is produced, so
    /// nearly all of it is such windows. Off (`--no-catch-up`): every window is forecast, as
    /// every window is at wall-clock pace.
    catch_up: bool,
}

/// Preload the run's observations on a fresh 4-partition topic, then run its collectors on
/// it until every observation is processed and committed. Several collectors join first and
/// the records follow, unless `backlog_first`: then they start together on the whole backlog
/// (the first to join may take every partition until the second joins; CPU time per
/// observation does not depend on who owns what).
fn throughput(
    rt: &tokio::runtime::Runtime,
    broker: &Broker,
    dir: &std::path::Path,
    run: Run,
) -> Throughput {
    let topics = RunTopics::new(run.suffix);
    let policy = common::write_policy(dir, POLICY);
    let run_args: &[&str] = if run.catch_up {
        &[]
    } else {
        &["--no-catch-up"]
    };
    let spawn_all = || -> Vec<CollectorProc> {
        (0..run.collectors)
            .map(|i| {
                procs::spawn(
                    broker,
                    &topics,
                    &policy,
                    run.min_forecast_history,
                    run_args,
                    &dir.join(format!("collector-{}-{i}.log", run.suffix)),
                )
            })
            .collect()
    };
    if run.collectors > 1 && !run.backlog_first {
        // Several: let them split the partitions first (else the first to join takes the
        // whole backlog), then produce; the rates then start while records still arrive.
        let procs = spawn_all();
        for p in &procs {
            p.wait_ready(Duration::from_secs(60));
        }
        let n = rt.block_on(load::preload(broker, &topics, run.workload));
        return finish(&procs, n, run);
    }
    let n = rt.block_on(load::preload(broker, &topics, run.workload));
    let procs = spawn_all();
    finish(&procs, n, run)
}

fn finish(procs: &[CollectorProc], n: u64, run: Run) -> Throughput {
    let (per, all) = procs::watch(procs, n, Duration::from_mins(15));
    let scrapes: Vec<_> = procs.iter().filter_map(CollectorProc::scrape).collect();
    let Run {
        collectors,
        workload,
        ..
    } = run;
    Throughput {
        label: format!(
            "{collectors} collector{}, {} agent{}/resource, {}",
            if collectors == 1 { "" } else { "s" },
            workload.agents,
            if workload.agents == 1 { "" } else { "s" },
            match (run.min_forecast_history == NO_FORECASTER, run.catch_up) {
                (true, _) => "decisions on observed demand",
                (false, true) => "own forecaster (default)",
                (false, false) => "forecaster on every window",
            }
        ),
        per,
        all,
        scale_events: scrapes.iter().map(|s| s.scale_events).sum(),
        forecast_fits: scrapes.iter().map(|s| s.forecast_fits).sum(),
        forecast_fit_seconds: scrapes.iter().map(|s| s.forecast_fit_seconds).sum(),
        windows_caught_up: scrapes.iter().map(|s| s.windows_caught_up).sum(),
    }
}

#[allow(clippy::too_many_lines)] // one report, top to bottom
fn main() {
    let n_obs = env_or("BENCH_OBSERVATIONS", 200_000);
    let observed_repeats = env_or("BENCH_OBSERVED_REPEATS", 3).max(1);
    let latency_secs = env_or("BENCH_LATENCY_SECS", 20);
    // `BENCH_ONLY`: comma-separated subset of latency, observed, two-observed, forecast, fleet,
    // fleet-fresh, two.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let runs_part = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    // One agent per resource: every observation closes a window (the collector's worst case).
    let single = Workload {
        resources: 200,
        windows: n_obs.div_ceil(200),
        agents: 1,
    };
    // With the forecaster and one agent per resource every observation is a window; by
    // default the same backlog as the observed-demand run, so the two rates differ by what
    // the forecaster costs (each resource's first fit on its history, on the fit budget).
    // 20,000 until stop 41: a run of half a second, most of it the first fits' burst.
    let n_forecast = env_or("BENCH_FORECAST_OBSERVATIONS", n_obs);
    let single_forecast = Workload {
        windows: n_forecast.div_ceil(200),
        ..single
    };
    // A fleet: 20 agents observe each of 50 resources (a window closes on the last report),
    // so windows, and fits, are 20 times fewer per observation: `BENCH_FLEET_OBSERVATIONS`.
    // Large enough that each of two collectors runs for seconds, not one scrape.
    let n_fleet = env_or("BENCH_FLEET_OBSERVATIONS", 200_000);
    let fleet = Workload {
        resources: 50,
        windows: n_fleet.div_ceil(50 * 20),
        agents: 20,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::start();
    let rt = common::runtime();
    println!(
        "collector bench: nisshi on {}, release shadowtap-collector processes; throughput runs of {} observations ({} resources x {} windows x 1 agent; {} with the forecaster) and {} ({} resources x {} windows x {} agents); latency {latency_secs} s",
        broker.bootstrap(),
        single.observations(),
        single.resources,
        single.windows,
        single_forecast.observations(),
        fleet.observations(),
        fleet.resources,
        fleet.windows,
        fleet.agents,
    );
    let extra = procs::extra_args();
    if !extra.is_empty() {
        println!(
            "collector arguments added (BENCH_COLLECTOR_ARGS): {}",
            extra.join(" ")
        );
    }

    if runs_part("latency") {
        latency_part(&rt, &broker, dir.path(), latency_secs);
    }
    let raw_topics = RunTopics::new("raw");
    let raw_n = rt.block_on(load::preload(&broker, &raw_topics, single));
    let raw = rt.block_on(load::raw_consume(&broker, &raw_topics, raw_n));
    let mut runs = Vec::new();
    let d = dir.path();
    let one_run = |suffix, min_forecast_history, workload| Run {
        suffix,
        collectors: 1,
        min_forecast_history,
        workload,
        backlog_first: false,
        catch_up: true,
    };
    // The observed-demand run, repeated; each repeat on its own topics.
    let mut plan: Vec<(&str, Run)> = (1..=observed_repeats)
        .map(|k| {
            let suffix: &'static str = if k == 1 {
                "one-observed"
            } else {
                Box::leak(format!("one-observed-{k}").into_boxed_str())
            };
            ("observed", one_run(suffix, NO_FORECASTER, single))
        })
        .collect();
    plan.extend([
        // Two collectors on the observed-demand workload: its work is per observation, where
        // the forecaster's refits run on a wall-clock budget per collector (two may fit more
        // often than one), so CPU time per observation is compared only here.
        (
            "two-observed",
            Run {
                collectors: 2,
                backlog_first: true,
                ..one_run("two-observed", NO_FORECASTER, single)
            },
        ),
        (
            "forecast",
            one_run("one-default", DEFAULT_MIN_FORECAST_HISTORY, single_forecast),
        ),
        (
            "fleet",
            one_run("one-fleet", DEFAULT_MIN_FORECAST_HISTORY, fleet),
        ),
        // The same backlog with every window forecast and refitted on schedule: what each
        // observation costs when windows arrive at wall-clock pace and are all fresh.
        (
            "fleet-fresh",
            Run {
                catch_up: false,
                ..one_run("one-fleet-fresh", DEFAULT_MIN_FORECAST_HISTORY, fleet)
            },
        ),
        (
            "two",
            Run {
                collectors: 2,
                // As the one-collector run: the whole backlog first. Produced while the two
                // run, a fleet's windows close only as the last agent's reports arrive, so
                // their first commits (where the rates start) came near the end.
                backlog_first: true,
                ..one_run("two-fleet", DEFAULT_MIN_FORECAST_HISTORY, fleet)
            },
        ),
    ]);
    for (name, run) in plan {
        if runs_part(name) {
            runs.push((name, throughput(&rt, &broker, d, run)));
        }
    }
    println!();
    println!("throughput (observations/s; each from its first batch committed to its last)");
    println!(
        "  {:<62}{raw:>10.0}",
        format!("baseline: bare consumer, same records ({raw_n})")
    );
    for (_, run) in &runs {
        println!(
            "  {:<62}{:>10.0}   ({:.3}x baseline; {} scale events; {} forecaster fits, {:.1} s; {} windows caught up)",
            run.label,
            run.all.per_second(),
            run.all.per_second() / raw,
            run.scale_events,
            run.forecast_fits,
            run.forecast_fit_seconds,
            run.windows_caught_up,
        );
        for (i, r) in run.per.iter().enumerate() {
            println!(
                "    collector {i}: {:>10.0} observations/s ({} observations in {:.2} s), {} per CPU-second ({:.2} CPU s), {} partition{}",
                r.per_second(),
                r.observations,
                r.seconds,
                r.per_cpu_second()
                    .map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
                r.cpu_seconds,
                r.partitions,
                if r.partitions == 1 { "" } else { "s" },
            );
        }
    }
    println!();
    let find = |name: &str| runs.iter().find(|(n, _)| *n == name).map(|(_, r)| r);
    let observed: Vec<f64> = runs
        .iter()
        .filter(|(n, _)| *n == "observed")
        .map(|(_, r)| r.all.per_second())
        .collect();
    if let (Some(median), Some(first)) = (median(&observed), find("observed")) {
        goal(
            median >= THROUGHPUT_GOAL,
            &format!(
                "one collector >= 100k observations/s, {}: median {median:.0} of {} runs ({})",
                first.label,
                observed.len(),
                observed
                    .iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        );
    }
    for name in ["forecast", "fleet", "fleet-fresh"] {
        if let Some(run) = find(name) {
            let rate = run.all.per_second();
            goal(
                rate >= THROUGHPUT_GOAL,
                &format!(
                    "one collector >= 100k observations/s, {}: {rate:.0}",
                    run.label
                ),
            );
        }
    }
    if let Some(two) = find("two-observed") {
        scaling_by_partitions(two, find("observed"));
    }
    if let Some(two) = find("two") {
        // The ratio and the fit comparison need the one-collector run of the same workload
        // (`fleet`) in this invocation; without it (BENCH_ONLY=two) say so rather than print NaN.
        let one = find("fleet");
        // With the forecaster, CPU per observation is not judged: each collector refits on its
        // own wall-clock budget, so two may fit more often than one. The fit counts say how
        // much of a difference in CPU that explains.
        let one_fits = one.map_or_else(
            || "one collector not run".to_owned(),
            |one| {
                format!(
                    "one collector: {} fits, {:.1} s",
                    one.forecast_fits, one.forecast_fit_seconds
                )
            },
        );
        println!(
            "  forecaster fits on the same workload: two collectors {} fits, {:.1} s; {one_fits} (not judged)",
            two.forecast_fits, two.forecast_fit_seconds
        );
        let min_per = two
            .per
            .iter()
            .map(Rate::per_second)
            .fold(f64::INFINITY, f64::min);
        let versus_one = one.map_or_else(
            || "one collector not run".to_owned(),
            |r| {
                format!(
                    "{:.2}x one collector",
                    two.all.per_second() / r.all.per_second()
                )
            },
        );
        goal(
            min_per >= THROUGHPUT_GOAL,
            &format!(
                "each of two collectors >= 100k observations/s ({}): {} (together {:.0}, {versus_one})",
                two.label,
                two.per
                    .iter()
                    .map(|r| format!("{:.0}", r.per_second()))
                    .collect::<Vec<_>>()
                    .join(", "),
                two.all.per_second(),
            ),
        );
    }
}

/// Whether two collectors split the work by partitions: each owns part of the topic, and
/// each does about as much per second of its own CPU as one collector alone. On this 2-core
/// VM the two share the cores with the broker (one collector alone already uses more than
/// one core), so their wall-clock rates add up to no more than one's; their per-CPU rates
/// say what each would do given the CPU one collector uses alone.
fn scaling_by_partitions(two: &Throughput, one: Option<&Throughput>) {
    let owned: Vec<u64> = two.per.iter().map(|r| r.partitions).collect();
    let split = owned.iter().all(|&p| p > 0) && owned.iter().sum::<u64>() == PARTITIONS;
    let per_cpu: Vec<Option<f64>> = two.per.iter().map(Rate::per_cpu_second).collect();
    let one_cpu = one
        .and_then(|r| r.per.first())
        .and_then(Rate::per_cpu_second);
    let (Some(one_cpu), true) = (one_cpu, per_cpu.iter().all(Option::is_some)) else {
        println!(
            "  scaling by partitions: not measured (needs the one-collector run of the same workload and /proc)"
        );
        return;
    };
    let per_cpu: Vec<f64> = per_cpu.into_iter().flatten().collect();
    let worst = per_cpu.iter().copied().fold(f64::INFINITY, f64::min) / one_cpu;
    let together: f64 = per_cpu.iter().sum();
    goal(
        split && worst >= SCALING_EFFICIENCY,
        &format!(
            "two collectors split the work by partitions ({}): partitions owned {owned:?} of {PARTITIONS}; observations per CPU-second {} vs one collector's {one_cpu:.0} (worst {worst:.2}x, goal >= {SCALING_EFFICIENCY}); each with the CPU one collector uses alone, together {together:.0}/s ({:.2}x one)",
            two.label,
            per_cpu
                .iter()
                .map(|v| format!("{v:.0}"))
                .collect::<Vec<_>>()
                .join(" and "),
            together / one_cpu,
        ),
    );
}

/// Latency, printed at once (so a long throughput part does not hide it).
fn latency_part(rt: &tokio::runtime::Runtime, broker: &Broker, dir: &std::path::Path, secs: u64) {
    let rt_default = rt.block_on(load::roundtrip(broker, "default", &[], 300));
    let rt_collector = rt.block_on(load::roundtrip(
        broker,
        "collector",
        shadowtap_core::kafka::CONSUMER_FETCH,
        300,
    ));
    let observed = load::live_latency(rt, broker, dir, POLICY, secs, 20, NO_FORECASTER);
    let latency = load::live_latency(
        rt,
        broker,
        dir,
        POLICY,
        secs,
        20,
        DEFAULT_MIN_FORECAST_HISTORY,
    );
    println!();
    println!(
        "latency (ms)                                          p50      p99    p99.9      max  samples"
    );
    for (label, h) in [
        (
            "baseline: produce -> consume, librdkafka defaults",
            &rt_default,
        ),
        (
            "baseline: produce -> consume, collector's consumer",
            &rt_collector,
        ),
    ] {
        println!(
            "  {label:<52}{:>6.1} {:>8.1} {:>8.1} {:>8.1} {:>8}",
            pct(h, 0.5),
            pct(h, 0.99),
            pct(h, 0.999),
            h.max() as f64 / 1000.0,
            h.len()
        );
    }
    for (label, l) in [
        (
            "window closed -> event acked, own forecaster (default)",
            &latency,
        ),
        (
            "window closed -> event acked, observed demand only",
            &observed,
        ),
    ] {
        println!(
            "  {label:<52}{:>6.1} {:>8.1} {:>8.1} {:>8.1} {:>8}   ({} observations sent)",
            l.p50, l.p99, l.p999, l.max, l.events, l.sent
        );
    }
    for (label, l) in [("own forecaster", &latency), ("observed demand", &observed)] {
        println!(
            "  stages, {label} (p50/p99/max ms): {}",
            l.stages
                .iter()
                .map(|(s, p50, p99, max)| format!("{s} {p50:.0}/{p99:.0}/{max:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "  ratios to the collector-consumer baseline: p50 {:.2}x, p99 {:.2}x; to librdkafka defaults: p50 {:.2}x, p99 {:.2}x",
        latency.p50 / pct(&rt_collector, 0.5).max(0.001),
        latency.p99 / pct(&rt_collector, 0.99).max(0.001),
        latency.p50 / pct(&rt_default, 0.5).max(0.001),
        latency.p99 / pct(&rt_default, 0.99).max(0.001),
    );
    goal(
        latency.p99 <= LATENCY_P99_GOAL_MS,
        &format!(
            "window closed -> scale event acknowledged p99 <= {LATENCY_P99_GOAL_MS} ms, default config: p99 {:.0} ms (p50 {:.0}, p99.9 {:.0}; {} events; baseline p99 {:.1} ms)",
            latency.p99,
            latency.p50,
            latency.p999,
            latency.events,
            pct(&rt_collector, 0.99)
        ),
    );
    goal(
        observed.p99 <= LATENCY_P99_GOAL_MS,
        &format!(
            "the same, decisions on observed demand (no forecaster): p99 {:.0} ms (p50 {:.0}, p99.9 {:.0}; {} events)",
            observed.p99, observed.p50, observed.p999, observed.events
        ),
    );
}
