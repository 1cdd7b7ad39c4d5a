//! Parity of `replay` (the agent's decoder, kernel selection rule and tracker run over a pcap)
//! with tshark, on every file in `../shared/data/pcap/`.
//!
//! The oracle is computed by running tshark now, never copied from a table. Three tshark
//! views are used (see `shadowtap_tests::tshark`):
//!
//! 1. **Starts**: TCP segments whose payload begins an HTTP message, TCP reassembly off,
//!    retransmissions excluded. A tap that sees message heads reports exactly these, so the
//!    replay must match them exactly: request and response counts, per-Host request counts,
//!    and even the multiset of message timestamps.
//! 2. **Starts with retransmissions**: the same with sequence analysis off. The difference
//!    to (1) is the retransmitted heads, which the tracker recognises by (connection,
//!    direction, TCP sequence number) and counts instead of re-emitting: its
//!    `retransmitted_requests`/`retransmitted_responses` must equal that difference.
//! 3. **Reassembled** (tshark's default): differs from what a head-seeing tap reports in two
//!    principled ways, both accounted for exactly:
//!    - HTTP over UDP (SSDP `M-SEARCH`/`NOTIFY`) is counted by tshark; the tap follows TCP
//!      only. Counted from the UDP rows of the same tshark run.
//!    - A message is only counted once tshark reassembled all of it; heads whose body (or
//!      remaining headers) the capture does not hold are not counted. Each reassembled TCP
//!      message is mapped to the frame of its first segment, which must be one of the
//!      starts of view (1) with the same kind and Host; the starts no reassembled message
//!      maps to are the cut-off ones. Then reassembled = ours − cut-off + UDP, per kind and
//!      per Host.
//!    - Per Host only: a request whose head segment has no Host header but whose reassembled
//!      message has one (the header arrived in a later segment) is a Host-less request for
//!      the tap and a request to that Host for tshark. Such messages are recognised one by
//!      one (no Host at the start, a Host after reassembly, several segments) and moved.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;
use shadowtap_tests::support::shared_data_dir;
use shadowtap_tests::tshark::{HttpFrame, Tshark};

/// Counts per key.
type Tally<K> = BTreeMap<K, u64>;

fn tally<K: Ord>(items: impl IntoIterator<Item = K>) -> Tally<K> {
    let mut out = Tally::new();
    for item in items {
        *out.entry(item).or_insert(0) += 1;
    }
    out
}

/// Host as a tally key; requests without a Host header are counted under a marker.
fn host_key(host: Option<&str>) -> String {
    host.map_or_else(|| "<no Host>".to_owned(), str::to_owned)
}

/// `a - b + c` on tallies, dropping zero entries; `None` if some count would go negative.
fn combine(
    a: &Tally<String>,
    minus: &Tally<String>,
    plus: &Tally<String>,
) -> Option<Tally<String>> {
    let mut out = a.clone();
    for (k, n) in minus {
        let slot = out.get_mut(k)?;
        *slot = slot.checked_sub(*n)?;
    }
    for (k, n) in plus {
        *out.entry(k.clone()).or_insert(0) += n;
    }
    out.retain(|_, n| *n > 0);
    Some(out)
}

/// What our replay reported for one file.
struct Ours {
    /// (timestamp, Host) of every `http_request`.
    requests: Vec<(u64, String)>,
    /// Timestamp of every `http_response`.
    responses: Vec<u64>,
    retransmitted_requests: u64,
    retransmitted_responses: u64,
}

impl Ours {
    fn hosts(&self) -> Tally<String> {
        tally(self.requests.iter().map(|(_, h)| h.clone()))
    }
}

fn replay(path: &Path) -> Ours {
    let mut out = Vec::new();
    shadowtap_agent::replay::replay_pcap(path, &mut out)
        .unwrap_or_else(|e| panic!("replay of {} failed: {e:#}", path.display()));
    let text = String::from_utf8(out).expect("replay writes UTF-8");
    let mut ours = Ours {
        requests: Vec::new(),
        responses: Vec::new(),
        retransmitted_requests: 0,
        retransmitted_responses: 0,
    };
    let mut stats = None;
    for line in text.lines() {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}: bad JSON line {line:?}: {e}", path.display()));
        let ts = || event["ts_ns"].as_u64().expect("ts_ns");
        match event["kind"].as_str().expect("kind") {
            "http_request" => ours.requests.push((ts(), host_key(event["host"].as_str()))),
            "http_response" => ours.responses.push(ts()),
            "stats" => stats = Some(event),
            _ => {}
        }
    }
    let stats = stats.unwrap_or_else(|| panic!("{}: no stats line", path.display()));
    let counter = |name: &str| {
        stats["tracker"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("stats.tracker.{name} missing: {stats}"))
    };
    ours.retransmitted_requests = counter("retransmitted_requests");
    ours.retransmitted_responses = counter("retransmitted_responses");
    ours
}

