//! JSON helpers of the tests: comparing documents, and finding where they differ.

use serde_json::Value;

/// The profile's parts that depend on when packets arrived (tcpreplay re-times the capture),
/// removed: what is left must be the same for the same traffic, live or replayed.
pub fn timing_free(mut doc: Value) -> Value {
    if let Some(map) = doc.as_object_mut() {
        map.remove("generated_at_ms");
        map.remove("source");
    }
    for r in doc["resources"].as_array_mut().into_iter().flatten() {
        if let Some(map) = r.as_object_mut() {
            for key in [
                "first_request_ms",
                "last_request_ms",
                "arrivals",
                "hour_of_week",
            ] {
                map.remove(key);
            }
        }
        if let Some(c) = r["connections"].as_object_mut() {
            c.remove("think_time_us");
        }
        for t in r["templates"].as_array_mut().into_iter().flatten() {
            if let Some(map) = t.as_object_mut() {
                map.remove("latency_us");
            }
        }
    }
    doc
}

/// Where two JSON values first differ (path, live value, replay value).
pub fn first_difference(live: &Value, replay: &Value, at: &str) -> String {
    match (live, replay) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().chain(b.keys()) {
                let (x, y) = (&a.get(key), &b.get(key));
                if x != y {
                    return match (x, y) {
                        (Some(x), Some(y)) => first_difference(x, y, &format!("{at}.{key}")),
                        _ => format!("{at}.{key}: live {x:?}, replay {y:?}"),
                    };
                }
            }
            String::new()
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find(|(_, (x, y))| x != y)
            .map(|(i, (x, y))| first_difference(x, y, &format!("{at}[{i}]")))
            .unwrap_or_default(),
        _ => format!("{at}: live {live}, replay {replay}"),
    }
}
