//! The experiment's plot, an SVG written by hand: per run, demand (scheduled and answered),
//! instances and p99 against the SLO, over the run's time; the measured day is shaded.

use std::fmt::Write as _;

use super::report::{Experiment, RunReport, Second};

const W: f64 = 900.0;
const CHART_H: f64 = 110.0;
const GAP: f64 = 26.0;
const LEFT: f64 = 60.0;

/// A value of a second, if it has one.
type Get = fn(&Second) -> Option<f64>;
/// A chart: its label, the top of its y axis, and its lines (colour, value).
type Chart<'a> = (&'a str, f64, Vec<(&'a str, Get)>);

/// The whole figure.
pub fn svg(exp: &Experiment) -> String {
    let slo_ms = exp.config.slo_p99.as_secs_f64() * 1000.0;
    let run_h = 3.0 * (CHART_H + GAP) + 30.0;
    let height = run_h * exp.runs.len() as f64 + 20.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
    );
    for (i, run) in exp.runs.iter().enumerate() {
        run_panel(&mut s, run, 10.0 + run_h * i as f64, slo_ms);
    }
    s.push_str("</svg>\n");
    s
}

fn run_panel(s: &mut String, run: &RunReport, top: f64, slo_ms: f64) {
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"{}\" font-size=\"13\" font-weight=\"bold\">{} — {} SLO-violation s, \
         {:.0} instance-s, {} failed</text>",
        top + 12.0,
        run.label(),
        run.slo_violation_seconds,
        run.instance_seconds,
        run.failed_requests
    );
    let secs = &run.per_second;
    let t_max = secs.len().max(1) as f64;
    let demand_max = secs
        .iter()
        .map(|x| x.scheduled_rps.max(x.responses as f64))
        .fold(1.0, f64::max);
    let inst_max = secs.iter().map(|x| x.instances).fold(1.0, f64::max).ceil();
    let p99_max = slo_ms * 4.0;
    let charts: [Chart; 3] = [
        (
            "requests/s",
            demand_max,
            vec![
                ("#1f77b4", (|x: &Second| Some(x.scheduled_rps)) as Get),
                ("#ff7f0e", (|x: &Second| Some(x.responses as f64)) as Get),
            ],
        ),
        (
            "instances",
            inst_max,
            vec![("#2ca02c", (|x: &Second| Some(x.instances)) as Get)],
        ),
        (
            "p99 ms",
            p99_max,
            vec![("#d62728", (|x: &Second| x.p99_ms) as Get)],
        ),
    ];
    for (k, (label, y_max, lines)) in charts.iter().enumerate() {
        let y0 = top + 24.0 + k as f64 * (CHART_H + GAP);
        let x = |t: f64| LEFT + t / t_max * (W - LEFT - 20.0);
        let y = |v: f64| y0 + CHART_H - (v.min(*y_max) / y_max) * CHART_H;
        let _ = writeln!(
            s,
            "<rect x=\"{}\" y=\"{y0}\" width=\"{}\" height=\"{CHART_H}\" fill=\"#eee\"/>\
             <rect x=\"{LEFT}\" y=\"{y0}\" width=\"{}\" height=\"{CHART_H}\" fill=\"none\" stroke=\"#999\"/>",
            x(run.measured_from_s),
            x(run.measured_to_s) - x(run.measured_from_s),
            W - LEFT - 20.0
        );
        let _ = writeln!(
            s,
            "<text x=\"4\" y=\"{}\">{label}</text><text x=\"4\" y=\"{}\">{y_max:.0}</text>\
             <text x=\"4\" y=\"{}\">0</text>",
            y0 + CHART_H / 2.0,
            y0 + 10.0,
            y0 + CHART_H
        );
        if *label == "p99 ms" {
            let _ = writeln!(
                s,
                "<line x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{ys}\" y2=\"{ys}\" stroke=\"black\" \
                 stroke-dasharray=\"4 3\"/><text x=\"{xt}\" y=\"{yt}\">SLO {slo_ms:.0} ms</text>",
                x2 = W - 20.0,
                ys = y(slo_ms),
                xt = W - 90.0,
                yt = y(slo_ms) - 3.0
            );
        }
        for (color, get) in lines {
            let points: Vec<String> = secs
                .iter()
                .filter_map(|p| {
                    get(p).map(|v| format!("{:.1},{:.1}", x(p.at_s as f64 + 0.5), y(v)))
                })
                .collect();
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.3\" points=\"{}\"/>",
                points.join(" ")
            );
        }
    }
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"{}\">seconds since start (1 s = 30 min of the series); shaded: \
         the measured day; blue scheduled, orange answered</text>",
        top + 24.0 + 3.0 * (CHART_H + GAP) - 8.0
    );
}
