//! The `shadowtap.observations` wire format: one protobuf message per (agent, resource, window).
//!
//! Protobuf because it is compact (varints, no field names), evolves by adding fields, and any
//! consumer language can read it from the schema in `collector/WIRE_FORMAT.md`. The latency
//! histogram travels as an `HdrHistogram` V2 blob so it stays mergeable without loss.
//! Versioning: the `schema_version` field and the `shadowtap-schema` Kafka header; a decoder
//! rejects versions it does not know instead of guessing.

use std::collections::BTreeMap;

use hdrhistogram::{
    Histogram,
    serialization::{Deserializer, Serializer as _, V2Serializer},
};
use prost::Message as _;
use serde::{Deserialize, Serialize};

/// The only schema version this build writes and reads.
pub const OBSERVATION_SCHEMA_VERSION: u32 = 1;
/// Value of the `shadowtap-schema` header on every observation record.
pub const OBSERVATION_SCHEMA_HEADER: &str = "shadowtap.observation.v1";
/// Name of the schema header.
pub const SCHEMA_HEADER_NAME: &str = "shadowtap-schema";
/// Largest observation accepted (a defence against garbage, far above any real window).
pub const MAX_OBSERVATION_BYTES: usize = 4 << 20;

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("record has no value")]
    Empty,
    #[error("record of {0} bytes exceeds the {MAX_OBSERVATION_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("unsupported schema version {0} (this build reads {OBSERVATION_SCHEMA_VERSION})")]
    Version(u32),
    #[error("field `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("latency histogram: {0}")]
    Histogram(String),
    #[error("record key `{key}` does not match resource `{resource}`")]
    KeyMismatch { key: String, resource: String },
}

impl WireError {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLarge(_) => "too_large",
            Self::Protobuf(_) => "protobuf",
            Self::Version(_) => "version",
            Self::Field { .. } => "field",
            Self::Histogram(_) => "histogram",
            Self::KeyMismatch { .. } => "key_mismatch",
        }
    }
}

/// One resource's activity as one agent saw it in one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Who saw it; unique per agent process lifetime.
    pub agent_id: String,
    /// The resource (service) id; also the Kafka key.
    pub resource: String,
    /// Window start, unix ms (inclusive).
    pub window_start_ms: u64,
    /// Window end, unix ms (exclusive).
    pub window_end_ms: u64,
    /// Per-agent sequence number, for tracing gaps.
    pub seq: u64,
    /// The summary itself.
    pub summary: WindowCounts,
}

impl Observation {
    /// The id that makes a redelivered record recognisable: (agent, resource, window).
    pub fn id(&self) -> String {
        format!(
            "{}/{}/{}",
            self.agent_id, self.resource, self.window_start_ms
        )
    }
}

/// Mergeable counters of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowCounts {
    /// HTTP requests (the demand the forecaster sees).
    pub requests: u64,
    /// HTTP responses.
    pub responses: u64,
    /// Responses with status ≥ 500.
    pub errors: u64,
    /// Bytes client → service.
    pub bytes_in: u64,
    /// Bytes service → client.
    pub bytes_out: u64,
    /// Request→response latency, microseconds.
    pub latency_us: Histogram<u64>,
    /// Requests per endpoint for the top endpoints; the rest is in `endpoints_other`.
    pub endpoints: BTreeMap<String, u64>,
    /// Requests to endpoints not listed.
    pub endpoints_other: u64,
}

impl Default for WindowCounts {
    fn default() -> Self {
        Self {
            requests: 0,
            responses: 0,
            errors: 0,
            bytes_in: 0,
            bytes_out: 0,
            latency_us: new_latency_histogram(),
            endpoints: BTreeMap::new(),
            endpoints_other: 0,
        }
    }
}

/// An empty latency histogram (auto-resizing, 3 significant digits).
pub fn new_latency_histogram() -> Histogram<u64> {
    let mut h = Histogram::new(3).expect("3 significant digits is a valid precision");
    h.auto(true);
    h
}

impl WindowCounts {
    /// Fraction of responses that were errors (0 when there were none).
    pub fn error_rate(&self) -> f64 {
        if self.responses == 0 {
            0.0
        } else {
            self.errors as f64 / self.responses as f64
        }
    }

