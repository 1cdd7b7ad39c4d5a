//! Request profiles: how a resource is used, as metadata only (request lines, Host, sizes,
//! timing, status; never bodies). The agent builds them from its models
//! (`shadowtap-agent profile`, `GET /v1/resources/{id}/profile`); the load generator reads
//! them to send shadow traffic shaped like production.
//!
//! The document is versioned JSON ([`PROFILE_SCHEMA`], schema in `core/schema/`). Per
//! resource it holds the endpoint-template mix, per template the popularity of its
//! identifier values (top values exact, the tail as a Zipf law), size and latency
//! distributions, status mix, the per-connection behaviour (requests per connection, think
//! time, a first-order Markov chain over templates), inter-arrival statistics and the
//! hour-of-week rate curve.

mod compare;
mod distribution;
#[doc(hidden)]
pub mod example;
mod zipf;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use compare::{Fidelity, js_divergence, ks_statistic};
pub use distribution::{Bucket, Distribution};
pub use zipf::{ZipfFit, fit_zipf};

/// The `schema` field of every profile document.
pub const PROFILE_SCHEMA: &str = "shadowtap.profile.v1";
/// The `version` field; readers reject versions they do not know.
pub const PROFILE_VERSION: u32 = 1;
/// Markov state before a connection's first request.
pub const START: &str = "^start";
/// Markov state after a connection's last request (it closed).
pub const END: &str = "$end";
/// Hours in a week; slot 0 is Monday 00:00–01:00 UTC.
pub const HOURS_PER_WEEK: usize = 168;

/// A profile document: one or more resources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileDocument {
    pub schema: String,
    pub version: u32,
    /// When the document was made, unix ms.
    pub generated_at_ms: u64,
    /// What it was learned from, e.g. `pcap:/path/file.pcap` or `live:eth0`.
    pub source: String,
    pub resources: Vec<ResourceProfile>,
}

/// How one resource (service) is used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceProfile {
    /// The resource id (`host@addr:port` or `addr:port`).
    pub resource: String,
    /// The `Host` requests carry (absent when the resource is not refined by host).
    pub host: Option<String>,
    /// Requests of one connection in this many are profiled (the agent's `--profile-sample`):
    /// counts are of those, shares and distributions estimate the whole; `arrivals` and
    /// `hour_of_week` are of all requests.
    #[serde(default = "one")]
    pub connection_sample: u32,
    /// Event time of the first and last request seen, unix ms.
    pub first_request_ms: u64,
    pub last_request_ms: u64,
    pub requests: u64,
    pub responses: u64,
    /// Templates by requests, busiest first; shares add up to 1 with `templates_other`.
    pub templates: Vec<TemplateProfile>,
    /// Requests whose template was not kept (table full, path too long, odd method).
    pub templates_other: u64,
    pub request_bytes: Distribution,
    pub response_bytes: Distribution,
    pub status: StatusMix,
    pub connections: ConnectionProfile,
    pub arrivals: ArrivalProfile,
    pub hour_of_week: HourOfWeek,
}

fn one() -> u32 {
    1
}

/// One endpoint template, e.g. `GET /users/{id}/orders`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateProfile {
    /// `METHOD /path/{id}`, as in the model's endpoint mix.
    pub template: String,
    pub method: String,
    /// The path with `{id}` placeholders.
    pub path: String,
    pub requests: u64,
    /// Of the resource's requests.
    pub share: f64,
    /// Responses paired with a request of this template.
    pub responses: u64,
    pub request_bytes: Distribution,
    pub response_bytes: Distribution,
    pub latency_us: Distribution,
    pub status: StatusMix,
    /// Popularity of the `{id}` values; absent for a template without placeholders.
    pub params: Option<ParamPopularity>,
}

/// How often each value of a template's `{id}` placeholders was asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamPopularity {
    /// Requests whose values were counted.
    pub observed: u64,
    /// Distinct values seen (exact while the counter table had room, an upper bound after).
    pub distinct_estimate: u64,
    /// The most asked-for values, most first; the values of several placeholders are joined
    /// by `/` in path order. Counts are exact for values never evicted from the table.
    pub top: Vec<ParamValue>,
    /// Requests for values not in `top`.
    pub tail_requests: u64,
    /// Rank-frequency law fitted to the counted values (absent with fewer than 3 values).
    pub zipf: Option<ZipfFit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamValue {
    pub value: String,
    pub count: u64,
}

