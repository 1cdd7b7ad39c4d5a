//! One keep-alive connection: connect, send a serialised request, read and parse its
//! response into a buffer that lives as long as the connection slot. Failures are classified
//! into the report's error kinds.

use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::{
    parse::{MAX_HEAD, ResponseParser, Step},
    source::Request,
    stats::ErrorKind,
};

/// Read buffer per connection: a whole response head, and in practice most small bodies, in
/// one read.
const BUF: usize = 2 * MAX_HEAD;

pub struct Conn {
    stream: Option<TcpStream>,
    /// Bytes `start..end` are received and not yet consumed by the parser.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    parser: ResponseParser,
    /// Scratch for a request with `Connection: close` spliced in.
    closing: Vec<u8>,
    /// Id of the current TCP connection (see [`crate::RequestSource`]).
    pub id: u64,
    /// Responses on the current TCP connection.
    pub served: u64,
}

/// How an exchange ended, when it did not produce a usable response.
pub type Failure = ErrorKind;

impl Conn {
    pub fn new() -> Self {
        Self {
            stream: None,
            buf: vec![0; BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            parser: ResponseParser::new(),
            closing: Vec::new(),
            id: 0,
            served: 0,
        }
    }

    pub fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    /// Opens a new TCP connection with id `id`.
    pub async fn connect(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
        id: u64,
    ) -> Result<(), Failure> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(ErrorKind::ConnectTimeout),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Err(ErrorKind::ConnectRefused);
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(ErrorKind::ConnectTimeout);
            }
            Ok(Err(_)) => return Err(ErrorKind::ConnectOther),
            Ok(Ok(s)) => s,
        };
        // A request is one write; Nagle would only hold back the next one.
        stream
            .set_nodelay(true)
            .map_err(|_| ErrorKind::ConnectOther)?;
        self.stream = Some(stream);
        self.start = 0;
        self.end = 0;
        self.id = id;
        self.served = 0;
        Ok(())
    }

    /// Drops the TCP connection (the kernel closes it).
    pub fn close(&mut self) {
        self.stream = None;
    }

    /// Sends `request` and reads its whole response. `close` sends it with
    /// `Connection: close`. Returns the status and whether the connection must be closed.
    pub async fn exchange(
        &mut self,
        request: &Request,
        close: bool,
    ) -> Result<(u16, bool), Failure> {
        let stream = self.stream.as_mut().ok_or(ErrorKind::Closed)?;
        let wire = if close {
            request.write_closing(&mut self.closing);
            &self.closing[..]
        } else {
            request.wire()
        };
        // A body goes in its own write, as browsers send one: the head segment then carries
        // the head alone, which is what a tap that counts "head segment + Content-Length"
        // (shadowtap's request size) measures correctly.
        let (head, body) = wire.split_at(request.head_len(close).min(wire.len()));
        stream.write_all(head).await.map_err(|e| io_failure(&e))?;
        if !body.is_empty() {
            stream.write_all(body).await.map_err(|e| io_failure(&e))?;
        }
        self.parser.start(request.expects_response_body());
        loop {
            if self.start < self.end {
                let (used, step) = self
                    .parser
                    .feed(&self.buf[self.start..self.end])
                    .map_err(|_| ErrorKind::Parse)?;
                self.start += used;
                if self.start == self.end {
                    (self.start, self.end) = (0, 0);
                }
                if let Step::Complete(response) = step {
                    self.served += 1;
                    return Ok((response.status, response.close || close));
                }
            }
            if self.end == self.buf.len() {
                // Only an unfinished head or chunk line is kept, and those are far shorter
                // than the buffer (the parser enforces it): move it to the front.
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, self.end - self.start);
            }
            let n = stream
                .read(&mut self.buf[self.end..])
                .await
                .map_err(|e| io_failure(&e))?;
            if n == 0 {
                let response = self.parser.eof().map_err(|_| ErrorKind::Closed)?;
                self.served += 1;
                return Ok((response.status, true));
            }
            self.end += n;
        }
    }
}

fn io_failure(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => ErrorKind::Reset,
        io::ErrorKind::TimedOut => ErrorKind::ReadTimeout,
        _ => ErrorKind::OtherIo,
    }
}
