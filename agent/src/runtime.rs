//! `shadowtap-agent run`: capture → decode → events → sink, live.
//!
//! One tokio task owns everything: it waits on the ring buffer's fd with `AsyncFd`, decodes each
//! record with the same decoder as the pcap path, feeds the connection tracker and writes JSON
//! lines. A timer exports per-flow deltas from the kernel's flow map and periodic stats. On
//! SIGINT/SIGTERM (or `--duration`) the programs are detached *first*, then the ring buffer is
//! drained, so the final stats line can prove that every record the kernel emitted was read.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use shadowtap_common::{Counter, DIR_EGRESS, FlowKey, FlowStats, RECORD_HEADER_LEN, RecordHeader};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};
use tracing::{info, warn};

use crate::{
    capture::{self, CounterSnapshot, KernelMaps, Mode, Tap, TapOptions, XdpMode},
    decode::{self, LinkType},
    events::{
        Direction, Event, EventCommon, FlowEvent, FlowProto, PacketContext, Tracker, TrackerConfig,
    },
    metrics::{Exposition, MetricsPage},
};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Interface to attach to (repeat for several).
    #[arg(long = "iface", required = true)]
    pub ifaces: Vec<String>,
    /// host: pass frames on and also watch egress; tap: dedicated mirror port, drop after accounting.
    #[arg(long, value_enum, default_value = "host")]
    pub mode: Mode,
    #[arg(long, value_enum, default_value = "auto")]
    pub xdp_mode: XdpMode,
    /// HTTP payload head bytes copied per record (1..=256).
    #[arg(long, default_value_t = shadowtap_common::DEFAULT_SNAPLEN)]
    pub snaplen: u16,
    /// Keep one connection in N for L7 records (sampled-out records are counted).
    #[arg(long, default_value_t = 1)]
    pub sample: u32,
    /// Only track packets to or from these ports (repeatable; default: all).
    #[arg(long = "port")]
    pub ports: Vec<u16>,
    /// Ring buffer size in MiB (power of two).
    #[arg(long = "ringbuf-size", default_value_t = 8)]
    pub ringbuf_mib: u32,
    /// Capacity of the kernel's per-flow LRU map.
    #[arg(long, default_value_t = shadowtap_common::DEFAULT_FLOW_ENTRIES)]
    pub flow_entries: u32,
    /// Where to write JSON-lines events ("-" for stdout).
    #[arg(long, default_value = "-")]
    pub output: String,
    /// Seconds between flow exports and stats lines.
    #[arg(long, default_value_t = 10)]
    pub stats_interval: u64,
    /// Flows idle this many seconds are exported one last time and removed from the map.
    #[arg(long, default_value_t = 120)]
    pub flow_idle_timeout: u64,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Kernel log level forwarded through aya-log (off, error, warn, info, debug, trace).
    #[arg(long, default_value = "warn")]
    pub kernel_log: String,
    /// Serve Prometheus metrics on this address ("off" to disable).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub metrics_listen: String,
}

impl RunArgs {
    fn tap_options(&self) -> Result<TapOptions> {
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
            flow_entries: self.flow_entries,
            kernel_log_level,
        })
    }
}

pub fn run(args: &RunArgs) -> Result<()> {
    let opts = args.tap_options()?;
    // Resolve interfaces before touching the kernel so a typo is reported as such.
    for iface in &args.ifaces {
        capture::ifindex(iface)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run_async(args, &opts))
}

/// Userspace-side counters of the live path.
#[derive(Debug, Default, serde::Serialize)]
pub struct AgentCounters {
    pub records_received: u64,
    pub records_short: u64,
    pub decode_errors: u64,
    pub events_written: u64,
    pub flow_events_written: u64,
    pub flows_removed_idle: u64,
    /// Flow deltas of protocols other than TCP/UDP (no ports): counted, not exported as events.
    pub flows_without_ports: u64,
}

