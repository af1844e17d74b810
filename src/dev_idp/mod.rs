//! The built-in development OpenID provider behind `portcullis demo` and the in-process
//! tests: a small, spec-faithful OAuth 2.0 / OpenID Connect provider on 127.0.0.1.
//!
//! **Security warning**: it lists its users' passwords on its login form, ships with
//! well-known client secrets and keeps everything in memory. It is for local testing only;
//! it says so on every page and in the log at start.
//!
//! Endpoints (paths under the issuer `http://127.0.0.1:PORT`):
//!
//! | path | what |
//! |---|---|
//! | `GET /.well-known/openid-configuration` | OIDC Discovery 1.0 metadata (with RFC 8414 / 9207 fields) |
//! | `GET /jwks` | RS256 (RSA 2048) and ES256 (P-256) public keys, `kid` = RFC 7638 thumbprint |
//! | `GET/POST /authorize` | authorization code flow; PKCE S256 required; login form; SSO cookie |
//! | `POST /authorize/login` | the login form's submission: code, then redirect with `code`, `state`, `iss` |
//! | `POST /token` | `authorization_code`, `refresh_token` (rotating), `client_credentials` |
//! | `GET/POST /userinfo` | claims for a Bearer access token |
//! | `POST /introspect` | RFC 7662 token introspection (access and refresh tokens) |
//! | `POST /revoke` | RFC 7009 token revocation |
//! | `GET/POST /end_session` | OIDC RP-Initiated Logout 1.0 |
//!
//! Test knobs are methods of [`DevIdp`]: lifetimes, refresh rotation, opaque access tokens,
//! signing algorithm, a clock offset, key rotation, forced failures per [`Endpoint`] and
//! request counts. The sample upstream app of the demo is in [`sample_app`].

mod authorize;
mod config;
mod discovery;
mod html;
mod keys;
mod knobs;
mod logout;
mod resource;
pub mod sample_app;
mod store;
mod token;
mod web;

#[cfg(test)]
pub(crate) mod test_client;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{
    AccessTokenFormat, DevClient, DevIdpConfig, DevUser, Grant, Lifetimes, SigningAlg, UriRule,
    DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, INTROSPECTION_CLIENT_ID, INTROSPECTION_CLIENT_SECRET,
    MACHINE_CLIENT_ID, MACHINE_CLIENT_SECRET, STANDARD_SCOPES,
};
pub use keys::KeyError;
pub use knobs::{Endpoint, Fail, Times};
pub use sample_app::SampleApp;

use keys::{KeySet, SigningKey};
use knobs::Knobs;
use store::Store;
use web::{Disconnect, Req, Resp};

#[derive(Debug, thiserror::Error)]
pub enum DevIdpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
    #[error("invalid development provider config: {0}")]
    Config(String),
    #[error("unknown {kind} {name:?}")]
    Unknown { kind: &'static str, name: String },
}

/// What the knobs change at run time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub lifetimes: Lifetimes,
    pub refresh_rotation: bool,
    pub access_token_format: AccessTokenFormat,
    pub signing_alg: SigningAlg,
    /// Seconds added to the system clock (the provider's "now").
    pub clock_offset: u64,
}

/// Shared by all connections.
pub(crate) struct State {
    pub issuer: String,
    pub audience: String,
    pub clients: Vec<DevClient>,
    pub users: Vec<DevUser>,
    pub sso_session: bool,
    pub show_users_on_form: bool,
    pub scopes_supported: Vec<String>,
    keys: RwLock<KeySet>,
    store: Mutex<Store>,
    knobs: Knobs,
    settings: Mutex<Settings>,
    /// Claims changed in the ID tokens of a grant ([`DevIdp::override_id_token_claims`]).
    id_token_overrides: Mutex<Vec<(Grant, serde_json::Map<String, serde_json::Value>)>>,
}

impl State {
    /// The provider's clock, in seconds since the epoch.
    pub fn now(&self) -> u64 {
        let sys = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        sys + self.settings().clock_offset
    }

