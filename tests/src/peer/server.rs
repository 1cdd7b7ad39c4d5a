//! HTTP/1.1 server: keep-alive, pipelined requests answered in order, one thread per
//! connection. Prints nothing per request; the caller prints the summary.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::{
    MAX_BODY, PeerError, ServerSummary, build_response, bump, io_err, merge_counts,
    parse_request_head, send_message, wire_bytes,
};

/// How often idle loops look at the stop flag and the deadline.
const TICK: Duration = Duration::from_millis(50);
/// Longest a connection waits for a slow client to take a response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// The server stops by itself after this long.
    pub max_duration: Duration,
    /// Written (atomically) once every listener is bound: the bound addresses, one per line.
    pub ready_file: Option<PathBuf>,
}

#[derive(Default)]
struct ConnStats {
    requests_by_host: BTreeMap<String, u64>,
    requests_without_host: u64,
    requests_by_method: BTreeMap<String, u64>,
    requests_total: u64,
    responses_by_status: BTreeMap<String, u64>,
    responses_total: u64,
    bytes_read: u64,
    bytes_written: u64,
    wire_bytes_sent: u64,
    wire_bytes_retransmitted: u64,
    incomplete_requests: u64,
    protocol_errors: u64,
    io_errors: u64,
    errors: Vec<String>,
}

impl ConnStats {
    fn merge_into(&self, summary: &mut ServerSummary) {
        merge_counts(&mut summary.requests_by_host, &self.requests_by_host);
        merge_counts(&mut summary.requests_by_method, &self.requests_by_method);
        merge_counts(&mut summary.responses_by_status, &self.responses_by_status);
        summary.requests_without_host += self.requests_without_host;
        summary.requests_total += self.requests_total;
        summary.responses_total += self.responses_total;
        summary.bytes_read += self.bytes_read;
        summary.bytes_written += self.bytes_written;
        summary.wire_bytes_sent += self.wire_bytes_sent;
        summary.wire_bytes_retransmitted += self.wire_bytes_retransmitted;
        summary.incomplete_requests += self.incomplete_requests;
        summary.protocol_errors += self.protocol_errors;
        summary.io_errors += self.io_errors;
        summary.errors.extend(self.errors.iter().cloned());
        summary.connections_closed += 1;
    }
}

/// Serves until `stop` is set or `max_duration` passes, then waits for the connection threads
/// (each notices the stop within one tick) and returns the totals.
pub fn run(config: &ServerConfig, stop: &AtomicBool) -> Result<ServerSummary, PeerError> {
    if config.listen.is_empty() {
        return Err(PeerError::Config(
            "at least one --listen address".to_owned(),
        ));
    }
    let mut listeners = Vec::new();
    for addr in &config.listen {
        let listener = TcpListener::bind(addr).map_err(io_err(format!("binding {addr}")))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err(format!("making listener {addr} non-blocking")))?;
        listeners.push(listener);
    }
    let bound: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<io::Result<_>>()
        .map_err(io_err("reading bound addresses"))?;
    if let Some(path) = &config.ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bound.join("\n") + "\n")
            .map_err(io_err(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(io_err(format!("renaming to {}", path.display())))?;
    }

    let started = Instant::now();
    let deadline = started + config.max_duration;
    let mut summary = ServerSummary {
        role: "server".to_owned(),
        listen: bound,
        ..ServerSummary::default()
    };
    let mut accept_error = None;
    thread::scope(|scope| {
        let mut handles = Vec::new();
        summary.stopped_by = loop {
            if stop.load(Ordering::SeqCst) {
                break "signal".to_owned();
            }
            if Instant::now() >= deadline {
                break "max-seconds".to_owned();
            }
            if let Err(e) = wait_readable(&listeners, TICK) {
                accept_error = Some(e);
                break "error".to_owned();
            }
            for listener in &listeners {
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            summary.connections_accepted += 1;
                            handles.push(
                                scope.spawn(move || serve_connection(&stream, stop, deadline)),
                            );
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // A connection reset before accept: the client's problem, keep serving.
                        Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => break,
                        Err(e) => {
                            accept_error = Some(PeerError::Io {
                                context: "accepting a connection".to_owned(),
                                source: e,
                            });
                            break;
                        }
                    }
                }
            }
            if accept_error.is_some() {
                break "error".to_owned();
            }
        };
        // Connection threads exit within a tick once the stop flag or the deadline is seen.
        stop.store(true, Ordering::SeqCst);
        for handle in handles {
            match handle.join() {
                Ok(stats) => stats.merge_into(&mut summary),
                Err(_) => summary.io_errors += 1,
            }
        }
    });
    summary.errors.sort();
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    match accept_error {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// Waits until a listener is readable, the timeout passes or a signal arrives.
fn wait_readable(listeners: &[TcpListener], timeout: Duration) -> Result<(), PeerError> {
    let mut fds: Vec<libc::pollfd> = listeners
        .iter()
        .map(|l| libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `fds` is a live, correctly sized array of pollfd for the duration of the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(PeerError::Io {
                context: "poll on listeners".to_owned(),
                source: err,
            });
        }
    }
    Ok(())
}

