//! Tracing setup, and the outermost layer of the request path ([`trace`]): request id,
//! span, metrics, one access-log line. OpenTelemetry traces: W3C `traceparent`
//! ([`traceparent`]), spans and the sampler ([`span`]), OTLP/HTTP export ([`otlp`]); the
//! provider call histograms and spans ([`provider`]), all owned by the one [`Telemetry`].
//!
//! Sensitive headers (`Authorization`, `Cookie`, `Set-Cookie`, `Proxy-Authorization`) and
//! query strings are never logged: the access log carries the canonical path only.

pub mod access;
mod access_layer;
pub mod otlp;
pub mod provider;
pub mod span;
pub mod trace;
pub mod traceparent;
pub mod writer;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

use crate::admin::metrics::Metrics;
use crate::admin::provider::ProviderMetrics;
use crate::config::TelemetryConfig;
use span::{ExportStats, Tracer};
pub use trace::{Trace, TraceLayer};

/// The process's telemetry beyond logs and request counters: the provider call
/// histograms, and while `[telemetry] otlp_endpoint` is set the tracer and its exporter.
/// One per process (made by `app`); generations take the tracer for their request path
/// and the provider transports take the whole.
pub struct Telemetry {
    pub provider: Arc<ProviderMetrics>,
    /// `Some` while traces are exported.
    tracer: ArcSwapOption<Tracer>,
    stats: Arc<ExportStats>,
    /// Started the first time tracing is on; kept (idle) if a reload turns it off.
    exporting: Mutex<Option<otlp::Exporting>>,
}

impl Telemetry {
    /// Registers the provider histograms and the span counters with `/metrics`.
    pub fn new(metrics: &Metrics) -> Arc<Telemetry> {
        let t = Arc::new(Telemetry {
            provider: Arc::new(ProviderMetrics::new()),
            tracer: ArcSwapOption::empty(),
            stats: Arc::new(ExportStats::default()),
            exporting: Mutex::new(None),
        });
        let provider = t.provider.clone();
        metrics.add_source(Arc::new(move |o: &mut String| provider.render(o)));
        let stats = t.stats.clone();
        metrics.add_source(Arc::new(move |o: &mut String| render_stats(&stats, o)));
        t
    }

    /// The tracer a generation of `cfg` gives its request path: `None` when traces are
    /// off. The first time they are on, the exporter is started (inside the current Tokio
    /// runtime) with `cfg`'s endpoint and ratio; a running one changes only in [`apply`].
    ///
    /// [`apply`]: Telemetry::apply
    pub fn tracer_for(
        &self,
        cfg: &TelemetryConfig,
    ) -> Result<Option<Arc<Tracer>>, otlp::StartError> {
        let Some(url) = &cfg.otlp_traces_url else {
            return Ok(None);
        };
        let mut exporting = self.exporting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = &*exporting {
            return Ok(Some(e.tracer.clone()));
        }
        let e = otlp::Exporting::start(url.clone(), cfg.sample_ratio, self.stats.clone())?;
        let tracer = e.tracer.clone();
        *exporting = Some(e);
        Ok(Some(tracer))
    }

    /// Makes `cfg` the running telemetry config (once its generation is in place): the
    /// exporter's endpoint and ratio, and whether provider calls are traced.
    pub fn apply(&self, cfg: &TelemetryConfig) {
        let exporting = self.exporting.lock().unwrap_or_else(|e| e.into_inner());
        match (&cfg.otlp_traces_url, &*exporting) {
            (Some(url), Some(e)) => {
                e.configure(url, cfg.sample_ratio);
                self.tracer.store(Some(e.tracer.clone()));
            }
            _ => self.tracer.store(None),
        }
    }

    /// The tracer while traces are exported.
    pub fn tracer(&self) -> Option<Arc<Tracer>> {
        self.tracer.load_full()
    }
}

fn render_stats(stats: &ExportStats, o: &mut String) {
    use std::fmt::Write;
    crate::admin::exposition::family(
        o,
        "portcullis_trace_spans_total",
        "counter",
        "Finished sampled spans, by what became of them: exported, dropped (export queue full) or failed (the collector refused them or could not be reached).",
    );
    for (result, c) in [
        ("exported", &stats.exported),
        ("dropped", &stats.dropped),
        ("failed", &stats.failed),
    ] {
        let _ = writeln!(
            o,
            "portcullis_trace_spans_total{{result=\"{result}\"}} {}",
            c.load(Relaxed)
        );
    }
}

/// Headers whose values never appear in logs, traces or errors.
pub const SENSITIVE_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Installs the global subscriber: the `RUST_LOG` filter (default `info`), the `fmt`
/// layer for every line but the access lines, and [`access_layer::AccessLayer`] for those
/// (the same shape, a fraction of the cost), all writing through [`writer`].
pub fn init(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{filter_fn, EnvFilter};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let not_access = filter_fn(|meta| meta.target() != "access");
    let out = writer::LogWriter::start();
    // Colour codes only for a person at a terminal, never into files or collectors.
    let ansi = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(out)
        .with_ansi(ansi);
    let lines = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(not_access)
            .boxed(),
        LogFormat::Pretty => fmt.with_target(true).with_filter(not_access).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(access_layer::AccessLayer {
            json: format == LogFormat::Json,
        })
        .try_init();
}