    pub fn settings(&self) -> Settings {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The claim changes for ID tokens issued by `grant`.
    pub fn id_token_overrides(&self, grant: Grant) -> serde_json::Map<String, serde_json::Value> {
        self.id_token_overrides
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(g, _)| *g == grant)
            .flat_map(|(_, m)| m.clone())
            .collect()
    }

    fn update_settings(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut self.settings.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The store. Never held across an `.await`; never held while taking the keys lock
    /// in the other order (take the signing key first with [`State::signing_key`]).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn keys(&self) -> RwLockReadGuard<'_, KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The key new tokens are signed with.
    pub fn signing_key(&self) -> Arc<SigningKey> {
        let alg = self.settings().signing_alg;
        self.keys().active(alg)
    }

    pub fn client(&self, id: &str) -> Option<&DevClient> {
        self.clients.iter().find(|c| c.client_id == id)
    }

    pub fn user(&self, username: &str) -> Option<&DevUser> {
        self.users.iter().find(|u| u.username == username)
    }

    pub fn endpoint_url(&self, ep: Endpoint) -> String {
        format!("{}{}", self.issuer, ep.path())
    }
}

/// A running development provider. Dropping it stops the server (as [`DevIdp::shutdown`]
/// does, without waiting).
pub struct DevIdp {
    state: Arc<State>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for DevIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIdp")
            .field("issuer", &self.state.issuer)
            .finish_non_exhaustive()
    }
}

impl DevIdp {
    /// Generates keys, binds `config.bind:config.port` and serves on the current tokio
    /// runtime (multi-thread or current-thread).
    pub async fn start(config: DevIdpConfig) -> Result<DevIdp, DevIdpError> {
        validate(&config)?;
        let keys = tokio::task::spawn_blocking(KeySet::generate)
            .await
            .map_err(|_| DevIdpError::Keys(KeyError::Generate))??;
        let bind = SocketAddr::new(config.bind, config.port);
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| DevIdpError::Bind { addr: bind, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| DevIdpError::Bind { addr: bind, source })?;
        let issuer = match &config.issuer {
            Some(i) => i.trim_end_matches('/').to_string(),
            None => default_issuer(addr),
        };
        let audience = config
            .audience
            .clone()
            .unwrap_or_else(|| format!("{issuer}/api"));
        let mut scopes_supported: Vec<String> = Vec::new();
        for s in STANDARD_SCOPES
            .iter()
            .map(|s| s.to_string())
            .chain(config.clients.iter().flat_map(|c| c.scopes.iter().cloned()))
        {
            if !scopes_supported.contains(&s) {
                scopes_supported.push(s);
            }
        }
        let state = Arc::new(State {
            issuer,
            audience,
            clients: config.clients,
            users: config.users,
            sso_session: config.sso_session,
            show_users_on_form: config.show_users_on_form,
            scopes_supported,
            keys: RwLock::new(keys),
            store: Mutex::new(Store::default()),
            knobs: Knobs::default(),
            settings: Mutex::new(Settings {
                lifetimes: config.lifetimes,
                refresh_rotation: config.refresh_rotation,
                access_token_format: config.access_token_format,
                signing_alg: config.signing_alg,
                clock_offset: 0,
            }),
            id_token_overrides: Mutex::new(Vec::new()),
        });
        tracing::warn!(
            issuer = %state.issuer,
            "development OpenID provider \u{2014} not for production"
        );
        let (tx, rx) = watch::channel(false);
        let st = state.clone();
        let task = tokio::spawn(web::serve(listener, rx, move |req| {
            let st = st.clone();
            handle(st, req)
        }));
        Ok(DevIdp {
            state,
            addr,
            shutdown: tx,
            task: Mutex::new(Some(task)),
        })
    }

    /// The issuer, `http://127.0.0.1:PORT` unless configured otherwise.
    pub fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `aud` of access tokens.
    pub fn audience(&self) -> String {
        self.state.audience.clone()
    }

