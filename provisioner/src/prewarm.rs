//! Cache pre-warming from a learned request profile (`shadowtap.profile.v1`).
//!
//! **The warm set.** Every idempotent (GET/HEAD) template of the profile contributes its keys:
//! a template without `{id}` is one key with the template's share of requests; a template with
//! `{id}` contributes each of its top values with share × value popularity. The keys' tail
//! (values the profile only knows as a Zipf law) cannot be named, so it is not warmed.
//!
//! **Weighted by the forecast.** A cold instance misses each key once, the first time it is
//! asked for. Warming key *k* saves that miss if *k* is requested during the predicted peak
//! window, with probability `1 − exp(−p_k · N)` where `N` is the demand the scale event
//! predicts for one instance (peak point ÷ target instances, corrected by the observed bias).
//! Keys are taken in popularity order while that probability is at least 1/2, within
//! `--prewarm-requests` and `--prewarm-time`.
//!
//! **Discrepancy feedback.** Two comparisons, both reported in every warm-up's lifecycle event:
//! - demand: a scale event's predicted peak, once a later event's window covers its time, is
//!   compared with the requests observed in that window; the ratio's moving average scales `N`;
//! - keys: at the next warm-up, the profile (fresh from the tap) says what share of requests
//!   the previous warm set's keys really drew; the ratio to the share predicted when it was
//!   warmed lowers the probability threshold (more keys) when the set under-delivered.

use std::{path::PathBuf, time::Duration};

use shadowtap_core::{
    lifecycle::WarmReport,
    profile::{ProfileDocument, ResourceProfile},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{Error, Result};

/// Where the request profile comes from, and the budget of one warm-up.
#[derive(Debug, Clone)]
pub struct PrewarmConfig {
    /// `http://host:port/path` (an agent's `/v1/resources/{id}/profile`) or a profile file.
    pub profile: String,
    /// At most this many requests per instance.
    pub max_requests: usize,
    /// At most this long per instance.
    pub max_time: Duration,
    /// Requests in parallel.
    pub concurrency: usize,
}

/// One key of a warm set.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmKey {
    pub method: String,
    pub path: String,
    /// Share of all requests that ask for this key.
    pub share: f64,
}

/// A prediction waiting for its window to be observed.
#[derive(Debug, Clone, Copy)]
struct PendingPeak {
    at_ms: u64,
    predicted: f64,
}

/// State carried between warm-ups.
#[derive(Debug)]
pub struct Prewarmer {
    cfg: PrewarmConfig,
    demand_bias: f64,
    pending: Vec<PendingPeak>,
    last_set: Vec<(String, String)>,
    last_predicted_share: f64,
    threshold: f64,
}

/// Bias moving average weight of a new observation.
const BIAS_WEIGHT: f64 = 0.3;

impl Prewarmer {
    pub fn new(cfg: PrewarmConfig) -> Self {
        Self {
            cfg,
            demand_bias: 1.0,
            pending: Vec::new(),
            last_set: Vec::new(),
            last_predicted_share: 0.0,
            threshold: 0.5,
        }
    }

    /// Every scale event: remember its predicted peak; compare earlier predictions whose time
    /// falls in this event's observed window.
    pub fn observe_event(
        &mut self,
        peak_at_ms: u64,
        peak_point: f64,
        window: (u64, u64),
        observed: u64,
    ) {
        let (start, end) = window;
        let mut matched = Vec::new();
        self.pending.retain(|p| {
            if p.at_ms >= start && p.at_ms < end {
                matched.push(*p);
                false
            } else {
                p.at_ms >= start
            }
        });
        for p in matched {
            if p.predicted > 0.0 {
                let ratio = (observed as f64 / p.predicted).clamp(0.1, 10.0);
                self.demand_bias = (1.0 - BIAS_WEIGHT) * self.demand_bias + BIAS_WEIGHT * ratio;
            }
        }
        if peak_point > 0.0 && peak_at_ms >= end && self.pending.len() < 64 {
            self.pending.push(PendingPeak {
                at_ms: peak_at_ms,
                predicted: peak_point,
            });
        }
    }

