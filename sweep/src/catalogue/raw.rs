//! The catalogue as written (every field optional) and its validation into [`Catalogue`].

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use super::template::{BUILTIN_PLACEHOLDERS, placeholders};
use super::{
    AdminCall, Apply, Catalogue, CatalogueError, CmpOp, Constraint, Domain, Limits, Operand,
    Parameter, ShadowCommands,
};
use crate::trial::{ParamValue, Params};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalogue {
    service: Option<String>,
    #[serde(default)]
    parameter: Vec<RawParameter>,
    #[serde(default)]
    constraint: Vec<RawConstraint>,
    apply: Option<RawApply>,
    shadow: Option<RawShadow>,
    limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParameter {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    values: Option<Vec<String>>,
    min: Option<toml::Value>,
    max: Option<toml::Value>,
    step: Option<i64>,
    #[serde(default)]
    log: bool,
    decimals: Option<u32>,
    grid: Option<Vec<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConstraint {
    left: Option<String>,
    op: Option<String>,
    right: Option<toml::Value>,
    scale: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApply {
    config: Option<String>,
    config_file: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    flags: Vec<String>,
    admin: Option<RawAdmin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    method: Option<String>,
    path: Option<String>,
    body: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    start: Option<String>,
    stop: Option<String>,
    health_path: Option<String>,
    health_timeout_ms: Option<u64>,
    port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    primary_cpu_cores: Option<f64>,
    primary_memory_mb: Option<u64>,
    cpu_fraction: Option<f64>,
    memory_fraction: Option<f64>,
}

fn need<T>(v: Option<T>, field: impl Into<String>) -> Result<T, CatalogueError> {
    v.ok_or_else(|| CatalogueError::Missing {
        field: field.into(),
    })
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> CatalogueError {
    CatalogueError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn number(v: &toml::Value, field: &str) -> Result<f64, CatalogueError> {
    match v {
        toml::Value::Integer(i) => Ok(*i as f64),
        toml::Value::Float(f) if f.is_finite() => Ok(*f),
        _ => Err(invalid(field, format!("{v} is not a number"))),
    }
}

fn integer(v: &toml::Value, field: &str) -> Result<i64, CatalogueError> {
    v.as_integer()
        .ok_or_else(|| invalid(field, format!("{v} is not an integer")))
}

/// Parses and validates a catalogue.
pub fn parse_catalogue(text: &str) -> Result<Catalogue, CatalogueError> {
    let raw: RawCatalogue = toml::from_str(text)?;
    let service = need(raw.service, "service")?;
    if raw.parameter.is_empty() {
        return Err(CatalogueError::Missing {
            field: "parameter".into(),
        });
    }
    let mut parameters = Vec::new();
    for (i, p) in raw.parameter.into_iter().enumerate() {
        let param = parameter(p, i)?;
        if parameters.iter().any(|q: &Parameter| q.name == param.name) {
            return Err(invalid(
                format!("parameter[{i}].name"),
                format!("{:?} is defined twice", param.name),
            ));
        }
        parameters.push(param);
    }
    let names: BTreeSet<&str> = parameters.iter().map(|p| p.name.as_str()).collect();
    let mut constraints = Vec::new();
    for (i, c) in raw.constraint.into_iter().enumerate() {
        constraints.push(constraint(c, i, &names)?);
    }
    let apply = apply(need(raw.apply, "apply")?)?;
    let shadow = shadow(need(raw.shadow, "shadow")?)?;
    let limits = limits(&need(raw.limits, "limits")?)?;
    let catalogue = Catalogue {
        service,
        parameters,
        constraints,
        apply,
        shadow,
        limits,
    };
    check_placeholders(&catalogue)?;
    check_satisfiable(&catalogue)?;
    Ok(catalogue)
}

fn parameter(p: RawParameter, i: usize) -> Result<Parameter, CatalogueError> {
    let at = |f: &str| format!("parameter[{i}].{f}");
    let name = need(p.name, at("name"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(invalid(at("name"), "use letters, digits and '_'"));
    }
    let kind = need(p.kind, at("type"))?;
    let domain = match kind.as_str() {
        "enum" => {
            let values = need(p.values, at("values"))?;
            if values.is_empty() {
                return Err(CatalogueError::EmptyRange {
                    field: at("values"),
                    detail: "no values".into(),
                });
            }
            Domain::Choice(values)
        }
        "int" => {
            let min = integer(&need(p.min, at("min"))?, &at("min"))?;
            let max = integer(&need(p.max, at("max"))?, &at("max"))?;
            let step = p.step.unwrap_or(1);
            if step <= 0 {
                return Err(invalid(at("step"), "must be at least 1"));
            }
            if min > max {
                return Err(CatalogueError::EmptyRange {
                    field: at("max"),
                    detail: format!("min {min} > max {max}"),
                });
            }
            if p.log && min <= 0 {
                return Err(invalid(at("min"), "a log scale needs min > 0"));
            }
            Domain::Int {
                min,
                max,
                step,
                log: p.log,
            }
        }
        "float" => {
            let min = number(&need(p.min, at("min"))?, &at("min"))?;
            let max = number(&need(p.max, at("max"))?, &at("max"))?;
            if min >= max {
                return Err(CatalogueError::EmptyRange {
                    field: at("max"),
                    detail: format!("min {min} >= max {max}"),
                });
            }
            if p.log && min <= 0.0 {
                return Err(invalid(at("min"), "a log scale needs min > 0"));
            }
            Domain::Float {
                min,
                max,
                log: p.log,
                decimals: p.decimals.unwrap_or(3),
            }
        }
        other => {
            return Err(CatalogueError::UnknownType {
                field: at("type"),
                found: other.to_owned(),
            });
        }
    };
    let grid = match p.grid {
        Some(levels) => {
            if levels.is_empty() {
                return Err(CatalogueError::EmptyRange {
                    field: at("grid"),
                    detail: "no levels".into(),
                });
            }
            levels
                .iter()
                .map(|v| grid_level(&domain, v, &at("grid")))
                .collect::<Result<Vec<_>, _>>()?
        }
        None => default_grid(&domain),
    };
    Ok(Parameter { name, domain, grid })
}

fn grid_level(domain: &Domain, v: &toml::Value, field: &str) -> Result<ParamValue, CatalogueError> {
    let out_of = |shown: String| invalid(field, format!("level {shown} is outside the domain"));
    match domain {
        Domain::Choice(values) => {
            let s = v
                .as_str()
                .ok_or_else(|| invalid(field, format!("{v} is not a string")))?;
            if !values.iter().any(|x| x == s) {
                return Err(out_of(s.to_owned()));
            }
            Ok(ParamValue::Choice(s.to_owned()))
        }
        Domain::Int { min, max, step, .. } => {
            let x = integer(v, field)?;
            if x < *min || x > *max || (x - min) % step != 0 {
                return Err(out_of(x.to_string()));
            }
            Ok(ParamValue::Int(x))
        }
        Domain::Float { min, max, .. } => {
            let x = number(v, field)?;
            if x < *min || x > *max {
                return Err(out_of(x.to_string()));
            }
            Ok(ParamValue::Float(x))
        }
    }
}

/// Enumerations: every value; numbers: min, middle and max (geometric middle on a log scale).
fn default_grid(domain: &Domain) -> Vec<ParamValue> {
    match domain {
        Domain::Choice(values) => values.iter().cloned().map(ParamValue::Choice).collect(),
        Domain::Int {
            min,
            max,
            step,
            log,
        } => {
            let mid = if *log {
                ((*min as f64) * (*max as f64)).sqrt() as i64
            } else {
                (min + max) / 2
            };
            let mid = min + (mid - min) / step * step;
            let mut v = vec![*min, mid, *max];
            v.dedup();
            v.into_iter().map(ParamValue::Int).collect()
        }
        Domain::Float { min, max, log, .. } => {
            let mid = if *log {
                (min * max).sqrt()
            } else {
                f64::midpoint(*min, *max)
            };
            vec![
                ParamValue::Float(*min),
                ParamValue::Float(mid),
                ParamValue::Float(*max),
            ]
        }
    }
}

fn constraint(
    c: RawConstraint,
    i: usize,
    names: &BTreeSet<&str>,
) -> Result<Constraint, CatalogueError> {
    let at = |f: &str| format!("constraint[{i}].{f}");
    let left = need(c.left, at("left"))?;
    if !names.contains(left.as_str()) {
        return Err(CatalogueError::UnknownParameter {
            field: at("left"),
            name: left,
        });
    }
    let op = match need(c.op, at("op"))?.as_str() {
        "<" => CmpOp::Lt,
        "<=" => CmpOp::Le,
        ">=" => CmpOp::Ge,
        ">" => CmpOp::Gt,
        other => {
            return Err(invalid(
                at("op"),
                format!("{other:?} is not <, <=, >= or >"),
            ));
        }
    };
    let right = match need(c.right, at("right"))? {
        toml::Value::String(name) => {
            if !names.contains(name.as_str()) {
                return Err(CatalogueError::UnknownParameter {
                    field: at("right"),
                    name,
                });
            }
            Operand::Param(name)
        }
        v => Operand::Number(number(&v, &at("right"))?),
    };
    Ok(Constraint {
        left,
        op,
        right,
        scale: c.scale.unwrap_or(1.0),
    })
}

fn apply(a: RawApply) -> Result<Apply, CatalogueError> {
    let admin = match a.admin {
        Some(r) => Some(AdminCall {
            method: r.method.unwrap_or_else(|| "POST".into()),
            path: need(r.path, "apply.admin.path")?,
            body: r.body.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(Apply {
        config_file: a.config_file.unwrap_or_else(|| "service.conf".into()),
        config: a.config,
        env: a.env,
        flags: a.flags,
        admin,
    })
}

fn shadow(s: RawShadow) -> Result<ShadowCommands, CatalogueError> {
    let start = need(s.start, "shadow.start")?;
    if start.split_whitespace().next().is_none() {
        return Err(invalid("shadow.start", "empty command"));
    }
    let health_path = need(s.health_path, "shadow.health_path")?;
    if !health_path.starts_with('/') {
        return Err(invalid("shadow.health_path", "must start with '/'"));
    }
    Ok(ShadowCommands {
        start,
        stop: s.stop,
        health_path,
        health_timeout_ms: s.health_timeout_ms.unwrap_or(3000),
        port: need(s.port, "shadow.port")?,
    })
}

fn limits(l: &RawLimits) -> Result<Limits, CatalogueError> {
    let fraction = |v: Option<f64>, field: &str| -> Result<f64, CatalogueError> {
        let v = need(v, field)?;
        if v > 0.0 && v <= 1.0 {
            Ok(v)
        } else {
            Err(invalid(field, format!("{v} is not a fraction in (0, 1]")))
        }
    };
    let cpu = need(l.primary_cpu_cores, "limits.primary_cpu_cores")?;
    if cpu <= 0.0 || !cpu.is_finite() {
        return Err(invalid("limits.primary_cpu_cores", "must be positive"));
    }
    let mem_mb = need(l.primary_memory_mb, "limits.primary_memory_mb")?;
    if mem_mb == 0 {
        return Err(invalid("limits.primary_memory_mb", "must be positive"));
    }
    Ok(Limits {
        primary_cpu_cores: cpu,
        primary_memory_bytes: mem_mb << 20,
        cpu_fraction: fraction(l.cpu_fraction, "limits.cpu_fraction")?,
        memory_fraction: fraction(l.memory_fraction, "limits.memory_fraction")?,
    })
}

/// Every placeholder names a parameter or a built-in; every parameter is used somewhere.
fn check_placeholders(c: &Catalogue) -> Result<(), CatalogueError> {
    let mut templates: Vec<(String, &str)> = Vec::new();
    if let Some(t) = &c.apply.config {
        templates.push(("apply.config".into(), t));
    }
    for (k, v) in &c.apply.env {
        templates.push((format!("apply.env.{k}"), v));
    }
    for (i, f) in c.apply.flags.iter().enumerate() {
        templates.push((format!("apply.flags[{i}]"), f));
    }
    if let Some(a) = &c.apply.admin {
        templates.push(("apply.admin.path".into(), &a.path));
        templates.push(("apply.admin.body".into(), &a.body));
    }
    templates.push(("shadow.start".into(), &c.shadow.start));
    if let Some(s) = &c.shadow.stop {
        templates.push(("shadow.stop".into(), s));
    }
    let mut used = BTreeSet::new();
    for (field, text) in &templates {
        let names = placeholders(text).map_err(|rest| {
            invalid(
                field.clone(),
                format!("`{{{{` with no closing `}}}}` before {rest:?}"),
            )
        })?;
        for name in names {
            if c.parameter(&name).is_none() && !BUILTIN_PLACEHOLDERS.contains(&name.as_str()) {
                return Err(CatalogueError::UnknownPlaceholder {
                    field: field.clone(),
                    name,
                });
            }
            used.insert(name);
        }
    }
    if let Some(p) = c.parameters.iter().find(|p| !used.contains(&p.name)) {
        return Err(CatalogueError::UnusedParameter {
            name: p.name.clone(),
        });
    }
    Ok(())
}

/// Looks for one assignment that satisfies every constraint among each parameter's grid levels
/// and bounds (exhaustive up to 200 000 combinations; beyond that, each constraint alone).
fn check_satisfiable(c: &Catalogue) -> Result<(), CatalogueError> {
    if c.constraints.is_empty() {
        return Ok(());
    }
    let candidates: Vec<(String, Vec<ParamValue>)> = c
        .parameters
        .iter()
        .map(|p| {
            let mut v = p.grid.clone();
            match &p.domain {
                Domain::Int { min, max, .. } => {
                    v.extend([ParamValue::Int(*min), ParamValue::Int(*max)]);
                }
                Domain::Float { min, max, .. } => {
                    v.extend([ParamValue::Float(*min), ParamValue::Float(*max)]);
                }
                Domain::Choice(_) => {}
            }
            (p.name.clone(), v)
        })
        .collect();
    let combos: f64 = candidates.iter().map(|(_, v)| v.len() as f64).product();
    if combos <= 200_000.0 {
        let mut points = vec![Params::new()];
        for (name, values) in &candidates {
            points = points
                .iter()
                .flat_map(|base| {
                    values.iter().map(move |v| {
                        let mut p = base.clone();
                        p.insert(name.clone(), v.clone());
                        p
                    })
                })
                .collect();
        }
        if points.iter().any(|p| c.satisfies(p)) {
            return Ok(());
        }
        return Err(CatalogueError::Unsatisfiable {
            field: "constraint".into(),
        });
    }
    let values = |n: &str| -> &[ParamValue] {
        candidates
            .iter()
            .find(|(m, _)| m == n)
            .map_or(&[], |(_, v)| v.as_slice())
    };
    for (i, k) in c.constraints.iter().enumerate() {
        let rights: Vec<Option<&ParamValue>> = match &k.right {
            Operand::Param(r) => values(r).iter().map(Some).collect(),
            Operand::Number(_) => vec![None],
        };
        let ok = values(&k.left).iter().any(|a| {
            rights.iter().any(|b| {
                let mut p = Params::new();
                p.insert(k.left.clone(), a.clone());
                if let (Operand::Param(r), Some(b)) = (&k.right, b) {
                    p.insert(r.clone(), (*b).clone());
                }
                k.holds(&p)
            })
        });
        if !ok {
            return Err(CatalogueError::Unsatisfiable {
                field: format!("constraint[{i}]"),
            });
        }
    }
    Ok(())
}
