//! shadowtap agent library: one module per stage of the dataflow
//! (capture → decode → events → windows → model → sink). The stages the collector and other
//! processes share (wire format, fleet merge, forecast, decision) live in `shadowtap-core`.

pub mod backtest;
pub mod capture;
pub mod config;
pub mod decode;
pub mod events;
pub mod model;
pub mod profile_cmd;
pub mod replay;
pub mod runtime;
pub mod sink;
pub mod windows;
