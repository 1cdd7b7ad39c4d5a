//! Scale events in and lifecycle events out through a real Kafka-compatible broker (nisshi),
//! with the haproxy driver acting on real HAProxy and nginx, all inside the test namespace.
//! Needs root; skips with a message otherwise.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Bed, Proc, assert_schema_valid, can_run, scale_event, wait_for};
use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer as _},
    producer::{FutureProducer, FutureRecord},
};
use shadowtap_core::KafkaSettings;

const BROKER: &str = "127.0.0.1:19092";

fn nisshi() -> PathBuf {
    if let Some(p) = std::env::var_os("NISSHI") {
        return PathBuf::from(p);
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cargo/bin/nisshi"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nisshi"))
}

fn start_broker(bed: &Bed) -> Proc {
    let url = format!("tcp://{BROKER}");
    let log = std::fs::File::create(bed.path("nisshi.log")).expect("nisshi log");
    let child = Command::new(nisshi())
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
        .stderr(log)
        .spawn()
        .expect("starting nisshi (installed by `cargo xtask setup`)");
    let proc = Proc(child);
    assert!(
        wait_for(Duration::from_secs(20), || {
            std::net::TcpStream::connect(BROKER).is_ok()
        }),
        "nisshi did not listen"
    );
    proc
}

#[test]
fn scale_event_from_kafka_yields_lifecycle_events_on_kafka() {
    if !can_run("scale_event_from_kafka_yields_lifecycle_events_on_kafka") {
        return;
    }
    let bed = Bed::start();
    let _broker = start_broker(&bed);
    // Threads created from here on (the runtime's, librdkafka's) inherit the test namespace.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let kafka = KafkaSettings::new(BROKER);
    let admin: AdminClient<DefaultClientContext> =
        kafka.client_config(&[]).create().expect("admin client");
    let topics = ["shadowtap.scale-events", "shadowtap.lifecycle"]
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)));
    let created = rt
        .block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .expect("create topics");
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let producer: FutureProducer = kafka
        .producer_config(Duration::from_secs(10))
        .create()
        .expect("producer");
    let event = scale_event("e-kafka", "api", 0, 2);
    rt.block_on(
        producer.send(
            FutureRecord::to("shadowtap.scale-events")
                .key("api")
                .payload(&event),
            Duration::from_secs(10),
        ),
    )
    .expect("produce the scale event");

    let mut args = bed.provisioner_args("k-");
    args.extend(
        [
            "--kafka-brokers",
            BROKER,
            "--group-id",
            "prov-test",
            "--max-events",
            "1",
        ]
        .map(str::to_owned),
    );
    bed.run_provisioner("kafka", &args, Duration::from_secs(60));
    let servers = bed.servers();
    assert_eq!(servers.len(), 2, "{servers:?}");
    assert!(servers.iter().all(|(_, w, _)| *w == 100), "{servers:?}");

    // provision, warm_up, shift_traffic for each of the two instances.
    let consumer: BaseConsumer = kafka
        .client_config(&[
            ("group.id", "lifecycle-reader"),
            ("enable.auto.commit", "false"),
        ])
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("shadowtap.lifecycle", 0, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while events.len() < 6 && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            assert_eq!(m.key(), Some(&b"api"[..]));
            let value: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON");
            events.push(value);
        }
    }
    assert_eq!(events.len(), 6, "{events:#?}");
    assert_schema_valid(&events);
    assert!(
        events.iter().all(|e| e["data"]["ok"] == true),
        "{events:#?}"
    );
    assert_eq!(events[5]["data"]["healthy_instances"], 2);

    // The event's offset was committed: the group resumes after it.
    let committed: BaseConsumer = kafka
        .client_config(&[("group.id", "prov-test")])
        .create()
        .expect("group client");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("shadowtap.scale-events", 0);
    let offsets = committed
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    let offset = offsets
        .find_partition("shadowtap.scale-events", 0)
        .map(|p| p.offset());
    assert_eq!(offset, Some(Offset::Offset(1)));
}
