//! SVG plots of a run (plotters, SVG backend only): latency over time (raw points coloured by
//! outcome, plus p50/p95/p99/max per time window) and throughput over time per outcome, with
//! nemesis periods shaded, as in Jepsen's `latency-raw.png`, `latency-quantiles.png` and
//! `rate.png`.

use crate::history::{History, OpType, Process};
use crate::report::nemesis_periods;
use plotters::prelude::*;

/// Time windows for quantiles and rates.
const WINDOWS: usize = 60;

/// (invocation time s, latency ms, outcome) of each completed client op.
pub fn latencies(h: &History) -> Vec<(f64, f64, OpType)> {
    h.ops
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o.process, Process::Client(_)) && o.kind == OpType::Invoke)
        .filter_map(|(i, o)| {
            let c = h.completion(i)?;
            Some((
                o.time as f64 / 1e9,
                c.time.saturating_sub(o.time) as f64 / 1e6,
                c.kind,
            ))
        })
        .collect()
}

fn color(k: OpType) -> RGBColor {
    match k {
        OpType::Ok => RGBColor(60, 170, 60),
        OpType::Fail => RGBColor(220, 60, 60),
        _ => RGBColor(240, 160, 40),
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn span(h: &History) -> f64 {
    (h.ops.last().map_or(0, |o| o.time) as f64 / 1e9).max(1e-9)
}

fn shade<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    h: &History,
    ymax: f64,
) -> Result<(), String> {
    let periods: Vec<(f64, f64)> = nemesis_periods(h)
        .into_iter()
        .map(|(s, e, _)| {
            (
                s as f64 / 1e9,
                (e as f64 / 1e9).max(s as f64 / 1e9 + span(h) / 500.0),
            )
        })
        .collect();
    chart
        .draw_series(periods.iter().map(|&(s, e)| {
            Rectangle::new(
                [(s, 0.0), (e, ymax)],
                RGBColor(244, 192, 192).mix(0.5).filled(),
            )
        }))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Latency plot: raw points and windowed quantiles.
pub fn latency_svg(h: &History) -> Result<String, String> {
    let pts = latencies(h);
    let tmax = span(h);
    let ymax = pts.iter().map(|p| p.1).fold(1e-3, f64::max) * 1.05;
    let w = tmax / WINDOWS as f64;
    let mut windows: Vec<Vec<f64>> = vec![Vec::new(); WINDOWS + 1];
    for p in &pts {
        windows[((p.0 / w) as usize).min(WINDOWS)].push(p.1);
    }
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..tmax, 0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("latency (ms)")
            .draw()
            .map_err(|e| e.to_string())?;
        shade(&mut chart, h, ymax)?;
        chart
            .draw_series(
                pts.iter()
                    .map(|&(t, l, k)| Circle::new((t, l), 2, color(k).filled())),
            )
            .map_err(|e| e.to_string())?;
        for (q, c) in [(0.5, BLUE), (0.95, CYAN), (0.99, MAGENTA), (1.0, BLACK)] {
            let line: Vec<(f64, f64)> = windows
                .iter_mut()
                .enumerate()
                .filter(|(_, v)| !v.is_empty())
                .map(|(i, v)| {
                    v.sort_by(|a, b| a.total_cmp(b));
                    ((i as f64 + 0.5) * w, quantile(v, q))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(line, c))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Throughput plot: completions per second per window, one line per outcome.
pub fn throughput_svg(h: &History) -> Result<String, String> {
    let pts = latencies(h);
    let tmax = span(h);
    let w = tmax / WINDOWS as f64;
    let kinds = [OpType::Ok, OpType::Fail, OpType::Info];
    let mut rates = vec![[0f64; 3]; WINDOWS + 1];
    for &(t, l, k) in &pts {
        let i = (((t + l / 1e3) / w) as usize).min(WINDOWS);
        let j = kinds.iter().position(|x| *x == k).unwrap_or(2);
        rates[i][j] += 1.0 / w;
    }
    let ymax = rates.iter().flatten().copied().fold(1e-3, f64::max) * 1.05;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..tmax, 0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("ops/s")
            .draw()
            .map_err(|e| e.to_string())?;
        shade(&mut chart, h, ymax)?;
        for (j, k) in kinds.iter().enumerate() {
            let line: Vec<(f64, f64)> = rates
                .iter()
                .enumerate()
                .map(|(i, r)| ((i as f64 + 0.5) * w, r[j]))
                .collect();
            chart
                .draw_series(LineSeries::new(line, color(*k)))
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}
