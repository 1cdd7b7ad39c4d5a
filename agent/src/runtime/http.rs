//! The agent's local HTTP endpoint (127.0.0.1 by default): Prometheus `/metrics`, `/healthz`
//! and the JSON API `/v1/resources`, `/v1/resources/{id}`, `/v1/resources/{id}/forecast`,
//! `/v1/resources/{id}/profile` and `/v1/profile` (every resource's request profile); the
//! dashboard page at `/` (assets under `/ui/`) and its document `/v1/dashboard`.
//!
//! Views are rendered by the pipeline once a second into [`ApiState`]; requests only copy a
//! rendered string out, so a slow client never holds up capture.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use shadowtap_core::metrics::{Response, serve_listener};

/// Rendered views shared between the pipeline (writer) and the responder (reader).
pub struct ApiViews {
    pub metrics: String,
    /// `GET /v1/resources`
    pub resources: String,
    /// `GET /v1/resources/{id}`, keyed by resource id.
    pub detail: HashMap<String, String>,
    /// `GET /v1/resources/{id}/forecast`, keyed by resource id.
    pub forecast: HashMap<String, String>,
    /// `GET /v1/profile`: a profile document of every resource.
    pub profile_all: String,
    /// `GET /v1/resources/{id}/profile`: a profile document of one resource.
    pub profiles: HashMap<String, String>,
    /// `GET /v1/dashboard`: what the dashboard page draws.
    pub dashboard: String,
}

/// Before the pipeline's first render: valid, empty answers (a client asking at start-up gets
/// an empty list, not an empty body that is not JSON).
impl Default for ApiViews {
    fn default() -> Self {
        Self {
            metrics: String::new(),
            resources: "[]".to_owned(),
            detail: HashMap::new(),
            forecast: HashMap::new(),
            profile_all: String::new(),
            profiles: HashMap::new(),
            dashboard: shadowtap_core::dashboard::render(
                "agent",
                &[],
                &std::collections::BTreeMap::new(),
            ),
        }
    }
}

#[derive(Clone, Default)]
pub struct ApiState(Arc<Mutex<ApiViews>>);

impl ApiState {
    pub fn update(&self, f: impl FnOnce(&mut ApiViews)) {
        if let Ok(mut v) = self.0.lock() {
            f(&mut v);
        }
    }

    fn respond(&self, path: &str) -> Response {
        const JSON: &str = "application/json";
        if let Some(asset) = shadowtap_core::dashboard::asset(path) {
            return asset;
        }
        let Ok(v) = self.0.lock() else {
            return (
                "500 Internal Server Error",
                "text/plain",
                "state poisoned\n".into(),
            );
        };
        let not_found = |what: &str| {
            (
                "404 Not Found",
                JSON,
                serde_json::json!({ "error": what }).to_string(),
            )
        };
        match path {
            "/metrics" => ("200 OK", "text/plain; version=0.0.4", v.metrics.clone()),
            "/healthz" => ("200 OK", "text/plain", "ok\n".into()),
            "/v1/resources" => ("200 OK", JSON, v.resources.clone()),
            "/v1/dashboard" => ("200 OK", JSON, v.dashboard.clone()),
            "/v1/profile" if v.profile_all.is_empty() => {
                not_found("no profile yet (the first is made within seconds of start)")
            }
            "/v1/profile" => ("200 OK", JSON, v.profile_all.clone()),
            _ => {
                let Some(rest) = path.strip_prefix("/v1/resources/") else {
                    return not_found("no such endpoint");
                };
                if let Some(id) = rest.strip_suffix("/profile") {
                    let id = percent_decode(id);
                    match v.profiles.get(&id) {
                        Some(body) => ("200 OK", JSON, body.clone()),
                        None if v.detail.contains_key(&id) => {
                            not_found("no requests profiled for this resource yet")
                        }
                        None => not_found("unknown resource"),
                    }
                } else if let Some(id) = rest.strip_suffix("/forecast") {
                    let id = percent_decode(id);
                    match v.forecast.get(&id) {
                        Some(body) => ("200 OK", JSON, body.clone()),
                        None if v.detail.contains_key(&id) => {
                            not_found("no forecast for this resource yet (cold start)")
                        }
                        None => not_found("unknown resource"),
                    }
                } else {
                    match v.detail.get(&percent_decode(rest)) {
                        Some(body) => ("200 OK", JSON, body.clone()),
                        None => not_found("unknown resource"),
                    }
                }
            }
        }
    }
}

/// Decodes `%XX` escapes (resource ids contain `@`, `:` and IPv6 brackets).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Serves `state` on `listener` until the task is dropped. The agent binds it before it
/// attaches its programs (see `bind_api`).
pub async fn serve_on(listener: tokio::net::TcpListener, state: ApiState) -> std::io::Result<()> {
    serve_listener(listener, Arc::new(move |path: &str| state.respond(path))).await
}

/// Aborts the spawned task when dropped, so no server outlives the run.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let state = ApiState::default();
        let (status, kind, body) = state.respond("/v1/resources");
        assert_eq!((status, kind), ("200 OK", "application/json"));
        assert!(
            serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|v| v == serde_json::json!([])),
            "before the first render the list is valid JSON: {body:?}"
        );
        state.update(|v| {
            v.resources = "[{\"id\":1}]".into();
            v.detail
                .insert("a.example@10.0.0.1:80".into(), "{\"id\":1}".into());
        });
        assert_eq!(state.respond("/v1/resources").2, "[{\"id\":1}]");
        assert_eq!(
            state.respond("/v1/resources/a.example%4010.0.0.1%3A80").2,
            "{\"id\":1}"
        );
        let (status, _, body) = state.respond("/v1/resources/a.example@10.0.0.1:80/forecast");
        assert_eq!(status, "404 Not Found");
        assert!(body.contains("cold start"));
        assert_eq!(state.respond("/v1/resources/nope").0, "404 Not Found");
        assert_eq!(state.respond("/nope").0, "404 Not Found");
        let (status, kind, _) = state.respond("/");
        assert_eq!((status, kind), ("200 OK", "text/html; charset=utf-8"));
        let dashboard: serde_json::Value =
            serde_json::from_str(&state.respond("/v1/dashboard").2).expect("dashboard JSON");
        assert_eq!(dashboard["source"], "agent");
        assert_eq!(dashboard["resources"], serde_json::json!([]));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%5Bfd00%3A%3A1%5D%3A80"), "[fd00::1]:80");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
