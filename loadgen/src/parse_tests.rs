use super::*;

/// Feeds `wire` split at the given cut points, the way a connection would (keeping the
/// unconsumed bytes), and returns the responses completed in order plus the bytes left over.
fn parse_split(wire: &[u8], cuts: &[usize], heads: &[bool]) -> (Vec<Response>, Vec<u8>) {
    let mut parser = ResponseParser::new();
    let mut heads = heads.iter().copied();
    parser.start(heads.next().unwrap_or(true));
    let mut buf = Vec::new();
    let mut done = Vec::new();
    let mut last = 0;
    for &cut in cuts.iter().chain(std::iter::once(&wire.len())) {
        buf.extend_from_slice(&wire[last..cut]);
        last = cut;
        loop {
            let (used, step) = parser.feed(&buf).expect("parses");
            buf.drain(..used);
            match step {
                Step::NeedMore => break,
                Step::Complete(r) => {
                    done.push(r);
                    parser.start(heads.next().unwrap_or(true));
                }
            }
        }
    }
    (done, buf)
}

fn ok(status: u16, close: bool) -> Response {
    Response { status, close }
}

const NGINX: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Type: text/html\r\n\
    Content-Length: 5\r\nConnection: keep-alive\r\nAccept-Ranges: bytes\r\n\r\nhello";

#[test]
fn content_length_in_one_read() {
    let (done, left) = parse_split(NGINX, &[], &[]);
    assert_eq!(done, vec![ok(200, false)]);
    assert!(left.is_empty());
}

#[test]
fn content_length_at_every_split_point() {
    for cut in 1..NGINX.len() {
        let (done, left) = parse_split(NGINX, &[cut], &[]);
        assert_eq!(done, vec![ok(200, false)], "cut at {cut}");
        assert!(left.is_empty(), "cut at {cut}");
    }
    // One byte at a time.
    let cuts: Vec<usize> = (1..NGINX.len()).collect();
    assert_eq!(parse_split(NGINX, &cuts, &[]).0, vec![ok(200, false)]);
}

const CHUNKED: &[u8] = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
    5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n";

#[test]
fn chunked_with_extensions_and_trailers_at_every_split_point() {
    for cut in 1..CHUNKED.len() {
        let (done, left) = parse_split(CHUNKED, &[cut], &[]);
        assert_eq!(done, vec![ok(404, false)], "cut at {cut}");
        assert!(left.is_empty(), "cut at {cut}");
    }
    let cuts: Vec<usize> = (1..CHUNKED.len()).collect();
    assert_eq!(parse_split(CHUNKED, &cuts, &[]).0, vec![ok(404, false)]);
}

#[test]
fn pipelined_responses_across_partial_reads() {
    let mut wire = Vec::new();
    wire.extend_from_slice(NGINX);
    wire.extend_from_slice(CHUNKED);
    wire.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
    wire.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n");
    // A HEAD response announces a length it does not send.
    wire.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n");
    wire.extend_from_slice(
        b"HTTP/1.1 503 Busy\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno",
    );
    wire.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    let expected = vec![
        ok(200, false),
        ok(404, false),
        ok(204, false),
        ok(304, false),
        ok(200, false),
        ok(503, true),
    ];
    let heads = [true, true, true, true, false, true, true];
    for step in [1, 2, 3, 7, 64, 1000] {
        let cuts: Vec<usize> = (step..wire.len()).step_by(step).collect();
        let (done, left) = parse_split(&wire, &cuts, &heads);
        assert_eq!(done, expected, "reads of {step} bytes");
        assert_eq!(left, b"HTTP/1.1 200 OK\r\n", "reads of {step} bytes");
    }
}

#[test]
fn bare_lf_heads_are_accepted() {
    let (done, _) = parse_split(
        b"HTTP/1.0 301 Moved\nLocation: /\nContent-Length: 0\n\n",
        &[],
        &[],
    );
    // HTTP/1.0 closes unless it says keep-alive.
    assert_eq!(done, vec![ok(301, true)]);
    let (done, _) = parse_split(
        b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
        &[],
        &[],
    );
    assert_eq!(done, vec![ok(200, false)]);
}

#[test]
fn body_until_close() {
    let mut parser = ResponseParser::new();
    parser.start(true);
    let wire = b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nsome body that ends with the connection";
    let (used, step) = parser.feed(wire).expect("parses");
    assert_eq!((used, step), (wire.len(), Step::NeedMore));
    assert_eq!(parser.eof(), Ok(ok(200, true)));
    // A length-delimited body cut short is an error, not a response.
    parser.start(true);
    let (_, step) = parser.feed(&NGINX[..NGINX.len() - 1]).expect("parses");
    assert_eq!(step, Step::NeedMore);
    assert_eq!(parser.eof(), Err(ParseError::Truncated));
    // As is a head cut short.
    parser.start(true);
    let _ = parser.feed(b"HTTP/1.1 200 OK\r\n").expect("parses");
    assert_eq!(parser.eof(), Err(ParseError::Truncated));
}

#[test]
fn malformed_responses_are_errors() {
    let cases: &[(&[u8], ParseError)] = &[
        (b"HTTP/2 200 OK\r\n\r\n", ParseError::StatusLine),
        (b"HTTP/1.1 20 OK\r\n\r\n", ParseError::StatusLine),
        (b"HTTP/1.1 2000 OK\r\n\r\n", ParseError::StatusLine),
        (b"HTTP/1.1 abc OK\r\n\r\n", ParseError::StatusLine),
        (b"HTTP/1.1 099 OK\r\n\r\n", ParseError::StatusLine),
        (b"hello\r\n\r\n", ParseError::StatusLine),
        (
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            ParseError::Header,
        ),
        (
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            ParseError::Header,
        ),
        (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", ParseError::Header),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            ParseError::ContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            ParseError::ContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            ParseError::ContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            ParseError::Chunk,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
            ParseError::Chunk,
        ),
    ];
    for (wire, expected) in cases {
        let mut parser = ResponseParser::new();
        parser.start(true);
        assert_eq!(
            parser.feed(wire),
            Err(*expected),
            "{}",
            String::from_utf8_lossy(wire)
        );
    }
    let mut parser = ResponseParser::new();
    parser.start(true);
    let huge = vec![b'a'; MAX_HEAD + 1];
    assert_eq!(parser.feed(&huge), Err(ParseError::HeadTooLong));
}

#[test]
fn repeated_lengths_that_agree_are_fine() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok";
    assert_eq!(parse_split(wire, &[], &[]).0, vec![ok(200, false)]);
}
