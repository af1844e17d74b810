//! `POST /oauth2/backchannel_logout`: OIDC Back-Channel Logout 1.0. The provider posts a
//! signed logout token (form field `logout_token`) when a user's session there ends; every
//! matching session here is ended: by `sid` (the provider session the login came from)
//! through the revocation set's provider-session entries, or, when the token names only
//! `sub`, by the subject's not-before time (every session of that user issued until now).
//!
//! ```text
//! POST logout_token=...           (application/x-www-form-urlencoded, exactly one field)
//!   §2.6 steps 1-3: a JWS (no JWE) signed by the provider's JWKS key, iss exact, aud has
//!                   the client id (and nothing this client does not trust), typ logout+jwt
//!                   (or JWT, or none); exp when present; iat within logout_token_max_age
//!   §2.6 step 4-5:  sid and/or sub; events has the back-channel logout event (an object)
//!   §2.6 step 6:    no nonce
//!   §2.6 step 7:    jti not seen before (the replay set, kept for the iat window)
//!   → 200 (Cache-Control: no-store): the sessions are revoked
//!   → 400 JSON {"error", "error_description", "request_id"}: anything else, nothing revoked
//! ```
//!
//! The answer is never a redirect, and no cookie is read or set: the caller is the
//! provider's server, not a browser.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::id_token::{numeric_date, one_or_many};
use super::Login;
use crate::body::{Resp, RespBody};
use crate::error::{json_error, Reason};
use crate::revocation::{FirstUse, ReplaySet, RevocationError, Target};
use crate::token::TokenError;

/// OIDC Back-Channel Logout 1.0 §2.4: the event a logout token carries.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// §2.4 (explicit typing, RFC 8725 §3.11): `logout+jwt`; a plain `JWT` or no `typ` is
/// accepted from providers that do not type them. An access token's `at+jwt` is not.
const LOGOUT_TOKEN_TYPES: &[&str] = &["logout+jwt", "application/logout+jwt", "JWT"];

