//! Settings of `shadowtap-agent run` from three layers besides the built-in defaults: a TOML
//! file (`--config FILE`), `SHADOWTAP_*` environment variables and flags, in increasing
//! precedence (the layering itself is `shadowtap_core::cli_config`, shared with the
//! collector). This module adds what the agent's options' own parsers cannot see — ranges
//! that depend on other options, contradictions, files that must load — and
//! `shadowtap-agent config check FILE`, which reports every bad key of a file at once.

mod check;
mod limits;

use std::path::Path;

use clap::{Args as _, Command, FromArgMatches as _};
use shadowtap_core::cli_config::{
    FileSettings, Problem, clap_message, describe_option_problems, key_of_long,
};

pub use check::run_problems;
pub use limits::ModelLimits;

use crate::runtime::RunArgs;

/// The `run` subcommand's definition, without environment variables: what a settings file
/// is checked against.
pub fn run_command() -> Command {
    RunArgs::augment_args(Command::new("run"))
}

/// Every problem of the settings file at `path`, judged as if it were the only source of
/// settings: unknown keys, values of the wrong type or out of range, contradictions.
pub fn check_file(path: &Path) -> Vec<Problem> {
    let cmd = run_command();
    let settings = FileSettings::load(&cmd, path);
    let mut problems = settings.problems.clone();
    if problems.iter().any(|p| p.key.is_empty()) {
        // Unreadable or not TOML: nothing more to judge.
        return problems;
    }
    let mut command_line = vec!["run".into()];
    command_line.extend(settings.args_under(None));
    let args = cmd
        .clone()
        .try_get_matches_from(command_line)
        .and_then(|m| RunArgs::from_arg_matches(&m));
    match args {
        Ok(args) => problems.extend(
            run_problems(&args)
                .into_iter()
                .map(|(long, message)| Problem::new(key_of_long(&cmd, long), message)),
        ),
        Err(e) => problems.push(Problem::new("", clap_message(&e))),
    }
    problems
}

/// The settings problems of `args` as one message naming each option and its file key.
pub fn describe_problems(args: &RunArgs) -> Option<String> {
    describe_option_problems(&run_command(), &run_problems(args))
}
