//! Generative replay: requests sampled from a learned request profile
//! (`shadowtap_core::profile`), per connection.
//!
//! A connection's first template comes from the Markov chain's start transitions (the template
//! mix when the profile saw no connection start), each next one from the transitions out of
//! the current template. When the profile saw connections end, the chain's end transitions
//! end them too (capped at the longest connection seen); when it did not (a capture that
//! began and ended mid-connection), the length is drawn from the requests-per-connection
//! distribution and a template with no learned successor continues with the mix. `{id}` placeholders are filled from the
//! template's parameter popularity: a top value by its count, or, with the tail's share, a
//! rank of the fitted Zipf law beyond the top values (a synthetic value of that rank). Each
//! request is padded to a size drawn from the template's request sizes.
//!
//! `temperature` reshapes every categorical choice (templates, values): weights `w^(1/T)`.
//! 1 samples as learned, above 1 flattens towards rare endpoints and values, 0 always takes
//! the most likely one (and the mode of every distribution): a deterministic replay of the
//! most likely mix. The RNG is the runner's per-connection [`LoadRng`], seeded from `--seed`.

mod curve;
mod pick;

use std::{collections::HashMap, time::Duration};

use rand::RngExt as _;
use shadowtap_core::profile::{
    Distribution, END, Fidelity, ResourceProfile, START, TemplateProfile,
};

use crate::{LoadRng, Request, RequestSource, RequestSpec};
pub use curve::{ForecastBound, ForecastCurve, ForecastError, HourOfWeekCurve};
pub use pick::Weighted;

/// Weight of the template mix in each template's next-template choice, in transitions.
const SMOOTHING: f64 = 1.0;

/// Header that pads a request to its sampled size (the profile knows sizes, not headers).
pub const PAD_HEADER: &str = "X-Shadowtap-Pad";
/// Bytes `PAD_HEADER: ` and its line end add beyond the padding itself.
const PAD_OVERHEAD: usize = PAD_HEADER.len() + 4;

/// Why a profile cannot drive a run.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("profile of {0} has no templates to send")]
    NoTemplates(String),
    #[error("temperature {0} must be finite and ≥ 0")]
    Temperature(f64),
    #[error("template {template:?}: {source}")]
    Request {
        template: String,
        source: crate::RequestError,
    },
}

/// One template, ready to instantiate.
#[derive(Debug)]
struct Template {
    profile: TemplateProfile,
    /// The path split at its `{id}` placeholders.
    pieces: Vec<String>,
    values: Option<Weighted<String>>,
    /// Probability of a value beyond the top ones, and the Zipf law over those ranks.
    tail: Option<Tail>,
}

#[derive(Debug)]
struct Tail {
    share: f64,
    ranks: Weighted<u64>,
    numeric: bool,
}

/// Where a connection is: its next template, drawn with the previous request.
struct ConnState {
    next: usize,
    remaining: u64,
}

/// A next state: a template, or the end of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Template(usize),
    End,
}

/// A [`RequestSource`] that replays a resource's profile generatively.
pub struct ProfileSource {
    host: String,
    temperature: f64,
    templates: Vec<Template>,
    /// Start state: first templates of connections.
    start: Weighted<usize>,
    /// Next states out of each template (END only when `ends_learned`), and how many
    /// transitions they were learned from.
    next: Vec<Option<(Weighted<Next>, f64)>>,
    /// The chain has end transitions: connections end by it, not by a drawn length.
    ends_learned: bool,
    mix: Weighted<usize>,
    conns: HashMap<u64, ConnState>,
    requests_per_connection: Distribution,
    generated: Generated,
}

/// What the source has handed out, for the fidelity report, and how each template answered.
#[derive(Debug)]
struct Generated {
    per_template: Vec<u64>,
    /// Corrected latency (µs) per template, and the template in flight per connection.
    latency: Vec<hdrhistogram::Histogram<u64>>,
    in_flight: HashMap<u64, usize>,
    sizes: hdrhistogram::Histogram<u64>,
    lengths: hdrhistogram::Histogram<u64>,
    /// Requests so far on each open connection.
    open: HashMap<u64, u64>,
}

