//! One cgroup per trial, limiting the shadow's CPU and memory and measuring what it used.
//!
//! cgroup v2 (`/sys/fs/cgroup` is cgroup2 with the cpu and memory controllers) is the target:
//! `cpu.max`, `memory.max`, `cpu.stat usage_usec`, `memory.peak`, `cgroup.kill`. Hosts still
//! on the v1/hybrid layout (this project's build machine is one) get the same limits and
//! measures from the v1 `cpu`, `cpuacct` and `memory` hierarchies. Names are
//! `shadowtap-sweep-<pid>-<n>`: a leftover of a dead process is recognised by its pid and
//! removed by [`sweep_stale`].

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Prefix of every cgroup and namespace the runner creates.
pub const PREFIX: &str = "shadowtap-sweep-";
const ROOT: &str = "/sys/fs/cgroup";

fn io_err(context: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{context}: {e}"))
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(io_err(format!("writing {value:?} to {}", path.display())))
}

fn read(path: &Path) -> io::Result<String> {
    fs::read_to_string(path).map_err(io_err(format!("reading {}", path.display())))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    V2,
    V1,
}

/// Which cgroup layout this host has.
pub fn layout() -> Layout {
    if Path::new(ROOT).join("cgroup.controllers").is_file() {
        Layout::V2
    } else {
        Layout::V1
    }
}

/// A trial's cgroup; killed and removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    name: String,
    layout: Layout,
    /// v2: one directory; v1: cpu, cpuacct, memory directories.
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Creates `shadowtap-sweep-<pid>-<n>` with `cpu_cores` of CPU and `memory_bytes` of memory.
    pub fn create(n: u32, cpu_cores: f64, memory_bytes: u64) -> io::Result<Self> {
        let name = format!("{PREFIX}{}-{n}", std::process::id());
        let layout = layout();
        let period: u64 = 100_000;
        let quota = ((cpu_cores * period as f64) as u64).max(1000);
        let dirs = match layout {
            Layout::V2 => vec![Path::new(ROOT).join(&name)],
            Layout::V1 => ["cpu", "cpuacct", "memory"]
                .iter()
                .map(|c| Path::new(ROOT).join(c).join(&name))
                .collect(),
        };
        if layout == Layout::V2 {
            let control = Path::new(ROOT).join("cgroup.subtree_control");
            let enabled = read(&control)?;
            for c in ["cpu", "memory"] {
                if !enabled.split_whitespace().any(|x| x == c) {
                    write(&control, &format!("+{c}"))?;
                }
            }
        }
        let group = Self { name, layout, dirs };
        for d in &group.dirs {
            fs::create_dir(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        match layout {
            Layout::V2 => {
                let d = &group.dirs[0];
                write(&d.join("cpu.max"), &format!("{quota} {period}"))?;
                write(&d.join("memory.max"), &memory_bytes.to_string())?;
                // Without swap the limit is a limit; a missing file means no swap accounting.
                let _ = fs::write(d.join("memory.swap.max"), "0");
            }
            Layout::V1 => {
                write(
                    &group.dirs[0].join("cpu.cfs_period_us"),
                    &period.to_string(),
                )?;
                write(&group.dirs[0].join("cpu.cfs_quota_us"), &quota.to_string())?;
                write(
                    &group.dirs[2].join("memory.limit_in_bytes"),
                    &memory_bytes.to_string(),
                )?;
            }
        }
        Ok(group)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `cgroup.procs` files a process must write `0` to, to join (one per hierarchy).
    pub fn procs_files(&self) -> Vec<std::ffi::CString> {
        self.dirs
            .iter()
            .filter_map(|d| {
                std::ffi::CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).ok()
            })
            .collect()
    }

    /// CPU time used so far by every process that was in the group, microseconds.
    pub fn cpu_usage_usec(&self) -> io::Result<u64> {
        let parse_err = |p: &Path| io::Error::other(format!("no usage in {}", p.display()));
        match self.layout {
            Layout::V2 => {
                let p = self.dirs[0].join("cpu.stat");
                read(&p)?
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| parse_err(&p))
            }
            Layout::V1 => {
                let p = self.dirs[1].join("cpuacct.usage");
                let ns: u64 = read(&p)?.trim().parse().map_err(|_| parse_err(&p))?;
                Ok(ns / 1000)
            }
        }
    }

    /// Peak memory use of the group, bytes.
    pub fn memory_peak_bytes(&self) -> io::Result<u64> {
        let p = match self.layout {
            Layout::V2 => self.dirs[0].join("memory.peak"),
            Layout::V1 => self.dirs[2].join("memory.max_usage_in_bytes"),
        };
        read(&p)?
            .trim()
            .parse()
            .map_err(|_| io::Error::other(format!("no number in {}", p.display())))
    }

    /// Pids in the group.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.dirs)
    }

    /// Kills every process in the group and waits (up to 2 s) until it is empty.
    pub fn kill_all(&self) {
        kill_and_wait(&self.dirs, self.layout);
    }
}

fn pids_in(dirs: &[PathBuf]) -> Vec<i32> {
    let mut pids: Vec<i32> = dirs
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn kill_and_wait(dirs: &[PathBuf], layout: Layout) {
    if layout == Layout::V2 {
        let _ = fs::write(dirs[0].join("cgroup.kill"), "1");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = pids_in(dirs);
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) with a pid read from the group; no memory is touched.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn remove(dirs: &[PathBuf], layout: Layout) {
    kill_and_wait(dirs, layout);
    for d in dirs {
        // A group empties a moment after its last process is reaped: retry briefly.
        for _ in 0..100 {
            if fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        remove(&self.dirs, self.layout);
    }
}

/// True when `name` is `shadowtap-sweep-<pid>-<n>` for a pid that no longer runs.
pub fn is_stale(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes cgroups left by dead sweep processes. Returns how many were removed.
pub fn sweep_stale() -> usize {
    let layout = layout();
    let parents: Vec<PathBuf> = match layout {
        Layout::V2 => vec![PathBuf::from(ROOT)],
        Layout::V1 => ["cpu", "cpuacct", "memory"]
            .iter()
            .map(|c| Path::new(ROOT).join(c))
            .collect(),
    };
    let mut removed = 0;
    for parent in parents {
        let Ok(entries) = fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_stale(&name) {
                let dir = vec![e.path()];
                remove(
                    &dir,
                    if layout == Layout::V2 {
                        Layout::V2
                    } else {
                        Layout::V1
                    },
                );
                removed += 1;
            }
        }
    }
    removed
}

/// Names of this process's cgroups that still exist (for tests that check the cleanup).
pub fn own_leftovers() -> Vec<String> {
    let prefix = format!("{PREFIX}{}-", std::process::id());
    let mut out = Vec::new();
    for parent in [
        ROOT,
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/cpuacct",
        "/sys/fs/cgroup/memory",
    ] {
        if let Ok(entries) = fs::read_dir(parent) {
            out.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix)),
            );
        }
    }
    out
}
