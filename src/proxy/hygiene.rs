//! The header hygiene layer: runs on every routed request, whatever its auth mode, before
//! authentication, so nothing a client sends can pose as something the proxy set.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::headers::{set_forwarded, strip_hop_by_hop};
use crate::ctx::{Ctx, Matched, Req, Resp, RespFuture};

#[derive(Clone, Default)]
pub struct HygieneLayer;

impl<S> Layer<S> for HygieneLayer {
    type Service = Hygiene<S>;
    fn layer(&self, inner: S) -> Hygiene<S> {
        Hygiene { inner }
    }
}

#[derive(Clone)]
pub struct Hygiene<S> {
    inner: S,
}

impl<S> Service<Req> for Hygiene<S>
where
    S: Service<Req, Response = Resp, Error = Infallible, Future = RespFuture>,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> RespFuture {
        let (state, peer, tls, request_id) = match req.extensions().get::<Ctx>() {
            Some(c) => (c.state.clone(), c.peer, c.tls, c.request_id.clone()),
            None => {
                return Box::pin(async {
                    Ok(crate::error::respond(
                        crate::error::Reject::Internal,
                        "-",
                        false,
                    ))
                })
            }
        };
        let host_value = req
            .extensions()
            .get::<Matched>()
            .and_then(|m| m.authority.clone());
        let headers = req.headers_mut();
        // The upstream sees the host the request was routed by, nothing else.
        match &host_value {
            Some(h) => {
                headers.insert(http::header::HOST, h.clone());
            }
            None => {
                headers.remove(http::header::HOST);
            }
        }
        // 1. Connection-named and hop-by-hop headers.
        let cleaned = strip_hop_by_hop(headers);
        // 2. Every identity header any configuration may set, in every spelling.
        state.strip.strip(headers);
        // 3. Forwarding headers: believed only from trusted proxies.
        let peer_ip = peer.ip().to_canonical();
        let trusted = state
            .config
            .server
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&peer_ip));
        set_forwarded(
            headers,
            peer_ip,
            trusted,
            if tls { "https" } else { "http" },
            host_value.as_ref(),
        );
        // 4. The proxy's own.
        headers.insert("x-request-id", request_id);
        req.extensions_mut().insert(cleaned);
        self.inner.call(req)
    }
}
