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
