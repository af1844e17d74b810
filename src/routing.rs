//! The routing layer: request limits, host and path canonicalization, the proxy's own
//! probe endpoint, and route matching (DESIGN §1.1). Everything after it sees only the
//! canonical path in [`Matched`].

use std::convert::Infallible;
use std::task::{Context, Poll};

use http::{HeaderValue, Method, Version};
use tower_layer::Layer;
use tower_service::Service;

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

/// The request's host, from the absolute-form target or `:authority` (RFC 9112 §3.2.2,
/// RFC 9113 §8.3.1), else the single `Host` header: (routing name, authority as sent).
/// `Err` when it is missing (HTTP/1.1), repeated, malformed, or when `Host` disagrees
/// with the target's authority: such a request means different things to different
/// servers, so it is refused rather than guessed.
fn request_host(req: &Req) -> Result<(Option<String>, Option<HeaderValue>), Reject> {
    const BAD: Reject = Reject::BadRequest("invalid host");
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(Reject::BadRequest("more than one Host header")),
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
                return Err(Reject::BadRequest(
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
        None if req.version() == Version::HTTP_11 => Err(Reject::BadRequest("missing Host header")),
        None => Ok((None, None)),
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
        let (host, authority) = match request_host(&req) {
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
        // The proxy's own endpoints, before header hygiene and auth.
        let prefix = &state.config.server.proxy_prefix;
        if let Some(rest) = path.strip_prefix(prefix.as_str()) {
            if rest.is_empty() || rest.starts_with('/') {
                let rest = rest.to_string();
                let ctx = c.clone();
                return Box::pin(async move {
                    Ok(crate::oidc::endpoints::handle(&rest, req, &ctx).await)
                });
            }
        }
        let Some(route) = Router::new(&state.config.routes).find(host.as_deref(), &path) else {
            return reject(&req, Reject::NotFound);
        };
        let matched = Matched {
            route,
            path,
            host,
            authority,
        };
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
