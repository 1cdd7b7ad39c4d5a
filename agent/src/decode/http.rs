//! HTTP/1.x message-head parser for the first bytes of a TCP segment.
//!
//! The input is whatever the tap captured: often a complete head, sometimes cut by the
//! snaplen in the middle of a header line. Only fully terminated header lines are read, so
//! a cut `Host: exam` is reported as "no host" rather than as a wrong host.

use super::HTTP_METHODS;

/// A parsed request or response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpHead<'a> {
    Request(HttpRequestHead<'a>),
    Response(HttpResponseHead<'a>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpRequestHead<'a> {
    /// Method token without its trailing space.
    pub method: &'a [u8],
    /// Request target; may be cut short when the request line itself was cut.
    pub path: &'a [u8],
    /// `HTTP/1.x` when the request line was complete.
    pub version: Option<&'a [u8]>,
    pub headers: HeaderFields<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpResponseHead<'a> {
    /// `HTTP/1.x` token.
    pub version: &'a [u8],
    /// Three-digit status code, when present and well formed.
    pub status: Option<u16>,
    pub headers: HeaderFields<'a>,
}

/// The header fields the tap reports, plus whether the end of the head was seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderFields<'a> {
    /// Value of the first `Host` header (name matched case-insensitively), trimmed.
    pub host: Option<&'a [u8]>,
    /// Value of the first `Content-Length` header when it is a valid decimal number.
    pub content_length: Option<u64>,
    /// Bytes from the start of the message to the end of the empty line ending the head,
    /// when that line was within the input: what comes after it in the segment is body (or
    /// the next message).
    pub head_len: Option<usize>,
}

impl HttpHead<'_> {
    pub fn headers(&self) -> &HeaderFields<'_> {
        match self {
            HttpHead::Request(r) => &r.headers,
            HttpHead::Response(r) => &r.headers,
        }
    }
}

impl HeaderFields<'_> {
    /// The empty line ending the head was within the input.
    #[must_use]
    pub fn complete(&self) -> bool {
        self.head_len.is_some()
    }

    /// The whole message's size (head plus body) from the segment that carries its head:
    /// `captured` bytes of it were seen, `segment_len` is its TCP payload on the wire.
    ///
    /// A server usually sends a small response's head and body in one segment (and on veth
    /// or with GSO a large one too), so "segment plus Content-Length" would count the body
    /// twice. With the head's end in the capture the size is exact: head + Content-Length.
    /// With the head cut by the snaplen its length is only known to lie between `captured`
    /// and the segment: if the segment can hold the captured part and the whole body, it is
    /// taken to be the message; otherwise the message is the captured part plus the body,
    /// short by at most the head's uncaptured rest (a few hundred bytes against a body
    /// larger than the segment). Without Content-Length (chunked, or up to close) only the
    /// segment is known.
    #[must_use]
    pub fn message_size(&self, captured: usize, segment_len: u32) -> u64 {
        let segment = u64::from(segment_len);
        match (self.content_length, self.head_len) {
            (None, _) => segment,
            (Some(body), Some(head)) => (head as u64).saturating_add(body),
            (Some(body), None) => segment.max((captured as u64).saturating_add(body)),
        }
    }
}

