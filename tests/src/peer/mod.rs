//! The deterministic HTTP/1.1 peers behind the `shadowtap-httppeer` binary.
//!
//! Both sides count bytes at the socket level (what `send`/`recv` returned), which over plain
//! TCP equals the TCP payload bytes on the wire: the figure the agent's `flow` events must match.
//!
//! Every HTTP message (head plus body) is handed to the kernel in one `send` with `MSG_EOR`.
//! Linux never appends later data to an skb marked end-of-record, so each message head starts
//! a TCP segment even when requests are pipelined or responses follow each other back to back.
//! A tap that copies the head of each segment (as shadowtap's kernel programs do) can then see
//! every message; without it, pipelined heads coalesce into the middle of segments.
//!
//! A tap counts every segment on the wire, TCP retransmissions (RTO, tail-loss probes) included,
//! which the socket-level counts never see. So each peer also reports, per connection, what its
//! kernel put on the wire ([`WireBytes`], from `TCP_INFO`), read once every byte it sent has been
//! acknowledged: `wire_bytes_sent` = `bytes_written` + `wire_bytes_retransmitted`.

pub mod client;
pub mod server;

use std::collections::BTreeMap;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use serde::{Deserialize, Serialize};

/// Longest request or response head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest body `/bytes/N` serves.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// Largest request body the client sends.
pub const MAX_POST_BODY: usize = 1024 * 1024;

/// Why a peer gave up.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> PeerError {
    let context = context.into();
    move |source| PeerError::Io { context, source }
}

/// What the server answers for a path: `/status/NNN` gives status NNN with a short body,
/// `/bytes/N` gives 200 with N body bytes, `/` gives 200 "ok\n", anything else 404.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub status: u16,
    pub body_len: usize,
}

/// Body of `/status/NNN` responses: `status NNN\n`.
const STATUS_BODY_LEN: usize = "status 000\n".len();

pub fn route(path: &str) -> Route {
    let path = path.split('?').next().unwrap_or(path);
    if let Some(code) = path.strip_prefix("/status/") {
        return match code.parse::<u16>() {
            // 1xx, 204 and 304 carry no body; keeping every response framed by Content-Length
            // keeps the peers simple, so those are refused.
            Ok(status) if (200..=599).contains(&status) && status != 204 && status != 304 => {
                Route {
                    status,
                    body_len: STATUS_BODY_LEN,
                }
            }
            _ => Route {
                status: 400,
                body_len: STATUS_BODY_LEN,
            },
        };
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        return match n.parse::<usize>() {
            Ok(len) if len <= MAX_BODY => Route {
                status: 200,
                body_len: len,
            },
            _ => Route {
                status: 400,
                body_len: STATUS_BODY_LEN,
            },
        };
    }
    if path == "/" {
        return Route {
            status: 200,
            body_len: 3,
        };
    }
    Route {
        status: 404,
        body_len: STATUS_BODY_LEN,
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// The full response (head and body) for `path`.
pub fn build_response(path: &str, close: bool) -> (u16, Vec<u8>) {
    let route = route(path);
    let bare_path = path.split('?').next().unwrap_or(path);
    let body: Vec<u8> = if bare_path == "/" {
        b"ok\n".to_vec()
    } else if route.status == 200 && bare_path.starts_with("/bytes/") {
        pattern_bytes(route.body_len).collect()
    } else {
        format!("status {:03}\n", route.status).into_bytes()
    };
    debug_assert_eq!(
        body.len(),
        route.body_len,
        "route and body disagree for {path}"
    );
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n{}\r\n",
        route.status,
        reason_phrase(route.status),
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(&body);
    (route.status, out)
}

/// `len` deterministic body bytes.
pub fn pattern_bytes(len: usize) -> impl Iterator<Item = u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    ALPHABET.iter().copied().cycle().take(len)
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub content_length: usize,
    pub close: bool,
    pub head_len: usize,
}

/// A parsed response head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub content_length: usize,
    pub close: bool,
    pub head_len: usize,
}

