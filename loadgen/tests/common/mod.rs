//! A small HTTP/1.1 server for the integration tests, on 127.0.0.1 only, in a thread with
//! its own runtime (so the load generator and the server do not share one), stopped on drop.
//!
//! A request to `/stall` makes the whole server stop answering for [`STALL`]: every
//! response due in that time, on any connection, waits until it is over.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use shadowtap_loadgen::{RunConfig, Target};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};

pub const STALL: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// `200 OK`, keep-alive (`/stall` stalls the server).
    Normal,
    /// Answers with something that is not HTTP.
    Garbage,
    /// Reads the request, then resets the connection (SO_LINGER 0).
    Reset,
    /// Reads requests and never answers.
    Silent,
    /// Answers `503`.
    Unavailable,
    /// `200 OK`, but paths under `/report` are served one at a time, each taking
    /// [`REPORT_TIME`]: a resource that saturates at 100 requests per second.
    Bottleneck,
}

/// How long one `/report` request holds the bottleneck.
pub const REPORT_TIME: Duration = Duration::from_millis(10);

pub struct TestServer {
    pub addr: SocketAddr,
    /// Requests received.
    pub requests: Arc<AtomicU64>,
    /// Connections accepted.
    pub connections: Arc<AtomicU64>,
    /// Requests that carried `Connection: close`.
    pub closing: Arc<AtomicU64>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    stall_until: Mutex<Option<Instant>>,
    /// The `/report` resource of [`Behaviour::Bottleneck`].
    report: tokio::sync::Mutex<()>,
    requests: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    closing: Arc<AtomicU64>,
}

impl TestServer {
    pub fn start(behaviour: Behaviour) -> Self {
        let state = Arc::new(State::default());
        let (requests, connections, closing) = (
            state.requests.clone(),
            state.connections.clone(),
            state.closing.clone(),
        );
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown, mut stop) = oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            state.connections.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(serve(stream, state.clone(), behaviour));
                        }
                    }
                }
            });
        });
        Self {
            addr: addr_rx.recv().unwrap(),
            requests,
            connections,
            closing,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// A run configuration against this server; tests adjust the fields they care about.
    pub fn config(&self, duration: Duration, max_requests: u64, connections: usize) -> RunConfig {
        RunConfig {
            target: Target::parse(&self.url()).unwrap(),
            connections,
            duration,
            max_requests,
            timeout: Duration::from_secs(5),
            seed: 1,
            requests_per_connection: None,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Connection tasks die with the runtime when the thread returns.
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(mut stream: TcpStream, state: Arc<State>, behaviour: Behaviour) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0_u8; 4096];
    loop {
        // Every complete request head in the buffer (requests have no body here).
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            state.requests.fetch_add(1, Ordering::SeqCst);
            let close = head.contains("\r\nconnection: close");
            if close {
                state.closing.fetch_add(1, Ordering::SeqCst);
            }
            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
            let response: &[u8] = match behaviour {
                Behaviour::Normal => {
                    if path == "/stall" {
                        *state.stall_until.lock().unwrap() = Some(Instant::now() + STALL);
                    }
                    wait_out_stall(&state).await;
                    if close {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    }
                }
                Behaviour::Bottleneck => {
                    if path.starts_with("/report") {
                        let _held = state.report.lock().await;
                        tokio::time::sleep(REPORT_TIME).await;
                    }
                    if close {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    }
                }
                Behaviour::Unavailable => b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n",
                Behaviour::Garbage => b"SMTP ready\r\n\r\n",
                Behaviour::Reset => {
                    let _ = stream.set_zero_linger();
                    return;
                }
                Behaviour::Silent => continue,
            };
            if stream.write_all(response).await.is_err() || close {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn wait_out_stall(state: &State) {
    loop {
        let until = *state.stall_until.lock().unwrap();
        match until {
            Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
            _ => return,
        }
    }
}
