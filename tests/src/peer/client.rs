//! HTTP/1.1 client: a fixed plan of connections and requests against one address, bounded in
//! count and time. Request `i` of connection `c` is fully determined by the configuration, so
//! a test knows what the wire carried without trusting the client's own report alone.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::{
    ClientSummary, MAX_POST_BODY, PeerError, ResponseHead, bump, io_err, parse_response_head,
    pattern_bytes, route, send_message, wire_bytes,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const MAX_CONNECTIONS: u32 = 10_000;
pub const MAX_REQUESTS_PER_CONN: u32 = 100_000;
pub const MAX_PIPELINE: u32 = 128;
pub const MAX_PARALLEL: u32 = 64;
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
pub const MAX_THINK: Duration = Duration::from_secs(10);

/// Paths used when none are given: small, empty, multi-segment bodies and error statuses.
pub const DEFAULT_PATHS: &[&str] = &[
    "/bytes/512",
    "/status/404",
    "/bytes/20000",
    "/status/503",
    "/bytes/0",
    "/bytes/1234",
    "/status/201",
];

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub connect: SocketAddr,
    pub hosts: Vec<String>,
    pub connections: u32,
    pub requests_per_conn: u32,
    /// Requests written back to back before their responses are read.
    pub pipeline: u32,
    pub paths: Vec<String>,
    /// When non-zero, every third request is a POST with this many body bytes.
    pub post_bytes: usize,
    /// Connections run on this many threads at once.
    pub parallel: u32,
    /// Pause after each batch of responses on a connection (paces the traffic over time).
    pub think: Duration,
    pub max_duration: Duration,
}

impl ClientConfig {
    pub fn validate(&self) -> Result<(), PeerError> {
        let bad = |msg: String| Err(PeerError::Config(msg));
        if self.hosts.is_empty() {
            return bad("at least one host".to_owned());
        }
        if let Some(h) = self.hosts.iter().find(|h| !is_token_like(h)) {
            return bad(format!("host {h:?} is not a plain header value"));
        }
        if self.paths.is_empty() {
            return bad("at least one path".to_owned());
        }
        if let Some(p) = self
            .paths
            .iter()
            .find(|p| !p.starts_with('/') || !is_token_like(p))
        {
            return bad(format!("path {p:?} must start with / and hold no spaces"));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return bad(format!("connections must be 1..={MAX_CONNECTIONS}"));
        }
        if !(1..=MAX_REQUESTS_PER_CONN).contains(&self.requests_per_conn) {
            return bad(format!(
                "requests per connection must be 1..={MAX_REQUESTS_PER_CONN}"
            ));
        }
        if !(1..=MAX_PIPELINE).contains(&self.pipeline) {
            return bad(format!("pipeline must be 1..={MAX_PIPELINE}"));
        }
        if !(1..=MAX_PARALLEL).contains(&self.parallel) {
            return bad(format!("parallel must be 1..={MAX_PARALLEL}"));
        }
        if self.post_bytes > MAX_POST_BODY {
            return bad(format!("post bytes must be at most {MAX_POST_BODY}"));
        }
        if self.think > MAX_THINK {
            return bad(format!("think time must be at most {MAX_THINK:?}"));
        }
        if self.max_duration.is_zero() || self.max_duration > MAX_DURATION {
            return bad(format!("max duration must be in (0, {MAX_DURATION:?}]"));
        }
        Ok(())
    }
}

fn is_token_like(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

/// One planned request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedRequest {
    pub method: &'static str,
    pub path: String,
    pub host: String,
    pub body_len: usize,
    pub expected_status: u16,
}

impl PlannedRequest {
    /// The request on the wire. `Host` comes right after the request line so that it lies
    /// within a short captured head.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\n",
            self.method, self.path, self.host
        );
        if self.method == "POST" {
            let _ = write!(
                out,
                "Content-Length: {}\r\nContent-Type: application/octet-stream\r\n",
                self.body_len
            );
        }
        out.push_str("User-Agent: shadowtap-httppeer\r\nAccept: */*\r\n\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend(pattern_bytes(self.body_len));
        bytes
    }
}

/// Request `index` of connection `conn`: hosts and paths cycle over the global request number.
pub fn plan_request(config: &ClientConfig, conn: u32, index: u32) -> PlannedRequest {
    let global = conn as usize * config.requests_per_conn as usize + index as usize;
    let path = config.paths[global % config.paths.len()].clone();
    let post = config.post_bytes > 0 && global % 3 == 2;
    PlannedRequest {
        method: if post { "POST" } else { "GET" },
        expected_status: route(&path).status,
        host: config.hosts[global % config.hosts.len()].clone(),
        body_len: if post { config.post_bytes } else { 0 },
        path,
    }
}

