//! Per-resource scaling policy, loaded from TOML.
//!
//! ```toml
//! [defaults]
//! target_utilisation = 0.7
//! provisioning_lead_time = "3m"
//! scale_in_stabilisation = "10m"
//!
//! [resources."checkout.example.com"]
//! capacity_per_instance = 1200   # demand units per forecast step one instance serves
//! min_instances = 2
//! max_instances = 40
//! ```
//!
//! Every resource gets the `[defaults]` table overlaid with its own. Durations are strings with
//! units (`"90s"`, `"10m"`, `"1h30m"`, `"250ms"`) or integer seconds. Errors name the offending
//! field with its full path, e.g. `resources."api".target_utilisation`.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors loading or validating a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("reading policy file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is malformed, has an unknown field or a value of the wrong type (the message
    /// names the key).
    #[error("policy TOML: {0}")]
    Toml(#[from] toml::de::Error),
    /// A field is missing or out of range.
    #[error("policy field `{field}`: {reason}")]
    Field {
        /// Full path of the offending field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No policy for the requested resource and no usable defaults.
    #[error("no policy for resource `{0}`")]
    UnknownResource(String),
}

/// The validated policy of one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Demand one instance serves per forecast step, in the units of the demand series.
    pub capacity_per_instance: f64,
    /// Fraction of capacity the point forecast (or, reactive, the last window) may use
    /// (0 < u ≤ 1); the forecast's upper bound must fit in full capacity.
    pub target_utilisation: f64,
    /// Time from asking for an instance until it serves traffic.
    #[serde(with = "duration_text")]
    pub provisioning_lead_time: Duration,
    /// Part of the lead time spent warming up (state copy) before traffic shifts.
    #[serde(with = "duration_text")]
    pub warm_up: Duration,
    /// Time to drain traffic from an instance before decommissioning it.
    #[serde(with = "duration_text")]
    pub drain: Duration,
    /// Look this far beyond the lead time: at least the interval between two decisions, since
    /// a decision stands until the next one can take effect.
    #[serde(with = "duration_text")]
    pub horizon: Duration,
    /// Fewest instances.
    pub min_instances: u32,
    /// Most instances.
    pub max_instances: u32,
    /// Minimum time between two scale-outs.
    #[serde(with = "duration_text")]
    pub scale_out_cooldown: Duration,
    /// Minimum time after any scaling action before a scale-in.
    #[serde(with = "duration_text")]
    pub scale_in_cooldown: Duration,
    /// A scale-in goes only as low as the highest recommendation within this window.
    #[serde(with = "duration_text")]
    pub scale_in_stabilisation: Duration,
    /// Extra fraction on top of the demand sized for, point and upper bound (0.1 = 10%).
    pub headroom: f64,
    /// What a new instance copies while warming up (for the lifecycle hint).
    pub state_copy: Option<String>,
    /// Whether decisions follow the forecast or only the last observation.
    #[serde(default)]
    pub mode: PolicyMode,
    /// Wait after a failed provision before the same target is asked for again; doubled per
    /// consecutive failure (at most 16×).
    #[serde(default = "default_retry_backoff", with = "duration_text")]
    pub provision_retry_backoff: Duration,
    /// At most this fraction above the instances the reactive rule would run (0.25 = 25%
    /// more; see `decision::band`); `None`: no ceiling.
    #[serde(default)]
    pub max_cost_ratio: Option<f64>,
    /// Follow the forecast only while its recent MASE (rolling window, against the model's
    /// reference) is below this; at or above it, decide on the last observation with
    /// `headroom`. `None`: always follow.
    #[serde(default)]
    pub skill_fallback_mase: Option<f64>,
    /// Also fall back to the last observation while the forecaster has widened its intervals
    /// by this factor or more to reach their nominal coverage (coverage bought by width, not
    /// skill). `None`: never on width.
    #[serde(default)]
    pub skill_fallback_widening: Option<f64>,
    /// Never run fewer instances than the reactive rule would (so the forecast can only add
    /// capacity, never take away what the last window showed was needed).
    #[serde(default = "default_reactive_floor")]
    pub reactive_floor: bool,
}

