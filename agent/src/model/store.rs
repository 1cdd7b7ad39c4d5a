//! [`ModelStore`]: the event → entity → window path, window closing, and queries.

use std::net::{IpAddr, SocketAddr};

use super::conn_events::HostMatch;
use super::conns::{ConnKey, ConnTable};
use super::ids::{ClientId, EntityId, ResourceId, eq_lowercase, normalize_host, resource_hash};
use super::profile::{ProfileConn, ProfileConns};
use super::summary::WindowSummary;
use super::table::{Entity, EntityKey, EntityTable, HOURS_PER_WEEK};
use super::templates::Templates;
use super::{ModelConfig, ModelError, ModelStats};
use crate::events::{Event, HttpRequestEvent, HttpResponseEvent, TlsClientHelloEvent};
use crate::windows::{Clock, Level, WindowAcc, status_slot};

impl EntityKey for ResourceId {
    fn entity_id(&self) -> EntityId {
        EntityId::Resource(self.clone())
    }
    fn key_hash(&self) -> u64 {
        resource_hash(self.addr, self.host.as_deref())
    }
    fn heap_bytes(&self) -> usize {
        self.host.as_ref().map_or(0, String::capacity)
    }
}

impl EntityKey for ClientId {
    fn entity_id(&self) -> EntityId {
        EntityId::Client(*self)
    }
    fn key_hash(&self) -> u64 {
        self.hash64()
    }
    fn heap_bytes(&self) -> usize {
        0
    }
}

/// The behavioural models of every resource and client, fed with [`Event`]s.
///
/// Closed windows accumulate as [`WindowSummary`]s until [`ModelStore::drain_summaries`].
pub struct ModelStore {
    pub(super) config: ModelConfig,
    pub(super) ring_len: usize,
    pub(super) clock: Clock,
    pub(super) resources: EntityTable<ResourceId>,
    pub(super) clients: EntityTable<ClientId>,
    pub(super) templates: Templates,
    pub(super) conns: ConnTable,
    pub(super) stats: ModelStats,
    pub(super) summaries: Vec<WindowSummary>,
    pub(super) summaries_drained: u64,
    /// Resolve events of attributed connections through the connection (off only in the test
    /// that checks this shortcut against the full lookup).
    pub(super) resolve_by_connection: bool,
    /// Seconds of each hour-of-week slot the model has observed (event time), so that a
    /// profile's weekly curve is a rate, not a count.
    pub(super) observed_seconds: [u64; HOURS_PER_WEEK],
    /// Event time (s) up to which `observed_seconds` has counted.
    pub(super) observed_until_s: Option<u64>,
    /// Per-connection state of the request profiles.
    pub(super) profile_conns: ProfileConns,
}

/// Hour of week of a second since the epoch (Monday 00:00 UTC = 0; the epoch was a Thursday).
pub(super) fn hour_of_week(secs: u64) -> usize {
    ((secs / 3600 + 72) % HOURS_PER_WEEK as u64) as usize
}

/// Records into entity `slot`'s window `index` with its connection gauge
/// ([`WindowAcc::count_with_gauge`]) and lists it as active.
#[inline]
pub(super) fn touch<K>(
    table: &mut EntityTable<K>,
    slot: u32,
    index: u64,
    ring_len: usize,
    update: impl FnOnce(&mut WindowAcc, &mut u64),
) {
    if let Some(e) = table.get_mut(slot) {
        e.windows
            .record(index, ring_len)
            .count_with_gauge(&mut e.open_conns, update);
        table.mark_active(slot);
    }
}

