//! The browser login: `/oauth2/start`, `/oauth2/callback`, `/oauth2/sign_out`,
//! `/oauth2/userinfo`, and the session check (with refresh) of `login` routes.
//!
//! Authorization code flow with PKCE S256 always (RFC 9700 §2.1.1), `state` bound to a
//! one-time login-transaction cookie (RFC 6749 §10.12), `nonce` checked in the ID token
//! (OIDC Core 3.1.3.7), RFC 9207 `iss` checked when sent or advertised. The ID token is
//! validated by the same JWT code as bearer tokens, with the client id as audience.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{HeaderValue, SET_COOKIE};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::body::Resp;
use crate::config::{ClientAuth, Config, Secret};
use crate::error::{json_error, json_response, redirect, Refusal};
use crate::identity::Identity;
use crate::oidc::redirect::validate_redirect;
use crate::oidc::transport::{form_urlencode, HttpTransport, TransportConfig};
use crate::session::transaction::{LoginTransaction, TransactionCookies};
use crate::session::{Session, SessionError, SessionStore};
use crate::token::{BearerConfig, IntrospectionMode, IssuerConfig, TokenValidator};

/// Refresh an access token this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

type ProviderLink = (
    HttpTransport,
    TokenValidator,
    moka::future::Cache<[u8; 32], Arc<Refreshed>>,
);

fn needs_login(c: &Config) -> bool {
    c.routes.iter().any(|r| {
        matches!(
            r.auth,
            crate::config::AuthMode::Login | crate::config::AuthMode::Either
        )
    })
}

/// The claims ID tokens must keep: the protocol's, and those the config refers to.
fn wanted_claims(c: &Config) -> Vec<String> {
    let mut wanted: Vec<String> = vec!["nonce".into(), "azp".into(), "sid".into()];
    wanted.extend(c.headers.claims.iter().map(|(k, _)| k.to_string()));
    for r in &c.routes {
        if let Some(claims) = r.allow.as_ref().and_then(|a| a.claims.as_ref()) {
            wanted.extend(claims.iter().map(|(k, _)| k.clone()));
        }
    }
    wanted.sort();
    wanted.dedup();
    wanted
}

