//! `shadowtap.scale-events`: `CloudEvents` 1.0, JSON structured mode.
//!
//! The `id` is a digest of (resource, window start, window end): a collector decides at most
//! once per resource and merged window, so a redelivery or a replay after a crash carries the
//! same id and consumers drop it. `source` names the collector group, so (source, id) is unique
//! fleet-wide however many collectors share the work.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::decision::{Action, Decision, Explanation, LifecycleStage, LifecycleStep, Reason};

use crate::wire::CountsDigest;

mod json;

/// Version of the `data` payload.
pub const SCALE_EVENT_DATA_VERSION: u32 = 1;
/// `CloudEvents` `type` of a scale-out.
pub const TYPE_SCALE_OUT: &str = "io.shadowtap.scale.out";
/// `CloudEvents` `type` of a scale-in.
pub const TYPE_SCALE_IN: &str = "io.shadowtap.scale.in";
/// `CloudEvents` `specversion`.
const SPEC_VERSION: &str = "1.0";
/// `CloudEvents` `datacontenttype` of the `data` payload.
const DATA_CONTENT_TYPE: &str = "application/json";

/// A scale event as published (`CloudEvents` 1.0 structured JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The resource id (also the Kafka key).
    pub subject: String,
    /// Decision time, RFC 3339 UTC.
    pub time: String,
    pub datacontenttype: String,
    pub data: ScaleEventData,
}

/// The event payload: what to do, and everything that led to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleEventData {
    pub schema_version: u32,
    pub resource: String,
    pub action: Action,
    pub current_instances: u32,
    pub target_instances: u32,
    pub reason: Reason,
    /// The lifecycle stage this decision starts.
    pub stage: Option<LifecycleStage>,
    pub lifecycle: Vec<LifecycleStep>,
    pub decided_at_ms: u64,
    pub explanation: Explanation,
    /// The merged window that triggered the decision.
    pub window: WindowDigest,
}

/// The merged window behind a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowDigest {
    pub start_ms: u64,
    pub end_ms: u64,
    /// Agents whose observations were merged, sorted.
    pub agents: Vec<String>,
    pub counts: CountsDigest,
}

/// The deterministic event id of (resource, window).
pub fn event_id(resource: &str, window_start_ms: u64, window_end_ms: u64) -> String {
    let mut h = Sha256::new();
    h.update(resource.as_bytes());
    h.update([0]);
    h.update(window_start_ms.to_be_bytes());
    h.update(window_end_ms.to_be_bytes());
    let digest = h.finalize();
    hex(&digest[..16])
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    // By table: `write!("{b:02x}")` per byte was most of an event id's cost.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

impl ScaleEvent {
    /// The event for `decision`, or `None` for a hold (holds are not published).
    pub fn from_decision(source: &str, decision: &Decision, window: WindowDigest) -> Option<Self> {
        if decision.action == Action::Hold {
            return None;
        }
        Self::from_owned_decision(source, decision.clone(), window)
    }

    /// [`from_decision`](Self::from_decision), taking the decision's strings and plan rather
    /// than copying them.
    pub fn from_owned_decision(
        source: &str,
        decision: Decision,
        window: WindowDigest,
    ) -> Option<Self> {
        let event_type = event_type(decision.action)?;
        Some(Self {
            specversion: SPEC_VERSION.to_owned(),
            id: event_id(&decision.resource, window.start_ms, window.end_ms),
            source: source.to_owned(),
            event_type: event_type.to_owned(),
            subject: decision.resource.clone(),
            time: rfc3339_millis(decision.at_ms),
            datacontenttype: DATA_CONTENT_TYPE.to_owned(),
            data: ScaleEventData {
                schema_version: SCALE_EVENT_DATA_VERSION,
                resource: decision.resource,
                action: decision.action,
                current_instances: decision.current_instances,
                target_instances: decision.desired_instances,
                reason: decision.reason,
                stage: decision.stage,
                lifecycle: decision.lifecycle,
                decided_at_ms: decision.at_ms,
                explanation: decision.explanation,
                window,
            },
        })
    }

    /// One JSON line (no trailing newline).
    pub fn to_json(&self) -> String {
        // Every field is a plain string, number or derived enum: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The JSON of the scale event for `decision` (`None` for a hold), written from the decision
/// and window without building the event: byte for byte the serde JSON of
/// `ScaleEvent::from_decision(source, decision, window)`, at a fraction of its cost
/// (`json.rs`).
pub fn event_json(source: &str, decision: &Decision, window: &WindowDigest) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(2048);
    write_event_json(source, decision, window, &mut out).then_some(out)
}

/// [`event_json`], appended to `out`; false (and nothing written) for a hold.
pub fn write_event_json(
    source: &str,
    decision: &Decision,
    window: &WindowDigest,
    out: &mut Vec<u8>,
) -> bool {
    let Some(event_type) = event_type(decision.action) else {
        return false;
    };
    let id = event_id(&decision.resource, window.start_ms, window.end_ms);
    let time = rfc3339_millis(decision.at_ms);
    let envelope = json::Envelope {
        id: &id,
        source,
        event_type,
        time: &time,
    };
    json::write_event(&envelope, decision, window, out);
    true
}

/// The event type of `action` (`None`: a hold has no event).
fn event_type(action: Action) -> Option<&'static str> {
    match action {
        Action::ScaleOut => Some(TYPE_SCALE_OUT),
        Action::ScaleIn => Some(TYPE_SCALE_IN),
        Action::Hold => None,
    }
}

/// Unix ms → `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_millis(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let ms = unix_ms % 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let Ok(year @ 0..=9999) = u64::try_from(y) else {
        return format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        );
    };
    // Digit by digit: the formatter's padding machinery was a tenth of writing an event.
    let mut out = String::with_capacity(24);
    for (value, width, then) in [
        (year, 4, '-'),
        (u64::from(m), 2, '-'),
        (u64::from(d), 2, 'T'),
        (rem / 3600, 2, ':'),
        ((rem % 3600) / 60, 2, ':'),
        (rem % 60, 2, '.'),
        (ms, 3, 'Z'),
    ] {
        for k in (0..width).rev() {
            out.push(char::from(b'0' + ((value / 10_u64.pow(k)) % 10) as u8));
        }
        out.push(then);
    }
    out
}

// Howard Hinnant's days-from-civil inverse, for dates from 1970 on.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(
            rfc3339_millis(1_700_000_000_000),
            "2023-11-14T22:13:20.000Z"
        );
    }

    #[test]
    fn rfc3339_writes_what_the_formatter_writes() {
        let formatted = |unix_ms: u64| {
            let secs = unix_ms / 1000;
            let rem = secs % 86_400;
            let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).expect("days"));
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                rem / 3600,
                (rem % 3600) / 60,
                rem % 60,
                unix_ms % 1000
            )
        };
        // Every day from 1970 to past 2100 at a varying time of day, and the far future.
        let mut t = 0_u64;
        while t < 4_200_000_000_000 {
            assert_eq!(rfc3339_millis(t), formatted(t));
            t += 86_400_000 + 3_723_456;
        }
        for t in [253_402_300_799_999, 253_402_300_800_000, u64::MAX / 1000] {
            assert_eq!(rfc3339_millis(t), formatted(t), "{t}");
        }
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(event_id("api", 0, 60_000), event_id("api", 0, 60_000));
        assert_ne!(event_id("api", 0, 60_000), event_id("api", 60_000, 120_000));
        assert_ne!(event_id("api", 0, 60_000), event_id("web", 0, 60_000));
        assert_eq!(event_id("api", 0, 60_000).len(), 32);
    }
}
