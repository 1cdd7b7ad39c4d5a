//! The load a trial is driven with: a small, explicit description (rate, connections,
//! duration, request mix), three presets, and the request source that realises its mix.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shadowtap_loadgen::rand::RngExt as _;
use shadowtap_loadgen::{LoadRng, Request, RequestSource, RequestSpec};

use crate::trial::LoadFeatures;

/// Where a load profile comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadKind {
    /// The load the tap sees now.
    Current,
    /// The forecast's peak.
    ForecastPeak,
    /// A scenario someone asked about.
    WhatIf,
}

/// One kind of request in the mix: `GET /o/<response_bytes>/<key>` with keys drawn from
/// `0..keys`, popular keys more often (key = ⌊keys·u²⌋), so a cache sees a realistic skew.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixEntry {
    pub name: String,
    pub weight: f64,
    pub response_bytes: usize,
    pub keys: u64,
}

/// A load profile to drive a trial with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadSpec {
    pub name: String,
    pub kind: LoadKind,
    /// Open-model arrival rate, requests per second.
    pub rate_rps: f64,
    /// Keep-alive connections in the load generator's pool.
    pub connections: usize,
    /// The first part of every trial: warms the cache and decides early stopping.
    pub probe_s: f64,
    /// The measured part.
    pub duration_s: f64,
    /// The origin's delay per request (how slow the backend is).
    pub origin_delay_ms: u64,
    pub mix: Vec<MixEntry>,
    /// Request every key of the mix once before the probe, so the measurement sees the
    /// steady state of a warm cache (as a primary's is) rather than how many cold misses a
    /// short trial happened to draw.
    #[serde(default)]
    pub warm_cache: bool,
}

impl LoadSpec {
    /// `current` (600 req/s), `peak` (the forecast peak, 1500 req/s, more connections) and
    /// `what-if` (a flash sale: 2000 req/s, larger pages, a wider key space).
    pub fn preset(name: &str) -> Option<Self> {
        let mix = |large_weight: f64, keys: u64| {
            vec![
                MixEntry {
                    name: "GET /o/2048/{id}".into(),
                    weight: 1.0 - large_weight,
                    response_bytes: 2048,
                    keys,
                },
                MixEntry {
                    name: "GET /o/32768/{id}".into(),
                    weight: large_weight,
                    response_bytes: 32_768,
                    keys,
                },
            ]
        };
        let base = Self {
            name: name.to_owned(),
            kind: LoadKind::Current,
            rate_rps: 600.0,
            connections: 16,
            probe_s: 0.5,
            duration_s: 1.5,
            origin_delay_ms: 20,
            mix: mix(0.3, 100),
            warm_cache: false,
        };
        Some(match name {
            "current" => base,
            "peak" => Self {
                kind: LoadKind::ForecastPeak,
                rate_rps: 1500.0,
                connections: 32,
                ..base
            },
            "what-if" => Self {
                kind: LoadKind::WhatIf,
                rate_rps: 2000.0,
                connections: 48,
                mix: mix(0.5, 200),
                ..base
            },
            _ => return None,
        })
    }

    /// The same profile at another rate (connections scaled along).
    #[must_use]
    pub fn at_rate(&self, rate_rps: f64) -> Self {
        let scale = rate_rps / self.rate_rps;
        Self {
            name: format!("{}@{rate_rps:.0}", self.name),
            rate_rps,
            connections: ((self.connections as f64 * scale).round() as usize).max(1),
            ..self.clone()
        }
    }

    /// Features for the load→parameters policy.
    pub fn features(&self) -> LoadFeatures {
        let total: f64 = self
            .mix
            .iter()
            .map(|m| m.weight)
            .sum::<f64>()
            .max(f64::MIN_POSITIVE);
        let mean_response = self
            .mix
            .iter()
            .map(|m| m.weight * m.response_bytes as f64)
            .sum::<f64>()
            / total;
        let mix: BTreeMap<String, f64> = self
            .mix
            .iter()
            .map(|m| (m.name.clone(), m.weight / total))
            .collect();
        LoadFeatures {
            rate_rps: self.rate_rps,
            concurrency: self.connections as f64,
            // Request line, Host and Accept-Encoding: what the mix sends, all GETs.
            mean_request_bytes: 70.0,
            mean_response_bytes: mean_response,
            mix,
        }
    }

    /// What the load is, in a few lines: rate, connections, and the mix entry by entry.
    pub fn summary(&self) -> String {
        let total: f64 = self.mix.iter().map(|m| m.weight.max(0.0)).sum();
        let mut text = format!(
            "load {} ({:?}): {:.2} req/s, {} connections, origin delay {} ms, \
             probe {} s + {} s measured\n",
            self.name,
            self.kind,
            self.rate_rps,
            self.connections,
            self.origin_delay_ms,
            self.probe_s,
            self.duration_s
        );
        for m in &self.mix {
            let share = if total > 0.0 {
                m.weight.max(0.0) / total
            } else {
                0.0
            };
            // Writing to a String cannot fail.
            let _ = writeln!(
                text,
                "  {:>6.2}%  {:>9.2} req/s  {:>8} B  {:>6} keys  {}",
                share * 100.0,
                share * self.rate_rps,
                m.response_bytes,
                m.keys,
                m.name
            );
        }
        text
    }

    pub fn probe(&self) -> Duration {
        Duration::from_secs_f64(self.probe_s)
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s)
    }
}

/// Every key of every mix entry once, in order (then again from the start): the cache
/// warm-up of [`LoadSpec::warm_cache`].
pub struct WarmSource {
    requests: Vec<Request>,
    next: usize,
}

impl WarmSource {
    pub fn new(spec: &LoadSpec, host: &str) -> Result<Self, shadowtap_loadgen::RequestError> {
        let all = MixSource::new(spec, host)?;
        Ok(Self {
            requests: all.requests.into_iter().flatten().collect(),
            next: 0,
        })
    }

    /// Requests in one pass.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

impl RequestSource for WarmSource {
    fn next_request(&mut self, _conn: u64, _rng: &mut LoadRng) -> Request {
        let r = self.requests[self.next % self.requests.len()].clone();
        self.next += 1;
        r
    }
}

/// Picks requests by the mix's weights and each entry's key popularity.
pub struct MixSource {
    cumulative: Vec<f64>,
    /// Per entry, one prebuilt request per key.
    requests: Vec<Vec<Request>>,
}

impl MixSource {
    pub fn new(spec: &LoadSpec, host: &str) -> Result<Self, shadowtap_loadgen::RequestError> {
        let mut cumulative = Vec::new();
        let mut acc = 0.0;
        let mut requests = Vec::new();
        for m in &spec.mix {
            acc += m.weight.max(0.0);
            cumulative.push(acc);
            let built = (0..m.keys.max(1))
                .map(|k| {
                    let mut r = RequestSpec::get(host, format!("/o/{}/{k}", m.response_bytes));
                    r.headers.push(("Accept-Encoding".into(), "gzip".into()));
                    r.build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            requests.push(built);
        }
        Ok(Self {
            cumulative,
            requests,
        })
    }
}

impl RequestSource for MixSource {
    fn next_request(&mut self, _conn: u64, rng: &mut LoadRng) -> Request {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let u = rng.random::<f64>() * total;
        let entry = self
            .cumulative
            .iter()
            .position(|c| u < *c)
            .unwrap_or(self.cumulative.len() - 1);
        let keys = &self.requests[entry];
        let v: f64 = rng.random();
        let k = ((v * v) * keys.len() as f64) as usize;
        keys[k.min(keys.len() - 1)].clone()
    }
}
