//! Issue 17, Prometheus and Grafana (`deploy/prometheus`, `deploy/grafana`):
//! - `promtool` accepts the shipped config and rules, and the alert unit tests pass;
//! - the rules and the Grafana dashboard reference only metrics that exist (the inventory in
//!   `deploy/prometheus/metrics.txt`) or recording rules, so neither can drift;
//! - a real Prometheus with the shipped config and rules scrapes a live agent, collector and
//!   provisioner, and the series it stores agree with what the test sent and with each other;
//!   what it scrapes is exactly the inventory.
//!
//! Everything of the live test runs inside the server namespace, on its own loopback, so the
//! shipped config's default ports are free by construction.
#![allow(clippy::too_many_lines)] // one scenario per test, read top to bottom
#![allow(clippy::float_cmp, clippy::cast_precision_loss)] // small integer counts: exact in f64

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use shadowtap_tests::scenario::stop_agent_cleanly;
use shadowtap_tests::{
    agent::{
        AgentConfig, CaptureMode, RunningAgent, XdpMode, collector_binary, provisioner_binary,
    },
    broker::{start_nisshi, wait_listening},
    netns::{Netns, VethConfig, VethPair},
    process::BackgroundProcess,
    scenario::{
        AGENT_ATTACH_TIMEOUT, api_get, must, preflight_agent, serial, start_server, stop_server,
        work_dir,
    },
    support::{require_tool, workspace_root},
};

const BROKER: &str = "127.0.0.1:19092";
/// The shipped config's targets.
const AGENT_METRICS: &str = "127.0.0.1:9464";
const COLLECTOR_METRICS: &str = "127.0.0.1:9465";
const PROVISIONER_METRICS: &str = "127.0.0.1:9466";
const PROMETHEUS: &str = "127.0.0.1:9090";
const JOBS: [&str; 3] = [
    "shadowtap-agent",
    "shadowtap-collector",
    "shadowtap-provisioner",
];

fn prometheus_dir() -> PathBuf {
    workspace_root().join("deploy/prometheus")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One line of `metrics.txt`: a metric a job exports, and when (`always`, or a condition).
struct Exported {
    job: String,
    name: String,
    always: bool,
}

fn inventory() -> Vec<Exported> {
    let path = prometheus_dir().join("metrics.txt");
    read(&path)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut words = l.split_whitespace();
            let (Some(job), Some(name), Some(when)) = (words.next(), words.next(), words.next())
            else {
                panic!(
                    "{}: `JOB METRIC always|CONDITION` expected: {l}",
                    path.display()
                );
            };
            Exported {
                job: job.to_owned(),
                name: name.to_owned(),
                always: when == "always",
            }
        })
        .collect()
}

/// The values of `key:` lines of a rules file (`- record: X`, `- alert: X`).
fn rule_names(text: &str, key: &str) -> Vec<String> {
    let prefix = format!("- {key}:");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix))
        .map(|n| n.trim().to_owned())
        .collect()
}

/// Every PromQL expression of a rules file: `expr: X` and `expr: |` blocks.
fn rule_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        if rest.trim() == "|" {
            let indent = line.len() - line.trim_start().len();
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.len() - l.trim_start().len() > indent)
                .copied()
                .collect();
            out.push(block.join("\n"));
        } else {
            out.push(rest.trim().to_owned());
        }
    }
    out
}

/// Metric and recording-rule names an expression references: identifiers outside string
/// literals that start with `shadowtap_` or `shadowtap:` (label names never do).
fn metric_refs(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut token = String::new();
    let mut quote: Option<char> = None;
    let mut flush = |token: &mut String| {
        if token.starts_with("shadowtap_") || token.starts_with("shadowtap:") {
            out.insert(std::mem::take(token));
        }
        token.clear();
    };
    for c in expr.chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            token.push(c);
        } else {
            flush(&mut token);
            if matches!(c, '"' | '\'' | '`') {
                quote = Some(c);
            }
        }
    }
    flush(&mut token);
    out
}

/// Every `expr` string anywhere in a dashboard (panels, rows' panels, targets).
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

