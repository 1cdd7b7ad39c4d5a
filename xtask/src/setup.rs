//! Idempotent installation of what each task needs, with a progress line per step: the demo
//! installs only what it builds and runs ([`demo`]), the tests and `cargo xtask setup` install
//! everything ([`run`]), `cargo xtask bench live` its own extras ([`bench_live`]).
//!
//! The estimates in the progress lines were measured on a fresh 2-core machine.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::util::{self, Steps, output, succeeds};

/// Debian packages the demo needs: LLVM 22 with Polly, zlib and zstd to build bpf-linker (same
/// LLVM major as rustc 1.98's); ip(8) for the namespaces; OpenSSL headers, pkg-config and make
/// for the librdkafka the rdkafka crate builds from source (with TLS, for SASL_SSL/SSL brokers);
/// freetype/fontconfig headers for the agent's plotting (font-kit).
const DEMO_APT: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "iproute2",
    "libssl-dev",
    "pkg-config",
    "make",
    "libfontconfig1-dev",
];

/// Only the tests: the packet tools they use as oracles and traffic sources, bpftool,
/// python3-venv for the statsforecast baseline, fontconfig and a font for the backtest plots,
/// nginx as the real server of the load-generator, fault and round-trip tests.
const TEST_APT: &[&str] = &[
    "nginx-light",
    "haproxy",
    "tshark",
    "tcpdump",
    "tcpreplay",
    "bpftool",
    "python3-venv",
    "fontconfig",
    "fonts-dejavu-core",
];

/// tests/tests/deploy.rs: podman builds and runs the image (runc: this sandbox refuses crun),
/// `systemd-analyze` (systemd) verifies the units, `setpriv` (util-linux) drops capabilities.
const DEPLOY_TEST_APT: &[&str] = &["podman", "runc", "systemd", "util-linux"];

/// The Prometheus tests: `promtool` checks the shipped rules, a real `prometheus` scrapes a live
/// agent and collector (its service is not started: see [`apt`]).
const PROMETHEUS_APT: &[&str] = &["prometheus"];

/// The dashboard test: a headless browser that renders the page (tests/tests/dashboard.rs).
const DASHBOARD_APT: &[&str] = &["chromium"];

/// `cargo xtask bench live`: a real HTTP server and load generator, and a capture for checks.
const BENCH_LIVE_APT: &[&str] = &["tcpdump", "nginx-light", "wrk", "bpftool"];

const BPF_LINKER_VERSION: &str = "0.13.0";
pub const TOOLCHAIN: &str = "1.98.0";

const NISSHI_VERSION: &str = "0.8.1";

/// Progress steps [`demo`] and [`bench_live`] print (Debian packages, bpf-linker).
pub const DEMO_STEPS: usize = 2;
/// Progress steps [`all`] prints (Debian packages, bpf-linker, nisshi).
pub const ALL_STEPS: usize = 3;

/// `cargo xtask setup` (and `test`, `bench`): everything, numbered on its own.
pub fn run() -> Result<()> {
    all(&mut Steps::new(ALL_STEPS))
}

/// Everything the build, the tests and the cargo benchmarks need (not wrk, which only
/// [`bench_live`] installs). nginx is installed without starting its service (see [`apt`]).
pub fn all(steps: &mut Steps) -> Result<()> {
    ensure_dev_null()?;
    apt(
        steps,
        &[
            DEMO_APT,
            TEST_APT,
            DEPLOY_TEST_APT,
            PROMETHEUS_APT,
            DASHBOARD_APT,
        ],
    )?;
    ebpf_toolchain(steps)?;
    broker(steps)
}

/// Only what `cargo xtask demo` builds and runs: no packet tools, no Kafka broker.
pub fn demo(steps: &mut Steps) -> Result<()> {
    ensure_dev_null()?;
    apt(steps, &[DEMO_APT])?;
    ebpf_toolchain(steps)
}

/// What `cargo xtask bench live` needs: the demo's setup plus tcpdump, nginx-light, wrk and
/// bpftool. Prints its own [1/2] [2/2] progress lines.
pub fn bench_live() -> Result<()> {
    ensure_dev_null()?;
    let mut steps = Steps::new(DEMO_STEPS);
    apt(&mut steps, &[DEMO_APT, BENCH_LIVE_APT])?;
    ebpf_toolchain(&mut steps)
}

/// `cargo xtask build-ebpf`: rust-src and bpf-linker (the Debian LLVM must be there already).
pub fn ensure_ebpf_toolchain() -> Result<()> {
    ensure_dev_null()?;
    ebpf_toolchain(&mut Steps::new(1))
}

