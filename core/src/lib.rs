//! shadowtap's pure stages, shared by every process that needs them and free of the eBPF
//! loader, so that the collector, the provisioner and the load generator link only what they
//! run.
//!
//! In dataflow order, after the agent's capture → decode → events → windows → model:
//! - [`wire`]: the `shadowtap.observations` record an agent publishes per closed window;
//! - [`kafka`] (feature `kafka`): the idempotent producer with its bounded on-disk spool;
//! - [`fleet`]: the collector's brain — merge many agents' observations of a resource,
//!   forecast ([`forecast`]) and decide ([`decision`]);
//! - [`scale_event`]: the `shadowtap.scale-events` `CloudEvents` a decision becomes;
//! - [`metrics`]: Prometheus text exposition, shared by every process's `/metrics`;
//! - [`profile`]: request profiles (how a resource is used), which the agent writes and the
//!   load generator reads.
//!
//! The wire formats are documented in `collector/WIRE_FORMAT.md`.

pub mod cli_config;
pub mod dashboard;
pub mod decision;
pub mod fleet;
pub mod forecast;
pub mod http_client;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod lifecycle;
pub mod metrics;
pub mod profile;
pub mod scale_event;
pub mod wire;

/// Logs to stderr with `RUST_LOG` filtering (default `info`); `log` records, such as the
/// kernel's aya-log output, are bridged in. Shared by every shadowtap binary.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

pub use fleet::{ClosedWindow, Fleet, FleetConfig, FleetStats, Ingested, ResourceSnapshot};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaSettings, ObservationSink, SinkConfig, SinkStats};
pub use scale_event::ScaleEvent;
pub use wire::{Observation, WindowCounts, decode_observation, encode_observation};
