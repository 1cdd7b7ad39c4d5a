//! The closed-loop bed: a client and a server namespace joined by a veth pair. In the server
//! namespace: HAProxy on the veth address, a slow origin (a thread of this process, 20 ms per
//! request), the provisioner (haproxy driver) whose nginx instances cache the origin with a
//! bounded request rate each, and the agent tapping the veth. Everything dies with the bed:
//! processes are killed by their guards, the namespaces' drop kills whatever is left in them
//! (instances included), the work dir is removed; leftovers of a crashed run are swept by pid.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::{BedConfig, Strategy, Transport};
use crate::netns::{Netns, VethConfig, VethPair};
use crate::workdir::WorkDir;

/// HAProxy's frontend port on the server's veth address.
pub const FRONTEND_PORT: u16 = 8080;
const ORIGIN_PORT: u16 = 18_999;
const BACKEND: &str = "pool";
const AGENT_API: &str = "127.0.0.1:9464";
/// The Kafka run's broker and collector, on the server namespace's loopback.
const BROKER: &str = "127.0.0.1:19192";
const COLLECTOR_HTTP: &str = "127.0.0.1:9475";
const SCALE_EVENTS_TOPIC: &str = "shadowtap.scale-events";
const LIFECYCLE_TOPIC: &str = "shadowtap.lifecycle";

/// Runs `f` on a new thread that has entered network namespace `ns`.
pub fn in_namespace<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<Option<T>>> {
    let path = Path::new("/run/netns").join(ns.name());
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = thread::spawn(move || {
        // SAFETY: setns(2) on a valid namespace fd; it moves only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        let _ = tx.send(if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        });
        if rc != 0 {
            // The caller reports the error; do not run `f` in the wrong namespace.
            return None;
        }
        Some(f())
    });
    rx.recv()
        .context("namespace thread died")?
        .with_context(|| format!("setns into {}", ns.name()))?;
    Ok(handle)
}

/// A child killed (SIGKILL) and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The origin: answers every request after `delay`, cacheable for an hour.
struct Origin {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Option<()>>>,
}

impl Origin {
    fn start(ns: &Netns, delay: Duration) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = in_namespace(ns, move || {
            let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, ORIGIN_PORT)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = listener.set_nonblocking(true);
            let _ = tx.send(Ok(()));
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let flag = Arc::clone(&flag);
                        thread::spawn(move || serve_origin(stream, delay, &flag));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        })?;
        rx.recv()
            .context("origin thread died")?
            .context("binding the origin")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One keep-alive connection to the origin: heads only (nginx sends no request bodies here).
fn serve_origin(stream: TcpStream, delay: Duration, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut close = line.contains("HTTP/1.0");
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let lower = header.to_ascii_lowercase();
            if lower.starts_with("connection:") {
                close = lower.contains("close");
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
        }
        thread::sleep(delay);
        let body = format!("{path} {}\n", "x".repeat(400));
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nCache-Control: max-age=3600\r\n\
             Content-Type: text/plain\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(body.as_bytes()).is_err()
        {
            return;
        }
        if close {
            return;
        }
    }
}

/// The whole bed of one run.
pub struct Bed {
    agent: Option<Guard>,
    /// The Kafka run: nisshi, the collector and the topic recorder.
    broker: Option<Guard>,
    collector: Option<Guard>,
    tail: Option<Guard>,
    provisioner: Option<Guard>,
    provisioner_stdin: Option<ChildStdin>,
    haproxy: Option<Guard>,
    origin: Option<Origin>,
    pub pair: VethPair,
    pub dir: WorkDir,
    pub server_v4: Ipv4Addr,
}

impl Bed {
    /// Starts the namespaces, the origin and HAProxy (no instance yet).
    pub fn start(config: &BedConfig) -> Result<Self> {
        let pair = VethPair::create(VethConfig {
            ipv6: false,
            ..VethConfig::default()
        })
        .context("creating the veth pair")?;
        let server_v4 = pair.server_v4.context("server address")?;
        let dir = WorkDir::create("shadowtap-loop-");
        let origin = Origin::start(&pair.server, config.origin_delay)?;
        let mut bed = Self {
            agent: None,
            broker: None,
            collector: None,
            tail: None,
            provisioner: None,
            provisioner_stdin: None,
            haproxy: None,
            origin: Some(origin),
            pair,
            dir,
            server_v4,
        };
        bed.write_instance_script(config)?;
        bed.start_haproxy()?;
        Ok(bed)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.0.join(rel)
    }