/// Splits off one line ending in `\n` (a preceding `\r` is dropped). `None` when the input
/// has no terminator: the line was cut.
fn take_line(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(b'\n', input)?;
    let line = &input[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some((line, &input[end + 1..]))
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Reads header lines until the empty line or the end of the (possibly cut) input. `rest`
/// is a suffix of a payload of `payload_len` captured bytes (for the head's length).
fn parse_headers(mut rest: &[u8], payload_len: usize) -> HeaderFields<'_> {
    let mut fields = HeaderFields::default();
    while let Some((line, after)) = take_line(rest) {
        rest = after;
        if line.is_empty() {
            fields.head_len = Some(payload_len - rest.len());
            break;
        }
        // Only `Host` and `Content-Length` are read, until found: any other line is passed
        // over on its first byte (ASCII case folded), without a search for its colon.
        let wanted = match line[0] | 0x20 {
            b'h' => fields.host.is_none(),
            b'c' => fields.content_length.is_none(),
            _ => false,
        };
        if !wanted {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if fields.host.is_none() && name.eq_ignore_ascii_case(b"host") {
            fields.host = Some(value);
        } else if fields.content_length.is_none() && name.eq_ignore_ascii_case(b"content-length") {
            fields.content_length = parse_decimal(value);
        }
    }
    fields
}

/// Parses a request or response head at the start of `payload`; `None` when the payload
/// does not start with a recognised method token or `HTTP/1.`.
pub fn parse_http_head(payload: &[u8]) -> Option<HttpHead<'_>> {
    if payload.starts_with(b"HTTP/1.") {
        return Some(HttpHead::Response(parse_response(payload)));
    }
    let method_len = HTTP_METHODS.iter().find(|m| payload.starts_with(m))?.len();
    Some(HttpHead::Request(parse_request(payload, method_len)))
}

fn parse_request(payload: &[u8], method_len: usize) -> HttpRequestHead<'_> {
    let method = &payload[..method_len - 1];
    let after_method = &payload[method_len..];
    let (line, rest) = match take_line(after_method) {
        Some((line, rest)) => (line, Some(rest)),
        None => (after_method, None),
    };
    let (path, version) = match line.iter().position(|&b| b == b' ') {
        Some(sp) => {
            let version = trim(&line[sp + 1..]);
            // Only a terminated request line has a trustworthy version.
            let version = (rest.is_some() && version.starts_with(b"HTTP/")).then_some(version);
            (&line[..sp], version)
        }
        None => (line, None),
    };
    HttpRequestHead {
        method,
        path,
        version,
        headers: rest
            .map(|r| parse_headers(r, payload.len()))
            .unwrap_or_default(),
    }
}