/// Responses per status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusMix {
    pub informational: u64,
    pub success: u64,
    pub redirection: u64,
    pub client_error: u64,
    pub server_error: u64,
    /// No parsable status.
    pub unknown: u64,
}

impl StatusMix {
    pub fn total(&self) -> u64 {
        self.informational
            + self.success
            + self.redirection
            + self.client_error
            + self.server_error
            + self.unknown
    }
}

/// Per-connection behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionProfile {
    /// Connections that ended (closed, or dropped from tracking when idle).
    pub ended: u64,
    /// Of those, connections whose open and close were both seen (complete request counts).
    pub complete: u64,
    /// Connections still open when the profile was made, counted with the requests seen so
    /// far (at the end of a capture, every connection it did not see close).
    pub open: u64,
    /// Over ended and open connections.
    pub requests_per_connection: Distribution,
    /// From a response to the next request on the same connection, µs.
    pub think_time_us: Distribution,
    /// First-order transitions between templates on a connection, [`START`] and [`END`]
    /// included, by count.
    pub transitions: Vec<Transition>,
    /// Transitions not kept (table full).
    pub transitions_other: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub from: String,
    pub to: String,
    pub count: u64,
}

/// Gaps between consecutive requests to the resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArrivalProfile {
    /// Requests per second over `[first_request_ms, last_request_ms]`.
    pub mean_rate_per_s: f64,
    pub inter_arrival_us: Distribution,
    /// Coefficient of variation of the gaps (1 for Poisson arrivals, 0 for a metronome).
    pub cv: f64,
}

/// The weekly rate curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HourOfWeek {
    /// Requests per hour-of-week slot (Monday 00:00 UTC = slot 0).
    pub requests: Vec<u64>,
    /// Seconds of each slot during which the agent was observing.
    pub observed_seconds: Vec<u64>,
}

impl HourOfWeek {
    /// Requests per second in `slot`: observed rate where the slot was observed, the mean
    /// observed rate elsewhere (a profile learned over a day says nothing about the others).
    pub fn rate(&self, slot: usize) -> f64 {
        let seen: u64 = self.observed_seconds.iter().sum();
        let mean = if seen == 0 {
            0.0
        } else {
            self.requests.iter().sum::<u64>() as f64 / seen as f64
        };
        match (self.requests.get(slot), self.observed_seconds.get(slot)) {
            (Some(&r), Some(&s)) if s > 0 => r as f64 / s as f64,
            _ => mean,
        }
    }
}

/// A profile that cannot be used, with the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile is not JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("profile field `{field}`: {reason}")]
    Field { field: String, reason: String },
}

