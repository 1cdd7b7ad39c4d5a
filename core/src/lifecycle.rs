//! `shadowtap.lifecycle.v1`: one CloudEvent per executed lifecycle stage of one instance
//! (schema: `provisioner/schema/lifecycle.schema.json`). The provisioner writes them; the
//! collector and the agent's in-process collector read them back
//! ([`crate::fleet::Fleet::observe_lifecycle`]), so decisions rest on the instances that
//! really serve, not on the ones that were asked for.
//!
//! The id is a digest of (scale event id, instance, stage, attempt): a stage re-reported after a
//! restart carries the same id, so consumers drop the repeat.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{decision::LifecycleStage, scale_event::rfc3339_millis};

/// `CloudEvents` `type` of lifecycle events.
pub const LIFECYCLE_TYPE: &str = "shadowtap.lifecycle.v1";
/// Default topic.
pub const LIFECYCLE_TOPIC: &str = "shadowtap.lifecycle";
/// Version of the `data` payload.
pub const LIFECYCLE_DATA_VERSION: u32 = 1;

/// A lifecycle event (`CloudEvents` 1.0 structured JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The resource.
    pub subject: String,
    /// When the stage finished, RFC 3339 UTC.
    pub time: String,
    pub datacontenttype: String,
    pub data: LifecycleData,
}

/// What happened in one stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleData {
    pub schema_version: u32,
    pub resource: String,
    pub scale_event_id: String,
    pub instance: String,
    pub stage: LifecycleStage,
    pub attempt: u32,
    pub ok: bool,
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: String,
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub duration_ms: u64,
    /// Instances that passed their health check when the stage finished.
    pub healthy_instances: u32,
    pub target_instances: u32,
    /// Warm-up stages with cache pre-warming: what was warmed, and the feedback used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm: Option<WarmReport>,
}

/// What one warm-up did, and the feedback it worked with (in the lifecycle event).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WarmReport {
    /// Keys chosen, requests sent, answered 2xx/3xx, failed (error or other status).
    pub keys: usize,
    pub sent: usize,
    pub ok: usize,
    pub failed: usize,
    pub duration_ms: u64,
    /// Share of requests the warm set's keys draw, by the profile used.
    pub predicted_key_share: f64,
    /// Requests per instance expected in the predicted peak window (after bias correction).
    pub predicted_requests_per_instance: f64,
    /// Moving average of observed / predicted peak demand (1 until a peak was observed).
    pub demand_bias: f64,
    /// The previous warm set's share of requests in the fresh profile, and what was
    /// predicted for it (`None` before a second warm-up).
    pub previous_set_observed_share: Option<f64>,
    pub previous_set_predicted_share: Option<f64>,
    /// Probability threshold used (½, lowered when warm sets under-deliver).
    pub threshold: f64,
    /// Why nothing was warmed (profile unreachable, say); the instance still serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The deterministic id of one stage attempt.
pub fn lifecycle_id(event_id: &str, instance: &str, stage: LifecycleStage, attempt: u32) -> String {
    let mut h = Sha256::new();
    for part in [event_id, instance, stage_name(stage)] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    h.update(attempt.to_be_bytes());
    crate::scale_event::hex(&h.finalize()[..16])
}

pub fn stage_name(stage: LifecycleStage) -> &'static str {
    match stage {
        LifecycleStage::Provision => "provision",
        LifecycleStage::WarmUp => "warm_up",
        LifecycleStage::ShiftTraffic => "shift_traffic",
        LifecycleStage::Decommission => "decommission",
    }
}

impl LifecycleEvent {
    pub fn new(source: &str, data: LifecycleData) -> Self {
        Self {
            specversion: "1.0".to_owned(),
            id: lifecycle_id(
                &data.scale_event_id,
                &data.instance,
                data.stage,
                data.attempt,
            ),
            source: source.to_owned(),
            event_type: LIFECYCLE_TYPE.to_owned(),
            subject: data.resource.clone(),
            time: rfc3339_millis(data.finished_at_ms),
            datacontenttype: "application/json".to_owned(),
            data,
        }
    }

    /// Fills the timestamps of a stage that ran from `started_ms` to now.
    pub fn timing(started_ms: u64, finished_ms: u64) -> (String, String, u64) {
        (
            rfc3339_millis(started_ms),
            rfc3339_millis(finished_ms),
            finished_ms.saturating_sub(started_ms),
        )
    }
}

/// Parses one lifecycle event (a JSON line or a Kafka payload); `None` for anything else,
/// including other `CloudEvents` types.
pub fn parse_lifecycle(bytes: &[u8]) -> Option<LifecycleEvent> {
    let event: LifecycleEvent = serde_json::from_slice(bytes).ok()?;
    (event.event_type == LIFECYCLE_TYPE).then_some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_per_attempt() {
        let a = lifecycle_id("e", "i", LifecycleStage::Provision, 1);
        assert_eq!(a, lifecycle_id("e", "i", LifecycleStage::Provision, 1));
        assert_ne!(a, lifecycle_id("e", "i", LifecycleStage::Provision, 2));
        assert_ne!(a, lifecycle_id("e", "i", LifecycleStage::WarmUp, 1));
        assert_eq!(a.len(), 32);
    }
}
