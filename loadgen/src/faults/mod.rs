//! Fault injection: requests and segments a well-behaved client would never send, each run once
//! against a target and classified by how the target answered.
//!
//! Two families of [`FaultKind`]:
//!
//! - **HTTP-level** faults use ordinary kernel TCP sockets (tokio): malformed request lines,
//!   oversized headers, a request cut off by a reset (SO_LINGER 0), a slow trickle, and pauses
//!   between connect, head and body.
//! - **Packet-level** faults speak TCP themselves through a `pnet` datalink (AF_PACKET) channel,
//!   so that single segments can carry a bad checksum, be truncated, arrive out of order or
//!   twice. They need [`PacketOptions`]: the interface to send on and a source address of their
//!   own (see [`PacketOptions`] for why that address must not belong to the host).
//!
//! [`run_fault`] returns the [`FaultOutcome`]; [`run_fault_detailed`] also returns the status
//! code and, for packet faults, what happened to the faulty segment. [`FaultReport`] counts
//! outcomes per kind for a CLI to print or emit as JSON.
//!
//! Every fault is bounded by [`FaultOptions::timeout`]. Sockets can be opened inside another
//! network namespace ([`FaultOptions::netns`]); the calling threads never change namespace.

mod http;
mod netns;
mod packet;
mod report;
mod response;

use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use packet::PacketOptions;
pub use report::FaultReport;

/// One kind of fault. The kebab-case names are the serde and `clap` spellings.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// A request line nginx-like servers must reject ([`MalformedLine`]).
    MalformedRequestLine,
    /// A 64 KiB header line, or thousands of headers ([`OversizedHeaders`]).
    OversizedHeaders,
    /// Half a request, then a TCP reset (SO_LINGER 0). The outcome is that of a normal request
    /// sent right after on a new connection: whether the target still serves.
    ResetMidRequest,
    /// The request trickled a few bytes at a time ([`Trickle`]).
    SlowClient,
    /// Pauses between connect and request head, and between head and body ([`ClientDelay`]).
    ClientDelay,
    /// One request segment sent first with a wrong TCP checksum, later retransmitted intact.
    BadChecksum,
    /// One request segment sent first in a frame shorter than its IPv4 total length, later
    /// retransmitted intact.
    TruncatedSegment,
    /// The request's segments sent in reverse order.
    OutOfOrder,
    /// Every request segment sent twice.
    DuplicateSegment,
}

impl FaultKind {
    /// Every kind, in report order.
    pub const ALL: [Self; 9] = [
        Self::MalformedRequestLine,
        Self::OversizedHeaders,
        Self::ResetMidRequest,
        Self::SlowClient,
        Self::ClientDelay,
        Self::BadChecksum,
        Self::TruncatedSegment,
        Self::OutOfOrder,
        Self::DuplicateSegment,
    ];

    /// Whether this kind needs [`PacketOptions`] (a raw datalink channel, root).
    pub fn is_packet_level(self) -> bool {
        matches!(
            self,
            Self::BadChecksum | Self::TruncatedSegment | Self::OutOfOrder | Self::DuplicateSegment
        )
    }

    /// The kebab-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedRequestLine => "malformed-request-line",
            Self::OversizedHeaders => "oversized-headers",
            Self::ResetMidRequest => "reset-mid-request",
            Self::SlowClient => "slow-client",
            Self::ClientDelay => "client-delay",
            Self::BadChecksum => "bad-checksum",
            Self::TruncatedSegment => "truncated-segment",
            Self::OutOfOrder => "out-of-order",
            Self::DuplicateSegment => "duplicate-segment",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the target answered one fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultOutcome {
    /// A response with a 2xx status.
    #[serde(rename = "2xx")]
    Status2xx,
    #[serde(rename = "3xx")]
    Status3xx,
    #[serde(rename = "4xx")]
    Status4xx,
    #[serde(rename = "5xx")]
    Status5xx,
    /// Bytes came back that are not an HTTP/1.x response head (e.g. an HTTP/0.9 body, a
    /// status outside 200..=599, or a head cut short by the close).
    InvalidResponse,
    /// The connection attempt was refused (RST to our SYN).
    ConnectionRefused,
    /// The target reset the connection before a response head arrived.
    ConnectionReset,
    /// The target closed the connection (FIN) without sending anything.
    ClosedWithoutResponse,
    /// Nothing decisive within [`FaultOptions::timeout`].
    Timeout,
    /// Packet faults only: the target acknowledged a segment its TCP stack should have dropped
    /// (bad checksum, truncated) before we retransmitted it intact.
    FaultySegmentAccepted,
}

impl FaultOutcome {
    /// Every outcome, in report order.
    pub const ALL: [Self; 10] = [
        Self::Status2xx,
        Self::Status3xx,
        Self::Status4xx,
        Self::Status5xx,
        Self::InvalidResponse,
        Self::ConnectionRefused,
        Self::ConnectionReset,
        Self::ClosedWithoutResponse,
        Self::Timeout,
        Self::FaultySegmentAccepted,
    ];

