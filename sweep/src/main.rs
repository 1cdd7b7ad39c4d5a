//! `shadowtap-sweep`: check a catalogue, run a sweep on live shadows, or run the explorer
//! experiment (docs/sweeps.md).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum as _};
use shadowtap_loadgen::generate::ForecastBound;
use shadowtap_sweep::catalogue::Catalogue;
use shadowtap_sweep::experiment::{self, Plan};
use shadowtap_sweep::explorer::{self, Space};
use shadowtap_sweep::policy_live;
use shadowtap_sweep::runner::from_agent::{self, AgentLoad};
use shadowtap_sweep::runner::{LoadSpec, Runner, RunnerOptions};
use shadowtap_sweep::sweep::{self, now_ms, run_sweep};
use shadowtap_sweep::trial::{KpiName, Objective};

#[derive(Parser)]
#[command(
    version,
    about = "Shadow parameter sweeps: tune a service on shadows under load"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Common {
    #[arg(long, default_value = "deploy/sweep/nginx-proxy-cache.toml")]
    catalogue: PathBuf,
    /// Cores the sweep may use (shadows at their limit plus one each for load and origin).
    #[arg(long, default_value_t = 1.5)]
    core_budget: f64,
    /// The KPI to minimise (p99_ms, p50_ms, p999_ms, cpu_cores, rss_bytes) or maximise
    /// (throughput_rps).
    #[arg(long, default_value = "p99_ms")]
    kpi: String,
    #[arg(long, default_value_t = 0.01)]
    max_error_rate: f64,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a catalogue and print its parameters and grid size.
    Check {
        #[arg(long)]
        catalogue: PathBuf,
    },
    /// Run a sweep on live shadows and write the trial records (JSON).
    Run {
        #[command(flatten)]
        common: Common,
        /// `current`, `peak`, `what-if`, or a LoadSpec TOML file; with --from-agent,
        /// `current` (the observed mix, rate and connections) or `peak` (the same mix at the
        /// forecast's peak rate).
        #[arg(long, default_value = "current")]
        load: String,
        /// Override the load's rate (req/s; connections scale along).
        #[arg(long, conflicts_with = "from_agent")]
        rate: Option<f64>,
        /// Derive the load from a running agent's API (http://host:port, its
        /// --metrics-listen): its request profile and forecast of --resource.
        #[arg(long, value_name = "URL", requires = "resource")]
        from_agent: Option<String>,
        /// The resource to derive the load of, as in the agent's /v1/resources.
        #[arg(long, value_name = "ID", requires = "from_agent")]
        resource: Option<String>,
        /// With --from-agent and --load peak: follow the point forecast (default) or the
        /// upper bound of its interval (what the decision engine provisions for).
        #[arg(long, value_enum, requires = "from_agent")]
        forecast_bound: Option<ForecastBound>,
        #[arg(long, default_value = "bayes")]
        explorer: String,
        #[arg(long, default_value_t = 20)]
        budget: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Search only grid levels.
        #[arg(long)]
        grid_only: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// The explorer comparison (docs/sweeps.md#experiment).
    Experiment {
        #[command(flatten)]
        common: Common,
        /// Directory for result.json and records.json.
        #[arg(long)]
        out: PathBuf,
        /// Also write every trial record here.
        #[arg(long)]
        records_out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// A 16-point grid (64 without) and a short live sweep. The objective is CPU cores
        /// (policy_live::goal_objective), whatever --kpi says.
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value_t = 7)]
        seeds: usize,
        /// Only the policy's held-out evaluation (not the explorers).
        #[arg(long)]
        held_out_only: bool,
        /// Skip the policy's held-out evaluation.
        #[arg(long, conflicts_with = "held_out_only")]
        no_held_out: bool,
    },
}

fn kpi(name: &str) -> Result<KpiName> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .with_context(|| format!("unknown KPI {name:?}"))
}

fn load_spec(text: &str, rate: Option<f64>) -> Result<LoadSpec> {
    let spec = if let Some(s) = LoadSpec::preset(text) {
        s
    } else {
        let body = std::fs::read_to_string(text)
            .with_context(|| format!("--load {text:?} is no preset and no readable file"))?;
        toml::from_str(&body).with_context(|| format!("parsing load spec {text}"))?
    };
    Ok(match rate {
        Some(r) => spec.at_rate(r),
        None => spec,
    })
}

/// The load of `--load`, from the agent when `--from-agent` is given.
fn run_load(
    load: &str,
    rate: Option<f64>,
    from_agent: Option<&str>,
    resource: Option<&str>,
    bound: Option<ForecastBound>,
) -> Result<LoadSpec> {
    let (Some(url), Some(resource)) = (from_agent, resource) else {
        return load_spec(load, rate);
    };
    let Ok(which) = AgentLoad::from_str(load, false) else {
        bail!("with --from-agent, --load is `current` or `peak` (not {load:?})");
    };
    if which == AgentLoad::Current && bound.is_some() {
        bail!("--forecast-bound applies to --load peak, not --load current");
    }
    let bound = bound.unwrap_or(ForecastBound::Point);
    from_agent::fetch(url, resource, which, bound)
        .with_context(|| format!("deriving --load {load} from the agent at {url}"))
}

