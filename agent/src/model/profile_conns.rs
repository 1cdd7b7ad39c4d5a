//! The request profiles' view of connections: every connection carrying requests (also
//! those first seen mid-stream, which the connection table does not track), with its Markov
//! state, request count and last response time. Bounded by `max_connections`.

use rustc_hash::FxHashMap;

use super::conns::ConnKey;
use super::profile::NO_TEMPLATE;
use super::table::EntityRef;

/// Per-connection profile state of every connection carrying requests (also those first
/// seen mid-stream, which the connection table does not track), bounded.
pub(crate) struct ProfileConns {
    map: FxHashMap<ConnKey, ProfileConn>,
    capacity: usize,
    /// Connections not followed because the table was full of active ones.
    pub full: u64,
    /// Event time of the last sweep for idle connections of a full table.
    last_full_sweep_ns: Option<u64>,
}

/// A full table is swept for idle connections at most this often (event time). The sweep
/// walks the whole table: run per new connection while the table is full of active ones (a
/// host with more concurrent connections than `max_connections`), it stalled the agent (a
/// 100,000-client replay: the ring overflowed and SIGINT went unanswered for 15 s).
const FULL_SWEEP_INTERVAL_NS: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug)]
pub(crate) struct ProfileConn {
    pub resource: EntityRef,
    pub(super) last_template: u32,
    pub(super) requests: u32,
    pub(super) last_response_ns: u64,
    pub(super) last_seen_ns: u64,
    /// Its open was seen, so its request count is complete when it closes.
    pub(super) saw_open: bool,
    /// Templates of requests not answered yet, oldest first (a ring of [`UNANSWERED`]): a
    /// response is paired with its request in order, as the tracker pairs them, so its
    /// template need not be rendered again from the path.
    unanswered: [u32; UNANSWERED],
    unanswered_head: u8,
    unanswered_len: u8,
}

/// Requests in flight per connection whose templates are remembered (pipelining deeper
/// than this falls back to rendering the response's request path).
const UNANSWERED: usize = 4;

impl ProfileConn {
    fn new(resource: EntityRef, template: u32, ts_ns: u64, saw_open: bool) -> Self {
        let mut c = Self {
            resource,
            last_template: template,
            requests: 1,
            last_response_ns: 0,
            last_seen_ns: ts_ns,
            saw_open,
            unanswered: [0; UNANSWERED],
            unanswered_head: 0,
            unanswered_len: 0,
        };
        c.push_unanswered(template);
        c
    }

    fn push_unanswered(&mut self, template: u32) {
        if usize::from(self.unanswered_len) == UNANSWERED {
            // Deeper than we follow: forget the oldest (its response renders its path).
            self.unanswered_head = (self.unanswered_head + 1) % UNANSWERED as u8;
            self.unanswered_len -= 1;
        }
        let at =
            (usize::from(self.unanswered_head) + usize::from(self.unanswered_len)) % UNANSWERED;
        self.unanswered[at] = template;
        self.unanswered_len += 1;
    }

    fn pop_unanswered(&mut self) -> Option<u32> {
        if self.unanswered_len == 0 {
            return None;
        }
        let t = self.unanswered[usize::from(self.unanswered_head)];
        self.unanswered_head = (self.unanswered_head + 1) % UNANSWERED as u8;
        self.unanswered_len -= 1;
        Some(t)
    }
}

/// What a request continues on its connection.
pub(crate) struct Step {
    /// The previous state ([`NO_TEMPLATE`] = the connection's start), when known.
    pub from: Option<u32>,
    pub last_response_ns: u64,
}

/// Connections idle this long may be dropped to make room (counted as ended).
const PROFILE_CONN_IDLE_NS: u64 = 300 * 1_000_000_000;

