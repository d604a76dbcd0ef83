//! The bench's charts: SVG files next to `results.json`, drawn with
//! `plotters` from the figures the bench measured in this run.

use std::path::Path;

use plotters::prelude::*;

/// A latency CDF per series (milliseconds), log-scaled in time.
pub fn lag_cdf(path: &Path, title: &str, series: &[(String, Vec<f64>)]) -> Result<(), String> {
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0f64, f64::max)
        .max(2.0);
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((0.1f64..max * 1.2).log_scale(), 0f64..1f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("replication lag (ms, log scale)")
        .y_desc("fraction of writes")
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [BLUE, RED, GREEN, MAGENTA, BLACK];
    for (i, (name, values)) in series.iter().enumerate() {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            continue;
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = v.len() as f64;
        let color = colors[i % colors.len()];
        // At most ~1,000 steps: a chart, not the raw samples (the tail's
        // last points are kept).
        let step = (v.len() / 1000).max(1);
        let points = v
            .iter()
            .enumerate()
            .filter(|(k, _)| k % step == 0 || *k + 20 >= v.len())
            .map(|(k, ms)| (ms.max(0.1), (k + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Lag p50 and p99 against the number of routes, both axes log-scaled.
pub fn routes(path: &Path, points: &[(usize, f64, f64)]) -> Result<(), String> {
    let max_ms = points.iter().map(|p| p.2).fold(1.0f64, f64::max);
    let max_routes = points.iter().map(|p| p.0).max().unwrap_or(1) as f64;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("lag against the number of routes (2 targets each)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(
            (0.8f64..max_routes * 1.25).log_scale(),
            (0.5f64..max_ms * 1.5).log_scale(),
        )
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("routes (log scale)")
        .y_desc("lag (ms, log scale)")
        .draw()
        .map_err(|e| e.to_string())?;
    for (name, color, pick) in [("p50", BLUE, 1usize), ("p99", RED, 2)] {
        let line: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.0 as f64, if pick == 1 { p.1 } else { p.2 }))
            .filter(|p| p.1.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(line.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