struct Pipeline {
    tracker: Tracker,
    out: Box<dyn Write>,
    counters: AgentCounters,
    ifnames: HashMap<u32, Arc<str>>,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, to turn `bpf_ktime_get_ns` into wall-clock time.
    realtime_offset_ns: i128,
    /// Cumulative counters at the previous export, so each `flow` event carries a delta.
    exported: HashMap<FlowKey, FlowStats>,
    flows_removed: u64,
    /// Flows in the kernel map at the last export (iterating the map costs a syscall per entry,
    /// so it is only walked on the stats tick).
    live_flows: usize,
    scratch: Vec<Event>,
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Pipeline {
    fn wall_ns(&self, mono_ns: u64) -> u64 {
        u64::try_from(i128::from(mono_ns) + self.realtime_offset_ns).unwrap_or(0)
    }

    fn write(&mut self, event: &Event) -> Result<()> {
        serde_json::to_writer(&mut self.out, event).context("writing event")?;
        self.out.write_all(b"\n").context("writing event")?;
        Ok(())
    }

    fn on_record(&mut self, bytes: &[u8]) -> Result<()> {
        self.counters.records_received += 1;
        if bytes.len() < RECORD_HEADER_LEN {
            self.counters.records_short += 1;
            return Ok(());
        }
        // SAFETY: RecordHeader is plain old data and `bytes` holds at least its size;
        // read_unaligned copes with any alignment.
        let header: RecordHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let cap = usize::from(header.cap_len);
        let Some(data) = bytes.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + cap) else {
            self.counters.records_short += 1;
            return Ok(());
        };
        let meta = match decode::decode_frame(LinkType::Ethernet, data, header.wire_len) {
            Ok(m) => m,
            Err(e) => {
                self.counters.decode_errors += 1;
                tracing::debug!(error = %e, "undecodable record");
                return Ok(());
            }
        };
        let iface = self.ifname(header.ifindex);
        let ctx = PacketContext {
            ts_ns: self.wall_ns(header.ts_ns),
            iface,
            direction: Direction::from_kernel(header.direction).unwrap_or(Direction::Ingress),
        };
        let mut events = std::mem::take(&mut self.scratch);
        self.tracker.on_packet(&ctx, &meta, &mut events);
        for event in events.drain(..) {
            self.write(&event)?;
            self.counters.events_written += 1;
        }
        self.scratch = events;
        Ok(())
    }

    fn ifname(&mut self, ifindex: u32) -> Arc<str> {
        self.ifnames
            .entry(ifindex)
            .or_insert_with(|| {
                let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
                // SAFETY: `buf` has IF_NAMESIZE bytes as the call requires.
                let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
                if p.is_null() {
                    Arc::from(format!("if{ifindex}"))
                } else {
                    // SAFETY: on success the buffer holds a NUL-terminated name.
                    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
                    Arc::from(name.to_string_lossy().as_ref())
                }
            })
            .clone()
    }

