//! `shadowtap-provisioner`: consume scale events and act on them (see `docs/provisioner.md`).
//!
//! `--driver exec`: one command per distinct event (`--exec TEMPLATE`, `--dry-run`), one JSON
//! line per handled event on stdout. `--driver haproxy`: a local pool of instances behind an
//! HAProxy backend, driven through the runtime API, with lifecycle CloudEvents. Events come
//! from Kafka (`--kafka-brokers`) or from a file of JSON lines (`--events-file`, `-` = stdin).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use shadowtap_core::KafkaSettings;
use shadowtap_provisioner::{
    exec::{self, ExecConfig},
    haproxy::HaProxy,
    input::Input,
    lifecycle::{LIFECYCLE_TOPIC, Sink},
    pool::{Pool, PoolConfig},
    state::StateFile,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Driver {
    Exec,
    Haproxy,
}

#[derive(Debug, Parser)]
#[command(about = "Consume shadowtap scale events and act on them")]
#[allow(clippy::struct_excessive_bools)]
struct Args {
    #[arg(long, value_enum, default_value = "exec")]
    driver: Driver,
    /// Kafka bootstrap servers (scale events in; lifecycle events out unless --lifecycle-out).
    #[arg(long, required_unless_present = "events_file")]
    kafka_brokers: Option<String>,
    #[arg(long = "kafka-property", value_parser = KafkaSettings::parse_property)]
    kafka_properties: Vec<(String, String)>,
    #[arg(long, default_value = "shadowtap.scale-events")]
    topic: String,
    #[arg(long, default_value = "shadowtap-provisioner")]
    group_id: String,
    /// Read scale events (CloudEvent JSON lines) from this file instead of Kafka; `-`: stdin.
    #[arg(long, conflicts_with = "kafka_brokers")]
    events_file: Option<PathBuf>,
    /// Exit after this many distinct events.
    #[arg(long)]
    max_events: Option<u64>,
    /// Serve Prometheus counters on `http://ADDR/metrics` (events, failed commands and
    /// lifecycle stages); off when absent.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,

    /// exec: command template; {resource} {target} {current} {action} {id} {stage} are
    /// substituted shell-quoted.
    #[arg(long, required_if_eq("driver", "exec"))]
    exec: Option<String>,
    /// exec: print the commands instead of running them.
    #[arg(long)]
    dry_run: bool,
    /// exec: event ids remembered for deduplication.
    #[arg(long, default_value_t = 100_000)]
    remember: usize,

    /// haproxy: the admin socket (`stats socket PATH level admin`).
    #[arg(long, required_if_eq("driver", "haproxy"))]
    haproxy_socket: Option<PathBuf>,
    /// haproxy: the backend holding the instances.
    #[arg(long, default_value = "app")]
    backend: String,
    /// haproxy: act only on events of this resource.
    #[arg(long)]
    resource: Option<String>,
    /// haproxy: starts one instance; {name} {addr} {port} substituted shell-quoted.
    #[arg(long, required_if_eq("driver", "haproxy"))]
    instance_cmd: Option<String>,
    /// haproxy: run after provisioning and pre-warming (e.g. copy state); same placeholders.
    #[arg(long)]
    warmup_cmd: Option<String>,
    /// haproxy: pre-warm each new instance's cache from this request profile: an agent's
    /// `http://HOST:PORT/v1/resources/ID/profile`, or a profile file.
    #[arg(long, value_name = "URL|FILE")]
    prewarm_profile: Option<String>,
    /// haproxy: at most this many pre-warm requests per instance.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    prewarm_requests: u64,
    /// haproxy: at most this long pre-warming one instance.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    prewarm_time: std::time::Duration,
    /// haproxy: pre-warm requests in parallel.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    prewarm_concurrency: u64,
    /// haproxy: the state file (instances, lifecycle in flight).
    #[arg(long, required_if_eq("driver", "haproxy"))]
    state_file: Option<PathBuf>,
    /// haproxy: lifecycle events as JSON lines to this file instead of Kafka.
    #[arg(long)]
    lifecycle_out: Option<PathBuf>,
    #[arg(long, default_value = LIFECYCLE_TOPIC)]
    lifecycle_topic: String,
    #[arg(long, default_value = "stp-")]
    name_prefix: String,
    #[arg(long, default_value = "127.0.0.1")]
    addr: String,
    #[arg(long, default_value_t = 20_000)]
    base_port: u16,
    #[arg(long, default_value = "/")]
    health_path: String,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    health_timeout: Duration,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    provision_timeout: Duration,
    #[arg(long, default_value_t = 3)]
    provision_attempts: u32,
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    backoff: Duration,
    #[arg(long, default_value_t = 100)]
    full_weight: u32,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    ramp_time: Duration,
    #[arg(long, default_value_t = 4)]
    ramp_steps: u32,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    stop_grace: Duration,
    /// Instance logs; default: next to the state file.
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

/// `250ms`, `2s`, `1m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let (num, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("bad duration `{text}`"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration unit in `{text}` (ms, s, m)")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shadowtap_core::init_tracing();
    let args = Args::parse();
    if let Some(addr) = args.metrics_listen {
        // Bind here so a taken port is a start-up error, then serve in the background.
        drop(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("metrics endpoint {addr}"))?,
        );
        tokio::spawn(async move {
            let handler = |path: &str| -> shadowtap_core::metrics::Response {
                match path {
                    "/metrics" => (
                        "200 OK",
                        "text/plain; version=0.0.4",
                        shadowtap_provisioner::metrics::metrics().render(),
                    ),
                    "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
                    _ => ("404 Not Found", "text/plain", "not found\n".into()),
                }
            };
            if let Err(e) =
                shadowtap_core::metrics::serve_http(addr, std::sync::Arc::new(handler)).await
            {
                tracing::error!(%addr, error = %e, "metrics endpoint stopped");
            }
        });
    }
    let kafka = args.kafka_brokers.as_ref().map(|b| KafkaSettings {
        properties: args.kafka_properties.clone(),
        ..KafkaSettings::new(b.clone())
    });
    let input = match (&args.events_file, &kafka) {
        (Some(path), _) => Input::file(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?,
        (None, Some(k)) => {
            Input::kafka(k, &args.topic, &args.group_id).context("creating the consumer")?
        }
        (None, None) => anyhow::bail!("--kafka-brokers or --events-file is required"),
    };
    match args.driver {
        Driver::Exec => {
            let config = ExecConfig {
                template: args.exec.clone().context("--exec is required")?,
                dry_run: args.dry_run,
                remember: args.remember,
                max_events: args.max_events,
            };
            exec::run(&config, input, &mut |line| println!("{line}"))
                .await
                .context("exec driver")
        }
        Driver::Haproxy => run_pool(&args, kafka.as_ref(), input).await,
    }
}

async fn run_pool(args: &Args, kafka: Option<&KafkaSettings>, input: Input) -> anyhow::Result<()> {
    let state_file = args
        .state_file
        .clone()
        .context("--state-file is required")?;
    let log_dir = args.log_dir.clone().unwrap_or_else(|| {
        state_file
            .parent()
            .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf)
    });
    let sink = match (&args.lifecycle_out, kafka) {
        (Some(path), _) => Sink::file(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?,
        (None, Some(k)) => Sink::kafka(k, &args.lifecycle_topic, Duration::from_secs(30))
            .context("creating the lifecycle producer")?,
        (None, None) => Sink::Stdout,
    };
    let cfg = PoolConfig {
        backend: args.backend.clone(),
        resource: args.resource.clone(),
        name_prefix: args.name_prefix.clone(),
        addr: args.addr.clone(),
        base_port: args.base_port,
        instance_cmd: args
            .instance_cmd
            .clone()
            .context("--instance-cmd is required")?,
        warmup_cmd: args.warmup_cmd.clone(),
        prewarm: args.prewarm_profile.clone().map(|profile| {
            shadowtap_provisioner::prewarm::PrewarmConfig {
                profile,
                max_requests: usize::try_from(args.prewarm_requests).unwrap_or(usize::MAX),
                max_time: args.prewarm_time,
                concurrency: usize::try_from(args.prewarm_concurrency).unwrap_or(8),
            }
        }),
        health_path: args.health_path.clone(),
        health_timeout: args.health_timeout,
        provision_timeout: args.provision_timeout,
        provision_attempts: args.provision_attempts,
        backoff: args.backoff,
        full_weight: args.full_weight,
        ramp_time: args.ramp_time,
        ramp_steps: args.ramp_steps,
        drain_timeout: args.drain_timeout,
        stop_grace: args.stop_grace,
        log_dir,
        source: format!("shadowtap-provisioner/{}", args.backend),
    };
    let haproxy = HaProxy::new(
        args.haproxy_socket
            .clone()
            .context("--haproxy-socket is required")?,
    );
    let mut pool = Pool::open(cfg, haproxy, StateFile::new(state_file), sink)
        .await
        .context("opening the pool")?;
    pool.run(input, args.max_events)
        .await
        .context("haproxy driver")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("2h").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory as _;
        Args::command().debug_assert();
    }
}
