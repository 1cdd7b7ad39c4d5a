//! What is sent: a [`RequestSource`] picks the next [`Request`] for a connection. Requests
//! are serialised once ([`RequestSpec::build`]) and shared by reference count, so choosing
//! one on the hot path is a pointer copy.

use std::{sync::Arc, time::Duration};

use crate::LoadRng;

/// Chooses the requests of a run. The runner calls it once per request, on the connection
/// that will send it, just before sending.
///
/// `conn` identifies one TCP connection for its whole life (ids are never reused, a
/// reconnect gets a new one), so a source can keep per-connection state — a session's place
/// in a Markov chain of request templates, say — and end a connection by returning a request
/// with [`Request::closing`]`(true)`. `rng` is seeded from `--seed` per connection slot, so a
/// run is reproducible as far as the server's timing allows.
pub trait RequestSource {
    fn next_request(&mut self, conn: u64, rng: &mut LoadRng) -> Request;

    /// The response to the request last handed out for `conn` arrived: its status and
    /// latency from the intended send (`corrected`) and from the actual send. Sources that
    /// report per request kind (a profile's templates) keep these.
    fn response(&mut self, conn: u64, status: u16, corrected: Duration, uncorrected: Duration) {
        let _ = (conn, status, corrected, uncorrected);
    }

    /// Connection `conn` is closed (by either side, or after an error): drop its state.
    fn connection_closed(&mut self, conn: u64) {
        let _ = conn;
    }
}

/// The same request every time.
#[derive(Clone, Debug)]
pub struct FixedSource {
    request: Request,
}

impl FixedSource {
    pub fn new(request: Request) -> Self {
        Self { request }
    }
}

impl RequestSource for FixedSource {
    fn next_request(&mut self, _conn: u64, _rng: &mut LoadRng) -> Request {
        self.request.clone()
    }
}

/// A request as the user describes it; [`build`](RequestSpec::build) checks and serialises it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSpec {
    pub method: String,
    /// Origin form (`/path?query`).
    pub path: String,
    /// The `Host` header (`name[:port]`).
    pub host: String,
    /// Extra headers, sent in order after `Host`. `Host`, `Content-Length`,
    /// `Transfer-Encoding` and `Connection` are set by the generator and refused here.
    pub headers: Vec<(String, String)>,
    /// Bytes of body (filler), sent with a `Content-Length`.
    pub body_len: usize,
}

/// Why a [`RequestSpec`] cannot be sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("method {0:?} is not an HTTP token")]
    Method(String),
    #[error("path {0:?} must start with '/' and hold no spaces or control characters")]
    Path(String),
    #[error("host {0:?} must be non-empty and hold no spaces or control characters")]
    Host(String),
    #[error("header name {0:?} is not an HTTP token")]
    HeaderName(String),
    #[error("header {0:?} has a control character in its value")]
    HeaderValue(String),
    #[error("header {0:?} is set by the load generator")]
    Reserved(String),
}

impl RequestSpec {
    /// `GET path` with no extra headers and no body.
    pub fn get(host: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            method: "GET".to_owned(),
            path: path.into(),
            host: host.into(),
            headers: Vec::new(),
            body_len: 0,
        }
    }

    /// Checks the parts and serialises the request (HTTP/1.1, keep-alive).
    pub fn build(&self) -> Result<Request, RequestError> {
        if self.method.is_empty() || !self.method.bytes().all(is_tchar) {
            return Err(RequestError::Method(self.method.clone()));
        }
        if !self.path.starts_with('/') || !self.path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(RequestError::Path(self.path.clone()));
        }
        if self.host.is_empty() || !self.host.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(RequestError::Host(self.host.clone()));
        }
        let mut wire = Vec::with_capacity(64 + self.path.len() + self.body_len);
        let mut push = |parts: &[&str]| parts.iter().for_each(|p| wire.extend(p.as_bytes()));
        push(&[
            &self.method,
            " ",
            &self.path,
            " HTTP/1.1\r\nHost: ",
            &self.host,
            "\r\n",
        ]);
        for (name, value) in &self.headers {
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(RequestError::HeaderName(name.clone()));
            }
            if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                return Err(RequestError::HeaderValue(name.clone()));
            }
            if ["host", "content-length", "transfer-encoding", "connection"]
                .iter()
                .any(|r| name.eq_ignore_ascii_case(r))
            {
                return Err(RequestError::Reserved(name.clone()));
            }
            push(&[name, ": ", value.trim(), "\r\n"]);
        }
        // Methods that define a body get a length even when it is empty, as curl does.
        let body_method = ["POST", "PUT", "PATCH"].contains(&self.method.as_str());
        if self.body_len > 0 || body_method {
            push(&["Content-Length: ", &self.body_len.to_string(), "\r\n"]);
        }
        let head_end = wire.len();
        wire.extend(b"\r\n");
        wire.resize(wire.len() + self.body_len, b'x');
        Ok(Request {
            wire: wire.into(),
            head_end,
            expects_body: self.method != "HEAD",
            close: false,
        })
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A serialised request, cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    wire: Arc<[u8]>,
    /// Where the blank line ending the head starts: a `Connection: close` goes here.
    head_end: usize,
    expects_body: bool,
    close: bool,
}

