//! The routing layer: request limits, host and path canonicalization, the proxy's own
//! endpoints under `server.proxy_prefix`, and route matching (DESIGN §1.1). Ambiguous or
//! oversized requests stop here; everything below sees a [`Routed`] exchange.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Method, Request, Version};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{OwnEndpoint, Route, RouteTable, Routed};
use crate::admin::metrics::RouteMetrics;
use crate::error::Refusal;
use crate::exchange::{Answer, Exchange};
use crate::path::{normalize_host, normalize_path};

/// The refusal of a path whose readings select routes that cannot be enforced together.
pub const AMBIGUOUS_READINGS: &str =
    "ambiguous path: upstreams may read it as a path of another route";

/// The [`OwnEndpoint::rest`](super::OwnEndpoint) of `GET /.well-known/portcullis/jwks.json`:
/// without a leading `/`, so that no path under the prefix can name it.
pub const JWKS_ENDPOINT: &str = ".well-known/portcullis/jwks.json";

/// The limits the routing layer checks (hyper enforces its own, looser ones first).
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Bytes of the request target; more is 414.
    pub max_uri_length: usize,
    /// Header count; more is 431.
    pub max_headers: usize,
    /// Bytes of all header names and values; more is 431.
    pub max_header_bytes: usize,
}

#[derive(Clone)]
pub struct RoutingLayer<E> {
    table: Arc<RouteTable>,
    limits: HeadLimits,
    /// `server.proxy_prefix`, e.g. `/oauth2`.
    prefix: Arc<str>,
    endpoints: E,
}

impl<E> RoutingLayer<E> {
    /// `endpoints` answers the proxy's own paths under `prefix`.
    pub fn new(table: Arc<RouteTable>, limits: HeadLimits, prefix: Arc<str>, endpoints: E) -> Self {
        RoutingLayer {
            table,
            limits,
            prefix,
            endpoints,
        }
    }
}