/// How a policy decides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    /// Over lead time + horizon, the point forecast at the target utilisation and the upper
    /// bound within full capacity, plus headroom.
    #[default]
    Predictive,
    /// The HPA-like baseline: cover the last observed window at the target utilisation (no
    /// forecast, no headroom); scale in after the stabilisation window. For comparisons and
    /// for resources whose forecast cannot be trusted.
    Reactive,
}

fn default_retry_backoff() -> Duration {
    Duration::from_secs(30)
}

fn default_reactive_floor() -> bool {
    true
}

/// Default `max_cost_ratio`: predictive scaling may cost at most 25% more than reactive.
pub const DEFAULT_MAX_COST_RATIO: f64 = 0.25;
/// Default `skill_fallback_mase`: a forecast no better than seasonal naive is not followed.
pub const DEFAULT_SKILL_FALLBACK_MASE: f64 = 1.0;
/// Default `skill_fallback_widening`: intervals doubled to reach their coverage.
pub const DEFAULT_SKILL_FALLBACK_WIDENING: f64 = 2.0;

impl Default for Policy {
    fn default() -> Self {
        Self {
            capacity_per_instance: 1.0,
            target_utilisation: 0.8,
            provisioning_lead_time: Duration::from_secs(120),
            warm_up: Duration::ZERO,
            drain: Duration::from_secs(30),
            horizon: Duration::from_secs(60),
            min_instances: 1,
            max_instances: 1000,
            scale_out_cooldown: Duration::ZERO,
            scale_in_cooldown: Duration::from_secs(300),
            scale_in_stabilisation: Duration::from_secs(300),
            headroom: 0.0,
            state_copy: None,
            mode: PolicyMode::Predictive,
            provision_retry_backoff: default_retry_backoff(),
            max_cost_ratio: Some(DEFAULT_MAX_COST_RATIO),
            skill_fallback_mase: Some(DEFAULT_SKILL_FALLBACK_MASE),
            skill_fallback_widening: Some(DEFAULT_SKILL_FALLBACK_WIDENING),
            reactive_floor: true,
        }
    }
}

/// One table of the TOML file: every field optional so `[defaults]` and resources can overlay.
// Option<Option<_>>: unset (take the default), set to "off", or set to a value.
#[allow(clippy::option_option)]
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    capacity_per_instance: Option<f64>,
    target_utilisation: Option<f64>,
    #[serde(default, deserialize_with = "optional_duration")]
    provisioning_lead_time: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    warm_up: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    drain: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    horizon: Option<Duration>,
    min_instances: Option<u32>,
    max_instances: Option<u32>,
    #[serde(default, deserialize_with = "optional_duration")]
    scale_out_cooldown: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    scale_in_cooldown: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    scale_in_stabilisation: Option<Duration>,
    headroom: Option<f64>,
    state_copy: Option<String>,
    mode: Option<PolicyMode>,
    #[serde(default, deserialize_with = "optional_duration")]
    provision_retry_backoff: Option<Duration>,
    /// `Some(None)`: set to `"off"`.
    #[serde(default, deserialize_with = "number_or_off")]
    max_cost_ratio: Option<Option<f64>>,
    #[serde(default, deserialize_with = "number_or_off")]
    skill_fallback_mase: Option<Option<f64>>,
    #[serde(default, deserialize_with = "number_or_off")]
    skill_fallback_widening: Option<Option<f64>>,
    reactive_floor: Option<bool>,
}

