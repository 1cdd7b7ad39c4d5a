//! `shadowtap-collector`'s options, their settings file and its check. The layering (flag >
//! `SHADOWTAP_*` variable > `--config` TOML file > default) is
//! `shadowtap_core::cli_config`, shared with the agent; see docs/configuration.md.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args as _, Command, FromArgMatches as _};
use shadowtap_core::{
    FleetConfig, KafkaSettings,
    cli_config::{FileSettings, Problem, clap_message, describe_option_problems, key_of_long},
    decision::{PolicySet, parse_duration},
};

use crate::CollectorConfig;

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

/// The collector's options (without subcommands).
#[derive(Debug, Clone, clap::Args)]
pub struct CollectorArgs {
    /// Settings file (TOML): every option is a key in the section of its heading, e.g.
    /// `kafka.kafka_brokers`; see docs/configuration.md. Flags beat `SHADOWTAP_*` variables, which
    /// beat the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers (host:port,...). Required.
    #[arg(long, help_heading = "Kafka")]
    pub kafka_brokers: Option<String>,
    /// librdkafka property passed through, `key=value` (SASL, TLS, ...); repeatable.
    #[arg(long = "kafka-property", value_parser = KafkaSettings::parse_property, help_heading = "Kafka")]
    pub kafka_properties: Vec<(String, String)>,
    #[arg(long, default_value = "shadowtap.observations", help_heading = "Kafka")]
    pub observations_topic: String,
    #[arg(long, default_value = "shadowtap.scale-events", help_heading = "Kafka")]
    pub scale_events_topic: String,
    /// The provisioner's lifecycle topic: decisions start from the instances it reports as
    /// healthy. An empty value turns this off (decisions assume their requests were met).
    #[arg(long, default_value = shadowtap_core::lifecycle::LIFECYCLE_TOPIC, help_heading = "Kafka")]
    pub lifecycle_topic: String,
    #[arg(
        long,
        default_value = "shadowtap.collector-state",
        help_heading = "Kafka"
    )]
    pub state_topic: String,
    #[arg(
        long,
        default_value = "shadowtap.observations.dlq",
        help_heading = "Kafka"
    )]
    pub dead_letter_topic: String,
    #[arg(long, default_value = "shadowtap-collector", help_heading = "Kafka")]
    pub group_id: String,
    /// Partitions of topics created at start.
    #[arg(long, default_value_t = 4, help_heading = "Kafka")]
    pub partitions: i32,
    /// Do not create missing topics.
    #[arg(long, help_heading = "Kafka")]
    pub no_create_topics: bool,
    /// Consumer group session timeout.
    #[arg(long, default_value = "10s", value_parser = duration, help_heading = "Kafka")]
    pub session_timeout: Duration,
    /// Delivery timeout of published records (failed ones are retried).
    #[arg(long, default_value = "10s", value_parser = duration, help_heading = "Kafka")]
    pub delivery_timeout: Duration,
    /// Scaling policy file (TOML, same format as the agent's). Required.
    #[arg(long, help_heading = "Decision")]
    pub policy: Option<PathBuf>,
    /// `CloudEvents` source of published events.
    #[arg(
        long,
        default_value = "urn:shadowtap:collector",
        help_heading = "Decision"
    )]
    pub source: String,
    /// Forecast buckets the decision looks at.
    #[arg(long, default_value_t = 12, help_heading = "Decision")]
    pub horizon_steps: usize,
    /// Merged windows needed before the collector's own forecast is used (before that,
    /// decisions use the last observation and the agents' forecasts).
    #[arg(long, default_value_t = 8, help_heading = "Decision")]
    pub min_forecast_history: usize,
    /// Forecast and refit every window, even one whose forecast horizon (--horizon-steps
    /// windows past its end) has already passed on the wall clock when it closes. By
    /// default such windows (a backlog after an outage or a restart) are decided on observed
    /// demand, and the forecaster learns them without refitting, so the collector catches up
    /// fast; counted as `fleet_total{what="windows_caught_up"}`.
    #[arg(long, help_heading = "Decision")]
    pub no_catch_up: bool,
    /// Close a window every known agent reported after this long.
    #[arg(long, default_value = "500ms", value_parser = duration, help_heading = "Merge")]
    pub merge_wait: Duration,
    /// Close a window after this long whoever is missing.
    #[arg(long, default_value = "5s", value_parser = duration, help_heading = "Merge")]
    pub idle_close: Duration,
    /// Close a window once stream time is this many windows past it.
    #[arg(long, default_value_t = 1, help_heading = "Merge")]
    pub grace_windows: u64,
    /// Endpoints kept per merged window.
    #[arg(long, default_value_t = 20, help_heading = "Merge")]
    pub top_k: usize,
    /// Prometheus /metrics, /healthz and the dashboard (`/`, `/v1/dashboard`) address.
    #[arg(long, default_value = "127.0.0.1:9465")]
    pub metrics_addr: SocketAddr,
    /// Allow --metrics-addr on a non-loopback address (the endpoint, with the dashboard, has
    /// no authentication).
    #[arg(long)]
    pub expose_api: bool,
}

