//! Layered settings for the daemons: command-line flag > `SHADOWTAP_*` environment variable >
//! TOML file (`--config FILE`) > built-in default.
//!
//! The file mirrors the command line rather than a separate schema, so the two cannot drift:
//! every long option is a key, in the section named by the option's help heading (`--max-clients`
//! under the "Model" heading is `model.max_clients`; options without a heading are top-level
//! keys). Repeatable options take arrays, switches take booleans. File values are checked by
//! the option's own parser, and every bad key is reported, not just the first.
//!
//! The precedence comes from clap: the environment variable is the option's `env`, and a file
//! value is appended to the command line only for options whose value clap took from neither
//! the command line nor the environment ([`ArgMatches::value_source`]).

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
};

use clap::{Arg, ArgAction, ArgMatches, Command, parser::ValueSource};

/// Prefix of every environment variable that sets an option.
pub const ENV_PREFIX: &str = "SHADOWTAP_";

/// The id of the option that names the file (it cannot be set from the file).
pub const CONFIG_ARG: &str = "config";

/// The environment variable of a long option: `--max-clients` → `SHADOWTAP_MAX_CLIENTS`.
pub fn env_name(long: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        long.to_ascii_uppercase().replace('-', "_")
    )
}

fn settable(arg: &Arg) -> bool {
    arg.get_long().is_some()
        && !matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
}

/// Gives every long option of `cmd` (not its subcommands) its `SHADOWTAP_*` variable.
pub fn with_env(cmd: Command) -> Command {
    cmd.mut_args(|arg| match arg.get_long() {
        Some(long) if settable(&arg) => {
            let name = env_name(long);
            arg.env(name)
        }
        _ => arg,
    })
}

/// The file key of an option: `section.key` from its help heading and long name.
pub fn key_path(arg: &Arg) -> Option<String> {
    let key = arg.get_long()?.replace('-', "_");
    Some(match arg.get_help_heading() {
        Some(heading) => format!("{}.{key}", section_name(heading)),
        None => key,
    })
}

fn section_name(heading: &str) -> String {
    heading.to_ascii_lowercase().replace(' ', "_")
}

/// The file key of the option `--long` of `cmd`, or `--long` itself when it has none.
pub fn key_of_long(cmd: &Command, long: &str) -> String {
    cmd.get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(key_path)
        .unwrap_or_else(|| format!("--{long}"))
}

/// Option problems (`(long, message)`, as the binaries' checks return them) as one message,
/// a line per problem naming the option and its settings-file key; `None` when there are none.
pub fn describe_option_problems(cmd: &Command, problems: &[(&str, String)]) -> Option<String> {
    if problems.is_empty() {
        return None;
    }
    let lines: Vec<String> = problems
        .iter()
        .map(|(long, message)| {
            format!(
                "invalid option --{long} (`{}` in a settings file): {message}",
                key_of_long(cmd, long)
            )
        })
        .collect();
    Some(lines.join("\n"))
}

/// One bad key of a settings file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `section.key` (empty for the file as a whole).
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in one settings file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.key.is_empty() {
                write!(f, "{}: {}", self.path.display(), p.message)?;
            } else {
                write!(f, "{}: {}: {}", self.path.display(), p.key, p.message)?;
            }
        }
        Ok(())
    }
}

/// A file value of one option, checked by the option's parser.
#[derive(Clone, Debug)]
struct Entry {
    id: String,
    long: String,
    /// The values, in command-line form; a switch set to `true` has none.
    values: Vec<String>,
}

/// The valid values of a settings file, and its bad keys.
#[derive(Clone, Debug, Default)]
pub struct FileSettings {
    entries: Vec<Entry>,
    pub problems: Vec<Problem>,
}