fn header_values<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &str,
) -> impl Iterator<Item = &'a str> + 'a {
    let name = name.to_owned();
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(&name))
        .map(|h| std::str::from_utf8(h.value).unwrap_or("").trim())
}

fn content_length(headers: &[httparse::Header<'_>]) -> Result<usize, PeerError> {
    let mut values = header_values(headers, "content-length");
    let Some(first) = values.next() else {
        return Ok(0);
    };
    if values.next().is_some() {
        return Err(PeerError::Protocol(
            "several Content-Length headers".to_owned(),
        ));
    }
    first
        .parse()
        .map_err(|_| PeerError::Protocol(format!("bad Content-Length {first:?}")))
}

fn wants_close(headers: &[httparse::Header<'_>]) -> bool {
    header_values(headers, "connection").any(|v| v.eq_ignore_ascii_case("close"))
}

fn reject_chunked(headers: &[httparse::Header<'_>]) -> Result<(), PeerError> {
    if header_values(headers, "transfer-encoding").next().is_some() {
        return Err(PeerError::Protocol(
            "Transfer-Encoding is not supported".to_owned(),
        ));
    }
    Ok(())
}

/// Parses a request head at the start of `buf`; `Ok(None)` while incomplete.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<RequestHead>, PeerError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            reject_chunked(request.headers)?;
            if request.version != Some(1) {
                return Err(PeerError::Protocol("only HTTP/1.1 is served".to_owned()));
            }
            let host = header_values(request.headers, "host")
                .next()
                .map(|h| h.split(':').next().unwrap_or(h).to_owned());
            Ok(Some(RequestHead {
                method: request.method.unwrap_or_default().to_owned(),
                path: request.path.unwrap_or_default().to_owned(),
                host,
                content_length: content_length(request.headers)?,
                close: wants_close(request.headers),
                head_len,
            }))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(PeerError::Protocol(format!(
            "request head longer than {MAX_HEAD} bytes"
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(PeerError::Protocol(format!("bad request head: {e}"))),
    }
}

/// Parses a response head at the start of `buf`; `Ok(None)` while incomplete.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<ResponseHead>, PeerError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(head_len)) => {
            reject_chunked(response.headers)?;
            Ok(Some(ResponseHead {
                status: response.code.unwrap_or_default(),
                content_length: content_length(response.headers)?,
                close: wants_close(response.headers),
                head_len,
            }))
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => Err(PeerError::Protocol(format!(
            "response head longer than {MAX_HEAD} bytes"
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(PeerError::Protocol(format!("bad response head: {e}"))),
    }
}

/// Writes one whole HTTP message with `MSG_EOR` (see the module docs) and returns the bytes
/// written. Honours the socket's send timeout.
pub fn send_message(stream: &TcpStream, message: &[u8]) -> io::Result<usize> {
    let fd = stream.as_raw_fd();
    let mut sent = 0;
    while sent < message.len() {
        let rest = &message[sent..];
        // SAFETY: `rest` is a live slice; send(2) reads at most `rest.len()` bytes from it.
        let n = unsafe {
            libc::send(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_EOR | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "send wrote 0 bytes",
            ));
        }
        sent += n as usize;
    }
    Ok(sent)
}

/// Payload bytes one TCP socket has put on the wire, as its kernel counted them (`TCP_INFO`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireBytes {
    /// `tcpi_bytes_sent`: payload of every segment handed to IP, retransmissions included.
    pub sent: u64,
    /// `tcpi_bytes_retrans`: the part of `sent` that was retransmitted.
    pub retransmitted: u64,
}

/// `struct tcp_info` of include/uapi/linux/tcp.h, up to `tcpi_bytes_retrans` (Linux 4.19).
/// Kernels append fields; `getsockopt` copies at most the length we pass and reports how much
/// it filled, so a longer kernel struct is fine and a shorter one is detected.
#[repr(C)]
#[derive(Default)]
// Field names as in the header; the layout must be complete though only two fields are read.
#[allow(dead_code, clippy::struct_field_names)]
struct TcpInfo {
    tcpi_state: u8,
    tcpi_ca_state: u8,
    tcpi_retransmits: u8,
    tcpi_probes: u8,
    tcpi_backoff: u8,
    tcpi_options: u8,
    /// `tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4`
    tcpi_wscale: u8,
    /// `tcpi_delivery_rate_app_limited : 1, tcpi_fastopen_client_fail : 2`
    tcpi_app_limited_fastopen: u8,

    tcpi_rto: u32,
    tcpi_ato: u32,
    tcpi_snd_mss: u32,
    tcpi_rcv_mss: u32,

    tcpi_unacked: u32,
    tcpi_sacked: u32,
    tcpi_lost: u32,
    tcpi_retrans: u32,
    tcpi_fackets: u32,

    tcpi_last_data_sent: u32,
    tcpi_last_ack_sent: u32,
    tcpi_last_data_recv: u32,
    tcpi_last_ack_recv: u32,

    tcpi_pmtu: u32,
    tcpi_rcv_ssthresh: u32,
    tcpi_rtt: u32,
    tcpi_rttvar: u32,
    tcpi_snd_ssthresh: u32,
    tcpi_snd_cwnd: u32,
    tcpi_advmss: u32,
    tcpi_reordering: u32,

    tcpi_rcv_rtt: u32,
    tcpi_rcv_space: u32,

    tcpi_total_retrans: u32,

    tcpi_pacing_rate: u64,
    tcpi_max_pacing_rate: u64,
    tcpi_bytes_acked: u64,
    tcpi_bytes_received: u64,
    tcpi_segs_out: u32,
    tcpi_segs_in: u32,

    tcpi_notsent_bytes: u32,
    tcpi_min_rtt: u32,
    tcpi_data_segs_in: u32,
    tcpi_data_segs_out: u32,

    tcpi_delivery_rate: u64,

    tcpi_busy_time: u64,
    tcpi_rwnd_limited: u64,
    tcpi_sndbuf_limited: u64,

    tcpi_delivered: u32,
    tcpi_delivered_ce: u32,

    tcpi_bytes_sent: u64,
    tcpi_bytes_retrans: u64,
}

// The offsets of the uapi header (x86_64 and every other Linux ABI: no padding before these).
const _: () = {
    assert!(std::mem::offset_of!(TcpInfo, tcpi_rto) == 8);
    assert!(std::mem::offset_of!(TcpInfo, tcpi_total_retrans) == 100);
    assert!(std::mem::offset_of!(TcpInfo, tcpi_pacing_rate) == 104);
    assert!(std::mem::offset_of!(TcpInfo, tcpi_delivery_rate) == 160);
    assert!(std::mem::offset_of!(TcpInfo, tcpi_bytes_sent) == 200);
    assert!(std::mem::offset_of!(TcpInfo, tcpi_bytes_retrans) == 208);
    assert!(std::mem::size_of::<TcpInfo>() == 216);
};

/// What `stream` has put on the wire so far (`getsockopt(TCP_INFO)`). Read it when every byte
/// sent has been acknowledged, or later retransmissions are missed.
pub fn wire_bytes(stream: &TcpStream) -> Result<WireBytes, PeerError> {
    let mut info = TcpInfo::default();
    let wanted = std::mem::size_of::<TcpInfo>();
    let mut len = wanted as libc::socklen_t;
    // SAFETY: `info` is a live, writable #[repr(C)] struct of `len` bytes for the whole call;
    // the kernel writes at most `len` bytes and stores the length it wrote in `len`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io_err("getsockopt(TCP_INFO)")(io::Error::last_os_error()));
    }
    if (len as usize) < wanted {
        return Err(PeerError::Io {
            context: "getsockopt(TCP_INFO)".to_owned(),
            source: io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the kernel filled {len} bytes of struct tcp_info; tcpi_bytes_sent and \
                     tcpi_bytes_retrans need {wanted} (Linux 4.19 or later)"
                ),
            ),
        });
    }
    Ok(WireBytes {
        sent: info.tcpi_bytes_sent,
        retransmitted: info.tcpi_bytes_retrans,
    })
}

