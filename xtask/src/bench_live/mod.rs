//! `cargo xtask bench live`: nginx throughput with no capture, with shadowtap (host mode), with
//! `tcpdump -s 128 -w /dev/null`, and with shadowtap in tap mode on a tc mirror (against the
//! mirror alone), in one invocation, interleaved; plus the agent's CPU per packet, the kernel
//! programs' run time per packet live (`bpf_stats`) and under `BPF_PROG_TEST_RUN` on frames of
//! the same traffic, and the agent's loss counters.
//!
//! Set-up (issue 12): nginx (1 worker, 300-byte static file, `access_log off`) in one network
//! namespace, `wrk -t1 -c16 -d8s` in another, over a veth pair. Everything it creates is removed
//! on every exit path, Ctrl-C included (see `env`). `SHADOWTAP_BENCH_SECONDS` and
//! `SHADOWTAP_BENCH_ROUNDS` shorten a smoke run; defaults are the 8 s and 3 rounds.

mod bpf;
// Shared with `bench loadgen` (the same testbed and wrk).
pub(crate) mod env;
pub(crate) mod procs;
mod report;

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};

use self::{
    bpf::{Frames, ProgStats, TestRunResult},
    env::{BpfStatsSysctl, Nginx, Testbed, WorkDir, sleep},
    procs::{Agent, AgentCli, AgentExit, AgentMode, Tcpdump, wrk},
};
use crate::{ebpf, util};

/// The configurations of one round. (e) is (d)'s own baseline: the mirror copies every packet
/// whether or not an agent sits on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    NoCapture,
    Host,
    /// (b) with `--scheduling yield`: what yielding the CPU buys or costs, same run.
    HostYield,
    Tcpdump,
    Mirror,
    Tap,
    Baseline,
}

impl Config {
    pub const ALL: [Self; 7] = [
        Self::NoCapture,
        Self::Host,
        Self::HostYield,
        Self::Tcpdump,
        Self::Mirror,
        Self::Tap,
        Self::Baseline,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::NoCapture => "(a) no capture",
            Self::Host => "(b) shadowtap, host mode",
            Self::HostYield => "(g) (b) with --scheduling yield",
            Self::Tcpdump => "(c) tcpdump -s 128 -w /dev/null",
            Self::Mirror => "(e) tc mirror, nothing on it",
            Self::Tap => "(d) shadowtap, tap mode on mirror",
            Self::Baseline => "(f) do-nothing XDP + tc programs",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::NoCapture => "none",
            Self::Host => "host",
            Self::HostYield => "host-yield",
            Self::Tcpdump => "tcpdump",
            Self::Mirror => "mirror",
            Self::Tap => "tap",
            Self::Baseline => "baseline",
        }
    }

    fn agent_mode(self) -> Option<AgentMode> {
        match self {
            Self::Host => Some(AgentMode::Host),
            Self::HostYield => Some(AgentMode::HostYield),
            Self::Tap => Some(AgentMode::Tap),
            Self::Baseline => Some(AgentMode::Baseline),
            _ => None,
        }
    }

    fn mirrored(self) -> bool {
        matches!(self, Self::Mirror | Self::Tap)
    }
}

pub struct Settings {
    pub seconds: u64,
    pub rounds: u32,
    /// Frames captured per direction for the test runs.
    pub frames: usize,
    /// Passes over the captured frames per program.
    pub passes: u32,
}

impl Settings {
    fn from_env() -> Result<Self> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .ok()
                    .with_context(|| format!("{name}={v:?} is not a number")),
                Err(_) => Ok(default),
            }
        }
        let settings = Self {
            seconds: var("SHADOWTAP_BENCH_SECONDS", 8)?,
            rounds: var("SHADOWTAP_BENCH_ROUNDS", 3)?,
            frames: var("SHADOWTAP_BENCH_TESTRUN_FRAMES", 2000)?,
            passes: var("SHADOWTAP_BENCH_TESTRUN_PASSES", 5)?,
        };
        if settings.seconds == 0 || settings.rounds == 0 || settings.frames == 0 {
            bail!("SHADOWTAP_BENCH_SECONDS, _ROUNDS and _TESTRUN_FRAMES must be at least 1");
        }
        Ok(settings)
    }

    /// Shorter or fewer runs than the issue asks for: verdicts are only indicative.
    pub fn is_smoke(&self) -> bool {
        self.seconds < 8 || self.rounds < 3
    }
}

