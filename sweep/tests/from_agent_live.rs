//! `--from-agent` against a real agent (needs root, `ip`, `bpftool`, the built eBPF object and
//! binaries: `cargo xtask build-ebpf && cargo build --workspace --bins`).
//!
//! A `shadowtap-agent` taps the server end of a veth pair in namespaces this test creates; the
//! test drives HTTP at a known rate over a known number of keep-alive connections, with a
//! known mix of templates (GET and POST, several `{id}` values), to the `shadowtap-httppeer`
//! server. The `current` load derived through the agent's real HTTP API must match: its rate
//! within [`RATE_TOLERANCE`] of the rate the test measured on its own clock, the template
//! shares and key counts exactly as sent, response sizes within [`BYTES_TOLERANCE`] of the
//! answers the test read, and the connections as many as the test held open. The CLI then runs
//! one real nginx trial at the derived load (needs nginx and `nsenter`). The errors are
//! checked through the real API and the CLI: an unknown resource names the known ones, an
//! unreachable agent names its URL, and bad flag combinations are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use shadowtap_agent::model::endpoint_template;
use shadowtap_loadgen::generate::ForecastBound;
use shadowtap_sweep::runner::LoadSpec;
use shadowtap_sweep::runner::from_agent::{self, AgentLoad, FromAgentError};
use shadowtap_tests::agent::{AgentConfig, CaptureMode, RunningAgent, XdpMode, workspace_binary};
use shadowtap_tests::netns::{Netns, VethConfig, VethPair};
use shadowtap_tests::scenario::{
    AGENT_ATTACH_TIMEOUT, PORT, must, preflight_agent, start_server, stop_agent_cleanly,
    stop_server, work_dir,
};
use shadowtap_tests::support::require_tool;

/// The agent's API inside the server namespace.
const API: &str = "127.0.0.1:9464";
const URL: &str = "http://127.0.0.1:9464";
const HOST: &str = "shop.example";
/// Requests per second the test drives, over [`CONNECTIONS`] keep-alive connections.
const RATE: f64 = 80.0;
const CONNECTIONS: usize = 4;
const DRIVE: Duration = Duration::from_secs(6);
/// The derived rate against the rate the test measured: the agent times requests by packet
/// timestamps at the tap, the test by its own clock before each write; scheduling on a busy
/// two-core machine moves either by a few milliseconds over a six-second span.
const RATE_TOLERANCE: f64 = 0.05;
/// Response sizes: the profile keeps distributions at two significant digits (1%).
const BYTES_TOLERANCE: f64 = 0.02;

/// The request cycle: (method, target). Global request `i` sends `CYCLE[i % len]`.
const CYCLE: &[(&str, &str)] = &[
    ("GET", "/bytes/512"),
    ("GET", "/bytes/1234"),
    ("GET", "/"),
    ("GET", "/bytes/20000"),
    ("POST", "/bytes/300"),
    ("GET", "/bytes/512"),
    ("GET", "/"),
    ("GET", "/bytes/1234"),
];

/// What the test sent and read.
#[derive(Default)]
struct Sent {
    requests: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    per_template: BTreeMap<String, TemplateSent>,
}

/// One template's requests, its distinct `{id}` values (paths) and the response bytes read.
#[derive(Default)]
struct TemplateSent {
    requests: u64,
    paths: BTreeSet<String>,
    head_bytes: u64,
    body_bytes: u64,
}

impl Sent {
    fn rate(&self) -> f64 {
        let span = self
            .last
            .zip(self.first)
            .map_or(0.0, |(l, f)| (l - f).as_secs_f64());
        (self.requests - 1) as f64 / span
    }
}

fn peer() -> std::path::PathBuf {
    must(workspace_binary(
        "shadowtap-httppeer",
        "SHADOWTAP_HTTPPEER_BIN",
        "cargo build -p shadowtap-tests --bins",
    ))
}

fn sweep_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_shadowtap-sweep"))
}