/// Adds one to `map[key]`.
pub(crate) fn bump(map: &mut BTreeMap<String, u64>, key: impl Into<String>) {
    *map.entry(key.into()).or_insert(0) += 1;
}

pub(crate) fn merge_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (key, value) in from {
        *into.entry(key.clone()).or_insert(0) += value;
    }
}

/// What the server prints (one JSON object) when it stops.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSummary {
    pub role: String,
    pub listen: Vec<String>,
    pub connections_accepted: u64,
    pub connections_closed: u64,
    pub requests_total: u64,
    pub requests_by_host: BTreeMap<String, u64>,
    pub requests_without_host: u64,
    pub requests_by_method: BTreeMap<String, u64>,
    pub responses_total: u64,
    pub responses_by_status: BTreeMap<String, u64>,
    /// Bytes returned by `recv` over all connections.
    pub bytes_read: u64,
    /// Bytes accepted by `send` over all connections.
    pub bytes_written: u64,
    /// Payload bytes the kernel put on the wire over all connections, retransmissions
    /// included (`TCP_INFO` `tcpi_bytes_sent`, read after the client's FIN acknowledged all).
    pub wire_bytes_sent: u64,
    /// The retransmitted part of `wire_bytes_sent` (`tcpi_bytes_retrans`).
    pub wire_bytes_retransmitted: u64,
    /// Connections that ended with a partial request buffered.
    pub incomplete_requests: u64,
    pub protocol_errors: u64,
    pub io_errors: u64,
    /// What made the figures above incomplete (e.g. `TCP_INFO` unreadable), one line each.
    pub errors: Vec<String>,
    /// "signal" or "max-seconds".
    pub stopped_by: String,
    pub elapsed_ms: u64,
}

