//! The agent's JSON-lines output, and tallies over it.
//!
//! Contract (from the project brief): one object per line, `kind` first; packet-derived events
//! carry `ts_ns`, `iface`, `direction`, `src`, `dst`, `src_port`, `dst_port`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result, io_context};

/// Kinds the contract defines.
pub const KNOWN_KINDS: &[&str] = &[
    "conn_open",
    "conn_close",
    "http_request",
    "http_response",
    "tls_client_hello",
    "flow",
    "stats",
];

#[derive(Clone, Debug, Default)]
pub struct EventLog {
    pub events: Vec<Value>,
}

impl EventLog {
    /// Parses JSON lines. With `allow_partial_tail`, a last line without its newline (a writer
    /// still at work) is ignored instead of rejected.
    pub fn parse(text: &str, source_name: &str, allow_partial_tail: bool) -> Result<Self> {
        let complete = if allow_partial_tail && !text.ends_with('\n') {
            text.rfind('\n').map_or("", |end| &text[..=end])
        } else {
            text
        };
        let mut events = Vec::new();
        for (number, line) in complete.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parse_error = |reason: String| Error::Parse {
                source_name: format!("{source_name} line {}", number + 1),
                reason,
            };
            if !line.starts_with("{\"kind\":") {
                return Err(parse_error(format!(
                    "line does not start with {{\"kind\": as the contract requires: {}",
                    truncate(line, 200)
                )));
            }
            let value: Value = serde_json::from_str(line)
                .map_err(|e| parse_error(format!("{e}: {}", truncate(line, 200))))?;
            events.push(value);
        }
        Ok(Self { events })
    }

    pub fn read(path: &Path, allow_partial_tail: bool) -> Result<Self> {
        let bytes =
            std::fs::read(path).map_err(io_context(format!("reading {}", path.display())))?;
        Self::parse(
            &String::from_utf8_lossy(&bytes),
            &path.display().to_string(),
            allow_partial_tail,
        )
    }

    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| kind_of(e) == Some(kind))
    }

    pub fn count(&self, kind: &str) -> u64 {
        self.of_kind(kind).count() as u64
    }

    pub fn count_where(&self, kind: &str, keep: impl Fn(&Value) -> bool) -> u64 {
        self.of_kind(kind).filter(|e| keep(e)).count() as u64
    }

    /// Number of events of `kind` per rendered value of `field` (see [`render`]).
    pub fn tally(&self, kind: &str, field: &str) -> BTreeMap<String, u64> {
        self.tally_where(kind, field, |_| true)
    }

    pub fn tally_where(
        &self,
        kind: &str,
        field: &str,
        keep: impl Fn(&Value) -> bool,
    ) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for event in self.of_kind(kind).filter(|e| keep(e)) {
            *out.entry(render(event.get(field))).or_insert(0) += 1;
        }
        out
    }

    /// Sum of a numeric field over events of `kind` that `keep` accepts.
    pub fn sum_where(&self, kind: &str, field: &str, keep: impl Fn(&Value) -> bool) -> u64 {
        self.of_kind(kind)
            .filter(|e| keep(e))
            .filter_map(|e| e.get(field).and_then(Value::as_u64))
            .sum()
    }

    /// The last `stats` line (the final one after a clean shutdown).
    pub fn last_stats(&self) -> Option<&Value> {
        self.of_kind("stats").last()
    }

    /// Events whose kind is not in the contract, if any.
    pub fn unknown_kinds(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(kind_of)
            .filter(|k| !KNOWN_KINDS.contains(k))
            .map(str::to_owned)
            .collect()
    }
}

pub fn kind_of(event: &Value) -> Option<&str> {
    event.get("kind").and_then(Value::as_str)
}

/// A field rendered as a tally key: strings as-is, numbers and booleans in JSON form, a missing
/// field as `<missing>` and null as `null`.
pub fn render(value: Option<&Value>) -> String {
    match value {
        None => "<missing>".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

pub fn field_u64(event: &Value, field: &str) -> Option<u64> {
    event.get(field).and_then(Value::as_u64)
}

pub fn field_str<'a>(event: &'a Value, field: &str) -> Option<&'a str> {
    event.get(field).and_then(Value::as_str)
}

/// Sum of every numeric field named `key` anywhere inside `stats` (counters kept per direction
/// or per CPU appear several times). `None` when no field has that name.
pub fn stat_total(stats: &Value, key: &str) -> Option<u64> {
    fn walk(value: &Value, key: &str, total: &mut Option<u64>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == key
                        && let Some(n) = v.as_u64()
                    {
                        *total = Some(total.unwrap_or(0) + n);
                    } else {
                        walk(v, key, total);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, key, total)),
            _ => {}
        }
    }
    let mut total = None;
    walk(stats, key, &mut total);
    total
}

/// The first of `keys` present in `stats` (summed as in [`stat_total`]).
pub fn stat_any(stats: &Value, keys: &[&str]) -> Option<(String, u64)> {
    keys.iter()
        .find_map(|k| stat_total(stats, k).map(|v| ((*k).to_owned(), v)))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_tallies() {
        let text = concat!(
            r#"{"kind":"http_request","host":"a","direction":"ingress"}"#,
            "\n",
            r#"{"kind":"http_request","host":null,"direction":"ingress"}"#,
            "\n",
            r#"{"kind":"http_response","status":404,"bytes":10}"#,
            "\n",
            r#"{"kind":"stats","kernel":{"ingress":{"ringbuf_reserve_failed":2},"egress":{"ringbuf_reserve_failed":3}}}"#,
            "\n",
            r#"{"kind":"flow","payload_by"#,
        );
        let log = EventLog::parse(text, "test", true).expect("valid lines");
        assert_eq!(log.count("http_request"), 2);
        assert_eq!(log.tally("http_request", "host").get("a"), Some(&1));
        assert_eq!(log.tally("http_request", "host").get("null"), Some(&1));
        assert_eq!(log.tally("http_response", "status").get("404"), Some(&1));
        assert_eq!(log.sum_where("http_response", "bytes", |_| true), 10);
        let stats = log.last_stats().expect("stats line");
        assert_eq!(stat_total(stats, "ringbuf_reserve_failed"), Some(5));
        assert_eq!(stat_total(stats, "absent"), None);
        assert!(EventLog::parse(text, "test", false).is_err());
    }

    #[test]
    fn rejects_kind_not_first() {
        let err = EventLog::parse("{\"a\":1,\"kind\":\"flow\"}\n", "test", false);
        assert!(err.is_err());
    }
}
