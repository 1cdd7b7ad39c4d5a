//! Small process helpers shared by the tasks.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (the directory holding xtask/).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Cargo's target directory for the workspace (`CARGO_TARGET_DIR`, relative to the root, or
/// target/).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| root().join("target"), |d| root().join(d))
}

/// Runs `cmd`, failing with its command line when it does not succeed.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: $ {shown}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// `cargo ARGS` in the workspace root with the pinned toolchain.
pub fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(cargo_bin()).args(args).current_dir(root()))
}

pub fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// True when `cmd` runs and exits 0 (used to probe for installed tools).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Output of `cmd` as a string, if it ran successfully.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

/// Numbered progress lines for a task: each step says what it is doing and roughly how long it
/// takes on a fresh 2-core machine, then how long it took; steps with nothing to do say so.
pub struct Steps {
    current: usize,
    total: usize,
}

/// A running step; [`Step::done`] prints its duration.
#[must_use = "call done() when the step ends"]
pub struct Step {
    tag: String,
    start: Instant,
}

impl Steps {
    pub fn new(total: usize) -> Self {
        Self { current: 0, total }
    }

    fn next_tag(&mut self) -> String {
        self.current += 1;
        // Callers that run more steps than announced still get numbered lines.
        self.total = self.total.max(self.current);
        format!("[{}/{}]", self.current, self.total)
    }

    /// `xtask: [n/N] WHAT (ABOUT)`, e.g. `what` = "building bpf-linker 0.13 against LLVM 22",
    /// `about` = "about 1 min, once".
    pub fn start(&mut self, what: &str, about: &str) -> Step {
        let tag = self.next_tag();
        eprintln!("xtask: {tag} {what} ({about})");
        Step {
            tag,
            start: Instant::now(),
        }
    }

    /// `xtask: [n/N] WHAT` for a step with nothing to do (e.g. "bpf-linker 0.13.0 present").
    pub fn skip(&mut self, what: &str) {
        let tag = self.next_tag();
        eprintln!("xtask: {tag} {what}");
    }
}

impl Step {
    pub fn done(self) {
        eprintln!(
            "xtask: {} done in {}",
            self.tag,
            human(self.start.elapsed())
        );
    }
}

/// "4.2 s", "3 min 05 s".
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} min {:02} s", s / 60, s % 60)
    }
}