    /// Add `other` into `self`: sums, histogram merge, endpoint union truncated to `top_k`
    /// (what falls off is moved to `endpoints_other`, so totals are kept).
    pub fn merge(&mut self, other: &WindowCounts, top_k: usize) {
        self.requests += other.requests;
        self.responses += other.responses;
        self.errors += other.errors;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        // Auto-resize is on, so adding cannot fail on range; keep going if it ever does.
        if let Err(e) = self.latency_us.add(&other.latency_us) {
            tracing::warn!(error = %e, "latency histogram merge failed");
        }
        for (endpoint, n) in &other.endpoints {
            *self.endpoints.entry(endpoint.clone()).or_default() += n;
        }
        self.endpoints_other += other.endpoints_other;
        self.truncate_endpoints(top_k);
    }

    /// Keep the `top_k` busiest endpoints (ties broken by name), fold the rest into other.
    pub fn truncate_endpoints(&mut self, top_k: usize) {
        truncate_top_k(&mut self.endpoints, &mut self.endpoints_other, top_k);
    }
}

/// Keeps the `top_k` largest counts of `endpoints` (ties by name) and adds the rest to
/// `other`, so totals are kept. Shared by window summaries and their wire form.
pub fn truncate_top_k(endpoints: &mut BTreeMap<String, u64>, other: &mut u64, top_k: usize) {
    if endpoints.len() <= top_k {
        return;
    }
    let mut ranked: Vec<(String, u64)> = std::mem::take(endpoints).into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (i, (endpoint, n)) in ranked.into_iter().enumerate() {
        if i < top_k {
            endpoints.insert(endpoint, n);
        } else {
            *other += n;
        }
    }
}

// ---- protobuf messages (see WIRE_FORMAT.md for the .proto text) ----

#[derive(Clone, PartialEq, prost::Message)]
struct ObservationPb {
    #[prost(uint32, tag = "1")]
    schema_version: u32,
    #[prost(string, tag = "2")]
    agent_id: String,
    #[prost(string, tag = "3")]
    resource: String,
    #[prost(uint64, tag = "4")]
    window_start_ms: u64,
    #[prost(uint64, tag = "5")]
    window_end_ms: u64,
    #[prost(uint64, tag = "6")]
    seq: u64,
    #[prost(uint64, tag = "7")]
    requests: u64,
    #[prost(uint64, tag = "8")]
    responses: u64,
    #[prost(uint64, tag = "9")]
    errors: u64,
    #[prost(uint64, tag = "10")]
    bytes_in: u64,
    #[prost(uint64, tag = "11")]
    bytes_out: u64,
    #[prost(bytes = "vec", tag = "12")]
    latency_us_hdr: Vec<u8>,
    #[prost(message, repeated, tag = "13")]
    endpoints: Vec<EndpointPb>,
    #[prost(uint64, tag = "14")]
    endpoints_other: u64,
    // Tag 15 carried an agent-side forecast that no agent ever sent; it is reserved. The
    // collector forecasts from the merged demand (see WIRE_FORMAT.md).
}

#[derive(Clone, PartialEq, prost::Message)]
struct EndpointPb {
    #[prost(string, tag = "1")]
    endpoint: String,
    #[prost(uint64, tag = "2")]
    requests: u64,
}

/// Encode an observation (the record value; the key is `resource`).
pub fn encode_observation(obs: &Observation) -> Vec<u8> {
    let mut hdr = Vec::new();
    if let Err(e) = V2Serializer::new().serialize(&obs.summary.latency_us, &mut hdr) {
        // Serialising into a Vec only fails on an internal inconsistency; send it empty.
        tracing::warn!(error = %e, "latency histogram serialisation failed");
        hdr.clear();
    }
    ObservationPb {
        schema_version: OBSERVATION_SCHEMA_VERSION,
        agent_id: obs.agent_id.clone(),
        resource: obs.resource.clone(),
        window_start_ms: obs.window_start_ms,
        window_end_ms: obs.window_end_ms,
        seq: obs.seq,
        requests: obs.summary.requests,
        responses: obs.summary.responses,
        errors: obs.summary.errors,
        bytes_in: obs.summary.bytes_in,
        bytes_out: obs.summary.bytes_out,
        latency_us_hdr: hdr,
        endpoints: obs
            .summary
            .endpoints
            .iter()
            .map(|(e, n)| EndpointPb {
                endpoint: e.clone(),
                requests: *n,
            })
            .collect(),
        endpoints_other: obs.summary.endpoints_other,
    }
    .encode_to_vec()
}

fn field(field: &'static str, reason: impl Into<String>) -> WireError {
    WireError::Field {
        field,
        reason: reason.into(),
    }
}

