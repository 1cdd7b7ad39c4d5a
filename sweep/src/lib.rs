//! Shadow parameter sweeps (issue 16): which configuration should a service run to meet the
//! load the tap sees and the forecast predicts? Trials run on shadow instances, never on the
//! primary.
//!
//! Dataflow: catalogue (what can be tuned) → explorer (which trial next) → runner (start a
//! shadow, drive it with the load generator, measure KPIs, stop it) → store (every trial) →
//! KPI model and load→parameters policy → recommendation with a canary plan.

pub mod catalogue;
pub mod experiment;
pub mod explorer;
pub mod runner;
pub mod sweep;
pub mod trial;

// Policy store, KPI model, load→parameters policy, recommendation and canary (issue 16 §3–4).
pub mod canary;
pub mod events;
pub mod features;
mod json_f64;
pub mod kpi_cv;
pub mod kpi_model;
pub mod policy;
pub mod policy_eval;
pub mod policy_live;
pub mod recommend;
pub mod sink;
pub mod store;
pub mod synthetic;
