//! Counters of the token path, rendered in the Prometheus text format by `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Plain atomic counters; cheap to bump on the hot path.
#[derive(Debug, Default)]
pub struct TokenMetrics {
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub negative_hits: AtomicU64,
    pub validations_ok: AtomicU64,
    pub validations_fail: AtomicU64,
    pub introspections_ok: AtomicU64,
    pub introspections_fail: AtomicU64,
    pub introspections_error: AtomicU64,
    pub jwks_fetches_ok: AtomicU64,
    pub jwks_fetches_fail: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl TokenMetrics {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition (version 0.0.4) lines for these counters.
    /// `cache_entries` is the current number of cached identities, `negative_entries` of
    /// remembered refusals (gauges).
    pub fn render_prometheus(&self, cache_entries: u64, negative_entries: u64) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(1024);
        let mut counter = |name: &str, help: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (labels, v) in rows {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        };
        counter(
            "portcullis_token_cache_hits_total",
            "Bearer tokens answered from the identity cache.",
            &[("", g(&self.cache_hits))],
        );
        counter(
            "portcullis_token_cache_misses_total",
            "Bearer tokens not in the identity cache.",
            &[("", g(&self.cache_misses))],
        );
        counter(
            "portcullis_token_negative_cache_hits_total",
            "Bearer tokens refused from the negative cache.",
            &[("", g(&self.negative_hits))],
        );
        counter(
            "portcullis_token_validations_total",
            "Local JWT validations by result.",
            &[
                ("result=\"ok\"", g(&self.validations_ok)),
                ("result=\"fail\"", g(&self.validations_fail)),
            ],
        );
        counter(
            "portcullis_token_introspections_total",
            "Introspection / userinfo calls by result (fail: token refused; error: provider unavailable).",
            &[
                ("result=\"ok\"", g(&self.introspections_ok)),
                ("result=\"fail\"", g(&self.introspections_fail)),
                ("result=\"error\"", g(&self.introspections_error)),
            ],
        );
        counter(
            "portcullis_jwks_fetches_total",
            "JWKS fetches by result.",
            &[
                ("result=\"ok\"", g(&self.jwks_fetches_ok)),
                ("result=\"error\"", g(&self.jwks_fetches_fail)),
            ],
        );
        let _ = writeln!(
            out,
            "# HELP portcullis_token_cache_entries Identities in the token cache.\n# TYPE portcullis_token_cache_entries gauge\nportcullis_token_cache_entries {cache_entries}"
        );
        let _ = writeln!(
            out,
            "# HELP portcullis_token_negative_cache_entries Refused bearer tokens remembered (bounded).\n# TYPE portcullis_token_negative_cache_entries gauge\nportcullis_token_negative_cache_entries {negative_entries}"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = TokenMetrics::default();
        bump(&m.cache_hits);
        bump(&m.cache_hits);
        bump(&m.jwks_fetches_fail);
        let text = m.render_prometheus(7, 3);
        assert!(text.contains("# TYPE portcullis_token_cache_hits_total counter\n"));
        assert!(text.contains("\nportcullis_token_cache_hits_total 2\n"));
        assert!(text.contains("\nportcullis_jwks_fetches_total{result=\"error\"} 1\n"));
        assert!(text.contains("\nportcullis_token_validations_total{result=\"ok\"} 0\n"));
        assert!(text.contains("\nportcullis_token_cache_entries 7\n"));
        assert!(text.contains("\nportcullis_token_negative_cache_entries 3\n"));
    }
}
