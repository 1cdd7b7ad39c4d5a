//! The processes a measured run starts: the agent (host or tap mode), tcpdump, and wrk; and
//! what is read from a running agent: its CPU time, its kernel counters, its programs.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use shadowtap_tests::{bpf::owned_bpf_objects, netns::Netns, process::BackgroundProcess};

use super::env::{check_interrupted, sleep};
use crate::util::output;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentMode {
    Host,
    /// Host mode with `--scheduling yield`: the agent's loop in the idle class while it keeps
    /// up (the default from stop 28 to stop 33).
    HostYield,
    Tap,
    /// Host mode with do-nothing programs on the same hooks (`--baseline-programs`): what the
    /// hooks themselves cost, apart from the tap's work.
    Baseline,
}

impl AgentMode {
    /// How the report names the mode.
    pub fn label(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::HostYield => "host-y",
            Self::Tap => "tap",
            Self::Baseline => "hooks",
        }
    }

    pub fn as_arg(self) -> &'static str {
        match self {
            Self::Host | Self::HostYield | Self::Baseline => "host",
            Self::Tap => "tap",
        }
    }
}

/// How to ask this build of the agent for its stats without the per-request event stream.
pub struct AgentCli {
    pub bin: PathBuf,
    /// `run --stats FILE` exists (the event stream is opt-in). Without it, the stats lines only
    /// come with the events on `--output`, which then costs the agent writing every event.
    pub has_stats_flag: bool,
}

impl AgentCli {
    pub fn detect(bin: &Path) -> Result<Self> {
        let help = output(Command::new(bin).args(["run", "--help"]))
            .with_context(|| format!("running {} run --help", bin.display()))?;
        Ok(Self {
            bin: bin.to_owned(),
            has_stats_flag: help.contains("--stats "),
        })
    }

    fn stats_args(&self, file: &Path) -> [OsString; 2] {
        let flag = if self.has_stats_flag {
            "--stats"
        } else {
            "--output"
        };
        [flag.into(), file.into()]
    }

    pub fn describe_stats(&self) -> &'static str {
        if self.has_stats_flag {
            "--stats FILE (no event stream)"
        } else {
            "--output FILE (this agent build has no --stats: events are written too, and cost CPU)"
        }
    }
}

/// A running `shadowtap-agent run`; SIGKILLed if dropped while running (the kernel then
/// detaches its links).
pub struct Agent {
    process: BackgroundProcess,
    stats_path: PathBuf,
    counters_map: u32,
    pub mode: AgentMode,
}

/// What the agent's final stats line says, plus how it exited.
pub struct AgentExit {
    pub success: bool,
    pub status: String,
    pub stats: Option<Value>,
    pub stderr_tail: String,
}

impl Agent {
    pub fn start(
        cli: &AgentCli,
        ns: &Netns,
        iface: &str,
        mode: AgentMode,
        dir: &Path,
        label: &str,
    ) -> Result<Self> {
        let stats_path = dir.join(format!("{label}.stats.jsonl"));
        let mut cmd = ns.command(&cli.bin);
        cmd.args(["run", "--iface", iface, "--mode", mode.as_arg()])
            .args(["--xdp-mode", "driver", "--metrics-listen", "off"])
            .args(cli.stats_args(&stats_path))
            .arg("--scale-events")
            .arg(dir.join(format!("{label}.scale-events.jsonl")))
            .env("RUST_LOG", "info");
        match mode {
            AgentMode::Baseline => {
                cmd.arg("--baseline-programs");
            }
            AgentMode::HostYield => {
                cmd.args(["--scheduling", "yield"]);
            }
            AgentMode::Host | AgentMode::Tap => {}
        }
        let process = BackgroundProcess::spawn(cmd, label, dir)?;
        let mut agent = Self {
            process,
            stats_path,
            counters_map: 0,
            mode,
        };
        agent.wait_running()?;
        agent.counters_map = agent.find_map("COUNTERS")?;
        Ok(agent)
    }

