//! Pieces the command line assembles a profile-driven run from: loading a profile, sharing a
//! [`ProfileSource`] with the caller (for the fidelity report after the run), mixing client
//! populations, and compressing a curve's time.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use rand::RngExt as _;
use shadowtap_core::profile::{ProfileDocument, ProfileError, ResourceProfile};

use crate::{
    LoadRng, RateCurve, Request, RequestSource,
    generate::{GenerateError, ProfileSource},
};

/// Why a profile-driven run cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("reading profile {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("profile {path}: {source}")]
    Profile {
        path: String,
        #[source]
        source: ProfileError,
    },
    #[error(transparent)]
    Generate(#[from] GenerateError),
}

/// The resource `resource` (or the only one) of the profile document at `path`.
pub fn load_profile(path: &Path, resource: Option<&str>) -> Result<ResourceProfile, PlanError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
        path: shown.clone(),
        source,
    })?;
    let doc = ProfileDocument::from_json(&text).map_err(|source| PlanError::Profile {
        path: shown.clone(),
        source,
    })?;
    doc.resource(resource)
        .cloned()
        .map_err(|source| PlanError::Profile {
            path: shown,
            source,
        })
}

/// A [`ProfileSource`] the runner drives while the caller keeps a handle to it.
#[derive(Clone)]
pub struct SharedSource(pub Arc<Mutex<ProfileSource>>);

impl RequestSource for SharedSource {
    fn next_request(&mut self, conn: u64, rng: &mut LoadRng) -> Request {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_request(conn, rng)
    }

    fn response(&mut self, conn: u64, status: u16, corrected: Duration, uncorrected: Duration) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .response(conn, status, corrected, uncorrected);
    }

    fn connection_closed(&mut self, conn: u64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .connection_closed(conn);
    }
}

/// Client populations: each new connection joins one, by share, and keeps it.
pub struct MixedSource {
    populations: Vec<(ProfileSource, f64)>,
    joined: HashMap<u64, usize>,
}

impl MixedSource {
    /// `(profile, share, temperature)` per population, as `Scenario::populations` gives them.
    pub fn new(
        populations: &[(ResourceProfile, f64, f64)],
        host: &str,
    ) -> Result<Self, GenerateError> {
        let populations = populations
            .iter()
            .map(|(p, share, t)| Ok((ProfileSource::new(p, host, *t)?, *share)))
            .collect::<Result<Vec<_>, GenerateError>>()?;
        Ok(Self {
            populations,
            joined: HashMap::new(),
        })
    }
}

impl RequestSource for MixedSource {
    fn next_request(&mut self, conn: u64, rng: &mut LoadRng) -> Request {
        let total: f64 = self.populations.iter().map(|p| p.1).sum();
        let k = *self.joined.entry(conn).or_insert_with(|| {
            let mut u = rng.random::<f64>() * total;
            self.populations
                .iter()
                .position(|p| {
                    u -= p.1;
                    u < 0.0
                })
                .unwrap_or(0)
        });
        self.populations[k].0.next_request(conn, rng)
    }

    fn response(&mut self, conn: u64, status: u16, corrected: Duration, uncorrected: Duration) {
        if let Some(&k) = self.joined.get(&conn) {
            self.populations[k]
                .0
                .response(conn, status, corrected, uncorrected);
        }
    }

    fn connection_closed(&mut self, conn: u64) {
        if let Some(k) = self.joined.remove(&conn) {
            self.populations[k].0.connection_closed(conn);
        }
    }
}

/// A curve played `speed` times faster (its rates unchanged).
pub struct Compressed<C> {
    pub curve: C,
    pub speed: f64,
}

impl<C: RateCurve> RateCurve for Compressed<C> {
    fn rate_at(&self, elapsed: Duration) -> f64 {
        self.curve
            .rate_at(Duration::from_secs_f64(elapsed.as_secs_f64() * self.speed))
    }

    fn integration_step(&self) -> Duration {
        Duration::from_millis(10)
    }

    fn describe(&self) -> String {
        format!("{} at {}x speed", self.curve.describe(), self.speed)
    }
}
