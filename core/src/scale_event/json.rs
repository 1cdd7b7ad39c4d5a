//! A scale event's JSON, written field by field.
//!
//! The collector publishes one event per decision that changes the count, and the serde
//! serialiser spent most of its time escaping strings a byte at a time (the summary, hints and
//! endpoint names are most of an event's 2 kB). This writer checks eight bytes at a time and
//! copies a string whole when nothing in it needs escaping; anything else (an escape, a float,
//! an enum) goes through `serde_json` itself. The output is byte for byte serde's: the tests
//! compare the two on events with every field set, so a field added to the types and not
//! here fails them. `ScaleEvent::to_json` stays serde's: only the collector's publisher writes
//! events at a rate where this matters.

use serde::Serialize;

use super::{DATA_CONTENT_TYPE, SCALE_EVENT_DATA_VERSION, SPEC_VERSION, WindowDigest};
use crate::{
    decision::{Decision, Explanation, LifecycleStep},
    forecast::ForecastPoint,
    wire::CountsDigest,
};

/// The event's own fields that are not the decision's: its id, source, type and time.
pub(super) struct Envelope<'a> {
    pub id: &'a str,
    pub source: &'a str,
    pub event_type: &'a str,
    pub time: &'a str,
}

/// The event of `decision` on `window` as compact JSON, appended to `out`: exactly what
/// `serde_json::to_vec` writes for the [`super::ScaleEvent`] of the same parts.
pub(super) fn write_event(
    envelope: &Envelope<'_>,
    decision: &Decision,
    window: &WindowDigest,
    out: &mut Vec<u8>,
) {
    Out(out).event(envelope, decision, window);
}

struct Out<'o>(&'o mut Vec<u8>);

