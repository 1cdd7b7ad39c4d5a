//! Replays the explorer comparison on a recorded table: the `--quick` grid (16 points) of
//! `shadowtap-sweep experiment` measured on real nginx at both loads (CPU cores to serve the load, warm cache,
//! repeats; see docs/sweeps.md "Results" for when and where). Every explorer × 7 seeds runs
//! against the recorded measurements, as the experiment does after measuring; the test checks
//! the figures the experiment reported on that table.

use std::path::Path;

use shadowtap_sweep::catalogue::Catalogue;
use shadowtap_sweep::experiment::{self, LoadResult};
use shadowtap_sweep::explorer::Space;
use shadowtap_sweep::policy_live::goal_objective;
use shadowtap_sweep::trial::TrialRecord;

fn replay(quick: bool, fixture: &str) -> Vec<LoadResult> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let full = Catalogue::load(&root.join("../deploy/sweep/nginx-proxy-cache.toml"))
        .expect("catalogue loads");
    let catalogue = experiment::grid_catalogue(&full, quick);
    let space = Space::new(&catalogue, true);
    let text =
        std::fs::read_to_string(root.join("tests/data").join(fixture)).expect("fixture readable");
    let records: Vec<TrialRecord> = serde_json::from_str(&text).expect("fixture parses");
    let objective = goal_objective();
    let grids = experiment::grids_from_records(&records, &experiment::loads(), &objective);
    for (load, steps) in &grids {
        assert_eq!(
            steps.len(),
            space.grid().len(),
            "the fixture holds the whole grid at {}",
            load.name
        );
    }
    let budget = (space.grid().len() * 3) / 10;
    experiment::benchmark(&space, &grids, &objective, 7, budget)
}

#[test]
fn recorded_table_replays_to_the_reported_figures() {
    let results = replay(true, "experiment-quick-grid.json");
    assert_eq!(results.len(), 2);
    for r in &results {
        eprintln!(
            "{}: optimum {:.4}, blind median {:.2} worst {:.2}, best adaptive {}",
            r.load, r.optimum_cost, r.blind_median_ratio, r.blind_worst_ratio, r.best_adaptive
        );
        for e in &r.explorers {
            eprintln!(
                "  {:<10} {:.4} ×{:.3} {:?} {}/7",
                e.explorer,
                e.median_best_cost,
                e.median_ratio_to_optimum,
                e.median_trials_to_5pct,
                e.seeds_within_5pct
            );
        }
        // The landscape is not flat: a blind pick loses more than the goal's 5%.
        assert!(r.blind_median_ratio > 1.05, "{}: flat landscape", r.load);
    }
    // What this table demonstrates honestly: with 4 trials (25% of 16) no explorer alone gets
    // within 5% in the median (the goal is missed in quick mode), but the contextual explorer
    // that first swept the current load gets within 5% at the peak in the budget, in most
    // seeds, and beats random there.
    let peak = &results[1];
    let random = peak
        .explorers
        .iter()
        .find(|e| e.explorer == "random")
        .expect("random ran");
    let transfer = peak
        .contextual_after_previous_load
        .as_ref()
        .expect("contextual after the previous load ran");
    assert!(
        transfer
            .median_trials_to_5pct
            .is_some_and(|t| t <= peak.budget),
        "contextual after the current load does not reach 5% at the peak: {transfer:?}"
    );
    assert!(
        transfer.median_best_cost < random.median_best_cost
            && transfer.seeds_within_5pct > random.seeds_within_5pct,
        "contextual after the current load does not beat random: {transfer:?} vs {random:?}"
    );
}

/// The full grid (64 points, budget 19) recorded on 2026-12-05: the goal is met at both loads.
#[test]
fn full_table_meets_the_explorer_goal() {
    let results = replay(false, "experiment-full-grid.json");
    assert_eq!(results.len(), 2);
    for r in &results {
        assert!(r.blind_median_ratio > 1.05, "{}: flat landscape", r.load);
        let best = r
            .explorers
            .iter()
            .find(|e| e.explorer == r.best_adaptive)
            .expect("best adaptive ran");
        assert!(
            r.goal_within_5pct_in_30pct && best.median_trials_to_5pct.is_some_and(|t| t <= 19),
            "{}: best adaptive not within 5% in 30%: {best:?}",
            r.load
        );
        assert!(r.goal_beats_random, "{}: does not beat random", r.load);
    }
}