impl ProfileConns {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: FxHashMap::default(),
            capacity: capacity.max(1),
            full: 0,
            last_full_sweep_ns: None,
        }
    }

    /// A request of `template` on `key`, counted on `resource`. Connections dropped to make
    /// room are returned through `ended`.
    pub fn on_request(
        &mut self,
        key: ConnKey,
        resource: EntityRef,
        template: u32,
        saw_open: impl FnOnce() -> bool,
        ts_ns: u64,
        ended: &mut Vec<ProfileConn>,
    ) -> Option<Step> {
        if let Some(c) = self.map.get_mut(&key)
            && c.resource != resource
        {
            // The connection moved to another resource (a request with another Host): its
            // part on the old one ended there, and the new one starts mid-connection.
            ended.push(*c);
            *c = ProfileConn::new(resource, template, ts_ns, false);
            return Some(Step {
                from: None,
                last_response_ns: 0,
            });
        }
        if let Some(c) = self.map.get_mut(&key) {
            let from = c.last_template;
            c.last_template = template;
            c.requests = c.requests.saturating_add(1);
            c.push_unanswered(template);
            c.last_seen_ns = ts_ns;
            return Some(Step {
                from: Some(from),
                last_response_ns: c.last_response_ns,
            });
        }
        let saw_open = saw_open();
        if self.map.len() >= self.capacity {
            if self
                .last_full_sweep_ns
                .is_some_and(|last| ts_ns < last.saturating_add(FULL_SWEEP_INTERVAL_NS))
            {
                self.full += 1;
                return None;
            }
            self.last_full_sweep_ns = Some(ts_ns);
            let before = ended.len();
            self.map.retain(|_, c| {
                let keep = c.last_seen_ns.saturating_add(PROFILE_CONN_IDLE_NS) > ts_ns;
                if !keep {
                    ended.push(*c);
                }
                keep
            });
            if ended.len() == before {
                self.full += 1;
                return None;
            }
        }
        self.map
            .insert(key, ProfileConn::new(resource, template, ts_ns, saw_open));
        Some(Step {
            from: saw_open.then_some(NO_TEMPLATE),
            last_response_ns: 0,
        })
    }

    /// A response on `key`: the template of the request it answers, when the connection
    /// remembers it (`paired`: the tracker paired it with a request).
    pub fn on_response(&mut self, key: &ConnKey, ts_ns: u64, paired: bool) -> Option<u32> {
        let c = self.map.get_mut(key)?;
        c.last_response_ns = ts_ns;
        c.last_seen_ns = ts_ns;
        if paired { c.pop_unanswered() } else { None }
    }

    /// The connection of `key` closed (either direction).
    pub fn close(&mut self, key: &ConnKey) -> Option<ProfileConn> {
        self.map
            .remove(key)
            .or_else(|| self.map.remove(&key.reversed()))
    }

    /// Requests so far of the open connections counted on the resource with `serial`.
    pub fn open_requests(&self, serial: u64) -> impl Iterator<Item = u32> + '_ {
        self.map
            .values()
            .filter(move |c| c.resource.serial == serial)
            .map(|c| c.requests)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn heap_bytes(&self) -> usize {
        self.map.capacity() * (std::mem::size_of::<(ConnKey, ProfileConn)>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn key(n: u8) -> ConnKey {
        ConnKey::new(
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)),
            40_000,
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 80)),
            80,
        )
    }

    const RESOURCE: EntityRef = EntityRef { slot: 0, serial: 1 };

    #[test]
    fn a_full_table_is_swept_at_most_once_a_second_and_misses_are_counted() {
        let mut t = ProfileConns::new(2);
        let mut ended = Vec::new();
        let s = 1_000_000_000;
        assert!(
            t.on_request(key(1), RESOURCE, 0, || true, s, &mut ended)
                .is_some()
        );
        assert!(
            t.on_request(key(2), RESOURCE, 0, || true, s, &mut ended)
                .is_some()
        );
        // Full of active connections: swept, nothing idle, counted.
        assert!(
            t.on_request(key(3), RESOURCE, 0, || true, 2 * s, &mut ended)
                .is_none()
        );
        assert_eq!((t.full, t.last_full_sweep_ns), (1, Some(2 * s)));
        // Within the interval no sweep runs (the marker stays), the miss is counted.
        assert!(
            t.on_request(key(4), RESOURCE, 0, || true, 2 * s + 1, &mut ended)
                .is_none()
        );
        assert_eq!((t.full, t.last_full_sweep_ns), (2, Some(2 * s)));
        // Once the first two are idle and the interval has passed, the sweep makes room.
        let later = s + PROFILE_CONN_IDLE_NS + 1;
        assert!(
            t.on_request(key(5), RESOURCE, 0, || true, later, &mut ended)
                .is_some()
        );
        assert_eq!(ended.len(), 2);
        assert_eq!(t.len(), 1);
        assert_eq!(t.full, 2);
    }
}
