//! Process metrics, rendered in the Prometheus text format. Plain atomics: the hot path
//! adds a few relaxed increments per request and takes no lock.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Latency histogram bucket bounds, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// One route label's counters; the same label keeps its counters across reloads.
pub struct RouteMetrics {
    /// The route's name: its label in metrics and the access log.
    pub name: Arc<str>,
    /// By status class: 1xx..5xx.
    status: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl RouteMetrics {
    fn new(name: Arc<str>) -> RouteMetrics {
        RouteMetrics {
            name,
            status: Default::default(),
            buckets: Default::default(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn record(&self, status: u16, latency: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.status[class].fetch_add(1, Relaxed);
        let secs = latency.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(latency.as_micros() as u64, Relaxed);
    }
}

/// Upstream failures by kind.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamError {
    Connect,
    Timeout,
    Other,
}

/// Extra metric text from other parts (token cache, sessions), rendered with the rest.
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

#[derive(Default)]
pub struct Metrics {
    pub in_flight: AtomicI64,
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    upstream_errors: [AtomicU64; 3],
    routes: Mutex<Vec<Arc<RouteMetrics>>>,
    sources: Mutex<Vec<MetricsSource>>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub ready: AtomicBool,
}

impl Metrics {
    /// The counters of a route label; the same label keeps its counters across reloads.
    pub fn route(&self, name: &Arc<str>) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = routes.iter().find(|m| &m.name == name) {
            return m.clone();
        }
        let m = Arc::new(RouteMetrics::new(name.clone()));
        routes.push(m.clone());
        m
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].fetch_add(1, Relaxed);
    }

    pub fn add_source(&self, source: MetricsSource) {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(source);
    }

    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let routes = self
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        o.push_str(
            "# HELP portcullis_requests_total Requests answered, by route and status class.\n",
        );
        o.push_str("# TYPE portcullis_requests_total counter\n");
        for m in &routes {
            let name = &m.name;
            for (i, c) in m.status.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "portcullis_requests_total{{route=\"{}\",status=\"{}xx\"}} {}",
                    label(name),
                    i + 1,
                    c.load(Relaxed)
                );
            }
        }
        o.push_str(
            "# HELP portcullis_request_duration_seconds Time from request head to response head.\n",
        );
        o.push_str("# TYPE portcullis_request_duration_seconds histogram\n");
        for m in &routes {
            let name = &m.name;
            let mut cumulative = 0;
            for (i, b) in BUCKETS.iter().enumerate() {
                cumulative += m.buckets[i].load(Relaxed);
                let _ = writeln!(
                    o,
                    "portcullis_request_duration_seconds_bucket{{route=\"{}\",le=\"{}\"}} {}",
                    label(name),
                    b,
                    cumulative
                );
            }
            let count = m.count.load(Relaxed);
            let _ = writeln!(
                o,
                "portcullis_request_duration_seconds_bucket{{route=\"{}\",le=\"+Inf\"}} {count}",
                label(name)
            );
            let _ = writeln!(
                o,
                "portcullis_request_duration_seconds_sum{{route=\"{}\"}} {}",
                label(name),
                m.sum_micros.load(Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                o,
                "portcullis_request_duration_seconds_count{{route=\"{}\"}} {count}",
                label(name)
            );
        }
        gauge(
            &mut o,
            "portcullis_requests_in_flight",
            "Requests being handled.",
            self.in_flight.load(Relaxed),
        );
        gauge(
            &mut o,
            "portcullis_connections_open",
            "Open client connections.",
            self.connections_open.load(Relaxed),
        );
        counter(
            &mut o,
            "portcullis_connections_total",
            "Client connections accepted.",
            self.connections_total.load(Relaxed),
        );
        o.push_str("# HELP portcullis_upstream_errors_total Failed upstream exchanges, by kind.\n");
        o.push_str("# TYPE portcullis_upstream_errors_total counter\n");
        for (i, kind) in ["connect", "timeout", "other"].iter().enumerate() {
            let _ = writeln!(
                o,
                "portcullis_upstream_errors_total{{kind=\"{kind}\"}} {}",
                self.upstream_errors[i].load(Relaxed)
            );
        }
        o.push_str("# HELP portcullis_config_reloads_total Config reloads (SIGHUP), by result.\n");
        o.push_str("# TYPE portcullis_config_reloads_total counter\n");
        let _ = writeln!(
            o,
            "portcullis_config_reloads_total{{result=\"ok\"}} {}",
            self.reloads_ok.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "portcullis_config_reloads_total{{result=\"error\"}} {}",
            self.reloads_failed.load(Relaxed)
        );
        let sources = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for s in sources {
            s(&mut o);
        }
        o
    }
}

fn gauge(o: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
