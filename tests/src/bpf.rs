//! What BPF programs are attached to an interface, and which BPF objects a process holds.
//!
//! Three views, because no single tool here sees every attach kind: `ip -d link` shows XDP
//! (netlink or link based), `bpftool net` shows netlink tc (clsact) filters, and tcx
//! attachments (kernel >= 6.6, what aya uses there) are only visible through the
//! `BPF_PROG_QUERY` syscall, which the installed bpftool (7.1) does not issue for them.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result, io_context};
use crate::netns::Netns;

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// One program attached to a hook of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedProg {
    pub id: u64,
    /// e.g. `xdp driver`, `xdp skb`, `tc clsact/egress`, `tcx egress`.
    pub hook: String,
}

/// Everything attached to one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attachments {
    pub xdp: Vec<AttachedProg>,
    /// Netlink tc filters (bpftool) and tcx programs (`BPF_PROG_QUERY`).
    pub tc: Vec<AttachedProg>,
    /// Any other non-empty section `bpftool net` reports, verbatim.
    pub other: Vec<String>,
}

impl Attachments {
    pub fn is_empty(&self) -> bool {
        self.xdp.is_empty() && self.tc.is_empty() && self.other.is_empty()
    }

    pub fn has_tc_egress(&self) -> bool {
        self.tc.iter().any(|p| p.hook.ends_with("egress"))
    }

    pub fn prog_ids(&self) -> Vec<u64> {
        self.xdp.iter().chain(&self.tc).map(|p| p.id).collect()
    }
}

fn xdp_mode_name(mode: u64) -> &'static str {
    match mode {
        1 => "driver",
        2 => "skb",
        3 => "hw",
        4 => "multi",
        _ => "unknown",
    }
}

/// Parses the `xdp` object of `ip -d -j link show`.
fn xdp_from_link(link: &Value) -> Vec<AttachedProg> {
    let Some(xdp) = link.get("xdp") else {
        return Vec::new();
    };
    let outer_mode = xdp.get("mode").and_then(Value::as_u64).unwrap_or(0);
    let mut progs: Vec<AttachedProg> = xdp
        .get("attached")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let id = a.get("prog")?.get("id")?.as_u64()?;
            let mode = a.get("mode").and_then(Value::as_u64).unwrap_or(outer_mode);
            Some(AttachedProg {
                id,
                hook: format!("xdp {}", xdp_mode_name(mode)),
            })
        })
        .collect();
    if progs.is_empty()
        && let Some(id) = xdp
            .get("prog")
            .and_then(|p| p.get("id"))
            .and_then(Value::as_u64)
    {
        progs.push(AttachedProg {
            id,
            hook: format!("xdp {}", xdp_mode_name(outer_mode)),
        });
    }
    progs
}

/// Everything attached to `ifname` inside `ns`.
pub fn attachments(ns: &Netns, ifname: &str) -> Result<Attachments> {
    let mut found = Attachments {
        xdp: xdp_from_link(&ns.link_json(ifname)?),
        ..Attachments::default()
    };

    let output = ns.run("bpftool", ["-j", "net", "show", "dev", ifname])?;
    let parsed: Value = serde_json::from_slice(&output.stdout).map_err(|e| Error::Parse {
        source_name: format!("bpftool net show dev {ifname}"),
        reason: e.to_string(),
    })?;
    for section in parsed.as_array().into_iter().flatten() {
        let Some(map) = section.as_object() else {
            continue;
        };
        for (key, entries) in map {
            let entries = entries.as_array().map(Vec::as_slice).unwrap_or_default();
            match key.as_str() {
                // Already read from `ip link`, which also sees link-based XDP.
                "xdp" => {}
                "tc" => found.tc.extend(entries.iter().filter_map(|e| {
                    Some(AttachedProg {
                        id: e.get("id")?.as_u64()?,
                        hook: format!("tc {}", e.get("kind")?.as_str()?),
                    })
                })),
                _ if entries.is_empty() => {}
                _ => found
                    .other
                    .push(format!("{key}: {}", Value::from(entries.to_vec()))),
            }
        }
    }

    let tcx = tcx_programs(ns, ifname)?;
    for (direction, ids) in [("ingress", tcx.ingress), ("egress", tcx.egress)] {
        found.tc.extend(ids.into_iter().map(|id| AttachedProg {
            id: u64::from(id),
            hook: format!("tcx {direction}"),
        }));
    }
    Ok(found)
}

/// Program ids attached through tcx, per direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcxPrograms {
    pub ingress: Vec<u32>,
    pub egress: Vec<u32>,
}

