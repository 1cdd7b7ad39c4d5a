//! Explorers on an analytic function of a mixed space (a real, an integer, a choice): each
//! finds the optimum region, and the same seed gives the same proposals.

use super::*;
use crate::catalogue::{Catalogue, parse_catalogue};
use crate::trial::ParamValue;

fn catalogue() -> Catalogue {
    let levels: Vec<String> = (0..=10)
        .map(|i| format!("{:.1}", f64::from(i) / 10.0))
        .collect();
    let text = format!(
        r#"
service = "analytic"
[[parameter]]
name = "x"
type = "float"
min = 0.0
max = 1.0
grid = [{}]
[[parameter]]
name = "y"
type = "int"
min = 0
max = 20
grid = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
[[parameter]]
name = "mode"
type = "enum"
values = ["a", "b", "c"]
[apply]
flags = ["{{{{x}}}} {{{{y}}}} {{{{mode}}}}"]
[shadow]
start = "f"
health_path = "/"
port = 1
[limits]
primary_cpu_cores = 1.0
primary_memory_mb = 1
cpu_fraction = 1.0
memory_fraction = 1.0
"#,
        levels.join(", ")
    );
    parse_catalogue(&text).expect("analytic catalogue")
}

/// Minimum 0.1 at x = 0.62, y = 13, mode b.
fn f(p: &Params) -> f64 {
    let x = p["x"].as_f64().expect("x");
    let y = p["y"].as_f64().expect("y");
    let mode = if p["mode"] == ParamValue::Choice("b".into()) {
        0.0
    } else {
        0.3
    };
    (x - 0.62).powi(2) + ((y - 13.0) / 20.0).powi(2) + mode + 0.1
}

fn best_after(name: &str, seed: u64, space: &Space, budget: usize) -> (f64, Vec<Params>) {
    let mut e = make(name, seed, budget).expect("explorer");
    let mut best = f64::INFINITY;
    let mut proposed = Vec::new();
    for _ in 0..budget {
        let Some(p) = e.propose(space, &[0.5]) else {
            break;
        };
        let c = f(&p);
        e.observe(space, &[0.5], &p, c);
        best = best.min(c);
        proposed.push(p);
    }
    (best, proposed)
}

#[test]
fn adaptive_explorers_find_the_grid_optimum_with_a_tenth_of_the_grid() {
    let space = Space::new(&catalogue(), true);
    let optimum = space.grid().iter().map(f).fold(f64::INFINITY, f64::min);
    assert_eq!(space.grid().len(), 363);
    for name in ["bandit", "bayes", "contextual"] {
        let mut bests: Vec<f64> = (0..5).map(|s| best_after(name, s, &space, 36).0).collect();
        bests.sort_by(f64::total_cmp);
        assert!(
            bests[2] <= optimum * 1.05,
            "{name}: median best {} vs {optimum}",
            bests[2]
        );
    }
    // The exhaustive grid finds it by definition; random rarely does with 10%.
    assert!((best_after("grid", 0, &space, 363).0 - optimum).abs() < 1e-12);
}

#[test]
fn explorers_approach_the_continuous_optimum() {
    let space = Space::new(&catalogue(), false);
    for (name, budget, tol) in [("random", 80, 0.1), ("lhs", 80, 0.1), ("bayes", 40, 0.02)] {
        let (best, _) = best_after(name, 3, &space, budget);
        assert!(best < 0.1 + tol, "{name}: {best}");
    }
}

#[test]
fn explorers_are_deterministic_given_their_seed() {
    for grid_only in [true, false] {
        let space = Space::new(&catalogue(), grid_only);
        for name in NAMES {
            let (_, a) = best_after(name, 11, &space, 12);
            let (_, b) = best_after(name, 11, &space, 12);
            assert_eq!(a, b, "{name}");
            if !["grid", "bandit"].contains(name) {
                let (_, c) = best_after(name, 12, &space, 12);
                assert_ne!(a, c, "{name}: the seed changes nothing");
            }
        }
    }
}

#[test]
fn encode_decode_round_trips_grid_points() {
    let space = Space::new(&catalogue(), true);
    for p in space.grid().iter().step_by(17) {
        assert_eq!(&space.decode(&space.encode(p)), p);
    }
}
