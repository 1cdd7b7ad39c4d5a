//! Loads derived from what a running agent has learned (issue 16: "drive it with loadgen at a
//! load profile: the current profile, the forecast peak"): the request profile of
//! `GET /v1/resources/{id}/profile` gives the mix, the rate and the connections of
//! `current`; the decision of `GET /v1/resources/{id}/forecast` gives the rate of `peak`.
//!
//! The derivation ([`derive`], [`derive_current`], [`derive_peak`]) is pure: documents in,
//! [`LoadSpec`] out, so it is tested on profiles of real captures. [`fetch`] adds the HTTP
//! and turns the agent's answers into errors that say what is wrong.

use serde::Deserialize;
use shadowtap_core::http_client::{self, GetError, percent_encode};
use shadowtap_core::profile::{ProfileDocument, ProfileError, ResourceProfile};
use shadowtap_loadgen::generate::{ForecastBound, ForecastCurve, ForecastError};

use super::load::{LoadKind, LoadSpec, MixEntry};
use super::origin::MAX_BODY;

/// Largest pool a derived load asks for: the load generator opens every connection up
/// front, and a profile with long think times must not turn into thousands of sockets.
pub const MAX_CONNECTIONS: usize = 1024;

/// Most keys one mix entry gets: the load generator prebuilds a request per key (and a warm-up
/// asks for each once), so a template with millions of distinct ids keeps its popularity skew
/// over this many.
pub const MAX_KEYS: u64 = 100_000;

/// The name of the mix entry for requests the agent kept no template for.
pub const OTHER_ENTRY: &str = "(other)";

/// Which load to derive from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentLoad {
    /// The observed mix at the observed rate.
    Current,
    /// The observed mix at the forecast's peak rate.
    Peak,
}

/// Why no load could be derived, naming the agent (or document) and the resource.
#[derive(Debug, thiserror::Error)]
pub enum FromAgentError {
    #[error("the agent at {url} is unreachable: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: GetError,
    },
    #[error("resource {resource:?} not known to the agent at {url}; known: {}", known_list(.known))]
    UnknownResource {
        resource: String,
        url: String,
        known: Vec<String>,
    },
    #[error("the agent at {url} has no usable request profile of {resource:?} yet: {detail}")]
    NoRequests {
        resource: String,
        url: String,
        detail: String,
    },
    #[error(
        "the agent at {url} has no fitted forecast for {resource:?} yet ({detail}); \
         `--load peak` needs one (the agent fits it after a few demand windows), \
         `--load current` does not"
    )]
    NoForecast {
        resource: String,
        url: String,
        detail: String,
    },
    #[error("the agent at {url} answered GET {path} unexpectedly: {source}")]
    Answer {
        url: String,
        path: String,
        #[source]
        source: GetError,
    },
    #[error("the profile of {resource:?} from {url}: {source}")]
    Profile {
        resource: String,
        url: String,
        #[source]
        source: ProfileError,
    },
    #[error("the forecast of {resource:?} from {url}: {source}")]
    Forecast {
        resource: String,
        url: String,
        #[source]
        source: ForecastError,
    },
    #[error("the resource list of {url} is not the agent's JSON: {source}")]
    ResourceList {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "none yet (no traffic tapped)".to_owned()
    } else {
        known.join(", ")
    }
}

/// The load the profile of `resource` describes (`current`) or its mix at the forecast peak
/// (`peak`, which needs `forecast_json`). `url` names where the documents came from, for
/// errors and the load's name.
pub fn derive(
    load: AgentLoad,
    url: &str,
    resource: &str,
    profile_json: &str,
    forecast_json: Option<&str>,
    bound: ForecastBound,
) -> Result<LoadSpec, FromAgentError> {
    let doc =
        ProfileDocument::from_json(profile_json).map_err(|source| FromAgentError::Profile {
            resource: resource.to_owned(),
            url: url.to_owned(),
            source,
        })?;
    let Some(profile) = doc.resources.iter().find(|r| r.resource == resource) else {
        return Err(FromAgentError::UnknownResource {
            resource: resource.to_owned(),
            url: url.to_owned(),
            known: doc.resources.iter().map(|r| r.resource.clone()).collect(),
        });
    };
    match (load, forecast_json) {
        (AgentLoad::Current, _) => derive_current(profile, url),
        (AgentLoad::Peak, Some(forecast)) => derive_peak(profile, forecast, bound, url),
        (AgentLoad::Peak, None) => Err(FromAgentError::NoForecast {
            resource: resource.to_owned(),
            url: url.to_owned(),
            detail: "no forecast given".to_owned(),
        }),
    }
}

