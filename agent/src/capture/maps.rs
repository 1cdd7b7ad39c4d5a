//! Userspace views of the kernel's counter and flow maps.

use std::collections::HashMap;

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use shadowtap_common::{
    COUNTER_COUNT, Counter, Counters, DIR_EGRESS, DIR_INGRESS, FlowKey, FlowSlot, FlowStats,
};

use super::CaptureError;

/// Kernel counters summed over CPUs, per hook direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub ingress: [u64; COUNTER_COUNT as usize],
    pub egress: [u64; COUNTER_COUNT as usize],
}

impl CounterSnapshot {
    pub fn get(&self, dir: u8, counter: Counter) -> u64 {
        let block = if dir == DIR_EGRESS {
            &self.egress
        } else {
            &self.ingress
        };
        block[counter as usize]
    }

    pub fn total(&self, counter: Counter) -> u64 {
        self.get(DIR_INGRESS, counter) + self.get(DIR_EGRESS, counter)
    }

    /// `{"ingress": {"packets": …}, "egress": {…}}` for the stats line.
    pub fn to_json(&self) -> serde_json::Value {
        let block = |b: &[u64; COUNTER_COUNT as usize]| {
            let map: serde_json::Map<String, serde_json::Value> = Counter::ALL
                .iter()
                .map(|c| (c.name().to_owned(), serde_json::Value::from(b[*c as usize])))
                .collect();
            serde_json::Value::Object(map)
        };
        serde_json::json!({ "ingress": block(&self.ingress), "egress": block(&self.egress) })
    }
}

/// One flow with its counters summed over CPUs.
#[derive(Clone, Copy, Debug)]
pub struct FlowEntry {
    pub key: FlowKey,
    pub stats: FlowStats,
}

pub struct KernelMaps {
    counters: PerCpuArray<MapData, Counters>,
    flows: PerCpuArray<MapData, FlowSlot>,
    slots: u32,
}

impl KernelMaps {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, CaptureError> {
        let counters = ebpf
            .take_map("COUNTERS")
            .ok_or(CaptureError::MissingMap("COUNTERS"))?;
        let flows = ebpf
            .take_map("FLOWS")
            .ok_or(CaptureError::MissingMap("FLOWS"))?;
        let flows: PerCpuArray<MapData, FlowSlot> =
            PerCpuArray::try_from(flows).map_err(|e| CaptureError::Map("FLOWS", e))?;
        Ok(Self {
            counters: PerCpuArray::try_from(counters)
                .map_err(|e| CaptureError::Map("COUNTERS", e))?,
            slots: flows.len(),
            flows,
        })
    }

    pub fn counters(&self) -> Result<CounterSnapshot, CaptureError> {
        let mut snap = CounterSnapshot::default();
        for (dir, block) in [
            (DIR_INGRESS, &mut snap.ingress),
            (DIR_EGRESS, &mut snap.egress),
        ] {
            let per_cpu = self
                .counters
                .get(&u32::from(dir), 0)
                .map_err(|e| CaptureError::Map("COUNTERS", e))?;
            for cpu in per_cpu.iter() {
                for (sum, v) in block.iter_mut().zip(cpu) {
                    *sum += v;
                }
            }
        }
        Ok(snap)
    }

    /// Every flow in the flow cache, its slots on all CPUs summed (a flow has one slot per
    /// CPU it was seen on). One lookup per slot index (each returns all CPUs' values).
    pub fn flows(&self) -> Vec<FlowEntry> {
        let mut by_key: HashMap<FlowKey, FlowStats> = HashMap::new();
        for index in 0..self.slots {
            let Ok(values) = self.flows.get(&index, 0) else {
                continue;
            };
            for slot in values.iter() {
                if slot.stats.packets == 0 {
                    continue;
                }
                merge_stats(by_key.entry(slot.key).or_default(), &slot.stats);
            }
        }
        by_key
            .into_iter()
            .map(|(key, stats)| FlowEntry { key, stats })
            .collect()
    }
}

/// Adds one CPU's (or one evicted slot's) counters of a flow to `into`: counts add up, the
/// first/last timestamps widen, flags OR. An empty `into` (no packets) takes `add`'s times.
pub fn merge_stats(into: &mut FlowStats, add: &FlowStats) {
    if add.packets == 0 {
        return;
    }
    if into.packets == 0 {
        into.first_ns = add.first_ns;
    } else {
        into.first_ns = into.first_ns.min(add.first_ns);
    }
    into.packets += add.packets;
    into.bytes += add.bytes;
    into.payload_bytes += add.payload_bytes;
    into.last_ns = into.last_ns.max(add.last_ns);
    into.tcp_flags |= add.tcp_flags;
}
