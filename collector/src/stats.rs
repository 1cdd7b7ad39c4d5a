//! The collector's counters, exported on `/metrics`.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
};

use hdrhistogram::Histogram;
use shadowtap_core::{FleetStats, metrics::Exposition};

/// Shared counters (cheap to update from the loop, read by metrics and tests).
#[derive(Debug, Default)]
pub struct CollectorStats {
    pub observations_consumed: AtomicU64,
    /// Lifecycle topic records that were not lifecycle events.
    pub lifecycle_invalid: AtomicU64,
    pub observations_processed: AtomicU64,
    /// Records below the partition's next offset (already applied; fetched again after a
    /// rebalance).
    pub observations_replayed: AtomicU64,
    /// Partitions rewound because records before one received had not arrived.
    pub offset_rewinds: AtomicU64,
    /// Offsets still missing after a rewind (lost to this collector).
    pub offset_gaps: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub scale_events_published: AtomicU64,
    pub snapshots_written: AtomicU64,
    pub snapshots_loaded: AtomicU64,
    pub snapshots_rejected: AtomicU64,
    pub publish_retries: AtomicU64,
    /// Producers replaced after a fatal error.
    pub producer_restarts: AtomicU64,
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
    pub rebalances: AtomicU64,
    pub partitions_owned: AtomicI64,
    pub open_windows: AtomicI64,
    /// Observation records behind the partitions' high watermarks (librdkafka statistics);
    /// exported once the first statistics arrived.
    pub consumer_lag: AtomicI64,
    pub consumer_lag_seen: AtomicBool,
    malformed: Mutex<BTreeMap<&'static str, u64>>,
    fleet: Mutex<FleetStats>,
    /// Wall time from a window's end to its scale event's acknowledgement, ms.
    event_latency_ms: Mutex<Option<Histogram<u64>>>,
    /// The same, by stage ([`EVENT_STAGES`]), for events whose window an observation closed.
    event_stage_ms: Mutex<Option<[Histogram<u64>; 4]>>,
}

/// The stages of a scale event's latency: window end → the agent produced the observation
/// (its record timestamp) → the collector took it from the consumer → merged and decided →
/// the broker acknowledged the event. The first two compare clocks of the agent's and the
/// collector's hosts.
pub const EVENT_STAGES: [&str; 4] = ["agent", "broker_to_collector", "decide", "publish"];

fn latency_histogram() -> Histogram<u64> {
    let mut h = Histogram::new(3).expect("3 significant digits is valid");
    h.auto(true);
    h
}

