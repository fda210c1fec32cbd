//! Pictures: timelines of live and reserved bytes (a replay's), as SVG or as an HTML
//! page; and an offline plan (`plan --plot`).
//!
//! A replay's chart per trace: the events along x, bytes along y; the live bytes in
//! black and each allocator's reserved bytes in its colour, from the replay's sampling
//! pass. The HTML page adds the numbers of each trace under its chart.
//!
//! A plan's picture is the one planner papers draw: each buffer a rectangle, from its
//! allocation to its free along x, at its offset in the arena along y.

use crate::plan::Placement;
use crate::replay::TraceReport;
use std::fmt::Write as _;
use tensorpool::bytes::format_bytes;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 320.0;
const MARGIN: (f64, f64, f64, f64) = (90.0, 20.0, 40.0, 30.0); // left, right, top, bottom

fn colour(name: &str) -> &'static str {
    match name {
        "tensorpool" => "#1f77b4",
        "system" => "#d62728",
        "mimalloc" => "#2ca02c",
        _ => "#ff7f0e",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One chart, drawn at vertical offset `top`.
fn chart(out: &mut String, r: &TraceReport, top: f64) {
    let (left, right, pad_top, bottom) = MARGIN;
    let plot_w = WIDTH - left - right;
    let plot_h = HEIGHT - pad_top - bottom;
    let max_x = r.events.max(1) as f64;
    let max_y = r
        .allocators
        .iter()
        .flat_map(|a| a.timeline.iter().map(|p| p[2].max(p[1])))
        .max()
        .unwrap_or(1)
        .max(r.peak_live_bytes)
        .max(1) as f64
        * 1.05;
    let x = |e: u64| left + e as f64 / max_x * plot_w;
    let y = |b: u64| top + pad_top + plot_h - b as f64 / max_y * plot_h;
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top + 18.0,
        escape(&r.trace)
    );
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##,
        top + pad_top
    );
    for i in 0..=4 {
        let bytes = (max_y / 4.0 * i as f64) as u64;
        let _ = writeln!(
            out,
            r##"<line x1="{left}" x2="{}" y1="{yy}" y2="{yy}" stroke="#eee"/><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
            left + plot_w,
            left - 6.0,
            y(bytes) + 4.0,
            format_bytes(bytes as usize),
            yy = y(bytes)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">event (of {})</text>"#,
        left + plot_w / 2.0,
        top + HEIGHT - 8.0,
        r.events
    );
    let mut line = |points: Vec<(u64, u64)>, stroke: &str, width: f64| {
        let path: Vec<String> = points
            .iter()
            .map(|&(e, b)| format!("{:.1},{:.1}", x(e), y(b)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{stroke}" stroke-width="{width}" points="{}"/>"#,
            path.join(" ")
        );
    };
    if let Some(first) = r.allocators.iter().find(|a| !a.timeline.is_empty()) {
        line(
            first.timeline.iter().map(|p| (p[0], p[1])).collect(),
            "#000",
            2.0,
        );
    }
    for a in &r.allocators {
        line(
            a.timeline.iter().map(|p| (p[0], p[2])).collect(),
            colour(a.name),
            1.5,
        );
    }
    let mut lx = left + 10.0;
    for (name, c) in std::iter::once(("live", "#000"))
        .chain(r.allocators.iter().map(|a| (a.name, colour(a.name))))
    {
        let _ = writeln!(
            out,
            r#"<rect x="{lx}" y="{}" width="12" height="3" fill="{c}"/><text x="{}" y="{}" font-size="11">{name}</text>"#,
            top + pad_top + 10.0,
            lx + 16.0,
            top + pad_top + 14.0
        );
        lx += 100.0;
    }
}

/// Every trace's chart, stacked, in one SVG document.
pub fn svg(reports: &[TraceReport]) -> String {
    let height = HEIGHT * reports.len().max(1) as f64;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    out.push('\n');
    for (i, r) in reports.iter().enumerate() {
        chart(&mut out, r, i as f64 * HEIGHT);
    }
    out.push_str("</svg>\n");
    out
}

/// An HTML page: per trace, its chart and its numbers.
pub fn html(reports: &[TraceReport]) -> String {
    let mut out = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>tensorpool replay</title>\n\
         <style>body{font-family:sans-serif;margin:2em} td,th{padding:2px 10px;text-align:right} th{border-bottom:1px solid #999}</style>\n\
         </head><body>\n<h1>tensorpool replay: live and reserved bytes</h1>\n",
    );
    for r in reports {
        let mut chart_svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif">"#
        );
        chart(&mut chart_svg, r, 0.0);
        chart_svg.push_str("</svg>");
        let _ = writeln!(out, "<h2>{}</h2>\n{chart_svg}", escape(&r.trace));
        let _ = writeln!(
            out,
            "<table><tr><th>allocator</th><th>ns/event</th><th>peak reserved</th><th>efficiency</th><th>page faults</th></tr>"
        );
        for a in &r.allocators {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                a.name,
                match a.ns_per_event.is_finite() {
                    true => format!("{:.1}", a.ns_per_event),
                    false => "-".to_string(),
                },
                format_bytes(a.peak_reserved_bytes as usize),
                // No live bytes at the peak: no efficiency (as in the text table).
                match a.efficiency.is_finite() {
                    true => format!("{:.3}", a.efficiency),
                    false => "-".to_string(),
                },
                a.page_faults
            );
        }
        let _ = writeln!(
            out,
            "</table><p>peak live {}, {} events</p>",
            format_bytes(r.peak_live_bytes as usize),
            r.events
        );
    }
    out.push_str("</body></html>\n");
    out
}

