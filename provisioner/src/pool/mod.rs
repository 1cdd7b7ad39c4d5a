//! The `haproxy` driver: a local pool of backend instances behind one HAProxy backend.
//!
//! A scale event's target is converged to, not applied as a delta, so re-running an event after
//! a restart (or a redelivery) is harmless. A scale-out runs, per instance: provision (start,
//! wait for the health check, `add server` at weight 0), warm up (optional command), shift
//! traffic (weight ramped to full in steps). A scale-in runs: shift traffic off (weight 0,
//! drain), decommission (wait for no sessions, `del server`, stop). Every stage is reported
//! as a lifecycle event. The state file is written before every change to the world, so
//! [`Pool::open`] can reconcile with HAProxy after a crash and finish the lifecycle in flight.

mod reconcile;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shadowtap_core::{ScaleEvent, decision::LifecycleStage};

use crate::haproxy::HaProxy;
use crate::input::Input;
use crate::instance;
use crate::metrics::{EventOutcome, metrics};
use crate::state::{Instance, Phase, PoolState, StateFile};
use crate::{Error, Result, now_ms};
use crate::{
    lifecycle::{LIFECYCLE_DATA_VERSION, LifecycleData, LifecycleEvent, Sink},
    prewarm::{PrewarmConfig, Prewarmer},
};
use shadowtap_core::lifecycle::WarmReport;

/// Settings of the pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The HAProxy backend holding the instances.
    pub backend: String,
    /// Only events of this resource are acted on; `None`: all.
    pub resource: Option<String>,
    /// Server names are `<prefix><seq>`; servers with another prefix are never touched.
    pub name_prefix: String,
    /// Address instances listen on and HAProxy connects to.
    pub addr: String,
    /// Instance `seq` listens on `base_port + seq % 10000` (or the next free port).
    pub base_port: u16,
    /// Starts one instance; `{name}`, `{addr}`, `{port}` are substituted.
    pub instance_cmd: String,
    /// Run after provisioning (e.g. cache pre-warm); same placeholders.
    pub warmup_cmd: Option<String>,
    pub health_path: String,
    pub health_timeout: Duration,
    /// How long a new instance may take to pass its health check (also the warm-up timeout).
    pub provision_timeout: Duration,
    /// Attempts per instance before its provision is reported failed for good.
    pub provision_attempts: u32,
    /// Backoff after the first failed attempt; doubles each time.
    pub backoff: Duration,
    pub full_weight: u32,
    pub ramp_time: Duration,
    pub ramp_steps: u32,
    /// How long a drain may wait for sessions to end before they are cut.
    pub drain_timeout: Duration,
    /// SIGTERM → SIGKILL grace of an instance.
    pub stop_grace: Duration,
    /// Where instance logs go.
    pub log_dir: PathBuf,
    /// `source` of lifecycle events.
    pub source: String,
    /// Cache pre-warming of new instances from a request profile (before `warmup_cmd`).
    pub prewarm: Option<PrewarmConfig>,
}

/// Which event a stage belongs to, for its report.
#[derive(Debug, Clone)]
struct Ctx {
    event_id: String,
    resource: String,
    target: u32,
    /// Requests the event predicts over its decision window (lead time + horizon), at the
    /// peak's rate (the observed window's when it predicts none).
    demand: f64,
}

/// Requests a scale event predicts until its decision window ends: a warmed key pays off if
/// it is asked for at any time the new instance serves within it, not only in the peak's
/// own window.
fn predicted_demand(event: &ScaleEvent) -> f64 {
    let d = &event.data;
    let per_window = if d.explanation.peak_point > 0.0 {
        d.explanation.peak_point
    } else {
        d.window.counts.requests as f64
    };
    let step = d.window.end_ms.saturating_sub(d.window.start_ms).max(1);
    let span = d
        .explanation
        .window_end_ms
        .saturating_sub(d.explanation.window_start_ms);
    per_window * (span as f64 / step as f64).max(1.0)
}