    /// The class of a final status code; anything outside 200..=599 is not a valid final
    /// response.
    pub fn from_status(code: u16) -> Self {
        match code {
            200..=299 => Self::Status2xx,
            300..=399 => Self::Status3xx,
            400..=499 => Self::Status4xx,
            500..=599 => Self::Status5xx,
            _ => Self::InvalidResponse,
        }
    }

    /// The serde name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status2xx => "2xx",
            Self::Status3xx => "3xx",
            Self::Status4xx => "4xx",
            Self::Status5xx => "5xx",
            Self::InvalidResponse => "invalid-response",
            Self::ConnectionRefused => "connection-refused",
            Self::ConnectionReset => "connection-reset",
            Self::ClosedWithoutResponse => "closed-without-response",
            Self::Timeout => "timeout",
            Self::FaultySegmentAccepted => "faulty-segment-accepted",
        }
    }
}

impl fmt::Display for FaultOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which malformed request line [`FaultKind::MalformedRequestLine`] sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MalformedLine {
    /// `GET /path HTTP/` — the version number is missing. (Leaving out `HTTP/...` entirely
    /// would be a valid HTTP/0.9 request, which nginx answers with a bare body.)
    MissingVersion,
    /// `G(T /path HTTP/1.1` — a separator inside the method token.
    BadMethod,
    /// `GET /pa\x01th\x7f HTTP/1.1` — control bytes inside the request target.
    ControlBytes,
    /// `GET /../../../…/path HTTP/1.1` — a target that climbs above the root.
    AbsurdUri,
}

impl MalformedLine {
    pub const ALL: [Self; 4] = [
        Self::MissingVersion,
        Self::BadMethod,
        Self::ControlBytes,
        Self::AbsurdUri,
    ];
}

/// Which oversized head [`FaultKind::OversizedHeaders`] sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OversizedHeaders {
    /// One header line of [`LONG_HEADER_BYTES`] value bytes.
    LongLine,
    /// [`MANY_HEADERS`] headers of 64 value bytes each.
    ManyHeaders,
}

impl OversizedHeaders {
    pub const ALL: [Self; 2] = [Self::LongLine, Self::ManyHeaders];
}

/// Value bytes of the [`OversizedHeaders::LongLine`] header (64 KiB).
pub const LONG_HEADER_BYTES: usize = 64 * 1024;
/// Header count of [`OversizedHeaders::ManyHeaders`].
pub const MANY_HEADERS: usize = 2000;

/// How [`FaultKind::SlowClient`] trickles the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trickle {
    /// Bytes per write (at least 1).
    pub bytes_per_write: usize,
    /// Pause before each write after the first.
    pub delay: Duration,
    /// Upper bound on the whole trickle: when `delay` times the number of writes would exceed
    /// it, the pause is shortened so the last byte goes out at this bound.
    pub max_duration: Duration,
}

impl Default for Trickle {
    fn default() -> Self {
        Self {
            bytes_per_write: 4,
            delay: Duration::from_millis(25),
            max_duration: Duration::from_secs(3),
        }
    }
}

/// The pauses of [`FaultKind::ClientDelay`]. The request is a GET with a small body
/// ([`DELAY_BODY`]) so that there is a head/body boundary to pause at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientDelay {
    /// Between the established connection and the first request byte.
    pub before_request: Duration,
    /// Between the end of the head and the body.
    pub before_body: Duration,
}

impl Default for ClientDelay {
    fn default() -> Self {
        Self {
            before_request: Duration::from_millis(300),
            before_body: Duration::from_millis(300),
        }
    }
}

/// The body sent by [`FaultKind::ClientDelay`].
pub const DELAY_BODY: &[u8] = b"shadowtap-delay!";

/// Everything a fault may need besides the target.
#[derive(Clone, Debug)]
pub struct FaultOptions {
    /// Bound on one fault, connection set-up included. For [`FaultKind::ResetMidRequest`] it
    /// covers the follow-up request too.
    pub timeout: Duration,
    /// Open sockets inside this network namespace (e.g. `/run/netns/NAME`); `None` uses the
    /// caller's. Only a short-lived helper thread joins the namespace.
    pub netns: Option<PathBuf>,
    /// `None` rotates through [`MalformedLine::ALL`], one per call.
    pub malformed: Option<MalformedLine>,
    /// `None` rotates through [`OversizedHeaders::ALL`], one per call.
    pub oversized: Option<OversizedHeaders>,
    pub trickle: Trickle,
    pub delay: ClientDelay,
    /// How long [`FaultKind::ResetMidRequest`] waits after the half request before resetting,
    /// so that the target has read it and is mid-request when the RST lands.
    pub reset_after: Duration,
    /// Needed by the packet-level kinds.
    pub packet: Option<PacketOptions>,
}

impl Default for FaultOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            netns: None,
            malformed: None,
            oversized: None,
            trickle: Trickle::default(),
            delay: ClientDelay::default(),
            reset_after: Duration::from_millis(50),
            packet: None,
        }
    }
}

