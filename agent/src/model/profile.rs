//! Request-profile accumulation: per resource, what the load generator needs to send traffic
//! shaped like this resource's (`shadowtap_core::profile`), fed by the same events as the
//! windows. Bounded like the rest of the model: one accumulator per modelled resource (gone
//! with it on eviction), at most [`MAX_TRANSITIONS`] Markov transitions and
//! [`PARAM_COUNTERS`] parameter-value counters per template.

use std::collections::hash_map::Entry;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use shadowtap_core::profile::{
    ArrivalProfile, Bucket, ConnectionProfile, Distribution, END, HOURS_PER_WEEK, HourOfWeek,
    ResourceProfile, START, StatusMix, TemplateProfile, Transition,
};

use super::ids::{ID_PLACEHOLDER, is_id_bytes};
use super::template_key::path_start;
use crate::windows::{LogHistogram, bucket_high, bucket_low};

/// Markov transitions kept per resource; further ones are counted in `transitions_other`.
pub const MAX_TRANSITIONS: usize = 4096;
/// Space-saving counters of parameter values per template, by default.
pub const PARAM_COUNTERS: usize = 64;
/// Parameter values listed per template in a profile, by default (half the counters: the
/// top half of a space-saving table is the part whose counts are reliable).
pub const PARAM_TOP: usize = 32;
/// Template id of "no template yet" on a connection (the Markov start state).
pub(crate) const NO_TEMPLATE: u32 = u32::MAX;

