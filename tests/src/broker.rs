//! A real Kafka-protocol broker (`nisshi`, in memory): inside a test namespace, or on
//! 127.0.0.1 and a free port for tests that need no namespace ([`LoopbackBroker`]); and
//! waiting for a process in a namespace to listen.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    Error, Result, error::io_context, netns::Netns, process::BackgroundProcess,
    support::require_tool,
};

/// `nisshi broker` listening on `url`: in memory, no initial rebalance delay (consumer groups
/// form at once, as tests need).
fn broker_args(url: &str) -> [&str; 9] {
    [
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://nisshi/",
        "--group-initial-rebalance-delay",
        "0s",
    ]
}

/// The broker binary: `$NISSHI`, else `nisshi` on the PATH, else `~/.cargo/bin/nisshi`
/// (where `cargo xtask setup` installs it).
fn nisshi_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("NISSHI") {
        return Ok(PathBuf::from(path));
    }
    require_tool("nisshi").or_else(|err| {
        std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".cargo/bin/nisshi"))
            .filter(|path| path.is_file())
            .ok_or(err)
    })
}

/// Starts `nisshi broker` on `addr` inside `ns` (memory storage, no initial rebalance delay)
/// and waits until it accepts connections. Logs go to `log_dir`.
pub fn start_nisshi(ns: &Netns, addr: SocketAddr, log_dir: &Path) -> Result<BackgroundProcess> {
    let nisshi = nisshi_binary()?;
    let url = format!("tcp://{addr}");
    let mut cmd = ns.command(&nisshi);
    cmd.args(broker_args(&url));
    let broker = BackgroundProcess::spawn(cmd, "nisshi", log_dir)?;
    wait_listening(ns, addr, &broker, Duration::from_secs(30))?;
    Ok(broker)
}

/// Waits until something accepts TCP connections on `addr` inside `ns`; fails early with the
/// process's stderr if `process` exits.
pub fn wait_listening(
    ns: &Netns,
    addr: SocketAddr,
    process: &BackgroundProcess,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while ns.tcp_connect(addr, Duration::from_millis(200)).is_err() {
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("{} listening on {addr}", process.label()),
                timeout,
                detail: process.stderr_tail(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// nisshi on 127.0.0.1 and a free port, for tests that need a broker but no namespace. An
/// outage is played by freezing it ([`pause`](Self::pause), SIGSTOP: clients see a broker
/// that accepts nothing); it is killed on drop, thawed first if paused.
pub struct LoopbackBroker {
    child: Child,
    port: u16,
    paused: bool,
}

impl LoopbackBroker {
    /// Starts the broker and waits (up to 20 s) until it accepts connections.
    ///
    /// # Panics
    /// When nisshi is missing, exits at start or does not listen in time: a test cannot go on
    /// without its broker, and the message says which.
    #[must_use]
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|err| panic!("{err}"))
    }

    /// [`start`](Self::start), with the failure as an error.
    pub fn try_start() -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(io_context("finding a free loopback port"))?;
        let url = format!("tcp://127.0.0.1:{port}");
        let nisshi = nisshi_binary()?;
        let child = Command::new(&nisshi)
            .args(broker_args(&url))
            .arg("--silent")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_context(format!(
                "starting {} (installed by `cargo xtask setup`)",
                nisshi.display()
            )))?;
        let mut broker = Self {
            child,
            port,
            paused: false,
        };
        let timeout = Duration::from_secs(20);
        let deadline = Instant::now() + timeout;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                return Err(Error::Precondition(format!(
                    "nisshi exited at start: {status}"
                )));
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("nisshi listening on 127.0.0.1:{port}"),
                    timeout,
                    detail: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    #[must_use]
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Freezes the broker (SIGSTOP).
    ///
    /// # Panics
    /// When the signal cannot be sent (the broker is gone).
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = true;
    }

    /// Thaws it (SIGCONT).
    ///
    /// # Panics
    /// As [`pause`](Self::pause).
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(libc::pid_t::MAX);
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) of nisshi failed");
    }
}

impl Drop for LoopbackBroker {
    fn drop(&mut self) {
        if self.paused {
            // SAFETY: as in `signal`; a failure here only means the broker is gone already.
            if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