fn promtool(args: &[&str]) -> String {
    let promtool = must(require_tool("promtool"));
    let out = Command::new(&promtool)
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .expect("running promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_config_and_rules_and_the_alert_unit_tests_pass() {
    let config = promtool(&["check", "config", "prometheus.yml"]);
    assert!(config.contains("2 rule files found"), "{config}");
    promtool(&["check", "rules", "rules/recording.yml", "rules/alerts.yml"]);
    let tests = promtool(&["test", "rules", "tests/alerts_test.yml"]);
    assert!(tests.contains("SUCCESS"), "{tests}");

    // Every alert has a unit test in which it fires, and an entry in the operations guide.
    let alerts = rule_names(&read(&prometheus_dir().join("rules/alerts.yml")), "alert");
    assert_eq!(alerts.len(), 9, "{alerts:?}");
    let unit = read(&prometheus_dir().join("tests/alerts_test.yml"));
    let guide = read(&workspace_root().join("docs/operations.md"));
    for alert in &alerts {
        let firing = unit
            .split("alertname: ")
            .skip(1)
            .any(|case| case.starts_with(&format!("{alert}\n")) && case.contains("exp_labels"));
        assert!(firing, "no unit test where {alert} fires");
        assert!(
            guide.contains(alert.as_str()),
            "{alert} not in docs/operations.md"
        );
    }
}

#[test]
fn rules_and_dashboard_reference_only_exported_metrics_and_recording_rules() {
    let recording = read(&prometheus_dir().join("rules/recording.yml"));
    let alerts = read(&prometheus_dir().join("rules/alerts.yml"));
    let records: BTreeSet<String> = rule_names(&recording, "record").into_iter().collect();
    let exported: BTreeSet<String> = inventory().into_iter().map(|e| e.name).collect();
    let known = |name: &String| records.contains(name) || exported.contains(name);

    let rule_exprs: Vec<String> = rule_exprs(&recording)
        .into_iter()
        .chain(rule_exprs(&alerts))
        .collect();
    assert_eq!(rule_exprs.len(), 18, "9 recording rules and 9 alerts");
    let path = workspace_root().join("deploy/grafana/shadowtap.json");
    let dashboard: Value = serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert_eq!(dashboard["uid"], "shadowtap");
    let mut panel_exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut panel_exprs);
    assert!(panel_exprs.len() >= 20, "{panel_exprs:?}");

    let mut used = BTreeSet::new();
    for expr in rule_exprs.iter().chain(&panel_exprs) {
        let refs = metric_refs(expr);
        assert!(
            !refs.is_empty() || expr.starts_with("up"),
            "no metric in {expr}"
        );
        for name in refs {
            assert!(
                known(&name),
                "`{name}` in `{expr}` is neither exported (metrics.txt) nor a recording rule"
            );
            used.insert(name);
        }
    }
    // Every recording rule is used by an alert or a panel.
    for record in &records {
        assert!(used.contains(record), "recording rule {record} is unused");
    }
}

/// Percent-encodes a query parameter value.
fn encode(text: &str) -> String {
    text.bytes().fold(String::new(), |mut out, b| {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
        out
    })
}

/// An instant query against the Prometheus in `ns`: (labels, value) per series.
fn query(ns: &Netns, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let (status, body) = must(api_get(
        ns,
        PROMETHEUS,
        &format!("/api/v1/query?query={}", encode(promql)),
    ));
    assert!(status.contains("200"), "{promql}: {status}: {body}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["data"]["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{promql}: no result in {body}"))
        .iter()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let value = r["value"][1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN);
            (labels, value)
        })
        .collect()
}

/// The single value of a query that selects one series, `None` while it has none.
fn scalar(ns: &Netns, promql: &str) -> Option<f64> {
    let result = query(ns, promql);
    assert!(
        result.len() <= 1,
        "{promql} selects several series: {result:?}"
    );
    result.first().map(|(_, v)| *v)
}

fn listening(ns: &Netns, addr: &str, process: &BackgroundProcess) {
    let addr: SocketAddr = addr.parse().expect("address");
    must(wait_listening(ns, addr, process, Duration::from_secs(60)));
}

/// The shipped `prometheus.yml`, scraping and evaluating every second, with the shipped rule
/// files by absolute path.
fn test_config() -> String {
    let mut config = read(&prometheus_dir().join("prometheus.yml"));
    for (from, to) in [
        ("scrape_interval: 15s", "scrape_interval: 1s".to_owned()),
        (
            "evaluation_interval: 15s",
            "evaluation_interval: 1s".to_owned(),
        ),
        (
            "  - rules/",
            format!("  - {}/rules/", prometheus_dir().display()),
        ),
    ] {
        assert!(config.contains(from), "prometheus.yml lacks `{from}`");
        config = config.replace(from, &to);
    }
    config
}

/// Client phases of rising rate: (connections, requests per connection).
const PHASES: &[(u32, u32)] = &[(1, 2), (2, 4), (4, 6), (6, 8), (8, 10)];

