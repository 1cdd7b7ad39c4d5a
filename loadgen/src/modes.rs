//! The command line's shadow-traffic modes: a request profile as the request source and rate
//! curve, a forecast as the rate curve, what-if scenarios against a baseline, and fault
//! injection.

use std::{
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use shadowtap_core::{
    decision::PolicySet,
    profile::{Fidelity, ResourceProfile},
};
use shadowtap_loadgen::{
    ArrivalKind, ConstantRate, RateCurve, Schedule,
    faults::{FaultKind, FaultOptions, FaultReport, PacketOptions, run_fault},
    generate::{ForecastBound, ForecastCurve, HourOfWeekCurve, ProfileSource},
    parse_positive_duration,
    plan::{Compressed, MixedSource, SharedSource, load_profile},
    scenario::Scenario,
};

use crate::{Cli, emit, run_once, usage};

/// Flags of profile-driven runs, scenarios and faults.
#[derive(clap::Args)]
pub(crate) struct ShadowArgs {
    /// Generate requests from this request profile (`shadowtap-agent profile`): templates,
    /// parameter values, sizes and per-connection sequences as learned.
    #[arg(long, value_name = "FILE", help_heading = "Shadow traffic")]
    pub profile: Option<PathBuf>,
    /// The profile's resource to replay (needed when it holds several).
    #[arg(long, value_name = "ID", help_heading = "Shadow traffic")]
    pub resource: Option<String>,
    /// Randomness of generative replay: 0 the most likely mix deterministically, 1 as
    /// learned, above 1 flatter (rarer endpoints and values more often).
    #[arg(
        long,
        default_value_t = 1.0,
        allow_negative_numbers = true,
        help_heading = "Shadow traffic"
    )]
    pub temperature: f64,
    /// Time compression of --rate profile / forecast and of scenarios (60: an hour in a
    /// minute). Rates are the curve's own.
    #[arg(long, default_value_t = 1.0, help_heading = "Shadow traffic")]
    pub speed: f64,
    /// Multiplies the rate of --rate profile / forecast.
    #[arg(long, default_value_t = 1.0, help_heading = "Shadow traffic")]
    pub rate_scale: f64,
    /// Hour-of-week slot where --rate profile starts (0 = Monday 00:00 UTC) [default: now].
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..168), help_heading = "Shadow traffic")]
    pub start_hour: Option<u16>,
    /// With --rate forecast: a running agent's API (http://127.0.0.1:9464) whose
    /// /v1/resources/{--resource}/forecast is followed.
    #[arg(long, value_name = "URL", help_heading = "Shadow traffic")]
    pub from_forecast: Option<String>,
    /// Which line of the forecast to follow.
    #[arg(
        long,
        value_enum,
        default_value = "upper",
        help_heading = "Shadow traffic"
    )]
    pub forecast_bound: ForecastBound,
    /// Run this what-if scenario (TOML) after a baseline run, both for --duration, and
    /// report them side by side. Needs --profile.
    #[arg(long, value_name = "FILE", help_heading = "What-if")]
    pub scenario: Option<PathBuf>,
    /// With --scenario: a decision policy (TOML, as the agent's) for the capacity answer.
    #[arg(long, value_name = "FILE", help_heading = "What-if")]
    pub policy: Option<PathBuf>,
    /// With --policy: the demand step the policy's capacity is given in.
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration, help_heading = "What-if")]
    pub policy_step: Duration,
    /// With --policy: instances running when the scenario starts.
    #[arg(long, default_value_t = 1, help_heading = "What-if")]
    pub instances: u32,
    /// Bottleneck report: run this many steps from --rate / N up to --rate, each for
    /// --duration, and name the templates whose latency grows fastest. Needs --profile.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=20), help_heading = "What-if")]
    pub bottleneck_steps: Option<u32>,
    /// Inject this fault instead of load (repeatable); outcomes are counted per kind.
    #[arg(
        long = "fault",
        value_enum,
        value_name = "KIND",
        help_heading = "Faults"
    )]
    pub faults: Vec<FaultKind>,
    /// Times each --fault is run.
    #[arg(long, default_value_t = 1, help_heading = "Faults")]
    pub fault_count: u32,
    /// Packet-level faults: the interface to send on (inside the client's namespace).
    #[arg(long, value_name = "IFACE", help_heading = "Faults")]
    pub fault_iface: Option<String>,
    /// Packet-level faults: an unused IPv4 address of that interface's subnet to send from.
    #[arg(long, value_name = "IPV4", help_heading = "Faults")]
    pub fault_source: Option<std::net::Ipv4Addr>,
}

/// A profile source the caller keeps, for the fidelity report.
pub(crate) type SharedProfile = SharedSource;

/// What the runner sends.
pub(crate) enum Source {
    Fixed,
    Profile(SharedSource),
    Mixed(MixedSource),
}