impl CollectorStats {
    pub fn malformed(&self, reason: &'static str) {
        if let Ok(mut m) = self.malformed.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn malformed_total(&self) -> u64 {
        self.malformed.lock().map_or(0, |m| m.values().sum())
    }

    pub fn set_fleet(&self, fleet: FleetStats) {
        if let Ok(mut f) = self.fleet.lock() {
            *f = fleet;
        }
    }

    pub fn fleet(&self) -> FleetStats {
        self.fleet.lock().map(|f| *f).unwrap_or_default()
    }

    pub fn record_event_latency(&self, ms: u64) {
        if let Ok(mut h) = self.event_latency_ms.lock() {
            let _ = h.get_or_insert_with(latency_histogram).record(ms);
        }
    }

    /// One event's latency by stage (ms, in [`EVENT_STAGES`] order).
    pub fn record_event_stages(&self, ms: [u64; 4]) {
        if let Ok(mut h) = self.event_stage_ms.lock() {
            let h = h.get_or_insert_with(|| std::array::from_fn(|_| latency_histogram()));
            for (h, v) in h.iter_mut().zip(ms) {
                let _ = h.record(v);
            }
        }
    }

    /// A copy of the latency histogram (ms).
    pub fn event_latency(&self) -> Option<Histogram<u64>> {
        self.event_latency_ms.lock().ok().and_then(|h| h.clone())
    }

    /// The Prometheus page.
    #[allow(clippy::too_many_lines)] // one flat list of metric families
    pub fn render(&self) -> String {
        let mut e = Exposition::default();
        let c = |e: &mut Exposition, name: &str, help: &str, v: &AtomicU64| {
            e.family(
                name,
                "counter",
                help,
                &[(&[], v.load(Ordering::Relaxed) as f64)],
            );
        };
        c(
            &mut e,
            "shadowtap_collector_observations_consumed_total",
            "Observation records consumed.",
            &self.observations_consumed,
        );
        c(
            &mut e,
            "shadowtap_collector_observations_processed_total",
            "Observation records decoded and merged (or deduplicated).",
            &self.observations_processed,
        );
        c(
            &mut e,
            "shadowtap_collector_observations_replayed_total",
            "Records skipped because their partition had already applied them (re-fetched after a rebalance).",
            &self.observations_replayed,
        );
        c(
            &mut e,
            "shadowtap_collector_offset_rewinds_total",
            "Times a partition was re-fetched from its next offset because a later record arrived first.",
            &self.offset_rewinds,
        );
        c(
            &mut e,
            "shadowtap_collector_offset_gaps_total",
            "Observation offsets still missing after a re-fetch (records this collector never saw).",
            &self.offset_gaps,
        );
        c(
            &mut e,
            "shadowtap_collector_dead_lettered_total",
            "Records sent to the dead-letter topic.",
            &self.dead_lettered,
        );
        c(
            &mut e,
            "shadowtap_collector_scale_events_total",
            "Scale events acknowledged by Kafka.",
            &self.scale_events_published,
        );
        c(
            &mut e,
            "shadowtap_collector_snapshots_written_total",
            "State snapshots acknowledged.",
            &self.snapshots_written,
        );
        c(
            &mut e,
            "shadowtap_collector_snapshots_loaded_total",
            "State snapshots restored.",
            &self.snapshots_loaded,
        );
        c(
            &mut e,
            "shadowtap_collector_snapshots_rejected_total",
            "State snapshots that could not be restored.",
            &self.snapshots_rejected,
        );
        c(
            &mut e,
            "shadowtap_collector_publish_retries_total",
            "Publishes retried after a failed delivery.",
            &self.publish_retries,
        );
        c(
            &mut e,
            "shadowtap_collector_producer_restarts_total",
            "Kafka producers replaced after a fatal error.",
            &self.producer_restarts,
        );
        c(
            &mut e,
            "shadowtap_collector_commits_total",
            "Offset commits.",
            &self.commits,
        );
        c(
            &mut e,
            "shadowtap_collector_commit_errors_total",
            "Failed offset commits.",
            &self.commit_errors,
        );
        c(
            &mut e,
            "shadowtap_collector_rebalances_total",
            "Partition assignment changes.",
            &self.rebalances,
        );
        let malformed: Vec<(&'static str, u64)> = self
            .malformed
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default();
        let labels: Vec<[(&str, &str); 1]> =
            malformed.iter().map(|(k, _)| [("reason", *k)]).collect();
        let samples: Vec<(&[(&str, &str)], f64)> = labels
            .iter()
            .zip(&malformed)
            .map(|(l, (_, v))| (&l[..], *v as f64))
            .collect();
        e.family(
            "shadowtap_collector_malformed_total",
            "counter",
            "Malformed observation records, by reason.",
            &samples,
        );
        let f = self.fleet();
        let fleet: [(&str, u64); 24] = [
            ("merged", f.observations_merged),
            ("duplicate", f.observations_duplicate),
            ("late", f.observations_late),
            ("step_mismatch", f.observations_step_mismatch),
            ("windows_closed", f.windows_closed),
            ("decisions", f.decisions),
            ("decisions_without_policy", f.decisions_without_policy),
            ("forecast_errors", f.forecast_errors),
            ("demand_gaps", f.demand_gaps),
            ("lifecycle_applied", f.lifecycle_applied),
            ("lifecycle_duplicate", f.lifecycle_duplicate),
            ("lifecycle_stale", f.lifecycle_stale),
            ("lifecycle_unknown", f.lifecycle_unknown),
            ("provision_failures", f.provision_failures),
            ("provision_retries", f.provision_retries),
            ("requests_reissued", f.requests_reissued),
            ("requests_in_flight", f.requests_in_flight),
            ("forecast_fits", f.forecast_fits),
            ("forecast_refits_deferred", f.forecast_refits_deferred),
            (
                "forecast_first_fits_deferred",
                f.forecast_first_fits_deferred,
            ),
            ("forecast_form_reuses", f.forecast_form_reuses),
            ("forecast_surprise_refits", f.forecast_surprise_refits),
            ("windows_caught_up", f.windows_caught_up),
            (
                "lifecycle_invalid",
                self.lifecycle_invalid.load(Ordering::Relaxed),
            ),
        ];
        let labels: Vec<[(&str, &str); 1]> = fleet.iter().map(|(k, _)| [("what", *k)]).collect();
        let samples: Vec<(&[(&str, &str)], f64)> = labels
            .iter()
            .zip(&fleet)
            .map(|(l, (_, v))| (&l[..], *v as f64))
            .collect();
        e.family(
            "shadowtap_collector_fleet_total",
            "counter",
            "Merge and decision stage counters.",
            &samples,
        );
        e.family(
            "shadowtap_collector_forecast_fit_seconds_total",
            "counter",
            "Wall time spent fitting the resources' forecasters (bounded by the fit budget).",
            &[(&[], f.forecast_fit_us as f64 / 1e6)],
        );
        e.family(
            "shadowtap_collector_partitions_owned",
            "gauge",
            "Observation partitions this collector owns.",
            &[(&[], self.partitions_owned.load(Ordering::Relaxed) as f64)],
        );
        e.family(
            "shadowtap_collector_open_windows",
            "gauge",
            "Merged windows waiting to close.",
            &[(&[], self.open_windows.load(Ordering::Relaxed) as f64)],
        );
        if self.consumer_lag_seen.load(Ordering::Relaxed) {
            e.family(
                "shadowtap_collector_consumer_lag_records",
                "gauge",
                "Observation records not yet consumed and committed on this collector's partitions.",
                &[(&[], self.consumer_lag.load(Ordering::Relaxed) as f64)],
            );
        }
        if let Some(h) = self.event_latency() {
            let q: Vec<(String, f64)> = [0.5, 0.99, 0.999, 1.0]
                .iter()
                .map(|q| (q.to_string(), h.value_at_quantile(*q) as f64))
                .collect();
            let labels: Vec<[(&str, &str); 1]> =
                q.iter().map(|(k, _)| [("quantile", k.as_str())]).collect();
            let samples: Vec<(&[(&str, &str)], f64)> = labels
                .iter()
                .zip(&q)
                .map(|(l, (_, v))| (&l[..], *v))
                .collect();
            e.family(
                "shadowtap_collector_event_latency_ms",
                "summary",
                "Window end to scale event acknowledged (wall clock).",
                &samples,
            );
        }
        if let Some(stages) = self.event_stage_ms.lock().ok().and_then(|h| h.clone()) {
            let q: Vec<(&str, String, f64)> = EVENT_STAGES
                .iter()
                .zip(&stages)
                .flat_map(|(stage, h)| {
                    [0.5, 0.99, 0.999, 1.0]
                        .iter()
                        .map(|q| (*stage, q.to_string(), h.value_at_quantile(*q) as f64))
                })
                .collect();
            let labels: Vec<[(&str, &str); 2]> = q
                .iter()
                .map(|(s, k, _)| [("stage", *s), ("quantile", k.as_str())])
                .collect();
            let samples: Vec<(&[(&str, &str)], f64)> = labels
                .iter()
                .zip(&q)
                .map(|(l, (_, _, v))| (&l[..], *v))
                .collect();
            e.family(
                "shadowtap_collector_event_stage_latency_ms",
                "summary",
                "Scale event latency by stage: agent (window end to the observation's record timestamp), broker_to_collector (to the collector taking its batch), decide (merge and decision of the batch), publish (to the event's acknowledgement).",
                &samples,
            );
        }
        e.finish()
    }
}
