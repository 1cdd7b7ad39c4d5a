//! The slow origin behind the shadow: a small real HTTP/1.1 server in the trial's namespace.
//! `GET /o/<bytes>/<key>` waits `delay` and answers `<bytes>` of compressible text that a
//! cache may keep for ten minutes. One thread per connection (nginx opens one per miss).

use std::io::{self, BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::netns::Netns;

/// The origin's port inside the namespace.
pub const ORIGIN_PORT: u16 = 9000;
/// Largest response the origin makes.
pub const MAX_BODY: usize = 4 << 20;

/// A running origin; stopped on drop.
pub struct Origin {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Requests the origin answered (cache misses).
    pub served: Arc<AtomicU64>,
    accept: Option<JoinHandle<()>>,
}

impl Origin {
    pub fn start(ns: &Netns, delay: Duration) -> io::Result<Self> {
        let addr: SocketAddr = ([127, 0, 0, 1], ORIGIN_PORT).into();
        let listener = ns
            .run_in(move || TcpListener::bind(addr))?
            .join()
            .map_err(|_| io::Error::other("origin bind thread panicked"))?
            .map_err(|e| io::Error::new(e.kind(), format!("binding the origin on {addr}: {e}")))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), served.clone());
        let accept = std::thread::spawn(move || accept_loop(&listener, &s, &n, delay));
        Ok(Self {
            addr,
            stop,
            served,
            accept: Some(accept),
        })
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    stop: &AtomicBool,
    served: &Arc<AtomicU64>,
    delay: Duration,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let served = served.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &served, delay);
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve(stream: TcpStream, served: &AtomicU64, delay: Duration) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut close = line.contains("HTTP/1.0");
        // Skip the headers; note a `Connection: close`.
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let lower = h.to_ascii_lowercase();
            if lower.starts_with("connection:") {
                close = lower.contains("close");
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
        }
        std::thread::sleep(delay);
        let (status, body) = match parse_path(&path) {
            Some((bytes, key)) => ("200 OK", body_of(bytes, key)),
            None => ("404 Not Found", b"not found\n".to_vec()),
        };
        served.fetch_add(1, Ordering::Relaxed);
        write!(
            writer,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Cache-Control: max-age=600\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )?;
        writer.write_all(&body)?;
        if close {
            return Ok(());
        }
    }
}

/// `/o/<bytes>/<key>` → (bytes, key).
pub fn parse_path(path: &str) -> Option<(usize, u64)> {
    let mut parts = path.strip_prefix("/o/")?.split('/');
    let bytes: usize = parts.next()?.parse().ok()?;
    let key: u64 = parts.next()?.parse().ok()?;
    (bytes <= MAX_BODY).then_some((bytes, key))
}

/// Text that compresses like a typical page (words from a small vocabulary, varied by key).
fn body_of(bytes: usize, key: u64) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "shadow",
        "sweep",
        "origin",
        "cache",
        "proxy",
        "nginx",
        "trial",
        "load",
        "tap",
        "latency",
        "worker",
        "keepalive",
        "buffer",
        "gzip",
        "inactive",
        "size",
    ];
    let mut out = Vec::with_capacity(bytes + 16);
    let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % 16) as usize].as_bytes());
        out.push(if x.is_multiple_of(11) { b'\n' } else { b' ' });
    }
    out.truncate(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_bodies() {
        assert_eq!(parse_path("/o/1024/7"), Some((1024, 7)));
        assert_eq!(parse_path("/x/1/2"), None);
        assert_eq!(parse_path("/o/999999999/2"), None);
        assert_eq!(body_of(1000, 3).len(), 1000);
        assert_ne!(body_of(100, 1), body_of(100, 2));
    }
}
