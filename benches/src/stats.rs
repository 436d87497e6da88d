//! Latency summaries (hdrhistogram) and number formatting.

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Percentiles of a set of samples, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Summary {
    /// From samples in nanoseconds.
    pub fn of(samples: &[u64]) -> Summary {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).expect("histogram bounds");
        for &s in samples {
            h.saturating_record(s.max(1));
        }
        Summary::from_hist(&h)
    }

    pub fn from_hist(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Summary {
            count: h.len(),
            min: us(h.min()),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.5)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "count": self.count, "min_us": self.min, "mean_us": self.mean, "p50_us": self.p50,
            "p99_us": self.p99, "p999_us": self.p999, "max_us": self.max,
        })
    }
}

/// Samples (ns) from a JSON array.
pub fn samples(v: &Value) -> Vec<u64> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default()
}

/// `1.5 GB/s` style (decimal units).
pub fn rate(bytes_per_s: f64) -> String {
    if bytes_per_s >= 1e9 {
        format!("{:.2} GB/s", bytes_per_s / 1e9)
    } else {
        format!("{:.0} MB/s", bytes_per_s / 1e6)
    }
}

/// `4 KiB`, `256 MiB`.
pub fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// Parses `4KiB`, `256MiB`, `1G`, `65536`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("{s:?} is not a size (e.g. 4KiB, 256MiB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(|| format!("size {s:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_and_sizes() {
        let s = Summary::of(&(1..=1000).map(|i| i * 1000).collect::<Vec<_>>());
        assert!((s.p50 - 500.0).abs() < 2.0, "{s:?}");
        assert!((s.p99 - 990.0).abs() < 3.0, "{s:?}");
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert!(parse_size("0").is_err());
        assert_eq!(size(4096), "4 KiB");
        assert_eq!(size(256 << 20), "256 MiB");
    }
}
