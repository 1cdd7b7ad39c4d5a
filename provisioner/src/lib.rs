//! `shadowtap-provisioner`: consumes `shadowtap.scale-events` and acts on them.
//!
//! Two drivers:
//! - [`exec`]: one shell command per distinct event, from a template (the original example).
//! - [`pool`]: a local pool of backend instances behind HAProxy, driven through its runtime API
//!   ([`haproxy`]); every lifecycle stage is executed, checked and reported as a
//!   `shadowtap.lifecycle.v1` CloudEvent ([`lifecycle`]). Its state file ([`state`]) makes a
//!   restart mid-lifecycle converge without losing or doubling an instance.
//!
//! Events come from Kafka or from a file of CloudEvent JSON lines ([`input`]).

pub mod exec;
pub mod haproxy;
pub mod input;
pub mod instance;
pub mod lifecycle;
pub mod metrics;
pub mod pool;
pub mod prewarm;
pub mod state;

/// Failures of the provisioner's library parts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("haproxy `{command}`: {response}")]
    HaProxy { command: String, response: String },
    #[error("{0}")]
    Instance(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds context to an I/O error.
pub(crate) fn io_context(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Unix time in ms.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
