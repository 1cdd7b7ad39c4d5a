//! Provisioner example: consume scale events, drop duplicates by id, run a command per event.
//!
//! `provisioner --kafka-brokers HOST:PORT --exec 'kubectl scale deployment/{resource}
//! --replicas={target}' [--dry-run]`. Each handled event prints one JSON line on stdout.
//! Offsets are committed after the command ran, so an event is handled at least once; the id
//! set makes redeliveries within the last `--remember` events no-ops.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use rdkafka::{
    Message as _,
    consumer::{CommitMode, Consumer as _, StreamConsumer},
};
use shadowtap_collector::provisioner::{SeenIds, render};
use shadowtap_core::{KafkaSettings, ScaleEvent};

/// The same allocator as the agent (see `agent/src/main.rs`), for the same reason.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    kafka_brokers: String,
    #[arg(long = "kafka-property", value_parser = KafkaSettings::parse_property)]
    kafka_properties: Vec<(String, String)>,
    #[arg(long, default_value = "shadowtap.scale-events")]
    topic: String,
    #[arg(long, default_value = "shadowtap-provisioner")]
    group_id: String,
    /// Command template; {resource} {target} {current} {action} {id} {stage} are substituted
    /// shell-quoted.
    #[arg(long)]
    exec: String,
    /// Print the commands instead of running them.
    #[arg(long)]
    dry_run: bool,
    /// Event ids remembered for deduplication.
    #[arg(long, default_value_t = 100_000)]
    remember: usize,
    /// Exit after this many distinct events (for tests and one-shot runs).
    #[arg(long)]
    max_events: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shadowtap_core::init_tracing();
    let args = Args::parse();
    let kafka = KafkaSettings {
        properties: args.kafka_properties.clone(),
        ..KafkaSettings::new(args.kafka_brokers.clone())
    };
    let consumer: StreamConsumer = kafka
        .client_config(&[
            ("group.id", &args.group_id),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
        ])
        .create()
        .context("creating the consumer")?;
    consumer
        .subscribe(&[args.topic.as_str()])
        .context("subscribing")?;
    let mut seen = SeenIds::new(args.remember);
    let mut handled = 0u64;
    let mut duplicates = 0u64;
    let mut malformed = 0u64;
    loop {
        let msg = match consumer.recv().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consume error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let event: Result<ScaleEvent, _> =
            serde_json::from_slice(msg.payload().unwrap_or_default());
        match event {
            Err(e) => {
                malformed += 1;
                tracing::warn!(offset = msg.offset(), error = %e, malformed, "not a scale event; skipped");
            }
            Ok(event) if !seen.insert(&event.id) => {
                duplicates += 1;
                tracing::info!(id = %event.id, duplicates, "duplicate scale event dropped");
            }
            Ok(event) => {
                let command = render(&args.exec, &event);
                let status = if args.dry_run {
                    None
                } else {
                    let out = tokio::process::Command::new("sh")
                        .arg("-c")
                        .arg(&command)
                        .status()
                        .await
                        .with_context(|| format!("running `{command}`"))?;
                    Some(out.code().unwrap_or(-1))
                };
                handled += 1;
                println!(
                    "{}",
                    serde_json::json!({
                        "id": event.id,
                        "resource": event.data.resource,
                        "action": event.data.action,
                        "current": event.data.current_instances,
                        "target": event.data.target_instances,
                        "window_start_ms": event.data.window.start_ms,
                        "requests": event.data.window.counts.requests,
                        "agents": event.data.window.agents,
                        "command": command,
                        "dry_run": args.dry_run,
                        "exit_code": status,
                    })
                );
            }
        }
        consumer
            .commit_message(&msg, CommitMode::Sync)
            .context("committing")?;
        if args.max_events.is_some_and(|m| handled >= m) {
            tracing::info!(handled, duplicates, malformed, "done");
            return Ok(());
        }
    }
}
