//! Read-only queries of the [`ModelStore`]: entities, profiles, demand series, memory.

use shadowtap_core::profile::{PROFILE_SCHEMA, PROFILE_VERSION, ProfileDocument, ResourceProfile};
use std::time::Duration;

use super::ModelError;
use super::ids::{ClientId, EntityId, ResourceId};
use super::store::ModelStore;
use super::table::{Entity, EntityKey, HOURS_PER_WEEK};

impl ModelStore {
    /// Resources currently modelled.
    pub fn resources(&self) -> impl Iterator<Item = &ResourceId> {
        self.resources.iter().map(|e| &e.key)
    }

    /// Clients currently modelled.
    pub fn clients(&self) -> impl Iterator<Item = &ClientId> {
        self.clients.iter().map(|e| &e.key)
    }

    pub fn resource_count(&self) -> usize {
        self.resources.len()
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    fn find_resource(&self, id: &ResourceId) -> Option<&Entity<ResourceId>> {
        self.resources.lookup(id.key_hash(), |k| k == id)
    }

    /// Requests per hour of week (Monday 00:00 UTC first) over the closed 1 s windows.
    pub fn hour_of_week(&self, entity: &EntityId) -> Option<[u64; HOURS_PER_WEEK]> {
        let profile = match entity {
            EntityId::Resource(r) => &self.find_resource(r)?.hour_of_week,
            EntityId::Client(c) => &self.clients.lookup(c.hash64(), |k| k == c)?.hour_of_week,
        };
        Some(profile.dense())
    }

    /// The `n` busiest hours of week, busiest first: `(hour, requests)`.
    pub fn peak_hours(&self, entity: &EntityId, n: usize) -> Vec<(usize, u64)> {
        let Some(profile) = self.hour_of_week(entity) else {
            return Vec::new();
        };
        let mut hours: Vec<(usize, u64)> = profile
            .into_iter()
            .enumerate()
            .filter(|&(_, v)| v > 0)
            .collect();
        hours.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        hours.truncate(n);
        hours
    }

    /// The configured step of demand series.
    pub fn demand_step(&self) -> Duration {
        Duration::from_secs(self.config.demand_step_secs)
    }

    /// Requests per `step` of `resource` as `(step start unix ms, requests)`, oldest first,
    /// complete steps only (up to the last closed window), quiet steps as zeros, at most
    /// `demand_history` base steps back. `step` must be a multiple of [`Self::demand_step`].
    /// Empty for an unknown resource.
    pub fn demand_series(
        &self,
        resource: &ResourceId,
        step: Duration,
    ) -> Result<Vec<(u64, f64)>, ModelError> {
        let base_ms = self.config.demand_step_secs * 1000;
        let step_ms = step.as_millis();
        if step_ms == 0 || !step_ms.is_multiple_of(u128::from(base_ms)) {
            return Err(ModelError::Step { step_ms, base_ms });
        }
        let factor = u64::try_from(step_ms / u128::from(base_ms)).unwrap_or(u64::MAX);
        Ok(self.find_resource(resource).map_or_else(Vec::new, |e| {
            e.demand.series(
                self.config.demand_step_secs,
                factor,
                self.config.demand_history,
                self.clock.closed_until(),
            )
        }))
    }

    /// Approximate heap bytes held by the model (tables, windows, histograms, templates,
    /// connection tracking, pending summaries excluded).
    pub fn approx_memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.resources.heap_bytes()
            + self.clients.heap_bytes()
            + self.templates.heap_bytes()
            + self.conns.heap_bytes()
            + self.profile_conns.heap_bytes()
    }

    /// The request profile of every resource with requests, busiest first, or of the one
    /// named `resource` (its id as displayed, e.g. `shop.example@10.0.0.1:80`).
    pub fn profiles(&self, resource: Option<&str>) -> Vec<ResourceProfile> {
        let names = self.templates.names();
        let mut out: Vec<ResourceProfile> = self
            .resources
            .iter()
            .filter_map(|e| {
                let p = e.profile.as_ref()?;
                let id = e.key.to_string();
                if resource.is_some_and(|want| want != id) {
                    return None;
                }
                Some(p.build(
                    id,
                    e.key.host.clone(),
                    names,
                    &e.hour_of_week.dense(),
                    &self.observed_seconds,
                    self.profile_conns.open_requests(e.serial),
                    self.config.profile_sample,
                ))
            })
            .filter(|p| p.requests > 0)
            .collect();
        out.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.resource.cmp(&b.resource))
        });
        out
    }

    /// A profile document of [`Self::profiles`], learned from `source`.
    pub fn profile_document(&self, resource: Option<&str>, source: &str) -> ProfileDocument {
        ProfileDocument {
            schema: PROFILE_SCHEMA.to_owned(),
            version: PROFILE_VERSION,
            generated_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            source: source.to_owned(),
            resources: self.profiles(resource),
        }
    }
}
