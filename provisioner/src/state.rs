//! The pool's state file: its instances and the lifecycle in flight, rewritten atomically
//! (temp file, fsync, rename) before and after every step that changes the world, so a
//! restart finds every instance it may have started.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shadowtap_core::ScaleEvent;

use crate::{Error, Result, io_context};

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Recorded before its process starts; not in HAProxy yet.
    Provisioning,
    /// Healthy and in HAProxy with weight 0.
    Provisioned,
    /// Warm-up done; traffic is being ramped onto it.
    WarmedUp,
    /// In HAProxy with full weight.
    Serving,
    /// Being drained and removed.
    Decommissioning,
}

/// One instance of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub phase: Phase,
    /// Process group leader and its kernel start time, once started.
    pub pid: Option<u32>,
    pub start_time: Option<u64>,
    /// The scale event that created it.
    pub event_id: String,
    pub attempt: u32,
}

/// Everything the pool must remember across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolState {
    /// Sequence of instance names (never reused, so a restart cannot collide with a leftover).
    pub next_seq: u64,
    pub instances: Vec<Instance>,
    /// The scale event being executed, re-run after a restart.
    pub inflight: Option<ScaleEvent>,
    /// Ids of the last handled events, oldest first.
    pub done: VecDeque<String>,
}

/// How many handled event ids the state keeps.
const DONE_MEMORY: usize = 1000;

impl PoolState {
    pub fn mark_done(&mut self, id: &str) {
        if self.done.len() >= DONE_MEMORY {
            self.done.pop_front();
        }
        self.done.push_back(id.to_owned());
    }

    pub fn is_done(&self, id: &str) -> bool {
        self.done.iter().any(|d| d == id)
    }

    pub fn instance_mut(&mut self, name: &str) -> Option<&mut Instance> {
        self.instances.iter_mut().find(|i| i.name == name)
    }
}

/// The state file.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, or an empty one if the file does not exist yet.
    pub fn load(&self) -> Result<PoolState> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                context: format!("parsing {}", self.path.display()),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PoolState::default()),
            Err(e) => Err(io_context(format!("reading {}", self.path.display()))(e)),
        }
    }

    /// Replaces the file atomically: a crash leaves either the old or the new state.
    pub fn save(&self, state: &PoolState) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(state).map_err(|source| Error::Json {
            context: "serialising the state".to_owned(),
            source,
        })?;
        let mut f = std::fs::File::create(&tmp)
            .map_err(io_context(format!("creating {}", tmp.display())))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io_context(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &self.path).map_err(io_context(format!(
            "renaming {} to {}",
            tmp.display(),
            self.path.display()
        )))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The rename is durable once the directory is synced.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StateFile::new(dir.path().join("state.json"));
        assert!(file.load().expect("empty").instances.is_empty());
        let mut s = PoolState {
            next_seq: 3,
            ..PoolState::default()
        };
        s.mark_done("e1");
        s.instances.push(Instance {
            name: "a-1".into(),
            addr: "127.0.0.1".into(),
            port: 9001,
            phase: Phase::Serving,
            pid: Some(1),
            start_time: Some(2),
            event_id: "e1".into(),
            attempt: 1,
        });
        file.save(&s).expect("save");
        let back = file.load().expect("load");
        assert_eq!(back.instances, s.instances);
        assert!(back.is_done("e1"));
        assert!(!dir.path().join("state.tmp").exists());
    }
}
