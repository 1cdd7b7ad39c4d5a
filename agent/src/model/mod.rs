//! Model stage: per-resource and per-client behavioural models built from the event stream.
//!
//! A **resource** is a service (destination `addr:port`, refined by HTTP `Host` or TLS SNI
//! when seen); a **client** is a source address, optionally aggregated to a prefix. Each keeps
//! event-time windows (see [`crate::windows`]) of requests, connections, bytes, request-size
//! and latency histograms, status classes and a top-k endpoint mix; closed windows come out as
//! mergeable [`WindowSummary`]s. Resources also keep a bounded demand series for the
//! forecaster, and every entity an hour-of-week profile.
//!
//! Memory is bounded: at most `max_resources` / `max_clients` entities (CLOCK eviction, with
//! counters), `max_templates` endpoint templates, `max_connections` connections in flight.
//! Finding an existing entity or template hashes the event's borrowed strings and never
//! allocates.

mod conn_events;
mod conns;
mod demand;
mod hours;
mod ids;
mod limits;
mod param_counter;
mod profile;
mod profile_conns;
mod queries;
mod snapshot;
mod store;
mod summary;
mod swar;
mod table;
mod template_key;
mod templates;

#[cfg(test)]
mod conn_tests;
#[cfg(test)]
mod pcap_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use ids::{
    ClientId, EntityId, ID_PLACEHOLDER, IdParseError, MAX_TEMPLATE_LEN, OTHER_TEMPLATE, ResourceId,
    endpoint_template, is_id_segment, normalize_host,
};
pub use store::ModelStore;
pub use summary::{StatusClasses, WindowSummary, hdr_base64};
pub use table::HOURS_PER_WEEK;

use crate::windows::{BASE_NS, Level};

/// Errors of the model stage.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model config `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("demand step of {step_ms} ms is not a positive multiple of the {base_ms} ms base step")]
    Step { step_ms: u128, base_ms: u64 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("model snapshot is corrupt: {0}")]
    Snapshot(String),
}

/// Which closed windows become [`WindowSummary`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[allow(
    clippy::struct_excessive_bools,
    reason = "independent switches, one per window level and entity kind"
)]
pub struct EmitConfig {
    pub second: bool,
    pub ten_seconds: bool,
    pub minute: bool,
    /// Also emit client summaries (resources always are, at the levels above).
    pub clients: bool,
}

impl Default for EmitConfig {
    fn default() -> Self {
        Self {
            second: true,
            ten_seconds: true,
            minute: true,
            clients: false,
        }
    }
}

impl EmitConfig {
    pub fn level(&self, level: Level) -> bool {
        match level {
            Level::Second => self.second,
            Level::TenSeconds => self.ten_seconds,
            Level::Minute => self.minute,
        }
    }
}

/// Default of [`ModelConfig::max_resources`].
pub const DEFAULT_MAX_RESOURCES: usize = 4096;
/// Default of [`ModelConfig::max_clients`].
pub const DEFAULT_MAX_CLIENTS: usize = 16_384;
/// Default of [`ModelConfig::max_templates`].
pub const DEFAULT_MAX_TEMPLATES: usize = 4096;
/// Default of [`ModelConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelConfig {
    /// Resources modelled at once; beyond, CLOCK eviction (counted).
    pub max_resources: usize,
    /// Clients modelled at once; beyond, CLOCK eviction (counted).
    pub max_clients: usize,
    /// Clients are aggregated to this IPv4 prefix length (32 = per address).
    pub client_prefix_v4: u8,
    /// Clients are aggregated to this IPv6 prefix length (128 = per address).
    pub client_prefix_v6: u8,
    /// Refine resources by HTTP `Host` / TLS SNI.
    pub refine_by_host: bool,
    /// Events this much older than the latest are still counted; older ones are
    /// `late_dropped`.
    pub allowed_lateness_ns: u64,
    /// Endpoint templates listed per summary (the rest is `endpoints_other`).
    pub top_k: usize,
    /// Space-saving counters per window (≥ `top_k`; more counters, more exact counts).
    pub endpoint_counters: usize,
    /// Distinct `METHOD /template` endpoints kept; further ones count as `(other)`.
    pub max_templates: usize,
    /// Connections in flight tracked for attribution and concurrency.
    pub max_connections: usize,
    /// Step of the demand series, seconds.
    pub demand_step_secs: u64,
    /// Demand steps kept per resource.
    pub demand_history: usize,
    pub emit: EmitConfig,
    /// Keep a request profile per resource (`shadowtap_core::profile`).
    pub profiles: bool,
    /// Profile one connection in this many (chosen by a hash of its addresses, so the same
    /// connections in a capture and live): 1 profiles every request. Profiles cost the model
    /// about as much again as the rest of it (`cargo xtask bench windows`); on a busy host a
    /// sample keeps the shape for a fraction of that.
    pub profile_sample: u32,
    /// Exact `{id}` values a profile lists per template (twice as many are counted). More
    /// names a bigger cache warm set; each takeover of a counter scans all of them, so the
    /// cost per new value grows with it.
    pub profile_values: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            max_resources: DEFAULT_MAX_RESOURCES,
            max_clients: DEFAULT_MAX_CLIENTS,
            client_prefix_v4: 32,
            client_prefix_v6: 128,
            refine_by_host: true,
            allowed_lateness_ns: BASE_NS,
            top_k: 10,
            endpoint_counters: 32,
            max_templates: DEFAULT_MAX_TEMPLATES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            demand_step_secs: 60,
            demand_history: 1440,
            emit: EmitConfig::default(),
            profiles: true,
            profile_sample: 1,
            profile_values: profile::PARAM_TOP as u32,
        }
    }
}

