//! Capture stage: loads the kernel programs, attaches them, and exposes their maps.
//!
//! The XDP program sees ingress; in host mode a tc (tcx) program sees egress so that
//! responses leaving the host are observed too. Both are attached through BPF links owned by
//! this process: when it exits — cleanly or killed — the kernel detaches them.

mod error;
mod maps;

use std::{
    ffi::CString,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, RingBuf},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode},
};
use shadowtap_common::{
    AF_V4, Config, FlowKey, MAX_FILTER_PORTS, MAX_SNAPLEN, MIN_SNAPLEN, MODE_HOST, MODE_TAP,
};
use tracing::{info, warn};

pub use error::{CaptureError, explain_attach_errno};
pub use maps::{CounterSnapshot, FlowEntry, KernelMaps, merge_stats};

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shadowtap.bpf.o"));

pub const XDP_PROGRAM: &str = "shadowtap_xdp";
pub const TC_PROGRAM: &str = "shadowtap_tc";
pub const XDP_BASELINE_PROGRAM: &str = "shadowtap_xdp_baseline";
pub const TC_BASELINE_PROGRAM: &str = "shadowtap_tc_baseline";
/// Largest flow cache (slots per CPU, 96 bytes each: 4 Mi slots are 384 MiB per CPU).
pub const MAX_FLOW_SLOTS: u32 = 1 << 22;

/// Which programs [`Tap::attach_programs`] attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramSet {
    /// The tap: accounting, flows and records.
    Tap,
    /// Programs that do nothing (`XDP_PASS`, `TC_ACT_UNSPEC`) on the same hooks, in the same
    /// modes: what merely having programs there costs, for benchmarks.
    Baseline,
}

/// Returns the embedded object, or an error saying how to build it.
pub fn ebpf_object() -> Result<&'static [u8], CaptureError> {
    if EBPF_OBJECT.is_empty() {
        Err(CaptureError::ObjectMissing)
    } else {
        Ok(EBPF_OBJECT)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Pass every frame on to the host stack; also observe egress with tc.
    Host,
    /// Dedicated SPAN/mirror port: account for every frame, then drop it.
    Tap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    /// Driver mode, falling back to skb (generic) mode with a warning.
    Auto,
    Driver,
    Skb,
}

/// Everything the kernel side needs to know before it starts.
#[derive(Clone, Debug)]
pub struct TapOptions {
    pub mode: Mode,
    pub xdp_mode: XdpMode,
    pub snaplen: u16,
    pub sample_n: u32,
    pub ports: Vec<u16>,
    pub ringbuf_bytes: u32,
    /// Unread bytes in the ring at which the kernel wakes the consumer early (see
    /// `Config::wakeup_bytes`; 0 wakes on every record). [`default_wakeup_bytes`] is the
    /// daemon's choice.
    pub wakeup_bytes: u32,
    pub flow_entries: u32,
    /// aya-log level forwarded from the kernel (0 = off … 5 = trace).
    pub kernel_log_level: u8,
}

/// The daemon's early-wakeup mark: a quarter of the ring. Below it the consumer drains on its
/// timer alone; the rest of the ring absorbs what arrives while the woken consumer gets going.
pub fn default_wakeup_bytes(ringbuf_bytes: u32) -> u32 {
    ringbuf_bytes / 4
}