/// Rectangles drawn at most: the largest buffers, so that a plan of a whole program's
/// recording stays a picture a browser opens.
pub const MOST_BUFFERS: usize = 20_000;

/// The plan (`placements` by id, in an arena of `arena` bytes) as an SVG picture.
pub fn plan_svg(title: &str, placements: &[Placement], arena: u64) -> String {
    let (left, right, pad_top, bottom) = MARGIN;
    let height = 2.0 * HEIGHT;
    let plot_w = WIDTH - left - right;
    let plot_h = height - pad_top - bottom;
    let mut shown: Vec<&Placement> = placements.iter().filter(|p| p.lifetime.size > 0).collect();
    let events = shown
        .iter()
        .map(|p| p.lifetime.upper)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    shown.sort_by_key(|p| std::cmp::Reverse(p.lifetime.size));
    let left_out = shown.len().saturating_sub(MOST_BUFFERS);
    shown.truncate(MOST_BUFFERS);
    let max_y = arena.max(1) as f64;
    let x = |e: usize| left + e as f64 / events * plot_w;
    let y = |b: u64| pad_top + plot_h - b as f64 / max_y * plot_h;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    out.push('\n');
    let more = match left_out {
        0 => String::new(),
        n => format!(" ({n} smallest buffers not drawn)"),
    };
    let _ = writeln!(
        out,
        r#"<text x="{left}" y="18" font-size="14" font-weight="bold">{}: {} buffers in {}{more}</text>"#,
        escape(title),
        placements.len(),
        format_bytes(arena as usize)
    );
    for i in 0..=4 {
        let bytes = arena / 4 * i;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"#,
            left - 6.0,
            y(bytes) + 4.0,
            format_bytes(bytes as usize)
        );
    }
    for p in shown {
        let l = &p.lifetime;
        let (x0, x1) = (x(l.lower), x(l.upper));
        let (y0, y1) = (y(p.offset + l.size), y(p.offset));
        // A colour per buffer, from its id, so that neighbours tell apart.
        let hue = (u64::from(l.id) * 137) % 360;
        let _ = writeln!(
            out,
            r##"<rect x="{x0:.2}" y="{y0:.2}" width="{:.2}" height="{:.2}" fill="hsl({hue},60%,60%)" stroke="#333" stroke-width="0.2"><title>buffer {}: {} at offset {}, events {}-{}</title></rect>"##,
            (x1 - x0).max(0.5),
            (y1 - y0).max(0.5),
            l.id,
            format_bytes(l.size as usize),
            p.offset,
            l.lower,
            l.upper
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{pad_top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/><text x="{}" y="{}" font-size="11" text-anchor="middle">event</text>"##,
        left + plot_w / 2.0,
        height - 8.0
    );
    out.push_str("</svg>\n");
    out
}
