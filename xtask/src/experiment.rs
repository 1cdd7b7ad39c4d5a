//! `cargo xtask experiment closed-loop [--json] [--quick]`: builds the agent, the provisioner
//! and the experiment binary in release and runs the closed-loop experiment
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
    setup::ensure_ebpf_toolchain()?;
    ebpf::build()?;
    util::cargo(&[
        "build",
        "--release",
        "-p",
        "shadowtap-agent",
        "-p",
        "shadowtap-provisioner",
        "-p",
        "shadowtap-tests",
        "--bin",
        "shadowtap-agent",
        "--bin",
        "shadowtap-provisioner",
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