    /// Writes a `flow` event for every flow that moved since its last export; removes flows
    /// idle longer than `idle_ns` (or all of them when `final_export`).
    fn export_flows(
        &mut self,
        maps: &mut KernelMaps,
        idle_ns: u64,
        final_export: bool,
    ) -> Result<()> {
        let now_mono = u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0);
        let flows = maps.flows();
        self.live_flows = flows.len();
        for entry in flows {
            let prev = self.exported.get(&entry.key).copied().unwrap_or_default();
            let delta = FlowStats {
                packets: entry.stats.packets.saturating_sub(prev.packets),
                bytes: entry.stats.bytes.saturating_sub(prev.bytes),
                payload_bytes: entry.stats.payload_bytes.saturating_sub(prev.payload_bytes),
                first_ns: entry.stats.first_ns,
                last_ns: entry.stats.last_ns,
                tcp_flags: entry.stats.tcp_flags,
                _pad: 0,
            };
            if delta.packets > 0 {
                let iface = self.ifname(entry.key.ifindex);
                if let Some(flow) = flow_event(&entry.key, &delta, iface, self) {
                    self.write(&Event::Flow(flow))?;
                    self.counters.flow_events_written += 1;
                } else {
                    self.counters.flows_without_ports += 1;
                }
                self.exported.insert(entry.key, entry.stats);
            }
            if !final_export && now_mono.saturating_sub(entry.stats.last_ns) > idle_ns {
                if maps.remove_flow(&entry.key) {
                    self.live_flows -= 1;
                    self.flows_removed += 1;
                    self.counters.flows_removed_idle += 1;
                }
                self.exported.remove(&entry.key);
            }
        }
        Ok(())
    }

    fn render_metrics(&self, kernel: &CounterSnapshot, live_flows: usize) -> String {
        let mut e = Exposition::default();
        for counter in shadowtap_common::Counter::ALL {
            let name = format!("shadowtap_kernel_{}_total", counter.name());
            e.family(
                &name,
                "counter",
                "Kernel program counter (per hook direction), summed over CPUs.",
                &[
                    (
                        &[("direction", "ingress")],
                        kernel.get(shadowtap_common::DIR_INGRESS, counter) as f64,
                    ),
                    (
                        &[("direction", "egress")],
                        kernel.get(DIR_EGRESS, counter) as f64,
                    ),
                ],
            );
        }
        let agent = serde_json::to_value(&self.counters).unwrap_or_default();
        let tracker = serde_json::to_value(self.tracker.stats()).unwrap_or_default();
        for (prefix, value) in [("agent", agent), ("tracker", tracker)] {
            if let serde_json::Value::Object(map) = value {
                for (k, v) in map {
                    if let Some(n) = v.as_f64() {
                        e.family(
                            &format!("shadowtap_{prefix}_{k}"),
                            "gauge",
                            "Userspace pipeline counter.",
                            &[(&[], n)],
                        );
                    }
                }
            }
        }
        let inserts = kernel.total(Counter::FlowInserts);
        let evicted = inserts.saturating_sub(live_flows as u64 + self.flows_removed);
        e.family(
            "shadowtap_flows_live",
            "gauge",
            "Flows in the kernel flow map.",
            &[(&[], live_flows as f64)],
        );
        e.family(
            "shadowtap_flows_evicted_total",
            "counter",
            "Flows the kernel LRU evicted under pressure.",
            &[(&[], evicted as f64)],
        );
        e.finish()
    }

    fn stats_line(
        &mut self,
        kernel: &CounterSnapshot,
        live_flows: usize,
        final_line: bool,
    ) -> Result<()> {
        // Inserts the kernel made that are neither still in the map nor removed by us were
        // evicted by the LRU under pressure.
        let inserts = kernel.total(Counter::FlowInserts);
        let evicted = inserts.saturating_sub(live_flows as u64 + self.flows_removed);
        let line = serde_json::json!({
            "kind": "stats",
            "final": final_line,
            "ts_ns": u64::try_from(clock_ns(libc::CLOCK_REALTIME)).unwrap_or(0),
            "kernel": kernel.to_json(),
            "agent": &self.counters,
            "tracker": self.tracker.stats(),
            "flows": { "live": live_flows, "removed_idle": self.flows_removed, "evicted": evicted },
            "unread_records": kernel.total(Counter::Events).saturating_sub(self.counters.records_received),
        });
        serde_json::to_writer(&mut self.out, &line).context("writing stats")?;
        self.out.write_all(b"\n").context("writing stats")?;
        self.out.flush().context("flushing output")?;
        Ok(())
    }
}

/// A `flow` event from the kernel map, or `None` for protocols without ports (not exported).
fn flow_event(key: &FlowKey, s: &FlowStats, iface: Arc<str>, p: &Pipeline) -> Option<FlowEvent> {
    let proto = FlowProto::from_ip_proto(key.proto)?;
    let (src, dst) = capture::key_addrs(key);
    Some(FlowEvent {
        common: EventCommon {
            ts_ns: p.wall_ns(s.last_ns),
            iface,
            direction: Direction::from_kernel(key.direction).unwrap_or(Direction::Ingress),
            src,
            dst,
            src_port: key.src_port,
            dst_port: key.dst_port,
        },
        proto,
        packets: s.packets,
        bytes: s.bytes,
        payload_bytes: s.payload_bytes,
        first_ts_ns: p.wall_ns(s.first_ns),
        last_ts_ns: p.wall_ns(s.last_ns),
        tcp_flags: s.tcp_flags,
    })
}

/// Aborts the spawned task when dropped, so no server outlives the run.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn open_output(path: &str) -> Result<Box<dyn Write>> {
    if path == "-" {
        return Ok(Box::new(BufWriter::new(std::io::stdout())));
    }
    let p = PathBuf::from(path);
    let f = File::create(&p).with_context(|| format!("creating output file {}", p.display()))?;
    Ok(Box::new(BufWriter::new(f)))
}

