//! The demand the collector benchmarks' agents report (shared by `core/benches/fleet.rs` and
//! `collector/benches/pipeline`): a ramp that rises every window, so every closed window
//! scales out and publishes a scale event, with noise on each step as real demand has.
//!
//! The noise matters to what the benchmarks measure: on an exactly linear ramp the forecaster
//! takes the line itself (`ModelKind::Line`) and never fits ETS, and before it did, ETS on
//! such a ramp ran its optimiser to the iteration limit (7–10 ms a fit), neither of which a
//! user's demand does.

/// Requests that `agent` reports for `resource` in window `window` (0-based): 1,000 more per
/// window plus 0–499 of deterministic noise, so every window is above the one before.
pub fn requests(resource: u64, agent: u64, window: u64) -> u64 {
    let mut h = (resource << 40) ^ (agent << 20) ^ window;
    // SplitMix64's finaliser: a well-mixed value per (resource, agent, window).
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    1000 * (window + 1) + h % 500
}
