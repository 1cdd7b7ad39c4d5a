//! `shadowtap-closed-loop`: the closed-loop experiment of issue 14 (docs/experiment.md).
//! Run through `cargo xtask experiment closed-loop [--json] [--quick]`; needs root.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Parser;
use shadowtap_tests::closed_loop::{
    self, BedConfig, Strategy, Transport, plot, report::Experiment,
};

#[derive(Parser)]
#[command(
    name = "shadowtap-closed-loop",
    about = "Reactive vs predictive scaling, closed loop"
)]
struct Args {
    /// Print the report as JSON on stdout (the table goes to stderr).
    #[arg(long)]
    json: bool,
    /// No training days: a short run for smoke tests (the predictive runs then decide cold).
    #[arg(long)]
    quick: bool,
    /// Runs, in order (default: all three).
    #[arg(long = "run", value_parser = Strategy::parse)]
    runs: Vec<Strategy>,
    /// Also run this strategy once through Kafka (nisshi, `shadowtap-collector`, the
    /// provisioner consuming and producing topics); `none` to skip.
    #[arg(long, default_value = "predictive+prewarm", value_parser = KafkaRun::parse)]
    kafka_run: KafkaRun,
    /// The demand series (default: the shared nyc_taxi.csv).
    #[arg(long)]
    series: Option<PathBuf>,
    /// Whole days skipped from the series' first midnight (default: 6 for the full run, so
    /// that nyc_taxi's measured day is an ordinary Friday, not Independence Day; 0 with
    /// `--quick`).
    #[arg(long)]
    skip_days: Option<usize>,
    /// The predictive policy's headroom (default 0, the policy's default).
    #[arg(long)]
    headroom: Option<f64>,
    /// Where the report and the plot go.
    #[arg(long, default_value = "target/experiments/closed-loop")]
    out: PathBuf,
}

/// The `--kafka-run` value: a strategy, or none. A newtype, not `Option<Strategy>`: clap
/// stores an `Option` field's inner type, so a parser returning `Option` panics at access.
#[derive(Clone, Debug, PartialEq)]
struct KafkaRun(Option<Strategy>);

impl KafkaRun {
    fn parse(text: &str) -> Result<Self> {
        if text == "none" {
            return Ok(Self(None));
        }
        Strategy::parse(text).map(|s| Self(Some(s)))
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut config = if args.quick {
        BedConfig::quick()
    } else {
        BedConfig::full()
    };
    if let Some(days) = args.skip_days {
        config.skip_days = days;
    }
    if let Some(headroom) = args.headroom {
        config.headroom = headroom;
    }
    let series_path = match &args.series {
        Some(p) => p.clone(),
        None => shadowtap_tests::support::shared_data_dir()
            .context("shared data")?
            .join("series/nyc_taxi.csv"),
    };
    let series = config.load_series(&series_path)?;
    let runs = if args.runs.is_empty() {
        Strategy::ALL.to_vec()
    } else {
        args.runs.clone()
    };
    let mut plan: Vec<(Strategy, Transport)> = runs
        .into_iter()
        .map(|s| (s, Transport::InProcess))
        .collect();
    if let Some(s) = args.kafka_run.0 {
        plan.push((s, Transport::Kafka));
    }
    let mut reports = Vec::new();
    for (strategy, transport) in plan {
        eprintln!(
            "closed-loop: running {} ({}) …",
            strategy.name(),
            transport.name()
        );
        match closed_loop::run_keeping_logs(&config, &series, strategy, transport, Some(&args.out))
        {
            Ok(r) => {
                eprintln!(
                    "closed-loop: {}: {} SLO-violation s, {} failed, {:.1} instance-s",
                    r.label(),
                    r.slo_violation_seconds,
                    r.failed_requests,
                    r.instance_seconds
                );
                reports.push(r);
            }
            Err(e) => eprintln!("closed-loop: {} failed: {e:#}", strategy.name()),
        }
    }
    let exp = Experiment::new(config, reports);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json = serde_json::to_string_pretty(&exp).context("encoding the report")?;
    std::fs::write(args.out.join("report.json"), &json).context("writing report.json")?;
    std::fs::write(args.out.join("closed-loop.svg"), plot::svg(&exp))
        .context("writing the plot")?;
    eprint!("{}", exp.table());
    eprintln!("report and plot: {}", args.out.display());
    if args.json {
        println!("{json}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{Args, KafkaRun, Strategy};

    #[test]
    fn kafka_run_defaults_to_predictive_with_prewarm_and_takes_none() {
        let args = Args::try_parse_from(["shadowtap-closed-loop"]).expect("defaults parse");
        assert_eq!(args.kafka_run, KafkaRun(Some(Strategy::PredictivePrewarm)));
        let args = Args::try_parse_from(["shadowtap-closed-loop", "--kafka-run", "none"])
            .expect("none parses");
        assert_eq!(args.kafka_run, KafkaRun(None));
        assert!(Args::try_parse_from(["shadowtap-closed-loop", "--kafka-run", "later"]).is_err());
    }
}
