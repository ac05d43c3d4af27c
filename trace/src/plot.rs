//! `fleetmesh trace analyze --plot <dir>`: SVG charts of an [`Analysis`], drawn with plotters.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::analyze::Analysis;

/// Why a chart could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {message}")]
pub struct PlotError {
    /// The chart file.
    pub path: PathBuf,
    /// Why.
    pub message: String,
}

/// Draws one chart; `Ok(false)` when the analysis has no data for it.
type Chart = fn(&Analysis, &Path) -> Result<bool, String>;

const W: u32 = 900;
const H: u32 = 520;

/// Writes every chart the analysis has data for into `dir`; returns the files written.
pub fn write_all(a: &Analysis, dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    std::fs::create_dir_all(dir).map_err(|e| PlotError { path: dir.into(), message: e.to_string() })?;
    let mut written = Vec::new();
    let charts: [(&str, Chart); 4] = [
        ("delivery_delay_cdf.svg", delay_cdf),
        ("duplicates_histogram.svg", duplicates),
        ("mesh_degree.svg", mesh_degree),
        ("task_timeline.svg", task_timeline),
    ];
    for (name, draw) in charts {
        let path = dir.join(name);
        match draw(a, &path) {
            Ok(true) => written.push(path),
            Ok(false) => {}
            Err(message) => return Err(PlotError { path, message }),
        }
    }
    Ok(written)
}

fn delay_cdf(a: &Analysis, path: &Path) -> Result<bool, String> {
    let Some(&(max_ms, total)) = a.delay_cdf.last() else { return Ok(false) };
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Delivery delay CDF (first publish to each delivery)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..(max_ms.max(1) as f64 * 1.05), 0f64..1.0)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("delay (ms)")
        .y_desc("fraction of deliveries")
        .draw()
        .map_err(|e| e.to_string())?;
    let total = total.max(1) as f64;
    let mut points = vec![(0.0, 0.0)];
    let mut last = 0.0;
    for &(ms, n) in &a.delay_cdf {
        points.push((ms as f64, last));
        last = n as f64 / total;
        points.push((ms as f64, last));
    }
    chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2))).map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(true)
}

fn duplicates(a: &Analysis, path: &Path) -> Result<bool, String> {
    if a.duplicates_histogram.is_empty() {
        return Ok(false);
    }
    let max_dups = a.duplicates_histogram.iter().map(|x| x.0).max().unwrap_or(0);
    let max_n = a.duplicates_histogram.iter().map(|x| x.1).max().unwrap_or(1);
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Duplicates per message (whole mesh)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d((0u64..max_dups + 1).into_segmented(), 0u64..(max_n + max_n / 10 + 1))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("duplicates received for one message, all nodes together")
        .y_desc("messages")
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(RED.mix(0.6).filled())
                .margin(2)
                .data(a.duplicates_histogram.iter().map(|&(d, n)| (d, n))),
        )
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(true)
}

fn mesh_degree(a: &Analysis, path: &Path) -> Result<bool, String> {
    if a.mesh_degree.is_empty() {
        return Ok(false);
    }
    let t_max = a.mesh_degree.iter().map(|m| m.t_s).fold(0.0, f64::max).max(1.0);
    let d_max = a.mesh_degree.iter().map(|m| m.max).max().unwrap_or(1).max(1) as f64;
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Gossipsub mesh degree over time (mean, with min and max)", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..t_max, 0f64..(d_max + 1.0))
        .map_err(|e| e.to_string())?;
    chart.configure_mesh().x_desc("time (s)").y_desc("mesh peers").draw().map_err(|e| e.to_string())?;
    let mut topics: Vec<&str> = a.mesh_degree.iter().map(|m| m.topic.as_str()).collect();
    topics.dedup();
    topics.sort_unstable();
    topics.dedup();
    for (i, topic) in topics.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let of = || a.mesh_degree.iter().filter(move |m| m.topic == *topic);
        chart
            .draw_series(LineSeries::new(of().map(|m| (m.t_s, m.mean)), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(format!("{topic} mean"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(of().map(|m| (m.t_s, m.min as f64)), color.mix(0.35)))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(of().map(|m| (m.t_s, m.max as f64)), color.mix(0.35)))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(true)
}

/// Lanes drawn at most; the busiest nodes are kept.
const MAX_LANES: usize = 40;

fn task_timeline(a: &Analysis, path: &Path) -> Result<bool, String> {
    let lanes = &a.tasks.lanes;
    if lanes.values().all(Vec::is_empty) {
        return Ok(false);
    }
    let mut nodes: Vec<(&String, &Vec<super::analyze::LaneEvent>)> = lanes.iter().collect();
    nodes.sort_by(|x, y| y.1.len().cmp(&x.1.len()).then(x.0.cmp(y.0)));
    nodes.truncate(MAX_LANES);
    nodes.sort_by(|x, y| x.0.cmp(y.0));
    let events = super::timeline::event::ALL_TASK_EVENTS;
    let t_min = nodes.iter().flat_map(|(_, v)| v.iter().map(|e| e.t_s)).fold(f64::INFINITY, f64::min);
    let t_max = nodes.iter().flat_map(|(_, v)| v.iter().map(|e| e.t_s)).fold(f64::NEG_INFINITY, f64::max);
    let (t_min, t_max) = if t_max > t_min { (t_min, t_max) } else { (t_min - 0.5, t_min + 0.5) };
    let height = (H).max(140 + 22 * nodes.len() as u32);
    let root = SVGBackend::new(path, (W + 200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let names: Vec<String> = nodes.iter().map(|(n, _)| short(n)).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption("Task events per node", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(110)
        .right_y_label_area_size(10)
        .build_cartesian_2d(t_min..t_max, -0.5f64..(nodes.len() as f64 - 0.5))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_labels(nodes.len().max(1))
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() < 0.01 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .disable_y_mesh()
        .draw()
        .map_err(|e| e.to_string())?;
    for (k, name) in events.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let points: Vec<(f64, f64)> = nodes
            .iter()
            .enumerate()
            .flat_map(|(lane, (_, evs))| {
                evs.iter().filter(|e| e.event == *name).map(move |e| (e.t_s, lane as f64))
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        chart
            .draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| Circle::new((x + 5, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(true)
}

fn short(peer: &str) -> String {
    let n = peer.len();
    if n > 12 {
        format!("…{}", &peer[n - 10..])
    } else {
        peer.to_owned()
    }
}
