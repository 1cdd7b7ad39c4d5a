//! Capture errors, phrased for the operator: what failed and what to do about it.

use aya::{EbpfError, maps::MapError, programs::ProgramError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error(
        "the eBPF object is not embedded in this binary: run `cargo xtask build-ebpf`, then rebuild the agent"
    )]
    ObjectMissing,
    #[error("unknown network interface {0:?} (not present in this network namespace)")]
    UnknownInterface(String),
    #[error(
        "missing privilege for {action}: loading and attaching eBPF programs needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (the verifier accepts the parser's packet-pointer arithmetic only with CAP_PERFMON; CAP_SYS_ADMIN on kernels older than 5.8), e.g. run as root ({source})"
    )]
    Privilege {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the kernel verifier rejected program {program}: {io_error}\n--- verifier log ---\n{log}"
    )]
    Verifier {
        program: &'static str,
        io_error: std::io::Error,
        log: String,
    },
    #[error(
        "program {0} is missing from the eBPF object (stale build? run `cargo xtask build-ebpf`)"
    )]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object (stale build? run `cargo xtask build-ebpf`)")]
    MissingMap(&'static str),
    #[error("could not attach {hook} on {iface}: {explanation} (the kernel said: {kernel})")]
    AttachExplained {
        iface: String,
        hook: &'static str,
        /// What the kernel's error means here, and what to do about it.
        explanation: String,
        /// The original error with its causes, e.g. "`bpf_link_create` failed: Numerical
        /// result out of range (os error 34)".
        kernel: String,
    },
    #[error("could not attach {hook} on {iface}: {source}")]
    Attach {
        iface: String,
        hook: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[source] EbpfError),
    #[error("map {0}: {1}")]
    Map(&'static str, #[source] MapError),
    #[error("invalid option --{field}: {reason}")]
    InvalidOption { field: &'static str, reason: String },
    #[error("kernel log forwarding: {0}")]
    Log(String),
}

/// The OS error number somewhere in `e`'s chain of causes.
pub(crate) fn errno_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(code) = c
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return Some(code);
        }
        cause = c.source();
    }
    None
}

/// What an attach error number means in the operator's terms — cause, then what to do — or
/// `None` when there is nothing to add to the kernel's own words. `hook` is as in
/// [`CaptureError::attach`] ("xdp driver mode", "xdp skb mode", "tc egress").
pub fn explain_attach_errno(errno: i32, hook: &str, iface: &str) -> Option<String> {
    let xdp = hook.starts_with("xdp");
    let driver = hook == "xdp driver mode";
    let text = match errno {
        libc::ERANGE if driver => format!(
            "the MTU of {iface} is too large for driver-mode XDP on this device (the driver \
             needs a frame to fit in one page, e.g. veth accepts at most about 3,500 bytes); \
             lower the MTU (`ip link set dev {iface} mtu 1500`) or use `--xdp-mode skb` (or \
             `auto`, which falls back to it)"
        ),
        libc::ERANGE => format!(
            "a value is out of the range the kernel accepts for {iface} (for XDP usually the \
             MTU); lower the MTU of {iface} or use `--xdp-mode skb`"
        ),
        libc::EBUSY | libc::EEXIST if xdp => format!(
            "another XDP program is already attached to {iface} (another agent, or a tool \
             such as `ip link set … xdp`); see it with `bpftool net show dev {iface}`, detach \
             it (`ip link set dev {iface} xdp off`, or stop the other agent), then start again"
        ),
        libc::EBUSY | libc::EEXIST => format!(
            "another program already holds this hook on {iface}; see it with \
             `bpftool net show dev {iface}` and detach it, then start again"
        ),
        libc::EOPNOTSUPP if driver => format!(
            "the driver of {iface} has no native (driver-mode) XDP support; use \
             `--xdp-mode skb` (or `auto`, which falls back to it)"
        ),
        libc::EOPNOTSUPP => format!(
            "{iface} or this kernel does not support this attachment ({hook}); Linux ≥ 6.6 \
             is needed for tcx links"
        ),
        libc::EPERM | libc::EACCES => "the agent lacks the privilege to attach programs: it \
             needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (run as root, or see \
             deploy/systemd/shadowtap-agent.service); on kernels older than 5.11 also raise \
             RLIMIT_MEMLOCK (`LimitMEMLOCK=infinity`, `ulimit -l unlimited`)"
            .to_owned(),
        libc::ENODEV | libc::ENXIO | libc::ENOENT => format!(
            "{iface} disappeared or is not a device programs can attach to in this network \
             namespace; check `ip link show {iface}` (and the agent's namespace)"
        ),
        libc::EINVAL if driver => format!(
            "the kernel rejected driver-mode XDP on {iface} as invalid: the device cannot run \
             this program in driver mode (e.g. it is a bond or bridge member, or has \
             features XDP does not allow such as LRO or a large MTU); use `--xdp-mode skb` \
             or `auto`, or disable the feature (`ethtool -K {iface} lro off`)"
        ),
        libc::EINVAL => format!(
            "the kernel rejected the {hook} attachment on {iface} as invalid: usually a \
             kernel older than 6.6 (tcx links) or a device type that cannot take it; check \
             `uname -r`{}",
            if xdp { ", or try `--xdp-mode skb`" } else { "" }
        ),
        libc::E2BIG => "the kernel does not understand the attach request (it is older than \
             the interface the agent uses, or the program is too large for this hook); \
             Linux ≥ 6.6 is required"
            .to_owned(),
        libc::ENOSPC => format!(
            "no room for another program on this hook of {iface} (too many attached); list \
             them with `bpftool net show dev {iface}` and detach the unused ones"
        ),
        libc::ENOMEM => "the kernel could not allocate memory for the attachment; free \
             memory, raise the memory cgroup limit of the agent's service, or lower \
             `--ringbuf-size` and `--flow-entries`"
            .to_owned(),
        _ => return None,
    };
    Some(text)
}

