//! The decision for one request on one route: who it is (token or session), and whether
//! the route's policy lets it through. Shared by the auth layer and `/oauth2/auth`.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::HeaderValue;
use http::{HeaderMap, Method};

use super::client_cert::ClientCert;
use super::{bearer, dpop};
use crate::admin::metrics::Mode;
use crate::config::HeadersConfig;
use crate::error::{Fault, PageExtras, Refusal};
use crate::identity::{Binding, Identity};
use crate::oidc::login::{Login, SessionCheck};
use crate::policy::{decide, preflight_passes, Decision};
use crate::routing::{Route, RouteAuth};
use crate::session::Session;
use crate::telemetry::span::{self, Child, Kind, Scope, Value};
use crate::token::dpop::DpopRefusal;
use crate::token::{TokenError, TokenValidator};

/// Who passed the gate.
pub struct Passed {
    /// `None` on public routes and CORS preflights.
    pub identity: Option<Arc<Identity>>,
    /// The access token that proved it.
    pub token: AccessToken,
    /// To send back with the response (refreshed or renewed session).
    pub set_cookies: Vec<HeaderValue>,
}

impl Passed {
    /// The access token for the identity headers that carry it (`headers.access_token`,
    /// `pass_authorization`): the session's, or a copy of the request's bearer token, made
    /// only when `cfg` asks for one.
    pub fn token_for(&self, request: &HeaderMap, cfg: &HeadersConfig) -> Option<Cow<'_, str>> {
        match &self.token {
            AccessToken::Session(s) => Some(Cow::Borrowed(s.access_token.expose())),
            AccessToken::Bearer if cfg.access_token.is_some() || cfg.pass_authorization => {
                match bearer::extract(request) {
                    bearer::Extracted::Token(t) => std::str::from_utf8(t)
                        .ok()
                        .map(|t| Cow::Owned(t.to_owned())),
                    _ => None,
                }
            }
            AccessToken::Bearer | AccessToken::None => None,
        }
    }
}

/// Where the access token of a passed request is.
pub enum AccessToken {
    None,
    /// In the request's own `Authorization: Bearer` header (not copied unless a header
    /// config asks for it).
    Bearer,
    /// The session's access token (in the session, shared with its other requests).
    Session(Arc<Session>),
}

/// A request the gate turned away: what to answer, cookies to send with it, and who it
/// was when that is known (a 403).
pub struct Denied {
    pub refusal: Refusal,
    pub set_cookies: Vec<HeaderValue>,
    pub user: Option<Arc<Identity>>,
    /// A 403 of a signed-in browser user: who it is, and the way out (sign out, or sign
    /// in as someone else), for the HTML page.
    pub page: Option<PageExtras>,
}

impl From<Refusal> for Denied {
    fn from(refusal: Refusal) -> Denied {
        Denied {
            refusal,
            set_cookies: Vec::new(),
            user: None,
            page: None,
        }
    }
}

/// The request the gate judges. `path_and_query`: where a login brings the browser back.
/// `forward_auth`: never send to the login (the front proxy sends browsers to start).
pub struct Judged<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub path_and_query: &'a str,
    /// `Host` (or `:authority`) as the client sent it: the port of a DPoP `htu` on a
    /// route known by its `host` only.
    pub authority: Option<&'a str>,
    pub request_id: &'a str,
    pub forward_auth: bool,
    /// Where the client certificate of an mTLS-bound token (RFC 8705) is known from.
    pub client_cert: ClientCert<'a>,
}