/// The pool and its persistent state.
pub struct Pool {
    cfg: PoolConfig,
    haproxy: HaProxy,
    file: StateFile,
    state: PoolState,
    sink: Sink,
    prewarmer: Option<Prewarmer>,
    /// The pre-warm report that goes with the next `warm_up` lifecycle event.
    next_warm: Option<WarmReport>,
}

impl Pool {
    /// Loads the state file, reconciles it with HAProxy and finishes the lifecycle in flight.
    pub async fn open(
        cfg: PoolConfig,
        haproxy: HaProxy,
        file: StateFile,
        sink: Sink,
    ) -> Result<Self> {
        let state = file.load()?;
        let prewarmer = cfg.prewarm.clone().map(Prewarmer::new);
        let mut pool = Self {
            cfg,
            haproxy,
            file,
            state,
            sink,
            prewarmer,
            next_warm: None,
        };
        pool.reconcile().await?;
        if let Some(event) = pool.state.inflight.clone() {
            tracing::info!(id = %event.id, "resuming the lifecycle in flight");
            pool.run_event(&event).await?;
        }
        Ok(pool)
    }

    pub fn state(&self) -> &PoolState {
        &self.state
    }

    /// Consumes `input` until it ends (or `max_events` were handled).
    pub async fn run(&mut self, mut input: Input, max_events: Option<u64>) -> Result<()> {
        let mut handled = 0u64;
        while let Some(incoming) = input.next().await? {
            match serde_json::from_slice::<ScaleEvent>(&incoming.payload) {
                Ok(event) => {
                    if self.handle(&event).await? {
                        handled += 1;
                        metrics().event(EventOutcome::Handled);
                    } else {
                        metrics().event(EventOutcome::Skipped);
                    }
                }
                Err(e) => {
                    metrics().event(EventOutcome::Malformed);
                    tracing::warn!(error = %e, "not a scale event; skipped");
                }
            }
            input.commit(&incoming)?;
            if max_events.is_some_and(|m| handled >= m) {
                break;
            }
        }
        Ok(())
    }

    /// Acts on one event; false if it was skipped (other resource, already handled).
    pub async fn handle(&mut self, event: &ScaleEvent) -> Result<bool> {
        if self
            .cfg
            .resource
            .as_ref()
            .is_some_and(|r| *r != event.data.resource)
        {
            return Ok(false);
        }
        if let Some(p) = &mut self.prewarmer {
            let d = &event.data;
            p.observe_event(
                d.explanation.peak_at_ms,
                d.explanation.peak_point,
                (d.window.start_ms, d.window.end_ms),
                d.window.counts.requests,
            );
        }
        if self.state.is_done(&event.id) {
            tracing::info!(id = %event.id, "scale event already handled");
            return Ok(false);
        }
        self.state.inflight = Some(event.clone());
        self.save()?;
        self.run_event(event).await?;
        Ok(true)
    }

    async fn run_event(&mut self, event: &ScaleEvent) -> Result<()> {
        let ctx = Ctx {
            event_id: event.id.clone(),
            resource: event.data.resource.clone(),
            target: event.data.target_instances,
            demand: predicted_demand(event),
        };
        // A pool never goes below one instance: the last one is never drained.
        let target = event.data.target_instances.max(1) as usize;
        while self.count(Phase::Serving) < target {
            if !self.scale_out_one(&ctx).await? {
                tracing::warn!(id = %ctx.event_id, "scale-out stopped: provisioning failed");
                break;
            }
        }
        while self.count(Phase::Serving) > target {
            let Some(victim) = self.pick_victim().await else {
                break;
            };
            if !self.scale_in_one(&ctx, &victim).await? {
                break;
            }
        }
        self.state.inflight = None;
        self.state.mark_done(&event.id);
        self.save()
    }

    /// The serving instance to remove: an unhealthy one if any, else the newest.
    async fn pick_victim(&self) -> Option<String> {
        let serving: Vec<&Instance> = self
            .state
            .instances
            .iter()
            .filter(|i| i.phase == Phase::Serving)
            .collect();
        for i in &serving {
            if !self.healthy(i).await {
                return Some(i.name.clone());
            }
        }
        serving.last().map(|i| i.name.clone())
    }