/// `e` and its causes, as `anyhow` prints them with `{:#}`.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        // Transparent wrappers repeat their cause's words.
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        cause = c.source();
    }
    text
}

fn is_permission(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}

impl CaptureError {
    pub(crate) fn from_ebpf(e: EbpfError) -> Self {
        if let EbpfError::MapError(MapError::CreateError { io_error, .. }) = &e
            && is_permission(io_error)
        {
            return Self::Privilege {
                action: "creating BPF maps".into(),
                source: std::io::Error::from_raw_os_error(
                    io_error.raw_os_error().unwrap_or(libc::EPERM),
                ),
            };
        }
        Self::Load(e)
    }

    pub(crate) fn from_program(program: &'static str, e: ProgramError) -> Self {
        match e {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => {
                if is_permission(&io_error) && verifier_log.to_string().trim().is_empty() {
                    Self::Privilege {
                        action: format!("loading program {program}"),
                        source: io_error,
                    }
                } else {
                    Self::Verifier {
                        program,
                        io_error,
                        log: verifier_log.to_string(),
                    }
                }
            }
            other => Self::Program {
                program,
                source: other,
            },
        }
    }

    pub(crate) fn attach(iface: &str, hook: &'static str, e: ProgramError) -> Self {
        match e {
            ProgramError::UnknownInterface { .. } => Self::UnknownInterface(iface.to_owned()),
            ProgramError::SyscallError(s) if is_permission(&s.io_error) => Self::Privilege {
                action: format!("attaching {hook} to {iface}"),
                source: s.io_error,
            },
            other => match errno_of(&other).and_then(|n| explain_attach_errno(n, hook, iface)) {
                Some(explanation) => Self::AttachExplained {
                    iface: iface.to_owned(),
                    hook,
                    explanation,
                    kernel: with_causes(&other),
                },
                None => Self::Attach {
                    iface: iface.to_owned(),
                    hook,
                    source: other,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya::sys::SyscallError;

    fn attach_error(errno: i32, hook: &'static str) -> String {
        let e = ProgramError::SyscallError(SyscallError {
            call: "bpf_link_create",
            io_error: std::io::Error::from_raw_os_error(errno),
        });
        CaptureError::attach("eth7", hook, e).to_string()
    }

    #[test]
    fn attach_errors_say_what_they_mean_and_what_to_do() {
        for (errno, hook, says) in [
            (
                libc::ERANGE,
                "xdp driver mode",
                ["MTU of eth7 is too large", "--xdp-mode skb"],
            ),
            (libc::EBUSY, "xdp skb mode", ["already attached", "xdp off"]),
            (
                libc::EEXIST,
                "xdp driver mode",
                ["already attached", "bpftool net"],
            ),
            (
                libc::EOPNOTSUPP,
                "xdp driver mode",
                ["no native", "--xdp-mode skb"],
            ),
            (libc::EOPNOTSUPP, "tc egress", ["does not support", "6.6"]),
            (
                libc::ENODEV,
                "tc egress",
                ["disappeared", "ip link show eth7"],
            ),
            (
                libc::EINVAL,
                "xdp driver mode",
                ["rejected driver-mode", "--xdp-mode skb"],
            ),
            (
                libc::EINVAL,
                "tc egress",
                ["rejected the tc egress", "uname -r"],
            ),
            (libc::E2BIG, "xdp skb mode", ["older", "6.6"]),
            (libc::ENOSPC, "tc egress", ["no room", "detach"]),
            (libc::ENOMEM, "xdp skb mode", ["memory", "--ringbuf-size"]),
        ] {
            let text = attach_error(errno, hook);
            let os = std::io::Error::from_raw_os_error(errno).to_string();
            for s in says.iter().chain([&os.as_str(), &"bpf_link_create"]) {
                assert!(
                    text.contains(s),
                    "errno {errno} on {hook}: {text:?} lacks {s:?}"
                );
            }
        }
    }

    #[test]
    fn permission_errors_name_the_capabilities() {
        for errno in [libc::EPERM, libc::EACCES] {
            let text = attach_error(errno, "xdp driver mode");
            assert!(
                text.contains("CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"),
                "{text}"
            );
        }
        let memlock = explain_attach_errno(libc::EPERM, "tc egress", "eth7").expect("explained");
        assert!(memlock.contains("RLIMIT_MEMLOCK"), "{memlock}");
    }

    #[test]
    fn unknown_errno_keeps_the_kernel_words() {
        let text = attach_error(libc::ETIMEDOUT, "tc egress");
        assert!(
            text.starts_with("could not attach tc egress on eth7: "),
            "{text}"
        );
        assert!(text.contains("bpf_link_create"), "{text}");
    }
}
