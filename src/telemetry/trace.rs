//! The outermost layer: gives each request its id, counts it in flight, records its
//! route's counters and writes one access-log line, for every answer, refusals by the
//! layers below included. The access line is built only when the log filter lets it
//! through.
//!
//! With OpenTelemetry traces on, it also starts the request's server span and its trace
//! scope ([`span::Scope`]): a trusted proxy's `traceparent` is continued, anything else
//! starts a new trace. The span ends at the response head and carries
//! `http.request.method`, `url.path` (canonical, never the query), `http.route` (the route
//! name), `http.response.status_code`, `portcullis.request_id` and, for the proxy's own
//! refusals, `portcullis.reason`. With tracing off, all this is one `None` per request.

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
use super::span::{self, Current, Kind, Scope, SpanId, Started, Tracer, Value};
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
    /// Whose `X-Forwarded-For` names the client in the access log, and whose
    /// `traceparent` is continued.
    trusted: TrustedProxies,
    tracer: Option<Arc<Tracer>>,
}

impl TraceLayer {
    pub fn new(
        metrics: Arc<Metrics>,
        trusted: TrustedProxies,
        tracer: Option<Arc<Tracer>>,
    ) -> Self {
        let unmatched = metrics.route(&Arc::from("-"));
        TraceLayer {
            metrics,
            unmatched,
            trusted,
            tracer,
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
            tracer: self.tracer.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    metrics: Arc<Metrics>,
    unmatched: Arc<RouteMetrics>,
    trusted: TrustedProxies,
    tracer: Option<Arc<Tracer>>,
}

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The values of a header given as several fields, joined with `,`.
fn combined(values: http::header::GetAll<'_, http::HeaderValue>) -> Option<http::HeaderValue> {
    let mut it = values.iter();
    let first = it.next()?;
    let mut joined = first.as_bytes().to_vec();
    for v in it {
        joined.push(b',');
        joined.extend_from_slice(v.as_bytes());
    }
    http::HeaderValue::from_bytes(&joined).ok()
}

/// The request's server span while it is handled (tracing on).
struct RequestSpan {
    scope: Current,
    started: Started,
    /// The trusted proxy's span this one continues.
    remote_parent: Option<SpanId>,
    method: http::Method,
    path: Box<str>,
}

impl RequestSpan {
    /// W3C Trace Context: only a trusted proxy's `traceparent` (and with it `tracestate`)
    /// is believed; any other peer's starts a new trace (the hygiene layer then drops
    /// the client's headers, and the forwarder sends the proxy's own).
    fn begin<B>(tracer: &Arc<Tracer>, req: &http::Request<B>, trusted: bool) -> Box<RequestSpan> {
        let h = req.headers();
        let given = trusted.then(|| h.get(TRACEPARENT)).flatten();
        let (context, remote_parent) = tracer.request_context(given.map(|v| v.as_bytes()));
        // "tracestate" is read only with a valid traceparent; several fields are one list
        // (W3C Trace Context, "tracestate Header Field Values").
        let trace_state = remote_parent.and_then(|_| combined(h.get_all(TRACESTATE)));
        Box::new(RequestSpan {
            scope: Arc::new(Scope {
                tracer: tracer.clone(),
                request: context,
                parent: context,
                trace_state,
            }),
            started: Started {
                context,
                parent: remote_parent,
                start: span::now_nanos(),
            },
            remote_parent,
            method: req.method().clone(),
            path: req.uri().path().into(),
        })
    }

    fn end(
        self,
        route: Option<&Arc<RouteMetrics>>,
        status: u16,
        id: &RequestId,
        reason: Option<Reason>,
    ) {
        if !self.started.context.sampled {
            return;
        }
        let path = crate::path::normalize_path(&self.path)
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| "-".to_owned());
        let name = match route {
            Some(r) => format!("{} {}", self.method, r.name),
            None => self.method.as_str().to_owned(),
        };
        let mut attributes = vec![
            (
                "http.request.method",
                Value::from(self.method.as_str().to_owned()),
            ),
            ("url.path", Value::from(path)),
            ("http.response.status_code", Value::Int(i64::from(status))),
            ("portcullis.request_id", Value::from(id.as_str().to_owned())),
        ];
        if let Some(r) = route {
            attributes.push(("http.route", Value::from(r.name.to_string())));
        }
        if let Some(r) = reason {
            attributes.push(("portcullis.reason", Value::from(r.to_string())));
        }
        let mut rec = self
            .started
            .end(name, Kind::Server, attributes, status >= 500);
        rec.remote_parent = self.remote_parent.is_some();
        rec.trace_state = self
            .scope
            .trace_state
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.scope.tracer.submit(rec);
    }
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
        let otel = self
            .tracer
            .as_ref()
            .map(|t| RequestSpan::begin(t, &a.req, self.trusted.contains(a.conn.peer_ip())));
        self.metrics.in_flight.fetch_add(1, Relaxed);
        let inner = {
            let _enter = span.enter();
            let _scope = otel.as_ref().map(|o| span::enter(o.scope.clone()));
            self.inner.call(Exchange {
                req: a.req,
                conn: a.conn,
                id: id.clone(),
                bytes_in: access.as_ref().map(|a| a.bytes_in.clone()),
            })
        };
        TraceFuture {
            inner,
            otel,
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
        otel: Option<Box<RequestSpan>>,
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
        let polled = {
            let _scope = this.otel.as_ref().map(|o| span::enter(o.scope.clone()));
            this.inner.poll(cx)
        };
        let Poll::Ready(result) = polled else {
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
        if let Some(o) = this.otel.take() {
            o.end(
                answer.route.as_ref(),
                status,
                this.id,
                resp.extensions().get::<Reason>().copied(),
            );
        }
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
