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
use shadowtap_tests::netns::{VethConfig, VethPair};
use shadowtap_tests::peer::{ClientSummary, ServerSummary};
use shadowtap_tests::scenario::{
    ClientPlan, PORT, assert_loss_accounted, assert_peers_agree, finish_client, is_egress,
    is_ingress, must, preflight_agent, run_client, serial, spawn_client, start_agent,
    start_agent_with, start_server, stats_number, stop_agent_cleanly, stop_server, total_of,
    traffic_plan, work_dir,
};
use shadowtap_tests::support::require_tool;

fn peer() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_shadowtap-httppeer"))
}

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
fn drop_data_frames_after_the_taps(pair: &VethPair, dir: &Path) {
    let tc = must(require_tool("tc"));
    let obj = must(bpf::compile_ir(LOSSY_TC_IR, &dir.join("lossy")));
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

/// `flow_slots`: the agent's `--flow-entries` (default when `None`).
fn live_http_counts(xdp_mode: XdpMode, wire: Wire, flow_slots: Option<u32>) {
    preflight_agent();
    let _serial = serial();
    let label = match (wire, flow_slots) {
        (Wire::Clean, None) => "http",
        (Wire::Clean, Some(_)) => "http-slots",
        (Wire::LossyAfterTaps, _) => "http-lossy",
    };
    let dir = work_dir(&format!("{label}-{}", xdp_mode.as_arg()));
    let pair = must(VethPair::create(VethConfig::default()));
    let server = start_server(peer(), &pair, dir.path());
    let extra = flow_slots.map_or_else(Vec::new, |n| vec!["--flow-entries".into(), n.to_string()]);
    let agent = start_agent_with(&pair, CaptureMode::Host, xdp_mode, dir.path(), extra);
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
    let exit = stop_agent_cleanly(agent);
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

    if flow_slots.is_some() {
        let stats = log.last_stats().expect("stats line");
        let evictions = stats_number(stats, "flow_evictions");
        assert!(evictions > 0, "no flow slot changed hands: {stats}");
        assert_eq!(
            stats_number(stats, "flow_evictions_received"),
            evictions,
            "flushed slots the agent did not read: {stats}"
        );
        assert_eq!(stats_number(stats, "flow_update_failed"), 0, "{stats}");
    }
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
    live_http_counts(XdpMode::Driver, Wire::Clean, None);
}

#[test]
fn agent_counts_live_http_exactly_xdp_skb() {
    live_http_counts(XdpMode::Skb, Wire::Clean, None);
}

/// Exact flow bytes when the connections take turns in a two-slot flow cache: every flow's
/// slot is flushed to the agent many times over, and its totals must still come out exact.
#[test]
fn agent_counts_live_http_exactly_through_a_two_slot_flow_cache() {
    live_http_counts(XdpMode::Skb, Wire::Clean, Some(2));
}

/// Exact counts even when TCP retransmits: every copy is on the wire, the agent counts each.
#[test]
fn agent_counts_live_http_exactly_with_retransmissions_xdp_skb() {
    live_http_counts(XdpMode::Skb, Wire::LossyAfterTaps, None);
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