    async fn healthy(&self, i: &Instance) -> bool {
        instance::health_check(
            &i.addr,
            i.port,
            &self.cfg.health_path,
            self.cfg.health_timeout,
        )
        .await
        .is_ok()
    }

    fn count(&self, phase: Phase) -> usize {
        self.state
            .instances
            .iter()
            .filter(|i| i.phase == phase)
            .count()
    }

    fn save(&self) -> Result<()> {
        self.file.save(&self.state)
    }

    fn marker(&self, name: &str) -> String {
        format!("{}#{name}", self.file.path().display())
    }

    fn instance(&self, name: &str) -> Result<Instance> {
        self.state
            .instances
            .iter()
            .find(|i| i.name == name)
            .cloned()
            .ok_or_else(|| Error::Instance(format!("{name} is not in the state")))
    }

    fn set_phase(&mut self, name: &str, phase: Phase) -> Result<()> {
        if let Some(i) = self.state.instance_mut(name) {
            i.phase = phase;
        }
        self.save()
    }

    /// Instances in HAProxy whose health check passes now.
    async fn healthy_count(&self) -> u32 {
        let mut n = 0;
        for i in &self.state.instances {
            if matches!(
                i.phase,
                Phase::Provisioned | Phase::WarmedUp | Phase::Serving
            ) && self.healthy(i).await
            {
                n += 1;
            }
        }
        n
    }

    async fn report(
        &mut self,
        ctx: &Ctx,
        name: &str,
        stage: LifecycleStage,
        attempt: u32,
        started_ms: u64,
        error: Option<String>,
    ) -> Result<()> {
        let finished_ms = now_ms();
        let (started_at, finished_at, duration_ms) =
            LifecycleEvent::timing(started_ms, finished_ms);
        let data = LifecycleData {
            schema_version: LIFECYCLE_DATA_VERSION,
            resource: ctx.resource.clone(),
            scale_event_id: ctx.event_id.clone(),
            instance: name.to_owned(),
            stage,
            attempt,
            ok: error.is_none(),
            error,
            started_at,
            finished_at,
            started_at_ms: started_ms,
            finished_at_ms: finished_ms,
            duration_ms,
            healthy_instances: self.healthy_count().await,
            target_instances: ctx.target,
            warm: if stage == LifecycleStage::WarmUp {
                self.next_warm.take()
            } else {
                None
            },
        };
        metrics().stage(stage, data.ok);
        if let Some(e) = &data.error {
            tracing::warn!(instance = name, stage = ?stage, attempt, error = %e, "stage failed");
        } else {
            tracing::info!(instance = name, stage = ?stage, attempt, duration_ms, "stage done");
        }
        self.sink
            .emit(&LifecycleEvent::new(&self.cfg.source, data))
            .await
    }

    /// A port for instance `seq` that no instance of the pool uses and nothing listens on.
    fn port_for(&self, seq: u64) -> u16 {
        let mut port = self.cfg.base_port.saturating_add((seq % 10_000) as u16);
        while self.state.instances.iter().any(|i| i.port == port)
            || std::net::TcpListener::bind((self.cfg.addr.as_str(), port)).is_err()
        {
            port = port.wrapping_add(1).max(1024);
        }
        port
    }

