//! Connections in flight, so that a connection is counted on the resource its first request
//! or `ClientHello` names (the SYN only shows the address), and the concurrency gauges drop
//! when it closes. Bounded: beyond the capacity the longest-open connection is dropped.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use rustc_hash::FxBuildHasher;

use super::table::EntityRef;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnKey {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// One word per IPv4 endpoint instead of the derived hash's discriminant, octets and port
/// (every request probes this table while connections wait for attribution).
impl Hash for ConnKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        for addr in [&self.client, &self.server] {
            match addr.ip() {
                IpAddr::V4(a) => {
                    h.write_u64(u64::from(u32::from(a)) << 16 | u64::from(addr.port()));
                }
                IpAddr::V6(a) => {
                    h.write_u128(u128::from(a));
                    h.write_u16(addr.port());
                }
            }
        }
    }
}

/// Who a connection was counted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attribution {
    pub resource: EntityRef,
    pub client: EntityRef,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Conn {
    serial: u64,
    pub opened_ts_ns: u64,
    pub attributed: Option<Attribution>,
}

pub(crate) struct ConnTable {
    map: HashMap<ConnKey, Conn, FxBuildHasher>,
    /// Open order, for eviction; entries whose serial no longer matches are stale.
    order: VecDeque<(ConnKey, u64)>,
    next_serial: u64,
    capacity: usize,
    /// Connections not yet counted on a resource: while zero, requests skip the lookup.
    unattributed: usize,
    pub evicted: u64,
}

impl ConnTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::with_hasher(FxBuildHasher),
            order: VecDeque::new(),
            next_serial: 0,
            capacity: capacity.max(1),
            unattributed: 0,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Starts tracking a connection (no-op if it is tracked). Returns a connection evicted to
    /// make room, whose counts the caller must undo.
    pub fn open(&mut self, key: ConnKey, ts_ns: u64) -> Option<Conn> {
        if self.map.contains_key(&key) {
            return None;
        }
        let mut evicted = None;
        if self.map.len() >= self.capacity {
            while let Some((old_key, serial)) = self.order.pop_front() {
                if self.map.get(&old_key).is_some_and(|c| c.serial == serial) {
                    evicted = self.remove(&old_key);
                    self.evicted += 1;
                    break;
                }
            }
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        self.map.insert(
            key,
            Conn {
                serial,
                opened_ts_ns: ts_ns,
                attributed: None,
            },
        );
        self.unattributed += 1;
        self.order.push_back((key, serial));
        if self.order.len() > 2 * self.capacity {
            // Closed connections leave stale entries behind; drop them in one pass.
            let map = &self.map;
            self.order
                .retain(|(k, s)| map.get(k).is_some_and(|c| c.serial == *s));
        }
        evicted
    }

    /// The connection, if it is tracked and not yet attributed.
    #[inline]
    pub fn unattributed_mut(&mut self, key: &ConnKey) -> Option<&mut Conn> {
        if self.unattributed == 0 {
            return None;
        }
        self.map.get_mut(key).filter(|c| c.attributed.is_none())
    }

    /// Records who the connection is counted on (after [`Self::unattributed_mut`]).
    pub fn attribute(&mut self, key: &ConnKey, attribution: Attribution) {
        if let Some(c) = self.map.get_mut(key)
            && c.attributed.is_none()
        {
            c.attributed = Some(attribution);
            self.unattributed -= 1;
        }
    }

    /// Who the connection is counted on, if it is.
    pub fn attribution(&self, key: &ConnKey) -> Option<Attribution> {
        self.map.get(key)?.attributed
    }

    pub fn remove(&mut self, key: &ConnKey) -> Option<Conn> {
        let conn = self.map.remove(key)?;
        if conn.attributed.is_none() {
            self.unattributed -= 1;
        }
        Some(conn)
    }

    pub fn heap_bytes(&self) -> usize {
        self.map.capacity() * (std::mem::size_of::<(ConnKey, Conn)>() + 1)
            + self.order.capacity() * std::mem::size_of::<(ConnKey, u64)>()
    }
}