fn parse_response(payload: &[u8]) -> HttpResponseHead<'_> {
    let (line, rest) = match take_line(payload) {
        Some((line, rest)) => (line, Some(rest)),
        None => (payload, None),
    };
    let (version, after) = match line.iter().position(|&b| b == b' ') {
        Some(sp) => (&line[..sp], &line[sp + 1..]),
        None => (line, &[][..]),
    };
    let status = match after {
        [a, b, c, tail @ ..]
            if a.is_ascii_digit()
                && b.is_ascii_digit()
                && c.is_ascii_digit()
                && matches!(tail.first(), None | Some(b' ')) =>
        {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    };
    HttpResponseHead {
        version,
        status,
        headers: rest
            .map(|r| parse_headers(r, payload.len()))
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sizes of a whole message from the segment carrying its head, in every case the
    /// capture can present.
    #[test]
    fn message_size_counts_a_body_once() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\nServer: shadowtap-test\r\n\r\n";
        // A snaplen that ends after Content-Length, before the end of the head.
        let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\nServ".len();
        let mut segment = head.to_vec();
        segment.extend_from_slice(&[b'x'; 300]);
        let whole = (head.len() + 300) as u64;
        let size = |captured: &[u8], wire: usize| {
            let Some(HttpHead::Response(r)) = parse_http_head(captured) else {
                panic!("a response head");
            };
            r.headers
                .message_size(captured.len(), u32::try_from(wire).expect("small"))
        };
        // Head and body in one segment, head captured: exact.
        assert_eq!(size(&segment, segment.len()), whole);
        // Head alone in its segment, body in the next ones: exact.
        assert_eq!(size(head, head.len()), whole);
        // Head and body in one segment, head cut: the segment holds it all.
        assert_eq!(size(&segment[..cut], segment.len()), whole);
        // Head alone and cut: the captured part plus the body, short by the uncaptured head.
        assert_eq!(size(&head[..cut], head.len()), (cut + 300) as u64);
        // Cut before Content-Length: the segment is all that is known.
        assert_eq!(size(&segment[..20], segment.len()), segment.len() as u64);
        // No Content-Length: the segment is all that is known.
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello";
        assert_eq!(size(chunked, 4000), 4000);
        let Some(HttpHead::Response(r)) = parse_http_head(head) else {
            panic!("a response head");
        };
        assert_eq!(r.headers.head_len, Some(head.len()));
    }

    #[test]
    fn request_with_host_and_length() {
        let head = b"POST /api/v1?x=1 HTTP/1.1\r\nhOsT:  example.com:8080 \r\nContent-Length: 42\r\n\r\nbody";
        let Some(HttpHead::Request(r)) = parse_http_head(head) else {
            panic!("not a request");
        };
        assert_eq!(r.method, b"POST");
        assert_eq!(r.path, b"/api/v1?x=1");
        assert_eq!(r.version, Some(&b"HTTP/1.1"[..]));
        assert_eq!(r.headers.host, Some(&b"example.com:8080"[..]));
        assert_eq!(r.headers.content_length, Some(42));
        assert!(r.headers.complete());
    }

    /// Lines sharing the wanted names' first letters, in either case, are not mistaken for
    /// them, and the first `Host` and `Content-Length` win.
    #[test]
    fn host_and_length_among_lookalike_lines() {
        let head = b"HTTP/1.1 200 OK\r\nCache-Control: no\r\nconnection: close\r\nhost-x: a\r\n\
            Content-Type: text/plain\r\nCONTENT-LENGTH: 7\r\nHOST: first\r\nHost: second\r\n\
            Content-Length: 9\r\nX: y\r\n\r\n";
        let Some(HttpHead::Response(r)) = parse_http_head(head) else {
            panic!("not a response");
        };
        assert_eq!(r.headers.host, Some(&b"first"[..]));
        assert_eq!(r.headers.content_length, Some(7));
        assert_eq!(r.headers.head_len, Some(head.len()));
    }

    #[test]
    fn cut_header_line_is_not_reported() {
        let head = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nHost: exam";
        let Some(HttpHead::Request(r)) = parse_http_head(head) else {
            panic!("not a request");
        };
        assert_eq!(r.headers.host, None);
        assert!(!r.headers.complete());
    }

    #[test]
    fn cut_request_line_keeps_partial_path_without_version() {
        let Some(HttpHead::Request(r)) = parse_http_head(b"GET /very/long/pa") else {
            panic!("not a request");
        };
        assert_eq!(r.path, b"/very/long/pa");
        assert_eq!(r.version, None);
        let Some(HttpHead::Request(r)) = parse_http_head(b"GET /x HTTP/1.") else {
            panic!("not a request");
        };
        assert_eq!(r.path, b"/x");
        assert_eq!(r.version, None);
    }

    #[test]
    fn response_status_and_length() {
        let head = b"HTTP/1.0 404 Not Found\nContent-Length: 0\n\n";
        let Some(HttpHead::Response(r)) = parse_http_head(head) else {
            panic!("not a response");
        };
        assert_eq!(r.version, b"HTTP/1.0");
        assert_eq!(r.status, Some(404));
        assert_eq!(r.headers.content_length, Some(0));
        assert!(r.headers.complete());
        let Some(HttpHead::Response(r)) = parse_http_head(b"HTTP/1.1 20") else {
            panic!("not a response");
        };
        assert_eq!(r.status, None);
        let Some(HttpHead::Response(r)) = parse_http_head(b"HTTP/1.1 2000 x\r\n") else {
            panic!("not a response");
        };
        assert_eq!(r.status, None);
    }

    #[test]
    fn bad_content_length_is_absent() {
        for v in ["abc", "-1", "", "99999999999999999999", "1 2"] {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {v}\r\n\r\n");
            let Some(HttpHead::Response(r)) = parse_http_head(head.as_bytes()) else {
                panic!("not a response");
            };
            assert_eq!(r.headers.content_length, None, "{v}");
        }
    }

    #[test]
    fn non_http_is_none() {
        assert_eq!(parse_http_head(b"GETX / HTTP/1.1\r\n"), None);
        assert_eq!(parse_http_head(b"get / HTTP/1.1\r\n"), None);
        assert_eq!(parse_http_head(b"HTTP/2.0 200\r\n"), None);
        assert_eq!(parse_http_head(b""), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_http_head(&bytes);
        }

        #[test]
        fn arbitrary_tails_after_method_never_panic(
            method in proptest::sample::select(HTTP_METHODS.to_vec()),
            tail in proptest::collection::vec(
                proptest::sample::select(b"\r\n :Hostcnt-lgh0123456789 \tHTTP/1.".to_vec()), 0..256),
        ) {
            let mut head = method.to_vec();
            head.extend_from_slice(&tail);
            let Some(HttpHead::Request(r)) = parse_http_head(&head) else {
                panic!("method prefix must parse as a request");
            };
            prop_assert_eq!(r.method, &method[..method.len() - 1]);
        }

        #[test]
        fn every_prefix_of_a_head_parses_consistently(cut in 0usize..120) {
            let full = b"GET /index.html HTTP/1.1\r\nHost: www.example.org\r\nContent-Length: 17\r\n\r\n";
            let head = &full[..cut.min(full.len())];
            if let Some(HttpHead::Request(r)) = parse_http_head(head) {
                // A cut head never reports a wrong host or length, only a missing one.
                if let Some(h) = r.headers.host { prop_assert_eq!(h, b"www.example.org"); }
                if let Some(l) = r.headers.content_length { prop_assert_eq!(l, 17); }
                prop_assert!(b"/index.html".starts_with(r.path));
            }
        }
    }
}
