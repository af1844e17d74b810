//! THE layer order of the request path, and where `/oauth2/*` turns off it. The first
//! layer added sees the request first. Each layer is built with exactly the parts it
//! uses, from one config generation (see `generation`); one stack is assembled per worker
//! thread, so that its upstream clients stay on the runtime that opened their connections.

use std::sync::Arc;
use std::time::Duration;

use tower::ServiceBuilder;

use crate::admin::metrics::Metrics;
use crate::auth::identity_headers::HeaderSettings;
use crate::auth::layer::OwnCookie;
use crate::auth::{Auth, AuthLayer};
use crate::oidc::endpoints::Endpoints;
use crate::oidc::login::Login;
use crate::proxy::forward::ProxyService;
use crate::proxy::header_policy::HeaderPolicy;
use crate::proxy::hygiene::{Hygiene, HygieneLayer, TrustedProxies};
use crate::routing::layer::HeadLimits;
use crate::routing::{RouteTable, Routing, RoutingLayer};
use crate::telemetry::span::Tracer;
use crate::telemetry::{Trace, TraceLayer};

/// The assembled request path of one worker, around the service that forwards upstream.
pub type Stack<S = ProxyService> = Trace<Routing<Hygiene<Auth<S>>, Endpoints>>;

/// Everything the layers are built from (one generation, one worker).
pub struct Parts {
    /// This worker's route table (each route holds the worker's upstream client).
    pub table: Arc<RouteTable>,
    pub limits: HeadLimits,
    /// `server.proxy_prefix`.
    pub prefix: Arc<str>,
    /// Client headers that no request may bring (identity headers, path overrides).
    pub strip: Arc<HeaderPolicy>,
    pub trusted: TrustedProxies,
    /// The identity headers set on passed requests.
    pub headers: Arc<HeaderSettings>,
    pub login: Option<Arc<Login>>,
    pub metrics: Arc<Metrics>,
    pub body_read_timeout: Duration,
    /// `Some` while OpenTelemetry traces are exported (`[telemetry] otlp_endpoint`).
    pub tracer: Option<Arc<Tracer>>,
}

/// The production stack: forwards upstream.
pub fn build(p: &Parts) -> Stack {
    build_around(p, ProxyService::new(p.body_read_timeout, p.metrics.clone()))
}

/// The stack around any innermost service (stack tests put a recorder there).
pub fn build_around<S>(p: &Parts, inner: S) -> Stack<S> {
    let own_cookie: OwnCookie = p.login.as_ref().map(|l| Arc::from(l.store.cookie_name()));
    // `/oauth2/*`: answered by the routing layer's side branch, after limits and path
    // canonicalization, before header hygiene and auth (forward auth reads the trusted
    // proxy's X-Forwarded-* headers; the login endpoints read the proxy's own cookies).
    let endpoints = Endpoints::new(
        p.login.clone(),
        p.table.clone(),
        p.trusted.clone(),
        p.headers.clone(),
        p.metrics.clone(),
    );
    ServiceBuilder::new()
        // Request id, span, in-flight gauge, route counters and the access log: outermost,
        // so that every answer, including refusals by the layers below, is counted and
        // logged. With tracing on, the request's span and trace scope start here, so that
        // the auth decision, provider calls and the upstream call below are its children.
        .layer(TraceLayer::new(
            p.metrics.clone(),
            p.trusted.clone(),
            p.tracer.clone(),
        ))
        // Limits, host and path canonicalization, the proxy's own endpoints, route match:
        // everything below sees only the canonical path, and ambiguous requests stop here
        // (400).
        .layer(RoutingLayer::new(
            p.table.clone(),
            p.limits,
            p.prefix.clone(),
            endpoints,
        ))
        // Hop-by-hop, identity and forwarding headers stripped on every routed request,
        // public or not, before anything trusts a header.
        .layer(HygieneLayer::new(p.strip.clone(), p.trusted.clone()))
        // The gate: the route's auth mode (which holds its validator or login) decides;
        // then identity headers are set and the proxy's cookies removed.
        .layer(AuthLayer::new(p.headers.clone(), own_cookie))
        // Forward upstream and stream the answer back.
        .service(inner)
}

#[cfg(test)]
mod tests;
