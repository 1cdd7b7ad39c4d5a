//! `cargo xtask demo`: the main job on an embedded default, end to end and self-cleaning.
//!
//! Two network namespaces joined by a veth pair (addresses only inside them), the agent in host
//! mode on the server side, and a few seconds of real HTTP/1.1 traffic (keep-alive, pipelining,
//! several Hosts, IPv4 and IPv6). Events and live stats are printed as they arrive. The
//! namespaces — and with them every attachment — are removed on every exit path.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use shadowtap_tests::netns::{self, VethConfig, VethPair};

use crate::{
    ebpf, setup,
    util::{self, Steps},
};

pub fn run(seconds: u64) -> Result<()> {
    if !util::is_root() {
        bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    let mut steps = Steps::new(setup::DEMO_STEPS + 3);
    setup::demo(&mut steps)?;

    let (agent_bin, peer_bin) = build(&mut steps)?;

    let step = steps.start(
        &format!("running the demo: namespaces, agent, {seconds} s of HTTP traffic"),
        &format!("about {} s", seconds + 4),
    );
    for stale in netns::sweep_stale_namespaces()? {
        eprintln!("xtask: removed namespace {stale} left by an earlier run");
    }
    let pair = VethPair::create(VethConfig::default())?;
    let (Some(server_v4), Some(server_v6)) = (pair.server_v4, pair.server_v6) else {
        bail!("veth pair has no addresses");
    };
    eprintln!(
        "xtask: namespaces {} (client, {}) <-> {} (server, {}); agent on {}",
        pair.client.name(),
        pair.client_if,
        pair.server.name(),
        pair.server_if,
        pair.server_if
    );

    let mut server = pair
        .server
        .command(&peer_bin)
        .args([
            "server",
            "--listen",
            &format!("{server_v4}:8080"),
            "--listen",
            &format!("[{server_v6}]:8080"),
        ])
        .args(["--max-seconds", &(seconds + 20).to_string()])
        .stdout(Stdio::null())
        .spawn()
        .context("starting the HTTP server peer")?;
    let mut agent = pair
        .server
        .command(&agent_bin)
        .args([
            "run",
            "--iface",
            &pair.server_if,
            "--mode",
            "host",
            "--events",
            "-",
            "--stats-interval",
            "2",
            "--observation-window",
            "1s",
            "--scale-events",
            "-",
            "--policy",
        ])
        .arg(util::root().join("deploy/demo-policy.toml"))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting shadowtap-agent")?;
    let stdout = agent.stdout.take().context("agent stdout")?;
    let printer = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
        }
    });
    // Let the agent attach before traffic starts.
    thread::sleep(Duration::from_millis(1500));

    let result = drive_traffic(&pair, &peer_bin, seconds);

    let pid = i32::try_from(agent.id()).context("agent pid")?;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = agent.wait().context("waiting for the agent")?;
    let _ = printer.join();
    let _ = server.kill();
    let _ = server.wait();
    drop(pair);
    let round = result?;
    if !status.success() {
        bail!("agent exited with {status}");
    }
    eprintln!("xtask: demo done ({round} client rounds); namespaces removed");
    step.done();
    Ok(())
}

/// The kernel programs, then only the two binaries the demo runs (the agent embeds the former).
fn build(steps: &mut Steps) -> Result<(PathBuf, PathBuf)> {
    let step = steps.start(
        "building the eBPF programs (bpfel-unknown-none, build-std core)",
        "about 30 s the first time",
    );
    ebpf::build()?;
    step.done();

    // Only the two binaries the demo runs, in the dev profile: 3 min 10 s cold on 2 cores where
    // a release build takes 5 min 20 s; `cargo xtask test` builds in the same profile (most
    // artifacts are shared); and a debug agent keeps up with the demo's traffic easily (no
    // ring-buffer drops, `unread_records: 0`).
    let step = steps.start(
        "building shadowtap-agent and shadowtap-httppeer (dev profile)",
        "about 3 min the first time, seconds after",
    );
    util::cargo(&[
        "build",
        "-p",
        "shadowtap-agent",
        "--bin",
        "shadowtap-agent",
        "-p",
        "shadowtap-tests",
        "--bin",
        "shadowtap-httppeer",
    ])?;
    step.done();
    let bin = util::target_dir().join("debug");
    Ok((bin.join("shadowtap-agent"), bin.join("shadowtap-httppeer")))
}

/// Rounds of the HTTP client peer, alternating IPv4 and IPv6, for `seconds`.
fn drive_traffic(pair: &VethPair, peer_bin: &std::path::Path, seconds: u64) -> Result<u32> {
    let (Some(server_v4), Some(server_v6)) = (pair.server_v4, pair.server_v6) else {
        bail!("veth pair has no addresses");
    };
    let start = Instant::now();
    let mut round = 0u32;
    while start.elapsed() < Duration::from_secs(seconds) {
        let target = if round.is_multiple_of(2) {
            format!("{server_v4}:8080")
        } else {
            format!("[{server_v6}]:8080")
        };
        let status = pair
            .client
            .command(peer_bin)
            .args(["client", "--connect", &target])
            .args(["--hosts", "shop.example,api.example,static.example"])
            .args([
                "--connections",
                "4",
                "--requests-per-conn",
                "6",
                "--pipeline",
                "2",
            ])
            .args([
                "--paths",
                "/api/v1/items/17,/bytes/2048,/status/404,/api/v1/users/42/orders",
            ])
            .stdout(Stdio::null())
            .status()
            .context("running the HTTP client peer")?;
        if !status.success() {
            bail!("HTTP client peer failed: {status}");
        }
        round += 1;
        thread::sleep(Duration::from_millis(300));
    }
    Ok(round)
}
