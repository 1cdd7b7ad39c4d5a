//! The consume → merge → decide → publish → commit loop.

use std::{
    collections::{BTreeMap, HashSet},
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use rdkafka::{
    ClientContext, Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance, StreamConsumer},
    message::BorrowedMessage,
    producer::FutureProducer,
};
use shadowtap_core::{
    Fleet, FleetConfig, KafkaSettings, decision::PolicySet, decode_observation, metrics::Exposition,
};

use crate::{
    ownership::{Admission, Ownership, RebalanceNote},
    publish::{Body, Publish, Purpose, dead_letter, scale_event},
    publisher::{Job, Publisher, PublisherStopped},
    state,
    stats::CollectorStats,
    topics,
};

/// Default state topic.
pub const STATE_TOPIC: &str = "shadowtap.collector-state";
/// Default dead-letter topic.
pub const DEAD_LETTER_TOPIC: &str = "shadowtap.observations.dlq";
/// How long queued events may still go out once the collector is told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Default consumer group.
pub const GROUP_ID: &str = "shadowtap-collector";

/// Everything the collector needs.
#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub kafka: KafkaSettings,
    pub group_id: String,
    pub state_topic: String,
    pub dead_letter_topic: String,
    /// Partitions of topics the collector creates.
    pub partitions: i32,
    /// Create missing topics at start.
    pub create_topics: bool,
    pub fleet: FleetConfig,
    pub policies: PolicySet,
    /// Records per batch (one commit per batch).
    pub batch_max: usize,
    /// How long a batch collects records after the first. Zero: a batch is what the consumer
    /// already holds (up to `batch_max`), so a lone record is not held back, and under load
    /// batches grow by themselves with what arrived while the previous one was processed.
    pub batch_wait: Duration,
    /// Shortest interval between renderings of the metrics page and the dashboard (each
    /// renders every resource; per batch they cost as much as the batch under load).
    pub render_interval: Duration,
    /// Shortest interval between offset commits. Each commit first writes the state snapshot
    /// of every resource changed since the last one; events are published per batch either
    /// way. Longer: fewer snapshots under load, more records replayed after a crash.
    pub commit_interval: Duration,
    pub delivery_timeout: Duration,
    /// Consumer group session timeout: how soon a dead collector's partitions move.
    pub session_timeout: Duration,
    pub metrics_addr: Option<SocketAddr>,
    /// The provisioner's lifecycle topic, read so that decisions start from the instances
    /// that really serve (`None`: decide on the requested counts).
    pub lifecycle_topic: Option<String>,
}

impl CollectorConfig {
    pub fn new(kafka: KafkaSettings, policies: PolicySet) -> Self {
        Self {
            kafka,
            group_id: GROUP_ID.to_owned(),
            state_topic: STATE_TOPIC.to_owned(),
            dead_letter_topic: DEAD_LETTER_TOPIC.to_owned(),
            partitions: 4,
            create_topics: true,
            fleet: FleetConfig::default(),
            policies,
            batch_max: 5000,
            batch_wait: Duration::ZERO,
            render_interval: Duration::from_millis(200),
            commit_interval: Duration::from_millis(200),
            delivery_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(10),
            metrics_addr: None,
            lifecycle_topic: Some(shadowtap_core::lifecycle::LIFECYCLE_TOPIC.to_owned()),
        }
    }
}

/// Fatal collector errors (everything else is counted and survived).
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("loading state of partition {partition}: {source}")]
    StateLoad {
        partition: i32,
        source: rdkafka::error::KafkaError,
    },
    #[error(transparent)]
    Publisher(#[from] PublisherStopped),
    #[error("starting the publisher thread: {0}")]
    PublisherStart(std::io::Error),
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub(crate) struct GroupContext {
    topic: String,
    notes: Mutex<Vec<RebalanceNote>>,
    stats: Arc<CollectorStats>,
}

impl ClientContext for GroupContext {
    /// librdkafka's statistics (every `statistics.interval.ms`): the consumer lag of the
    /// observation partitions this member fetches, for the "collector lagging" alert.
    /// Partitions it does not fetch report -1 and are left out.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lag: i64 = statistics.topics.get(&self.topic).map_or(0, |t| {
            t.partitions
                .iter()
                .filter(|(p, _)| **p >= 0)
                .map(|(_, p)| p.consumer_lag.max(0))
                .sum()
        });
        self.stats.consumer_lag.store(lag, Ordering::Relaxed);
        self.stats.consumer_lag_seen.store(true, Ordering::Relaxed);
    }
}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let parts = |tpl: &TopicPartitionList| {
            tpl.elements()
                .iter()
                .filter(|e| e.topic() == self.topic)
                .map(rdkafka::topic_partition_list::TopicPartitionListElem::partition)
                .collect::<Vec<_>>()
        };
        let note = match rebalance {
            Rebalance::Assign(tpl) => RebalanceNote::Assigned(parts(tpl)),
            Rebalance::Revoke(tpl) => RebalanceNote::Revoked(parts(tpl)),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error");
                return;
            }
        };
        if let Ok(mut n) = self.notes.lock() {
            n.push(note);
        }
    }
}