/// Runs the whole plan and reports what happened; errors are listed in the summary.
pub fn run(config: &ClientConfig) -> Result<ClientSummary, PeerError> {
    config.validate()?;
    let started = Instant::now();
    let deadline = started + config.max_duration;
    let summary = Mutex::new(ClientSummary {
        role: "client".to_owned(),
        connect: config.connect.to_string(),
        ..ClientSummary::default()
    });
    thread::scope(|scope| {
        for worker in 0..config.parallel.min(config.connections) {
            let summary = &summary;
            scope.spawn(move || {
                let mut local = ClientSummary::default();
                let mut conn = worker;
                while conn < config.connections {
                    if Instant::now() >= deadline {
                        local
                            .errors
                            .push(format!("deadline reached before connection {conn}"));
                    } else if let Err(e) = run_connection(config, conn, deadline, &mut local) {
                        local.errors.push(format!("connection {conn}: {e}"));
                    }
                    conn += config.parallel;
                }
                let mut total = summary
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                merge(&mut total, local);
            });
        }
    });
    let mut summary = summary
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    summary.errors.sort();
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(summary)
}

fn merge(into: &mut ClientSummary, from: ClientSummary) {
    into.connections_opened += from.connections_opened;
    into.connections_closed_clean += from.connections_closed_clean;
    into.requests_sent += from.requests_sent;
    super::merge_counts(&mut into.requests_sent_by_host, &from.requests_sent_by_host);
    super::merge_counts(
        &mut into.requests_sent_by_method,
        &from.requests_sent_by_method,
    );
    into.responses_received += from.responses_received;
    super::merge_counts(&mut into.responses_by_status, &from.responses_by_status);
    into.bytes_written += from.bytes_written;
    into.bytes_read += from.bytes_read;
    into.wire_bytes_sent += from.wire_bytes_sent;
    into.wire_bytes_retransmitted += from.wire_bytes_retransmitted;
    into.errors.extend(from.errors);
}

fn remaining(deadline: Instant) -> Result<Duration, PeerError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(PeerError::Protocol("client deadline reached".to_owned()))
    } else {
        Ok(left)
    }
}

fn run_connection(
    config: &ClientConfig,
    conn: u32,
    deadline: Instant,
    out: &mut ClientSummary,
) -> Result<(), PeerError> {
    let timeout = remaining(deadline)?;
    let stream = TcpStream::connect_timeout(&config.connect, timeout.min(CONNECT_TIMEOUT))
        .map_err(io_err(format!("connecting to {}", config.connect)))?;
    out.connections_opened += 1;
    let exchanged = exchange(config, conn, &stream, timeout, out);
    // After the server's FIN every request byte has been acknowledged: nothing more will be
    // (re)transmitted, so this is all the payload this connection put on the wire. Read on the
    // error paths too, so that the wire figures cover every byte counted in `bytes_written`.
    let wire = wire_bytes(&stream);
    if let Ok(wire) = &wire {
        out.wire_bytes_sent += wire.sent;
        out.wire_bytes_retransmitted += wire.retransmitted;
    }
    exchanged?;
    wire.map(|_| ())
}

/// The requests and responses of one connection, then our FIN and the server's.
fn exchange(
    config: &ClientConfig,
    conn: u32,
    stream: &TcpStream,
    timeout: Duration,
    out: &mut ClientSummary,
) -> Result<(), PeerError> {
    stream
        .set_nodelay(true)
        .and_then(|()| stream.set_read_timeout(Some(timeout)))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(io_err("setting socket options"))?;
    let mut reader = ResponseReader::default();
    let mut sent = 0;
    while sent < config.requests_per_conn {
        let batch = config.pipeline.min(config.requests_per_conn - sent);
        let mut expected = VecDeque::new();
        for i in 0..batch {
            let request = plan_request(config, conn, sent + i);
            let written = send_message(stream, &request.encode());
            out.bytes_written += *written.as_ref().unwrap_or(&0) as u64;
            written.map_err(io_err("sending a request"))?;
            out.requests_sent += 1;
            bump(&mut out.requests_sent_by_host, request.host.clone());
            bump(&mut out.requests_sent_by_method, request.method);
            expected.push_back(request);
        }
        while let Some(request) = expected.pop_front() {
            let head = reader.read_response(stream, &mut out.bytes_read)?;
            out.responses_received += 1;
            bump(&mut out.responses_by_status, head.status.to_string());
            if head.status != request.expected_status {
                out.errors.push(format!(
                    "connection {conn}: {} {} answered {} (expected {})",
                    request.method, request.path, head.status, request.expected_status
                ));
            }
            if head.close && (!expected.is_empty() || sent + batch < config.requests_per_conn) {
                return Err(PeerError::Protocol(
                    "server closed the connection early".to_owned(),
                ));
            }
        }
        sent += batch;
        if !config.think.is_zero() && sent < config.requests_per_conn {
            thread::sleep(config.think);
        }
    }
    // Our FIN, then the server's: everything read, so the close is clean on both sides.
    stream
        .shutdown(Shutdown::Write)
        .map_err(io_err("shutting down the write side"))?;
    let trailing = reader.read_to_eof(stream, &mut out.bytes_read)?;
    if trailing == 0 {
        out.connections_closed_clean += 1;
        Ok(())
    } else {
        Err(PeerError::Protocol(format!(
            "{trailing} unexpected bytes after the last response"
        )))
    }
}

