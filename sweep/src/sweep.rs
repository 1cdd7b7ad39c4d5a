//! The sweep loop: an explorer proposes, an evaluator (the live [`Runner`] or a measured
//! [`Table`]) runs up to its parallelism at once, the explorer observes the costs.

use std::collections::BTreeMap;

use crate::explorer::{Explorer, Space};
use crate::runner::{LoadSpec, Runner, TrialOutcome, failed_kpis};
use crate::trial::{Objective, Params, TrialRecord};

/// Runs trials for the sweep loop.
pub trait Evaluator {
    fn parallelism(&self) -> usize;
    fn evaluate(&self, batch: &[Params], load: &LoadSpec) -> Vec<TrialOutcome>;
}

impl Evaluator for Runner {
    fn parallelism(&self) -> usize {
        Runner::parallelism(self)
    }
    fn evaluate(&self, batch: &[Params], load: &LoadSpec) -> Vec<TrialOutcome> {
        let trials: Vec<(Params, LoadSpec)> =
            batch.iter().map(|p| (p.clone(), load.clone())).collect();
        self.run_batch(&trials)
    }
}

/// A tabular benchmark: outcomes measured once per grid point (per load name); a proposal gets
/// its point's measured outcome. Unmeasured points fail.
#[derive(Default)]
pub struct Table {
    entries: BTreeMap<(String, String), TrialOutcome>,
}

fn key(p: &Params) -> String {
    serde_json::to_string(p).unwrap_or_default()
}

impl Table {
    pub fn insert(&mut self, load: &LoadSpec, params: &Params, outcome: TrialOutcome) {
        self.entries
            .insert((load.name.clone(), key(params)), outcome);
    }

    pub fn get(&self, load: &LoadSpec, params: &Params) -> Option<&TrialOutcome> {
        self.entries.get(&(load.name.clone(), key(params)))
    }
}

impl Evaluator for Table {
    fn parallelism(&self) -> usize {
        1
    }
    fn evaluate(&self, batch: &[Params], load: &LoadSpec) -> Vec<TrialOutcome> {
        batch
            .iter()
            .map(|p| {
                self.get(load, p).cloned().unwrap_or_else(|| TrialOutcome {
                    kpis: failed_kpis(),
                    repeats: 0,
                    early_stopped: false,
                    failure: Some("not in the measured table".into()),
                })
            })
            .collect()
    }
}

/// One trial of a sweep.
#[derive(Debug, Clone)]
pub struct Step {
    pub params: Params,
    pub outcome: TrialOutcome,
    pub cost: f64,
}

/// The load's features scaled to about [0, 1] for the contextual explorer: log rate,
/// connections, mean response size.
pub fn context_of(load: &LoadSpec) -> Vec<f64> {
    let f = load.features();
    vec![
        (f.rate_rps.max(1.0).ln() / 10_000f64.ln()).clamp(0.0, 1.0),
        (f.concurrency / 256.0).clamp(0.0, 1.0),
        (f.mean_response_bytes / 65_536.0).clamp(0.0, 1.0),
    ]
}

/// Runs up to `budget` trials.
pub fn run_sweep(
    explorer: &mut dyn Explorer,
    space: &Space,
    evaluator: &dyn Evaluator,
    load: &LoadSpec,
    objective: &Objective,
    budget: usize,
) -> Vec<Step> {
    let context = context_of(load);
    let mut steps = Vec::new();
    while steps.len() < budget {
        let room = (budget - steps.len()).min(evaluator.parallelism());
        let batch: Vec<Params> = (0..room)
            .map_while(|_| explorer.propose(space, &context))
            .collect();
        if batch.is_empty() {
            break;
        }
        let outcomes = evaluator.evaluate(&batch, load);
        for (params, outcome) in batch.into_iter().zip(outcomes) {
            let cost = if outcome.failure.is_some() {
                f64::INFINITY
            } else {
                objective.cost(&outcome.kpis)
            };
            explorer.observe(space, &context, &params, cost);
            steps.push(Step {
                params,
                outcome,
                cost,
            });
        }
    }
    steps
}

/// Host name and kernel release.
pub fn machine() -> String {
    let read =
        |p: &str| std::fs::read_to_string(p).map_or_else(|_| "?".into(), |s| s.trim().to_owned());
    format!(
        "{} linux {}",
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/osrelease")
    )
}

/// The record of one step.
pub fn record(
    sweep_id: &str,
    seq: usize,
    explorer: &str,
    service: &str,
    load: &LoadSpec,
    step: &Step,
    started_at_ms: u64,
) -> TrialRecord {
    TrialRecord {
        id: format!("{sweep_id}-{seq}"),
        explorer: explorer.to_owned(),
        service: service.to_owned(),
        load: load.features(),
        params: step.params.clone(),
        kpis: step.outcome.kpis.clone(),
        started_at_ms,
        machine: machine(),
        repeats: step.outcome.repeats,
        early_stopped: step.outcome.early_stopped,
    }
}

/// Appends a sweep's steps to `records` as trial records, numbered on from what it holds.
pub fn append_records(
    records: &mut Vec<TrialRecord>,
    sweep_id: &str,
    explorer: &str,
    service: &str,
    load: &LoadSpec,
    steps: &[Step],
    started_at_ms: u64,
) {
    for s in steps {
        let seq = records.len();
        records.push(record(
            sweep_id,
            seq,
            explorer,
            service,
            load,
            s,
            started_at_ms,
        ));
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
