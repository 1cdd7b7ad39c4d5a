//! The `exec` driver: drop duplicate scale events by id and run a command per distinct event,
//! rendered from a template. Offsets are committed after the command ran, so an event is
//! handled at least once; the id memory makes redeliveries within the last `remember` events
//! no-ops.

use std::collections::{HashSet, VecDeque};

use shadowtap_core::ScaleEvent;

use crate::{
    Result,
    input::Input,
    io_context,
    metrics::{EventOutcome, metrics},
};

/// Remembers the last `capacity` event ids.
#[derive(Debug)]
pub struct SeenIds {
    capacity: usize,
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl SeenIds {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    /// True when `id` is new (and remembers it).
    pub fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.order.push_back(id.to_owned());
        self.set.insert(id.to_owned());
        true
    }
}

/// Quote for `sh`: the values come from the network and must never be interpreted.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Fill `{resource}`, `{target}`, `{current}`, `{action}`, `{id}` and `{stage}` in `template`,
/// each shell-quoted.
pub fn render(template: &str, event: &ScaleEvent) -> String {
    let d = &event.data;
    let action = match d.action {
        shadowtap_core::decision::Action::ScaleOut => "scale_out",
        shadowtap_core::decision::Action::ScaleIn => "scale_in",
        shadowtap_core::decision::Action::Hold => "hold",
    };
    let stage = d
        .stage
        .and_then(|s| serde_json::to_value(s).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    template
        .replace("{resource}", &shell_quote(&d.resource))
        .replace("{target}", &shell_quote(&d.target_instances.to_string()))
        .replace("{current}", &shell_quote(&d.current_instances.to_string()))
        .replace("{action}", &shell_quote(action))
        .replace("{id}", &shell_quote(&event.id))
        .replace("{stage}", &shell_quote(&stage))
}

/// Settings of the exec driver.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// The command template (see [`render`]).
    pub template: String,
    /// Report the commands instead of running them.
    pub dry_run: bool,
    /// Event ids remembered for deduplication.
    pub remember: usize,
    /// Stop after this many distinct events.
    pub max_events: Option<u64>,
}

/// Consumes `input` until it ends (or `max_events`), reporting one JSON object per handled
/// event to `report`.
pub async fn run(
    config: &ExecConfig,
    mut input: Input,
    report: &mut (dyn FnMut(serde_json::Value) + Send),
) -> Result<()> {
    let mut seen = SeenIds::new(config.remember);
    let (mut handled, mut duplicates, mut malformed) = (0u64, 0u64, 0u64);
    while let Some(incoming) = input.next().await? {
        match serde_json::from_slice::<ScaleEvent>(&incoming.payload) {
            Err(e) => {
                malformed += 1;
                metrics().event(EventOutcome::Malformed);
                tracing::warn!(error = %e, malformed, "not a scale event; skipped");
            }
            Ok(event) if !seen.insert(&event.id) => {
                duplicates += 1;
                metrics().event(EventOutcome::Duplicate);
                tracing::info!(id = %event.id, duplicates, "duplicate scale event dropped");
            }
            Ok(event) => {
                let command = render(&config.template, &event);
                let status = if config.dry_run {
                    None
                } else {
                    let out = tokio::process::Command::new("sh")
                        .arg("-c")
                        .arg(&command)
                        .status()
                        .await
                        .map_err(io_context(format!("running `{command}`")))?;
                    metrics().command(out.success());
                    Some(out.code().unwrap_or(-1))
                };
                handled += 1;
                metrics().event(EventOutcome::Handled);
                report(serde_json::json!({
                    "id": event.id,
                    "resource": event.data.resource,
                    "action": event.data.action,
                    "current": event.data.current_instances,
                    "target": event.data.target_instances,
                    "window_start_ms": event.data.window.start_ms,
                    "requests": event.data.window.counts.requests,
                    "agents": event.data.window.agents,
                    "command": command,
                    "dry_run": config.dry_run,
                    "exit_code": status,
                }));
            }
        }
        input.commit(&incoming)?;
        if config.max_events.is_some_and(|m| handled >= m) {
            break;
        }
    }
    tracing::info!(handled, duplicates, malformed, "done");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_forget_the_oldest() {
        let mut s = SeenIds::new(2);
        assert!(s.insert("a"));
        assert!(!s.insert("a"));
        assert!(s.insert("b"));
        assert!(s.insert("c"));
        assert!(s.insert("a"), "a was evicted");
    }

    #[test]
    fn quoting_defeats_injection() {
        assert_eq!(shell_quote("api"), "'api'");
        assert_eq!(shell_quote("a'; rm -rf /; '"), r"'a'\''; rm -rf /; '\'''");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote("x'$(echo pwned)'")))
            .output()
            .expect("sh");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "x'$(echo pwned)'");
    }
}
