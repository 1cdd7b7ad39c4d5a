//! `shadowtap-agent`: the root daemon on hosts and tap appliances, plus offline tools.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use shadowtap_agent::runtime::{self, RunArgs};

/// mimalloc rather than glibc's malloc: closing windows builds and later drops many small
/// summaries (histogram buckets, endpoint names), where glibc's malloc spends a third of the
/// model's time with per-client summaries on (`cargo xtask bench windows`). Declared in each
/// binary and bench, not in the libraries, so that a test linking several libraries has one
/// allocator. Built without the `mimalloc` feature, the system allocator is used.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "shadowtap-agent",
    version,
    about = "eBPF/XDP request-metadata tap and capacity forecaster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to interfaces and stream request metadata events (needs CAP_BPF + CAP_NET_ADMIN).
    Run(RunArgs),
    /// Decode a pcap/pcapng file with the same decoder and tracker as the live path (no root).
    Replay(ReplayArgs),
    /// Compare predictive scaling with a reactive autoscaler on a recorded demand series.
    Backtest(shadowtap_agent::backtest::BacktestArgs),
    /// Write the request profile (endpoint mix, parameter popularity, sizes, per-connection
    /// Markov chain, arrivals, weekly curve) learned from a capture or a running agent.
    Profile(shadowtap_agent::profile_cmd::ProfileArgs),
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// pcap or pcapng file (Ethernet, Linux cooked SLL or SLL2 link types).
    #[arg(long)]
    pcap: PathBuf,
    /// Where to write JSON-lines events ("-" for stdout).
    #[arg(long, default_value = "-")]
    output: String,
}

fn replay(args: &ReplayArgs) -> Result<()> {
    let mut out: Box<dyn Write> = if args.output == "-" {
        Box::new(BufWriter::new(std::io::stdout().lock()))
    } else {
        let f = File::create(&args.output)
            .with_context(|| format!("creating output file {}", args.output))?;
        Box::new(BufWriter::new(f))
    };
    let summary = shadowtap_agent::replay::replay_pcap(&args.pcap, &mut out)?;
    out.flush().context("flushing output")?;
    tracing::info!(
        packets = summary.packets,
        decoded = summary.decoded,
        "replay done"
    );
    Ok(())
}

fn main() -> ExitCode {
    shadowtap_core::init_tracing();
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Run(args) => runtime::run(&args),
        Command::Replay(args) => replay(&args),
        Command::Backtest(args) => shadowtap_agent::backtest::run_backtest(&args),
        Command::Profile(args) => shadowtap_agent::profile_cmd::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shadowtap-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
