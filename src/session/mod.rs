//! Browser sessions: the [`Session`] data, the [`SessionStore`] that keeps it (in a sealed,
//! chunked cookie or in Redis), login-transaction cookies, and the hygiene that keeps the
//! proxy's cookies away from upstreams.
//!
//! # How the login flow uses this module
//!
//! Built once, inside the Tokio runtime, from `[session]` and `server.public_url`:
//! `SessionStore::new(&cfg, &public_url)` and `TransactionCookies::from_config(&cfg, &public_url)`.
//! `now` is always passed in (tests use a fixed clock).
//!
//! ```text
//! every request     store.load(req.headers(), now)
//!                     Ok(Some(s)) → session; Ok(None) → no session; Err(Unavailable) → 503
//!                   if store.touch(&mut s, now) { add store.save(&mut s, req.headers(), now)?'s Set-Cookie }
//!                   strip_proxy_cookies(req.headers_mut(), &[store.cookie_name()])  before forwarding
//! /oauth2/start     rd = oidc::redirect::validate_redirect(rd, &allowed_hosts, &public_url)
//!                   tx = LoginTransaction::new(rd, now)?   (state, nonce, tx.pkce_challenge())
//!                   tx_cookies.begin(&tx, req.headers(), now)? → Set-Cookie values (new + evicted)
//! /oauth2/callback  tx_cookies.take(req.headers(), state, now)
//!                     None → 400 page, no session (do not expire the other tabs' transactions)
//!                     Some(Taken { tx, delete }) → send `delete` on every outcome from here on
//!                   s = Session::new(iss, sub, access_token, now, cfg.lifetime); fill the fields
//!                   store.save(&mut s, req.headers(), now)? → Set-Cookie values (a fresh value
//!                     or ticket whatever the browser brought: no session fixation)
//! refresh           change the loaded session's tokens; store.save(&mut s, req.headers(), now)
//!                     Err(Ended) → it was signed out meanwhile: no session
//!                   (coalescing concurrent refreshes of one session is the caller's job)
//! /oauth2/sign_out  store.clear(req.headers(), now) → Set-Cookie values; on Err(Unavailable)
//!                     send store.expire_cookies(req.headers()) anyway and answer 503
//! ```
//!
//! # Timeouts
//! - **Lifetime** (`session.lifetime`): `expires_at` is fixed at login; past it there is no
//!   session, whatever the cookie or Redis say.
//! - **Idle timeout** (`session.idle_timeout`): a session not used for this long ends.
//!   Cookie store: `last_seen` lives in the sealed cookie, so moving it forward needs a new
//!   cookie. To avoid a `Set-Cookie` on every response, [`SessionStore::touch`] only moves it
//!   (and asks for a save) once it is older than 1/10 of the idle timeout; a session may thus
//!   end up to 10% earlier than the idle timeout after its last use, never later. The cookie's
//!   `Max-Age` and sealed expiry are `min(expires_at, last_seen + idle_timeout)`, so the browser
//!   drops it when the server would refuse it. Redis store: every `load` is one `GETEX` that
//!   also pushes the entry's TTL to `min(idle_timeout, remaining lifetime)`, so Redis itself
//!   enforces the idle timeout and `touch` never asks for a save.

pub mod cookie;
pub mod opened;
pub mod redis;
mod seal;
pub mod strip;
pub mod transaction;
pub(crate) mod wire;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};

use crate::config::{Secret, SessionConfig, SessionStoreKind};
use crate::identity::Identity;
use crate::revocation::{self, Facts, Keys, Revocations, Verdict};

pub use cookie::{CookieSettings, CookieStore};
pub use opened::OpenedSession;
pub use redis::RedisStore;

