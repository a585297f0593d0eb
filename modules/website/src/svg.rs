//! Graphs drawn on the server as SVG text (SPEC §7, §9): no script is needed to see them.
//!
//! Pure functions from rows to markup: [`active_tasks`] (the `active_tasks` graph rows, one
//! line per status), [`completions_per_hour`] (the 10-minute `completed_tasks` rows summed per
//! hour, as bars) and [`dataset_progress`] (a dataset's completed and total tasks over time).
//! Every label is escaped, every coordinate is finite, and an empty input draws a frame that
//! says "no data".

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};
use iceprod_runtime::web::GraphPoint;

const W: f64 = 640.0;
const H: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 120.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 28.0;

/// Colours by series order; statuses keep theirs where known.
const PALETTE: &[&str] = &["#2a7", "#27c", "#c72", "#a3a", "#777", "#c33", "#3aa"];

fn colour(label: &str, index: usize) -> &'static str {
    match label {
        "complete" | "completed" => "#2a7",
        "processing" | "running" => "#27c",
        "queued" => "#c72",
        "waiting" | "idle" => "#777",
        "failed" | "error" => "#c33",
        "suspended" => "#a3a",
        _ => PALETTE[index % PALETTE.len()],
    }
}

/// One line of a chart: its label and (unix seconds, value) points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(i64, f64)>,
}

/// Escapes text for SVG/XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A compact number for an axis label: `950`, `12.5k`, `3.1M`, `2e15`.
pub fn compact(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    let a = v.abs();
    let (x, unit) = if a >= 1e15 {
        return format!("{v:.0e}");
    } else if a >= 1e12 {
        (v / 1e12, "T")
    } else if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let text = if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    };
    format!("{text}{unit}")
}

fn time_label(t: i64, with_date: bool) -> String {
    match DateTime::<Utc>::from_timestamp(t, 0) {
        Some(d) if with_date => d.format("%m-%d %H:%M").to_string(),
        Some(d) => d.format("%H:%M").to_string(),
        None => "?".into(),
    }
}

/// RFC 3339 text as unix seconds.
pub fn parse_time(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|d| d.timestamp())
}

struct Frame {
    t0: i64,
    t1: i64,
    vmax: f64,
}

impl Frame {
    fn new(times: impl Iterator<Item = i64>, values: impl Iterator<Item = f64>) -> Frame {
        let (mut t0, mut t1) = (i64::MAX, i64::MIN);
        for t in times {
            t0 = t0.min(t);
            t1 = t1.max(t);
        }
        let vmax = values
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max)
            .max(1.0);
        if t0 > t1 {
            (t0, t1) = (0, 0);
        }
        Frame { t0, t1, vmax }
    }

    fn x(&self, t: i64) -> f64 {
        let span = (self.t1 - self.t0).max(1) as f64;
        LEFT + (W - LEFT - RIGHT) * ((t - self.t0) as f64 / span)
    }

    fn y(&self, v: f64) -> f64 {
        let v = if v.is_finite() {
            v.clamp(0.0, self.vmax)
        } else {
            0.0
        };
        H - BOTTOM - (H - TOP - BOTTOM) * (v / self.vmax)
    }
}

fn open(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\" font-size=\"11\">\
         <title>{t}</title><text x=\"{LEFT}\" y=\"15\" font-weight=\"bold\">{t}</text>",
        t = escape(title)
    );
}

fn empty(title: &str) -> String {
    let mut out = String::new();
    open(&mut out, title);
    let _ = write!(
        out,
        "<text x=\"{}\" y=\"{}\" fill=\"#777\">no data</text></svg>",
        W / 2.0 - 20.0,
        H / 2.0
    );
    out
}

fn axes(out: &mut String, f: &Frame) {
    let (x0, x1, yb, yt) = (LEFT, W - RIGHT, H - BOTTOM, TOP);
    let _ = write!(
        out,
        "<path d=\"M{x0} {yt}V{yb}H{x1}\" stroke=\"#444\" fill=\"none\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>",
        x0 - 4.0,
        yt + 8.0,
        escape(&compact(f.vmax)),
        x0 - 4.0,
        yb
    );
    let with_date = f.t1 - f.t0 > 86_400;
    let _ = write!(
        out,
        "<text x=\"{x0}\" y=\"{}\">{}</text><text x=\"{x1}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        H - 10.0,
        escape(&time_label(f.t0, with_date)),
        H - 10.0,
        escape(&time_label(f.t1, with_date)),
    );
}

