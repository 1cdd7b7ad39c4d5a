//! Numeric encodings of trials, shared by the KPI model and the policy.
//!
//! Rates, concurrency and sizes are positive and span orders of magnitude; what matters for a
//! service is their ratio (twice the rate), so they enter as logarithms. Numeric parameters do
//! the same when they are positive and span a factor of 8 or more (cache sizes, buffer sizes),
//! and stay linear otherwise (gzip level 1..9). A choice parameter is one-hot, one column per
//! value seen in training. Every column is then standardised (zero mean, unit variance over the
//! training rows). A column the training rows barely vary keeps a floor on its deviation (a factor
//! of √2 on log columns, 0.05 on shares and one-hots): it carries no information about the
//! training rows, but a query far from their constant value must still look far.

use std::collections::{BTreeMap, BTreeSet};

use crate::trial::{LoadFeatures, ParamValue, Params, TrialRecord};

/// Where one column's raw value comes from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    Rate,
    Concurrency,
    RequestBytes,
    ResponseBytes,
    /// Share of one endpoint template in the mix.
    Mix(String),
    /// A numeric parameter.
    Number(String),
    /// 1 when the choice parameter has this value.
    OneHot(String, String),
}

#[derive(Debug, Clone, PartialEq)]
struct Column {
    source: Source,
    log: bool,
    mean: f64,
    std: f64,
}

/// Smallest value a logarithm is taken of (a zero rate or size).
const LOG_FLOOR: f64 = 1e-6;

/// Maps (load, parameters) to standardised feature vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureEncoder {
    columns: Vec<Column>,
}

impl FeatureEncoder {
    /// Columns for the load features only (the policy's distance).
    pub fn fit_load(loads: &[&LoadFeatures]) -> Self {
        Self::fit(loads, &[])
    }

    /// Columns for load and parameters (the KPI model's inputs).
    pub fn fit_trials(records: &[&TrialRecord]) -> Self {
        let loads: Vec<&LoadFeatures> = records.iter().map(|r| &r.load).collect();
        let params: Vec<&Params> = records.iter().map(|r| &r.params).collect();
        Self::fit(&loads, &params)
    }

    fn fit(loads: &[&LoadFeatures], params: &[&Params]) -> Self {
        let mut sources = vec![
            (Source::Rate, true),
            (Source::Concurrency, true),
            (Source::RequestBytes, true),
            (Source::ResponseBytes, true),
        ];
        let endpoints: BTreeSet<&String> = loads.iter().flat_map(|l| l.mix.keys()).collect();
        sources.extend(
            endpoints
                .into_iter()
                .map(|e| (Source::Mix(e.clone()), false)),
        );
        let mut numbers: BTreeMap<&String, Vec<f64>> = BTreeMap::new();
        let mut choices: BTreeMap<&String, BTreeSet<&String>> = BTreeMap::new();
        for p in params {
            for (name, value) in *p {
                match value {
                    ParamValue::Choice(c) => {
                        choices.entry(name).or_default().insert(c);
                    }
                    v => numbers
                        .entry(name)
                        .or_default()
                        .push(v.as_f64().unwrap_or(0.0)),
                }
            }
        }
        for (name, values) in numbers {
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            sources.push((Source::Number(name.clone()), min > 0.0 && max / min >= 8.0));
        }
        for (name, values) in choices {
            for v in values {
                sources.push((Source::OneHot(name.clone(), v.clone()), false));
            }
        }
        let rows = loads.len().max(params.len());
        let mut columns = Vec::new();
        for (source, log) in sources {
            let mut probe = Column {
                source,
                log,
                mean: 0.0,
                std: 1.0,
            };
            let values: Vec<f64> = (0..rows)
                .map(|i| probe.raw(loads.get(i).copied(), params.get(i).copied()))
                .collect();
            let (mean, std) = mean_std(&values);
            let floor = if probe.log {
                std::f64::consts::LN_2 / 2.0
            } else {
                0.05 * mean.abs().max(1.0)
            };
            probe.mean = mean;
            probe.std = std.max(floor);
            columns.push(probe);
        }
        Self { columns }
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.columns.len()
    }

