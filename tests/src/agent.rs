//! Running the real `shadowtap-agent` for live tests.
//!
//! Contract used here (from the project brief):
//! `shadowtap-agent run --iface IF --mode host|tap --xdp-mode driver|skb --output FILE
//! --stats-interval S` writes JSON lines to FILE and, on SIGINT/SIGTERM, a final `stats` line,
//! then detaches. `shadowtap-agent replay --pcap FILE --output OUT` decodes a capture with the
//! same decoder.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use crate::bpf::{Attachments, attachments};
use crate::error::{Error, Result};
use crate::events::EventLog;
use crate::netns::Netns;
use crate::process::BackgroundProcess;
use crate::support::target_dir;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureMode {
    /// XDP ingress and tc egress, packets pass.
    Host,
    /// XDP ingress only, packets are accounted then dropped.
    Tap,
}

impl CaptureMode {
    pub fn as_arg(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Tap => "tap",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    Driver,
    Skb,
}

impl XdpMode {
    pub fn as_arg(self) -> &'static str {
        match self {
            Self::Driver => "driver",
            Self::Skb => "skb",
        }
    }

    /// The hook name [`crate::bpf`] reports for this mode.
    pub fn hook_name(self) -> &'static str {
        match self {
            Self::Driver => "xdp driver",
            Self::Skb => "xdp skb",
        }
    }
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub iface: String,
    pub mode: CaptureMode,
    pub xdp_mode: XdpMode,
    pub stats_interval_secs: u32,
    pub extra_args: Vec<String>,
}

impl AgentConfig {
    /// Host mode, driver-mode XDP on `iface`, stats every second, and `extra` options.
    pub fn host_driver(iface: &str, extra: &[&str]) -> Self {
        Self {
            iface: iface.to_owned(),
            mode: CaptureMode::Host,
            xdp_mode: XdpMode::Driver,
            stats_interval_secs: 1,
            extra_args: extra.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// The agent binary: `SHADOWTAP_AGENT_BIN`, else the newer of `target/{debug,release}`.
pub fn agent_binary() -> Result<PathBuf> {
    workspace_binary(
        "shadowtap-agent",
        "SHADOWTAP_AGENT_BIN",
        "cargo xtask build-ebpf && cargo build -p shadowtap-agent",
    )
}

/// The load generator's binary (as [`agent_binary`]; `SHADOWTAP_LOADGEN_BIN` overrides).
pub fn loadgen_binary() -> Result<PathBuf> {
    workspace_binary(
        "shadowtap-loadgen",
        "SHADOWTAP_LOADGEN_BIN",
        "cargo build -p shadowtap-loadgen",
    )
}

/// `shadowtap-collector` (as [`agent_binary`]; `SHADOWTAP_COLLECTOR_BIN` overrides).
pub fn collector_binary() -> Result<PathBuf> {
    workspace_binary(
        "shadowtap-collector",
        "SHADOWTAP_COLLECTOR_BIN",
        "cargo build -p shadowtap-collector",
    )
}

/// `shadowtap-provisioner` (as [`agent_binary`]; `SHADOWTAP_PROVISIONER_BIN` overrides).
pub fn provisioner_binary() -> Result<PathBuf> {
    workspace_binary(
        "shadowtap-provisioner",
        "SHADOWTAP_PROVISIONER_BIN",
        "cargo build -p shadowtap-provisioner",
    )
}

/// The newest debug or release build of workspace binary `name`, or `$env_var`.
pub fn workspace_binary(name: &str, env_var: &str, build: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Precondition(format!(
                "{env_var}={} is not a file",
                path.display()
            )))
        };
    }
    let target = target_dir();
    let newest = ["debug", "release"]
        .iter()
        .map(|profile| target.join(profile).join(name))
        .filter_map(|p| {
            let modified = p.metadata().and_then(|m| m.modified()).ok()?;
            Some((modified, p))
        })
        .max_by_key(|(modified, _)| *modified);
    newest.map(|(_, p)| p).ok_or_else(|| {
        Error::Precondition(format!(
            "{name} not built: no {0}/debug/{name} or {0}/release/{name} (run `{build}`, or \
             set {env_var})",
            target.display()
        ))
    })
}

/// A running agent; killed if dropped while running.
pub struct RunningAgent {
    process: BackgroundProcess,
    output: PathBuf,
    config: AgentConfig,
}

/// What a stopped agent left behind.
pub struct AgentExit {
    pub status: ExitStatus,
    pub log: EventLog,
    pub stderr: String,
}

impl RunningAgent {
    /// Starts `shadowtap-agent run` inside `ns`; its output goes to `work_dir/agent.jsonl`.
    pub fn start(ns: &Netns, config: &AgentConfig, work_dir: &Path) -> Result<Self> {
        Self::start_with(ns, config, work_dir, "--output")
    }

    /// As [`Self::start`], without the per-request event stream (as the daemon runs by
    /// default): `work_dir/agent.jsonl` holds only the stats lines (`--stats`).
    pub fn start_stats_only(ns: &Netns, config: &AgentConfig, work_dir: &Path) -> Result<Self> {
        Self::start_with(ns, config, work_dir, "--stats")
    }

