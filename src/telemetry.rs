//! Tracing setup, and the outermost layer: request id, span, metrics, one access-log line.
//!
//! Sensitive headers (`Authorization`, `Cookie`, `Set-Cookie`, `Proxy-Authorization`) and
//! query strings are never logged: the access log carries the canonical path only.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Instant;

use http::HeaderValue;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::ctx::{Ctx, Matched, Req, Resp, RespFuture, RespInfo};
use crate::proxy::headers::valid_request_id;

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
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

/// A fresh request id: 32 hex digits, unique per process (a random 64-bit prefix per
/// thread and a counter). Ids need to be unique, not secret.
pub fn new_request_id() -> HeaderValue {
    use std::cell::Cell;
    thread_local! {
        static NEXT: Cell<(u64, u64)> = Cell::new((thread_seed(), 0));
    }
    let (seed, n) = NEXT.with(|c| {
        let (seed, n) = c.get();
        c.set((seed, n.wrapping_add(1)));
        (seed, n)
    });
    let mut s = [0u8; 32];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, v) in seed
        .to_be_bytes()
        .iter()
        .chain(n.to_be_bytes().iter())
        .enumerate()
    {
        s[2 * i] = HEX[(v >> 4) as usize];
        s[2 * i + 1] = HEX[(v & 15) as usize];
    }
    HeaderValue::from_bytes(&s).unwrap_or(HeaderValue::from_static("-"))
}

fn thread_seed() -> u64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        b = t.to_le_bytes();
    }
    u64::from_le_bytes(b)
}

#[derive(Clone, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace { inner }
    }
}

#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
}

impl<S> Service<Req> for Trace<S>
where
    S: Service<Req, Response = Resp, Error = Infallible, Future = RespFuture>
        + Clone
        + Send
        + 'static,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> RespFuture {
        let start = Instant::now();
        let request_id = match req.headers().get("x-request-id") {
            Some(v) if valid_request_id(v) => v.clone(),
            _ => new_request_id(),
        };
        let Some(ctx) = req.extensions_mut().get_mut::<Ctx>() else {
            // The connection always sets Ctx; without it we cannot know the config.
            return Box::pin(async {
                Ok(crate::error::respond(
                    crate::error::Reject::Internal,
                    "-",
                    false,
                ))
            });
        };
        ctx.request_id = request_id.clone();
        let state = ctx.state.clone();
        let metrics = &state.metrics;
        let in_flight = InFlight::new(metrics.clone());
        let method = req.method().clone();
        let version = req.version();
        let span = tracing::debug_span!("request", id = %request_id.to_str().unwrap_or("-"), method = %method);
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let mut resp = fut.await?;
                drop(in_flight);
                let elapsed = start.elapsed();
                let info = resp
                    .extensions_mut()
                    .remove::<RespInfo>()
                    .unwrap_or_default();
                let path = resp.extensions_mut().remove::<Matched>().map(|m| m.path);
                let route_name = info
                    .route
                    .and_then(|i| state.config.routes.get(i))
                    .map(|r| &*r.name)
                    .unwrap_or("-");
                let route_metrics = info
                    .route
                    .and_then(|i| state.route_metrics.get(i))
                    .unwrap_or(&state.unmatched_metrics);
                let status = resp.status().as_u16();
                route_metrics.record(status, elapsed);
                tracing::info!(
                    target: "access",
                    method = %method,
                    path = path.as_deref().unwrap_or("-"),
                    version = ?version,
                    status,
                    route = route_name,
                    user = info.user.as_deref().unwrap_or("-"),
                    upstream_ms = info.upstream_latency.map(|d| d.as_secs_f64() * 1e3),
                    total_ms = elapsed.as_secs_f64() * 1e3,
                    request_id = %request_id.to_str().unwrap_or("-"),
                );
                resp.headers_mut().insert("x-request-id", request_id);
                Ok(resp)
            }
            .instrument(span),
        )
    }
}

/// Counts a request in flight until it is answered or abandoned.
struct InFlight(std::sync::Arc<crate::admin::Metrics>);

impl InFlight {
    fn new(m: std::sync::Arc<crate::admin::Metrics>) -> Self {
        m.in_flight.fetch_add(1, Relaxed);
        InFlight(m)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}