struct ResponseReader {
    buf: Vec<u8>,
    chunk: Vec<u8>,
}

impl Default for ResponseReader {
    fn default() -> Self {
        Self {
            buf: Vec::new(),
            chunk: vec![0_u8; 64 * 1024],
        }
    }
}

impl ResponseReader {
    fn fill(&mut self, mut stream: &TcpStream, bytes_read: &mut u64) -> Result<usize, PeerError> {
        loop {
            match stream.read(&mut self.chunk) {
                Ok(n) => {
                    *bytes_read += n as u64;
                    self.buf.extend_from_slice(&self.chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("reading a response")(e)),
            }
        }
    }

    fn read_response(
        &mut self,
        stream: &TcpStream,
        bytes_read: &mut u64,
    ) -> Result<ResponseHead, PeerError> {
        loop {
            if let Some(head) = parse_response_head(&self.buf)? {
                let total = head.head_len + head.content_length;
                while self.buf.len() < total {
                    if self.fill(stream, bytes_read)? == 0 {
                        return Err(PeerError::Protocol(
                            "connection closed inside a response body".to_owned(),
                        ));
                    }
                }
                self.buf.drain(..total);
                return Ok(head);
            }
            if self.fill(stream, bytes_read)? == 0 {
                return Err(PeerError::Protocol(
                    "connection closed before a response head".to_owned(),
                ));
            }
        }
    }

    /// Reads until EOF; returns how many bytes were left over or arrived after the last response.
    fn read_to_eof(
        &mut self,
        stream: &TcpStream,
        bytes_read: &mut u64,
    ) -> Result<usize, PeerError> {
        while self.fill(stream, bytes_read)? > 0 {}
        Ok(self.buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClientConfig {
        ClientConfig {
            connect: "127.0.0.1:1".parse().expect("literal address"),
            hosts: vec!["a.example".to_owned(), "b.example".to_owned()],
            connections: 3,
            requests_per_conn: 4,
            pipeline: 2,
            paths: DEFAULT_PATHS.iter().map(|p| (*p).to_owned()).collect(),
            post_bytes: 100,
            parallel: 1,
            think: Duration::ZERO,
            max_duration: Duration::from_secs(5),
        }
    }

    #[test]
    fn plan_is_deterministic_and_cycles() {
        let cfg = config();
        let first = plan_request(&cfg, 0, 0);
        assert_eq!(first.method, "GET");
        assert_eq!(first.host, "a.example");
        assert_eq!(first.path, "/bytes/512");
        let third = plan_request(&cfg, 0, 2);
        assert_eq!(third.method, "POST");
        assert_eq!(third.body_len, 100);
        assert_eq!(plan_request(&cfg, 1, 0).host, "a.example"); // global index 4
        assert_eq!(plan_request(&cfg, 1, 1).path, "/bytes/1234"); // global index 5
        assert_eq!(plan_request(&cfg, 0, 1).expected_status, 404);
    }

    #[test]
    fn encoded_request_parses_back() {
        let cfg = config();
        let request = plan_request(&cfg, 0, 2);
        let bytes = request.encode();
        let head = crate::peer::parse_request_head(&bytes)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.method, "POST");
        assert_eq!(head.host.as_deref(), Some(request.host.as_str()));
        assert_eq!(bytes.len(), head.head_len + head.content_length);
        // Host sits inside the first 128 bytes, the agent's default head length.
        let host_at = bytes
            .windows(5)
            .position(|w| w == b"Host:")
            .expect("host header present");
        assert!(host_at + 6 + request.host.len() < 128);
    }

    #[test]
    fn validation_rejects_bad_plans() {
        let mut cfg = config();
        cfg.hosts = vec!["a b".to_owned()];
        assert!(cfg.validate().is_err());
        let mut cfg = config();
        cfg.paths = vec!["nope".to_owned()];
        assert!(cfg.validate().is_err());
        let mut cfg = config();
        cfg.connections = 0;
        assert!(cfg.validate().is_err());
        let mut cfg = config();
        cfg.pipeline = MAX_PIPELINE + 1;
        assert!(cfg.validate().is_err());
        assert!(config().validate().is_ok());
    }
}
