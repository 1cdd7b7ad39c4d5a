//! The policy store: every trial of every sweep in one SQLite file (rusqlite, SQLite compiled
//! in). Load features, parameters, KPIs, when, on what machine, which explorer, whether it was
//! stopped early and how many repeats were averaged.
//!
//! The schema version lives in SQLite's `user_version`: a new file is created at
//! [`SCHEMA_VERSION`], an older one is migrated in place, a newer one is refused (an old build
//! must not write rows a newer one would misread). Load features and KPIs are columns, so a
//! load region is an indexed range query; the endpoint mix and the parameters are JSON (their
//! keys differ per service).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension as _, Row, params};

use crate::trial::{Kpis, LoadFeatures, Params, TrialRecord};

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: i64 = 1;

/// Store failures, each with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("trial store {path}: {context}: {source}")]
    Sqlite {
        path: PathBuf,
        context: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("trial store {path}: {context}: {source}")]
    Json {
        path: PathBuf,
        context: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("trial store {path}: schema version {found} is newer than this build's {supported}")]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
}

/// A range of load profiles: every bound is optional and inclusive.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadRegion {
    pub rate_rps: (Option<f64>, Option<f64>),
    pub concurrency: (Option<f64>, Option<f64>),
}

impl LoadRegion {
    /// Offered rates within `[lo, hi]`, any concurrency.
    #[must_use]
    pub fn rate(lo: f64, hi: f64) -> Self {
        Self {
            rate_rps: (Some(lo), Some(hi)),
            concurrency: (None, None),
        }
    }
}

/// The open store.
pub struct TrialStore {
    conn: Connection,
    path: PathBuf,
}

const CREATE_V1: &str = "
CREATE TABLE trials (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    explorer TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    machine TEXT NOT NULL,
    repeats INTEGER NOT NULL,
    early_stopped INTEGER NOT NULL,
    rate_rps REAL NOT NULL,
    concurrency REAL NOT NULL,
    mean_request_bytes REAL NOT NULL,
    mean_response_bytes REAL NOT NULL,
    mix_json TEXT NOT NULL,
    params_json TEXT NOT NULL,
    p50_ms REAL NOT NULL,
    p99_ms REAL NOT NULL,
    p999_ms REAL NOT NULL,
    throughput_rps REAL NOT NULL,
    error_rate REAL NOT NULL,
    cpu_cores REAL NOT NULL,
    rss_bytes INTEGER NOT NULL,
    objective_noise REAL
);
CREATE INDEX trials_by_service_load ON trials (service, rate_rps, concurrency);
";

const COLUMNS: &str = "id, service, explorer, started_at_ms, machine, repeats, early_stopped, \
     rate_rps, concurrency, mean_request_bytes, mean_response_bytes, mix_json, params_json, \
     p50_ms, p99_ms, p999_ms, throughput_rps, error_rate, cpu_cores, rss_bytes, objective_noise";

impl TrialStore {
    /// Opens `path`, creating the file and schema when new and migrating an older schema.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(sqlite(path, "opening"))?;
        let mut store = Self {
            conn,
            path: path.to_owned(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sqlite(&self.path, "reading user_version"))
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let found = self.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: self.path.clone(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let tx = self
            .conn
            .transaction()
            .map_err(sqlite(&self.path, "starting the migration"))?;
        if found < 1 {
            tx.execute_batch(CREATE_V1)
                .map_err(sqlite(&self.path, "creating schema v1"))?;
        }
        // Later versions add their steps here, each guarded by `found < N`.
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sqlite(&self.path, "setting user_version"))?;
        tx.commit()
            .map_err(sqlite(&self.path, "committing the migration"))
    }

    /// Inserts one trial; a trial id already stored is left as it is (a replayed sweep does not
    /// duplicate rows). Returns true when the row was new.
    pub fn insert(&mut self, trial: &TrialRecord) -> Result<bool, StoreError> {
        Ok(self.insert_all(std::slice::from_ref(trial))? == 1)
    }