/// Closes `entity`'s windows up to `closed_until`; 1 s windows feed the hour-of-week profile
/// and, `with_demand`, the demand series. Summaries and roll-ups are made when `detail`.
/// Returns whether windows remain open.
fn close_entity<K: EntityKey>(
    entity: &mut Entity<K>,
    closed_until: u64,
    config: &ModelConfig,
    templates: &[Box<str>],
    out: &mut Vec<WindowSummary>,
    detail: bool,
    with_demand: bool,
) -> bool {
    let Entity {
        key,
        windows,
        hour_of_week: profile,
        demand,
        ..
    } = entity;
    windows.close(
        closed_until,
        config.endpoint_counters,
        detail,
        &mut |level, start, acc| {
            if level == Level::Second {
                profile.add(hour_of_week(start), acc.requests);
                if with_demand {
                    demand.add(
                        start,
                        acc.requests,
                        config.demand_step_secs,
                        config.demand_history,
                    );
                }
            }
            if detail && config.emit.level(level) {
                out.push(WindowSummary::from_acc(
                    key.entity_id(),
                    level,
                    start,
                    acc,
                    templates,
                    config.top_k,
                ));
            }
        },
    )
}

impl ModelStore {
    pub fn new(config: ModelConfig) -> Result<Self, ModelError> {
        config.validate()?;
        Ok(Self {
            ring_len: Clock::ring_len(config.allowed_lateness_ns),
            clock: Clock::new(config.allowed_lateness_ns),
            resources: EntityTable::new(config.max_resources),
            clients: EntityTable::new(config.max_clients),
            templates: Templates::new(config.max_templates),
            conns: ConnTable::new(config.max_connections),
            stats: ModelStats::default(),
            summaries: Vec::new(),
            summaries_drained: 0,
            resolve_by_connection: true,
            observed_seconds: [0; HOURS_PER_WEEK],
            observed_until_s: None,
            profile_conns: ProfileConns::new(config.max_connections),
            config,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Profiling as the command line says now, also for a store restored from a snapshot
    /// taken with other settings (`sample` 0 counts as 1).
    pub fn set_profiling(&mut self, on: bool, sample: u32) {
        self.config.profiles = on;
        self.config.profile_sample = sample.max(1);
    }

    /// Feeds one event. Time advances to the event's timestamp first (closing windows).
    pub fn observe(&mut self, event: &Event) {
        self.stats.events += 1;
        match event {
            Event::HttpRequest(r) => {
                self.stats.http_requests += 1;
                if let Some(index) = self.admit(r.common.ts_ns) {
                    self.on_request(r, index);
                }
            }
            Event::HttpResponse(r) => {
                self.stats.http_responses += 1;
                if let Some(index) = self.admit(r.common.ts_ns) {
                    self.on_response(r, index);
                }
            }
            Event::TlsClientHello(t) => {
                self.stats.tls_client_hellos += 1;
                if let Some(index) = self.admit(t.common.ts_ns) {
                    self.on_client_hello(t, index);
                }
            }
            Event::ConnOpen(o) => {
                self.stats.conn_opens += 1;
                self.advance_to(o.common.ts_ns);
                self.on_conn_open(o);
            }
            Event::ConnClose(c) => {
                self.stats.conn_closes += 1;
                let index = self.admit(c.common.ts_ns);
                self.on_conn_close(c, index);
            }
            Event::Flow(_) | Event::Stats(_) => self.stats.ignored += 1,
        }
    }

    /// Moves event time forward (e.g. from a timer when traffic stops), closing windows.
    pub fn advance_to(&mut self, ts_ns: u64) {
        self.count_observed(ts_ns / 1_000_000_000);
        if let Some(step) = self.clock.advance(ts_ns) {
            self.close_windows(step.to);
        }
    }

    /// Closes every open window (end of a replay or shutdown). Events at or before the latest
    /// timestamp seen are late afterwards.
    pub fn flush(&mut self) {
        if let Some(step) = self.clock.close_all() {
            self.close_windows(step.to);
        }
    }

    /// Summaries of the windows closed so far, oldest first per entity.
    /// The caller must drain regularly: pending summaries are not bounded by the model.
    pub fn drain_summaries(&mut self) -> std::vec::Drain<'_, WindowSummary> {
        self.summaries_drained += self.summaries.len() as u64;
        self.summaries.drain(..)
    }

    /// Summaries waiting for [`Self::drain_summaries`].
    pub fn pending_summaries(&self) -> usize {
        self.summaries.len()
    }

    pub fn stats(&self) -> ModelStats {
        let mut s = self.stats;
        s.resources_created = self.resources.created;
        s.resources_evicted = self.resources.evicted;
        s.resources_active = self.resources.len() as u64;
        s.clients_created = self.clients.created;
        s.clients_evicted = self.clients.evicted;
        s.clients_active = self.clients.len() as u64;
        s.templates = self.templates.len() as u64 - 1;
        s.templates_other = self.templates.other;
        s.conns_tracked = self.conns.len() as u64;
        s.conns_evicted = self.conns.evicted;
        s.profile_conns = self.profile_conns.len() as u64;
        s.profile_conns_full = self.profile_conns.full;
        s.watermark_ns = self.clock.watermark_ns().unwrap_or(0);
        s.summaries_emitted = self.summaries_drained + self.summaries.len() as u64;
        s
    }

    /// Adds the seconds from the last observed one to `now_s` to their hour-of-week slots.
    fn count_observed(&mut self, now_s: u64) {
        const WEEK: u64 = HOURS_PER_WEEK as u64 * 3600;
        let Some(mut from) = self.observed_until_s else {
            self.observed_until_s = Some(now_s);
            return;
        };
        if now_s <= from {
            return;
        }
        let weeks = (now_s - from) / WEEK;
        if weeks > 0 {
            for s in &mut self.observed_seconds {
                *s += weeks * 3600;
            }
            from += weeks * WEEK;
        }
        while from < now_s {
            let upto = ((from / 3600 + 1) * 3600).min(now_s);
            self.observed_seconds[hour_of_week(from)] += upto - from;
            from = upto;
        }
        self.observed_until_s = Some(now_s);
    }

    fn admit(&mut self, ts_ns: u64) -> Option<u64> {
        self.advance_to(ts_ns);
        let index = self.clock.admit(ts_ns);
        if index.is_none() {
            self.stats.late_dropped += 1;
        }
        index
    }

    fn close_windows(&mut self, closed_until: u64) {
        let Self {
            config,
            resources,
            clients,
            templates,
            summaries,
            ..
        } = self;
        let names = templates.names();
        resources.for_each_active(|e| {
            close_entity(e, closed_until, config, names, summaries, true, true)
        });
        let emit_clients = config.emit.clients;
        // Only resources are forecast: a client demand series would cost up to
        // `demand_history` words per client and nothing reads it.
        clients.for_each_active(|e| {
            close_entity(
                e,
                closed_until,
                config,
                names,
                summaries,
                emit_clients,
                false,
            )
        });
    }

    fn refine<'a>(&self, host: Option<&'a str>) -> Option<&'a str> {
        if self.config.refine_by_host {
            host.and_then(normalize_host)
        } else {
            None
        }
    }

