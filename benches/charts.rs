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

/// One line of an x–y chart: its name and points.
pub type Line = (String, Vec<(f64, f64)>);

/// Lines of points on log–log axes (the cost curves, lag against the
/// route count, the throughput ceiling): each line drawn with its points
/// marked; non-finite points are left out.
pub fn log_log(path: &Path, title: &str, x_desc: &str, y_desc: &str, lines: &[Line]) -> Result<(), String> {
    let points = || {
        lines
            .iter()
            .flat_map(|(_, p)| p.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite())
    };
    let (x_min, x_max) = points().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
    let (y_min, y_max) = points().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    if x_min > x_max {
        return Err("no points".into());
    }
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (x_min.max(1e-3) * 0.8..x_max * 1.25).log_scale(),
            (y_min.max(1e-3) * 0.6..y_max * 1.6).log_scale(),
        )
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [BLUE, RED, GREEN, MAGENTA, BLACK];
    for (i, (name, line)) in lines.iter().enumerate() {
        let color = colors[i % colors.len()];
        let line: Vec<(f64, f64)> = line
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.clone())
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