/// Decode and validate a record value. `key`, when present, must equal the resource.
pub fn decode_observation(key: Option<&[u8]>, value: &[u8]) -> Result<Observation, WireError> {
    if value.is_empty() {
        return Err(WireError::Empty);
    }
    if value.len() > MAX_OBSERVATION_BYTES {
        return Err(WireError::TooLarge(value.len()));
    }
    let pb = ObservationPb::decode(value)?;
    if pb.schema_version != OBSERVATION_SCHEMA_VERSION {
        return Err(WireError::Version(pb.schema_version));
    }
    if pb.agent_id.is_empty() {
        return Err(field("agent_id", "empty"));
    }
    if pb.resource.is_empty() {
        return Err(field("resource", "empty"));
    }
    if let Some(key) = key
        && key != pb.resource.as_bytes()
    {
        return Err(WireError::KeyMismatch {
            key: String::from_utf8_lossy(key).into_owned(),
            resource: pb.resource,
        });
    }
    if pb.window_end_ms <= pb.window_start_ms {
        return Err(field("window_end_ms", "not after window_start_ms"));
    }
    if pb.errors > pb.responses {
        return Err(field("errors", "more errors than responses"));
    }
    let latency_us = if pb.latency_us_hdr.is_empty() {
        new_latency_histogram()
    } else {
        let mut h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut pb.latency_us_hdr.as_slice())
            .map_err(|e| WireError::Histogram(format!("{e:?}")))?;
        h.auto(true);
        h
    };
    let mut endpoints = BTreeMap::new();
    for e in pb.endpoints {
        *endpoints.entry(e.endpoint).or_default() += e.requests;
    }
    Ok(Observation {
        agent_id: pb.agent_id,
        resource: pb.resource,
        window_start_ms: pb.window_start_ms,
        window_end_ms: pb.window_end_ms,
        seq: pb.seq,
        summary: WindowCounts {
            requests: pb.requests,
            responses: pb.responses,
            errors: pb.errors,
            bytes_in: pb.bytes_in,
            bytes_out: pb.bytes_out,
            latency_us,
            endpoints,
            endpoints_other: pb.endpoints_other,
        },
    })
}

/// A JSON-friendly digest of merged counts, carried in scale events and state snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountsDigest {
    pub requests: u64,
    pub responses: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency_samples: u64,
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
    pub top_endpoints: Vec<(String, u64)>,
    pub endpoints_other: u64,
}

impl From<&WindowCounts> for CountsDigest {
    fn from(c: &WindowCounts) -> Self {
        let top = c.endpoints.iter().map(|(e, n)| (e.clone(), *n)).collect();
        Self::with_endpoints(c, top)
    }
}

impl From<WindowCounts> for CountsDigest {
    /// The digest of counts no longer needed: endpoint names are moved, not copied.
    fn from(mut c: WindowCounts) -> Self {
        let top = std::mem::take(&mut c.endpoints).into_iter().collect();
        Self::with_endpoints(&c, top)
    }
}

impl CountsDigest {
    /// The digest of `c`, whose endpoints are `top` (in any order).
    fn with_endpoints(c: &WindowCounts, mut top: Vec<(String, u64)>) -> Self {
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let h = &c.latency_us;
        let (p50, p99) = if h.is_empty() {
            (0, 0)
        } else {
            (h.value_at_quantile(0.5), high_quantile(h, 0.99))
        };
        Self {
            requests: c.requests,
            responses: c.responses,
            errors: c.errors,
            error_rate: c.error_rate(),
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            latency_samples: h.len(),
            latency_p50_us: p50,
            latency_p99_us: p99,
            latency_max_us: if h.is_empty() { 0 } else { h.max() },
            top_endpoints: top,
            endpoints_other: c.endpoints_other,
        }
    }
}

/// Exactly `h.value_at_quantile(q)` for a high `q`, found by walking down from the maximum: a
/// forward walk reads the counts array up to the quantile (thousands of buckets at 3
/// significant digits), where the tail above a high quantile holds few samples. Falls back to
/// the forward walk when the tail spans many buckets.
pub fn high_quantile(h: &Histogram<u64>, q: f64) -> u64 {
    const MAX_STEPS: usize = 64;
    if h.is_empty() || !(0.5..=1.0).contains(&q) {
        return h.value_at_quantile(q);
    }
    // The answer is the lowest bucket with at least `target` samples at or below it, i.e. at
    // most `len - target` above it.
    let target = ((q * h.len() as f64).ceil() as u64).max(1);
    let allowed_above = h.len().saturating_sub(target);
    let mut value = h.max();
    let mut above = 0u64;
    for _ in 0..MAX_STEPS {
        let count = h.count_at(value);
        if above + count > allowed_above {
            return h.highest_equivalent(value);
        }
        above += count;
        let low = h.lowest_equivalent(value);
        if low == 0 {
            break;
        }
        value = low - 1;
    }
    h.value_at_quantile(q)
}