fn tshark_or_panic(result: shadowtap_tests::Result<Vec<HttpFrame>>) -> Vec<HttpFrame> {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// Mismatches found in one capture, each prefixed with the file name.
struct Problems {
    name: String,
    found: Vec<String>,
}

impl Problems {
    fn push(&mut self, what: impl std::fmt::Display) {
        self.found.push(format!("{}: {what}", self.name));
    }

    fn expect_eq(&mut self, what: &str, ours: impl std::fmt::Debug, theirs: impl std::fmt::Debug) {
        let (ours, theirs) = (format!("{ours:?}"), format!("{theirs:?}"));
        if ours != theirs {
            self.push(format_args!("{what}: ours {ours} != tshark {theirs}"));
        }
    }
}

fn hosts_of<'a>(frames: impl IntoIterator<Item = &'a HttpFrame>) -> Tally<String> {
    tally(
        frames
            .into_iter()
            .filter(|f| f.request)
            .map(|f| host_key(f.host.as_deref())),
    )
}

/// (1) Starts: exact match of counts, per-Host counts and timestamps.
fn check_starts(ours: &Ours, starts: &[HttpFrame], p: &mut Problems) {
    let requests: Vec<&HttpFrame> = starts.iter().filter(|f| f.request).collect();
    let responses: Vec<&HttpFrame> = starts.iter().filter(|f| !f.request).collect();
    p.expect_eq("http_request count", ours.requests.len(), requests.len());
    p.expect_eq("http_response count", ours.responses.len(), responses.len());
    p.expect_eq("requests per Host", ours.hosts(), hosts_of(starts));
    p.expect_eq(
        "request (timestamp, Host) multiset",
        tally(ours.requests.iter().cloned()),
        tally(
            requests
                .iter()
                .map(|f| (f.ts_ns, host_key(f.host.as_deref()))),
        ),
    );
    p.expect_eq(
        "response timestamp multiset",
        tally(ours.responses.iter().copied()),
        tally(responses.iter().map(|f| f.ts_ns)),
    );
}

/// (2) Retransmitted heads: what sequence analysis hides from the starts, we count instead.
/// Returns tshark's (requests, responses) difference.
fn check_retransmissions(
    ours: &Ours,
    starts: &[HttpFrame],
    with_retx: &[HttpFrame],
    p: &mut Problems,
) -> (usize, usize) {
    let count = |frames: &[HttpFrame], request: bool| {
        frames.iter().filter(|f| f.request == request).count()
    };
    let (Some(requests), Some(responses)) = (
        count(with_retx, true).checked_sub(count(starts, true)),
        count(with_retx, false).checked_sub(count(starts, false)),
    ) else {
        p.push("tshark shows fewer heads with retransmissions than without");
        return (0, 0);
    };
    p.expect_eq(
        "retransmitted requests",
        ours.retransmitted_requests,
        requests,
    );
    p.expect_eq(
        "retransmitted responses",
        ours.retransmitted_responses,
        responses,
    );
    (requests, responses)
}

/// How tshark's reassembled view differs from the starts, message by message.
#[derive(Default)]
struct ReassemblyDiff {
    udp_requests: usize,
    udp_responses: usize,
    cut_requests: usize,
    cut_responses: usize,
    /// Requests whose Host header is not in the head segment but in a later one.
    host_later: usize,
    reassembled_requests: usize,
    reassembled_responses: usize,
}

