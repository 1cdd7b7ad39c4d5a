//! Kernel-side figures: run time per packet from `bpf_stats` during live traffic, and the same
//! programs through `BPF_PROG_TEST_RUN` on real frames of that traffic.
//!
//! The test runs go to the very programs the running agent attached (fetched by id), so the
//! configuration, the maps and the ring buffer's consumer are the live ones; only the traffic
//! is replayed. Each frame is one `BPF_PROG_TEST_RUN` with `repeat = 1`, so caches are as warm
//! as a packet mix makes them (a repeated single frame would make the figure look cheaper), and
//! the kernel's timer brackets each run the way `bpf_stats`' clock brackets each live run.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use shadowtap_tests::bpf::bpf_syscall;
use shadowtap_tests::pcap::{LINKTYPE_ETHERNET, Pcap};

use super::procs::bpftool;

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;

/// One program's cumulative `bpf_stats` counters.
#[derive(Clone, Debug)]
pub struct ProgStats {
    pub id: u32,
    pub name: String,
    /// `xdp`, `sched_cls`, …
    pub prog_type: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// `bpftool prog show id N`: bpftool leaves run_time_ns/run_cnt out while they are zero.
pub fn prog_stats(id: u32) -> Result<ProgStats> {
    let v = bpftool(&["prog", "show", "id", &id.to_string()])?;
    let field = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
    Ok(ProgStats {
        id,
        name: text("name"),
        prog_type: text("type"),
        run_time_ns: field("run_time_ns"),
        run_cnt: field("run_cnt"),
    })
}

/// Average ns per live run between two readings of the same program.
pub fn live_ns_per_run(before: &ProgStats, after: &ProgStats) -> Option<f64> {
    let runs = after.run_cnt.checked_sub(before.run_cnt)?;
    let ns = after.run_time_ns.checked_sub(before.run_time_ns)?;
    (runs > 0).then(|| ns as f64 / runs as f64)
}

/// Captured Ethernet frames with their pcap timestamps (seconds, fraction).
pub type Frames = Vec<((u32, u32), Vec<u8>)>;

/// Ethernet frames of a pcap written by tcpdump on a veth.
pub fn read_frames(path: &Path) -> Result<Frames> {
    let pcap = Pcap::read(path)?;
    if pcap.linktype != LINKTYPE_ETHERNET {
        bail!(
            "{} has link type {}, expected Ethernet",
            path.display(),
            pcap.linktype
        );
    }
    Ok(pcap
        .packets
        .into_iter()
        .map(|p| ((p.ts_sec, p.ts_frac), p.data))
        .collect())
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN` (uapi layout; trailing bytes must be zero).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

fn prog_fd(id: u32) -> Result<OwnedFd> {
    let mut attr = GetFdAttr {
        id,
        ..GetFdAttr::default()
    };
    let fd = bpf_syscall(BPF_PROG_GET_FD_BY_ID, &mut attr)
        .with_context(|| format!("BPF_PROG_GET_FD_BY_ID {id}"))?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Mean ns per packet of program `id` over `passes` passes of `frames` (one run per frame).
pub struct TestRunResult {
    pub ns_per_packet: f64,
    pub runs: u64,
    /// Frames the kernel refused (e.g. larger than a test-run buffer may be).
    pub skipped: usize,
}

pub fn test_run(id: u32, frames: &[&[u8]], passes: u32) -> Result<TestRunResult> {
    let fd = prog_fd(id)?;
    let mut total_ns = 0_u64;
    let mut runs = 0_u64;
    let mut refused = vec![false; frames.len()];
    for _ in 0..passes {
        super::env::check_interrupted()?;
        for (frame, refused) in frames.iter().zip(refused.iter_mut()) {
            if *refused {
                continue;
            }
            let mut attr = TestRunAttr {
                prog_fd: fd.as_raw_fd() as u32,
                data_size_in: frame.len() as u32,
                data_in: frame.as_ptr() as u64,
                repeat: 1,
                ..TestRunAttr::default()
            };
            match bpf_syscall(BPF_PROG_TEST_RUN, &mut attr) {
                Ok(_) => {
                    total_ns += u64::from(attr.duration);
                    runs += 1;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => *refused = true,
                Err(e) => return Err(e).with_context(|| format!("BPF_PROG_TEST_RUN prog {id}")),
            }
        }
    }
    if runs == 0 {
        bail!(
            "BPF_PROG_TEST_RUN refused all {} frames for prog {id}",
            frames.len()
        );
    }
    Ok(TestRunResult {
        ns_per_packet: total_ns as f64 / runs as f64,
        runs,
        skipped: refused.iter().filter(|r| **r).count(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn test_run_attr_matches_uapi() {
        // Through `batch_size` (76 bytes), padded to 8.
        assert_eq!(std::mem::size_of::<super::TestRunAttr>(), 80);
    }
}
