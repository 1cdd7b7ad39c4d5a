//! Where closed model windows go: to Kafka (`--kafka-brokers`, through the durable spool) or,
//! by default, to the collector logic running in-process, which writes scale events as
//! CloudEvents JSON lines. Either way the same decision engine decides.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tracing::warn;

use shadowtap_core::{
    FleetConfig, KafkaSettings, ObservationSink, SinkConfig, decision::PolicySet,
    metrics::Exposition,
};

use super::lifecycle_in::LifecycleTail;
use crate::{
    model::WindowSummary,
    sink::{EmbeddedCollector, observation_from_summary},
    windows::Level,
};

const DEFAULT_POLICY: &str = include_str!("default-policy.toml");

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Publish")]
pub struct PublishArgs {
    /// Kafka bootstrap servers: publish observations instead of deciding in-process.
    #[arg(long)]
    pub kafka_brokers: Option<String>,
    /// librdkafka property passed through verbatim (repeatable), e.g. security.protocol=SASL_SSL.
    #[arg(long = "kafka-property")]
    pub kafka_properties: Vec<String>,
    #[arg(long, default_value = shadowtap_core::kafka::OBSERVATIONS_TOPIC)]
    pub observations_topic: String,
    /// Durable spool for observations while the broker is unreachable (default: STATE_DIR/spool).
    #[arg(long)]
    pub spool_dir: Option<PathBuf>,
    /// Window length of published observations: 1s, 10s or 1m.
    #[arg(long, default_value = "10s")]
    pub observation_window: String,
    /// Scaling policy TOML (default: a built-in policy, see README).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// In-process mode: where scale events go ("-" for stdout).
    #[arg(long, default_value = "-")]
    pub scale_events: String,
    /// In-process mode: the provisioner's lifecycle events file (its --lifecycle-out), followed
    /// so that decisions start from the instances that really serve.
    #[arg(long, value_name = "FILE")]
    pub lifecycle_in: Option<PathBuf>,
    /// Identifies this agent in observations (default: the host name).
    #[arg(long)]
    pub agent_id: Option<String>,
}

// The embedded collector is large, but there is exactly one publisher per agent.
#[allow(clippy::large_enum_variant)]
pub enum Publisher {
    Kafka {
        sink: ObservationSink,
        agent_id: String,
        level: Level,
        seq: u64,
    },
    Embedded {
        collector: EmbeddedCollector,
        agent_id: String,
        level: Level,
        seq: u64,
        lifecycle: Option<LifecycleTail>,
    },
}

pub(crate) fn level_of(text: &str) -> Result<Level> {
    Ok(match text {
        "1s" => Level::Second,
        "10s" => Level::TenSeconds,
        "1m" | "60s" => Level::Minute,
        other => bail!("invalid option --observation-window: {other:?} (1s, 10s or 1m)"),
    })
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "shadowtap-agent".to_owned(), |s| s.trim().to_owned())
}

