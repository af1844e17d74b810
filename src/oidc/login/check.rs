//! The session of a request on a `login` (or `either`) route, and `GET /oauth2/userinfo`.
//!
//! ```text
//! check(request)
//!   ├─ no cookie, or one that does not open        → None (stale cookies expired)
//!   ├─ revoked (signed out, provider logout, subject or global not-before: see
//!   │   crate::revocation; with the Redis store, asked in the same round trip as the load)
//!   │                                               → None (its cookies expired)
//!   ├─ revocation store unreachable                 → 503
//!   ├─ access token not within REFRESH_MARGIN of its expiry, no idle renewal due
//!   │                                               → Valid: the shared session as it is
//!   └─ else, on a copy of the session:
//!        touch (idle renewal) and, when the access token is due, refresh:
//!          one token call per refresh token whoever asks (RefreshFlight)
//!          ├─ refused (invalid_grant, Auth0's 403)  → session ended
//!          ├─ provider unreachable                  → 503 if expired, else go on with the current token
//!          └─ tokens: an ID token among them must be this session's (OIDC Core 12.2):
//!               valid like the first (signature, iss, aud, azp, exp, at_hash; no nonce)
//!               and the same iss, sub, aud, azp, auth_time
//!               ├─ yes, or no ID token               → the tokens are the session's
//!               ├─ keys unreachable                  → as "provider unreachable"
//!               └─ no                                → session ended, logged as a provider
//!                                                      inconsistency
//!        save                                        → Valid, with Set-Cookie
//! ```
//!
//! The identity of a session (its `sub`, and the claims the headers carry) is the one its
//! login made: a refresh changes its tokens, never who it is.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{HeaderValue, SET_COOKIE};
use http::{HeaderMap, StatusCode};

use super::id_token::{self, IdTokenError};
use super::token_endpoint::{access_expiry, TokenCallError};
use super::{Login, REFRESH_MARGIN};
use crate::admin::metrics::Flow;
use crate::body::Resp;
use crate::config::Secret;
use crate::error::{json_error, json_response};
use crate::identity::Identity;
use crate::revocation::Verdict;
use crate::session::{Session, SessionError};

/// The outcome of checking a request's session.
pub enum SessionCheck {
    /// A live session; `set_cookies` must go on the response (refresh or idle renewal).
    /// `session` and `identity` may be shared with other requests of the same cookie.
    Valid {
        identity: Arc<Identity>,
        session: Arc<Session>,
        set_cookies: Vec<HeaderValue>,
    },
    /// No usable session; `set_cookies` clears what the browser holds. `revoked`: the
    /// session opened but is in the revocation set (signed out, provider logout, subject
    /// or global not-before time): the access log's reason code `revoked`.
    None {
        set_cookies: Vec<HeaderValue>,
        revoked: bool,
    },
    /// The session store or provider is unavailable: 503.
    Unavailable,
}

/// A refreshed token set, shared by the requests that waited for it.
#[derive(Debug)]
pub(super) struct Refreshed {
    /// When the provider answered (the login's clock): `expires_in` counts from here.
    fetched_at: SystemTime,
    access_token: String,
    refresh_token: Option<String>,
    id_token: Option<String>,
    expires_in: Option<u64>,
    scope: Option<String>,
}

/// One refresh at a time per refresh token (its SHA-256), shared by every request that
/// asks meanwhile: rotating refresh tokens must not be burned by a race of parallel
/// requests. Results live 30 s at most (see [`Login::refresh_tokens`]).
#[derive(Clone)]
pub(super) struct RefreshFlight(moka::future::Cache<[u8; 32], Arc<Refreshed>>);

impl RefreshFlight {
    pub fn new() -> RefreshFlight {
        RefreshFlight(
            moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
        )
    }
}

/// What a refresh did to the session being checked.
enum Refresh {
    /// New tokens are in the session: save it.
    Done,
    /// Nothing changed; the current access token still serves.
    NotNow,
    /// The session is over.
    Ended,
    /// The provider could not be asked and the access token has expired: 503.
    Unavailable,
}