/// A line chart, one line per series, with a legend on the right.
pub fn line_chart(title: &str, series: &[Series]) -> String {
    if series.iter().all(|s| s.points.is_empty()) {
        return empty(title);
    }
    let f = Frame::new(
        series.iter().flat_map(|s| s.points.iter().map(|p| p.0)),
        series.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
    );
    let mut out = String::new();
    open(&mut out, title);
    axes(&mut out, &f);
    for (i, s) in series.iter().enumerate() {
        let c = colour(&s.label, i);
        if let [(t, v)] = s.points.as_slice() {
            let _ = write!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>",
                f.x(*t),
                f.y(*v)
            );
        } else if !s.points.is_empty() {
            out.push_str("<polyline fill=\"none\" stroke-width=\"1.5\" stroke=\"");
            out.push_str(c);
            out.push_str("\" points=\"");
            for (t, v) in &s.points {
                let _ = write!(out, "{:.1},{:.1} ", f.x(*t), f.y(*v));
            }
            out.push_str("\"/>");
        }
        let ly = TOP + 14.0 * i as f64 + 8.0;
        let last = s.points.last().map_or(0.0, |p| p.1);
        let _ = write!(
            out,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{c}\"/>\
             <text x=\"{}\" y=\"{}\">{} ({})</text>",
            W - RIGHT + 8.0,
            ly - 8.0,
            W - RIGHT + 22.0,
            ly + 1.0,
            escape(&s.label),
            escape(&compact(last)),
        );
    }
    out.push_str("</svg>");
    out
}

/// A bar chart of (unix seconds, value), each bar `width` seconds wide.
pub fn bar_chart(title: &str, bars: &[(i64, f64)], width: i64) -> String {
    if bars.is_empty() {
        return empty(title);
    }
    let f = Frame::new(
        bars.iter().flat_map(|b| [b.0, b.0.saturating_add(width)]),
        bars.iter().map(|b| b.1),
    );
    let mut out = String::new();
    open(&mut out, title);
    axes(&mut out, &f);
    for (t, v) in bars {
        let (x0, x1) = (f.x(*t), f.x(t.saturating_add(width)));
        let y = f.y(*v);
        let _ = write!(
            out,
            "<rect x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#27c\">\
             <title>{}: {}</title></rect>",
            x0 + 1.0,
            (x1 - x0 - 2.0).max(1.0),
            (H - BOTTOM - y).max(0.0),
            escape(&time_label(*t, true)),
            escape(&compact(*v)),
        );
    }
    out.push_str("</svg>");
    out
}

/// `active_tasks` rows (`{status: count}`) as one line per status, statuses in name order.
pub fn active_tasks(points: &[GraphPoint]) -> String {
    let mut by_status: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    let rows: Vec<_> = points
        .iter()
        .filter(|p| p.name == "active_tasks")
        .filter_map(|p| Some((parse_time(&p.timestamp)?, p.value.as_object()?)))
        .collect();
    for (_, counts) in &rows {
        for status in counts.keys() {
            by_status.entry(status.clone()).or_default();
        }
    }
    // A status missing from a row had no tasks then: draw 0, not a gap.
    for (t, counts) in &rows {
        for (status, line) in by_status.iter_mut() {
            let n = counts.get(status).and_then(|v| v.as_f64()).unwrap_or(0.0);
            line.push((*t, n));
        }
    }
    let series: Vec<Series> = by_status
        .into_iter()
        .map(|(label, points)| Series { label, points })
        .collect();
    line_chart("active tasks by status", &series)
}

/// `completed_tasks` rows (`{completions: n}` per 10 minutes) summed per clock hour.
pub fn completions_per_hour(points: &[GraphPoint]) -> String {
    let mut hours: BTreeMap<i64, f64> = BTreeMap::new();
    for p in points.iter().filter(|p| p.name == "completed_tasks") {
        let (Some(t), Some(n)) = (
            parse_time(&p.timestamp),
            p.value.get("completions").and_then(|v| v.as_f64()),
        ) else {
            continue;
        };
        *hours.entry(t.div_euclid(3600) * 3600).or_default() += n;
    }
    let bars: Vec<(i64, f64)> = hours.into_iter().collect();
    bar_chart("completed tasks per hour", &bars, 3600)
}

