//! `shadowtap-agent run`: capture → decode → events → models (→ JSON lines on request), live.
//!
//! One tokio task owns everything. It drains the ring buffer on a short timer (the kernel
//! submits records without waking it, except when the ring fills past a mark), decodes each
//! record with the same decoder as the pcap path, feeds the connection tracker and the
//! behavioural models, and — only with `--events` — writes the events as JSON lines. Timers
//! export per-flow deltas from the kernel's flow map, stats, metrics and API views, and model
//! snapshots. On SIGINT/SIGTERM (or `--duration`) the programs are detached *first*, then the
//! ring buffer is drained, so the final stats can prove that every record the kernel emitted
//! was read.

mod flow_state;
mod http;
mod lifecycle_in;
mod pipeline;
mod publish;
mod scheduling;
mod state;
mod views;

pub use publish::PublishArgs;
pub(crate) use publish::level_of as publish_level;
pub use scheduling::Scheduling;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use shadowtap_common::Counter;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};
use tracing::{info, warn};

use self::{
    http::{AbortOnDrop, ApiState},
    pipeline::{LineSink, Pipeline, StatsOut, drain, open_output, wall_clock_ns},
    publish::Publisher,
    views::LatestMinute,
};
use crate::{
    capture::{self, KernelMaps, Mode, Tap, TapOptions, XdpMode},
    config::ModelLimits,
    events::{Tracker, TrackerConfig},
    model::{ModelConfig, WindowSummary},
};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Settings file (TOML): every option below is a key in the section of its heading, e.g.
    /// `model.max_clients`. Flags beat `SHADOWTAP_*` variables, which beat the file (see
    /// docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface to attach to (repeat for several, or separate with commas). Required.
    #[arg(long = "iface", value_delimiter = ',', help_heading = "Capture")]
    pub ifaces: Vec<String>,
    /// host: pass frames on and also watch egress; tap: dedicated mirror port, drop after accounting.
    #[arg(long, value_enum, default_value = "host", help_heading = "Capture")]
    pub mode: Mode,
    /// How XDP is attached: driver (native, fastest; not every driver or MTU allows it), skb
    /// (generic, works everywhere) or auto (driver, falling back to skb with a warning).
    #[arg(long, value_enum, default_value = "auto", help_heading = "Capture")]
    pub xdp_mode: XdpMode,
    /// HTTP payload head bytes copied per record (16..=256).
    #[arg(long, default_value_t = shadowtap_common::DEFAULT_SNAPLEN, help_heading = "Capture")]
    pub snaplen: u16,
    /// Keep one connection in N for L7 records (sampled-out records are counted).
    #[arg(long, default_value_t = 1, help_heading = "Capture")]
    pub sample: u32,
    /// Only track packets to or from these ports (repeatable; default: all).
    #[arg(long = "port", value_delimiter = ',', help_heading = "Capture")]
    pub ports: Vec<u16>,
    /// Ring buffer size in MiB (power of two).
    #[arg(long = "ringbuf-size", default_value_t = 8, help_heading = "Capture")]
    pub ringbuf_mib: u32,
    /// Milliseconds between ring-buffer drains. The kernel does not wake the agent per record
    /// (that costs the host an interrupt each); it wakes it early only when a quarter of the
    /// ring is unread.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000), help_heading = "Capture")]
    pub ringbuf_poll_ms: u64,
    /// normal (default): the agent's loop always runs in the normal scheduling class; yield:
    /// it runs in the idle class (SCHED_IDLE), on CPU time the host's workload leaves unused,
    /// and returns to the normal class while the ring fills (a quarter unread) until it has
    /// caught up. Yielding uses less CPU but, in a VM, every wakeup of the workload on the
    /// agent's CPU then costs a reschedule IPI: measured from −12% to +4% throughput against
    /// normal (docs/benchmarks.md). It needs CAP_SYS_NICE (root has it) or an RLIMIT_NICE of
    /// 20; without either the agent warns and stays normal.
    #[arg(long, value_enum, default_value = "normal", help_heading = "Capture")]
    pub scheduling: Scheduling,
    /// Slots per CPU of the kernel's direct-mapped flow cache (rounded up to a power of two).
    /// A flow whose slot holds another flow takes it over; the other's counters are flushed to
    /// the agent first (`flow_evictions`).
    #[arg(long, default_value_t = shadowtap_common::DEFAULT_FLOW_ENTRIES, help_heading = "Capture")]
    pub flow_entries: u32,
    /// Write the per-request event stream (JSON lines: connections, requests, responses, TLS,
    /// flows, stats) to FILE, or "-" for stdout. Off by default: models, metrics, the API and
    /// scale events run without it, and formatting every event costs CPU on a busy host.
    #[arg(
        long = "events",
        visible_alias = "output",
        value_name = "FILE|-",
        help_heading = "Output"
    )]
    pub events: Option<String>,
    /// Write stats lines (every --stats-interval, and a final one) to FILE, or "-" for stdout.
    /// Default: into the event stream when --events is given; otherwise only /metrics and the
    /// final stats log line carry them.
    #[arg(long, value_name = "FILE|-", help_heading = "Output")]
    pub stats: Option<String>,
    /// Seconds between flow exports and stats lines.
    #[arg(long, default_value_t = 10, help_heading = "Output")]
    pub stats_interval: u64,
    /// Flows idle this many seconds are forgotten by the agent once no slot of the kernel's flow
    /// cache holds them (their totals were exported; idle slots stay until a new flow takes
    /// them).
    #[arg(long, default_value_t = 120, help_heading = "Capture")]
    pub flow_idle_timeout: u64,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Kernel log level forwarded through aya-log (off, error, warn, info, debug, trace).
    #[arg(long, default_value = "warn", help_heading = "Capture")]
    pub kernel_log: String,
    /// Serve Prometheus /metrics and the JSON API (/v1/resources) on this address ("off" to disable).
    #[arg(long, default_value = "127.0.0.1:9464", help_heading = "Output")]
    pub metrics_listen: String,
    /// Allow --metrics-listen on a non-loopback address: the API and dashboard have no
    /// authentication, and this flag says that exposing them is intended.
    #[arg(long)]
    pub expose_api: bool,
    /// Directory for model snapshots: restored on start, saved periodically and on shutdown.
    #[arg(long, help_heading = "Model")]
    pub state_dir: Option<PathBuf>,
    /// Seconds between model snapshots (with --state-dir).
    #[arg(long, default_value_t = 60, help_heading = "Model")]
    pub snapshot_interval: u64,
    /// Keep request profiles for one connection in N (1: every connection). Profiles cost
    /// the model about as much again as the rest of it; on a busy host a sample keeps the
    /// shape of the traffic for a fraction of that (see docs/profiles.md).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Model")]
    pub profile_sample: u32,
    /// Exact `{id}` values a request profile lists per template (twice as many are counted).
    /// A cache warm set can only name listed values; each new value's counter takeover
    /// scans all counters, so raise this only where it is used (see docs/profiles.md).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096), help_heading = "Model")]
    pub profile_values: u32,
    /// No request profiles (`/v1/profile` answers 404).
    #[arg(long, help_heading = "Model")]
    pub no_profiles: bool,
    /// Benchmarking only: attach programs that do nothing (XDP_PASS, a pass-through tc
    /// program) on the same hooks and modes instead of the tap, to measure what the hooks
    /// themselves cost the host. Nothing is captured.
    #[arg(long, hide = true, help_heading = "Capture")]
    pub baseline_programs: bool,
    #[command(flatten)]
    pub limits: ModelLimits,
    #[command(flatten)]
    pub publish: PublishArgs,
}

