//! A demand series from a capture: requests (HTTP request heads and TLS client hellos) per
//! bucket, from the same replay path (decode → events) the agent uses for pcap files.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};

use super::DemandSeries;

/// Event kinds that count as one unit of demand.
const REQUEST_KINDS: [&str; 2] = ["http_request", "tls_client_hello"];

/// Replay `path` and count requests per `step`.
pub fn series_from_pcap(path: &Path, step: Duration) -> anyhow::Result<DemandSeries> {
    let step_ns = u64::try_from(step.as_nanos()).unwrap_or(u64::MAX);
    if step_ns == 0 {
        bail!("--pcap-step must be positive");
    }
    let mut events = Vec::new();
    crate::replay::replay_pcap(path, &mut events)
        .with_context(|| format!("replaying {}", path.display()))?;
    let mut timestamps = Vec::new();
    for (index, line) in events.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let event: serde_json::Value = serde_json::from_slice(line)
            .with_context(|| format!("event line {} of the replay", index + 1))?;
        let kind = event.get("kind").and_then(serde_json::Value::as_str);
        if kind.is_some_and(|k| REQUEST_KINDS.contains(&k))
            && let Some(ts) = event.get("ts_ns").and_then(serde_json::Value::as_u64)
        {
            timestamps.push(ts);
        }
    }
    let (Some(&first), Some(&last)) = (timestamps.iter().min(), timestamps.iter().max()) else {
        bail!(
            "{}: no HTTP requests or TLS client hellos to build a demand series from",
            path.display()
        );
    };
    let start = first - first % step_ns;
    let buckets = ((last - start) / step_ns + 1) as usize;
    let mut values = vec![0.0; buckets];
    for ts in timestamps {
        values[((ts - start) / step_ns) as usize] += 1.0;
    }
    if values.len() < 3 {
        bail!(
            "{}: all requests fall into {} bucket(s) of {}; use a shorter --pcap-step",
            path.display(),
            values.len(),
            shadowtap_core::decision::format_duration(step)
        );
    }
    Ok(DemandSeries {
        name: path
            .file_stem()
            .map_or_else(|| "pcap".to_owned(), |s| s.to_string_lossy().into_owned()),
        start_ms: start / 1_000_000,
        step,
        values,
        gaps_filled: 0,
        irregular_rows: 0,
    })
}
