//! `shadowtap-agent`: the root daemon on hosts and tap appliances, plus offline tools.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use shadowtap_agent::runtime::{self, RunArgs};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "shadowtap-agent", version, about = "eBPF/XDP request-metadata tap and capacity forecaster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to interfaces and stream request metadata events (needs CAP_BPF + CAP_NET_ADMIN).
    Run(RunArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Run(args) => runtime::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shadowtap-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