impl RunArgs {
    /// The model's settings: defaults, with limits and profiling as the flags say.
    pub(crate) fn model_config(&self) -> ModelConfig {
        ModelConfig {
            profiles: !self.no_profiles,
            profile_sample: self.profile_sample,
            profile_values: self.profile_values,
            ..self.limits.apply(&ModelConfig::default())
        }
    }

    /// The request/response tracker's settings: defaults, with the connection limit.
    fn tracker_config(&self) -> TrackerConfig {
        TrackerConfig {
            max_connections: self.limits.max_connections,
            ..TrackerConfig::default()
        }
    }

    pub(crate) fn tap_options(&self) -> Result<TapOptions> {
        let kernel_log_level = match self.kernel_log.as_str() {
            "off" => 0,
            "error" => 1,
            "warn" => 2,
            "info" => 3,
            "debug" => 4,
            "trace" => 5,
            other => bail!(
                "invalid option --kernel-log: {other:?} (off, error, warn, info, debug, trace)"
            ),
        };
        if self.stats_interval == 0 {
            bail!("invalid option --stats-interval: must be at least 1 second");
        }
        let ringbuf_bytes = self
            .ringbuf_mib
            .checked_mul(1024 * 1024)
            .context("invalid option --ringbuf-size: too large")?;
        Ok(TapOptions {
            mode: self.mode,
            xdp_mode: self.xdp_mode,
            snaplen: self.snaplen,
            sample_n: self.sample,
            ports: self.ports.clone(),
            ringbuf_bytes,
            wakeup_bytes: capture::default_wakeup_bytes(ringbuf_bytes),
            flow_entries: self.flow_entries,
            kernel_log_level,
        })
    }
}

