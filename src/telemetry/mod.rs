//! Tracing setup, and the outermost layer of the request path ([`trace`]): request id,
//! span, metrics, one access-log line.
//!
//! Sensitive headers (`Authorization`, `Cookie`, `Set-Cookie`, `Proxy-Authorization`) and
//! query strings are never logged: the access log carries the canonical path only.

pub mod access;
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

/// Installs the global subscriber. `RUST_LOG` style filter, default `info`.
pub fn init(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Access lines buffered (a write per ~100 of them at volume), the rest at once.
        .with_writer(writer::LogWriter::start())
        // Colour codes only for a person at a terminal, never into files or collectors.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.with_target(true).try_init(),
    };
}