impl Out<'_> {
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    /// A quoted string: copied whole when no byte needs escaping, else serde's escaping.
    fn str(&mut self, s: &str) {
        if needs_escape(s.as_bytes()) {
            self.serde(s);
        } else {
            self.0.reserve(s.len() + 2);
            self.0.push(b'"');
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(b'"');
        }
    }

    /// Anything else, through `serde_json` (numbers, enums, options of them).
    fn serde<T: Serialize + ?Sized>(&mut self, v: &T) {
        // Writing plain data into a Vec cannot fail (non-finite floats become `null`).
        let _ = serde_json::to_writer(&mut *self.0, v);
    }

    /// `,"key":` (no comma before the first field: `first`).
    fn key(&mut self, key: &str, first: bool) {
        if !first {
            self.0.push(b',');
        }
        self.0.push(b'"');
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    fn list<T>(&mut self, items: &[T], mut each: impl FnMut(&mut Self, &T)) {
        self.0.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.0.push(b',');
            }
            each(self, item);
        }
        self.0.push(b']');
    }

    fn event(&mut self, e: &Envelope<'_>, d: &Decision, window: &WindowDigest) {
        self.raw("{");
        self.key("specversion", true);
        self.str(SPEC_VERSION);
        self.key("id", false);
        self.str(e.id);
        self.key("source", false);
        self.str(e.source);
        self.key("type", false);
        self.str(e.event_type);
        self.key("subject", false);
        self.str(&d.resource);
        self.key("time", false);
        self.str(e.time);
        self.key("datacontenttype", false);
        self.str(DATA_CONTENT_TYPE);
        self.key("data", false);
        self.data(d, window);
        self.raw("}");
    }

    /// [`super::ScaleEventData`] of `d`.
    fn data(&mut self, d: &Decision, window: &WindowDigest) {
        self.raw("{");
        self.key("schema_version", true);
        self.serde(&SCALE_EVENT_DATA_VERSION);
        self.key("resource", false);
        self.str(&d.resource);
        self.key("action", false);
        self.serde(&d.action);
        self.key("current_instances", false);
        self.serde(&d.current_instances);
        self.key("target_instances", false);
        self.serde(&d.desired_instances);
        self.key("reason", false);
        self.serde(&d.reason);
        self.key("stage", false);
        self.serde(&d.stage);
        self.key("lifecycle", false);
        self.list(&d.lifecycle, Self::step);
        self.key("decided_at_ms", false);
        self.serde(&d.at_ms);
        self.key("explanation", false);
        self.explanation(&d.explanation);
        self.key("window", false);
        self.window(window);
        self.raw("}");
    }

    fn step(&mut self, s: &LifecycleStep) {
        self.raw("{");
        self.key("stage", true);
        self.serde(&s.stage);
        self.key("at_ms", false);
        self.serde(&s.at_ms);
        self.key("instances", false);
        self.serde(&s.instances);
        self.key("hint", false);
        self.str(&s.hint);
        self.raw("}");
    }

    fn explanation(&mut self, x: &Explanation) {
        self.raw("{");
        self.key("summary", true);
        self.str(&x.summary);
        self.key("window_start_ms", false);
        self.serde(&x.window_start_ms);
        self.key("window_end_ms", false);
        self.serde(&x.window_end_ms);
        self.key("forecast", false);
        self.list(&x.forecast, Self::point);
        self.key("level", false);
        self.serde(&x.level);
        self.key("widening", false);
        self.serde(&x.widening);
        self.key("model", false);
        self.serde(&x.model);
        self.key("peak_upper", false);
        self.serde(&x.peak_upper);
        self.key("peak_point", false);
        self.serde(&x.peak_point);
        self.key("peak_at_ms", false);
        self.serde(&x.peak_at_ms);
        self.key("headroom", false);
        self.serde(&x.headroom);
        self.key("threshold_per_instance", false);
        self.serde(&x.threshold_per_instance);
        self.key("required_instances", false);
        self.serde(&x.required_instances);
        self.key("sized_by", false);
        self.serde(&x.sized_by);
        self.key("stabilised_instances", false);
        self.serde(&x.stabilised_instances);
        self.key("outliers_ms", false);
        self.serde(&x.outliers_ms);
        self.key("changepoints_ms", false);
        self.serde(&x.changepoints_ms);
        self.key("gap_windows", false);
        self.serde(&x.gap_windows);
        self.key("behind_ms", false);
        self.serde(&x.behind_ms);
        self.key("skill_fallback", false);
        self.serde(&x.skill_fallback);
        self.key("recent_mase", false);
        self.serde(&x.recent_mase);
        self.key("ceiling_follows_point", false);
        self.serde(&x.ceiling_follows_point);
        self.key("cost_capped", false);
        self.serde(&x.cost_capped);
        self.key("reactive_instances", false);
        self.serde(&x.reactive_instances);
        self.key("reactive_floored", false);
        self.serde(&x.reactive_floored);
        self.raw("}");
    }

    fn point(&mut self, p: &ForecastPoint) {
        self.raw("{");
        self.key("start_ms", true);
        self.serde(&p.start_ms);
        self.key("point", false);
        self.serde(&p.point);
        self.key("lower", false);
        self.serde(&p.lower);
        self.key("upper", false);
        self.serde(&p.upper);
        self.raw("}");
    }

    fn window(&mut self, w: &WindowDigest) {
        self.raw("{");
        self.key("start_ms", true);
        self.serde(&w.start_ms);
        self.key("end_ms", false);
        self.serde(&w.end_ms);
        self.key("agents", false);
        self.list(&w.agents, |o, a| o.str(a));
        self.key("counts", false);
        self.counts(&w.counts);
        self.raw("}");
    }

    fn counts(&mut self, c: &CountsDigest) {
        self.raw("{");
        self.key("requests", true);
        self.serde(&c.requests);
        self.key("responses", false);
        self.serde(&c.responses);
        self.key("errors", false);
        self.serde(&c.errors);
        self.key("error_rate", false);
        self.serde(&c.error_rate);
        self.key("bytes_in", false);
        self.serde(&c.bytes_in);
        self.key("bytes_out", false);
        self.serde(&c.bytes_out);
        self.key("latency_samples", false);
        self.serde(&c.latency_samples);
        self.key("latency_p50_us", false);
        self.serde(&c.latency_p50_us);
        self.key("latency_p99_us", false);
        self.serde(&c.latency_p99_us);
        self.key("latency_max_us", false);
        self.serde(&c.latency_max_us);
        self.key("top_endpoints", false);
        self.list(&c.top_endpoints, |o, (endpoint, n)| {
            o.raw("[");
            o.str(endpoint);
            o.raw(",");
            o.serde(n);
            o.raw("]");
        });
        self.key("endpoints_other", false);
        self.serde(&c.endpoints_other);
        self.raw("}");
    }
}