impl FileSettings {
    /// Reads `path` and checks every key against `cmd`'s options (and their parsers).
    pub fn load(cmd: &Command, path: &Path) -> Self {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(cmd, &text),
            Err(e) => Self {
                entries: Vec::new(),
                problems: vec![Problem::new("", format!("cannot read the file: {e}"))],
            },
        }
    }

    /// [`FileSettings::load`] on the file's text.
    pub fn parse(cmd: &Command, text: &str) -> Self {
        let mut out = Self::default();
        let table: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                out.problems.push(Problem::new(
                    "",
                    format!("not valid TOML: {}", e.to_string().trim_end()),
                ));
                return out;
            }
        };
        // Values are judged on their own: without the environment, which is not the file's.
        let mut cmd = cmd.clone().mut_args(|a| a.env(None::<&'static str>));
        cmd.build();
        let options: BTreeMap<String, &Arg> = cmd
            .get_arguments()
            .filter(|a| settable(a) && a.get_id() != CONFIG_ARG)
            .filter_map(|a| key_path(a).map(|k| (k, a)))
            .collect();
        let sections: Vec<String> = options
            .keys()
            .filter_map(|k| k.split_once('.').map(|(s, _)| s.to_owned()))
            .collect();
        for (key, value) in &table {
            match value {
                toml::Value::Table(inner) if sections.contains(key) => {
                    for (k, v) in inner {
                        out.check(&cmd, &options, &format!("{key}.{k}"), v);
                    }
                }
                _ => out.check(&cmd, &options, key, value),
            }
        }
        out
    }

    fn check(
        &mut self,
        cmd: &Command,
        options: &BTreeMap<String, &Arg>,
        key: &str,
        value: &toml::Value,
    ) {
        let Some(arg) = options.get(key) else {
            let last = key.rsplit('.').next().unwrap_or(key);
            let elsewhere: Vec<&str> = options
                .keys()
                .filter(|k| k.rsplit('.').next() == Some(last))
                .map(String::as_str)
                .collect();
            let message = if key == CONFIG_ARG {
                "a settings file cannot name another one".to_owned()
            } else if let Some(k) = elsewhere.first() {
                format!("unknown key (did you mean `{k}`?)")
            } else if matches!(value, toml::Value::Table(_)) {
                format!(
                    "unknown section (sections: {})",
                    dedup(
                        options
                            .keys()
                            .filter_map(|k| k.split_once('.').map(|p| p.0))
                    )
                )
            } else {
                "unknown key".to_owned()
            };
            self.problems.push(Problem::new(key, message));
            return;
        };
        let long = arg.get_long().unwrap_or_default().to_owned();
        let values = match to_values(arg, value) {
            Ok(v) => v,
            Err(message) => {
                self.problems.push(Problem::new(key, message));
                return;
            }
        };
        if let Some(values) = &values {
            // The option's own parser judges the value, exactly as on the command line.
            let mut argv = vec![cmd.get_name().to_owned()];
            argv.extend(values.iter().map(|v| format!("--{long}={v}")));
            if let Err(e) = cmd.clone().try_get_matches_from(argv) {
                self.problems.push(Problem::new(key, clap_message(&e)));
                return;
            }
        }
        self.entries.push(Entry {
            id: arg.get_id().to_string(),
            long,
            values: values.unwrap_or_default(),
        });
    }

    /// Command-line arguments for the file's values of the options `matches` did not take
    /// from the command line or the environment (append them to the command line and parse
    /// again). With no `matches`, arguments for every value.
    pub fn args_under(&self, matches: Option<&ArgMatches>) -> Vec<OsString> {
        let mut out = Vec::new();
        for e in &self.entries {
            let source = matches.and_then(|m| m.value_source(&e.id));
            if matches!(
                source,
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            if e.values.is_empty() {
                out.push(OsString::from(format!("--{}", e.long)));
            }
            for v in &e.values {
                out.push(OsString::from(format!("--{}={v}", e.long)));
            }
        }
        out
    }
}

fn dedup<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut v: Vec<&str> = items.collect();
    v.sort_unstable();
    v.dedup();
    v.join(", ")
}

/// A TOML value in command-line form: `Ok(None)` is a switch that stays off.
fn to_values(arg: &Arg, value: &toml::Value) -> Result<Option<Vec<String>>, String> {
    let switch = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
    if switch {
        return match value {
            toml::Value::Boolean(true) => Ok(Some(Vec::new())),
            toml::Value::Boolean(false) => Ok(None),
            other => Err(format!("expected true or false, found {}", kind(other))),
        };
    }
    let repeatable = matches!(arg.get_action(), ArgAction::Append);
    match value {
        toml::Value::Array(items) if repeatable => items.iter().map(scalar).collect(),
        toml::Value::Array(_) => Err("expected a single value, found an array".to_owned()),
        other => scalar(other).map(|v| vec![v]),
    }
    .map(Some)
}

fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!("expected a value, found {}", kind(other))),
    }
}

fn kind(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// clap's message without its `error:` prefix and usage lines.
pub fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let joined = lines.join(" ");
    joined.strip_prefix("error: ").unwrap_or(&joined).to_owned()
}

