//! Fault injection against real nginx (Debian's `nginx-light`) in a network namespace, reached
//! from a second namespace over a veth pair (`shadowtap_tests::netns`: names carry our pid,
//! namespaces are deleted on drop and leftovers of killed runs are swept).
//!
//! Each test builds its own bed, so tests run in parallel and a panic cleans up its own bed.
//! They need root (namespaces, AF_PACKET) and skip with a message otherwise; a missing nginx
//! is a failure, not a skip (`DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shadowtap_loadgen::faults::{
    FaultKind, FaultOptions, FaultOutcome, FaultReport, FaultResult, MalformedLine,
    OversizedHeaders, PacketOptions, run_fault, run_fault_detailed,
};
use shadowtap_tests::netns::Netns;

use shadowtap_tests::nginx::{HOST, PATH, PORT};

/// True (after saying why) when the tests cannot run here.
fn skip_unless_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        eprintln!(
            "SKIPPED: fault-injection tests need root (network namespaces, AF_PACKET); \
             running as euid {euid}"
        );
    }
    euid != 0
}

use shadowtap_tests::nginx::Nginx as Bed;

/// What the fault tests need of the nginx bed.
trait BedExt {
    fn http_opts(&self) -> FaultOptions;
    fn packet_opts(&self) -> FaultOptions;
    fn counter(&self, section: &str, field: &str) -> u64;
}

impl BedExt for Bed {
    fn http_opts(&self) -> FaultOptions {
        FaultOptions {
            netns: Some(ns_path(&self.pair.client)),
            ..FaultOptions::default()
        }
    }

    /// Packet faults send as `.3` of the veth subnet, an address no namespace has.
    fn packet_opts(&self) -> FaultOptions {
        let [a, b, c, _] = self.server_v4.octets();
        let source = Ipv4Addr::new(a, b, c, 3);
        FaultOptions {
            packet: Some(PacketOptions::new(self.pair.client_if.clone(), source)),
            ..self.http_opts()
        }
    }

    /// One counter of the server namespace (see [`counter`]).
    fn counter(&self, section: &str, field: &str) -> u64 {
        counter(&self.pair.server, section, field)
    }
}

