//! One network namespace per trial: the shadow, its origin and the load generator talk over
//! the namespace's loopback only, so no address of a trial exists outside it. Names are
//! `shadowtap-sweep-<pid>-<n>` like the cgroups; [`sweep_stale`] removes those of dead pids.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::cgroup::{PREFIX, is_stale};

fn ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running ip {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A trial's network namespace with loopback up; deleted (after killing what runs in it) on
/// drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(n: u32) -> io::Result<Self> {
        let name = format!("{PREFIX}{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `f` on a new thread that has joined this namespace (only that thread moves;
    /// sockets it creates stay in the namespace whichever thread uses them later).
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<std::thread::JoinHandle<T>> {
        let path = self.path();
        let file = File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            // SAFETY: setns(2) on an open namespace fd; it moves only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            let joined = if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            };
            let ok = joined.is_ok();
            let _ = tx.send(joined);
            assert!(ok, "setns failed");
            f()
        });
        match rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => Err(io::Error::new(
                e.kind(),
                format!("setns into {}: {e}", self.name),
            )),
            Err(_) => Err(io::Error::other("namespace thread ended before joining")),
        }
    }

    /// `ip netns exec <name>` as a command prefix.
    pub fn exec_prefix(&self) -> [String; 3] {
        ["netns".into(), "exec".into(), self.name.clone()]
    }
}

fn delete(name: &str) {
    if let Ok(pids) = ip(&["netns", "pids", name]) {
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) on a pid that `ip netns pids` listed in our namespace.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    let _ = ip(&["netns", "delete", name]);
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

fn list() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Deletes namespaces left by dead sweep processes. Returns how many.
pub fn sweep_stale() -> usize {
    let stale: Vec<String> = list().into_iter().filter(|n| is_stale(n)).collect();
    for n in &stale {
        delete(n);
    }
    stale.len()
}

/// This process's namespaces that still exist.
pub fn own_leftovers() -> Vec<String> {
    let prefix = format!("{PREFIX}{}-", std::process::id());
    list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}