    fn start_with(
        ns: &Netns,
        config: &AgentConfig,
        work_dir: &Path,
        output_flag: &str,
    ) -> Result<Self> {
        let binary = agent_binary()?;
        let output = work_dir.join("agent.jsonl");
        let interval = config.stats_interval_secs.to_string();
        let mut args: Vec<String> = [
            "run",
            "--iface",
            &config.iface,
            "--mode",
            config.mode.as_arg(),
            "--xdp-mode",
            config.xdp_mode.as_arg(),
            output_flag,
            &output.to_string_lossy(),
            "--stats-interval",
            &interval,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(config.extra_args.iter().cloned());
        let mut cmd = ns.command(&binary);
        cmd.args(&args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let process = BackgroundProcess::spawn(cmd, "agent", work_dir)?;
        Ok(Self {
            process,
            output,
            config: config.clone(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn output_path(&self) -> &Path {
        &self.output
    }

    pub fn stderr_tail(&self) -> String {
        self.process.stderr_tail()
    }

    /// Waits until XDP (in the requested mode) and, in host mode, a tc egress program are
    /// attached to the interface. Fails at once if the agent exits first, and if XDP is
    /// attached in another mode than requested.
    pub fn wait_attached(&mut self, ns: &Netns, timeout: Duration) -> Result<Attachments> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.try_wait()? {
                return Err(Error::Precondition(format!(
                    "shadowtap-agent exited ({status}) before attaching to {}; {}",
                    self.config.iface,
                    self.process.stderr_tail()
                )));
            }
            let found = attachments(ns, &self.config.iface)?;
            let wanted_hook = self.config.xdp_mode.hook_name();
            if let Some(other) = found.xdp.iter().find(|p| p.hook != wanted_hook) {
                return Err(Error::Precondition(format!(
                    "asked for {wanted_hook} but the agent attached {} (prog {})",
                    other.hook, other.id
                )));
            }
            let ready = !found.xdp.is_empty()
                && (self.config.mode == CaptureMode::Tap || found.has_tc_egress());
            if ready {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("agent attaching to {}", self.config.iface),
                    timeout,
                    detail: format!(
                        "attached so far: {found:?}; {}; {}",
                        process_progress(self.process.pid()),
                        self.process.stderr_tail()
                    ),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The events written so far (a line being written is left out).
    pub fn events(&self) -> Result<EventLog> {
        if !self.output.exists() {
            return Ok(EventLog::default());
        }
        EventLog::read(&self.output, true)
    }

    /// Polls the output until `done` holds or `timeout` passes; returns whether it held.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&EventLog) -> bool) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.events()?) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` (SIGINT or SIGTERM for a clean stop), waits for the exit and reads the
    /// whole output, which must then consist of complete lines.
    pub fn stop(mut self, signal: i32, timeout: Duration) -> Result<AgentExit> {
        let status = self.process.stop(signal, timeout)?;
        if !self.output.is_file() {
            return Err(Error::Precondition(format!(
                "shadowtap-agent exited ({status}) without writing {}; {}",
                self.output.display(),
                self.process.stderr_tail()
            )));
        }
        let log = EventLog::read(&self.output, false)?;
        Ok(AgentExit {
            status,
            log,
            stderr: self.process.stderr()?,
        })
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.process.stop(libc::SIGKILL, Duration::from_secs(5))
    }
}

/// Where a slow process is, to tell "starved" from "stuck": its scheduler state, CPU time used,
/// innermost kernel frames (e.g. the BPF verifier) and the machine's load average.
fn process_progress(pid: u32) -> String {
    let read = |file: &str| std::fs::read_to_string(format!("/proc/{pid}/{file}"));
    let stat = read("stat").unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu_s = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |t| t / ticks)
    };
    let stack: Vec<String> = read("stack")
        .unwrap_or_default()
        .lines()
        .take(4)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "agent pid {pid}: state {}, CPU user {:.2} s sys {:.2} s, kernel stack [{}]; loadavg {}",
        fields.first().unwrap_or(&"?"),
        cpu_s(11),
        cpu_s(12),
        stack.join(" < "),
        load.trim()
    )
}

/// Decodes `pcap` with `shadowtap-agent replay` and returns its events.
pub fn replay(pcap: &Path, work_dir: &Path, extra_args: &[&str]) -> Result<EventLog> {
    let binary = agent_binary()?;
    let stem = pcap.file_name().map_or_else(
        || "capture".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let output = work_dir.join(format!("replay-{stem}.jsonl"));
    let mut cmd = Command::new(&binary);
    cmd.arg("replay")
        .arg("--pcap")
        .arg(pcap)
        .arg("--output")
        .arg(&output)
        .args(extra_args);
    let mut process = BackgroundProcess::spawn(cmd, &format!("replay-{stem}"), work_dir)?;
    let status = process.wait_timeout(Duration::from_secs(60))?;
    if !status.success() {
        return Err(Error::CommandFailed {
            command: process.command().to_owned(),
            status: status.to_string(),
            stderr: process.stderr_tail(),
        });
    }
    if !output.is_file() {
        return Err(Error::Precondition(format!(
            "`{}` exited 0 but wrote no {}; {}",
            process.command(),
            output.display(),
            process.stderr_tail()
        )));
    }
    EventLog::read(&output, false)
}