    /// Warms the instance at `addr:port` for a predicted `demand` (requests in the peak
    /// window across `instances`).
    pub async fn warm(
        &mut self,
        resource: &str,
        addr: &str,
        port: u16,
        demand: f64,
        instances: u32,
    ) -> Result<WarmReport> {
        let profile = self.load(resource).await?;
        let all = warm_keys(&profile);
        let mut report = WarmReport {
            demand_bias: self.demand_bias,
            ..WarmReport::default()
        };
        if !self.last_set.is_empty() {
            let observed: f64 = all
                .iter()
                .filter(|k| {
                    self.last_set
                        .iter()
                        .any(|(m, p)| *m == k.method && *p == k.path)
                })
                .map(|k| k.share)
                .sum();
            report.previous_set_observed_share = Some(observed);
            report.previous_set_predicted_share = Some(self.last_predicted_share);
            if self.last_predicted_share > 0.0 {
                let delivered = (observed / self.last_predicted_share).clamp(0.25, 1.0);
                // Under-delivery lowers the bar (more keys); full delivery returns it to ½.
                self.threshold = (0.5 * delivered).max(0.05);
            }
        }
        report.threshold = self.threshold;
        let per_instance = demand.max(0.0) * self.demand_bias / f64::from(instances.max(1));
        report.predicted_requests_per_instance = per_instance;
        let chosen = choose(&all, per_instance, self.threshold, self.cfg.max_requests);
        report.keys = chosen.len();
        report.predicted_key_share = chosen.iter().map(|k| k.share).sum();
        let started = std::time::Instant::now();
        let (ok, failed) = send_all(
            addr,
            port,
            profile.host.as_deref().unwrap_or(addr),
            &chosen,
            self.cfg.concurrency.max(1),
            self.cfg.max_time,
        )
        .await;
        report.sent = ok + failed;
        report.ok = ok;
        report.failed = failed;
        report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_set = chosen
            .iter()
            .map(|k| (k.method.clone(), k.path.clone()))
            .collect();
        self.last_predicted_share = report.predicted_key_share;
        Ok(report)
    }

    async fn load(&self, resource: &str) -> Result<ResourceProfile> {
        let source = self.cfg.profile.clone();
        let text = tokio::task::spawn_blocking(move || -> Result<String> {
            if let Some(rest) = source.strip_prefix("http://") {
                let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
                shadowtap_core::http_client::get(
                    &format!("http://{authority}"),
                    &format!("/{path}"),
                )
                .map_err(|e| Error::Instance(format!("pre-warm profile: {e}")))
            } else {
                std::fs::read_to_string(PathBuf::from(&source)).map_err(crate::io_context(format!(
                    "reading pre-warm profile {source}"
                )))
            }
        })
        .await
        .map_err(|e| Error::Instance(format!("pre-warm profile task: {e}")))??;
        let doc = ProfileDocument::from_json(&text)
            .map_err(|e| Error::Instance(format!("pre-warm profile {}: {e}", self.cfg.profile)))?;
        let profile = match doc.resource(Some(resource)) {
            Ok(p) => p,
            // A per-resource endpoint's document holds that one resource, whatever its id.
            Err(_) => doc
                .resource(None)
                .map_err(|e| Error::Instance(format!("pre-warm profile: {e}")))?,
        };
        Ok(profile.clone())
    }
}

/// Every nameable key of the profile's idempotent templates, most requested first.
pub fn warm_keys(profile: &ResourceProfile) -> Vec<WarmKey> {
    let total = profile.requests.max(1) as f64;
    let mut keys = Vec::new();
    for t in &profile.templates {
        if !matches!(t.method.as_str(), "GET" | "HEAD") {
            continue;
        }
        let share = t.requests as f64 / total;
        let pieces: Vec<&str> = t.path.split("{id}").collect();
        if pieces.len() == 1 {
            keys.push(WarmKey {
                method: t.method.clone(),
                path: t.path.clone(),
                share,
            });
            continue;
        }
        let Some(params) = &t.params else { continue };
        let observed = params.observed.max(1) as f64;
        for v in &params.top {
            let mut values = v.value.split('/');
            let mut path = String::new();
            for (k, piece) in pieces.iter().enumerate() {
                path.push_str(piece);
                if k + 1 < pieces.len() {
                    path.push_str(values.next().unwrap_or_default());
                }
            }
            keys.push(WarmKey {
                method: t.method.clone(),
                path,
                share: share * v.count as f64 / observed,
            });
        }
    }
    keys.sort_by(|a, b| {
        b.share
            .total_cmp(&a.share)
            .then_with(|| a.path.cmp(&b.path))
    });
    keys
}

/// Keys whose chance of being asked for among `per_instance` requests is at least `threshold`,
/// most popular first, at most `max`.
pub fn choose(keys: &[WarmKey], per_instance: f64, threshold: f64, max: usize) -> Vec<WarmKey> {
    keys.iter()
        .take_while(|k| 1.0 - (-k.share * per_instance).exp() >= threshold)
        .take(max)
        .cloned()
        .collect()
}

