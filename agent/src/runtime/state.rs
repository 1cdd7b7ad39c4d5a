//! Model state in `--state-dir`: restored on start, saved periodically and on shutdown, so a
//! restart does not reset cold start. A corrupt snapshot is reported and set aside, never fatal.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use tracing::{info, warn};

use shadowtap_core::ResourceSnapshot;

use crate::model::{ModelConfig, ModelStore};

const MODEL_FILE: &str = "model.json";
const FLEET_FILE: &str = "collector.json";

pub fn model_path(dir: &Path) -> PathBuf {
    dir.join(MODEL_FILE)
}

/// Loads the model snapshot from `dir`, or starts fresh. A snapshot that cannot be read is
/// renamed to `model.json.corrupt-<unix seconds>` and reported.
pub fn load_model(
    dir: Option<&Path>,
    config: &ModelConfig,
) -> Result<(ModelStore, Option<PathBuf>)> {
    let fresh = || ModelStore::new(config.clone()).context("model configuration");
    let Some(dir) = dir else {
        return Ok((fresh()?, None));
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    let path = model_path(dir);
    if !path.exists() {
        info!(path = %path.display(), "no model snapshot yet; starting fresh");
        return Ok((fresh()?, None));
    }
    match ModelStore::load_snapshot(&path) {
        Ok(mut model) => {
            info!(path = %path.display(), resources = model.resource_count(), "restored model snapshot");
            // The snapshot's model settings hold, but profiling follows the command line,
            // and raised limits apply.
            model.set_profiling(config.profiles, config.profile_sample);
            let kept = model.apply_limits(config);
            if !kept.is_empty() {
                warn!(
                    kept = kept.join(", "),
                    "model snapshot: these settings stay as the snapshot had them; move {} aside to start fresh with the new ones",
                    path.display()
                );
            }
            Ok((model, None))
        }
        Err(e) => {
            let aside = set_aside(&path)?;
            warn!(error = %e, moved_to = %aside.display(), "model snapshot unreadable; set aside, starting fresh");
            Ok((fresh()?, Some(aside)))
        }
    }
}

pub fn save_model(dir: &Path, model: &ModelStore) -> Result<()> {
    let path = model_path(dir);
    model
        .save_snapshot(&path)
        .with_context(|| format!("saving model snapshot {}", path.display()))
}

/// Saves the in-process collector's per-resource state (windows, demand history, decisions,
/// cooldown timers) next to the model, atomically.
pub fn save_fleet(dir: &Path, snapshots: &[ResourceSnapshot]) -> Result<()> {
    let path = dir.join(FLEET_FILE);
    let tmp = dir.join(format!("{FLEET_FILE}.tmp"));
    let json = serde_json::to_vec(snapshots).context("encoding collector state")?;
    std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Loads the in-process collector's state; an unreadable file is set aside and reported.
pub fn load_fleet(dir: &Path) -> Result<Vec<ResourceSnapshot>> {
    let path = dir.join(FLEET_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(Vec::new());
    };
    match serde_json::from_slice(&bytes) {
        Ok(snapshots) => Ok(snapshots),
        Err(e) => {
            let aside = set_aside(&path)?;
            warn!(error = %e, moved_to = %aside.display(), "collector state unreadable; set aside");
            Ok(Vec::new())
        }
    }
}

/// Renames an unreadable state file to `<name>.corrupt-<unix seconds>` so the next start does
/// not trip over it and a person can still inspect it.
fn set_aside(path: &Path) -> Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let aside = path.with_file_name(format!("{name}.corrupt-{stamp}"));
    std::fs::rename(path, &aside)
        .with_context(|| format!("setting aside unreadable state file {}", path.display()))?;
    Ok(aside)
}