/// The outcome of one fault with the details behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultResult {
    pub kind: FaultKind,
    pub outcome: FaultOutcome,
    /// The final status code, when a response head arrived (for [`FaultKind::ResetMidRequest`],
    /// that of the follow-up request).
    pub status: Option<u16>,
    /// What exactly was sent, e.g. `missing-version` or `segment 2 of 4`.
    pub variant: String,
    /// Packet faults: request segments we sent again because the target did not acknowledge
    /// them in time.
    pub retransmissions: u32,
    /// Packet faults that corrupt a segment: whether the target acknowledged it before we
    /// retransmitted it intact (it should not have).
    pub faulty_segment_acked: Option<bool>,
    pub elapsed: Duration,
}

/// Failures to run a fault at all (as opposed to outcomes, which are how the target answered).
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is a packet-level fault and needs FaultOptions::packet (interface, source)")]
    MissingPacketOptions(FaultKind),
    #[error("packet-level faults speak IPv4 only; target is {0}")]
    NotIpv4(SocketAddr),
    #[error("interface {0} not found (in the fault's network namespace)")]
    NoSuchInterface(String),
    #[error(
        "source address {address} is configured on {interface}: the kernel would answer the \
         target's segments itself; use an unassigned address of the subnet"
    )]
    SourceAddressInUse {
        address: Ipv4Addr,
        interface: String,
    },
    #[error("no ARP reply from {0} within {1:?}")]
    NoArpReply(Ipv4Addr, Duration),
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidRequest {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("the fault's worker thread panicked")]
    WorkerPanicked,
}

impl FaultError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}

/// Runs one fault against `target` (sending `Host: host` and requesting `path`) and returns
/// how the target answered.
pub async fn run_fault(
    kind: FaultKind,
    target: SocketAddr,
    host: &str,
    path: &str,
    opts: &FaultOptions,
) -> Result<FaultOutcome, FaultError> {
    run_fault_detailed(kind, target, host, path, opts)
        .await
        .map(|r| r.outcome)
}

/// [`run_fault`] with the status code and packet-level details.
pub async fn run_fault_detailed(
    kind: FaultKind,
    target: SocketAddr,
    host: &str,
    path: &str,
    opts: &FaultOptions,
) -> Result<FaultResult, FaultError> {
    validate(host, path)?;
    if kind.is_packet_level() {
        packet::run(kind, target, host, path, opts).await
    } else {
        http::run(kind, target, host, path, opts).await
    }
}

/// The well-formed parts of every request come from `host` and `path`; reject values that
/// would themselves make a request malformed, so that only the fault under test is.
fn validate(host: &str, path: &str) -> Result<(), FaultError> {
    let bad = |b: &u8| b.is_ascii_control() || *b == b' ' || !b.is_ascii();
    if host.is_empty() || host.bytes().any(|b| bad(&b)) {
        return Err(FaultError::InvalidRequest {
            what: "host",
            value: host.to_owned(),
            reason: "must be non-empty ASCII without spaces or control bytes",
        });
    }
    if !path.starts_with('/') || path.bytes().any(|b| bad(&b)) {
        return Err(FaultError::InvalidRequest {
            what: "path",
            value: path.to_owned(),
            reason: "must start with '/' and be ASCII without spaces or control bytes",
        });
    }
    Ok(())
}

/// A well-formed `GET` with `Connection: close`, optionally announcing a body.
fn normal_request(host: &str, path: &str, body_len: Option<usize>) -> Vec<u8> {
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: shadowtap-loadgen-faults\r\n\
         Accept: */*\r\nConnection: close\r\n"
    );
    if let Some(len) = body_len {
        // Writing to a String cannot fail.
        let _ = write!(head, "Content-Length: {len}\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_serde_and_clap() {
        use clap::ValueEnum as _;
        for kind in FaultKind::ALL {
            let json = serde_json::to_string(&kind).expect("serialises");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let value = kind.to_possible_value().expect("not skipped");
            assert_eq!(value.get_name(), kind.as_str());
            assert_eq!(FaultKind::from_str(kind.as_str(), false), Ok(kind));
        }
        for outcome in FaultOutcome::ALL {
            let json = serde_json::to_string(&outcome).expect("serialises");
            assert_eq!(json, format!("\"{}\"", outcome.as_str()));
        }
    }

    #[test]
    fn status_classes() {
        assert_eq!(FaultOutcome::from_status(200), FaultOutcome::Status2xx);
        assert_eq!(FaultOutcome::from_status(301), FaultOutcome::Status3xx);
        assert_eq!(FaultOutcome::from_status(431), FaultOutcome::Status4xx);
        assert_eq!(FaultOutcome::from_status(503), FaultOutcome::Status5xx);
        assert_eq!(
            FaultOutcome::from_status(101),
            FaultOutcome::InvalidResponse
        );
        assert_eq!(
            FaultOutcome::from_status(600),
            FaultOutcome::InvalidResponse
        );
    }

    #[test]
    fn host_and_path_are_checked() {
        assert!(validate("example", "/index.html").is_ok());
        assert!(validate("exa mple", "/").is_err());
        assert!(validate("example", "index.html").is_err());
        assert!(validate("example", "/a\r\nX: y").is_err());
        assert!(validate("", "/").is_err());
    }
}
