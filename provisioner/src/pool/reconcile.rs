//! Reconciliation after a (re)start: the state file against HAProxy's `show servers state` and
//! the live processes (see `docs/provisioner.md`, "Restart safety").

use super::{Ctx, Pool};
use crate::state::{Instance, Phase};
use crate::{Result, instance};

impl Pool {
    /// Brings the state file and HAProxy into agreement after a (re)start.
    pub(super) async fn reconcile(&mut self) -> Result<()> {
        let servers = self.haproxy.servers(&self.cfg.backend).await?;
        let ctx_of = |pool: &Self, inst: &Instance| Ctx {
            event_id: inst.event_id.clone(),
            resource: pool.state.inflight.as_ref().map_or_else(
                || {
                    pool.cfg
                        .resource
                        .clone()
                        .unwrap_or_else(|| pool.cfg.backend.clone())
                },
                |e| e.data.resource.clone(),
            ),
            target: pool
                .state
                .inflight
                .as_ref()
                .map_or(0, |e| e.data.target_instances),
            demand: pool
                .state
                .inflight
                .as_ref()
                .map_or(0.0, super::predicted_demand),
        };
        for inst in self.state.instances.clone() {
            let alive =
                matches!((inst.pid, inst.start_time), (Some(p), Some(s)) if instance::alive(p, s));
            let in_haproxy = servers.iter().any(|s| s.name == inst.name);
            tracing::info!(instance = %inst.name, phase = ?inst.phase, alive, in_haproxy, "reconciling");
            match inst.phase {
                // Not known healthy yet, or on its way out: start over / finish the removal.
                Phase::Provisioning | Phase::Decommissioning => self.discard(&inst.name).await?,
                _ if !alive => self.discard(&inst.name).await?,
                phase => {
                    if !in_haproxy {
                        self.haproxy
                            .add_server(&self.cfg.backend, &inst.name, &inst.addr, inst.port)
                            .await?;
                    }
                    if phase != Phase::Serving {
                        let ctx = ctx_of(self, &inst);
                        self.finish_scale_out(&ctx, &inst.name).await?;
                    } else if !in_haproxy {
                        self.haproxy
                            .set_weight(&self.cfg.backend, &inst.name, self.cfg.full_weight)
                            .await?;
                    }
                }
            }
        }
        // Servers of ours that the state does not know (a lost state file): nothing can be
        // said about their processes, so they leave the pool.
        let servers = self.haproxy.servers(&self.cfg.backend).await?;
        for s in servers {
            if s.name.starts_with(&self.cfg.name_prefix)
                && !self.state.instances.iter().any(|i| i.name == s.name)
            {
                tracing::warn!(server = %s.name, "server unknown to the state file; removed");
                self.haproxy
                    .remove_server(&self.cfg.backend, &s.name)
                    .await?;
            }
        }
        self.save()
    }
}
