//! The per-driver plot of the HTML report, as inline SVG: live mappings (left axis) and
//! mapped bytes (right axis) as step lines over time, violations as triangles on the
//! time axis, each with a `<title>` tooltip.
//!
//! Hand-written rather than drawn with a plotting crate: the plot is two step lines, a
//! row of markers and two labelled axes (about a hundred lines here), it must be inline
//! SVG inside the page with classes and tooltips the page and its browser test address,
//! and every label passes through the report's one HTML escape. plotters' SVG backend
//! would bring a dependency tree and a document of its own to cut into the page for no
//! drawing this needs.

use super::escape;
use std::fmt::Write as _;

/// One instant of a driver's series, relative to the start of the report's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// Nanoseconds since the first sample.
    pub t_ns: u64,
    /// Live mappings.
    pub live: u64,
    /// Bytes they span.
    pub bytes: u64,
}

/// A violation on the time axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    /// Nanoseconds since the first sample.
    pub t_ns: u64,
    /// The tooltip (`#3 IOSV001 unmap-size-mismatch (error)`).
    pub label: String,
    /// `error`, `warning` or `note`.
    pub severity: String,
}

const W: f64 = 640.0;
const H: f64 = 220.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 72.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 40.0;

/// The live-mappings axis maximum: the smallest of 4, 8, 20, 40, 80, 200, … at or above
/// `max`, so that the quarter ticks are whole numbers.
fn nice_count(max: f64) -> f64 {
    let mut scale = 1.0;
    loop {
        for m in [4.0, 8.0, 20.0] {
            if max <= m * scale {
                return m * scale;
            }
        }
        scale *= 10.0;
        if scale > 1e18 {
            return max;
        }
    }
}

/// The bytes axis maximum: the power of two at or above `max` (at least 4 KiB), so that
/// the quarter ticks are round sizes.
fn nice_bytes(max: f64) -> f64 {
    let mut v = 4096.0;
    while v < max && v < 1.8e19 {
        v *= 2.0;
    }
    v
}

/// Bytes as people read them (`512`, `64K`, `16M`, `2G`).
pub fn bytes_label(v: f64) -> String {
    const UNITS: [(&str, f64); 4] = [
        ("T", 1_099_511_627_776.0),
        ("G", 1_073_741_824.0),
        ("M", 1_048_576.0),
        ("K", 1024.0),
    ];
    for (u, scale) in UNITS {
        if v >= scale {
            let x = v / scale;
            return if (x - x.round()).abs() < 0.05 {
                format!("{x:.0}{u}")
            } else {
                format!("{x:.1}{u}")
            };
        }
    }
    format!("{v:.0}")
}

/// A time as people read it, from nanoseconds (`0`, `250us`, `12ms`, `3.5s`).
pub fn time_label(ns: f64) -> String {
    if ns <= 0.0 {
        "0".to_string()
    } else if ns < 1e6 {
        format!("{:.0}us", ns / 1e3)
    } else if ns < 1e9 {
        let ms = ns / 1e6;
        if ms < 10.0 {
            format!("{ms:.1}ms")
        } else {
            format!("{ms:.0}ms")
        }
    } else {
        format!("{:.1}s", ns / 1e9)
    }
}

#[allow(clippy::cast_precision_loss)]
fn f(v: u64) -> f64 {
    v as f64
}

