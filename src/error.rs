//! The one rescue: every answer the proxy gives instead of the upstream's is a [`Refusal`],
//! rendered here to HTML or JSON, with the request id, and logged by one rule.
//!
//! - **Whose fault** ([`Fault`]) decides the log level: the client's → `debug` (it is
//!   their problem and they are many), the provider's or the upstream's → `warn` (an
//!   operator should look), ours (config, a bug) → `error`.
//! - **The page format** ([`wants_html`]): `Accept` mentioning `text/html` gets a small
//!   HTML page, everything else the JSON body of DESIGN §2. Bearer-token refusals are
//!   always JSON with their RFC 6750 challenge: only API clients send tokens.
//! - **Redirect or 401** ([`is_navigation`], DESIGN §1.2): only a top-level browser
//!   navigation is sent to the login; `fetch`/XHR/API calls get 401 so apps can handle it.
//!
//! Bodies are short and generic; they never carry upstream addresses, token contents or
//! error chains (those go to the log, with the request id).

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderMap, Method, Response, StatusCode};

use crate::body::{BoxError, Resp, RespBody};

/// The RFC 6750 §1.2 realm named in bearer challenges.
pub const REALM: &str = "portcullis";

/// Whose fault a refusal is: decides the log level (and, for operators, where to look).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A malformed, unauthenticated or unauthorized request: `debug`.
    Client,
    /// The identity provider (discovery, JWKS, token, introspection) or the session store
    /// could not answer, or answered something unusable: `warn`.
    Provider,
    /// The upstream application refused, reset, or was too slow: `warn`.
    Upstream,
    /// The configuration or the proxy itself: `error`.
    Internal,
}