pub fn run(args: &RunArgs) -> Result<()> {
    if args.ifaces.is_empty() {
        bail!(
            "no interface to attach to: give --iface IF (or SHADOWTAP_IFACE, or `capture.iface` in the --config file)"
        );
    }
    let opts = args.tap_options()?;
    let api = api_addr(&args.metrics_listen, args.expose_api)?;
    // Resolve interfaces before touching the kernel so a typo is reported as such.
    for iface in &args.ifaces {
        capture::ifindex(iface)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let api_listener = bind_api(api).await?;
        run_async(args, &opts, api_listener).await
    })
}

/// Everything the live loop owns besides the kernel objects.
struct Live {
    pipe: Pipeline,
    maps: KernelMaps,
    api: ApiState,
    latest: LatestMinute,
    profiles: views::ProfileViews,
    idle_ns: u64,
    state_dir: Option<PathBuf>,
    publisher: Publisher,
    sched: scheduling::Yielding,
}

impl Live {
    /// Drain the ring, then let the scheduling class follow what is left unread.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        drain(ring, &mut self.pipe)?;
        self.sched.after_drain();
        Ok(())
    }

    fn on_summaries(&mut self, summaries: &[WindowSummary]) -> Result<()> {
        self.latest.absorb(summaries);
        self.publisher.publish(summaries)
    }

    /// Stats tick: flow deltas, a stats line, a log line.
    fn on_stats_tick(&mut self) -> Result<()> {
        self.pipe
            .export_flows(&mut self.maps, self.idle_ns, false)?;
        let kernel = self.maps.counters()?;
        self.pipe
            .stats_line(&kernel, self.pipe.live_flows(), false)?;
        info!(
            packets = kernel.total(Counter::Packets),
            events = kernel.total(Counter::Events),
            records = self.pipe.counters.records_received,
            ringbuf_full = kernel.total(Counter::RingbufReserveFailed),
            malformed = kernel.total(Counter::Malformed),
            resources = self.pipe.model.resource_count(),
            "stats"
        );
        Ok(())
    }

    /// Every second: close model windows up to now, refresh metrics and API views.
    ///
    /// Windows close up to the wall clock read before a last drain of the ring: every record
    /// the kernel submitted by then is read first, so a consumer that fell behind (a busy
    /// host) never closes a window its backlog still has events for (they would be dropped
    /// as late).
    fn on_second(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        let now_ns = wall_clock_ns();
        self.drain(ring)?;
        self.pipe.counters.scheduling_promotions = self.sched.promotions();
        self.pipe.counters.scheduling_idle = u64::from(self.sched.idle());
        let closed = self.pipe.close_windows(now_ns);
        self.on_summaries(&closed)?;
        self.publisher.tick()?;
        let kernel = self.maps.counters()?;
        let mut page = self.pipe.render_metrics(&kernel, self.pipe.live_flows());
        self.publisher.render_metrics(&mut page);
        self.latest.render_metrics(&mut page);
        let metrics = page.finish();
        let profiles = self.profiles.tick(&self.pipe.model);
        if let Some(fleet) = self.publisher.fleet() {
            self.latest.timeline.observe(fleet);
        }
        let dashboard = shadowtap_core::dashboard::render(
            "agent",
            &views::dashboard_resources(
                &self.latest,
                &self.pipe.model,
                self.publisher.fleet(),
                &self.latest.timeline,
            ),
            &shadowtap_core::dashboard::losses_from_metrics(
                &metrics,
                shadowtap_core::dashboard::AGENT_LOSSES,
            ),
        );
        let (latest, model, publisher) = (&mut self.latest, &self.pipe.model, &self.publisher);
        self.api.update(|v| {
            v.metrics = metrics;
            v.dashboard = dashboard;
            if let Some((all, per_resource)) = profiles {
                v.profile_all = all;
                v.profiles = per_resource;
            }
            latest.render(model, v);
            v.forecast = v
                .detail
                .keys()
                .filter_map(|id| publisher.decision_json(id).map(|d| (id.clone(), d)))
                .collect();
        });
        Ok(())
    }

    fn snapshot(&self) {
        let Some(dir) = &self.state_dir else {
            return;
        };
        if let Err(e) = state::save_model(dir, &self.pipe.model) {
            warn!(
                error = format!("{e:#}"),
                "model snapshot failed; will retry"
            );
        }
        if let Err(e) = state::save_fleet(dir, &self.publisher.snapshots()) {
            warn!(
                error = format!("{e:#}"),
                "collector state snapshot failed; will retry"
            );
        }
    }

    /// After detaching: drain what the kernel submitted, final flows, windows, stats, snapshot.
    fn finish(&mut self, ring: &mut RingBuf<MapData>) -> Result<()> {
        self.sched.stay_normal();
        self.drain(ring)?;
        self.pipe.counters.scheduling_promotions = self.sched.promotions();
        self.pipe.counters.scheduling_idle = 0;
        self.pipe.export_flows(&mut self.maps, self.idle_ns, true)?;
        let closed = self.pipe.flush_windows();
        self.on_summaries(&closed)?;
        // The in-process collector decides on its last windows before its state is saved.
        self.publisher.close_windows()?;
        let kernel = self.maps.counters()?;
        self.pipe
            .stats_line(&kernel, self.pipe.live_flows(), true)?;
        self.snapshot();
        Ok(())
    }
}

