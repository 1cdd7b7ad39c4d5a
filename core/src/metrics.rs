//! Prometheus text exposition of the agent's own counters, served on `/metrics`.
//!
//! Hand-rolled on purpose: a handful of counters and gauges do not need a metrics framework,
//! and the exposition format is simple and stable. The page is rendered by the pipeline every
//! second and served by `runtime::http` (127.0.0.1 by default).

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tracing::{debug, info, warn};

/// A rendered exposition page shared between a writer and [`serve`].
#[derive(Clone, Default)]
pub struct MetricsPage(Arc<Mutex<String>>);

impl MetricsPage {
    pub fn set(&self, page: String) {
        if let Ok(mut p) = self.0.lock() {
            *p = page;
        }
    }

    pub fn get(&self) -> String {
        self.0.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// An HTTP response: status line text, content type, body.
pub type Response = (&'static str, &'static str, String);

/// Answers GET requests on `addr` with `handler(path)` until the task is dropped. Small and
/// dependency-free on purpose: it serves scrape and status endpoints on loopback.
pub async fn serve_http(
    addr: SocketAddr,
    handler: Arc<dyn Fn(&str) -> Response + Send + Sync>,
) -> std::io::Result<()> {
    serve_listener(TcpListener::bind(addr).await?, handler).await
}

/// [`serve_http`] on a listener bound beforehand: a caller that binds before it announces
/// itself ready (the agent binds before attaching its programs) has clients queue in the
/// backlog until this runs, rather than be refused.
pub async fn serve_listener(
    listener: TcpListener,
    handler: Arc<dyn Fn(&str) -> Response + Send + Sync>,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    info!(%addr, "HTTP endpoint listening");
    loop {
        let (mut stream, peer) = listener.accept().await?;
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            // Read until the end of the request head (a client may send it in pieces).
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match stream.read(&mut chunk).await {
                    Ok(0) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => {
                        debug!(%peer, error = %e, "HTTP request read failed");
                        return;
                    }
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let mut words = head.split_whitespace();
            let method = words.next().unwrap_or("");
            let target = words.next().unwrap_or("/");
            let path = target.split('?').next().unwrap_or("/");
            let (status, ctype, body) = if method == "GET" {
                handler(path)
            } else {
                ("405 Method Not Allowed", "text/plain", "GET only\n".into())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = stream.write_all(resp.as_bytes()).await {
                warn!(%peer, error = %e, "HTTP response write failed");
            }
        });
    }
}

/// Serves `page` on `/metrics` and `ok` on `/healthz`.
pub async fn serve(addr: SocketAddr, page: MetricsPage) -> std::io::Result<()> {
    let handler = move |path: &str| -> Response {
        match path {
            "/metrics" => ("200 OK", "text/plain; version=0.0.4", page.get()),
            "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
            _ => ("404 Not Found", "text/plain", "not found\n".into()),
        }
    };
    serve_http(addr, Arc::new(handler)).await
}

/// Builds one exposition page.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Adds a metric family with its samples: `labels` are `(name, value)` pairs.
    pub fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: &[(&[(&str, &str)], f64)],
    ) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{k}=\"{}\"", escape(v));
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {value}");
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let mut e = Exposition::default();
        e.family(
            "shadowtap_packets_total",
            "counter",
            "Packets seen.",
            &[
                (&[("direction", "ingress")], 3.0),
                (&[("direction", "eg\"ress")], 4.0),
            ],
        );
        let page = e.finish();
        assert_eq!(
            page,
            "# HELP shadowtap_packets_total Packets seen.\n# TYPE shadowtap_packets_total counter\n\
             shadowtap_packets_total{direction=\"ingress\"} 3\nshadowtap_packets_total{direction=\"eg\\\"ress\"} 4\n"
        );
    }
}