fn drain(ring: &mut RingBuf<MapData>, pipe: &mut Pipeline) -> Result<usize> {
    let mut n = 0;
    while let Some(item) = ring.next() {
        pipe.on_record(&item)?;
        n += 1;
    }
    Ok(n)
}

async fn run_async(args: &RunArgs, opts: &TapOptions) -> Result<()> {
    let mut tap = Tap::load(opts)?;
    // aya-log records arrive on their own ring buffer; flush it whenever its fd is readable.
    let kernel_log = match tap.init_kernel_log() {
        // SAFETY: the logger owns its ring-buffer fd for its whole life.
        Ok(l) => match unsafe { AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE) }
        {
            Ok(fd) => Some(fd),
            Err(e) => {
                warn!(error = %e, "kernel log forwarding unavailable");
                None
            }
        },
        Err(e) => {
            warn!(error = %e, "kernel log forwarding unavailable");
            None
        }
    };
    let mut kernel_log = kernel_log;
    let ring = tap.take_events()?;
    let mut maps = tap.take_maps()?;
    for iface in &args.ifaces {
        tap.attach(iface, opts)?;
    }
    info!(attachments = ?tap.attachments, mode = ?opts.mode, "shadowtap agent running");

    let mut pipe = Pipeline {
        tracker: Tracker::new(TrackerConfig::default()),
        out: open_output(&args.output)?,
        counters: AgentCounters::default(),
        ifnames: HashMap::new(),
        realtime_offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        exported: HashMap::new(),
        flows_removed: 0,
        live_flows: 0,
        scratch: Vec::new(),
    };
    // SAFETY: the RingBuf owns its map fd for its whole life and always returns the same fd.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer fd with tokio: {e}"))?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())
        .context("installing SIGINT handler")?;
    let page = MetricsPage::default();
    let _metrics_task = if args.metrics_listen == "off" {
        None
    } else {
        let addr: std::net::SocketAddr = args.metrics_listen.parse().with_context(|| {
            format!(
                "invalid option --metrics-listen: {:?} is not ADDR:PORT",
                args.metrics_listen
            )
        })?;
        let page = page.clone();
        Some(AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, page).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed; capture continues");
            }
        })))
    };
    let mut metrics_tick = tokio::time::interval(Duration::from_secs(1));
    let mut tick = tokio::time::interval(Duration::from_secs(args.stats_interval));
    tick.tick().await;
    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let idle_ns = args.flow_idle_timeout.saturating_mul(1_000_000_000);

    loop {
        let stop = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                drain(guard.get_inner_mut(), &mut pipe)?;
                guard.clear_ready();
            }
            _ = tick.tick() => {
                pipe.export_flows(&mut maps, idle_ns, false)?;
                let kernel = maps.counters()?;
                pipe.stats_line(&kernel, pipe.live_flows, false)?;
                info!(
                    packets = kernel.total(Counter::Packets),
                    events = kernel.total(Counter::Events),
                    records = pipe.counters.records_received,
                    ringbuf_full = kernel.total(Counter::RingbufReserveFailed),
                    malformed = kernel.total(Counter::Malformed),
                    "stats"
                );
            }
            guard = async {
                match kernel_log.as_mut() {
                    Some(fd) => fd.readable_mut().await,
                    None => std::future::pending().await,
                }
            } => {
                let mut guard = guard.context("waiting on the kernel log ring")?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = metrics_tick.tick() => {
                let kernel = maps.counters()?;
                page.set(pipe.render_metrics(&kernel, pipe.live_flows));
            }
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
            () = stop => { info!("--duration reached: shutting down"); break; }
        }
    }

    // Detach first so nothing new arrives, then drain what the kernel already submitted.
    drop(tap);
    drain(ring.get_mut(), &mut pipe)?;
    pipe.export_flows(&mut maps, idle_ns, true)?;
    let kernel = maps.counters()?;
    pipe.stats_line(&kernel, pipe.live_flows, true)?;
    info!("detached; final stats written");
    Ok(())
}
