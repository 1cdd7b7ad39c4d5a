//! An incremental HTTP/1.x response parser for the hot path: it reads the status, the framing
//! headers (`Content-Length`, `Transfer-Encoding: chunked`, `Connection`) and skips the body
//! without copying it. It is fed whatever bytes have arrived, consumes what it can, and keeps
//! no buffer of its own: the caller keeps the unconsumed bytes (an incomplete head or chunk
//! line) and feeds them again with more.
//!
//! Framing follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304; chunked wins over a
//! length; a response with neither ends when the server closes. Interim 1xx responses are
//! skipped. Anything else malformed is an error, and the connection is unusable after it.

use memchr::memchr;

/// Longest accepted response head (status line and headers).
pub const MAX_HEAD: usize = 32 * 1024;
/// Longest accepted chunk-size or trailer line.
const MAX_LINE: usize = 4096;

/// A complete response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The server will close the connection (or already has): it cannot be reused.
    pub close: bool,
}

/// What [`ResponseParser::feed`] got to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The response is not complete: feed the unconsumed bytes again with more.
    NeedMore,
    Complete(Response),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed status line")]
    StatusLine,
    #[error("malformed header line")]
    Header,
    #[error("response head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("malformed chunk")]
    Chunk,
    #[error("connection closed before the response was complete")]
    Truncated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    /// Body bytes left of a Content-Length body.
    Fixed(u64),
    /// Body delimited by the end of the connection.
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    /// After a chunk's data: `\r\n`, or `\n` once the `\r` is seen.
    ChunkEnd {
        seen_cr: bool,
    },
    Trailer,
    Done,
}

/// Parses one response at a time; [`start`](ResponseParser::start) it for each request.
#[derive(Clone, Debug)]
pub struct ResponseParser {
    state: State,
    expects_body: bool,
    response: Response,
    /// Bytes at the front of the caller's buffer already searched for the end of the head or
    /// line, so that a head arriving in many pieces is not rescanned from the start.
    scanned: usize,
}

impl Default for ResponseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseParser {
    pub fn new() -> Self {
        Self {
            state: State::Done,
            expects_body: true,
            response: Response {
                status: 0,
                close: false,
            },
            scanned: 0,
        }
    }

    /// Expects a new response; `expects_body` is false for a HEAD request.
    pub fn start(&mut self, expects_body: bool) {
        self.state = State::Head;
        self.expects_body = expects_body;
        self.scanned = 0;
    }