fn runner(common: &Common) -> Result<(Catalogue, Runner)> {
    let catalogue = Catalogue::load(&common.catalogue)?;
    let objective = Objective {
        kpi: kpi(&common.kpi)?,
        max_error_rate: common.max_error_rate,
    };
    let options = RunnerOptions {
        core_budget: common.core_budget,
        ..RunnerOptions::default()
    };
    Ok((
        catalogue.clone(),
        Runner::new(catalogue, objective, options),
    ))
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

// A dispatch over the subcommands, each a few lines.
#[allow(clippy::too_many_lines)]
fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Check { catalogue } => {
            let c = Catalogue::load(&catalogue)?;
            println!(
                "{}: {} parameters, {} constraints, grid {} points",
                c.service,
                c.parameters.len(),
                c.constraints.len(),
                c.grid().len()
            );
            for p in &c.parameters {
                println!("  {:<28} {:?}  grid {:?}", p.name, p.domain, p.grid);
            }
            println!(
                "  shadow limits: {:.2} cores, {} MiB",
                c.limits.cpu_cores(),
                c.limits.memory_bytes() >> 20
            );
            Ok(())
        }
        Command::Run {
            common,
            load,
            rate,
            from_agent,
            resource,
            forecast_bound,
            explorer: name,
            budget,
            seed,
            grid_only,
            out,
        } => {
            let load = run_load(
                &load,
                rate,
                from_agent.as_deref(),
                resource.as_deref(),
                forecast_bound,
            )?;
            print!("{}", load.summary());
            std::io::stdout().flush()?;
            let (catalogue, runner) = runner(&common)?;
            let Some(mut explorer) = explorer::make(&name, seed, budget) else {
                bail!("unknown explorer {name:?} ({})", explorer::NAMES.join(", "));
            };
            let space = Space::new(&catalogue, grid_only);
            let started = now_ms();
            let steps = run_sweep(
                explorer.as_mut(),
                &space,
                &runner,
                &load,
                &runner.objective,
                budget,
            );
            let id = format!("sweep{started}");
            let mut records = Vec::with_capacity(steps.len());
            sweep::append_records(
                &mut records,
                &id,
                &name,
                &catalogue.service,
                &load,
                &steps,
                started,
            );
            for (i, s) in steps.iter().enumerate() {
                let status = s.outcome.failure.as_deref().map_or_else(
                    || {
                        if s.outcome.early_stopped {
                            "early-stopped".to_owned()
                        } else {
                            format!("x{}", s.outcome.repeats)
                        }
                    },
                    |f| format!("FAILED: {f}"),
                );
                println!(
                    "{i:>3} cost {:>10.3} {status} {}",
                    s.cost,
                    serde_json::to_string(&s.params)?
                );
            }
            if let Some(best) = steps.iter().min_by(|a, b| a.cost.total_cmp(&b.cost)) {
                println!(
                    "best: cost {:.3} {}",
                    best.cost,
                    serde_json::to_string(&best.params)?
                );
            }
            write_json(&out, &records)
        }
        Command::Experiment {
            common,
            out,
            records_out,
            json,
            quick,
            seeds,
            held_out_only,
            no_held_out,
        } => {
            // The comparison's objective is the held-out one (CPU cores to serve the load,
            // warm cache, repeats, no early stop; docs/sweeps.md#experiment), not --kpi.
            let (full, base) = runner(&common)?;
            let catalogue = experiment::grid_catalogue(&full, quick);
            let runner = policy_live::cpu_runner(&catalogue, &base.options);
            let plan = Plan {
                loads: if held_out_only {
                    Vec::new()
                } else {
                    experiment::loads()
                },
                seeds: seeds.max(5),
                budget_share: 0.3,
                live_trials: match (held_out_only, quick) {
                    (true, _) => 0,
                    (false, true) => 4,
                    (false, false) => 12,
                },
            };
            let mut progress = |line: &str| eprintln!("{line}");
            let (mut result, mut records) =
                experiment::run(&catalogue, &runner, &plan, &mut progress);
            if !no_held_out {
                let held_catalogue =
                    policy_live::held_out_catalogue(&full, policy_live::varied(quick));
                let (held, held_records) = policy_live::run_live(
                    &held_catalogue,
                    policy_live::goal_objective(),
                    &base.options,
                    &policy_live::plan(quick),
                    &mut progress,
                );
                records.extend(held_records);
                result = result.with_held_out(held);
            }
            write_json(&out.join("result.json"), &result)?;
            write_json(&out.join("records.json"), &records)?;
            if let Some(path) = records_out {
                write_json(&path, &records)?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                experiment::print(&result, &mut std::io::stdout().lock())?;
                std::io::stdout().flush()?;
            }
            Ok(())
        }
    }
}