pub(crate) fn profile(cli: &Cli) -> Result<Option<ResourceProfile>> {
    let Some(path) = &cli.shadow.profile else {
        if cli.shadow.scenario.is_some() {
            usage("--scenario needs --profile (the traffic it changes)");
        }
        if matches!(cli.rate, shadowtap_loadgen::Rate::Profile) {
            usage("--rate profile needs --profile");
        }
        return Ok(None);
    };
    let t = cli.shadow.temperature;
    if !(t.is_finite() && t >= 0.0) {
        usage(&format!("--temperature {t}: must be a finite number ≥ 0"));
    }
    if cli.path.is_some() || cli.body_size > 0 || cli.method != "GET" {
        usage("--profile chooses methods, paths and sizes; drop --method, --path, --body-size");
    }
    Ok(Some(load_profile(path, cli.shadow.resource.as_deref())?))
}

/// The Host to send with profile traffic: --host, else the profile's, else the target's.
fn host(cli: &Cli, profile: &ResourceProfile) -> String {
    cli.host
        .clone()
        .or_else(|| profile.host.clone())
        .unwrap_or_else(|| cli.target.authority.clone())
}

pub(crate) fn source(cli: &Cli, profile: Option<&ResourceProfile>) -> Result<Source> {
    Ok(match profile {
        None => Source::Fixed,
        Some(p) => Source::Profile(SharedSource(Arc::new(Mutex::new(ProfileSource::new(
            p,
            &host(cli, p),
            cli.shadow.temperature,
        )?)))),
    })
}

pub(crate) fn profile_curve(cli: &Cli, profile: Option<&ResourceProfile>) -> Box<dyn RateCurve> {
    let Some(p) = profile else {
        usage("--rate profile needs --profile");
    };
    let slot = cli
        .shadow
        .start_hour
        .map_or_else(HourOfWeekCurve::current_slot, usize::from);
    Box::new(HourOfWeekCurve::new(
        &p.hour_of_week,
        slot,
        speed(cli),
        cli.shadow.rate_scale,
    ))
}

fn speed(cli: &Cli) -> f64 {
    let s = cli.shadow.speed;
    if !(s.is_finite() && s > 0.0) {
        usage("--speed must be a positive number");
    }
    s
}

pub(crate) fn forecast_curve(cli: &Cli) -> Result<Box<dyn RateCurve>> {
    let (Some(url), Some(id)) = (&cli.shadow.from_forecast, &cli.shadow.resource) else {
        usage("--rate forecast needs --from-forecast URL and --resource ID");
    };
    let path = format!(
        "/v1/resources/{}/forecast",
        shadowtap_core::http_client::percent_encode(id)
    );
    let body = shadowtap_core::http_client::get(url, &path)?;
    let curve = ForecastCurve::from_decision_json(&body, cli.shadow.forecast_bound, speed(cli))
        .with_context(|| format!("forecast from {url}{path}"))?;
    let scale = cli.shadow.rate_scale;
    Ok(Box::new(Scaled { curve, scale }))
}

struct Scaled<C> {
    curve: C,
    scale: f64,
}

impl<C: RateCurve> RateCurve for Scaled<C> {
    fn rate_at(&self, elapsed: Duration) -> f64 {
        self.curve.rate_at(elapsed) * self.scale
    }
    fn integration_step(&self) -> Duration {
        self.curve.integration_step()
    }
    fn describe(&self) -> String {
        self.curve.describe()
    }
}

pub(crate) fn print_fidelity(out: &mut dyn Write, f: &Fidelity) -> std::io::Result<()> {
    writeln!(
        out,
        "fidelity to the profile: template mix JSD {:.4} (goal ≤ 0.05), request size KS {:.3} \
         (≤ 0.1), requests/connection KS {:.3}, mean ratio {:.3}: {}",
        f.template_mix_jsd,
        f.request_bytes_ks,
        f.requests_per_connection_ks,
        f.requests_per_connection_mean_ratio,
        if f.meets_goals() { "met" } else { "NOT met" }
    )
}