/// Authenticates a request for `route` and authorizes it by the policy of `route` and of
/// every route in `also` (the routes other readings of its path select; they share
/// `route`'s upstream and auth mode).
pub async fn authenticate(
    route: &Route,
    also: &[Arc<Route>],
    j: &Judged<'_>,
) -> Result<Passed, Denied> {
    // Traced: the decision is a span of its own, and the provider calls it makes (keys,
    // introspection, refresh) are its children.
    let traced = Child::of_current();
    let scope = traced.as_ref().and_then(|c| {
        let outer = span::current()?;
        Some(Arc::new(Scope {
            tracer: outer.tracer.clone(),
            request: outer.request,
            parent: c.started.context,
            trace_state: outer.trace_state.clone(),
        }))
    });
    let judged = match scope {
        // Off: the decision's future as it is (no wrapper to move it into).
        None => judge(route, also, j).await,
        Some(s) => span::scoped(Some(s), judge(route, also, j)).await,
    };
    // Counted here, once per decision, for proxied requests and `/oauth2/auth` alike.
    let (mode, result, reason) = match &judged {
        Ok(p) => {
            let mode = match p.token {
                AccessToken::None => Mode::Public,
                AccessToken::Bearer => Mode::Bearer,
                AccessToken::Session(_) => Mode::Session,
            };
            route.metrics.allowed(mode);
            (mode, "allow", None)
        }
        Err(d) => {
            // The mode the request was judged in: a refusal before any identity (no
            // token, no session) says which one was missing.
            let mode = match (&route.auth, bearer::extract(j.headers)) {
                (RouteAuth::Public, _) => Mode::Public,
                (RouteAuth::Bearer(_), _) => Mode::Bearer,
                (RouteAuth::Login(_), _) => Mode::Session,
                (RouteAuth::Either { .. }, bearer::Extracted::Missing) => Mode::Session,
                (RouteAuth::Either { .. }, _) => Mode::Bearer,
            };
            let client_fault = d.refusal.fault() == Fault::Client;
            let reason = d.refusal.reason();
            route.metrics.refused(mode, client_fault, reason);
            (
                mode,
                if client_fault { "deny" } else { "error" },
                Some(reason),
            )
        }
    };
    if let Some(c) = traced {
        let mut attributes = vec![
            ("http.route", Value::from(route.name.to_string())),
            ("portcullis.auth.mode", Value::from(mode.as_str())),
            ("portcullis.auth.result", Value::from(result)),
        ];
        if let Some(r) = reason {
            attributes.push(("portcullis.reason", Value::from(r.to_string())));
        }
        c.end("auth", Kind::Internal, attributes, result == "error");
    }
    judged
}

async fn judge(route: &Route, also: &[Arc<Route>], j: &Judged<'_>) -> Result<Passed, Denied> {
    let all = || std::iter::once(route).chain(also.iter().map(|r| &**r));
    if matches!(route.auth, RouteAuth::Public)
        || all().all(|r| preflight_passes(&r.policy, j.method, j.headers))
    {
        return Ok(anonymous());
    }
    let (identity, token, set_cookies) = match &route.auth {
        RouteAuth::Public => return Ok(anonymous()),
        RouteAuth::Bearer(tokens) => {
            let id = by_token(route, tokens, bearer::extract(j.headers), j).await?;
            (id, AccessToken::Bearer, Vec::new())
        }
        RouteAuth::Login(login) => by_session(login, j).await?,
        // DESIGN §1 step 2: a request with a bearer token is judged on it alone.
        RouteAuth::Either { tokens, login } => match bearer::extract(j.headers) {
            bearer::Extracted::Missing => by_session(login, j).await?,
            extracted => (
                by_token(route, tokens, extracted, j).await?,
                AccessToken::Bearer,
                Vec::new(),
            ),
        },
    };
    // The first route whose policy refuses answers (with its own scopes).
    let refusal = all().find_map(|r| match decide(&r.policy, j.method, &identity) {
        Decision::Allow => None,
        Decision::InsufficientScope { required } if matches!(token, AccessToken::Bearer) => {
            Some(Refusal::InsufficientScope { required })
        }
        // A session's scopes are not the client's to fix: a plain 403.
        Decision::InsufficientScope { .. } => Some(Refusal::Forbidden { rule: "scope" }),
        Decision::Forbidden { rule } => Some(Refusal::Forbidden { rule }),
    });
    match refusal {
        None => Ok(Passed {
            identity: Some(identity),
            token,
            set_cookies,
        }),
        Some(refusal) => Err(Denied {
            page: signed_in_page(route, &token, &identity, j),
            refusal,
            set_cookies: Vec::new(),
            user: Some(identity),
        }),
    }
}

/// For a session refused by policy (not a forward-auth check: the front proxy shows its
/// own page), what the 403 page offers: the user's name and the route's sign-out links.
fn signed_in_page(
    route: &Route,
    token: &AccessToken,
    identity: &Identity,
    j: &Judged<'_>,
) -> Option<PageExtras> {
    let (RouteAuth::Login(login) | RouteAuth::Either { login, .. }) = &route.auth else {
        return None;
    };
    if j.forward_auth || !matches!(token, AccessToken::Session(_)) {
        return None;
    }
    let who = identity
        .email()
        .or(identity.preferred_username())
        .or(identity.name())
        .unwrap_or(identity.subject());
    Some(PageExtras {
        signed_in_as: Some(who.to_string()),
        links: login.sign_out_links(j.path_and_query),
    })
}

