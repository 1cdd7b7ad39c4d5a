//! The bench's report: a header saying what ran where, the throughput table, the agent's CPU
//! per packet, the kernel programs' run time per packet, every agent run's loss counters, and
//! one met / NOT met line per goal of issue 12.

use std::{fmt::Write as _, io::Write, process::Command};

use anyhow::Result;
use serde_json::Value;

use super::{
    AgentMode, AgentRun, Config, Ctx, KernelRound, ProgFigure, Run, Settings,
    env::{FILE_BYTES, Nginx},
    procs::AgentExit,
};
use crate::util::output;

/// Goals of issue 12.
const MIN_THROUGHPUT_RATIO: f64 = 0.95;
const MAX_AGENT_US_PER_PACKET: f64 = 0.5;
const MAX_LIVE_TO_TEST_RUN: f64 = 2.0;

pub struct Header {
    lines: Vec<String>,
}

impl Header {
    pub fn collect(ctx: &Ctx, nginx: &Nginx) -> Self {
        let date =
            output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])).unwrap_or_default();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
        let s = ctx.settings;
        let bed = ctx.bed;
        let mut lines = vec![
            format!(
                "shadowtap live bench — {} — kernel {} — {cores} cores",
                date.trim(),
                kernel.trim()
            ),
            format!(
                "kernel.bpf_stats_enabled: was {}; 0 during the throughput rounds, 1 only during \
                 each mode's bpf_stats round; restored at exit",
                ctx.sysctl.original()
            ),
            format!(
                "server: {}, 1 worker, {FILE_BYTES}-byte static file, access_log off, on {}:{} in \
                 namespace {}",
                nginx.version,
                bed.server_v4,
                bed.port,
                bed.server().name()
            ),
            format!(
                "client: wrk -t1 -c16 -d{}s {} in namespace {}, over veth {} <-> {}",
                s.seconds,
                bed.url(),
                bed.client().name(),
                bed.pair.client_if,
                bed.pair.server_if
            ),
            format!(
                "agent: {} run --mode host|tap --xdp-mode driver --metrics-listen off \
                 --scale-events FILE (models and in-process decisions on); stats via {}",
                ctx.cli.bin.display(),
                ctx.cli.describe_stats()
            ),
            format!(
                "tap mode: tc clsact filter `{}` action mirred egress mirror (ingress and egress \
                 of {}) -> veth {} -> {}, agent there",
                bed.classifier(),
                bed.pair.server_if,
                bed.mirror_in,
                bed.mirror_out
            ),
            format!(
                "rounds: {}, configurations interleaved, order rotated each round",
                s.rounds
            ),
        ];
        if s.is_smoke() {
            lines.push(
                "SMOKE RUN (SHADOWTAP_BENCH_SECONDS < 8 or _ROUNDS < 3): verdicts are indicative only"
                    .to_owned(),
            );
        }
        Self { lines }
    }

    pub fn print(&self, out: &mut dyn Write) {
        for line in &self.lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out);
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some(f64::midpoint(values[n / 2 - 1], values[n / 2])),
    }
}

fn rps_median(runs: &[Run], config: Config) -> Option<f64> {
    median(
        runs.iter()
            .filter(|r| r.config == config)
            .map(|r| r.rps)
            .collect(),
    )
}

fn verdict(ok: bool) -> &'static str {
    if ok { "goal met    " } else { "goal NOT met" }
}

fn opt(v: Option<f64>, precision: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.precision$}"))
}

fn us_median(runs: &[Run], mode: AgentMode) -> Option<f64> {
    median(
        runs.iter()
            .filter_map(|r| r.agent.as_ref())
            .filter(|a| a.mode == mode)
            .filter_map(AgentRun::us_per_packet)
            .collect(),
    )
}

fn live_to_test(p: &ProgFigure) -> Option<f64> {
    p.live_ns.map(|l| l / p.test.ns_per_packet)
}

/// What `bpf_stats` adds to each run of a program of `prog_type` (its two clock reads, in a VM
/// a clocksource read each): the do-nothing program's live figure less its test run, from the
/// baseline round of the same invocation.
fn stats_overhead(kernel: &[KernelRound], prog_type: &str) -> Option<f64> {
    kernel
        .iter()
        .filter(|k| k.mode == AgentMode::Baseline)
        .flat_map(|k| &k.progs)
        .find(|p| p.stats.prog_type == prog_type)
        .and_then(|p| p.live_ns.map(|l| (l - p.test.ns_per_packet).max(0.0)))
}

