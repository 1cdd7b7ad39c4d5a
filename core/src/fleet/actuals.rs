//! What the provisioner reports back: the instances that really serve a resource.
//!
//! A decision that assumed its own last request had been carried out would, after a failed or
//! slow provision, believe in capacity that does not exist. So the fleet reads the
//! provisioner's lifecycle events (`shadowtap.lifecycle.v1`) and decides on the reported
//! healthy count. Three rules follow from deciding on the actual count:
//! - while a request for the same target is still in flight (younger than twice the policy's
//!   lead time), the repeated scale-out it implies is not published again;
//! - after a failed provision, the same target is asked for again only after
//!   `provision_retry_backoff`, doubled per consecutive failure (at most 16×), and each retry
//!   is counted;
//! - a report older than the last one applied (a redelivery, a restart) does not roll the count
//!   back, and a repeated event id is dropped.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::Fleet;
use crate::{
    decision::{Decision, LifecycleStage},
    lifecycle::LifecycleEvent,
};

/// Event ids remembered per resource for de-duplication.
const SEEN_IDS: usize = 256;

/// The provisioner's view of one resource, as far as its events told it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Actuals {
    /// Healthy instances at the latest reported stage.
    pub healthy: Option<u32>,
    /// `finished_at_ms` of that stage.
    pub reported_at_ms: u64,
    /// Target of the last published scale event, and when it was published (window end).
    pub requested: Option<u32>,
    pub requested_at_ms: u64,
    /// Failed provision attempts reported since the last request or success.
    pub failures: u32,
    /// No new request for the same target before this time.
    pub retry_after_ms: u64,
    /// Recently applied event ids.
    #[serde(default)]
    seen: VecDeque<String>,
}

/// What [`crate::Fleet::observe_lifecycle`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleApplied {
    /// The count (and failure state) was updated.
    Applied,
    /// Same id seen before: dropped.
    Duplicate,
    /// Older than the last applied report: only its failure (if any) counted.
    Stale,
    /// No such resource here (another collector owns it, or it has not been seen yet).
    UnknownResource,
}

/// What to do with a decision that changes the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Publish {
    /// A new target (or nothing reported yet): publish.
    New,
    /// The same target after the backoff that followed a failure: publish, count a retry.
    Retry,
    /// The same target after its request went unanswered for too long: publish again.
    Reissue,
    /// The same target is still being provisioned, or the backoff runs: do not publish.
    InFlight,
}

impl Actuals {
    /// The count a decision starts from: reported if anything was reported, else `assumed`.
    pub fn current(&self, assumed: u32) -> u32 {
        self.healthy.unwrap_or(assumed)
    }

    /// Applies one lifecycle event; `base_backoff_ms` is the policy's retry backoff.
    pub(crate) fn apply(
        &mut self,
        event: &LifecycleEvent,
        base_backoff_ms: u64,
    ) -> LifecycleApplied {
        if self.seen.iter().any(|id| *id == event.id) {
            return LifecycleApplied::Duplicate;
        }
        if self.seen.len() == SEEN_IDS {
            self.seen.pop_front();
        }
        self.seen.push_back(event.id.clone());
        let data = &event.data;
        let failed_provision = !data.ok && data.stage == LifecycleStage::Provision;
        if failed_provision {
            self.failures = self.failures.saturating_add(1);
            let factor = 1u64 << self.failures.saturating_sub(1).min(4);
            self.retry_after_ms = data
                .finished_at_ms
                .saturating_add(base_backoff_ms.saturating_mul(factor));
        }
        if self.healthy.is_some() && data.finished_at_ms < self.reported_at_ms {
            return LifecycleApplied::Stale;
        }
        self.healthy = Some(data.healthy_instances);
        self.reported_at_ms = data.finished_at_ms;
        if data.ok && self.requested.is_some_and(|r| data.healthy_instances >= r) {
            self.failures = 0;
        }
        LifecycleApplied::Applied
    }

