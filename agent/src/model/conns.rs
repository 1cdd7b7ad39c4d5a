//! Connections in flight, so that a connection is counted on the resource its first request
//! or `ClientHello` names (the SYN only shows the address), and the concurrency gauges drop
//! when it closes. Bounded: beyond the capacity the longest-open connection is dropped.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use rustc_hash::FxBuildHasher;

use super::table::EntityRef;

/// A connection's endpoints, client first, packed for the table: compared and hashed as two
/// or three words (every request and response probes the table). Built straight from the
/// event's addresses and ports, in registers: composing `SocketAddr`s on the stack and
/// reading them back whole stalls on store forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey(PackedKey);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PackedKey {
    V4 {
        addrs: u64,
        ports: u32,
    },
    V6 {
        client: u128,
        server: u128,
        ports: u32,
    },
}

impl ConnKey {
    /// The connection from `client`:`client_port` to `server`:`server_port`.
    #[inline]
    pub fn new(client: IpAddr, client_port: u16, server: IpAddr, server_port: u16) -> Self {
        let ports = u32::from(client_port) << 16 | u32::from(server_port);
        Self(match (client, server) {
            (IpAddr::V4(c), IpAddr::V4(s)) => PackedKey::V4 {
                addrs: u64::from(u32::from(c)) << 32 | u64::from(u32::from(s)),
                ports,
            },
            (c, s) => {
                let v6 = |a: IpAddr| match a {
                    IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
                    IpAddr::V6(a) => u128::from(a),
                };
                PackedKey::V6 {
                    client: v6(c),
                    server: v6(s),
                    ports,
                }
            }
        })
    }

    /// The same connection seen from the other end (server as client).
    #[inline]
    pub fn reversed(self) -> Self {
        Self(match self.0 {
            PackedKey::V4 { addrs, ports } => PackedKey::V4 {
                addrs: addrs.rotate_left(32),
                ports: ports.rotate_left(16),
            },
            PackedKey::V6 {
                client,
                server,
                ports,
            } => PackedKey::V6 {
                client: server,
                server: client,
                ports: ports.rotate_left(16),
            },
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client: &str, server: &str) -> ConnKey {
        let c: std::net::SocketAddr = client.parse().expect("client");
        let s: std::net::SocketAddr = server.parse().expect("server");
        ConnKey::new(c.ip(), c.port(), s.ip(), s.port())
    }

    #[test]
    fn packed_keys_keep_every_endpoint_apart() {
        let keys = [
            key("10.0.0.1:1000", "10.0.0.2:80"),
            key("10.0.0.2:80", "10.0.0.1:1000"),
            key("10.0.0.1:1001", "10.0.0.2:80"),
            key("10.0.0.1:1000", "10.0.0.2:81"),
            key("10.0.0.3:1000", "10.0.0.2:80"),
            key("[2001:db8::1]:1000", "[2001:db8::2]:80"),
            key("[2001:db8::2]:80", "[2001:db8::1]:1000"),
            key("[2001:db8::1]:1000", "[2001:db8::3]:80"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate() {
                assert_eq!(a == b, i == j, "{a:?} {b:?}");
            }
        }
        // Reversing swaps the ends: the pairs above that are each other's reverse match.
        assert_eq!(keys[0].reversed(), keys[1]);
        assert_eq!(keys[5].reversed(), keys[6]);
        for k in &keys {
            assert_eq!(k.reversed().reversed(), *k);
            assert_ne!(k.reversed(), *k);
        }
        // A mapped IPv4 address and its IPv4 form name the same endpoint.
        assert_eq!(
            key("10.0.0.1:1000", "[::ffff:10.0.0.2]:80"),
            key("[::ffff:10.0.0.1]:1000", "[::ffff:10.0.0.2]:80")
        );
        let mut table = ConnTable::new(4);
        for k in &keys[..4] {
            assert!(table.open(*k, 1).is_none());
        }
        // Full: the longest-open connection makes room, and only that one.
        let evicted = table.open(keys[5], 2).expect("evicted");
        assert_eq!(evicted.opened_ts_ns, 1);
        assert!(
            table.remove(&keys[0]).is_none(),
            "the first opened went first"
        );
        assert!(table.remove(&keys[5]).is_some());
        assert_eq!(table.len(), 3);
    }
}
