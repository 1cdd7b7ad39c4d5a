//! `shadowtap-collector`: see the library docs.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use shadowtap_collector::{Collector, CollectorConfig};
use shadowtap_core::{
    FleetConfig, KafkaSettings,
    decision::{PolicySet, parse_duration},
};

/// The same allocator as the agent (see `agent/src/main.rs`), for the same reason.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

/// Merge agents' observations from Kafka and publish scale events.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long)]
    kafka_brokers: String,
    /// librdkafka property passed through, `key=value` (SASL, TLS, ...); repeatable.
    #[arg(long = "kafka-property", value_parser = KafkaSettings::parse_property)]
    kafka_properties: Vec<(String, String)>,
    #[arg(long, default_value = "shadowtap.observations")]
    observations_topic: String,
    #[arg(long, default_value = "shadowtap.scale-events")]
    scale_events_topic: String,
    #[arg(long, default_value = "shadowtap.collector-state")]
    state_topic: String,
    #[arg(long, default_value = "shadowtap.observations.dlq")]
    dead_letter_topic: String,
    #[arg(long, default_value = "shadowtap-collector")]
    group_id: String,
    /// Scaling policy file (TOML, same format as the agent's).
    #[arg(long)]
    policy: PathBuf,
    /// Partitions of topics created at start.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Do not create missing topics.
    #[arg(long)]
    no_create_topics: bool,
    /// Prometheus /metrics and /healthz address.
    #[arg(long, default_value = "127.0.0.1:9465")]
    metrics_addr: SocketAddr,
    /// `CloudEvents` source of published events.
    #[arg(long, default_value = "urn:shadowtap:collector")]
    source: String,
    /// Close a window every known agent reported after this long.
    #[arg(long, default_value = "500ms", value_parser = duration)]
    merge_wait: Duration,
    /// Close a window after this long whoever is missing.
    #[arg(long, default_value = "5s", value_parser = duration)]
    idle_close: Duration,
    /// Close a window once stream time is this many windows past it.
    #[arg(long, default_value_t = 1)]
    grace_windows: u64,
    /// Endpoints kept per merged window.
    #[arg(long, default_value_t = 20)]
    top_k: usize,
    /// Forecast buckets the decision looks at.
    #[arg(long, default_value_t = 12)]
    horizon_steps: usize,
    /// Merged windows needed before the collector's own forecast is used (before that,
    /// decisions use the last observation and the agents' forecasts).
    #[arg(long, default_value_t = 8)]
    min_forecast_history: usize,
    /// Consumer group session timeout.
    #[arg(long, default_value = "10s", value_parser = duration)]
    session_timeout: Duration,
    /// Delivery timeout of published records (failed ones are retried).
    #[arg(long, default_value = "10s", value_parser = duration)]
    delivery_timeout: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shadowtap_core::init_tracing();
    let args = Args::parse();
    let policies = PolicySet::load(&args.policy)
        .with_context(|| format!("loading policy {}", args.policy.display()))?;
    let kafka = KafkaSettings {
        brokers: args.kafka_brokers,
        observations_topic: args.observations_topic,
        scale_events_topic: args.scale_events_topic,
        properties: args.kafka_properties,
    };
    let mut config = CollectorConfig::new(kafka, policies);
    config.group_id = args.group_id;
    config.state_topic = args.state_topic;
    config.dead_letter_topic = args.dead_letter_topic;
    config.partitions = args.partitions;
    config.create_topics = !args.no_create_topics;
    config.metrics_addr = Some(args.metrics_addr);
    config.session_timeout = args.session_timeout;
    config.delivery_timeout = args.delivery_timeout;
    config.fleet = FleetConfig {
        top_k: args.top_k,
        grace_windows: args.grace_windows,
        merge_wait: args.merge_wait,
        idle_close: args.idle_close,
        horizon_steps: args.horizon_steps,
        min_forecast_history: args.min_forecast_history,
        source: args.source,
        ..FleetConfig::default()
    };
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
