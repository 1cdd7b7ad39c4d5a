//! Limits asked for now, applied to a model restored from a snapshot taken with others.

use super::{ModelConfig, ModelStore};

impl ModelStore {
    /// Raises the entity and template limits to `wanted`'s (an operator who sees evictions
    /// raises a limit and restarts; the restored model must then use it). Returns the settings
    /// that stay as the snapshot had them, as `name: kept (asked)`: lower limits (lowering
    /// would drop entities), and the client prefixes, lateness and connection limit, which
    /// the restored state was built with.
    pub fn apply_limits(&mut self, wanted: &ModelConfig) -> Vec<String> {
        let mut kept = Vec::new();
        let mut note = |name: &str, have: String, asked: String| {
            if have != asked {
                kept.push(format!("{name}: {have} (asked {asked})"));
            }
        };
        self.clients.raise_capacity(wanted.max_clients);
        self.config.max_clients = self.clients.capacity();
        note(
            "max_clients",
            self.config.max_clients.to_string(),
            wanted.max_clients.to_string(),
        );
        self.resources.raise_capacity(wanted.max_resources);
        self.config.max_resources = self.resources.capacity();
        note(
            "max_resources",
            self.config.max_resources.to_string(),
            wanted.max_resources.to_string(),
        );
        self.templates.raise_max(wanted.max_templates);
        self.config.max_templates = self.config.max_templates.max(wanted.max_templates);
        note(
            "max_templates",
            self.config.max_templates.to_string(),
            wanted.max_templates.to_string(),
        );
        let c = &self.config;
        note(
            "max_connections",
            c.max_connections.to_string(),
            wanted.max_connections.to_string(),
        );
        note(
            "client_prefix_v4",
            c.client_prefix_v4.to_string(),
            wanted.client_prefix_v4.to_string(),
        );
        note(
            "client_prefix_v6",
            c.client_prefix_v6.to_string(),
            wanted.client_prefix_v6.to_string(),
        );
        note(
            "lateness",
            format!("{} ns", c.allowed_lateness_ns),
            format!("{} ns", wanted.allowed_lateness_ns),
        );
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_limits_apply_to_a_restored_model_and_others_are_named() {
        let old = ModelConfig {
            max_clients: 10,
            max_resources: 10,
            max_templates: 10,
            ..ModelConfig::default()
        };
        let mut store = ModelStore::new(old.clone()).expect("store");
        let wanted = ModelConfig {
            max_clients: 100,
            max_resources: 5,
            max_templates: 50,
            client_prefix_v6: 64,
            ..old
        };
        let kept = store.apply_limits(&wanted);
        assert_eq!(store.config().max_clients, 100);
        assert_eq!(store.clients.capacity(), 100);
        assert_eq!(store.config().max_templates, 50);
        assert_eq!(
            kept,
            [
                "max_resources: 10 (asked 5)",
                "client_prefix_v6: 128 (asked 64)"
            ]
        );
    }
}