/// Why a logout token was refused (all 400).
#[derive(Debug, thiserror::Error)]
pub enum LogoutError {
    #[error("the request is not an application/x-www-form-urlencoded form")]
    NotForm,
    #[error("the request body could not be read")]
    Body,
    #[error("no logout_token in the form")]
    Missing,
    #[error("logout_token is given more than once")]
    Repeated,
    /// Signature, key, algorithm, `typ`, `iss`, `aud` (no client id), `exp`, `nbf`.
    #[error("the logout token is not valid")]
    Invalid(#[source] TokenError),
    /// The provider's keys could not be loaded.
    #[error("the provider's keys are unavailable")]
    KeysUnavailable(#[source] TokenError),
    #[error("the logout token's claims cannot be read")]
    Unreadable,
    #[error("the logout token names an audience this client does not trust")]
    UntrustedAudience,
    #[error("the logout token has no iat")]
    NoIat,
    #[error("the logout token is older than provider.logout_token_max_age")]
    TooOld,
    #[error("the logout token is issued in the future")]
    FromTheFuture,
    #[error("the logout token has no back-channel logout event")]
    NoEvent,
    #[error("the logout token carries a nonce")]
    Nonce,
    #[error("the logout token names neither sid nor sub")]
    NoSubject,
    #[error("the logout token has no jti")]
    NoJti,
    #[error("the logout token was received before")]
    Replayed,
    #[error("the logout token was issued before the revocation store was reset")]
    IssuedBeforeReset,
    #[error("the revocation store is unavailable")]
    Store(#[source] RevocationError),
}

impl LogoutError {
    /// The OAuth 2.0 error code of the answer (RFC 6749 §5.2 style, as §2.8 allows).
    fn code(&self) -> &'static str {
        match self {
            LogoutError::KeysUnavailable(_) | LogoutError::Store(_) => "temporarily_unavailable",
            _ => "invalid_request",
        }
    }

    /// A short code for the access log's reason (`backchannel_logout:<code>`) and the
    /// `portcullis_backchannel_logouts_total` outcome.
    fn reason_code(&self) -> &'static str {
        use LogoutError as E;
        match self {
            E::NotForm => "not_form",
            E::Body => "body",
            E::Missing => "no_logout_token",
            E::Repeated => "repeated_parameter",
            E::Invalid(_) => "invalid_token",
            E::KeysUnavailable(_) => "provider_unavailable",
            E::Unreadable => "unreadable",
            E::UntrustedAudience => "untrusted_audience",
            E::NoIat => "no_iat",
            E::TooOld => "too_old",
            E::FromTheFuture => "from_the_future",
            E::NoEvent => "no_event",
            E::Nonce => "nonce",
            E::NoSubject => "no_subject",
            E::NoJti => "no_jti",
            E::Replayed => "replayed",
            E::IssuedBeforeReset => "issued_before_reset",
            E::Store(_) => "revocation_store_unavailable",
        }
    }
}

/// The claims the checks read, from the payload of a token whose signature passed. A
/// claim given twice is refused (RFC 7519 §4).
#[derive(Deserialize)]
struct Claims {
    #[serde(deserialize_with = "one_or_many")]
    aud: Vec<String>,
    #[serde(default, deserialize_with = "numeric_date")]
    iat: Option<u64>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    events: Option<Map<String, Value>>,
    /// Present at all, whatever its value.
    #[serde(default, deserialize_with = "present")]
    nonce: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// A checked logout token: what it ends.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct LogoutToken {
    pub iss: String,
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    pub iat: u64,
}

impl Login {
    /// `POST /oauth2/backchannel_logout` with the request's `body` (already read, bounded).
    pub async fn backchannel_logout(
        &self,
        headers: &HeaderMap,
        body: Result<Bytes, ()>,
        request_id: &str,
    ) -> Resp {
        match self.logout_by_token(headers, body).await {
            Ok((t, what)) => {
                tracing::info!(
                    request_id,
                    user = t.sub.as_deref().unwrap_or(""),
                    by = what,
                    "back-channel logout: sessions ended"
                );
                let mut r = Response::new(RespBody::empty());
                r.headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            Err(e) => {
                let cause = std::error::Error::source(&e).map(|s| s.to_string());
                tracing::warn!(request_id, reason = %e, cause = cause.as_deref(), "back-channel logout refused");
                let mut r = json_error(
                    StatusCode::BAD_REQUEST,
                    e.code(),
                    &e.to_string(),
                    request_id,
                );
                r.extensions_mut().insert(Reason {
                    kind: "backchannel_logout",
                    detail: Some(e.reason_code()),
                });
                r
            }
        }
    }

    async fn logout_by_token(
        &self,
        headers: &HeaderMap,
        body: Result<Bytes, ()>,
    ) -> Result<(LogoutToken, &'static str), LogoutError> {
        let form = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                v.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form {
            return Err(LogoutError::NotForm);
        }
        let body = body.map_err(|()| LogoutError::Body)?;
        let mut tokens = url::form_urlencoded::parse(&body).filter(|(k, _)| k == "logout_token");
        let token = match (tokens.next(), tokens.next()) {
            (Some((_, t)), None) => t.into_owned(),
            (None, _) => return Err(LogoutError::Missing),
            (Some(_), Some(_)) => return Err(LogoutError::Repeated),
        };
        let t = self.check_logout_token(&token).await?;
        let now = self.now();
        // §2.6 step 7 (replay): before anything is ended, so that a replayed token can
        // never move a subject's not-before time forward.
        let window = self.logout_token_max_age + self.id_validator.leeway();
        let until = std::time::UNIX_EPOCH + Duration::from_secs(t.iat) + window;
        match self
            .revocations
            .first_use(ReplaySet::LogoutToken, &t.iss, &t.jti, t.iat, until, now)
            .await
            .map_err(LogoutError::Store)?
        {
            // The set was reset to make room: every session until now is ended anyway.
            FirstUse::Fresh | FirstUse::FreshAfterReset => {}
            FirstUse::Replayed => return Err(LogoutError::Replayed),
            FirstUse::IssuedBeforeReset => return Err(LogoutError::IssuedBeforeReset),
        }
        // Every session this logout ends was issued by now and lives at most `lifetime`.
        let until = now + self.lifetime;
        let what = match (&t.sid, &t.sub) {
            (Some(sid), _) => {
                self.revocations
                    .revoke(Target::ProviderSession { iss: &t.iss, sid }, until, now)
                    .await
                    .map_err(LogoutError::Store)?;
                "sid"
            }
            (None, Some(sub)) => {
                self.revocations
                    .revoke(Target::Subject { iss: &t.iss, sub }, until, now)
                    .await
                    .map_err(LogoutError::Store)?;
                "sub"
            }
            (None, None) => return Err(LogoutError::NoSubject),
        };
        Ok((t, what))
    }

    /// OIDC Back-Channel Logout 1.0 §2.6 steps 1-6 (the replay check, step 7, is the
    /// caller's: it writes).
    pub(super) async fn check_logout_token(&self, token: &str) -> Result<LogoutToken, LogoutError> {
        // Steps 1-3: a JWS (a JWE has five parts: not supported, refused as malformed),
        // signed like an ID token by the provider's keys, iss exact, aud with the client
        // id, exp (when present) and nbf by our clock; typ logout+jwt.
        let (iss, _) = self
            .id_validator
            .verify_signed(token, LOGOUT_TOKEN_TYPES)
            .await
            .map_err(|e| {
                if e.is_unavailable() {
                    LogoutError::KeysUnavailable(e)
                } else {
                    LogoutError::Invalid(e)
                }
            })?;
        let payload = token
            .split('.')
            .nth(1)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .ok_or(LogoutError::Unreadable)?;
        let c: Claims = serde_json::from_slice(&payload).map_err(|_| LogoutError::Unreadable)?;
        // Step 3, as OIDC Core 3.1.3.7 step 3 for ID tokens: every audience trusted.
        let rules = self.id_token_rules();
        if !c.aud.iter().any(|a| a == rules.client_id) {
            return Err(LogoutError::Invalid(TokenError::Invalid(
                crate::token::InvalidReason::WrongAudience,
            )));
        }
        if !c
            .aud
            .iter()
            .all(|a| a == rules.client_id || rules.trusted_audiences.contains(a))
        {
            return Err(LogoutError::UntrustedAudience);
        }
        // Step 3: iat, within provider.logout_token_max_age (and not ahead of our clock by
        // more than the leeway).
        let iat = c.iat.ok_or(LogoutError::NoIat)?;
        let now = crate::revocation::unix(self.now());
        let leeway = self.id_validator.leeway().as_secs();
        if iat > now.saturating_add(leeway) {
            return Err(LogoutError::FromTheFuture);
        }
        if now.saturating_sub(iat) > self.logout_token_max_age.as_secs() {
            return Err(LogoutError::TooOld);
        }
        // Step 4: sid and/or sub.
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        let (sub, sid) = (nonempty(c.sub), nonempty(c.sid));
        if sub.is_none() && sid.is_none() {
            return Err(LogoutError::NoSubject);
        }
        // Step 5: the events claim has the back-channel logout event, a JSON object.
        let event = c
            .events
            .as_ref()
            .and_then(|e| e.get(BACKCHANNEL_LOGOUT_EVENT));
        if !event.is_some_and(Value::is_object) {
            return Err(LogoutError::NoEvent);
        }
        // Step 6: no nonce (a logout token must not pass for an ID token, nor the reverse).
        if c.nonce {
            return Err(LogoutError::Nonce);
        }
        // §2.4: jti is required (step 7 needs it).
        let jti = nonempty(c.jti).ok_or(LogoutError::NoJti)?;
        Ok(LogoutToken {
            iss: iss.to_string(),
            sub,
            sid,
            jti,
            iat,
        })
    }
}

#[cfg(feature = "fuzzing")]
impl Login {
    /// Fuzzing only (`fuzz_api::LogoutTokens`): [`Login::check_logout_token`] unchanged;
    /// `Ok((iss, sub, sid, jti, iat))`, `Err` the refusal's reason code.
    #[allow(clippy::type_complexity)]
    pub(crate) async fn check_logout_token_for_fuzzing(
        &self,
        token: &str,
    ) -> Result<(String, Option<String>, Option<String>, String, u64), &'static str> {
        self.check_logout_token(token)
            .await
            .map(|t| (t.iss, t.sub, t.sid, t.jti, t.iat))
            .map_err(|e| e.reason_code())
    }
}