    /// The full URL of an endpoint.
    pub fn url(&self, ep: Endpoint) -> String {
        self.state.endpoint_url(ep)
    }

    /// Stops accepting, closes open connections and waits for the server task to end.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    // ---- knobs ----

    /// Lifetime of access tokens issued from now on.
    pub fn set_access_token_ttl(&self, ttl: Duration) {
        self.state
            .update_settings(|s| s.lifetimes.access_token = ttl);
    }

    /// All lifetimes (access, ID, refresh token, code, login form, session).
    pub fn set_lifetimes(&self, lifetimes: Lifetimes) {
        self.state.update_settings(|s| s.lifetimes = lifetimes);
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.state.settings().lifetimes
    }

    /// Refresh token rotation on or off (off: the same refresh token stays valid and the
    /// token response carries none).
    pub fn set_refresh_rotation(&self, on: bool) {
        self.state.update_settings(|s| s.refresh_rotation = on);
    }

    /// JWT or opaque access tokens from now on.
    pub fn set_access_token_format(&self, format: AccessTokenFormat) {
        self.state
            .update_settings(|s| s.access_token_format = format);
    }

    /// The algorithm new ID tokens and JWT access tokens are signed with.
    pub fn set_signing_alg(&self, alg: SigningAlg) {
        self.state.update_settings(|s| s.signing_alg = alg);
    }

    /// Moves the provider's clock forward: tokens it issues from now on carry later
    /// `iat`/`exp`, and its own expiry checks (codes, tokens, sessions) see the later time.
    pub fn advance_clock(&self, by: Duration) {
        self.state
            .update_settings(|s| s.clock_offset = s.clock_offset.saturating_add(by.as_secs()));
    }

    /// Changes the claims of the ID tokens that `grant` issues from now on (the
    /// authorization code or the refresh token grant): each claim given replaces the
    /// provider's, `null` removes it. For ID tokens a real provider should never issue:
    /// several audiences, no `azp`, another `sub` on a refresh, a wrong `at_hash`... They
    /// are signed as usual.
    pub fn override_id_token_claims(
        &self,
        grant: Grant,
        claims: serde_json::Map<String, serde_json::Value>,
    ) {
        self.state
            .id_token_overrides
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((grant, claims));
    }

    /// Back to the provider's own ID tokens.
    pub fn clear_id_token_overrides(&self) {
        self.state
            .id_token_overrides
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Generates new RS256 and ES256 keys (new `kid`s) and signs with them from now on.
    /// `keep_old`: the previous keys stay in the JWKS; otherwise they vanish at once, and
    /// tokens they signed no longer verify (here or anywhere).
    pub fn rotate_keys(&self, keep_old: bool) -> Result<(), DevIdpError> {
        let fresh = KeySet::generate()?;
        self.state
            .keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .rotate_to(fresh, keep_old);
        Ok(())
    }

    /// The `kid` new tokens are signed with.
    pub fn signing_kid(&self) -> String {
        self.state.signing_key().kid.clone()
    }

    /// The `kid`s the JWKS publishes, active ones first.
    pub fn jwks_kids(&self) -> Vec<String> {
        self.state.keys().kids()
    }

    /// Forces `fail` on calls of `endpoint` (the next N, or all until cleared).
    pub fn fail(&self, endpoint: Endpoint, fail: Fail, times: Times) {
        self.state.knobs.set(endpoint, fail, times);
    }

    pub fn clear_failure(&self, endpoint: Endpoint) {
        self.state.knobs.clear(Some(endpoint));
    }

    pub fn clear_failures(&self) {
        self.state.knobs.clear(None);
    }

    /// Requests received per endpoint ([`Endpoint::as_str`] names, all present), forced
    /// failures included.
    pub fn counts(&self) -> HashMap<&'static str, u64> {
        self.state.knobs.counts()
    }

    pub fn reset_counts(&self) {
        self.state.knobs.reset_counts();
    }

