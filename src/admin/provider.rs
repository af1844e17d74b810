//! `portcullis_provider_request_duration_seconds{issuer,endpoint}`: how long calls to the
//! identity provider take, by issuer and endpoint. Rendered into `/metrics` through
//! [`Metrics::add_source`](super::metrics::Metrics::add_source). Provider calls are rare
//! (keys and answers are cached), so finding a histogram takes a small lock; observing
//! into it does not.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::exposition::{family, label, latency_bounds, Histogram};

/// Which provider endpoint a call went to: the label `endpoint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    /// `/.well-known/openid-configuration`.
    Discovery,
    Jwks,
    /// Authorization code exchange and refresh.
    Token,
    Introspection,
    Userinfo,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Discovery => "discovery",
            Endpoint::Jwks => "jwks",
            Endpoint::Token => "token",
            Endpoint::Introspection => "introspection",
            Endpoint::Userinfo => "userinfo",
        }
    }
}

const NAME: &str = "portcullis_provider_request_duration_seconds";

/// One issuer's histogram of one endpoint.
type ByCall = (Arc<str>, Endpoint, Arc<Histogram>);

/// The histograms, one per issuer and endpoint seen (kept for the life of the process).
pub struct ProviderMetrics {
    bounds: Arc<[f64]>,
    by_call: Mutex<Vec<ByCall>>,
}

impl Default for ProviderMetrics {
    fn default() -> Self {
        ProviderMetrics::new()
    }
}

impl ProviderMetrics {
    /// Buckets from 0.5 ms to 60 s (the longest provider timeout that makes sense; a
    /// call past the last bound still counts, in `+Inf`).
    pub fn new() -> ProviderMetrics {
        ProviderMetrics {
            bounds: latency_bounds(Duration::from_secs(60)),
            by_call: Mutex::new(Vec::new()),
        }
    }

    /// One finished call (answered or failed) that took `took`.
    pub fn observe(&self, issuer: &str, endpoint: Endpoint, took: Duration) {
        self.histogram(issuer, endpoint).observe(took);
    }

    fn histogram(&self, issuer: &str, endpoint: Endpoint) -> Arc<Histogram> {
        let mut all = self.by_call.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, h)) = all
            .iter()
            .find(|(i, e, _)| *e == endpoint && &**i == issuer)
        {
            return h.clone();
        }
        let h = Arc::new(Histogram::new(self.bounds.clone()));
        all.push((issuer.into(), endpoint, h.clone()));
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        h
    }

    /// The family, in the Prometheus text format (its head even before any call).
    pub fn render(&self, o: &mut String) {
        family(
            o,
            NAME,
            "histogram",
            "Calls to the identity provider, by issuer and endpoint (discovery, jwks, token, introspection, userinfo): request to the whole answer read, failures included.",
        );
        let all = self
            .by_call
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (issuer, endpoint, h) in all {
            let labels = format!(
                "issuer=\"{}\",endpoint=\"{}\"",
                label(&issuer),
                endpoint.as_str()
            );
            h.render(o, NAME, &labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_by_issuer_and_endpoint() {
        let m = ProviderMetrics::new();
        let mut o = String::new();
        m.render(&mut o);
        assert!(o.contains(&format!("# TYPE {NAME} histogram\n")), "{o}");
        assert!(!o.contains("_bucket"), "{o}");
        m.observe(
            "https://idp.example/",
            Endpoint::Jwks,
            Duration::from_millis(3),
        );
        m.observe(
            "https://idp.example/",
            Endpoint::Jwks,
            Duration::from_millis(70),
        );
        m.observe(
            "https://idp.example/",
            Endpoint::Token,
            Duration::from_secs(2),
        );
        m.observe(
            "https://b\"x",
            Endpoint::Discovery,
            Duration::from_micros(100),
        );
        let mut o = String::new();
        m.render(&mut o);
        let jwks = "issuer=\"https://idp.example/\",endpoint=\"jwks\"";
        assert!(
            o.contains(&format!("{NAME}_bucket{{{jwks},le=\"0.005\"}} 1\n")),
            "{o}"
        );
        assert!(
            o.contains(&format!("{NAME}_bucket{{{jwks},le=\"0.1\"}} 2\n")),
            "{o}"
        );
        assert!(o.contains(&format!("{NAME}_count{{{jwks}}} 2\n")), "{o}");
        assert!(
            o.contains(&format!(
                "{NAME}_count{{issuer=\"https://idp.example/\",endpoint=\"token\"}} 1\n"
            )),
            "{o}"
        );
        // Label values are escaped.
        assert!(
            o.contains(&format!(
                "{NAME}_count{{issuer=\"https://b\\\"x\",endpoint=\"discovery\"}} 1\n"
            )),
            "{o}"
        );
        assert!(
            o.contains(&format!("{NAME}_bucket{{{jwks},le=\"60\"}} 2\n")),
            "{o}"
        );
    }
}
