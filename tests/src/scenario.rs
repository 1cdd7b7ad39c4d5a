//! Building blocks of the live tests (`tests/tests/live*.rs`): the traffic plan, starting and
//! stopping the peers inside the namespaces, the agent in its test configuration, and the
//! checks shared by several tests.
//!
//! These helpers are test code: on a mismatch or a harness failure they panic with a message
//! saying what differed, which is how a test reports failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Result;
use crate::agent::{AgentConfig, AgentExit, CaptureMode, RunningAgent, XdpMode, agent_binary};
use crate::error::{Error, io_context};
use crate::events::{EventLog, field_str, stat_any, stat_total};
use crate::netns::{Netns, VethPair};
use crate::peer::client::{ClientConfig, DEFAULT_PATHS, plan_request};
use crate::peer::{ClientSummary, ServerSummary};
use crate::process::BackgroundProcess;
use crate::support::{require_root, require_tool};

pub const PORT: u16 = 8080;
pub const HOSTS: &[&str] = &["a.example", "b.example", "c.example"];
/// Loading the agent's programs costs about a second of CPU in the BPF verifier; on a starved
/// two-core machine (builds beside a CPU hog) that took more than 20 s of wall time. An agent
/// that fails exits, which `wait_attached` reports at once: this bound only catches a hang.
pub const AGENT_ATTACH_TIMEOUT: Duration = Duration::from_secs(90);
pub const AGENT_STOP_TIMEOUT: Duration = Duration::from_secs(15);