/// [`live_to_test`] with `bpf_stats`' own cost taken out of the live figure.
fn net_live_to_test(kernel: &[KernelRound], p: &ProgFigure) -> Option<f64> {
    let overhead = stats_overhead(kernel, &p.stats.prog_type)?;
    p.live_ns.map(|l| (l - overhead) / p.test.ns_per_packet)
}

pub fn print(
    out: &mut dyn Write,
    settings: &Settings,
    runs: &[Run],
    kernel: &[KernelRound],
) -> Result<()> {
    throughput(out, settings, runs)?;
    agent_cpu(out, runs)?;
    programs(out, settings, kernel)?;
    let loss = losses(out, runs, kernel)?;
    goals(out, settings, runs, kernel, &loss)
}

fn throughput(out: &mut dyn Write, settings: &Settings, runs: &[Run]) -> Result<()> {
    let med = |c| rps_median(runs, c);
    let base = med(Config::NoCapture);
    let mirror_base = med(Config::Mirror);
    let hooks_base = med(Config::Baseline);
    writeln!(out, "Throughput, requests/s (wrk \"Requests/sec\")")?;
    write!(out, "{:<36}", "configuration")?;
    for round in 1..=settings.rounds {
        write!(out, " {:>9}", format!("round {round}"))?;
    }
    writeln!(out, " {:>9}  ratio of medians", "median")?;
    for config in Config::ALL {
        write!(out, "{:<36}", config.label())?;
        for round in 0..settings.rounds {
            let rps = runs
                .iter()
                .find(|r| r.config == config && r.round == round)
                .map(|r| r.rps);
            write!(out, " {:>9}", opt(rps, 0))?;
        }
        let m = med(config);
        let ratio = |b: Option<f64>| m.zip(b).map(|(m, b)| m / b);
        let ratios = match config {
            Config::NoCapture => String::new(),
            Config::Tap => format!(
                "{} of (e), {} of (a)",
                opt(ratio(mirror_base), 3),
                opt(ratio(base), 3)
            ),
            // What the tap's own work costs beyond having programs on the hooks at all.
            Config::Host => format!(
                "{} of (a), {} of (f)",
                opt(ratio(base), 3),
                opt(ratio(hooks_base), 3)
            ),
            // The scheduling choice, same run: (g) over (b) is what yielding buys or costs.
            Config::HostYield => format!(
                "{} of (a); (g) is {} of (b)",
                opt(ratio(base), 3),
                opt(med(Config::Host).zip(m).map(|(h, g)| g / h), 3)
            ),
            _ => format!("{} of (a)", opt(ratio(base), 3)),
        };
        writeln!(out, " {:>9}  {ratios}", opt(m, 0))?;
    }
    for run in runs.iter().filter(|r| !r.wrk_problems.is_empty()) {
        writeln!(
            out,
            "  note: round {} {}: wrk reported {}",
            run.round + 1,
            run.config.label(),
            run.wrk_problems.join("; ")
        )?;
    }
    for run in runs {
        if let Some(summary) = &run.tcpdump {
            writeln!(out, "  tcpdump, round {}: {summary}", run.round + 1)?;
        }
    }
    writeln!(out)?;
    Ok(())
}

fn agent_cpu(out: &mut dyn Write, runs: &[Run]) -> Result<()> {
    writeln!(
        out,
        "Agent CPU per packet: utime+stime from /proc/PID/stat read just before wrk starts and \
         0.5 s after it ends,\ndivided by the packets the agent's kernel programs counted between \
         the same two instants (its COUNTERS map,\nread with bpftool; both directions; the link \
         is idle at both instants, so the counts are the wrk run's own).\n\"sched\" columns: \
         the same interval from /proc/PID/task/*/schedstat (ns resolution; utime+stime move in \
         clock ticks)"
    )?;
    writeln!(
        out,
        "{:<6} {:>5} {:>8} {:>11} {:>11} {:>10} {:>9} {:>14}",
        "mode",
        "round",
        "cpu s",
        "packets in",
        "packets out",
        "us/packet",
        "sched s",
        "us/pkt (sched)"
    )?;
    for run in runs {
        if let Some(a) = &run.agent {
            writeln!(
                out,
                "{:<6} {:>5} {:>8.3} {:>11} {:>11} {:>10} {:>9.4} {:>14}",
                a.mode.label(),
                run.round + 1,
                a.cpu_seconds,
                a.packets.0,
                a.packets.1,
                opt(a.us_per_packet(), 3),
                a.sched_seconds,
                opt(a.sched_us_per_packet(), 3)
            )?;
        }
    }
    writeln!(
        out,
        "median: host {} us/packet (host, --scheduling yield: {}), tap {} us/packet\n",
        opt(us_median(runs, AgentMode::Host), 3),
        opt(us_median(runs, AgentMode::HostYield), 3),
        opt(us_median(runs, AgentMode::Tap), 3)
    )?;
    Ok(())
}

