//! Network namespaces for live tests: a client and a server namespace joined by a veth pair.
//!
//! Every address lives only inside namespaces created here (10.233.N.0/24 and
//! `fd00:5a:0:N::/64`), so test traffic never reaches a host interface.
//!
//! Names carry the creating pid so leftovers of a crashed run can be told apart from a live run:
//! namespaces are `stap-<pid>-<n>-c|s`, interfaces `s<pid>-<n>c|s` (at most 15 bytes). The veth
//! ends are created directly inside their namespaces and never exist in the host namespace.
//! Deleting a namespace destroys its veth end, which destroys the pair and with it every XDP or
//! tc attachment; [`Netns`] does that on drop, after killing any process still inside.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::process::{BackgroundProcess, describe, run_checked};

/// Prefix of every namespace this harness creates.
pub const NS_PREFIX: &str = "stap-";
const MAX_IFNAME: usize = 15;

static NEXT_INDEX: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

fn ip() -> Command {
    Command::new("ip")
}

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A network namespace owned by this process; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Connects a TCP socket from inside this namespace (a short-lived thread joins it; the
    /// socket keeps working from any thread afterwards).
    pub fn tcp_connect(
        &self,
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> Result<std::net::TcpStream> {
        use std::os::fd::AsRawFd as _;
        let ns_path = Path::new("/run/netns").join(self.name());
        thread::spawn(move || -> Result<std::net::TcpStream> {
            let f = std::fs::File::open(&ns_path).map_err(crate::error::io_context(format!(
                "opening {}",
                ns_path.display()
            )))?;
            // SAFETY: setns(2) on a valid namespace fd; only this short-lived thread moves.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(Error::Io {
                    context: format!("setns into {}", ns_path.display()),
                    source: std::io::Error::last_os_error(),
                });
            }
            std::net::TcpStream::connect_timeout(&addr, timeout)
                .map_err(crate::error::io_context(format!("connecting to {addr}")))
        })
        .join()
        .map_err(|_| Error::Precondition("connect thread panicked".to_owned()))?
    }

    /// Creates `stap-<pid>-<index>-<role>`. The first call in a process sweeps leftovers of
    /// earlier runs.
    pub fn create(index: u32, role: &str) -> Result<Self> {
        sweep_once();
        let name = format!("{NS_PREFIX}{}-{index}-{role}", std::process::id());
        run_checked(ip().args(["netns", "add", &name]))?;
        Ok(Self { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <ns> <program>`; add arguments to the returned command. `ip` execs the
    /// program in place, so the spawned pid is the program itself.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = ip();
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a short command inside the namespace; fails unless it exits 0.
    pub fn run<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(self.command(program).args(args))
    }

    /// Starts a background process inside the namespace (killed when the guard drops).
    pub fn spawn<I, S>(
        &self,
        program: impl AsRef<OsStr>,
        args: I,
        label: &str,
        log_dir: &Path,
    ) -> Result<BackgroundProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args);
        BackgroundProcess::spawn(cmd, label, log_dir)
    }

    /// `ip -n <ns> <args>`; returns stdout.
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let output = run_checked(ip().args(["-n", &self.name]).args(args))?;
        Ok(stdout_of(&output))
    }

    /// Sets a sysctl inside the namespace (`net.*` keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run("sysctl", ["-q", "-w", &format!("{key}={value}")])?;
        Ok(())
    }

    /// `ip -d -j link show dev IF` as JSON (the single link object).
    pub fn link_json(&self, ifname: &str) -> Result<Value> {
        let text = self.ip(["-d", "-j", "link", "show", "dev", ifname])?;
        let parsed: Value = serde_json::from_str(&text).map_err(|e| Error::Parse {
            source_name: format!("ip -n {} -j link show dev {ifname}", self.name),
            reason: e.to_string(),
        })?;
        parsed.get(0).cloned().ok_or_else(|| Error::Parse {
            source_name: format!("ip -n {} -j link show dev {ifname}", self.name),
            reason: "empty list".to_owned(),
        })
    }

    /// TCP segments this namespace has retransmitted (`RetransSegs` of `/proc/net/snmp`,
    /// which is per namespace).
    pub fn tcp_retransmits(&self) -> Result<u64> {
        let output = self.run("cat", ["/proc/net/snmp"])?;
        retrans_segs(&stdout_of(&output)).ok_or_else(|| Error::Parse {
            source_name: format!("/proc/net/snmp in {}", self.name),
            reason: "no Tcp RetransSegs".to_owned(),
        })
    }

    /// Interface counters (`ip -s -j link show`).
    pub fn link_stats(&self, ifname: &str) -> Result<LinkStats> {
        let text = self.ip(["-s", "-j", "link", "show", "dev", ifname])?;
        LinkStats::from_ip_json(&text).map_err(|reason| Error::Parse {
            source_name: format!("ip -n {} -s -j link show dev {ifname}", self.name),
            reason,
        })
    }

    /// Pids of processes whose network namespace is this one.
    pub fn pids(&self) -> Result<Vec<u32>> {
        pids_in(&self.name)
    }

    /// Waits until the interface reports operstate UP (carrier on both veth ends).
    pub fn wait_link_up(&self, ifname: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let link = self.link_json(ifname)?;
            let state = link.get("operstate").and_then(Value::as_str).unwrap_or("");
            if state == "UP" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{ifname} in {} up", self.name),
                    timeout,
                    detail: format!("operstate {state}"),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete_namespace(&self.name) {
            eprintln!("cleaning up namespace {}: {e}", self.name);
        }
    }
}

fn pids_in(name: &str) -> Result<Vec<u32>> {
    let output = run_checked(ip().args(["netns", "pids", name]))?;
    Ok(stdout_of(&output)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Kills what still runs inside a namespace we created (those are our own processes: nothing
/// else is started in these namespaces), then deletes it.
fn delete_namespace(name: &str) -> Result<()> {
    for pid in pids_in(name).unwrap_or_default() {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    run_checked(ip().args(["netns", "del", name]))?;
    Ok(())
}

fn sweep_once() {
    SWEEP.call_once(|| match sweep_stale_namespaces() {
        Ok(removed) if !removed.is_empty() => {
            eprintln!("removed stale namespaces of earlier runs: {removed:?}");
        }
        Ok(_) => {}
        Err(e) => eprintln!("sweeping stale namespaces: {e}"),
    });
}

/// The pid encoded in a harness namespace name, if it is one.
pub fn creator_pid(ns_name: &str) -> Option<u32> {
    ns_name
        .strip_prefix(NS_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Removes `stap-*` namespaces whose creating process is gone. Returns the names removed.
pub fn sweep_stale_namespaces() -> Result<Vec<String>> {
    let output = run_checked(ip().args(["netns", "list"]))?;
    let mut removed = Vec::new();
    for line in stdout_of(&output).lines() {
        // Lines look like `name` or `name (id: 3)`.
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = creator_pid(name) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete_namespace(name)?;
        removed.push(name.to_owned());
    }
    Ok(removed)
}

/// Lists the names of namespaces that exist now.
pub fn list_namespaces() -> Result<Vec<String>> {
    let output = run_checked(ip().args(["netns", "list"]))?;
    Ok(stdout_of(&output)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// Counters of one interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub rx_errors: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
    pub tx_errors: u64,
}

impl LinkStats {
    fn from_ip_json(text: &str) -> std::result::Result<Self, String> {
        let parsed: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let stats = parsed
            .get(0)
            .and_then(|l| l.get("stats64"))
            .ok_or("no stats64 object")?;
        let field = |dir: &str, name: &str| {
            stats
                .get(dir)
                .and_then(|d| d.get(name))
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("no stats64.{dir}.{name}"))
        };
        Ok(Self {
            rx_packets: field("rx", "packets")?,
            rx_bytes: field("rx", "bytes")?,
            rx_dropped: field("rx", "dropped")?,
            rx_errors: field("rx", "errors")?,
            tx_packets: field("tx", "packets")?,
            tx_bytes: field("tx", "bytes")?,
            tx_dropped: field("tx", "dropped")?,
            tx_errors: field("tx", "errors")?,
        })
    }

    /// Counter growth since `earlier`.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
            rx_dropped: self.rx_dropped.saturating_sub(earlier.rx_dropped),
            rx_errors: self.rx_errors.saturating_sub(earlier.rx_errors),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
            tx_dropped: self.tx_dropped.saturating_sub(earlier.tx_dropped),
            tx_errors: self.tx_errors.saturating_sub(earlier.tx_errors),
        }
    }
}

/// How to build a [`VethPair`].
#[derive(Clone, Copy, Debug)]
pub struct VethConfig {
    pub mtu: u32,
    /// Configure `10.233.N.1/24` (client) and `.2` (server).
    pub ipv4: bool,
    /// Configure `fd00:5a:0:N::1/64` and `::2` (nodad). When false IPv6 is disabled on both ends,
    /// so the kernel sends nothing of its own (no router solicitations, no MLD) on the link.
    pub ipv6: bool,
}

impl Default for VethConfig {
    fn default() -> Self {
        Self {
            mtu: 1500,
            ipv4: true,
            ipv6: true,
        }
    }
}

/// `RetransSegs` from `/proc/net/snmp`: a `Tcp:` header line naming the fields, then a `Tcp:`
/// line of values.
fn retrans_segs(snmp: &str) -> Option<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let names = tcp.next()?;
    let values = tcp.next()?;
    let at = names.split_whitespace().position(|n| n == "RetransSegs")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Two namespaces joined by a veth pair. Field order is drop order: the namespaces (and with
/// them the veth ends) go away when this is dropped.
#[derive(Debug)]
pub struct VethPair {
    pub client: Netns,
    pub server: Netns,
    pub client_if: String,
    pub server_if: String,
    pub client_v4: Option<Ipv4Addr>,
    pub server_v4: Option<Ipv4Addr>,
    pub client_v6: Option<Ipv6Addr>,
    pub server_v6: Option<Ipv6Addr>,
    pub mtu: u32,
}

impl VethPair {
    pub fn create(config: VethConfig) -> Result<Self> {
        let index = NEXT_INDEX.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let client_if = format!("s{pid}-{index}c");
        let server_if = format!("s{pid}-{index}s");
        if client_if.len() > MAX_IFNAME {
            return Err(Error::Precondition(format!(
                "interface name {client_if} longer than {MAX_IFNAME} bytes"
            )));
        }
        let client = Netns::create(index, "c")?;
        let server = Netns::create(index, "s")?;
        for ns in [&client, &server] {
            // No duplicate address detection: addresses are usable at once.
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            if !config.ipv6 {
                ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
                ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
            }
        }
        let mtu = config.mtu.to_string();
        run_checked(ip().args([
            "link",
            "add",
            "name",
            &client_if,
            "netns",
            client.name(),
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            &server_if,
            "netns",
            server.name(),
            "mtu",
            &mtu,
        ]))?;

        let octet = index % 250 + 1;
        let (client_v4, server_v4) = if config.ipv4 {
            let c = Ipv4Addr::new(10, 233, octet as u8, 1);
            let s = Ipv4Addr::new(10, 233, octet as u8, 2);
            client.ip(["addr", "add", &format!("{c}/24"), "dev", &client_if])?;
            server.ip(["addr", "add", &format!("{s}/24"), "dev", &server_if])?;
            (Some(c), Some(s))
        } else {
            (None, None)
        };
        let (client_v6, server_v6) = if config.ipv6 {
            let c = Ipv6Addr::new(0xfd00, 0x5a, 0, index as u16, 0, 0, 0, 1);
            let s = Ipv6Addr::new(0xfd00, 0x5a, 0, index as u16, 0, 0, 0, 2);
            client.ip([
                "addr",
                "add",
                &format!("{c}/64"),
                "dev",
                &client_if,
                "nodad",
            ])?;
            server.ip([
                "addr",
                "add",
                &format!("{s}/64"),
                "dev",
                &server_if,
                "nodad",
            ])?;
            (Some(c), Some(s))
        } else {
            (None, None)
        };
        for (ns, ifname) in [(&client, &client_if), (&server, &server_if)] {
            ns.ip(["link", "set", "dev", "lo", "up"])?;
            ns.ip(["link", "set", "dev", ifname.as_str(), "up"])?;
        }
        for (ns, ifname) in [(&client, &client_if), (&server, &server_if)] {
            ns.wait_link_up(ifname, Duration::from_secs(5))?;
        }
        Ok(Self {
            client,
            server,
            client_if,
            server_if,
            client_v4,
            server_v4,
            client_v6,
            server_v6,
            mtu: config.mtu,
        })
    }

    /// Fails unless a veth with our name exists in the host namespace (it never should).
    pub fn assert_not_in_host_namespace(&self) -> Result<()> {
        for ifname in [&self.client_if, &self.server_if] {
            let mut cmd = ip();
            cmd.args(["link", "show", "dev", ifname.as_str()]);
            let output = cmd.output().map_err(crate::error::io_context(format!(
                "running `{}`",
                describe(&cmd)
            )))?;
            if output.status.success() {
                return Err(Error::Precondition(format!(
                    "{ifname} exists in the host namespace"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn retransmitted_segments_are_read_from_snmp() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
            Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n\
            Tcp: 1 200 120000 -1 12 12 0 0 0 420 431 3 0 0 0\n\
            Udp: InDatagrams\nUdp: 0\n";
        assert_eq!(super::retrans_segs(snmp), Some(3));
        assert_eq!(super::retrans_segs("Udp: InDatagrams\nUdp: 0\n"), None);
    }
}
