//! Live tests: real traffic between network namespaces we create, the real agent attached to
//! the server-side veth. They need root, iproute2, bpftool, tcpreplay, llc (detector self-test)
//! and a built `shadowtap-agent` (`SHADOWTAP_AGENT_BIN` or `target/{debug,release}`); when one
//! is missing they fail saying so.
//!
//! Tests that run the agent or put load on the machine take a process-wide lock: the machine
//! has two cores, and exact counts need the ring buffer consumer to keep up.

use std::collections::BTreeMap;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use shadowtap_tests::agent::{CaptureMode, XdpMode};
use shadowtap_tests::bpf;
use shadowtap_tests::events::{EventLog, field_str, field_u64};
use shadowtap_tests::json::{first_difference, timing_free};
use shadowtap_tests::netns::{VethConfig, VethPair, list_namespaces, sweep_stale_namespaces};
use shadowtap_tests::pcap::Pcap;
use shadowtap_tests::peer::{ClientSummary, ServerSummary};
use shadowtap_tests::scenario::{
    AGENT_STOP_TIMEOUT, ClientPlan, HOSTS, PORT, api_get, assert_loss_accounted,
    assert_peers_agree, finish_client, is_egress, is_ingress, must, preflight_agent, preflight_net,
    run_client, serial, spawn_client, start_agent, start_server, stop_server, tcpreplay_counts,
    total_of, traffic_plan, work_dir,
};
use shadowtap_tests::support::{require_llc, require_tool, shared_pcap};

fn peer() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_shadowtap-httppeer"))
}

// ---------------------------------------------------------------------------------------------
// Harness tests (no agent)
// ---------------------------------------------------------------------------------------------