impl ModelConfig {
    /// The first of [`ModelConfig::problems`].
    pub fn validate(&self) -> Result<(), ModelError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every field out of range, in declaration order (so a settings check names them all).
    pub fn problems(&self) -> Vec<ModelError> {
        let mut out = Vec::new();
        let mut bad = |broken: bool, field, reason: &str| {
            if broken {
                out.push(ModelError::Config {
                    field,
                    reason: reason.to_owned(),
                });
            }
        };
        let half_u32 = u32::MAX as usize / 2;
        bad(
            self.max_resources == 0 || self.max_resources > half_u32,
            "max_resources",
            "must be in 1..=2^31",
        );
        bad(
            self.max_clients == 0 || self.max_clients > half_u32,
            "max_clients",
            "must be in 1..=2^31",
        );
        bad(
            self.client_prefix_v4 > 32,
            "client_prefix_v4",
            "must be at most 32",
        );
        bad(
            self.client_prefix_v6 > 128,
            "client_prefix_v6",
            "must be at most 128",
        );
        bad(
            self.allowed_lateness_ns > 600 * BASE_NS,
            "allowed_lateness_ns",
            "must be at most 10 minutes",
        );
        bad(self.top_k == 0, "top_k", "must be at least 1");
        bad(
            self.endpoint_counters < self.top_k || self.endpoint_counters > 1024,
            "endpoint_counters",
            "must be in top_k..=1024",
        );
        bad(
            self.max_templates < 2 || self.max_templates > half_u32,
            "max_templates",
            "must be in 2..=2^31",
        );
        bad(
            self.max_connections == 0,
            "max_connections",
            "must be at least 1",
        );
        bad(
            self.demand_step_secs == 0 || self.demand_step_secs > 7 * 86_400,
            "demand_step_secs",
            "must be in 1..=604800",
        );
        bad(
            self.demand_history == 0 || self.demand_history > 1_000_000,
            "demand_history",
            "must be in 1..=1000000",
        );
        bad(
            self.profile_sample == 0,
            "profile_sample",
            "must be at least 1 (1 profiles every connection)",
        );
        out
    }
}

/// Counters of the model stage (monotonic unless marked as a gauge). Every event that was
/// not counted in a window is counted here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelStats {
    pub events: u64,
    pub http_requests: u64,
    pub http_responses: u64,
    pub conn_opens: u64,
    pub conn_closes: u64,
    pub tls_client_hellos: u64,
    /// `flow` and `stats` events (not modelled).
    pub ignored: u64,
    /// Events older than the oldest open window.
    pub late_dropped: u64,
    /// `conn_close` of a connection not tracked (opened before the model started, or
    /// evicted).
    pub closes_untracked: u64,
    pub summaries_emitted: u64,
    pub resources_created: u64,
    pub resources_evicted: u64,
    /// Gauge.
    pub resources_active: u64,
    pub clients_created: u64,
    pub clients_evicted: u64,
    /// Gauge.
    pub clients_active: u64,
    /// Gauge: distinct endpoint templates.
    pub templates: u64,
    /// Requests counted under the `(other)` template (table full, path too long, odd method).
    pub templates_other: u64,
    /// Gauge.
    pub conns_tracked: u64,
    /// Connections dropped from tracking to make room.
    pub conns_evicted: u64,
    /// Gauge: connections followed for the request profiles.
    pub profile_conns: u64,
    /// Connections not followed for the profiles because the table was full of active ones
    /// (their requests still count in the template mix, not in per-connection behaviour).
    pub profile_conns_full: u64,
    /// Gauge: watermark (latest event time minus the allowed lateness), unix ns.
    pub watermark_ns: u64,
}