/// What the client prints (one JSON object) when done.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSummary {
    pub role: String,
    pub connect: String,
    pub connections_opened: u64,
    /// Connections that ended with our FIN and the server's EOF, nothing left unread.
    pub connections_closed_clean: u64,
    pub requests_sent: u64,
    pub requests_sent_by_host: BTreeMap<String, u64>,
    pub requests_sent_by_method: BTreeMap<String, u64>,
    pub responses_received: u64,
    pub responses_by_status: BTreeMap<String, u64>,
    /// Bytes accepted by `send` over all connections (request heads and bodies).
    pub bytes_written: u64,
    /// Bytes returned by `recv` over all connections.
    pub bytes_read: u64,
    /// Payload bytes the kernel put on the wire over all connections, retransmissions
    /// included (`TCP_INFO` `tcpi_bytes_sent`, read after the last response and the server's
    /// FIN, when every request byte has been acknowledged).
    pub wire_bytes_sent: u64,
    /// The retransmitted part of `wire_bytes_sent` (`tcpi_bytes_retrans`).
    pub wire_bytes_retransmitted: u64,
    pub errors: Vec<String>,
    pub elapsed_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_path() {
        assert_eq!(route("/status/503").status, 503);
        assert_eq!(route("/status/204").status, 400);
        assert_eq!(route("/status/abc").status, 400);
        assert_eq!(
            route("/bytes/1234"),
            Route {
                status: 200,
                body_len: 1234
            }
        );
        assert_eq!(route("/bytes/0").body_len, 0);
        assert_eq!(route("/bytes/99999999999").status, 400);
        assert_eq!(route("/nothing").status, 404);
        assert_eq!(route("/").status, 200);
    }

    #[test]
    fn response_length_matches_route() {
        for path in [
            "/bytes/0",
            "/bytes/20000",
            "/status/404",
            "/status/200",
            "/status/201",
            "/",
            "/?q",
            "/x",
            "/bytes/x",
        ] {
            let (status, bytes) = build_response(path, false);
            let head = parse_response_head(&bytes)
                .expect("own response parses")
                .expect("own response is complete");
            assert_eq!(head.status, status, "{path}");
            assert_eq!(head.content_length, route(path).body_len, "{path}");
            assert_eq!(bytes.len(), head.head_len + head.content_length, "{path}");
        }
    }

    #[test]
    fn parses_request_heads() {
        let raw =
            b"POST /bytes/1 HTTP/1.1\r\nHost: a.example:8080\r\nContent-Length: 5\r\n\r\nhello";
        let head = parse_request_head(raw).expect("valid").expect("complete");
        assert_eq!(head.method, "POST");
        assert_eq!(head.host.as_deref(), Some("a.example"));
        assert_eq!(head.content_length, 5);
        assert_eq!(head.head_len, raw.len() - 5);
        assert_eq!(parse_request_head(&raw[..20]).expect("valid prefix"), None);
        assert!(parse_request_head(b"GET / HTTP/1.0\r\n\r\n").is_err());
        assert!(parse_request_head(b"\x01\x02 nonsense\r\n\r\n").is_err());
        assert!(
            parse_request_head(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").is_err()
        );
    }

    /// Server and client over loopback, in process: the two summaries must agree exactly.
    #[test]
    fn loopback_client_and_server_agree() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};

        let dir = tempfile::tempdir().expect("temp dir");
        let ready = dir.path().join("ready");
        let stop = AtomicBool::new(false);
        let server_config = server::ServerConfig {
            listen: vec!["127.0.0.1:0".parse().expect("literal")],
            max_duration: Duration::from_secs(30),
            ready_file: Some(ready.clone()),
        };
        std::thread::scope(|scope| {
            let server = scope.spawn(|| server::run(&server_config, &stop));
            let started = Instant::now();
            while !ready.exists() {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "server not ready"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            let bound = std::fs::read_to_string(&ready).expect("ready file");
            let client_config = client::ClientConfig {
                connect: bound.trim().parse().expect("bound address"),
                hosts: vec!["a.example".into(), "b.example".into(), "c.example".into()],
                connections: 5,
                requests_per_conn: 7,
                pipeline: 3,
                paths: client::DEFAULT_PATHS
                    .iter()
                    .map(|p| (*p).to_owned())
                    .collect(),
                post_bytes: 300,
                parallel: 2,
                think: Duration::from_millis(1),
                max_duration: Duration::from_secs(20),
            };
            let client = client::run(&client_config).expect("client runs");
            stop.store(true, Ordering::SeqCst);
            let server = server.join().expect("server thread").expect("server runs");

            assert!(client.errors.is_empty(), "{:?}", client.errors);
            assert_eq!(client.connections_opened, 5);
            assert_eq!(client.connections_closed_clean, 5);
            assert_eq!(client.requests_sent, 35);
            assert_eq!(client.responses_received, 35);
            assert_eq!(server.connections_accepted, 5);
            assert_eq!(server.connections_closed, 5);
            assert_eq!(server.requests_by_host, client.requests_sent_by_host);
            assert_eq!(server.requests_by_method, client.requests_sent_by_method);
            assert_eq!(server.responses_by_status, client.responses_by_status);
            assert_eq!(server.bytes_read, client.bytes_written);
            assert_eq!(server.bytes_written, client.bytes_read);
            // What each kernel put on the wire: every byte written once, plus retransmissions.
            assert!(server.errors.is_empty(), "{:?}", server.errors);
            assert_eq!(
                client.wire_bytes_sent,
                client.bytes_written + client.wire_bytes_retransmitted,
                "client: {client:?}"
            );
            assert_eq!(
                server.wire_bytes_sent,
                server.bytes_written + server.wire_bytes_retransmitted,
                "server: {server:?}"
            );
            assert_eq!(
                server.incomplete_requests + server.protocol_errors + server.io_errors,
                0
            );
            assert_eq!(server.stopped_by, "signal");
            // The plan, not just the peers, fixes what went over the wire.
            let expected_written: usize = (0..5)
                .flat_map(|c| (0..7).map(move |i| (c, i)))
                .map(|(c, i)| client::plan_request(&client_config, c, i).encode().len())
                .sum();
            assert_eq!(client.bytes_written, expected_written as u64);
            assert_eq!(client.requests_sent_by_method.get("POST"), Some(&11));
        });
    }
}