/// Registers the aya-log ring so kernel log records are flushed whenever its fd is readable.
fn kernel_logger(tap: &mut Tap) -> Option<AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>> {
    let logger = match tap.init_kernel_log() {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "kernel log forwarding unavailable");
            return None;
        }
    };
    // SAFETY: the logger owns its ring-buffer fd for its whole life.
    match unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) } {
        Ok(fd) => Some(fd),
        Err(e) => {
            warn!(error = %e, "kernel log forwarding unavailable");
            None
        }
    }
}

/// The API address: `None` for "off"; a non-loopback address only with `--expose-api`.
fn api_addr(listen: &str, expose: bool) -> Result<Option<std::net::SocketAddr>> {
    if listen == "off" {
        return Ok(None);
    }
    let addr: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("invalid option --metrics-listen: {listen:?} is not ADDR:PORT"))?;
    if !addr.ip().is_loopback() && !expose {
        bail!(
            "invalid option --metrics-listen: {addr} is not a loopback address; the API and \
             dashboard have no authentication: pass --expose-api to serve them there anyway"
        );
    }
    Ok(Some(addr))
}

/// Bind the API/metrics listener. Done before the programs are attached: a taken port is a
/// start-up error, and a client that connects as soon as the programs show up (an operator's
/// readiness check, the live tests) waits in the backlog instead of being refused.
async fn bind_api(addr: Option<std::net::SocketAddr>) -> Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    tokio::net::TcpListener::bind(addr)
        .await
        .map(Some)
        .with_context(|| format!("binding the API/metrics endpoint --metrics-listen {addr}"))
}

fn spawn_api(listener: Option<tokio::net::TcpListener>, api: &ApiState) -> Option<AbortOnDrop> {
    let listener = listener?;
    let api = api.clone();
    Some(AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = http::serve_on(listener, api).await {
            tracing::error!(error = %e, "API/metrics endpoint failed; capture continues");
        }
    })))
}

/// The event stream (`--events`, off by default) and where stats lines go (`--stats`; with the
/// events when not given, or when it names the same output).
fn outputs(args: &RunArgs) -> Result<(Option<LineSink>, StatsOut)> {
    let events = args
        .events
        .as_deref()
        .map(|p| open_output(p, "--events"))
        .transpose()?;
    let stats_out = match (&args.stats, &events) {
        (Some(p), _) if args.events.as_deref() == Some(p.as_str()) => StatsOut::WithEvents,
        (Some(p), _) => StatsOut::Own(open_output(p, "--stats")?),
        (None, Some(_)) => StatsOut::WithEvents,
        (None, None) => StatsOut::Off,
    };
    Ok((events, stats_out))
}

