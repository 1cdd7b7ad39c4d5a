//! The last stage: ship observations to the fleet and turn merged observations into scale
//! events (issue 4).
//!
//! - [`wire`]: the compact `shadowtap.observations` record format (protobuf + `HdrHistogram`);
//! - [`spool`] and [`kafka`]: the agent's idempotent producer with a bounded on-disk spool;
//! - [`fleet`]: the collector's merge + forecast combination + decision logic, free of Kafka;
//! - [`scale_event`]: `shadowtap.scale-events` `CloudEvents`;
//! - [`embedded`]: the collector logic in-process, writing `CloudEvents` JSON lines.
//!
//! The wire formats are documented in `collector/WIRE_FORMAT.md`.

pub mod embedded;
pub mod fleet;
pub mod kafka;
pub mod scale_event;
pub mod spool;
pub mod wire;

pub use embedded::EmbeddedCollector;
pub use fleet::{ClosedWindow, Fleet, FleetConfig, FleetStats, Ingested, ResourceSnapshot};
pub use kafka::{KafkaSettings, ObservationSink, SinkConfig, SinkStats};
pub use scale_event::ScaleEvent;
pub use wire::{Observation, WindowCounts, decode_observation, encode_observation};