/// One response: (head bytes, Content-Length body bytes).
fn read_response(reader: &mut BufReader<std::net::TcpStream>) -> (u64, u64) {
    let mut head = 0u64;
    let mut length = 0usize;
    let mut status = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("response head");
        assert!(n > 0, "server closed mid-response");
        head += n as u64;
        if status.is_empty() {
            status.clone_from(&line);
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("Content-Length");
        }
    }
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("response body");
    (head, length as u64)
}

/// Drives [`CYCLE`] at [`RATE`] over [`CONNECTIONS`] connections for [`DRIVE`]: connection
/// `c` sends global requests `c, c + C, c + 2C, …`, request `i` at `start + i / RATE`.
fn drive(client: &Netns, server: SocketAddr) -> Sent {
    let streams: Vec<_> = (0..CONNECTIONS)
        .map(|_| must(client.tcp_connect(server, Duration::from_secs(5))))
        .collect();
    let start = Instant::now() + Duration::from_millis(100);
    let total = (DRIVE.as_secs_f64() * RATE) as usize;
    let threads: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(c, stream)| {
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone stream");
                let mut reader = BufReader::new(stream);
                let mut sent = Vec::new();
                for i in (c..total).step_by(CONNECTIONS) {
                    let at = start + Duration::from_secs_f64(i as f64 / RATE);
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    let (method, target) = CYCLE[i % CYCLE.len()];
                    let body = if method == "POST" { "x".repeat(100) } else { String::new() };
                    let request = format!(
                        "{method} {target} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let now = Instant::now();
                    writer.write_all(request.as_bytes()).expect("send request");
                    sent.push((now, method, target, read_response(&mut reader)));
                }
                sent
            })
        })
        .collect();
    let mut out = Sent::default();
    for t in threads {
        for (at, method, target, (head, body)) in t.join().expect("driver thread") {
            out.requests += 1;
            out.first = Some(out.first.map_or(at, |f| f.min(at)));
            out.last = Some(out.last.map_or(at, |l| l.max(at)));
            let template = format!("{method} {}", endpoint_template(target));
            let e = out.per_template.entry(template).or_default();
            e.requests += 1;
            e.paths.insert(target.to_owned());
            e.head_bytes += head;
            e.body_bytes += body;
        }
    }
    out
}

/// Runs `f` on a thread inside `ns` (the agent's API listens on the namespace's loopback).
fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd as _;
    let path = Path::new("/run/netns").join(ns.name());
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        // SAFETY: setns(2) on a valid namespace fd; only this short-lived thread moves.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("thread in the namespace")
}

fn derive_in(ns: &Netns, resource: &str, load: AgentLoad) -> Result<LoadSpec, FromAgentError> {
    let resource = resource.to_owned();
    in_ns(ns, move || {
        from_agent::fetch(URL, &resource, load, ForecastBound::Point)
    })
}

