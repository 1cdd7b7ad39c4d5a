//! Integration test helpers for shadowtap.
//!
//! - [`netns`]: network namespaces joined by a veth pair (RAII, stale-run sweep).
//! - [`process`]: background processes that log to files and die with their guard.
//! - [`peer`]: the deterministic HTTP/1.1 client and server behind `shadowtap-httppeer`.
//! - [`agent`]: starting `shadowtap-agent` inside a namespace and reading its JSON lines.
//! - [`closed_loop`]: the closed-loop experiment (issue 14): bed, traffic, report, plot.
//! - [`broker`]: a real Kafka-protocol broker (nisshi) inside a test namespace.
//! - [`bpf`]: what XDP/tc programs are attached to an interface, which ones a process owns.
//! - [`events`]: tallies over the agent's event log.
//! - [`pcap`]: reading classic pcap files and giving raw-IP captures an Ethernet header.
//! - [`scenario`]: the live tests' traffic plan, peer start/stop and shared checks.
//! - [`support`]: preconditions (root, tools) and paths (workspace, shared data).
//! - [`tshark`]: tshark as the oracle for HTTP message heads in pcaps.

pub mod agent;
pub mod bpf;
pub mod broker;
pub mod closed_loop;
pub mod error;
pub mod events;
pub mod json;
pub mod netns;
pub mod nginx;
pub mod pcap;
pub mod peer;
pub mod process;
pub mod scenario;
pub mod support;
pub mod tshark;
pub mod workdir;

pub use error::{Error, Result};
