//! Preconditions of the live tests and the paths they use.
//!
//! Live tests need root and real tools; when something is missing they must fail with a message
//! that says what, never pass silently.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::process::find_in_path;

/// Fails unless the effective uid is 0 (namespaces, XDP and tc need it).
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        Ok(())
    } else {
        Err(Error::Precondition(format!(
            "live tests need root (network namespaces, XDP, tc); running as euid {euid}. \
             Run them as root, e.g. `sudo -E cargo test -p shadowtap-tests --test live`"
        )))
    }
}

/// Resolves a tool by name in `PATH`, then in the sbin directories root's `PATH` may lack.
pub fn require_tool(name: &str) -> Result<PathBuf> {
    if let Some(path) = find_in_path(name) {
        return Ok(path);
    }
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| PathBuf::from(dir).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Precondition(format!(
                "`{name}` not found in PATH or sbin; install it (Debian: iproute2, tcpreplay, \
                 bpftool, tshark, llvm)"
            ))
        })
}

/// An `llc` that can emit BPF objects: `llc` in `PATH`, else a versioned LLVM install
/// (`llc-22`, `/usr/lib/llvm-*/bin/llc`, newest first).
pub fn require_llc() -> Result<PathBuf> {
    if let Ok(path) = require_tool("llc") {
        return Ok(path);
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("llvm-")?.parse().ok()?;
            let llc = entry.path().join("bin/llc");
            llc.is_file().then_some((version, llc))
        })
        .collect();
    versioned.sort();
    versioned.pop().map(|(_, path)| path).ok_or_else(|| {
        Error::Precondition(
            "`llc` not found in PATH or /usr/lib/llvm-*/bin (Debian: llvm or llvm-22)".to_owned(),
        )
    })
}

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.clone(), std::path::Path::to_path_buf)
}

/// The shared, read-only data directory: `SHADOWTAP_SHARED_DATA`, else `<workspace>/../shared/data`.
pub fn shared_data_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("SHADOWTAP_SHARED_DATA")
        .map_or_else(|| workspace_root().join("../shared/data"), PathBuf::from);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(Error::Precondition(format!(
            "shared data directory {} missing (set SHADOWTAP_SHARED_DATA)",
            dir.display()
        )))
    }
}

/// One shared pcap by file name, e.g. `http-packets.pcap`.
pub fn shared_pcap(name: &str) -> Result<PathBuf> {
    let path = shared_data_dir()?.join("pcap").join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Precondition(format!(
            "shared pcap {} missing",
            path.display()
        )))
    }
}

/// The cargo target directory: `CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}
