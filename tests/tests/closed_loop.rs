//! A short closed loop (docs/experiment.md): one compressed day of nyc_taxi, no training, the
//! reactive rule, on a real bed (HAProxy, caching nginx instances, the agent on a veth, the
//! provisioner). The goals are asserted only by the full experiment, which prints them; this
//! checks that the loop closes and that the report agrees with its raw logs, once with the
//! decisions in-process and once through Kafka (nisshi, `shadowtap-collector`, the provisioner
//! on the topics). Needs root.

use std::sync::{Mutex, PoisonError};

use shadowtap_tests::closed_loop::report::RunReport;
use shadowtap_tests::closed_loop::{self, BedConfig, Strategy, Transport};
use shadowtap_tests::netns::list_namespaces;

/// Both runs use the same ports in namespaces of their own, but share two cores: one at a time.
static ONE_BED: Mutex<()> = Mutex::new(());

/// Runs the quick day and, still holding the bed lock (the next run's namespaces would be
/// counted otherwise), lists this process's namespaces that were left behind.
fn run_quick(transport: Transport) -> (RunReport, Vec<String>) {
    let _one = ONE_BED.lock().unwrap_or_else(PoisonError::into_inner);
    let config = BedConfig::quick();
    let series_path = shadowtap_tests::support::shared_data_dir()
        .expect("shared data")
        .join("series/nyc_taxi.csv");
    let series = config.load_series(&series_path).expect("series");
    let report =
        closed_loop::run_one(&config, &series, Strategy::Reactive, transport).expect("the run");
    let pid = format!("stap-{}-", std::process::id());
    let left = list_namespaces()
        .expect("ip netns list")
        .into_iter()
        .filter(|n| n.starts_with(&pid))
        .collect();
    (report, left)
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn reactive_loop_follows_a_compressed_day() {
    if !is_root() {
        eprintln!("SKIP reactive_loop_follows_a_compressed_day: needs root");
        return;
    }
    let (report, left) = run_quick(Transport::InProcess);
    assert_loop_closed(&report, &left);
    assert_eq!(report.collector_lifecycle_applied, None);
}

#[test]
fn reactive_loop_closes_through_kafka() {
    if !is_root() {
        eprintln!("SKIP reactive_loop_closes_through_kafka: needs root");
        return;
    }
    let (report, left) = run_quick(Transport::Kafka);
    assert_loop_closed(&report, &left);
    // The provisioner's lifecycle events went back through `shadowtap.lifecycle` and the
    // collector applied them: the bootstrap's stages and every scale event's.
    let applied = report
        .collector_lifecycle_applied
        .expect("collector metrics");
    assert!(
        applied >= report.scale_events_run,
        "collector applied {applied} lifecycle events for {} scale events",
        report.scale_events_run
    );
}

fn assert_loop_closed(report: &RunReport, left: &[String]) {
    eprintln!(
        "{}",
        serde_json::to_string(&serde_json::json!({
            "slo_violation_seconds": report.slo_violation_seconds,
            "failed": report.failed_requests,
            "instance_seconds": report.instance_seconds,
            "scale_events": report.scale_events,
            "new_instances": report.new_instances,
        }))
        .expect("json")
    );

    // Every second was measured and the answers add up to what loadgen completed.
    assert_eq!(report.measured_seconds, 48, "{report:#?}");
    let answered: u64 = report.per_second.iter().map(|s| s.responses).sum();
    assert_eq!(answered, report.requests_completed);
    assert!(
        report.requests_completed > 1000,
        "{}",
        report.requests_completed
    );
    assert!(report.slo_violation_seconds <= report.measured_seconds);

    // Instance counts move with demand: more at the busiest quarter than at the quietest.
    let mut by_demand: Vec<_> = report
        .per_second
        .iter()
        .filter(|s| (s.at_s as f64) < report.measured_to_s)
        .cloned()
        .collect();
    by_demand.sort_by(|a, b| a.scheduled_rps.total_cmp(&b.scheduled_rps));
    let quarter = by_demand.len() / 4;
    let mean = |s: &[closed_loop::report::Second]| {
        s.iter().map(|x| x.instances).sum::<f64>() / s.len() as f64
    };
    let (quiet, busy) = (
        mean(&by_demand[..quarter]),
        mean(&by_demand[by_demand.len() - quarter..]),
    );
    assert!(
        busy >= quiet + 1.0,
        "instances quiet {quiet:.2}, busy {busy:.2}"
    );
    assert!(report.scale_events >= 2, "{}", report.scale_events);

    // Instance-seconds are the per-second means summed (the same samples, two ways).
    let summed: f64 = report
        .per_second
        .iter()
        .filter(|s| (s.at_s as f64) < report.measured_to_s)
        .map(|s| s.instances)
        .sum();
    assert!(
        (summed - report.instance_seconds).abs() <= 0.05 * report.instance_seconds,
        "{summed} vs {}",
        report.instance_seconds
    );

    // Scale-outs added instances whose first window was counted from their access logs.
    assert!(
        report
            .new_instances
            .iter()
            .any(|n| n.first_window_requests > 0),
        "{:#?}",
        report.new_instances
    );

    // The bed is gone: no namespace of this process is left.
    assert!(left.is_empty(), "{left:?}");
}
