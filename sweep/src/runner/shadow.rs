//! Starting, checking and stopping one shadow: the catalogue's templates filled with a
//! trial's values, the start command run inside the trial's namespace and cgroup.

use std::collections::BTreeMap;
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TrialError;
use super::cgroup::Cgroup;
use super::netns::Netns;
use crate::catalogue::Catalogue;
use crate::catalogue::template::render;
use crate::trial::Params;

/// A running shadow. Dropping it kills everything in its cgroup.
pub struct Shadow<'a> {
    child: Child,
    cgroup: &'a Cgroup,
    ns: &'a Netns,
    values: BTreeMap<String, String>,
    stop_template: Option<String>,
    pub listen: SocketAddr,
    dir: PathBuf,
}

fn setup(context: &str) -> impl FnOnce(io::Error) -> TrialError + '_ {
    move |e| TrialError::Setup(format!("{context}: {e}"))
}

/// The last lines of a file, for failure reports.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

impl<'a> Shadow<'a> {
    /// Renders the config, starts the service and waits until it answers its health check.
    pub fn start(
        catalogue: &Catalogue,
        params: &Params,
        dir: &Path,
        ns: &'a Netns,
        cgroup: &'a Cgroup,
        origin: SocketAddr,
    ) -> Result<Self, TrialError> {
        let listen: SocketAddr = ([127, 0, 0, 1], catalogue.shadow.port).into();
        let mut values = catalogue.rendered_values(params);
        let config = dir.join(&catalogue.apply.config_file);
        values.insert("dir".into(), dir.display().to_string());
        values.insert("config".into(), config.display().to_string());
        values.insert("listen".into(), listen.to_string());
        values.insert("origin".into(), origin.to_string());
        if let Some(t) = &catalogue.apply.config {
            std::fs::write(&config, render(t, &values)).map_err(setup("writing the config"))?;
        }
        let mut argv: Vec<String> = render(&catalogue.shadow.start, &values)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        argv.extend(catalogue.apply.flags.iter().map(|f| render(f, &values)));
        let log = |name: &str| {
            std::fs::File::create(dir.join(name)).map_err(setup("creating the shadow's log"))
        };
        let mut cmd = Command::new("ip");
        cmd.args(ns.exec_prefix())
            .args(&argv)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log("stdout.log")?)
            .stderr(log("stderr.log")?);
        for (k, v) in &catalogue.apply.env {
            cmd.env(k, render(v, &values));
        }
        let procs = cgroup.procs_files();
        // SAFETY: between fork and exec only open(2), write(2) and close(2) run, all
        // async-signal-safe, on paths prepared before the fork; writing "0" to cgroup.procs
        // moves the child itself, so every process the service forks starts inside the group.
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if n != 1 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| TrialError::StartFailed(format!("{}: {e}", argv.join(" "))))?;
        let mut shadow = Self {
            child,
            cgroup,
            ns,
            values,
            stop_template: catalogue.shadow.stop.clone(),
            listen,
            dir: dir.to_owned(),
        };
        shadow.wait_healthy(
            &catalogue.shadow.health_path,
            Duration::from_millis(catalogue.shadow.health_timeout_ms),
        )?;
        if let Some(admin) = &catalogue.apply.admin {
            let path = render(&admin.path, &shadow.values);
            let body = render(&admin.body, &shadow.values);
            let status = http_call(ns, listen, &admin.method, &path, &body)
                .map_err(|e| TrialError::Unhealthy(format!("admin call {path}: {e}")))?;
            if !(200..300).contains(&status) {
                return Err(TrialError::Unhealthy(format!(
                    "admin call {path}: status {status}"
                )));
            }
        }
        Ok(shadow)
    }

    fn failure_detail(&self) -> String {
        format!(
            "stderr: {} ; error.log: {}",
            tail(&self.dir.join("stderr.log")),
            tail(&self.dir.join("error.log"))
        )
    }

    fn wait_healthy(&mut self, path: &str, timeout: Duration) -> Result<(), TrialError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(TrialError::StartFailed(format!(
                    "exited with {status} before it was healthy; {}",
                    self.failure_detail()
                )));
            }
            if let Ok(s) = http_call(self.ns, self.listen, "GET", path, "")
                && (200..300).contains(&s)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TrialError::Unhealthy(format!(
                    "no 2xx on {path} within {timeout:?}; {}",
                    self.failure_detail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the stop command, gives the service a moment, then kills what is left.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(t) = &self.stop_template {
            let argv: Vec<String> = render(t, &self.values)
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            let _ = Command::new("ip")
                .args(self.ns.exec_prefix())
                .args(&argv)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.cgroup.kill_all();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Shadow<'_> {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) || !self.cgroup.pids().is_empty() {
            self.stop_now();
        }
    }
}

/// One HTTP/1.1 request from inside the namespace; returns the status.
pub fn http_call(
    ns: &Netns,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> io::Result<u16> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: shadow\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let stream = ns
        .run_in(move || TcpStream::connect_timeout(&addr, Duration::from_millis(500)))?
        .join()
        .map_err(|_| io::Error::other("connect thread panicked"))??;
    let mut stream = stream;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(request.as_bytes())?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no status line in {text:?}")))
}