impl PolicySpec {
    fn overlay(&self, over: &PolicySpec) -> PolicySpec {
        PolicySpec {
            capacity_per_instance: over.capacity_per_instance.or(self.capacity_per_instance),
            target_utilisation: over.target_utilisation.or(self.target_utilisation),
            provisioning_lead_time: over.provisioning_lead_time.or(self.provisioning_lead_time),
            warm_up: over.warm_up.or(self.warm_up),
            drain: over.drain.or(self.drain),
            horizon: over.horizon.or(self.horizon),
            min_instances: over.min_instances.or(self.min_instances),
            max_instances: over.max_instances.or(self.max_instances),
            scale_out_cooldown: over.scale_out_cooldown.or(self.scale_out_cooldown),
            scale_in_cooldown: over.scale_in_cooldown.or(self.scale_in_cooldown),
            scale_in_stabilisation: over.scale_in_stabilisation.or(self.scale_in_stabilisation),
            headroom: over.headroom.or(self.headroom),
            state_copy: over.state_copy.clone().or_else(|| self.state_copy.clone()),
            mode: over.mode.or(self.mode),
            provision_retry_backoff: over
                .provision_retry_backoff
                .or(self.provision_retry_backoff),
            max_cost_ratio: over.max_cost_ratio.or(self.max_cost_ratio),
            skill_fallback_mase: over.skill_fallback_mase.or(self.skill_fallback_mase),
            skill_fallback_widening: over
                .skill_fallback_widening
                .or(self.skill_fallback_widening),
            reactive_floor: over.reactive_floor.or(self.reactive_floor),
        }
    }

    /// Fill unset fields from [`Policy::default`] (except capacity, which has no sensible
    /// default) and validate; `prefix` is the TOML path used in error messages.
    fn resolve(&self, prefix: &str) -> Result<Policy, PolicyError> {
        let d = Policy::default();
        let field = |name: &str| format!("{prefix}{name}");
        let capacity_per_instance =
            self.capacity_per_instance
                .ok_or_else(|| PolicyError::Field {
                    field: field("capacity_per_instance"),
                    reason: "missing (demand one instance serves per step)".into(),
                })?;
        let policy = Policy {
            capacity_per_instance,
            target_utilisation: self.target_utilisation.unwrap_or(d.target_utilisation),
            provisioning_lead_time: self
                .provisioning_lead_time
                .unwrap_or(d.provisioning_lead_time),
            warm_up: self.warm_up.unwrap_or(d.warm_up),
            drain: self.drain.unwrap_or(d.drain),
            horizon: self.horizon.unwrap_or(d.horizon),
            min_instances: self.min_instances.unwrap_or(d.min_instances),
            max_instances: self.max_instances.unwrap_or(d.max_instances),
            scale_out_cooldown: self.scale_out_cooldown.unwrap_or(d.scale_out_cooldown),
            scale_in_cooldown: self.scale_in_cooldown.unwrap_or(d.scale_in_cooldown),
            scale_in_stabilisation: self
                .scale_in_stabilisation
                .unwrap_or(d.scale_in_stabilisation),
            headroom: self.headroom.unwrap_or(d.headroom),
            state_copy: self.state_copy.clone(),
            mode: self.mode.unwrap_or(d.mode),
            provision_retry_backoff: self
                .provision_retry_backoff
                .unwrap_or(d.provision_retry_backoff),
            max_cost_ratio: self.max_cost_ratio.unwrap_or(d.max_cost_ratio),
            skill_fallback_mase: self.skill_fallback_mase.unwrap_or(d.skill_fallback_mase),
            skill_fallback_widening: self
                .skill_fallback_widening
                .unwrap_or(d.skill_fallback_widening),
            reactive_floor: self.reactive_floor.unwrap_or(d.reactive_floor),
        };
        policy.validate_with_prefix(prefix)?;
        Ok(policy)
    }
}