/// The collector service.
pub struct Collector {
    pub(crate) config: CollectorConfig,
    pub(crate) stats: Arc<CollectorStats>,
}

/// The next lifecycle record, or never when lifecycle events are not read.
async fn next_lifecycle(
    consumer: Option<&StreamConsumer>,
) -> Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError> {
    match consumer {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

pub(crate) use shadowtap_core::fleet::unix_now_ms as now_ms;

impl Collector {
    pub fn new(config: CollectorConfig) -> Self {
        Self {
            config,
            stats: Arc::new(CollectorStats::default()),
        }
    }

    /// Counters, shared with the running loop.
    pub fn stats(&self) -> Arc<CollectorStats> {
        self.stats.clone()
    }

    /// Run until `shutdown` completes. Fatal errors return; the rest is counted and logged.
    #[allow(clippy::too_many_lines)] // the loop reads best in one place
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), CollectorError> {
        let cfg = &self.config;
        let kafka = &cfg.kafka;
        if cfg.create_topics {
            let mut wanted = vec![
                (kafka.observations_topic.as_str(), false),
                (kafka.scale_events_topic.as_str(), false),
                (cfg.state_topic.as_str(), true),
                (cfg.dead_letter_topic.as_str(), false),
            ];
            if let Some(t) = &cfg.lifecycle_topic {
                wanted.push((t.as_str(), false));
            }
            topics::ensure_topics(kafka, &wanted, cfg.partitions).await?;
        }
        let lifecycle = self.lifecycle_consumer()?;
        let pages = crate::http::Pages::default();
        let page = pages.metrics.clone();
        let mut timeline = shadowtap_core::dashboard::DecisionTimeline::default();
        let _metrics = match cfg.metrics_addr {
            Some(addr) => {
                // Bind here so a taken port is a start-up error, then serve in the background.
                let probe = std::net::TcpListener::bind(addr)
                    .map_err(|source| CollectorError::Metrics { addr, source })?;
                drop(probe);
                let pages = pages.clone();
                Some(AbortOnDrop(tokio::spawn(async move {
                    if let Err(e) = crate::http::serve(addr, pages).await {
                        tracing::error!(%addr, error = %e, "metrics endpoint stopped");
                    }
                })))
            }
            None => None,
        };
        let session = cfg.session_timeout.as_millis().max(1000);
        let consumer: StreamConsumer<GroupContext> = kafka
            .consumer_config(&[
                ("group.id", &cfg.group_id),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("enable.partition.eof", "false"),
                ("session.timeout.ms", &session.to_string()),
                ("heartbeat.interval.ms", &(session / 5).to_string()),
                ("statistics.interval.ms", "2000"),
            ])
            .create_with_context(GroupContext {
                topic: kafka.observations_topic.clone(),
                notes: Mutex::new(Vec::new()),
                stats: Arc::clone(&self.stats),
            })?;
        consumer.subscribe(&[kafka.observations_topic.as_str()])?;
        let producer_config = kafka.producer_config(cfg.delivery_timeout);
        let producer: FutureProducer = producer_config.create()?;
        let mut fleet = Fleet::new(cfg.fleet.clone(), cfg.policies.clone());
        let mut own = Ownership::default();
        tracing::info!(group = %cfg.group_id, topic = %kafka.observations_topic, "collector started");
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut rendered: Option<Instant> = None;
        let mut resource_page = String::new();
        // Applied but not yet committed: next offset per partition, and the resources whose
        // snapshot must be written before that commit.
        let mut uncommitted: BTreeMap<i32, i64> = BTreeMap::new();
        let mut dirty: HashSet<String> = HashSet::new();
        let mut committed = Instant::now();
        // A commit's snapshots are out and its offsets not yet back: the next waits for it.
        let mut commit_in_flight = false;
        let mut publisher = Publisher::start(
            producer,
            producer_config,
            Arc::clone(&self.stats),
            self.config.fleet.source.clone(),
        )
        .map_err(CollectorError::PublisherStart)?;
        loop {
            // Records stay librdkafka's until processed: copying each out of it (payload,
            // key and headers) was a twentieth of the loop's work.
            let mut batch: Vec<BorrowedMessage<'_>> = Vec::new();
            tokio::select! {
                () = &mut shutdown => break,
                m = consumer.recv() => match m {
                    Ok(m) => batch.push(m),
                    Err(e) => tracing::warn!(error = %e, "consume error"),
                },
                l = next_lifecycle(lifecycle.as_ref()) => {
                    self.apply_lifecycle(&mut fleet, l);
                    continue;
                }
                c = publisher.committable() => {
                    let Some(offsets) = c else { return Err(PublisherStopped.into()) };
                    self.commit(&consumer, &own, &offsets);
                    commit_in_flight = false;
                    continue;
                }
                _ = tick.tick() => {}
            }
            let deadline = tokio::time::Instant::now() + cfg.batch_wait;
            while !batch.is_empty() && batch.len() < cfg.batch_max {
                match tokio::time::timeout_at(deadline, consumer.recv()).await {
                    Ok(Ok(m)) => batch.push(m),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "consume error");
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Some(offsets) = publisher.try_committable() {
                self.commit(&consumer, &own, &offsets);
                commit_in_flight = false;
            }
            self.apply_rebalances(&consumer, &mut own, &mut fleet, &mut batch);
            // Records of partitions revoked since are replayed by their next owner (or by this
            // collector, from its commit, when they come back): their effects left the fleet
            // with the partition, so their offsets must not be committed. (A commit already
            // with the publisher is filtered by ownership when it comes back.)
            uncommitted.retain(|p, _| own.loaded.contains(p));
            // Restore assigned partitions now, not at their next record: their open windows
            // must close (and publish) even if no further record arrives for them.
            let unloaded: Vec<i32> = own.owned.difference(&own.loaded).copied().collect();
            for p in unloaded {
                self.load_state(&mut own, &mut fleet, p).await?;
            }
            let consumed_ms = now_ms();
            let (mut pending, offsets) = self
                .process(&consumer, &mut own, &mut fleet, batch, &mut dirty)
                .await?;
            let decided_ms = now_ms();
            for p in &mut pending {
                if let Purpose::ScaleEvent {
                    stamps: Some(s), ..
                } = &mut p.purpose
                {
                    s.consumed = consumed_ms;
                    s.decided = decided_ms;
                }
            }
            // Events and dead letters go to the publisher at once; snapshots and the commit
            // every commit_interval, behind them in its queue, so the snapshots go out only
            // once the events are acknowledged: a snapshot that records a window as closed must
            // never land without its event, or a successor restoring it would skip the event.
            // The offsets come back once the snapshots are acknowledged, and are committed
            // then. Under load a resource's snapshot is written once per interval.
            uncommitted.extend(offsets);
            let commit_due = !commit_in_flight
                && (!uncommitted.is_empty() || !dirty.is_empty())
                && committed.elapsed() >= cfg.commit_interval;
            let queued = tokio::select! {
                () = &mut shutdown => None,
                sent = async {
                    if !pending.is_empty() {
                        publisher.send(Job::Publish(pending)).await?;
                    }
                    if commit_due {
                        let snapshots = self.snapshots(&own, &fleet, &mut dirty);
                        let offsets = std::mem::take(&mut uncommitted);
                        publisher.send(Job::Commit { snapshots, offsets }).await?;
                    }
                    Ok::<_, PublisherStopped>(())
                } => Some(sent),
            };
            match queued {
                None => break,
                Some(sent) => sent?,
            }
            if commit_due {
                commit_in_flight = true;
                committed = Instant::now();
            }
            self.stats.set_fleet(fleet.stats());
            self.stats.open_windows.store(
                i64::try_from(fleet.open_windows()).unwrap_or(i64::MAX),
                Ordering::Relaxed,
            );
            // The collector's counters every batch; what walks every resource (their
            // decisions and forecast accuracy, the dashboard) at most every render_interval.
            let render_all = rendered.is_none_or(|r| r.elapsed() >= cfg.render_interval);
            if render_all {
                rendered = Some(Instant::now());
                let mut resources = Exposition::default();
                fleet.render_resource_metrics(&mut resources);
                resource_page = resources.finish();
            }
            let metrics = self.stats.render() + &resource_page;
            if render_all {
                pages.render_dashboard(&fleet, &mut timeline, &metrics);
            }
            page.set(metrics);
        }
        publisher.stop(SHUTDOWN_GRACE).await;
        tracing::info!("collector stopping");
        consumer.unsubscribe();
        Ok(())
    }

    /// Every collector reads the whole lifecycle topic (each may own any resource), from the
    /// start: its own group, never committed. A report for a resource owned elsewhere is
    /// kept by the fleet in case the resource moves here.
    fn lifecycle_consumer(&self) -> Result<Option<StreamConsumer>, CollectorError> {
        let Some(topic) = &self.config.lifecycle_topic else {
            return Ok(None);
        };
        let group = format!(
            "{}.lifecycle.{}.{}",
            self.config.group_id,
            std::process::id(),
            now_ms()
        );
        let consumer: StreamConsumer = self
            .config
            .kafka
            .consumer_config(&[
                ("group.id", &group),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
                ("enable.partition.eof", "false"),
            ])
            .create()?;
        consumer.subscribe(&[topic.as_str()])?;
        Ok(Some(consumer))
    }

    fn apply_lifecycle(
        &self,
        fleet: &mut Fleet,
        message: Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError>,
    ) {
        match message {
            Ok(m) => match m
                .payload()
                .and_then(shadowtap_core::lifecycle::parse_lifecycle)
            {
                Some(event) => {
                    fleet.observe_lifecycle(&event);
                }
                None => {
                    self.stats.lifecycle_invalid.fetch_add(1, Ordering::Relaxed);
                }
            },
            Err(e) => tracing::warn!(error = %e, "lifecycle consume error"),
        }
    }

    fn apply_rebalances(
        &self,
        consumer: &StreamConsumer<GroupContext>,
        own: &mut Ownership,
        fleet: &mut Fleet,
        batch: &mut Vec<BorrowedMessage<'_>>,
    ) {
        let notes: Vec<RebalanceNote> = consumer
            .context()
            .notes
            .lock()
            .map(|mut n| std::mem::take(&mut *n))
            .unwrap_or_default();
        self.stats
            .rebalances
            .fetch_add(notes.len() as u64, Ordering::Relaxed);
        for resource in own.apply(notes, batch) {
            fleet.drop_resource(&resource);
        }
        self.stats.partitions_owned.store(
            i64::try_from(own.owned.len()).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    async fn load_state(
        &self,
        own: &mut Ownership,
        fleet: &mut Fleet,
        partition: i32,
    ) -> Result<(), CollectorError> {
        let kafka = self.config.kafka.clone();
        let topic = self.config.state_topic.clone();
        let group = self.config.group_id.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            // The commit first: the state topic is written before each commit, so state read
            // after it holds everything below the committed offset.
            let committed =
                state::committed_offset(&kafka, &group, partition, Duration::from_secs(30))?;
            let state = state::load_partition(&kafka, &topic, partition, Duration::from_secs(30))?;
            Ok((committed, state))
        })
        .await
        .unwrap_or_else(|_| {
            Err(rdkafka::error::KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::Fail,
            ))
        })
        .map_err(|source| CollectorError::StateLoad { partition, source })?;
        let (committed, loaded) = loaded;
        self.stats
            .snapshots_rejected
            .fetch_add(loaded.rejected, Ordering::Relaxed);
        let now = Instant::now();
        let n = loaded.snapshots.len();
        for snap in loaded.snapshots {
            let resource = snap.resource.clone();
            match fleet.restore(&snap, now) {
                Ok(()) => {
                    own.resource_partition.insert(resource, partition);
                    self.stats.snapshots_loaded.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "state snapshot rejected");
                    self.stats
                        .snapshots_rejected
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tracing::info!(partition, resources = n, ?committed, "state loaded");
        own.mark_loaded(partition, committed);
        Ok(())
    }

    async fn process(
        &self,
        consumer: &StreamConsumer<GroupContext>,
        own: &mut Ownership,
        fleet: &mut Fleet,
        batch: Vec<BorrowedMessage<'_>>,
        dirty: &mut HashSet<String>,
    ) -> Result<(Vec<Publish>, BTreeMap<i32, i64>), CollectorError> {
        let cfg = &self.config;
        let mut pending = Vec::new();
        let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
        // Partitions rewound in this batch: their later records here come again.
        let mut rewound: HashSet<i32> = HashSet::new();
        // Each closed window becomes its event at once: holding a batch's closed windows held
        // each one's latency histogram (tens of KB) until the batch ended, and the allocator
        // returned and re-faulted that memory every batch.
        for msg in batch {
            let p = msg.partition();
            if rewound.contains(&p) {
                continue;
            }
            if !own.owned.contains(&p) {
                // Assignment notes arrive with the first poll; trust the message's partition.
                own.owned.insert(p);
            }
            if !own.loaded.contains(&p) {
                self.load_state(own, fleet, p).await?;
            }
            self.stats
                .observations_consumed
                .fetch_add(1, Ordering::Relaxed);
            let mut admission = own.admit(p, msg.offset());
            if let Admission::Rewind { next } = admission {
                match consumer.seek(
                    &cfg.kafka.observations_topic,
                    p,
                    Offset::Offset(next),
                    Duration::from_secs(2),
                ) {
                    Ok(()) => {
                        tracing::warn!(
                            partition = p,
                            offset = msg.offset(),
                            next,
                            "records missing before this one; re-fetching from the next offset"
                        );
                        self.stats.offset_rewinds.fetch_add(1, Ordering::Relaxed);
                        rewound.insert(p);
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(partition = p, next, error = %e, "could not re-fetch missing records");
                        // Asked again, the record is applied after the gap.
                        admission = own.admit(p, msg.offset());
                    }
                }
            }
            match admission {
                Admission::Apply | Admission::Rewind { .. } => {}
                Admission::Replayed => {
                    self.stats
                        .observations_replayed
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Admission::ApplyAfterGap { skipped } => {
                    tracing::error!(
                        partition = p,
                        offset = msg.offset(),
                        skipped,
                        "offsets missing on the partition after a re-fetch; skipped"
                    );
                    self.stats.offset_gaps.fetch_add(skipped, Ordering::Relaxed);
                }
            }
            offsets.insert(p, msg.offset() + 1);
            match decode_observation(msg.key(), msg.payload().unwrap_or_default()) {
                Err(e) => {
                    tracing::warn!(partition = p, offset = msg.offset(), error = %e, "malformed observation dead-lettered");
                    self.stats.malformed(e.label());
                    pending.push(dead_letter(cfg, &msg, &e.to_string()));
                }
                Ok(obs) => {
                    // Looked up before inserting: a resource's name was copied twice for
                    // every observation, and it is new to either map only now and then.
                    if own.resource_partition.get(&obs.resource) != Some(&p) {
                        own.resource_partition.insert(obs.resource.clone(), p);
                    }
                    if !dirty.contains(&obs.resource) {
                        dirty.insert(obs.resource.clone());
                    }
                    let (_, closed) = fleet.ingest(obs, Instant::now());
                    let produced = msg
                        .timestamp()
                        .to_millis()
                        .and_then(|t| u64::try_from(t).ok());
                    for c in closed {
                        if !dirty.contains(&c.resource) {
                            dirty.insert(c.resource.clone());
                        }
                        pending.extend(scale_event(cfg, c, produced));
                    }
                    self.stats
                        .observations_processed
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for c in fleet.tick(Instant::now()) {
            dirty.insert(c.resource.clone());
            pending.extend(scale_event(cfg, c, None));
        }
        Ok((pending, offsets))
    }

    /// The state snapshots of the `dirty` resources still held (emptying `dirty`).
    fn snapshots(
        &self,
        own: &Ownership,
        fleet: &Fleet,
        dirty: &mut HashSet<String>,
    ) -> Vec<Publish> {
        dirty
            .drain()
            .filter_map(|resource| {
                let snap = fleet.snapshot(&resource)?;
                let p = *own.resource_partition.get(&resource)?;
                Some(Publish {
                    purpose: Purpose::Snapshot,
                    topic: self.config.state_topic.clone(),
                    partition: Some(p),
                    body: Body::Snapshot(Box::new(snap)),
                    key: resource.into_bytes(),
                    headers: Vec::new(),
                })
            })
            .collect()
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
