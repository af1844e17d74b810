//! Pieces of the Prometheus text format (version 0.0.4) shared by every metric family:
//! headers, label escaping, and a lock-free latency histogram.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// `# HELP` and `# TYPE` of a family.
pub fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A family of one unlabelled sample.
pub fn single(o: &mut String, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
    family(o, name, kind, help);
    let _ = writeln!(o, "{name} {v}");
}

/// Escapes a label value (`\`, `"`, newline).
pub fn label(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// A latency histogram of fixed bounds: a relaxed increment or three per observation.
pub struct Histogram {
    bounds: Arc<[f64]>,
    /// Per bucket (not cumulative); the last is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: Arc<[f64]>) -> Histogram {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram {
            bounds,
            counts,
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    /// The samples of this histogram under `name` with `labels` (`a="x",b="y"`, escaped,
    /// or empty).
    pub fn render(&self, o: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Relaxed);
            match self.bounds.get(i) {
                Some(b) => {
                    let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let l = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(o, "{name}_sum{l} {sum}\n{name}_count{l} {cumulative}");
    }
}

/// Latency bounds, seconds: sub-millisecond to five seconds, then on to the first bound
/// at or past `up_to` (the largest configured timeout), so that a request that runs into
/// its timeout still lands in a finite bucket.
pub fn latency_bounds(up_to: Duration) -> Arc<[f64]> {
    const FINE: [f64; 13] = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    ];
    const COARSE: [f64; 10] = [
        10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 86400.0,
    ];
    let up_to = up_to.as_secs_f64();
    let mut v = FINE.to_vec();
    for b in COARSE {
        if v.last().is_some_and(|last| *last >= up_to) {
            break;
        }
        v.push(b);
    }
    v.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_reach_the_largest_timeout() {
        let b = latency_bounds(Duration::from_secs(60));
        assert_eq!(b.last(), Some(&60.0));
        let b = latency_bounds(Duration::from_secs(90));
        assert_eq!(b.last(), Some(&120.0));
        let b = latency_bounds(Duration::from_secs(1));
        assert_eq!(b.last(), Some(&5.0));
    }

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::new(latency_bounds(Duration::from_secs(10)));
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_secs(7));
        h.observe(Duration::from_secs(11));
        let mut o = String::new();
        h.render(&mut o, "x", "route=\"a\"");
        assert!(o.contains("x_bucket{route=\"a\",le=\"0.0005\"} 1\n"), "{o}");
        assert!(o.contains("x_bucket{route=\"a\",le=\"5\"} 1\n"), "{o}");
        assert!(o.contains("x_bucket{route=\"a\",le=\"10\"} 2\n"), "{o}");
        assert!(o.contains("x_bucket{route=\"a\",le=\"+Inf\"} 3\n"), "{o}");
        assert!(o.contains("x_count{route=\"a\"} 3\n"), "{o}");
        assert!(o.contains("x_sum{route=\"a\"} 18.0003\n"), "{o}");
        let mut o = String::new();
        h.render(&mut o, "y", "");
        assert!(
            o.contains("y_bucket{le=\"+Inf\"} 3\ny_sum 18.0003\ny_count 3\n"),
            "{o}"
        );
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