/// Why the proxy answers a request itself.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    // ---- the client's fault -------------------------------------------------------------
    /// Malformed or ambiguous request (path, host, headers).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("no route for this path")]
    NotFound,
    #[error("request target too long")]
    UriTooLong,
    #[error("request head too large")]
    HeadersTooLarge,
    /// The client paused too long while sending its body.
    #[error("request body not received in time")]
    RequestTimeout,
    /// The identity is known but not allowed here; `rule` is the kind of policy rule that
    /// refused it (`group`, `email`, `email_domain`, `claim`; `forward_auth` when forward
    /// auth cannot judge the request at all).
    #[error("identity not allowed on this route ({rule})")]
    Forbidden { rule: &'static str },
    /// No identity on a route that needs one. A navigation is sent to `login` (the
    /// `/oauth2/start?rd=...` of this request) when there is one; anything else gets 401
    /// with a bare bearer challenge (RFC 6750 §3.1: no error code without a token).
    #[error("no identity ({why})")]
    SignInRequired {
        login: Option<String>,
        /// Why there is none: `no_token`, `no_session`, ...
        why: &'static str,
    },
    /// A malformed `Authorization` header (RFC 6750 §3.1 `invalid_request`, 400).
    #[error("malformed Authorization header")]
    TokenMalformed,
    /// A token in the `Authorization` header and another in the `access_token` query
    /// parameter (RFC 6750 §2: one method per request; `invalid_request`, 400).
    #[error("bearer token sent in more than one way")]
    TokenTwice,
    /// The bearer token is not valid (RFC 6750 §3.1 `invalid_token`, 401).
    #[error("bearer token refused: {0}")]
    TokenRefused(#[source] crate::token::TokenError),
    /// A DPoP request (RFC 9449) refused, 401 with a `DPoP` challenge naming
    /// `kind.error()`; `nonce` goes out as `DPoP-Nonce` (§8) when server nonces are on.
    #[error("DPoP refused: {kind}")]
    Dpop {
        kind: crate::token::dpop::DpopRefusal,
        nonce: Option<String>,
    },
    /// The token lacks scopes this request needs (RFC 6750 §3.1 `insufficient_scope`, 403);
    /// `required` is every scope the request needs, space separated.
    #[error("insufficient scope")]
    InsufficientScope { required: String },

    // ---- the provider's (or session store's) fault ----------------------------------------
    /// A token could not be checked: the provider, its JWKS or introspection is unavailable.
    /// Fail closed: 503, never a pass.
    #[error("token could not be checked")]
    TokenUnavailable(#[source] crate::token::TokenError),
    /// A dependency the request needs is unavailable (503).
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
    /// The identity has a value that cannot be sent in a header (a control character in a
    /// claim): refused (403), never split or forwarded.
    #[error("identity refused")]
    UnsafeIdentity(#[source] crate::auth::identity_headers::UnsafeValue),

    // ---- the upstream's fault ---------------------------------------------------------------
    /// The upstream (named) refused, reset or could not be reached.
    #[error("upstream {0} request failed")]
    BadGateway(Arc<str>, #[source] Option<BoxError>),
    /// The upstream (named) did not answer in time.
    #[error("upstream {0} timed out")]
    GatewayTimeout(Arc<str>),

    // ---- ours ---------------------------------------------------------------------------------
    /// A bug or an impossible state: fail closed.
    #[error("internal error: {0}")]
    Internal(&'static str),

    // ---- the login flow's pages (always HTML) -------------------------------------------------
    /// A page of `/oauth2/start`, `/oauth2/callback`, `/oauth2/sign_out`: the user reads
    /// `message`; the log gets the `cause` (with its chain) at `level`.
    #[error("login flow: {message}")]
    Flow {
        status: StatusCode,
        fault: Fault,
        /// How loud the log line is: [`Fault::level`], unless the page stands for something
        /// an operator should hear of even when it is the client's doing (a response mixed
        /// up between providers, a forged ID token).
        level: tracing::Level,
        message: Cow<'static, str>,
        /// A short code for the access log and metrics (`login:<code>`).
        code: &'static str,
        #[source]
        cause: Option<FlowCause>,
    },
}

/// Why a login-flow page was shown, for the log only.
pub type FlowCause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of the login flow that the user sees as a page (`oidc::login::LoginError`):
/// it says its status, whose fault it is, how loud to log it and what to tell the user, and
/// [`Refusal::from_flow`] turns it into the one rescue's [`Refusal::Flow`].
pub trait FlowError: std::error::Error + Send + Sync + 'static {
    fn status(&self) -> StatusCode;
    fn fault(&self) -> Fault;
    fn level(&self) -> tracing::Level {
        self.fault().level()
    }
    /// Short, safe to show: never a token, a code or an internal address.
    fn message(&self) -> Cow<'static, str>;
    /// A short code for the access log and metrics (`state_mismatch`, `id_token`, ...).
    fn code(&self) -> &'static str {
        "error"
    }
}

impl Fault {
    /// The log level of the module doc's rule: the client's fault `debug`, the provider's
    /// or the upstream's `warn`, ours `error`.
    pub fn level(self) -> tracing::Level {
        match self {
            Fault::Client => tracing::Level::DEBUG,
            Fault::Provider | Fault::Upstream => tracing::Level::WARN,
            Fault::Internal => tracing::Level::ERROR,
        }
    }
}

impl Refusal {
    /// The page of a login-flow error: its status, fault, level and message, and the error
    /// itself as the cause for the log.
    pub fn from_flow(e: impl FlowError) -> Refusal {
        Refusal::Flow {
            status: e.status(),
            fault: e.fault(),
            level: e.level(),
            message: e.message(),
            code: e.code(),
            cause: Some(Box::new(e)),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) | Refusal::TokenMalformed | Refusal::TokenTwice => {
                StatusCode::BAD_REQUEST
            }
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::Forbidden { .. }
            | Refusal::InsufficientScope { .. }
            | Refusal::UnsafeIdentity(_) => StatusCode::FORBIDDEN,
            Refusal::SignInRequired { .. } | Refusal::TokenRefused(_) | Refusal::Dpop { .. } => {
                StatusCode::UNAUTHORIZED
            }
            Refusal::TokenUnavailable(_) | Refusal::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::BadGateway(..) => StatusCode::BAD_GATEWAY,
            Refusal::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Refusal::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::Flow { status, .. } => *status,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Refusal::BadRequest(_)
            | Refusal::NotFound
            | Refusal::UriTooLong
            | Refusal::HeadersTooLarge
            | Refusal::RequestTimeout
            | Refusal::Forbidden { .. }
            | Refusal::SignInRequired { .. }
            | Refusal::TokenMalformed
            | Refusal::TokenTwice
            | Refusal::TokenRefused(_)
            | Refusal::Dpop { .. }
            | Refusal::InsufficientScope { .. } => Fault::Client,
            Refusal::TokenUnavailable(_) | Refusal::Unavailable(_) | Refusal::UnsafeIdentity(_) => {
                Fault::Provider
            }
            Refusal::BadGateway(..) | Refusal::GatewayTimeout(_) => Fault::Upstream,
            Refusal::Internal(_) => Fault::Internal,
            Refusal::Flow { fault, .. } => *fault,
        }
    }

    /// (`error` code, human description): safe to show to anyone.
    fn text(&self) -> (&'static str, Cow<'_, str>) {
        let t = |code, d: &'static str| (code, Cow::Borrowed(d));
        match self {
            Refusal::BadRequest(why) => t("invalid_request", why),
            Refusal::NotFound => t("not_found", "no route for this path"),
            Refusal::UriTooLong => t("uri_too_long", "the request target is too long"),
            Refusal::HeadersTooLarge => t("headers_too_large", "the request headers are too large"),
            Refusal::RequestTimeout => t(
                "request_timeout",
                "the request body was not received in time",
            ),
            Refusal::Forbidden { .. } | Refusal::UnsafeIdentity(_) => t(
                "access_denied",
                "you are not allowed to access this resource",
            ),
            Refusal::SignInRequired { .. } => t("unauthorized", "a bearer token is required"),
            Refusal::TokenMalformed => t("invalid_request", "malformed Authorization header"),
            Refusal::TokenTwice => t(
                "invalid_request",
                "a bearer token may be sent in one way only (RFC 6750 section 2)",
            ),
            Refusal::TokenRefused(e) => t("invalid_token", e.description()),
            Refusal::Dpop { kind, .. } => t(kind.error(), kind.description()),
            Refusal::InsufficientScope { .. } => t(
                "insufficient_scope",
                "the token lacks a scope this request needs",
            ),
            Refusal::TokenUnavailable(e) => t("temporarily_unavailable", e.description()),
            Refusal::Unavailable(why) => t("temporarily_unavailable", why),
            Refusal::BadGateway(..) => t("bad_gateway", "the upstream service is unavailable"),
            Refusal::GatewayTimeout(_) => t(
                "gateway_timeout",
                "the upstream service did not answer in time",
            ),
            Refusal::Internal(_) => t("server_error", "internal error"),
            Refusal::Flow { message, .. } => ("login_failed", Cow::Borrowed(message)),
        }
    }

    /// The RFC 6750 §3 challenge of a bearer refusal; `None` for the others.
    fn challenge(&self) -> Option<String> {
        match self {
            Refusal::SignInRequired { .. } => Some(format!("Bearer realm=\"{REALM}\"")),
            Refusal::TokenMalformed | Refusal::TokenTwice => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_request\""
            )),
            Refusal::TokenRefused(e) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                e.description()
            )),
            // RFC 9449 §7.1: the DPoP scheme, with the algorithms proofs may use.
            Refusal::Dpop { kind, .. } => Some(format!(
                "DPoP realm=\"{REALM}\", error=\"{}\", error_description=\"{}\", algs=\"{}\"",
                kind.error(),
                kind.description(),
                crate::token::dpop::ALGS_PARAM
            )),
            Refusal::InsufficientScope { required } => {
                // Scope tokens cannot contain '"' or '\' (RFC 6749 §3.3), but be safe.
                let scope: String = required
                    .chars()
                    .filter(|c| *c != '"' && *c != '\\')
                    .collect();
                Some(format!(
                    "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{scope}\""
                ))
            }
            _ => None,
        }
    }

    /// Refusals that only API clients meet: always JSON, whatever `Accept` says.
    fn api_only(&self) -> bool {
        matches!(
            self,
            Refusal::SignInRequired { .. }
                | Refusal::TokenMalformed
                | Refusal::TokenTwice
                | Refusal::TokenRefused(_)
                | Refusal::Dpop { .. }
                | Refusal::InsufficientScope { .. }
                | Refusal::TokenUnavailable(_)
        )
    }

    /// Logs the refusal by the rule of the module doc (the source chain goes to the log,
    /// never to the client) and renders it for a request with `method` and `headers`.
    pub fn respond(self, request_id: &str, method: &Method, headers: &HeaderMap) -> Resp {
        if let Refusal::SignInRequired {
            login: Some(to), ..
        } = &self
        {
            if is_navigation(method, headers) {
                self.log(request_id);
                let mut r = redirect(to, Vec::new());
                r.extensions_mut().insert(self.reason());
                return r;
            }
        }
        let html = wants_html(headers);
        self.respond_as(request_id, html)
    }

    /// Logs and renders the refusal for a client that `wants_html` (or not), when the
    /// request itself is gone (it moved upstream). Login-flow pages are always HTML,
    /// bearer refusals always JSON.
    pub fn respond_as(self, request_id: &str, wants_html: bool) -> Resp {
        self.respond_page(request_id, wants_html, &PageExtras::default())
    }

    /// Like [`Refusal::respond_as`], with what the HTML page says beside the message (who
    /// is signed in, where to go next); JSON answers are the same.
    pub fn respond_page(self, request_id: &str, wants_html: bool, extras: &PageExtras) -> Resp {
        self.log(request_id);
        let html = match &self {
            Refusal::Flow { .. } => true,
            r if r.api_only() => false,
            _ => wants_html,
        };
        self.render(request_id, html, extras)
    }

    /// Like [`Refusal::respond`], for answers that carry cookies (a session ended or
    /// cleared, a login transaction removed).
    pub fn respond_with_cookies(
        self,
        request_id: &str,
        method: &Method,
        headers: &HeaderMap,
        cookies: Vec<HeaderValue>,
    ) -> Resp {
        let mut r = self.respond(request_id, method, headers);
        for c in cookies {
            r.headers_mut().append(SET_COOKIE, c);
        }
        r
    }

    /// The log level: by fault, or the login-flow page's own.
    fn level(&self) -> tracing::Level {
        match self {
            Refusal::Flow { level, .. } => *level,
            other => other.fault().level(),
        }
    }

    fn log(&self, request_id: &str) {
        use tracing::Level;
        let status = self.status().as_u16();
        let chain = source_chain(self);
        let cause = chain.as_deref().map(tracing::field::display);
        let what = match self.fault() {
            Fault::Client => "refused",
            Fault::Provider => "refused: provider",
            Fault::Upstream => "refused: upstream",
            Fault::Internal => "refused: internal",
        };
        let level = self.level();
        if level == Level::ERROR {
            tracing::error!(request_id, status, reason = %self, cause, "{what}")
        } else if level == Level::WARN {
            tracing::warn!(request_id, status, reason = %self, cause, "{what}")
        } else if level == Level::INFO {
            tracing::info!(request_id, status, reason = %self, cause, "{what}")
        } else if level == Level::DEBUG {
            tracing::debug!(request_id, status, reason = %self, cause, "{what}")
        } else {
            tracing::trace!(request_id, status, reason = %self, cause, "{what}")
        }
    }

    fn render(&self, request_id: &str, html: bool, extras: &PageExtras) -> Resp {
        let status = self.status();
        let (code, description) = self.text();
        let mut resp = if html {
            let page = html_page(status, &description, request_id, extras);
            let mut r = Response::new(RespBody::full(page));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r
        } else {
            json_error(status, code, &description, request_id)
        };
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if let Some(c) = self
            .challenge()
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            h.insert(http::header::WWW_AUTHENTICATE, c);
        }
        // RFC 9449 §8: the nonce the next proof must carry.
        if let Refusal::Dpop { nonce: Some(n), .. } = self {
            if let Ok(v) = HeaderValue::from_str(n) {
                h.insert("dpop-nonce", v);
            }
        }
        if html {
            // Every page the proxy renders: not cached, no referrer, never framed, no
            // script.
            flow_headers(h);
        }
        resp.extensions_mut().insert(self.reason());
        resp
    }

    /// Why, as a short code for the access log and metrics: `no_token`,
    /// `invalid_token:expired`, `insufficient_scope`, `policy:group`, ...
    pub fn reason(&self) -> Reason {
        let r = |kind, detail| Reason { kind, detail };
        match self {
            Refusal::BadRequest(_) => r("bad_request", None),
            Refusal::NotFound => r("no_route", None),
            Refusal::UriTooLong => r("uri_too_long", None),
            Refusal::HeadersTooLarge => r("headers_too_large", None),
            Refusal::RequestTimeout => r("body_timeout", None),
            Refusal::Forbidden { rule } => r("policy", Some(*rule)),
            Refusal::SignInRequired { why, .. } => r(why, None),
            Refusal::TokenMalformed => r("malformed_token", None),
            Refusal::TokenTwice => r("token_twice", None),
            Refusal::TokenRefused(e) => r("invalid_token", Some(e.code())),
            Refusal::Dpop { kind, .. } => r(kind.error(), Some(kind.code())),
            Refusal::InsufficientScope { .. } => r("insufficient_scope", None),
            Refusal::TokenUnavailable(_) => r("provider_unavailable", None),
            Refusal::Unavailable(_) => r("unavailable", None),
            Refusal::UnsafeIdentity(_) => r("unsafe_identity", None),
            Refusal::BadGateway(..) => r("upstream_error", None),
            Refusal::GatewayTimeout(_) => r("upstream_timeout", None),
            Refusal::Internal(_) => r("internal", None),
            Refusal::Flow { code, .. } => r("login", Some(*code)),
        }
    }
}

