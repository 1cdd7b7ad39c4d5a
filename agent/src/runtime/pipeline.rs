//! The live pipeline's state: decode → events → sink (JSON lines) and → model (windows),
//! plus the exports that run on the stats tick (flow deltas, stats lines, metrics, API views).

use std::{collections::HashMap, fs::File, io::Write, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use shadowtap_common::{
    Counter, DIR_EGRESS, FlowKey, FlowRecord, FlowSlot, FlowStats, RECORD_HEADER_LEN, RecordHeader,
    RecordKind,
};

use super::flow_state::{FlowState, key_order};
use crate::{
    capture::{self, CounterSnapshot, KernelMaps},
    decode::{self, LinkType},
    events::{
        Direction, Event, EventCommon, EventSink, FlowEvent, FlowProto, PacketContext, Tracker,
    },
    model::{ModelStore, WindowSummary},
};
use shadowtap_core::metrics::Exposition;

/// Userspace-side counters of the live path.
#[derive(Debug, Default, serde::Serialize)]
pub struct AgentCounters {
    pub records_received: u64,
    pub records_short: u64,
    pub decode_errors: u64,
    pub events_written: u64,
    pub flow_events_written: u64,
    pub flows_removed_idle: u64,
    /// Flow-cache slots the kernel flushed when a colliding flow took them (`FlowEvicted`
    /// records; not counted in `records_received`).
    pub flow_evictions_received: u64,
    /// Flow deltas of protocols other than TCP/UDP (no ports): counted, not exported as events.
    pub flows_without_ports: u64,
    /// Times the loop returned from the idle to the normal scheduling class because the ring
    /// was filling (`--scheduling yield`).
    pub scheduling_promotions: u64,
    /// 1 while the loop is in the idle scheduling class.
    pub scheduling_idle: u64,
}

/// A JSON-lines output that writes whole lines in batches: events are serialised into a
/// buffer and written when it holds [`LineSink::BATCH_BYTES`] or at the end of each ring-buffer
/// drain, so a busy agent makes a write per batch, not per event (stdout is line-buffered and
/// would write every line). Whole lines only, so other writers of the same stdout (scale
/// events) interleave by line.
pub(crate) struct LineSink {
    buf: Vec<u8>,
    out: Box<dyn Write>,
}

impl LineSink {
    const BATCH_BYTES: usize = 64 * 1024;

    pub(crate) fn new(out: Box<dyn Write>) -> Self {
        Self {
            buf: Vec::with_capacity(Self::BATCH_BYTES + 4096),
            out,
        }
    }

    fn line<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        serde_json::to_writer(&mut self.buf, value).context("serialising a JSON line")?;
        self.buf.push(b'\n');
        if self.buf.len() >= Self::BATCH_BYTES {
            self.write_out()?;
        }
        Ok(())
    }

    fn write_out(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.out
                .write_all(&self.buf)
                .context("writing JSON lines")?;
            self.buf.clear();
        }
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> Result<()> {
        self.write_out()?;
        self.out.flush().context("flushing JSON lines")
    }
}

/// Where stats lines go: with the events, to their own output, or nowhere (metrics and the
/// final log line still carry them).
pub(crate) enum StatsOut {
    WithEvents,
    Own(LineSink),
    Off,
}

pub(crate) struct Pipeline {
    tracker: Tracker,
    /// The per-request event stream (`--events`); off by default, the models do not need it.
    events: Option<LineSink>,
    stats_out: StatsOut,
    pub(crate) counters: AgentCounters,
    ifnames: rustc_hash::FxHashMap<u32, Arc<str>>,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, to turn `bpf_ktime_get_ns` into wall-clock time.
    realtime_offset_ns: i128,
    /// Per flow: what was exported and what the kernel flushed, so each `flow` event carries
    /// a delta.
    flows: HashMap<FlowKey, FlowState>,
    /// Exports so far, wrapping (`FlowState::live_at` refers to them).
    export_tick: u32,
    /// One index's occupied slots, grouped by flow while reading the flow cache.
    index_scratch: Vec<FlowSlot>,
    /// Flows in the kernel map at the last export (iterating the map costs a syscall per entry,
    /// so it is only walked on the stats tick).
    live_flows: usize,
    /// Behavioural models fed with every event (window summaries drained on the tick).
    pub(crate) model: ModelStore,
}

/// Each event the tracker makes, consumed where it is made: the models observe it and, with
/// `--events`, it becomes a JSON line. A write error stops the lines (the models still see
/// every event) and is returned once the packet is done.
struct LiveEvents<'a> {
    model: &'a mut ModelStore,
    lines: Option<&'a mut LineSink>,
    events_written: &'a mut u64,
    error: Option<anyhow::Error>,
}

impl EventSink for LiveEvents<'_> {
    fn emit(&mut self, event: Event) {
        self.model.observe(&event);
        if self.error.is_some() {
            return;
        }
        if let Some(lines) = self.lines.as_deref_mut() {
            match lines.line(&event) {
                Ok(()) => *self.events_written += 1,
                Err(e) => self.error = Some(e),
            }
        }
    }
}

