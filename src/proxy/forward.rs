//! The innermost service: sends the cleaned request to its route's upstream over this
//! worker's pooled client and streams the answer back. WebSocket upgrades are tunnelled.
//!
//! With tracing on, the exchange is a client span (a child of the request's span, ended
//! at the upstream's response head) whose id the upstream is sent as its parent in
//! `traceparent`; `tracestate` goes on only with a trace continued from a trusted proxy.
//! Attributes: `http.request.method`, `server.address` (the upstream's authority),
//! `portcullis.upstream` (its name), `http.response.status_code` or `error.type`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, HOST, TE, UPGRADE};
use http::uri::{PathAndQuery, Uri};
use http::{StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::headers::strip_hop_by_hop;
use super::pool::PoolError;
use crate::admin::metrics::{Metrics, UpstreamError};
use crate::body::{BoxError, ReqBody, Resp, RespBody};
use crate::error::{Refusal, UpstreamBodyError};
use crate::exchange::{Answer, RequestId};
use crate::routing::Routed;
use crate::telemetry::span::{self, Child, Started, Value};

const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

/// The upstream exchange's span (tracing on): a child of the request's span, whoever
/// (the auth decision) is the current parent.
fn upstream_span(headers: &mut http::HeaderMap) -> Option<Child> {
    let scope = span::current()?;
    let child = Child {
        tracer: scope.tracer.clone(),
        started: Started::child_of(&scope.request),
        trace_state: scope.trace_state.clone(),
    };
    // W3C Trace Context §3: the upstream is told this span as its parent; whatever a
    // client sent was dropped by the hygiene layer, a trusted proxy's is replaced.
    headers.insert(TRACEPARENT, child.traceparent());
    match &child.trace_state {
        Some(s) => {
            headers.insert(TRACESTATE, s.clone());
        }
        None => {
            headers.remove(TRACESTATE);
        }
    }
    Some(child)
}

fn end_upstream_span(
    child: Child,
    method: &http::Method,
    upstream: &crate::proxy::upstream::Upstream,
    status: Option<u16>,
    error: Option<&'static str>,
) {
    let attributes = vec![
        (
            "http.request.method",
            Value::from(method.as_str().to_owned()),
        ),
        (
            "server.address",
            Value::from(upstream.authority.to_string()),
        ),
        (
            "portcullis.upstream",
            Value::from(upstream.name.to_string()),
        ),
    ];
    child.end_call(
        format!("upstream {}", upstream.name),
        attributes,
        status,
        error.map(Value::from),
    );
}

#[derive(Clone)]
pub struct ProxyService {
    /// Longest pause while reading the client's body (`server.limits.body_read_timeout`).
    body_read_timeout: Duration,
    /// Upstream failures are counted here.
    metrics: Arc<Metrics>,
}

impl ProxyService {
    pub fn new(body_read_timeout: Duration, metrics: Arc<Metrics>) -> Self {
        ProxyService {
            body_read_timeout,
            metrics,
        }
    }
}

impl Service<Routed<Incoming>> for ProxyService {
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, r: Routed<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.forward(r).await) })
    }
}

/// Classifies a failed exchange by whose fault it is, without exposing it to the client:
/// the client's body (too slow: 408; malformed: 400; not an upstream error), or the
/// upstream (502, counted by kind).
fn classify(e: PoolError, upstream: &Arc<str>) -> (Refusal, Option<UpstreamError>) {
    if e.is_body_timeout() {
        return (Refusal::RequestTimeout, None);
    }
    if e.is_client_body_error() {
        return (Refusal::BadRequest("the request body is malformed"), None);
    }
    let kind = if e.is_connect() {
        UpstreamError::Connect
    } else {
        UpstreamError::Other
    };
    (
        Refusal::BadGateway(upstream.clone(), Some(e.into())),
        Some(kind),
    )
}

