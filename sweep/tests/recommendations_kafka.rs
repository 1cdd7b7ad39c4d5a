//! Issue 16: recommendations reach `shadowtap.recommendations` on a real Kafka-protocol broker
//! (nisshi on 127.0.0.1), survive an outage in the spool, and read back as CloudEvents.

use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
};
use shadowtap_core::KafkaSettings;
use shadowtap_sweep::{
    canary::{InstanceWindow, evaluate_canary},
    events::{
        CANARY_DECISION_TYPE, CanaryDecisionData, CanaryDecisionEvent, ForecastLoad,
        RECOMMENDATION_TYPE, RECOMMENDATIONS_TOPIC, RecommendationData, SweepEvent, parse_event,
    },
    policy::{Policy, PolicyConfig},
    recommend::{RecommendConfig, Recommender, Verdict},
    sink::{EventSink, ensure_topic},
    synthetic::{grid_records, load},
    trial::{KpiName, Objective},
};

/// nisshi on a free loopback port; killed (and thawed first if paused) on drop.
struct Broker {
    child: Child,
    port: u16,
    paused: bool,
}

impl Broker {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let url = format!("tcp://127.0.0.1:{port}");
        let nisshi = std::env::var_os("NISSHI").map_or_else(
            || {
                std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".cargo/bin/nisshi"))
                    .filter(|p| p.exists())
                    .unwrap_or_else(|| PathBuf::from("nisshi"))
            },
            PathBuf::from,
        );
        let child = Command::new(nisshi)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://nisshi/"])
            .args(["--group-initial-rebalance-delay", "0s", "--silent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nisshi (installed by `cargo xtask setup`)");
        let mut broker = Self {
            child,
            port,
            paused: false,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                panic!("nisshi exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "nisshi did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    fn settings(&self) -> KafkaSettings {
        KafkaSettings::new(format!("127.0.0.1:{}", self.port))
    }

    fn signal(&mut self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
        self.paused = sig == libc::SIGSTOP;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.paused {
            self.signal(libc::SIGCONT);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (key, payload) of the records on the topic until `done` says so or `timeout`.
fn read_topic(
    settings: &KafkaSettings,
    done: impl Fn(&[(String, Vec<u8>)]) -> bool,
    timeout: Duration,
) -> Vec<(String, Vec<u8>)> {
    let consumer: BaseConsumer = settings
        .client_config(&[
            ("group.id", "sweep-test-reader"),
            ("enable.auto.commit", "false"),
            ("enable.partition.eof", "false"),
        ])
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(RECOMMENDATIONS_TOPIC), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(RECOMMENDATIONS_TOPIC, p.id(), Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while !done(&out) && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            out.push((key, m.payload().unwrap_or_default().to_vec()));
        }
    }
    out
}

#[test]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
fn a_recommendation_and_its_canary_decision_are_published_through_an_outage_and_read_back() {
    let mut broker = Broker::start();
    let settings = broker.settings();
    let spool = tempfile::tempdir().expect("spool dir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let objective = Objective {
        kpi: KpiName::P99Ms,
        max_error_rate: 0.01,
    };
    let policy = Policy::fit(&grid_records(), objective, PolicyConfig::default()).expect("policy");
    let current = policy.recommend(&load(100.0)).expect("answer").params;
    let forecast = ForecastLoad {
        load: load(3200.0),
        window_start_ms: 1_764_806_400_000,
        window_end_ms: 1_764_810_000_000,
    };
    let Verdict::Recommend(rec) = Recommender::new(RecommendConfig::default())
        .consider(&policy, "nginx", &current, &forecast, 1_764_806_000_000)
        .expect("consider")
    else {
        panic!("the 100 rps optimum overloads at 3200 rps");
    };

    let mut sink = rt.block_on(async {
        ensure_topic(&settings, RECOMMENDATIONS_TOPIC, 2)
            .await
            .expect("topic");
        EventSink::kafka(
            &settings,
            RECOMMENDATIONS_TOPIC,
            spool.path(),
            1 << 20,
            Duration::from_secs(3),
        )
        .expect("sink")
    });
    let first = rt.block_on(sink.publish(&*rec)).expect("publish");
    assert_eq!((first.delivered, first.spooled), (1, 0));

    // The broker freezes: the canary decision waits in the spool, then goes out on recovery.
    let windows = [
        InstanceWindow {
            instance: "nginx@10.0.0.1:80".into(),
            requests: 90_000,
            window_secs: 600.0,
            error_rate: 0.0,
            latency_us_p99: 9_000,
        },
        InstanceWindow {
            instance: "nginx@10.0.0.2:80".into(),
            requests: 88_000,
            window_secs: 600.0,
            error_rate: 0.0,
            latency_us_p99: 7_000,
        },
    ];
    let canary = "nginx@10.0.0.2:80";
    let outcome = evaluate_canary(&rec.data.canary, canary, &windows, 0);
    let decision = CanaryDecisionEvent::canary_decision(
        "urn:test:sweep",
        &rec,
        canary,
        outcome,
        1_764_806_700_000,
    );
    broker.signal(libc::SIGSTOP);
    let during = rt.block_on(sink.publish(&decision)).expect("publish");
    assert_eq!(
        (during.delivered, during.spooled),
        (0, 1),
        "spooled while down"
    );
    broker.signal(libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let after = rt.block_on(sink.drain()).expect("drain");
        if after.spooled == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "spool never drained: {after:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let has = |records: &[(String, Vec<u8>)], event_type: &str| {
        records
            .iter()
            .any(|(_, v)| parse_event::<serde_json::Value>(v, event_type).is_some())
    };
    let records = read_topic(
        &settings,
        |r| has(r, RECOMMENDATION_TYPE) && has(r, CANARY_DECISION_TYPE),
        Duration::from_secs(20),
    );
    assert!(records.iter().all(|(key, _)| key == "nginx"), "{records:?}");
    let recs: Vec<SweepEvent<RecommendationData>> = records
        .iter()
        .filter_map(|(_, v)| parse_event(v, RECOMMENDATION_TYPE))
        .collect();
    let decisions: Vec<SweepEvent<CanaryDecisionData>> = records
        .iter()
        .filter_map(|(_, v)| parse_event(v, CANARY_DECISION_TYPE))
        .collect();
    // A delivery that timed out but had landed may be re-sent: consumers dedupe by id.
    assert!(
        !recs.is_empty() && recs.iter().all(|r| r.id == rec.id),
        "{records:?}"
    );
    assert!(!decisions.is_empty(), "{records:?}");
    assert!(decisions.iter().all(|d| d.id == decision.id));
    assert_eq!(recs[0].data.recommended_params, rec.data.recommended_params);
    assert_eq!(decisions[0].data.recommendation_id, rec.id);
    assert_eq!(decisions[0].data.decision, decision.data.decision);
}