/// What one resource's traffic looked like since the model started (or the resource was
/// created).
use super::param_counter::ParamCounter;
pub(crate) use super::profile_conns::{ProfileConn, ProfileConns};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProfileAcc {
    first_request_ns: u64,
    last_request_ns: u64,
    requests: u64,
    responses: u64,
    templates: FxHashMap<u32, TemplateAcc>,
    request_bytes: LogHistogram,
    response_bytes: LogHistogram,
    status: [u64; 6],
    #[serde(with = "transition_list")]
    transitions: FxHashMap<(u32, u32), u64>,
    transitions_other: u64,
    /// Connections that ended (closed or dropped when idle) and those of them whose open and
    /// close were both seen.
    conns_ended: u64,
    conns_complete: u64,
    requests_per_conn: LogHistogram,
    think_time_us: LogHistogram,
    inter_arrival_us: LogHistogram,
    /// Reused for a request's parameter values.
    #[serde(skip)]
    scratch: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct TemplateAcc {
    requests: u64,
    responses: u64,
    request_bytes: LogHistogram,
    response_bytes: LogHistogram,
    latency_us: LogHistogram,
    status: [u64; 6],
    params: Option<ParamCounter>,
}

/// Writes the identifier segments of `target` (those the template replaced by `{id}`),
/// joined by `/`, into `out`.
fn id_values(target: &str, out: &mut String) {
    out.clear();
    let path = path_start(target.as_bytes());
    let end = path
        .iter()
        .position(|&c| matches!(c, b'?' | b'#'))
        .unwrap_or(path.len());
    for seg in path[..end].split(|&c| c == b'/') {
        if is_id_bytes(seg) {
            if !out.is_empty() {
                out.push('/');
            }
            // Identifier segments are ASCII (digits, hex, UUID dashes).
            out.push_str(std::str::from_utf8(seg).unwrap_or_default());
        }
    }
}

fn us_between(from_ns: u64, to_ns: u64) -> Option<u64> {
    (from_ns > 0 && to_ns >= from_ns).then(|| (to_ns - from_ns) / 1_000)
}

impl TemplateAcc {
    fn profile(&self, template: String, resource_requests: u64) -> TemplateProfile {
        let (method, path) = template
            .split_once(' ')
            .map_or((String::new(), template.clone()), |(m, p)| {
                (m.to_owned(), p.to_owned())
            });
        TemplateProfile {
            method,
            path,
            requests: self.requests,
            share: if resource_requests == 0 {
                0.0
            } else {
                self.requests as f64 / resource_requests as f64
            },
            responses: self.responses,
            request_bytes: distribution(&self.request_bytes),
            response_bytes: distribution(&self.response_bytes),
            latency_us: distribution(&self.latency_us),
            status: status_mix(&self.status),
            params: self.params.as_ref().map(ParamCounter::popularity),
            template,
        }
    }
}

impl ProfileAcc {
    /// A request of `template` (name `name`), `size` bytes, at `ts_ns`, with target `target`.
    /// `values`: exact parameter values listed per template (see `ModelConfig::profile_values`).
    pub fn on_request(
        &mut self,
        template: u32,
        name: &str,
        target: &str,
        size: u64,
        ts_ns: u64,
        values: usize,
    ) {
        if self.first_request_ns == 0 {
            self.first_request_ns = ts_ns;
        }
        if let Some(gap) = us_between(self.last_request_ns, ts_ns) {
            self.inter_arrival_us.record(gap);
        }
        self.last_request_ns = self.last_request_ns.max(ts_ns);
        self.requests += 1;
        let t = self
            .templates
            .entry(template)
            .or_insert_with(|| TemplateAcc {
                params: name
                    .contains(ID_PLACEHOLDER)
                    .then(|| ParamCounter::listing(values)),
                ..TemplateAcc::default()
            });
        t.requests += 1;
        t.request_bytes.record(size);
        if let Some(params) = &mut t.params {
            id_values(target, &mut self.scratch);
            params.count(&self.scratch);
        }
    }

    /// A response (to a request of `template`, when it was paired).
    pub fn on_response(
        &mut self,
        template: Option<u32>,
        bytes: u64,
        status: usize,
        latency_us: Option<u64>,
    ) {
        self.responses += 1;
        self.status[status] += 1;
        if let Some(t) = template.and_then(|id| self.templates.get_mut(&id)) {
            t.responses += 1;
            t.response_bytes.record(bytes);
            t.status[status] += 1;
            if let Some(l) = latency_us {
                t.latency_us.record(l);
            }
        } else {
            // Not attributable to a template: the resource's own sizes only. (The resource's
            // distributions are these plus every template's, merged when the profile is made:
            // one record per message on the hot path.)
            self.response_bytes.record(bytes);
        }
    }

    /// A transition on a connection from `from` ([`NO_TEMPLATE`] = its start) to `to`
    /// ([`NO_TEMPLATE`] = its close).
    pub fn on_transition(&mut self, from: u32, to: u32) {
        let len = self.transitions.len();
        match self.transitions.entry((from, to)) {
            Entry::Occupied(mut e) => *e.get_mut() += 1,
            Entry::Vacant(e) if len < MAX_TRANSITIONS => {
                e.insert(1);
            }
            Entry::Vacant(_) => self.transitions_other += 1,
        }
    }

    pub fn on_think_time(&mut self, last_response_ns: u64, request_ns: u64) {
        if let Some(gap) = us_between(last_response_ns, request_ns) {
            self.think_time_us.record(gap);
        }
    }

    pub fn heap_bytes(&self) -> usize {
        let per_template = std::mem::size_of::<(u32, TemplateAcc)>() + 1;
        let params: usize = self
            .templates
            .values()
            .map(|t| {
                t.request_bytes.heap_bytes()
                    + t.response_bytes.heap_bytes()
                    + t.latency_us.heap_bytes()
                    + t.params.as_ref().map_or(0, ParamCounter::heap_bytes)
            })
            .sum();
        self.templates.capacity() * per_template
            + params
            + self.transitions.capacity() * (std::mem::size_of::<((u32, u32), u64)>() + 1)
            + self.request_bytes.heap_bytes()
            + self.response_bytes.heap_bytes()
            + self.requests_per_conn.heap_bytes()
            + self.think_time_us.heap_bytes()
            + self.inter_arrival_us.heap_bytes()
            + self.scratch.capacity()
    }

    /// The profile document part of this resource. `names` are the template names by id;
    /// `hour_requests` the resource's hour-of-week requests; `observed_seconds` the store's.
    #[allow(clippy::too_many_arguments)] // the resource's parts the model keeps elsewhere
    pub fn build(
        &self,
        resource: String,
        host: Option<String>,
        names: &[Box<str>],
        hour_requests: &[u64],
        observed_seconds: &[u64; HOURS_PER_WEEK],
        open_requests: impl Iterator<Item = u32>,
        sample: u32,
    ) -> ResourceProfile {
        // Connections still open count with the requests seen so far (at the end of a
        // capture, that is all of them).
        let mut per_conn = self.requests_per_conn.clone();
        let mut open = 0u64;
        for n in open_requests {
            per_conn.record(u64::from(n));
            open += 1;
        }
        let name = |id: u32| -> &str {
            if id == NO_TEMPLATE {
                START
            } else {
                names.get(id as usize).map_or("(other)", |n| &**n)
            }
        };
        let mut templates: Vec<TemplateProfile> = self
            .templates
            .iter()
            .map(|(&id, t)| t.profile(name(id).to_owned(), self.requests))
            .collect();
        // The `(other)` template (id 0) is not a template a generator can send.
        let other_at = templates.iter().position(|t| t.template == "(other)");
        let templates_other = other_at.map_or(0, |i| templates.remove(i).requests);
        templates.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.template.cmp(&b.template))
        });
        let mut transitions: Vec<Transition> = self
            .transitions
            .iter()
            .filter(|((f, t), _)| !is_other(names, *f) && !is_other(names, *t))
            .map(|(&(f, t), &count)| Transition {
                from: name(f).to_owned(),
                to: if t == NO_TEMPLATE {
                    END.to_owned()
                } else {
                    name(t).to_owned()
                },
                count,
            })
            .collect();
        let dropped: u64 = self
            .transitions
            .iter()
            .filter(|((f, t), _)| is_other(names, *f) || is_other(names, *t))
            .map(|(_, &n)| n)
            .sum();
        transitions.sort_by(|a, b| {
            (a.from.as_str(), b.count, a.to.as_str()).cmp(&(
                b.from.as_str(),
                a.count,
                b.to.as_str(),
            ))
        });
        let inter_arrival_us = distribution(&self.inter_arrival_us);
        let span_s = (self.last_request_ns.saturating_sub(self.first_request_ns)) as f64 / 1e9;
        let mut hour = hour_requests.to_vec();
        hour.resize(HOURS_PER_WEEK, 0);
        ResourceProfile {
            resource,
            host,
            connection_sample: sample,
            first_request_ms: self.first_request_ns / 1_000_000,
            last_request_ms: self.last_request_ns / 1_000_000,
            requests: self.requests,
            responses: self.responses,
            templates,
            templates_other,
            request_bytes: distribution(&merged(
                &self.request_bytes,
                self.templates.values().map(|t| &t.request_bytes),
            )),
            response_bytes: distribution(&merged(
                &self.response_bytes,
                self.templates.values().map(|t| &t.response_bytes),
            )),
            status: status_mix(&self.status),
            connections: ConnectionProfile {
                ended: self.conns_ended,
                complete: self.conns_complete,
                open,
                requests_per_connection: distribution(&per_conn),
                think_time_us: distribution(&self.think_time_us),
                transitions,
                transitions_other: self.transitions_other + dropped,
            },
            arrivals: ArrivalProfile {
                // Of all requests: the sampled ones scaled back up.
                mean_rate_per_s: if span_s > 0.0 {
                    (self.requests.saturating_sub(1)) as f64 * f64::from(sample) / span_s
                } else {
                    0.0
                },
                cv: inter_arrival_us.cv(),
                inter_arrival_us,
            },
            hour_of_week: HourOfWeek {
                requests: hour,
                observed_seconds: observed_seconds.to_vec(),
            },
        }
    }
}

