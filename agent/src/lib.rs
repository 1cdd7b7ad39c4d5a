//! shadowtap agent library: one module per stage of the dataflow
//! (capture → decode → events → windows → model → forecast → decision → sink).

pub mod backtest;
pub mod capture;
pub mod decision;
pub mod decode;
pub mod events;
pub mod forecast;
pub mod metrics;
pub mod model;
pub mod replay;
pub mod runtime;
pub mod sink;
pub mod windows;

/// Logs to stderr with `RUST_LOG` filtering (default `info`); `log` records, such as the
/// kernel's aya-log output, are bridged in. Shared by every shadowtap binary.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The allocator of every process that links this library (the agent, the collector, their
/// tests and benches), so that what is measured is what runs. mimalloc rather than glibc's:
/// closing windows builds and later drops many small summaries (histogram buckets, endpoint
/// names), where glibc's malloc spends a third of the model's time with per-client summaries
/// on (`cargo xtask bench windows`). Built without the `mimalloc` feature, the system
/// allocator is used.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
