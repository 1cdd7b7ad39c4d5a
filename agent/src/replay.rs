//! Offline replay of a pcap/pcapng file through the same decoder, selection rule and
//! tracker as the live tap, writing the event stream as JSON lines.
//!
//! Only packets that [`classify`] selects reach the [`Tracker`]: exactly the packets the
//! kernel would have sent to userspace as records, so replay semantics cannot drift from the
//! live path. Every decoded packet is accounted in the flow table, as the kernel's flow map
//! accounts every packet.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;
use shadowtap_common::RecordKind;

use crate::decode::pcap::{CaptureFormat, PcapReader};
use crate::decode::{DecodeError, DecodeErrorCounts, LinkType, PacketMeta, classify, decode_frame};
use crate::events::{
    Direction, Event, EventCounts, FlowTable, FlowTableConfig, FlowTableStats, PacketContext,
    StatsEvent, Tracker, TrackerConfig, TrackerStats,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    pub tracker: TrackerConfig,
    pub flows: FlowTableConfig,
    /// Cut HTTP heads to this many payload bytes (and ClientHellos to
    /// [`shadowtap_common::TLS_HEAD_LEN`]), as the kernel copies them: the view of a live
    /// agent with this `--snaplen`. `None`: the whole captured payload (the replay's default,
    /// checked against tshark).
    pub snaplen: Option<u16>,
}

/// Packets per kernel record kind, as [`classify`] selected them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClassifiedCounts {
    pub tcp_control: u64,
    pub http_head: u64,
    pub tls_client_hello: u64,
}

/// Everything counted during a replay; also written as the final `stats` line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    pub source: String,
    pub format: &'static str,
    pub packets: u64,
    /// Captured bytes read.
    pub captured_bytes: u64,
    /// Original frame bytes.
    pub wire_bytes: u64,
    pub decoded: u64,
    pub decode_errors: DecodeErrorCounts,
    pub classified: ClassifiedCounts,
    pub events: EventCounts,
    pub tracker: TrackerStats,
    pub flows: FlowTableStats,
    /// Set when the file could not be read to its end (the replay then returns an error).
    pub read_error: Option<String>,
}

/// Replays `path` into `out` with default table sizes.
pub fn replay_pcap(path: &Path, out: &mut dyn Write) -> anyhow::Result<ReplaySummary> {
    replay_pcap_with(path, out, &ReplayOptions::default())
}

pub fn replay_pcap_with(
    path: &Path,
    out: &mut dyn Write,
    options: &ReplayOptions,
) -> anyhow::Result<ReplaySummary> {
    let mut writer = BufWriter::with_capacity(1 << 16, out);
    let result = replay_pcap_events(path, options, &mut |event| {
        serde_json::to_writer(&mut writer, event).context("writing an event")?;
        writer.write_all(b"\n").context("writing an event")
    });
    // Flushed on a read error too: the events and stats before the damage are kept.
    writer.flush().context("flushing events")?;
    result
}

