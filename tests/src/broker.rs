//! A real Kafka-protocol broker (`nisshi`, in memory) inside a test namespace, and waiting for
//! a process in a namespace to listen.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use crate::{Error, Result, netns::Netns, process::BackgroundProcess, support::require_tool};

/// Starts `nisshi broker` on `addr` inside `ns` (memory storage, no initial rebalance delay)
/// and waits until it accepts connections. Logs go to `log_dir`.
pub fn start_nisshi(ns: &Netns, addr: SocketAddr, log_dir: &Path) -> Result<BackgroundProcess> {
    let nisshi = require_tool("nisshi")?;
    let url = format!("tcp://{addr}");
    let mut cmd = ns.command(&nisshi);
    cmd.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
        "--storage-engine",
        "memory://nisshi/",
        "--group-initial-rebalance-delay",
        "0s",
    ]);
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
