//! The outermost layer: gives each request its id, counts it in flight, records its
//! route's counters and writes one access-log line, for every answer, refusals by the
//! layers below included. The access line is built only when the log filter lets it
//! through.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, Uri, Version};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::admin::metrics::{Metrics, RouteMetrics};
use crate::body::Resp;
use crate::exchange::{Answer, Arrival, Exchange, RequestId, X_REQUEST_ID};
use crate::proxy::headers::remove_connection_named;

#[derive(Clone)]
pub struct TraceLayer {
    metrics: Arc<Metrics>,
    /// The counters of requests that matched no route (label `-`).
    unmatched: Arc<RouteMetrics>,
}

impl TraceLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let unmatched = metrics.route(&Arc::from("-"));
        TraceLayer { metrics, unmatched }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            metrics: self.metrics.clone(),
            unmatched: self.unmatched.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    metrics: Arc<Metrics>,
    unmatched: Arc<RouteMetrics>,
}

/// What the access line needs of the request, kept only when the line will be written.
struct AccessFacts {
    method: Method,
    version: Version,
    uri: Uri,
}

impl<S, B> Service<Arrival<B>> for Trace<S>
where
    S: Service<Exchange<B>, Response = Answer, Error = Infallible>,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut a: Arrival<B>) -> Self::Future {
        let start = Instant::now();
        // Headers the client's `Connection` names are the hop's: gone before anything
        // (the request id first) reads them.
        remove_connection_named(a.req.headers_mut());
        let id = RequestId::for_request(a.req.headers());
        let access =
            tracing::enabled!(target: "access", tracing::Level::INFO).then(|| AccessFacts {
                method: a.req.method().clone(),
                version: a.req.version(),
                uri: a.req.uri().clone(),
            });
        let span = tracing::debug_span!("request", id = %id.as_str(), method = %a.req.method());
        self.metrics.in_flight.fetch_add(1, Relaxed);
        let inner = {
            let _enter = span.enter();
            self.inner.call(Exchange {
                req: a.req,
                conn: a.conn,
                id: id.clone(),
            })
        };
        TraceFuture {
            inner,
            span,
            start,
            id,
            access,
            _in_flight: InFlight(self.metrics.clone()),
            unmatched: self.unmatched.clone(),
        }
    }
}

pin_project! {
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        start: Instant,
        id: RequestId,
        access: Option<AccessFacts>,
        _in_flight: InFlight,
        unmatched: Arc<RouteMetrics>,
    }
}

impl<F> Future for TraceFuture<F>
where
    F: Future<Output = Result<Answer, Infallible>>,
{
    type Output = Result<Resp, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _enter = this.span.enter();
        let Poll::Ready(result) = this.inner.poll(cx) else {
            return Poll::Pending;
        };
        let Ok(answer) = result;
        let elapsed = this.start.elapsed();
        let route = answer.route.as_ref().unwrap_or(this.unmatched);
        let status = answer.resp.status().as_u16();
        route.record(status, elapsed);
        if let Some(a) = this.access.take() {
            // The canonical path of a routed request (as matched and sent upstream); the
            // raw path never appears, nor does the query.
            let path = answer
                .route
                .as_ref()
                .and_then(|_| crate::path::normalize_path(a.uri.path()).ok());
            tracing::info!(
                target: "access",
                method = %a.method,
                path = path.as_deref().unwrap_or("-"),
                version = ?a.version,
                status,
                route = answer.route.as_ref().map_or("-", |r| &*r.name),
                user = answer.user.as_ref().map_or("-", |u| u.subject()),
                upstream_ms = answer.upstream_latency.map(|d| d.as_secs_f64() * 1e3),
                total_ms = elapsed.as_secs_f64() * 1e3,
                request_id = %this.id.as_str(),
            );
        }
        let mut resp = answer.resp;
        resp.headers_mut()
            .insert(X_REQUEST_ID, this.id.value().clone());
        Poll::Ready(Ok(resp))
    }
}

/// Counts a request in flight until its future is dropped: answered (hyper drops it at
/// once) or abandoned.
struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}