/// Everything the login flow needs, built once per config generation.
pub struct Login {
    /// The fingerprint of the provider settings (see [`Login::fingerprints`]).
    provider_key: String,
    pub issuer: String,
    client_id: String,
    client_secret: Option<Secret<String>>,
    client_auth: ClientAuth,
    private_key: Option<jsonwebtoken::EncodingKey>,
    private_key_alg: jsonwebtoken::Algorithm,
    scopes: String,
    extra_auth_params: Vec<(String, String)>,
    logout_url: Option<String>,
    public_url: url::Url,
    prefix: String,
    allowed_redirect_hosts: Vec<String>,
    refresh: bool,
    lifetime: Duration,
    pub store: SessionStore,
    pub tx: TransactionCookies,
    transport: HttpTransport,
    /// Validates ID tokens (audience = client id) and holds the provider metadata.
    pub id_validator: TokenValidator,
    /// One refresh at a time per session (keyed by the refresh token's hash): rotating
    /// refresh tokens must not be burned by a race of parallel requests.
    refreshes: moka::future::Cache<[u8; 32], Arc<Refreshed>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginBuildError {
    #[error("session: {0}")]
    Session(#[from] SessionError),
    #[error("provider client: {0}")]
    Transport(#[from] crate::oidc::transport::TransportError),
    #[error("provider.private_key_file: {0}")]
    Key(String),
    #[error("{0}")]
    Config(&'static str),
}

/// The token endpoint's answer (RFC 6749 §5.1).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct TokenErrorResponse {
    error: String,
}

/// What a token call can end in.
#[derive(Debug)]
enum TokenCallError {
    /// The provider refused the grant (RFC 6749 §5.2; Auth0 says it with 403).
    Refused(String),
    /// The provider could not be asked or answered nonsense: fail closed.
    Unavailable(String),
}

/// A refreshed token set, shared by the requests that waited for it.
#[derive(Debug)]
pub struct Refreshed {
    /// When the provider answered: `expires_in` counts from here.
    fetched_at: SystemTime,
    access_token: String,
    refresh_token: Option<String>,
    id_token: Option<String>,
    expires_in: Option<u64>,
    scope: Option<String>,
}

/// The outcome of checking a request's session.
pub enum SessionCheck {
    /// A live session; `set_cookies` must go on the response (refresh or idle renewal).
    /// `session` and `identity` may be shared with other requests of the same cookie.
    Valid {
        identity: Arc<Identity>,
        session: Arc<Session>,
        set_cookies: Vec<HeaderValue>,
    },
    /// No usable session; `set_cookies` clears what the browser holds.
    None { set_cookies: Vec<HeaderValue> },
    /// The session store or provider is unavailable: 503.
    Unavailable,
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl Login {
    /// Fingerprints of the settings [`Login::build`] reads (secrets included), or `None`
    /// when no route needs logins: (the provider part, everything). Equal whole
    /// fingerprints: the running login serves the new config as it is. Equal provider
    /// parts: a new login keeps the running one's provider link (its metadata, keys and
    /// refresh single-flight), so a reload never sends browsers to a login that is not
    /// ready.
    pub fn fingerprints(c: &Config) -> Option<(String, String)> {
        if !needs_login(c) {
            return None;
        }
        let hex = |d: aws_lc_rs::digest::Digest| -> String {
            d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
        };
        let add = |d: &mut aws_lc_rs::digest::Context, b: &[u8]| {
            d.update(&(b.len() as u64).to_be_bytes());
            d.update(b);
        };
        let mut d = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        add(&mut d, format!("{:?}", c.provider).as_bytes());
        add(&mut d, wanted_claims(c).join("\n").as_bytes());
        // Debug output redacts secrets: add them themselves.
        if let Some(p) = &c.provider {
            add(
                &mut d,
                p.client_secret
                    .as_ref()
                    .map_or(&[][..], |s| s.expose().as_bytes()),
            );
            for f in p.private_key_file.iter().chain(p.ca_file.iter()) {
                add(&mut d, &std::fs::read(f).unwrap_or_default());
            }
        }
        let provider = hex(d.clone().finish());
        add(&mut d, format!("{:?}", c.session).as_bytes());
        add(&mut d, format!("{:?}", c.server.public_url).as_bytes());
        add(&mut d, c.server.proxy_prefix.as_bytes());
        add(&mut d, format!("{:?}", c.login).as_bytes());
        if let Some(s) = &c.session {
            for k in &s.secrets {
                add(&mut d, k.expose());
            }
            add(
                &mut d,
                s.redis_url
                    .as_ref()
                    .map_or(&[][..], |u| u.expose().as_bytes()),
            );
        }
        Some((provider, hex(d.finish())))
    }

    /// Does this login use the same provider link as `other` (a login carried over)?
    pub fn shares_provider_with(&self, other: &Login) -> bool {
        self.provider_key == other.provider_key
    }

    /// Builds the login of `c`, keeping the provider link of `previous` when the provider
    /// settings are the same (see [`Login::fingerprints`]).
    pub fn build(c: &Config, previous: Option<&Login>) -> Result<Option<Login>, LoginBuildError> {
        let Some((provider_key, _)) = Login::fingerprints(c) else {
            return Ok(None);
        };
        let (Some(p), Some(s), Some(public_url)) = (&c.provider, &c.session, &c.server.public_url)
        else {
            return Err(LoginBuildError::Config(
                "login routes need [provider], [session] and server.public_url",
            ));
        };
        let client_id = p
            .client_id
            .clone()
            .ok_or(LoginBuildError::Config("provider.client_id is required"))?;
        let (private_key, private_key_alg) = match (&p.client_auth, &p.private_key_file) {
            (ClientAuth::PrivateKeyJwt, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| LoginBuildError::Key(e.to_string()))?;
                match jsonwebtoken::EncodingKey::from_rsa_pem(&pem) {
                    Ok(k) => (Some(k), jsonwebtoken::Algorithm::RS256),
                    Err(_) => match jsonwebtoken::EncodingKey::from_ec_pem(&pem) {
                        Ok(k) => (Some(k), jsonwebtoken::Algorithm::ES256),
                        Err(_) => {
                            return Err(LoginBuildError::Key(
                                "not an RSA or P-256 private key in PEM".into(),
                            ))
                        }
                    },
                }
            }
            _ => (None, jsonwebtoken::Algorithm::RS256),
        };
        let link = match previous.filter(|l| l.provider_key == provider_key) {
            Some(l) => (
                l.transport.clone(),
                l.id_validator.clone(),
                l.refreshes.clone(),
            ),
            None => Self::provider_link(c, p, &client_id)?,
        };
        let (transport, id_validator, refreshes) = link;
        let prefix = c.server.proxy_prefix.clone();
        Ok(Some(Login {
            provider_key,
            issuer: p.issuer.clone(),
            client_id,
            client_secret: p.client_secret.clone(),
            client_auth: p.client_auth,
            private_key,
            private_key_alg,
            scopes: p.scopes.join(" "),
            extra_auth_params: p.extra_auth_params.clone(),
            logout_url: p.logout_url.clone(),
            public_url: public_url.clone(),
            prefix,
            allowed_redirect_hosts: c.login.allowed_redirect_hosts.clone(),
            refresh: s.refresh,
            lifetime: s.lifetime,
            store: SessionStore::new(s, public_url)?,
            tx: TransactionCookies::from_config(s, public_url)?,
            transport,
            id_validator,
            refreshes,
        }))
    }

    /// A new provider link: the provider client, the ID-token validator (audience = the
    /// client id) and the refresh single-flight.
    fn provider_link(
        c: &Config,
        p: &crate::config::ProviderConfig,
        client_id: &str,
    ) -> Result<ProviderLink, LoginBuildError> {
        let transport = HttpTransport::new(TransportConfig {
            timeout: p.timeout,
            ca_file: p.ca_file.clone(),
        })?;
        let mut issuer = IssuerConfig::new(p.issuer.clone(), vec![client_id.to_string()]);
        issuer.token_file = p.token_file.clone();
        issuer.algorithms = vec![
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::Algorithm::RS384,
            jsonwebtoken::Algorithm::RS512,
            jsonwebtoken::Algorithm::PS256,
            jsonwebtoken::Algorithm::PS384,
            jsonwebtoken::Algorithm::PS512,
            jsonwebtoken::Algorithm::ES256,
            jsonwebtoken::Algorithm::ES384,
            jsonwebtoken::Algorithm::EdDSA,
        ];
        let id_cfg = BearerConfig {
            issuers: vec![issuer],
            introspection: IntrospectionMode::Off,
            groups_claim: p.groups_claim.clone(),
            wanted_claims: wanted_claims(c),
            cache_capacity: 10_000,
            ..BearerConfig::default()
        };
        let id_validator = TokenValidator::new(id_cfg, transport.clone());
        let refreshes = moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(Duration::from_secs(30))
            .build();
        Ok((transport, id_validator, refreshes))
    }

    /// The redirect URI registered at the provider: from `server.public_url`, never from
    /// the request's Host header.
    pub fn redirect_uri(&self) -> String {
        let base = self.public_url.as_str().trim_end_matches('/');
        format!("{base}{}/callback", self.prefix)
    }

    fn safe_rd(&self, rd: Option<&str>) -> String {
        validate_redirect(
            rd.unwrap_or("/"),
            &self.allowed_redirect_hosts,
            &self.public_url,
        )
    }

    /// The cookie names (bases) the proxy owns: stripped from upstream requests.
    pub fn cookie_bases(&self) -> [&str; 1] {
        [self.store.cookie_name()]
    }

    /// `GET /oauth2/start?rd=/x`
    pub fn start(&self, query: Option<&str>, headers: &HeaderMap, request_id: &str) -> Resp {
        let rd = self.safe_rd(query_param(query, "rd").as_deref());
        let Some(meta) = self.id_validator.metadata(0) else {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The identity provider is not reachable yet. Please try again in a moment.",
                request_id,
                vec![],
            );
        };
        let Some(authz) = meta.authorization_endpoint.clone() else {
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                "The identity provider has no authorization endpoint.",
                request_id,
                vec![],
            );
        };
        let tx = match LoginTransaction::new(rd, now()) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(request_id, error = %e, "cannot create login transaction");
                return page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Login could not be started.",
                    request_id,
                    vec![],
                );
            }
        };
        let cookies = match self.tx.begin(&tx, headers, now()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(request_id, error = %e, "cannot seal login transaction");
                return page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Login could not be started.",
                    request_id,
                    vec![],
                );
            }
        };
        let mut params: Vec<(&str, String)> = vec![
            ("response_type", "code".into()),
            ("client_id", self.client_id.clone()),
            ("redirect_uri", self.redirect_uri()),
            ("scope", self.scopes.clone()),
            ("state", tx.state.expose().clone()),
            ("nonce", tx.nonce.expose().clone()),
            ("code_challenge", tx.pkce_challenge()),
            ("code_challenge_method", "S256".into()),
        ];
        for (k, v) in &self.extra_auth_params {
            // The protocol parameters above are not for configuration to override.
            if !params.iter().any(|(p, _)| p == k) {
                params.push((k.as_str(), v.clone()));
            }
        }
        let mut url = authz;
        url.push(if url.contains('?') { '&' } else { '?' });
        let q: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", form_urlencode(k), form_urlencode(v)))
            .collect();
        url.push_str(&q.join("&"));
        redirect(&url, cookies)
    }

    /// `GET /oauth2/callback`
    pub async fn callback(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        request_id: &str,
    ) -> Resp {
        let Some(state) = query_param(query, "state") else {
            return page(
                StatusCode::BAD_REQUEST,
                "The login response has no state. Please start again.",
                request_id,
                vec![],
            );
        };
        // RFC 6749 §10.12: the state must match a login this browser started.
        let Some(taken) = self.tx.take(headers, &state, now()) else {
            return page(
                StatusCode::BAD_REQUEST,
                "This login was not started in this browser, has expired, or was already used. Please start again.",
                request_id,
                vec![],
            );
        };
        let delete = vec![taken.delete.clone()];
        let tx = taken.tx;
        if let Some(err) = query_param(query, "error") {
            let desc = query_param(query, "error_description").unwrap_or_default();
            tracing::info!(request_id, error = %err, "provider refused the login");
            let msg = if desc.is_empty() {
                format!("The identity provider refused the login: {err}.")
            } else {
                format!("The identity provider refused the login: {err}: {desc}")
            };
            return page(StatusCode::FORBIDDEN, &msg, request_id, delete);
        }
        let meta = self.id_validator.metadata(0);
        // RFC 9207 §2.4: check `iss` when sent, and require it when advertised.
        match query_param(query, "iss") {
            Some(iss) if iss != self.issuer => {
                tracing::warn!(
                    request_id,
                    "authorization response from another issuer (RFC 9207 mix-up)"
                );
                return page(
                    StatusCode::BAD_REQUEST,
                    "The login response came from an unexpected issuer.",
                    request_id,
                    delete,
                );
            }
            None if meta
                .as_ref()
                .is_some_and(|m| m.authorization_response_iss_parameter_supported) =>
            {
                return page(
                    StatusCode::BAD_REQUEST,
                    "The login response lacks its issuer.",
                    request_id,
                    delete,
                );
            }
            _ => {}
        }
        let Some(code) = query_param(query, "code") else {
            return page(
                StatusCode::BAD_REQUEST,
                "The login response has no authorization code.",
                request_id,
                delete,
            );
        };
        let tokens = match self
            .token_call(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", &self.redirect_uri()),
                ("code_verifier", tx.pkce_verifier.expose()),
            ])
            .await
        {
            Ok(t) => t,
            Err(TokenCallError::Refused(e)) => {
                tracing::info!(request_id, error = %e, "code exchange refused");
                return page(
                    StatusCode::BAD_REQUEST,
                    "The identity provider did not accept this login. Please start again.",
                    request_id,
                    delete,
                );
            }
            Err(TokenCallError::Unavailable(e)) => {
                tracing::warn!(request_id, error = %e, "code exchange failed");
                return page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The identity provider is not reachable. Please try again.",
                    request_id,
                    delete,
                );
            }
        };
        let Some(id_token) = tokens.id_token.clone() else {
            return page(
                StatusCode::BAD_GATEWAY,
                "The identity provider sent no ID token.",
                request_id,
                delete,
            );
        };
        // OIDC Core 3.1.3.7: signature (issuer's JWKS), iss, aud, exp; then nonce and azp.
        let identity = match self.id_validator.validate(&id_token).await {
            Ok(id) => id,
            Err(e) if e.is_unavailable() => {
                return page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The identity provider's keys are not reachable. Please try again.",
                    request_id,
                    delete,
                );
            }
            Err(e) => {
                tracing::warn!(request_id, reason = %e, "ID token refused");
                return page(
                    StatusCode::BAD_REQUEST,
                    "The identity provider's ID token is not valid.",
                    request_id,
                    delete,
                );
            }
        };
        // Step 11: nonce must equal the one sent in the authorization request.
        let nonce_ok = identity.claim("nonce").is_some_and(|n| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                n.as_bytes(),
                tx.nonce.expose().as_bytes(),
            )
            .is_ok()
        });
        if !nonce_ok {
            tracing::warn!(request_id, "ID token nonce mismatch");
            return page(
                StatusCode::BAD_REQUEST,
                "The login response does not belong to this login.",
                request_id,
                delete,
            );
        }
        // Steps 4-5: an azp, when present, must be this client.
        if identity.claim("azp").is_some_and(|a| a != self.client_id) {
            return page(
                StatusCode::BAD_REQUEST,
                "The ID token was issued to another client.",
                request_id,
                delete,
            );
        }
        let t = now();
        let mut session = Session::new(
            self.issuer.clone(),
            identity.subject(),
            Secret::new(tokens.access_token.clone()),
            t,
            self.lifetime,
        );
        fill_session(&mut session, &identity, &tokens, t);
        // A fresh session value on every login, whatever the browser brought (no fixation).
        let mut cookies = delete;
        let mut saved = self.store.save(&mut session, headers, t).await;
        if matches!(saved, Err(SessionError::TooLarge { .. })) && session.id_token.is_some() {
            // The ID token is kept only as an id_token_hint for sign-out, where client_id
            // also serves (RP-Initiated Logout 1.0 §2): drop it before giving up.
            tracing::info!(
                request_id,
                "session too large for the cookie store; dropping the ID token"
            );
            session.id_token = None;
            saved = self.store.save(&mut session, headers, t).await;
        }
        match saved {
            Ok(c) => cookies.extend(c),
            Err(SessionError::TooLarge { bytes }) => {
                tracing::error!(
                    request_id,
                    bytes,
                    "session too large for the cookie store; use session.store = \"redis\""
                );
                return page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Your account carries more data (groups, claims) than fits in a session cookie. The administrator must switch this proxy to the Redis session store.",
                    request_id,
                    cookies,
                );
            }
            Err(SessionError::Unavailable(_)) => {
                return page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The session store is not reachable. Please try again.",
                    request_id,
                    cookies,
                );
            }
            Err(e) => {
                tracing::error!(request_id, error = %e, "cannot save session");
                return page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The session could not be saved.",
                    request_id,
                    cookies,
                );
            }
        }
        tracing::info!(request_id, user = %identity.subject(), "login");
        redirect(&self.safe_rd(Some(&tx.rd)), cookies)
    }

    /// The session of a request on a `login` route, refreshed when its access token is
    /// about to expire.
    pub async fn check(&self, headers: &HeaderMap, request_id: &str) -> SessionCheck {
        let t = now();
        let loaded = match self.store.load(headers, t).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return SessionCheck::None {
                    set_cookies: self.stale_cookies(headers),
                }
            }
            Err(SessionError::Unavailable(e)) => {
                tracing::warn!(request_id, error = %e, "session store unavailable");
                return SessionCheck::Unavailable;
            }
            Err(e) => {
                tracing::debug!(request_id, error = %e, "session not usable");
                return SessionCheck::None {
                    set_cookies: self.stale_cookies(headers),
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
            let expired = session.access_expires_at.is_some_and(|exp| exp <= t);
            match (&session.refresh_token, self.refresh) {
                (Some(rt), true) => match self.refresh_tokens(rt.expose()).await {
                    Ok(r) => {
                        session.access_token = Secret::new(r.access_token.clone());
                        if let Some(new_rt) = &r.refresh_token {
                            session.refresh_token = Some(Secret::new(new_rt.clone()));
                        }
                        // Auth0: no new refresh token in the answer → keep the old one.
                        if let Some(idt) = &r.id_token {
                            session.id_token = Some(Secret::new(idt.clone()));
                        }
                        session.access_expires_at =
                            r.expires_in.map(|s| r.fetched_at + Duration::from_secs(s));
                        if let Some(scope) = &r.scope {
                            session.scopes = scope
                                .split(' ')
                                .filter(|s| !s.is_empty())
                                .map(String::from)
                                .collect();
                        }
                        dirty = true;
                        tracing::debug!(request_id, "access token refreshed");
                    }
                    Err(TokenCallError::Refused(e)) => {
                        // A failed refresh ends the session (RFC 6749 §5.2 invalid_grant;
                        // Auth0 answers it with 403).
                        tracing::info!(request_id, error = %e, "refresh refused; session ended");
                        let set_cookies = self
                            .store
                            .clear(headers, t)
                            .await
                            .unwrap_or_else(|_| self.store.expire_cookies(headers));
                        return SessionCheck::None { set_cookies };
                    }
                    Err(TokenCallError::Unavailable(e)) if expired => {
                        tracing::warn!(request_id, error = %e, "refresh failed and the access token has expired");
                        return SessionCheck::Unavailable;
                    }
                    Err(TokenCallError::Unavailable(e)) => {
                        tracing::warn!(request_id, error = %e, "refresh failed; using the current access token");
                    }
                },
                _ if expired => {
                    // Nothing to refresh with: the session lasts as long as its token.
                    let set_cookies = self
                        .store
                        .clear(headers, t)
                        .await
                        .unwrap_or_else(|_| self.store.expire_cookies(headers));
                    return SessionCheck::None { set_cookies };
                }
                _ => {}
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

    /// One refresh per refresh token, whoever asks.
    async fn refresh_tokens(&self, refresh_token: &str) -> Result<Arc<Refreshed>, TokenCallError> {
        let key: [u8; 32] =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, refresh_token.as_bytes())
                .as_ref()
                .try_into()
                .unwrap_or([0; 32]);
        // A shared result serves every request that still carries the refresh token it
        // replaced (with rotation, using that token again would burn the grant), until its
        // own access token has expired: then it is stale (providers that do not rotate
        // reuse the same key) and the next request refreshes again.
        if let Some(r) = self.refreshes.get(&key).await {
            let stale = r
                .expires_in
                .is_none_or(|s| r.fetched_at + Duration::from_secs(s) <= now());
            if stale {
                self.refreshes.invalidate(&key).await;
            }
        }
        let rt = refresh_token.to_string();
        let result = self
            .refreshes
            .try_get_with(key, async move {
                let t = self
                    .token_call(&[("grant_type", "refresh_token"), ("refresh_token", &rt)])
                    .await?;
                Ok::<_, TokenCallError>(Arc::new(Refreshed {
                    fetched_at: now(),
                    access_token: t.access_token,
                    refresh_token: t.refresh_token,
                    id_token: t.id_token,
                    expires_in: t.expires_in,
                    scope: t.scope,
                }))
            })
            .await;
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                self.refreshes.invalidate(&key).await;
                Err(match &*e {
                    TokenCallError::Refused(s) => TokenCallError::Refused(s.clone()),
                    TokenCallError::Unavailable(s) => TokenCallError::Unavailable(s.clone()),
                })
            }
        }
    }

    /// A call to the token endpoint with this client's authentication.
    async fn token_call(&self, form: &[(&str, &str)]) -> Result<TokenResponse, TokenCallError> {
        let meta = self
            .id_validator
            .metadata(0)
            .ok_or_else(|| TokenCallError::Unavailable("provider metadata not loaded".into()))?;
        let endpoint = meta
            .token_endpoint
            .clone()
            .ok_or_else(|| TokenCallError::Unavailable("no token_endpoint".into()))?;
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        let secret = self
            .client_secret
            .as_ref()
            .map(|s| s.expose().as_str())
            .unwrap_or("");
        let assertion;
        let basic = match self.client_auth {
            ClientAuth::ClientSecretBasic => Some((self.client_id.as_str(), secret)),
            ClientAuth::ClientSecretPost => {
                fields.push(("client_id", &self.client_id));
                fields.push(("client_secret", secret));
                None
            }
            ClientAuth::PrivateKeyJwt => {
                assertion = self.client_assertion(&endpoint)?;
                fields.push(("client_id", &self.client_id));
                fields.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                fields.push(("client_assertion", &assertion));
                None
            }
        };
        let resp = self
            .transport
            .post_form(&endpoint, &fields, basic)
            .await
            .map_err(|e| TokenCallError::Unavailable(e.to_string()))?;
        let status = resp.status.as_u16();
        if (200..300).contains(&status) {
            return serde_json::from_slice::<TokenResponse>(&resp.body).map_err(|_| {
                TokenCallError::Unavailable("token response is not valid JSON".into())
            });
        }
        match status {
            // RFC 6749 §5.2 errors come as 400 (401 for client auth); Auth0 answers
            // invalid_grant with 403.
            400 | 401 | 403 => {
                let err = serde_json::from_slice::<TokenErrorResponse>(&resp.body)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| format!("HTTP {status}"));
                Err(TokenCallError::Refused(err))
            }
            _ => Err(TokenCallError::Unavailable(format!(
                "token endpoint answered HTTP {status}"
            ))),
        }
    }

    /// RFC 7523 §2.2 client assertion for `private_key_jwt` (OIDC Core §9).
    fn client_assertion(&self, token_endpoint: &str) -> Result<String, TokenCallError> {
        let key = self
            .private_key
            .as_ref()
            .ok_or_else(|| TokenCallError::Unavailable("no private key".into()))?;
        let iat = now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut jti = [0u8; 16];
        let _ = aws_lc_rs::rand::fill(&mut jti);
        let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
        let claims = serde_json::json!({
            "iss": self.client_id, "sub": self.client_id, "aud": token_endpoint,
            "iat": iat, "exp": iat + 60, "jti": jti,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(self.private_key_alg),
            &claims,
            key,
        )
        .map_err(|e| TokenCallError::Unavailable(format!("client assertion: {e}")))
    }

    /// `GET|POST /oauth2/sign_out?rd=/x`: clears the session here, then RP-initiated
    /// logout at the provider when it offers it. Doing it by GET can only log the user out
    /// and land on a validated `rd`: nothing else a forged link could make happen.
    pub async fn sign_out(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        request_id: &str,
    ) -> Resp {
        let t = now();
        let rd = self.safe_rd(query_param(query, "rd").as_deref());
        let session = self.store.load(headers, t).await.ok().flatten();
        let mut cookies = match self.store.clear(headers, t).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(request_id, error = %e, "session store unavailable at sign-out");
                self.store.expire_cookies(headers)
            }
        };
        cookies.extend(self.tx.expire_all(headers));
        let return_to = absolute(&self.public_url, &rd);
        let meta = self.id_validator.metadata(0);
        if let Some(end) = meta.as_ref().and_then(|m| m.end_session_endpoint.clone()) {
            // OIDC RP-Initiated Logout 1.0 §2.
            let mut url = end;
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("client_id={}", form_urlencode(&self.client_id)));
            url.push_str(&format!(
                "&post_logout_redirect_uri={}",
                form_urlencode(&return_to)
            ));
            if let Some(idt) = session.as_ref().and_then(|s| s.session.id_token.as_ref()) {
                url.push_str(&format!("&id_token_hint={}", form_urlencode(idt.expose())));
            }
            return redirect(&url, cookies);
        }
        if let Some(tpl) = &self.logout_url {
            // e.g. Auth0's /v2/logout?client_id={client_id}&returnTo={return_to}
            let url = tpl
                .replace("{client_id}", &form_urlencode(&self.client_id))
                .replace("{return_to}", &form_urlencode(&return_to));
            return redirect(&url, cookies);
        }
        redirect(&rd, cookies)
    }

    /// `GET /oauth2/userinfo`: the session's identity, never its tokens.
    pub async fn userinfo(&self, headers: &HeaderMap, request_id: &str) -> Resp {
        match self.check(headers, request_id).await {
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
                let mut r = json_response(StatusCode::OK, body.to_string());
                for c in set_cookies {
                    r.headers_mut().append(SET_COOKIE, c);
                }
                r
            }
            SessionCheck::None { set_cookies } => {
                let mut r = json_error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "no session",
                    request_id,
                );
                for c in set_cookies {
                    r.headers_mut().append(SET_COOKIE, c);
                }
                r
            }
            SessionCheck::Unavailable => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "session store unavailable",
                request_id,
            ),
        }
    }

    /// Where a browser without a session is sent: `/oauth2/start?rd=<path and query>`.
    pub fn login_location(&self, path_and_query: &str) -> String {
        format!(
            "{}/start?rd={}",
            self.prefix,
            form_urlencode(path_and_query)
        )
    }
}

