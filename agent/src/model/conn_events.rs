//! Connection bookkeeping of [`ModelStore`]: which resource and client a connection counts on,
//! its open and close, and the shortcut that resolves a connection's later events through it.

use std::net::{IpAddr, SocketAddr};

use super::conns::{Attribution, Conn, ConnKey};
use super::store::{ModelStore, touch};
use super::swar::short_eq;
use super::table::EntityRef;
use crate::events::{ConnCloseEvent, ConnOpenEvent};
use crate::windows::WindowAcc;

/// Which host an event on a connection names.
#[derive(Clone, Copy, Debug)]
pub(super) enum HostMatch<'a> {
    /// The raw `Host` (or SNI) of a request or paired response; `None` when it had none.
    Exactly(Option<&'a str>),
    /// Any: a response not paired with a request counts where its connection does.
    Any,
}

impl ModelStore {
    /// The resource slot of a connection that already counts on a resource whose host is what
    /// the event names, and the connection's client. A keep-alive
    /// connection then resolves both at its first request instead of hashing and probing per
    /// event. Exact bytes are enough: a stored host is normalised and lower case, and
    /// normalising is idempotent, so raw bytes equal to it normalise to it.
    #[inline]
    pub(super) fn conn_resource(
        &mut self,
        key: &ConnKey,
        host: HostMatch<'_>,
    ) -> Option<(u32, EntityRef)> {
        if matches!(host, HostMatch::Exactly(_)) && !self.resolve_by_connection {
            return None;
        }
        let a = self.conns.attribution(key)?;
        if let HostMatch::Exactly(host) = host {
            let stored = self.resources.get(a.resource.slot)?.key.host.as_deref();
            let same = match (stored, host) {
                (None, None) => true,
                (None, Some(_)) => !self.config.refine_by_host,
                (Some(s), Some(h)) => short_eq(s.as_bytes(), h.as_bytes()),
                (Some(_), None) => false,
            };
            if !same {
                return None;
            }
        }
        Some((self.resources.hit(a.resource)?, a.client))
    }

    /// The client slot of a connection's client: its attribution while that resolves.
    #[inline]
    pub(super) fn conn_client(&mut self, client: EntityRef, addr: IpAddr) -> u32 {
        match self.clients.hit(client) {
            Some(slot) => slot,
            None => self.client_slot(addr),
        }
    }

    /// Counts the connection of `key` as opened on resource `rs` and client `cs`, if it is
    /// tracked and not yet counted: in the window of its SYN when that is still open.
    pub(super) fn attribute(&mut self, key: &ConnKey, rs: u32, cs: u32, index: u64) {
        let Some(conn) = self.conns.unattributed_mut(key) else {
            return;
        };
        let open_index = self.clock.admit(conn.opened_ts_ns).unwrap_or(index);
        let (Some(resource), Some(client)) =
            (self.resources.entity_ref(rs), self.clients.entity_ref(cs))
        else {
            return;
        };
        self.conns.attribute(key, Attribution { resource, client });
        let opened = WindowAcc::count_conn_opened;
        touch(&mut self.resources, rs, open_index, self.ring_len, opened);
        touch(&mut self.clients, cs, open_index, self.ring_len, opened);
    }

    pub(super) fn on_conn_open(&mut self, o: &ConnOpenEvent) {
        let c = &o.common;
        let key = ConnKey::new(c.src, c.src_port, c.dst, c.dst_port);
        // A SYN-ACK opens a connection whose SYN was not seen (the server answers).
        let key = if o.syn_ack { key.reversed() } else { key };
        if let Some(evicted) = self.conns.open(key, c.ts_ns) {
            self.forget_conn(&evicted);
        }
    }

    /// Undoes the gauges of a connection that is no longer tracked.
    pub(super) fn forget_conn(&mut self, conn: &Conn) {
        if let Some(a) = conn.attributed {
            if let Some(e) = self.resources.resolve(a.resource) {
                e.open_conns = e.open_conns.saturating_sub(1);
            }
            if let Some(e) = self.clients.resolve(a.client) {
                e.open_conns = e.open_conns.saturating_sub(1);
            }
        }
    }

    pub(super) fn on_conn_close(&mut self, c: &ConnCloseEvent, index: Option<u64>) {
        let e = &c.common;
        let forward = ConnKey::new(e.src, e.src_port, e.dst, e.dst_port);
        let backward = forward.reversed();
        if let Some(conn) = self.profile_conns.close(&forward) {
            self.profile_conn_ended(&conn, true);
        }
        // Which end is the client: the sender if the connection is known that way round.
        let Some((sender_is_client, conn)) = self
            .conns
            .remove(&forward)
            .map(|conn| (true, conn))
            .or_else(|| self.conns.remove(&backward).map(|conn| (false, conn)))
        else {
            self.stats.closes_untracked += 1;
            return;
        };
        let Some(index) = index else {
            // Too late to count the close, but the connection is gone all the same.
            self.forget_conn(&conn);
            return;
        };
        let closed = WindowAcc::count_conn_closed;
        if let Some(att) = conn.attributed {
            if self.resources.resolve(att.resource).is_some() {
                touch(
                    &mut self.resources,
                    att.resource.slot,
                    index,
                    self.ring_len,
                    closed,
                );
            }
            if self.clients.resolve(att.client).is_some() {
                touch(
                    &mut self.clients,
                    att.client.slot,
                    index,
                    self.ring_len,
                    closed,
                );
            }
        } else {
            // No request or ClientHello named the service: count it on the address.
            let (client, server) = if sender_is_client {
                (e.src, SocketAddr::new(e.dst, e.dst_port))
            } else {
                (e.dst, SocketAddr::new(e.src, e.src_port))
            };
            let rs = self.resource_slot(server, None);
            let cs = self.client_slot(client);
            let open_index = self.clock.admit(conn.opened_ts_ns).unwrap_or(index);
            let opened = WindowAcc::count_conn_opened;
            touch(&mut self.resources, rs, open_index, self.ring_len, opened);
            touch(&mut self.clients, cs, open_index, self.ring_len, opened);
            touch(&mut self.resources, rs, index, self.ring_len, closed);
            touch(&mut self.clients, cs, index, self.ring_len, closed);
        }
    }
}