    fn start_haproxy(&mut self) -> Result<()> {
        let d = self.dir.0.display();
        let config = format!(
            "global\n  stats socket {d}/admin.sock mode 600 level admin\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  \
             timeout server 10s\n  timeout queue 2s\n\
             frontend fe\n  bind {}:{FRONTEND_PORT}\n  default_backend {BACKEND}\n\
             backend {BACKEND}\n  balance roundrobin\n  http-request set-header X-Through-Lb 1\n  retry-on conn-failure\n  retries 1\n",
            self.server_v4
        );
        let cfg = self.path("haproxy.cfg");
        std::fs::write(&cfg, config).context("writing haproxy.cfg")?;
        let log = File::create(self.path("haproxy.log")).context("haproxy log")?;
        let mut cmd = self.pair.server.command("/usr/sbin/haproxy");
        cmd.arg("-db").arg("-f").arg(&cfg);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup")?)
            .stderr(log)
            .spawn()
            .context("starting haproxy")?;
        self.haproxy = Some(Guard(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.admin("show info").is_ok_and(|s| s.contains("HAProxy")) {
            if Instant::now() > deadline {
                bail!(
                    "haproxy did not come up: {}",
                    std::fs::read_to_string(self.path("haproxy.log")).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The instance command: after the provisioning delay, an nginx with its own cache, one
    /// worker and `limit_req` at the instance's capacity (excess waits in a burst queue, so
    /// overload shows as latency, then as 503s).
    fn write_instance_script(&self, config: &BedConfig) -> Result<()> {
        let d = self.dir.0.display();
        let rate = config.instance_capacity_rps;
        let burst = config.instance_burst;
        let delay = config.provision_delay.as_secs_f64();
        let mut s = String::new();
        writeln!(
            s,
            "#!/bin/sh\n# $1 name, $2 addr, $3 port\nset -e\nsleep {delay}"
        )?;
        writeln!(
            s,
            "d={d}/inst/$1\nmkdir -p $d/cache\ncat > $d/nginx.conf <<EOF"
        )?;
        writeln!(
            s,
            "user root;\nworker_processes 1;\ndaemon off;\nerror_log $d/error.log warn;\npid $d/nginx.pid;\n\
             events {{ worker_connections 1024; }}\nhttp {{\n  \
             log_format hits '\\$msec \\$upstream_cache_status \\$status \\$request_time \\$uri';\n  \
             access_log $d/access.log hits;\n  \
             proxy_cache_path $d/cache levels=1:2 keys_zone=c:8m max_size=200m inactive=1h;\n  \
             map \\$http_x_through_lb \\$cap_key {{ default \"\"; 1 \\$server_port; }}\n  \
             limit_req_zone \\$cap_key zone=cap:1m rate={rate}r/s;\n  \
             upstream origin {{ server 127.0.0.1:{ORIGIN_PORT}; keepalive 16; }}\n  \
             server {{\n    listen $2:$3;\n    location = /healthz {{ return 200 ok; }}\n    \
             location / {{\n      limit_req zone=cap burst={burst};\n      \
             proxy_pass http://origin;\n      proxy_http_version 1.1;\n      \
             proxy_set_header Connection \"\";\n      proxy_cache c;\n      \
             proxy_cache_valid 200 1h;\n      proxy_cache_lock on;\n    }}\n  }}\n}}\nEOF"
        )?;
        writeln!(s, "exec nginx -p $d -e $d/error.log -c $d/nginx.conf")?;
        std::fs::write(self.path("start-instance.sh"), s).context("writing the instance script")?;
        Ok(())
    }

    /// One runtime API command to HAProxy.
    pub fn admin(&self, command: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(self.path("admin.sock"))?;
        s.write_all(format!("{command}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// (name, weight) of the pool's servers.
    pub fn servers(&self) -> Result<Vec<(String, u32)>> {
        let text = self
            .admin(&format!("show servers state {BACKEND}"))
            .context("show servers state")?;
        // Lines after the version line and the `#` header: be_id be_name srv_id srv_name
        // srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight …
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#') && l.split_whitespace().count() > 8)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f[3].to_owned(), f[7].parse().ok()?))
            })
            .collect())
    }

    /// Starts the provisioner: in-process, reading scale events from its stdin and writing
    /// lifecycle events to a file the agent follows; through Kafka, consuming the collector's
    /// scale events and producing lifecycle events the collector reads back.
    pub fn start_provisioner(
        &mut self,
        config: &BedConfig,
        strategy: Strategy,
        transport: Transport,
    ) -> Result<()> {
        let d = self.dir.0.display().to_string();
        std::fs::create_dir_all(self.path("inst-logs")).context("creating inst-logs")?;
        let binary = super::binary("shadowtap-provisioner", "SHADOWTAP_PROVISIONER_BIN")?;
        let mut cmd = self.pair.server.command(binary);
        cmd.args([
            "--driver",
            "haproxy",
            "--haproxy-socket",
            &format!("{d}/admin.sock"),
            "--backend",
            BACKEND,
            "--state-file",
            &format!("{d}/pool.json"),
            "--instance-cmd",
            &format!("sh {d}/start-instance.sh {{name}} {{addr}} {{port}}"),
            "--name-prefix",
            "cl-",
            "--base-port",
            "19000",
            "--health-path",
            "/healthz",
            "--provision-timeout",
            "10s",
            "--ramp-time",
            "200ms",
            "--ramp-steps",
            "2",
            "--drain-timeout",
            "1s",
            "--stop-grace",
            "1s",
            "--log-dir",
            &format!("{d}/inst-logs"),
        ]);
        match transport {
            Transport::InProcess => {
                cmd.args(["--events-file", "-", "--lifecycle-out"]);
                cmd.arg(format!("{d}/lifecycle.jsonl"));
            }
            Transport::Kafka => {
                cmd.args(["--kafka-brokers", BROKER, "--group-id", "closed-loop"]);
                cmd.args([
                    "--topic",
                    SCALE_EVENTS_TOPIC,
                    "--lifecycle-topic",
                    LIFECYCLE_TOPIC,
                ]);
            }
        }
        if strategy.prewarm() {
            cmd.args([
                "--prewarm-profile",
                // Every resource's profile: the provisioner picks the scale event's resource.
                &format!("http://{AGENT_API}/v1/profile"),
                "--prewarm-requests",
                &config.prewarm_requests.to_string(),
                "--prewarm-time",
                &format!("{}ms", config.prewarm_time.as_millis()),
            ]);
        }
        let log = File::create(self.path("provisioner.log")).context("provisioner log")?;
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the provisioner")?;
        self.provisioner_stdin = child.stdin.take();
        self.provisioner = Some(Guard(child));
        Ok(())
    }

    /// Hands one scale event line to the provisioner (in-process runs).
    pub fn send_scale_event(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .provisioner_stdin
            .as_mut()
            .context("provisioner not started")?;
        stdin
            .write_all(format!("{}\n", line.trim_end()).as_bytes())
            .and_then(|()| stdin.flush())
            .context("writing to the provisioner")
    }

    /// Starts the agent on the server's veth end: deciding in-process with `policy`, or
    /// publishing its observations to the Kafka run's broker.
    pub fn start_agent(
        &mut self,
        policy: &Path,
        transport: Transport,
        extra: &[String],
    ) -> Result<()> {
        let binary = crate::agent::agent_binary()?;
        let d = self.dir.0.display().to_string();
        let mut cmd = self.pair.server.command(binary);
        cmd.args([
            "run",
            "--iface",
            &self.pair.server_if,
            "--mode",
            "host",
            "--xdp-mode",
            "skb",
            "--port",
            &FRONTEND_PORT.to_string(),
            "--observation-window",
            "1s",
            "--metrics-listen",
            AGENT_API,
            "--stats-interval",
            "10",
            // The decision path's delays are compressed with the series, as policy durations
            // are: the default 1 s lateness is 30 minutes of series time here, more than half
            // the policy's lead time. 100 ms still covers the ring's 10 ms drain many times
            // (late events are counted in the agent's `late_dropped`).
            "--lateness",
            "100ms",
            // A warm set can name only the ids a profile lists (32 per template by default).
            "--profile-values",
            "512",
        ])
        .args(extra);
        match transport {
            Transport::InProcess => {
                cmd.arg("--policy").arg(policy);
                cmd.args(["--scale-events", &format!("{d}/scale-events.jsonl")]);
                cmd.args(["--lifecycle-in", &format!("{d}/lifecycle.jsonl")]);
                // The fleet's state, saved at shutdown only (a save in the loop would hold
                // the ring's drain up): its merged demand history is the series the
                // forecaster saw, kept with the run's logs.
                let state = self.path("state");
                std::fs::create_dir_all(&state)
                    .with_context(|| format!("creating {}", state.display()))?;
                cmd.arg("--state-dir").arg(&state);
                cmd.args(["--snapshot-interval", "86400"]);
            }
            Transport::Kafka => {
                cmd.args([
                    "--kafka-brokers",
                    BROKER,
                    "--spool-dir",
                    &format!("{d}/spool"),
                ]);
            }
        }
        let log = File::create(self.path("agent.log")).context("agent log")?;
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        self.agent = Some(Guard(child));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = crate::bpf::attachments(&self.pair.server, &self.pair.server_if)?;
            if !found.xdp.is_empty() && found.has_tc_egress() {
                return Ok(());
            }
            if let Some(Guard(c)) = self.agent.as_mut()
                && let Some(status) = c.try_wait().context("polling the agent")?
            {
                bail!(
                    "agent exited ({status}): {}",
                    std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("agent did not attach within 60 s");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the agent with SIGINT (it writes its last decisions), then the rest.
    pub fn stop_agent(&mut self) {
        if let Some(Guard(c)) = self.agent.as_mut() {
            if let Ok(pid) = libc::pid_t::try_from(c.id()) {
                // SAFETY: kill(2) on our own unreaped child.
                unsafe { libc::kill(pid, libc::SIGINT) };
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(50));
            }
        }
        self.agent = None;
    }

    /// The Kafka run's middle: nisshi on the server namespace's loopback, the collector
    /// deciding with `policy` (scale events out, lifecycle events back in), and the recorder
    /// copying both topics into the same files the in-process run writes, for the report.
    pub fn start_kafka(&mut self, policy: &Path) -> Result<()> {
        let d = self.dir.0.display().to_string();
        let url = format!("tcp://{BROKER}");
        let nisshi = crate::support::require_tool("nisshi").context("the Kafka run")?;
        let mut broker = self.pair.server.command(nisshi);
        broker.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ]);
        broker.args(["--storage-engine", "memory://nisshi/"]);
        broker.args(["--group-initial-rebalance-delay", "0s"]);
        self.broker = Some(self.spawn_logged(broker, "nisshi.log")?);
        self.wait_listening(BROKER, "nisshi")?;

        let collector = super::binary("shadowtap-collector", "SHADOWTAP_COLLECTOR_BIN")?;
        let mut cmd = self.pair.server.command(collector);
        cmd.args(["--kafka-brokers", BROKER, "--policy"])
            .arg(policy)
            .args(["--scale-events-topic", SCALE_EVENTS_TOPIC])
            .args(["--lifecycle-topic", LIFECYCLE_TOPIC])
            .args(["--metrics-addr", COLLECTOR_HTTP])
            // One agent: close each window as soon as it reported (as the in-process
            // collector does), not after the multi-agent merge wait.
            .args(["--merge-wait", "0s", "--idle-close", "2s"])
            .env("RUST_LOG", "info,rdkafka=warn");
        self.collector = Some(self.spawn_logged(cmd, "collector.log")?);
        self.wait_listening(COLLECTOR_HTTP, "collector")?;

        let tail = super::binary("shadowtap-kafka-tail", "SHADOWTAP_KAFKA_TAIL_BIN")?;
        let mut cmd = self.pair.server.command(tail);
        cmd.args(["tail", "--brokers", BROKER, "--topic"])
            .arg(format!("{SCALE_EVENTS_TOPIC}={d}/scale-events.jsonl"))
            .arg("--topic")
            .arg(format!("{LIFECYCLE_TOPIC}={d}/lifecycle.jsonl"));
        self.tail = Some(self.spawn_logged(cmd, "kafka-tail.log")?);
        Ok(())
    }

    /// Publishes one scale event to the Kafka run's topic (the bootstrap event).
    pub fn publish_scale_event(&self, key: &str, line: &str) -> Result<()> {
        let tail = super::binary("shadowtap-kafka-tail", "SHADOWTAP_KAFKA_TAIL_BIN")?;
        let out = self
            .pair
            .server
            .command(tail)
            .args([
                "publish",
                "--brokers",
                BROKER,
                "--topic",
                SCALE_EVENTS_TOPIC,
            ])
            .args(["--key", key, line])
            .output()
            .context("running shadowtap-kafka-tail publish")?;
        if !out.status.success() {
            bail!(
                "publishing the scale event failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The collector's Prometheus page (the Kafka run).
    pub fn collector_metrics(&self) -> Result<String> {
        let addr: std::net::SocketAddr = COLLECTOR_HTTP.parse().context("collector address")?;
        let handle = in_namespace(&self.pair.server, move || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: collector\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })?;
        handle
            .join()
            .ok()
            .flatten()
            .context("the namespace thread died")?
            .context("reading the collector's /metrics")
    }

    fn spawn_logged(&self, mut cmd: std::process::Command, log: &str) -> Result<Guard> {
        let file = File::create(self.path(log)).with_context(|| format!("creating {log}"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("dup")?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting the process logging to {log}"))?;
        Ok(Guard(child))
    }

    fn wait_listening(&self, addr: &str, what: &str) -> Result<()> {
        let addr: std::net::SocketAddr = addr.parse().context("listen address")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .pair
            .server
            .tcp_connect(addr, Duration::from_millis(200))
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("{what} is not listening on {addr} after 30 s");
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    pub fn server_ns(&self) -> &Netns {
        &self.pair.server
    }

    pub fn client_ns(&self) -> &Netns {
        &self.pair.client
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.agent = None;
        self.collector = None;
        self.tail = None;
        self.broker = None;
        self.provisioner_stdin = None;
        self.provisioner = None;
        self.haproxy = None;
        self.origin = None;
        // Then `pair` (namespaces: kills the instances left in them) and `dir`.
    }
}