fn fill_session(s: &mut Session, id: &Identity, t: &TokenResponse, now: SystemTime) {
    s.email = id.email().map(String::from);
    s.email_verified = id.email_verified;
    s.preferred_username = id.preferred_username().map(String::from);
    s.name = id.name().map(String::from);
    s.groups = id.groups.iter().map(|g| g.to_string()).collect();
    s.claims = id
        .claims
        .iter()
        .filter(|(k, _)| !matches!(&**k, "nonce" | "azp"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    s.sid = id.claim("sid").map(String::from);
    s.scopes = t
        .scope
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect();
    s.refresh_token = t.refresh_token.clone().map(Secret::new);
    s.id_token = t.id_token.clone().map(Secret::new);
    s.access_expires_at = t.expires_in.map(|e| now + Duration::from_secs(e));
}

fn absolute(base: &url::Url, rd: &str) -> String {
    base.join(rd)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| base.to_string())
}

/// A query parameter, percent-decoded (`+` as space, as forms encode it).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A page of the login flow: rendered by the one rescue (`crate::error`), with cookies.
fn page(status: StatusCode, message: &str, request_id: &str, cookies: Vec<HeaderValue>) -> Resp {
    let mut r = Refusal::flow(status, message.to_string()).respond_as(request_id, true);
    for c in cookies {
        r.headers_mut().append(SET_COOKIE, c);
    }
    r
}