/// Parses `argv` with `cmd`, then again with the settings file's values under what the
/// command line and the environment set. `file_cmd` finds the (sub)command that takes
/// `--config` in the first matches and returns its matches and definition.
pub fn parse_layered<'c>(
    cmd: &'c Command,
    argv: Vec<OsString>,
    file_cmd: impl for<'m> Fn(&'m ArgMatches) -> Option<(&'m ArgMatches, &'c Command)>,
) -> Result<ArgMatches, LayeredError> {
    let first = cmd
        .clone()
        .try_get_matches_from(&argv)
        .map_err(LayeredError::Clap)?;
    let Some((matches, sub)) = file_cmd(&first) else {
        return Ok(first);
    };
    let Some(path) = matches.get_one::<PathBuf>(CONFIG_ARG) else {
        return Ok(first);
    };
    let settings = FileSettings::load(sub, path);
    if !settings.problems.is_empty() {
        return Err(LayeredError::File(ConfigError {
            path: path.clone(),
            problems: settings.problems,
        }));
    }
    let mut argv = argv;
    argv.extend(settings.args_under(Some(matches)));
    cmd.clone()
        .try_get_matches_from(argv)
        .map_err(LayeredError::Clap)
}

/// Why [`parse_layered`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LayeredError {
    /// Bad command line (or environment variable, or — in the second parse — a combination
    /// the file completed); `exit()` prints it as clap does.
    #[error(transparent)]
    Clap(clap::Error),
    #[error("{0}")]
    File(ConfigError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser};

    #[derive(Parser, Debug)]
    struct Demo {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 8)]
        size: u32,
        #[arg(long = "port", help_heading = "Filter")]
        ports: Vec<u16>,
        #[arg(long, help_heading = "Filter")]
        quiet: bool,
        #[arg(long, value_enum, default_value = "a", help_heading = "Filter")]
        pick: Pick,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
    enum Pick {
        A,
        B,
    }

    #[test]
    fn every_bad_key_is_named() {
        let cmd = Demo::command();
        let s = FileSettings::parse(
            &cmd,
            "size = -1\nport = [80]\n[filter]\nport = [80, 99999]\nquiet = 1\npick = \"c\"\nextra = 2\n[other]\nx = 1\n",
        );
        let keys: Vec<&str> = s.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            // Sorted by key, as the file's table is read.
            [
                "filter.extra",
                "filter.pick",
                "filter.port",
                "filter.quiet",
                "other",
                "port",
                "size",
            ],
            "{:?}",
            s.problems
        );
        assert!(
            s.problems[5].message.contains("filter.port"),
            "{:?}",
            s.problems
        );
        assert!(s.problems[2].message.contains("99999"), "{:?}", s.problems);
        assert!(
            s.problems[1].message.contains("possible values: a, b"),
            "{:?}",
            s.problems
        );
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("demo.toml");
        std::fs::write(
            &file,
            "size = 16\n[filter]\nport = [80, 443]\nquiet = true\n",
        )
        .expect("write");
        let parse = |extra: &[&str]| {
            let mut argv: Vec<OsString> =
                vec!["demo".into(), "--config".into(), file.clone().into()];
            argv.extend(extra.iter().map(OsString::from));
            // clap reads an option's variable when the option is given it: build afresh.
            let cmd = with_env(Demo::command().name("demo"));
            let m = parse_layered(&cmd, argv, |m| Some((m, &cmd))).expect("parses");
            <Demo as clap::FromArgMatches>::from_arg_matches(&m).expect("demo")
        };
        let d = parse(&[]);
        assert_eq!(
            (d.size, d.ports.clone(), d.quiet),
            (16, vec![80, 443], true)
        );
        let d = parse(&["--size", "32", "--port", "8080"]);
        assert_eq!((d.size, d.ports.clone()), (32, vec![8080]));
        // SAFETY: this test is the only one in the crate that touches SHADOWTAP_SIZE.
        unsafe { std::env::set_var("SHADOWTAP_SIZE", "64") };
        let d = parse(&[]);
        assert_eq!(d.size, 64);
        let d = parse(&["--size", "4"]);
        assert_eq!(d.size, 4);
        // SAFETY: as above.
        unsafe { std::env::remove_var("SHADOWTAP_SIZE") };
    }

    #[test]
    fn unreadable_file_is_reported() {
        let cmd = Demo::command();
        let s = FileSettings::load(&cmd, Path::new("/nonexistent/demo.toml"));
        assert_eq!(s.problems.len(), 1);
        assert!(
            s.problems[0].message.contains("cannot read"),
            "{:?}",
            s.problems
        );
    }
}
