//! A provisioner with a fixed delay, a reactive (HPA-like) baseline and the accounting that
//! compares policies: under-provisioned minutes, instance-hours, scale events.

use std::collections::VecDeque;

use serde::Serialize;

/// Instances of one policy: running ones and requests still being provisioned.
#[derive(Debug, Clone)]
pub struct Provisioner {
    delay_ms: u64,
    ready: u32,
    /// (ready at, count), in request order.
    pending: VecDeque<(u64, u32)>,
}

impl Provisioner {
    /// `initial` instances already running; new ones take `delay_ms`.
    pub fn new(initial: u32, delay_ms: u64) -> Self {
        Self {
            delay_ms,
            ready: initial,
            pending: VecDeque::new(),
        }
    }

    /// Running plus requested instances (what billing and the policies see as current).
    pub fn requested(&self) -> u32 {
        self.ready + self.pending.iter().map(|(_, n)| n).sum::<u32>()
    }

    /// Instances serving traffic.
    pub fn ready(&self) -> u32 {
        self.ready
    }

    /// Move to `desired` at `now_ms`: new instances become ready after the delay; removals
    /// cancel pending requests first (newest first), then stop running instances at once.
    pub fn set_desired(&mut self, now_ms: u64, desired: u32) {
        let requested = self.requested();
        if desired > requested {
            self.pending
                .push_back((now_ms + self.delay_ms, desired - requested));
            return;
        }
        let mut remove = requested - desired;
        while remove > 0 {
            match self.pending.back_mut() {
                Some((_, n)) if *n > remove => {
                    *n -= remove;
                    remove = 0;
                }
                Some((_, n)) => {
                    remove -= *n;
                    self.pending.pop_back();
                }
                None => {
                    self.ready -= remove.min(self.ready);
                    remove = 0;
                }
            }
        }
    }

    /// The next time a pending request becomes ready, if before `until_ms`.
    fn next_ready_before(&self, until_ms: u64) -> Option<u64> {
        self.pending
            .front()
            .map(|(t, _)| *t)
            .filter(|t| *t < until_ms)
    }

    fn promote_until(&mut self, now_ms: u64) {
        while let Some(&(t, n)) = self.pending.front() {
            if t > now_ms {
                break;
            }
            self.ready += n;
            self.pending.pop_front();
        }
    }
}

/// Totals of one policy over the evaluation period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PolicyTotals {
    /// Minutes during which demand exceeded the capacity of the running instances.
    pub under_provisioned_minutes: f64,
    /// Instance-hours billed (running and being provisioned).
    pub instance_hours: f64,
    /// Scaling actions (scale-outs plus scale-ins).
    pub scale_events: u64,
    /// Scale-outs.
    pub scale_outs: u64,
    /// Scale-ins.
    pub scale_ins: u64,
    /// Demand above capacity, as a fraction of all demand.
    pub unserved_fraction: f64,
    /// Most instances requested at once.
    pub peak_instances: u32,
}

/// Accumulates [`PolicyTotals`] while a bucket of constant demand is played through a
/// [`Provisioner`].
#[derive(Debug, Clone, Default)]
pub struct Accounting {
    under_ms: f64,
    instance_ms: f64,
    unserved: f64,
    demand: f64,
    scale_outs: u64,
    scale_ins: u64,
    peak_instances: u32,
}

impl Accounting {
    /// Record a decision that moved the requested count from `before` to `after`.
    pub fn record_change(&mut self, before: u32, after: u32) {
        match after.cmp(&before) {
            std::cmp::Ordering::Greater => self.scale_outs += 1,
            std::cmp::Ordering::Less => self.scale_ins += 1,
            std::cmp::Ordering::Equal => {}
        }
        self.peak_instances = self.peak_instances.max(after);
    }

    /// Play the span `[start_ms, end_ms)` of a bucket of length `step_ms` whose demand
    /// `demand` is spread evenly over it.
    pub fn play_span(
        &mut self,
        provisioner: &mut Provisioner,
        (start_ms, end_ms): (u64, u64),
        step_ms: u64,
        demand: f64,
        capacity_per_instance: f64,
    ) {
        let mut t = start_ms;
        provisioner.promote_until(t);
        let step = step_ms.max(1) as f64;
        self.demand += demand * (end_ms.saturating_sub(start_ms)) as f64 / step;
        while t < end_ms {
            let until = provisioner
                .next_ready_before(end_ms)
                .unwrap_or(end_ms)
                .max(t);
            let span = (until - t) as f64;
            let capacity = f64::from(provisioner.ready()) * capacity_per_instance;
            if demand > capacity {
                self.under_ms += span;
                self.unserved += (demand - capacity) * span / step;
            }
            self.instance_ms += span * f64::from(provisioner.requested());
            t = until;
            provisioner.promote_until(t);
        }
    }

