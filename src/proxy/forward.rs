//! The innermost service: sends the cleaned request to its upstream over the worker's
//! pooled client and streams the answer back. WebSocket upgrades are tunnelled.

use std::convert::Infallible;
use std::error::Error as _;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::{HeaderValue, CONNECTION, HOST, TE, UPGRADE};
use http::uri::{PathAndQuery, Uri};
use http::{Request, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tower_service::Service;

use super::headers::{strip_hop_by_hop, Cleaned};
use crate::admin::metrics::UpstreamError;
use crate::body::{BodyTimeout, ReqBody, RespBody};
use crate::ctx::{with_info, Ctx, Matched, Req, Resp, RespFuture};
use crate::error::{respond, wants_html, Reject};
use crate::router::upstream_path;

#[derive(Clone, Default)]
pub struct ProxyService;

impl Service<Req> for ProxyService {
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> RespFuture {
        Box::pin(async move { Ok(forward(req).await) })
    }
}

/// Classifies an upstream failure without exposing it to the client.
fn classify(e: &hyper_util::client::legacy::Error) -> (Reject, UpstreamError) {
    if e.is_connect() {
        return (Reject::BadGateway, UpstreamError::Connect);
    }
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<BodyTimeout>() {
            return (Reject::RequestTimeout, UpstreamError::Other);
        }
        source = s.source();
    }
    (Reject::BadGateway, UpstreamError::Other)
}

async fn forward(mut req: Req) -> Resp {
    let (Some(ctx), Some(matched)) = (
        req.extensions_mut().remove::<Ctx>(),
        req.extensions_mut().remove::<Matched>(),
    ) else {
        return respond(Reject::Internal, "-", false);
    };
    let cleaned = req.extensions_mut().remove::<Cleaned>().unwrap_or_default();
    let html = wants_html(req.headers());
    let state = &ctx.state;
    let route = &state.config.routes[matched.route];
    let upstream = &state.config.upstreams[route.upstream];
    let Some(client) = state
        .clients
        .get(ctx.worker)
        .and_then(|set| set.get(route.upstream))
    else {
        return respond(Reject::Internal, ctx.request_id_str(), html);
    };

    // The upstream gets exactly the canonical path that was routed (minus a stripped
    // prefix), under the upstream's own base path, plus the original query.
    let path = upstream_path(route, &matched.path);
    let query = req.uri().query();
    let mut pq = String::with_capacity(
        upstream.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    pq.push_str(&upstream.base_path);
    pq.push_str(&path);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let Ok(pq) = PathAndQuery::from_maybe_shared(pq) else {
        return respond(
            Reject::BadRequest("malformed request target"),
            ctx.request_id_str(),
            html,
        );
    };
    let mut uri_parts = http::uri::Parts::default();
    uri_parts.scheme = Some(upstream.scheme.clone());
    uri_parts.authority = Some(upstream.authority.clone());
    uri_parts.path_and_query = Some(pq);
    let Ok(uri) = Uri::from_parts(uri_parts) else {
        return respond(Reject::Internal, ctx.request_id_str(), html);
    };

    // An HTTP/1.1 upgrade (WebSocket): take the client side before the body moves.
    let client_upgrade = match (&cleaned.upgrade, req.version()) {
        (Some(_), Version::HTTP_11) => Some(hyper::upgrade::on(&mut req)),
        _ => None,
    };

    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    if upstream.preserve_host {
        if !headers.contains_key(HOST) {
            if let Some(h) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                headers.insert(HOST, h);
            }
        }
    } else {
        headers.remove(HOST);
    }
    if let (Some(up), Some(_)) = (&cleaned.upgrade, &client_upgrade) {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, up.clone());
    }
    if cleaned.te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    let mut up_req = Request::new(ReqBody::new(
        body,
        state.config.server.limits.body_read_timeout,
    ));
    *up_req.method_mut() = parts.method;
    *up_req.uri_mut() = uri;
    *up_req.version_mut() = if upstream.h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *up_req.headers_mut() = headers;

    let started = Instant::now();
    let result = tokio::time::timeout(route.timeout, client.request(up_req)).await;
    let latency = started.elapsed();
    let mut resp = match result {
        Err(_) => {
            state.metrics.upstream_error(UpstreamError::Timeout);
            tracing::warn!(request_id = %ctx.request_id_str(), upstream = %upstream.name, "upstream timed out");
            return with_info(
                respond(Reject::GatewayTimeout, ctx.request_id_str(), html),
                |i| i.upstream_latency = Some(latency),
            );
        }
        Ok(Err(e)) => {
            let (reject, kind) = classify(&e);
            state.metrics.upstream_error(kind);
            tracing::warn!(
                request_id = %ctx.request_id_str(),
                upstream = %upstream.name,
                error = %e,
                cause = ?e.source().map(|s| s.to_string()),
                "upstream request failed"
            );
            return with_info(respond(reject, ctx.request_id_str(), html), |i| {
                i.upstream_latency = Some(latency)
            });
        }
        Ok(Ok(r)) => r,
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            // An upgrade nobody asked for.
            return respond(Reject::BadGateway, ctx.request_id_str(), html);
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let request_id = ctx.request_id_str().to_string();
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((c, u)) => {
                    let mut c = TokioIo::new(c);
                    let mut u = TokioIo::new(u);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                        tracing::debug!(request_id = %request_id, error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => tracing::debug!(request_id = %request_id, error = %e, "upgrade failed"),
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
        let resp = http::Response::from_parts(parts, RespBody::Upstream { inner: body });
        return with_info(resp, |i| i.upstream_latency = Some(latency));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    let resp = http::Response::from_parts(parts, RespBody::Upstream { inner: body });
    with_info(resp, |i| i.upstream_latency = Some(latency))
}
