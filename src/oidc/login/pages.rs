//! What the login flow tells the browser when it cannot go on: [`LoginError`], one variant
//! per reason, each with its status, the user's message, whose fault it is and how loud it
//! is logged. The page itself is the one rescue's (`crate::error`, [`Refusal::Flow`]):
//! always HTML, `no-store`, never framed, with the request id; the cause goes to the log.

use std::borrow::Cow;
use std::sync::Arc;

use http::header::{HeaderValue, SET_COOKIE};
use http::StatusCode;
use tracing::Level;

use super::id_token::IdTokenError;
use super::token_endpoint::TokenCallError;
use crate::body::Resp;
use crate::error::{Fault, FlowError, PageExtras, Refusal};
use crate::revocation::RevocationError;
use crate::session::SessionError;

/// Why `/oauth2/start`, `/oauth2/callback` or `/oauth2/sign_out` answers with a page.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    // ---- any step --------------------------------------------------------------------------
    /// RFC 6749 §3.1: a parameter given more than once.
    #[error("parameter {0:?} given more than once (RFC 6749 §3.1)")]
    RepeatedParameter(String),

    // ---- start -----------------------------------------------------------------------------
    #[error("provider metadata not loaded yet")]
    ProviderNotReady,
    #[error("the provider advertises no authorization_endpoint")]
    NoAuthorizationEndpoint,
    #[error("login transaction could not be created")]
    Transaction(#[source] SessionError),

    // ---- callback: the authorization response ---------------------------------------------------
    #[error("authorization response without state")]
    NoState,
    /// RFC 6749 §10.12: no transaction of this browser has this state (another browser's
    /// response, an expired or replayed one).
    #[error("no login transaction for this state")]
    UnknownTransaction,
    /// RFC 6749 §4.1.2.1: the provider answered with an error.
    #[error("the provider refused the login: {error}")]
    ProviderRefused {
        error: String,
        description: Option<String>,
    },
    /// RFC 9207 §2.4: the response names another issuer (a mix-up).
    #[error("authorization response from another issuer (RFC 9207)")]
    WrongIssuer,
    /// RFC 9207 §2.4: the provider advertises `iss` in responses and this one has none.
    #[error("authorization response without iss, which the provider advertises (RFC 9207)")]
    MissingIssuer,
    #[error("authorization response without code")]
    NoCode,

    // ---- callback: the token response ---------------------------------------------------------
    #[error("code exchange failed")]
    Exchange(#[source] Arc<TokenCallError>),
    #[error("the token response has no ID token")]
    NoIdToken,
    #[error("ID token refused")]
    IdToken(#[source] IdTokenError),

    // ---- callback: the session -----------------------------------------------------------------
    #[error(
        "session too large for the cookie store ({bytes} bytes); use session.store = \"redis\""
    )]
    SessionTooLarge { bytes: usize },
    #[error("session store unavailable")]
    SessionStoreUnavailable(#[source] SessionError),
    #[error("session not saved")]
    SessionNotSaved(#[source] SessionError),

    // ---- sign-out ------------------------------------------------------------------------------
    /// The session's id could not be put in the revocation set (Redis unreachable): a copy
    /// of the cookie would still open, so the sign-out is not reported as done.
    #[error("sign-out not recorded in the revocation store")]
    RevocationUnavailable(#[source] RevocationError),
}

impl LoginError {
    /// Status and fault, decided together in one place.
    fn class(&self) -> (StatusCode, Fault) {
        use LoginError as E;
        use StatusCode as S;
        match self {
            // What the browser brought: a forged, replayed, foreign or garbled response.
            E::RepeatedParameter(_)
            | E::NoState
            | E::UnknownTransaction
            | E::WrongIssuer
            | E::MissingIssuer
            | E::NoCode => (S::BAD_REQUEST, Fault::Client),
            E::ProviderRefused { .. } => (S::FORBIDDEN, Fault::Client),
            E::Exchange(e) => match &**e {
                // Our own credentials refused: ours to fix.
                TokenCallError::Refused { status: 401, .. } => (S::BAD_REQUEST, Fault::Internal),
                // A code the provider will not exchange: a stale or replayed one.
                TokenCallError::Refused { .. } => (S::BAD_REQUEST, Fault::Client),
                TokenCallError::BadResponse(_) => (S::BAD_GATEWAY, Fault::Provider),
                TokenCallError::Assertion(_) => (S::INTERNAL_SERVER_ERROR, Fault::Internal),
                TokenCallError::NotReady
                | TokenCallError::NoEndpoint
                | TokenCallError::Transport(_)
                | TokenCallError::Status(_) => (S::SERVICE_UNAVAILABLE, Fault::Provider),
            },
            // An ID token this client cannot accept came from the provider's token
            // endpoint: the provider's doing (or someone's in its place).
            E::NoIdToken => (S::BAD_GATEWAY, Fault::Provider),
            E::IdToken(IdTokenError::Unavailable(_)) => (S::SERVICE_UNAVAILABLE, Fault::Provider),
            E::IdToken(_) => (S::BAD_REQUEST, Fault::Provider),
            E::ProviderNotReady
            | E::NoAuthorizationEndpoint
            | E::SessionStoreUnavailable(_)
            | E::RevocationUnavailable(_) => (S::SERVICE_UNAVAILABLE, Fault::Provider),
            E::Transaction(_) | E::SessionTooLarge { .. } | E::SessionNotSaved(_) => {
                (S::INTERNAL_SERVER_ERROR, Fault::Internal)
            }
        }
    }
}

impl FlowError for LoginError {
    fn status(&self) -> StatusCode {
        self.class().0
    }

    fn fault(&self) -> Fault {
        self.class().1
    }

    fn level(&self) -> Level {
        match self {
            // The client's, but what an attack looks like (mix-up, parameter pollution,
            // login CSRF by response injection): an operator should see it.
            LoginError::RepeatedParameter(_) | LoginError::WrongIssuer => Level::WARN,
            // A user who cancelled at the provider: worth a line, not a warning.
            LoginError::ProviderRefused { .. } => Level::INFO,
            other => other.fault().level(),
        }
    }

    fn code(&self) -> &'static str {
        use LoginError as E;
        match self {
            E::RepeatedParameter(_) => "repeated_parameter",
            E::ProviderNotReady | E::NoAuthorizationEndpoint => "provider_not_ready",
            E::Transaction(_) => "transaction",
            E::NoState => "no_state",
            E::UnknownTransaction => "unknown_transaction",
            E::ProviderRefused { .. } => "provider_refused",
            E::WrongIssuer | E::MissingIssuer => "issuer_mismatch",
            E::NoCode => "no_code",
            E::Exchange(e) => match &**e {
                TokenCallError::Refused { .. } => "code_refused",
                TokenCallError::BadResponse(_) => "token_response",
                TokenCallError::Assertion(_) => "client_assertion",
                TokenCallError::NotReady
                | TokenCallError::NoEndpoint
                | TokenCallError::Transport(_)
                | TokenCallError::Status(_) => "provider_unavailable",
            },
            E::NoIdToken => "no_id_token",
            E::IdToken(IdTokenError::Unavailable(_)) => "provider_unavailable",
            E::IdToken(IdTokenError::Nonce) => "nonce",
            E::IdToken(_) => "id_token",
            E::SessionTooLarge { .. } => "session_too_large",
            E::SessionStoreUnavailable(_) => "session_store_unavailable",
            E::SessionNotSaved(_) => "session_not_saved",
            E::RevocationUnavailable(_) => "revocation_store_unavailable",
        }
    }

    fn message(&self) -> Cow<'static, str> {
        use LoginError as E;
        let m = |s: &'static str| Cow::Borrowed(s);
        match self {
            E::RepeatedParameter(_) => m("The login request is malformed: a parameter is given more than once. Please start again."),
            E::ProviderNotReady => m("The identity provider is not reachable yet. Please try again in a moment."),
            E::NoAuthorizationEndpoint => m("The identity provider has no authorization endpoint."),
            E::Transaction(_) => m("Login could not be started."),
            E::NoState => m("The login response has no state. Please start again."),
            E::UnknownTransaction => m("This login was not started in this browser, has expired, or was already used. Please start again."),
            E::ProviderRefused { error, description } => Cow::Owned(match description.as_deref() {
                Some(d) if !d.is_empty() => format!("The identity provider refused the login: {error}: {d}"),
                _ => format!("The identity provider refused the login: {error}."),
            }),
            E::WrongIssuer => m("The login response came from an unexpected issuer."),
            E::MissingIssuer => m("The login response lacks its issuer."),
            E::NoCode => m("The login response has no authorization code."),
            E::Exchange(e) => match &**e {
                TokenCallError::Refused { .. } => m("The identity provider did not accept this login. Please start again."),
                TokenCallError::BadResponse(_) => m("The identity provider answered the login with something unusable."),
                TokenCallError::Assertion(_) => m("The login could not be completed."),
                TokenCallError::NotReady
                | TokenCallError::NoEndpoint
                | TokenCallError::Transport(_)
                | TokenCallError::Status(_) => m("The identity provider is not reachable. Please try again."),
            },
            E::NoIdToken => m("The identity provider sent no ID token."),
            E::IdToken(e) => match e {
                IdTokenError::Unavailable(_) => m("The identity provider's keys are not reachable. Please try again."),
                IdTokenError::Nonce => m("The login response does not belong to this login."),
                IdTokenError::UntrustedAudience | IdTokenError::MissingAzp | IdTokenError::OtherAzp => {
                    m("The ID token was issued to another client.")
                }
                IdTokenError::Invalid(_)
                | IdTokenError::Unreadable
                | IdTokenError::AtHash
                | IdTokenError::Changed(_) => m("The identity provider's ID token is not valid."),
            },
            E::SessionTooLarge { .. } => m("Your account carries more data (groups, claims) than fits in a session cookie. The administrator must switch this proxy to the Redis session store."),
            E::SessionStoreUnavailable(_) => m("The session store is not reachable. Please try again."),
            E::SessionNotSaved(_) => m("The session could not be saved."),
            E::RevocationUnavailable(_) => m("You are signed out in this browser, but the sign-out could not be recorded for other copies of the session. Please try again."),
        }
    }
}

impl LoginError {
    /// The page, logged by the one rescue, with a link to `start_again` (the login's
    /// `/oauth2/start`) and `cookies` (a removed login transaction, a cleared session) on
    /// it.
    pub fn respond(self, start_again: &str, request_id: &str, cookies: Vec<HeaderValue>) -> Resp {
        let extras = PageExtras {
            signed_in_as: None,
            links: vec![("Start again", start_again.to_string())],
        };
        let mut r = Refusal::from_flow(self).respond_page(request_id, true, &extras);
        for c in cookies {
            r.headers_mut().append(SET_COOKIE, c);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_html_with_their_status_and_no_internals() {
        let e = LoginError::IdToken(IdTokenError::MissingAzp);
        assert_eq!(
            (e.status(), e.fault(), e.level()),
            (StatusCode::BAD_REQUEST, Fault::Provider, Level::WARN)
        );
        let r = e.respond(
            "/oauth2/start",
            "rid-1",
            vec![HeaderValue::from_static("_portcullis_tx_1=; Max-Age=0")],
        );
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        assert_eq!(r.headers()[SET_COOKIE], "_portcullis_tx_1=; Max-Age=0");
        let e = LoginError::RepeatedParameter("state".into());
        assert_eq!((e.fault(), e.level()), (Fault::Client, Level::WARN));
        let e = LoginError::Exchange(Arc::new(TokenCallError::Refused {
            error: "invalid_client".into(),
            status: 401,
        }));
        assert_eq!(
            (e.status(), e.fault()),
            (StatusCode::BAD_REQUEST, Fault::Internal)
        );
        let e = LoginError::SessionTooLarge { bytes: 9000 };
        assert_eq!(
            (e.status(), e.level()),
            (StatusCode::INTERNAL_SERVER_ERROR, Level::ERROR)
        );
    }

    #[test]
    fn a_provider_error_is_shown_escaped() {
        let e = LoginError::ProviderRefused {
            error: "access_denied".into(),
            description: Some("<script>x</script>".into()),
        };
        assert_eq!(e.level(), Level::INFO);
        assert!(e.message().contains("access_denied"));
        let r = Refusal::from_flow(e);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
}