    /// Adds one serving instance; false if every provision attempt (or its warm-up) failed.
    async fn scale_out_one(&mut self, ctx: &Ctx) -> Result<bool> {
        let mut name = None;
        for attempt in 1..=self.cfg.provision_attempts.max(1) {
            let started = now_ms();
            let seq = self.state.next_seq;
            self.state.next_seq += 1;
            let candidate = format!("{}{seq}", self.cfg.name_prefix);
            self.state.instances.push(Instance {
                name: candidate.clone(),
                addr: self.cfg.addr.clone(),
                port: self.port_for(seq),
                phase: Phase::Provisioning,
                pid: None,
                start_time: None,
                event_id: ctx.event_id.clone(),
                attempt,
            });
            self.save()?;
            match self.provision(&candidate).await {
                Ok(()) => {
                    self.report(
                        ctx,
                        &candidate,
                        LifecycleStage::Provision,
                        attempt,
                        started,
                        None,
                    )
                    .await?;
                    name = Some(candidate);
                    break;
                }
                Err(e) => {
                    self.discard(&candidate).await?;
                    self.report(
                        ctx,
                        &candidate,
                        LifecycleStage::Provision,
                        attempt,
                        started,
                        Some(e.to_string()),
                    )
                    .await?;
                    if attempt < self.cfg.provision_attempts {
                        let backoff = self.cfg.backoff * 2u32.saturating_pow(attempt - 1);
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
        }
        match name {
            Some(name) => self.finish_scale_out(ctx, &name).await,
            None => Ok(false),
        }
    }

    /// Warm-up and traffic shift of a provisioned instance (also resumes them after a restart).
    async fn finish_scale_out(&mut self, ctx: &Ctx, name: &str) -> Result<bool> {
        let inst = self.instance(name)?;
        if inst.phase == Phase::Provisioned {
            let started = now_ms();
            if let Err(e) = self.warm_up(ctx, &inst).await {
                self.report(
                    ctx,
                    name,
                    LifecycleStage::WarmUp,
                    inst.attempt,
                    started,
                    Some(e.to_string()),
                )
                .await?;
                self.discard(name).await?;
                return Ok(false);
            }
            self.set_phase(name, Phase::WarmedUp)?;
            self.report(
                ctx,
                name,
                LifecycleStage::WarmUp,
                inst.attempt,
                started,
                None,
            )
            .await?;
        }
        let started = now_ms();
        let result = self.ramp(name).await;
        let error = result.as_ref().err().map(ToString::to_string);
        if error.is_none() {
            self.set_phase(name, Phase::Serving)?;
        }
        self.report(
            ctx,
            name,
            LifecycleStage::ShiftTraffic,
            inst.attempt,
            started,
            error,
        )
        .await?;
        Ok(result.is_ok())
    }

    /// Starts the instance, waits for its health check, adds it to HAProxy at weight 0.
    async fn provision(&mut self, name: &str) -> Result<()> {
        let inst = self.instance(name)?;
        let command = instance::render(&self.cfg.instance_cmd, name, &inst.addr, inst.port);
        let log = self.cfg.log_dir.join(format!("{name}.log"));
        let (pid, start) = instance::spawn(&command, &self.marker(name), &log)?;
        if let Some(i) = self.state.instance_mut(name) {
            i.pid = Some(pid);
            i.start_time = Some(start);
        }
        self.save()?;
        let deadline = Instant::now() + self.cfg.provision_timeout;
        loop {
            if !instance::alive(pid, start) {
                return Err(Error::Instance(format!(
                    "`{command}` exited before passing its health check (log: {})",
                    log.display()
                )));
            }
            match instance::health_check(
                &inst.addr,
                inst.port,
                &self.cfg.health_path,
                self.cfg.health_timeout,
            )
            .await
            {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::Instance(format!(
                        "not healthy within {:?}: {e}",
                        self.cfg.provision_timeout
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        self.haproxy
            .add_server(&self.cfg.backend, name, &inst.addr, inst.port)
            .await?;
        self.set_phase(name, Phase::Provisioned)
    }

    /// Pre-warms the instance's cache from the request profile (a failure to do so is
    /// reported in the event but does not discard a healthy instance), then runs
    /// `warmup_cmd` (e.g. a state copy), whose failure does.
    async fn warm_up(&mut self, ctx: &Ctx, inst: &Instance) -> Result<()> {
        if let Some(p) = &mut self.prewarmer {
            match p
                .warm(&ctx.resource, &inst.addr, inst.port, ctx.demand, ctx.target)
                .await
            {
                Ok(report) => {
                    tracing::info!(instance = %inst.name, keys = report.keys, ok = report.ok,
                        failed = report.failed, share = report.predicted_key_share,
                        bias = report.demand_bias, "cache pre-warmed");
                    self.next_warm = Some(report);
                }
                Err(e) => {
                    tracing::warn!(instance = %inst.name, error = %e, "cache pre-warm failed");
                    self.next_warm = Some(WarmReport {
                        error: Some(e.to_string()),
                        ..WarmReport::default()
                    });
                }
            }
        }
        let Some(template) = &self.cfg.warmup_cmd else {
            return Ok(());
        };
        let command = instance::render(template, &inst.name, &inst.addr, inst.port);
        let status = tokio::time::timeout(
            self.cfg.provision_timeout,
            tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .status(),
        )
        .await
        .map_err(|_| Error::Instance(format!("warm-up `{command}` timed out")))?
        .map_err(crate::io_context(format!("running `{command}`")))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Instance(format!(
                "warm-up `{command}` failed: {status}"
            )))
        }
    }

    /// Ramps the weight 0 → full in `ramp_steps` steps over `ramp_time`, then checks it.
    async fn ramp(&self, name: &str) -> Result<()> {
        let steps = self.cfg.ramp_steps.max(1);
        for step in 1..=steps {
            let weight = self.cfg.full_weight * step / steps;
            self.haproxy
                .set_weight(&self.cfg.backend, name, weight)
                .await?;
            if step < steps {
                tokio::time::sleep(self.cfg.ramp_time / steps).await;
            }
        }
        let servers = self.haproxy.servers(&self.cfg.backend).await?;
        match servers.iter().find(|s| s.name == name) {
            Some(s) if s.weight == self.cfg.full_weight => Ok(()),
            other => Err(Error::Instance(format!(
                "{name} after the ramp: {other:?}, expected weight {}",
                self.cfg.full_weight
            ))),
        }
    }

    /// Drains and removes `name`; false (reported) if it is the last healthy instance.
    async fn scale_in_one(&mut self, ctx: &Ctx, name: &str) -> Result<bool> {
        let inst = self.instance(name)?;
        let started = now_ms();
        let mut others = 0;
        for i in &self.state.instances {
            if i.name != name && i.phase == Phase::Serving && self.healthy(i).await {
                others += 1;
            }
        }
        // Removing an unhealthy instance never lowers the healthy count.
        if others == 0 && self.healthy(&inst).await {
            let error = format!("{name} is the last healthy instance; not drained");
            self.report(
                ctx,
                name,
                LifecycleStage::ShiftTraffic,
                inst.attempt,
                started,
                Some(error),
            )
            .await?;
            return Ok(false);
        }
        self.set_phase(name, Phase::Decommissioning)?;
        let drained = async {
            self.haproxy.set_weight(&self.cfg.backend, name, 0).await?;
            self.haproxy
                .set_state(&self.cfg.backend, name, "drain")
                .await
        }
        .await;
        let error = drained.as_ref().err().map(ToString::to_string);
        self.report(
            ctx,
            name,
            LifecycleStage::ShiftTraffic,
            inst.attempt,
            started,
            error,
        )
        .await?;
        let started = now_ms();
        let result = self.decommission(name).await;
        let error = result.as_ref().err().map(ToString::to_string);
        self.report(
            ctx,
            name,
            LifecycleStage::Decommission,
            inst.attempt,
            started,
            error,
        )
        .await?;
        Ok(result.is_ok())
    }

    /// Waits for the sessions to end (or the drain timeout), deletes the server, stops the
    /// instance and forgets it.
    async fn decommission(&mut self, name: &str) -> Result<()> {
        let deadline = Instant::now() + self.cfg.drain_timeout;
        while Instant::now() < deadline {
            match self
                .haproxy
                .current_sessions(&self.cfg.backend, name)
                .await?
            {
                Some(0) | None => break,
                Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        self.discard(name).await
    }

    /// Removes `name` from HAProxy (if there), stops its processes and drops it from the state.
    async fn discard(&mut self, name: &str) -> Result<()> {
        let inst = self.instance(name)?;
        let servers = self.haproxy.servers(&self.cfg.backend).await?;
        if servers.iter().any(|s| s.name == name) {
            self.haproxy.remove_server(&self.cfg.backend, name).await?;
        }
        if let (Some(pid), Some(start)) = (inst.pid, inst.start_time) {
            instance::stop(pid, start, self.cfg.stop_grace).await;
        }
        // Anything of it left, including a process started just before a crash that had no
        // time to record its pid.
        instance::kill_by_marker(&self.marker(name));
        self.state.instances.retain(|i| i.name != name);
        self.save()
    }
}
