//! The provisioner's live test bed: a network namespace of its own that the test thread enters
//! (so HAProxy, the provisioner, its nginx instances, nisshi and the test's own sockets all
//! live on that namespace's loopback), real HAProxy with an admin socket, and the provisioner
//! binary. Everything is cleaned up on every exit path: the namespace's drop kills whatever
//! still runs in it (instances included) and the work dir is removed; leftovers of a crashed
//! run (dead creator pid) are swept when the next run starts.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shadowtap_tests::netns::Netns;

static NEXT: AtomicU32 = AtomicU32::new(0);
const WORK_PREFIX: &str = "shadowtap-prov-";

/// True when the live tests can run here; prints why not otherwise.
pub fn can_run(test: &str) -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {test}: needs root (network namespaces, nginx, haproxy)");
        return false;
    }
    for tool in ["/usr/sbin/haproxy", "/usr/sbin/nginx"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} missing: `cargo xtask setup` installs haproxy and nginx-light"
        );
    }
    true
}

pub use shadowtap_tests::workdir::WorkDir;

/// Puts the calling thread into `ns` and back on drop (before the namespace itself goes: its
/// cleanup kills every process whose namespace it is).
struct Entered {
    original: File,
}

impl Entered {
    fn enter(ns: &Netns) -> Self {
        let original = File::open("/proc/thread-self/ns/net").expect("own netns");
        let target = File::open(Path::new("/run/netns").join(ns.name())).expect("test netns");
        // SAFETY: setns(2) with valid namespace fds; it affects only this thread.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        Self { original }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// A child killed (SIGKILL) and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fields drop in order: processes, then back to the original namespace, then the namespace
/// (killing what is left, e.g. instances of a SIGKILLed provisioner), then the files.
pub struct Bed {
    pub haproxy: Proc,
    entered: Entered,
    pub ns: Netns,
    pub dir: WorkDir,
    pub frontend_port: u16,
}

pub const BACKEND: &str = "app";

impl Bed {
    pub fn start() -> Self {
        let index = 200 + NEXT.fetch_add(1, Ordering::Relaxed);
        let ns = Netns::create(index, "p").expect("creating the namespace");
        ns.ip(["link", "set", "lo", "up"]).expect("lo up");
        let dir = WorkDir::create(WORK_PREFIX);
        let entered = Entered::enter(&ns);
        let frontend_port = 18_080;
        let d = dir.0.display();
        let config = format!(
            "global\n  stats socket {d}/admin.sock mode 600 level admin\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend fe\n  bind 127.0.0.1:{frontend_port}\n  default_backend {BACKEND}\n\
             backend {BACKEND}\n  balance roundrobin\n"
        );
        std::fs::write(dir.0.join("haproxy.cfg"), config).expect("haproxy.cfg");
        let script = format!(
            "#!/bin/sh\n# $1 name, $2 addr, $3 port: one nginx answering with its name.\nset -e\n\
             d={d}/inst/$1\nmkdir -p $d/www\necho \"$1\" > $d/www/index.html\n\
             cat > $d/nginx.conf <<EOF\nworker_processes 1;\ndaemon off;\n\
             error_log $d/error.log info;\npid $d/nginx.pid;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log $d/access.log;\n  server {{ listen $2:$3; root $d/www; \
             add_header X-Instance $1 always; }}\n}}\nEOF\n\
             exec nginx -p $d -e $d/error.log -c $d/nginx.conf\n"
        );
        std::fs::write(dir.0.join("start-nginx.sh"), script).expect("start script");
        let log = File::create(dir.0.join("haproxy.log")).expect("haproxy log");
        let child = Command::new("/usr/sbin/haproxy")
            .arg("-db")
            .arg("-f")
            .arg(dir.0.join("haproxy.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("starting haproxy");
        let bed = Self {
            haproxy: Proc(child),
            entered,
            ns,
            dir,
            frontend_port,
        };
        let ok = wait_for(Duration::from_secs(10), || {
            bed.admin("show info")
                .is_ok_and(|s| s.contains("Name: HAProxy"))
        });
        assert!(ok, "haproxy did not come up: {}", bed.read("haproxy.log"));
        bed
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.0.join(rel)
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    /// One runtime API command.
    pub fn admin(&self, command: &str) -> std::io::Result<String> {
        let mut s = UnixStream::connect(self.path("admin.sock"))?;
        s.write_all(format!("{command}\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// (name, weight, admin state) of the backend's servers.
    pub fn servers(&self) -> Vec<(String, u32, u8)> {
        let text = self
            .admin(&format!("show servers state {BACKEND}"))
            .expect("show servers");
        shadowtap_provisioner::haproxy::parse_servers_state(&text)
            .expect("servers state")
            .into_iter()
            .map(|s| (s.name, s.weight, s.admin_state))
            .collect()
    }

    /// The provisioner's base arguments for this bed (haproxy driver, lifecycle to a file).
    pub fn provisioner_args(&self, prefix: &str) -> Vec<String> {
        let d = self.dir.0.display();
        [
            "--driver",
            "haproxy",
            "--haproxy-socket",
            &format!("{d}/admin.sock"),
            "--backend",
            BACKEND,
            "--state-file",
            &format!("{d}/state.json"),
            "--instance-cmd",
            &format!("sh {d}/start-nginx.sh {{name}} {{addr}} {{port}}"),
            "--name-prefix",
            prefix,
            "--base-port",
            "19000",
            "--ramp-time",
            "400ms",
            "--ramp-steps",
            "4",
            "--drain-timeout",
            "5s",
            "--provision-timeout",
            "10s",
            "--backoff",
            "100ms",
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    /// Runs the provisioner; its stderr goes to `prov-<label>.log`.
    pub fn spawn_provisioner(&self, label: &str, args: &[String]) -> Proc {
        let log = File::create(self.path(&format!("prov-{label}.log"))).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_shadowtap-provisioner"))
            .args(args)
            .env("RUST_LOG", "info,rdkafka=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning the provisioner");
        Proc(child)
    }

    /// Runs the provisioner reading scale events from its stdin (`--events-file -`).
    pub fn spawn_provisioner_stdin(&self, label: &str, args: &[String]) -> Proc {
        let log = File::create(self.path(&format!("prov-{label}.log"))).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_shadowtap-provisioner"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning the provisioner");
        Proc(child)
    }

    /// Runs the provisioner to completion (an events file ends); panics with its log on failure.
    pub fn run_provisioner(&self, label: &str, args: &[String], timeout: Duration) {
        let mut p = self.spawn_provisioner(label, args);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = p.0.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "provisioner {label} failed ({status}):\n{}",
                    self.read(&format!("prov-{label}.log"))
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "provisioner {label} still running after {timeout:?}:\n{}",
                self.read(&format!("prov-{label}.log"))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// GET / through HAProxy: the `X-Instance` header of the answer.
    pub fn get_through_haproxy(&self) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.frontend_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        if !text.starts_with("HTTP/1.1 200") {
            return None;
        }
        text.lines()
            .find_map(|l| {
                l.strip_prefix("X-Instance: ")
                    .or_else(|| l.strip_prefix("x-instance: "))
            })
            .map(|v| v.trim().to_owned())
    }

    /// nginx processes started for this bed's instances (by their config path).
    pub fn nginx_pids(&self) -> Vec<u32> {
        let needle = format!("{}/inst/", self.dir.0.display());
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            // The worker's title is "nginx: worker process": count masters, whose command
            // line names the config.
            if cmdline.starts_with("nginx") && cmdline.contains(&needle) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Lifecycle events written so far.
    pub fn lifecycle(&self) -> Vec<serde_json::Value> {
        BufReader::new(File::open(self.path("lifecycle.jsonl")).expect("lifecycle file"))
            .lines()
            .map(|l| serde_json::from_str(&l.expect("line")).expect("lifecycle JSON"))
            .collect()
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A scale event (CloudEvent JSON, one line) for `resource` towards `target`.
pub fn scale_event(id: &str, resource: &str, current: u32, target: u32) -> String {
    let action = if target >= current {
        "scale_out"
    } else {
        "scale_in"
    };
    let event = serde_json::json!({
        "specversion": "1.0",
        "id": id,
        "source": "test",
        "type": if action == "scale_out" { "io.shadowtap.scale.out" } else { "io.shadowtap.scale.in" },
        "subject": resource,
        "time": "2023-11-14T22:13:20.000Z",
        "datacontenttype": "application/json",
        "data": {
            "schema_version": 1,
            "resource": resource,
            "action": action,
            "current_instances": current,
            "target_instances": target,
            "reason": if action == "scale_out" { "forecast_above_target" } else { "forecast_below_target" },
            "stage": "provision",
            "lifecycle": [],
            "decided_at_ms": 1_700_000_000_000_u64,
            "explanation": {
                "summary": "test", "window_start_ms": 0, "window_end_ms": 0, "forecast": [],
                "level": 0.9, "widening": 1.0, "model": null, "peak_upper": 0.0,
                "peak_point": 0.0, "peak_at_ms": 0, "headroom": 0.0,
                "threshold_per_instance": 100.0, "required_instances": target,
                "stabilised_instances": target
            },
            "window": {
                "start_ms": 0, "end_ms": 1000, "agents": ["a"],
                "counts": {
                    "requests": 1, "responses": 1, "errors": 0, "error_rate": 0.0,
                    "bytes_in": 0, "bytes_out": 0, "latency_samples": 0, "latency_p50_us": 0,
                    "latency_p99_us": 0, "latency_max_us": 0, "top_endpoints": [],
                    "endpoints_other": 0
                }
            }
        }
    });
    let line = event.to_string();
    // The test events must be what the provisioner parses.
    serde_json::from_str::<shadowtap_core::ScaleEvent>(&line).expect("a valid scale event");
    line
}

/// Validates every lifecycle event against the schema.
pub fn assert_schema_valid(events: &[serde_json::Value]) {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schema/lifecycle.schema.json"
        ))
        .expect("schema file"),
    )
    .expect("schema JSON");
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    for e in events {
        let errors: Vec<String> = validator
            .iter_errors(e)
            .map(|err| err.to_string())
            .collect();
        assert!(errors.is_empty(), "{e}\n{errors:#?}");
    }
}