/// Sends every key once (`Connection: close`), `concurrency` at a time, until done or
/// `max_time`; returns (ok, failed). Unsent keys count as neither.
async fn send_all(
    addr: &str,
    port: u16,
    host: &str,
    keys: &[WarmKey],
    concurrency: usize,
    max_time: Duration,
) -> (usize, usize) {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let deadline = tokio::time::Instant::now() + max_time;
    let keys: Arc<Vec<WarmKey>> = Arc::new(keys.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (keys, next) = (Arc::clone(&keys), Arc::clone(&next));
            let (addr, host) = (addr.to_owned(), host.to_owned());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(key) = keys.get(i) else { break };
                    match tokio::time::timeout_at(deadline, fetch(&addr, port, &host, key)).await {
                        Err(_) => break,
                        Ok(Ok(status)) if (200..400).contains(&status) => ok += 1,
                        Ok(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut total = (0, 0);
    for w in workers {
        if let Ok((ok, failed)) = w.await {
            total.0 += ok;
            total.1 += failed;
        }
    }
    total
}

/// One request; the response status.
async fn fetch(addr: &str, port: u16, host: &str, key: &WarmKey) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect((addr, port)).await?;
    let request = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: shadowtap-prewarm\r\nConnection: close\r\n\r\n",
        key.method, key.path
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let line = response.split(|&b| b == b'\n').next().unwrap_or_default();
    std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status line"))
}

#[cfg(test)]
// Shares are exact small fractions in these fixtures.
#[allow(clippy::float_cmp)]
mod tests {
    use shadowtap_core::profile::example::shop;

    use super::*;

    #[test]
    fn warm_keys_are_idempotent_named_keys_by_share() {
        // shop: 1600 requests; GET / 400; GET /items/{id} 1000 (values 1: 300, 2: 150, 3: 100
        // of 1000 observed, the rest an unnamed tail); POST /cart 200 (never warmed).
        let keys = warm_keys(&shop());
        let got: Vec<(&str, f64)> = keys.iter().map(|k| (k.path.as_str(), k.share)).collect();
        assert_eq!(
            got,
            vec![
                ("/", 0.25),
                ("/items/1", 1000.0 / 1600.0 * 0.3),
                ("/items/2", 1000.0 / 1600.0 * 0.15),
                ("/items/3", 1000.0 / 1600.0 * 0.1),
            ]
        );
        assert!(keys.iter().all(|k| k.method == "GET"));
    }

    #[test]
    fn the_forecast_decides_how_many_keys_are_worth_warming() {
        let keys = warm_keys(&shop());
        // p(asked at least once among N) = 1 - exp(-share N) >= 1/2  <=>  share N >= ln 2.
        // Smallest share 0.0625 needs N >= 11.1; largest 0.25 needs N >= 2.8.
        assert_eq!(choose(&keys, 2.0, 0.5, 100).len(), 0);
        assert_eq!(choose(&keys, 3.0, 0.5, 100).len(), 1);
        assert_eq!(choose(&keys, 12.0, 0.5, 100).len(), 4);
        assert_eq!(
            choose(&keys, 1e6, 0.5, 2).len(),
            2,
            "the request budget caps it"
        );
        // A lower threshold (after an under-delivering set) takes more keys at the same N.
        assert!(choose(&keys, 6.0, 0.2, 100).len() > choose(&keys, 6.0, 0.5, 100).len());
    }

    #[test]
    fn observed_peaks_move_the_demand_bias() {
        let mut p = Prewarmer::new(PrewarmConfig {
            profile: String::new(),
            max_requests: 10,
            max_time: Duration::from_secs(1),
            concurrency: 1,
        });
        // Event at window [0, 10): predicts 1000 at t = 25.
        p.observe_event(25, 1000.0, (0, 10), 100);
        assert_eq!(p.demand_bias, 1.0);
        // A later window [20, 30) covers t = 25 and saw 2000: ratio 2, weight 0.3.
        p.observe_event(0, 0.0, (20, 30), 2000);
        assert!((p.demand_bias - 1.3).abs() < 1e-12, "{}", p.demand_bias);
        // Compared once only.
        p.observe_event(0, 0.0, (20, 30), 2000);
        assert!((p.demand_bias - 1.3).abs() < 1e-12);
    }
}
