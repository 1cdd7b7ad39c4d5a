//! The publisher thread: serialises and produces what the loop decided, awaits the broker's
//! acknowledgements, and hands offsets back for commit once everything below them landed.
//!
//! Why a thread of its own: on one agent per resource every observation closes a window and
//! publishes an event, and the loop spent about a third of its time on event JSON, producing
//! and waiting for acknowledgements while the second core sat idle. Now the loop decides batch
//! N+1 while batch N is serialised and acknowledged.
//!
//! Order and the commit-after-ack guarantee are kept by doing everything in job order: the
//! jobs of one [`Job::Publish`] run are sent together and all acknowledged before the next
//! [`Job::Commit`] writes its snapshots, and the snapshots are acknowledged before its offsets
//! come back to the loop to be committed. So a snapshot that records a window as closed never
//! lands before that window's event, and an offset is never committed before its snapshots.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rdkafka::producer::FutureProducer;
use tokio::sync::{mpsc, watch};

use crate::{
    publish::{Producing, Publish},
    stats::CollectorStats,
};

/// Work for the publisher, in loop order.
pub(crate) enum Job {
    /// Events and dead letters of one batch.
    Publish(Vec<Publish>),
    /// Snapshots, then these offsets (next offset per partition) are committable.
    Commit {
        snapshots: Vec<Publish>,
        offsets: BTreeMap<i32, i64>,
    },
}

/// Jobs queued at most before the loop waits (each holds one batch's events; a full queue
/// means the broker or the publisher is the bottleneck, and the loop must not run ahead).
const QUEUE: usize = 4;

/// The loop's side of the publisher thread.
pub(crate) struct Publisher {
    jobs: Option<mpsc::Sender<Job>>,
    /// Offsets whose snapshots (and events before them) are acknowledged.
    committable: mpsc::UnboundedReceiver<BTreeMap<i32, i64>>,
    cancel: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The publisher thread is gone (it panicked), so nothing decided can be published.
#[derive(Debug, thiserror::Error)]
#[error("the publisher thread stopped")]
pub struct PublisherStopped;

impl Publisher {
    pub(crate) fn start(
        producer: FutureProducer,
        producer_config: rdkafka::ClientConfig,
        stats: Arc<CollectorStats>,
        source: String,
    ) -> std::io::Result<Self> {
        let (jobs, mut queue) = mpsc::channel::<Job>(QUEUE);
        let (done, committable) = mpsc::unbounded_channel();
        let (cancel, mut cancelled) = watch::channel(false);
        let mut producing = Producing {
            producer,
            producer_config,
            stats,
            source,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name("collector-publish".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let work = async {
                        while let Some(job) = queue.recv().await {
                            // Everything already queued goes out together, up to the next
                            // commit (fewer acknowledgement waits under load).
                            let mut events = Vec::new();
                            let mut next = Some(job);
                            while let Some(Job::Publish(p)) = next {
                                events.extend(p);
                                next = queue.try_recv().ok();
                            }
                            producing.publish_all(events).await;
                            if let Some(Job::Commit { snapshots, offsets }) = next {
                                producing.publish_all(snapshots).await;
                                if done.send(offsets).is_err() {
                                    return;
                                }
                            }
                        }
                    };
                    tokio::select! {
                        () = work => {}
                        _ = cancelled.wait_for(|c| *c) => {}
                    }
                });
            })?;
        Ok(Self {
            jobs: Some(jobs),
            committable,
            cancel,
            thread: Some(thread),
        })
    }

    /// Queue a job; waits while the queue is full.
    pub(crate) async fn send(&self, job: Job) -> Result<(), PublisherStopped> {
        match &self.jobs {
            Some(jobs) => jobs.send(job).await.map_err(|_| PublisherStopped),
            None => Err(PublisherStopped),
        }
    }

    /// The next committable offsets, when they come.
    pub(crate) async fn committable(&mut self) -> Option<BTreeMap<i32, i64>> {
        self.committable.recv().await
    }

    /// Committable offsets already returned, without waiting.
    pub(crate) fn try_committable(&mut self) -> Option<BTreeMap<i32, i64>> {
        self.committable.try_recv().ok()
    }

    /// Let queued work finish for up to `grace` (its events are acknowledged rather than
    /// replayed by the next owner), then stop whatever is left.
    pub(crate) async fn stop(mut self, grace: Duration) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let finished = tokio::task::spawn_blocking(move || {
                let _ = thread.join();
            });
            let mut finished = std::pin::pin!(finished);
            if tokio::time::timeout(grace, &mut finished).await.is_err() {
                let _ = self.cancel.send(true);
                let _ = finished.await;
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.cancel.send(true);
    }
}