/// Serialise a histogram for a state snapshot (V2, base-16 text would double it; keep bytes).
pub fn histogram_bytes(h: &Histogram<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    if V2Serializer::new().serialize(h, &mut out).is_err() {
        out.clear();
    }
    out
}

/// Inverse of [`histogram_bytes`].
pub fn histogram_from_bytes(bytes: &[u8]) -> Result<Histogram<u64>, WireError> {
    if bytes.is_empty() {
        return Ok(new_latency_histogram());
    }
    let mut h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| WireError::Histogram(format!("{e:?}")))?;
    h.auto(true);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Observation {
        let mut counts = WindowCounts {
            requests: 10,
            responses: 9,
            errors: 1,
            bytes_in: 1000,
            bytes_out: 5000,
            ..WindowCounts::default()
        };
        for v in [100, 200, 300, 4000] {
            counts.latency_us.record(v).expect("record");
        }
        counts.endpoints.insert("GET /a".into(), 7);
        counts.endpoints.insert("GET /b".into(), 3);
        Observation {
            agent_id: "agent-1".into(),
            resource: "api".into(),
            window_start_ms: 60_000,
            window_end_ms: 120_000,
            seq: 4,
            summary: counts,
        }
    }

    #[test]
    fn round_trip_is_lossless() {
        let obs = sample();
        let bytes = encode_observation(&obs);
        let back = decode_observation(Some(b"api"), &bytes).expect("decode");
        assert_eq!(back, obs);
        // Compact: far smaller than the JSON of the same content.
        assert!(bytes.len() < 300, "{} bytes", bytes.len());
    }

    #[test]
    fn garbage_and_mismatches_are_errors_not_panics() {
        assert!(matches!(
            decode_observation(None, b""),
            Err(WireError::Empty)
        ));
        assert!(decode_observation(None, b"\xff\xff\xff\xff not protobuf").is_err());
        let bytes = encode_observation(&sample());
        assert!(matches!(
            decode_observation(Some(b"other"), &bytes),
            Err(WireError::KeyMismatch { .. })
        ));
        let mut bad = sample();
        bad.window_end_ms = bad.window_start_ms;
        assert!(decode_observation(None, &encode_observation(&bad)).is_err());
        // Truncations of a valid record never panic.
        for cut in 0..bytes.len() {
            let _ = decode_observation(None, &bytes[..cut]);
        }
    }

    /// The walk down from the maximum answers exactly what the forward walk answers, on
    /// histograms with dense, sparse, single-valued and long tails.
    #[test]
    fn high_quantile_equals_value_at_quantile() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..400 {
            let mut h = new_latency_histogram();
            let samples = 1 + next() % 300;
            let spread = [10, 1_000, 100_000, 10_000_000][case % 4];
            for _ in 0..samples {
                let v = 1 + next() % spread;
                h.record_n(v, 1 + next() % 3).expect("record");
            }
            if case % 7 == 0 {
                h.record(50_000_000).expect("outlier");
            }
            for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
                assert_eq!(
                    high_quantile(&h, q),
                    h.value_at_quantile(q),
                    "case {case}, q {q}, {samples} samples up to {spread}"
                );
            }
        }
    }

    #[test]
    fn merge_sums_and_keeps_totals_when_truncating_top_k() {
        let a = sample().summary;
        let mut b = sample().summary;
        b.endpoints.clear();
        b.endpoints.insert("GET /c".into(), 5);
        let mut merged = a.clone();
        merged.merge(&b, 2);
        assert_eq!(merged.requests, 20);
        assert_eq!(merged.latency_us.len(), 8);
        assert_eq!(merged.endpoints.len(), 2);
        let listed: u64 = merged.endpoints.values().sum();
        assert_eq!(listed + merged.endpoints_other, 7 + 3 + 5);
        assert_eq!(merged.endpoints.get("GET /a"), Some(&7));
        assert_eq!(merged.endpoints.get("GET /c"), Some(&5));
    }
}