/// A dataset's (time, completed, total) rows as two lines.
pub fn dataset_progress(progress: &[(String, u64, u64)]) -> String {
    let mut done = Vec::new();
    let mut total = Vec::new();
    for (time, c, n) in progress {
        if let Some(t) = parse_time(time) {
            done.push((t, *c as f64));
            total.push((t, *n as f64));
        }
    }
    line_chart(
        "dataset progress",
        &[
            Series {
                label: "complete".into(),
                points: done,
            },
            Series {
                label: "total".into(),
                points: total,
            },
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn point(name: &str, ts: &str, value: serde_json::Value) -> GraphPoint {
        GraphPoint {
            name: name.into(),
            timestamp: ts.into(),
            value,
        }
    }

    fn well_formed(svg: &str) {
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"), "{svg}");
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn empty_inputs_draw_a_frame_saying_no_data() {
        for svg in [
            active_tasks(&[]),
            completions_per_hour(&[]),
            dataset_progress(&[]),
            line_chart(
                "x",
                &[Series {
                    label: "a".into(),
                    points: vec![],
                }],
            ),
        ] {
            well_formed(&svg);
            assert!(svg.contains("no data"));
        }
    }

    #[test]
    fn one_point_is_drawn_as_a_dot() {
        let svg = active_tasks(&[point(
            "active_tasks",
            "2026-01-01T10:00:00Z",
            json!({"processing": 3}),
        )]);
        well_formed(&svg);
        assert!(svg.contains("<circle"));
        assert!(svg.contains("processing (3)"));
    }

    #[test]
    fn statuses_missing_from_a_row_count_as_zero() {
        let svg = active_tasks(&[
            point("active_tasks", "2026-01-01T10:00:00Z", json!({"queued": 5})),
            point(
                "active_tasks",
                "2026-01-01T10:10:00Z",
                json!({"processing": 2}),
            ),
            point(
                "completed_tasks",
                "2026-01-01T10:10:00Z",
                json!({"completions": 9}),
            ),
        ]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("queued (0)") && svg.contains("processing (2)"));
    }

    #[test]
    fn completions_are_summed_per_hour() {
        let rows: Vec<_> = ["10:00", "10:10", "10:50", "11:00"]
            .iter()
            .map(|t| {
                point(
                    "completed_tasks",
                    &format!("2026-01-01T{t}:00Z"),
                    json!({"completions": 2}),
                )
            })
            .collect();
        let svg = completions_per_hour(&rows);
        well_formed(&svg);
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("01-01 10:00: 6"));
        assert!(svg.contains("01-01 11:00: 2"));
    }

    #[test]
    fn labels_are_escaped() {
        let svg = line_chart(
            "<script>alert(1)</script>",
            &[Series {
                label: "\"><img src=x onerror=alert(1)>".into(),
                points: vec![(0, 1.0), (60, 2.0)],
            }],
        );
        assert!(!svg.contains("<script") && !svg.contains("<img"));
        assert!(svg.contains("&lt;script&gt;") && svg.contains("&quot;&gt;&lt;img"));
    }

    #[test]
    fn huge_and_odd_values_stay_finite() {
        let svg = line_chart(
            "big",
            &[Series {
                label: "a".into(),
                points: vec![(0, 1e300), (60, f64::NAN), (i64::MAX / 2, u64::MAX as f64)],
            }],
        );
        well_formed(&svg);
        let svg = dataset_progress(&[
            ("2026-01-01T00:00:00Z".into(), 0, u64::MAX),
            ("2026-01-02T00:00:00Z".into(), u64::MAX, u64::MAX),
            ("not a time".into(), 1, 1),
        ]);
        well_formed(&svg);
        assert_eq!(compact(12_500.0), "12.5k");
        assert_eq!(compact(3_000_000.0), "3M");
        assert_eq!(compact(950.0), "950");
    }
}
