use std::collections::BTreeMap;

use shadowtap_core::profile::{Distribution, END, START, js_divergence, ks_statistic};

use super::*;
use shadowtap_core::profile::example::shop;

fn mix_of(runs: &[Vec<(usize, Request)>], names: &[&str]) -> BTreeMap<String, f64> {
    let mut mix = BTreeMap::new();
    for (i, _) in runs.iter().flatten() {
        *mix.entry(names[*i].to_owned()).or_insert(0.0) += 1.0;
    }
    mix
}

#[test]
fn temperature_one_samples_the_learned_behaviour() {
    let profile = shop();
    let mut source = ProfileSource::new(&profile, "shop", 1.0).expect("source");
    let names: Vec<String> = source.template_names().map(str::to_owned).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let runs = source.simulate(4000, 7);
    // Every connection starts at the home page and follows learned transitions, but for the
    // smoothing towards the mix: one transition in (learned + 1) from each template.
    assert!(runs.iter().all(|c| names[c[0].0] == "GET /"));
    let (mut pairs, mut unlearned) = (0u64, 0u64);
    for c in &runs {
        for w in c.windows(2) {
            pairs += 1;
            let pair = (names[w[0].0], names[w[1].0]);
            if !matches!(
                pair,
                ("GET /", "GET /items/{id}")
                    | ("GET /items/{id}", "GET /items/{id}" | "POST /cart")
            ) {
                unlearned += 1;
            }
        }
    }
    assert!(
        (unlearned as f64) < 0.01 * pairs as f64,
        "{unlearned} of {pairs}"
    );
    // Connections end by the chain: home, a geometric number of items (go on with 0.6:
    // mean 2.5), then a cart half the time: 4 requests on average, capped at the longest
    // connection seen (6).
    let mean = runs.iter().map(Vec::len).sum::<usize>() as f64 / runs.len() as f64;
    assert!(runs.iter().all(|c| c.len() <= 6));
    assert!((3.3..3.9).contains(&mean), "mean length {mean}");
    assert!(
        runs.iter()
            .filter(|c| names[c.last().expect("one").0] == "POST /cart")
            .count()
            > 1000
    );
    // Request sizes follow each template's sizes.
    let items: Vec<u64> = runs
        .iter()
        .flatten()
        .filter(|(i, _)| names[*i] == "GET /items/{id}")
        .map(|(_, r)| r.wire().len() as u64)
        .collect();
    let d = Distribution::from_values(items);
    assert!(
        ks_statistic(&d, &profile.templates[1].request_bytes) < 0.1,
        "{d:?}"
    );
    // Item ids: the top values by popularity, the tail as synthetic ids.
    let mut ids: BTreeMap<String, u64> = BTreeMap::new();
    for (_, r) in runs.iter().flatten() {
        let line = std::str::from_utf8(r.wire()).expect("ascii");
        if let Some(rest) = line.strip_prefix("GET /items/") {
            let id = rest.split(' ').next().expect("id");
            *ids.entry(id.to_owned()).or_default() += 1;
        }
    }
    let total: u64 = ids.values().sum();
    let share = |k: &str| ids.get(k).copied().unwrap_or(0) as f64 / total as f64;
    assert!((share("1") - 0.30).abs() < 0.03, "{}", share("1"));
    assert!((share("2") - 0.15).abs() < 0.03, "{}", share("2"));
    let tail: u64 = ids
        .iter()
        .filter(|(k, _)| k.starts_with("9000"))
        .map(|(_, n)| n)
        .sum();
    assert!((tail as f64 / total as f64 - 0.45).abs() < 0.04);
}

#[test]
fn temperature_zero_is_the_most_likely_path_deterministically() {
    let profile = shop();
    let mut a = ProfileSource::new(&profile, "shop", 0.0).expect("source");
    let runs = a.simulate(50, 1);
    let first: Vec<Vec<u8>> = runs[0].iter().map(|(_, r)| r.wire().to_vec()).collect();
    assert!(
        runs.iter()
            .all(|c| c.iter().map(|(_, r)| r.wire().to_vec()).collect::<Vec<_>>() == first)
    );
    // The mode of (2, 4, 4, 6) is 4: home, then the most popular item three times.
    let lines: Vec<String> = first
        .iter()
        .map(|w| {
            String::from_utf8_lossy(w)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        lines,
        [
            "GET / HTTP/1.1",
            "GET /items/1 HTTP/1.1",
            "GET /items/1 HTTP/1.1",
            "GET /items/1 HTTP/1.1"
        ]
    );
}

#[test]
fn higher_temperature_flattens_towards_rare_endpoints() {
    let profile = shop();
    let names = ["GET /", "GET /items/{id}", "POST /cart"];
    let cart_share = |t: f64| {
        let mut s = ProfileSource::new(&profile, "shop", t).expect("source");
        let mix = mix_of(&s.simulate(3000, 3), &names);
        mix.get("POST /cart").copied().unwrap_or(0.0) / mix.values().sum::<f64>()
    };
    let (cool, learned, hot) = (cart_share(0.5), cart_share(1.0), cart_share(4.0));
    assert!(cool < learned && learned < hot, "{cool} {learned} {hot}");
    // The learned mix: one cart per two connections of about four requests.
    let learned_mix: BTreeMap<String, f64> = {
        let mut s = ProfileSource::new(&profile, "shop", 1.0).expect("source");
        mix_of(&s.simulate(3000, 5), &names)
    };
    let again: BTreeMap<String, f64> = {
        let mut s = ProfileSource::new(&profile, "shop", 1.0).expect("source");
        mix_of(&s.simulate(3000, 6), &names)
    };
    assert!(js_divergence(&learned_mix, &again) < 0.01);
}

#[test]
fn without_learned_ends_lengths_come_from_the_profile() {
    // A capture that began and ended mid-connection: no start or end transitions.
    let mut profile = shop();
    profile
        .connections
        .transitions
        .retain(|t| t.from != START && t.to != END);
    let mut source = ProfileSource::new(&profile, "shop", 1.0).expect("source");
    let runs = source.simulate(4000, 9);
    let lengths = Distribution::from_values(runs.iter().map(|c| c.len() as u64));
    assert!(ks_statistic(&lengths, &profile.connections.requests_per_connection) < 0.03);
    // The first template follows the mix (home is 1/4 of it).
    let home = runs.iter().filter(|c| c[0].0 == 0).count() as f64 / runs.len() as f64;
    assert!((home - 0.25).abs() < 0.03, "{home}");
}

#[test]
fn same_seed_same_requests() {
    let profile = shop();
    let run = |seed| {
        let mut s = ProfileSource::new(&profile, "shop", 1.0).expect("source");
        s.simulate(20, seed)
            .into_iter()
            .flatten()
            .map(|(_, r)| r.wire().to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

#[test]
fn bad_inputs_are_errors() {
    let mut p = shop();
    assert!(matches!(
        ProfileSource::new(&p, "shop", -1.0),
        Err(GenerateError::Temperature(_))
    ));
    assert!(matches!(
        ProfileSource::new(&p, "shop", f64::NAN),
        Err(GenerateError::Temperature(_))
    ));
    p.templates.clear();
    assert!(matches!(
        ProfileSource::new(&p, "shop", 1.0),
        Err(GenerateError::NoTemplates(_))
    ));
}
