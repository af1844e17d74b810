//! Per-request context carried in request extensions, and what inner layers report back
//! to the outer ones in response extensions.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::app::State;
use crate::body::RespBody;

/// Set by the connection for each request: the config generation it is served under
/// (a reload never changes a request half-way), and where it came from.
#[derive(Clone)]
pub struct Ctx {
    pub state: Arc<State>,
    pub peer: SocketAddr,
    pub tls: bool,
    pub worker: usize,
    /// Set by the telemetry layer.
    pub request_id: HeaderValue,
}

impl Ctx {
    pub fn request_id_str(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }
}

/// The route chosen for a request, with its canonical path. Set by the routing layer.
#[derive(Clone, Debug)]
pub struct Matched {
    pub route: usize,
    pub path: String,
    /// The request's host (lowercase, no port), as routed.
    pub host: Option<String>,
    /// The authority as the client sent it (validated), port included: what the
    /// upstream gets as `Host` and `X-Forwarded-Host`.
    pub authority: Option<http::HeaderValue>,
}

/// Reported by inner layers for the access log and metrics.
#[derive(Clone, Debug, Default)]
pub struct RespInfo {
    pub route: Option<usize>,
    pub upstream_latency: Option<Duration>,
    pub user: Option<Box<str>>,
}

pub type Req = Request<Incoming>;
pub type Resp = Response<RespBody>;
pub type RespFuture =
    Pin<Box<dyn std::future::Future<Output = Result<Resp, std::convert::Infallible>> + Send>>;

/// Helper for layers: the context, which the connection always sets.
pub fn ctx(req: &Req) -> Option<&Ctx> {
    req.extensions().get::<Ctx>()
}

/// Attaches (or extends) the response info.
pub fn with_info(mut resp: Resp, f: impl FnOnce(&mut RespInfo)) -> Resp {
    let ext = resp.extensions_mut();
    match ext.get_mut::<RespInfo>() {
        Some(i) => f(i),
        None => {
            let mut i = RespInfo::default();
            f(&mut i);
            ext.insert(i);
        }
    }
    resp
}