fn anonymous() -> Passed {
    Passed {
        identity: None,
        token: AccessToken::None,
        set_cookies: Vec::new(),
    }
}

async fn by_token(
    route: &Route,
    tokens: &TokenValidator,
    extracted: bearer::Extracted<'_>,
    j: &Judged<'_>,
) -> Result<Arc<Identity>, Denied> {
    let token = match extracted {
        // RFC 9449 §7.1: a DPoP-bound token with its proof.
        bearer::Extracted::Dpop(t) => {
            let path = j.path_and_query.split('?').next().unwrap_or("/");
            let req = dpop::DpopRequest {
                method: j.method.as_str(),
                headers: j.headers,
                path,
                authority: j.authority,
                client_cert: j.client_cert,
            };
            return dpop::authenticate(
                route.dpop.as_deref(),
                route.htu_base.as_ref(),
                tokens,
                t,
                &req,
            )
            .await
            .map_err(Denied::from);
        }
        // A route that takes sender-constrained tokens only: with no client certificate
        // possible, a token in the Bearer scheme cannot be one.
        bearer::Extracted::Token(_)
            if route.require_sender_constraint && !j.client_cert.possible() =>
        {
            return Err(required())
        }
        bearer::Extracted::Token(t) => t,
        bearer::Extracted::Missing => {
            return Err(Refusal::SignInRequired {
                login: None,
                why: "no_token",
            }
            .into())
        }
        bearer::Extracted::Malformed => return Err(Refusal::TokenMalformed.into()),
    };
    let identity = tokens.validate_bytes(token).await.map_err(|e| {
        // Not a b64token (found on a cache miss): the header is malformed, as above.
        if e.is_syntax() {
            Denied::from(Refusal::TokenMalformed)
        } else if e.is_unavailable() {
            Refusal::TokenUnavailable(e).into()
        } else {
            Refusal::TokenRefused(e).into()
        }
    })?;
    // The binding is part of the (cached) identity and checked on every request, cache
    // hits included. RFC 8705 §3: a certificate-bound token comes with its certificate.
    // RFC 9449 §7.1: a token bound to a DPoP key (alone or with a certificate) is no
    // bearer token.
    match identity.binding() {
        None if route.require_sender_constraint => Err(required()),
        None => Ok(identity),
        Some(Binding::Certificate(x5t)) if j.client_cert.matches(x5t) => Ok(identity),
        Some(Binding::Certificate(_)) => {
            Err(Refusal::TokenRefused(TokenError::CertificateBinding).into())
        }
        Some(_) => Err(Refusal::TokenRefused(TokenError::SenderConstrained).into()),
    }
}

/// `require_sender_constraint` and a plain bearer token.
fn required() -> Denied {
    Refusal::Dpop {
        kind: DpopRefusal::Required,
        nonce: None,
    }
    .into()
}

async fn by_session(
    login: &Login,
    j: &Judged<'_>,
) -> Result<(Arc<Identity>, AccessToken, Vec<HeaderValue>), Denied> {
    match login.check(j.headers, j.request_id).await {
        SessionCheck::Valid {
            identity,
            session,
            set_cookies,
        } => Ok((identity, AccessToken::Session(session), set_cookies)),
        SessionCheck::Unavailable => Err(Refusal::Unavailable(
            "the session store or identity provider is unavailable",
        )
        .into()),
        SessionCheck::None {
            set_cookies,
            revoked,
        } => Err(Denied {
            page: None,
            refusal: Refusal::SignInRequired {
                login: (!j.forward_auth).then(|| login.login_location(j.path_and_query)),
                // A browser that brought a session cookie that no longer opens (expired,
                // idle, ended, or sealed with a retired secret) is told apart, and one
                // whose session was revoked (sign-out, provider logout, admin) too.
                why: if revoked {
                    "revoked"
                } else if login.store.settings().carries_session(j.headers) {
                    "session_expired"
                } else {
                    "no_session"
                },
            },
            set_cookies,
            user: None,
        }),
    }
}
