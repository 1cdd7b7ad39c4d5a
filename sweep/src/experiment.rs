//! `shadowtap-sweep experiment` (run by `cargo xtask experiment sweep`): how well each
//! explorer does at equal trial budget, as a **tabular benchmark** on real measurements.
//!
//! The full grid is measured once per load level on real nginx (with the runner's repeats
//! where a point is within the noise band of the best). Every explorer × seed then runs against
//! that table: a proposal is a grid point and gets that point's measured KPIs. So explorers
//! are compared on the same landscape (no re-measurement noise between them), and many seeds
//! cost nothing. One explorer also runs live, end to end, to show the loop works on the real
//! service.

use serde::Serialize;

use crate::catalogue::Catalogue;
use crate::explorer::{Space, make};
use crate::runner::{LoadSpec, Runner};
use crate::sweep::{Step, Table, append_records, now_ms, run_sweep};
use crate::trial::{Objective, TrialRecord};

/// Explorers compared (the grid is the reference).
pub const COMPARED: &[&str] = &["random", "lhs", "bandit", "bayes", "contextual"];
/// Those that learn from results.
pub const ADAPTIVE: &[&str] = &["bandit", "bayes", "contextual"];

#[derive(Debug, Clone, Serialize)]
pub struct ExplorerResult {
    pub explorer: String,
    /// Median over seeds of the best cost found within the budget.
    pub median_best_cost: f64,
    /// Median best relative to the grid optimum (1.0 = found it).
    pub median_ratio_to_optimum: f64,
    /// Median over seeds of trials needed to come within 5% of the optimum (`None` when
    /// fewer than half the seeds got there within the budget).
    pub median_trials_to_5pct: Option<usize>,
    /// Seeds that got within 5%.
    pub seeds_within_5pct: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub load: String,
    pub rate_rps: f64,
    pub grid_points: usize,
    pub grid_trials_run: usize,
    pub budget: usize,
    pub seeds: usize,
    pub optimum_cost: f64,
    pub optimum_params: crate::trial::Params,
    /// Median and largest objective noise among points that were repeated.
    pub noise_median: Option<f64>,
    pub noise_max: Option<f64>,
    pub early_stopped: usize,
    pub failed: usize,
    /// Feasible grid points and the median and worst of them over the optimum.
    pub feasible_points: usize,
    pub blind_median_ratio: f64,
    pub blind_worst_ratio: f64,
    pub explorers: Vec<ExplorerResult>,
    /// The contextual explorer after a sweep at the previous load, then at this one.
    pub contextual_after_previous_load: Option<ExplorerResult>,
    pub best_adaptive: String,
    pub goal_within_5pct_in_30pct: bool,
    pub goal_beats_random: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveResult {
    pub explorer: String,
    pub load: String,
    pub trials: usize,
    pub best_cost: f64,
    pub grid_optimum_cost: f64,
    pub failed: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExperimentResult {
    pub objective: Objective,
    pub loads: Vec<LoadResult>,
    pub live: Option<LiveResult>,
    /// The policy's held-out goal on real measurements (`policy_live`).
    pub policy_held_out: Option<crate::policy_live::PolicyHeldOut>,
    pub goals_met: bool,
}

impl ExperimentResult {
    /// Adds the held-out result; the goals are met when the explorers' (if they ran) and the
    /// policy's are.
    #[must_use]
    pub fn with_held_out(mut self, held_out: crate::policy_live::PolicyHeldOut) -> Self {
        self.goals_met = (self.loads.is_empty() || self.goals_met) && held_out.goal_met;
        self.policy_held_out = Some(held_out);
        self
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn trials_to(steps: &[Step], target: f64) -> Option<usize> {
    steps.iter().position(|s| s.cost <= target).map(|i| i + 1)
}

fn summarise(name: &str, runs: &[Vec<Step>], optimum: f64) -> ExplorerResult {
    let target = optimum + 0.05 * optimum.abs();
    let bests: Vec<f64> = runs
        .iter()
        .map(|r| r.iter().map(|s| s.cost).fold(f64::INFINITY, f64::min))
        .collect();
    let mut hits: Vec<Option<usize>> = runs.iter().map(|r| trials_to(r, target)).collect();
    // Unreached sorts last.
    hits.sort_by_key(|h| h.unwrap_or(usize::MAX));
    let med = median(bests);
    ExplorerResult {
        explorer: name.to_owned(),
        median_best_cost: med,
        median_ratio_to_optimum: med / optimum,
        median_trials_to_5pct: hits[hits.len() / 2],
        seeds_within_5pct: hits.iter().filter(|h| h.is_some()).count(),
    }
}

/// What the explorer comparison varies (every other catalogue parameter pinned, see
/// [`crate::policy_live::held_out_catalogue`]): the parameters that move the shadow's CPU.
/// `quick`: workers, keep-alive timeout, proxy buffering, gzip level (16 points); full: also
/// keep-alive requests and the cache size (64 points).
pub fn varied(quick: bool) -> &'static [&'static str] {
    if quick {
        crate::policy_live::varied(false)
    } else {
        &[
            "worker_processes",
            "keepalive_timeout_s",
            "keepalive_requests",
            "proxy_cache_max_size_mb",
            "proxy_buffering",
            "gzip_comp_level",
        ]
    }
}

/// The comparison's catalogue: `full` with only [`varied`] on a grid.
pub fn grid_catalogue(full: &Catalogue, quick: bool) -> Catalogue {
    crate::policy_live::held_out_catalogue(full, varied(quick))
}

/// The two load levels, `current` and `peak`, each trial from a warm cache.
pub fn loads() -> Vec<LoadSpec> {
    ["current", "peak"]
        .iter()
        .filter_map(|n| LoadSpec::preset(n))
        .map(crate::policy_live::warm)
        .collect()
}

/// Median and worst feasible grid cost over the optimum: what a blind pick loses.
fn spread(steps: &[Step], optimum: f64) -> (f64, f64) {
    let mut feasible: Vec<f64> = steps
        .iter()
        .map(|s| s.cost)
        .filter(|c| c.is_finite())
        .collect();
    feasible.sort_by(f64::total_cmp);
    (
        feasible
            .get(feasible.len() / 2)
            .map_or(f64::NAN, |c| c / optimum),
        feasible.last().map_or(f64::NAN, |c| c / optimum),
    )
}

/// The measured grids of `loads` back from their trial records (those of the grid explorer
/// whose load features match), in `loads`' order: what a replay of a recorded experiment runs
/// [`benchmark`] on. A record with every request failed is a failed trial.
pub fn grids_from_records(
    records: &[TrialRecord],
    loads: &[LoadSpec],
    objective: &Objective,
) -> Vec<(LoadSpec, Vec<Step>)> {
    loads
        .iter()
        .map(|load| {
            let key = crate::policy::load_key(&load.features());
            let steps = records
                .iter()
                .filter(|r| r.explorer == "grid" && crate::policy::load_key(&r.load) == key)
                .map(|r| {
                    let failed = r.kpis.error_rate >= 1.0;
                    let outcome = crate::runner::TrialOutcome {
                        kpis: r.kpis.clone(),
                        repeats: r.repeats,
                        early_stopped: r.early_stopped,
                        failure: failed.then(|| "failed when recorded".to_owned()),
                    };
                    Step {
                        params: r.params.clone(),
                        cost: if failed {
                            f64::INFINITY
                        } else {
                            objective.cost(&r.kpis)
                        },
                        outcome,
                    }
                })
                .collect();
            (load.clone(), steps)
        })
        .collect()
}

/// The tabular benchmark: every explorer × seed against the measured `grids` (one per load, in
/// order), each with `budget` trials. Also what a replay of recorded grids runs.
// One pass per load reads best as one function; its parts are the summaries above.
#[allow(clippy::too_many_lines)]
pub fn benchmark(
    space: &Space,
    grids: &[(LoadSpec, Vec<Step>)],
    objective: &Objective,
    seeds: usize,
    budget: usize,
) -> Vec<LoadResult> {
    let mut table = Table::default();
    for (load, steps) in grids {
        for s in steps {
            table.insert(load, &s.params, s.outcome.clone());
        }
    }
    let mut results = Vec::new();
    let mut previous: Option<&LoadSpec> = None;
    for (load, steps) in grids {
        let (opt_cost, opt_params) = steps
            .iter()
            .min_by(|a, b| a.cost.total_cmp(&b.cost))
            .map_or((f64::INFINITY, crate::trial::Params::new()), |s| {
                (s.cost, s.params.clone())
            });
        let noises: Vec<f64> = steps
            .iter()
            .filter_map(|s| s.outcome.kpis.objective_noise)
            .collect();
        let mut explorers = Vec::new();
        for name in COMPARED {
            let runs: Vec<Vec<Step>> = (0..seeds)
                .map(|seed| {
                    let mut e = make(name, seed as u64, budget).expect("known explorer");
                    run_sweep(e.as_mut(), space, &table, load, objective, budget)
                })
                .collect();
            explorers.push(summarise(name, &runs, opt_cost));
        }
        let grid_prefix: Vec<Step> = steps.iter().take(budget).cloned().collect();
        explorers.insert(0, summarise("grid", &[grid_prefix], opt_cost));
        let contextual_after_previous_load = previous.map(|prev| {
            let runs: Vec<Vec<Step>> = (0..seeds)
                .map(|seed| {
                    let mut e = make("contextual", seed as u64, budget).expect("known explorer");
                    run_sweep(e.as_mut(), space, &table, prev, objective, budget);
                    run_sweep(e.as_mut(), space, &table, load, objective, budget)
                })
                .collect();
            summarise("contextual after previous load", &runs, opt_cost)
        });
        let random = explorers.iter().find(|e| e.explorer == "random").cloned();
        let best_adaptive = explorers
            .iter()
            .filter(|e| ADAPTIVE.contains(&e.explorer.as_str()))
            .min_by(|a, b| {
                a.median_best_cost.total_cmp(&b.median_best_cost).then(
                    a.median_trials_to_5pct
                        .unwrap_or(usize::MAX)
                        .cmp(&b.median_trials_to_5pct.unwrap_or(usize::MAX)),
                )
            })
            .cloned();
        let (goal_within, goal_beats, best_name) = match (&best_adaptive, &random) {
            (Some(b), Some(r)) => (
                b.median_trials_to_5pct.is_some_and(|t| t <= budget),
                b.median_best_cost < r.median_best_cost
                    || (b.median_best_cost <= r.median_best_cost
                        && b.median_trials_to_5pct.unwrap_or(usize::MAX)
                            < r.median_trials_to_5pct.unwrap_or(usize::MAX)),
                b.explorer.clone(),
            ),
            _ => (false, false, String::new()),
        };
        let (blind_median_ratio, blind_worst_ratio) = spread(steps, opt_cost);
        results.push(LoadResult {
            load: load.name.clone(),
            rate_rps: load.rate_rps,
            grid_points: space.grid().len(),
            grid_trials_run: steps.len(),
            budget,
            seeds,
            optimum_cost: opt_cost,
            optimum_params: opt_params,
            noise_median: (!noises.is_empty()).then(|| median(noises.clone())),
            noise_max: noises.iter().copied().reduce(f64::max),
            early_stopped: steps.iter().filter(|s| s.outcome.early_stopped).count(),
            failed: steps.iter().filter(|s| s.outcome.failure.is_some()).count(),
            feasible_points: steps.iter().filter(|s| s.cost.is_finite()).count(),
            blind_median_ratio,
            blind_worst_ratio,
            explorers,
            contextual_after_previous_load,
            best_adaptive: best_name,
            goal_within_5pct_in_30pct: goal_within,
            goal_beats_random: goal_beats,
        });
        previous = Some(load);
    }
    results
}

/// What the experiment measures and how long.
pub struct Plan {
    pub loads: Vec<LoadSpec>,
    pub seeds: usize,
    /// Share of the grid each explorer may run.
    pub budget_share: f64,
    /// Run one explorer live at the last load with this many trials (0: none).
    pub live_trials: usize,
}

/// Measures the grid at each load, benchmarks the explorers on the tables, runs one live
/// sweep. Returns the result and every live trial record. `progress` gets a line per step.
pub fn run(
    catalogue: &Catalogue,
    runner: &Runner,
    plan: &Plan,
    progress: &mut dyn FnMut(&str),
) -> (ExperimentResult, Vec<TrialRecord>) {
    let objective = runner.objective;
    let space = Space::new(catalogue, true);
    let grid = space.grid().to_vec();
    let budget = ((grid.len() as f64 * plan.budget_share).floor() as usize).max(1);
    let sweep_id = format!("exp{}", now_ms());
    let mut records = Vec::new();
    let mut grids = Vec::new();
    for load in &plan.loads {
        runner.reset_best();
        progress(&format!(
            "measuring {} grid points at {} ({} req/s)",
            grid.len(),
            load.name,
            load.rate_rps
        ));
        let mut grid_explorer = make("grid", 0, grid.len()).expect("grid explorer exists");
        let steps = run_sweep(
            grid_explorer.as_mut(),
            &space,
            runner,
            load,
            &objective,
            grid.len(),
        );
        let started = now_ms();
        append_records(
            &mut records,
            &sweep_id,
            "grid",
            &catalogue.service,
            load,
            &steps,
            started,
        );
        progress(&format!("  {} trials measured", steps.len()));
        grids.push((load.clone(), steps));
    }
    let results = benchmark(&space, &grids, &objective, plan.seeds, budget);
    let live = match (plan.live_trials, plan.loads.last()) {
        (n, Some(load)) if n > 0 => {
            runner.reset_best();
            progress(&format!("live bayes sweep, {n} trials at {}", load.name));
            let mut e = make("bayes", 1, n).expect("bayes");
            let live_space = Space::new(catalogue, false);
            let steps = run_sweep(e.as_mut(), &live_space, runner, load, &objective, n);
            let started = now_ms();
            append_records(
                &mut records,
                &sweep_id,
                "bayes",
                &catalogue.service,
                load,
                &steps,
                started,
            );
            Some(LiveResult {
                explorer: "bayes".into(),
                load: load.name.clone(),
                trials: steps.len(),
                best_cost: steps.iter().map(|s| s.cost).fold(f64::INFINITY, f64::min),
                grid_optimum_cost: results.last().map_or(f64::NAN, |r| r.optimum_cost),
                failed: steps.iter().filter(|s| s.outcome.failure.is_some()).count(),
            })
        }
        _ => None,
    };
    let goals_met = !results.is_empty()
        && results
            .iter()
            .all(|r| r.goal_within_5pct_in_30pct && r.goal_beats_random);
    (
        ExperimentResult {
            objective,
            loads: results,
            live,
            policy_held_out: None,
            goals_met,
        },
        records,
    )
}

/// The result for people.
pub fn print(r: &ExperimentResult, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "objective: {:?} (error rate <= {})",
        r.objective.kpi, r.objective.max_error_rate
    )?;
    for l in &r.loads {
        writeln!(
            out,
            "\nload {} ({} req/s): grid {} points, optimum {:.3}, budget {} trials (30%), {} seeds; \
             noise median {:?} max {:?}; early-stopped {}, failed {}; blind pick median {:.2}× \
             worst {:.2}× optimum ({} feasible)",
            l.load,
            l.rate_rps,
            l.grid_points,
            l.optimum_cost,
            l.budget,
            l.seeds,
            l.noise_median.map(|v| (v * 1000.0).round() / 1000.0),
            l.noise_max.map(|v| (v * 1000.0).round() / 1000.0),
            l.early_stopped,
            l.failed,
            l.blind_median_ratio,
            l.blind_worst_ratio,
            l.feasible_points
        )?;
        writeln!(
            out,
            "  optimum: {}",
            serde_json::to_string(&l.optimum_params).unwrap_or_default()
        )?;
        writeln!(
            out,
            "  {:<32} {:>12} {:>9} {:>14} {:>9}",
            "explorer", "median best", "× opt", "trials to 5%", "seeds ok"
        )?;
        for e in l.explorers.iter().chain(&l.contextual_after_previous_load) {
            writeln!(
                out,
                "  {:<32} {:>12.3} {:>9.3} {:>14} {:>6}/{}",
                e.explorer,
                e.median_best_cost,
                e.median_ratio_to_optimum,
                e.median_trials_to_5pct
                    .map_or("-".into(), |t| t.to_string()),
                e.seeds_within_5pct,
                l.seeds
            )?;
        }
        writeln!(
            out,
            "  goal: best adaptive ({}) within 5% using <= 30% of the grid: {}; beats random: {}",
            l.best_adaptive,
            if l.goal_within_5pct_in_30pct {
                "MET"
            } else {
                "MISSED"
            },
            if l.goal_beats_random { "MET" } else { "MISSED" }
        )?;
    }
    if let Some(live) = &r.live {
        writeln!(
            out,
            "\nlive {} sweep at {}: {} trials, best {:.3} (grid optimum {:.3}), {} failed",
            live.explorer,
            live.load,
            live.trials,
            live.best_cost,
            live.grid_optimum_cost,
            live.failed
        )?;
    }
    if let Some(h) = &r.policy_held_out {
        writeln!(out)?;
        crate::policy_live::print(h, out)?;
    }
    writeln!(
        out,
        "\ngoals {}",
        if r.goals_met { "MET" } else { "MISSED" }
    )
}
