//! The authentication gate. Each route's `auth` mode decides what a request must carry
//! ([`gate::authenticate`]); then identity headers are written and the proxy's cookies
//! and the token's `Authorization` header are removed before forwarding.

pub mod bearer;
pub mod gate;
pub mod identity_headers;

use std::convert::Infallible;
use std::task::{Context, Poll};

use http::header::SET_COOKIE;
use tower_layer::Layer;
use tower_service::Service;

use crate::ctx::{with_info, Ctx, Matched, Req, Resp, RespFuture};
use crate::error::{respond, wants_html, Reject};

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
            return Box::pin(async { Ok(respond(Reject::Internal, "-", false)) });
        };
        // Public routes: nothing to prove, no await.
        if ctx.state.config.routes.get(route).map(|r| r.auth)
            == Some(crate::config::AuthMode::Public)
        {
            strip_own_cookies(&ctx, &mut req);
            return self.inner.call(req);
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let state = &ctx.state;
            let rid = ctx.request_id_str();
            let pq = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            let passed = match gate::authenticate(
                state,
                route,
                req.method(),
                req.headers(),
                &pq,
                rid,
                false,
            )
            .await
            {
                Ok(p) => p,
                Err(resp) => return Ok(resp),
            };
            // Authentication has read the session: the proxy's cookies go no further.
            strip_own_cookies(&ctx, &mut req);
            let Some(identity) = passed.identity else {
                // A CORS preflight let through by allow_preflight.
                return inner.call(req).await;
            };
            let user: Box<str> = identity.subject().into();
            if let Err(e) = identity_headers::apply(
                req.headers_mut(),
                &state.config.headers,
                &identity,
                passed.access_token.as_deref(),
            ) {
                tracing::warn!(request_id = %rid, error = %e, user = %user, "identity refused: unsafe header value");
                let html = wants_html(req.headers());
                return Ok(with_info(respond(Reject::Forbidden, rid, html), |i| {
                    i.user = Some(user)
                }));
            }
            let mut resp = inner.call(req).await?;
            for c in passed.set_cookies {
                resp.headers_mut().append(SET_COOKIE, c);
            }
            Ok(with_info(resp, |i| i.user = Some(user)))
        })
    }
}

/// The proxy's own cookies (session and its chunks, login transactions) never reach an
/// upstream, on any route; other cookies pass untouched.
fn strip_own_cookies(ctx: &Ctx, req: &mut Req) {
    if let Some(login) = &ctx.state.login {
        crate::session::strip::strip_proxy_cookies(req.headers_mut(), &login.cookie_bases());
    }
}