    /// The agent logs "shadowtap agent running" once every program is attached.
    fn wait_running(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            check_interrupted()?;
            if let Some(status) = self.process.try_wait()? {
                bail!(
                    "shadowtap-agent exited ({status}) before attaching; {}",
                    self.process.stderr_tail()
                );
            }
            if self.process.stderr()?.contains("shadowtap agent running") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "shadowtap-agent did not attach within 60 s; {}",
                    self.process.stderr_tail()
                );
            }
            sleep(Duration::from_millis(50))?;
        }
    }

    /// The id of one of the agent's maps, found through its fds (other agents may be running:
    /// the live tests start their own).
    fn find_map(&self, name: &str) -> Result<u32> {
        let fdinfo = format!("/proc/{}/fdinfo", self.process.pid());
        for entry in std::fs::read_dir(&fdinfo).with_context(|| format!("listing {fdinfo}"))? {
            let Ok(info) = std::fs::read_to_string(entry?.path()) else {
                continue;
            };
            let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let shown = bpftool(&["map", "show", "id", &id.to_string()])?;
            if shown.get("name").and_then(Value::as_str) == Some(name) {
                return Ok(id);
            }
        }
        bail!("shadowtap-agent holds no BPF map named {name}")
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// utime + stime of the whole process (all threads), in seconds.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .with_context(|| format!("parsing {path}"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
        let ticks = |i: usize| -> Result<u64> {
            fields
                .get(i)
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("field {} of {path}", i + 3))
        };
        let total = ticks(11)? + ticks(12)?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if hz <= 0 {
            bail!("sysconf(_SC_CLK_TCK) returned {hz}");
        }
        Ok(total as f64 / hz as f64)
    }

    /// On-CPU time of all the agent's threads in ns resolution (`/proc/PID/task/*/schedstat`,
    /// first field), as a cross-check of the clock-tick figure, which moves in 10 ms steps.
    /// Threads that already exited are not counted; the agent's threads live as long as it.
    pub fn sched_seconds(&self) -> Result<f64> {
        let dir = format!("/proc/{}/task", self.pid());
        let mut ns = 0_u64;
        for task in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
            // A thread may exit between the listing and the read.
            let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else {
                continue;
            };
            ns += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .with_context(|| format!("parsing a schedstat under {dir}: {text:?}"))?;
        }
        Ok(ns as f64 / 1e9)
    }

    /// Packets the kernel programs counted so far, (ingress, egress): the `packets` counter
    /// (index 0) of the two entries of the per-CPU `COUNTERS` map, summed over CPUs.
    pub fn packets(&self) -> Result<(u64, u64)> {
        let dump = bpftool(&["map", "dump", "id", &self.counters_map.to_string()])?;
        let mut totals = [0_u64; 2];
        for entry in dump.as_array().into_iter().flatten() {
            let key = entry
                .get("key")
                .and_then(le_bytes)
                .context("COUNTERS key")?;
            let Some(total) = totals.get_mut(usize::try_from(key).unwrap_or(usize::MAX)) else {
                continue;
            };
            for cpu in entry
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                *total += cpu
                    .get("value")
                    .and_then(first_u64)
                    .context("COUNTERS per-CPU value")?;
            }
        }
        Ok((totals[0], totals[1]))
    }

    /// The programs the agent has attached (through its BPF links): (program id, link type).
    pub fn attached_programs(&self) -> Result<Vec<(u32, String)>> {
        let mut progs: Vec<(u32, String)> = owned_bpf_objects(self.pid())?
            .into_iter()
            .filter(|o| o.kind == "bpf_link")
            .filter_map(|o| {
                let id = u32::try_from(o.prog_id()?).ok()?;
                Some((id, o.fields.get("link_type").cloned().unwrap_or_default()))
            })
            .collect();
        progs.sort();
        progs.dedup();
        Ok(progs)
    }

    /// SIGINT (the agent detaches, drains the ring, writes its final stats), then reads the
    /// final stats line.
    pub fn stop(mut self) -> Result<AgentExit> {
        let status = self
            .process
            .stop(libc::SIGINT, Duration::from_secs(60))
            .context("stopping shadowtap-agent")?;
        let text = std::fs::read_to_string(&self.stats_path).unwrap_or_default();
        let final_line = text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| {
                v.get("kind").and_then(Value::as_str) == Some("stats")
                    && v.get("final").and_then(Value::as_bool) == Some(true)
            });
        // The stats file may be large when it also carries events (old CLI): not kept.
        let _ = std::fs::remove_file(&self.stats_path);
        Ok(AgentExit {
            success: status.success(),
            status: status.to_string(),
            stats: final_line,
            stderr_tail: self.process.stderr_tail(),
        })
    }
}

/// Little-endian integer from bpftool's `["0x01", "0x00", …]` byte lists.
fn le_bytes(value: &Value) -> Option<u64> {
    let bytes = value.as_array()?;
    let mut out = 0_u64;
    for (i, b) in bytes.iter().take(8).enumerate() {
        let b = u64::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok()?;
        out |= b << (8 * i);
    }
    Some(out)
}

