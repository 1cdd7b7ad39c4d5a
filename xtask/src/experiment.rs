//! `cargo xtask experiment closed-loop [--json] [--quick]`: installs what the bed needs, builds
//! the agent, the provisioner, the collector and the experiment binaries in release and runs
//! the closed-loop experiment
//! (docs/experiment.md). Needs root (network namespaces, XDP).

use std::process::Command;

use anyhow::{Result, bail};

use crate::{ebpf, setup, util};

pub fn run(name: &str, json: bool, quick: bool) -> Result<()> {
    if name == "sweep" {
        return sweep(json, quick);
    }
    if name != "closed-loop" {
        bail!("unknown experiment {name:?} (closed-loop, sweep)");
    }
    if !util::is_root() {
        bail!("the closed-loop experiment needs root (network namespaces, XDP)");
    }
    // Everything the bed runs: HAProxy and nginx, the eBPF toolchain, and nisshi for the
    // run through Kafka (each step is skipped when already there).
    setup::run()?;
    ebpf::build()?;
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "shadowtap-agent",
        "-p",
        "shadowtap-provisioner",
        "-p",
        "shadowtap-collector",
        "-p",
        "shadowtap-tests",
        "--bin",
        "shadowtap-agent",
        "--bin",
        "shadowtap-provisioner",
        "--bin",
        "shadowtap-collector",
        "--bin",
        "shadowtap-kafka-tail",
        "--bin",
        "shadowtap-closed-loop",
    ])?;
    let release = util::target_dir().join("release");
    let mut cmd = Command::new(release.join("shadowtap-closed-loop"));
    cmd.current_dir(util::root())
        .env("SHADOWTAP_AGENT_BIN", release.join("shadowtap-agent"))
        .env(
            "SHADOWTAP_PROVISIONER_BIN",
            release.join("shadowtap-provisioner"),
        )
        .env(
            "SHADOWTAP_COLLECTOR_BIN",
            release.join("shadowtap-collector"),
        )
        .env(
            "SHADOWTAP_KAFKA_TAIL_BIN",
            release.join("shadowtap-kafka-tail"),
        )
        .arg("--out")
        .arg(util::target_dir().join("experiments/closed-loop"));
    if json {
        cmd.arg("--json");
    }
    if quick {
        cmd.arg("--quick");
    }
    util::run(&mut cmd)
}

/// `cargo xtask experiment sweep`: explorers against the grid optimum on real nginx
/// (docs/sweeps.md). Results and every trial record go to target/experiments/sweep.
fn sweep(json: bool, quick: bool) -> Result<()> {
    if !util::is_root() {
        bail!("the sweep experiment needs root (cgroups, network namespaces)");
    }
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "shadowtap-sweep",
        "--bin",
        "shadowtap-sweep",
    ])?;
    let out = util::target_dir().join("experiments/sweep");
    let mut cmd = Command::new(util::target_dir().join("release/shadowtap-sweep"));
    cmd.current_dir(util::root())
        .arg("experiment")
        .arg("--out")
        .arg(&out)
        .arg("--records-out")
        .arg(out.join("trial-records.json"));
    if json {
        cmd.arg("--json");
    }
    if quick {
        cmd.arg("--quick");
    }
    util::run(&mut cmd)
}