impl Publisher {
    pub fn start(args: &PublishArgs, state_dir: Option<&Path>) -> Result<Self> {
        let level = level_of(&args.observation_window)?;
        let agent_id = args.agent_id.clone().unwrap_or_else(host_name);
        if let Some(brokers) = &args.kafka_brokers {
            let mut kafka = KafkaSettings::new(brokers.clone());
            kafka
                .observations_topic
                .clone_from(&args.observations_topic);
            for p in &args.kafka_properties {
                kafka.properties.push(
                    KafkaSettings::parse_property(p)
                        .map_err(|e| anyhow::anyhow!("invalid option --kafka-property: {e}"))?,
                );
            }
            let spool_dir = match (&args.spool_dir, state_dir) {
                (Some(d), _) => d.clone(),
                (None, Some(s)) => s.join("spool"),
                (None, None) => bail!(
                    "invalid option --spool-dir: required with --kafka-brokers unless --state-dir is given"
                ),
            };
            let sink = ObservationSink::start(SinkConfig::new(kafka, spool_dir.clone()))
                .with_context(|| {
                    format!(
                        "starting the Kafka producer (spool {})",
                        spool_dir.display()
                    )
                })?;
            return Ok(Self::Kafka {
                sink,
                agent_id,
                level,
                seq: 0,
            });
        }
        let policies = match &args.policy {
            Some(p) => {
                PolicySet::load(p).map_err(|e| anyhow::anyhow!("--policy {}: {e}", p.display()))?
            }
            None => PolicySet::from_toml(DEFAULT_POLICY).context("built-in policy")?,
        };
        let out: Box<dyn Write + Send> = if args.scale_events == "-" {
            // stdout is line-buffered, and the event writer flushes whole lines too, so the two
            // streams interleave by line, never mid-line.
            Box::new(std::io::stdout())
        } else {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&args.scale_events)
                .with_context(|| format!("opening --scale-events {}", args.scale_events))?;
            Box::new(std::io::BufWriter::new(f))
        };
        let config = FleetConfig {
            source: format!("urn:shadowtap:agent:{agent_id}"),
            // The in-process collector merges this agent's observations only, and the agent
            // hands over a window whole once its lateness has passed: there is nobody to
            // wait for, so the window closes (and is decided) as it arrives, not after the
            // collector's merge wait on its next 1 s tick (up to 1.5 s later).
            merge_wait: Duration::ZERO,
            // Live windows: one that closes after its forecast horizon passed (the agent
            // stalled) is decided on what was observed.
            catch_up: true,
            ..FleetConfig::default()
        };
        Ok(Self::Embedded {
            collector: EmbeddedCollector::new(config, policies, out),
            agent_id,
            level,
            seq: 0,
            lifecycle: args.lifecycle_in.clone().map(LifecycleTail::new),
        })
    }

    /// Publishes the summaries of the configured window length (resources only).
    pub fn publish(&mut self, summaries: &[WindowSummary]) -> Result<()> {
        let (agent_id, level, seq) = match self {
            Self::Kafka {
                agent_id,
                level,
                seq,
                ..
            }
            | Self::Embedded {
                agent_id,
                level,
                seq,
                ..
            } => (agent_id.clone(), *level, seq),
        };
        let mut observations = Vec::new();
        for s in summaries.iter().filter(|s| s.level() == Some(level)) {
            if let Some(obs) = observation_from_summary(&agent_id, s, *seq) {
                *seq += 1;
                observations.push(obs);
            }
        }
        for obs in observations {
            match self {
                Self::Kafka { sink, .. } => sink.send(&obs).context("spooling an observation")?,
                Self::Embedded { collector, .. } => {
                    collector.observe(obs).context("writing scale events")?;
                }
            }
        }
        Ok(())
    }

    /// At shutdown, in-process mode: close every open window (writing its scale events).
    pub fn close_windows(&mut self) -> Result<()> {
        if let Self::Embedded { collector, .. } = self {
            collector.finish().context("writing scale events")?;
        }
        Ok(())
    }

    /// About once a second: the in-process collector takes in the provisioner's lifecycle
    /// events, then closes windows that are ready.
    pub fn tick(&mut self) -> Result<()> {
        if let Self::Embedded {
            collector,
            lifecycle,
            ..
        } = self
        {
            if let Some(tail) = lifecycle {
                match tail.read_new() {
                    Ok(events) => {
                        for e in &events {
                            collector.fleet_mut().observe_lifecycle(e);
                        }
                    }
                    // The provisioner's file is not ours: a read error is logged, decisions
                    // go on from the last count that was read.
                    Err(e) => warn!(error = %e, "reading --lifecycle-in"),
                }
            }
            collector.tick().context("writing scale events")?;
        }
        Ok(())
    }

    /// Snapshots of every resource the in-process collector holds (empty with Kafka: the
    /// collector service keeps its own state).
    pub fn snapshots(&self) -> Vec<shadowtap_core::ResourceSnapshot> {
        match self {
            Self::Embedded { collector, .. } => {
                let fleet = collector.fleet();
                fleet
                    .resources()
                    .filter_map(|r| fleet.snapshot(r))
                    .collect()
            }
            Self::Kafka { .. } => Vec::new(),
        }
    }

    /// Restores in-process collector state; returns how many resources could not be restored.
    pub fn restore(&mut self, snapshots: &[shadowtap_core::ResourceSnapshot]) -> usize {
        let Self::Embedded { collector, .. } = self else {
            return 0;
        };
        let now = std::time::Instant::now();
        let mut failed = 0;
        for snap in snapshots {
            if let Err(e) = collector.fleet_mut().restore(snap, now) {
                warn!(error = %e, "collector snapshot of one resource not restored");
                failed += 1;
            }
        }
        failed
    }

    /// The in-process collector's fleet (none with Kafka), for the dashboard.
    pub fn fleet(&self) -> Option<&shadowtap_core::Fleet> {
        match self {
            Self::Embedded { collector, .. } => Some(collector.fleet()),
            Self::Kafka { .. } => None,
        }
    }

    /// The last decision for `resource`, as JSON (in-process mode).
    pub fn decision_json(&self, resource: &str) -> Option<String> {
        match self {
            Self::Embedded { collector, .. } => collector
                .fleet()
                .last_decision(resource)
                .and_then(|d| serde_json::to_string(d).ok()),
            Self::Kafka { .. } => None,
        }
    }

    pub fn render_metrics(&self, page: &mut Exposition) {
        match self {
            Self::Kafka { sink, .. } => sink.render_metrics(page),
            Self::Embedded {
                collector,
                lifecycle,
                ..
            } => {
                if let Some(tail) = lifecycle {
                    page.family(
                        "shadowtap_lifecycle_invalid_lines_total",
                        "counter",
                        "Lines of --lifecycle-in that were not lifecycle events.",
                        &[(&[], tail.invalid_lines as f64)],
                    );
                }
                let stats = serde_json::to_value(collector.stats()).unwrap_or_default();
                if let serde_json::Value::Object(map) = stats {
                    for (k, v) in map {
                        if let Some(n) = v.as_f64() {
                            page.family(
                                &format!("shadowtap_fleet_{k}"),
                                "gauge",
                                "In-process collector counter.",
                                &[(&[], n)],
                            );
                        }
                    }
                }
                collector.fleet().render_resource_metrics(page);
                page.family(
                    "shadowtap_scale_events_written_total",
                    "counter",
                    "Scale events written by the in-process collector.",
                    &[(&[], collector.events_written() as f64)],
                );
            }
        }
    }

    /// At shutdown: close every window (in-process) or flush the spool to the broker.
    pub async fn finish(self) {
        match self {
            Self::Embedded { mut collector, .. } => {
                if let Err(e) = collector.finish() {
                    warn!(error = %e, "writing final scale events failed");
                }
            }
            Self::Kafka { sink, .. } => {
                if !sink.flush(Duration::from_secs(5)).await {
                    warn!(
                        "broker did not take every observation before shutdown; they stay in the spool and are sent on the next start"
                    );
                }
                sink.shutdown().await;
            }
        }
    }
}
