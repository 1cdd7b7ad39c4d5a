//! What `bench live` sets up around the measurements, each piece undone by its guard's `Drop`:
//! Ctrl-C handling, the `kernel.bpf_stats_enabled` sysctl, a scratch directory, the two
//! namespaces with nginx in the server one, and the tc mirror for tap mode.
//!
//! Guards are dropped in reverse order of creation (locals of `bench_live::run`), so nginx
//! stops before its namespace goes, and the namespaces go before the scratch directory.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use shadowtap_tests::{
    netns::{self, Netns, VethConfig, VethPair},
    process::BackgroundProcess,
};

use crate::{
    setup,
    util::{self, output},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C, SIGTERM and SIGHUP only set a flag: the bench notices it within ~50 ms, returns an
/// error, and every guard's `Drop` runs. Dying on the signal would leave the namespaces, nginx
/// and the sysctl behind. (Children in our process group get Ctrl-C too; nginx, tcpdump, wrk and
/// the agent all stop cleanly on it.)
pub fn install_signal_handlers() -> Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: an all-zero sigaction is a valid value to fill in.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe; the
        // pointers are to live locals.
        let rc = unsafe {
            libc::sigemptyset(&raw mut action.sa_mask);
            libc::sigaction(signal, &raw const action, std::ptr::null_mut())
        };
        if rc != 0 {
            bail!(
                "installing a handler for signal {signal}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Fails once a stop signal has arrived.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

/// Sleeps, waking early (with an error) on a stop signal.
pub fn sleep(duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    loop {
        check_interrupted()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled`, restored to its value at start on drop. While we hold it changed,
/// `<target>/bench-live-bpf-stats.orig` records the original and our pid, so a run that was
/// SIGKILLed (no destructors) is repaired by the next one.
pub struct BpfStatsSysctl {
    original: String,
    marker: PathBuf,
}

impl BpfStatsSysctl {
    pub fn take() -> Result<Self> {
        let marker = util::target_dir().join("bench-live-bpf-stats.orig");
        if let Ok(text) = std::fs::read_to_string(&marker) {
            let mut parts = text.split_whitespace();
            let (value, pid) = (parts.next().unwrap_or("0"), parts.next().unwrap_or("0"));
            if !Path::new(&format!("/proc/{pid}")).exists() {
                write_sysctl(value)?;
                eprintln!(
                    "xtask: restored kernel.bpf_stats_enabled={value} left changed by run {pid}"
                );
                let _ = std::fs::remove_file(&marker);
            }
        }
        let original = std::fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_owned();
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&marker, format!("{original} {}\n", std::process::id()))
            .with_context(|| format!("writing {}", marker.display()))?;
        let guard = Self { original, marker };
        guard.set(false)?;
        Ok(guard)
    }

    pub fn original(&self) -> &str {
        &self.original
    }

    // A method so that only the guard's holder toggles the sysctl.
    #[allow(clippy::unused_self)]
    pub fn set(&self, on: bool) -> Result<()> {
        write_sysctl(if on { "1" } else { "0" })
    }
}

impl Drop for BpfStatsSysctl {
    fn drop(&mut self) {
        match write_sysctl(&self.original) {
            Ok(()) => {
                let _ = std::fs::remove_file(&self.marker);
            }
            Err(e) => eprintln!(
                "xtask: could not restore kernel.bpf_stats_enabled={}: {e:#}",
                self.original
            ),
        }
    }
}

fn write_sysctl(value: &str) -> Result<()> {
    std::fs::write(BPF_STATS, value).with_context(|| format!("writing {value} to {BPF_STATS}"))
}

/// A scratch directory under /tmp (nginx prefix, logs, stats files, captures), removed on drop.
/// World-readable because nginx's worker runs as `nobody`.
pub struct WorkDir {
    pub path: PathBuf,
}

impl WorkDir {
    pub fn create() -> Result<Self> {
        sweep_stale_work_dirs();
        let path = std::env::temp_dir().join(format!("{WORK_PREFIX}{}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing stale {}", path.display()))?;
        }
        std::fs::create_dir_all(path.join("www"))
            .with_context(|| format!("creating {}", path.display()))?;
        util::run(Command::new("chmod").args(["-R", "0755"]).arg(&path))?;
        Ok(Self { path })
    }
}

const WORK_PREFIX: &str = "shadowtap-bench-live-";

/// Removes scratch directories of runs that were SIGKILLed (their pid is gone).
fn sweep_stale_work_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(WORK_PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists() {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => eprintln!(
                    "xtask: removed {} left by an earlier run",
                    entry.path().display()
                ),
                Err(e) => eprintln!("xtask: removing {}: {e}", entry.path().display()),
            }
        }
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("xtask: removing {}: {e}", self.path.display());
        }
    }
}

/// `setup::bench_live` (Debian's nginx-light, wrk, tcpdump, bpftool and the eBPF toolchain).
pub fn install_tools() -> Result<()> {
    let had_nginx = nginx_installed();
    setup::bench_live()?;
    // On a systemd host the package starts nginx on port 80 of the host; we only want it inside
    // the namespace, so stop the service that this install just started (never one that was
    // there before).
    if !had_nginx
        && output(Command::new("systemctl").args(["is-active", "nginx"]))
            .is_some_and(|s| s.trim() == "active")
    {
        util::run(Command::new("systemctl").args(["disable", "--now", "nginx"]))?;
    }
    Ok(())
}

fn nginx_installed() -> bool {
    shadowtap_tests::process::find_in_path("nginx").is_some()
        || Path::new("/usr/sbin/nginx").is_file()
}

/// What every configuration shares: the namespaces, nginx, and an idle mirror veth pair in the
/// server namespace for tap mode.
pub struct Testbed {
    pub pair: VethPair,
    pub server_v4: Ipv4Addr,
    pub port: u16,
    /// Mirror pair inside the server namespace: tc copies the server veth's traffic into
    /// `mirror_in`; the tap-mode agent sits on `mirror_out`.
    pub mirror_in: String,
    pub mirror_out: String,
    classifier: &'static [&'static str],
}

pub const PORT: u16 = 8080;
/// The static file size.
pub const FILE_BYTES: usize = 300;

impl Testbed {
    pub fn create() -> Result<Self> {
        for stale in netns::sweep_stale_namespaces()? {
            eprintln!("xtask: removed namespace {stale} left by an earlier run");
        }
        // IPv4 only: with IPv6 off the kernel sends nothing of its own on the link.
        let pair = VethPair::create(VethConfig {
            ipv6: false,
            ..VethConfig::default()
        })?;
        let server_v4 = pair.server_v4.context("veth pair has no IPv4 address")?;
        let pid = std::process::id();
        let (mirror_in, mirror_out) = (format!("m{pid}i"), format!("m{pid}o"));
        let ns = &pair.server;
        ns.ip([
            "link",
            "add",
            &mirror_in,
            "type",
            "veth",
            "peer",
            "name",
            &mirror_out,
        ])?;
        for ifname in [&mirror_in, &mirror_out] {
            ns.ip(["link", "set", "dev", ifname.as_str(), "up"])?;
        }
        ns.wait_link_up(&mirror_out, Duration::from_secs(5))?;
        let classifier = probe_classifier(ns, &mirror_out, &mirror_in)?;
        Ok(Self {
            pair,
            server_v4,
            port: PORT,
            mirror_in,
            mirror_out,
            classifier,
        })
    }

    pub fn server(&self) -> &Netns {
        &self.pair.server
    }

    pub fn client(&self) -> &Netns {
        &self.pair.client
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}/", self.server_v4, self.port)
    }

    /// Mirrors the server veth's ingress and egress into the mirror pair until dropped.
    pub fn mirror(&self) -> Result<MirrorRules<'_>> {
        let ns = self.server();
        let dev = self.pair.server_if.as_str();
        ns.run("tc", ["qdisc", "add", "dev", dev, "clsact"])?;
        let rules = MirrorRules { ns, dev };
        for direction in ["ingress", "egress"] {
            let mut args = vec!["filter", "add", "dev", dev, direction, "protocol", "all"];
            args.extend(self.classifier);
            args.extend(["action", "mirred", "egress", "mirror", "dev"]);
            args.push(&self.mirror_in);
            ns.run("tc", args)?;
        }
        Ok(rules)
    }

    /// The tc classifier the mirror rules use, as text for the report.
    pub fn classifier(&self) -> String {
        self.classifier.join(" ")
    }
}

/// Match-everything classifiers, preferred first: kernels built without `cls_matchall` (this
/// project's VM among them) still have u32, where `match u32 0 0` matches every packet.
const CLASSIFIERS: [&[&str]; 2] = [&["matchall"], &["u32", "match", "u32", "0", "0"]];

/// The first classifier of [`CLASSIFIERS`] this kernel has, tried as the real rule would be
/// (mirred is the one action we need; gact's `pass` may be missing too) on the idle mirror
/// pair's egress, and removed again.
fn probe_classifier(ns: &Netns, dev: &str, to: &str) -> Result<&'static [&'static str]> {
    ns.run("tc", ["qdisc", "add", "dev", dev, "clsact"])?;
    let found = CLASSIFIERS.into_iter().find(|cls| {
        let mut args = vec!["filter", "add", "dev", dev, "egress", "protocol", "all"];
        args.extend(*cls);
        args.extend(["action", "mirred", "egress", "mirror", "dev", to]);
        ns.run("tc", args).is_ok()
    });
    ns.run("tc", ["qdisc", "del", "dev", dev, "clsact"])?;
    found.context("tc has neither the matchall nor the u32 classifier, or no mirred action")
}

/// The clsact qdisc holding the mirror filters; deleting it removes both filters.
pub struct MirrorRules<'a> {
    ns: &'a Netns,
    dev: &'a str,
}

impl Drop for MirrorRules<'_> {
    fn drop(&mut self) {
        if let Err(e) = self
            .ns
            .run("tc", ["qdisc", "del", "dev", self.dev, "clsact"])
        {
            eprintln!("xtask: removing the tc mirror on {}: {e}", self.dev);
        }
    }
}

/// nginx (Debian's, one worker) serving one 300-byte file in the server namespace. Stopped on
/// drop (SIGTERM, then SIGKILL); the namespace's removal kills whatever is left.
pub struct Nginx {
    process: BackgroundProcess,
    pub version: String,
}

impl Nginx {
    pub fn start(bed: &Testbed, dir: &Path) -> Result<Self> {
        let body: String = "shadowtap bench live static file. "
            .chars()
            .cycle()
            .take(FILE_BYTES - 1)
            .chain(std::iter::once('\n'))
            .collect();
        std::fs::write(dir.join("www/index.html"), &body).context("writing the static file")?;
        let d = dir.display();
        let mut conf = String::new();
        writeln!(conf, "worker_processes 1;\ndaemon off;")?;
        writeln!(conf, "error_log {d}/error.log;\npid {d}/nginx.pid;")?;
        writeln!(conf, "events {{ worker_connections 1024; }}")?;
        writeln!(conf, "http {{\n  access_log off;")?;
        writeln!(
            conf,
            "  server {{ listen {}:{}; root {d}/www; }}\n}}",
            bed.server_v4, bed.port
        )?;
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).context("writing nginx.conf")?;
        // nginx -v prints to stderr.
        let version = Command::new("nginx")
            .arg("-v")
            .output()
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stderr);
                text.trim().trim_start_matches("nginx version: ").to_owned()
            })
            .unwrap_or_default();
        // `-e` so that nginx does not touch /var/log/nginx before it has read our config.
        let mut cmd = bed.server().command("nginx");
        cmd.arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path);
        let process = BackgroundProcess::spawn(cmd, "nginx", dir)?;
        let mut nginx = Self { process, version };
        nginx.wait_ready(bed)?;
        Ok(nginx)
    }

    /// Polls until a GET from the client namespace returns the whole file.
    fn wait_ready(&mut self, bed: &Testbed) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from((bed.server_v4, bed.port));
        loop {
            check_interrupted()?;
            if let Some(status) = self.process.try_wait()? {
                bail!(
                    "nginx exited ({status}) before answering; {}",
                    self.process.stderr_tail()
                );
            }
            if let Ok(response) = get(bed.client(), addr) {
                if response.starts_with("HTTP/1.1 200")
                    && response.contains(&format!("Content-Length: {FILE_BYTES}"))
                {
                    return Ok(());
                }
                bail!("nginx answered unexpectedly: {response:.200}");
            }
            if Instant::now() >= deadline {
                bail!(
                    "nginx did not answer on {addr} within 10 s; {}",
                    self.process.stderr_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn get(client: &Netns, addr: SocketAddr) -> Result<String> {
    let mut stream = client.tcp_connect(addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown: the master stops its worker, then exits.
        if let Err(e) = self.process.stop(libc::SIGTERM, Duration::from_secs(5)) {
            eprintln!("xtask: stopping nginx: {e}");
        }
    }
}