impl ProfileAcc {
    /// A connection ended: closed (`closed`, which is a Markov end) or dropped when idle.
    pub fn on_conn_ended(&mut self, conn: &ProfileConn, closed: bool) {
        if closed {
            self.on_transition(conn.last_template, NO_TEMPLATE);
        }
        self.conns_ended += 1;
        if conn.saw_open && closed {
            self.conns_complete += 1;
        }
        self.requests_per_conn.record(u64::from(conn.requests));
    }
}

/// Transitions as `[from, to, count]` triples in snapshots (JSON map keys are strings).
mod transition_list {
    use rustc_hash::FxHashMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        map: &FxHashMap<(u32, u32), u64>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut list: Vec<(u32, u32, u64)> = map.iter().map(|(&(f, t), &n)| (f, t, n)).collect();
        list.sort_unstable();
        list.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<FxHashMap<(u32, u32), u64>, D::Error> {
        let list = Vec::<(u32, u32, u64)>::deserialize(d)?;
        Ok(list.into_iter().map(|(f, t, n)| ((f, t), n)).collect())
    }
}

/// `own` with every one of `parts` added.
fn merged<'a>(own: &LogHistogram, parts: impl Iterator<Item = &'a LogHistogram>) -> LogHistogram {
    let mut all = own.clone();
    for p in parts {
        all.merge(p);
    }
    all
}

fn is_other(names: &[Box<str>], id: u32) -> bool {
    id != NO_TEMPLATE && names.get(id as usize).is_none_or(|n| &**n == "(other)")
}

fn distribution(h: &LogHistogram) -> Distribution {
    Distribution::from_buckets(
        h.buckets()
            .into_iter()
            .map(|(index, count)| Bucket {
                low: bucket_low(index),
                high: bucket_high(index),
                count: u64::from(count),
            })
            .collect(),
    )
}

fn status_mix(s: &[u64; 6]) -> StatusMix {
    StatusMix {
        unknown: s[0],
        informational: s[1],
        success: s[2],
        redirection: s[3],
        client_error: s[4],
        server_error: s[5],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_values_follow_the_template_rule() {
        let mut out = String::new();
        id_values("/users/12345/orders/9f86d081884c7d65?x=1", &mut out);
        assert_eq!(out, "12345/9f86d081884c7d65");
        id_values("http://h.example/items/42#frag", &mut out);
        assert_eq!(out, "42");
        id_values("/static/app.css", &mut out);
        assert_eq!(out, "");
    }
}
