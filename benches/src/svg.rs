//! The report's plot, written by hand: bandwidth against copy size (log-log lines, raw
//! transport throughput as dashed lines) and latency percentiles (log-scale bars).

use std::fmt::Write;

/// One line of the bandwidth chart: (size in bytes, bytes/s) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(usize, f64)>,
}

/// One group of the latency chart: p50, p99, p99.9 in µs.
pub struct Bars {
    pub name: String,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

const COLORS: [&str; 8] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];
const W: f64 = 620.0;
const H: f64 = 420.0;
const ML: f64 = 70.0;
const MR: f64 = 20.0;
const MT: f64 = 40.0;
const MB: f64 = 110.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Decades covering [lo, hi] (both > 0).
fn decades(lo: f64, hi: f64) -> (f64, f64) {
    let lo = lo.max(1e-12).log10().floor();
    let hi = hi.max(1e-12).log10().ceil();
    (lo, if hi <= lo { lo + 1.0 } else { hi })
}

fn frame(out: &mut String, x0: f64, title: &str, ylabel: &str, ylo: f64, yhi: f64, unit: impl Fn(f64) -> String) {
    let _ = write!(
        out,
        r##"<g transform="translate({x0},0)"><text x="{}" y="22" font-size="15" text-anchor="middle" font-weight="bold">{}</text>"##,
        W / 2.0,
        esc(title)
    );
    let _ = write!(out, r##"<rect x="{ML}" y="{MT}" width="{}" height="{}" fill="none" stroke="#444"/>"##, W - ML - MR, H - MT - MB);
    let mut d = ylo;
    while d <= yhi + 1e-9 {
        let y = MT + (H - MT - MB) * (1.0 - (d - ylo) / (yhi - ylo));
        let _ = write!(
            out,
            r##"<line x1="{ML}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            W - MR,
            ML - 4.0,
            y + 4.0,
            unit(10f64.powf(d))
        );
        d += 1.0;
    }
    let _ = write!(
        out,
        r##"<text transform="translate(14,{}) rotate(-90)" font-size="12" text-anchor="middle">{}</text>"##,
        (MT + H - MB) / 2.0,
        esc(ylabel)
    );
}

fn y_of(v: f64, ylo: f64, yhi: f64) -> f64 {
    let l = v.max(10f64.powf(ylo)).log10();
    MT + (H - MT - MB) * (1.0 - (l - ylo) / (yhi - ylo))
}

pub fn render(title: &str, series: &[Series], floors: &[(String, f64)], bars: &[Bars]) -> String {
    let mut out = String::new();
    let _ = write!(out, r##"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif">"##, 2.0 * W, H + 30.0);
    let _ = write!(
        out,
        r##"<rect width="100%" height="100%" fill="white"/><text x="{}" y="{}" font-size="12" text-anchor="middle" fill="#555">{}</text>"##,
        W,
        H + 20.0,
        esc(title)
    );

    // Bandwidth (GB/s) against size.
    let vals: Vec<f64> =
        series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).chain(floors.iter().map(|f| f.1)).filter(|v| *v > 0.0).collect();
    let sizes: Vec<usize> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    if let (Some(lo), Some(hi), Some(&smin), Some(&smax)) =
        (vals.iter().copied().reduce(f64::min), vals.iter().copied().reduce(f64::max), sizes.iter().min(), sizes.iter().max())
    {
        let (ylo, yhi) = decades(lo / 1e9, hi / 1e9);
        frame(&mut out, 0.0, "Copy bandwidth vs size", "GB/s (log)", ylo, yhi, |v| format!("{v}"));
        let (xlo, xhi) = ((smin as f64).log2(), (smax as f64).log2().max((smin as f64).log2() + 1.0));
        let x_of = |s: usize| ML + (W - ML - MR) * (((s as f64).log2() - xlo) / (xhi - xlo));
        let mut ticks: Vec<usize> = sizes.clone();
        ticks.sort_unstable();
        ticks.dedup();
        for s in ticks {
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle">{}</text>"##,
                x_of(s),
                H - MB + 14.0,
                crate::stats::size(s)
            );
        }
        for (i, (name, v)) in floors.iter().enumerate() {
            let y = y_of(*v / 1e9, ylo, yhi);
            let c = COLORS[(i + 4) % COLORS.len()];
            let _ = write!(
                out,
                r##"<line x1="{ML}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="{c}" stroke-dasharray="6,4"/><text x="{}" y="{:.1}" font-size="10" text-anchor="end" fill="{c}">{}</text>"##,
                W - MR,
                W - MR - 4.0,
                y - 3.0,
                esc(name)
            );
        }
        for (i, s) in series.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let pts: Vec<String> = s.points.iter().map(|(sz, v)| format!("{:.1},{:.1}", x_of(*sz), y_of(v / 1e9, ylo, yhi))).collect();
            let _ = write!(out, r##"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"##, pts.join(" "));
            for (sz, v) in &s.points {
                let _ = write!(out, r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"##, x_of(*sz), y_of(v / 1e9, ylo, yhi));
            }
            let ly = H - MB + 34.0 + 14.0 * (i / 2) as f64;
            let lx = ML + 260.0 * (i % 2) as f64;
            let _ = write!(
                out,
                r##"<line x1="{lx}" x2="{}" y1="{}" y2="{}" stroke="{c}" stroke-width="2"/><text x="{}" y="{ly}" font-size="11">{}</text>"##,
                lx + 18.0,
                ly - 4.0,
                ly - 4.0,
                lx + 22.0,
                esc(&s.name)
            );
        }
        out.push_str("</g>");
    }

    // Latency percentiles (µs, log bars).
    let all: Vec<f64> = bars.iter().flat_map(|b| [b.p50, b.p99, b.p999]).filter(|v| *v > 0.0).collect();
    if let (Some(lo), Some(hi)) = (all.iter().copied().reduce(f64::min), all.iter().copied().reduce(f64::max)) {
        let (ylo, yhi) = decades(lo, hi);
        frame(&mut out, W, "Latency percentiles", "µs (log)", ylo, yhi, |v| format!("{v}"));
        let group = (W - ML - MR) / bars.len().max(1) as f64;
        let bw = group / 4.0;
        for (i, b) in bars.iter().enumerate() {
            let gx = ML + group * i as f64 + bw / 2.0;
            for (j, v) in [b.p50, b.p99, b.p999].into_iter().enumerate() {
                let y = y_of(v, ylo, yhi);
                let _ = write!(
                    out,
                    r##"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {v:.1} µs</title></rect>"##,
                    gx + bw * j as f64,
                    bw - 1.0,
                    (H - MB - y).max(0.0),
                    COLORS[j],
                    esc(&b.name),
                    ["p50", "p99", "p99.9"][j]
                );
            }
            let tx = gx + bw * 1.5;
            let _ = write!(
                out,
                r##"<text transform="translate({tx:.1},{}) rotate(40)" font-size="10">{}</text>"##,
                H - MB + 12.0,
                esc(&b.name)
            );
        }
        for (j, name) in ["p50", "p99", "p99.9"].iter().enumerate() {
            let lx = W - MR - 170.0 + 56.0 * j as f64;
            let _ = write!(
                out,
                r##"<rect x="{lx}" y="{}" width="10" height="10" fill="{}"/><text x="{}" y="{}" font-size="11">{name}</text>"##,
                MT + 6.0,
                COLORS[j],
                lx + 13.0,
                MT + 15.0
            );
        }
        out.push_str("</g>");
    }
    out.push_str("</svg>\n");
    out
}
