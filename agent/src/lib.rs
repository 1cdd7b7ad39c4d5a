//! shadowtap agent library: one module per stage of the dataflow
//! (capture → decode → events → windows → model → forecast → decision → sink).
