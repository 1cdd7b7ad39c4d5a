//! Idempotent installation of everything the build, tests and benchmarks need.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::util::{self, output, succeeds};

/// Debian packages: LLVM 22 for bpf-linker (same major as rustc 1.98's LLVM), the packet tools
/// the tests use as oracles and traffic sources, and python3-venv for the statsforecast baseline.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "tshark",
    "tcpdump",
    "tcpreplay",
    "bpftool",
    "iproute2",
    "python3-venv",
    // librdkafka is built from source by the rdkafka crate, with TLS (for SASL_SSL/SSL brokers).
    "libssl-dev",
    "pkg-config",
    "make",
    "fontconfig",
    "libfontconfig1-dev",
    "fonts-dejavu-core",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
pub const TOOLCHAIN: &str = "1.98.0";

const NISSHI_VERSION: &str = "0.8.1";

pub fn run() -> Result<()> {
    apt()?;
    ensure_ebpf_toolchain()?;
    ensure_broker()
}

/// The Kafka-protocol broker the pipeline tests start on 127.0.0.1 (built once, ~16 min cold;
/// `cargo install` keeps it in ~/.cargo/bin, so later runs skip this).
fn ensure_broker() -> Result<()> {
    if output(Command::new("nisshi").arg("--version")).is_some_and(|v| v.contains(NISSHI_VERSION)) {
        eprintln!("xtask: nisshi {NISSHI_VERSION} present");
        return Ok(());
    }
    eprintln!(
        "xtask: installing the nisshi {NISSHI_VERSION} Kafka-compatible broker (about 16 minutes on 2 cores)"
    );
    util::run(Command::new("cargo").args([
        &format!("+{TOOLCHAIN}"),
        "install",
        "--locked",
        &format!("nisshi@{NISSHI_VERSION}"),
        "--no-default-features",
        "--features",
        "dynostore",
    ]))
    .context("installing nisshi")
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_some_and(|s| s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: apt packages present");
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "missing Debian packages {missing:?}; run `cargo xtask setup` as root (it runs apt-get)"
        );
    }
    eprintln!("xtask: installing {missing:?}");
    util::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// rust-src for build-std, and bpf-linker built against Debian's LLVM 22.
pub fn ensure_ebpf_toolchain() -> Result<()> {
    let has_src = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        TOOLCHAIN,
    ]))
    .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if !has_src {
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
        eprintln!("xtask: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    if !succeeds(Command::new("test").args(["-d", "/usr/lib/llvm-22"])) {
        bail!("/usr/lib/llvm-22 is missing: run `cargo xtask setup` as root first");
    }
    eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (about 2 minutes)");
    util::run(
        Command::new("cargo")
            .args([
                &format!("+{TOOLCHAIN}"),
                "install",
                "--locked",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
    .context("installing bpf-linker")
}