/// One wrk run under one configuration.
pub struct Run {
    pub config: Config,
    pub round: u32,
    pub rps: f64,
    pub wrk_problems: Vec<String>,
    pub agent: Option<AgentRun>,
    /// tcpdump's own summary (captured / dropped by kernel).
    pub tcpdump: Option<String>,
}

pub struct AgentRun {
    pub mode: AgentMode,
    /// utime+stime over the wrk run (and the settle time after it).
    pub cpu_seconds: f64,
    /// The same interval from the threads' schedstat (ns resolution), for comparison.
    pub sched_seconds: f64,
    /// Packets the agent's kernel programs counted over the same interval (ingress, egress).
    pub packets: (u64, u64),
    pub exit: AgentExit,
}

impl AgentRun {
    pub fn us_per_packet(&self) -> Option<f64> {
        let packets = self.packets.0 + self.packets.1;
        (packets > 0).then(|| self.cpu_seconds * 1e6 / packets as f64)
    }

    pub fn sched_us_per_packet(&self) -> Option<f64> {
        let packets = self.packets.0 + self.packets.1;
        (packets > 0).then(|| self.sched_seconds * 1e6 / packets as f64)
    }
}

/// The `bpf_stats` round of one agent mode and the test runs of its programs.
pub struct KernelRound {
    pub mode: AgentMode,
    pub rps: f64,
    pub progs: Vec<ProgFigure>,
    pub exit: AgentExit,
}

pub struct ProgFigure {
    pub stats: ProgStats,
    pub live_ns: Option<f64>,
    pub live_runs: u64,
    /// Which captured frames it was test-run on.
    pub frames: &'static str,
    pub test: TestRunResult,
}

/// After wrk ends, let the agent finish what the kernel already handed it before reading its
/// CPU time; it costs the agent's idle timers 0.5 s worth (a few ms at most).
const SETTLE: Duration = Duration::from_millis(500);

struct Ctx<'a> {
    settings: &'a Settings,
    cli: &'a AgentCli,
    bed: &'a Testbed,
    dir: &'a Path,
    sysctl: &'a BpfStatsSysctl,
}

pub fn run() -> Result<()> {
    if !util::is_root() {
        bail!("bench live creates network namespaces and attaches XDP: run it as root");
    }
    let settings = Settings::from_env()?;
    env::install_tools()?;
    ebpf::build()?;
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "shadowtap-agent",
        "--bin",
        "shadowtap-agent",
    ])?;
    let cli = AgentCli::detect(&util::target_dir().join("release/shadowtap-agent"))?;

    // Guards, dropped in reverse order on every exit path.
    env::install_signal_handlers()?;
    let sysctl = BpfStatsSysctl::take()?;
    let work = WorkDir::create()?;
    let bed = Testbed::create()?;
    let nginx = Nginx::start(&bed, &work.path)?;
    let ctx = Ctx {
        settings: &settings,
        cli: &cli,
        bed: &bed,
        dir: &work.path,
        sysctl: &sysctl,
    };
    let header = report::Header::collect(&ctx, &nginx);
    header.print(&mut std::io::stderr().lock());

    eprintln!("xtask: warm-up (2 s of wrk, not measured)");
    wrk(bed.client(), &bed.url(), 2, &work.path)?;
    let (ingress, egress) = capture_frames(&ctx)?;

    let mut runs = Vec::new();
    for round in 0..settings.rounds {
        let mut order = Config::ALL;
        order.rotate_left(round as usize % Config::ALL.len());
        for config in order {
            let run = measure(&ctx, config, round)?;
            eprintln!(
                "xtask: round {}/{} {:<36} {:>10.0} req/s",
                round + 1,
                settings.rounds,
                config.label(),
                run.rps
            );
            runs.push(run);
        }
    }
    let mut kernel = Vec::new();
    // The do-nothing programs too: their live figure less their test run is what bpf_stats'
    // own clock reads add to every run, which the report takes out of the others.
    for mode in [AgentMode::Host, AgentMode::Tap, AgentMode::Baseline] {
        kernel.push(kernel_round(&ctx, mode, &ingress, &egress)?);
    }

    let mut out = std::io::stdout().lock();
    header.print(&mut out);
    report::print(&mut out, &settings, &runs, &kernel)?;
    drop(nginx);
    Ok(())
}

