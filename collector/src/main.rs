//! `shadowtap-collector`: see the library docs.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use shadowtap_collector::{
    Collector,
    config::{CollectorArgs, check_file, describe_problems},
};
use shadowtap_core::cli_config::{self, ConfigError, LayeredError};

/// The same allocator as the agent (see `agent/src/main.rs`), for the same reason.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Merge agents' observations from Kafka and publish scale events.
#[derive(Debug, Parser)]
#[command(
    name = "shadowtap-collector",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    args: CollectorArgs,
    #[command(subcommand)]
    command: Option<Tool>,
}

#[derive(Debug, Subcommand)]
enum Tool {
    /// Settings files (see docs/configuration.md).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, or write one per subcommand into a directory.
    Man {
        /// Write shadowtap-collector.1 and shadowtap-collector-SUBCOMMAND.1 here instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check a settings file: names every bad key (unknown, wrong type, out of range,
    /// contradicting another) and exits 2 if there is one.
    Check {
        /// The TOML settings file.
        file: PathBuf,
    },
}

/// Exit status of bad settings (clap's own for a bad command line).
const SETTINGS_ERROR: u8 = 2;

/// The command line, with `SHADOWTAP_*` variables for the collector's options.
fn command() -> clap::Command {
    cli_config::with_env(Cli::command())
}

fn tool(tool: Tool) -> anyhow::Result<ExitCode> {
    match tool {
        Tool::Config(ConfigCommand::Check { file }) => {
            let problems = check_file(&file);
            if problems.is_empty() {
                println!("{}: ok", file.display());
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "{}",
                ConfigError {
                    path: file,
                    problems
                }
            );
            Ok(ExitCode::from(SETTINGS_ERROR))
        }
        Tool::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut command(),
                "shadowtap-collector",
                &mut std::io::stdout().lock(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Tool::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(command(), &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Tool::Man { dir: None } => {
            clap_mangen::Man::new(command())
                .render(&mut std::io::stdout().lock())
                .context("writing the man page")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(args: CollectorArgs) -> anyhow::Result<()> {
    let config = args.collector_config()?;
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "no SIGTERM handler");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    Collector::new(config)
        .run(shutdown)
        .await
        .context("collector failed")
}

fn main() -> ExitCode {
    shadowtap_core::init_tracing();
    let cmd = command();
    let layered = cli_config::parse_layered(&cmd, std::env::args_os().collect(), |m| {
        m.subcommand().is_none().then_some((m, &cmd))
    });
    let matches = match layered {
        Ok(m) => m,
        Err(LayeredError::Clap(e)) => e.exit(),
        Err(LayeredError::File(e)) => {
            eprintln!("shadowtap-collector: error: bad settings file\n{e}");
            return ExitCode::from(SETTINGS_ERROR);
        }
    };
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = if let Some(t) = cli.command {
        tool(t)
    } else {
        if let Some(problems) = describe_problems(&cli.args) {
            eprintln!("shadowtap-collector: error: {problems}");
            return ExitCode::from(SETTINGS_ERROR);
        }
        tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")
            .and_then(|rt| rt.block_on(serve(cli.args)))
            .map(|()| ExitCode::SUCCESS)
    };
    result.unwrap_or_else(|e| {
        eprintln!("shadowtap-collector: error: {e:#}");
        ExitCode::FAILURE
    })
}