    /// The slot of resource (`addr`, normalised `host`), created if new.
    #[inline]
    pub(super) fn resource_slot(&mut self, addr: SocketAddr, host: Option<&str>) -> u32 {
        let hash = resource_hash(addr, host);
        let found = self.resources.find(hash, |k| {
            k.addr == addr
                && match (&k.host, host) {
                    (None, None) => true,
                    (Some(a), Some(b)) => eq_lowercase(a.as_bytes(), b.as_bytes()),
                    _ => false,
                }
        });
        if let Some(slot) = found {
            return slot;
        }
        let key = ResourceId {
            addr,
            host: host.map(str::to_ascii_lowercase),
        };
        let Self {
            config,
            resources,
            templates,
            summaries,
            ..
        } = self;
        resources.insert(Entity::new(key, hash), |_, mut old| {
            old.windows
                .close_all(config.endpoint_counters, &mut |level, start, acc| {
                    if config.emit.level(level) {
                        summaries.push(WindowSummary::from_acc(
                            old.key.entity_id(),
                            level,
                            start,
                            acc,
                            templates.names(),
                            config.top_k,
                        ));
                    }
                });
        })
    }

    /// The slot of the client of `addr`, created if new.
    #[inline]
    pub(super) fn client_slot(&mut self, addr: IpAddr) -> u32 {
        let id = ClientId::of(
            addr,
            self.config.client_prefix_v4,
            self.config.client_prefix_v6,
        );
        let hash = id.hash64();
        if let Some(slot) = self.clients.find(hash, |k| *k == id) {
            return slot;
        }
        let Self {
            config,
            clients,
            templates,
            summaries,
            ..
        } = self;
        clients.insert(Entity::new(id, hash), |_, mut old| {
            if config.emit.clients {
                old.windows
                    .close_all(config.endpoint_counters, &mut |level, start, acc| {
                        if config.emit.level(level) {
                            summaries.push(WindowSummary::from_acc(
                                EntityId::Client(old.key),
                                level,
                                start,
                                acc,
                                templates.names(),
                                config.top_k,
                            ));
                        }
                    });
            }
        })
    }

