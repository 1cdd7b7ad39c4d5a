//! Developer tasks: `cargo xtask setup | build-ebpf | test | demo | bench`.
//!
//! Every task installs what it needs first (idempotently), so a fresh machine needs nothing
//! by hand: `cargo xtask test` is the whole CI.

mod bench;
mod bench_live;
mod bench_loadgen;
mod demo;
mod ebpf;
mod experiment;
mod setup;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "shadowtap developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install everything the build and tests need (apt packages, rust-src, bpf-linker); skips what is present.
    Setup,
    /// Build the eBPF programs (bpfel-unknown-none) that the agent embeds.
    BuildEbpf,
    /// setup + build-ebpf + fmt/clippy + every test (unit, property, pcap parity, kernel, live).
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The main job on an embedded default: namespaces, agent, a few seconds of real HTTP traffic.
    Demo {
        /// Seconds of traffic.
        #[arg(long, default_value_t = 6)]
        seconds: u64,
    },
    /// Benchmarks: XDP ns/packet vs a bare XDP_PASS program, decode throughput, forecasting;
    /// `live`: nginx throughput with no capture vs shadowtap vs tcpdump;
    /// `loadgen`: shadowtap-loadgen's max rate vs wrk's, and its open-model accuracy.
    Bench {
        /// Only run benchmarks whose name contains this.
        filter: Option<String>,
    },
    /// `closed-loop`: reactive vs predictive scaling on a live bed (docs/experiment.md);
    /// `sweep`: parameter-sweep explorers vs the grid optimum on real nginx (docs/sweeps.md).
    Experiment {
        name: String,
        /// Also print the report as JSON.
        #[arg(long)]
        json: bool,
        /// A short run without training days.
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::run(),
        Command::BuildEbpf => {
            setup::ensure_ebpf_toolchain()?;
            ebpf::build()
        }
        Command::Test { args } => test(&args),
        Command::Demo { seconds } => demo::run(seconds),
        Command::Bench { filter } => bench::run(filter.as_deref()),
        Command::Experiment { name, json, quick } => experiment::run(&name, json, quick),
    }
}

fn test(extra: &[String]) -> Result<()> {
    setup::run()?;
    ebpf::build()?;
    util::cargo(&["fmt", "--all", "--", "--check"])?;
    util::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // Both processes also build, warning-free, with the system allocator (feature
    // `mimalloc` off), and the shared core without Kafka (as the load generator links it).
    util::cargo(&[
        "clippy",
        "-p",
        "shadowtap-core",
        "-p",
        "shadowtap-agent",
        "-p",
        "shadowtap-collector",
        "--no-default-features",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // Build the binaries the integration tests start (agent, HTTP peer) before running them.
    util::cargo(&["build", "--workspace", "--bins"])?;
    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    util::cargo(&args)
}