async fn run_async(
    args: &RunArgs,
    opts: &TapOptions,
    api_listener: Option<tokio::net::TcpListener>,
) -> Result<()> {
    // Before anything is attached: a SIGTERM that arrives once the programs are attached (a
    // supervisor stopping a fresh agent) must reach the orderly shutdown, not the default
    // action, which would skip the final drain and stats.
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())
        .context("installing SIGINT handler")?;
    let (model, _) = state::load_model(args.state_dir.as_deref(), &args.model_config())?;
    // Bad policy or Kafka settings are reported before anything is attached.
    let mut publisher = Publisher::start(&args.publish, args.state_dir.as_deref())?;
    if let Some(dir) = &args.state_dir {
        let snapshots = state::load_fleet(dir)?;
        let failed = publisher.restore(&snapshots);
        info!(
            resources = snapshots.len() - failed,
            failed, "restored collector state"
        );
    }
    let mut tap = Tap::load(opts)?;
    let mut kernel_log = kernel_logger(&mut tap);
    let ring = tap.take_events()?;
    let maps = tap.take_maps()?;
    let programs = if args.baseline_programs {
        warn!("--baseline-programs: attaching do-nothing programs; nothing will be captured");
        capture::ProgramSet::Baseline
    } else {
        capture::ProgramSet::Tap
    };
    for iface in &args.ifaces {
        tap.attach_programs(iface, opts, programs)?;
    }
    info!(attachments = ?tap.attachments, mode = ?opts.mode, "shadowtap agent running");

    let (events, stats_out) = outputs(args)?;
    let mut live = Live {
        pipe: Pipeline::new(
            Tracker::new(args.tracker_config()),
            model,
            events,
            stats_out,
        ),
        maps,
        api: ApiState::default(),
        latest: LatestMinute::default(),
        profiles: views::ProfileViews::new(&args.ifaces),
        idle_ns: args.flow_idle_timeout.saturating_mul(1_000_000_000),
        state_dir: args.state_dir.clone(),
        publisher,
        sched: scheduling::Yielding::new(args.scheduling, &ring, opts.ringbuf_bytes)?,
    };
    // SAFETY: the RingBuf owns its map fd for its whole life and always returns the same fd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer fd with tokio: {e}"))?;
    let _api_task = spawn_api(api_listener, &live.api);
    // Records arrive without wakeups (see `Config::wakeup_bytes`): drain on a timer.
    let mut poll = tokio::time::interval(Duration::from_millis(args.ringbuf_poll_ms));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut second = tokio::time::interval(Duration::from_secs(1));
    let mut stats_tick = tokio::time::interval(Duration::from_secs(args.stats_interval));
    stats_tick.tick().await;
    let mut snapshot_tick =
        tokio::time::interval(Duration::from_secs(args.snapshot_interval.max(1)));
    snapshot_tick.tick().await;
    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));

    loop {
        let stop = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let log_ready = async {
            match kernel_log.as_mut() {
                Some(fd) => fd.readable_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = poll.tick() => live.drain(ring.get_mut())?,
            // The kernel's early wakeup: the ring is filling faster than the timer drains it.
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                live.drain(guard.get_inner_mut())?;
                guard.clear_ready();
            }
            guard = log_ready => {
                let mut guard = guard.context("waiting on the kernel log ring")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = second.tick() => live.on_second(ring.get_mut())?,
            _ = stats_tick.tick() => live.on_stats_tick()?,
            _ = snapshot_tick.tick() => live.snapshot(),
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            () = stop => { info!("--duration reached: shutting down"); break; }
        }
    }

    // Detach first so nothing new arrives, then drain what the kernel already submitted.
    drop(tap);
    live.finish(ring.get_mut())?;
    live.publisher.finish().await;
    info!("detached; final stats written");
    Ok(())
}

#[cfg(test)]
mod api_addr_tests {
    use super::api_addr;

    #[test]
    fn loopback_by_default_elsewhere_only_with_expose_api() {
        assert_eq!(api_addr("off", false).expect("off"), None);
        assert!(api_addr("127.0.0.1:9464", false).is_ok_and(|a| a.is_some()));
        assert!(api_addr("[::1]:9464", false).is_ok_and(|a| a.is_some()));
        let err = api_addr("0.0.0.0:9464", false).expect_err("needs the flag");
        assert!(format!("{err:#}").contains("--expose-api"), "{err:#}");
        assert!(api_addr("10.0.0.1:9464", false).is_err());
        assert!(api_addr("0.0.0.0:9464", true).is_ok_and(|a| a.is_some()));
        assert!(api_addr("nonsense", true).is_err());
    }
}
