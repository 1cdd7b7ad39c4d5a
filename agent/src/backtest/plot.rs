//! PNG of a backtest: actual demand, the one-step-ahead forecast band and both capacity curves,
//! over the whole evaluation period and zoomed into its last week.

use std::path::Path;

use anyhow::{anyhow, bail};
use plotters::prelude::*;

use super::{BacktestReport, TracePoint};

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
