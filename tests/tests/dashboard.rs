//! The dashboard in a real browser: a live agent (in-process collector, 1 s windows, the demo
//! policy) watches real HTTP traffic between two network namespaces; headless Chromium, run in
//! the agent's namespace, loads `http://127.0.0.1:9464/` and the test asserts on the rendered
//! DOM: the resources the clients really addressed, a forecast band drawn, a decision listed,
//! the loss counters. Screenshots are kept in `$CARGO_TARGET_DIR/test-artifacts/dashboard/`.
#![allow(clippy::too_many_lines)] // one scenario, read top to bottom

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use shadowtap_tests::scenario::stop_agent_cleanly;
use shadowtap_tests::{
    agent::{AgentConfig, RunningAgent},
    netns::{Netns, VethConfig, VethPair},
    scenario::{
        AGENT_ATTACH_TIMEOUT, ClientPlan, HOSTS, api_get, finish_client, must, preflight_agent,
        serial, spawn_client, start_server, stop_server, work_dir,
    },
    support::{require_tool, target_dir, workspace_root},
};

const API: &str = "127.0.0.1:9464";

fn peer() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_shadowtap-httppeer"))
}

/// About 15 s of steady traffic to the three Hosts: enough closed 1 s windows for the
/// in-process collector to forecast and decide.
fn steady_plan() -> ClientPlan {
    ClientPlan {
        label: "dashboard-steady",
        ipv6: false,
        connections: 30,
        requests_per_conn: 10,
        pipeline: 1,
        post_bytes: 0,
        parallel: 2,
        think: Duration::from_millis(100),
    }
}

/// Headless Chromium inside `ns` with a fresh profile and nothing that calls home.
fn chromium(ns: &Netns, profile: &Path, extra: &[String]) -> Command {
    let mut cmd = ns.command("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1280,1500",
        // The page fetches every 1.5 s: give it time for a few rounds of real network.
        "--virtual-time-budget=6000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(format!("http://{API}/"));
    cmd
}

/// The DOM as Chromium rendered it after the page's scripts ran.
fn rendered_dom(ns: &Netns, dir: &Path) -> String {
    let out = chromium(ns, &dir.join("profile-dom"), &["--dump-dom".into()])
        .output()
        .expect("running chromium --dump-dom");
    assert!(
        out.status.success(),
        "chromium --dump-dom: {}; {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshot(ns: &Netns, dir: &Path, name: &str) -> PathBuf {
    let artifacts = target_dir().join("test-artifacts").join("dashboard");
    std::fs::create_dir_all(&artifacts).expect("creating the artefact directory");
    let path = artifacts.join(name);
    let _ = std::fs::remove_file(&path);
    let out = chromium(
        ns,
        &dir.join("profile-shot"),
        &[format!("--screenshot={}", path.display())],
    )
    .output()
    .expect("running chromium --screenshot");
    let png = std::fs::read(&path).unwrap_or_default();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot {} written ({} bytes; chromium {}: {})",
        path.display(),
        png.len(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("dashboard screenshot: {}", path.display());
    path
}

/// Elements `<tag ... data-testid="id" ...>` of the dumped DOM, as their opening tags.
fn tags_with_testid<'a>(dom: &'a str, testid: &str) -> Vec<&'a str> {
    let needle = format!("data-testid=\"{testid}\"");
    dom.match_indices(&needle)
        .filter_map(|(at, _)| {
            let start = dom[..at].rfind('<')?;
            let end = at + dom[at..].find('>')?;
            Some(&dom[start..=end])
        })
        .collect()
}

/// The text of the first element with `data-testid="id"` (up to its next tag).
fn text_of<'a>(dom: &'a str, testid: &str) -> Option<&'a str> {
    let needle = format!("data-testid=\"{testid}\"");
    let at = dom.find(&needle)?;
    let open_end = at + dom[at..].find('>')? + 1;
    let close = open_end + dom[open_end..].find('<')?;
    Some(&dom[open_end..close])
}

