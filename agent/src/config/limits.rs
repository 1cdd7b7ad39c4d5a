//! The model's size limits as `run` options (heading "Model", so `model.*` in a settings
//! file). What each costs in memory is measured in docs/configuration.md.

use std::time::Duration;

use shadowtap_core::decision::parse_duration;

use crate::model::{
    DEFAULT_MAX_CLIENTS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_RESOURCES, DEFAULT_MAX_TEMPLATES,
    ModelConfig,
};

fn lateness(text: &str) -> Result<Duration, String> {
    parse_duration(text)
}

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Model")]
pub struct ModelLimits {
    /// Clients (source addresses, or prefixes) modelled at once; beyond, the least recently
    /// seen is evicted and counted. Memory: see docs/configuration.md.
    #[arg(long, default_value_t = DEFAULT_MAX_CLIENTS)]
    pub max_clients: usize,
    /// Resources (services) modelled at once; beyond, eviction as for clients.
    #[arg(long, default_value_t = DEFAULT_MAX_RESOURCES)]
    pub max_resources: usize,
    /// Distinct `METHOD /template` endpoints kept; further ones count as `(other)`.
    #[arg(long, default_value_t = DEFAULT_MAX_TEMPLATES)]
    pub max_templates: usize,
    /// Connections tracked at once, by the request/response tracker (which also keeps
    /// recently closed ones, to recognise retransmissions) and by the model (attribution,
    /// concurrency); beyond, the oldest is dropped and counted.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Clients are IPv4 addresses aggregated to this prefix length (32: one per address).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub client_prefix_v4: u8,
    /// Clients are IPv6 addresses aggregated to this prefix length (128: one per address;
    /// 64 is one per subnet).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub client_prefix_v6: u8,
    /// Events this much older than the latest one are still counted in their window (e.g.
    /// 500ms, 2s; at most 10m); older ones are dropped and counted as late.
    #[arg(long, default_value = "1s", value_parser = lateness)]
    pub lateness: Duration,
}

impl ModelLimits {
    /// `base` with these limits.
    pub fn apply(&self, base: &ModelConfig) -> ModelConfig {
        ModelConfig {
            max_clients: self.max_clients,
            max_resources: self.max_resources,
            max_templates: self.max_templates,
            max_connections: self.max_connections,
            client_prefix_v4: self.client_prefix_v4,
            client_prefix_v6: self.client_prefix_v6,
            allowed_lateness_ns: u64::try_from(self.lateness.as_nanos()).unwrap_or(u64::MAX),
            ..base.clone()
        }
    }
}