fn field_error(field: impl Into<String>, reason: impl Into<String>) -> ProfileError {
    ProfileError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

impl ProfileDocument {
    /// Parses and validates a document.
    pub fn from_json(text: &str) -> Result<Self, ProfileError> {
        let doc: Self = serde_json::from_str(text)?;
        doc.validate()?;
        Ok(doc)
    }

    /// The resource named `id`, or the only one when `id` is `None`.
    pub fn resource(&self, id: Option<&str>) -> Result<&ResourceProfile, ProfileError> {
        match id {
            Some(id) => self
                .resources
                .iter()
                .find(|r| r.resource == id)
                .ok_or_else(|| {
                    let known: Vec<&str> =
                        self.resources.iter().map(|r| r.resource.as_str()).collect();
                    field_error("resources", format!("no resource {id:?}; it has {known:?}"))
                }),
            None => match self.resources.as_slice() {
                [one] => Ok(one),
                [] => Err(field_error("resources", "empty")),
                many => Err(field_error(
                    "resources",
                    format!("{} resources: name one", many.len()),
                )),
            },
        }
    }

    /// The same header (schema, version, time, source) with no resources.
    #[must_use]
    pub fn clone_header(&self) -> Self {
        Self {
            schema: self.schema.clone(),
            version: self.version,
            generated_at_ms: self.generated_at_ms,
            source: self.source.clone(),
            resources: Vec::new(),
        }
    }

    /// Checks what serde cannot: the schema and version, and that every reference and
    /// distribution is usable for generation.
    pub fn validate(&self) -> Result<(), ProfileError> {
        if self.schema != PROFILE_SCHEMA {
            return Err(field_error(
                "schema",
                format!("{:?}, expected {PROFILE_SCHEMA:?}", self.schema),
            ));
        }
        if self.version != PROFILE_VERSION {
            return Err(field_error(
                "version",
                format!(
                    "{} is not supported (this build reads {PROFILE_VERSION})",
                    self.version
                ),
            ));
        }
        for (i, r) in self.resources.iter().enumerate() {
            r.validate(&format!("resources[{i}]"))?;
        }
        Ok(())
    }
}

impl ResourceProfile {
    fn validate(&self, at: &str) -> Result<(), ProfileError> {
        if self.resource.is_empty() {
            return Err(field_error(format!("{at}.resource"), "empty"));
        }
        let mut names = BTreeSet::new();
        for (i, t) in self.templates.iter().enumerate() {
            let here = format!("{at}.templates[{i}]");
            if !names.insert(t.template.as_str()) {
                return Err(field_error(format!("{here}.template"), "duplicate"));
            }
            if t.method.is_empty() || !t.path.starts_with('/') {
                return Err(field_error(
                    format!("{here}.template"),
                    format!("{:?} is not `METHOD /path`", t.template),
                ));
            }
            if !(0.0..=1.0).contains(&t.share) {
                return Err(field_error(format!("{here}.share"), "not within 0..=1"));
            }
            for (name, d) in [
                ("request_bytes", &t.request_bytes),
                ("response_bytes", &t.response_bytes),
                ("latency_us", &t.latency_us),
            ] {
                d.validate()
                    .map_err(|reason| field_error(format!("{here}.{name}"), reason))?;
            }
        }
        for (name, d) in [
            ("request_bytes", &self.request_bytes),
            ("response_bytes", &self.response_bytes),
            (
                "connections.requests_per_connection",
                &self.connections.requests_per_connection,
            ),
            ("connections.think_time_us", &self.connections.think_time_us),
            ("arrivals.inter_arrival_us", &self.arrivals.inter_arrival_us),
        ] {
            d.validate()
                .map_err(|reason| field_error(format!("{at}.{name}"), reason))?;
        }
        for (i, tr) in self.connections.transitions.iter().enumerate() {
            let known = |s: &str| names.contains(s);
            if !(tr.from == START || known(&tr.from)) {
                return Err(field_error(
                    format!("{at}.connections.transitions[{i}].from"),
                    format!("unknown template {:?}", tr.from),
                ));
            }
            if !(tr.to == END || known(&tr.to)) {
                return Err(field_error(
                    format!("{at}.connections.transitions[{i}].to"),
                    format!("unknown template {:?}", tr.to),
                ));
            }
        }
        let how = &self.hour_of_week;
        if how.requests.len() != HOURS_PER_WEEK || how.observed_seconds.len() != HOURS_PER_WEEK {
            return Err(field_error(
                format!("{at}.hour_of_week"),
                format!("needs {HOURS_PER_WEEK} slots"),
            ));
        }
        Ok(())
    }

    /// Request shares per template, `(other)` included, for mix comparisons.
    pub fn template_mix(&self) -> BTreeMap<String, f64> {
        let mut mix: BTreeMap<String, f64> = self
            .templates
            .iter()
            .map(|t| (t.template.clone(), t.requests as f64))
            .collect();
        if self.templates_other > 0 {
            mix.insert("(other)".to_owned(), self.templates_other as f64);
        }
        mix
    }

    /// The transitions out of each state, as (next state, count) lists in document order.
    pub fn transition_table(&self) -> BTreeMap<&str, Vec<(&str, u64)>> {
        let mut table: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
        for t in &self.connections.transitions {
            table
                .entry(t.from.as_str())
                .or_default()
                .push((t.to.as_str(), t.count));
        }
        table
    }
}

#[cfg(test)]
mod tests;