/// The upstream request target: the upstream's base path, the canonical path that was
/// routed (minus a stripped prefix), and the original query.
fn upstream_uri(r: &Routed<Incoming>) -> Result<Uri, Refusal> {
    let upstream = &r.route.upstream;
    let path = r.route.upstream_path(r.path());
    let query = r.req.uri().query();
    let mut pq = String::with_capacity(
        upstream.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    pq.push_str(&upstream.base_path);
    pq.push_str(path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let pq = PathAndQuery::from_maybe_shared(pq)
        .map_err(|_| Refusal::BadRequest("malformed request target"))?;
    if !upstream.h2 {
        // HTTP/1.1 goes out in origin-form; the pool adds `Host` from the upstream.
        return Ok(Uri::from(pq));
    }
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(upstream.scheme.clone());
    parts.authority = Some(upstream.authority.clone());
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).map_err(|_| Refusal::Internal("upstream URI"))
}

impl ProxyService {
    async fn forward(&self, r: Routed<Incoming>) -> Answer {
        let uri = match upstream_uri(&r) {
            Ok(u) => u,
            Err(refusal) => return refuse(refusal, &r, None),
        };
        let Routed {
            mut req,
            id,
            route,
            hop,
            bytes_in,
            ..
        } = r;
        let upstream = &route.upstream;
        // An HTTP/1.1 upgrade (WebSocket): take the client side before the body moves.
        let client_upgrade = match (&hop.upgrade, req.version()) {
            (Some(_), Version::HTTP_11) => Some(hyper::upgrade::on(&mut req)),
            _ => None,
        };
        // The request is changed in place (it is large: moving it costs more than
        // anything done to it here).
        let headers = req.headers_mut();
        if !upstream.preserve_host {
            headers.remove(HOST);
        }
        if let (Some(up), Some(_)) = (&hop.upgrade, &client_upgrade) {
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, up.clone());
        }
        if hop.te_trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
        // What a refusal from here on is rendered for (the request moves upstream).
        let html = crate::error::wants_html(req.headers());
        if upstream.preserve_host && !req.headers().contains_key(HOST) {
            // The client's own authority (absolute-form or HTTP/2 `:authority`).
            if let Some(h) = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(HOST, h);
            }
        }
        *req.uri_mut() = uri;
        *req.version_mut() = if upstream.h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let traced = upstream_span(req.headers_mut());
        let method = traced.as_ref().map(|_| req.method().clone());
        let body_read_timeout = self.body_read_timeout;
        let up_req = req.map(|body| ReqBody::new(body, body_read_timeout).counted(bytes_in));

        let started = Instant::now();
        let result = tokio::time::timeout(route.timeout, upstream.client.send(up_req)).await;
        let latency = started.elapsed();
        if let (Some(child), Some(method)) = (traced, method) {
            let (status, error) = match &result {
                Ok(Ok(r)) => (Some(r.status().as_u16()), None),
                Ok(Err(e)) if e.is_connect() => (None, Some("connect")),
                Ok(Err(_)) => (None, Some("exchange")),
                Err(_) => (None, Some("timeout")),
            };
            end_upstream_span(child, &method, upstream, status, error);
        }
        let failed = |refusal: Refusal, kind: Option<UpstreamError>| {
            if let Some(kind) = kind {
                self.metrics.upstream_error(kind);
            }
            let mut answer = Answer::from(refusal.respond_as(id.as_str(), html));
            answer.upstream_latency = Some(latency);
            answer
        };
        let mut resp = match result {
            Err(_) => {
                return failed(
                    Refusal::GatewayTimeout(upstream.name.clone()),
                    Some(UpstreamError::Timeout),
                )
            }
            Ok(Err(e)) => {
                let (refusal, kind) = classify(e, &upstream.name);
                return failed(refusal, kind);
            }
            Ok(Ok(r)) => r,
        };

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                // An upgrade nobody asked for.
                return failed(
                    Refusal::BadGateway(upstream.name.clone(), None),
                    Some(UpstreamError::Other),
                );
            };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let request_id = id.clone();
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((c, u)) => {
                        let mut c = TokioIo::new(c);
                        let mut u = TokioIo::new(u);
                        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                            tracing::debug!(request_id = %request_id.as_str(), error = %e, "upgraded connection ended");
                        }
                    }
                    Err(e) => {
                        tracing::debug!(request_id = %request_id.as_str(), error = %e, "upgrade failed")
                    }
                }
            });
            let (mut parts, body) = resp.into_parts();
            let upgrade = parts.headers.get(UPGRADE).cloned();
            strip_hop_by_hop(&mut parts.headers);
            if let Some(u) = upgrade {
                parts
                    .headers
                    .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                parts.headers.insert(UPGRADE, u);
            }
            return upstream_answer(parts, body, latency);
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.version = Version::HTTP_11;
        let body = UpstreamBody {
            inner: body,
            upstream: upstream.name.clone(),
            request_id: id,
            metrics: self.metrics.clone(),
        };
        let resp: Resp = http::Response::from_parts(
            parts,
            RespBody::Boxed {
                inner: Box::pin(body),
            },
        );
        let mut answer = Answer::from(resp);
        answer.upstream_latency = Some(latency);
        answer
    }
}