/// The observed load: the template mix, the observed mean rate (of all requests, sampling
/// undone) and the connections production clients hold at that rate.
pub fn derive_current(profile: &ResourceProfile, url: &str) -> Result<LoadSpec, FromAgentError> {
    let no_requests = |detail: String| FromAgentError::NoRequests {
        resource: profile.resource.clone(),
        url: url.to_owned(),
        detail,
    };
    if profile.requests == 0 {
        return Err(no_requests("the profile holds 0 requests".to_owned()));
    }
    let rate = profile.arrivals.mean_rate_per_s;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(no_requests(format!(
            "{} request(s) over {} ms: no rate yet",
            profile.requests,
            profile
                .last_request_ms
                .saturating_sub(profile.first_request_ms)
        )));
    }
    let base = LoadSpec::preset("current").ok_or_else(|| no_requests("no preset".into()))?;
    Ok(LoadSpec {
        name: format!("agent:{}:current", profile.resource),
        kind: LoadKind::Current,
        rate_rps: rate,
        connections: connections_at(profile, rate),
        mix: mix(profile),
        ..base
    })
}

/// The observed mix at the highest rate the forecast expects over its horizon (`bound`: the
/// point forecast or the upper bound of its interval); connections scale with the rate.
pub fn derive_peak(
    profile: &ResourceProfile,
    forecast_json: &str,
    bound: ForecastBound,
    url: &str,
) -> Result<LoadSpec, FromAgentError> {
    let no_forecast = |detail: String| FromAgentError::NoForecast {
        resource: profile.resource.clone(),
        url: url.to_owned(),
        detail,
    };
    // Before the forecaster has enough windows the decision rests on the last observation
    // (no model, no points): that is no forecast of a peak.
    let fitted: FittedProbe =
        serde_json::from_str(forecast_json).map_err(|e| FromAgentError::Forecast {
            resource: profile.resource.clone(),
            url: url.to_owned(),
            source: ForecastError::Json(e),
        })?;
    if fitted.explanation.model.is_none() {
        return Err(no_forecast(
            "the last decision names no forecast model".into(),
        ));
    }
    let curve = match ForecastCurve::from_decision_json(forecast_json, bound, 1.0) {
        Ok(c) => c,
        Err(ForecastError::Empty) => {
            return Err(no_forecast(
                "the last decision has no forecast points".into(),
            ));
        }
        Err(source) => {
            return Err(FromAgentError::Forecast {
                resource: profile.resource.clone(),
                url: url.to_owned(),
                source,
            });
        }
    };
    let peak = curve.peak();
    if !(peak.is_finite() && peak > 0.0) {
        return Err(no_forecast(format!(
            "its peak ({bound:?}) is {peak} requests/s"
        )));
    }
    let current = derive_current(profile, url)?;
    Ok(LoadSpec {
        name: format!(
            "agent:{}:peak-{}",
            profile.resource,
            match bound {
                ForecastBound::Point => "point",
                ForecastBound::Upper => "upper",
            }
        ),
        kind: LoadKind::ForecastPeak,
        rate_rps: peak,
        connections: connections_at(profile, peak),
        ..current
    })
}

#[derive(Deserialize)]
struct FittedProbe {
    explanation: ModelProbe,
}

#[derive(Deserialize)]
struct ModelProbe {
    model: Option<serde_json::Value>,
}

/// One entry per kept template, weighted by its share of the resource's requests, plus
/// [`OTHER_ENTRY`] for requests without a template, so the weights add up to 1 and the whole
/// rate is driven. What a [`MixEntry`] can express of a template: its response size (the
/// template's mean response, so the shadow moves the bytes production moves) and how many
/// distinct URLs it spans (its `{id}` values, so a cache sees the observed key space). Every
/// entry is sent as a GET of the sweep origin's `/o/<bytes>/<key>`; the name keeps the
/// production method and path. Sizes are capped at what the origin serves ([`MAX_BODY`]),
/// key counts at [`MAX_KEYS`].
pub fn mix(profile: &ResourceProfile) -> Vec<MixEntry> {
    let bytes = |mean: f64| (mean.round().max(0.0) as usize).min(MAX_BODY);
    let resource_mean = bytes(profile.response_bytes.mean);
    let mut entries: Vec<MixEntry> = profile
        .templates
        .iter()
        .map(|t| MixEntry {
            name: t.template.clone(),
            weight: t.share,
            // A template whose responses were never paired (all lost, or still in flight)
            // moves what the resource's responses move on average.
            response_bytes: if t.response_bytes.count > 0 {
                bytes(t.response_bytes.mean)
            } else {
                resource_mean
            },
            // A template without placeholders is one URL.
            keys: t
                .params
                .as_ref()
                .map_or(1, |p| p.distinct_estimate.clamp(1, MAX_KEYS)),
        })
        .collect();
    if profile.templates_other > 0 && profile.requests > 0 {
        entries.push(MixEntry {
            name: OTHER_ENTRY.to_owned(),
            weight: profile.templates_other as f64 / profile.requests as f64,
            response_bytes: resource_mean,
            // Untemplated targets (too long, odd methods) are mostly one-offs: count each
            // as its own key rather than letting a cache serve them all from one entry.
            keys: profile.templates_other.min(MAX_KEYS),
        });
    }
    entries
}

