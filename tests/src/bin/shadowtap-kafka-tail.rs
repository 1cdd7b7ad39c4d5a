//! `shadowtap-kafka-tail`: a test tool for runs whose pipeline goes through Kafka (the
//! closed-loop experiment's Kafka run). Started inside the test's network namespace, next to
//! the broker on its loopback:
//!
//! - `tail --brokers B --topic T=FILE …` appends every record of each topic, from the
//!   earliest offset, to its file as one line (flushed per record), so the harness reads what
//!   actually crossed the broker the same way it reads the in-process run's files;
//! - `publish --brokers B --topic T --key K LINE` produces one record and waits for its
//!   acknowledgement (the experiment's bootstrap scale event).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};

#[derive(Parser)]
#[command(
    name = "shadowtap-kafka-tail",
    about = "Copy Kafka topics to files (test tool)"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Append each topic's records to a file, one line each, until killed.
    Tail {
        #[arg(long)]
        brokers: String,
        /// TOPIC=FILE, repeatable.
        #[arg(long = "topic", value_parser = topic_file, required = true)]
        topics: Vec<(String, PathBuf)>,
    },
    /// Produce one record and wait for the broker's acknowledgement.
    Publish {
        #[arg(long)]
        brokers: String,
        #[arg(long)]
        topic: String,
        #[arg(long)]
        key: String,
        line: String,
    },
}

fn topic_file(text: &str) -> Result<(String, PathBuf), String> {
    let (topic, file) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not TOPIC=FILE"))?;
    Ok((topic.to_owned(), PathBuf::from(file)))
}

fn main() -> Result<()> {
    match Args::parse().command {
        Command::Tail { brokers, topics } => tail(&brokers, &topics),
        Command::Publish {
            brokers,
            topic,
            key,
            line,
        } => publish(&brokers, &topic, &key, &line),
    }
}

fn tail(brokers: &str, topics: &[(String, PathBuf)]) -> Result<()> {
    let mut files: HashMap<String, File> = HashMap::new();
    for (topic, path) in topics {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        files.insert(topic.clone(), file);
    }
    // A group of its own that never commits: every start reads each topic from the beginning.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("shadowtap-kafka-tail-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("topic.metadata.refresh.interval.ms", "500")
        .set("fetch.wait.max.ms", "50")
        .create()
        .context("creating the consumer")?;
    let names: Vec<&str> = topics.iter().map(|(t, _)| t.as_str()).collect();
    consumer.subscribe(&names).context("subscribing")?;
    loop {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = match result {
            Ok(m) => m,
            // Topics that do not exist yet are created by their producers; keep polling.
            Err(e) => {
                eprintln!("shadowtap-kafka-tail: {e}");
                continue;
            }
        };
        let Some(file) = files.get_mut(message.topic()) else {
            continue;
        };
        let payload = message.payload().unwrap_or_default();
        let mut line = Vec::with_capacity(payload.len() + 1);
        line.extend_from_slice(payload);
        line.push(b'\n');
        file.write_all(&line)
            .and_then(|()| file.flush())
            .with_context(|| format!("writing a record of {}", message.topic()))?;
    }
}

fn publish(brokers: &str, topic: &str, key: &str, line: &str) -> Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .context("creating the producer")?;
    if let Err((e, _)) = producer.send(BaseRecord::to(topic).key(key).payload(line)) {
        bail!("queueing the record for {topic}: {e}");
    }
    producer
        .flush(Duration::from_secs(30))
        .with_context(|| format!("waiting for {topic} to acknowledge"))?;
    Ok(())
}
