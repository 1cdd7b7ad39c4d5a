//! The parameter catalogue (TOML): what can be tuned on a service, how a value reaches it, how
//! a shadow starts, stops and is health-checked, and how much of the host a shadow may use.
//!
//! A catalogue is parsed into loosely typed raw structs and then validated field by field, so
//! that every refusal names the field at fault (`parameter[2].max`, `apply.config`, …) — serde's
//! own errors for tagged enums name the variant, not where it sits.

mod raw;
pub mod template;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::trial::{ParamValue, Params};

pub use raw::parse_catalogue;

/// Why a catalogue is refused. Every variant names the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("catalogue is not valid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("field `{field}` is missing")]
    Missing { field: String },
    #[error("field `{field}`: unknown type {found:?} (enum, int, float)")]
    UnknownType { field: String, found: String },
    #[error("field `{field}`: empty range ({detail})")]
    EmptyRange { field: String, detail: String },
    #[error("field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
    #[error("field `{field}`: no parameter named {name:?}")]
    UnknownParameter { field: String, name: String },
    #[error("field `{field}`: the constraints cannot all hold for any parameter values")]
    Unsatisfiable { field: String },
    #[error("field `{field}`: placeholder {{{{{name}}}}} names no parameter")]
    UnknownPlaceholder { field: String, name: String },
    #[error(
        "field `parameter.{name}`: the parameter is used by no template, flag, env or admin call"
    )]
    UnusedParameter { name: String },
}

/// What values a parameter takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    /// One of a list of strings.
    Choice(Vec<String>),
    /// Integers `min..=max` in steps of `step` from `min`; `log` spaces samples and grid levels
    /// geometrically.
    Int {
        min: i64,
        max: i64,
        step: i64,
        log: bool,
    },
    /// Reals in `[min, max]`; `log` samples geometrically. Rendered with `decimals` digits.
    Float {
        min: f64,
        max: f64,
        log: bool,
        decimals: u32,
    },
}

/// One tunable parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    pub name: String,
    pub domain: Domain,
    /// The levels a grid sweep visits (also the points a tabular benchmark measures).
    pub grid: Vec<ParamValue>,
}

/// A comparison between two parameters (or a parameter and a number): `left op scale·right`.
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    pub left: String,
    pub op: CmpOp,
    pub right: Operand,
    pub scale: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Lt,
    Le,
    Ge,
    Gt,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Param(String),
    Number(f64),
}

/// An HTTP call the runner makes to the shadow after it is healthy (for services configured at
/// run time).
#[derive(Debug, Clone, PartialEq)]
pub struct AdminCall {
    pub method: String,
    /// Path template (`/admin/set?x={{x}}`).
    pub path: String,
    /// Body template.
    pub body: String,
}

/// How a trial's values reach the service.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Apply {
    /// The config file template (its text), rendered to `{{config}}`.
    pub config: Option<String>,
    /// Name of the rendered config file in the trial's directory.
    pub config_file: String,
    /// Environment variables for the start command (values are templates).
    pub env: BTreeMap<String, String>,
    /// Command-line arguments appended to the start command (templates).
    pub flags: Vec<String>,
    pub admin: Option<AdminCall>,
}

/// How a shadow starts, stops and is checked. Commands are templates split on whitespace after
/// rendering (no shell), run inside the trial's network namespace and cgroup.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowCommands {
    pub start: String,
    pub stop: Option<String>,
    /// HTTP path the runner GETs from inside the namespace; healthy on a 2xx.
    pub health_path: String,
    pub health_timeout_ms: u64,
    /// Port the shadow listens on inside its namespace (`{{listen}}` is `127.0.0.1:port`).
    pub port: u16,
}

/// A shadow's share of the primary's resources (cgroup limits).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub primary_cpu_cores: f64,
    pub primary_memory_bytes: u64,
    pub cpu_fraction: f64,
    pub memory_fraction: f64,
}

impl Limits {
    /// CPU the shadow may use, in cores.
    pub fn cpu_cores(&self) -> f64 {
        self.primary_cpu_cores * self.cpu_fraction
    }

    pub fn memory_bytes(&self) -> u64 {
        (self.primary_memory_bytes as f64 * self.memory_fraction) as u64
    }
}

/// A validated catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue {
    pub service: String,
    pub parameters: Vec<Parameter>,
    pub constraints: Vec<Constraint>,
    pub apply: Apply,
    pub shadow: ShadowCommands,
    pub limits: Limits,
}

impl Catalogue {
    /// Reads and validates a catalogue file.
    pub fn load(path: &Path) -> Result<Self, CatalogueError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogueError::Io {
            path: path.to_owned(),
            source,
        })?;
        parse_catalogue(&text)
    }

    pub fn parameter(&self, name: &str) -> Option<&Parameter> {
        self.parameters.iter().find(|p| p.name == name)
    }

    /// True when `params` satisfies every constraint.
    pub fn satisfies(&self, params: &Params) -> bool {
        self.constraints.iter().all(|c| c.holds(params))
    }

    /// Every combination of grid levels that satisfies the constraints, in a fixed order.
    pub fn grid(&self) -> Vec<Params> {
        let mut out = vec![Params::new()];
        for p in &self.parameters {
            let mut next = Vec::with_capacity(out.len() * p.grid.len());
            for base in &out {
                for level in &p.grid {
                    let mut point = base.clone();
                    point.insert(p.name.clone(), level.clone());
                    next.push(point);
                }
            }
            out = next;
        }
        out.retain(|p| self.satisfies(p));
        out
    }

    /// The text each parameter's value is rendered as in templates.
    pub fn rendered_values(&self, params: &Params) -> BTreeMap<String, String> {
        params
            .iter()
            .map(|(name, value)| {
                let text = match (self.parameter(name).map(|p| &p.domain), value) {
                    (Some(Domain::Float { decimals, .. }), ParamValue::Float(v)) => {
                        format!("{v:.prec$}", prec = *decimals as usize)
                    }
                    _ => value.to_string(),
                };
                (name.clone(), text)
            })
            .collect()
    }
}

impl Constraint {
    /// Whether the constraint holds; a missing or non-numeric value makes it fail.
    pub fn holds(&self, params: &Params) -> bool {
        let Some(l) = params.get(&self.left).and_then(ParamValue::as_f64) else {
            return false;
        };
        let r = match &self.right {
            Operand::Number(v) => *v,
            Operand::Param(name) => match params.get(name).and_then(ParamValue::as_f64) {
                Some(v) => v,
                None => return false,
            },
        } * self.scale;
        match self.op {
            CmpOp::Lt => l < r,
            CmpOp::Le => l <= r,
            CmpOp::Ge => l >= r,
            CmpOp::Gt => l > r,
        }
    }
}