static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Unwraps a harness result, failing the test with the error's message.
#[track_caller]
pub fn must<T>(result: crate::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// Stops the agent as an operator would (SIGINT) and requires a clean exit: a test whose agent
/// crashed or hung on the way out has not shown what it claims.
pub fn stop_agent_cleanly(agent: RunningAgent) -> AgentExit {
    let exit = must(agent.stop(libc::SIGINT, AGENT_STOP_TIMEOUT));
    assert!(
        exit.status.success(),
        "agent exited with {}; {}",
        exit.status,
        exit.stderr
    );
    exit
}

#[track_caller]
pub fn preflight_net() {
    must(require_root());
    must(require_tool("ip"));
    must(require_tool("sysctl"));
}

#[track_caller]
pub fn preflight_agent() -> PathBuf {
    preflight_net();
    must(require_tool("bpftool"));
    must(agent_binary())
}

/// A fresh directory for one test's logs and outputs, removed afterwards unless
/// `SHADOWTAP_KEEP_TEST_DIRS` is set (then its path is printed).
pub fn work_dir(label: &str) -> tempfile::TempDir {
    let prefix = format!("stap-live-{label}-");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    if std::env::var_os("SHADOWTAP_KEEP_TEST_DIRS").is_some() {
        builder.disable_cleanup(true);
    }
    let dir = builder.tempdir().expect("creating a temp dir");
    if std::env::var_os("SHADOWTAP_KEEP_TEST_DIRS").is_some() {
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

// ---------------------------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------------------------

/// One client run of the traffic plan.
#[derive(Clone, Debug)]
pub struct ClientPlan {
    pub label: &'static str,
    pub ipv6: bool,
    pub connections: u32,
    pub requests_per_conn: u32,
    pub pipeline: u32,
    pub post_bytes: usize,
    pub parallel: u32,
    pub think: Duration,
}

impl ClientPlan {
    pub fn connect(&self, pair: &VethPair) -> SocketAddr {
        if self.ipv6 {
            SocketAddr::new(pair.server_v6.expect("pair has IPv6").into(), PORT)
        } else {
            SocketAddr::new(pair.server_v4.expect("pair has IPv4").into(), PORT)
        }
    }

    pub fn config(&self, connect: SocketAddr) -> ClientConfig {
        ClientConfig {
            connect,
            hosts: HOSTS.iter().map(|h| (*h).to_owned()).collect(),
            connections: self.connections,
            requests_per_conn: self.requests_per_conn,
            pipeline: self.pipeline,
            paths: DEFAULT_PATHS.iter().map(|p| (*p).to_owned()).collect(),
            post_bytes: self.post_bytes,
            parallel: self.parallel,
            think: self.think,
            max_duration: Duration::from_secs(40),
        }
    }

    pub fn args(&self, config: &ClientConfig) -> Vec<String> {
        let mut args = vec![
            "client".to_owned(),
            "--connect".to_owned(),
            config.connect.to_string(),
            "--hosts".to_owned(),
            config.hosts.join(","),
            "--connections".to_owned(),
            config.connections.to_string(),
            "--requests-per-conn".to_owned(),
            config.requests_per_conn.to_string(),
            "--pipeline".to_owned(),
            config.pipeline.to_string(),
            "--paths".to_owned(),
            config.paths.join(","),
            "--post-bytes".to_owned(),
            config.post_bytes.to_string(),
            "--parallel".to_owned(),
            config.parallel.to_string(),
            "--think-ms".to_owned(),
            config.think.as_millis().to_string(),
            "--max-seconds".to_owned(),
            config.max_duration.as_secs().to_string(),
        ];
        if self.ipv6 {
            args.push("--ipv6".to_owned());
        }
        args
    }
}

/// Request bytes a client plan puts on the wire, computed from the plan itself.
pub fn planned_request_bytes(config: &ClientConfig) -> u64 {
    (0..config.connections)
        .flat_map(|c| (0..config.requests_per_conn).map(move |i| (c, i)))
        .map(|(c, i)| plan_request(config, c, i).encode().len() as u64)
        .sum()
}

/// The traffic of the live HTTP tests: keep-alive and pipelined, IPv4 and IPv6, GET and POST,
/// several hosts, statuses 200/201/404/503 and bodies from 0 bytes to several segments.
pub fn traffic_plan() -> Vec<ClientPlan> {
    vec![
        ClientPlan {
            label: "v4-keepalive",
            ipv6: false,
            connections: 4,
            requests_per_conn: 10,
            pipeline: 1,
            post_bytes: 700,
            parallel: 2,
            think: Duration::ZERO,
        },
        ClientPlan {
            label: "v4-pipelined",
            ipv6: false,
            connections: 3,
            requests_per_conn: 12,
            pipeline: 4,
            post_bytes: 0,
            parallel: 1,
            think: Duration::ZERO,
        },
        ClientPlan {
            label: "v6-pipelined",
            ipv6: true,
            connections: 3,
            requests_per_conn: 8,
            pipeline: 3,
            post_bytes: 500,
            parallel: 2,
            think: Duration::ZERO,
        },
        ClientPlan {
            label: "v6-keepalive",
            ipv6: true,
            connections: 2,
            requests_per_conn: 6,
            pipeline: 1,
            post_bytes: 0,
            parallel: 1,
            think: Duration::ZERO,
        },
    ]
}

#[track_caller]
pub fn start_server(peer: &Path, pair: &VethPair, dir: &Path) -> BackgroundProcess {
    let ready = dir.join("server.ready");
    let mut args = vec!["server".to_owned()];
    if let Some(v4) = pair.server_v4 {
        args.extend([
            "--listen".to_owned(),
            SocketAddr::new(v4.into(), PORT).to_string(),
        ]);
    }
    if let Some(v6) = pair.server_v6 {
        args.extend([
            "--listen".to_owned(),
            SocketAddr::new(v6.into(), PORT).to_string(),
        ]);
    }
    args.extend([
        "--max-seconds".to_owned(),
        "55".to_owned(),
        "--ready-file".to_owned(),
        ready.to_string_lossy().into_owned(),
    ]);
    let mut server = must(pair.server.spawn(peer, &args, "server", dir));
    let started = Instant::now();
    while !ready.exists() {
        if let Some(status) = must(server.try_wait()) {
            panic!(
                "server exited ({status}) before listening; {}",
                server.stderr_tail()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "server not listening after 5 s; {}",
            server.stderr_tail()
        );
        thread::sleep(Duration::from_millis(10));
    }
    server
}

#[track_caller]
pub fn stop_server(mut server: BackgroundProcess) -> ServerSummary {
    let status = must(server.stop(libc::SIGTERM, Duration::from_secs(10)));
    assert!(
        status.success(),
        "server exited with {status}; {}",
        server.stderr_tail()
    );
    let stdout = must(server.stdout());
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("server summary is not JSON ({e}): {stdout}"))
}

#[track_caller]
pub fn spawn_client(
    peer: &Path,
    pair: &VethPair,
    plan: &ClientPlan,
    dir: &Path,
) -> BackgroundProcess {
    let config = plan.config(plan.connect(pair));
    must(pair.client.spawn(peer, plan.args(&config), plan.label, dir))
}

#[track_caller]
pub fn finish_client(mut client: BackgroundProcess, timeout: Duration) -> ClientSummary {
    let status = must(client.wait_timeout(timeout));
    let stdout = must(client.stdout());
    let summary: ClientSummary = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "client {} summary is not JSON ({e}): {stdout}; {}",
            client.label(),
            client.stderr_tail()
        )
    });
    assert!(
        status.success() && summary.errors.is_empty(),
        "client {} failed ({status}): {:?}; {}",
        client.label(),
        summary.errors,
        client.stderr_tail()
    );
    summary
}

#[track_caller]
pub fn run_client(peer: &Path, pair: &VethPair, plan: &ClientPlan, dir: &Path) -> ClientSummary {
    finish_client(spawn_client(peer, pair, plan, dir), Duration::from_secs(45))
}

