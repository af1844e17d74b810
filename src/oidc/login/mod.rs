//! The browser login of `login` and `either` routes, one file per step:
//!
//! | file | what | spec |
//! |---|---|---|
//! | [`start`] | `GET /oauth2/start?rd=/x`: transaction cookie, redirect to the provider | RFC 6749 §4.1.1, RFC 7636 (PKCE S256), OIDC Core 3.1.2.1 (`nonce`) |
//! | [`callback`] | `GET /oauth2/callback`: check the response, exchange the code, check the ID token, make the session | RFC 6749 §4.1.2, §10.12; RFC 9207; OIDC Core 3.1.3 |
//! | [`check`] | every request of a login route: the session, refreshed when due (one refresh per session at a time); `GET /oauth2/userinfo` | RFC 6749 §6, OIDC Core 12 |
//! | [`sign_out`] | `GET\|POST /oauth2/sign_out?rd=/x`: the session's id into the revocation set | OIDC RP-Initiated Logout 1.0 |
//! | [`backchannel`] | `POST /oauth2/backchannel_logout`: a logout token ends sessions by `sid` or `sub` | OIDC Back-Channel Logout 1.0 |
//! | [`token_endpoint`] | the token endpoint client: exchange, refresh, client authentication | RFC 6749 §2.3, §4.1.3, §6; RFC 7523 |
//! | [`id_token`] | the relying party's ID token rules | OIDC Core 3.1.3.7, 3.1.3.8, 12.2 |
//! | [`params`] | query parameters, each at most once | RFC 6749 §3.1 |
//! | [`pages`] | [`LoginError`](pages::LoginError): status, message, fault, log level of each page | |
//!
//! This file holds [`Login`] itself: what it is built from (one per config generation,
//! [`Login::build`]), what a reload keeps (the *provider link*: the ID-token validator with
//! the provider's metadata and keys, the token endpoint client, the refresh single-flight
//! and the clock; see [`Login::fingerprints`]), and the small things every step shares.
//!
//! Time is the injected [`Clock`] everywhere (session and transaction expiry, refresh
//! margins, ID token `exp`, client assertions), so that tests move it instead of sleeping.

mod backchannel;
mod callback;
mod check;
mod id_token;
mod pages;
mod params;
mod sign_out;
mod start;
mod token_endpoint;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderValue;

use crate::admin::metrics::Metrics;
use crate::body::Resp;
use crate::config::{Config, ProviderConfig};
use crate::oidc::redirect::validate_redirect;
use crate::oidc::transport::{form_urlencode, HttpTransport, TransportConfig};
use crate::revocation::Revocations;
use crate::session::transaction::TransactionCookies;
use crate::session::{SessionError, SessionStore};
use crate::telemetry::Telemetry;
use crate::token::{
    BearerConfig, Clock, IntrospectionMode, IssuerConfig, SystemClock, TokenValidator,
};

pub use check::SessionCheck;
use pages::LoginError;
use token_endpoint::TokenEndpoint;

/// Refresh an access token this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

fn needs_login(c: &Config) -> bool {
    c.routes.iter().any(|r| {
        matches!(
            r.auth,
            crate::config::AuthMode::Login | crate::config::AuthMode::Either
        )
    })
}

/// What a reload may carry from one login to the next when the provider settings are the
/// same: nothing here depends on session or login settings.
#[derive(Clone)]
struct ProviderLink {
    id_validator: TokenValidator,
    token_endpoint: Arc<TokenEndpoint>,
    refreshes: check::RefreshFlight,
    clock: Arc<dyn Clock>,
}

