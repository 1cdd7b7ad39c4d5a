//! `shadowtap-collector`: consumes agents' observations from Kafka, merges them per resource,
//! decides with the shared fleet logic ([`shadowtap_core::fleet`]) and publishes
//! `CloudEvents` scale events.
//!
//! Delivery: at least once end to end. A publisher thread produces the scale events and dead
//! letters each batch caused while the loop decides the next batch; every commit interval its
//! state snapshots follow, in order, once those events are acknowledged, and the batch offsets
//! are committed only once the snapshots are acknowledged. Its state (open windows, merged
//! history, instances, last decisions) is written to a state topic co-partitioned with the
//! observations, so whichever collector owns a partition next resumes from it. Replays are
//! harmless: observations are deduplicated by (agent, resource, window) and a window's scale
//! event has a deterministic id.

pub mod config;
pub mod http;
mod ownership;
mod publish;
mod publisher;
pub mod service;
pub mod state;
pub mod stats;
pub mod topics;

pub use publisher::PublisherStopped;
pub use service::{Collector, CollectorConfig, CollectorError};
pub use stats::CollectorStats;