    /// Signs arbitrary claims with the active signing key (for crafting tokens the
    /// provider never issued: wrong audience, expired, with `cnf`, ...). Such tokens verify
    /// against the JWKS but are unknown to introspection and userinfo.
    pub fn sign_jwt(&self, typ: &str, claims: &serde_json::Value) -> Result<String, DevIdpError> {
        Ok(self.state.signing_key().sign(typ, claims)?)
    }

    /// Issues a real access token for `username` via `client_id`, as a login with `scope`
    /// (space-separated) would: recorded, introspectable, revocable.
    pub fn issue_user_access_token(
        &self,
        client_id: &str,
        username: &str,
        scope: &str,
    ) -> Result<String, DevIdpError> {
        let client = self
            .state
            .client(client_id)
            .ok_or_else(|| DevIdpError::Unknown {
                kind: "client",
                name: client_id.to_string(),
            })?;
        let user = self
            .state
            .user(username)
            .ok_or_else(|| DevIdpError::Unknown {
                kind: "user",
                name: username.to_string(),
            })?;
        let scopes: Vec<String> = scope.split_ascii_whitespace().map(String::from).collect();
        let now = self.state.now();
        let grant_id = web::random_token(16);
        let mut store = self.state.store();
        let (token, _) = token::issue_access(
            &self.state,
            &mut store,
            token::Subject::User(user),
            client,
            &scopes,
            Some(now),
            &grant_id,
        )?;
        Ok(token)
    }
}

impl Drop for DevIdp {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn validate(config: &DevIdpConfig) -> Result<(), DevIdpError> {
    let mut ids = HashSet::new();
    for c in &config.clients {
        if !ids.insert(c.client_id.as_str()) {
            return Err(DevIdpError::Config(format!(
                "client {:?} is listed twice",
                c.client_id
            )));
        }
        if c.secret.is_none() && c.has_grant(Grant::ClientCredentials) {
            return Err(DevIdpError::Config(format!(
                "client {:?}: client_credentials needs a secret",
                c.client_id
            )));
        }
    }
    let mut names = HashSet::new();
    for u in &config.users {
        if !names.insert(u.username.as_str()) {
            return Err(DevIdpError::Config(format!(
                "user {:?} is listed twice",
                u.username
            )));
        }
    }
    Ok(())
}

fn default_issuer(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// One request: count it, apply a forced failure, then the endpoint.
async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, Disconnect> {
    let Some(ep) = Endpoint::from_path(req.uri().path()) else {
        return Ok(web::oauth_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such endpoint",
        ));
    };
    match state.knobs.on_request(ep) {
        None => {}
        Some(Fail::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            tracing::debug!(endpoint = ep.as_str(), status = code, "forced failure");
            return Ok(web::oauth_error(
                status,
                "server_error",
                "forced failure (test knob)",
            ));
        }
        Some(Fail::Slow(d)) => tokio::time::sleep(d).await,
        Some(Fail::BadJson) => {
            return Ok(web::no_store(web::json_raw(
                StatusCode::OK,
                "{\"issuer\": \"truncated",
            )))
        }
        Some(Fail::Disconnect) => return Err(Disconnect),
    }
    let req = match Req::read(req).await {
        Ok(r) => r,
        Err(resp) => return Ok(resp),
    };
    let resp = match ep {
        Endpoint::Discovery => discovery::configuration(&state, &req),
        Endpoint::Jwks => discovery::jwks(&state, &req),
        Endpoint::Authorize => authorize::authorize(&state, &req),
        Endpoint::Login => authorize::login(&state, &req),
        Endpoint::Token => token::token(&state, &req),
        Endpoint::Userinfo => resource::userinfo(&state, &req),
        Endpoint::Introspect => resource::introspect(&state, &req),
        Endpoint::Revoke => resource::revoke(&state, &req),
        Endpoint::EndSession => logout::end_session(&state, &req),
    };
    tracing::debug!(
        endpoint = ep.as_str(),
        method = %req.method,
        path = %req.path,
        status = resp.status().as_u16(),
        "dev provider request"
    );
    Ok(resp)
}