/// Errors of the session machinery. A missing, tampered or expired cookie is *not* an error
/// (it is `Ok(None)`: no session).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The Redis store could not be reached or answered with an error: fail closed (503).
    #[error("session store unavailable")]
    Unavailable(#[source] ::redis::RedisError),
    /// The sealed session does not fit in the cookie store's chunks.
    #[error(
        "session too large for the cookie store ({bytes} bytes sealed); use store = \"redis\""
    )]
    TooLarge { bytes: usize },
    /// The session was cleared (signed out elsewhere) or has expired before it could be
    /// saved: treat as no session.
    #[error("session has ended")]
    Ended,
    /// The revocation store could not be asked: fail closed (503).
    #[error("revocation store unavailable")]
    Revocation(#[source] crate::revocation::RevocationError),
    /// A configuration value the store cannot use.
    #[error("{0}")]
    Config(&'static str),
    /// Serializing the session failed (a bug).
    #[error("session encoding failed")]
    Encode(#[source] serde_json::Error),
    /// The crypto library or the system random source failed (a bug or a broken system).
    #[error("cryptographic operation failed")]
    Crypto,
}

/// A logged-in browser session. Tokens are [`Secret`]s: `Debug` never shows them.
///
/// Built at the callback with [`Session::new`], then its public fields are filled in.
#[derive(Clone)]
pub struct Session {
    /// This session's id (random, 128 bits; fixed at login, kept by refreshes): what
    /// sign-out puts in the revocation set. Sessions saved before ids existed get a
    /// derived one (see `wire.rs`).
    pub id: [u8; 16],
    /// `iss` of the ID token.
    pub issuer: String,
    /// `sub` of the ID token.
    pub sub: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub preferred_username: Option<String>,
    pub name: Option<String>,
    pub groups: Vec<String>,
    /// Scopes granted with the access token (the token response's `scope`).
    pub scopes: Vec<String>,
    /// Claims the configuration refers to, rendered as strings: (claim name or path, value).
    pub claims: Vec<(String, String)>,
    pub access_token: Secret<String>,
    pub refresh_token: Option<Secret<String>>,
    /// Kept for RP-initiated logout (`id_token_hint`).
    pub id_token: Option<Secret<String>>,
    /// When the access token expires (`expires_in` of the token response), if known.
    pub access_expires_at: Option<SystemTime>,
    /// The provider's session id (`sid` claim), for back-channel logout.
    pub sid: Option<String>,
    /// What a refreshed ID token must keep of the ID token the session began with (OIDC
    /// Core 12.2; `iss` and `sub` are the fields above). `None`: a session saved before
    /// these were kept (wire format 1), which only `iss` and `sub` bind.
    pub login_claims: Option<LoginClaims>,
    /// Login time.
    pub created_at: SystemTime,
    /// Last use, as far as the idle timeout is concerned (see the module doc).
    pub last_seen: SystemTime,
    /// End of the session's lifetime: `created_at + session.lifetime`.
    pub expires_at: SystemTime,
    /// Redis store: the ticket this session is stored under (None until first saved).
    pub(crate) ticket: Option<redis::Ticket>,
}

/// Claims of a session's first ID token that every ID token a refresh brings must repeat
/// (OIDC Core 12.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginClaims {
    /// `aud`, as a list (a single string is a list of one).
    pub aud: Vec<String>,
    pub azp: Option<String>,
    /// `auth_time`, seconds since the epoch.
    pub auth_time: Option<u64>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("issuer", &self.issuer)
            .field("sub", &self.sub)
            .field("email", &self.email)
            .field("email_verified", &self.email_verified)
            .field("preferred_username", &self.preferred_username)
            .field("name", &self.name)
            .field("groups", &self.groups)
            .field("scopes", &self.scopes)
            .field("claims", &self.claims)
            .field("access_token", &self.access_token)
            .field("refresh_token", &self.refresh_token)
            .field("id_token", &self.id_token)
            .field("access_expires_at", &self.access_expires_at)
            .field("sid", &self.sid)
            .field("login_claims", &self.login_claims)
            .field("created_at", &self.created_at)
            .field("last_seen", &self.last_seen)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A new session at login: `created_at = last_seen = now`, `expires_at = now + lifetime`.
    /// Saving it always issues a fresh cookie / ticket (no session fixation).
    pub fn new(
        issuer: impl Into<String>,
        sub: impl Into<String>,
        access_token: Secret<String>,
        now: SystemTime,
        lifetime: Duration,
    ) -> Session {
        let (issuer, sub) = (issuer.into(), sub.into());
        // A random id; were the system generator to fail, the derived id of old sessions.
        let id = seal::random::<16>()
            .unwrap_or_else(|_| wire::derived_id(&issuer, &sub, seal::unix(now)));
        Session {
            id,
            issuer,
            sub,
            email: None,
            email_verified: false,
            preferred_username: None,
            name: None,
            groups: Vec::new(),
            scopes: Vec::new(),
            claims: Vec::new(),
            access_token,
            refresh_token: None,
            id_token: None,
            access_expires_at: None,
            sid: None,
            login_claims: None,
            created_at: now,
            last_seen: now,
            // An absurd lifetime that overflows gives an already-ended session.
            expires_at: now.checked_add(lifetime).unwrap_or(now),
            ticket: None,
        }
    }

    /// The identity this session stands for, for policy and identity headers.
    pub fn identity(&self) -> Identity {
        let mut id = Identity::new(
            Arc::from(self.issuer.as_str()),
            &self.sub,
            self.email.as_deref(),
            self.preferred_username.as_deref(),
            self.name.as_deref(),
        );
        id.email_verified = self.email_verified;
        id.groups = self
            .groups
            .iter()
            .map(|g| Arc::<str>::from(g.as_str()))
            .collect();
        id.scopes = self
            .scopes
            .iter()
            .map(|s| Arc::<str>::from(s.as_str()))
            .collect();
        id.claims = self
            .claims
            .iter()
            .map(|(k, v)| (Arc::from(k.as_str()), v.as_str().into()))
            .collect();
        id.expires_at = Some(self.expires_at);
        id
    }

    /// Within its lifetime and idle timeout at `now`?
    pub fn is_live(&self, now: SystemTime, idle_timeout: Duration) -> bool {
        now < self.expires_at
            && self
                .last_seen
                .checked_add(idle_timeout)
                .is_some_and(|idle_end| now < idle_end)
    }

    /// The end of its lifetime under a configured `lifetime`: `expires_at`, but never
    /// later than `created_at + lifetime` (a session made under a longer lifetime ends
    /// when the current one says). Revocations rely on it: an entry kept for `lifetime`
    /// outlives every session it can end.
    pub fn ends_at(&self, lifetime: Duration) -> SystemTime {
        self.created_at
            .checked_add(lifetime)
            .map_or(self.expires_at, |cap| cap.min(self.expires_at))
    }

    /// What the revocation check needs (two digests: compute once per opened session).
    pub fn revocation_facts(&self) -> Facts {
        Facts {
            keys: Keys {
                session: self.id,
                subject: revocation::subject_key(&self.issuer, &self.sub),
                provider_sid: self
                    .sid
                    .as_deref()
                    .map(|sid| revocation::provider_session_key(&self.issuer, sid)),
            },
            issued_at: seal::unix(self.created_at),
        }
    }
}

/// Where sessions are kept (`session.store`).
#[derive(Debug)]
pub enum SessionStore {
    Cookie(CookieStore),
    Redis(RedisStore),
}

impl SessionStore {
    /// Builds the configured store. `public_url` (`server.public_url`) decides `Secure` and the
    /// cookie-name prefix. The Redis store connects lazily, on first use.
    pub fn new(cfg: &SessionConfig, public_url: &url::Url) -> Result<SessionStore, SessionError> {
        let settings = Arc::new(CookieSettings::from_config(cfg, public_url)?);
        match cfg.store {
            SessionStoreKind::Cookie => Ok(SessionStore::Cookie(CookieStore::new(
                settings,
                &cfg.secrets,
                cfg.lifetime,
                cfg.idle_timeout,
            )?)),
            SessionStoreKind::Redis => {
                let url = cfg.redis_url.as_ref().ok_or(SessionError::Config(
                    "session.redis_url is required with store = \"redis\"",
                ))?;
                Ok(SessionStore::Redis(RedisStore::new(
                    settings,
                    &cfg.secrets,
                    url,
                    cfg.lifetime,
                    cfg.idle_timeout,
                )?))
            }
        }
    }

    /// The logical session cookie name (`session.cookie_name`), for [`strip_proxy_cookies`].
    pub fn cookie_name(&self) -> &str {
        self.settings().name()
    }

    pub fn settings(&self) -> &CookieSettings {
        match self {
            SessionStore::Cookie(c) => c.settings(),
            SessionStore::Redis(r) => r.settings(),
        }
    }

    /// The session of a request, from its `Cookie` headers. `Ok(None)`: no session (no
    /// cookie, or one that is tampered, truncated, foreign, expired or idle).
    /// `Err(Unavailable)`: Redis could not answer (fail closed: 503).
    pub async fn load(
        &self,
        request: &HeaderMap,
        now: SystemTime,
    ) -> Result<Option<OpenedSession>, SessionError> {
        match self {
            SessionStore::Cookie(c) => Ok(c.load(request, now)),
            SessionStore::Redis(r) => Ok(r.load(request, now).await?.map(OpenedSession::new)),
        }
    }

    /// [`SessionStore::load`], then the revocation check: the session with the verdict.
    /// The cookie store asks `revocations` after opening (no wait with the in-process
    /// set); the Redis store sends the check in the same round trip as the session's
    /// `GETEX` (its ticket carries the keys).
    pub async fn load_checked(
        &self,
        request: &HeaderMap,
        now: SystemTime,
        revocations: &Revocations,
    ) -> Result<Option<(OpenedSession, Verdict)>, SessionError> {
        match self {
            SessionStore::Cookie(c) => {
                let Some(o) = c.load(request, now) else {
                    return Ok(None);
                };
                let verdict = revocations
                    .check(&o.facts, now)
                    .await
                    .map_err(SessionError::Revocation)?;
                Ok(Some((o, verdict)))
            }
            SessionStore::Redis(r) => r.load_checked(request, now, revocations).await,
        }
    }

    /// Would [`SessionStore::touch`] ask for a save now? (Lets callers that hold a shared
    /// session copy it only when it must change.)
    pub fn touch_due(&self, session: &Session, now: SystemTime) -> bool {
        match self {
            SessionStore::Cookie(c) => c.touch_due(session, now),
            SessionStore::Redis(_) => false,
        }
    }

    /// Marks a loaded session as used at `now`. Returns `true` when the session must be saved
    /// (and its `Set-Cookie` sent) to keep the idle timeout from running out: cookie store,
    /// once `last_seen` is older than 1/10 of the idle timeout. Redis store: never (its
    /// `load` already refreshed the idle TTL).
    pub fn touch(&self, session: &mut Session, now: SystemTime) -> bool {
        match self {
            SessionStore::Cookie(c) => c.touch(session, now),
            SessionStore::Redis(_) => {
                session.last_seen = now;
                false
            }
        }
    }

    /// Stores `session` and returns the `Set-Cookie` values to add to the response.
    /// `request` is the incoming request's headers: cookies of ours that it carries and the
    /// new value does not overwrite (stale chunks, a previous session's ticket) are expired.
    ///
    /// A session from [`Session::new`] always gets a fresh cookie value / ticket. A loaded
    /// session saved again (refresh, touch) keeps its Redis ticket; if it was cleared in the
    /// meantime the save fails with [`SessionError::Ended`] instead of resurrecting it.
    pub async fn save(
        &self,
        session: &mut Session,
        request: &HeaderMap,
        now: SystemTime,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        match self {
            SessionStore::Cookie(c) => c.save(session, request, now),
            SessionStore::Redis(r) => r.save(session, request, now).await,
        }
    }

    /// Ends the request's session: deletes the Redis entry (if any) and returns `Set-Cookie`
    /// values that expire every session cookie and chunk the browser sent. On `Err` (Redis
    /// unavailable) the entry may still exist: answer 503, and still send
    /// [`SessionStore::expire_cookies`].
    pub async fn clear(
        &self,
        request: &HeaderMap,
        now: SystemTime,
    ) -> Result<Vec<HeaderValue>, SessionError> {
        match self {
            SessionStore::Cookie(c) => Ok(c.clear(request)),
            SessionStore::Redis(r) => r.clear(request, now).await,
        }
    }

    /// `Set-Cookie` values that expire every session cookie and chunk the browser sent
    /// (and the unchunked name), touching no server-side state.
    pub fn expire_cookies(&self, request: &HeaderMap) -> Vec<HeaderValue> {
        self.settings().expire_session_cookies(request)
    }
}
