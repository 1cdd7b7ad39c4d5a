//! The events of the sweep on `shadowtap.recommendations` (CloudEvents 1.0, structured JSON,
//! schema `sweep/schema/recommendation.schema.json`): a recommendation with its canary plan,
//! the canary's decision, and a drift flag. One topic, three `type`s, keyed by service, so a
//! consumer sees a service's recommendation, canary outcome and drift in order.
//!
//! Ids are digests of what identifies the fact (as `shadowtap.scale-events` and
//! `shadowtap.lifecycle` do, with the same helpers): a recommendation for one service, forecast
//! window and parameter set has one id however often it is re-published, so consumers drop
//! repeats.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest as _, Sha256};
use shadowtap_core::scale_event::{hex, rfc3339_millis};

use crate::{
    canary::{CanaryDecision, CanaryOutcome, CanaryPlan, InstanceWindow},
    kpi_model::Predicted,
    policy::{Explanation, Score},
    trial::{KpiName, LoadFeatures, Objective, Params},
};

/// Default topic.
pub const RECOMMENDATIONS_TOPIC: &str = "shadowtap.recommendations";
/// `type` of a recommendation.
pub const RECOMMENDATION_TYPE: &str = "shadowtap.recommendation.v1";
/// `type` of a canary's promote/rollback decision.
pub const CANARY_DECISION_TYPE: &str = "shadowtap.canary-decision.v1";
/// `type` of a drift flag (the mapping needs re-evaluation).
pub const DRIFT_TYPE: &str = "shadowtap.mapping-drift.v1";
/// Version of every `data` payload here.
pub const SWEEP_EVENT_DATA_VERSION: u32 = 1;

/// A CloudEvents 1.0 structured-mode event with a typed payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepEvent<T> {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The service (also the Kafka key).
    pub subject: String,
    /// RFC 3339 UTC.
    pub time: String,
    pub datacontenttype: String,
    pub data: T,
}

impl<T: Serialize> SweepEvent<T> {
    fn new(source: &str, event_type: &str, id: String, subject: &str, at_ms: u64, data: T) -> Self {
        Self {
            specversion: "1.0".to_owned(),
            id,
            source: source.to_owned(),
            event_type: event_type.to_owned(),
            subject: subject.to_owned(),
            time: rfc3339_millis(at_ms),
            datacontenttype: "application/json".to_owned(),
            data,
        }
    }

    /// One JSON line (no trailing newline).
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }
}

/// Parses an event of type `event_type`; `None` for anything else (other types share the
/// topic).
pub fn parse_event<T: DeserializeOwned>(bytes: &[u8], event_type: &str) -> Option<SweepEvent<T>> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if value.get("type")?.as_str()? != event_type {
        return None;
    }
    serde_json::from_value(value).ok()
}

/// The digest id of `parts` (32 hex digits).
pub fn digest_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize()[..16])
}

/// The forecast load a recommendation is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastLoad {
    pub load: LoadFeatures,
    /// The forecast window (unix ms) the load is predicted for.
    pub window_start_ms: u64,
    pub window_end_ms: u64,
}

/// `shadowtap.recommendation.v1` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecommendationData {
    pub schema_version: u32,
    pub service: String,
    pub objective: Objective,
    pub forecast: ForecastLoad,
    pub current_params: Params,
    pub recommended_params: Params,
    /// The current parameters' expected standing at the forecast load (`None`: unknown).
    pub current_score: Option<Score>,
    pub recommended_score: Score,
    /// Expected relative gain of the recommendation (0.2 = 20% lower cost); `None` when the
    /// current parameters cannot be scored.
    pub improvement: Option<f64>,
    /// The configured margin the gain had to exceed.
    pub margin: f64,
    pub explanation: Explanation,
    pub canary: CanaryPlan,
    pub decided_at_ms: u64,
}

pub type RecommendationEvent = SweepEvent<RecommendationData>;

impl RecommendationEvent {
    pub fn recommendation(source: &str, data: RecommendationData) -> Self {
        let params = serde_json::to_string(&data.recommended_params).unwrap_or_default();
        let id = digest_id(&[
            RECOMMENDATION_TYPE,
            &data.service,
            &data.forecast.window_start_ms.to_string(),
            &params,
        ]);
        let (service, at) = (data.service.clone(), data.decided_at_ms);
        Self::new(source, RECOMMENDATION_TYPE, id, &service, at, data)
    }
}

/// `shadowtap.canary-decision.v1` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryDecisionData {
    pub schema_version: u32,
    pub service: String,
    /// The recommendation event this canary tested.
    pub recommendation_id: String,
    pub canary_instance: String,
    pub decision: CanaryDecision,
    /// Why, one line per check.
    pub reasons: Vec<String>,
    /// The canary's tapped window (`None`: not seen at the tap).
    pub canary: Option<InstanceWindow>,
    /// The other instances, merged (request-weighted; `None`: no other instance seen).
    pub baseline: Option<InstanceWindow>,
    pub plan: CanaryPlan,
    pub decided_at_ms: u64,
}

pub type CanaryDecisionEvent = SweepEvent<CanaryDecisionData>;

impl CanaryDecisionEvent {
    /// The decision on the canary of `recommendation` after `outcome`; one id per
    /// (recommendation, canary instance, decision), so an `extend` and the final verdict are
    /// distinct events but a re-published verdict is not.
    pub fn canary_decision(
        source: &str,
        recommendation: &RecommendationEvent,
        canary_instance: &str,
        outcome: CanaryOutcome,
        now_ms: u64,
    ) -> Self {
        let decision = serde_json::to_string(&outcome.decision).unwrap_or_default();
        let id = digest_id(&[
            CANARY_DECISION_TYPE,
            &recommendation.id,
            canary_instance,
            &decision,
        ]);
        let data = CanaryDecisionData {
            schema_version: SWEEP_EVENT_DATA_VERSION,
            service: recommendation.data.service.clone(),
            recommendation_id: recommendation.id.clone(),
            canary_instance: canary_instance.to_owned(),
            decision: outcome.decision,
            reasons: outcome.reasons,
            canary: outcome.canary,
            baseline: outcome.baseline,
            plan: recommendation.data.canary.clone(),
            decided_at_ms: now_ms,
        };
        let (service, at) = (data.service.clone(), data.decided_at_ms);
        Self::new(source, CANARY_DECISION_TYPE, id, &service, at, data)
    }
}

/// `shadowtap.mapping-drift.v1` payload: the primary's tapped KPI left the model's band.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftData {
    pub schema_version: u32,
    pub service: String,
    pub params: Params,
    pub load: LoadFeatures,
    pub kpi: KpiName,
    pub predicted: Predicted,
    pub observed: f64,
    /// (observed − predicted) / error.
    pub z: f64,
    /// Consecutive windows outside the band when flagged.
    pub windows: u32,
    pub window_end_ms: u64,
}

pub type DriftEvent = SweepEvent<DriftData>;

impl DriftEvent {
    pub fn drift(source: &str, data: DriftData) -> Self {
        let kpi = serde_json::to_string(&data.kpi).unwrap_or_default();
        let id = digest_id(&[
            DRIFT_TYPE,
            &data.service,
            &kpi,
            &data.window_end_ms.to_string(),
        ]);
        let (service, at) = (data.service.clone(), data.window_end_ms);
        Self::new(source, DRIFT_TYPE, id, &service, at, data)
    }
}
