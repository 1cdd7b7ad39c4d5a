//! Userspace views of the kernel's counter and flow maps.

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
};
use shadowtap_common::{
    COUNTER_COUNT, Counter, Counters, DIR_EGRESS, DIR_INGRESS, FlowKey, FlowStats,
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
    flows: PerCpuHashMap<MapData, FlowKey, FlowStats>,
}

impl KernelMaps {
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, CaptureError> {
        let counters = ebpf
            .take_map("COUNTERS")
            .ok_or(CaptureError::MissingMap("COUNTERS"))?;
        let flows = ebpf
            .take_map("FLOWS")
            .ok_or(CaptureError::MissingMap("FLOWS"))?;
        Ok(Self {
            counters: PerCpuArray::try_from(counters)
                .map_err(|e| CaptureError::Map("COUNTERS", e))?,
            flows: PerCpuHashMap::try_from(flows).map_err(|e| CaptureError::Map("FLOWS", e))?,
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

    /// Every flow in the map, summed over CPUs. Entries that vanish while iterating (LRU
    /// eviction races) are skipped.
    pub fn flows(&self) -> Vec<FlowEntry> {
        let mut out = Vec::new();
        for item in &self.flows {
            let Ok((key, values)) = item else { continue };
            let mut stats = FlowStats::default();
            let mut first = u64::MAX;
            for v in values.iter() {
                if v.packets == 0 {
                    continue;
                }
                stats.packets += v.packets;
                stats.bytes += v.bytes;
                stats.payload_bytes += v.payload_bytes;
                first = first.min(v.first_ns);
                stats.last_ns = stats.last_ns.max(v.last_ns);
                stats.tcp_flags |= v.tcp_flags;
            }
            stats.first_ns = if first == u64::MAX { 0 } else { first };
            out.push(FlowEntry { key, stats });
        }
        out
    }

    /// Removes a flow after its final export (idle), so the LRU only evicts under pressure.
    pub fn remove_flow(&mut self, key: &FlowKey) -> bool {
        self.flows.remove(key).is_ok()
    }
}
