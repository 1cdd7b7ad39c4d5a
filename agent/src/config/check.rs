//! What `run`'s options' own parsers cannot judge: limits that depend on other options,
//! contradictions, and the files the options name.

use shadowtap_core::{KafkaSettings, decision::PolicySet};

use crate::{
    capture::{self, CaptureError, TapOptions},
    model::ModelError,
    runtime::{RunArgs, publish_level},
};

/// The long option that sets a [`crate::model::ModelConfig`] field.
fn model_option(field: &'static str) -> &'static str {
    match field {
        "max_resources" => "max-resources",
        "max_clients" => "max-clients",
        "max_templates" => "max-templates",
        "max_connections" => "max-connections",
        "client_prefix_v4" => "client-prefix-v4",
        "client_prefix_v6" => "client-prefix-v6",
        "allowed_lateness_ns" => "lateness",
        // Not options of `run`: the model's fixed settings, named as they are.
        other => other,
    }
}

const KERNEL_LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Every problem of `args`, as (long option, what is wrong), in option order.
pub fn run_problems(args: &RunArgs) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    if !KERNEL_LOG_LEVELS.contains(&args.kernel_log.as_str()) {
        out.push((
            "kernel-log",
            format!(
                "{:?} is not one of {}",
                args.kernel_log,
                KERNEL_LOG_LEVELS.join(", ")
            ),
        ));
    }
    if args.stats_interval == 0 {
        out.push(("stats-interval", "must be at least 1 second".into()));
    }
    match args.ringbuf_mib.checked_mul(1024 * 1024) {
        None => out.push(("ringbuf-size", "too large (at most 2048 MiB)".into())),
        Some(ringbuf_bytes) => {
            let opts = TapOptions {
                mode: args.mode,
                xdp_mode: args.xdp_mode,
                snaplen: args.snaplen,
                sample_n: args.sample,
                ports: args.ports.clone(),
                ringbuf_bytes,
                wakeup_bytes: capture::default_wakeup_bytes(ringbuf_bytes),
                flow_entries: args.flow_entries,
                kernel_log_level: 0,
            };
            for e in opts.problems() {
                if let CaptureError::InvalidOption { field, reason } = e {
                    // The wakeup mark is derived from the ring size.
                    let field = if field == "wakeup-bytes" {
                        "ringbuf-size"
                    } else {
                        field
                    };
                    out.push((field, reason));
                }
            }
        }
    }
    if args.metrics_listen != "off" && args.metrics_listen.parse::<std::net::SocketAddr>().is_err()
    {
        out.push((
            "metrics-listen",
            format!("{:?} is not ADDR:PORT or \"off\"", args.metrics_listen),
        ));
    }
    for e in args.model_config().problems() {
        if let ModelError::Config { field, reason } = e {
            out.push((model_option(field), reason));
        }
    }
    if args.no_profiles && args.profile_sample != 1 {
        out.push((
            "profile-sample",
            "contradicts no-profiles (there are no profiles to sample)".into(),
        ));
    }
    publish_problems(args, &mut out);
    out
}

fn publish_problems(args: &RunArgs, out: &mut Vec<(&'static str, String)>) {
    let publish = &args.publish;
    if let Err(e) = publish_level(&publish.observation_window) {
        out.push(("observation-window", e.to_string()));
    }
    for p in &publish.kafka_properties {
        if let Err(e) = KafkaSettings::parse_property(p) {
            out.push(("kafka-property", e));
        }
    }
    match &publish.kafka_brokers {
        Some(_) if publish.spool_dir.is_none() && args.state_dir.is_none() => out.push((
            "spool-dir",
            "required with kafka-brokers unless state-dir is given".into(),
        )),
        None if publish.spool_dir.is_some() => out.push((
            "spool-dir",
            "contradicts the in-process collector: the spool is only used with kafka-brokers"
                .into(),
        )),
        None if !publish.kafka_properties.is_empty() => out.push((
            "kafka-property",
            "contradicts the in-process collector: only used with kafka-brokers".into(),
        )),
        _ => {}
    }
    if let Some(path) = &publish.policy
        && let Err(e) = PolicySet::load(path)
    {
        out.push(("policy", format!("{}: {e}", path.display())));
    }
}
