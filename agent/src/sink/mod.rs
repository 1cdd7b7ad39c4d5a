//! The agent's outbound path: each closed resource window becomes a
//! [`shadowtap_core::wire::Observation`], published through the idempotent producer
//! ([`shadowtap_core::kafka`]) or handed to the fleet logic in-process ([`embedded`]).
//!
//! The wire formats are documented in `collector/WIRE_FORMAT.md`.

pub mod embedded;

pub use embedded::EmbeddedCollector;
use shadowtap_core::{Observation, WindowCounts};

use crate::model::{EntityId, WindowSummary};

/// The observation of a resource's closed window. `None` for a client entity: only resources
/// are scaled. Errors are 5xx responses.
pub fn observation_from_summary(
    agent_id: &str,
    summary: &WindowSummary,
    seq: u64,
) -> Option<Observation> {
    let EntityId::Resource(resource) = &summary.entity else {
        return None;
    };
    let start_ms = summary.window_start_ns / 1_000_000;
    let end_ms = summary.window_end_ns() / 1_000_000;
    Some(Observation {
        agent_id: agent_id.to_owned(),
        resource: resource.to_string(),
        window_start_ms: start_ms,
        window_end_ms: end_ms.max(start_ms + 1),
        seq,
        summary: WindowCounts {
            requests: summary.requests,
            responses: summary.responses,
            errors: summary.status.server_error,
            bytes_in: summary.bytes_in,
            bytes_out: summary.bytes_out,
            latency_us: summary.latency_us.to_hdr(),
            endpoints: summary.endpoints.clone(),
            endpoints_other: summary.endpoints_other,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_model_summary() {
        use crate::model::{EntityId, ResourceId, WindowSummary};
        use shadowtap_core::{decode_observation, encode_observation};
        let addr: std::net::SocketAddr = "10.0.0.1:80".parse().expect("addr");
        let id = ResourceId::new(addr, Some("shop.example"));
        let mut s = WindowSummary::empty(
            EntityId::Resource(id.clone()),
            60_000_000_000,
            10_000_000_000,
        );
        s.requests = 42;
        s.responses = 40;
        s.status.server_error = 3;
        s.latency_us.record(1234);
        s.endpoints.insert("GET /items/{id}".into(), 42);
        let obs = observation_from_summary("agent-x", &s, 7).expect("a resource");
        assert_eq!(obs.resource, id.to_string());
        assert_eq!((obs.window_start_ms, obs.window_end_ms), (60_000, 70_000));
        assert_eq!((obs.summary.requests, obs.summary.errors), (42, 3));
        assert_eq!(obs.summary.latency_us.len(), 1);
        let back = decode_observation(Some(obs.resource.as_bytes()), &encode_observation(&obs))
            .expect("decode");
        assert_eq!(back, obs);
    }
}