/// Connections for the load generator's pool at `rate_rps`: as many as production clients
/// hold open at that rate. By Little's law on connections, a connection is busy for a
/// request's latency and then idle for the think time before its next request, so at `rate`
/// requests/s clients keep about rate × (mean latency + mean think time) connections open.
/// It is bounded by the connections the profile actually saw, scaled to the rate (a few
/// long-lived connections with minutes between requests must not become hundreds at the
/// observed rate), and kept within 1..=[`MAX_CONNECTIONS`]. With no request seen twice on a
/// connection, the think time is 0 and each connection carries one request at a time.
pub fn connections_at(profile: &ResourceProfile, rate_rps: f64) -> usize {
    let (latency_sum, latency_count) = profile.templates.iter().fold((0.0, 0u64), |acc, t| {
        (
            acc.0 + t.latency_us.mean * t.latency_us.count as f64,
            acc.1 + t.latency_us.count,
        )
    });
    let latency_s = if latency_count == 0 {
        0.0
    } else {
        latency_sum / latency_count as f64 / 1e6
    };
    let think_s = profile.connections.think_time_us.mean / 1e6;
    let mut per_rps = latency_s + think_s;
    let observed_rate = profile.arrivals.mean_rate_per_s;
    // Counts are of sampled connections: undo the sampling.
    let seen = (profile.connections.ended + profile.connections.open)
        * u64::from(profile.connection_sample.max(1));
    if observed_rate > 0.0 && seen > 0 {
        per_rps = per_rps.min(seen as f64 / observed_rate);
    }
    let wanted = (rate_rps * per_rps).ceil();
    if wanted.is_finite() {
        (wanted as usize).clamp(1, MAX_CONNECTIONS)
    } else {
        1
    }
}

/// Fetches the profile (and for `peak` the forecast) of `resource` from the agent's API at
/// `url` (`http://host:port`) and derives the load.
pub fn fetch(
    url: &str,
    resource: &str,
    load: AgentLoad,
    bound: ForecastBound,
) -> Result<LoadSpec, FromAgentError> {
    let base = url.trim_end_matches('/');
    let id = percent_encode(resource);
    let profile = get_resource_doc(base, resource, &format!("/v1/resources/{id}/profile"))
        .map_err(|e| match e {
            FetchError::NotFound(detail) => FromAgentError::NoRequests {
                resource: resource.to_owned(),
                url: base.to_owned(),
                detail,
            },
            FetchError::Other(e) => e,
        })?;
    let forecast = match load {
        AgentLoad::Current => None,
        AgentLoad::Peak => Some(
            get_resource_doc(base, resource, &format!("/v1/resources/{id}/forecast")).map_err(
                |e| match e {
                    FetchError::NotFound(detail) => FromAgentError::NoForecast {
                        resource: resource.to_owned(),
                        url: base.to_owned(),
                        detail,
                    },
                    FetchError::Other(e) => e,
                },
            )?,
        ),
    };
    derive(load, base, resource, &profile, forecast.as_deref(), bound)
}

enum FetchError {
    /// 404 for a resource the agent knows: the document is not there yet (the detail is
    /// the agent's reason).
    NotFound(String),
    Other(FromAgentError),
}

/// `GET path`; a 404 is told apart by asking `/v1/resources` whether the agent knows the
/// resource at all.
fn get_resource_doc(base: &str, resource: &str, path: &str) -> Result<String, FetchError> {
    match http_client::get(base, path) {
        Ok(body) => Ok(body),
        Err(GetError::Status {
            status: 404, body, ..
        }) => {
            let known = known_resources(base).map_err(FetchError::Other)?;
            if known.iter().any(|k| k == resource) {
                Err(FetchError::NotFound(agent_reason(&body)))
            } else {
                Err(FetchError::Other(FromAgentError::UnknownResource {
                    resource: resource.to_owned(),
                    url: base.to_owned(),
                    known,
                }))
            }
        }
        Err(e) => Err(FetchError::Other(classify(base, path, e))),
    }
}