    /// The standardised vector of `load` (and `params`, when the encoder has parameter
    /// columns). A choice value never seen in training encodes as "none of the known values".
    pub fn encode(&self, load: &LoadFeatures, params: Option<&Params>) -> Vec<f64> {
        self.columns
            .iter()
            .map(|c| (c.raw(Some(load), params) - c.mean) / c.std)
            .collect()
    }

    /// Column names, for explanations and reports.
    pub fn names(&self) -> Vec<String> {
        self.columns
            .iter()
            .map(|c| {
                let base = match &c.source {
                    Source::Rate => "rate_rps".to_owned(),
                    Source::Concurrency => "concurrency".to_owned(),
                    Source::RequestBytes => "mean_request_bytes".to_owned(),
                    Source::ResponseBytes => "mean_response_bytes".to_owned(),
                    Source::Mix(e) => format!("mix[{e}]"),
                    Source::Number(n) => n.clone(),
                    Source::OneHot(n, v) => format!("{n}={v}"),
                };
                if c.log { format!("ln {base}") } else { base }
            })
            .collect()
    }
}

impl Column {
    fn raw(&self, load: Option<&LoadFeatures>, params: Option<&Params>) -> f64 {
        let v = match (&self.source, load, params) {
            (Source::Rate, Some(l), _) => l.rate_rps,
            (Source::Concurrency, Some(l), _) => l.concurrency,
            (Source::RequestBytes, Some(l), _) => l.mean_request_bytes,
            (Source::ResponseBytes, Some(l), _) => l.mean_response_bytes,
            (Source::Mix(e), Some(l), _) => l.mix.get(e).copied().unwrap_or(0.0),
            (Source::Number(n), _, Some(p)) => p.get(n).and_then(ParamValue::as_f64).unwrap_or(0.0),
            (Source::OneHot(n, v), _, Some(p)) => f64::from(u8::from(
                matches!(p.get(n), Some(ParamValue::Choice(c)) if c == v),
            )),
            _ => 0.0,
        };
        if self.log { v.max(LOG_FLOOR).ln() } else { v }
    }
}

/// Mean and population standard deviation.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::record;

    #[test]
    fn columns_are_standardised_log_scaled_and_one_hot() {
        let records: Vec<TrialRecord> = [(100.0, 1, "on"), (400.0, 8, "off"), (1600.0, 2, "on")]
            .iter()
            .enumerate()
            .map(|(i, (rate, w, gzip))| record(&format!("t{i}"), *rate, *w, gzip, 1.0))
            .collect();
        let refs: Vec<&TrialRecord> = records.iter().collect();
        let enc = FeatureEncoder::fit_trials(&refs);
        let names = enc.names();
        // Request sizes are the same in every record: 0 for them, but a 4x larger request
        // is 4 units away (ln 4 / (ln 2 / 2)).
        let bytes = names
            .iter()
            .position(|n| n == "ln mean_request_bytes")
            .expect("request bytes");
        assert!(
            records
                .iter()
                .all(|r| enc.encode(&r.load, None)[bytes].abs() < 1e-12)
        );
        let mut bigger = records[0].load.clone();
        bigger.mean_request_bytes *= 4.0;
        assert!((enc.encode(&bigger, None)[bytes] - 4.0).abs() < 1e-9);
        assert!(names.contains(&"ln rate_rps".to_owned()), "{names:?}");
        assert!(names.contains(&"ln workers".to_owned()), "{names:?}");
        assert!(names.contains(&"gzip=on".to_owned()), "{names:?}");
        for col in (0..enc.width()).filter(|c| !names[*c].contains("bytes")) {
            let values: Vec<f64> = records
                .iter()
                .map(|r| enc.encode(&r.load, Some(&r.params))[col])
                .collect();
            let (mean, std) = mean_std(&values);
            assert!(
                mean.abs() < 1e-9 && (std - 1.0).abs() < 1e-9,
                "{col}: {values:?}"
            );
        }
        // Rates 100, 400, 1600 are equally spaced on the log scale.
        let rate = names.iter().position(|n| n == "ln rate_rps").expect("rate");
        let x: Vec<f64> = refs
            .iter()
            .map(|r| enc.encode(&r.load, None)[rate])
            .collect();
        assert!(((x[1] - x[0]) - (x[2] - x[1])).abs() < 1e-9, "{x:?}");
    }
}