pub fn add_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}

pub fn total_of(clients: &[ClientSummary]) -> ClientSummary {
    let mut total = ClientSummary::default();
    for c in clients {
        total.connections_opened += c.connections_opened;
        total.connections_closed_clean += c.connections_closed_clean;
        total.requests_sent += c.requests_sent;
        add_counts(&mut total.requests_sent_by_host, &c.requests_sent_by_host);
        add_counts(
            &mut total.requests_sent_by_method,
            &c.requests_sent_by_method,
        );
        total.responses_received += c.responses_received;
        add_counts(&mut total.responses_by_status, &c.responses_by_status);
        total.bytes_written += c.bytes_written;
        total.bytes_read += c.bytes_read;
        total.wire_bytes_sent += c.wire_bytes_sent;
        total.wire_bytes_retransmitted += c.wire_bytes_retransmitted;
    }
    total
}

/// The two peers and the plan must tell the same story before the agent is judged by them.
#[track_caller]
pub fn assert_peers_agree(
    pair: &VethPair,
    plans: &[ClientPlan],
    clients: &[ClientSummary],
    server: &ServerSummary,
) {
    for (plan, client) in plans.iter().zip(clients) {
        let config = plan.config(plan.connect(pair));
        assert_eq!(
            client.bytes_written,
            planned_request_bytes(&config),
            "{}: request bytes differ from the plan",
            plan.label
        );
        assert_eq!(
            u64::from(plan.connections),
            client.connections_opened,
            "{}",
            plan.label
        );
        assert_eq!(
            client.connections_closed_clean, client.connections_opened,
            "{}",
            plan.label
        );
        let requests = u64::from(plan.connections * plan.requests_per_conn);
        assert_eq!(client.requests_sent, requests, "{}", plan.label);
        assert_eq!(client.responses_received, requests, "{}", plan.label);
        assert_wire_accounted(
            plan.label,
            client.wire_bytes_sent,
            client.bytes_written,
            client.wire_bytes_retransmitted,
        );
    }
    let total = total_of(clients);
    assert_eq!(
        server.connections_accepted, total.connections_opened,
        "connections"
    );
    assert_eq!(
        server.connections_closed, total.connections_opened,
        "closed connections"
    );
    assert_eq!(
        server.requests_by_host, total.requests_sent_by_host,
        "requests per Host"
    );
    assert_eq!(
        server.requests_by_method, total.requests_sent_by_method,
        "requests per method"
    );
    assert_eq!(
        server.responses_by_status, total.responses_by_status,
        "responses per status"
    );
    assert_eq!(
        server.bytes_read, total.bytes_written,
        "client→server payload bytes"
    );
    assert_eq!(
        server.bytes_written, total.bytes_read,
        "server→client payload bytes"
    );
    assert_eq!(
        server.incomplete_requests
            + server.protocol_errors
            + server.io_errors
            + server.requests_without_host,
        0,
        "server saw errors: {server:?}"
    );
    assert!(
        server.errors.is_empty(),
        "server errors: {:?}",
        server.errors
    );
    assert_wire_accounted(
        "server",
        server.wire_bytes_sent,
        server.bytes_written,
        server.wire_bytes_retransmitted,
    );
}

/// A peer's kernel put on the wire each byte the peer wrote once, plus what it retransmitted
/// (`TCP_INFO`). Anything else means a segment was sent twice without counting as a
/// retransmission, i.e. the stack dropped it locally before the wire (the veth pair reports such
/// drops as `tx_dropped`) and re-sent it as new data: then no tap can match the peers exactly.
#[track_caller]
pub fn assert_wire_accounted(who: &str, wire_sent: u64, written: u64, retransmitted: u64) {
    assert_eq!(
        wire_sent,
        written + retransmitted,
        "{who}: TCP put {wire_sent} payload bytes on the wire (tcpi_bytes_sent), but {written} \
         written + {retransmitted} retransmitted (tcpi_bytes_retrans) = {}",
        written + retransmitted
    );
}

#[track_caller]
pub fn start_agent(
    pair: &VethPair,
    mode: CaptureMode,
    xdp_mode: XdpMode,
    dir: &Path,
) -> RunningAgent {
    start_agent_with(pair, mode, xdp_mode, dir, Vec::new())
}

/// [`start_agent`] with more agent options.
pub fn start_agent_with(
    pair: &VethPair,
    mode: CaptureMode,
    xdp_mode: XdpMode,
    dir: &Path,
    extra_args: Vec<String>,
) -> RunningAgent {
    let config = AgentConfig {
        iface: pair.server_if.clone(),
        mode,
        xdp_mode,
        stats_interval_secs: 1,
        extra_args,
    };
    let mut agent = must(RunningAgent::start(&pair.server, &config, dir));
    must(agent.wait_attached(&pair.server, AGENT_ATTACH_TIMEOUT));
    agent
}