/// The resource ids of `GET /v1/resources`.
pub fn known_resources(base: &str) -> Result<Vec<String>, FromAgentError> {
    #[derive(Deserialize)]
    struct Listed {
        id: String,
    }
    let body =
        http_client::get(base, "/v1/resources").map_err(|e| classify(base, "/v1/resources", e))?;
    let listed: Vec<Listed> =
        serde_json::from_str(&body).map_err(|source| FromAgentError::ResourceList {
            url: base.to_owned(),
            source,
        })?;
    let mut ids: Vec<String> = listed.into_iter().map(|l| l.id).collect();
    ids.sort();
    Ok(ids)
}

/// Connection failures are "unreachable"; anything else is an unexpected answer to `path`.
fn classify(base: &str, path: &str, e: GetError) -> FromAgentError {
    match e {
        GetError::Io { .. } | GetError::Scheme { .. } => FromAgentError::Unreachable {
            url: base.to_owned(),
            source: e,
        },
        e => FromAgentError::Answer {
            url: base.to_owned(),
            path: path.to_owned(),
            source: e,
        },
    }
}

/// The `error` of the agent's JSON 404 body, or the body itself.
fn agent_reason(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.to_owned())
}

#[cfg(test)]
mod tests {
    use shadowtap_core::profile::{Distribution, example};

    use super::*;

    /// A distribution with exactly this mean (the rule reads means only).
    fn mean_of(mean: f64) -> Distribution {
        Distribution {
            count: 1,
            mean,
            ..Distribution::default()
        }
    }

    #[test]
    fn connections_follow_littles_law_within_the_seen_connections() {
        let mut p = example::shop();
        p.arrivals.mean_rate_per_s = 10.0;
        for t in &mut p.templates {
            t.latency_us = mean_of(100_000.0);
        }
        p.connections.think_time_us = mean_of(400_000.0);
        // 10 req/s × (0.1 s + 0.4 s) = 5 connections busy or thinking; 400 were seen.
        assert_eq!(connections_at(&p, 10.0), 5);
        // Linear in the rate: at 3× the rate, 15.
        assert_eq!(connections_at(&p, 30.0), 15);
        // Only 2 connections seen at 10 req/s: at most 2 at that rate, 6 at 3×.
        p.connections.ended = 2;
        assert_eq!(connections_at(&p, 10.0), 2);
        assert_eq!(connections_at(&p, 30.0), 6);
        // One connection in four profiled: 2 seen stand for 8.
        p.connection_sample = 4;
        assert_eq!(connections_at(&p, 10.0), 5);
        // No latency or think time known: one connection.
        p.connection_sample = 1;
        p.connections.think_time_us = Distribution::default();
        for t in &mut p.templates {
            t.latency_us = Distribution::default();
        }
        assert_eq!(connections_at(&p, 10.0), 1);
        // Minutes of think time at a high rate: capped.
        p.connections.ended = 1_000_000;
        p.connections.think_time_us = mean_of(600e6);
        assert_eq!(connections_at(&p, 1000.0), MAX_CONNECTIONS);
    }

    #[test]
    fn mix_caps_sizes_and_keys_at_what_the_load_generator_can_serve() {
        let mut p = example::shop();
        let shares = [0.25, 0.625, 0.125];
        for (t, share) in p.templates.iter_mut().zip(shares) {
            t.share = share;
        }
        p.templates[0].response_bytes = mean_of(10.0 * MAX_BODY as f64);
        p.templates[1].response_bytes = mean_of(2047.6);
        if let Some(params) = &mut p.templates[1].params {
            params.distinct_estimate = 5_000_000;
        }
        p.response_bytes = mean_of(700.2);
        p.templates_other = 400;
        p.requests = 2000;
        let mix = mix(&p);
        let got: Vec<(&str, f64, usize, u64)> = mix
            .iter()
            .map(|m| (m.name.as_str(), m.weight, m.response_bytes, m.keys))
            .collect();
        assert_eq!(
            got,
            vec![
                ("GET /", 0.25, MAX_BODY, 1),
                ("GET /items/{id}", 0.625, 2048, MAX_KEYS),
                // No responses recorded for the template: the resource's mean size.
                ("POST /cart", 0.125, 700, 1),
                (OTHER_ENTRY, 400.0 / 2000.0, 700, 400),
            ]
        );
    }

    #[test]
    fn errors_name_the_resource_and_the_agent() {
        let mut p = example::shop();
        p.requests = 0;
        let e = derive_current(&p, "http://a:1").expect_err("no requests");
        assert_eq!(
            e.to_string(),
            "the agent at http://a:1 has no usable request profile of \"shop@10.0.0.1:80\" yet: \
             the profile holds 0 requests"
        );
        let e = FromAgentError::UnknownResource {
            resource: "x".into(),
            url: "http://a:1".into(),
            known: vec![],
        };
        assert_eq!(
            e.to_string(),
            "resource \"x\" not known to the agent at http://a:1; known: none yet (no traffic \
             tapped)"
        );
    }
}
