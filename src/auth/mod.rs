//! The authentication gate. Each route's `auth` mode decides what a request must carry;
//! a mode this build cannot enforce is refused (fail closed), never treated as public.

pub mod bearer;
pub mod identity_headers;

use std::convert::Infallible;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::config::AuthMode;
use crate::ctx::{with_info, Ctx, Matched, Req, Resp, RespFuture};
use crate::error::{respond, wants_html, Reject};
use crate::policy::{decide, preflight_passes, Decision};

#[derive(Clone, Default)]
pub struct AuthLayer;

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth { inner }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
}

fn ready(r: Resp) -> RespFuture {
    Box::pin(async move { Ok(r) })
}

impl<S> Service<Req> for Auth<S>
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
        let (Some(ctx), Some(route)) = (
            req.extensions().get::<Ctx>().cloned(),
            req.extensions().get::<Matched>().map(|m| m.route),
        ) else {
            return ready(respond(Reject::Internal, "-", false));
        };
        let state = ctx.state.clone();
        let Some(rc) = state.config.routes.get(route) else {
            return ready(respond(Reject::Internal, ctx.request_id_str(), false));
        };
        match rc.auth {
            AuthMode::Public => {
                // Nothing proves anything on a public route: the Authorization header is
                // the client's business with the app, identity headers are already gone.
                self.inner.call(req)
            }
            AuthMode::Bearer => {
                let policy = &state.policies[route];
                if preflight_passes(policy, req.method(), req.headers()) {
                    return self.inner.call(req);
                }
                let Some(validator) = state.validator.clone() else {
                    tracing::error!(request_id = %ctx.request_id_str(), "bearer route without a token validator; refusing");
                    return ready(respond(Reject::Internal, ctx.request_id_str(), false));
                };
                let token = match bearer::extract(req.headers()) {
                    bearer::Extracted::Token(t) => t.to_string(),
                    bearer::Extracted::Missing => {
                        return ready(bearer::missing(ctx.request_id_str()))
                    }
                    bearer::Extracted::Malformed => {
                        return ready(bearer::malformed(ctx.request_id_str()))
                    }
                };
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(async move {
                    let rid = ctx.request_id_str();
                    let id = match validator.validate(&token).await {
                        Ok(id) => id,
                        Err(e) => {
                            if e.is_unavailable() {
                                tracing::warn!(request_id = %rid, error = %e, "token could not be checked: provider unavailable");
                            } else {
                                tracing::debug!(request_id = %rid, reason = %e, "bearer token refused");
                            }
                            return Ok(bearer::refused(&e, rid));
                        }
                    };
                    let user: Box<str> = id.subject().into();
                    let policy = &state.policies[route];
                    match decide(policy, req.method(), &id) {
                        Decision::Allow => {}
                        Decision::InsufficientScope { required } => {
                            return Ok(with_info(
                                bearer::insufficient_scope(&required, rid),
                                |i| i.user = Some(user),
                            ));
                        }
                        Decision::Forbidden => {
                            let html = wants_html(req.headers());
                            return Ok(with_info(respond(Reject::Forbidden, rid, html), |i| {
                                i.user = Some(user)
                            }));
                        }
                    }
                    if let Err(e) = identity_headers::apply(
                        req.headers_mut(),
                        &state.config.headers,
                        &id,
                        Some(&token),
                    ) {
                        tracing::warn!(request_id = %rid, error = %e, user = %user, "identity refused: unsafe header value");
                        let html = wants_html(req.headers());
                        return Ok(with_info(respond(Reject::Forbidden, rid, html), |i| {
                            i.user = Some(user)
                        }));
                    }
                    let resp = inner.call(req).await?;
                    Ok(with_info(resp, |i| i.user = Some(user)))
                })
            }
            // Config validation refuses these modes in this build; should one get here
            // anyway, the request is refused, never forwarded.
            AuthMode::Login | AuthMode::Either => {
                tracing::error!(request_id = %ctx.request_id_str(), "route auth mode not available in this build; refusing");
                let resp = respond(
                    Reject::Internal,
                    ctx.request_id_str(),
                    wants_html(req.headers()),
                );
                ready(resp)
            }
        }
    }
}