/// Replays a capture into `on_event`: every event, then the final `stats` event (also
/// when reading stops at a damaged record; the error is returned after it).
pub fn replay_pcap_events(
    path: &Path,
    options: &ReplayOptions,
    on_event: &mut dyn FnMut(&Event) -> anyhow::Result<()>,
) -> anyhow::Result<ReplaySummary> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = PcapReader::new(BufReader::with_capacity(1 << 16, file))
        .with_context(|| format!("reading {}", path.display()))?;
    let iface: Arc<str> = path
        .file_name()
        .map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
        .into();
    let mut run = Run {
        summary: ReplaySummary {
            source: iface.to_string(),
            format: match reader.format() {
                CaptureFormat::Pcap => "pcap",
                CaptureFormat::PcapNg => "pcapng",
            },
            ..ReplaySummary::default()
        },
        tracker: Tracker::new(options.tracker),
        snaplen: options.snaplen,
        flows: FlowTable::new(options.flows),
        on_event,
        events: Vec::new(),
        last_ts_ns: 0,
    };
    let read_result = loop {
        match reader.next_packet() {
            Ok(Some(packet)) => {
                run.packet(
                    packet.ts_ns,
                    &iface,
                    packet.linktype,
                    packet.data,
                    packet.orig_len,
                )?;
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    if let Err(e) = &read_result {
        run.summary.read_error = Some(e.to_string());
    }
    run.finish()?;
    match read_result {
        Ok(()) => Ok(run.summary),
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
}

struct Run<'w> {
    summary: ReplaySummary,
    tracker: Tracker,
    flows: FlowTable,
    snaplen: Option<u16>,
    on_event: &'w mut dyn FnMut(&Event) -> anyhow::Result<()>,
    events: Vec<Event>,
    last_ts_ns: u64,
}

impl Run<'_> {
    fn packet(
        &mut self,
        ts_ns: u64,
        iface: &Arc<str>,
        linktype: u32,
        data: &[u8],
        orig_len: u32,
    ) -> anyhow::Result<()> {
        self.summary.packets += 1;
        self.summary.captured_bytes += data.len() as u64;
        self.summary.wire_bytes += u64::from(orig_len);
        self.last_ts_ns = self.last_ts_ns.max(ts_ns);
        let decoded = LinkType::from_pcap_linktype(linktype)
            .ok_or(DecodeError::UnsupportedLink(linktype))
            .and_then(|link| decode_frame(link, data, orig_len));
        let meta = match decoded
            .map(|meta| self.cut_like_the_kernel(meta, linktype, data, orig_len))
        {
            Ok(meta) => meta,
            Err(e) => {
                tracing::debug!(packet = self.summary.packets, error = %e, "undecodable packet");
                self.summary.decode_errors.record(&e);
                return Ok(());
            }
        };
        self.summary.decoded += 1;
        let ctx = PacketContext {
            ts_ns,
            iface: Arc::clone(iface),
            direction: if meta.link_outgoing {
                Direction::Egress
            } else {
                Direction::Ingress
            },
        };
        if let Some(kind) = classify(&meta) {
            let slot = match kind {
                RecordKind::TcpControl => Some(&mut self.summary.classified.tcp_control),
                RecordKind::HttpHead => Some(&mut self.summary.classified.http_head),
                RecordKind::TlsClientHello => Some(&mut self.summary.classified.tls_client_hello),
                // Not a frame class: `classify` never returns it.
                RecordKind::FlowEvicted => None,
            };
            if let Some(slot) = slot {
                *slot += 1;
            }
            self.tracker.on_packet(&ctx, &meta, &mut self.events);
        }
        self.flows.on_packet(&ctx, &meta, &mut self.events);
        self.write_events()
    }

    /// The frame as a live record carries it: with [`ReplayOptions::snaplen`], an HTTP head or
    /// ClientHello re-decoded from its headers plus the payload bytes the kernel copies.
    fn cut_like_the_kernel<'d>(
        &self,
        meta: PacketMeta<'d>,
        linktype: u32,
        data: &'d [u8],
        orig_len: u32,
    ) -> PacketMeta<'d> {
        let Some(snaplen) = self.snaplen else {
            return meta;
        };
        let keep = match classify(&meta) {
            Some(RecordKind::HttpHead) => usize::from(snaplen),
            Some(RecordKind::TlsClientHello) => usize::from(shadowtap_common::TLS_HEAD_LEN),
            _ => return meta,
        };
        if meta.payload.len() <= keep {
            return meta;
        }
        let cut = (meta.payload_offset as usize + keep).min(data.len());
        LinkType::from_pcap_linktype(linktype)
            .and_then(|link| decode_frame(link, &data[..cut], orig_len).ok())
            .unwrap_or(meta)
    }

    fn write_events(&mut self) -> anyhow::Result<()> {
        for event in self.events.drain(..) {
            (self.on_event)(&event)?;
            self.summary.events.record(&event);
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.flows.drain(&mut self.events);
        self.write_events()?;
        self.summary.tracker = self.tracker.stats();
        self.summary.flows = self.flows.stats();
        self.summary.events.stats += 1;
        let counters = match serde_json::to_value(&self.summary).context("encoding stats")? {
            serde_json::Value::Object(map) => map,
            other => anyhow::bail!("stats encoded as {other}, not an object"),
        };
        let stats = Event::Stats(StatsEvent {
            ts_ns: self.last_ts_ns,
            counters,
        });
        (self.on_event)(&stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn lines(out: &[u8]) -> Vec<serde_json::Value> {
        std::str::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| {
                assert!(l.starts_with(r#"{"kind":""#), "kind must come first: {l}");
                serde_json::from_str(l).expect("json line")
            })
            .collect()
    }

    #[test]
    fn every_shared_pcap_replays_to_consistent_lines() {
        let dir = crate::decode::tests::shared_pcap_dir();
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .expect("shared pcaps")
            .map(|e| e.expect("entry").path())
            .collect();
        paths.sort();
        // The shared captures (../shared/data/pcap): all of them are replayed.
        assert_eq!(paths.len(), 7, "{paths:?}");
        for path in paths {
            let mut out = Vec::new();
            let summary = replay_pcap(&path, &mut out).expect("replay");
            let lines = lines(&out);
            let mut by_kind = BTreeMap::new();
            for l in &lines {
                *by_kind
                    .entry(l["kind"].as_str().expect("kind").to_owned())
                    .or_insert(0u64) += 1;
            }
            let count = |k: &str| by_kind.get(k).copied().unwrap_or(0);
            let name = path.display();
            assert_eq!(count("http_request"), summary.events.http_request, "{name}");
            assert_eq!(
                count("http_response"),
                summary.events.http_response,
                "{name}"
            );
            assert_eq!(count("conn_open"), summary.tracker.conns_opened, "{name}");
            assert_eq!(count("flow"), summary.flows.flows_created, "{name}");
            assert_eq!(
                summary.tracker.requests, summary.events.http_request,
                "{name}"
            );
            assert_eq!(
                summary.decoded + summary.decode_errors.total(),
                summary.packets,
                "{name}"
            );
            let stats = lines.last().expect("stats line");
            assert_eq!(stats["kind"], "stats");
            assert_eq!(stats["packets"].as_u64(), Some(summary.packets));
            assert_eq!(stats["events"]["stats"].as_u64(), Some(1));
            // Flow payload bytes add up to what the decoder saw for TCP/UDP.
            let flow_packets: u64 = lines
                .iter()
                .filter(|l| l["kind"] == "flow")
                .map(|l| l["packets"].as_u64().expect("packets"))
                .sum();
            assert_eq!(flow_packets, summary.flows.packets, "{name}");
        }
    }

    #[test]
    fn truncated_file_reports_offset_and_still_writes_stats() {
        let src = crate::decode::tests::shared_pcap_dir().join("three_http_streams.pcap");
        let bytes = std::fs::read(&src).expect("read");
        let cut = bytes.len() - 7;
        let path = std::env::temp_dir().join(format!("shadowtap-cut-{}.pcap", std::process::id()));
        std::fs::write(&path, &bytes[..cut]).expect("write temp pcap");
        let mut out = Vec::new();
        let err = replay_pcap(&path, &mut out).expect_err("truncated file");
        std::fs::remove_file(&path).expect("remove temp pcap");
        let msg = format!("{err:#}");
        assert!(msg.contains("file ends at byte"), "{msg}");
        let lines = lines(&out);
        let stats = lines.last().expect("stats");
        assert_eq!(stats["kind"], "stats");
        assert!(
            stats["read_error"]
                .as_str()
                .expect("read_error")
                .contains("byte")
        );
        // tshark reads 28 packets in the whole file; the cut falls inside the last one.
        assert_eq!(stats["packets"].as_u64(), Some(27));
    }

    #[test]
    fn missing_file_names_the_path() {
        let mut out = Vec::new();
        let err = replay_pcap(Path::new("/nonexistent/x.pcap"), &mut out).expect_err("missing");
        assert!(format!("{err:#}").contains("/nonexistent/x.pcap"));
    }
}
