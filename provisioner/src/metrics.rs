//! The provisioner's counters, served on `--metrics-listen` (`/metrics`) so an operator can
//! alert on a provisioner that fails to act: scale events taken, commands that failed (exec
//! driver) and lifecycle stages that failed (haproxy driver).
//!
//! One process-wide set of counters: a provisioner runs one driver, and the counting points
//! (the exec loop, the lifecycle sink) would otherwise need a handle threaded through them.

use std::sync::atomic::{AtomicU64, Ordering};

use shadowtap_core::{decision::LifecycleStage, metrics::Exposition};

use crate::lifecycle::stage_name;

/// Counters of one provisioner process.
#[derive(Debug)]
pub struct Metrics {
    events_handled: AtomicU64,
    events_duplicate: AtomicU64,
    events_skipped: AtomicU64,
    events_malformed: AtomicU64,
    commands_ok: AtomicU64,
    commands_failed: AtomicU64,
    /// `[stage][0 = ok, 1 = failed]`, stages in [`STAGES`] order.
    stages: [[AtomicU64; 2]; 4],
}

const STAGES: [LifecycleStage; 4] = [
    LifecycleStage::Provision,
    LifecycleStage::WarmUp,
    LifecycleStage::ShiftTraffic,
    LifecycleStage::Decommission,
];

/// What happened to one consumed scale event.
#[derive(Debug, Clone, Copy)]
pub enum EventOutcome {
    Handled,
    /// exec: an id seen before.
    Duplicate,
    /// haproxy: another resource's event, or one already handled.
    Skipped,
    Malformed,
}

static METRICS: Metrics = Metrics {
    events_handled: AtomicU64::new(0),
    events_duplicate: AtomicU64::new(0),
    events_skipped: AtomicU64::new(0),
    events_malformed: AtomicU64::new(0),
    commands_ok: AtomicU64::new(0),
    commands_failed: AtomicU64::new(0),
    stages: [const { [AtomicU64::new(0), AtomicU64::new(0)] }; 4],
};

/// The process's counters.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    pub fn event(&self, outcome: EventOutcome) {
        let c = match outcome {
            EventOutcome::Handled => &self.events_handled,
            EventOutcome::Duplicate => &self.events_duplicate,
            EventOutcome::Skipped => &self.events_skipped,
            EventOutcome::Malformed => &self.events_malformed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// An exec command finished: `ok` when it exited 0.
    pub fn command(&self, ok: bool) {
        let c = if ok {
            &self.commands_ok
        } else {
            &self.commands_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A lifecycle stage attempt finished.
    pub fn stage(&self, stage: LifecycleStage, ok: bool) {
        if let Some(i) = STAGES.iter().position(|s| *s == stage) {
            self.stages[i][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus page.
    pub fn render(&self) -> String {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        let mut e = Exposition::default();
        e.family(
            "shadowtap_provisioner_events_total",
            "counter",
            "Scale events consumed, by outcome.",
            &[
                (&[("outcome", "handled")], v(&self.events_handled)),
                (&[("outcome", "duplicate")], v(&self.events_duplicate)),
                (&[("outcome", "skipped")], v(&self.events_skipped)),
                (&[("outcome", "malformed")], v(&self.events_malformed)),
            ],
        );
        e.family(
            "shadowtap_provisioner_commands_total",
            "counter",
            "exec driver commands run, by outcome (failed: non-zero exit or killed).",
            &[
                (&[("outcome", "ok")], v(&self.commands_ok)),
                (&[("outcome", "failed")], v(&self.commands_failed)),
            ],
        );
        let labels: Vec<[(&str, &str); 2]> = STAGES
            .iter()
            .flat_map(|s| {
                [
                    [("stage", stage_name(*s)), ("outcome", "ok")],
                    [("stage", stage_name(*s)), ("outcome", "failed")],
                ]
            })
            .collect();
        let samples: Vec<(&[(&str, &str)], f64)> = labels
            .iter()
            .zip(self.stages.iter().flatten())
            .map(|(l, c)| (&l[..], v(c)))
            .collect();
        e.family(
            "shadowtap_provisioner_stages_total",
            "counter",
            "haproxy driver lifecycle stage attempts, by stage and outcome.",
            &samples,
        );
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_series() {
        let m = Metrics {
            events_handled: AtomicU64::new(0),
            events_duplicate: AtomicU64::new(0),
            events_skipped: AtomicU64::new(0),
            events_malformed: AtomicU64::new(0),
            commands_ok: AtomicU64::new(0),
            commands_failed: AtomicU64::new(0),
            stages: [const { [AtomicU64::new(0), AtomicU64::new(0)] }; 4],
        };
        m.event(EventOutcome::Handled);
        m.command(false);
        m.stage(LifecycleStage::WarmUp, false);
        m.stage(LifecycleStage::WarmUp, true);
        let page = m.render();
        for line in [
            "shadowtap_provisioner_events_total{outcome=\"handled\"} 1",
            "shadowtap_provisioner_events_total{outcome=\"duplicate\"} 0",
            "shadowtap_provisioner_commands_total{outcome=\"failed\"} 1",
            "shadowtap_provisioner_commands_total{outcome=\"ok\"} 0",
            "shadowtap_provisioner_stages_total{stage=\"warm_up\",outcome=\"failed\"} 1",
            "shadowtap_provisioner_stages_total{stage=\"warm_up\",outcome=\"ok\"} 1",
            "shadowtap_provisioner_stages_total{stage=\"provision\",outcome=\"failed\"} 0",
        ] {
            assert!(page.contains(&format!("{line}\n")), "{line} in\n{page}");
        }
    }
}
