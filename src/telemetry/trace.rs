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

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::access::{AccessFacts, AccessLine, LoggedBody};
use crate::admin::metrics::{Metrics, RouteMetrics};
use crate::body::{Resp, RespBody};
use crate::error::Reason;
use crate::exchange::{Answer, Arrival, Exchange, RequestId, X_REQUEST_ID};
use crate::proxy::headers::remove_connection_named;
use crate::proxy::hygiene::TrustedProxies;

#[derive(Clone)]
pub struct TraceLayer {
    metrics: Arc<Metrics>,
    /// The counters of requests that matched no route (label `-`).
    unmatched: Arc<RouteMetrics>,
    /// Whose `X-Forwarded-For` names the client in the access log.
    trusted: TrustedProxies,
}

impl TraceLayer {
    pub fn new(metrics: Arc<Metrics>, trusted: TrustedProxies) -> Self {
        let unmatched = metrics.route(&Arc::from("-"));
        TraceLayer {
            metrics,
            unmatched,
            trusted,
        }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            metrics: self.metrics.clone(),
            unmatched: self.unmatched.clone(),
            trusted: self.trusted.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    metrics: Arc<Metrics>,
    unmatched: Arc<RouteMetrics>,
    trusted: TrustedProxies,
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
        let access = tracing::enabled!(target: "access", tracing::Level::INFO)
            .then(|| AccessFacts::capture(&a.req, &a.conn, &self.trusted));
        let span = tracing::debug_span!("request", id = %id.as_str(), method = %a.req.method());
        self.metrics.in_flight.fetch_add(1, Relaxed);
        let inner = {
            let _enter = span.enter();
            self.inner.call(Exchange {
                req: a.req,
                conn: a.conn,
                id: id.clone(),
                bytes_in: access.as_ref().map(|a| a.bytes_in.clone()),
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
        let mut resp = answer.resp;
        resp.headers_mut()
            .insert(X_REQUEST_ID, this.id.value().clone());
        if let Some(facts) = this.access.take() {
            // The line is written when the body has been sent (or abandoned).
            let line = AccessLine {
                facts,
                start: *this.start,
                id: this.id.clone(),
                status,
                route: answer.route,
                user: answer.user,
                reason: resp.extensions().get::<Reason>().copied(),
                upstream: answer.upstream_latency,
            };
            let resp = resp.map(|body| RespBody::Boxed {
                inner: Box::pin(LoggedBody::new(body, line)),
            });
            return Poll::Ready(Ok(resp));
        }
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