pin_project! {
    /// An upstream's response body on its way to the client. Once the head has gone out a
    /// failure (a reset, a body shorter than its length) can only cut the client's stream;
    /// it is the upstream's fault: logged (`warn`, naming the upstream), counted in
    /// `portcullis_upstream_errors_total{kind="other"}`, and passed on as an
    /// [`UpstreamBodyError`] so that the access line's reason says `upstream_error:body`.
    struct UpstreamBody {
        #[pin]
        inner: Incoming,
        upstream: Arc<str>,
        request_id: RequestId,
        metrics: Arc<Metrics>,
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match ready!(this.inner.poll_frame(cx)) {
            Some(Err(e)) => {
                this.metrics.upstream_error(UpstreamError::Other);
                tracing::warn!(
                    request_id = this.request_id.as_str(),
                    upstream = %this.upstream,
                    error = %e,
                    "upstream body failed; the response to the client is cut"
                );
                let e = UpstreamBodyError {
                    upstream: this.upstream.clone(),
                    source: e,
                };
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn upstream_answer(parts: http::response::Parts, body: Incoming, latency: Duration) -> Answer {
    let resp: Resp = http::Response::from_parts(parts, RespBody::Upstream { inner: body });
    let mut answer = Answer::from(resp);
    answer.upstream_latency = Some(latency);
    answer
}

fn refuse(refusal: Refusal, r: &Routed<Incoming>, latency: Option<Duration>) -> Answer {
    let mut answer = Answer::from(refusal.respond(r.id.as_str(), r.req.method(), r.req.headers()));
    answer.upstream_latency = latency;
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An upstream that sends its head and 5 of 100 body bytes, then resets: the body
    /// fails as the upstream's, counted once, with what came before it passed on.
    #[tokio::test]
    async fn a_body_cut_by_the_upstream_is_its_fault_and_counted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.set_zero_linger().unwrap();
        });
        let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let metrics = Arc::new(Metrics::default());
        let mut body = UpstreamBody {
            inner: resp.into_body(),
            upstream: Arc::from("app"),
            request_id: RequestId::generate(),
            metrics: metrics.clone(),
        };
        let mut got = Vec::new();
        let err = loop {
            match body.frame().await {
                Some(Ok(f)) => got.extend_from_slice(f.data_ref().unwrap()),
                Some(Err(e)) => break e,
                None => panic!("the cut body ended cleanly"),
            }
        };
        assert_eq!(got, b"hello");
        let e = err
            .downcast_ref::<UpstreamBodyError>()
            .expect("the upstream's");
        assert_eq!(&*e.upstream, "app");
        assert!(metrics
            .render()
            .contains("portcullis_upstream_errors_total{kind=\"other\"} 1\n"));
    }
}
