//! HTTP-level faults over ordinary kernel TCP sockets.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, sleep, sleep_until, timeout_at};

use super::response::{self, Head};
use super::{
    DELAY_BODY, FaultError, FaultKind, FaultOptions, FaultOutcome, FaultResult, LONG_HEADER_BYTES,
    MANY_HEADERS, MalformedLine, OversizedHeaders, netns, normal_request,
};

/// How the target answered one exchange.
#[derive(Clone, Copy, Debug)]
struct Answer {
    outcome: FaultOutcome,
    status: Option<u16>,
}

impl Answer {
    fn of(outcome: FaultOutcome) -> Self {
        Self {
            outcome,
            status: None,
        }
    }
}

/// One write of a request, after a pause.
struct Write {
    pause: Duration,
    bytes: Vec<u8>,
}

impl Write {
    fn now(bytes: Vec<u8>) -> Self {
        Self {
            pause: Duration::ZERO,
            bytes,
        }
    }
}

/// Rotation counters for faults whose variant the caller left open: successive calls cover
/// every variant evenly, which a random choice would not over a short run.
static NEXT_MALFORMED: AtomicUsize = AtomicUsize::new(0);
static NEXT_OVERSIZED: AtomicUsize = AtomicUsize::new(0);

pub(super) async fn run(
    kind: FaultKind,
    target: SocketAddr,
    host: &str,
    path: &str,
    opts: &FaultOptions,
) -> Result<FaultResult, FaultError> {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let (variant, answer) = match kind {
        FaultKind::MalformedRequestLine => {
            let line = opts.malformed.unwrap_or_else(|| {
                let i = NEXT_MALFORMED.fetch_add(1, Ordering::Relaxed);
                MalformedLine::ALL[i % MalformedLine::ALL.len()]
            });
            let request = malformed_request(line, host, path);
            let answer = send(target, opts, deadline, &[Write::now(request)]).await?;
            (variant_name(&line), answer)
        }
        FaultKind::OversizedHeaders => {
            let which = opts.oversized.unwrap_or_else(|| {
                let i = NEXT_OVERSIZED.fetch_add(1, Ordering::Relaxed);
                OversizedHeaders::ALL[i % OversizedHeaders::ALL.len()]
            });
            let request = oversized_request(which, host, path);
            let answer = send(target, opts, deadline, &[Write::now(request)]).await?;
            (variant_name(&which), answer)
        }
        FaultKind::ResetMidRequest => reset_mid_request(target, host, path, opts, deadline).await?,
        FaultKind::SlowClient => {
            let (writes, variant) = trickle(&normal_request(host, path, None), opts);
            (variant, send(target, opts, deadline, &writes).await?)
        }
        FaultKind::ClientDelay => {
            let d = opts.delay;
            let writes = [
                Write {
                    pause: d.before_request,
                    bytes: normal_request(host, path, Some(DELAY_BODY.len())),
                },
                Write {
                    pause: d.before_body,
                    bytes: DELAY_BODY.to_vec(),
                },
            ];
            let variant = format!(
                "{:?} before the head, {:?} before the body",
                d.before_request, d.before_body
            );
            (variant, send(target, opts, deadline, &writes).await?)
        }
        FaultKind::BadChecksum
        | FaultKind::TruncatedSegment
        | FaultKind::OutOfOrder
        | FaultKind::DuplicateSegment => return Err(FaultError::MissingPacketOptions(kind)),
    };
    Ok(FaultResult {
        kind,
        outcome: answer.outcome,
        status: answer.status,
        variant,
        retransmissions: 0,
        faulty_segment_acked: None,
        elapsed: started.elapsed(),
    })
}