impl Login {
    /// The session of a request on a `login` route, refreshed when its access token is
    /// about to expire.
    pub async fn check(&self, headers: &HeaderMap, request_id: &str) -> SessionCheck {
        let t = self.now();
        let loaded = match self.store.load_checked(headers, t, &self.revocations).await {
            Ok(Some((s, Verdict::Live))) => s,
            Ok(Some((s, Verdict::Revoked(reason)))) => {
                tracing::debug!(request_id, user = %s.session.sub, reason = reason.as_str(), "session revoked");
                return SessionCheck::None {
                    set_cookies: self.stale_cookies(headers),
                    revoked: true,
                };
            }
            Ok(None) => {
                return SessionCheck::None {
                    set_cookies: self.stale_cookies(headers),
                    revoked: false,
                }
            }
            Err(SessionError::Unavailable(e)) => {
                tracing::warn!(request_id, error = %e, "session store unavailable");
                return SessionCheck::Unavailable;
            }
            Err(SessionError::Revocation(e)) => {
                let cause = std::error::Error::source(&e).map(|s| s.to_string());
                tracing::warn!(request_id, error = %e, cause = cause.as_deref(), "revocation store unavailable");
                return SessionCheck::Unavailable;
            }
            Err(e) => {
                tracing::debug!(request_id, error = %e, "session not usable");
                return SessionCheck::None {
                    set_cookies: self.stale_cookies(headers),
                    revoked: false,
                };
            }
        };
        let expiring = loaded
            .session
            .access_expires_at
            .is_some_and(|exp| exp <= t + REFRESH_MARGIN);
        if !expiring && !self.store.touch_due(&loaded.session, t) {
            // The common case: nothing to change, the shared session serves as it is.
            return SessionCheck::Valid {
                identity: loaded.identity,
                session: loaded.session,
                set_cookies: Vec::new(),
            };
        }
        // This request changes the session (idle renewal or refresh): work on a copy.
        let mut session: Session = (*loaded.session).clone();
        let mut dirty = self.store.touch(&mut session, t);
        if expiring {
            match self.refresh_session(&mut session, t, request_id).await {
                Refresh::Done => dirty = true,
                Refresh::NotNow => {}
                Refresh::Ended => {
                    return SessionCheck::None {
                        set_cookies: self.end_session(headers, t).await,
                        revoked: false,
                    }
                }
                Refresh::Unavailable => return SessionCheck::Unavailable,
            }
        }
        let mut set_cookies = Vec::new();
        if dirty {
            match self.store.save(&mut session, headers, t).await {
                Ok(c) => set_cookies = c,
                Err(SessionError::Unavailable(_)) => return SessionCheck::Unavailable,
                Err(SessionError::Ended) => {
                    return SessionCheck::None {
                        set_cookies: self.store.expire_cookies(headers),
                        revoked: false,
                    }
                }
                Err(e) => tracing::warn!(request_id, error = %e, "session could not be renewed"),
            }
        }
        SessionCheck::Valid {
            identity: Arc::new(session.identity()),
            session: Arc::new(session),
            set_cookies,
        }
    }

    /// Expire cookies the browser holds but that do not open (tampered, old secret…).
    fn stale_cookies(&self, headers: &HeaderMap) -> Vec<HeaderValue> {
        self.store.expire_cookies(headers)
    }

    /// Ends the request's session: the store's entry and the browser's cookies.
    async fn end_session(&self, headers: &HeaderMap, t: SystemTime) -> Vec<HeaderValue> {
        self.store
            .clear(headers, t)
            .await
            .unwrap_or_else(|_| self.store.expire_cookies(headers))
    }

    /// Refreshes the tokens of `session` (its access token expires within the margin).
    async fn refresh_session(
        &self,
        session: &mut Session,
        t: SystemTime,
        request_id: &str,
    ) -> Refresh {
        let (refresh, outcome) = self.try_refresh(session, t, request_id).await;
        if let (Some(m), Some(outcome)) = (&self.metrics, outcome) {
            m.flow(Flow::Refresh, outcome);
        }
        refresh
    }

    /// A refresh and, when the provider was asked, its outcome for the metrics: `ok`,
    /// `refused`, `inconsistent` (an ID token not the session's), `unavailable` (the
    /// provider could not answer and the token has expired), `kept` (it could not, and
    /// the current token serves on).
    async fn try_refresh(
        &self,
        session: &mut Session,
        t: SystemTime,
        request_id: &str,
    ) -> (Refresh, Option<&'static str>) {
        let expired = session.access_expires_at.is_some_and(|exp| exp <= t);
        let refresh_token = match (&session.refresh_token, self.refresh) {
            (Some(rt), true) => rt.expose().clone(),
            // Nothing to refresh with: the session lasts as long as its token.
            _ if expired => return (Refresh::Ended, None),
            _ => return (Refresh::NotNow, None),
        };
        let r = match self.refresh_tokens(&refresh_token).await {
            Ok(r) => r,
            Err(e) if e.is_refusal() => {
                // A refused refresh ends the session (RFC 6749 §5.2 invalid_grant; Auth0
                // answers it with 403).
                tracing::info!(request_id, error = %e, "refresh refused; session ended");
                return (Refresh::Ended, Some("refused"));
            }
            Err(e) if expired => {
                tracing::warn!(request_id, error = %e, "refresh failed and the access token has expired");
                return (Refresh::Unavailable, Some("unavailable"));
            }
            Err(e) => {
                tracing::warn!(request_id, error = %e, "refresh failed; using the current access token");
                return (Refresh::NotNow, Some("kept"));
            }
        };
        match self.adopt(session, &r).await {
            Ok(()) => {
                tracing::debug!(request_id, "access token refreshed");
                (Refresh::Done, Some("ok"))
            }
            Err(IdTokenError::Unavailable(e)) if expired => {
                tracing::warn!(request_id, error = %e, "refreshed ID token could not be checked and the access token has expired");
                (Refresh::Unavailable, Some("unavailable"))
            }
            Err(IdTokenError::Unavailable(e)) => {
                tracing::warn!(request_id, error = %e, "refreshed ID token could not be checked; using the current access token");
                (Refresh::NotNow, Some("kept"))
            }
            Err(e) => {
                // OIDC Core 12.2: the provider answered a refresh of this session with an
                // ID token that is not this session's (another user, client or login).
                let cause = std::error::Error::source(&e).map(|s| s.to_string());
                tracing::warn!(
                    request_id,
                    user = %session.sub,
                    reason = %e,
                    cause = cause.as_deref(),
                    "provider inconsistency: the ID token of a refresh is not the session's; session ended"
                );
                (Refresh::Ended, Some("inconsistent"))
            }
        }
    }

