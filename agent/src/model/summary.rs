//! [`WindowSummary`]: what one entity did in one closed window. Mergeable (sums, histogram
//! merge, endpoint union), so the collector can combine the summaries many agents make of the
//! same resource and window. Histograms stay in the windows' sparse
//! [`crate::windows::LogHistogram`] (the bucket layout of a 2-significant-digit `HdrHistogram`):
//! closing a window copies the buckets it hit instead of allocating two dense `HdrHistogram`s.
//! They become `HdrHistogram`s only where one is needed (the wire, text forms), as base64 V2.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use shadowtap_core::wire::truncate_top_k;

use super::ids::EntityId;
use crate::windows::{BASE_NS, Level, LogHistogram, WindowAcc};

/// Responses per status class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusClasses {
    #[serde(rename = "1xx")]
    pub informational: u64,
    #[serde(rename = "2xx")]
    pub success: u64,
    #[serde(rename = "3xx")]
    pub redirection: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
    /// No status line captured, or a status outside 100..=599.
    pub unknown: u64,
}

impl StatusClasses {
    fn from_slots(s: [u64; 6]) -> Self {
        Self {
            unknown: s[0],
            informational: s[1],
            success: s[2],
            redirection: s[3],
            client_error: s[4],
            server_error: s[5],
        }
    }

    fn add(&mut self, o: &StatusClasses) {
        self.informational += o.informational;
        self.success += o.success;
        self.redirection += o.redirection;
        self.client_error += o.client_error;
        self.server_error += o.server_error;
        self.unknown += o.unknown;
    }
}

/// One entity's activity in one closed window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowSummary {
    pub entity: EntityId,
    /// Window start, unix ns (inclusive).
    pub window_start_ns: u64,
    /// 1 s, 10 s or 60 s in ns.
    pub window_len_ns: u64,
    pub requests: u64,
    pub responses: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub tls_handshakes: u64,
    /// Highest number of concurrently open connections. Merging summaries of other agents
    /// adds them up (each agent sees its own connections).
    pub concurrent_connections_max: u64,
    /// Client → service: request head segment plus declared body (`Content-Length`).
    pub bytes_in: u64,
    /// Service → client: response head segment plus declared body.
    pub bytes_out: u64,
    pub status: StatusClasses,
    /// Request sizes (as `bytes_in` counts them), bytes.
    #[serde(with = "hdr_base64::log")]
    pub request_size_bytes: LogHistogram,
    /// Request → response latency of paired responses, µs.
    #[serde(with = "hdr_base64::log")]
    pub latency_us: LogHistogram,
    /// Requests per `METHOD /endpoint/{id}` template for the busiest templates.
    pub endpoints: BTreeMap<String, u64>,
    /// Requests to templates not listed in `endpoints`.
    pub endpoints_other: u64,
}

impl WindowSummary {
    /// An empty summary of `entity` for the window starting at `window_start_ns`.
    pub fn empty(entity: EntityId, window_start_ns: u64, window_len_ns: u64) -> Self {
        Self {
            entity,
            window_start_ns,
            window_len_ns,
            requests: 0,
            responses: 0,
            connections_opened: 0,
            connections_closed: 0,
            tls_handshakes: 0,
            concurrent_connections_max: 0,
            bytes_in: 0,
            bytes_out: 0,
            status: StatusClasses::default(),
            request_size_bytes: LogHistogram::new(),
            latency_us: LogHistogram::new(),
            endpoints: BTreeMap::new(),
            endpoints_other: 0,
        }
    }

    /// Builds the summary of a closed window; `templates[id]` names endpoint template `id`.
    pub(crate) fn from_acc(
        entity: EntityId,
        level: Level,
        start_secs: u64,
        acc: &WindowAcc,
        templates: &[Box<str>],
        top_k: usize,
    ) -> Self {
        let mut endpoints = BTreeMap::new();
        let mut listed = 0u64;
        for (id, count) in acc.endpoints.ranked().into_iter().take(top_k) {
            let name = templates
                .get(id as usize)
                .map_or(super::ids::OTHER_TEMPLATE, |t| &**t);
            *endpoints.entry(name.to_owned()).or_insert(0) += u64::from(count);
            listed += u64::from(count);
        }
        Self {
            entity,
            window_start_ns: start_secs.saturating_mul(BASE_NS),
            window_len_ns: level.len_ns(),
            requests: acc.requests,
            responses: acc.responses,
            connections_opened: acc.conns_opened,
            connections_closed: acc.conns_closed,
            tls_handshakes: acc.tls_handshakes,
            concurrent_connections_max: acc.concurrent_max,
            bytes_in: acc.bytes_in,
            bytes_out: acc.bytes_out,
            status: StatusClasses::from_slots(acc.status),
            request_size_bytes: acc.request_size.clone(),
            latency_us: acc.latency_us.clone(),
            endpoints,
            endpoints_other: acc.requests.saturating_sub(listed),
        }
    }