impl<S, E: Clone> Layer<S> for RoutingLayer<E> {
    type Service = Routing<S, E>;
    fn layer(&self, inner: S) -> Routing<S, E> {
        Routing {
            inner,
            endpoints: self.endpoints.clone(),
            table: self.table.clone(),
            limits: self.limits,
            prefix: self.prefix.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Routing<S, E> {
    inner: S,
    endpoints: E,
    table: Arc<RouteTable>,
    limits: HeadLimits,
    prefix: Arc<str>,
}

/// The request's host, from the absolute-form target or `:authority` (RFC 9112 §3.2.2,
/// RFC 9113 §8.3.1), else the single `Host` header: (routing name, authority as sent).
/// `Err` when it is missing (HTTP/1.1), repeated, malformed, or when `Host` disagrees
/// with the target's authority: such a request means different things to different
/// servers, so it is refused rather than guessed.
pub(crate) fn request_host<B>(
    req: &Request<B>,
) -> Result<(Option<Cow<'_, str>>, Option<HeaderValue>), Refusal> {
    const BAD: Refusal = Refusal::BadRequest("invalid host");
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(Refusal::BadRequest("more than one Host header")),
        (h, _) => h,
    };
    if let Some(a) = req.uri().authority() {
        let name = normalize_host(a.as_str()).ok_or(BAD)?;
        if let Some(h) = header {
            let same = h
                .to_str()
                .ok()
                .is_some_and(|h| h.eq_ignore_ascii_case(a.as_str()));
            if !same {
                return Err(Refusal::BadRequest(
                    "Host header differs from the request target",
                ));
            }
        }
        let value = HeaderValue::from_str(a.as_str()).map_err(|_| BAD)?;
        return Ok((Some(name), Some(value)));
    }
    match header {
        Some(h) => {
            let name = h.to_str().ok().and_then(normalize_host).ok_or(BAD)?;
            Ok((Some(name), Some(h.clone())))
        }
        None if req.version() == Version::HTTP_11 => {
            Err(Refusal::BadRequest("missing Host header"))
        }
        None => Ok((None, None)),
    }
}

/// Where a request goes, decided while its head is borrowed (the host and the canonical
/// path are read in place; only a path that needed rewriting is copied).
enum Decision {
    /// One of the proxy's own endpoints; the rest of the path after the prefix.
    Endpoint(Box<str>),
    Route {
        route: Arc<Route>,
        also: Vec<Arc<Route>>,
        authority: Option<HeaderValue>,
        canonical: Option<Box<str>>,
    },
}

impl<S, E> Routing<S, E> {
    /// Limits, host, path, then the proxy's endpoints or the first matching route.
    fn decide<B>(&self, req: &Request<B>) -> Result<Decision, Refusal> {
        let limits = &self.limits;
        let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        if target_len > limits.max_uri_length {
            return Err(Refusal::UriTooLong);
        }
        let headers = req.headers();
        if headers.len() > limits.max_headers {
            return Err(Refusal::HeadersTooLarge);
        }
        let head_bytes: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if head_bytes > limits.max_header_bytes {
            return Err(Refusal::HeadersTooLarge);
        }
        if req.method() == Method::CONNECT {
            return Err(Refusal::BadRequest("CONNECT is not supported"));
        }
        let (host, authority) = request_host(req)?;
        let path = normalize_path(req.uri().path()).map_err(|e| {
            tracing::debug!(reason = %e, "refused ambiguous path");
            Refusal::BadRequest("ambiguous or malformed path")
        })?;
        // The assertion keys, when any route signs assertions (else the path is the
        // routes' like any other).
        if self.table.asserter().is_some() && path == crate::assertion::JWKS_PATH {
            return Ok(Decision::Endpoint(JWKS_ENDPOINT.into()));
        }
        // The proxy's own endpoints, before header hygiene and auth.
        if let Some(rest) = path.strip_prefix(&*self.prefix) {
            if rest.is_empty() || rest.starts_with('/') {
                return Ok(Decision::Endpoint(rest.into()));
            }
        }
        let selected = self
            .table
            .select(host.as_deref(), &path)
            .map_err(|conflict| {
                tracing::debug!(reason = %conflict, "refused a path its readings make ambiguous");
                Refusal::BadRequest(AMBIGUOUS_READINGS)
            })?
            .ok_or(Refusal::NotFound)?;
        Ok(Decision::Route {
            route: selected.route,
            also: selected.also,
            authority,
            canonical: match path {
                Cow::Borrowed(_) => None,
                Cow::Owned(p) => Some(p.into_boxed_str()),
            },
        })
    }
}

impl<S, E, B> Service<Exchange<B>> for Routing<S, E>
where
    S: Service<Routed<B>, Response = Answer, Error = Infallible>,
    E: Service<OwnEndpoint<B>, Response = Answer, Error = Infallible> + Clone,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = RoutingFuture<S::Future, E::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, ex: Exchange<B>) -> Self::Future {
        let Exchange {
            req,
            conn,
            id,
            bytes_in,
        } = ex;
        match self.decide(&req) {
            Err(refusal) => {
                let resp = refusal.respond(id.as_str(), req.method(), req.headers());
                RoutingFuture::Answered {
                    answer: Some(resp.into()),
                }
            }
            Ok(Decision::Endpoint(rest)) => {
                // The endpoint service is always ready (a plain function of the request);
                // clone-and-call keeps tower's contract anyway.
                let mut endpoints = self.endpoints.clone();
                RoutingFuture::Endpoint {
                    fut: endpoints.call(OwnEndpoint {
                        req,
                        conn,
                        id,
                        rest,
                    }),
                }
            }
            Ok(Decision::Route {
                route,
                also,
                authority,
                canonical,
            }) => {
                let metrics = route.metrics.clone();
                let mut routed = Routed::new(req, conn, id, route, canonical, authority);
                routed.also = also;
                routed.bytes_in = bytes_in;
                RoutingFuture::Routed {
                    fut: self.inner.call(routed),
                    metrics: Some(metrics),
                }
            }
        }
    }
}

pin_project! {
    /// The routing layer's answer: its own refusal, an endpoint's, or the route's (with
    /// the route's counters attached for the trace layer).
    #[project = RoutingProj]
    pub enum RoutingFuture<F, G> {
        Answered { answer: Option<Answer> },
        Endpoint { #[pin] fut: G },
        Routed { #[pin] fut: F, metrics: Option<Arc<RouteMetrics>> },
    }
}

impl<F, G> Future for RoutingFuture<F, G>
where
    F: Future<Output = Result<Answer, Infallible>>,
    G: Future<Output = Result<Answer, Infallible>>,
{
    type Output = Result<Answer, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RoutingProj::Answered { answer } => match answer.take() {
                Some(a) => Poll::Ready(Ok(a)),
                None => Poll::Pending,
            },
            RoutingProj::Endpoint { fut } => fut.poll(cx),
            RoutingProj::Routed { fut, metrics } => {
                let Poll::Ready(result) = fut.poll(cx) else {
                    return Poll::Pending;
                };
                let Ok(mut answer) = result;
                answer.route = metrics.take();
                Poll::Ready(Ok(answer))
            }
        }
    }
}