    /// Whether a decision that changes the count is published, counting retries, reissues
    /// and requests in flight. A request counts as overdue after twice the lead time (one
    /// window at least): the provisioner is slow or the event was lost.
    pub(crate) fn should_publish(
        &mut self,
        decision: &Decision,
        now_ms: u64,
        lead_time: std::time::Duration,
        step_ms: u64,
        stats: &mut super::FleetStats,
    ) -> bool {
        let in_flight_ms = u64::try_from(lead_time.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(2)
            .max(step_ms);
        match self.publish(decision, now_ms, in_flight_ms) {
            Publish::New => true,
            Publish::Retry => {
                stats.provision_retries += 1;
                true
            }
            Publish::Reissue => {
                stats.requests_reissued += 1;
                true
            }
            Publish::InFlight => {
                stats.requests_in_flight += 1;
                false
            }
        }
    }

    /// Whether a decision taken at `now_ms` that changes the count is published.
    /// `in_flight_ms` is how long a request may go unanswered before it is reissued.
    pub(crate) fn publish(
        &mut self,
        decision: &Decision,
        now_ms: u64,
        in_flight_ms: u64,
    ) -> Publish {
        let desired = decision.desired_instances;
        let same_target = self.requested == Some(desired) && self.healthy.is_some();
        let verdict = if !same_target {
            self.failures = 0;
            Publish::New
        } else if self.failures > 0 {
            if now_ms >= self.retry_after_ms {
                // In flight again: the next failure sets a new (doubled) backoff; silence
                // until then is treated like any request in flight.
                self.retry_after_ms = now_ms.saturating_add(in_flight_ms);
                Publish::Retry
            } else {
                Publish::InFlight
            }
        } else if now_ms.saturating_sub(self.requested_at_ms) < in_flight_ms {
            Publish::InFlight
        } else {
            Publish::Reissue
        };
        if verdict != Publish::InFlight {
            self.requested = Some(desired);
            self.requested_at_ms = now_ms;
        }
        verdict
    }
}

/// Resources with lifecycle reports but no state yet, at most.
const PENDING_RESOURCES: usize = 10_000;

impl Fleet {
    /// Applies a provisioner's lifecycle event: later decisions for its resource start from
    /// the reported healthy count. A report for a resource this fleet does not hold yet is kept
    /// (up to 10,000 resources) and applied when the resource arrives.
    pub fn observe_lifecycle(&mut self, event: &LifecycleEvent) -> LifecycleApplied {
        let resource = &event.data.resource;
        let backoff = self.policies.policy_for(resource).map_or(30_000, |p| {
            u64::try_from(p.provision_retry_backoff.as_millis()).unwrap_or(u64::MAX)
        });
        let actuals = if let Some(state) = self.resources.get_mut(resource) {
            &mut state.actuals
        } else if self.pending_actuals.len() < PENDING_RESOURCES
            || self.pending_actuals.contains_key(resource)
        {
            self.pending_actuals.entry(resource.clone()).or_default()
        } else {
            self.stats.lifecycle_unknown += 1;
            return LifecycleApplied::UnknownResource;
        };
        let failures_before = actuals.failures;
        let applied = actuals.apply(event, backoff);
        if applied != LifecycleApplied::Duplicate
            && !event.data.ok
            && event.data.stage == LifecycleStage::Provision
        {
            self.stats.provision_failures += 1;
            tracing::warn!(
                resource = %resource,
                instance = %event.data.instance,
                failures = failures_before + 1,
                error = event.data.error.as_deref().unwrap_or(""),
                "provision failed; the target is asked for again after the backoff"
            );
        }
        match applied {
            LifecycleApplied::Applied => self.stats.lifecycle_applied += 1,
            LifecycleApplied::Duplicate => self.stats.lifecycle_duplicate += 1,
            LifecycleApplied::Stale => self.stats.lifecycle_stale += 1,
            LifecycleApplied::UnknownResource => self.stats.lifecycle_unknown += 1,
        }
        applied
    }

    /// The provisioner's reported view of `resource`, if any event arrived.
    pub fn actuals(&self, resource: &str) -> Option<&Actuals> {
        self.resources
            .get(resource)
            .map(|s| &s.actuals)
            .or_else(|| self.pending_actuals.get(resource))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        decision::{Action, Explanation, Reason},
        lifecycle::{LIFECYCLE_DATA_VERSION, LifecycleData},
    };

