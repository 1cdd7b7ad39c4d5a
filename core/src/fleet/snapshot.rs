//! A resource's fleet state as a serialisable snapshot: the collector writes it to its state
//! topic so whichever collector owns the partition next resumes exactly there.

use std::{collections::BTreeMap, time::Instant};

use serde::{Deserialize, Serialize};

use super::{Actuals, AgentMark, Fleet, FleetError, OpenWindow, ResourceState};
use crate::{
    decision::{Decision, DecisionEngine},
    wire::{WindowCounts, histogram_bytes, histogram_from_bytes},
};

impl Fleet {
    /// Everything needed to resume `resource` elsewhere.
    pub fn snapshot(&self, resource: &str) -> Option<ResourceSnapshot> {
        let s = self.resources.get(resource)?;
        Some(ResourceSnapshot {
            version: SNAPSHOT_VERSION,
            resource: resource.to_owned(),
            step_ms: s.step_ms,
            closed_before_ms: s.closed_before_ms,
            stream_time_ms: s.stream_time_ms,
            agents: s
                .agents
                .iter()
                .map(|(k, m)| {
                    (
                        k.clone(),
                        AgentSnapshot {
                            last_window_start_ms: m.last_window_start_ms,
                        },
                    )
                })
                .collect(),
            open: s
                .open
                .iter()
                .map(|(start, w)| OpenWindowSnapshot {
                    start_ms: *start,
                    end_ms: w.end_ms,
                    contributions: w
                        .contributions
                        .iter()
                        .map(|(a, c)| (a.clone(), CountsSnapshot::from(c)))
                        .collect(),
                })
                .collect(),
            history: s.history.iter().copied().collect(),
            instances: s.instances,
            last_decision: s.last_decision.as_deref().cloned(),
            forecast_origin: s.forecast_origin,
            engine: s.engine.clone(),
            actuals: s.actuals.clone(),
        })
    }

    /// Resume a resource from a snapshot (replacing any state it had here).
    pub fn restore(&mut self, snap: &ResourceSnapshot, now: Instant) -> Result<(), FleetError> {
        let err = |reason: String| FleetError::Snapshot {
            resource: snap.resource.clone(),
            reason,
        };
        if snap.version != SNAPSHOT_VERSION {
            return Err(err(format!("unsupported version {}", snap.version)));
        }
        if snap.step_ms == 0 {
            return Err(err("zero step".to_owned()));
        }
        let mut open = BTreeMap::new();
        for w in &snap.open {
            let mut contributions = BTreeMap::new();
            for (agent, c) in &w.contributions {
                contributions.insert(
                    agent.clone(),
                    c.to_counts().map_err(|e| err(e.to_string()))?,
                );
            }
            open.insert(
                w.start_ms,
                OpenWindow {
                    end_ms: w.end_ms,
                    opened: now,
                    contributions,
                },
            );
        }
        let mut state = ResourceState::new(snap.step_ms, snap.closed_before_ms);
        state.stream_time_ms = snap.stream_time_ms;
        state.agents = snap
            .agents
            .iter()
            .map(|(k, a)| {
                (
                    k.clone(),
                    AgentMark {
                        last_window_start_ms: a.last_window_start_ms,
                    },
                )
            })
            .collect();
        state.open = open;
        state.instances = snap.instances;
        state.last_decision = snap.last_decision.clone().map(std::sync::Arc::new);
        state.history = snap.history.iter().copied().collect();
        state.forecast_origin = snap.forecast_origin;
        state.actuals.clone_from(&snap.actuals);
        // A report read before the snapshot arrived wins if it is newer.
        if let Some(pending) = self.pending_actuals.remove(&snap.resource)
            && pending.reported_at_ms >= snap.actuals.reported_at_ms
        {
            state.actuals = pending;
        }
        // Timers come from the snapshot; the policy is the one in force here now.
        state.engine = snap.engine.clone().map(|mut engine| {
            if let Ok(policy) = self.policies.policy_for(&snap.resource) {
                engine.set_policy(policy);
            }
            engine
        });
        self.resources.insert(snap.resource.clone(), state);
        Ok(())
    }
}

/// Version of [`ResourceSnapshot`].
pub const SNAPSHOT_VERSION: u32 = 1;

/// Serialisable state of one resource (merged windows, agents, history, instances, last
/// decision). The forecaster is rebuilt from `history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceSnapshot {
    pub version: u32,
    pub resource: String,
    pub step_ms: u64,
    pub closed_before_ms: u64,
    pub stream_time_ms: u64,
    pub agents: BTreeMap<String, AgentSnapshot>,
    pub open: Vec<OpenWindowSnapshot>,
    pub history: Vec<(u64, f64)>,
    pub instances: u32,
    pub last_decision: Option<Decision>,
    /// (first bucket, points) of the collector forecaster's warm start, replayed on restore.
    #[serde(default)]
    pub forecast_origin: Option<(u64, usize)>,
    /// The decision engine with its cooldown and stabilisation timers.
    #[serde(default)]
    pub engine: Option<DecisionEngine>,
    /// What the provisioner reported (instances, a request in flight, failures).
    #[serde(default)]
    pub actuals: Actuals,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSnapshot {
    pub last_window_start_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenWindowSnapshot {
    pub start_ms: u64,
    pub end_ms: u64,
    pub contributions: BTreeMap<String, CountsSnapshot>,
}

/// [`WindowCounts`] with the histogram as hex of its V2 serialisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountsSnapshot {
    pub requests: u64,
    pub responses: u64,
    pub errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency_us_hdr_hex: String,
    pub endpoints: BTreeMap<String, u64>,
    pub endpoints_other: u64,
}

impl From<&WindowCounts> for CountsSnapshot {
    fn from(c: &WindowCounts) -> Self {
        Self {
            requests: c.requests,
            responses: c.responses,
            errors: c.errors,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            latency_us_hdr_hex: crate::scale_event::hex(&histogram_bytes(&c.latency_us)),
            endpoints: c.endpoints.clone(),
            endpoints_other: c.endpoints_other,
        }
    }
}

impl CountsSnapshot {
    fn to_counts(&self) -> Result<WindowCounts, crate::wire::WireError> {
        let hex = self.latency_us_hdr_hex.as_bytes();
        let bad = || crate::wire::WireError::Histogram("bad hex".to_owned());
        if !hex.len().is_multiple_of(2) {
            return Err(bad());
        }
        let mut bytes = Vec::with_capacity(hex.len() / 2);
        for pair in hex.chunks(2) {
            let s = std::str::from_utf8(pair).map_err(|_| bad())?;
            bytes.push(u8::from_str_radix(s, 16).map_err(|_| bad())?);
        }
        Ok(WindowCounts {
            requests: self.requests,
            responses: self.responses,
            errors: self.errors,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            latency_us: histogram_from_bytes(&bytes)?,
            endpoints: self.endpoints.clone(),
            endpoints_other: self.endpoints_other,
        })
    }
}
