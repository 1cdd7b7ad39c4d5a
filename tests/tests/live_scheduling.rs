//! The agent yields the CPU to the host's workload (`--scheduling yield`, an option: its
//! loop runs in the idle scheduling class) and still reads every record when the workload
//! leaves it no CPU at all: every core runs a busy loop at normal priority while a client
//! sends a burst through a small ring.
//!
//! The control run shows that the scenario really starves an idle-class loop: with nothing to
//! bring it back to the normal class (`--scheduling idle`, hidden, for tests), the ring
//! overflows and the kernel counts the loss. The default must lose nothing and count exactly.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use shadowtap_tests::agent::{AgentConfig, RunningAgent};
use shadowtap_tests::events::EventLog;
use shadowtap_tests::netns::{VethConfig, VethPair};
use shadowtap_tests::peer::ClientSummary;
use shadowtap_tests::scenario::{
    AGENT_ATTACH_TIMEOUT, ClientPlan, assert_loss_accounted, must, preflight_agent, run_client,
    serial, start_server, stats_number, stop_agent_cleanly, stop_server, work_dir,
};

fn peer() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_shadowtap-httppeer"))
}

/// Two busy loops per core at normal priority, killed on drop (also when the test panics).
/// Two, not one: an idle-class thread's share of a core shrinks with every competitor (weight
/// 3 against 1,024 each), and with one per core a release build of the agent, which drains a
/// 1 MiB ring in one short slice, sometimes kept up even in the idle class (2 runs in 20).
struct Hogs(Vec<Child>);

impl Hogs {
    fn start() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self(
            (0..2 * cores)
                .map(|_| {
                    let mut cmd = Command::new("sh");
                    cmd.args(["-c", "while :; do :; done"]).stdin(Stdio::null());
                    // SAFETY: only async-signal-safe prctl between fork and exec. The loops
                    // die with the thread that started them, even if the test is SIGKILLed.
                    unsafe {
                        cmd.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        });
                    }
                    cmd.spawn().expect("spawning a busy loop")
                })
                .collect(),
        )
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// 12,000 keep-alive requests on 8 connections, each pausing 2 ms between requests: about
/// 24,000 records over 3–4 s, six times what a 1 MiB ring holds, at a pace (a few thousand
/// records a second) that even a debug build of the agent keeps up with in the normal class
/// on hogged cores, and an idle-class loop, which gets a fraction of a percent of a hogged
/// core, cannot.
fn burst() -> ClientPlan {
    ClientPlan {
        label: "burst",
        ipv6: false,
        connections: 8,
        requests_per_conn: 1_500,
        pipeline: 1,
        post_bytes: 0,
        parallel: 8,
        think: std::time::Duration::from_millis(2),
    }
}

/// The burst through an agent with `--scheduling how` and a 1 MiB ring, every core hogged
/// while the client runs.
/// Returns the client's summary, the agent's output, the segments TCP retransmitted and the
/// agent's log lines about its scheduling class (for failure messages).
fn burst_under_hogs(how: &str) -> (ClientSummary, EventLog, u64, String) {
    preflight_agent();
    let dir = work_dir(&format!("sched-{how}"));
    let pair = must(VethPair::create(VethConfig::default()));
    let server = start_server(peer(), &pair, dir.path());
    // As the daemon runs by default: stats, no per-request event stream.
    let config = AgentConfig::host_driver(
        &pair.server_if,
        &["--ringbuf-size", "1", "--scheduling", how],
    );
    let mut agent = must(RunningAgent::start_stats_only(
        &pair.server,
        &config,
        dir.path(),
    ));
    must(agent.wait_attached(&pair.server, AGENT_ATTACH_TIMEOUT));
    let retransmits = || must(pair.client.tcp_retransmits()) + must(pair.server.tcp_retransmits());
    let retransmits_before = retransmits();
    let client = {
        let _hogs = Hogs::start();
        run_client(peer(), &pair, &burst(), dir.path())
    };
    let _server = stop_server(server);
    let exit = stop_agent_cleanly(agent);
    let moves = exit
        .stderr
        .lines()
        .filter(|l| l.contains("scheduling class"))
        .collect::<Vec<_>>()
        .join("\n");
    (client, exit.log, retransmits() - retransmits_before, moves)
}

#[test]
fn a_yielding_agent_on_hogged_cores_reads_every_record_and_idle_alone_would_not() {
    let _serial = serial();

    // Control: the idle class with nothing to bring the loop back loses records, counted.
    let (client, log, _, _) = burst_under_hogs("idle");
    let stats = log.last_stats().expect("final stats line").clone();
    let failed = stats_number(&stats, "ringbuf_reserve_failed");
    assert_eq!(client.requests_sent, 12_000);
    assert!(
        failed > 0,
        "the hogs did not starve an idle-class agent enough to overflow a 1 MiB ring, so this \
         test shows nothing about the watchdog: {stats}"
    );
    assert!(!assert_loss_accounted(&log, None));
    assert_eq!(stats_number(&stats, "scheduling_promotions"), 0, "{stats}");
    eprintln!("control (idle class only): {failed} records lost to a full ring, all counted");

    // The default: promoted back to the normal class while the ring fills; nothing lost.
    let (client, log, retransmitted, moves) = burst_under_hogs("yield");
    let stats = log.last_stats().expect("final stats line").clone();
    let promotions = stats_number(&stats, "scheduling_promotions");
    assert!(
        promotions > 0,
        "the loop was never moved back to the normal class: {stats}"
    );
    let expected = 4 * client.connections_opened + client.requests_sent + client.responses_received;
    // A retransmitted SYN, FIN or head is a real segment the tap sees again: one record more.
    let lossless = assert_loss_accounted(&log, Some((expected, retransmitted)));
    assert!(
        lossless,
        "the yielding agent lost records: {stats}\nits moves between classes:\n{moves}"
    );
    // The tracker paired every request with its response.
    assert_eq!(
        stats_number(&stats, "requests"),
        client.requests_sent,
        "{stats}"
    );
    assert_eq!(
        stats_number(&stats, "paired_responses"),
        client.responses_received,
        "{stats}"
    );
    eprintln!("yield: {promotions} promotions, 0 records lost, exact counts");
}