impl Generated {
    fn new(templates: usize) -> Self {
        let hist = || {
            let mut h = hdrhistogram::Histogram::new(2).expect("2 significant digits is valid");
            h.auto(true);
            h
        };
        Self {
            per_template: vec![0; templates],
            latency: (0..templates).map(|_| hist()).collect(),
            in_flight: HashMap::new(),
            sizes: hist(),
            lengths: hist(),
            open: HashMap::new(),
        }
    }

    fn record(&mut self, conn: u64, template: usize, size: usize, last: bool) {
        self.per_template[template] += 1;
        self.in_flight.insert(conn, template);
        let _ = self.sizes.record(size as u64);
        let n = self.open.entry(conn).or_insert(0);
        *n += 1;
        if last {
            self.close(conn);
        }
    }

    fn close(&mut self, conn: u64) {
        if let Some(n) = self.open.remove(&conn) {
            let _ = self.lengths.record(n);
        }
    }
}

impl ProfileSource {
    /// `host`: the `Host` header to send (the profile's, or the shadow's name).
    pub fn new(
        profile: &ResourceProfile,
        host: &str,
        temperature: f64,
    ) -> Result<Self, GenerateError> {
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(GenerateError::Temperature(temperature));
        }
        if profile.templates.is_empty() {
            return Err(GenerateError::NoTemplates(profile.resource.clone()));
        }
        let index: HashMap<&str, usize> = profile
            .templates
            .iter()
            .enumerate()
            .map(|(i, t)| (t.template.as_str(), i))
            .collect();
        let templates = profile
            .templates
            .iter()
            .map(|t| Template::new(t, temperature))
            .collect::<Vec<_>>();
        let mix = Weighted::new(
            profile
                .templates
                .iter()
                .enumerate()
                .map(|(i, t)| (i, t.requests as f64)),
            temperature,
        )
        .ok_or_else(|| GenerateError::NoTemplates(profile.resource.clone()))?;
        let table = profile.transition_table();
        let ends_learned = profile.connections.transitions.iter().any(|t| t.to == END);
        let out_of = |state: &str| {
            table.get(state).and_then(|next| {
                Weighted::new(
                    next.iter().filter_map(|(to, n)| {
                        let next = if *to == END {
                            ends_learned.then_some(Next::End)
                        } else {
                            index.get(to).map(|&i| Next::Template(i))
                        };
                        next.map(|x| (x, *n as f64))
                    }),
                    temperature,
                )
            })
        };
        let start = table
            .get(START)
            .and_then(|next| {
                Weighted::new(
                    next.iter()
                        .filter_map(|(to, n)| index.get(to).map(|&i| (i, *n as f64))),
                    temperature,
                )
            })
            .unwrap_or_else(|| mix.clone());
        let next = profile
            .templates
            .iter()
            .map(|t| {
                let seen: u64 = table
                    .get(t.template.as_str())
                    .map_or(0, |n| n.iter().map(|(_, c)| c).sum());
                out_of(&t.template).map(|w| (w, seen as f64))
            })
            .collect();
        Ok(Self {
            host: host.to_owned(),
            temperature,
            templates,
            start,
            next,
            ends_learned,
            mix,
            conns: HashMap::new(),
            requests_per_connection: profile.connections.requests_per_connection.clone(),
            generated: Generated::new(profile.templates.len()),
        })
    }

    /// Requests of a new connection at most: drawn from the profile when its chain has no
    /// ends; the longest connection seen when it has (the mode at temperature 0, where a
    /// self-loop would otherwise never end). Unbounded keep-alive, capped by the run, when
    /// the profile saw no connection at all.
    fn connection_length(&self, rng: &mut LoadRng) -> u64 {
        let d = &self.requests_per_connection;
        let n = if self.temperature == 0.0 {
            d.mode()
        } else if self.ends_learned {
            (!d.is_empty()).then_some(d.max)
        } else {
            d.sample(rng.random(), rng.random())
        };
        n.map_or(u64::MAX, |n| n.max(1))
    }

    /// The template of a connection's next request, and whether it is the connection's last
    /// (its successor, drawn now, is the end), advancing the connection's state.
    fn step(&mut self, conn: u64, rng: &mut LoadRng) -> (usize, bool) {
        let (template, remaining) = if let Some(state) = self.conns.remove(&conn) {
            (state.next, state.remaining)
        } else {
            let length = self.connection_length(rng);
            (*self.start.pick(rng), length)
        };
        let remaining = remaining.saturating_sub(1);
        let successor = if remaining == 0 {
            Next::End
        } else {
            match &self.next[template] {
                // Additive smoothing towards the mix (a Dirichlet prior of weight
                // SMOOTHING): a template seen followed a few times says little about what
                // follows it, and the unsmoothed chain drifts away from the learned mix.
                Some((table, seen)) => {
                    let prior = SMOOTHING / (seen + SMOOTHING);
                    if self.temperature > 0.0 && rng.random::<f64>() < prior {
                        Next::Template(*self.mix.pick(rng))
                    } else {
                        *table.pick(rng)
                    }
                }
                None if self.ends_learned => Next::End,
                None => Next::Template(*self.mix.pick(rng)),
            }
        };
        match successor {
            Next::End => (template, true),
            Next::Template(next) => {
                self.conns.insert(conn, ConnState { next, remaining });
                (template, false)
            }
        }
    }

    /// The request for template `i` (values and size drawn).
    pub fn instantiate(&self, i: usize, rng: &mut LoadRng) -> Result<Request, GenerateError> {
        let t = &self.templates[i];
        let path = t.path(rng, self.temperature);
        let mut spec = RequestSpec {
            method: t.profile.method.clone(),
            path,
            host: self.host.clone(),
            headers: Vec::new(),
            body_len: 0,
        };
        let size = if self.temperature == 0.0 {
            t.profile.request_bytes.mode()
        } else {
            t.profile.request_bytes.sample(rng.random(), rng.random())
        };
        if let Some(size) = size {
            let head = spec.build().map_err(|source| GenerateError::Request {
                template: t.profile.template.clone(),
                source,
            })?;
            let have = head.wire().len();
            let want = usize::try_from(size).unwrap_or(usize::MAX);
            if want > have {
                let missing = want - have;
                if ["POST", "PUT", "PATCH"].contains(&spec.method.as_str()) {
                    spec.body_len = missing;
                } else if missing > PAD_OVERHEAD {
                    spec.headers
                        .push((PAD_HEADER.to_owned(), "p".repeat(missing - PAD_OVERHEAD)));
                }
            }
        }
        spec.build().map_err(|source| GenerateError::Request {
            template: t.profile.template.clone(),
            source,
        })
    }

    /// How close what this source has sent so far is to `reference` (connections still open
    /// count with their requests so far).
    pub fn fidelity(&self, reference: &ResourceProfile) -> Fidelity {
        let mix = self
            .templates
            .iter()
            .zip(&self.generated.per_template)
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| (t.profile.template.clone(), *n as f64))
            .collect();
        let mut lengths = self.generated.lengths.clone();
        for n in self.generated.open.values() {
            let _ = lengths.record(*n);
        }
        Fidelity::of_parts(
            reference,
            &mix,
            &Distribution::from_hdr(&self.generated.sizes),
            &Distribution::from_hdr(&lengths),
        )
    }

    /// Corrected latency per template of the responses so far: (template, responses, p50 µs,
    /// p99 µs), templates without responses left out.
    pub fn template_latency(&self) -> Vec<(String, u64, u64, u64)> {
        self.templates
            .iter()
            .zip(&self.generated.latency)
            .filter(|(_, h)| !h.is_empty())
            .map(|(t, h)| {
                (
                    t.profile.template.clone(),
                    h.len(),
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99),
                )
            })
            .collect()
    }

    /// The template names, in the profile's order.
    pub fn template_names(&self) -> impl Iterator<Item = &str> {
        self.templates.iter().map(|t| t.profile.template.as_str())
    }

    /// Offline generation: `connections` connections' requests (templates and the bytes they
    /// would send), as the runner would draw them with this seed. For fidelity checks.
    pub fn simulate(&mut self, connections: u64, seed: u64) -> Vec<Vec<(usize, Request)>> {
        use rand::SeedableRng as _;
        let mut rng = LoadRng::seed_from_u64(seed);
        let mut out = Vec::new();
        for conn in 0..connections {
            let mut requests = Vec::new();
            loop {
                let (i, last) = self.step(conn, &mut rng);
                if let Ok(r) = self.instantiate(i, &mut rng) {
                    self.generated.record(conn, i, r.wire().len(), last);
                    requests.push((i, r));
                }
                // Open-ended connections (no lengths in the profile) stop at the mean mix.
                if last || requests.len() >= 10_000 {
                    self.conns.remove(&conn);
                    self.generated.close(conn);
                    break;
                }
            }
            out.push(requests);
        }
        out
    }
}

