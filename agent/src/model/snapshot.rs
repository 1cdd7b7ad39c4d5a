//! Snapshot and restore of the whole [`ModelStore`] (serde; JSON on disk).
//!
//! Everything a restarted agent needs is kept: configuration, the event-time clock, every
//! entity's open windows, hour-of-week profile and demand series, endpoint templates,
//! counters and summaries not yet drained. Connections in flight are not: after a restore
//! their closes count as `closes_untracked` and concurrency gauges restart from zero.
//! A restored snapshot is validated as a whole; anything inconsistent is an error, never a
//! panic later.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ids::{ClientId, ResourceId};
use super::store::ModelStore;
use super::summary::WindowSummary;
use super::table::{Entity, EntityKey, EntityTable, HOURS_PER_WEEK};
use super::templates::Templates;
use super::{ModelConfig, ModelError, ModelStats};
use crate::windows::Clock;

/// The only snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Serialize)]
struct SnapshotOut<'a> {
    version: u32,
    config: &'a ModelConfig,
    clock: &'a Clock,
    stats: ModelStats,
    templates: &'a [Box<str>],
    resources: Vec<&'a Entity<ResourceId>>,
    clients: Vec<&'a Entity<ClientId>>,
    pending_summaries: &'a [WindowSummary],
    observed_seconds: &'a [u64],
    observed_until_s: Option<u64>,
}

#[derive(Deserialize)]
struct SnapshotIn {
    version: u32,
    config: ModelConfig,
    clock: Clock,
    stats: ModelStats,
    templates: Vec<Box<str>>,
    resources: Vec<Entity<ResourceId>>,
    clients: Vec<Entity<ClientId>>,
    pending_summaries: Vec<WindowSummary>,
    /// Absent in snapshots written before request profiles.
    #[serde(default)]
    observed_seconds: Vec<u64>,
    #[serde(default)]
    observed_until_s: Option<u64>,
}

impl Serialize for ModelStore {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SnapshotOut {
            version: SNAPSHOT_VERSION,
            config: &self.config,
            clock: &self.clock,
            stats: self.stats(),
            templates: self.templates.names(),
            resources: self.resources.iter().collect(),
            clients: self.clients.iter().collect(),
            pending_summaries: &self.summaries,
            observed_seconds: &self.observed_seconds,
            observed_until_s: self.observed_until_s,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ModelStore {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let snapshot = SnapshotIn::deserialize(d)?;
        ModelStore::from_snapshot(snapshot).map_err(serde::de::Error::custom)
    }
}

fn restore_entities<K: EntityKey + PartialEq>(
    what: &str,
    entities: Vec<Entity<K>>,
    table: &mut EntityTable<K>,
    max: usize,
    check: &impl Fn(&Entity<K>) -> Result<(), String>,
) -> Result<(), String> {
    if entities.len() > max {
        return Err(format!("{} {what}s, at most {max}", entities.len()));
    }
    for mut entity in entities {
        check(&entity).map_err(|e| format!("{what} {}: {e}", entity.key.entity_id()))?;
        entity.hash = entity.key.key_hash();
        let key_eq = |k: &K| *k == entity.key;
        if table.lookup(entity.hash, key_eq).is_some() {
            return Err(format!("{what} {} listed twice", entity.key.entity_id()));
        }
        let open = entity.windows.is_open();
        // The count was checked against the capacity, so nothing is evicted here.
        let slot = table.insert(entity, |_, _| {});
        if open {
            table.mark_active(slot);
        }
    }
    Ok(())
}

impl ModelStore {
    fn from_snapshot(snap: SnapshotIn) -> Result<Self, String> {
        if snap.version != SNAPSHOT_VERSION {
            return Err(format!(
                "snapshot version {} (this build reads {SNAPSHOT_VERSION})",
                snap.version
            ));
        }
        let mut store = ModelStore::new(snap.config).map_err(|e| e.to_string())?;
        if snap.clock.lateness_ns() != store.config.allowed_lateness_ns {
            return Err("clock lateness differs from the configured lateness".into());
        }
        snap.clock.validate()?;
        store.clock = snap.clock;
        store.templates = Templates::from_names(snap.templates, store.config.max_templates)?;
        store.templates.other = snap.stats.templates_other;
        let ring_len = store.ring_len;
        let closed_until = store.clock.closed_until();
        let template_count = store.templates.len();
        let config = store.config.clone();
        // The hour-of-week profile's length is checked as it is read (`HourCounts`).
        let check = |windows: &crate::windows::EntityWindows,
                     demand: &super::demand::DemandSeries| {
            windows.validate(ring_len, closed_until, template_count)?;
            demand.validate(config.demand_step_secs, config.demand_history)
        };
        restore_entities(
            "resource",
            snap.resources,
            &mut store.resources,
            config.max_resources,
            &|e| check(&e.windows, &e.demand),
        )?;
        restore_entities(
            "client",
            snap.clients,
            &mut store.clients,
            config.max_clients,
            &|e| check(&e.windows, &e.demand),
        )?;
        let stats = snap.stats;
        store.resources.created = stats.resources_created;
        store.resources.evicted = stats.resources_evicted;
        store.clients.created = stats.clients_created;
        store.clients.evicted = stats.clients_evicted;
        store.conns.evicted = stats.conns_evicted;
        store.profile_conns.full = stats.profile_conns_full;
        match snap.observed_seconds.len() {
            0 => {}
            HOURS_PER_WEEK => store
                .observed_seconds
                .copy_from_slice(&snap.observed_seconds),
            n => return Err(format!("observed seconds of {n} hours")),
        }
        store.observed_until_s = snap.observed_until_s;
        store.summaries_drained = stats
            .summaries_emitted
            .saturating_sub(snap.pending_summaries.len() as u64);
        store.summaries = snap.pending_summaries;
        store.stats = ModelStats {
            events: stats.events,
            http_requests: stats.http_requests,
            http_responses: stats.http_responses,
            conn_opens: stats.conn_opens,
            conn_closes: stats.conn_closes,
            tls_client_hellos: stats.tls_client_hellos,
            ignored: stats.ignored,
            late_dropped: stats.late_dropped,
            closes_untracked: stats.closes_untracked,
            ..ModelStats::default()
        };
        Ok(store)
    }

