//! The agent's per-flow state beside the kernel's direct-mapped flow cache: what each flow's
//! slots and flushed slots add up to, and the delta each `flow` event carries.

use shadowtap_common::{FlowKey, FlowStats};

/// The agent's view of one flow of the kernel's flow cache: 48 bytes, the size of the
/// exported-totals entry of the LRU build before it (a table entry per flow seen, until it is
/// forgotten; the 100k-client RSS budget depends on it).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct FlowState {
    /// Per counter (packets, bytes, payload bytes): what the kernel flushed for this flow
    /// (`FlowEvicted` records) minus what was written as `flow` events. Positive: flushed
    /// counters no export carried yet; negative: exported slot counters whose flush has not
    /// arrived (it then cancels them out).
    pending: [i64; 3],
    /// Earliest first packet and latest last packet over the flow's slots and flushes seen
    /// (`last_ns == 0`: none yet).
    first_ns: u64,
    pub(super) last_ns: u64,
    /// TCP flags seen, OR-ed over the flow's slots and flushes.
    tcp_flags: u32,
    /// The last export (its tick) that found the flow in a slot.
    pub(super) live_at: u32,
}

const _: () = assert!(std::mem::size_of::<FlowState>() == 48);

impl FlowState {
    pub(super) fn counts(s: &FlowStats) -> [u64; 3] {
        [s.packets, s.bytes, s.payload_bytes]
    }

    /// Widens the times and ORs the flags with `s`'s.
    pub(super) fn see(&mut self, s: &FlowStats) {
        if s.packets == 0 {
            return;
        }
        self.first_ns = if self.last_ns == 0 {
            s.first_ns
        } else {
            self.first_ns.min(s.first_ns)
        };
        self.last_ns = self.last_ns.max(s.last_ns);
        self.tcp_flags |= s.tcp_flags;
    }

    /// A slot the kernel flushed for this flow.
    pub(super) fn flushed(&mut self, s: &FlowStats) {
        let add = Self::counts(s);
        for (p, a) in self.pending.iter_mut().zip(add) {
            *p = p.saturating_add(i64::try_from(a).unwrap_or(i64::MAX));
        }
        self.see(s);
    }

    /// The delta to export when the flow's slots now hold `in_slots` (zero when no slot holds
    /// it), if the flow moved; records it as exported. Totals (flushed + in slots) that dip
    /// while a flush is in flight export nothing twice when they come back: what was exported
    /// is the field-wise maximum of the totals so far.
    pub(super) fn advance(&mut self, in_slots: [u64; 3]) -> Option<FlowStats> {
        let [packets, bytes, payload_bytes] = std::array::from_fn(|i| {
            let total = i128::from(in_slots[i]) + i128::from(self.pending[i]);
            u64::try_from(total.max(0)).unwrap_or(u64::MAX)
        });
        if packets == 0 && bytes == 0 {
            return None;
        }
        for (p, s) in self.pending.iter_mut().zip(in_slots) {
            let exported_slots = i64::try_from(-i128::from(s)).unwrap_or(i64::MIN);
            *p = (*p).min(exported_slots);
        }
        Some(FlowStats {
            packets,
            bytes,
            payload_bytes,
            first_ns: self.first_ns,
            last_ns: self.last_ns,
            tcp_flags: self.tcp_flags,
            _pad: 0,
        })
    }
}

/// Key order for grouping one index's slots by flow.
pub(super) fn key_order(k: &FlowKey) -> impl Ord {
    (
        k.src,
        k.dst,
        k.ifindex,
        k.src_port,
        k.dst_port,
        (k.proto, k.family, k.direction),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(packets: u64, bytes: u64, first_ns: u64, last_ns: u64) -> FlowStats {
        FlowStats {
            packets,
            bytes,
            payload_bytes: bytes / 2,
            first_ns,
            last_ns,
            tcp_flags: 0,
            _pad: 0,
        }
    }

    fn exported(d: Option<FlowStats>) -> (u64, u64, u64) {
        d.map_or((0, 0, 0), |d| (d.packets, d.bytes, d.payload_bytes))
    }

    /// A flow's slot grows, is flushed, a new slot starts; one flush is read only after the
    /// export that missed it (in flight): the deltas add up to the flow's exact totals.
    #[test]
    fn flow_deltas_add_up_across_flushes_and_a_dip() {
        let mut s = FlowState::default();
        let mut sum = (0, 0, 0);
        let mut add = |d: Option<FlowStats>| {
            let (p, b, y) = exported(d);
            sum = (sum.0 + p, sum.1 + b, sum.2 + y);
            (p, b, y)
        };
        // Export 1: slot holds 3 packets.
        s.see(&stats(3, 300, 10, 30));
        assert_eq!(add(s.advance([3, 300, 150])), (3, 300, 150));
        // The slot reaches 5 packets and is flushed; its record is in flight at export 2,
        // whose walk finds no slot: nothing is exported, nothing is lost.
        assert_eq!(add(s.advance([0; 3])), (0, 0, 0));
        // The record arrives; a new slot holds 2 packets at export 3.
        s.flushed(&stats(5, 500, 10, 50));
        s.see(&stats(2, 200, 60, 70));
        assert_eq!(add(s.advance([2, 200, 100])), (4, 400, 200));
        // Nothing moved: nothing exported.
        assert!(s.advance([2, 200, 100]).is_none());
        // That slot is flushed and read before export 5, which finds no slot.
        s.flushed(&stats(2, 200, 60, 70));
        assert!(s.advance([0; 3]).is_none());
        // A third slot: 1 packet.
        s.see(&stats(1, 100, 80, 80));
        let last = s.advance([1, 100, 50]);
        assert_eq!(add(last), (1, 100, 50));
        assert_eq!(sum, (8, 800, 400), "7 + 1 packets, each exported once");
        let last = last.expect("moved");
        assert_eq!((last.first_ns, last.last_ns), (10, 80));
    }

    /// Flushed counters of a flow no slot holds are exported once.
    #[test]
    fn flushed_flow_without_slot_is_exported_once() {
        let mut s = FlowState::default();
        s.flushed(&stats(4, 400, 5, 9));
        assert_eq!(exported(s.advance([0; 3])), (4, 400, 200));
        assert!(s.advance([0; 3]).is_none());
    }
}