fn variant_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn malformed_request(line: MalformedLine, host: &str, path: &str) -> Vec<u8> {
    let mut request: Vec<u8> = match line {
        MalformedLine::MissingVersion => format!("GET {path} HTTP/").into_bytes(),
        MalformedLine::BadMethod => format!("G(T {path} HTTP/1.1").into_bytes(),
        MalformedLine::ControlBytes => {
            // After the leading '/', so the target still looks like a path to a lenient parser.
            let mut line = b"GET /\x01".to_vec();
            line.extend_from_slice(&path.as_bytes()[1..]);
            line.extend_from_slice(b"\x7f HTTP/1.1");
            line
        }
        MalformedLine::AbsurdUri => format!("GET {}{path} HTTP/1.1", "/..".repeat(32)).into_bytes(),
    };
    request.extend_from_slice(format!("\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes());
    request
}

fn oversized_request(which: OversizedHeaders, host: &str, path: &str) -> Vec<u8> {
    let mut head = String::from_utf8_lossy(&normal_request(host, path, None)).into_owned();
    // Drop the blank line that ends the head; it goes back after the extra headers.
    head.truncate(head.len() - 2);
    match which {
        OversizedHeaders::LongLine => {
            head.push_str("X-Oversized: ");
            head.extend(std::iter::repeat_n('a', LONG_HEADER_BYTES));
            head.push_str("\r\n");
        }
        OversizedHeaders::ManyHeaders => {
            let value = "v".repeat(64);
            for i in 0..MANY_HEADERS {
                // Writing to a String cannot fail.
                let _ = write!(head, "X-Fault-{i:04}: {value}\r\n");
            }
        }
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// The request split into writes of `bytes_per_write`, paced so the whole trickle stays within
/// `max_duration`.
fn trickle(request: &[u8], opts: &FaultOptions) -> (Vec<Write>, String) {
    let t = opts.trickle;
    let chunks: Vec<&[u8]> = request.chunks(t.bytes_per_write.max(1)).collect();
    let gaps = u32::try_from(chunks.len().saturating_sub(1)).unwrap_or(u32::MAX);
    let pause = if gaps == 0 {
        Duration::ZERO
    } else {
        t.delay.min(t.max_duration / gaps)
    };
    let variant = format!(
        "{} writes of {} bytes, {pause:?} apart",
        chunks.len(),
        t.bytes_per_write.max(1)
    );
    let writes = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| Write {
            pause: if i == 0 { Duration::ZERO } else { pause },
            bytes: c.to_vec(),
        })
        .collect();
    (writes, variant)
}

/// Half a request, a pause so the target is reading it, then an abortive close (RST); then a
/// normal request on a new connection tells whether the target survived.
async fn reset_mid_request(
    target: SocketAddr,
    host: &str,
    path: &str,
    opts: &FaultOptions,
    deadline: Instant,
) -> Result<(String, Answer), FaultError> {
    let request = normal_request(host, path, None);
    let half = &request[..request.len() / 2];
    let variant = format!("reset after {} of {} bytes", half.len(), request.len());
    let stream = match connect(target, opts, deadline).await? {
        Ok(stream) => stream,
        Err(answer) => return Ok((variant, answer)),
    };
    let mut stream = stream;
    match timeout_at(deadline, stream.write_all(half)).await {
        Err(_) => return Ok((variant, Answer::of(FaultOutcome::Timeout))),
        Ok(Err(e)) => return Ok((variant, write_failure(&e)?)),
        Ok(Ok(())) => {}
    }
    sleep_until(deadline.min(Instant::now() + opts.reset_after)).await;
    // Linger 0 turns close(2) into an abortive close: the kernel sends RST, not FIN.
    SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .map_err(FaultError::io("setting SO_LINGER 0"))?;
    drop(stream);
    let follow_up = [Write::now(request.clone())];
    Ok((variant, send(target, opts, deadline, &follow_up).await?))
}

fn write_failure(e: &io::Error) -> Result<Answer, FaultError> {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => Ok(Answer::of(FaultOutcome::ConnectionReset)),
        _ => Err(FaultError::Io {
            context: "writing the half request".to_owned(),
            source: io::Error::new(e.kind(), e.to_string()),
        }),
    }
}

/// Connects, then writes `writes` while reading the answer.
async fn send(
    target: SocketAddr,
    opts: &FaultOptions,
    deadline: Instant,
    writes: &[Write],
) -> Result<Answer, FaultError> {
    match connect(target, opts, deadline).await? {
        Ok(mut stream) => exchange(&mut stream, writes, deadline).await,
        Err(answer) => Ok(answer),
    }
}

/// A connected stream, or the target's answer to the connection attempt itself.
async fn connect(
    target: SocketAddr,
    opts: &FaultOptions,
    deadline: Instant,
) -> Result<Result<TcpStream, Answer>, FaultError> {
    let make = move || -> Result<Socket, FaultError> {
        let socket = Socket::new(
            Domain::for_address(target),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(FaultError::io("creating a TCP socket"))?;
        socket
            .set_nonblocking(true)
            .map_err(FaultError::io("making the TCP socket non-blocking"))?;
        Ok(socket)
    };
    // A socket belongs to the namespace it was created in; only creation needs the helper.
    let socket = match opts.netns.as_deref() {
        Some(ns) => netns::run_in(Some(ns), make).await?,
        None => make()?,
    };
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    let stream = match timeout_at(deadline, socket.connect(target)).await {
        Err(_) => return Ok(Err(Answer::of(FaultOutcome::Timeout))),
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            let outcome = match e.kind() {
                io::ErrorKind::ConnectionRefused => FaultOutcome::ConnectionRefused,
                io::ErrorKind::ConnectionReset => FaultOutcome::ConnectionReset,
                io::ErrorKind::TimedOut => FaultOutcome::Timeout,
                _ => {
                    return Err(FaultError::Io {
                        context: format!("connecting to {target}"),
                        source: e,
                    });
                }
            };
            return Ok(Err(Answer::of(outcome)));
        }
    };
    // Each write is meant to leave as its own segment (the trickle, the pauses).
    stream
        .set_nodelay(true)
        .map_err(FaultError::io("setting TCP_NODELAY"))?;
    Ok(Ok(stream))
}

/// Writes while reading: a target may answer (400, 431) before the request is complete, and
/// then stop reading, so writing first would deadlock or turn its answer into a reset.
async fn exchange(
    stream: &mut TcpStream,
    writes: &[Write],
    deadline: Instant,
) -> Result<Answer, FaultError> {
    let (mut read_half, mut write_half) = stream.split();
    let sending = async {
        for w in writes {
            if !w.pause.is_zero() {
                sleep(w.pause).await;
            }
            // A failed write is not the outcome: the answer may already be in the receive
            // queue, and the reader decides.
            if write_half.write_all(&w.bytes).await.is_err() {
                break;
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        answer = read_answer(&mut read_half) => answer,
        () = sending => unreachable!("sending never completes"),
        () = sleep_until(deadline) => Ok(Answer::of(FaultOutcome::Timeout)),
    }
}

/// Response heads larger than this are not worth waiting for.
const MAX_HEAD: usize = 64 * 1024;

async fn read_answer(rd: &mut (impl AsyncRead + Unpin)) -> Result<Answer, FaultError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match rd.read(&mut chunk).await {
            Ok(n) => n,
            Err(e) => {
                return match e.kind() {
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                        Ok(Answer::of(FaultOutcome::ConnectionReset))
                    }
                    _ => Err(FaultError::Io {
                        context: "reading the response".to_owned(),
                        source: e,
                    }),
                };
            }
        };
        if n == 0 {
            let outcome = if buf.is_empty() {
                FaultOutcome::ClosedWithoutResponse
            } else {
                // Some bytes, but the close cut the head short.
                FaultOutcome::InvalidResponse
            };
            return Ok(Answer::of(outcome));
        }
        buf.extend_from_slice(&chunk[..n]);
        match response::parse(&buf) {
            Head::Final { status, .. } => {
                return Ok(Answer {
                    outcome: FaultOutcome::from_status(status),
                    status: Some(status),
                });
            }
            Head::Invalid => return Ok(Answer::of(FaultOutcome::InvalidResponse)),
            Head::Partial if buf.len() > MAX_HEAD => {
                return Ok(Answer::of(FaultOutcome::InvalidResponse));
            }
            Head::Partial => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_differ_only_in_the_request_line() {
        for line in MalformedLine::ALL {
            let request = malformed_request(line, "example", "/index.html");
            assert!(request.ends_with(b"\r\nHost: example\r\nConnection: close\r\n\r\n"));
            let first = request.split(|b| *b == b'\n').next().expect("a first line");
            assert!(
                httparse::Request::new(&mut [httparse::EMPTY_HEADER; 4])
                    .parse(&request)
                    .is_err()
                    || line == MalformedLine::AbsurdUri,
                "{line:?}: {first:?}"
            );
        }
    }

    #[test]
    fn oversized_heads_are_oversized() {
        let long = oversized_request(OversizedHeaders::LongLine, "h", "/");
        assert!(long.len() > LONG_HEADER_BYTES);
        assert!(long.ends_with(b"a\r\n\r\n"));
        let many = oversized_request(OversizedHeaders::ManyHeaders, "h", "/");
        let lines = many.split(|b| *b == b'\n').count();
        assert!(lines > MANY_HEADERS, "{lines}");
    }

    #[test]
    fn trickle_is_bounded() {
        let mut opts = FaultOptions::default();
        opts.trickle.bytes_per_write = 1;
        opts.trickle.delay = Duration::from_secs(1);
        opts.trickle.max_duration = Duration::from_secs(2);
        let request = vec![b'x'; 101];
        let (writes, _) = trickle(&request, &opts);
        assert_eq!(writes.len(), 101);
        let total: Duration = writes.iter().map(|w| w.pause).sum();
        assert!(total <= Duration::from_secs(2), "{total:?}");
        assert_eq!(writes.iter().map(|w| w.bytes.len()).sum::<usize>(), 101);
    }
}