    /// Inserts trials in one transaction; returns how many were new.
    pub fn insert_all(&mut self, trials: &[TrialRecord]) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(sqlite(&path, "starting an insert"))?;
        let mut inserted = 0;
        {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "INSERT INTO trials ({COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
                      ?17, ?18, ?19, ?20, ?21) ON CONFLICT(id) DO NOTHING"
                ))
                .map_err(sqlite(&path, "preparing the insert"))?;
            for t in trials {
                let mix = serde_json::to_string(&t.load.mix)
                    .map_err(json(&path, format!("encoding the mix of trial {}", t.id)))?;
                let params_json = serde_json::to_string(&t.params).map_err(json(
                    &path,
                    format!("encoding the parameters of trial {}", t.id),
                ))?;
                let k = &t.kpis;
                inserted += stmt
                    .execute(params![
                        t.id,
                        t.service,
                        t.explorer,
                        i64::try_from(t.started_at_ms).unwrap_or(i64::MAX),
                        t.machine,
                        t.repeats,
                        t.early_stopped,
                        t.load.rate_rps,
                        t.load.concurrency,
                        t.load.mean_request_bytes,
                        t.load.mean_response_bytes,
                        mix,
                        params_json,
                        k.p50_ms,
                        k.p99_ms,
                        k.p999_ms,
                        k.throughput_rps,
                        k.error_rate,
                        k.cpu_cores,
                        i64::try_from(k.rss_bytes).unwrap_or(i64::MAX),
                        k.objective_noise,
                    ])
                    .map_err(sqlite(&path, format!("inserting trial {}", t.id)))?;
            }
        }
        tx.commit().map_err(sqlite(&path, "committing trials"))?;
        Ok(inserted)
    }

    /// One trial by id.
    pub fn get(&self, id: &str) -> Result<Option<TrialRecord>, StoreError> {
        let raw = self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM trials WHERE id = ?1"),
                [id],
                RawRow::read,
            )
            .optional()
            .map_err(sqlite(&self.path, format!("reading trial {id}")))?;
        raw.map(|r| r.decode(&self.path)).transpose()
    }

    /// Every trial of `service`, oldest first.
    pub fn by_service(&self, service: &str) -> Result<Vec<TrialRecord>, StoreError> {
        self.by_service_in(service, &LoadRegion::default())
    }

    /// The trials of `service` whose load lies in `region`, oldest first.
    pub fn by_service_in(
        &self,
        service: &str,
        region: &LoadRegion,
    ) -> Result<Vec<TrialRecord>, StoreError> {
        let context = format!("querying the trials of {service}");
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM trials WHERE service = ?1 \
                 AND (?2 IS NULL OR rate_rps >= ?2) AND (?3 IS NULL OR rate_rps <= ?3) \
                 AND (?4 IS NULL OR concurrency >= ?4) AND (?5 IS NULL OR concurrency <= ?5) \
                 ORDER BY started_at_ms, id"
            ))
            .map_err(sqlite(&self.path, context.clone()))?;
        let rows = stmt
            .query_map(
                params![
                    service,
                    region.rate_rps.0,
                    region.rate_rps.1,
                    region.concurrency.0,
                    region.concurrency.1
                ],
                RawRow::read,
            )
            .map_err(sqlite(&self.path, context.clone()))?;
        let mut out = Vec::new();
        for row in rows {
            let raw = row.map_err(sqlite(&self.path, context.clone()))?;
            out.push(raw.decode(&self.path)?);
        }
        Ok(out)
    }

    /// The services with stored trials, sorted.
    pub fn services(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT service FROM trials ORDER BY service")
            .map_err(sqlite(&self.path, "listing services"))?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .map_err(sqlite(&self.path, "listing services"))?;
        rows.collect::<Result<Vec<String>, _>>()
            .map_err(sqlite(&self.path, "listing services"))
    }
}

/// A row before its JSON columns are decoded (rusqlite's row closure cannot return our errors).
struct RawRow {
    record: TrialRecord,
    mix_json: String,
    params_json: String,
}

