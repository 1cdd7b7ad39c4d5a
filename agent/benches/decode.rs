//! Userspace decode throughput in records/s on real traffic, next to a baseline measured in the
//! same run: etherparse's bare L2–L4 slicing of the same bytes (the floor for any decoder).
//!
//! Records are built from every frame of ../shared/data/pcap/*.pcap that the kernel would
//! send (`decode::classify`), cut to what the kernel copies (headers + 128 payload bytes).
//! Run via `cargo xtask bench decode`.

use std::{
    fs::File,
    hint::black_box,
    io::BufReader,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use shadowtap_agent::{
    decode::{self, LinkType, pcap::PcapReader},
    events::{Direction, PacketContext, Tracker, TrackerConfig},
};

/// The same allocator as the shipped binaries (see `agent/src/main.rs`), so that what is
/// measured is what runs.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Rec {
    data: Vec<u8>,
    wire_len: u32,
    ts_ns: u64,
}

fn shared_pcaps() -> Vec<PathBuf> {
    let dir = std::env::var_os("SHADOWTAP_SHARED_DATA").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
        PathBuf::from,
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("pcap"))
        .expect("../shared/data/pcap readable (set SHADOWTAP_SHARED_DATA)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    files.sort();
    files
}

fn records() -> Vec<Rec> {
    let mut out = Vec::new();
    for path in shared_pcaps() {
        let mut reader = PcapReader::new(BufReader::new(File::open(&path).expect("open pcap")))
            .expect("pcap header");
        while let Ok(Some(pkt)) = reader.next_packet() {
            if decode::LinkType::from_pcap_linktype(pkt.linktype) != Some(LinkType::Ethernet) {
                continue;
            }
            let Ok(meta) = decode::decode_frame(LinkType::Ethernet, pkt.data, pkt.orig_len) else {
                continue;
            };
            if decode::classify(&meta).is_none() {
                continue;
            }
            let cap = (meta.payload_offset as usize + 128).min(pkt.data.len());
            out.push(Rec {
                data: pkt.data[..cap].to_vec(),
                wire_len: pkt.orig_len,
                ts_ns: pkt.ts_ns,
            });
        }
    }
    out
}

/// Runs `f` over all records repeatedly for at least `min` and returns records/s.
fn rate(recs: &[Rec], min: Duration, mut f: impl FnMut(&Rec)) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < min {
        for r in recs {
            f(r);
        }
        n += recs.len() as u64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let recs = records();
    assert!(!recs.is_empty(), "no records from the shared pcaps");
    let min = Duration::from_secs(2);
    let baseline = rate(&recs, min, |r| {
        black_box(etherparse::SlicedPacket::from_ethernet(black_box(&r.data)).is_ok());
    });
    let decode_only = rate(&recs, min, |r| {
        black_box(decode::decode_frame(LinkType::Ethernet, black_box(&r.data), r.wire_len).is_ok());
    });
    let iface: Arc<str> = Arc::from("bench");
    let mut tracker = Tracker::new(TrackerConfig::default());
    let mut events = Vec::new();
    let full = rate(&recs, min, |r| {
        if let Ok(meta) = decode::decode_frame(LinkType::Ethernet, &r.data, r.wire_len) {
            let ctx = PacketContext {
                ts_ns: r.ts_ns,
                iface: Arc::clone(&iface),
                direction: Direction::Ingress,
            };
            tracker.on_packet(&ctx, &meta, &mut events);
            events.clear();
        }
    });
    println!(
        "Userspace decode throughput over {} real records (single core)",
        recs.len()
    );
    println!("{:<34} {:>14} {:>10}", "stage", "records/s", "vs slice");
    println!(
        "{:<34} {:>14.0} {:>9.2}x",
        "baseline: etherparse slice only", baseline, 1.0
    );
    println!(
        "{:<34} {:>14.0} {:>9.2}x",
        "decode_frame (L2-L7 heads)",
        decode_only,
        decode_only / baseline
    );
    println!(
        "{:<34} {:>14.0} {:>9.2}x",
        "decode_frame + tracker events",
        full,
        full / baseline
    );
}