fn sweep_cli(ns: Option<&Netns>, args: &[&str]) -> Output {
    let mut cmd = match ns {
        Some(ns) => ns.command(sweep_bin()),
        None => std::process::Command::new(sweep_bin()),
    };
    cmd.args(["run", "--out", "/nonexistent/records.json"])
        .args(args);
    cmd.output().expect("running shadowtap-sweep")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn current_load_from_a_live_agent_matches_the_driven_traffic() {
    preflight_agent();
    must(require_tool("nsenter"));
    must(require_tool("nginx"));
    let dir = work_dir("from-agent");
    let pair = must(VethPair::create(VethConfig {
        ipv6: false,
        ..VethConfig::default()
    }));
    let config = AgentConfig {
        iface: pair.server_if.clone(),
        mode: CaptureMode::Host,
        xdp_mode: XdpMode::Driver,
        stats_interval_secs: 1,
        extra_args: vec!["--metrics-listen".into(), API.into()],
    };
    let mut agent = must(RunningAgent::start(&pair.server, &config, dir.path()));
    must(agent.wait_attached(&pair.server, AGENT_ATTACH_TIMEOUT));
    // After the agent attached (slow under load): the server lives at most 55 s.
    let server = start_server(&peer(), &pair, dir.path());

    let target = SocketAddr::new(pair.server_v4.expect("IPv4").into(), PORT);
    let sent = drive(&pair.client, target);
    let driven = sent.rate();
    assert!(
        (driven / RATE - 1.0).abs() < 0.1,
        "the test drove {driven:.2} req/s, meant {RATE}"
    );
    let resource = format!("{HOST}@{target}");

    // The profile is re-rendered every few seconds: wait until it holds every request sent.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spec = loop {
        let got = derive_in(&pair.server, &resource, AgentLoad::Current);
        let done = got.is_ok() && profile_requests(&pair.server, &resource) == sent.requests;
        if done || Instant::now() > deadline {
            break got.unwrap_or_else(|e| panic!("deriving current: {e}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(profile_requests(&pair.server, &resource), sent.requests);
    eprintln!("{}", spec.summary());
    eprintln!("driven {driven:.3} req/s over {} requests", sent.requests);
    assert!(
        (spec.rate_rps / driven - 1.0).abs() <= RATE_TOLERANCE,
        "derived {:.3} req/s, driven {driven:.3}",
        spec.rate_rps
    );
    let mix: BTreeMap<&str, (f64, u64)> = spec
        .mix
        .iter()
        .map(|m| (m.name.as_str(), (m.weight, m.keys)))
        .collect();
    let want: BTreeMap<&str, (f64, u64)> = sent
        .per_template
        .iter()
        .map(|(t, ts)| {
            let keys = if t.contains("{id}") {
                ts.paths.len() as u64
            } else {
                1
            };
            (
                t.as_str(),
                (ts.requests as f64 / sent.requests as f64, keys),
            )
        })
        .collect();
    assert_eq!(mix, want, "mix as sent");
    assert!(
        mix.contains_key("POST /bytes/{id}") && mix["GET /bytes/{id}"].1 == 3,
        "{mix:?}"
    );
    // Response sizes: the profile counts a response as its head plus its Content-Length
    // (`HeaderFields::message_size`), whether the body rode in the head's segment (with GSO
    // on the veth, a whole 20 kB answer is one segment) or followed it. The derived size is
    // what the test read, within the profile's two significant digits.
    for m in &spec.mix {
        let ts = &sent.per_template[&m.name];
        let read = (ts.head_bytes + ts.body_bytes) as f64 / ts.requests as f64;
        let derived = m.response_bytes as f64;
        assert!(
            (derived - read).abs() <= read * BYTES_TOLERANCE,
            "{}: derived {derived} B, read {read:.1} B on average",
            m.name,
        );
    }
    assert_eq!(
        spec.connections, CONNECTIONS,
        "connections the test held open"
    );

    // `peak` right after start: there is no fitted forecast yet, or (if the agent's windows
    // were short enough to fit one) the same mix at a positive rate.
    match derive_in(&pair.server, &resource, AgentLoad::Peak) {
        Ok(peak) => {
            assert!(peak.rate_rps > 0.0);
            assert_eq!(peak.mix, spec.mix);
        }
        Err(e) => assert!(matches!(e, FromAgentError::NoForecast { .. }), "{e}"),
    }

    // An unknown resource, through the library and the CLI: named, with the known list.
    let unknown = "nope.example@10.0.0.1:80";
    let err = derive_in(&pair.server, unknown, AgentLoad::Current).expect_err("unknown");
    let text = err.to_string();
    assert!(
        matches!(err, FromAgentError::UnknownResource { .. }),
        "{text}"
    );
    let expected = format!("\"{unknown}\" not known to the agent at {URL}; known: ");
    assert!(
        text.contains(&expected) && text.contains(&resource),
        "{text}"
    );
    let out = sweep_cli(
        Some(&pair.server),
        &["--from-agent", URL, "--resource", unknown],
    );
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(msg.contains(&expected) && msg.contains(&resource), "{msg}");

    // The CLI end to end: one real nginx trial driven at the derived load. It prints the load
    // first; the trial record carries the load's features and the shadow took that rate.
    let catalogue =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sweep/nginx-proxy-cache.toml");
    let records = dir.path().join("records.json");
    // `nsenter --net`, not `ip netns exec`: the latter remounts /sys for the namespace, which
    // hides the cgroup v1 hierarchies the trial needs.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", pair.server.name()))
        .arg(sweep_bin())
        .args(["run", "--out"])
        .arg(&records)
        .arg("--catalogue")
        .arg(&catalogue)
        .args([
            "--from-agent",
            URL,
            "--resource",
            &resource,
            "--explorer",
            "random",
            "--budget",
            "1",
        ])
        .output()
        .expect("running shadowtap-sweep");
    let printed = String::from_utf8_lossy(&out.stdout);
    eprintln!("{printed}");
    assert!(out.status.success(), "{printed}\n{}", stderr(&out));
    assert!(
        printed.starts_with(&format!("load agent:{resource}:current (Current): ")),
        "{printed}"
    );
    for m in &spec.mix {
        assert!(printed.contains(&m.name), "{printed}");
    }
    let records: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&records).expect("records written"))
            .expect("records JSON");
    let [record] = records.as_array().expect("records").as_slice() else {
        panic!("one trial record: {records}");
    };
    let load = &record["load"];
    let rate = load["rate_rps"].as_f64().expect("rate");
    // The record was taken at least a profile refresh later: the mean rate moves a little.
    assert!(
        (rate / spec.rate_rps - 1.0).abs() <= RATE_TOLERANCE,
        "{load}"
    );
    assert_eq!(
        load["concurrency"].as_f64(),
        Some(CONNECTIONS as f64),
        "{load}"
    );
    let names: BTreeSet<&str> = load["mix"]
        .as_object()
        .expect("mix")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, mix.keys().copied().collect(), "{load}");
    let kpis = &record["kpis"];
    let throughput = kpis["throughput_rps"].as_f64().expect("throughput");
    assert!(
        kpis["error_rate"].as_f64().expect("error rate") < 0.01
            && (throughput / rate - 1.0).abs() < 0.2,
        "the shadow took {throughput:.1} req/s of {rate:.1}: {kpis}\n{printed}"
    );

    let _ = stop_server(server);
    let _exit = stop_agent_cleanly(agent);
}

/// `requests` of the agent's profile of `resource` (0 before it has one).
fn profile_requests(ns: &Netns, resource: &str) -> u64 {
    let path = format!(
        "/v1/resources/{}/profile",
        shadowtap_core::http_client::percent_encode(resource)
    );
    let Ok((status, body)) = shadowtap_tests::scenario::api_get(ns, API, &path) else {
        return 0;
    };
    if !status.contains("200") {
        return 0;
    }
    let doc: serde_json::Value = serde_json::from_str(&body).expect("profile JSON");
    doc["resources"][0]["requests"].as_u64().unwrap_or(0)
}

/// Errors that need no agent: an unreachable agent names its URL; bad flag combinations are
/// refused before anything is fetched.
#[test]
fn cli_refuses_an_unreachable_agent_and_bad_combinations() {
    // Port 1 on loopback: nothing listens there.
    let out = sweep_cli(
        None,
        &[
            "--from-agent",
            "http://127.0.0.1:1",
            "--resource",
            "x@10.0.0.1:80",
        ],
    );
    assert!(!out.status.success());
    let msg = stderr(&out);
    assert!(
        msg.contains("the agent at http://127.0.0.1:1 is unreachable"),
        "{msg}"
    );
    for (args, says) in [
        (
            &["--resource", "x"][..],
            "the following required arguments were not provided",
        ),
        (&["--from-agent", URL][..], "--resource <ID>"),
        (
            &["--from-agent", URL, "--resource", "x", "--rate", "5"][..],
            "cannot be used with",
        ),
        (
            &["--from-agent", URL, "--resource", "x", "--load", "what-if"][..],
            "with --from-agent, --load is `current` or `peak`",
        ),
        (
            &[
                "--from-agent",
                URL,
                "--resource",
                "x",
                "--forecast-bound",
                "upper",
            ][..],
            "--forecast-bound applies to --load peak",
        ),
        (
            &["--forecast-bound", "upper"][..],
            "the following required arguments were not provided",
        ),
    ] {
        let out = sweep_cli(None, args);
        let msg = stderr(&out);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(msg.contains(says), "{args:?}: {msg}");
    }
}
