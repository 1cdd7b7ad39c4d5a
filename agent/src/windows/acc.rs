//! One entity's counters for one window, and the updates an event makes to them.

use serde::{Deserialize, Serialize};

use super::{LogHistogram, TopK};

/// Status slots of [`WindowAcc::status`]: 0 = missing or outside 100..=599, 1..=5 = class.
#[inline]
pub fn status_slot(status: Option<u16>) -> usize {
    match status {
        Some(s @ 100..=599) => (s / 100) as usize,
        _ => 0,
    }
}

/// What one entity did in one window.
///
/// In declaration order (`repr(C)`): the counters every request or response updates come
/// first, so that with [`Slot`]'s header they share one cache line. Entities are many and
/// touched at random, so each line an update needs is a likely cache miss.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[repr(C)]
pub struct WindowAcc {
    pub requests: u64,
    pub responses: u64,
    /// Client → service bytes (request heads and declared bodies).
    pub bytes_in: u64,
    /// Service → client bytes (response heads and declared bodies).
    pub bytes_out: u64,
    /// Highest number of concurrently open connections seen in the window.
    pub concurrent_max: u64,
    pub conns_opened: u64,
    pub conns_closed: u64,
    pub tls_handshakes: u64,
    /// Responses per status class, see [`status_slot`].
    pub status: [u64; 6],
    pub request_size: LogHistogram,
    pub latency_us: LogHistogram,
    /// Interned endpoint template ids.
    pub endpoints: TopK,
}

impl WindowAcc {
    /// Folds a later window of the same entity into this one (time roll-up: counts add up,
    /// the concurrency gauge keeps its maximum).
    pub fn absorb(&mut self, other: &WindowAcc, endpoint_counters: usize) {
        self.requests += other.requests;
        self.responses += other.responses;
        self.conns_opened += other.conns_opened;
        self.conns_closed += other.conns_closed;
        self.tls_handshakes += other.tls_handshakes;
        self.concurrent_max = self.concurrent_max.max(other.concurrent_max);
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        for (a, b) in self.status.iter_mut().zip(other.status) {
            *a += b;
        }
        // Added up once, when the longer window is folded as it closes.
        self.request_size.absorb(&other.request_size);
        self.latency_us.absorb(&other.latency_us);
        self.endpoints.merge(&other.endpoints, endpoint_counters);
    }

    /// Applies `update` (one of the `count_*` updates) with the entity's gauge of open
    /// connections: the window's concurrency maximum sees the gauge before and after it.
    #[inline]
    pub fn count_with_gauge(
        &mut self,
        open_conns: &mut u64,
        update: impl FnOnce(&mut WindowAcc, &mut u64),
    ) {
        self.concurrent_max = self.concurrent_max.max(*open_conns);
        update(self, open_conns);
        self.concurrent_max = self.concurrent_max.max(*open_conns);
    }

    /// Counts a request of `size` bytes to endpoint `template`. With `detail`, also its size
    /// histogram and endpoint mix (off for entities whose distributions nobody reads).
    #[inline]
    pub fn count_request(&mut self, size: u64, template: u32, counters: usize, detail: bool) {
        self.requests += 1;
        self.bytes_in = self.bytes_in.saturating_add(size);
        if detail {
            self.request_size.record(size);
            self.endpoints.observe(template, counters);
        }
    }

    /// Counts a response of `bytes` in status slot `status` (see [`status_slot`]). With
    /// `detail`, also its latency.
    #[inline]
    pub fn count_response(
        &mut self,
        bytes: u64,
        status: usize,
        latency_us: Option<u64>,
        detail: bool,
    ) {
        self.responses += 1;
        self.bytes_out = self.bytes_out.saturating_add(bytes);
        self.status[status] += 1;
        if detail && let Some(us) = latency_us {
            self.latency_us.record(us);
        }
    }

    /// Counts a connection opened; `open_conns` is the entity's gauge of open connections.
    #[inline]
    pub fn count_conn_opened(&mut self, open_conns: &mut u64) {
        self.conns_opened += 1;
        *open_conns += 1;
    }

    /// Counts a connection closed; `open_conns` is the entity's gauge of open connections.
    #[inline]
    pub fn count_conn_closed(&mut self, open_conns: &mut u64) {
        self.conns_closed += 1;
        *open_conns = open_conns.saturating_sub(1);
    }

    /// Counts a TLS handshake (`ClientHello` of `bytes`).
    #[inline]
    pub fn count_handshake(&mut self, bytes: u64) {
        self.tls_handshakes += 1;
        self.bytes_in = self.bytes_in.saturating_add(bytes);
    }

    /// Folds the histograms' recently recorded values into their buckets (before the window
    /// is read: summaries, roll-ups).
    #[inline]
    pub fn fold(&mut self) {
        self.request_size.fold();
        self.latency_us.fold();
    }

    /// Empties the accumulator, keeping its storage.
    pub fn reset(&mut self) {
        let WindowAcc {
            requests,
            responses,
            conns_opened,
            conns_closed,
            tls_handshakes,
            concurrent_max,
            bytes_in,
            bytes_out,
            status,
            request_size,
            latency_us,
            endpoints,
        } = self;
        for counter in [
            requests,
            responses,
            conns_opened,
            conns_closed,
            tls_handshakes,
            concurrent_max,
            bytes_in,
            bytes_out,
        ] {
            *counter = 0;
        }
        *status = [0; 6];
        request_size.clear();
        latency_us.clear();
        endpoints.clear();
    }

    pub fn heap_bytes(&self) -> usize {
        self.request_size.heap_bytes() + self.latency_us.heap_bytes() + self.endpoints.heap_bytes()
    }
}
