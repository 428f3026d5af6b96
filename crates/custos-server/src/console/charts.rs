//! Charts as server-rendered SVG: bars per day, and values with their
//! confidence intervals. Hand-written (a few dozen lines) rather than a
//! plotting crate: the console needs two fixed chart shapes, plain SVG
//! elements that a strict Content-Security-Policy allows, and no fonts or
//! raster back ends.

use maud::{Markup, html};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;

fn short(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// A bar per point: `(label, value)`, labels shown at the ends; `title`
/// is the chart's accessible name.
pub(crate) fn bars(title: &str, points: &[(String, f64)]) -> Markup {
    let max = points.iter().map(|p| p.1).fold(0.0_f64, f64::max);
    let plot_w = WIDTH - LEFT - 4.0;
    let plot_h = HEIGHT - BOTTOM - TOP;
    let step = plot_w / points.len().max(1) as f64;
    let bar_w = (step * 0.8).max(1.0);
    html! {
        svg.chart viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(title) {
            title { (title) }
            line.axis x1=(LEFT) y1=(TOP + plot_h) x2=(WIDTH) y2=(TOP + plot_h) {}
            text x="2" y=(TOP + 10.0) { (short(max)) }
            text x="2" y=(TOP + plot_h) { "0" }
            @for (i, (label, value)) in points.iter().enumerate() {
                @let h = if max > 0.0 { value / max * plot_h } else { 0.0 };
                rect.bar x=(LEFT + i as f64 * step) y=(TOP + plot_h - h) width=(bar_w) height=(h) {
                    title { (label) ": " (short(*value)) }
                }
            }
            @if let (Some(first), Some(last)) = (points.first(), points.last()) {
                text x=(LEFT) y=(HEIGHT - 6.0) { (first.0) }
                text x=(WIDTH - 4.0) y=(HEIGHT - 6.0) text-anchor="end" { (last.0) }
            }
        }
    }
}

/// One value to chart: its label, the estimate and its interval, if any.
pub(crate) type IntervalRow = (String, f64, Option<(f64, f64)>);

/// One row per value: a dot at the estimate and a whisker over its
/// interval, on a shared axis.
pub(crate) fn intervals(title: &str, rows: &[IntervalRow]) -> Markup {
    let lows = rows.iter().map(|r| r.2.map_or(r.1, |i| i.0));
    let highs = rows.iter().map(|r| r.2.map_or(r.1, |i| i.1));
    let low = lows.fold(0.0_f64, f64::min);
    let high = highs.fold(0.0_f64, f64::max);
    let span = if high > low { high - low } else { 1.0 };
    let label_w = 150.0;
    let plot_w = WIDTH - label_w - 10.0;
    let row_h = 22.0;
    let height = row_h * rows.len() as f64 + 24.0;
    let x = |v: f64| label_w + (v - low) / span * plot_w;
    html! {
        svg.chart viewBox=(format!("0 0 {WIDTH} {height}")) role="img" aria-label=(title) {
            title { (title) }
            line.axis x1=(x(0.0)) y1="0" x2=(x(0.0)) y2=(height - 18.0) {}
            text x=(label_w) y=(height - 4.0) { (short(low)) }
            text x=(WIDTH - 10.0) y=(height - 4.0) text-anchor="end" { (short(high)) }
            @for (i, (label, value, interval)) in rows.iter().enumerate() {
                @let y = i as f64 * row_h + 12.0;
                text x="2" y=(y + 4.0) { (label) }
                @if let Some((lo, hi)) = interval {
                    line.whisker x1=(x(*lo)) y1=(y) x2=(x(*hi)) y2=(y) {}
                    line.whisker x1=(x(*lo)) y1=(y - 5.0) x2=(x(*lo)) y2=(y + 5.0) {}
                    line.whisker x1=(x(*hi)) y1=(y - 5.0) x2=(x(*hi)) y2=(y + 5.0) {}
                }
                circle.point cx=(x(*value)) cy=(y) r="4" {
                    title {
                        (label) ": " (short(*value))
                        @if let Some((lo, hi)) = interval { " [" (short(*lo)) ", " (short(*hi)) "]" }
                    }
                }
            }
        }
    }
}
