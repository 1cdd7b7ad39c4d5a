//! Without Kafka: the collector's logic in the agent process, writing scale events as
//! `CloudEvents` JSON lines (to stdout or a file).

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    path::Path,
    time::Instant,
};

use shadowtap_core::{
    ClosedWindow, Fleet, FleetConfig, FleetStats, Observation, decision::PolicySet,
};

/// In-process collector.
pub struct EmbeddedCollector {
    fleet: Fleet,
    out: Box<dyn Write + Send>,
    events_written: u64,
}

impl EmbeddedCollector {
    /// Write events to `out`.
    pub fn new(config: FleetConfig, policies: PolicySet, out: Box<dyn Write + Send>) -> Self {
        Self {
            fleet: Fleet::new(config, policies),
            out,
            events_written: 0,
        }
    }

    /// Write events to stdout (`None` or `-`) or append them to a file.
    pub fn to_path(
        config: FleetConfig,
        policies: PolicySet,
        path: Option<&Path>,
    ) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = match path {
            None => Box::new(io::stdout()),
            Some(p) if p.as_os_str() == "-" => Box::new(io::stdout()),
            Some(p) => Box::new(BufWriter::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?,
            )),
        };
        Ok(Self::new(config, policies, out))
    }

    /// Merge one observation; writes the scale events it causes. Returns the closed windows.
    pub fn observe(&mut self, obs: Observation) -> io::Result<Vec<ClosedWindow>> {
        let (_, closed) = self.fleet.ingest(obs, Instant::now());
        self.write(&closed)?;
        Ok(closed)
    }

    /// Close windows the clock made ready; call about once a second.
    pub fn tick(&mut self) -> io::Result<Vec<ClosedWindow>> {
        let closed = self.fleet.tick(Instant::now());
        self.write(&closed)?;
        Ok(closed)
    }

    /// Close everything (at shutdown) and flush the output.
    pub fn finish(&mut self) -> io::Result<Vec<ClosedWindow>> {
        let closed = self.fleet.flush();
        self.write(&closed)?;
        Ok(closed)
    }

    fn write(&mut self, closed: &[ClosedWindow]) -> io::Result<()> {
        let source = self.fleet.config().source.clone();
        for c in closed {
            if let Some(event) = c.scale_event(&source) {
                self.out.write_all(event.to_json().as_bytes())?;
                self.out.write_all(b"\n")?;
                self.events_written += 1;
            }
        }
        self.out.flush()
    }

    pub fn stats(&self) -> FleetStats {
        self.fleet.stats()
    }

    /// The merge/decision state, for read-only views (last decision per resource).
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The merge/decision state, for restoring snapshots.
    pub fn fleet_mut(&mut self) -> &mut Fleet {
        &mut self.fleet
    }

    /// Scale events written.
    pub fn events_written(&self) -> u64 {
        self.events_written
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use shadowtap_core::{ScaleEvent, WindowCounts};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_cloudevents_lines() {
        let policies = PolicySet::from_toml(
            "[defaults]\ncapacity_per_instance = 10.0\ntarget_utilisation = 1.0\n",
        )
        .expect("policy");
        let buf = Shared::default();
        let mut c = EmbeddedCollector::new(FleetConfig::default(), policies, Box::new(buf.clone()));
        for w in 0..5u64 {
            c.observe(Observation {
                agent_id: "a".into(),
                resource: "api".into(),
                window_start_ms: w * 1000,
                window_end_ms: (w + 1) * 1000,
                seq: w,
                summary: WindowCounts {
                    requests: 10 + 40 * w,
                    ..WindowCounts::default()
                },
            })
            .expect("observe");
        }
        c.finish().expect("finish");
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        let events: Vec<ScaleEvent> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("event json"))
            .collect();
        // Under 8 windows there is no forecast yet: each decision covers the last window,
        // demand / 10 per instance (window 0's 10 requests need the 1 instance there is).
        let steps: Vec<(u32, u32)> = events
            .iter()
            .map(|e| (e.data.current_instances, e.data.target_instances))
            .collect();
        assert_eq!(steps, vec![(1, 5), (5, 9), (9, 13), (13, 17)]);
        assert_eq!(events.len() as u64, c.events_written());
        assert!(
            events
                .iter()
                .all(|e| e.specversion == "1.0" && e.subject == "api")
        );
    }
}