impl TapOptions {
    /// The first of [`TapOptions::problems`].
    pub fn validate(&self) -> Result<(), CaptureError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every option out of range (each a [`CaptureError::InvalidOption`]).
    pub fn problems(&self) -> Vec<CaptureError> {
        let mut out = Vec::new();
        if self.snaplen < MIN_SNAPLEN || self.snaplen > MAX_SNAPLEN {
            out.push(CaptureError::InvalidOption {
                field: "snaplen",
                reason: format!(
                    "must be between {MIN_SNAPLEN} and {MAX_SNAPLEN}, got {}",
                    self.snaplen
                ),
            });
        }
        if self.sample_n == 0 {
            out.push(CaptureError::InvalidOption {
                field: "sample",
                reason: "must be at least 1 (1 keeps every connection)".into(),
            });
        }
        if self.ports.len() > MAX_FILTER_PORTS as usize {
            out.push(CaptureError::InvalidOption {
                field: "port",
                reason: format!("at most {MAX_FILTER_PORTS} ports, got {}", self.ports.len()),
            });
        }
        let page = 4096u32;
        if self.ringbuf_bytes < page
            || !(self.ringbuf_bytes / page).is_power_of_two()
            || !self.ringbuf_bytes.is_multiple_of(page)
        {
            out.push(CaptureError::InvalidOption {
                field: "ringbuf-size",
                reason: format!(
                    "must be a power-of-two multiple of 4 KiB, got {} bytes",
                    self.ringbuf_bytes
                ),
            });
        }
        if self.wakeup_bytes >= self.ringbuf_bytes {
            out.push(CaptureError::InvalidOption {
                field: "wakeup-bytes",
                reason: format!(
                    "the early-wakeup mark ({} bytes) must be below the ring size ({} bytes)",
                    self.wakeup_bytes, self.ringbuf_bytes
                ),
            });
        }
        if self.flow_entries == 0 || self.flow_entries > MAX_FLOW_SLOTS {
            out.push(CaptureError::InvalidOption {
                field: "flow-entries",
                reason: format!("must be in 1..={MAX_FLOW_SLOTS}"),
            });
        }
        out
    }

    fn kernel_config(&self) -> Config {
        Config {
            mode: match self.mode {
                Mode::Host => MODE_HOST,
                Mode::Tap => MODE_TAP,
            },
            snaplen: u32::from(self.snaplen),
            sample_n: self.sample_n,
            port_filter: u32::from(!self.ports.is_empty()),
            wakeup_bytes: self.wakeup_bytes,
            flow_mask: self.flow_slots() - 1,
        }
    }

    /// Slots of the kernel's direct-mapped flow cache: `flow_entries` rounded up to a power
    /// of two (the kernel indexes it with a mask).
    pub fn flow_slots(&self) -> u32 {
        self.flow_entries
            .clamp(1, MAX_FLOW_SLOTS)
            .next_power_of_two()
    }
}

/// An attachment this process made, for the log and for `bpftool`-style checks.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub hook: &'static str,
    pub mode: &'static str,
}

/// The loaded programs and their maps. Dropping it detaches everything.
pub struct Tap {
    ebpf: Ebpf,
    pub attachments: Vec<Attachment>,
}

/// Resolves an interface name in the current network namespace.
pub fn ifindex(name: &str) -> Result<u32, CaptureError> {
    let c = CString::new(name).map_err(|_| CaptureError::UnknownInterface(name.to_owned()))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(CaptureError::UnknownInterface(name.to_owned()))
    } else {
        Ok(idx)
    }
}

impl Tap {
    /// Loads the programs and writes the runtime configuration; attaches nothing yet.
    pub fn load(opts: &TapOptions) -> Result<Self, CaptureError> {
        opts.validate()?;
        let object = ebpf_object()?;
        let level = opts.kernel_log_level;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", opts.ringbuf_bytes)
            .map_max_entries("FLOWS", opts.flow_slots())
            .override_global("AYA_LOG_LEVEL", &level, false)
            .override_global("SHADOWTAP_CONFIG", &opts.kernel_config(), true)
            .load(object)
            .map_err(CaptureError::from_ebpf)?;
        for name in [XDP_PROGRAM, XDP_BASELINE_PROGRAM] {
            let prog: &mut Xdp = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|e| CaptureError::from_program(name, e))?;
        }
        for name in [TC_PROGRAM, TC_BASELINE_PROGRAM] {
            let tc: &mut SchedClassifier = program(&mut ebpf, name)?;
            tc.load().map_err(|e| CaptureError::from_program(name, e))?;
        }