    /// The totals so far.
    pub fn totals(&self) -> PolicyTotals {
        PolicyTotals {
            under_provisioned_minutes: self.under_ms / 60_000.0,
            instance_hours: self.instance_ms / 3_600_000.0,
            scale_events: self.scale_outs + self.scale_ins,
            scale_outs: self.scale_outs,
            scale_ins: self.scale_ins,
            unserved_fraction: if self.demand > 0.0 {
                self.unserved / self.demand
            } else {
                0.0
            },
            peak_instances: self.peak_instances,
        }
    }
}

/// The reactive baseline: desired = ceil(last observed demand / (capacity × target
/// utilisation)), scale out at once, scale in to the highest desired count of the stabilisation
/// window (the Kubernetes HPA default behaviour, without its 10% tolerance band).
#[derive(Debug, Clone)]
pub struct ReactivePolicy {
    threshold_per_instance: f64,
    min_instances: u32,
    max_instances: u32,
    stabilisation_ms: u64,
    recommendations: VecDeque<(u64, u32)>,
}

impl ReactivePolicy {
    /// A reactive policy with the same capacity, target and limits as the predictive one.
    pub fn new(
        threshold_per_instance: f64,
        min_instances: u32,
        max_instances: u32,
        stabilisation_ms: u64,
    ) -> Self {
        Self {
            threshold_per_instance,
            min_instances,
            max_instances,
            stabilisation_ms,
            recommendations: VecDeque::new(),
        }
    }

    /// Instances for `demand` alone.
    pub fn raw_desired(&self, demand: f64) -> u32 {
        let raw = (demand.max(0.0) / self.threshold_per_instance).ceil();
        if raw.is_finite() {
            (raw as u64).clamp(u64::from(self.min_instances), u64::from(self.max_instances)) as u32
        } else {
            self.max_instances
        }
    }

    /// Desired count at `now_ms` after observing `demand`, given `current` requested instances.
    pub fn decide(&mut self, now_ms: u64, demand: f64, current: u32) -> u32 {
        let desired = self.raw_desired(demand);
        self.recommendations.push_back((now_ms, desired));
        while self
            .recommendations
            .front()
            .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > self.stabilisation_ms)
        {
            self.recommendations.pop_front();
        }
        if desired >= current {
            return desired;
        }
        let stabilised = self
            .recommendations
            .iter()
            .map(|(_, d)| *d)
            .max()
            .unwrap_or(desired);
        stabilised.min(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn capacity_arrives_after_the_delay() {
        let mut p = Provisioner::new(1, 10 * MIN);
        let mut acc = Accounting::default();
        p.set_desired(0, 3);
        assert_eq!(p.requested(), 3);
        // 30-minute bucket, demand 2 instances' worth: short for the first 10 minutes.
        acc.play_span(&mut p, (0, 20 * MIN), 30 * MIN, 200.0, 100.0);
        acc.play_span(&mut p, (20 * MIN, 30 * MIN), 30 * MIN, 200.0, 100.0);
        assert_eq!(p.ready(), 3);
        let totals = acc.totals();
        assert!((totals.under_provisioned_minutes - 10.0).abs() < 1e-9);
        // 3 instances billed for 30 minutes.
        assert!((totals.instance_hours - 1.5).abs() < 1e-9);
        // Unserved: 100 of 200 for a third of the bucket.
        assert!((totals.unserved_fraction - 100.0 / 3.0 / 200.0).abs() < 1e-9);
    }

    #[test]
    fn scale_in_cancels_pending_first() {
        let mut p = Provisioner::new(2, 10 * MIN);
        p.set_desired(0, 5);
        p.set_desired(MIN, 3);
        assert_eq!((p.ready(), p.requested()), (2, 3));
        p.set_desired(2 * MIN, 1);
        assert_eq!((p.ready(), p.requested()), (1, 1));
    }

    #[test]
    fn reactive_scales_out_at_once_and_in_after_stabilisation() {
        let mut r = ReactivePolicy::new(50.0, 1, 100, 5 * MIN);
        assert_eq!(r.decide(0, 260.0, 1), 6);
        // Demand falls at once; for five minutes the old recommendation holds.
        assert_eq!(r.decide(MIN, 40.0, 6), 6);
        assert_eq!(r.decide(5 * MIN, 40.0, 6), 6);
        assert_eq!(r.decide(6 * MIN, 40.0, 6), 1);
    }

    #[test]
    fn reactive_with_steps_longer_than_the_window_follows_demand() {
        let mut r = ReactivePolicy::new(10.0, 1, 100, 5 * MIN);
        assert_eq!(r.decide(0, 100.0, 1), 10);
        assert_eq!(r.decide(30 * MIN, 50.0, 10), 5);
    }
}
