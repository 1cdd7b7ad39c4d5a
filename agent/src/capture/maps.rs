//! Userspace views of the kernel's counter and flow maps.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
};

use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray},
    util::nr_cpus,
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
    /// A duplicate of the flow cache's descriptor, for batched reads.
    flows_fd: Option<OwnedFd>,
    /// Possible CPUs when batched reads work here (probed once), else `None`.
    batch_cpus: Option<usize>,
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
        let flows_fd = match &flows {
            Map::PerCpuArray(data) => data.fd().as_fd().try_clone_to_owned().ok(),
            _ => None,
        };
        let flows: PerCpuArray<MapData, FlowSlot> =
            PerCpuArray::try_from(flows).map_err(|e| CaptureError::Map("FLOWS", e))?;
        let batch_cpus = match (&flows_fd, nr_cpus()) {
            (Some(fd), Ok(cpus)) => {
                let cpus = cpus.get() as usize;
                read_batched(fd.as_raw_fd(), cpus, &mut |_| {}).then_some(cpus)
            }
            _ => None,
        };
        Ok(Self {
            counters: PerCpuArray::try_from(counters)
                .map_err(|e| CaptureError::Map("COUNTERS", e))?,
            slots: flows.len(),
            flows,
            flows_fd,
            batch_cpus,
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
    /// CPU it was seen on). Read in batches of slot indices (`BPF_MAP_LOOKUP_BATCH`, each
    /// index with all CPUs' values); one lookup per index where batches are not supported.
    pub fn flows(&self) -> Vec<FlowEntry> {
        self.flow_totals()
            .into_iter()
            .map(|(key, stats)| FlowEntry { key, stats })
            .collect()
    }

    /// [`KernelMaps::flows`] as a map by key.
    pub fn flow_totals(&self) -> HashMap<FlowKey, FlowStats> {
        let mut by_key: HashMap<FlowKey, FlowStats> = HashMap::new();
        self.for_each_slot(|slot| merge_stats(by_key.entry(slot.key).or_default(), &slot.stats));
        by_key
    }

    /// Calls `each` with every occupied slot, every CPU's. Batched where the kernel supports
    /// it (checked when the maps were taken), else one lookup per index. A batch the kernel
    /// refuses mid-pass ends the pass early: a flow it missed looks absent for one export.
    pub fn for_each_slot(&self, mut each: impl FnMut(&FlowSlot)) {
        self.for_each_index(|slots| {
            slots
                .iter()
                .filter(|slot| slot.stats.packets != 0)
                .for_each(&mut each);
        });
    }

    /// Calls `each` with the slots of one index on every possible CPU, index by index (as
    /// [`KernelMaps::for_each_slot`], empty slots included). A flow's index is the same on
    /// every CPU, so all of a flow's slots are in one call.
    pub fn for_each_index(&self, mut each: impl FnMut(&[FlowSlot])) {
        if let (Some(fd), Some(cpus)) = (&self.flows_fd, self.batch_cpus) {
            read_batched(fd.as_raw_fd(), cpus, &mut each);
            return;
        }
        for index in 0..self.slots {
            if let Ok(values) = self.flows.get(&index, 0) {
                each(&values);
            }
        }
    }
}

/// `union bpf_attr` for `BPF_MAP_LOOKUP_BATCH` (its `batch` member).
#[repr(C)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Calls `each` with every index's values (one per possible CPU) of the per-CPU flow cache
/// behind `fd`, read in batches of indices; false when the kernel refused a batch.
fn read_batched(fd: i32, cpus: usize, each: &mut impl FnMut(&[FlowSlot])) -> bool {
    const BATCH: usize = 1024;
    let mut keys = vec![0u32; BATCH];
    // A per-CPU map's batch holds, per key, one value per possible CPU, each rounded up to 8
    // bytes (FlowSlot is 96).
    let mut values = vec![FlowSlot::default(); BATCH * cpus];
    let mut token = 0u32;
    let mut next = 0u32;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const token) as u64 },
            out_batch: (&raw mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` points at buffers of `count` keys and `count * cpus` values, and at
        // the two batch tokens, all alive for the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        // ENOENT: the last batch (possibly empty) was returned.
        let done = ret < 0;
        if done && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT) {
            return false;
        }
        let n = (attr.count as usize).min(BATCH);
        values[..n * cpus].chunks_exact(cpus).for_each(&mut *each);
        if done {
            return true;
        }
        token = next;
        first = false;
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