impl RequestSource for ProfileSource {
    fn next_request(&mut self, conn: u64, rng: &mut LoadRng) -> Request {
        let (i, last) = self.step(conn, rng);
        match self.instantiate(i, rng) {
            Ok(r) => {
                self.generated.record(conn, i, r.wire().len(), last);
                r.closing(last)
            }
            // Templates were checked when the source was made; a drawn value cannot break
            // a request, but never send nothing: fall back to the template's bare path.
            Err(_) => RequestSpec::get(self.host.clone(), "/")
                .build()
                .map_or_else(|_| unreachable_request(), |r| r.closing(last)),
        }
    }

    fn response(&mut self, conn: u64, _status: u16, corrected: Duration, _uncorrected: Duration) {
        if let Some(t) = self.generated.in_flight.remove(&conn) {
            let us = u64::try_from(corrected.as_micros()).unwrap_or(u64::MAX);
            let _ = self.generated.latency[t].record(us);
        }
    }

    fn connection_closed(&mut self, conn: u64) {
        self.conns.remove(&conn);
        self.generated.close(conn);
        self.generated.in_flight.remove(&conn);
    }
}

/// `GET /` to host `localhost`: valid by construction.
fn unreachable_request() -> Request {
    RequestSpec::get("localhost", "/")
        .build()
        .unwrap_or_else(|e| panic!("a constant request is valid: {e}"))
}