const CLOSE_HEADER: &[u8] = b"Connection: close\r\n";

impl Request {
    /// This request ends its connection: it is sent with `Connection: close` and the
    /// connection is closed after the response.
    #[must_use]
    pub fn closing(mut self, close: bool) -> Self {
        self.close = close;
        self
    }

    pub fn closes(&self) -> bool {
        self.close
    }

    /// False for HEAD, whose response has no body whatever its headers say.
    pub fn expects_response_body(&self) -> bool {
        self.expects_body
    }

    /// Bytes of the head (through its blank line) in [`wire`](Self::wire), or in the
    /// closing form when `closing`: the body follows.
    pub fn head_len(&self, closing: bool) -> usize {
        self.head_end + 2 + if closing { CLOSE_HEADER.len() } else { 0 }
    }

    /// The bytes on the wire without `Connection: close`.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// The bytes on the wire with `Connection: close` spliced into the head, into `out`.
    pub fn write_closing(&self, out: &mut Vec<u8>) {
        out.clear();
        let (head, rest) = self.wire.split_at(self.head_end);
        out.extend_from_slice(head);
        out.extend_from_slice(CLOSE_HEADER);
        out.extend_from_slice(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_a_get() {
        let r = RequestSpec::get("example:8080", "/a?b=c")
            .build()
            .expect("valid");
        assert_eq!(
            r.wire(),
            b"GET /a?b=c HTTP/1.1\r\nHost: example:8080\r\n\r\n".as_slice()
        );
        let mut out = Vec::new();
        r.clone().closing(true).write_closing(&mut out);
        assert_eq!(
            out,
            b"GET /a?b=c HTTP/1.1\r\nHost: example:8080\r\nConnection: close\r\n\r\n"
        );
        assert!(r.expects_response_body());
    }

    #[test]
    fn serialises_headers_and_a_body() {
        let spec = RequestSpec {
            method: "POST".to_owned(),
            headers: vec![("X-Test".to_owned(), " yes ".to_owned())],
            body_len: 3,
            ..RequestSpec::get("h", "/")
        };
        let r = spec.build().expect("valid");
        assert_eq!(
            r.wire(),
            b"POST / HTTP/1.1\r\nHost: h\r\nX-Test: yes\r\nContent-Length: 3\r\n\r\nxxx".as_slice()
        );
        let mut out = Vec::new();
        r.write_closing(&mut out);
        assert!(out.ends_with(b"Content-Length: 3\r\nConnection: close\r\n\r\nxxx"));
    }

    #[test]
    fn refuses_what_would_break_framing() {
        let bad = |f: &dyn Fn(&mut RequestSpec)| {
            let mut spec = RequestSpec::get("h", "/");
            f(&mut spec);
            spec.build().expect_err("invalid")
        };
        assert!(matches!(
            bad(&|s| s.method = "GE T".into()),
            RequestError::Method(_)
        ));
        assert!(matches!(
            bad(&|s| s.path = "x".into()),
            RequestError::Path(_)
        ));
        assert!(matches!(
            bad(&|s| s.path = "/a b".into()),
            RequestError::Path(_)
        ));
        assert!(matches!(
            bad(&|s| s.host = "a\r\nb".into()),
            RequestError::Host(_)
        ));
        assert!(matches!(
            bad(&|s| s.headers = vec![("Content-Length".into(), "1".into())]),
            RequestError::Reserved(_)
        ));
        assert!(matches!(
            bad(&|s| s.headers = vec![("X".into(), "a\nb".into())]),
            RequestError::HeaderValue(_)
        ));
        let head = RequestSpec {
            method: "HEAD".into(),
            ..RequestSpec::get("h", "/")
        };
        assert!(!head.build().expect("valid").expects_response_body());
    }
}
