//! `shadowtap-agent`: the root daemon on hosts and tap appliances, plus offline tools.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use shadowtap_agent::runtime::{self, RunArgs};
use shadowtap_core::cli_config::{self, LayeredError};

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
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing would only move it"
)]
enum Command {
    /// Attach to interfaces and stream request metadata events (needs CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON).
    Run(Box<RunArgs>),
    /// Decode a pcap/pcapng file with the same decoder and tracker as the live path (no root).
    Replay(ReplayArgs),
    /// Compare predictive scaling with a reactive autoscaler on a recorded demand series.
    Backtest(shadowtap_agent::backtest::BacktestArgs),
    /// Write the request profile (endpoint mix, parameter popularity, sizes, per-connection
    /// Markov chain, arrivals, weekly curve) learned from a capture or a running agent.
    Profile(shadowtap_agent::profile_cmd::ProfileArgs),
    /// Settings files (see docs/configuration.md).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script, e.g. `shadowtap-agent completions bash >
    /// /etc/bash_completion.d/shadowtap-agent`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, or write one per subcommand into a directory.
    Man {
        /// Write shadowtap-agent.1 and shadowtap-agent-SUBCOMMAND.1 here instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a settings file for `run`: names every bad key (unknown, wrong type, out of
    /// range, contradicting another) and exits 2 if there is one.
    Check {
        /// The TOML settings file.
        file: PathBuf,
    },
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

/// The command line, with `SHADOWTAP_*` variables for `run`'s options.
fn command() -> clap::Command {
    Cli::command().mut_subcommand("run", cli_config::with_env)
}

/// Exit status of bad settings (clap's own for a bad command line).
const SETTINGS_ERROR: u8 = 2;

fn config_check(file: &std::path::Path) -> ExitCode {
    let problems = shadowtap_agent::config::check_file(file);
    if problems.is_empty() {
        println!("{}: ok", file.display());
        return ExitCode::SUCCESS;
    }
    let error = cli_config::ConfigError {
        path: file.to_owned(),
        problems,
    };
    eprintln!("{error}");
    ExitCode::from(SETTINGS_ERROR)
}

fn man(dir: Option<&std::path::Path>) -> Result<()> {
    let cmd = command();
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        clap_mangen::generate_to(cmd, dir)
            .with_context(|| format!("writing man pages into {}", dir.display()))
    } else {
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(cmd)
            .render(&mut out)
            .context("writing the man page")
    }
}

fn main() -> ExitCode {
    shadowtap_core::init_tracing();
    let cmd = command();
    let layered = cli_config::parse_layered(&cmd, std::env::args_os().collect(), |m| {
        let run = m.subcommand_matches("run")?;
        Some((run, cmd.find_subcommand("run")?))
    });
    let matches = match layered {
        Ok(m) => m,
        Err(LayeredError::Clap(e)) => e.exit(),
        Err(LayeredError::File(e)) => {
            eprintln!("shadowtap-agent: error: bad settings file\n{e}");
            return ExitCode::from(SETTINGS_ERROR);
        }
    };
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result: Result<()> = match cli.command {
        Command::Run(args) => {
            if let Some(problems) = shadowtap_agent::config::describe_problems(&args) {
                eprintln!("shadowtap-agent: error: {problems}");
                return ExitCode::from(SETTINGS_ERROR);
            }
            runtime::run(&args)
        }
        Command::Config(ConfigCommand::Check { file }) => return config_check(&file),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut command(),
                "shadowtap-agent",
                &mut std::io::stdout().lock(),
            );
            Ok(())
        }
        Command::Man { dir } => man(dir.as_deref()),
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
