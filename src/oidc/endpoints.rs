//! The proxy's own endpoints under `server.proxy_prefix` (default `/oauth2`), answered
//! before header hygiene (forward-auth reads `X-Forwarded-*` from trusted proxies):
//! `/ping`, `/auth` (forward auth), and with logins configured `/start`, `/callback`,
//! `/sign_out`, `/userinfo`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderValue, CACHE_CONTROL, SET_COOKIE};
use http::{Method, Response, StatusCode};
use tower_service::Service;

use super::login::Login;
use crate::auth::gate::{self, Judged};
use crate::auth::identity_headers::{self, HeaderSettings};
use crate::body::{Resp, RespBody};
use crate::error::Refusal;
use crate::exchange::Answer;
use crate::path::{normalize_host, normalize_path};
use crate::proxy::hygiene::TrustedProxies;
use crate::routing::layer::AMBIGUOUS_READINGS;
use crate::routing::{OwnEndpoint, RouteTable};

/// What the endpoints need: the login (when configured), and for forward auth the route
/// table, the trusted proxies and the identity header settings.
#[derive(Clone)]
pub struct Endpoints {
    login: Option<Arc<Login>>,
    table: Arc<RouteTable>,
    trusted: TrustedProxies,
    headers: Arc<HeaderSettings>,
}

impl Endpoints {
    pub fn new(
        login: Option<Arc<Login>>,
        table: Arc<RouteTable>,
        trusted: TrustedProxies,
        headers: Arc<HeaderSettings>,
    ) -> Self {
        Endpoints {
            login,
            table,
            trusted,
            headers,
        }
    }
}

impl<B: Send + 'static> Service<OwnEndpoint<B>> for Endpoints {
    type Response = Answer;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, e: OwnEndpoint<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(e).await) })
    }
}

impl Endpoints {
    async fn handle<B>(&self, e: OwnEndpoint<B>) -> Answer {
        // No endpoint reads a body (sign-out's POST carries none it needs).
        let (parts, _body) = e.req.into_parts();
        let rid = e.id.as_str();
        let method = &parts.method;
        let headers = &parts.headers;
        let query = parts.uri.query();
        let get = matches!(*method, Method::GET | Method::HEAD);
        let resp = match (&*e.rest, self.login.as_ref()) {
            ("/ping", _) if get => {
                let mut r = Response::new(RespBody::full("OK"));
                r.headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            // Any method: nginx's auth_request and Traefik's forwardAuth send the
            // subrequest with the original request's method.
            ("/auth", _) => return self.forward_auth(&parts, e.conn.peer_ip(), rid).await,
            ("/start", Some(l)) if get => l.start(query, headers, rid),
            ("/callback", Some(l)) if get => l.callback(query, headers, rid).await,
            ("/sign_out", Some(l)) if get || method == Method::POST => {
                l.sign_out(query, headers, rid).await
            }
            ("/userinfo", Some(l)) if get => l.userinfo(headers, rid).await,
            _ => Refusal::NotFound.respond(rid, method, headers),
        };
        resp.into()
    }

    /// `/oauth2/auth` for nginx `auth_request`, Traefik `forwardAuth`, Caddy
    /// `forward_auth`: 202 with identity headers, 401 or 403; never a redirect. The
    /// original request is described by `X-Forwarded-Uri` / `X-Original-URI`,
    /// `X-Forwarded-Method` / `X-Original-Method` and `X-Forwarded-Host`, believed only from
    /// `trusted_proxies`: a client that could set them would choose its own policy. Without
    /// them the answer is 403.
    async fn forward_auth(
        &self,
        req: &http::request::Parts,
        peer: std::net::IpAddr,
        rid: &str,
    ) -> Answer {
        let h = &req.headers;
        // Refusals here are always JSON: the front proxy reads only the status.
        let refuse = |r: Refusal| Answer::from(r.respond_as(rid, false));
        let trusted = self.trusted.contains(peer);
        let header = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| h.get(*n).and_then(|v| v.to_str().ok()))
                .map(str::to_string)
        };
        let uri = header(&["x-forwarded-uri", "x-original-uri"]);
        let (true, Some(uri)) = (trusted, uri) else {
            tracing::warn!(request_id = rid, %peer, trusted, "forward-auth request without a trusted X-Forwarded-Uri; denied");
            return refuse(Refusal::Forbidden);
        };
        // The original method: named by the front proxy, else the subrequest's own (nginx
        // auth_request keeps the original method).
        let method = header(&["x-forwarded-method", "x-original-method"])
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .unwrap_or_else(|| req.method.clone());
        let host = header(&["x-forwarded-host"])
            .or_else(|| header(&["host"]))
            .and_then(|h| normalize_host(&h).map(|h| h.into_owned()));
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri.as_str(), None),
        };
        // The URI named is normalized like any request path.
        let Ok(path) = normalize_path(path) else {
            return refuse(Refusal::BadRequest("ambiguous or malformed path"));
        };
        // The path-reading rule, as for a proxied request.
        let selected = match self.table.select(host.as_deref(), &path) {
            Ok(Some(s)) => s,
            Ok(None) => return refuse(Refusal::Forbidden),
            Err(conflict) => {
                tracing::debug!(reason = %conflict, "forward auth: a path its readings make ambiguous");
                return refuse(Refusal::BadRequest(AMBIGUOUS_READINGS));
            }
        };
        let pq = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.into_owned(),
        };
        let judged = Judged {
            method: &method,
            headers: h,
            path_and_query: &pq,
            request_id: rid,
            forward_auth: true,
        };
        let passed = match gate::authenticate(&selected.route, &selected.also, &judged).await {
            Ok(p) => p,
            Err(denied) => {
                let resp = denied
                    .refusal
                    .respond_with_cookies(rid, &method, h, denied.set_cookies);
                let mut a = Answer::from(resp);
                a.user = denied.user;
                return a;
            }
        };
        let mut r: Resp = Response::new(RespBody::empty());
        *r.status_mut() = StatusCode::ACCEPTED;
        if let Some(id) = &passed.identity {
            // The front proxy copies these onto the upstream request; never the
            // Authorization header itself.
            let token = match self.headers.cfg.access_token {
                Some(_) => passed.token_for(h, &self.headers.cfg),
                None => None,
            };
            if let Err(err) =
                identity_headers::apply(r.headers_mut(), &self.headers, id, token.as_deref(), false)
            {
                let mut a = refuse(Refusal::UnsafeIdentity(err));
                a.user = passed.identity;
                return a;
            }
        }
        for c in passed.set_cookies {
            r.headers_mut().append(SET_COOKIE, c);
        }
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let mut a = Answer::from(r);
        a.user = passed.identity;
        a
    }
}
