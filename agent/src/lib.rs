//! shadowtap agent library: one module per stage of the dataflow
//! (capture → decode → events → windows → model → forecast → decision → sink).

pub mod capture;
pub mod metrics;
pub mod runtime;
pub mod decode;
pub mod events;
pub mod windows;
pub mod model;
pub mod replay;
pub mod forecast;
pub mod decision;
pub mod backtest;
pub mod sink;