/// The first u64 of a value: raw bytes, or a BTF-formatted array of numbers.
fn first_u64(value: &Value) -> Option<u64> {
    let items = value.as_array()?;
    match items.first()? {
        Value::String(_) => le_bytes(value),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

/// `bpftool -j ARGS`, parsed.
pub fn bpftool(args: &[&str]) -> Result<Value> {
    let text = output(Command::new("bpftool").arg("-j").args(args))
        .with_context(|| format!("bpftool -j {}", args.join(" ")))?;
    serde_json::from_str(&text).with_context(|| format!("parsing bpftool -j {}", args.join(" ")))
}

/// tcpdump in a namespace; stopped with SIGINT (it then prints its drop counts).
pub struct Tcpdump {
    process: BackgroundProcess,
}

impl Tcpdump {
    /// `tcpdump -i IF ARGS`, returning once it is capturing.
    pub fn start(ns: &Netns, iface: &str, args: &[&str], dir: &Path, label: &str) -> Result<Self> {
        let mut cmd = ns.command("tcpdump");
        cmd.args(["-i", iface]).args(args);
        let mut process = BackgroundProcess::spawn(cmd, label, dir)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process.stderr()?.contains("listening on") {
            if let Some(status) = process.try_wait()? {
                bail!("tcpdump exited ({status}); {}", process.stderr_tail());
            }
            if Instant::now() >= deadline {
                bail!(
                    "tcpdump did not start within 10 s; {}",
                    process.stderr_tail()
                );
            }
            sleep(Duration::from_millis(20))?;
        }
        Ok(Self { process })
    }

    /// Stops it and returns its summary ("N packets captured … K packets dropped by kernel").
    pub fn stop(mut self) -> Result<String> {
        self.process
            .stop(libc::SIGINT, Duration::from_secs(10))
            .context("stopping tcpdump")?;
        Ok(self
            .process
            .stderr()?
            .lines()
            .filter(|l| l.contains("packets"))
            .collect::<Vec<_>>()
            .join(", "))
    }
}

/// What wrk reported.
pub struct WrkResult {
    pub requests_per_sec: f64,
    /// Non-2xx responses and socket errors, verbatim, if any.
    pub problems: Vec<String>,
}

/// `wrk -t1 -c16 -dSECONDS URL` in the client namespace.
pub fn wrk(client: &Netns, url: &str, seconds: u64, dir: &Path) -> Result<WrkResult> {
    let mut cmd = client.command("wrk");
    cmd.args(["-t1", "-c16", &format!("-d{seconds}s"), url]);
    let mut process = BackgroundProcess::spawn(cmd, "wrk", dir)?;
    let deadline = Instant::now() + Duration::from_secs(seconds + 30);
    let status = loop {
        check_interrupted()?;
        if let Some(status) = process.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            bail!("wrk did not finish within {} s", seconds + 30);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = process.stdout()?;
    if !status.success() {
        bail!("wrk failed ({status}): {text} {}", process.stderr_tail());
    }
    parse_wrk(&text)
}

fn parse_wrk(text: &str) -> Result<WrkResult> {
    let requests_per_sec = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output: {text}"))?;
    let problems = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Non-2xx") || l.starts_with("Socket errors"))
        .map(str::to_owned)
        .collect();
    Ok(WrkResult {
        requests_per_sec,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 8s test @ http://10.233.1.2:8080/\n  1 threads and 16 connections\n\
            \x20 98765 requests in 8.00s, 40.00MB read\n  Socket errors: connect 0, read 1, write 0, timeout 0\n\
            Requests/sec:  12345.67\nTransfer/sec:      5.00MB\n";
        let r = parse_wrk(text).expect("parses");
        assert!((r.requests_per_sec - 12_345.67).abs() < 1e-6);
        assert_eq!(r.problems.len(), 1);
    }

    #[test]
    fn reads_bpftool_bytes() {
        let v: Value = serde_json::from_str(
            r#"["0x01","0x02","0x00","0x00","0x00","0x00","0x00","0x00","0xff"]"#,
        )
        .expect("json");
        assert_eq!(le_bytes(&v), Some(0x0201));
        let n: Value = serde_json::from_str("[7, 8]").expect("json");
        assert_eq!(first_u64(&n), Some(7));
    }
}
