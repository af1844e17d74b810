//! One call to the identity provider as telemetry sees it: timed into
//! `portcullis_provider_request_duration_seconds`, and while tracing is on a client span
//! (a child of the request's auth decision, or outside a request the root of a trace of
//! its own) whose id the provider is told in `traceparent`.
//!
//! Span attributes: `http.request.method`, `server.address`, `url.path` (never the query),
//! `portcullis.provider.issuer`, `portcullis.provider.endpoint`,
//! `http.response.status_code` or `error.type` (the transport error's text, which never
//! holds tokens, secrets or bodies). Request and response bodies and headers are never
//! recorded.

use std::time::Instant;

use super::span::{Child, Value};
use super::Telemetry;
use crate::admin::provider::Endpoint;

/// A provider call in flight.
pub struct ProviderCall<'a> {
    telemetry: &'a Telemetry,
    issuer: &'a str,
    endpoint: Endpoint,
    start: Instant,
    span: Option<(Child, http::Method, String, String)>,
}

impl<'a> ProviderCall<'a> {
    pub fn start(
        telemetry: &'a Telemetry,
        issuer: &'a str,
        endpoint: Endpoint,
        method: &http::Method,
        uri: &http::Uri,
    ) -> ProviderCall<'a> {
        let span = telemetry.tracer().map(|t| {
            (
                Child::of_current_or_root(&t),
                method.clone(),
                uri.host().unwrap_or_default().to_owned(),
                uri.path().to_owned(),
            )
        });
        ProviderCall {
            telemetry,
            issuer,
            endpoint,
            start: Instant::now(),
            span,
        }
    }

    /// The `traceparent` (and `tracestate`) the provider is sent, when tracing.
    pub fn propagation(&self) -> Option<(http::HeaderValue, Option<http::HeaderValue>)> {
        self.span
            .as_ref()
            .map(|(c, ..)| (c.traceparent(), c.trace_state.clone()))
    }

    /// The call ended: with the provider's status, or failed (`error`: why).
    pub fn finish(self, status: Option<u16>, error: Option<String>) {
        self.telemetry
            .provider
            .observe(self.issuer, self.endpoint, self.start.elapsed());
        let Some((child, method, host, path)) = self.span else {
            return;
        };
        let attributes = vec![
            (
                "http.request.method",
                Value::from(method.as_str().to_owned()),
            ),
            ("server.address", Value::from(host)),
            ("url.path", Value::from(path)),
            (
                "portcullis.provider.issuer",
                Value::from(self.issuer.to_owned()),
            ),
            (
                "portcullis.provider.endpoint",
                Value::from(self.endpoint.as_str()),
            ),
        ];
        child.end_call(
            format!("provider {}", self.endpoint.as_str()),
            attributes,
            status,
            error.map(Value::from),
        );
    }
}