    fn on_request(&mut self, r: &HttpRequestEvent, index: u64) {
        let c = &r.common;
        let key = ConnKey::new(c.src, c.src_port, c.dst, c.dst_port);
        let known = self.conn_resource(&key, HostMatch::Exactly(r.host.as_deref()));
        let (rs, cs) = if let Some((rs, client)) = known {
            (rs, self.conn_client(client, c.src))
        } else {
            let host = self.refine(r.host.as_deref());
            let server = SocketAddr::new(c.dst, c.dst_port);
            (self.resource_slot(server, host), self.client_slot(c.src))
        };
        let template = self.templates.intern(&r.method, &r.path);
        let size = r.message_bytes;
        let counters = self.config.endpoint_counters;
        // Nobody reads client histograms or endpoint mixes without client summaries.
        let client_detail = self.config.emit.clients;
        touch(&mut self.resources, rs, index, self.ring_len, |acc, _| {
            acc.count_request(size, template, counters, true);
        });
        touch(&mut self.clients, cs, index, self.ring_len, |acc, _| {
            acc.count_request(size, template, counters, client_detail);
        });
        if known.is_none() {
            self.attribute(&key, rs, cs, index);
        }
        if self.profiled(&key) {
            self.profile_request(r, &key, rs, template, size);
        }
    }

    /// The profile's part of a request: template mix, sizes, parameters, arrivals, and on a
    /// tracked connection the Markov transition and think time.
    fn profile_request(
        &mut self,
        r: &HttpRequestEvent,
        key: &ConnKey,
        rs: u32,
        template: u32,
        size: u64,
    ) {
        let ts = r.common.ts_ns;
        // A connection whose open was seen starts in the Markov start state; one first seen
        // mid-stream (the agent started, or the capture began, after its SYN) has no known
        // previous request.
        // Asked only for a connection new to the profile (a lookup in the connection table).
        let conns = &self.conns;
        let saw_open = || conns.attribution(key).is_some();
        let Some(resource) = self.resources.entity_ref(rs) else {
            return;
        };
        let mut ended = Vec::new();
        let step = self
            .profile_conns
            .on_request(*key, resource, template, saw_open, ts, &mut ended);
        for conn in &ended {
            self.profile_conn_ended(conn, false);
        }
        let name = self
            .templates
            .names()
            .get(template as usize)
            .map_or("", |n| &**n);
        if let Some(e) = self.resources.get_mut(rs) {
            let p = e.profile.get_or_insert_with(Box::default);
            p.on_request(
                template,
                name,
                &r.path,
                size,
                ts,
                self.config.profile_values as usize,
            );
            if let Some(step) = step {
                if let Some(from) = step.from {
                    p.on_transition(from, template);
                }
                p.on_think_time(step.last_response_ns, ts);
            }
        }
    }