#[test]
fn prometheus_scrapes_a_live_agent_collector_and_provisioner() {
    preflight_agent();
    let prometheus = must(require_tool("prometheus"));
    let collector_bin = must(collector_binary());
    let provisioner_bin = must(provisioner_binary());
    let peer = Path::new(env!("CARGO_BIN_EXE_shadowtap-httppeer"));
    let _serial = serial();
    let dir = work_dir("prometheus");
    let pair = must(VethPair::create(VethConfig::default()));
    let server_v4 = pair.server_v4.expect("ipv4");
    let ns = &pair.server;

    let broker = must(start_nisshi(
        ns,
        BROKER.parse().expect("address"),
        dir.path(),
    ));
    let mut collector_cmd = ns.command(&collector_bin);
    collector_cmd
        .args(["--kafka-brokers", BROKER, "--policy"])
        .arg(workspace_root().join("deploy/demo-policy.toml"))
        .args(["--metrics-addr", COLLECTOR_METRICS])
        .args(["--merge-wait", "200ms", "--idle-close", "2s"])
        .env("RUST_LOG", "info,rdkafka=warn");
    let collector = must(BackgroundProcess::spawn(
        collector_cmd,
        "collector",
        dir.path(),
    ));
    listening(ns, COLLECTOR_METRICS, &collector);
    // Not a dry run: `true` is the command, so every handled event is a command that ran.
    let mut provisioner_cmd = ns.command(&provisioner_bin);
    provisioner_cmd
        .args(["--kafka-brokers", BROKER, "--group-id", "prometheus-e2e"])
        .args(["--exec", "true {resource} {target}"])
        .args(["--metrics-listen", PROVISIONER_METRICS])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    let provisioner = must(BackgroundProcess::spawn(
        provisioner_cmd,
        "provisioner",
        dir.path(),
    ));
    listening(ns, PROVISIONER_METRICS, &provisioner);

    let config = dir.path().join("prometheus.yml");
    std::fs::write(&config, test_config()).expect("writing prometheus.yml");
    let mut prometheus_cmd = ns.command(&prometheus);
    prometheus_cmd
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"));
    let prom = must(BackgroundProcess::spawn(
        prometheus_cmd,
        "prometheus",
        dir.path(),
    ));
    listening(ns, PROMETHEUS, &prom);

    let server = start_server(peer, &pair, dir.path());
    let agent_config = AgentConfig {
        iface: pair.server_if.clone(),
        mode: CaptureMode::Host,
        xdp_mode: XdpMode::Driver,
        stats_interval_secs: 1,
        extra_args: [
            "--kafka-brokers",
            BROKER,
            "--observation-window",
            "1s",
            "--spool-dir",
            &dir.path().join("spool").display().to_string(),
            "--metrics-listen",
            AGENT_METRICS,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect(),
    };
    let mut agent = must(RunningAgent::start(ns, &agent_config, dir.path()));
    must(agent.wait_attached(ns, AGENT_ATTACH_TIMEOUT));

    // Rising rate on one Host, each phase about a second, so the collector scales out.
    let target = format!("{server_v4}:8080");
    for (connections, requests) in PHASES {
        let started = Instant::now();
        let status = pair
            .client
            .command(peer)
            .args(["client", "--connect", &target, "--hosts", "rise.example"])
            .args(["--connections", &connections.to_string()])
            .args(["--requests-per-conn", &requests.to_string()])
            .args(["--parallel", &connections.to_string()])
            .stdout(Stdio::null())
            .status()
            .expect("client");
        assert!(status.success());
        if let Some(rest) = Duration::from_millis(1100).checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let _ = stop_server(server);
    let planned: u64 = PHASES.iter().map(|(c, r)| u64::from(c * r)).sum();

    // Poll Prometheus until the pipeline has settled and every scrape has caught up.
    let get = |q: &str| scalar(ns, q);
    let agent_q = |m: &str| format!("{m}{{job=\"shadowtap-agent\"}}");
    let settled = || -> Result<(), String> {
        let up = query(ns, "up");
        let up_jobs: BTreeSet<&str> = up
            .iter()
            .filter(|(_, v)| *v == 1.0)
            .filter_map(|(l, _)| l.get("job").map(String::as_str))
            .collect();
        if up_jobs != JOBS.into_iter().collect() {
            return Err(format!("up: {up:?}"));
        }
        for name in [
            "shadowtap_tracker_requests",
            "shadowtap_model_http_requests",
        ] {
            let seen = get(&agent_q(name));
            if seen != Some(planned as f64) {
                return Err(format!("{name} {seen:?}, sent {planned}"));
            }
        }
        let delivered = get(&agent_q("shadowtap_sink_delivered_total"));
        let processed = get("shadowtap_collector_observations_processed_total");
        if delivered.is_none_or(|d| d == 0.0) || delivered != processed {
            return Err(format!(
                "observations delivered {delivered:?}, processed {processed:?}"
            ));
        }
        let published = get("shadowtap_collector_scale_events_total");
        let handled = get("shadowtap_provisioner_events_total{outcome=\"handled\"}");
        if published.is_none_or(|p| p == 0.0) || published != handled {
            return Err(format!(
                "scale events published {published:?}, handled {handled:?}"
            ));
        }
        // One stdout line per handled event, and each ran its command (`true`).
        let lines = provisioner.stdout().unwrap_or_default();
        let reported = lines.lines().filter(|l| l.starts_with('{')).count() as f64;
        let ran = get("shadowtap_provisioner_commands_total{outcome=\"ok\"}");
        if handled != Some(reported) || ran != handled {
            return Err(format!(
                "provisioner handled {handled:?}, reported {reported}, ran {ran:?}"
            ));
        }
        let packets = get("shadowtap:kernel_packets:rate5m");
        if packets.is_none_or(|p| p <= 0.0) {
            return Err(format!("recording rule packets rate {packets:?}"));
        }
        Ok(())
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut state = settled();
    while let Err(why) = &state {
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw the pipeline settle: {why}\nagent: {}\ncollector: {}\n\
             provisioner: {}\nprometheus: {}",
            agent.stderr_tail(),
            collector.stderr_tail(),
            provisioner.stderr_tail(),
            prom.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
        state = settled();
    }

    assert_eq!(
        get("shadowtap_provisioner_commands_total{outcome=\"failed\"}"),
        Some(0.0)
    );
    assert_eq!(
        get("sum(shadowtap_kernel_ringbuf_reserve_failed_total)"),
        Some(0.0)
    );
    // The collector decided for the resource the traffic went to, and exports that decision.
    let resource = format!("rise.example@{target}");
    let desired = get(&format!(
        "shadowtap_resource_desired_instances{{job=\"shadowtap-collector\",resource=\"{resource}\"}}"
    ));
    assert!(
        desired.is_some_and(|d| d >= 1.0),
        "collector's desired instances of {resource}: {desired:?}"
    );
    assert!(
        get("shadowtap_collector_consumer_lag_records").is_some(),
        "librdkafka statistics reach the lag gauge"
    );

    // The collector's dashboard (the same embedded page as the agent's, browser-tested in
    // tests/tests/dashboard.rs) shows what it merged from Kafka: the resource, its desired
    // instances and the decisions behind them.
    let (status, page) = must(api_get(ns, COLLECTOR_METRICS, "/"));
    assert!(
        status.contains("200") && page.contains("<html"),
        "{status}: {page}"
    );
    let (status, body) = must(api_get(ns, COLLECTOR_METRICS, "/v1/dashboard"));
    assert!(status.contains("200"), "{status}: {body}");
    let doc: Value = serde_json::from_str(&body).expect("collector dashboard JSON");
    assert_eq!(doc["source"], "collector");
    let shown = doc["resources"]
        .as_array()
        .and_then(|list| list.iter().find(|r| r["id"] == resource.as_str()))
        .unwrap_or_else(|| panic!("{resource} missing from the collector's dashboard: {doc}"));
    // (Not compared with the scraped gauge: the collector may have decided again since.)
    assert!(
        shown["desired_instances"].as_u64().is_some_and(|d| d >= 1),
        "the collector's dashboard shows desired instances: {shown}"
    );
    assert!(
        shown["decisions"].as_array().is_some_and(|d| !d.is_empty()),
        "the collector's decision timeline lists decisions: {shown}"
    );

    // Every shipped rule loaded and evaluates without error.
    let (status, body) = must(api_get(ns, PROMETHEUS, "/api/v1/rules"));
    assert!(status.contains("200"), "{status}: {body}");
    let rules: Value = serde_json::from_str(&body).expect("rules JSON");
    let mut evaluated = 0;
    for group in rules["data"]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            assert_eq!(rule["health"], "ok", "{rule}");
            evaluated += 1;
        }
    }
    assert_eq!(evaluated, 18, "{body}");

    // What Prometheus scraped is exactly the inventory: nothing unlisted, nothing listed as
    // always exported missing.
    let scraped: BTreeSet<(String, String)> = query(
        ns,
        "count by (job, __name__) ({__name__=~\"shadowtap_.+\"})",
    )
    .into_iter()
    .map(|(l, _)| {
        (
            l.get("job").cloned().unwrap_or_default(),
            l.get("__name__").cloned().unwrap_or_default(),
        )
    })
    .collect();
    let inventory = inventory();
    let listed: BTreeSet<(String, String)> = inventory
        .iter()
        .map(|e| (e.job.clone(), e.name.clone()))
        .collect();
    let unlisted: Vec<_> = scraped.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "scraped but not in metrics.txt: {unlisted:?}"
    );
    let missing: Vec<_> = inventory
        .iter()
        .filter(|e| e.always && !scraped.contains(&(e.job.clone(), e.name.clone())))
        .map(|e| format!("{} {}", e.job, e.name))
        .collect();
    assert!(
        missing.is_empty(),
        "listed as always but not scraped: {missing:?}"
    );

    stop_agent_cleanly(agent);
    drop(prom);
    drop(provisioner);
    drop(collector);
    drop(broker);
}