/// Baseline, then the scenario, side by side; the capacity answer with --policy.
pub(crate) fn scenario(
    cli: &Cli,
    profile: Option<&ResourceProfile>,
    arrivals: ArrivalKind,
) -> Result<()> {
    let (Some(path), Some(profile)) = (&cli.shadow.scenario, profile) else {
        usage("--scenario needs --profile");
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading scenario {}", path.display()))?;
    let scenario = Scenario::from_toml(&text, profile)
        .with_context(|| format!("scenario {}", path.display()))?;
    let base = match cli.rate {
        shadowtap_loadgen::Rate::PerSecond(r) => r,
        shadowtap_loadgen::Rate::Profile => profile.arrivals.mean_rate_per_s,
        _ => usage("--scenario needs --rate N (the baseline rate) or --rate profile"),
    };
    if base.is_nan() || base <= 0.0 {
        bail!("the baseline rate is 0: give --rate N");
    }
    let baseline = run_once(
        cli,
        Schedule::Open {
            curve: Box::new(ConstantRate::new(base)),
            arrivals,
        },
        source(cli, Some(profile))?,
        cli.duration,
    )?
    .0;
    let mixed = MixedSource::new(&scenario.populations(profile), &host(cli, profile))?;
    let what_if = run_once(
        cli,
        Schedule::Open {
            curve: Box::new(Compressed {
                curve: scenario.curve(base),
                speed: speed(cli),
            }),
            arrivals,
        },
        Source::Mixed(mixed),
        cli.duration,
    )?
    .0;
    let capacity = match &cli.shadow.policy {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading policy {}", p.display()))?;
            let policy = PolicySet::from_toml(&text)
                .with_context(|| format!("policy {}", p.display()))?
                .policy_for(&profile.resource)
                .with_context(|| format!("policy {} for {}", p.display(), profile.resource))?;
            Some(scenario.capacity(base, &policy, cli.shadow.policy_step, cli.shadow.instances))
        }
    };
    let mut text = Vec::new();
    writeln!(text, "== baseline ({base:.1} req/s)")?;
    baseline.print(&mut text)?;
    writeln!(text, "\n== scenario {:?}", scenario.name)?;
    what_if.print(&mut text)?;
    let row = |r: &shadowtap_loadgen::Report| {
        format!(
            "{:>10.1} {:>10.2} {:>10.2} {:>10.2} {:>8}",
            r.throughput.achieved_rps,
            r.latency.corrected.p50_us as f64 / 1000.0,
            r.latency.corrected.p99_us as f64 / 1000.0,
            r.latency.corrected.p999_us as f64 / 1000.0,
            r.errors.total
        )
    };
    writeln!(
        text,
        "\n{:<10} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"
    )?;
    writeln!(text, "{:<10} {}", "baseline", row(&baseline))?;
    writeln!(text, "{:<10} {}", "scenario", row(&what_if))?;
    if let Some(c) = &capacity {
        writeln!(
            text,
            "capacity: peak {:.1} req/s needs {} instances{}",
            c.peak_rate,
            c.needed_instances,
            c.provision_by_s.map_or(String::new(), |s| format!(
                ", first scale-out asked at +{s} s"
            )),
        )?;
    }
    let json = serde_json::json!({
        "scenario": scenario,
        "baseline": baseline,
        "what_if": what_if,
        "capacity": capacity,
    });
    emit(cli, &text, &json)
}

/// Each --fault --fault-count times against the target; outcomes counted per kind.
pub(crate) fn faults(cli: &Cli) -> Result<()> {
    let mut opts = FaultOptions {
        timeout: cli.timeout.max(Duration::from_secs(5)),
        ..FaultOptions::default()
    };
    if let (Some(iface), Some(source)) = (&cli.shadow.fault_iface, cli.shadow.fault_source) {
        opts.packet = Some(PacketOptions::new(iface.clone(), source));
    }
    let host = cli
        .host
        .clone()
        .unwrap_or_else(|| cli.target.authority.clone());
    let path = cli.path.clone().unwrap_or_else(|| cli.target.path.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut report = FaultReport::default();
    for kind in &cli.shadow.faults {
        for _ in 0..cli.shadow.fault_count {
            let result = runtime.block_on(run_fault(*kind, cli.target.addr, &host, &path, &opts));
            report.record_result(*kind, &result);
        }
    }
    let text = format!("{report}\n");
    emit(cli, text.as_bytes(), &serde_json::to_value(&report)?)
}

/// The rate stepped up to --rate in --bottleneck-steps steps; per template p99 per step.
pub(crate) fn bottleneck(
    cli: &Cli,
    profile: Option<&ResourceProfile>,
    arrivals: ArrivalKind,
    steps: u32,
) -> Result<()> {
    let Some(profile) = profile else {
        usage("--bottleneck-steps needs --profile (its templates are what is compared)");
    };
    let shadowtap_loadgen::Rate::PerSecond(top) = cli.rate else {
        usage("--bottleneck-steps needs --rate N (the highest step's rate)");
    };
    let mut results = Vec::new();
    for k in 1..=steps {
        let rate = top * f64::from(k) / f64::from(steps);
        let source = source(cli, Some(profile))?;
        let Source::Profile(shared) = &source else {
            unreachable!("a profile gives a profile source");
        };
        let shared = shared.clone();
        let (report, _) = run_once(
            cli,
            Schedule::Open {
                curve: Box::new(ConstantRate::new(rate)),
                arrivals,
            },
            source,
            cli.duration,
        )?;
        let latency = shared
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .template_latency();
        results.push(shadowtap_loadgen::bottleneck::Step {
            rate,
            achieved: report.throughput.achieved_rps,
            templates: latency
                .into_iter()
                .map(|(t, responses, p50_us, p99_us)| {
                    (
                        t,
                        shadowtap_loadgen::bottleneck::StepLatency {
                            responses,
                            p50_us,
                            p99_us,
                        },
                    )
                })
                .collect(),
        });
    }
    let report = shadowtap_loadgen::bottleneck::analyse(profile, results);
    let mut text = Vec::new();
    report.print(&mut text)?;
    emit(cli, &text, &serde_json::to_value(&report)?)
}