#[test]
fn harness_creates_and_removes_namespaces() {
    preflight_net();
    let pair = must(VethPair::create(VethConfig::default()));
    let (client_ns, server_ns) = (pair.client.name().to_owned(), pair.server.name().to_owned());
    let listed = must(list_namespaces());
    assert!(
        listed.contains(&client_ns) && listed.contains(&server_ns),
        "{listed:?}"
    );
    must(pair.assert_not_in_host_namespace());
    assert!(pair.client_if.len() <= 15 && pair.server_if.len() <= 15);

    let addrs = must(
        pair.server
            .ip(["-j", "addr", "show", "dev", pair.server_if.as_str()]),
    );
    let server_v4 = pair.server_v4.expect("IPv4 configured").to_string();
    let server_v6 = pair.server_v6.expect("IPv6 configured").to_string();
    assert!(
        addrs.contains(&server_v4) && addrs.contains(&server_v6),
        "{addrs}"
    );
    let link = must(pair.client.link_json(&pair.client_if));
    assert_eq!(link["mtu"], 1500);
    assert_eq!(link["operstate"], "UP");
    // Routes exist only inside the namespaces: the host has no route to our subnet via our veth.
    let stats = must(pair.server.link_stats(&pair.server_if));
    assert_eq!(stats.rx_errors + stats.tx_errors, 0);

    // A process left running inside is killed when the namespace goes.
    let dir = work_dir("harness");
    let sleeper = must(pair.server.spawn("sleep", ["30"], "sleeper", dir.path()));
    let sleeper_pid = sleeper.pid();
    std::mem::forget(sleeper); // the namespace guard, not the process guard, must end it
    drop(pair);
    let listed = must(list_namespaces());
    assert!(
        !listed.contains(&client_ns) && !listed.contains(&server_ns),
        "{listed:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Reap it: it is our child, so its pid stays ours until waited for.
        let mut wait_status = 0;
        // SAFETY: waitpid on our own child pid with a valid status pointer.
        let rc = unsafe {
            libc::waitpid(
                sleeper_pid as libc::pid_t,
                &raw mut wait_status,
                libc::WNOHANG,
            )
        };
        if rc == sleeper_pid as libc::pid_t {
            assert!(
                libc::WIFSIGNALED(wait_status),
                "sleep was not killed: {wait_status:#x}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "process inside the deleted namespace still runs"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn harness_cleans_up_after_panic_and_sweeps_stale_runs() {
    preflight_net();
    let names = std::panic::catch_unwind(|| {
        let pair = VethPair::create(VethConfig::default()).expect("creating a pair");
        let names = (pair.client.name().to_owned(), pair.server.name().to_owned());
        std::panic::panic_any(names);
    })
    .expect_err("the closure panics");
    let (client_ns, server_ns) = names
        .downcast_ref::<(String, String)>()
        .expect("panic payload carries the names")
        .clone();
    let listed = must(list_namespaces());
    assert!(
        !listed.contains(&client_ns) && !listed.contains(&server_ns),
        "{listed:?}"
    );

    // A namespace named after a dead pid is a leftover; one named after us is not.
    let mut finished = std::process::Command::new("true")
        .spawn()
        .expect("spawning true");
    let dead_pid = finished.id();
    finished.wait().expect("reaping true");
    let stale = format!("stap-{dead_pid}-0-x");
    must(shadowtap_tests::process::run_checked(
        std::process::Command::new("ip").args(["netns", "add", &stale]),
    ));
    let live_pair = must(VethPair::create(VethConfig::default()));
    let removed = must(sweep_stale_namespaces());
    assert!(
        removed.contains(&stale),
        "stale {stale} not swept: {removed:?}"
    );
    let listed = must(list_namespaces());
    assert!(!listed.contains(&stale));
    assert!(
        listed.contains(&live_pair.client.name().to_owned()),
        "live run swept"
    );
}

#[test]
fn peers_agree_across_veth_ipv4_and_ipv6() {
    preflight_net();
    let _serial = serial();
    let dir = work_dir("peers");
    let pair = must(VethPair::create(VethConfig::default()));
    let server = start_server(peer(), &pair, dir.path());
    let plans = traffic_plan();
    let before = must(pair.server.link_stats(&pair.server_if));
    let clients: Vec<ClientSummary> = plans
        .iter()
        .map(|p| run_client(peer(), &pair, p, dir.path()))
        .collect();
    let server = stop_server(server);
    let link = must(pair.server.link_stats(&pair.server_if)).since(&before);
    assert_peers_agree(&pair, &plans, &clients, &server);
    // Headers and acknowledgements come on top of the payload, never less.
    let total = total_of(&clients);
    assert!(
        link.rx_bytes > total.bytes_written && link.tx_bytes > total.bytes_read,
        "{link:?}"
    );
    assert_eq!(link.rx_dropped + link.tx_dropped, 0, "{link:?}");
    assert_eq!(total.requests_sent, 112);
    assert_eq!(total.requests_sent_by_host.len(), HOSTS.len());
}

/// A minimal XDP and a minimal tc program, compiled with llc at test time, so that the
/// detector behind the SIGKILL test is itself shown to see attachments.
const DUMMY_PROGRAMS_IR: &str = r#"
target triple = "bpf"

define i32 @stap_xdp_pass() section "xdp" {
  ret i32 2
}

define i32 @stap_tc_ok() section "tc" {
  ret i32 0
}

@_license = global [4 x i8] c"GPL\00", section "license", align 1
"#;

#[test]
fn harness_detects_attached_xdp_and_tc_programs() {
    preflight_net();
    must(require_tool("bpftool"));
    let tc = must(require_tool("tc"));
    let dir = work_dir("detector");
    let obj = compile_bpf_ir(DUMMY_PROGRAMS_IR, &dir.path().join("dummy"));
    let pair = must(VethPair::create(VethConfig::default()));
    let (ns, ifname) = (&pair.server, pair.server_if.as_str());
    assert!(must(bpf::attachments(ns, ifname)).is_empty());

    must(ns.ip([
        "link",
        "set",
        "dev",
        ifname,
        "xdpgeneric",
        "obj",
        &obj,
        "sec",
        "xdp",
    ]));
    must(ns.run(&tc, ["qdisc", "add", "dev", ifname, "clsact"]));
    must(ns.run(
        &tc,
        [
            "filter", "add", "dev", ifname, "egress", "bpf", "da", "obj", &obj, "sec", "tc",
        ],
    ));
    let found = must(bpf::attachments(ns, ifname));
    assert_eq!(found.xdp.len(), 1, "{found:?}");
    assert_eq!(found.xdp[0].hook, "xdp skb");
    assert!(found.has_tc_egress(), "{found:?}");
    let ids = found.prog_ids();
    assert_eq!(ids.len(), 2, "{found:?}");
    for id in &ids {
        assert!(must(bpf::prog_exists(*id)), "program {id} should be loaded");
    }
    // tcx attachments are seen by the BPF_PROG_QUERY path (empty here, but the query ran).
    assert_eq!(
        must(bpf::tcx_programs(ns, ifname)),
        bpf::TcxPrograms::default()
    );

    must(ns.ip(["link", "set", "dev", ifname, "xdpgeneric", "off"]));
    must(ns.run(&tc, ["filter", "del", "dev", ifname, "egress"]));
    assert!(must(bpf::attachments(ns, ifname)).is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    while ids.iter().any(|id| must(bpf::prog_exists(*id))) {
        assert!(
            Instant::now() < deadline,
            "detached programs {ids:?} still loaded"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Agent tests
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Agent tests
// ---------------------------------------------------------------------------------------------

/// The wire between the peers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// Nothing drops a frame (TCP may still retransmit on a loaded machine).
    Clean,
    /// Frames are dropped after the agent's taps ([`LOSSY_TC_IR`]): TCP retransmits, and the
    /// agent sees both copies of what it retransmits, as on a lossy link.
    LossyAfterTaps,
}

/// A tc program that drops about one in eight frames longer than 120 bytes. At tc, `len`
/// counts from the network header: every segment of the live traffic that carries payload is
/// longer (the smallest request or response head is 78 bytes), while SYNs, FINs, bare ACKs,
/// ARP and neighbour discovery are shorter. `bpf_get_prandom_u32` (helper 7) decides, so there
/// is no map to load; with more than a hundred data frames each way, some are dropped each
/// way (the chance that none is: below 1e-6). Typed pointers (`i32*`): `llc` may be LLVM 14,
/// which needs them, while LLVM 17 and later read them as opaque `ptr`.
const LOSSY_TC_IR: &str = r#"
target triple = "bpf"

define i32 @stap_lossy(i32* %skb) section "tc" {
entry:
  %len = load i32, i32* %skb, align 4
  %data = icmp ugt i32 %len, 120
  br i1 %data, label %roll, label %pass
roll:
  %r = call i64 inttoptr (i64 7 to i64 ()*)()
  %low = and i64 %r, 7
  %hit = icmp eq i64 %low, 0
  br i1 %hit, label %drop, label %pass
drop:
  ret i32 2
pass:
  ret i32 0
}

@_license = global [4 x i8] c"GPL\00", section "license", align 1
"#;

/// Attaches [`LOSSY_TC_IR`] at tc ingress of both veth ends: on the server end that runs after
/// XDP (client→server frames were already counted), on the client end after the server end's
/// tc egress (server→client frames likewise). The namespaces take the filters with them.
/// Compiles LLVM IR text to a BPF object at `stem.o` with `llc`; returns the object's path.
fn compile_bpf_ir(ir_text: &str, stem: &Path) -> String {
    let llc = must(require_llc());
    let ir = stem.with_extension("ll");
    let obj = stem.with_extension("o");
    std::fs::write(&ir, ir_text).expect("writing IR");
    must(shadowtap_tests::process::run_checked(
        std::process::Command::new(&llc)
            .args(["-march=bpf", "-filetype=obj", "-o"])
            .arg(&obj)
            .arg(&ir),
    ));
    obj.to_string_lossy().into_owned()
}

fn drop_data_frames_after_the_taps(pair: &VethPair, dir: &Path) {
    let tc = must(require_tool("tc"));
    let obj = compile_bpf_ir(LOSSY_TC_IR, &dir.join("lossy"));
    for (ns, ifname) in [
        (&pair.server, pair.server_if.as_str()),
        (&pair.client, pair.client_if.as_str()),
    ] {
        must(ns.run(&tc, ["qdisc", "add", "dev", ifname, "clsact"]));
        must(ns.run(
            &tc,
            [
                "filter", "add", "dev", ifname, "ingress", "bpf", "da", "obj", &obj, "sec", "tc",
            ],
        ));
    }
}

fn live_http_counts(xdp_mode: XdpMode, wire: Wire) {
    preflight_agent();
    let _serial = serial();
    let label = match wire {
        Wire::Clean => "http",
        Wire::LossyAfterTaps => "http-lossy",
    };
    let dir = work_dir(&format!("{label}-{}", xdp_mode.as_arg()));
    let pair = must(VethPair::create(VethConfig::default()));
    let server = start_server(peer(), &pair, dir.path());
    let agent = start_agent(&pair, CaptureMode::Host, xdp_mode, dir.path());
    if wire == Wire::LossyAfterTaps {
        drop_data_frames_after_the_taps(&pair, dir.path());
    }

    let retransmits = || must(pair.client.tcp_retransmits()) + must(pair.server.tcp_retransmits());
    let retransmits_before = retransmits();
    let links = || {
        (
            must(pair.client.link_stats(&pair.client_if)),
            must(pair.server.link_stats(&pair.server_if)),
        )
    };
    let links_before = links();
    let plans = traffic_plan();
    let clients: Vec<ClientSummary> = plans
        .iter()
        .map(|p| run_client(peer(), &pair, p, dir.path()))
        .collect();
    let server = stop_server(server);
    let (client_link, server_link) = {
        let now = links();
        (now.0.since(&links_before.0), now.1.since(&links_before.1))
    };
    let drops = format!(
        "veth drops: client side rx {} tx {}, server side rx {} tx {}",
        client_link.rx_dropped,
        client_link.tx_dropped,
        server_link.rx_dropped,
        server_link.tx_dropped
    );
    assert_peers_agree(&pair, &plans, &clients, &server);
    let peers = total_of(&clients);
    let connections = peers.connections_opened;

    // Flows are exported every stats interval; give the agent until its output covers the
    // traffic on the wire (bounded), then stop it cleanly and judge the whole output.
    let covered = |log: &EventLog| {
        log.count("conn_close") >= connections
            && log.sum_where("flow", "payload_bytes", is_ingress) >= peers.wire_bytes_sent
            && log.sum_where("flow", "payload_bytes", is_egress) >= server.wire_bytes_sent
    };
    must(agent.wait_for(Duration::from_secs(5), covered));
    let exit = must(agent.stop(libc::SIGINT, AGENT_STOP_TIMEOUT));
    assert!(
        exit.status.success(),
        "agent exited with {}; {}",
        exit.status,
        exit.stderr
    );
    let log = &exit.log;
    assert!(
        log.unknown_kinds().is_empty(),
        "kinds outside the contract: {:?}",
        log.unknown_kinds()
    );

    let expected_records = 4 * connections + peers.requests_sent + peers.responses_received;
    let retransmitted = retransmits() - retransmits_before;
    if retransmitted > 0 {
        eprintln!(
            "TCP retransmitted {retransmitted} segments during the run: {} payload bytes \
             client→server, {} server→client; {drops}",
            peers.wire_bytes_retransmitted, server.wire_bytes_retransmitted
        );
    }
    if wire == Wire::LossyAfterTaps {
        assert!(
            peers.wire_bytes_retransmitted > 0 && server.wire_bytes_retransmitted > 0,
            "the lossy path forced no retransmission one way: clients retransmitted {} bytes, \
             the server {}",
            peers.wire_bytes_retransmitted,
            server.wire_bytes_retransmitted
        );
    }
    let lossless = assert_loss_accounted(log, Some((expected_records, retransmitted)));
    assert!(
        lossless,
        "ring buffer overflowed in a test sized never to fill it; exact counts cannot be owed"
    );

    assert_common_fields(log, &pair.server_if);
    assert_http_events(log, &peers);
    assert_connection_events(log, &plans, connections);
    assert_flow_bytes(log, &peers, &server, &drops);
}

fn assert_common_fields(log: &EventLog, iface: &str) {
    for event in log
        .events
        .iter()
        .filter(|e| field_str(e, "kind") != Some("stats"))
    {
        assert_eq!(field_str(event, "iface"), Some(iface), "{event}");
        for key in ["ts_ns", "src_port", "dst_port"] {
            assert!(field_u64(event, key).is_some(), "missing {key}: {event}");
        }
        for key in ["direction", "src", "dst"] {
            assert!(field_str(event, key).is_some(), "missing {key}: {event}");
        }
    }
}

/// Every request on ingress per Host and method; every response on egress per status, each
/// paired with its request.
fn assert_http_events(log: &EventLog, peers: &ClientSummary) {
    let port = u64::from(PORT);
    let request = |e: &Value| is_ingress(e) && field_u64(e, "dst_port") == Some(port);
    assert_eq!(
        log.count("http_request"),
        peers.requests_sent,
        "http_request events"
    );
    assert_eq!(
        log.count_where("http_request", request),
        peers.requests_sent,
        "requests on ingress to the server port"
    );
    assert_eq!(
        log.tally("http_request", "host"),
        peers.requests_sent_by_host,
        "requests per Host"
    );
    assert_eq!(
        log.tally("http_request", "method"),
        peers.requests_sent_by_method,
        "requests per method"
    );

    let response = |e: &Value| is_egress(e) && field_u64(e, "src_port") == Some(port);
    assert_eq!(
        log.count("http_response"),
        peers.responses_received,
        "http_response events"
    );
    assert_eq!(
        log.count_where("http_response", response),
        peers.responses_received,
        "responses on egress from the server port"
    );
    assert_eq!(
        log.tally("http_response", "status"),
        peers.responses_by_status,
        "responses per status"
    );
    let paired = log.count_where("http_response", |e| field_u64(e, "latency_us").is_some());
    assert_eq!(
        paired, peers.responses_received,
        "responses paired with a request"
    );
    assert_eq!(
        log.tally("http_response", "host"),
        peers.requests_sent_by_host,
        "paired hosts"
    );
    assert_eq!(log.count("tls_client_hello"), 0, "no TLS in this traffic");
}

/// One client SYN (ingress) and one SYN-ACK (egress) per connection, one close each.
fn assert_connection_events(log: &EventLog, plans: &[ClientPlan], connections: u64) {
    let syn = |e: &Value| e.get("syn_ack") == Some(&Value::Bool(false)) && is_ingress(e);
    let syn_ack = |e: &Value| e.get("syn_ack") == Some(&Value::Bool(true)) && is_egress(e);
    assert_eq!(log.count("conn_open"), 2 * connections, "conn_open events");
    assert_eq!(
        log.count_where("conn_open", syn),
        connections,
        "client SYNs"
    );
    assert_eq!(
        log.count_where("conn_open", syn_ack),
        connections,
        "SYN-ACKs"
    );
    let v6_connections: u64 = plans
        .iter()
        .filter(|p| p.ipv6)
        .map(|p| u64::from(p.connections))
        .sum();
    let v6_syns = log.count_where("conn_open", |e| {
        syn(e) && field_str(e, "src").is_some_and(|s| s.contains(':'))
    });
    assert_eq!(v6_syns, v6_connections, "IPv6 connections");
    assert_eq!(log.count("conn_close"), connections, "conn_close events");
    assert_eq!(
        log.tally("conn_close", "reason"),
        BTreeMap::from([("fin".to_owned(), connections)])
    );
}

/// TCP payload per direction, summed over `flow` events, equals the payload the sending peer's
/// kernel put on the wire (`TCP_INFO`), retransmitted segments included: the tap sees each copy.
/// Without the retransmitted bytes it equals what the sender wrote and the receiver read.
fn assert_flow_bytes(log: &EventLog, peers: &ClientSummary, server: &ServerSummary, drops: &str) {
    let port = u64::from(PORT);
    let tcp = |e: &Value| field_str(e, "proto") == Some("tcp");
    let up = log.sum_where("flow", "payload_bytes", |e| {
        tcp(e) && is_ingress(e) && field_u64(e, "dst_port") == Some(port)
    });
    let down = log.sum_where("flow", "payload_bytes", |e| {
        tcp(e) && is_egress(e) && field_u64(e, "src_port") == Some(port)
    });
    let (up_retrans, down_retrans) = (
        peers.wire_bytes_retransmitted,
        server.wire_bytes_retransmitted,
    );
    if up_retrans + down_retrans > 0 {
        eprintln!(
            "retransmitted payload on the wire: {up_retrans} bytes client→server, \
             {down_retrans} bytes server→client"
        );
    }
    let up_bytes = DirectionBytes {
        name: "client→server",
        sender: "the clients",
        receiver: "the server",
        flows: up,
        wire: peers.wire_bytes_sent,
        retransmitted: up_retrans,
        written: peers.bytes_written,
        read: server.bytes_read,
    };
    up_bytes.assert_exact(drops);
    let down_bytes = DirectionBytes {
        name: "server→client",
        sender: "the server",
        receiver: "the clients",
        flows: down,
        wire: server.wire_bytes_sent,
        retransmitted: down_retrans,
        written: server.bytes_written,
        read: peers.bytes_read,
    };
    down_bytes.assert_exact(drops);
}

/// One direction's payload bytes: as the tap's flows counted them, as the sender's TCP put
/// them on the wire (retransmissions included), and as the peers wrote and read them.
struct DirectionBytes {
    name: &'static str,
    sender: &'static str,
    receiver: &'static str,
    flows: u64,
    wire: u64,
    retransmitted: u64,
    written: u64,
    read: u64,
}

impl DirectionBytes {
    fn assert_exact(&self, drops: &str) {
        let Self {
            name,
            sender,
            receiver,
            flows,
            wire,
            retransmitted,
            written,
            read,
        } = self;
        assert_eq!(
            flows, wire,
            "{name} payload bytes: the flows vs what {sender}' TCP put on the wire \
             (tcpi_bytes_sent, {retransmitted} of them retransmitted); {drops}"
        );
        assert_eq!(
            *flows,
            written + retransmitted,
            "{name} payload bytes: the flows vs {sender} wrote {written} + retransmitted \
             {retransmitted}; {drops}"
        );
        assert_eq!(
            *flows,
            read + retransmitted,
            "{name} payload bytes: the flows vs {receiver} read {read} + {sender} \
             retransmitted {retransmitted}; {drops}"
        );
    }
}

#[test]
fn agent_counts_live_http_exactly_xdp_driver() {
    live_http_counts(XdpMode::Driver, Wire::Clean);
}

#[test]
fn agent_counts_live_http_exactly_xdp_skb() {
    live_http_counts(XdpMode::Skb, Wire::Clean);
}

/// Exact counts even when TCP retransmits: every copy is on the wire, the agent counts each.
#[test]
fn agent_counts_live_http_exactly_with_retransmissions_xdp_skb() {
    live_http_counts(XdpMode::Skb, Wire::LossyAfterTaps);
}

/// Replays a shared capture onto the client veth; the agent in tap mode on the server veth
/// must count the same HTTP messages as `shadowtap-agent replay` on the same file.
/// The live agent's `GET /v1/profile` (rendered every few seconds) against `profile --pcap`.
fn live_profile_matches_replay(pair: &VethPair, original: &Path) {
    let replayed = shadowtap_agent::profile_cmd::from_pcap(
        original,
        None,
        Some(shadowtap_common::DEFAULT_SNAPLEN),
    )
    .expect("profile --pcap");
    let want = timing_free(serde_json::to_value(&replayed).expect("json"));
    assert!(
        want["resources"].as_array().is_some_and(|r| !r.is_empty()),
        "{}: the capture has HTTP requests, so a profile",
        original.display()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = must(api_get(&pair.server, "127.0.0.1:9464", "/v1/profile"));
        let got = status
            .contains("200")
            .then(|| serde_json::from_str::<Value>(&body).expect("profile json"))
            .map(timing_free);
        if got.as_ref() == Some(&want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: live profile differs from the replay's: {}",
            original.display(),
            got.map_or(format!("live answered {status}: {body}"), |g| {
                first_difference(&g, &want, "")
            })
        );
        thread::sleep(Duration::from_millis(500));
    }
}

/// `compare_profiles`: also require the live agent's request profile (`GET /v1/profile`) to
/// equal `profile --pcap` of the capture in everything but timing (see
/// [`live_profile_matches_replay`]).
fn tap_matches_replay(pcap_name: &str, compare_profiles: bool) {
    preflight_agent();
    let tcpreplay = must(require_tool("tcpreplay"));
    let _serial = serial();
    let dir = work_dir("replay");
    let original = must(shared_pcap(pcap_name));
    let capture = must(Pcap::read(&original));
    let frames = capture
        .to_ethernet()
        .unwrap_or_else(|e| panic!("{pcap_name} cannot be replayed on a veth: {e}"));
    let replayable = dir.path().join(pcap_name);
    must(frames.write(&replayable));
    let packets = frames.packets.len() as u64;
    // veth forwards frames up to MTU + Ethernet header (+ one VLAN tag).
    let mtu = u32::try_from(frames.max_captured_len().saturating_sub(14))
        .expect("frame length fits u32")
        .max(1500);

    let expected = must(shadowtap_tests::agent::replay(&original, dir.path(), &[]));
    let expected_requests = expected.tally("http_request", "method");
    let expected_responses = expected.tally("http_response", "status");

    // No addresses and IPv6 off: the kernel itself sends nothing on this link.
    let pair = must(VethPair::create(VethConfig {
        mtu,
        ipv4: false,
        ipv6: false,
    }));
    let agent = start_agent(&pair, CaptureMode::Tap, XdpMode::Driver, dir.path());
    let before = must(pair.client.link_stats(&pair.client_if));
    let output = must(pair.client.run(
        &tcpreplay,
        [
            "--intf1",
            pair.client_if.as_str(),
            "--pps",
            "5000",
            &replayable.to_string_lossy(),
        ],
    ));
    let (sent, failed) = tcpreplay_counts(&String::from_utf8_lossy(&output.stdout));
    let link = must(pair.client.link_stats(&pair.client_if)).since(&before);
    assert_eq!((sent, failed), (packets, 0), "tcpreplay sent/failed");
    assert_eq!(
        link.tx_packets, packets,
        "frames the client veth sent: {link:?}"
    );
    assert_eq!(link.tx_dropped, 0, "frames the veth dropped: {link:?}");

    let caught_up = |log: &EventLog| {
        log.tally("http_request", "method") == expected_requests
            && log.tally("http_response", "status") == expected_responses
    };
    must(agent.wait_for(Duration::from_secs(5), caught_up));
    if compare_profiles {
        live_profile_matches_replay(&pair, &original);
    }
    let exit = must(agent.stop(libc::SIGINT, AGENT_STOP_TIMEOUT));
    assert!(
        exit.status.success(),
        "agent exited with {}; {}",
        exit.status,
        exit.stderr
    );
    let log = &exit.log;
    assert!(
        assert_loss_accounted(log, None),
        "ring buffer overflowed during the replay"
    );
    let stats = log.last_stats().expect("checked above");
    if let Some(ingress_packets) = stats
        .pointer("/kernel/ingress/packets")
        .and_then(Value::as_u64)
    {
        assert_eq!(ingress_packets, packets, "frames the XDP program saw");
    }
    assert_eq!(
        log.tally("http_request", "method"),
        expected_requests,
        "{pcap_name} requests"
    );
    assert_eq!(
        log.tally("http_response", "status"),
        expected_responses,
        "{pcap_name} responses"
    );
    assert!(
        log.of_kind("http_request")
            .chain(log.of_kind("http_response"))
            .all(is_ingress),
        "tap mode sees everything on ingress"
    );
    // Not vacuous: the captures with HTTP in them (all but VlanPackets) yield messages.
    if pcap_name != "VlanPackets.pcap" {
        assert!(
            log.count("http_request") + log.count("http_response") > 0,
            "{pcap_name} carries HTTP, yet neither path found any"
        );
    }
}

#[test]
fn agent_tap_matches_replay_http_packets() {
    tap_matches_replay("http-packets.pcap", true);
}

#[test]
fn agent_tap_matches_replay_650_http_responses() {
    tap_matches_replay("650HttpResponses.pcap", false);
}

#[test]
fn agent_tap_matches_replay_four_ipv6_http_streams() {
    tap_matches_replay("four_ipv6_http_streams.pcap", true);
}

#[test]
fn agent_tap_matches_replay_vlan_packets() {
    tap_matches_replay("VlanPackets.pcap", false);
}

#[test]
fn agent_tap_matches_replay_many_protocols() {
    tap_matches_replay("many-protocols.pcap", true);
}

#[test]
fn agent_tap_matches_replay_tcp_reassembly() {
    tap_matches_replay("tcp-reassembly.pcap", true);
}

#[test]
fn agent_tap_matches_replay_three_http_streams() {
    tap_matches_replay("three_http_streams.pcap", false);
}

/// SIGKILL gives the agent no chance to detach: whatever it attached must go with its file
/// descriptors (BPF links), leaving no XDP or tc program on the interface and no program of its
/// loaded at all. Traffic must keep flowing.
fn sigkill_leaves_nothing_attached(xdp_mode: XdpMode) {
    preflight_agent();
    let _serial = serial();
    let dir = work_dir(&format!("sigkill-{}", xdp_mode.as_arg()));
    let pair = must(VethPair::create(VethConfig::default()));
    let server = start_server(peer(), &pair, dir.path());
    let mut agent = start_agent(&pair, CaptureMode::Host, xdp_mode, dir.path());
    let attached = must(bpf::attachments(&pair.server, &pair.server_if));
    let owned = must(bpf::owned_bpf_objects(agent.pid()));
    let mut prog_ids = attached.prog_ids();
    prog_ids.extend(owned.iter().filter_map(bpf::OwnedBpfObject::prog_id));
    prog_ids.sort_unstable();
    prog_ids.dedup();
    assert!(
        !attached.xdp.is_empty() && attached.has_tc_egress(),
        "{attached:?}"
    );

    // Paced traffic (4 connections x 40 requests, 25 ms apart: about a second) so that the kill
    // lands while packets are flowing through the programs.
    let plan = ClientPlan {
        label: "during-kill",
        ipv6: false,
        connections: 4,
        requests_per_conn: 40,
        pipeline: 1,
        post_bytes: 0,
        parallel: 4,
        think: Duration::from_millis(25),
    };
    let before = must(pair.server.link_stats(&pair.server_if));
    let mut client = spawn_client(peer(), &pair, &plan, dir.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    while must(pair.server.link_stats(&pair.server_if))
        .since(&before)
        .rx_packets
        < 100
    {
        assert!(
            Instant::now() < deadline,
            "no traffic on the veth; {}",
            client.stderr_tail()
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        must(client.try_wait()).is_none(),
        "the client finished before the kill; the plan must last longer"
    );
    let killed = must(agent.kill());
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed),
        Some(libc::SIGKILL),
        "agent should have died of SIGKILL, got {killed}"
    );

    // Links are released when the last fd closes; the kernel frees them asynchronously.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = must(bpf::attachments(&pair.server, &pair.server_if));
        let loaded: Vec<u64> = prog_ids
            .iter()
            .copied()
            .filter(|id| must(bpf::prog_exists(*id)))
            .collect();
        if left.is_empty() && loaded.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "5 s after SIGKILL: still attached {left:?}, still loaded programs {loaded:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let link = must(pair.server.link_json(&pair.server_if));
    assert!(link.get("xdp").is_none(), "ip link still shows XDP: {link}");

    let summary = finish_client(client, Duration::from_secs(45));
    assert_eq!(summary.responses_received, 160, "traffic survived the kill");
    let server = stop_server(server);
    assert_eq!(server.responses_total, 160);
}

#[test]
fn agent_sigkill_leaves_nothing_attached_xdp_driver() {
    sigkill_leaves_nothing_attached(XdpMode::Driver);
}

#[test]
fn agent_sigkill_leaves_nothing_attached_xdp_skb() {
    sigkill_leaves_nothing_attached(XdpMode::Skb);
}