fn serve_connection(stream: &TcpStream, stop: &AtomicBool, deadline: Instant) -> ConnStats {
    let mut stats = ConnStats::default();
    let setup = stream
        .set_read_timeout(Some(TICK))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true));
    if setup.is_err() {
        stats.io_errors += 1;
        return stats;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0_u8; 64 * 1024];
    let mut reader = stream;
    'conn: loop {
        // Answer every complete request already buffered, in order.
        loop {
            let head = match parse_request_head(&buf) {
                Ok(Some(head)) if head.content_length > MAX_BODY => {
                    stats.protocol_errors += 1;
                    break 'conn;
                }
                Ok(Some(head)) => head,
                Ok(None) => break,
                Err(_) => {
                    stats.protocol_errors += 1;
                    let (code, response) = build_response("/status/400", true);
                    if let Ok(n) = send_message(stream, &response) {
                        stats.bytes_written += n as u64;
                        bump(&mut stats.responses_by_status, code.to_string());
                        stats.responses_total += 1;
                    }
                    break 'conn;
                }
            };
            let total = head.head_len + head.content_length;
            if buf.len() < total {
                break;
            }
            buf.drain(..total);
            stats.requests_total += 1;
            bump(&mut stats.requests_by_method, head.method.clone());
            match &head.host {
                Some(host) => bump(&mut stats.requests_by_host, host.clone()),
                None => stats.requests_without_host += 1,
            }
            let (code, response) = build_response(&head.path, head.close);
            let Ok(written) = send_message(stream, &response) else {
                stats.io_errors += 1;
                break 'conn;
            };
            stats.bytes_written += written as u64;
            bump(&mut stats.responses_by_status, code.to_string());
            stats.responses_total += 1;
            if head.close {
                break 'conn;
            }
        }
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                stats.bytes_read += n as u64;
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                stats.io_errors += 1;
                break;
            }
        }
    }
    if !buf.is_empty() {
        stats.incomplete_requests += 1;
    }
    // FIN, then read what the client still sends until its FIN: closing a socket with unread
    // data would send a RST instead of a clean close.
    let _ = stream.shutdown(Shutdown::Write);
    let drain_deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < drain_deadline {
        match reader.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => stats.bytes_read += n as u64,
        }
    }
    // The client's FIN (read as EOF above) acknowledged every response byte: nothing more will
    // be (re)transmitted, so this is all the payload this connection put on the wire.
    match wire_bytes(stream) {
        Ok(wire) => {
            stats.wire_bytes_sent = wire.sent;
            stats.wire_bytes_retransmitted = wire.retransmitted;
        }
        Err(e) => stats.errors.push(e.to_string()),
    }
    stats
}
