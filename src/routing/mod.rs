//! Route matching (DESIGN §1.1): [`table`] is the route table compiled from the config
//! once per generation; [`layer`] is the tower layer that checks request limits,
//! canonicalizes host and path, answers the proxy's own endpoints, and picks the route.
//! Everything after it sees a [`Routed`] exchange: the route and the canonical path.

pub mod layer;
pub mod table;

use std::sync::Arc;

use http::{HeaderValue, Request};

use crate::exchange::{ConnInfo, RequestId};
use crate::proxy::headers::HopByHop;
pub use layer::{Routing, RoutingLayer};
pub use table::{Route, RouteAuth, RouteTable};

/// A request after routing.
pub struct Routed<B> {
    pub req: Request<B>,
    pub conn: Arc<ConnInfo>,
    pub id: RequestId,
    pub route: Arc<Route>,
    /// Routes that other readings of the path select (the path-reading rule): their
    /// policies must pass too. Usually empty.
    pub also: Vec<Arc<Route>>,
    /// The canonical path when it differs from the request's own; `None`: the request's
    /// path is canonical as it came (the common case, no copy).
    canonical: Option<Box<str>>,
    /// The authority as the client sent it (validated), port included: what the upstream
    /// gets as `Host` and `X-Forwarded-Host`.
    pub authority: Option<HeaderValue>,
    /// Where the forwarder counts the request body's bytes (for the access log).
    pub bytes_in: Option<crate::exchange::BytesIn>,
    /// What the hygiene layer took out that the forwarder must restore (an upgrade, `te:
    /// trailers`). Default: nothing.
    pub hop: HopByHop,
    /// The peer is one of `server.trusted_proxies` (set by the hygiene layer).
    pub trusted_peer: bool,
}

impl<B> Routed<B> {
    pub fn new(
        req: Request<B>,
        conn: Arc<ConnInfo>,
        id: RequestId,
        route: Arc<Route>,
        canonical: Option<Box<str>>,
        authority: Option<HeaderValue>,
    ) -> Routed<B> {
        Routed {
            req,
            conn,
            id,
            route,
            also: Vec::new(),
            canonical,
            authority,
            bytes_in: None,
            hop: HopByHop::default(),
            trusted_peer: false,
        }
    }

    /// The canonical path that was routed and authorized (and is sent upstream). The
    /// layers never change the request's URI, so it is read from there when it was
    /// already canonical.
    pub fn path(&self) -> &str {
        self.canonical
            .as_deref()
            .unwrap_or_else(|| self.req.uri().path())
    }
}

/// A request for one of the proxy's own endpoints: `rest` is the canonical path after
/// `server.proxy_prefix` (`/start`, `/callback`, ...), or [`layer::JWKS_ENDPOINT`] for the
/// assertion keys.
pub struct OwnEndpoint<B> {
    pub req: Request<B>,
    pub conn: Arc<ConnInfo>,
    pub id: RequestId,
    pub rest: Box<str>,
}