pub(crate) fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Pipeline {
    pub(crate) fn new(
        tracker: Tracker,
        model: ModelStore,
        events: Option<LineSink>,
        stats_out: StatsOut,
    ) -> Self {
        Self {
            tracker,
            events,
            stats_out,
            counters: AgentCounters::default(),
            ifnames: rustc_hash::FxHashMap::default(),
            realtime_offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
            flows: HashMap::new(),
            export_tick: 0,
            index_scratch: Vec::new(),
            live_flows: 0,
            model,
        }
    }

    pub(crate) fn live_flows(&self) -> usize {
        self.live_flows
    }

    /// Closes model windows up to `now_ns`, the wall clock (quiet resources too), and hands
    /// back the summaries that closed. The caller reads the clock before it drains the ring.
    pub(crate) fn close_windows(&mut self, now_ns: u64) -> Vec<WindowSummary> {
        self.model.advance_to(now_ns);
        self.model.drain_summaries().collect()
    }

    /// End of capture: closes every open window.
    pub(crate) fn flush_windows(&mut self) -> Vec<WindowSummary> {
        self.model.flush();
        self.model.drain_summaries().collect()
    }
    fn wall_ns(&self, mono_ns: u64) -> u64 {
        u64::try_from(i128::from(mono_ns) + self.realtime_offset_ns).unwrap_or(0)
    }

    /// Ends a batch of records: whatever events are buffered go out.
    pub(crate) fn flush_events(&mut self) -> Result<()> {
        match &mut self.events {
            Some(sink) => sink.flush(),
            None => Ok(()),
        }
    }

    pub(crate) fn on_record(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() < RECORD_HEADER_LEN {
            self.counters.records_received += 1;
            self.counters.records_short += 1;
            return Ok(());
        }
        // SAFETY: RecordHeader is plain old data and `bytes` holds at least its size;
        // read_unaligned copes with any alignment.
        let header: RecordHeader = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        if header.kind == RecordKind::FlowEvicted as u8 {
            self.on_flow_evicted(bytes);
            return Ok(());
        }
        self.counters.records_received += 1;
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
        let mut live = LiveEvents {
            model: &mut self.model,
            lines: self.events.as_mut(),
            events_written: &mut self.counters.events_written,
            error: None,
        };
        self.tracker.on_packet(&ctx, &meta, &mut live);
        live.error.map_or(Ok(()), Err)
    }

    /// A flow-cache slot the kernel flushed: its counters join the flow's totals.
    fn on_flow_evicted(&mut self, bytes: &[u8]) {
        if bytes.len() < std::mem::size_of::<FlowRecord>() {
            self.counters.records_short += 1;
            return;
        }
        // SAFETY: FlowRecord is plain old data and `bytes` holds at least its size.
        let rec: FlowRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        self.counters.flow_evictions_received += 1;
        self.flows
            .entry(rec.slot.key)
            .or_default()
            .flushed(&rec.slot.stats);
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

    /// Writes a `flow` event for every flow that moved since its last export (its slots in the
    /// kernel's flow cache plus the slots the kernel flushed to us); forgets flows idle longer
    /// than `idle_ns` that no slot holds any more (never when `final_export`).
    ///
    /// A flush can be in flight (out of its slot, its record not read yet): a flow's total
    /// then dips for one export and comes back. Exported totals only grow (field-wise maximum),
    /// so the dip and its return export nothing twice; a flow is forgotten only once no slot
    /// held it at two exports in a row, after its last flush was surely read.
    pub(crate) fn export_flows(
        &mut self,
        maps: &mut KernelMaps,
        idle_ns: u64,
        final_export: bool,
    ) -> Result<()> {
        let now_mono = u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0);
        self.export_tick = self.export_tick.wrapping_add(1);
        let tick = self.export_tick;
        // Taken out so events can be written while walking them; put back on every path.
        let mut flows = std::mem::take(&mut self.flows);
        let mut scratch = std::mem::take(&mut self.index_scratch);
        let mut live = 0;
        let mut failed = None;
        // A flow's slots (one per CPU it was seen on) share an index: summed per index, the
        // flow's delta is known there, without keeping its slot sum per flow.
        maps.for_each_index(|slots| {
            scratch.clear();
            scratch.extend(slots.iter().filter(|s| s.stats.packets != 0));
            if scratch.len() > 1 {
                scratch.sort_unstable_by(|a, b| key_order(&a.key).cmp(&key_order(&b.key)));
            }
            for group in scratch.chunk_by(|a, b| a.key == b.key) {
                let key = group[0].key;
                let state = flows.entry(key).or_default();
                let mut in_slots = [0u64; 3];
                for slot in group {
                    let c = FlowState::counts(&slot.stats);
                    in_slots = std::array::from_fn(|i| in_slots[i].saturating_add(c[i]));
                    state.see(&slot.stats);
                }
                state.live_at = tick;
                live += 1;
                if let Some(delta) = state.advance(in_slots)
                    && failed.is_none()
                {
                    failed = self.export_delta(&key, &delta).err();
                }
            }
        });
        self.live_flows = live;
        let walked = match failed {
            Some(e) => Err(e),
            None => self.export_unheld(&mut flows, tick, now_mono, idle_ns, final_export),
        };
        self.flows = flows;
        self.index_scratch = scratch;
        walked
    }

    /// The export's second part: flows no slot holds (their flushes not exported yet), and
    /// forgetting idle ones.
    fn export_unheld(
        &mut self,
        flows: &mut HashMap<FlowKey, FlowState>,
        tick: u32,
        now_mono: u64,
        idle_ns: u64,
        final_export: bool,
    ) -> Result<()> {
        let mut forget = Vec::new();
        for (key, state) in flows.iter_mut() {
            if state.live_at == tick {
                continue;
            }
            if !final_export
                && tick.wrapping_sub(state.live_at) >= 2
                && now_mono.saturating_sub(state.last_ns) > idle_ns
            {
                forget.push(*key);
            }
            if let Some(delta) = state.advance([0; 3]) {
                self.export_delta(key, &delta)?;
            }
        }
        for key in &forget {
            flows.remove(key);
        }
        self.counters.flows_removed_idle += forget.len() as u64;
        Ok(())
    }

    /// Writes one flow's delta as a `flow` event (counted when the protocol has no ports).
    fn export_delta(&mut self, key: &FlowKey, delta: &FlowStats) -> Result<()> {
        let iface = self.ifname(key.ifindex);
        match flow_event(key, delta, iface, self) {
            Some(flow) => {
                if let Some(sink) = &mut self.events {
                    sink.line(&Event::Flow(flow))?;
                    self.counters.flow_events_written += 1;
                }
            }
            None => self.counters.flows_without_ports += 1,
        }
        Ok(())
    }

    pub(crate) fn render_metrics(&self, kernel: &CounterSnapshot, live_flows: usize) -> Exposition {
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
        let model = serde_json::to_value(self.model.stats()).unwrap_or_default();
        for (prefix, value) in [("agent", agent), ("tracker", tracker), ("model", model)] {
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
        let evicted = kernel.total(Counter::FlowEvictions);
        e.family(
            "shadowtap_flows_live",
            "gauge",
            "Flows in the kernel flow cache.",
            &[(&[], live_flows as f64)],
        );
        e.family(
            "shadowtap_flows_evicted_total",
            "counter",
            "Flows whose kernel flow-cache slot a colliding flow took (their counters were flushed to the agent first).",
            &[(&[], evicted as f64)],
        );
        e
    }

    pub(crate) fn stats_line(
        &mut self,
        kernel: &CounterSnapshot,
        live_flows: usize,
        final_line: bool,
    ) -> Result<()> {
        let evicted = kernel.total(Counter::FlowEvictions);
        let line = serde_json::json!({
            "kind": "stats",
            "final": final_line,
            "ts_ns": u64::try_from(clock_ns(libc::CLOCK_REALTIME)).unwrap_or(0),
            "kernel": kernel.to_json(),
            "agent": &self.counters,
            "tracker": self.tracker.stats(),
            "model": self.model.stats(),
            "flows": { "live": live_flows, "removed_idle": self.counters.flows_removed_idle, "evicted": evicted },
            "unread_records": kernel.total(Counter::Events).saturating_sub(self.counters.records_received),
        });
        if final_line {
            tracing::info!(stats = %line, "final stats");
        }
        let sink = match &mut self.stats_out {
            StatsOut::WithEvents => self.events.as_mut(),
            StatsOut::Own(sink) => Some(sink),
            StatsOut::Off => None,
        };
        if let Some(sink) = sink {
            sink.line(&line).context("writing stats")?;
        }
        // Events buffered since the last drain go out with (before) the stats line.
        self.flush_events()?;
        if let StatsOut::Own(sink) = &mut self.stats_out {
            sink.flush().context("writing stats")?;
        }
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

/// A JSON-lines output: `-` for stdout, else a file (created or truncated). `what` names the
/// option in errors.
pub(crate) fn open_output(path: &str, what: &str) -> Result<LineSink> {
    if path == "-" {
        // `LineSink` writes whole lines; stdout's own line buffering passes them straight on.
        return Ok(LineSink::new(Box::new(std::io::stdout())));
    }
    let p = PathBuf::from(path);
    let f = File::create(&p).with_context(|| format!("{what}: creating {}", p.display()))?;
    Ok(LineSink::new(Box::new(f)))
}

/// Reads every record the ring holds, then writes out the events they made.
/// Wall-clock nanoseconds (`CLOCK_REALTIME`), the clock event timestamps are converted to.
pub(crate) fn wall_clock_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_REALTIME)).unwrap_or(0)
}

pub(crate) fn drain(ring: &mut RingBuf<MapData>, pipe: &mut Pipeline) -> Result<usize> {
    let mut n = 0;
    while let Some(item) = ring.next() {
        pipe.on_record(&item)?;
        n += 1;
    }
    if n > 0 {
        pipe.flush_events()?;
    }
    Ok(n)
}