/// The Kafka-protocol broker the pipeline tests start on 127.0.0.1 (built once, ~16 min cold;
/// `cargo install` keeps it in ~/.cargo/bin, so later runs skip this).
fn broker(steps: &mut Steps) -> Result<()> {
    if output(Command::new("nisshi").arg("--version")).is_some_and(|v| v.contains(NISSHI_VERSION)) {
        steps.skip(&format!("nisshi {NISSHI_VERSION} present"));
        return Ok(());
    }
    let step = steps.start(
        &format!(
            "building the nisshi {NISSHI_VERSION} Kafka-compatible broker for the pipeline tests"
        ),
        "about 16 min, once",
    );
    // Not --quiet: the compile lines show it is alive during those minutes.
    util::run(Command::new("cargo").args([
        &format!("+{TOOLCHAIN}"),
        "install",
        "--locked",
        &format!("nisshi@{NISSHI_VERSION}"),
        "--no-default-features",
        "--features",
        "dynostore",
    ]))
    .context("installing nisshi")?;
    step.done();
    Ok(())
}

/// Device number of the null device (major 1, minor 3), as `st_rdev` encodes it on Linux.
const DEV_NULL_RDEV: u64 = (1 << 8) | 3;

/// Makes sure /dev/null is the null device. On some machines of this fleet it was found to be
/// a regular file: everything written "to /dev/null" collected there, and every process
/// reading it got that text. Cargo's `rustc -` target probe reads its source from /dev/null,
/// so the eBPF build failed when another probe's warnings were sitting in the file (the CI
/// failure of stop 20). Root can put the device back; anyone else gets an error that says
/// what is wrong instead of a baffling compile error.
fn ensure_dev_null() -> Result<()> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let path = std::path::Path::new("/dev/null");
    let meta = std::fs::symlink_metadata(path).context("reading /dev/null's metadata")?;
    if meta.file_type().is_char_device() && meta.rdev() == DEV_NULL_RDEV {
        return Ok(());
    }
    eprintln!(
        "xtask: /dev/null is not the null device (a {}, {} bytes): programs that read it get \
         whatever was last written there; recreating it (mknod /dev/null c 1 3)",
        if meta.file_type().is_file() {
            "regular file"
        } else {
            "non-device"
        },
        meta.len()
    );
    std::fs::remove_file(path).context("removing the broken /dev/null (needs root)")?;
    util::run(Command::new("mknod").args(["-m", "666", "/dev/null", "c", "1", "3"]))
        .context("recreating /dev/null")?;
    Ok(())
}

fn installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}

/// One `apt-get update` and one `apt-get install` of every missing package of `lists`.
fn apt(steps: &mut Steps, lists: &[&[&str]]) -> Result<()> {
    let mut missing: Vec<&str> = Vec::new();
    for &p in lists.iter().copied().flatten() {
        if !missing.contains(&p) && !installed(p) {
            missing.push(p);
        }
    }
    if missing.is_empty() {
        steps.skip("Debian packages present");
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "missing Debian packages {missing:?}; run this task (or `cargo xtask setup`) as root: it runs apt-get"
        );
    }
    // Most of the time is LLVM 22 (~100 MB), when it is among them.
    let about = if missing.iter().any(|p| p.starts_with("llvm-")) {
        "about 25 s"
    } else {
        "about 15 s"
    };
    let step = steps.start(
        &format!("installing Debian packages {}", missing.join(" ")),
        about,
    );
    util::run(
        Command::new("apt-get")
            .args(["-q", "update"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    // Packages with a service (nginx) would start it on the host's port 80: the tests start
    // their own nginx in a namespace. policy-rc.d exiting 101 tells the maintainer scripts
    // not to start services; it is only put in place (and removed) when absent.
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let guard = !policy.exists();
    if guard {
        std::fs::write(
            policy,
            "#!/bin/sh\n# shadowtap xtask: no service starts\nexit 101\n",
        )
        .context("writing /usr/sbin/policy-rc.d")?;
        util::run(Command::new("chmod").args(["0755", "/usr/sbin/policy-rc.d"]))?;
    }
    let installed = util::run(
        Command::new("apt-get")
            .args(["-q", "install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    if guard {
        std::fs::remove_file(policy).context("removing /usr/sbin/policy-rc.d")?;
    }
    installed?;
    step.done();
    Ok(())
}

/// rust-src for build-std, and bpf-linker built against Debian's LLVM 22.
fn ebpf_toolchain(steps: &mut Steps) -> Result<()> {
    let has_src = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        TOOLCHAIN,
    ]))
    .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if !has_src {
        // rust-toolchain.toml lists rust-src, so only a toolchain installed otherwise lacks it.
        eprintln!("xtask: installing the Rust {TOOLCHAIN} toolchain's rust-src (about 20 s)");
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src,rustfmt,clippy",
        ]))?;
    }
    let linker_ok = output(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if linker_ok {
        steps.skip(&format!("bpf-linker {BPF_LINKER_VERSION} present"));
        return Ok(());
    }
    if !succeeds(Command::new("test").args(["-d", "/usr/lib/llvm-22"])) {
        bail!("/usr/lib/llvm-22 is missing: run `cargo xtask setup` as root first");
    }
    let step = steps.start(
        &format!("building bpf-linker {BPF_LINKER_VERSION} against LLVM 22"),
        "about 1 min, once",
    );
    util::run(
        Command::new("cargo")
            .args([
                &format!("+{TOOLCHAIN}"),
                "install",
                "--quiet",
                "--locked",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
    .context("installing bpf-linker")?;
    step.done();
    Ok(())
}
