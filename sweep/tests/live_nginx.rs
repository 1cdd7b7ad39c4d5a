//! Real nginx trials with cgroup limits (needs root, `ip`, nginx: `cargo xtask setup`).
//! Checks KPIs are sane, a configuration nginx refuses is a failed trial (not a crash), and
//! that no cgroup or namespace of this process is left afterwards.

use std::path::Path;

use shadowtap_sweep::catalogue::Catalogue;
use shadowtap_sweep::runner::{LoadSpec, Runner, RunnerOptions, cgroup, netns};
use shadowtap_sweep::trial::{KpiName, Objective, ParamValue, Params};

fn catalogue() -> Catalogue {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sweep/nginx-proxy-cache.toml");
    Catalogue::load(&path).expect("nginx catalogue")
}

#[test]
fn real_nginx_trials_measure_fail_cleanly_and_leave_nothing() {
    let cat = catalogue();
    let grid = cat.grid();
    let good: Params = grid
        .iter()
        .find(|p| {
            p["proxy_buffering"] == ParamValue::Choice("on".into())
                && p["worker_connections"] == ParamValue::Int(1024)
                && p["keepalive_timeout_s"] == ParamValue::Int(65)
                && p["gzip_comp_level"] == ParamValue::Int(1)
                && p["proxy_cache_max_size_mb"] == ParamValue::Int(256)
        })
        .expect("a good grid point")
        .clone();
    let mut unbuffered = good.clone();
    unbuffered.insert("proxy_buffering".into(), ParamValue::Choice("off".into()));
    // nginx refuses to start with fewer worker connections than it has listeners to serve
    // ("1 worker_connections are not enough"): the trial must come back failed.
    let mut broken = good.clone();
    broken.insert("worker_connections".into(), ParamValue::Int(1));
    let mut load = LoadSpec::preset("current").expect("preset");
    load.rate_rps = 300.0;
    let runner = Runner::new(
        cat,
        Objective {
            kpi: KpiName::P99Ms,
            max_error_rate: 0.01,
        },
        RunnerOptions {
            core_budget: 1.0,
            ..RunnerOptions::default()
        },
    );
    let outcomes = runner.run_batch(&[
        (good.clone(), load.clone()),
        (unbuffered, load.clone()),
        (broken, load.clone()),
    ]);
    let [good_o, unbuffered_o, broken_o] = &outcomes[..] else {
        panic!("three outcomes expected, got {outcomes:?}");
    };
    for o in [good_o, unbuffered_o] {
        assert!(o.failure.is_none(), "trial failed: {o:?}");
        let k = &o.kpis;
        assert!(k.error_rate < 0.05, "errors: {k:?}");
        assert!(
            k.p50_ms > 0.0 && k.p50_ms <= k.p99_ms && k.p99_ms <= k.p999_ms,
            "{k:?}"
        );
        assert!(
            k.throughput_rps > 200.0 && k.throughput_rps < 400.0,
            "{k:?}"
        );
        assert!(
            k.cpu_cores > 0.0 && k.cpu_cores <= 0.5 * 1.2,
            "cgroup CPU: {k:?}"
        );
        assert!(
            k.rss_bytes > 1 << 20 && k.rss_bytes <= 256 << 20,
            "cgroup memory: {k:?}"
        );
    }
    // Without buffering nginx does not cache: every request waits for the 20 ms origin.
    if !unbuffered_o.early_stopped {
        assert!(unbuffered_o.kpis.p50_ms >= 20.0, "{unbuffered_o:?}");
    }
    assert!(
        good_o.kpis.p50_ms < unbuffered_o.kpis.p50_ms,
        "cache hits should be faster: {good_o:?} vs {unbuffered_o:?}"
    );
    let failure = broken_o
        .failure
        .as_deref()
        .expect("the broken trial must fail");
    assert!(
        failure.contains("worker_connections") || failure.contains("did not start"),
        "{failure}"
    );
    assert!(
        cgroup::own_leftovers().is_empty(),
        "{:?}",
        cgroup::own_leftovers()
    );
    assert!(
        netns::own_leftovers().is_empty(),
        "{:?}",
        netns::own_leftovers()
    );
}
