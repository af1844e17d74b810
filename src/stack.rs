//! THE layer order of the request path. The first layer added sees the request first.

use tower::ServiceBuilder;

use crate::auth::{Auth, AuthLayer};
use crate::proxy::forward::ProxyService;
use crate::proxy::hygiene::{Hygiene, HygieneLayer};
use crate::routing::{Route, RouteLayer};
use crate::telemetry::{Trace, TraceLayer};

/// The assembled request path. Every layer is stateless (config comes with each request
/// in its [`crate::ctx::Ctx`]), so cloning it per connection costs nothing.
pub type Stack = Trace<Route<Hygiene<Auth<ProxyService>>>>;

pub fn build() -> Stack {
    ServiceBuilder::new()
        // Request id, span, in-flight gauge, metrics and the access log: outermost, so
        // that every answer, including refusals by the layers below, is counted and logged.
        .layer(TraceLayer)
        // Limits, host and path canonicalization, /oauth2/ping, route match: everything
        // below sees only the canonical path, and ambiguous requests stop here (400).
        .layer(RouteLayer)
        // Hop-by-hop, identity and forwarding headers stripped on every routed request,
        // public or not, before anything trusts a header.
        .layer(HygieneLayer)
        // The gate: the route's auth mode decides; a mode this build cannot enforce is
        // refused, never passed.
        .layer(AuthLayer)
        // Forward upstream and stream the answer back.
        .service(ProxyService)
}