/// Frames of the benchmark's own traffic (no capture attached), per direction, for the test
/// runs.
fn capture_frames(ctx: &Ctx) -> Result<(Frames, Frames)> {
    let count = ctx.settings.frames.to_string();
    let mut captures = Vec::new();
    for direction in ["in", "out"] {
        let path = ctx.dir.join(format!("frames-{direction}.pcap"));
        let path_arg = path.to_string_lossy().into_owned();
        // -Z root: Debian's tcpdump otherwise writes the file as user tcpdump.
        let args = [
            "-Q", direction, "-s", "0", "-c", &count, "-U", "-Z", "root", "-w", &path_arg,
        ];
        let label = format!("tcpdump-frames-{direction}");
        let dump = Tcpdump::start(
            ctx.bed.server(),
            &ctx.bed.pair.server_if,
            &args,
            ctx.dir,
            &label,
        )?;
        captures.push((dump, path));
    }
    eprintln!("xtask: capturing {count} frames per direction for the test runs (2 s of wrk)");
    wrk(ctx.bed.client(), &ctx.bed.url(), 2, ctx.dir)?;
    let mut frames = Vec::new();
    for (dump, path) in captures {
        dump.stop()?;
        let read = bpf::read_frames(&path)?;
        if read.is_empty() {
            bail!("captured no frames into {}", path.display());
        }
        frames.push(read);
    }
    let egress = frames.pop().context("egress frames")?;
    let ingress = frames.pop().context("ingress frames")?;
    Ok((ingress, egress))
}

/// The agent in the server namespace: on the server's veth, or in tap mode on the mirror.
fn start_agent(ctx: &Ctx, mode: AgentMode, label: &str) -> Result<Agent> {
    let bed = ctx.bed;
    let iface = match mode {
        AgentMode::Host | AgentMode::HostYield | AgentMode::Baseline => &bed.pair.server_if,
        AgentMode::Tap => &bed.mirror_out,
    };
    Agent::start(ctx.cli, bed.server(), iface, mode, ctx.dir, label)
}

fn measure(ctx: &Ctx, config: Config, round: u32) -> Result<Run> {
    let bed = ctx.bed;
    // Declared first so it goes last: after the agent has stopped.
    let _mirror = if config.mirrored() {
        Some(bed.mirror()?)
    } else {
        None
    };
    let label = format!("r{}-{}", round + 1, config.short());
    let agent = match config.agent_mode() {
        Some(mode) => Some(start_agent(ctx, mode, &label)?),
        None => None,
    };
    let tcpdump = if config == Config::Tcpdump {
        let args = ["-s", "128", "-w", "/dev/null"];
        Some(Tcpdump::start(
            bed.server(),
            &bed.pair.server_if,
            &args,
            ctx.dir,
            &label,
        )?)
    } else {
        None
    };
    let before = match &agent {
        Some(a) => Some(((a.cpu_seconds()?, a.sched_seconds()?), a.packets()?)),
        None => None,
    };
    let result = wrk(bed.client(), &bed.url(), ctx.settings.seconds, ctx.dir)?;
    let tcpdump = match tcpdump {
        Some(t) => Some(t.stop()?),
        None => None,
    };
    let agent = match (agent, before) {
        (Some(agent), Some(((cpu0, sched0), (in0, out0)))) => {
            sleep(SETTLE)?;
            let cpu1 = agent.cpu_seconds()?;
            let sched1 = agent.sched_seconds()?;
            let (in1, out1) = agent.packets()?;
            let mode = agent.mode;
            Some(AgentRun {
                mode,
                cpu_seconds: cpu1 - cpu0,
                sched_seconds: sched1 - sched0,
                packets: (in1.saturating_sub(in0), out1.saturating_sub(out0)),
                exit: agent.stop()?,
            })
        }
        _ => None,
    };
    Ok(Run {
        config,
        round,
        rps: result.requests_per_sec,
        wrk_problems: result.problems,
        agent,
        tcpdump,
    })
}

