//! `shadowtap-httppeer`: deterministic HTTP/1.1 server and client for live tests.
//!
//! Both print one JSON summary on stdout when done and nothing per request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use shadowtap_tests::peer::{client, server};

#[derive(Parser)]
#[command(about = "Deterministic HTTP/1.1 peer for shadowtap live tests")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM/SIGINT or --max-seconds, then print a JSON summary.
    Server {
        /// Address and port to listen on (IPv6 in brackets); repeatable.
        #[arg(long, required = true)]
        listen: Vec<SocketAddr>,
        #[arg(long, default_value_t = 60)]
        max_seconds: u64,
        /// File written once all listeners are bound (the bound addresses, one per line).
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Run a fixed request plan against one address, then print a JSON summary.
    Client {
        #[arg(long)]
        connect: SocketAddr,
        /// Comma-separated Host header values, cycled over requests.
        #[arg(long, value_delimiter = ',', default_value = "a.example")]
        hosts: Vec<String>,
        #[arg(long, default_value_t = 1)]
        connections: u32,
        #[arg(long, default_value_t = 1)]
        requests_per_conn: u32,
        /// Requests written back to back before reading their responses.
        #[arg(long, default_value_t = 1)]
        pipeline: u32,
        /// Comma-separated paths, cycled over requests (see the server's routes).
        #[arg(long, value_delimiter = ',')]
        paths: Vec<String>,
        /// When non-zero, every third request is a POST with this many body bytes.
        #[arg(long, default_value_t = 0)]
        post_bytes: usize,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 1)]
        parallel: u32,
        /// Pause in milliseconds after each batch of responses on a connection.
        #[arg(long, default_value_t = 0)]
        think_ms: u64,
        /// Require the connect address to be IPv6.
        #[arg(long)]
        ipv6: bool,
        #[arg(long, default_value_t = 30)]
        max_seconds: u64,
    },
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

fn install_stop_handlers() -> anyhow::Result<()> {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic; the sigaction struct is zeroed and
        // then filled with valid values before use.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&raw mut action.sa_mask);
            libc::sigaction(signal, &raw const action, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("installing handler for signal {signal}"));
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Server {
            listen,
            max_seconds,
            ready_file,
        } => {
            install_stop_handlers()?;
            let config = server::ServerConfig {
                listen,
                max_duration: Duration::from_secs(max_seconds),
                ready_file,
            };
            let summary = server::run(&config, &STOP).context("server failed")?;
            println!("{}", serde_json::to_string(&summary)?);
        }
        Command::Client {
            connect,
            hosts,
            connections,
            requests_per_conn,
            pipeline,
            paths,
            post_bytes,
            parallel,
            think_ms,
            ipv6,
            max_seconds,
        } => {
            if ipv6 && !connect.is_ipv6() {
                bail!("--ipv6 given but {connect} is not an IPv6 address");
            }
            let paths = if paths.is_empty() {
                client::DEFAULT_PATHS
                    .iter()
                    .map(|p| (*p).to_owned())
                    .collect()
            } else {
                paths
            };
            let config = client::ClientConfig {
                connect,
                hosts,
                connections,
                requests_per_conn,
                pipeline,
                paths,
                post_bytes,
                parallel,
                think: Duration::from_millis(think_ms),
                max_duration: Duration::from_secs(max_seconds),
            };
            let summary = client::run(&config).context("client failed")?;
            println!("{}", serde_json::to_string(&summary)?);
            if !summary.errors.is_empty() {
                bail!(
                    "{} client errors, first: {}",
                    summary.errors.len(),
                    summary.errors[0]
                );
            }
        }
    }
    Ok(())
}
