//! The routing layer: request limits, host and path canonicalization, the proxy's own
//! probe endpoint, and route matching (DESIGN §1.1). Everything after it sees only the
//! canonical path in [`Matched`].

use std::convert::Infallible;
use std::task::{Context, Poll};

use http::{Method, Response, StatusCode, Version};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::RespBody;
use crate::ctx::{ctx, with_info, Matched, Req, Resp, RespFuture};
use crate::error::{respond, wants_html, Reject};
use crate::router::{normalize_host, normalize_path, Router};

#[derive(Clone, Default)]
pub struct RouteLayer;

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Route<S> {
        Route { inner }
    }
}

#[derive(Clone)]
pub struct Route<S> {
    inner: S,
}

fn reject(req: &Req, r: Reject) -> RespFuture {
    let id = ctx(req)
        .map(|c| c.request_id_str().to_string())
        .unwrap_or_default();
    let resp = respond(r, &id, wants_html(req.headers()));
    Box::pin(async move { Ok(resp) })
}

/// The request's host, from the absolute-form target or `:authority` first (RFC 9112
/// §3.2.2), else the single `Host` header. `Err` when it is missing (HTTP/1.1), repeated
/// or malformed.
fn request_host(req: &Req) -> Result<Option<String>, Reject> {
    if let Some(a) = req.uri().authority() {
        return normalize_host(a.as_str())
            .map(Some)
            .ok_or(Reject::BadRequest("invalid host"));
    }
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => h
            .to_str()
            .ok()
            .and_then(normalize_host)
            .map(Some)
            .ok_or(Reject::BadRequest("invalid host")),
        (Some(_), Some(_)) => Err(Reject::BadRequest("more than one Host header")),
        (None, _) if req.version() == Version::HTTP_11 => {
            Err(Reject::BadRequest("missing Host header"))
        }
        (None, _) => Ok(None),
    }
}

impl<S> Service<Req> for Route<S>
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
        let Some(c) = ctx(&req) else {
            return reject(&req, Reject::Internal);
        };
        let state = c.state.clone();
        let limits = &state.config.server.limits;
        // Limits first: hyper enforces its own, these are the configured ones.
        let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
        if target_len > limits.max_uri_length {
            return reject(&req, Reject::UriTooLong);
        }
        let headers = req.headers();
        if headers.len() > limits.max_headers {
            return reject(&req, Reject::HeadersTooLarge);
        }
        let head_bytes: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if head_bytes > limits.max_header_bytes {
            return reject(&req, Reject::HeadersTooLarge);
        }
        if req.method() == Method::CONNECT {
            return reject(&req, Reject::BadRequest("CONNECT is not supported"));
        }
        let host = match request_host(&req) {
            Ok(h) => h,
            Err(r) => return reject(&req, r),
        };
        let path = match normalize_path(req.uri().path()) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(reason = %e, "refused ambiguous path");
                return reject(&req, Reject::BadRequest("ambiguous or malformed path"));
            }
        };
        // The proxy's own endpoints. Only `ping` exists in this build; the rest of the
        // prefix is reserved and never proxied.
        let prefix = &state.config.server.proxy_prefix;
        if let Some(rest) = path.strip_prefix(prefix.as_str()) {
            if rest.is_empty() || rest.starts_with('/') {
                if rest == "/ping" && matches!(*req.method(), Method::GET | Method::HEAD) {
                    let mut r = Response::new(RespBody::full("OK"));
                    *r.status_mut() = StatusCode::OK;
                    r.headers_mut().insert(
                        http::header::CACHE_CONTROL,
                        http::HeaderValue::from_static("no-store"),
                    );
                    return Box::pin(async move { Ok(r) });
                }
                return reject(&req, Reject::NotFound);
            }
        }
        let Some(route) = Router::new(&state.config.routes).find(host.as_deref(), &path) else {
            return reject(&req, Reject::NotFound);
        };
        let matched = Matched { route, path, host };
        req.extensions_mut().insert(matched.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let mut resp = with_info(resp, |i| i.route = Some(route));
            resp.extensions_mut().insert(matched);
            Ok(resp)
        })
    }
}