fn programs(out: &mut dyn Write, settings: &Settings, kernel: &[KernelRound]) -> Result<()> {
    writeln!(
        out,
        "Kernel programs, ns per packet: live = bpf_stats run_time_ns / run_cnt over one wrk run \
         with\nkernel.bpf_stats_enabled=1 (the figure includes bpf_stats' own clock reads around \
         each run);\ntest run = BPF_PROG_TEST_RUN of the same attached program, bpf_stats off, one \
         run per captured frame\n(repeat 1, {} passes), averaged over the captured mix; \
         net ratio = (live - what bpf_stats adds per run) / test, where what it adds is the \
         do-nothing\nprogram of the same type (hooks row), live less its test run:{}",
        settings.passes,
        ["xdp", "sched_cls"]
            .iter()
            .map(|t| format!(" {t} {} ns", opt(stats_overhead(kernel, t), 1)))
            .collect::<Vec<_>>()
            .join(",")
    )?;
    writeln!(
        out,
        "{:<5} {:<16} {:>5} {:<10} {:>9} {:>10} {:>9} {:>9} {:<16} {:>6} {:>9}",
        "mode",
        "program",
        "id",
        "type",
        "req/s",
        "live runs",
        "live ns",
        "test ns",
        "test frames",
        "ratio",
        "net ratio"
    )?;
    for k in kernel {
        for p in &k.progs {
            writeln!(
                out,
                "{:<5} {:<16} {:>5} {:<10} {:>9.0} {:>10} {:>9} {:>9.1} {:<16} {:>6} {:>9}",
                k.mode.label(),
                p.stats.name,
                p.stats.id,
                p.stats.prog_type,
                k.rps,
                p.live_runs,
                opt(p.live_ns, 1),
                p.test.ns_per_packet,
                p.frames,
                opt(live_to_test(p), 2),
                opt(net_live_to_test(kernel, p), 2)
            )?;
            if p.test.skipped > 0 {
                writeln!(
                    out,
                    "      ({} captured frames were refused by BPF_PROG_TEST_RUN, e.g. too long \
                     for its buffer; {} runs timed)",
                    p.test.skipped, p.test.runs
                )?;
            }
        }
    }
    writeln!(out)?;
    Ok(())
}

/// Whether every agent run's final stats show nothing unreported.
struct LossSummary {
    runs: usize,
    all_clean: bool,
    reserve_failed_total: u64,
}

fn losses(out: &mut dyn Write, runs: &[Run], kernel: &[KernelRound]) -> Result<LossSummary> {
    writeln!(
        out,
        "Final stats of every agent run (kernel counters as ingress/egress; the bpf_stats rounds' \
         agents also ran the test runs)"
    )?;
    let mut exits: Vec<(String, &AgentExit)> = runs
        .iter()
        .filter_map(|r| {
            let a = r.agent.as_ref()?;
            Some((format!("round {} {}", r.round + 1, a.mode.label()), &a.exit))
        })
        .collect();
    exits.extend(
        kernel
            .iter()
            .map(|k| (format!("bpf_stats {}", k.mode.label()), &k.exit)),
    );
    let mut summary = LossSummary {
        runs: exits.len(),
        all_clean: true,
        reserve_failed_total: 0,
    };
    for (name, exit) in &exits {
        let loss = LossLine::of(exit);
        summary.all_clean &= loss.clean;
        summary.reserve_failed_total += loss.reserve_failed;
        writeln!(out, "{name:<16} {}", loss.text)?;
    }
    writeln!(out)?;
    Ok(summary)
}

