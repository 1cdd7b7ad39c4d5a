//! Recognising the target's answer in the bytes received so far.

/// What the bytes received so far amount to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// Not yet a whole response head (and not yet wrong).
    Partial,
    /// A final response head.
    Final {
        status: u16,
        /// Bytes of head, interim responses included; the body starts here.
        head_len: usize,
        content_length: Option<usize>,
    },
    /// Not an HTTP/1.x response.
    Invalid,
}

impl Head {
    /// Whether `received` holds the whole response this head announced. Without a
    /// Content-Length the response ends with the connection, which the caller sees.
    pub(super) fn complete(self, received: usize) -> bool {
        match self {
            Self::Final {
                head_len,
                content_length: Some(len),
                ..
            } => received >= head_len.saturating_add(len),
            _ => false,
        }
    }
}

const MAX_HEADERS: usize = 64;

/// Parses the response head in `buf`, skipping interim (1xx) responses.
pub(super) fn parse(buf: &[u8]) -> Head {
    let mut offset = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf[offset..]) {
            Ok(httparse::Status::Partial) => return Head::Partial,
            Err(_) => return Head::Invalid,
            Ok(httparse::Status::Complete(len)) => {
                let Some(status) = response.code else {
                    return Head::Invalid;
                };
                if (100..200).contains(&status) {
                    offset += len;
                    continue;
                }
                let content_length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .and_then(|v| v.trim().parse().ok());
                return Head::Final {
                    status,
                    head_len: offset + len,
                    content_length,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_recognised() {
        assert_eq!(parse(b""), Head::Partial);
        assert_eq!(parse(b"HTTP/1.1 40"), Head::Partial);
        assert_eq!(parse(b"hello\n"), Head::Invalid);
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel";
        let head = parse(ok);
        assert_eq!(
            head,
            Head::Final {
                status: 200,
                head_len: ok.len() - 3,
                content_length: Some(5)
            }
        );
        assert!(!head.complete(ok.len()));
        assert!(head.complete(ok.len() + 2));
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\n\r\n";
        assert!(matches!(parse(interim), Head::Final { status: 400, .. }));
    }
}