impl Template {
    fn new(profile: &TemplateProfile, temperature: f64) -> Self {
        let pieces: Vec<String> = profile.path.split("{id}").map(str::to_owned).collect();
        let (values, tail) = match &profile.params {
            None => (None, None),
            Some(p) => {
                let values = Weighted::new(
                    p.top.iter().map(|v| (v.value.clone(), v.count as f64)),
                    temperature,
                );
                let listed = p.top.len() as u64;
                let tail = (p.tail_requests > 0 && p.observed > 0).then(|| {
                    let s = p.zipf.map_or(1.0, |z| z.s);
                    // Ranks beyond the listed values, up to the distinct values seen.
                    let last = p.distinct_estimate.max(listed + 1).min(listed + 100_000);
                    let s = if temperature > 0.0 {
                        s / temperature
                    } else {
                        s
                    };
                    Tail {
                        share: p.tail_requests as f64 / p.observed as f64,
                        ranks: Weighted::zipf(listed + 1, last, s),
                        numeric: p.top.iter().all(|v| {
                            v.value
                                .split('/')
                                .all(|x| x.bytes().all(|b| b.is_ascii_digit()))
                        }),
                    }
                });
                (values, tail)
            }
        };
        Self {
            profile: profile.clone(),
            pieces,
            values,
            tail,
        }
    }

    /// The path with every `{id}` filled.
    fn path(&self, rng: &mut LoadRng, temperature: f64) -> String {
        if self.pieces.len() == 1 {
            return self.profile.path.clone();
        }
        let in_tail = self.tail.as_ref().is_some_and(|t| {
            temperature > 0.0 && (self.values.is_none() || rng.random::<f64>() < t.share)
        });
        let value = match (&self.values, &self.tail) {
            (Some(v), _) if !in_tail => v.pick(rng).clone(),
            (_, Some(t)) => synthetic(*t.ranks.pick(rng), t.numeric),
            _ => synthetic(1, true),
        };
        let mut parts = value.split('/');
        let mut path = String::with_capacity(self.profile.path.len() + value.len());
        for (k, piece) in self.pieces.iter().enumerate() {
            path.push_str(piece);
            if k + 1 < self.pieces.len() {
                match parts.next() {
                    Some(v) if !v.is_empty() => path.push_str(v),
                    _ => path.push_str(&synthetic(k as u64 + 1, true)),
                }
            }
        }
        path
    }
}

/// A value of rank `rank` that the top values do not hold: numeric ids stay numeric, in a
/// range real ids rarely use, so a shadow's caches see distinct keys.
fn synthetic(rank: u64, numeric: bool) -> String {
    if numeric {
        (9_000_000_000 + rank).to_string()
    } else {
        format!("{:016x}", 0x5eed_0000_0000_0000_u64 + rank)
    }
}

#[cfg(test)]
mod tests;
