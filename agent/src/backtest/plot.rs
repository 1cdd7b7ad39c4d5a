//! PNG of a backtest: actual demand, the one-step-ahead forecast band and both capacity curves,
//! over the whole evaluation period and zoomed into its last week.

use std::path::Path;

use anyhow::{anyhow, bail};
use plotters::prelude::*;

use super::{
    BacktestReport, TracePoint,
    frontier::{FrontierPoint, Frontiers},
};

const WIDTH: u32 = 1600;
const HEIGHT: u32 = 1000;
const BAND: RGBColor = RGBColor(90, 140, 220);
const PREDICTIVE: RGBColor = RGBColor(20, 150, 60);
const REACTIVE: RGBColor = RGBColor(220, 50, 40);

/// Draw `report`'s trace to `path`.
pub fn draw(report: &BacktestReport, path: &Path) -> anyhow::Result<()> {
    if report.trace.is_empty() {
        bail!("no trace to plot");
    }
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(HEIGHT / 2);
    let step_days = report.step_secs as f64 / 86_400.0;
    let week = ((7.0 / step_days) as usize).clamp(2, report.trace.len());
    let title = format!(
        "{}: demand, {:.0}% forecast band, capacity (delay {}s) — under-provisioned min: \
         predictive {:.0}, reactive {:.0}; instance-h {:.0} vs {:.0}",
        report.series,
        report.forecast.level * 100.0,
        report.provision_delay_secs,
        report.predictive.under_provisioned_minutes,
        report.reactive.under_provisioned_minutes,
        report.predictive.instance_hours,
        report.reactive.instance_hours,
    );
    panel(&top, &report.trace, step_days, &title)?;
    let zoom = &report.trace[report.trace.len() - week..];
    panel(
        &bottom,
        zoom,
        step_days,
        "last week of the evaluation period",
    )?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    trace: &[TracePoint],
    step_days: f64,
    title: &str,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let origin = trace[0].start_ms;
    let x = |p: &TracePoint| (p.start_ms - origin) as f64 / 86_400_000.0;
    let x_end = x(&trace[trace.len() - 1]) + step_days;
    let y_max = trace
        .iter()
        .flat_map(|p| {
            [
                p.demand,
                p.upper,
                p.predictive_capacity.0,
                p.predictive_capacity.1,
                p.reactive_capacity.0,
                p.reactive_capacity.1,
            ]
        })
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_end, 0.0..y_max)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("days since evaluation start")
        .y_desc("demand per interval")
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;

    let band: Vec<(f64, f64)> = trace
        .iter()
        .filter(|p| p.upper.is_finite())
        .map(|p| (x(p) + step_days / 2.0, p.upper))
        .chain(
            trace
                .iter()
                .rev()
                .filter(|p| p.lower.is_finite())
                .map(|p| (x(p) + step_days / 2.0, p.lower)),
        )
        .collect();
    chart
        .draw_series(std::iter::once(Polygon::new(band, BAND.mix(0.3).filled())))
        .map_err(|e| anyhow!("{e}"))?
        .label("forecast interval (1 step ahead)")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], BAND.mix(0.3).filled()));

    let steps = |capacity: fn(&TracePoint) -> (f64, f64)| {
        trace
            .iter()
            .flat_map(move |p| {
                let (start, end) = capacity(p);
                [(x(p), start), (x(p) + step_days, end)]
            })
            .collect::<Vec<_>>()
    };
    chart
        .draw_series(LineSeries::new(
            steps(|p| p.reactive_capacity),
            REACTIVE.stroke_width(2),
        ))
        .map_err(|e| anyhow!("{e}"))?
        .label("reactive capacity")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], REACTIVE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            steps(|p| p.predictive_capacity),
            PREDICTIVE.stroke_width(2),
        ))
        .map_err(|e| anyhow!("{e}"))?
        .label("predictive capacity")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], PREDICTIVE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            trace.iter().map(|p| (x(p) + step_days / 2.0, p.demand)),
            BLACK.stroke_width(1),
        ))
        .map_err(|e| anyhow!("{e}"))?
        .label("actual demand")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// `FILE.png` → `FILE-frontier.png`, beside it.
pub fn frontier_path(plot: &Path) -> std::path::PathBuf {
    let stem = plot
        .file_stem()
        .map_or_else(|| "backtest".into(), |s| s.to_string_lossy().into_owned());
    plot.with_file_name(format!("{stem}-frontier.png"))
}

/// Both Pareto frontiers: under-provisioned minutes against instance-hours, each point
/// labelled with its setting.
pub fn draw_frontiers(series: &str, frontiers: &Frontiers, path: &Path) -> anyhow::Result<()> {
    let all = frontiers.reactive.iter().chain(&frontiers.predictive);
    let (x_min, x_max, y_max) = all.fold((f64::INFINITY, 0.0_f64, 1.0_f64), |(lo, hi, y), p| {
        (
            lo.min(p.instance_hours),
            hi.max(p.instance_hours),
            y.max(p.under_provisioned_minutes),
        )
    });
    if !x_min.is_finite() {
        bail!("no frontier points to plot");
    }
    let root = BitMapBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let pad = (x_max - x_min).max(1.0) * 0.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{series}: under-provisioned minutes vs instance-hours (predictive on or below \
                 reactive: {})",
                if frontiers.predictive_on_or_below {
                    "yes"
                } else {
                    "no"
                }
            ),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d((x_min - pad)..(x_max + pad), 0.0..(y_max * 1.08))
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("instance-hours")
        .y_desc("under-provisioned minutes")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (points, colour, name, unit) in [
        (
            &frontiers.reactive,
            REACTIVE,
            "reactive, by target utilisation",
            "u",
        ),
        (
            &frontiers.predictive,
            PREDICTIVE,
            "predictive, by interval level",
            "l",
        ),
    ] {
        let mut sorted: Vec<FrontierPoint> = points.clone();
        sorted.sort_by(|a, b| a.instance_hours.total_cmp(&b.instance_hours));
        chart
            .draw_series(LineSeries::new(
                sorted
                    .iter()
                    .map(|p| (p.instance_hours, p.under_provisioned_minutes)),
                colour.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(sorted.iter().map(|p| {
                EmptyElement::at((p.instance_hours, p.under_provisioned_minutes))
                    + Circle::new((0, 0), 4, colour.filled())
                    + Text::new(
                        format!("{unit}={:.2}", p.setting),
                        (6, -14),
                        ("sans-serif", 13),
                    )
            }))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