/// An upstream's response body failed after its head was sent (a reset, a body shorter
/// than its length): the client's stream is cut. The access log's reason for it is
/// `upstream_error:body` ([`UpstreamBodyError::REASON`]).
#[derive(Debug, thiserror::Error)]
#[error("upstream {upstream} response body failed")]
pub struct UpstreamBodyError {
    pub upstream: Arc<str>,
    #[source]
    pub source: hyper::Error,
}

impl UpstreamBodyError {
    pub const REASON: Reason = Reason {
        kind: "upstream_error",
        detail: Some("body"),
    };
}

/// A refusal's reason code (`kind` or `kind:detail`), carried in the response's
/// extensions to the access log and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason {
    pub kind: &'static str,
    pub detail: Option<&'static str>,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.detail {
            Some(d) => write!(f, "{}:{d}", self.kind),
            None => f.write_str(self.kind),
        }
    }
}

/// The sources of `e`, joined with `: ` (the log's `cause`); `None` without any.
fn source_chain(e: &dyn std::error::Error) -> Option<String> {
    let mut next = e.source();
    let mut out: Option<String> = None;
    while let Some(s) = next {
        let text = s.to_string();
        match &mut out {
            // A source that already printed its own source adds nothing new.
            Some(o) if o.ends_with(&text) => {}
            Some(o) => {
                o.push_str(": ");
                o.push_str(&text);
            }
            None => out = Some(text),
        }
        next = s.source();
    }
    out
}

