//! Live tests of the test harness itself, no agent: namespaces are created and removed (also
//! after a panic), the HTTP peers agree across the veth, and the attached-program detector
//! sees XDP and tc programs. They need root, iproute2, bpftool and llc; when one is missing
//! they fail saying so.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use shadowtap_tests::bpf;
use shadowtap_tests::netns::{VethConfig, VethPair, list_namespaces, sweep_stale_namespaces};
use shadowtap_tests::peer::ClientSummary;
use shadowtap_tests::scenario::{
    HOSTS, assert_peers_agree, must, preflight_net, run_client, serial, start_server, stop_server,
    total_of, traffic_plan, work_dir,
};
use shadowtap_tests::support::require_tool;

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
    let obj = must(bpf::compile_ir(
        DUMMY_PROGRAMS_IR,
        &dir.path().join("dummy"),
    ));
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