    /// Parses from the front of `buf` (the bytes not consumed so far, then new ones) and
    /// returns how many bytes were consumed. Bytes after a complete response are left alone.
    pub fn feed(&mut self, buf: &[u8]) -> Result<(usize, Step), ParseError> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            match self.state {
                State::Head => {
                    let Some(end) = find_head_end(rest, self.scanned) else {
                        if rest.len() > MAX_HEAD {
                            return Err(ParseError::HeadTooLong);
                        }
                        self.scanned = rest.len();
                        return Ok((pos, Step::NeedMore));
                    };
                    self.scanned = 0;
                    pos += end;
                    self.state = self.head(&rest[..end])?;
                }
                State::Fixed(left) => {
                    let n = left.min(rest.len() as u64);
                    pos += n as usize;
                    if n < left {
                        self.state = State::Fixed(left - n);
                        return Ok((pos, Step::NeedMore));
                    }
                    self.state = State::Done;
                }
                State::UntilClose => return Ok((buf.len(), Step::NeedMore)),
                State::ChunkSize | State::Trailer => {
                    let Some(line_len) = self.line(rest)? else {
                        return Ok((pos, Step::NeedMore));
                    };
                    let line = trim_eol(&rest[..line_len]);
                    pos += line_len;
                    self.state = match self.state {
                        State::ChunkSize => match parse_chunk_size(line)? {
                            0 => State::Trailer,
                            n => State::ChunkData(n),
                        },
                        _ if line.is_empty() => State::Done,
                        // A trailer field: not needed.
                        _ => State::Trailer,
                    };
                }
                State::ChunkData(left) => {
                    let n = left.min(rest.len() as u64);
                    pos += n as usize;
                    if n < left {
                        self.state = State::ChunkData(left - n);
                        return Ok((pos, Step::NeedMore));
                    }
                    self.state = State::ChunkEnd { seen_cr: false };
                }
                State::ChunkEnd { seen_cr } => match (seen_cr, rest.first()) {
                    (_, None) => return Ok((pos, Step::NeedMore)),
                    (false, Some(b'\r')) => {
                        pos += 1;
                        self.state = State::ChunkEnd { seen_cr: true };
                    }
                    (_, Some(b'\n')) => {
                        pos += 1;
                        self.state = State::ChunkSize;
                    }
                    _ => return Err(ParseError::Chunk),
                },
                State::Done => return Ok((pos, Step::Complete(self.response))),
            }
        }
    }

    /// The connection reached end of file: completes a response delimited by the close,
    /// fails any other unfinished one.
    pub fn eof(&mut self) -> Result<Response, ParseError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(Response {
                    close: true,
                    ..self.response
                })
            }
            _ => Err(ParseError::Truncated),
        }
    }

    /// The length of the next line of `rest` including its `\n`, if it is all there.
    fn line(&mut self, rest: &[u8]) -> Result<Option<usize>, ParseError> {
        match memchr(b'\n', rest.get(self.scanned..).unwrap_or_default()) {
            Some(i) => {
                let len = self.scanned + i + 1;
                self.scanned = 0;
                Ok(Some(len))
            }
            None if rest.len() > MAX_LINE => Err(ParseError::Chunk),
            None => {
                self.scanned = rest.len();
                Ok(None)
            }
        }
    }

    /// Reads a complete head (up to and including the blank line); returns the next state.
    fn head(&mut self, head: &[u8]) -> Result<State, ParseError> {
        let mut lines = head.split(|&b| b == b'\n').map(trim_eol);
        let status_line = lines.next().ok_or(ParseError::StatusLine)?;
        let (minor, status) = parse_status_line(status_line)?;
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut other_coding = false;
        let mut close = minor == 0;
        for line in lines.filter(|l| !l.is_empty()) {
            let colon = memchr(b':', line).ok_or(ParseError::Header)?;
            let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
            // No whitespace between name and colon, no obsolete line folding (RFC 9112 §5).
            if name.is_empty() || name.iter().any(|b| !b.is_ascii_graphic()) {
                return Err(ParseError::Header);
            }
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_length(value)?;
                if length.is_some_and(|l| l != n) {
                    return Err(ParseError::ContentLength);
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // Only the last coding decides the framing.
                for coding in tokens(value) {
                    chunked = coding.eq_ignore_ascii_case(b"chunked");
                    other_coding = !chunked;
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                for token in tokens(value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && minor == 0 {
                        close = false;
                    }
                }
            }
        }
        self.response = Response { status, close };
        Ok(match status {
            // Interim (100 Continue, 103 Early Hints): the real response follows.
            100 | 102..=199 => State::Head,
            // Switching protocols: not HTTP any more; done, and unusable.
            101 => {
                self.response.close = true;
                State::Done
            }
            204 | 304 => State::Done,
            _ if !self.expects_body => State::Done,
            _ if chunked => State::ChunkSize,
            _ if other_coding => {
                self.response.close = true;
                State::UntilClose
            }
            _ => match length {
                Some(0) => State::Done,
                Some(n) => State::Fixed(n),
                None => {
                    self.response.close = true;
                    State::UntilClose
                }
            },
        })
    }
}

/// Index just past the blank line that ends the head (`\r\n\r\n`, or bare `\n\n`), searching
/// from `scanned` (minus the 3 bytes a terminator split across reads may have left behind).
fn find_head_end(buf: &[u8], scanned: usize) -> Option<usize> {
    let mut from = scanned.saturating_sub(3);
    while let Some(i) = memchr(b'\n', buf.get(from..)?) {
        let nl = from + i;
        match buf.get(nl + 1..nl + 3) {
            Some([b'\r', b'\n']) => return Some(nl + 3),
            Some([b'\n', _]) => return Some(nl + 2),
            None if buf.get(nl + 1) == Some(&b'\n') => return Some(nl + 2),
            _ => from = nl + 1,
        }
    }
    None
}

/// `HTTP/1.x SSS[ reason]` → (x, SSS).
fn parse_status_line(line: &[u8]) -> Result<(u8, u16), ParseError> {
    let rest = line
        .strip_prefix(b"HTTP/1.")
        .ok_or(ParseError::StatusLine)?;
    let [minor @ (b'0' | b'1'), b' ', d0, d1, d2, tail @ ..] = rest else {
        return Err(ParseError::StatusLine);
    };
    if !(tail.is_empty() || tail[0] == b' ') {
        return Err(ParseError::StatusLine);
    }
    let mut status = 0_u16;
    for d in [d0, d1, d2] {
        if !d.is_ascii_digit() {
            return Err(ParseError::StatusLine);
        }
        status = status * 10 + u16::from(d - b'0');
    }
    if status < 100 {
        return Err(ParseError::StatusLine);
    }
    Ok((minor - b'0', status))
}

fn parse_length(value: &[u8]) -> Result<u64, ParseError> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::ContentLength);
    }
    Ok(value
        .iter()
        .fold(0_u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// `HEX[;extensions]`.
fn parse_chunk_size(line: &[u8]) -> Result<u64, ParseError> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .map(trim)
        .unwrap_or_default();
    if digits.is_empty() || digits.len() > 15 {
        return Err(ParseError::Chunk);
    }
    digits.iter().try_fold(0_u64, |n, &d| {
        let v = char::from(d).to_digit(16).ok_or(ParseError::Chunk)?;
        Ok(n << 4 | u64::from(v))
    })
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
