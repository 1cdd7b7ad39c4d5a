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
        "missing privilege for {action}: loading and attaching eBPF programs needs CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN on older kernels), e.g. run as root ({source})"
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
            other => Self::Attach {
                iface: iface.to_owned(),
                hook,
                source: other,
            },
        }
    }
}