/// Whether `bytes` holds a byte JSON escapes: a control character, `"` or `\`.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte of `x` is zero exactly when the high bit of its byte in `zero_bytes(x)` is set
    // (the borrow from a zero byte only reaches bytes above it, which are checked anyway).
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let (words, tail) = bytes.as_chunks::<8>();
    for w in words {
        let x = u64::from_ne_bytes(*w);
        // Bytes below 0x20: subtracting 0x20 borrows into the high bit only for them (bytes
        // of 0x80 and above have their own high bit masked off by `!x`).
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        let quote = zero_bytes(x ^ (ONES * u64::from(b'"')));
        let backslash = zero_bytes(x ^ (ONES * u64::from(b'\\')));
        if control | quote | backslash != 0 {
            return true;
        }
    }
    tail.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ScaleEvent,
        decision::{Action, CeilingBasis, Decision, LifecycleStage, Reason, SizingBasis},
        forecast::ModelKind,
    };

    /// Strings with every kind of byte serde treats differently.
    const AWKWARD: [&str; 5] = [
        "",
        "plain text that is longer than eight bytes",
        "quote \" back\\slash \n\t\r\u{8}\u{c}\u{1}\u{1f} end",
        "é→ü 日本 \u{7f}\u{80}",
        "\"",
    ];

    fn text(variant: usize, i: usize) -> String {
        AWKWARD[(variant + i) % AWKWARD.len()].to_owned()
    }

    fn float(variant: usize, i: usize) -> f64 {
        [
            0.0,
            -0.0,
            0.1,
            1e300,
            f64::NAN,
            f64::INFINITY,
            123.456,
            -7.5,
        ][(variant + i) % 8]
    }

    /// The source, decision and window of an event of `variant`: every field set, strings,
    /// floats and options varying with it.
    fn parts(variant: usize) -> (String, Decision, WindowDigest) {
        let text = |i: usize| text(variant, i);
        let float = |i: usize| float(variant, i);
        let model = [
            None,
            Some(ModelKind::Naive),
            Some(ModelKind::SeasonalNaive { period: 24 }),
            Some(ModelKind::Line),
            Some(ModelKind::Ets { spec: text(1) }),
            Some(ModelKind::Mstl {
                periods: vec![24, 168],
                trend: text(2),
            }),
        ][variant % 6]
            .clone();
        let decision = Decision {
            resource: text(0),
            at_ms: u64::MAX - variant as u64,
            action: [Action::ScaleOut, Action::ScaleIn][variant % 2],
            current_instances: 3,
            desired_instances: u32::MAX,
            reason: [Reason::ForecastAboveTarget, Reason::AboveCostCeiling][variant % 2],
            stage: [
                None,
                Some(LifecycleStage::Provision),
                Some(LifecycleStage::Decommission),
            ][variant % 3],
            lifecycle: (0..variant % 4)
                .map(|i| LifecycleStep {
                    stage: LifecycleStage::WarmUp,
                    at_ms: i as u64,
                    instances: 2,
                    hint: text(i + 3),
                })
                .collect(),
            explanation: Explanation {
                summary: text(4),
                window_start_ms: 1,
                window_end_ms: 2,
                forecast: (0..variant % 3)
                    .map(|i| ForecastPoint {
                        start_ms: i as u64,
                        point: float(i),
                        lower: float(i + 1),
                        upper: float(i + 2),
                    })
                    .collect(),
                level: float(3),
                widening: float(4),
                model,
                peak_upper: float(5),
                peak_point: float(6),
                peak_at_ms: 7,
                headroom: float(7),
                threshold_per_instance: float(8),
                required_instances: 9,
                sized_by: [
                    None,
                    Some(SizingBasis::Point),
                    Some(SizingBasis::UpperBound),
                ][variant % 3],
                stabilised_instances: 10,
                outliers_ms: vec![11; variant % 3],
                changepoints_ms: vec![12; (variant + 1) % 3],
                gap_windows: 13,
                behind_ms: 14,
                skill_fallback: variant.is_multiple_of(2),
                recent_mase: [None, Some(float(9))][variant % 2],
                ceiling_follows_point: [
                    None,
                    Some(CeilingBasis::StrongSkill),
                    Some(CeilingBasis::ExpectedRise),
                ][variant % 3],
                cost_capped: variant % 2 == 1,
                reactive_instances: 15,
                reactive_floored: variant.is_multiple_of(3),
            },
        };
        (text(5), decision, window(variant))
    }

    fn window(variant: usize) -> WindowDigest {
        let text = |i: usize| text(variant, i);
        WindowDigest {
            start_ms: 16,
            end_ms: 17,
            agents: (0..variant % 3).map(text).collect(),
            counts: CountsDigest {
                requests: 18,
                responses: 19,
                errors: 20,
                error_rate: float(variant, 10),
                bytes_in: 21,
                bytes_out: 22,
                latency_samples: 23,
                latency_p50_us: 24,
                latency_p99_us: 25,
                latency_max_us: 26,
                top_endpoints: (0..variant % 4).map(|i| (text(i), i as u64)).collect(),
                endpoints_other: 27,
            },
        }
    }

    #[test]
    fn the_writer_writes_what_serde_writes_for_every_field() {
        for variant in 0..60 {
            let (source, decision, window) = parts(variant);
            let ours =
                crate::scale_event::event_json(&source, &decision, &window).expect("not a hold");
            let e = ScaleEvent::from_owned_decision(&source, decision, window).expect("not a hold");
            let serde = serde_json::to_vec(&e).expect("serialise");
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&serde),
                "variant {variant}"
            );
        }
    }

    #[test]
    fn escape_check_finds_every_byte_that_needs_it_at_every_offset() {
        for len in 0..20 {
            for at in 0..len {
                for b in 0u8..=255 {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    let expected = b < 0x20 || b == b'"' || b == b'\\';
                    assert_eq!(
                        needs_escape(&bytes),
                        expected,
                        "byte {b:#x} at {at} of {len}"
                    );
                }
            }
        }
        // Bytes of multi-byte UTF-8 (0x80 and above) need none, next to each other or not.
        assert!(!needs_escape("é→ü 日本 \u{7f}".as_bytes()));
    }
}