impl RawRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        let started: i64 = r.get(3)?;
        let rss: i64 = r.get(19)?;
        Ok(Self {
            record: TrialRecord {
                id: r.get(0)?,
                service: r.get(1)?,
                explorer: r.get(2)?,
                started_at_ms: u64::try_from(started).unwrap_or(0),
                machine: r.get(4)?,
                repeats: r.get(5)?,
                early_stopped: r.get(6)?,
                load: LoadFeatures {
                    rate_rps: r.get(7)?,
                    concurrency: r.get(8)?,
                    mean_request_bytes: r.get(9)?,
                    mean_response_bytes: r.get(10)?,
                    mix: std::collections::BTreeMap::new(),
                },
                params: Params::new(),
                kpis: Kpis {
                    p50_ms: r.get(13)?,
                    p99_ms: r.get(14)?,
                    p999_ms: r.get(15)?,
                    throughput_rps: r.get(16)?,
                    error_rate: r.get(17)?,
                    cpu_cores: r.get(18)?,
                    rss_bytes: u64::try_from(rss).unwrap_or(0),
                    objective_noise: r.get(20)?,
                },
            },
            mix_json: r.get(11)?,
            params_json: r.get(12)?,
        })
    }

    fn decode(mut self, path: &Path) -> Result<TrialRecord, StoreError> {
        let id = self.record.id.clone();
        self.record.load.mix = serde_json::from_str(&self.mix_json)
            .map_err(json(path, format!("decoding the mix of trial {id}")))?;
        self.record.params = serde_json::from_str(&self.params_json)
            .map_err(json(path, format!("decoding the parameters of trial {id}")))?;
        Ok(self.record)
    }
}

fn sqlite(path: &Path, context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> StoreError {
    let path = path.to_owned();
    let context = context.into();
    move |source| StoreError::Sqlite {
        path,
        context,
        source,
    }
}

fn json(path: &Path, context: impl Into<String>) -> impl FnOnce(serde_json::Error) -> StoreError {
    let path = path.to_owned();
    let context = context.into();
    move |source| StoreError::Json {
        path,
        context,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::record;

    #[test]
    fn trials_round_trip_and_are_queried_by_service_and_load_region() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trials.sqlite");
        let mut store = TrialStore::open(&path).expect("create");
        assert_eq!(store.schema_version().expect("version"), SCHEMA_VERSION);
        let mut trials = Vec::new();
        for (i, rate) in [100.0, 200.0, 400.0, 800.0].into_iter().enumerate() {
            let mut t = record(&format!("s-{i}"), rate, 2, "on", 3.0 + i as f64);
            t.load.mix.insert("/a".into(), 0.75);
            t.load.mix.insert("/b/{id}".into(), 0.25);
            trials.push(t);
        }
        let mut other = record("o-1", 300.0, 4, "off", 9.0);
        other.service = "redis-front".into();
        trials.push(other);
        assert_eq!(store.insert_all(&trials).expect("insert"), 5);
        // A replayed trial is not duplicated.
        assert!(!store.insert(&trials[0]).expect("re-insert"));
        drop(store);

        let store = TrialStore::open(&path).expect("reopen");
        let all = store.by_service("nginx").expect("query");
        assert_eq!(all, trials[..4].to_vec());
        let mid = store
            .by_service_in("nginx", &LoadRegion::rate(150.0, 450.0))
            .expect("region");
        let ids: Vec<&str> = mid.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["s-1", "s-2"]);
        assert_eq!(
            store.services().expect("services"),
            ["nginx", "redis-front"]
        );
        assert_eq!(store.get("o-1").expect("get"), Some(trials[4].clone()));
        assert_eq!(store.get("nope").expect("get"), None);
    }

    #[test]
    fn a_newer_schema_is_refused_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("future.sqlite");
        let conn = Connection::open(&path).expect("sqlite");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("pragma");
        drop(conn);
        let err = TrialStore::open(&path).err().expect("refused");
        let text = err.to_string();
        assert!(
            text.contains("future.sqlite") && text.contains("newer"),
            "{text}"
        );
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_what_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("garbage.sqlite");
        std::fs::write(&path, vec![0x5a; 4096]).expect("write");
        let err = TrialStore::open(&path).err().expect("refused");
        assert!(err.to_string().contains("garbage.sqlite"), "{err}");
    }
}