/// When the API rendered the document the page last drew (`data-updated` of the status).
fn updated_ms(dom: &str) -> u64 {
    tags_with_testid(dom, "status")
        .first()
        .and_then(|tag| tag.split("data-updated=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

#[test]
fn dashboard_renders_live_resources_forecasts_and_decisions() {
    preflight_agent();
    must(require_tool("chromium"));
    let _serial = serial();
    let dir = work_dir("dashboard");
    // The demo policy with the skill fallback off: a minute of traffic gives the forecaster no
    // skill yet, and a fallback decision carries no forecast for the page to draw.
    let demo = std::fs::read_to_string(workspace_root().join("deploy/demo-policy.toml"))
        .expect("demo policy");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        demo.replacen("[defaults]", "[defaults]\nskill_fallback_mase = \"off\"", 1),
    )
    .expect("writing the policy");

    let pair = must(VethPair::create(VethConfig::default()));
    let server = start_server(peer(), &pair, dir.path());
    let policy_arg = policy.display().to_string();
    let config = AgentConfig::host_driver(
        &pair.server_if,
        &[
            "--metrics-listen",
            API,
            "--observation-window",
            "1s",
            "--policy",
            &policy_arg,
        ],
    );
    let mut agent = must(RunningAgent::start(&pair.server, &config, dir.path()));
    must(agent.wait_attached(&pair.server, AGENT_ATTACH_TIMEOUT));
    let client = spawn_client(peer(), &pair, &steady_plan(), dir.path());

    // The JSON the page draws: wait until a resource has a forecast band and decisions.
    let deadline = Instant::now() + Duration::from_secs(60);
    let doc = loop {
        let (status, body) = must(api_get(&pair.server, API, "/v1/dashboard"));
        assert!(status.contains("200"), "{status}: {body}");
        let doc: Value = serde_json::from_str(&body).expect("dashboard JSON");
        // Every resource: the page draws the chart of the first one.
        let ready = doc["resources"].as_array().is_some_and(|list| {
            !list.is_empty()
                && list.iter().all(|r| {
                    r["forecast"].as_array().is_some_and(|f| !f.is_empty())
                        && r["decisions"].as_array().is_some_and(|d| !d.is_empty())
                        && r["endpoints"].as_array().is_some_and(|e| !e.is_empty())
                })
        });
        if ready || Instant::now() > deadline {
            break doc;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(doc["source"], "agent");
    assert!(
        doc["losses"]["ring_buffer_full"].is_number() && doc["losses"]["sampled_out"].is_number(),
        "loss counters: {}",
        doc["losses"]
    );

    let dom = rendered_dom(&pair.server, dir.path());
    let shot = screenshot(&pair.server, dir.path(), "live-agent.png");
    // Live: a later load of the page shows a later render of the API.
    let later = rendered_dom(&pair.server, dir.path());
    assert!(
        updated_ms(&later) > updated_ms(&dom),
        "the page shows newer data on a later load"
    );
    let _ = finish_client(client, Duration::from_secs(60));
    let _ = stop_server(server);
    let _exit = stop_agent_cleanly(agent);

    // Every Host the client addressed is a row, by name.
    let rows = tags_with_testid(&dom, "resource-row");
    for host in HOSTS {
        assert!(
            rows.iter()
                .any(|r| r.contains(&format!("data-resource-id=\"{host}@"))),
            "a row for {host} in {rows:?} (screenshot {})",
            shot.display()
        );
    }
    let names: Vec<&str> = dom
        .match_indices("data-testid=\"resource-name\">")
        .filter_map(|(at, m)| {
            let text = &dom[at + m.len()..];
            text.find('<').map(|end| &text[..end])
        })
        .collect();
    assert!(
        HOSTS
            .iter()
            .all(|h| names.iter().any(|n| n.starts_with(&format!("{h}@")))),
        "resource names rendered as text: {names:?}"
    );
    // A forecast band: an SVG path with a non-empty `d` that closes.
    let band = tags_with_testid(&dom, "forecast-band");
    assert!(
        band.iter()
            .any(|t| t.contains(" d=\"M") && t.contains("Z\"")),
        "forecast band drawn: {band:?} (screenshot {})",
        shot.display()
    );
    assert!(!tags_with_testid(&dom, "demand-line").is_empty());
    assert!(!tags_with_testid(&dom, "capacity-line").is_empty());
    // A decision listed, with its reason.
    let decisions = tags_with_testid(&dom, "decision");
    assert!(
        !decisions.is_empty(),
        "a decision listed (screenshot {})",
        shot.display()
    );
    assert!(
        text_of(&dom, "decision-reason").is_some_and(|r| r.len() > 3),
        "decision reason rendered"
    );
    assert!(
        !tags_with_testid(&dom, "endpoint").is_empty(),
        "endpoint mix"
    );
    assert_eq!(
        text_of(&dom, "loss-ring_buffer_full"),
        Some("0"),
        "no ring buffer loss at this rate"
    );
    assert!(
        text_of(&dom, "status").is_some_and(|s| s.starts_with("updated")),
        "the page reached the API: {:?}",
        text_of(&dom, "status")
    );
}

/// Binding the API off loopback needs `--expose-api`; the error names it.
#[test]
fn api_off_loopback_requires_expose_api() {
    let binary = must(shadowtap_tests::agent::agent_binary());
    let out = Command::new(&binary)
        .args(["run", "--iface", "lo", "--metrics-listen", "0.0.0.0:0"])
        .output()
        .expect("running the agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused: {stderr}");
    assert!(
        stderr.contains("--expose-api"),
        "the error names the flag: {stderr}"
    );
}