/// Queries tcx attachments of `ifname` in `ns`. Interface indexes and the query are per network
/// namespace, so this runs on a short-lived thread that first joins `ns` (`setns` only changes
/// the calling thread).
pub fn tcx_programs(ns: &Netns, ifname: &str) -> Result<TcxPrograms> {
    let ns_path = Path::new("/run/netns").join(ns.name());
    let ifname = ifname.to_owned();
    std::thread::spawn(move || -> Result<TcxPrograms> {
        let ns_file =
            File::open(&ns_path).map_err(io_context(format!("opening {}", ns_path.display())))?;
        // SAFETY: setns(2) on a valid namespace fd; it affects only this thread, which exits
        // right after the query.
        if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(Error::Io {
                context: format!("setns into {}", ns_path.display()),
                source: std::io::Error::last_os_error(),
            });
        }
        let c_name = CString::new(ifname.clone())
            .map_err(|_| Error::Precondition(format!("interface name {ifname:?} has a NUL")))?;
        // SAFETY: `c_name` is a valid NUL-terminated string for the duration of the call.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if ifindex == 0 {
            return Err(Error::Io {
                context: format!("if_nametoindex({ifname}) in {}", ns_path.display()),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(TcxPrograms {
            ingress: prog_query(ifindex, BPF_TCX_INGRESS)?,
            egress: prog_query(ifindex, BPF_TCX_EGRESS)?,
        })
    })
    .join()
    .map_err(|_| Error::Precondition("tcx query thread panicked".to_owned()))?
}

/// `union bpf_attr` as used by `BPF_PROG_QUERY` (kernel uapi layout, 64 bytes).
#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// The raw `bpf(2)` system call with a `repr(C)` attribute struct (also used by the live bench
/// in xtask, which has no aya dependency).
pub fn bpf_syscall<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed repr(C) struct of the size passed; the
    // kernel reads and writes within it (and within buffers it points to, which callers keep
    // alive for the call).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn prog_query(ifindex: u32, attach_type: u32) -> Result<Vec<u32>> {
    let mut ids = vec![0_u32; 64];
    let mut attr = ProgQueryAttr {
        target_ifindex: ifindex,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..ProgQueryAttr::default()
    };
    match bpf_syscall(BPF_PROG_QUERY, &mut attr) {
        Ok(_) => {
            ids.truncate(attr.prog_cnt.min(64) as usize);
            Ok(ids)
        }
        // Kernels without tcx reject the attach type: nothing can be attached that way.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Vec::new()),
        Err(e) => Err(Error::Io {
            context: format!("BPF_PROG_QUERY ifindex {ifindex} attach type {attach_type}"),
            source: e,
        }),
    }
}

/// Whether a BPF program with this id is still loaded anywhere.
pub fn prog_exists(id: u64) -> Result<bool> {
    #[repr(C)]
    #[derive(Default)]
    struct GetFdAttr {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
        _pad: u32,
    }
    let mut attr = GetFdAttr {
        prog_id: u32::try_from(id)
            .map_err(|_| Error::Precondition(format!("program id {id} out of range")))?,
        ..GetFdAttr::default()
    };
    match bpf_syscall(BPF_PROG_GET_FD_BY_ID, &mut attr) {
        Ok(fd) => {
            // SAFETY: the kernel just returned this fd to us; nothing else owns it.
            unsafe { libc::close(fd as libc::c_int) };
            Ok(true)
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(Error::Io {
            context: format!("BPF_PROG_GET_FD_BY_ID {id}"),
            source: e,
        }),
    }
}

/// A BPF program or link a process holds open, with its `/proc/PID/fdinfo` fields
/// (`prog_type`, `prog_id`, `link_type`, `link_id`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedBpfObject {
    pub fd: u32,
    /// `bpf-prog` or `bpf_link`.
    pub kind: String,
    pub fields: BTreeMap<String, String>,
}

impl OwnedBpfObject {
    pub fn prog_id(&self) -> Option<u64> {
        self.fields.get("prog_id")?.parse().ok()
    }
}

/// BPF programs and links held by `pid` (read from procfs; needs root for other users' pids).
pub fn owned_bpf_objects(pid: u32) -> Result<Vec<OwnedBpfObject>> {
    let fd_dir = format!("/proc/{pid}/fd");
    let mut objects = Vec::new();
    for entry in std::fs::read_dir(&fd_dir).map_err(io_context(format!("listing {fd_dir}")))? {
        let entry = entry.map_err(io_context(format!("listing {fd_dir}")))?;
        // Fds close while we look: skip the ones that vanished.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let Some(kind) = target.strip_prefix("anon_inode:") else {
            continue;
        };
        if kind != "bpf-prog" && kind != "bpf_link" {
            continue;
        }
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
            continue;
        };
        let fields = info
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        objects.push(OwnedBpfObject {
            fd,
            kind: kind.to_owned(),
            fields,
        });
    }
    Ok(objects)
}

/// Compiles LLVM IR text to a BPF object at `stem.o` with `llc`; returns the object's path.
/// Tests use it for small hand-written programs (a detector's dummy programs, a lossy tc
/// filter) without a Rust eBPF crate of their own.
pub fn compile_ir(ir_text: &str, stem: &Path) -> Result<String> {
    let llc = crate::support::require_llc()?;
    let ir = stem.with_extension("ll");
    let obj = stem.with_extension("o");
    std::fs::write(&ir, ir_text).map_err(io_context(format!("writing {}", ir.display())))?;
    crate::process::run_checked(
        std::process::Command::new(&llc)
            .args(["-march=bpf", "-filetype=obj", "-o"])
            .arg(&obj)
            .arg(&ir),
    )?;
    Ok(obj.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_attr_matches_uapi_size() {
        assert_eq!(std::mem::size_of::<ProgQueryAttr>(), 64);
    }

    #[test]
    fn reads_xdp_from_ip_link_json() {
        let link: Value = serde_json::from_str(
            r#"{"xdp":{"mode":2,"prog":{"id":101,"name":"p"},
                "attached":[{"mode":2,"prog":{"id":101,"name":"p"}}]}}"#,
        )
        .expect("literal json");
        assert_eq!(
            xdp_from_link(&link),
            vec![AttachedProg {
                id: 101,
                hook: "xdp skb".to_owned()
            }]
        );
        let bare: Value =
            serde_json::from_str(r#"{"xdp":{"mode":1,"prog":{"id":7}}}"#).expect("literal json");
        assert_eq!(xdp_from_link(&bare)[0].hook, "xdp driver");
        assert!(xdp_from_link(&Value::Null).is_empty());
    }
}