/// (3) Reassembled: UDP messages, messages never completed in the capture, and Host
/// headers that only a later segment carries.
fn check_reassembled(
    ours: &Ours,
    starts: &[HttpFrame],
    reassembled: &[HttpFrame],
    p: &mut Problems,
) -> ReassemblyDiff {
    let mut diff = ReassemblyDiff::default();
    let udp: Vec<&HttpFrame> = reassembled.iter().filter(|f| f.udp).collect();
    diff.udp_requests = udp.iter().filter(|f| f.request).count();
    diff.udp_responses = udp.len() - diff.udp_requests;

    let starts_by_frame: BTreeMap<u64, &HttpFrame> = starts.iter().map(|f| (f.frame, f)).collect();
    let mut completed_heads = BTreeSet::new();
    let (mut host_from, mut host_to) = (Vec::new(), Vec::new());
    for message in reassembled.iter().filter(|f| !f.udp) {
        let Some(start) = starts_by_frame.get(&message.head_frame) else {
            p.push(format_args!(
                "tshark reassembled a message (frame {}) whose first segment {} is not a message start",
                message.frame, message.head_frame
            ));
            continue;
        };
        if !completed_heads.insert(message.head_frame) {
            p.push(format_args!(
                "two reassembled messages start in frame {}",
                message.head_frame
            ));
        }
        let host_in_later_segment =
            start.host.is_none() && message.host.is_some() && message.head_frame != message.frame;
        if start.request != message.request
            || (start.host != message.host && !host_in_later_segment)
        {
            p.push(format_args!(
                "reassembled message {message:?} disagrees with its first segment {start:?}"
            ));
        } else if host_in_later_segment {
            diff.host_later += 1;
            host_from.push(host_key(None));
            host_to.push(host_key(message.host.as_deref()));
        }
    }
    let cut_off: Vec<&HttpFrame> = starts
        .iter()
        .filter(|f| !completed_heads.contains(&f.frame))
        .collect();
    diff.cut_requests = cut_off.iter().filter(|f| f.request).count();
    diff.cut_responses = cut_off.len() - diff.cut_requests;
    diff.reassembled_requests = reassembled.iter().filter(|f| f.request).count();
    diff.reassembled_responses = reassembled.len() - diff.reassembled_requests;

    p.expect_eq(
        "reassembled requests = ours - cut off + UDP",
        (ours.requests.len() + diff.udp_requests).checked_sub(diff.cut_requests),
        Some(diff.reassembled_requests),
    );
    p.expect_eq(
        "reassembled responses = ours - cut off + UDP",
        (ours.responses.len() + diff.udp_responses).checked_sub(diff.cut_responses),
        Some(diff.reassembled_responses),
    );
    let expected_hosts = combine(
        &ours.hosts(),
        &hosts_of(cut_off.iter().copied()),
        &hosts_of(udp.iter().copied()),
    )
    .and_then(|h| combine(&h, &tally(host_from), &tally(host_to)));
    p.expect_eq(
        "reassembled requests per Host = ours - cut off + UDP, Host from later segments",
        expected_hosts,
        Some(hosts_of(reassembled)),
    );
    diff
}

/// Compares one capture; returns the report row, or every mismatch found.
fn check(tshark: &Tshark, path: &Path) -> Result<String, Vec<String>> {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let ours = replay(path);
    let starts = tshark_or_panic(tshark.http_starts(path));
    let with_retx = tshark_or_panic(tshark.http_starts_with_retransmissions(path));
    let reassembled = tshark_or_panic(tshark.http_reassembled(path));
    let mut p = Problems {
        name: name.clone(),
        found: Vec::new(),
    };
    check_starts(&ours, &starts, &mut p);
    let (retx_requests, retx_responses) = check_retransmissions(&ours, &starts, &with_retx, &mut p);
    let d = check_reassembled(&ours, &starts, &reassembled, &mut p);
    if !p.found.is_empty() {
        return Err(p.found);
    }
    let start_requests = starts.iter().filter(|f| f.request).count();
    Ok(format!(
        "{name:<30} {:>5}/{:<5} {:>5}/{:<5} {:>5}/{:<5} {:>5}/{:<5} {:>5}/{:<5} {:>5}/{:<5} {:>6} {:>5}",
        ours.requests.len(),
        ours.responses.len(),
        start_requests,
        starts.len() - start_requests,
        retx_requests,
        retx_responses,
        d.reassembled_requests,
        d.reassembled_responses,
        d.udp_requests,
        d.udp_responses,
        d.cut_requests,
        d.cut_responses,
        d.host_later,
        ours.hosts().len(),
    ))
}

fn shared_pcaps() -> Vec<PathBuf> {
    let dir = shared_data_dir()
        .unwrap_or_else(|e| panic!("{e}"))
        .join("pcap");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no captures in {}", dir.display());
    files
}

#[test]
fn http_heads_match_tshark_on_every_shared_pcap() {
    // Missing tshark is a failure with instructions, never a skip.
    let tshark = Tshark::locate().unwrap_or_else(|e| panic!("{e}"));
    let mut report = format!(
        "{:<30} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>6} {:>5}\n",
        "file",
        "ours req/rsp",
        "starts",
        "retransmit",
        "reassembled",
        "udp",
        "cut off",
        "host>1",
        "hosts"
    );
    let mut problems = Vec::new();
    for path in shared_pcaps() {
        match check(&tshark, &path) {
            Ok(row) => {
                let _ = writeln!(report, "{row}");
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    eprintln!("{report}");
    assert!(
        problems.is_empty(),
        "{} mismatches:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn tally_arithmetic() {
    let t = |pairs: &[(&str, u64)]| {
        pairs
            .iter()
            .map(|(k, n)| ((*k).to_owned(), *n))
            .collect::<Tally<String>>()
    };
    assert_eq!(
        combine(&t(&[("a", 3), ("b", 1)]), &t(&[("b", 1)]), &t(&[("c", 2)])),
        Some(t(&[("a", 3), ("c", 2)]))
    );
    assert_eq!(combine(&t(&[("a", 1)]), &t(&[("a", 2)]), &t(&[])), None);
    assert_eq!(combine(&t(&[]), &t(&[("x", 1)]), &t(&[])), None);
}