impl Policy {
    /// Check every field; the error names the first offending one.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.validate_with_prefix("")
    }

    fn validate_with_prefix(&self, prefix: &str) -> Result<(), PolicyError> {
        let bad = |name: &str, reason: String| {
            Err(PolicyError::Field {
                field: format!("{prefix}{name}"),
                reason,
            })
        };
        if !(self.capacity_per_instance.is_finite() && self.capacity_per_instance > 0.0) {
            return bad(
                "capacity_per_instance",
                format!(
                    "must be a positive number, got {}",
                    self.capacity_per_instance
                ),
            );
        }
        if !(self.target_utilisation > 0.0 && self.target_utilisation <= 1.0) {
            return bad(
                "target_utilisation",
                format!("must be in (0, 1], got {}", self.target_utilisation),
            );
        }
        if self.warm_up > self.provisioning_lead_time {
            return bad(
                "warm_up",
                format!(
                    "{} is longer than provisioning_lead_time {}",
                    format_duration(self.warm_up),
                    format_duration(self.provisioning_lead_time)
                ),
            );
        }
        if self.max_instances == 0 {
            return bad("max_instances", "must be at least 1".into());
        }
        if self.min_instances > self.max_instances {
            return bad(
                "min_instances",
                format!(
                    "{} is above max_instances {}",
                    self.min_instances, self.max_instances
                ),
            );
        }
        if self.provision_retry_backoff.is_zero() {
            return bad(
                "provision_retry_backoff",
                "must be positive (a failed provision would be retried in a tight loop)".into(),
            );
        }
        if !(self.headroom.is_finite() && (0.0..=10.0).contains(&self.headroom)) {
            return bad(
                "headroom",
                format!("must be a fraction in [0, 10], got {}", self.headroom),
            );
        }
        if let Some(ratio) = self.max_cost_ratio {
            if !(ratio.is_finite() && (0.0..=10.0).contains(&ratio)) {
                return bad(
                    "max_cost_ratio",
                    format!("must be a fraction in [0, 10], got {ratio}"),
                );
            }
            if self.headroom > ratio {
                return bad(
                    "max_cost_ratio",
                    format!(
                        "{ratio} is below headroom {}: the headroom alone would break the \
                         ceiling at every decision (max_cost_ratio defaults to \
                         {DEFAULT_MAX_COST_RATIO}; raise it with the headroom)",
                        self.headroom
                    ),
                );
            }
        }
        if let Some(limit) = self.skill_fallback_mase
            && !(limit.is_finite() && limit > 0.0)
        {
            return bad(
                "skill_fallback_mase",
                format!("must be a positive MASE (1 = seasonal naive), got {limit}"),
            );
        }
        if let Some(widening) = self.skill_fallback_widening
            && !(widening.is_finite() && widening > 1.0)
        {
            return bad(
                "skill_fallback_widening",
                format!(
                    "must be a widening factor above 1 (1 = the model's own interval, which \
                     would never be followed), got {widening}"
                ),
            );
        }
        Ok(())
    }

    /// Demand one instance may carry before the target utilisation is exceeded.
    pub fn threshold_per_instance(&self) -> f64 {
        self.capacity_per_instance * self.target_utilisation
    }
}

/// A policy file: defaults plus per-resource overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFileSpec {
    #[serde(default)]
    defaults: PolicySpec,
    #[serde(default)]
    resources: BTreeMap<String, PolicySpec>,
}

/// Validated policies of all resources in a file.
#[derive(Debug, Clone)]
pub struct PolicySet {
    defaults: PolicySpec,
    resources: BTreeMap<String, Policy>,
}

impl PolicySet {
    /// Parse and validate a policy file's text. Every listed resource is validated now, so a
    /// bad field fails at load time, not at the first decision.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let spec: PolicyFileSpec = toml::from_str(text)?;
        let mut resources = BTreeMap::new();
        for (name, resource) in &spec.resources {
            let prefix = format!("resources.\"{name}\".");
            let merged = spec.defaults.overlay(resource);
            resources.insert(name.clone(), merged.resolve(&prefix)?);
        }
        // Defaults that are used on their own (for unlisted resources) must be valid too.
        if spec.defaults.capacity_per_instance.is_some() {
            spec.defaults.resolve("defaults.")?;
        } else {
            // Validate what is there with a placeholder capacity so a bad default is reported
            // against `defaults.`, not against the first resource that happens to inherit it.
            let mut probe = spec.defaults.clone();
            probe.capacity_per_instance = Some(1.0);
            probe.resolve("defaults.")?;
        }
        Ok(Self {
            defaults: spec.defaults,
            resources,
        })
    }

    /// Read and parse a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Resources listed in the file.
    pub fn resources(&self) -> impl Iterator<Item = (&str, &Policy)> {
        self.resources.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The policy of `resource`: its own table, or `[defaults]` when that is complete.
    pub fn policy_for(&self, resource: &str) -> Result<Policy, PolicyError> {
        if let Some(policy) = self.resources.get(resource) {
            return Ok(policy.clone());
        }
        if self.defaults.capacity_per_instance.is_some() {
            return self.defaults.resolve("defaults.");
        }
        Err(PolicyError::UnknownResource(resource.to_owned()))
    }

    /// The policy of `resource` with `[defaults]` overlaid by explicit overrides (e.g. from
    /// the command line) for fields the file does not need to set.
    pub fn policy_with(
        &self,
        resource: &str,
        capacity_per_instance: Option<f64>,
        provisioning_lead_time: Option<Duration>,
    ) -> Result<Policy, PolicyError> {
        let (mut spec, prefix) = match self.resources.get(resource) {
            Some(policy) => (spec_of(policy), format!("resources.\"{resource}\".")),
            None => (self.defaults.clone(), "defaults.".to_owned()),
        };
        if capacity_per_instance.is_some() {
            spec.capacity_per_instance = capacity_per_instance;
        }
        if provisioning_lead_time.is_some() {
            spec.provisioning_lead_time = provisioning_lead_time;
        }
        spec.resolve(&prefix)
    }
}