    /// Whether the connection of `key` (client first) feeds the request profiles.
    #[inline]
    fn profiled(&self, key: &ConnKey) -> bool {
        use std::hash::BuildHasher as _;
        let n = self.config.profile_sample;
        self.config.profiles
            && (n <= 1
                || rustc_hash::FxBuildHasher
                    .hash_one(key)
                    .is_multiple_of(u64::from(n)))
    }

    /// A followed connection ended: closed, or dropped from the table when idle.
    pub(super) fn profile_conn_ended(&mut self, conn: &ProfileConn, closed: bool) {
        if let Some(p) = self
            .resources
            .resolve(conn.resource)
            .and_then(|e| e.profile.as_mut())
        {
            p.on_conn_ended(conn, closed);
        }
    }

    fn on_response(&mut self, r: &HttpResponseEvent, index: u64) {
        let c = &r.common;
        let key = ConnKey::new(c.dst, c.dst_port, c.src, c.src_port);
        let known = match r.host.as_deref() {
            Some(raw) => self.conn_resource(&key, HostMatch::Exactly(Some(raw))),
            None => None,
        };
        let (rs, cs) = if let Some((rs, client)) = known {
            (rs, self.conn_client(client, c.dst))
        } else {
            let server = SocketAddr::new(c.src, c.src_port);
            let rs = match self.refine(r.host.as_deref()) {
                Some(host) => self.resource_slot(server, Some(host)),
                // Unpaired, or its request had no Host: the resource the connection counts on.
                None => match self.conn_resource(&key, HostMatch::Any) {
                    Some((rs, _)) => rs,
                    None => self.resource_slot(server, None),
                },
            };
            (rs, self.client_slot(c.dst))
        };
        let bytes = r.message_bytes;
        let status = status_slot(r.status);
        let latency = r.latency_us;
        let client_detail = self.config.emit.clients;
        touch(&mut self.resources, rs, index, self.ring_len, |acc, _| {
            acc.count_response(bytes, status, latency, true);
        });
        touch(&mut self.clients, cs, index, self.ring_len, |acc, _| {
            acc.count_response(bytes, status, latency, client_detail);
        });
        if self.profiled(&key) {
            let paired = r.method.is_some() && r.path.is_some();
            let remembered = self.profile_conns.on_response(&key, c.ts_ns, paired);
            // The remembered template must name the response's method; otherwise (a request
            // the connection did not follow) render it from the paired request's path.
            let names = self.templates.names();
            let template = match (remembered, r.method.as_deref(), r.path.as_deref()) {
                (Some(t), Some(m), _)
                    if names.get(t as usize).is_some_and(|n| {
                        n.len() > m.len() && n.starts_with(m) && n.as_bytes()[m.len()] == b' '
                    }) =>
                {
                    Some(t)
                }
                (_, Some(m), Some(p)) => Some(self.templates.intern(m, p)),
                _ => None,
            };
            if let Some(e) = self.resources.get_mut(rs) {
                let p = e.profile.get_or_insert_with(Box::default);
                p.on_response(template, bytes, status, latency);
            }
        }
    }

    fn on_client_hello(&mut self, t: &TlsClientHelloEvent, index: u64) {
        let c = &t.common;
        let server = SocketAddr::new(c.dst, c.dst_port);
        let host = self.refine(t.sni.as_deref());
        let rs = self.resource_slot(server, host);
        let cs = self.client_slot(c.src);
        let bytes = u64::from(t.bytes);
        let update = |acc: &mut WindowAcc, _: &mut u64| acc.count_handshake(bytes);
        touch(&mut self.resources, rs, index, self.ring_len, update);
        touch(&mut self.clients, cs, index, self.ring_len, update);
        let key = ConnKey::new(c.src, c.src_port, c.dst, c.dst_port);
        self.attribute(&key, rs, cs, index);
    }
}
