//! The authentication gate. Each route's `auth` mode decides what a request must carry;
//! a mode this build cannot enforce is refused (fail closed), never treated as public.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use crate::config::AuthMode;
use crate::ctx::{Ctx, Matched, Req, Resp, RespFuture};
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
    S: Service<Req, Response = Resp, Error = Infallible, Future = RespFuture>,
{
    type Response = Resp;
    type Error = Infallible;
    type Future = RespFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> RespFuture {
        let mode = match (
            req.extensions().get::<Ctx>(),
            req.extensions().get::<Matched>(),
        ) {
            (Some(c), Some(m)) => c.state.config.routes.get(m.route).map(|r| r.auth),
            _ => None,
        };
        match mode {
            Some(AuthMode::Public) => self.inner.call(req),
            // Config validation refuses these modes in this build; should one get here
            // anyway, the request is refused, never forwarded.
            Some(AuthMode::Bearer | AuthMode::Login | AuthMode::Either) | None => {
                let id = req
                    .extensions()
                    .get::<Ctx>()
                    .map(|c| c.request_id_str().to_string())
                    .unwrap_or_default();
                tracing::error!(request_id = %id, "route auth mode not available in this build; refusing");
                let resp = respond(Reject::Internal, &id, wants_html(req.headers()));
                Box::pin(async move { Ok(resp) })
            }
        }
    }
}