/// Everything the login flow needs, built once per config generation.
pub struct Login {
    /// The fingerprint of the provider settings (see [`Login::fingerprints`]).
    provider_key: String,
    pub issuer: String,
    client_id: String,
    /// `provider.trusted_audiences`: ID-token audiences accepted beside the client id.
    trusted_audiences: Vec<String>,
    scopes: String,
    extra_auth_params: Vec<(String, String)>,
    logout_url: Option<String>,
    public_url: url::Url,
    prefix: String,
    allowed_redirect_hosts: Vec<String>,
    refresh: bool,
    lifetime: Duration,
    /// `provider.logout_token_max_age`.
    logout_token_max_age: Duration,
    pub store: SessionStore,
    /// Signed-out sessions, provider logouts, replay sets: built once, shared by every
    /// generation (see `crate::revocation`).
    pub revocations: Revocations,
    pub tx: TransactionCookies,
    /// Validates ID tokens (audience = client id) and holds the provider metadata.
    pub id_validator: TokenValidator,
    token_endpoint: Arc<TokenEndpoint>,
    /// One refresh at a time per session (keyed by the refresh token's hash): rotating
    /// refresh tokens must not be burned by a race of parallel requests.
    refreshes: check::RefreshFlight,
    clock: Arc<dyn Clock>,
    /// Where refreshes are counted (`None` in unit tests of the login alone).
    metrics: Option<Arc<Metrics>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginBuildError {
    #[error("session: {0}")]
    Session(#[from] SessionError),
    #[error("provider client: {0}")]
    Transport(#[from] crate::oidc::transport::TransportError),
    #[error("provider.private_key_file: {0}")]
    Key(#[from] token_endpoint::KeyError),
    #[error("{0}")]
    Config(&'static str),
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
        add(&mut d, c.referenced_claims().join("\n").as_bytes());
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

    /// Builds the login of `c` on the system clock, keeping the provider link of `previous`
    /// when the provider settings are the same (see [`Login::fingerprints`]). `revocations`
    /// is the process' revocation store (it outlives the login).
    pub fn build(
        c: &Config,
        previous: Option<&Login>,
        revocations: &Revocations,
    ) -> Result<Option<Login>, LoginBuildError> {
        Self::build_with_clock(c, previous, revocations, Arc::new(SystemClock))
    }

    /// [`Login::build`] whose provider calls (when not carried from `previous`) are timed
    /// and traced into `telemetry`.
    pub fn build_traced(
        c: &Config,
        previous: Option<&Login>,
        revocations: &Revocations,
        telemetry: &Arc<Telemetry>,
    ) -> Result<Option<Login>, LoginBuildError> {
        Self::build_inner(
            c,
            previous,
            revocations,
            Arc::new(SystemClock),
            Some(telemetry),
        )
    }

    /// [`Login::build`] with an injected clock (tests move time instead of sleeping). A
    /// provider link carried from `previous` keeps the clock it was built with.
    pub fn build_with_clock(
        c: &Config,
        previous: Option<&Login>,
        revocations: &Revocations,
        clock: Arc<dyn Clock>,
    ) -> Result<Option<Login>, LoginBuildError> {
        Self::build_inner(c, previous, revocations, clock, None)
    }

    fn build_inner(
        c: &Config,
        previous: Option<&Login>,
        revocations: &Revocations,
        clock: Arc<dyn Clock>,
        telemetry: Option<&Arc<Telemetry>>,
    ) -> Result<Option<Login>, LoginBuildError> {
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
        let link = match previous.filter(|l| l.provider_key == provider_key) {
            Some(l) => l.link(),
            None => Self::provider_link(c, p, &client_id, clock, telemetry)?,
        };
        Ok(Some(Login {
            provider_key,
            issuer: p.issuer.clone(),
            client_id,
            trusted_audiences: p.trusted_audiences.clone(),
            scopes: p.scopes.join(" "),
            extra_auth_params: p.extra_auth_params.clone(),
            logout_url: p.logout_url.clone(),
            public_url: public_url.clone(),
            prefix: c.server.proxy_prefix.clone(),
            allowed_redirect_hosts: c.login.allowed_redirect_hosts.clone(),
            refresh: s.refresh,
            lifetime: s.lifetime,
            logout_token_max_age: p.logout_token_max_age,
            store: SessionStore::new(s, public_url)?,
            revocations: revocations.clone(),
            tx: TransactionCookies::from_config(s, public_url)?,
            id_validator: link.id_validator,
            token_endpoint: link.token_endpoint,
            refreshes: link.refreshes,
            clock: link.clock,
            metrics: None,
        }))
    }

    /// Counts this login's refreshes into `metrics`.
    pub fn counting_into(mut self, metrics: Arc<Metrics>) -> Login {
        self.metrics = Some(metrics);
        self
    }

    fn link(&self) -> ProviderLink {
        ProviderLink {
            id_validator: self.id_validator.clone(),
            token_endpoint: self.token_endpoint.clone(),
            refreshes: self.refreshes.clone(),
            clock: self.clock.clone(),
        }
    }

    /// A new provider link: the provider client, the ID-token validator (audience = the
    /// client id), the token endpoint client and the refresh single-flight.
    fn provider_link(
        c: &Config,
        p: &ProviderConfig,
        client_id: &str,
        clock: Arc<dyn Clock>,
        telemetry: Option<&Arc<Telemetry>>,
    ) -> Result<ProviderLink, LoginBuildError> {
        let mut transport = HttpTransport::new(TransportConfig {
            timeout: p.timeout,
            ca_file: p.ca_file.clone(),
        })?;
        if let Some(t) = telemetry {
            transport = transport.with_telemetry(t.clone());
        }
        // OIDC Core 3.1.3.7 step 3: the client id must be among the audiences (the
        // validator); what else may be is `id_token::Rules`' business.
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
            // The claims the config refers to; the protocol's own (nonce, azp, sid, aud,
            // ...) are read by `id_token`.
            wanted_claims: c.referenced_claims(),
            cache_capacity: 10_000,
            ..BearerConfig::default()
        };
        let id_validator = TokenValidator::with_clock(id_cfg, transport.clone(), clock.clone());
        let token_endpoint = TokenEndpoint::new(p, client_id, transport, clock.clone())?;
        Ok(ProviderLink {
            id_validator,
            token_endpoint: Arc::new(token_endpoint),
            refreshes: check::RefreshFlight::new(),
            clock,
        })
    }

    /// The login's clock.
    fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// The rules an ID token of this client is held to, beyond the validator's.
    fn id_token_rules(&self) -> id_token::Rules<'_> {
        id_token::Rules {
            client_id: &self.client_id,
            trusted_audiences: &self.trusted_audiences,
        }
    }

    /// The redirect URI registered at the provider: from `server.public_url`, never from
    /// the request's Host header.
    pub fn redirect_uri(&self) -> String {
        let base = self.public_url.as_str().trim_end_matches('/');
        format!("{base}{}/callback", self.prefix)
    }

    /// `rd` if it is a path on this origin or a URL on an allowed host, else `/`.
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

    /// The page of a login step that cannot go on, with a link to start again.
    fn fail(&self, e: LoginError, request_id: &str, cookies: Vec<HeaderValue>) -> Resp {
        e.respond(&format!("{}/start", self.prefix), request_id, cookies)
    }

    /// The 403 page's offer to a signed-in user: sign out, or sign out and come back to
    /// `path_and_query` (where the login starts again) to sign in as someone else.
    pub fn sign_out_links(&self, path_and_query: &str) -> Vec<(&'static str, String)> {
        let sign_out = format!("{}/sign_out", self.prefix);
        let switch = format!("{sign_out}?rd={}", form_urlencode(path_and_query));
        vec![("Sign out", sign_out), ("Sign in as someone else", switch)]
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