/// One wrk run with `bpf_stats` on, then (stats off again) every attached program of the agent
/// test-run on the captured frames of the direction it sees.
fn kernel_round(
    ctx: &Ctx,
    mode: AgentMode,
    ingress: &Frames,
    egress: &Frames,
) -> Result<KernelRound> {
    let bed = ctx.bed;
    let _mirror = if mode == AgentMode::Tap {
        Some(bed.mirror()?)
    } else {
        None
    };
    let agent = start_agent(ctx, mode, &format!("bpfstats-{}", mode.label()))?;
    let progs = agent.attached_programs()?;
    if progs.is_empty() {
        bail!("the agent has no attached programs");
    }
    eprintln!(
        "xtask: bpf_stats round, {} mode (kernel.bpf_stats_enabled=1 for this wrk run only)",
        mode.as_arg()
    );
    ctx.sysctl.set(true)?;
    let measured = (|| -> Result<_> {
        let before: Vec<ProgStats> = progs
            .iter()
            .map(|(id, _)| bpf::prog_stats(*id))
            .collect::<Result<_>>()?;
        let result = wrk(bed.client(), &bed.url(), ctx.settings.seconds, ctx.dir)?;
        let after: Vec<ProgStats> = progs
            .iter()
            .map(|(id, _)| bpf::prog_stats(*id))
            .collect::<Result<_>>()?;
        Ok((before, result, after))
    })();
    ctx.sysctl.set(false)?;
    let (before, result, after) = measured?;

    let mut figures = Vec::new();
    for (b, a) in before.iter().zip(after) {
        let (frames, which): (Vec<&[u8]>, &'static str) = match (mode, a.prog_type.as_str()) {
            (AgentMode::Host | AgentMode::HostYield | AgentMode::Baseline, "xdp") => {
                (ingress.iter().map(|f| f.1.as_slice()).collect(), "ingress")
            }
            (AgentMode::Host | AgentMode::HostYield | AgentMode::Baseline, _) => {
                (egress.iter().map(|f| f.1.as_slice()).collect(), "egress")
            }
            // The mirror carries both directions, in time order.
            (AgentMode::Tap, _) => {
                let mut both: Vec<&((u32, u32), Vec<u8>)> = ingress.iter().chain(egress).collect();
                both.sort_by_key(|f| f.0);
                (
                    both.into_iter().map(|f| f.1.as_slice()).collect(),
                    "both directions",
                )
            }
        };
        eprintln!(
            "xtask: BPF_PROG_TEST_RUN {} (id {}) on {} captured {which} frames x {} passes",
            a.name,
            a.id,
            frames.len(),
            ctx.settings.passes
        );
        let test = bpf::test_run(a.id, &frames, ctx.settings.passes)?;
        figures.push(ProgFigure {
            live_ns: bpf::live_ns_per_run(b, &a),
            live_runs: a.run_cnt.saturating_sub(b.run_cnt),
            stats: a,
            frames: which,
            test,
        });
    }
    Ok(KernelRound {
        mode,
        rps: result.requests_per_sec,
        progs: figures,
        exit: agent.stop()?,
    })
}
