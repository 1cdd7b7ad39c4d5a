//! The fleet collector (issue 4) is not built yet. This crate holds its place in the workspace
//! and deliberately contains no behaviour, so nothing can mistake it for a working collector.