    fn event(id: &str, stage: LifecycleStage, ok: bool, healthy: u32, at: u64) -> LifecycleEvent {
        LifecycleEvent::new(
            "test",
            LifecycleData {
                schema_version: LIFECYCLE_DATA_VERSION,
                resource: "api".into(),
                scale_event_id: id.into(),
                instance: "stp-1".into(),
                stage,
                attempt: 1,
                ok,
                error: (!ok).then(|| "boom".to_owned()),
                started_at: String::new(),
                finished_at: String::new(),
                started_at_ms: at,
                finished_at_ms: at,
                duration_ms: 0,
                healthy_instances: healthy,
                target_instances: 3,
                warm: None,
            },
        )
    }

    fn decision(current: u32, desired: u32) -> Decision {
        Decision {
            resource: "api".into(),
            at_ms: 0,
            action: if desired > current {
                Action::ScaleOut
            } else {
                Action::ScaleIn
            },
            current_instances: current,
            desired_instances: desired,
            reason: Reason::ForecastAboveTarget,
            stage: None,
            lifecycle: Vec::new(),
            explanation: Explanation::default(),
        }
    }

    #[test]
    fn the_reported_count_replaces_the_assumed_one_and_repeats_are_dropped() {
        let mut a = Actuals::default();
        assert_eq!(a.current(5), 5);
        let e = event("e1", LifecycleStage::Provision, true, 2, 1000);
        assert_eq!(a.apply(&e, 100), LifecycleApplied::Applied);
        assert_eq!(a.current(5), 2);
        assert_eq!(a.apply(&e, 100), LifecycleApplied::Duplicate);
        let older = event("e0", LifecycleStage::ShiftTraffic, true, 1, 500);
        assert_eq!(a.apply(&older, 100), LifecycleApplied::Stale);
        assert_eq!(
            a.current(5),
            2,
            "an older report never rolls the count back"
        );
    }

    #[test]
    fn a_request_in_flight_is_not_reissued_until_it_is_overdue() {
        let mut a = Actuals::default();
        assert_eq!(a.publish(&decision(1, 3), 0, 10_000), Publish::New);
        a.apply(&event("e1", LifecycleStage::Provision, true, 2, 1000), 100);
        assert_eq!(a.publish(&decision(2, 3), 2000, 10_000), Publish::InFlight);
        assert_eq!(a.publish(&decision(2, 3), 9999, 10_000), Publish::InFlight);
        assert_eq!(a.publish(&decision(2, 3), 10_000, 10_000), Publish::Reissue);
        assert_eq!(a.publish(&decision(2, 4), 10_001, 10_000), Publish::New);
    }

    #[test]
    fn failed_provisions_are_retried_with_doubling_backoff() {
        let mut a = Actuals::default();
        assert_eq!(a.publish(&decision(1, 3), 0, 1_000_000), Publish::New);
        a.apply(&event("f1", LifecycleStage::Provision, false, 1, 1000), 100);
        assert_eq!(a.retry_after_ms, 1100);
        assert_eq!(
            a.publish(&decision(1, 3), 1099, 1_000_000),
            Publish::InFlight
        );
        assert_eq!(a.publish(&decision(1, 3), 1100, 1_000_000), Publish::Retry);
        a.apply(&event("f2", LifecycleStage::Provision, false, 1, 2000), 100);
        assert_eq!(a.retry_after_ms, 2200, "second failure: twice the backoff");
        a.apply(&event("f3", LifecycleStage::Provision, false, 1, 3000), 100);
        assert_eq!(a.retry_after_ms, 3400);
        for (i, at) in (4..10).zip((4000..).step_by(1000)) {
            a.apply(
                &event(&format!("f{i}"), LifecycleStage::Provision, false, 1, at),
                100,
            );
        }
        assert_eq!(a.retry_after_ms, 9000 + 1600, "capped at 16x");
        // A success that reaches the target clears the failures.
        assert_eq!(
            a.publish(&decision(1, 3), 20_000, 1_000_000),
            Publish::Retry
        );
        a.apply(
            &event("ok", LifecycleStage::ShiftTraffic, true, 3, 21_000),
            100,
        );
        assert_eq!(a.failures, 0);
    }
}