        let mut tap = Self {
            ebpf,
            attachments: Vec::new(),
        };
        tap.configure(opts)?;
        Ok(tap)
    }

    fn configure(&mut self, opts: &TapOptions) -> Result<(), CaptureError> {
        let mut ports: HashMap<&mut MapData, u16, u8> = HashMap::try_from(
            self.ebpf
                .map_mut("PORT_FILTER")
                .ok_or(CaptureError::MissingMap("PORT_FILTER"))?,
        )
        .map_err(|e| CaptureError::Map("PORT_FILTER", e))?;
        for port in &opts.ports {
            ports
                .insert(port, &1, 0)
                .map_err(|e| CaptureError::Map("PORT_FILTER", e))?;
        }
        Ok(())
    }

    /// Attaches XDP (and in host mode the egress tc program) to `iface`.
    pub fn attach(&mut self, iface: &str, opts: &TapOptions) -> Result<(), CaptureError> {
        self.attach_programs(iface, opts, ProgramSet::Tap)
    }

    /// [`Tap::attach`] with the tap's programs or the do-nothing baseline ones.
    pub fn attach_programs(
        &mut self,
        iface: &str,
        opts: &TapOptions,
        set: ProgramSet,
    ) -> Result<(), CaptureError> {
        let (xdp_name, tc_name) = match set {
            ProgramSet::Tap => (XDP_PROGRAM, TC_PROGRAM),
            ProgramSet::Baseline => (XDP_BASELINE_PROGRAM, TC_BASELINE_PROGRAM),
        };
        let index = ifindex(iface)?;
        let xdp: &mut Xdp = program(&mut self.ebpf, xdp_name)?;
        let mode = match opts.xdp_mode {
            XdpMode::Driver => {
                xdp.attach(index, AyaXdpMode::Driver)
                    .map_err(|e| CaptureError::attach(iface, "xdp driver mode", e))?;
                "driver"
            }
            XdpMode::Skb => {
                xdp.attach(index, AyaXdpMode::Skb)
                    .map_err(|e| CaptureError::attach(iface, "xdp skb mode", e))?;
                "skb"
            }
            XdpMode::Auto => match xdp.attach(index, AyaXdpMode::Driver) {
                Ok(_) => "driver",
                Err(e) => {
                    let meaning = error::errno_of(&e)
                        .and_then(|n| error::explain_attach_errno(n, "xdp driver mode", iface))
                        .unwrap_or_default();
                    warn!(iface, error = %e, meaning, "driver-mode XDP failed; falling back to skb (generic) mode");
                    xdp.attach(index, AyaXdpMode::Skb)
                        .map_err(|e| CaptureError::attach(iface, "xdp skb mode", e))?;
                    "skb"
                }
            },
        };
        info!(iface, ifindex = index, mode, "attached XDP ingress program");
        self.attachments.push(Attachment {
            iface: iface.to_owned(),
            ifindex: index,
            hook: "xdp",
            mode,
        });
        if opts.mode == Mode::Host {
            let tc: &mut SchedClassifier = program(&mut self.ebpf, tc_name)?;
            // tcx link on kernels >= 6.6: owned by our fd, gone when we are.
            tc.attach(index, TcAttachType::Egress)
                .map_err(|e| CaptureError::attach(iface, "tc egress", e))?;
            info!(iface, ifindex = index, "attached tc egress program");
            self.attachments.push(Attachment {
                iface: iface.to_owned(),
                ifindex: index,
                hook: "tc_egress",
                mode: "tcx",
            });
        }
        Ok(())
    }

    /// Starts forwarding the kernel's aya-log records to `tracing` (via the `log` facade).
    pub fn init_kernel_log(
        &mut self,
    ) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, CaptureError> {
        aya_log::EbpfLogger::init(&mut self.ebpf).map_err(|e| CaptureError::Log(e.to_string()))
    }

    /// Takes the ring buffer of records (once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, CaptureError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(CaptureError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|e| CaptureError::Map("EVENTS", e))
    }

    /// Takes the counter and flow maps (once).
    pub fn take_maps(&mut self) -> Result<KernelMaps, CaptureError> {
        KernelMaps::take(&mut self.ebpf)
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, CaptureError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or(CaptureError::MissingProgram(name))?;
    prog.try_into()
        .map_err(|e| CaptureError::from_program(name, e))
}

/// Converts a flow key's address bytes to an `IpAddr`.
pub fn key_addrs(key: &FlowKey) -> (IpAddr, IpAddr) {
    if key.family == AF_V4 {
        let s = Ipv4Addr::new(key.src[0], key.src[1], key.src[2], key.src[3]);
        let d = Ipv4Addr::new(key.dst[0], key.dst[1], key.dst[2], key.dst[3]);
        (IpAddr::V4(s), IpAddr::V4(d))
    } else {
        (
            IpAddr::V6(Ipv6Addr::from(key.src)),
            IpAddr::V6(Ipv6Addr::from(key.dst)),
        )
    }
}
