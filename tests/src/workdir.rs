//! Scratch directories of the live tests: named after the creating pid so that leftovers of a
//! run that died (its pid gone) are swept by the next, removed on drop, and world-readable
//! because servers started in them (nginx's worker) run as `nobody`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A scratch directory, removed on drop.
pub struct WorkDir(pub PathBuf);

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

impl WorkDir {
    /// `<tmp>/<prefix><pid>-<n>`, after sweeping the dead runs' directories of `prefix`.
    pub fn create(prefix: &str) -> Self {
        sweep_stale(prefix);
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("{prefix}{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating the work dir");
        let status = Command::new("chmod")
            .args(["-R", "0755"])
            .arg(&path)
            .status()
            .expect("running chmod");
        assert!(status.success(), "chmod {}", path.display());
        Self(path)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("removing {}: {e}", self.0.display());
        }
    }
}

/// Removes the directories of `prefix` whose creating pid is gone.
fn sweep_stale(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