const X_CONTENT_TYPE_OPTIONS: http::HeaderName =
    http::HeaderName::from_static("x-content-type-options");

/// Which format for a page of ours? A client whose `Accept` mentions `text/html` (a
/// browser) gets HTML; everything else JSON.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// Redirect to the login, or 401? Only a top-level browser navigation (DESIGN §1.2): a
/// GET/HEAD with `Sec-Fetch-Mode: navigate`, or else `Accept` preferring `text/html`
/// without `X-Requested-With`. `fetch`/XHR/API calls get 401 so that apps can handle it.
pub fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    if !matches!(*method, Method::GET | Method::HEAD) {
        return false;
    }
    if let Some(mode) = headers.get("sec-fetch-mode") {
        return mode.as_bytes().eq_ignore_ascii_case(b"navigate");
    }
    if headers.contains_key("x-requested-with") {
        return false;
    }
    wants_html(headers)
}

/// A JSON answer of the proxy's own, never cached.
pub fn json_response(status: StatusCode, body: String) -> Resp {
    let mut resp = Response::new(RespBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// The JSON error body of DESIGN §2: `{"error", "error_description", "request_id"}`.
pub fn json_error(status: StatusCode, error: &str, description: &str, request_id: &str) -> Resp {
    let body = serde_json::json!({
        "error": error,
        "error_description": description,
        "request_id": request_id,
    });
    json_response(status, body.to_string())
}

/// Headers on every page and redirect of the login flow: not cached, no referrer leak,
/// never framed.
fn flow_headers(h: &mut HeaderMap) {
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
}

/// A 302 of the login flow (to the provider, back to `rd`, to the login), with cookies.
pub fn redirect(location: &str, cookies: Vec<HeaderValue>) -> Resp {
    let mut r = Response::new(RespBody::empty());
    *r.status_mut() = StatusCode::FOUND;
    let location =
        HeaderValue::from_str(location).unwrap_or_else(|_| HeaderValue::from_static("/"));
    r.headers_mut().insert(LOCATION, location);
    for c in cookies {
        r.headers_mut().append(SET_COOKIE, c);
    }
    flow_headers(r.headers_mut());
    r
}

/// HTML-escapes text for element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What an HTML page says beside its message.
#[derive(Debug, Default)]
pub struct PageExtras {
    /// Who is signed in (a 403 of a session: "You are signed in as ...").
    pub signed_in_as: Option<String>,
    /// Where to go next, as (text, same-site href); the first is the main action.
    pub links: Vec<(&'static str, String)>,
}

/// `message` as a sentence: a capital first letter and a full stop (the JSON
/// `error_description`s are RFC 6750's lowercase fragments; a page speaks to people).
fn sentence(message: &str) -> String {
    let mut chars = message.chars();
    let mut out: String = match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => return String::new(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

/// A small, styled page: the status, the message, who is signed in, the next steps and
/// the request id. No script, no outside resource: only what `flow_headers`' policy
/// (`default-src 'none'; style-src 'unsafe-inline'`) allows.
pub fn html_page(
    status: StatusCode,
    message: &str,
    request_id: &str,
    extras: &PageExtras,
) -> String {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let who = extras
        .signed_in_as
        .as_deref()
        .map(|w| {
            format!(
                "<p>You are signed in as <strong>{}</strong>.</p>",
                escape_html(w)
            )
        })
        .unwrap_or_default();
    let links = if extras.links.is_empty() {
        String::new()
    } else {
        let a: Vec<String> = extras
            .links
            .iter()
            .map(|(text, href)| {
                format!(
                    "<a href=\"{}\">{}</a>",
                    escape_html(href),
                    escape_html(text)
                )
            })
            .collect();
        format!("<nav>{}</nav>", a.join(""))
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{t}</title>\
<style>body{{font-family:system-ui,sans-serif;background:#f6f7f9;color:#1d2330;display:flex;\
min-height:100vh;align-items:center;justify-content:center;margin:0}}main{{background:#fff;\
border-radius:10px;box-shadow:0 2px 12px rgba(0,0,0,.08);padding:2rem 2.5rem;max-width:32rem}}\
h1{{font-size:1.4rem;margin:0 0 .75rem}}p{{margin:.5rem 0}}.id{{color:#6b7385;font-size:.85rem}}\
nav{{margin:1.25rem 0 .5rem;display:flex;gap:.75rem;flex-wrap:wrap}}nav a{{padding:.45rem .9rem;\
border-radius:6px;border:1px solid #c9ced8;color:#1d2330;text-decoration:none}}\
nav a:first-child{{background:#2f5bd3;border-color:#2f5bd3;color:#fff}}\
</style></head><body><main><h1>{t}</h1><p>{m}</p>{who}{links}\
<p class=\"id\">Request id: <code>{r}</code></p></main></body></html>",
        t = escape_html(&title),
        m = escape_html(&sentence(message)),
        r = escape_html(request_id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn escapes() {
        assert_eq!(
            escape_html("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }

    #[test]
    fn format_follows_accept_but_bearer_refusals_are_json() {
        let html = headers(&[("accept", "text/html")]);
        let r = Refusal::BadGateway("app".into(), None).respond("abc", &Method::GET, &html);
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        let r =
            Refusal::BadGateway("app".into(), None).respond("abc", &Method::GET, &HeaderMap::new());
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        let r = Refusal::TokenMalformed.respond("abc", &Method::GET, &html);
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(
            r.headers()[http::header::WWW_AUTHENTICATE],
            "Bearer realm=\"portcullis\", error=\"invalid_request\""
        );
    }

    #[test]
    fn sign_in_redirects_navigations_only() {
        let nav = headers(&[("accept", "text/html"), ("sec-fetch-mode", "navigate")]);
        let fetch = headers(&[("accept", "text/html"), ("sec-fetch-mode", "cors")]);
        let xhr = headers(&[
            ("accept", "text/html"),
            ("x-requested-with", "XMLHttpRequest"),
        ]);
        let login = || Refusal::SignInRequired {
            login: Some("/oauth2/start?rd=%2Fx".into()),
            why: "no_session",
        };
        let r = login().respond("id", &Method::GET, &nav);
        assert_eq!(r.status(), 302);
        assert_eq!(r.headers()[LOCATION], "/oauth2/start?rd=%2Fx");
        for (m, h) in [
            (Method::GET, &fetch),
            (Method::GET, &xhr),
            (Method::POST, &nav),
        ] {
            let r = login().respond("id", &m, h);
            assert_eq!(r.status(), 401, "{m} {h:?}");
            assert_eq!(
                r.headers()[http::header::WWW_AUTHENTICATE],
                "Bearer realm=\"portcullis\""
            );
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("test flow error")]
    struct TestFlow(StatusCode, Fault, tracing::Level);

    impl FlowError for TestFlow {
        fn status(&self) -> StatusCode {
            self.0
        }
        fn fault(&self) -> Fault {
            self.1
        }
        fn level(&self) -> tracing::Level {
            self.2
        }
        fn message(&self) -> Cow<'static, str> {
            "Please <start> again.".into()
        }
    }

    #[test]
    fn flow_pages_are_html_and_never_framed() {
        let e = TestFlow(StatusCode::BAD_REQUEST, Fault::Client, tracing::Level::WARN);
        let r = Refusal::from_flow(e);
        assert_eq!(
            (r.fault(), r.level()),
            (Fault::Client, tracing::Level::WARN)
        );
        assert_eq!(
            std::error::Error::source(&r)
                .map(|s| s.to_string())
                .as_deref(),
            Some("test flow error")
        );
        let r = r.respond("rid", &Method::GET, &HeaderMap::new());
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        assert_eq!(r.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(Fault::Provider.level(), tracing::Level::WARN);
        assert_eq!(Fault::Internal.level(), tracing::Level::ERROR);
        assert_eq!(Fault::Client.level(), tracing::Level::DEBUG);
    }

    #[test]
    fn the_log_gets_the_whole_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner")]
        struct Inner(#[source] std::io::Error);
        let e = Outer(Inner(std::io::Error::other("root")));
        assert_eq!(source_chain(&e).as_deref(), Some("inner: root"));
        assert_eq!(source_chain(&std::io::Error::other("x")), None);
    }
}
