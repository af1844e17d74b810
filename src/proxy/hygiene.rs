//! The header hygiene layer: runs on every routed request, whatever its auth mode, before
//! authentication, so nothing a client sends can pose as something the proxy set.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use ipnet::IpNet;
use tower_layer::Layer;
use tower_service::Service;

use super::header_policy::HeaderPolicy;
use super::headers::{clean_request, Forwarded};
use crate::exchange::{Answer, X_REQUEST_ID};
use crate::routing::Routed;

/// `server.trusted_proxies`: peers whose `X-Forwarded-*` are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    pub fn new(nets: &[IpNet]) -> Self {
        TrustedProxies(nets.into())
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Clone)]
pub struct HygieneLayer {
    strip: Arc<HeaderPolicy>,
    trusted: TrustedProxies,
}

impl HygieneLayer {
    pub fn new(strip: Arc<HeaderPolicy>, trusted: TrustedProxies) -> Self {
        HygieneLayer { strip, trusted }
    }
}

impl<S> Layer<S> for HygieneLayer {
    type Service = Hygiene<S>;
    fn layer(&self, inner: S) -> Hygiene<S> {
        Hygiene {
            inner,
            strip: self.strip.clone(),
            trusted: self.trusted.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Hygiene<S> {
    inner: S,
    strip: Arc<HeaderPolicy>,
    trusted: TrustedProxies,
}

impl<S, B> Service<Routed<B>> for Hygiene<S>
where
    S: Service<Routed<B>, Response = Answer, Error = Infallible>,
{
    type Response = Answer;
    type Error = Infallible;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut r: Routed<B>) -> S::Future {
        let headers = r.req.headers_mut();
        // The upstream sees the host the request was routed by, nothing else.
        match &r.authority {
            Some(h) => {
                if headers.get(http::header::HOST) != Some(h) {
                    headers.insert(http::header::HOST, h.clone());
                }
            }
            None => {
                headers.remove(http::header::HOST);
            }
        }
        r.trusted_peer = self.trusted.contains(r.conn.peer_ip());
        let forwarded = Forwarded {
            peer: r.conn.peer_ip_value(),
            trusted: r.trusted_peer,
            proto: r.conn.scheme(),
            host: r.authority.as_ref(),
        };
        r.hop = clean_request(headers, &self.strip, &forwarded);
        // The proxy's own.
        headers.insert(X_REQUEST_ID, r.id.value().clone());
        self.inner.call(r)
    }
}
