//! The latency plot (`latency.svg`): latency in ms against percentile,
//! the percentile axis on the usual log scale of `1/(1-p)`, drawn from an
//! HdrHistogram with the same ticks as `latency.hgrm`.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::format::fmt_ms;

/// The plot as an SVG document, with a title and a subtitle line.
pub fn latency_svg(h: &Histogram<u64>, title: &str, subtitle: &str, p99_us: u64) -> String {
    const W: f64 = 800.0;
    const H: f64 = 480.0;
    let (x0, x1, y0, y1) = (70.0, W - 30.0, 64.0, H - 64.0);

    // (log10(1/(1-p)), ms), from the same ticks as latency.hgrm.
    let mut pts: Vec<(f64, f64)> = h
        .iter_quantiles(5)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| {
            (
                -(1.0 - v.quantile_iterated_to()).log10(),
                v.value_iterated_to() as f64 / 1000.0,
            )
        })
        .collect();
    let reach = pts.last().map_or(0.0, |p| p.0).ceil();
    let decades = reach.clamp(4.0, 7.0);
    if !h.is_empty() {
        pts.push((decades, h.max() as f64 / 1000.0));
    }
    let max_ms = pts.iter().map(|p| p.1).fold(0.0, f64::max);
    let (step, top) = nice_axis(max_ms);
    let sx = |x: f64| x0 + x.clamp(0.0, decades) / decades * (x1 - x0);
    let sy = |ms: f64| y1 - ms / top * (y1 - y0);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16" font-weight="bold">{}</text>"#,
        W / 2.0,
        xml_escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="44" text-anchor="middle" fill="#555">{}</text>"##,
        W / 2.0,
        xml_escape(subtitle)
    );
    // Horizontal gridlines with latency labels.
    let digits = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    let lines = (top / step).round() as u32;
    for k in 0..=lines {
        let v = f64::from(k) * step;
        let y = sy(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.digits$}</text>"##,
            x0 - 6.0,
            y + 4.0
        );
    }
    // Vertical gridlines at 0%, 90%, 99%, 99.9%...
    for d in 0..=decades as u32 {
        let x = sx(f64::from(d));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{y1}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            y1 + 18.0,
            percentile_label(d)
        );
    }
    let _ = writeln!(
        s,
        r#"<path d="M{x0} {y0} V{y1} H{x1}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (x0 + x1) / 2.0,
        H - 20.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" transform="rotate(-90)">latency (ms)</text>"#,
        -(y0 + y1) / 2.0
    );
    if pts.is_empty() {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#a00">no answers</text>"##,
            (x0 + x1) / 2.0,
            (y0 + y1) / 2.0
        );
    } else {
        let points: Vec<String> = pts
            .iter()
            .map(|&(x, ms)| format!("{:.1},{:.1}", sx(x), sy(ms)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
            points.join(" ")
        );
        let p99 = p99_us as f64 / 1000.0;
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#d62728"><title>p99 {} ms</title></circle>"##,
            sx(2.0),
            sy(p99),
            fmt_ms(p99_us)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A step of 1, 2 or 5 times a power of ten giving about five gridlines,
/// and the axis top (a multiple of it, at least `max`).
fn nice_axis(max: f64) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (0.2, 1.0);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = mag
        * if norm <= 1.0 {
            1.0
        } else if norm <= 2.0 {
            2.0
        } else if norm <= 5.0 {
            5.0
        } else {
            10.0
        };
    (step, ((max / step).ceil() * step).max(step))
}

/// `0%`, `90%`, `99%`, `99.9%`... for `1/(1-p) = 10^d`.
fn percentile_label(d: u32) -> String {
    match d {
        0 => "0%".to_owned(),
        1 => "90%".to_owned(),
        d => format!("99.{}%", "9".repeat(d as usize - 2)).replace(".%", "%"),
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_and_labels() {
        assert_eq!(nice_axis(0.0), (0.2, 1.0));
        assert_eq!(nice_axis(9.0), (2.0, 10.0));
        assert_eq!(nice_axis(250.0), (50.0, 250.0));
        let labels: Vec<String> = (0..=4).map(percentile_label).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%"]);
    }
}