fn goals(
    out: &mut dyn Write,
    settings: &Settings,
    runs: &[Run],
    kernel: &[KernelRound],
    loss: &LossSummary,
) -> Result<()> {
    let med = |c| rps_median(runs, c);
    let (base, host, tcpdump) = (
        med(Config::NoCapture),
        med(Config::Host),
        med(Config::Tcpdump),
    );
    let host_ratio = host.zip(base).map(|(h, b)| h / b);
    writeln!(out, "Goals (issue 12)")?;
    writeln!(
        out,
        "{}  host mode keeps >= {:.0}% of no-capture throughput: {}% ({} vs {} req/s, medians)",
        verdict(host_ratio.is_some_and(|r| r >= MIN_THROUGHPUT_RATIO)),
        MIN_THROUGHPUT_RATIO * 100.0,
        opt(host_ratio.map(|r| r * 100.0), 1),
        opt(host, 0),
        opt(base, 0)
    )?;
    writeln!(
        out,
        "{}  host mode does at least as well as tcpdump: {} vs {} req/s (medians)",
        verdict(host.zip(tcpdump).is_some_and(|(h, t)| h >= t)),
        opt(host, 0),
        opt(tcpdump, 0)
    )?;
    for mode in [AgentMode::Host, AgentMode::Tap] {
        let us = us_median(runs, mode);
        writeln!(
            out,
            "{}  agent CPU <= {MAX_AGENT_US_PER_PACKET} us/packet, {} mode: {} us/packet (median of rounds)",
            verdict(us.is_some_and(|u| u <= MAX_AGENT_US_PER_PACKET)),
            mode.label(),
            opt(us, 3)
        )?;
    }
    for k in kernel.iter().filter(|k| k.mode != AgentMode::Baseline) {
        for p in &k.progs {
            // Judged without bpf_stats' own clock reads when the baseline round measured them.
            let net = net_live_to_test(kernel, p);
            let ratio = net.or_else(|| live_to_test(p));
            writeln!(
                out,
                "{}  {} mode, {}: live {} ns/packet less {} ns of bpf_stats <= {MAX_LIVE_TO_TEST_RUN}x test run {:.1} ns: {}x (as measured, with bpf_stats: {}x)",
                verdict(ratio.is_some_and(|r| r <= MAX_LIVE_TO_TEST_RUN)),
                k.mode.label(),
                p.stats.name,
                opt(p.live_ns, 1),
                opt(stats_overhead(kernel, &p.stats.prog_type), 1),
                p.test.ns_per_packet,
                opt(ratio, 2),
                opt(live_to_test(p), 2)
            )?;
        }
    }
    writeln!(
        out,
        "{}  zero unreported loss: {} agent runs, each with a final stats line, unread_records 0 \
         and every kernel counter reported: {}; reported ringbuf_reserve_failed in total: {}",
        verdict(loss.all_clean),
        loss.runs,
        if loss.all_clean {
            "yes"
        } else {
            "NO (see above)"
        },
        loss.reserve_failed_total
    )?;
    if settings.is_smoke() {
        writeln!(
            out,
            "(smoke run: fewer than 3 rounds or shorter than 8 s; run with the defaults for the \
             issue's figures)"
        )?;
    }
    Ok(())
}

/// One agent's final stats as a line, and whether it shows nothing unreported.
struct LossLine {
    text: String,
    clean: bool,
    reserve_failed: u64,
}

impl LossLine {
    fn of(exit: &AgentExit) -> Self {
        let Some(stats) = &exit.stats else {
            return Self {
                text: format!(
                    "NO final stats line (exit {}); {}",
                    exit.status, exit.stderr_tail
                ),
                clean: false,
                reserve_failed: 0,
            };
        };
        let unread = stats.get("unread_records").and_then(Value::as_u64);
        let agent = stats.get("agent");
        let received = agent
            .and_then(|a| a.get("records_received"))
            .and_then(Value::as_u64);
        let kernel = stats.get("kernel");
        let dir = |d: &str| kernel.and_then(|k| k.get(d)).and_then(Value::as_object);
        let (ingress, egress) = (dir("ingress"), dir("egress"));
        let mut text = format!(
            "{}; unread_records {}; records_received {}",
            exit.status,
            unread.map_or_else(|| "MISSING".to_owned(), |u| u.to_string()),
            received.map_or_else(|| "MISSING".to_owned(), |u| u.to_string())
        );
        // Every kernel counter but the volume ones, so a counter added later shows up too.
        let mut reserve_failed = 0;
        if let (Some(i), Some(e)) = (ingress, egress) {
            for (name, value) in i {
                if name == "bytes" {
                    continue;
                }
                let v_in = value.as_u64().unwrap_or(0);
                let v_out = e.get(name).and_then(Value::as_u64).unwrap_or(0);
                if name == "ringbuf_reserve_failed" {
                    reserve_failed = v_in + v_out;
                }
                let _ = write!(text, "; {name} {v_in}/{v_out}");
            }
        }
        let has_loss_counters = ingress.is_some_and(|i| {
            [
                "ringbuf_reserve_failed",
                "flow_update_failed",
                "sampled_out",
            ]
            .iter()
            .all(|k| i.contains_key(*k))
        });
        if !has_loss_counters {
            text.push_str("; kernel loss counters MISSING");
        }
        Self {
            text,
            clean: exit.success && unread == Some(0) && received.is_some() && has_loss_counters,
            reserve_failed,
        }
    }
}