/// The SVG of one driver's series. `name` labels the figure for assistive technology.
pub fn svg(name: &str, series: &[Point], marks: &[Mark]) -> String {
    let span = series
        .iter()
        .map(|p| p.t_ns)
        .chain(marks.iter().map(|m| m.t_ns))
        .max()
        .unwrap_or(0)
        .max(1);
    let t_max = f(span);
    let live_max = nice_count(f(series.iter().map(|p| p.live).max().unwrap_or(0)));
    let bytes_max = nice_bytes(f(series.iter().map(|p| p.bytes).max().unwrap_or(0)));
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |t: u64| LEFT + f(t) / t_max * pw;
    let y_live = |v: u64| TOP + ph - f(v) / live_max * ph;
    let y_bytes = |v: u64| TOP + ph - f(v) / bytes_max * ph;

    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="series" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="{}">"#,
        escape(&format!(
            "live mappings and mapped bytes of {name} over time"
        ))
    );
    // Grid and axes.
    for i in 0..=4 {
        let frac = f64::from(i) / 4.0;
        let y = TOP + ph - frac * ph;
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#e3e6ec"/>"##,
            LEFT + pw
        );
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="#2c6fbb">{}</text>"##,
            LEFT - 6.0,
            y + 4.0,
            escape(&format!("{:.0}", live_max * frac))
        );
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" fill="#d9822b">{}</text>"##,
            LEFT + pw + 6.0,
            y + 4.0,
            escape(&bytes_label(bytes_max * frac))
        );
        let tx = LEFT + frac * pw;
        let _ = write!(
            s,
            r##"<text x="{tx:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#5d6575">{}</text>"##,
            TOP + ph + 16.0,
            escape(&time_label(t_max * frac))
        );
    }
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw:.1}" height="{ph:.1}" fill="none" stroke="#9aa3b2"/>"##
    );
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#5d6575">time</text>"##,
        LEFT + pw / 2.0,
        H - 6.0
    );
    // Step lines: a value holds until the next sample.
    for (class, color, y) in [
        ("bytes", "#d9822b", &y_bytes as &dyn Fn(u64) -> f64),
        ("live", "#2c6fbb", &y_live as &dyn Fn(u64) -> f64),
    ] {
        let mut d = String::new();
        for (i, p) in series.iter().enumerate() {
            let v = if class == "live" { p.live } else { p.bytes };
            if i == 0 {
                let _ = write!(d, "M{:.1},{:.1}", x(p.t_ns), y(v));
            } else {
                let _ = write!(d, " H{:.1} V{:.1}", x(p.t_ns), y(v));
            }
        }
        if let Some(last) = series.last() {
            if last.t_ns < span {
                let _ = write!(d, " H{:.1}", x(span));
            }
        }
        let _ = write!(
            s,
            r#"<path class="{class}" d="{d}" fill="none" stroke="{color}" stroke-width="2"/>"#
        );
    }
    // Violations: triangles on the time axis.
    for m in marks {
        let cx = x(m.t_ns);
        let base = TOP + ph;
        let color = match m.severity.as_str() {
            "warning" => "#b26a00",
            "note" => "#2c6fbb",
            _ => "#c62828",
        };
        let _ = write!(
            s,
            r#"<g class="violation"><title>{}</title><line x1="{cx:.1}" x2="{cx:.1}" y1="{TOP}" y2="{base:.1}" stroke="{color}" stroke-opacity="0.25"/><path d="M{cx:.1},{:.1} l-5,9 h10 z" fill="{color}"/></g>"#,
            escape(&m.label),
            base - 9.0
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_labels_and_marks() {
        assert_eq!(nice_count(0.0), 4.0);
        assert_eq!(nice_count(5.0), 8.0);
        assert_eq!(nice_count(13.0), 20.0);
        assert_eq!(nice_count(1200.0), 2000.0);
        assert_eq!(nice_bytes(0.0), 4096.0);
        assert_eq!(nice_bytes(0x1078000 as f64), 32.0 * 1_048_576.0);
        assert_eq!(bytes_label(16.0 * 1_048_576.0), "16M");
        assert_eq!(bytes_label(1536.0), "1.5K");
        assert_eq!(time_label(2.5e6), "2.5ms");
        let svg = svg(
            "a<b",
            &[
                Point {
                    t_ns: 0,
                    live: 0,
                    bytes: 0,
                },
                Point {
                    t_ns: 10,
                    live: 3,
                    bytes: 0x3000,
                },
            ],
            &[Mark {
                t_ns: 5,
                label: "#1 IOSV001 <x>".into(),
                severity: "error".into(),
            }],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("class=\"live\""));
        assert!(svg.contains("class=\"bytes\""));
        assert!(svg.contains("<title>#1 IOSV001 &lt;x&gt;</title>"));
        assert!(svg.contains("a&lt;b"));
        assert!(!svg.contains("NaN"));
    }
}
