//! A plain HTTP/1.1 GET for the local APIs shadowtap's tools read (an agent's profile or
//! forecast): small answers on a trusted local port, so no client library.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    time::Duration,
};

/// Why a GET failed, with the URL.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("{url}: only http://host:port is supported")]
    Scheme { url: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("GET {url}: {reason}")]
    Answer { url: String, reason: String },
    /// The server answered with a status other than 200 (callers tell 404 apart).
    #[error("GET {url}: HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// `GET path` on `base` (`http://host:port`): the body on 200, the server's answer otherwise.
pub fn get(base: &str, path: &str) -> Result<String, GetError> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| GetError::Scheme {
            url: base.to_owned(),
        })?
        .trim_end_matches('/');
    let io = |context: String| move |source| GetError::Io { context, source };
    let addr = authority
        .to_socket_addrs()
        .map_err(io(format!("resolving {authority}")))?
        .next()
        .ok_or_else(|| GetError::Answer {
            url: url.clone(),
            reason: format!("{authority} resolves to no address"),
        })?;
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(io(format!("connecting to {authority}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("setting a read timeout".to_owned()))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io(format!("sending GET {url}")))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(io(format!("reading the answer to GET {url}")))?;
    let answer = |reason: String| GetError::Answer {
        url: url.clone(),
        reason,
    };
    let text = String::from_utf8(raw).map_err(|_| answer("not UTF-8".to_owned()))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| answer("no HTTP head".to_owned()))?;
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        let Ok(status) = status.parse() else {
            return Err(answer(format!("no status code in {head:?}")));
        };
        return Err(GetError::Status {
            url: url.clone(),
            status,
            body: body.trim().to_owned(),
        });
    }
    Ok(body.to_owned())
}

/// `s` as one URL path segment: unreserved bytes kept, every other byte `%XX` (resource ids
/// hold `@`, `:` and IPv6 brackets).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_encode_keeps_unreserved_only() {
        assert_eq!(
            super::percent_encode("shop.example@[fd00::1]:80"),
            "shop.example%40%5Bfd00%3A%3A1%5D%3A80"
        );
    }
}
