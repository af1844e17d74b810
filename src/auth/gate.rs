//! The decision for one request on one route: who it is (token or session), and whether
//! the route's policy lets it through. Shared by the auth layer and `/oauth2/auth`.

use std::sync::Arc;

use http::header::HeaderValue;
use http::{HeaderMap, Method};

use super::bearer;
use crate::app::State;
use crate::config::AuthMode;
use crate::ctx::{with_info, Resp};
use crate::error::{respond, Reject};
use crate::identity::Identity;
use crate::oidc::login::SessionCheck;
use crate::policy::{decide, preflight_passes, Decision};

/// Who passed the gate.
pub struct Passed {
    /// `None` on public routes and CORS preflights.
    pub identity: Option<Arc<Identity>>,
    /// The access token that proved it (bearer token, or the session's access token).
    pub access_token: Option<String>,
    /// To send back with the response (refreshed or renewed session).
    pub set_cookies: Vec<HeaderValue>,
}

/// Is this a top-level browser navigation (DESIGN §1.2)? Only those get redirected to
/// the login; fetch/XHR/API calls get 401 so that apps can handle it.
pub fn is_navigation(method: &Method, h: &HeaderMap) -> bool {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return false;
    }
    if let Some(mode) = h.get("sec-fetch-mode") {
        return mode.as_bytes().eq_ignore_ascii_case(b"navigate");
    }
    if h.contains_key("x-requested-with") {
        return false;
    }
    h.get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

fn user_of(r: Resp, id: &Identity) -> Resp {
    let user: Box<str> = id.subject().into();
    with_info(r, |i| i.user = Some(user))
}

/// Authenticates and authorizes a request for route `route`. `Err` is the refusal to
/// send. `forward_auth`: never redirect (the front proxy sends browsers to start).
#[allow(clippy::too_many_arguments)]
pub async fn authenticate(
    state: &State,
    route: usize,
    method: &Method,
    headers: &HeaderMap,
    path_and_query: &str,
    request_id: &str,
    forward_auth: bool,
) -> Result<Passed, Resp> {
    let Some(rc) = state.config.routes.get(route) else {
        return Err(respond(Reject::Internal, request_id, false));
    };
    let policy = &state.policies[route];
    let html = crate::error::wants_html(headers);
    if rc.auth == AuthMode::Public || preflight_passes(policy, method, headers) {
        return Ok(Passed {
            identity: None,
            access_token: None,
            set_cookies: Vec::new(),
        });
    }
    let use_bearer = match rc.auth {
        AuthMode::Bearer => true,
        // DESIGN §1 step 2: a request with a bearer token is judged on it alone.
        AuthMode::Either => !matches!(bearer::extract(headers), bearer::Extracted::Missing),
        _ => false,
    };
    let (identity, token, set_cookies, via_bearer) = if use_bearer {
        let Some(validator) = &state.validator else {
            tracing::error!(
                request_id,
                "bearer route without a token validator; refusing"
            );
            return Err(respond(Reject::Internal, request_id, false));
        };
        let token = match bearer::extract(headers) {
            bearer::Extracted::Token(t) => t.to_string(),
            bearer::Extracted::Missing => return Err(bearer::missing(request_id)),
            bearer::Extracted::Malformed => return Err(bearer::malformed(request_id)),
        };
        match validator.validate(&token).await {
            Ok(id) => (id, token, Vec::new(), true),
            Err(e) => {
                if e.is_unavailable() {
                    tracing::warn!(request_id, error = %e, "token could not be checked: provider unavailable");
                } else {
                    tracing::debug!(request_id, reason = %e, "bearer token refused");
                }
                return Err(bearer::refused(&e, request_id));
            }
        }
    } else {
        let Some(login) = &state.login else {
            tracing::error!(request_id, "login route without login settings; refusing");
            return Err(respond(Reject::Internal, request_id, false));
        };
        match login.check(headers, request_id).await {
            SessionCheck::Valid {
                identity,
                access_token,
                set_cookies,
            } => (Arc::new(identity), access_token, set_cookies, false),
            SessionCheck::Unavailable => {
                return Err(respond(
                    Reject::Unavailable("the session store or identity provider is unavailable"),
                    request_id,
                    html,
                ))
            }
            SessionCheck::None { set_cookies } => {
                let mut r = if !forward_auth && is_navigation(method, headers) {
                    login.login_redirect(path_and_query, Vec::new())
                } else {
                    bearer::missing(request_id)
                };
                for c in set_cookies {
                    r.headers_mut().append(http::header::SET_COOKIE, c);
                }
                return Err(r);
            }
        }
    };
    match decide(policy, method, &identity) {
        Decision::Allow => {}
        Decision::InsufficientScope { required } if via_bearer => {
            return Err(user_of(
                bearer::insufficient_scope(&required, request_id),
                &identity,
            ));
        }
        Decision::InsufficientScope { .. } | Decision::Forbidden => {
            return Err(user_of(
                respond(Reject::Forbidden, request_id, html),
                &identity,
            ));
        }
    }
    Ok(Passed {
        identity: Some(identity),
        access_token: Some(token),
        set_cookies,
    })
}