    /// The window length as a [`Level`], when it is one of the standard lengths.
    pub fn level(&self) -> Option<Level> {
        Level::from_len_ns(self.window_len_ns)
    }

    /// Window end, unix ns (exclusive).
    pub fn window_end_ns(&self) -> u64 {
        self.window_start_ns.saturating_add(self.window_len_ns)
    }

    /// Server errors (5xx) per response (0 without responses).
    pub fn error_rate(&self) -> f64 {
        ratio(self.status.server_error, self.responses)
    }

    /// Client errors (4xx) per response (0 without responses).
    pub fn client_error_rate(&self) -> f64 {
        ratio(self.status.client_error, self.responses)
    }

    /// Adds `other` into `self`: counts and bytes add up, histograms merge, endpoint counts
    /// are united and summed. Meant for summaries of the same entity and window from other
    /// agents; given a different window, the result spans both. Exact and associative, so
    /// the order in which a collector merges does not matter.
    pub fn merge(&mut self, other: &WindowSummary) {
        if other.window_start_ns != self.window_start_ns
            || other.window_len_ns != self.window_len_ns
        {
            let start = self.window_start_ns.min(other.window_start_ns);
            let end = self.window_end_ns().max(other.window_end_ns());
            self.window_start_ns = start;
            self.window_len_ns = end - start;
        }
        self.requests += other.requests;
        self.responses += other.responses;
        self.connections_opened += other.connections_opened;
        self.connections_closed += other.connections_closed;
        self.tls_handshakes += other.tls_handshakes;
        self.concurrent_connections_max += other.concurrent_connections_max;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.status.add(&other.status);
        self.request_size_bytes.merge(&other.request_size_bytes);
        self.latency_us.merge(&other.latency_us);
        for (endpoint, n) in &other.endpoints {
            *self.endpoints.entry(endpoint.clone()).or_insert(0) += n;
        }
        self.endpoints_other += other.endpoints_other;
    }

    /// Keeps the `top_k` busiest endpoints (ties by name); the rest moves to
    /// `endpoints_other`, so totals are kept.
    pub fn truncate_endpoints(&mut self, top_k: usize) {
        truncate_top_k(&mut self.endpoints, &mut self.endpoints_other, top_k);
    }
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

/// Largest base64 histogram accepted when decoding (a guard against garbage).
const MAX_HISTOGRAM_B64: usize = 1 << 20;

/// `HdrHistogram` V2 serialisation, base64 in text formats.
pub mod hdr_base64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use hdrhistogram::Histogram;
    use hdrhistogram::serialization::{
        Deserializer as HdrDeserializer, Serializer as _, V2Serializer,
    };
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::Error as _};

    use super::MAX_HISTOGRAM_B64;

    /// V2 bytes of `h`.
    pub fn encode(h: &Histogram<u64>) -> Result<Vec<u8>, String> {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(h, &mut bytes)
            .map_err(|e| format!("{e:?}"))?;
        Ok(bytes)
    }

    /// A histogram from V2 bytes (auto-resizing, so it can absorb merges).
    pub fn decode(bytes: &[u8]) -> Result<Histogram<u64>, String> {
        let mut h: Histogram<u64> = HdrDeserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| format!("{e:?}"))?;
        h.auto(true);
        Ok(h)
    }

    pub fn serialize<S: Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        let bytes = encode(h).map_err(S::Error::custom)?;
        s.serialize_str(&BASE64.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if text.len() > MAX_HISTOGRAM_B64 {
            return Err(D::Error::custom(format!(
                "histogram of {} base64 bytes exceeds {MAX_HISTOGRAM_B64}",
                text.len()
            )));
        }
        let bytes = BASE64
            .decode(text.as_bytes())
            .map_err(|e| D::Error::custom(format!("histogram base64: {e}")))?;
        decode(&bytes).map_err(|e| D::Error::custom(format!("histogram: {e}")))
    }

    /// The same text form for a [`crate::windows::LogHistogram`] (converted at the edge).
    pub mod log {
        use serde::{Deserializer, Serializer};

        use crate::windows::LogHistogram;

        pub fn serialize<S: Serializer>(h: &LogHistogram, s: S) -> Result<S::Ok, S::Error> {
            super::serialize(&h.to_hdr(), s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<LogHistogram, D::Error> {
            super::deserialize(d).map(|h| LogHistogram::from_hdr(&h))
        }
    }
}
