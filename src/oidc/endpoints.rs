//! The proxy's own endpoints under `server.proxy_prefix` (default `/oauth2`), answered
//! before header hygiene (forward-auth reads `X-Forwarded-*` from trusted proxies).

use http::header::{HeaderValue, CACHE_CONTROL, SET_COOKIE};
use http::{Method, Response, StatusCode};

use crate::app::State;
use crate::auth::{gate, identity_headers};
use crate::body::RespBody;
use crate::ctx::{Ctx, Req, Resp};
use crate::error::{respond, wants_html, Reject};
use crate::router::{normalize_host, normalize_path, Router};

/// Answers `rest` (the path after the prefix, e.g. `/start`).
pub async fn handle(rest: &str, req: Req, ctx: &Ctx) -> Resp {
    let state = &ctx.state;
    let rid = ctx.request_id_str();
    let method = req.method().clone();
    let get = matches!(method, Method::GET | Method::HEAD);
    match (rest, state.login.as_ref()) {
        ("/ping", _) if get => {
            let mut r = Response::new(RespBody::full("OK"));
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        // Any method: nginx's auth_request and Traefik's forwardAuth send the subrequest
        // with the original request's method.
        ("/auth", _) => forward_auth(req, ctx).await,
        ("/start", Some(l)) if get => l.start(req.uri().query(), req.headers(), rid),
        ("/callback", Some(l)) if get => l.callback(req.uri().query(), req.headers(), rid).await,
        ("/sign_out", Some(l)) if get || method == Method::POST => {
            l.sign_out(req.uri().query(), req.headers(), rid).await
        }
        ("/userinfo", Some(l)) if get => l.userinfo(req.headers(), rid).await,
        _ => respond(Reject::NotFound, rid, wants_html(req.headers())),
    }
}

/// `GET /oauth2/auth` for nginx `auth_request`, Traefik `forwardAuth`, Caddy
/// `forward_auth`: 202 with identity headers, 401 or 403; never a redirect. The original
/// request is described by `X-Forwarded-Uri` / `X-Original-URI`, `X-Forwarded-Method` /
/// `X-Original-Method` and `X-Forwarded-Host`, believed only from `trusted_proxies`: a
/// client that could set them would choose its own policy. Without them the answer is 403.
async fn forward_auth(req: Req, ctx: &Ctx) -> Resp {
    let state: &State = &ctx.state;
    let rid = ctx.request_id_str();
    let h = req.headers();
    let peer = ctx.peer.ip().to_canonical();
    let trusted = state
        .config
        .server
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer));
    let header = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| h.get(*n).and_then(|v| v.to_str().ok()))
            .map(str::to_string)
    };
    let uri = header(&["x-forwarded-uri", "x-original-uri"]);
    let (true, Some(uri)) = (trusted, uri) else {
        tracing::warn!(request_id = rid, %peer, trusted, "forward-auth request without a trusted X-Forwarded-Uri; denied");
        return respond(Reject::Forbidden, rid, false);
    };
    // The original method: named by the front proxy, else the subrequest's own (nginx
    // auth_request keeps the original method).
    let method = header(&["x-forwarded-method", "x-original-method"])
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .unwrap_or_else(|| req.method().clone());
    let host = header(&["x-forwarded-host"])
        .or_else(|| header(&["host"]))
        .and_then(|h| normalize_host(&h));
    let (path, query) = match uri.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q)),
        None => (uri.clone(), None),
    };
    // The URI named is normalized like any request path.
    let path = match normalize_path(&path) {
        Ok(p) => p,
        Err(_) => {
            return respond(
                Reject::BadRequest("ambiguous or malformed path"),
                rid,
                false,
            )
        }
    };
    let Some(route) = Router::new(&state.config.routes).find(host.as_deref(), &path) else {
        return respond(Reject::Forbidden, rid, false);
    };
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    match gate::authenticate(state, route, &method, h, &pq, rid, true).await {
        Err(r) => r,
        Ok(passed) => {
            let mut r = Response::new(RespBody::empty());
            *r.status_mut() = StatusCode::ACCEPTED;
            if let Some(id) = &passed.identity {
                // The front proxy copies these onto the upstream request.
                let mut cfg = state.config.headers.clone();
                cfg.pass_authorization = false;
                if identity_headers::apply(
                    r.headers_mut(),
                    &cfg,
                    id,
                    passed.access_token.as_deref(),
                )
                .is_err()
                {
                    return respond(Reject::Forbidden, rid, false);
                }
            }
            for c in passed.set_cookies {
                r.headers_mut().append(SET_COOKIE, c);
            }
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
    }
}
