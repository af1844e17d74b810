//! An upstream as a route sees it: where it is, how requests to it are addressed, and the
//! client of the worker that serves the route.

use std::sync::Arc;

use http::uri::{Authority, Scheme};

use super::pool::UpstreamPool;

pub struct Upstream {
    pub name: Arc<str>,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path of the upstream URL without a trailing slash ("" for the root).
    pub base_path: Box<str>,
    /// Send the client's `Host` (else the upstream's authority).
    pub preserve_host: bool,
    /// HTTP/2 (gRPC): prior knowledge over plain TCP, ALPN over TLS.
    pub h2: bool,
    /// `path_readings = "exact"`: the app reads paths exactly as routed, so other
    /// readings of a path are not considered for routes that send to it.
    pub exact_readings: bool,
    /// This worker's pooled client; it outlives config generations whose settings for
    /// this upstream did not change.
    pub client: Arc<UpstreamPool>,
}
