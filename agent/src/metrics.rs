//! Prometheus text exposition of the agent's own counters, served on `/metrics`.
//!
//! Hand-rolled on purpose: a handful of counters and gauges do not need a metrics framework,
//! and the exposition format is simple and stable. The page is rendered by the pipeline on its
//! stats tick and served by a small HTTP/1.1 responder bound to 127.0.0.1 by default.

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

/// A rendered exposition page shared between the pipeline and the HTTP responder.
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

/// Serves `page` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, page: MetricsPage) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    info!(%addr, "serving Prometheus metrics on /metrics");
    loop {
        let (mut stream, peer) = listener.accept().await?;
        let page = page.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = match stream.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    debug!(%peer, error = %e, "metrics request read failed");
                    return;
                }
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("/");
            let (status, body, ctype) = if path == "/metrics" {
                ("200 OK", page.get(), "text/plain; version=0.0.4")
            } else if path == "/healthz" {
                ("200 OK", "ok\n".to_owned(), "text/plain")
            } else {
                ("404 Not Found", "not found\n".to_owned(), "text/plain")
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = stream.write_all(resp.as_bytes()).await {
                warn!(%peer, error = %e, "metrics response write failed");
            }
        });
    }
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