#[track_caller]
pub fn stats_number(stats: &Value, key: &str) -> u64 {
    stat_total(stats, key).unwrap_or_else(|| panic!("stats line lacks `{key}`: {stats}"))
}

/// Every record the kernel could not queue is counted, and userspace received every record the
/// kernel queued. Returns whether nothing was lost (then exact per-kind counts are owed).
///
/// `expected_records`: the records the traffic warrants and how many more TCP retransmissions
/// may add: the segments TCP retransmitted (`RetransSegs` of both namespaces). A retransmitted
/// SYN, FIN or HTTP head is a real segment the tap sees again, one record each; a retransmitted
/// segment carrying payload alone adds none (only the `flow` bytes, which `tcpi_bytes_retrans`
/// accounts exactly). Zero on an idle machine, so the count is exact there.
#[track_caller]
pub fn assert_loss_accounted(log: &EventLog, expected_records: Option<(u64, u64)>) -> bool {
    let stats = log.last_stats().expect("no stats line in the agent output");
    assert_eq!(
        log.events.last().and_then(|e| field_str(e, "kind")),
        Some("stats"),
        "the last line must be the final stats line"
    );
    if let Some(is_final) = stats.get("final") {
        assert_eq!(
            is_final,
            &Value::Bool(true),
            "last stats line not marked final"
        );
    }
    let failed = stats_number(stats, "ringbuf_reserve_failed");
    let emitted = stats_number(stats, "events_emitted");
    let (key, received) = stat_any(stats, &["records_received", "received_records"])
        .unwrap_or_else(|| panic!("stats line lacks records_received: {stats}"));
    assert_eq!(
        received, emitted,
        "kernel queued {emitted} records, userspace {key}={received}"
    );
    if let Some((expected, retransmitted)) = expected_records {
        let seen = emitted + failed;
        assert!(
            (expected..=expected + retransmitted).contains(&seen),
            "records queued ({emitted}) + ring buffer failures ({failed}) must equal the records \
             the traffic warrants ({expected}: SYN, SYN-ACK, 2 FIN per connection + one per \
             HTTP head), plus at most the {retransmitted} segments TCP retransmitted"
        );
    }
    failed == 0
}

pub fn is_ingress(e: &Value) -> bool {
    field_str(e, "direction") == Some("ingress")
}

pub fn is_egress(e: &Value) -> bool {
    field_str(e, "direction") == Some("egress")
}

/// Parses tcpreplay's "Successful packets:" and "Failed packets:" lines.
#[track_caller]
pub fn tcpreplay_counts(stdout: &str) -> (u64, u64) {
    let number = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("tcpreplay output lacks `{label}`: {stdout}"))
    };
    (number("Successful packets:"), number("Failed packets:"))
}

/// GET `path` from an HTTP endpoint at `addr` inside `ns` (a thread joins the namespace: its
/// loopback is not ours), e.g. the agent's API. Returns (status line, body).
pub fn api_get(ns: &Netns, addr: &str, path: &str) -> Result<(String, String)> {
    use std::io::{Read as _, Write as _};
    use std::os::fd::AsRawFd as _;
    let ns_path = std::path::Path::new("/run/netns").join(ns.name());
    let (addr, path) = (addr.to_owned(), path.to_owned());
    std::thread::spawn(move || -> Result<(String, String)> {
        let context = |what: &str| format!("{what} {addr}{path} in {}", ns_path.display());
        let f =
            std::fs::File::open(&ns_path).map_err(io_context(context("opening the netns for")))?;
        // SAFETY: setns(2) on a valid namespace fd; only this short-lived thread moves.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io_context(context("setns for"))(
                std::io::Error::last_os_error(),
            ));
        }
        let mut s =
            std::net::TcpStream::connect(&addr).map_err(io_context(context("connecting for")))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(io_context(context("timeout for")))?;
        // HTTP/1.0 and `Connection: close`: the server answers once, without chunking, and
        // closes, so the response ends at EOF (a Go server such as Prometheus' would keep an
        // HTTP/1.1 connection open).
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .map_err(io_context(context("writing")))?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)
            .map_err(io_context(context("reading")))?;
        let (head, body) = resp.split_once("\r\n\r\n").ok_or_else(|| Error::Parse {
            source_name: context("GET"),
            reason: format!("no HTTP head in {resp:?}"),
        })?;
        Ok((
            head.lines().next().unwrap_or("").to_owned(),
            body.to_owned(),
        ))
    })
    .join()
    .map_err(|_| Error::Precondition("API thread panicked".to_owned()))?
}
