//! Shared pieces of the collector's integration tests (each test binary uses a subset).
#![allow(dead_code)]

pub mod broker;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
    message::Headers as _,
};
use shadowtap_core::{KafkaSettings, Observation, WindowCounts};

pub use broker::{Broker, ChildGuard};

/// Event-time origin of test windows (fixed, so runs are comparable).
pub const T0_MS: u64 = 1_700_000_000_000;
/// Window length of test observations.
pub const STEP_MS: u64 = 1000;

pub const POLICY: &str = r#"
[defaults]
capacity_per_instance = 100.0
target_utilisation = 1.0
provisioning_lead_time = "2s"
horizon = "2s"
min_instances = 1
max_instances = 1000
scale_out_cooldown = "0s"
scale_in_cooldown = "1h"
scale_in_stabilisation = "1h"
"#;

pub fn write_policy(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("policy.toml");
    std::fs::write(&p, text).expect("write policy");
    p
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn kafka(broker: &Broker) -> KafkaSettings {
    KafkaSettings::new(broker.bootstrap())
}

/// Create the collector's topics with `partitions` each.
pub fn create_topics(rt: &tokio::runtime::Runtime, broker: &Broker, partitions: i32) {
    let k = kafka(broker);
    rt.block_on(shadowtap_collector::topics::ensure_topics(
        &k,
        &[
            ("shadowtap.observations", false),
            ("shadowtap.scale-events", false),
            ("shadowtap.collector-state", true),
            ("shadowtap.observations.dlq", false),
        ],
        partitions,
    ))
    .expect("create topics");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running collector process and its metrics port.
pub struct CollectorProc {
    pub guard: ChildGuard,
    pub metrics_port: u16,
}

/// Start `shadowtap-collector` against `broker`; its log goes to `log`.
pub fn spawn_collector(
    broker: &Broker,
    policy: &Path,
    log: &Path,
    extra: &[&str],
) -> CollectorProc {
    let metrics_port = free_port();
    let log = std::fs::File::create(log).expect("collector log");
    let child = Command::new(env!("CARGO_BIN_EXE_shadowtap-collector"))
        .args([
            "--kafka-brokers",
            &broker.bootstrap(),
            "--policy",
            &policy.display().to_string(),
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--merge-wait",
            "200ms",
            "--idle-close",
            "2s",
            "--session-timeout",
            "6s",
            "--delivery-timeout",
            "5s",
        ])
        .args(extra)
        .env("RUST_LOG", "info,rdkafka=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn collector");
    CollectorProc {
        guard: ChildGuard(child),
        metrics_port,
    }
}

/// GET `/metrics` (or another path); `None` while the endpoint is not up.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let attempt = || -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        // One write: the endpoint answers the first segment it reads.
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes())?;
        let mut body = Vec::new();
        s.read_to_end(&mut body)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    // Retry a few times before calling the endpoint down (it may be starting).
    let mut last = None;
    for _ in 0..5 {
        match attempt() {
            Ok(b) => return Some(b),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(e) = last {
        eprintln!("GET 127.0.0.1:{port}{path}: {e}");
    }
    None
}

/// Value of an unlabelled (or exactly labelled) sample on a metrics page.
pub fn metric(page: &str, name_with_labels: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(name_with_labels)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The provisioner's exec driver running in-process (its own thread and runtime); dropping
/// it stops the driver and joins the thread.
pub struct ProvisionerGuard {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ProvisionerGuard {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start `shadowtap-provisioner`'s exec driver in dry-run mode (in-process: a test binary can
/// only name its own package's binaries); its JSON lines arrive on the channel.
pub fn spawn_provisioner(
    broker: &Broker,
    group: &str,
) -> (ProvisionerGuard, mpsc::Receiver<serde_json::Value>) {
    use shadowtap_provisioner::{exec, input::Input};
    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let settings = kafka(broker);
    let group = group.to_owned();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("provisioner runtime");
        rt.block_on(async move {
            let input = Input::kafka(&settings, "shadowtap.scale-events", &group)
                .expect("provisioner consumer");
            let config = exec::ExecConfig {
                template: "kubectl scale deployment/{resource} --replicas={target}".to_owned(),
                dry_run: true,
                remember: 100_000,
                max_events: None,
            };
            let mut report = move |line: serde_json::Value| {
                let _ = tx.send(line);
            };
            tokio::select! {
                r = exec::run(&config, input, &mut report) => {
                    if let Err(e) = r {
                        eprintln!("provisioner: {e}");
                    }
                }
                _ = stop_rx => {}
            }
        });
    });
    (
        ProvisionerGuard {
            stop: Some(stop_tx),
            thread: Some(thread),
        },
        rx,
    )
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, Vec<u8>>,
}

/// Read `topic` from the beginning until `until` says enough (or `timeout`), then `linger`
/// more to catch extras.
pub fn read_topic(
    broker: &Broker,
    topic: &str,
    timeout: Duration,
    linger: Duration,
    until: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    // consumer_config: its short fetch wait, as the collector's consumers use on nisshi.
    let consumer: BaseConsumer = kafka(broker)
        .consumer_config(&[
            ("group.id", "test-reader"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
        ])
        .create()
        .expect("reader");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("tpl");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut linger_until: Option<Instant> = None;
    // `until` may parse every record read so far (a debug build parses 2,500 scale events in
    // well over 200 ms). Asked after every record, it paced the reader to a few records a
    // second, and a 12,000-event read timed out. So it is asked when the topic goes quiet, or
    // after reading for at least 200 ms and four times its last cost: the reader spends at
    // most a fifth of its time in it.
    let mut asked: Option<(Instant, usize, Duration)> = None;
    let mut quiet = true;
    loop {
        let now = Instant::now();
        if linger_until.is_some_and(|l| now > l) || now > deadline {
            break;
        }
        let due = asked.is_none_or(|(at, len, cost)| {
            len != out.len()
                && (quiet || now.duration_since(at) >= (cost * 4).max(Duration::from_millis(200)))
        });
        if linger_until.is_none() && due {
            let done = until(&out);
            let after = Instant::now();
            asked = Some((after, out.len(), after.duration_since(now)));
            if done {
                linger_until = Some(after + linger);
            }
        }
        let polled = consumer.poll(Duration::from_millis(100));
        quiet = polled.is_none();
        if let Some(Ok(m)) = polled {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .filter_map(|h| Some((h.key.to_owned(), h.value?.to_vec())))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().unwrap_or_default().to_vec(),
                value: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    out
}

/// A synthetic-but-valid observation with `requests` requests.
pub fn observation(agent: &str, resource: &str, window: u64, requests: u64) -> Observation {
    let mut counts = WindowCounts {
        requests,
        responses: requests,
        errors: requests / 50,
        bytes_in: requests * 300,
        bytes_out: requests * 2000,
        ..WindowCounts::default()
    };
    for i in 0..requests.min(200) {
        counts
            .latency_us
            .record(500 + (i * 37) % 5000)
            .expect("record latency");
    }
    counts.endpoints.insert("GET /".to_owned(), requests);
    Observation {
        agent_id: agent.to_owned(),
        resource: resource.to_owned(),
        window_start_ms: T0_MS + window * STEP_MS,
        window_end_ms: T0_MS + (window + 1) * STEP_MS,
        seq: window,
        summary: counts,
    }
}

/// Wait for `cond` up to `timeout`.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// Path of shared test data.
pub fn shared_data(rel: &str) -> PathBuf {
    let base = std::env::var_os("SHADOWTAP_SHARED_DATA").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"),
        PathBuf::from,
    );
    base.join(rel)
}

/// Policy for the delivery tests: demand rises by ten instances' worth per window, so every
/// window's decision is a scale-out whatever the forecaster extrapolates.
pub const STAIRCASE_POLICY: &str = r#"
[defaults]
capacity_per_instance = 100.0
target_utilisation = 1.0
provisioning_lead_time = "2s"
horizon = "2s"
min_instances = 1
max_instances = 1000000
scale_out_cooldown = "0s"
scale_in_cooldown = "1h"
scale_in_stabilisation = "1h"
"#;

/// `--min-forecast-history` of the delivery tests: they test delivery, not forecasting, so
/// decisions rest on the observed demand alone.
pub const NO_FORECAST: usize = 1_000_000;

/// Collector arguments of the delivery tests.
pub const DELIVERY_ARGS: &[&str] = &["--min-forecast-history", "1000000"];

/// Demand of window `w` in the delivery tests.
pub fn staircase(w: u64) -> u64 {
    1000 * (w + 1)
}

/// Check the staircase invariant on the in-process fleet logic: one scale-out per window.
pub fn assert_staircase_reference(resources: &[String], windows: u64) {
    use shadowtap_core::{Fleet, FleetConfig};
    let policies =
        shadowtap_core::decision::PolicySet::from_toml(STAIRCASE_POLICY).expect("policy");
    let config = FleetConfig {
        min_forecast_history: NO_FORECAST,
        ..FleetConfig::default()
    };
    let mut fleet = Fleet::new(config, policies);
    let mut events = 0;
    for w in 0..windows {
        for r in resources {
            let (_, closed) =
                fleet.ingest(observation("agent", r, w, staircase(w)), Instant::now());
            events += closed.iter().filter_map(|c| c.scale_event("x")).count();
        }
    }
    events += fleet
        .flush()
        .iter()
        .filter_map(|c| c.scale_event("x"))
        .count();
    assert_eq!(
        events,
        resources.len() * windows as usize,
        "reference: not one scale-out per window"
    );
}

/// Group scale-event records by id; assert records sharing an id are the same (resource,
/// window) and return id → (resource, window index).
pub fn events_by_id(records: &[Record]) -> BTreeMap<String, (String, u64)> {
    let mut out: BTreeMap<String, (String, u64)> = BTreeMap::new();
    for r in records {
        let v: serde_json::Value = serde_json::from_slice(&r.value).expect("event json");
        let id = v["id"].as_str().expect("id").to_owned();
        let resource = v["subject"].as_str().expect("subject").to_owned();
        let start = v["data"]["window"]["start_ms"].as_u64().expect("start");
        assert_eq!(v["data"]["action"], "scale_out", "{v}");
        let w = (start - T0_MS) / STEP_MS;
        assert_eq!(
            shadowtap_core::scale_event::event_id(&resource, start, start + STEP_MS),
            id
        );
        if let Some(prev) = out.insert(id.clone(), (resource.clone(), w)) {
            assert_eq!(prev, (resource, w), "two different events share id {id}");
        }
    }
    out
}
