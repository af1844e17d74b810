//! Tracing setup, and the outermost layer of the request path ([`trace`]): request id,
//! span, metrics, one access-log line.
//!
//! Sensitive headers (`Authorization`, `Cookie`, `Set-Cookie`, `Proxy-Authorization`) and
//! query strings are never logged: the access log carries the canonical path only.

pub mod access;
mod access_layer;
pub mod trace;
pub mod writer;

pub use trace::{Trace, TraceLayer};

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