/// One counter of a namespace: `section` is the line prefix in `/proc/net/snmp` (`Tcp`, `Ip`)
/// or `/proc/net/netstat` (`TcpExt`, `IpExt`).
fn counter(ns: &Netns, section: &str, field: &str) -> u64 {
    let file = if section.ends_with("Ext") {
        "/proc/net/netstat"
    } else {
        "/proc/net/snmp"
    };
    let output = ns.run("cat", [file]).expect("reading counters");
    let text = String::from_utf8_lossy(&output.stdout);
    let prefix = format!("{section}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next().expect("names"), lines.next().expect("values"));
    let at = names
        .split_whitespace()
        .position(|n| n == field)
        .unwrap_or_else(|| panic!("no {section} {field} in {file}"));
    values
        .split_whitespace()
        .nth(at)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad {section} {field} in {file}"))
}

fn ns_path(ns: &Netns) -> PathBuf {
    Path::new("/run/netns").join(ns.name())
}

async fn fault(bed: &Bed, kind: FaultKind, opts: &FaultOptions) -> FaultResult {
    let result = run_fault_detailed(kind, bed.target(), HOST, PATH, opts)
        .await
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    eprintln!("{kind}: {result:?}");
    result
}

/// A packet-level fault, checking that the client namespace's own stack neither received our
/// connection's segments (`Ip InReceives`) nor answered them with a reset (`Tcp OutRsts`).
async fn packet_fault(bed: &Bed, kind: FaultKind) -> FaultResult {
    let client = &bed.pair.client;
    let quiet = || {
        (
            counter(client, "Ip", "InReceives"),
            counter(client, "Tcp", "OutRsts"),
        )
    };
    let before = quiet();
    let result = fault(bed, kind, &bed.packet_opts()).await;
    assert_eq!(
        quiet(),
        before,
        "(InReceives, OutRsts) of the client namespace moved: its kernel saw our segments"
    );
    result
}

fn assert_200(result: &FaultResult) {
    assert_eq!(
        (result.outcome, result.status),
        (FaultOutcome::Status2xx, Some(200)),
        "{result:?}"
    );
}

#[tokio::test]
async fn malformed_request_lines_get_400() {
    if skip_unless_root() {
        return;
    }
    let mut bed = Bed::start();
    for line in MalformedLine::ALL {
        let opts = FaultOptions {
            malformed: Some(line),
            ..bed.http_opts()
        };
        let result = fault(&bed, FaultKind::MalformedRequestLine, &opts).await;
        assert_eq!(result.status, Some(400), "{line:?}: {result:?}");
        assert_eq!(result.outcome, FaultOutcome::Status4xx);
    }
    bed.assert_still_serving();
}

#[tokio::test]
async fn oversized_headers_get_400_or_431() {
    if skip_unless_root() {
        return;
    }
    let mut bed = Bed::start();
    for which in OversizedHeaders::ALL {
        let opts = FaultOptions {
            oversized: Some(which),
            ..bed.http_opts()
        };
        let result = fault(&bed, FaultKind::OversizedHeaders, &opts).await;
        assert!(
            matches!(result.status, Some(400 | 431)),
            "{which:?}: {result:?}"
        );
    }
    // nginx says why in its error log (its 400 page reads "Request Header Or Cookie Too Large").
    let log = bed.error_log();
    assert!(log.contains("client sent too long header line"), "{log}");
    bed.assert_still_serving();
}

#[tokio::test]
async fn reset_mid_request_leaves_nginx_serving() {
    if skip_unless_root() {
        return;
    }
    let mut bed = Bed::start();
    let result = fault(&bed, FaultKind::ResetMidRequest, &bed.http_opts()).await;
    // The outcome is the follow-up request's.
    assert_200(&result);
    // nginx noticed the reset while reading the head (logged at info level).
    let deadline = Instant::now() + Duration::from_secs(5);
    let logged = loop {
        let log = bed.error_log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("reset by peer) while reading client request"))
        {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no reset logged: {log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("nginx logged: {logged}");
    bed.assert_still_serving();
}

#[tokio::test]
async fn slow_client_within_nginx_timeouts_gets_200() {
    if skip_unless_root() {
        return;
    }
    let bed = Bed::start();
    let opts = bed.http_opts();
    let result = fault(&bed, FaultKind::SlowClient, &opts).await;
    assert_200(&result);
    // The trickle really was slow: >100 bytes, 4 at a time, 25 ms apart.
    assert!(result.elapsed >= Duration::from_millis(600), "{result:?}");
    assert!(result.elapsed < opts.trickle.max_duration + Duration::from_secs(2));
}

#[tokio::test]
async fn client_delay_gets_200() {
    if skip_unless_root() {
        return;
    }
    let bed = Bed::start();
    let opts = bed.http_opts();
    let result = fault(&bed, FaultKind::ClientDelay, &opts).await;
    assert_200(&result);
    // nginx answers a GET for a static file without waiting for its body, so only the pause
    // before the head is certain to have passed.
    assert!(result.elapsed >= opts.delay.before_request, "{result:?}");
}

#[tokio::test]
async fn bad_checksum_segment_is_dropped_then_retransmitted() {
    if skip_unless_root() {
        return;
    }
    let mut bed = Bed::start();
    let before = bed.counter("Tcp", "InCsumErrors");
    let result = packet_fault(&bed, FaultKind::BadChecksum).await;
    assert_200(&result);
    assert_eq!(result.faulty_segment_acked, Some(false), "{result:?}");
    assert!(result.retransmissions >= 1, "{result:?}");
    let after = bed.counter("Tcp", "InCsumErrors");
    assert!(after > before, "InCsumErrors {before} -> {after}");
    bed.assert_still_serving();
}

#[tokio::test]
async fn truncated_segment_is_dropped_then_retransmitted() {
    if skip_unless_root() {
        return;
    }
    let mut bed = Bed::start();
    let before = bed.counter("IpExt", "InTruncatedPkts");
    let result = packet_fault(&bed, FaultKind::TruncatedSegment).await;
    assert_200(&result);
    assert_eq!(result.faulty_segment_acked, Some(false), "{result:?}");
    assert!(result.retransmissions >= 1, "{result:?}");
    let after = bed.counter("IpExt", "InTruncatedPkts");
    assert!(after > before, "InTruncatedPkts {before} -> {after}");
    bed.assert_still_serving();
}

#[tokio::test]
async fn out_of_order_segments_get_200() {
    if skip_unless_root() {
        return;
    }
    let bed = Bed::start();
    let before = bed.counter("TcpExt", "TCPOFOQueue");
    let result = packet_fault(&bed, FaultKind::OutOfOrder).await;
    assert_200(&result);
    // The target really queued segments out of order.
    let after = bed.counter("TcpExt", "TCPOFOQueue");
    assert!(after > before, "TCPOFOQueue {before} -> {after}");
}

#[tokio::test]
async fn duplicate_segments_get_200() {
    if skip_unless_root() {
        return;
    }
    let bed = Bed::start();
    let before = bed.counter("TcpExt", "DelayedACKLost");
    let result = packet_fault(&bed, FaultKind::DuplicateSegment).await;
    assert_200(&result);
    // Each duplicate of data already received makes Linux ACK at once and count it here.
    let after = bed.counter("TcpExt", "DelayedACKLost");
    assert!(after > before, "DelayedACKLost {before} -> {after}");
}

#[tokio::test]
async fn closed_port_is_refused_and_owned_source_rejected() {
    if skip_unless_root() {
        return;
    }
    let bed = Bed::start();
    let closed = SocketAddr::from((bed.server_v4, PORT + 1));
    let http = run_fault(FaultKind::SlowClient, closed, HOST, PATH, &bed.http_opts()).await;
    assert_eq!(http.expect("runs"), FaultOutcome::ConnectionRefused);
    let packet = run_fault(
        FaultKind::OutOfOrder,
        closed,
        HOST,
        PATH,
        &bed.packet_opts(),
    )
    .await;
    assert_eq!(packet.expect("runs"), FaultOutcome::ConnectionRefused);

    let mut opts = bed.packet_opts();
    if let Some(p) = opts.packet.as_mut() {
        p.source = bed.pair.client_v4.expect("client address");
    }
    let err = run_fault(FaultKind::OutOfOrder, bed.target(), HOST, PATH, &opts)
        .await
        .expect_err("an address the host owns must be refused");
    assert!(err.to_string().contains("is configured on"), "{err}");
}

/// What a CLI does: every kind once, counted into a report that serialises to JSON.
#[tokio::test]
async fn every_kind_counted_in_a_report() {
    if skip_unless_root() {
        return;
    }
    let mut bed = Bed::start();
    let opts = bed.packet_opts();
    let mut report = FaultReport::new();
    for kind in FaultKind::ALL {
        let result = run_fault(kind, bed.target(), HOST, PATH, &opts).await;
        report.record_result(kind, &result);
    }
    let json = serde_json::to_value(&report).expect("serialises");
    for kind in FaultKind::ALL {
        let expected = match kind {
            FaultKind::MalformedRequestLine | FaultKind::OversizedHeaders => "4xx",
            _ => "2xx",
        };
        assert_eq!(
            json["counts"][kind.as_str()][expected],
            1,
            "{kind}: {json}\n{report}"
        );
    }
    assert!(report.errors.is_empty(), "{report}");
    bed.assert_still_serving();
}