    /// Takes the refreshed tokens into `session`, after checking the ID token that came
    /// with them (OIDC Core 12.2). Nothing changes unless they are accepted.
    async fn adopt(&self, session: &mut Session, r: &Refreshed) -> Result<(), IdTokenError> {
        if let Some(idt) = &r.id_token {
            let (_, claims) = self.validate_id_token(idt, &r.access_token).await?;
            id_token::same_login(session, &claims)?;
            // A session from before login claims were kept learns them from the first
            // refreshed ID token that matches its iss and sub (and the audience rules).
            if session.login_claims.is_none() {
                session.login_claims = Some(claims.login_claims());
            }
            // The newest ID token serves as id_token_hint, unless the login dropped it to
            // fit the cookie store (see `callback::save_new`): it would not fit now either.
            if session.id_token.is_some() {
                session.id_token = Some(Secret::new(idt.clone()));
            }
        }
        // No ID token (providers that return none on refresh): the session's identity
        // stays as its login made it, and its ID token serves on as id_token_hint.
        session.access_token = Secret::new(r.access_token.clone());
        // Auth0: no new refresh token in the answer → keep the old one.
        if let Some(new_rt) = &r.refresh_token {
            session.refresh_token = Some(Secret::new(new_rt.clone()));
        }
        session.access_expires_at = r.expires_in.map(|s| access_expiry(r.fetched_at, s));
        if let Some(scope) = &r.scope {
            session.scopes = scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        Ok(())
    }

    /// One refresh per refresh token, whoever asks.
    async fn refresh_tokens(
        &self,
        refresh_token: &str,
    ) -> Result<Arc<Refreshed>, Arc<TokenCallError>> {
        let key: [u8; 32] =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, refresh_token.as_bytes())
                .as_ref()
                .try_into()
                .unwrap_or([0; 32]);
        let cache = &self.refreshes.0;
        // A shared result serves every request that still carries the refresh token it
        // replaced (with rotation, using that token again would burn the grant), until its
        // own access token has expired: then it is stale (providers that do not rotate
        // reuse the same key) and the next request refreshes again.
        if let Some(r) = cache.get(&key).await {
            let stale = r
                .expires_in
                .is_none_or(|s| r.fetched_at + Duration::from_secs(s) <= self.now());
            if stale {
                cache.invalidate(&key).await;
            }
        }
        let result = cache
            .try_get_with(key, async {
                let endpoint = self.token_endpoint_url()?;
                let t = self
                    .token_endpoint
                    .refresh(&endpoint, refresh_token)
                    .await?;
                Ok::<_, TokenCallError>(Arc::new(Refreshed {
                    fetched_at: self.now(),
                    access_token: t.access_token,
                    refresh_token: t.refresh_token,
                    id_token: t.id_token,
                    expires_in: t.expires_in,
                    scope: t.scope,
                }))
            })
            .await;
        if result.is_err() {
            cache.invalidate(&key).await;
        }
        result
    }

    /// `GET /oauth2/userinfo`: the session's identity, never its tokens.
    pub async fn userinfo(&self, headers: &HeaderMap, request_id: &str) -> Resp {
        let (mut r, set_cookies) = match self.check(headers, request_id).await {
            SessionCheck::Valid {
                identity,
                set_cookies,
                ..
            } => {
                let body = serde_json::json!({
                    "iss": &*identity.issuer,
                    "sub": identity.subject(),
                    "email": identity.email(),
                    "email_verified": identity.email_verified,
                    "preferred_username": identity.preferred_username(),
                    "name": identity.name(),
                    "groups": identity.groups.iter().map(|g| &**g).collect::<Vec<_>>(),
                });
                (json_response(StatusCode::OK, body.to_string()), set_cookies)
            }
            SessionCheck::None { set_cookies, .. } => (
                json_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "no session",
                    request_id,
                ),
                set_cookies,
            ),
            SessionCheck::Unavailable => (
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "session store unavailable",
                    request_id,
                ),
                Vec::new(),
            ),
        };
        for c in set_cookies {
            r.headers_mut().append(SET_COOKIE, c);
        }
        r
    }
}