impl CollectorArgs {
    /// Every problem the options' parsers cannot see, as (long option, what is wrong).
    /// With `complete`, missing required options are problems too (a settings file alone
    /// need not name them: they may come from flags or the environment).
    pub fn problems(&self, complete: bool) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = Vec::new();
        if complete && self.kafka_brokers.is_none() {
            out.push(("kafka-brokers", "required".into()));
        }
        if self.partitions < 1 {
            out.push(("partitions", "must be at least 1".into()));
        }
        if self.session_timeout.is_zero() {
            out.push(("session-timeout", "must be above zero".into()));
        }
        if self.delivery_timeout.is_zero() {
            out.push(("delivery-timeout", "must be above zero".into()));
        }
        match &self.policy {
            None if complete => out.push(("policy", "required".into())),
            None => {}
            Some(path) => {
                if let Err(e) = PolicySet::load(path) {
                    out.push(("policy", format!("{}: {e}", path.display())));
                }
            }
        }
        if self.horizon_steps == 0 {
            out.push(("horizon-steps", "must be at least 1".into()));
        }
        if self.idle_close < self.merge_wait {
            out.push((
                "idle-close",
                format!(
                    "contradicts merge-wait: a window closes after idle-close ({:?}) whoever is missing, so it must not be shorter than merge-wait ({:?})",
                    self.idle_close, self.merge_wait
                ),
            ));
        }
        if self.top_k == 0 {
            out.push(("top-k", "must be at least 1".into()));
        }
        out
    }

    /// The collector's configuration (policy loaded); `problems(true)` must be empty.
    pub fn collector_config(self) -> anyhow::Result<CollectorConfig> {
        use anyhow::Context as _;
        crate::http::check_listen(self.metrics_addr, self.expose_api)
            .map_err(|e| anyhow::anyhow!("invalid option {e}"))?;
        let policy = self.policy.context("--policy is required")?;
        let policies = PolicySet::load(&policy)
            .with_context(|| format!("loading policy {}", policy.display()))?;
        let kafka = KafkaSettings {
            brokers: self.kafka_brokers.context("--kafka-brokers is required")?,
            observations_topic: self.observations_topic,
            scale_events_topic: self.scale_events_topic,
            properties: self.kafka_properties,
        };
        let mut config = CollectorConfig::new(kafka, policies);
        config.group_id = self.group_id;
        config.state_topic = self.state_topic;
        config.dead_letter_topic = self.dead_letter_topic;
        config.partitions = self.partitions;
        config.create_topics = !self.no_create_topics;
        config.metrics_addr = Some(self.metrics_addr);
        config.lifecycle_topic = (!self.lifecycle_topic.is_empty()).then_some(self.lifecycle_topic);
        config.session_timeout = self.session_timeout;
        config.delivery_timeout = self.delivery_timeout;
        config.fleet = FleetConfig {
            top_k: self.top_k,
            grace_windows: self.grace_windows,
            merge_wait: self.merge_wait,
            idle_close: self.idle_close,
            horizon_steps: self.horizon_steps,
            min_forecast_history: self.min_forecast_history,
            catch_up: !self.no_catch_up,
            source: self.source,
            ..FleetConfig::default()
        };
        Ok(config)
    }
}

/// The options' definition without environment variables: what a settings file is checked
/// against.
pub fn options_command() -> Command {
    CollectorArgs::augment_args(Command::new("shadowtap-collector"))
}

/// Every problem of the settings file at `path`, judged as if it were the only source.
pub fn check_file(path: &std::path::Path) -> Vec<Problem> {
    let cmd = options_command();
    let settings = FileSettings::load(&cmd, path);
    let mut problems = settings.problems.clone();
    if problems.iter().any(|p| p.key.is_empty()) {
        return problems;
    }
    let mut command_line = vec!["shadowtap-collector".into()];
    command_line.extend(settings.args_under(None));
    match cmd
        .clone()
        .try_get_matches_from(command_line)
        .and_then(|m| CollectorArgs::from_arg_matches(&m))
    {
        Ok(args) => problems.extend(
            args.problems(false)
                .into_iter()
                .map(|(long, message)| Problem::new(key_of_long(&cmd, long), message)),
        ),
        Err(e) => problems.push(Problem::new("", clap_message(&e))),
    }
    problems
}

/// [`CollectorArgs::problems`] as one message naming each option and its file key.
pub fn describe_problems(args: &CollectorArgs) -> Option<String> {
    describe_option_problems(&options_command(), &args.problems(true))
}
