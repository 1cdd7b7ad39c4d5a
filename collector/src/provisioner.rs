//! The provisioner example's logic: drop duplicate scale events by id and turn the rest into a
//! command line from a template.

use std::collections::{HashSet, VecDeque};

use shadowtap_core::ScaleEvent;

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