fn spec_of(policy: &Policy) -> PolicySpec {
    PolicySpec {
        capacity_per_instance: Some(policy.capacity_per_instance),
        target_utilisation: Some(policy.target_utilisation),
        provisioning_lead_time: Some(policy.provisioning_lead_time),
        warm_up: Some(policy.warm_up),
        drain: Some(policy.drain),
        horizon: Some(policy.horizon),
        min_instances: Some(policy.min_instances),
        max_instances: Some(policy.max_instances),
        scale_out_cooldown: Some(policy.scale_out_cooldown),
        scale_in_cooldown: Some(policy.scale_in_cooldown),
        scale_in_stabilisation: Some(policy.scale_in_stabilisation),
        headroom: Some(policy.headroom),
        state_copy: policy.state_copy.clone(),
        mode: Some(policy.mode),
        provision_retry_backoff: Some(policy.provision_retry_backoff),
        max_cost_ratio: Some(policy.max_cost_ratio),
        skill_fallback_mase: Some(policy.skill_fallback_mase),
        skill_fallback_widening: Some(policy.skill_fallback_widening),
        reactive_floor: Some(policy.reactive_floor),
    }
}

/// Parse `"90s"`, `"10m"`, `"1h30m"`, `"250ms"`, `"2d"` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{text}`: number without unit (use ms, s, m, h or d)"))?;
        if digits == 0 {
            return Err(format!("`{text}`: expected a number before the unit"));
        }
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}`: bad number `{}`", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => value / 1000.0,
            "s" => value,
            "m" | "min" => value * 60.0,
            "h" => value * 3600.0,
            "d" => value * 86_400.0,
            unit => {
                return Err(format!(
                    "`{text}`: unknown unit `{unit}` (use ms, s, m, h or d)"
                ));
            }
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))?;
    }
    Ok(total)
}

/// Format a duration the way [`parse_duration`] reads it, e.g. `"1h30m"`, `"250ms"`.
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= size {
            let _ = write!(out, "{}{unit}", ms / size);
            ms %= size;
        }
    }
    if ms > 0 {
        let _ = write!(out, "{ms}ms");
    }
    out
}

/// A number, or the string `"off"` (`Some(None)`) for a safeguard that is on by default.
#[allow(clippy::option_option)] // see PolicySpec
fn number_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(value) => Ok(Some(Some(value))),
        Raw::Text(text) if text == "off" => Ok(Some(None)),
        Raw::Text(text) => Err(serde::de::Error::custom(format!(
            "expected a number or \"off\", got \"{text}\""
        ))),
    }
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Seconds(secs)) => Ok(Some(Duration::from_secs(secs))),
        Some(Raw::Text(text)) => parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Serde adapter: durations as text like `"10m"`.
pub mod duration_text {
    use super::{Deserialize, Deserializer, Duration, Serializer, format_duration, parse_duration};

    /// Serialize as text.
    pub fn serialize<S: Serializer>(duration: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*duration))
    }

    /// Deserialize from text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
// The compared values are exact by construction (small integers and halves).
#[allow(clippy::float_cmp)]
mod tests;