    /// Writes a snapshot of the whole store as JSON.
    pub fn write_snapshot(&self, out: impl Write) -> Result<(), ModelError> {
        let mut out = BufWriter::new(out);
        serde_json::to_writer(&mut out, self).map_err(|e| io_or_snapshot(e, "writing snapshot"))?;
        out.flush().map_err(|source| ModelError::Io {
            context: "writing snapshot".into(),
            source,
        })
    }

    /// Restores a store from [`Self::write_snapshot`] output. A truncated, corrupt or
    /// inconsistent snapshot is [`ModelError::Snapshot`].
    pub fn read_snapshot(input: impl Read) -> Result<Self, ModelError> {
        serde_json::from_reader(BufReader::new(input))
            .map_err(|e| io_or_snapshot(e, "reading snapshot"))
    }

    /// Writes a snapshot to `path` atomically (a temporary file renamed over it).
    pub fn save_snapshot(&self, path: &Path) -> Result<(), ModelError> {
        let io = |context: String| move |source| ModelError::Io { context, source };
        let tmp = path.with_extension("tmp");
        let file = File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        self.write_snapshot(&file)?;
        file.sync_all()
            .map_err(io(format!("syncing {}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(io(format!(
            "renaming {} to {}",
            tmp.display(),
            path.display()
        )))
    }

    /// Restores a store from a file written by [`Self::save_snapshot`].
    pub fn load_snapshot(path: &Path) -> Result<Self, ModelError> {
        let file = File::open(path).map_err(|source| ModelError::Io {
            context: format!("opening {}", path.display()),
            source,
        })?;
        Self::read_snapshot(file).map_err(|e| match e {
            ModelError::Snapshot(m) => ModelError::Snapshot(format!("{}: {m}", path.display())),
            other => other,
        })
    }
}

fn io_or_snapshot(e: serde_json::Error, context: &str) -> ModelError {
    if e.is_io() {
        ModelError::Io {
            context: context.to_owned(),
            source: std::io::Error::other(e),
        }
    } else {
        ModelError::Snapshot(e.to_string())
    }
}
