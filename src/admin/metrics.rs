//! Process metrics, rendered in the Prometheus text format. Plain atomics on the hot
//! path (a few relaxed increments per request, no lock); refusals and login events,
//! which have open-ended labels, go to small locked maps off the hot path.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::exposition::{family, label, latency_bounds, single, Histogram};

/// How a request was judged: the label `mode` of `portcullis_auth_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// A public route, or a CORS preflight let through without an identity.
    Public,
    Bearer,
    Session,
    /// `/oauth2/auth` refused before any route was judged (untrusted peer, no original
    /// URI, no route).
    ForwardAuth,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Public => "public",
            Mode::Bearer => "bearer",
            Mode::Session => "session",
            Mode::ForwardAuth => "forward_auth",
        }
    }
}

/// A refused decision's labels: mode, result (`deny`: the client's fault; `error`: the
/// provider's or the proxy's) and reason code.
type RefusedKey = (Mode, &'static str, String);

/// One route label's counters; the same label keeps its counters across reloads.
pub struct RouteMetrics {
    /// The route's name: its label in metrics and the access log.
    pub name: Arc<str>,
    /// By status class: 1xx..5xx.
    status: [AtomicU64; 5],
    latency: Histogram,
    /// Allowed decisions by mode (public, bearer, session).
    allowed: [AtomicU64; 3],
    refused: Mutex<BTreeMap<RefusedKey, u64>>,
}

impl RouteMetrics {
    fn new(name: Arc<str>, bounds: Arc<[f64]>) -> RouteMetrics {
        RouteMetrics {
            name,
            status: Default::default(),
            latency: Histogram::new(bounds),
            allowed: Default::default(),
            refused: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn record(&self, status: u16, latency: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.status[class].fetch_add(1, Relaxed);
        self.latency.observe(latency);
    }

    /// An auth decision that let the request through.
    pub fn allowed(&self, mode: Mode) {
        let i = match mode {
            Mode::Public | Mode::ForwardAuth => 0,
            Mode::Bearer => 1,
            Mode::Session => 2,
        };
        self.allowed[i].fetch_add(1, Relaxed);
    }

    /// An auth decision that refused the request, with its reason code.
    pub fn refused(&self, mode: Mode, client_fault: bool, reason: impl std::fmt::Display) {
        let result = if client_fault { "deny" } else { "error" };
        let mut m = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((mode, result, reason.to_string())).or_default() += 1;
    }
}

/// The steps of the browser login: the labels of the login counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flow {
    Start,
    Callback,
    Refresh,
    SignOut,
    BackchannelLogout,
}

impl Flow {
    const ALL: [Flow; 5] = [
        Flow::Start,
        Flow::Callback,
        Flow::Refresh,
        Flow::SignOut,
        Flow::BackchannelLogout,
    ];

    fn family(self) -> (&'static str, &'static str) {
        match self {
            Flow::Start => (
                "portcullis_login_starts_total",
                "Logins started (/oauth2/start), by outcome.",
            ),
            Flow::Callback => (
                "portcullis_login_callbacks_total",
                "Provider callbacks (/oauth2/callback), by outcome: ok or why the login failed.",
            ),
            Flow::Refresh => (
                "portcullis_session_refreshes_total",
                "Session token refreshes, by outcome (ok, refused, inconsistent, unavailable, kept).",
            ),
            Flow::SignOut => (
                "portcullis_sign_outs_total",
                "Sign-outs (/oauth2/sign_out), by outcome.",
            ),
            Flow::BackchannelLogout => (
                "portcullis_backchannel_logouts_total",
                "Back-channel logout tokens (/oauth2/backchannel_logout), by outcome: ok or why the token was refused.",
            ),
        }
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

pub struct Metrics {
    pub in_flight: AtomicI64,
    pub connections_open: AtomicI64,
    pub connections_total: AtomicU64,
    /// `server.limits.max_connections` as started (a reload does not change it).
    pub connections_max: AtomicU64,
    /// Accepted connections that found every slot taken and waited for one.
    pub connections_limit_waits: AtomicU64,
    upstream_errors: [AtomicU64; 3],
    /// Request latency bucket bounds (up to the largest timeout configured at start).
    bounds: Arc<[f64]>,
    routes: Mutex<Vec<Arc<RouteMetrics>>>,
    flows: Mutex<BTreeMap<(Flow, &'static str), u64>>,
    sources: Mutex<Vec<MetricsSource>>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(Duration::from_secs(60))
    }
}

impl Metrics {
    /// `largest_timeout`: the request histogram's buckets reach it.
    pub fn new(largest_timeout: Duration) -> Metrics {
        Metrics {
            in_flight: AtomicI64::new(0),
            connections_open: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            connections_max: AtomicU64::new(0),
            connections_limit_waits: AtomicU64::new(0),
            upstream_errors: Default::default(),
            bounds: latency_bounds(largest_timeout),
            routes: Mutex::new(Vec::new()),
            flows: Mutex::new(BTreeMap::new()),
            sources: Mutex::new(Vec::new()),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            ready: AtomicBool::new(false),
        }
    }

    /// The counters of a route label; the same label keeps its counters across reloads.
    pub fn route(&self, name: &Arc<str>) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = routes.iter().find(|m| &m.name == name) {
            return m.clone();
        }
        let m = Arc::new(RouteMetrics::new(name.clone(), self.bounds.clone()));
        routes.push(m.clone());
        m
    }

    /// The largest request latency with a finite bucket, seconds.
    pub fn largest_bucket(&self) -> f64 {
        self.bounds.last().copied().unwrap_or(0.0)
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].fetch_add(1, Relaxed);
    }

    /// A step of the browser login and how it ended (`ok`, or a short code).
    pub fn flow(&self, flow: Flow, outcome: &'static str) {
        let mut m = self.flows.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((flow, outcome)).or_default() += 1;
    }

    pub fn add_source(&self, source: MetricsSource) {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(source);
    }

    pub fn render(&self) -> String {
        let mut o = String::with_capacity(8192);
        let routes = self
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        family(
            &mut o,
            "portcullis_build_info",
            "gauge",
            "Always 1; the version of the running binary in its label.",
        );
        let _ = writeln!(
            o,
            "portcullis_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        family(
            &mut o,
            "portcullis_requests_total",
            "counter",
            "Requests answered, by route and status class.",
        );
        for m in &routes {
            let name = label(&m.name);
            for (i, c) in m.status.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "portcullis_requests_total{{route=\"{name}\",status=\"{}xx\"}} {}",
                    i + 1,
                    c.load(Relaxed)
                );
            }
        }
        family(
            &mut o,
            "portcullis_request_duration_seconds",
            "histogram",
            "Time from request head to response head.",
        );
        for m in &routes {
            let labels = format!("route=\"{}\"", label(&m.name));
            m.latency
                .render(&mut o, "portcullis_request_duration_seconds", &labels);
        }
        self.render_decisions(&mut o, &routes);
        self.render_flows(&mut o);
        single(
            &mut o,
            "portcullis_requests_in_flight",
            "gauge",
            "Requests being handled.",
            self.in_flight.load(Relaxed),
        );
        single(
            &mut o,
            "portcullis_connections_open",
            "gauge",
            "Open client connections.",
            self.connections_open.load(Relaxed),
        );
        single(
            &mut o,
            "portcullis_connections_total",
            "counter",
            "Client connections accepted.",
            self.connections_total.load(Relaxed),
        );
        single(
            &mut o,
            "portcullis_connections_max",
            "gauge",
            "server.limits.max_connections: open client connections allowed at once.",
            self.connections_max.load(Relaxed),
        );
        single(
            &mut o,
            "portcullis_connections_limit_waits_total",
            "counter",
            "Connections accepted while max_connections were open: each waited for a slot, and while it waited its worker accepted nothing more (further clients queue in the listen backlog).",
            self.connections_limit_waits.load(Relaxed),
        );
        family(
            &mut o,
            "portcullis_upstream_errors_total",
            "counter",
            "Failed upstream exchanges, by kind.",
        );
        for (i, kind) in ["connect", "timeout", "other"].iter().enumerate() {
            let _ = writeln!(
                o,
                "portcullis_upstream_errors_total{{kind=\"{kind}\"}} {}",
                self.upstream_errors[i].load(Relaxed)
            );
        }
        family(
            &mut o,
            "portcullis_config_reloads_total",
            "counter",
            "Config reloads (SIGHUP), by result.",
        );
        let _ = writeln!(
            o,
            "portcullis_config_reloads_total{{result=\"ok\"}} {}\nportcullis_config_reloads_total{{result=\"error\"}} {}",
            self.reloads_ok.load(Relaxed),
            self.reloads_failed.load(Relaxed)
        );
        super::process::render(&mut o);
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

    fn render_decisions(&self, o: &mut String, routes: &[Arc<RouteMetrics>]) {
        family(
            o,
            "portcullis_auth_decisions_total",
            "counter",
            "Auth decisions by route, mode (public, bearer, session, forward_auth), result (allow, deny, error) and reason code.",
        );
        for m in routes {
            let route = label(&m.name);
            for (i, mode) in [Mode::Public, Mode::Bearer, Mode::Session]
                .iter()
                .enumerate()
            {
                let n = m.allowed[i].load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        o,
                        "portcullis_auth_decisions_total{{route=\"{route}\",mode=\"{}\",result=\"allow\",reason=\"-\"}} {n}",
                        mode.as_str()
                    );
                }
            }
            let refused = m.refused.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for ((mode, result, reason), n) in refused {
                let _ = writeln!(
                    o,
                    "portcullis_auth_decisions_total{{route=\"{route}\",mode=\"{}\",result=\"{result}\",reason=\"{}\"}} {n}",
                    mode.as_str(),
                    label(&reason)
                );
            }
        }
    }

    fn render_flows(&self, o: &mut String) {
        let flows = self.flows.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for flow in Flow::ALL {
            let (name, help) = flow.family();
            family(o, name, "counter", help);
            // `ok` always, so that the family is there before the first login.
            if !flows.contains_key(&(flow, "ok")) {
                let _ = writeln!(o, "{name}{{outcome=\"ok\"}} 0");
            }
            for ((_, outcome), n) in flows
                .range((flow, "")..)
                .take_while(|((f, _), _)| *f == flow)
            {
                let _ = writeln!(o, "{name}{{outcome=\"{}\"}} {n}", label(outcome));
            }
        }
    }
}
