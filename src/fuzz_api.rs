//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`; the main build,
//! the tests and the binary never enable it, so the production API does not grow).
//!
//! Thin wrappers over the crate's own parsers of hostile input, so that a target calls
//! exactly the code a request runs: path and host canonicalization, the routing layer's
//! host rule and the route table's selection, forward auth's original URI, the `Cookie`
//! parser and session unsealing, the session wire format, JWT headers, introspection
//! answers and claims, discovery documents and the provider transport's URL check.
//! Nothing here is stable or meant for any other use.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, Request};

use crate::admin::Metrics;
use crate::config::{Config, RouteConfig, Secret};
use crate::identity::Identity;
use crate::oidc::login::Login;
use crate::policy::{decide, preflight_passes, Decision};
use crate::proxy::pool::UpstreamPool;
use crate::proxy::upstream::Upstream;
use crate::routing::table::Parts;
use crate::routing::RouteTable;
use crate::session::cookie::{CookieSettings, CookieStore};
use crate::token::claims::{ClaimRules, Interner};
use crate::token::TokenValidator;

pub use crate::oidc::discovery::{DiscoveryError, ProviderMetadata};
pub use crate::path::{
    has_other_readings, normalize_host, normalize_path, prefix_matches, readings,
    strip_route_prefix, PathError, Reading,
};
pub use crate::session::Session;
pub use crate::token::{InvalidReason, TokenError};

// ---------------------------------------------------------------------------------------
// Hosts and routing

/// The routing layer's host rule for a request head: `Ok((routing name, authority as
/// sent))`, `Err` when the layer answers 400.
#[allow(clippy::result_unit_err)]
pub fn request_host<B>(req: &Request<B>) -> Result<(Option<String>, Option<Vec<u8>>), ()> {
    crate::routing::layer::request_host(req)
        .map(|(name, auth)| {
            (
                name.map(|n| n.into_owned()),
                auth.map(|a| a.as_bytes().to_vec()),
            )
        })
        .map_err(|_| ())
}

/// What a route table is compiled with besides its routes: a token validator, a login and
/// the upstream clients, made once from a config (nothing is fetched).
pub struct Router {
    tokens: Option<TokenValidator>,
    login: Option<Arc<Login>>,
    upstreams: Vec<Arc<Upstream>>,
    metrics: Metrics,
}

impl Router {
    /// From a config whose `[[upstream]]` list every later table shares.
    pub fn new(config: &Config) -> Result<Router, String> {
        let tokens = match crate::token::token_config(config) {
            Some((bearer, transport, _)) => {
                let t = crate::oidc::transport::HttpTransport::new(transport)
                    .map_err(|e| e.to_string())?;
                Some(TokenValidator::new(bearer, t))
            }
            None => None,
        };
        // The router only needs a login that can judge sessions; a small in-process
        // revocation set stands for the configured one.
        let revocations = crate::revocation::Revocations::memory(100);
        let login = Login::build(config, None, &revocations)
            .map_err(|e| e.to_string())?
            .map(Arc::new);
        let mut upstreams = Vec::new();
        for u in &config.upstreams {
            let pool = UpstreamPool::new(u).map_err(|e| e.to_string())?;
            upstreams.push(Arc::new(Upstream {
                name: u.name.as_str().into(),
                scheme: u.scheme.clone(),
                authority: u.authority.clone(),
                base_path: u.base_path.as_str().into(),
                preserve_host: u.preserve_host,
                h2: u.h2,
                exact_readings: u.path_readings == crate::config::PathReadings::Exact,
                client: Arc::new(pool),
            }));
        }
        Ok(Router {
            tokens,
            login,
            upstreams,
            metrics: Metrics::default(),
        })
    }

    /// The route table of `routes` (validated by the same config's loader).
    pub fn table(&self, routes: &[RouteConfig]) -> Result<Table, String> {
        let table = RouteTable::compile(
            routes,
            &Parts {
                tokens: self.tokens.as_ref(),
                login: self.login.as_ref(),
                upstreams: &self.upstreams,
                metrics: &self.metrics,
                asserter: None,
                assertions: &[],
                dpop: None,
                public_url: None,
                tls: false,
                client_cert_header: false,
            },
        )
        .map_err(|e| e.to_string())?;
        Ok(Table(table))
    }
}

/// A compiled route table; routes are named by their index in the config.
pub struct Table(RouteTable);

impl Table {
    fn index(&self, r: &Arc<crate::routing::Route>) -> usize {
        self.0
            .routes()
            .iter()
            .position(|x| Arc::ptr_eq(x, r))
            .unwrap_or(usize::MAX)
    }

    /// `RouteTable::select`: `Err` is a reading conflict (400), `Ok(None)` no route (404),
    /// else the route and the routes other readings select.
    #[allow(clippy::result_unit_err)]
    pub fn select(
        &self,
        host: Option<&str>,
        path: &str,
    ) -> Result<Option<(usize, Vec<usize>)>, ()> {
        match self.0.select(host, path) {
            Err(_) => Err(()),
            Ok(None) => Ok(None),
            Ok(Some(s)) => Ok(Some((
                self.index(&s.route),
                s.also.iter().map(|r| self.index(r)).collect(),
            ))),
        }
    }

    /// Whether route `ix`'s policy lets this request through as the auth gate judges it:
    /// a CORS preflight on a route that allows them, or `identity` (if any) passing its
    /// scopes and `allow` rules. The auth mode is not considered here.
    pub fn policy_passes(
        &self,
        ix: usize,
        method: &Method,
        preflight: bool,
        identity: Option<&Identity>,
    ) -> bool {
        let Some(route) = self.0.routes().get(ix) else {
            return false;
        };
        let mut headers = HeaderMap::new();
        if preflight {
            headers.insert(
                http::header::ORIGIN,
                http::HeaderValue::from_static("https://o"),
            );
            headers.insert(
                http::header::ACCESS_CONTROL_REQUEST_METHOD,
                http::HeaderValue::from_static("POST"),
            );
        }
        preflight_passes(&route.policy, method, &headers)
            || identity.is_some_and(|id| decide(&route.policy, method, id) == Decision::Allow)
    }
}

// ---------------------------------------------------------------------------------------
// Forward auth

/// The original request named by a forward-auth call's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub path: String,
    pub query: Option<String>,
    pub host: Option<String>,
}

/// `oidc::endpoints::original_request`: `Ok(None)` when nothing names a URI, `Err` (400)
/// for malformed or disagreeing sources.
pub fn original_request(
    headers: &HeaderMap,
    suffix: Option<&str>,
    query: Option<&str>,
) -> Result<Option<Original>, &'static str> {
    crate::oidc::endpoints::original_request(headers, suffix, query).map(|o| {
        o.map(|o| Original {
            path: o.path,
            query: o.query,
            host: o.host,
        })
    })
}

// ---------------------------------------------------------------------------------------
// Cookies and sessions

/// A cookie session store with fixed secrets, opened at a fixed time.
pub struct Cookies {
    store: CookieStore,
    pub now: SystemTime,
}

impl Cookies {
    /// Logical name `_portcullis`; `secure` gives the `__Host-` prefix.
    pub fn new(secrets: &[[u8; 32]], secure: bool, now: SystemTime) -> Cookies {
        let settings = CookieSettings::new("_portcullis", secure, None).expect("valid name");
        let secrets: Vec<Secret<[u8; 32]>> = secrets.iter().map(|s| Secret::new(*s)).collect();
        let store = CookieStore::new(
            Arc::new(settings),
            &secrets,
            Duration::from_secs(8 * 3600),
            Duration::from_secs(3600),
        )
        .expect("valid store");
        Cookies { store, now }
    }

    /// The session cookie's name as the browser sends it.
    pub fn wire_name(&self) -> String {
        let s = self.store.settings();
        s.wire_name(s.name())
    }

    /// The sealed value of `s` (before chunking).
    pub fn seal(&self, s: &Session) -> String {
        self.store.seal(s, self.now).expect("seal").0
    }

    /// The `(cookie name, value)` pieces a sealed value is sent as.
    pub fn pieces(&self, sealed: &str) -> Vec<(String, String)> {
        crate::session::cookie::split(&self.wire_name(), sealed).expect("fits")
    }

    /// The session a request's `Cookie` headers carry, as the store loads it.
    pub fn load(&self, request: &HeaderMap) -> Option<Arc<Session>> {
        self.store
            .load(request, self.now)
            .map(|o| o.session.clone())
    }
}

/// Every `(name, value)` pair of the request's `Cookie` headers, as the proxy parses them.
pub fn request_cookies(headers: &HeaderMap) -> Vec<(Vec<u8>, Vec<u8>)> {
    crate::session::cookie::request_cookies(headers)
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
}

pub use crate::session::strip::{is_proxy_cookie, strip_proxy_cookies};

/// The session wire format's reader (what an opened seal holds).
pub fn session_read(bytes: &[u8]) -> Option<Session> {
    crate::session::wire::read(bytes)
}

/// The session wire format's writer.
pub fn session_write(s: &Session) -> Vec<u8> {
    let mut out = Vec::new();
    crate::session::wire::write(s, &mut out).expect("write");
    out
}

// ---------------------------------------------------------------------------------------
// Tokens and provider answers

/// Installs a JWKS document as issuer `issuer`'s keys, as if fetched now (no later fetch:
/// an unknown `kid` is refused without a network call).
pub fn install_keys(v: &TokenValidator, issuer: usize, jwks: &[u8]) -> Result<(), String> {
    v.install_keys_for_fuzzing(issuer, jwks)
}

/// What the JWT header parser reads before verification: `(alg, kid, unverified iss)`.
pub fn parse_unverified(
    token: &str,
) -> Result<(jsonwebtoken::Algorithm, Option<String>, Option<String>), TokenError> {
    crate::token::jwt::parse_unverified(token).map(|u| (u.alg, u.kid, u.iss))
}

/// RFC 7662 answer checks: `Ok` when the answer is an active access token for `issuer`
/// and one of `audiences` at `now`.
pub fn check_introspection(
    claims: &serde_json::Map<String, serde_json::Value>,
    issuer: &str,
    audiences: &[String],
    now: SystemTime,
    leeway_secs: u64,
) -> Result<(), TokenError> {
    crate::token::introspection::check_introspection(claims, issuer, audiences, now, leeway_secs)
}

/// The identity made from verified claims (scopes from `scope`/`scp`, groups from
/// `groups_claim`, `wanted` claims kept).
pub fn identity_from_claims(
    claims: &serde_json::Map<String, serde_json::Value>,
    issuer: &str,
    groups_claim: &str,
    wanted: &[&str],
    subject_fallback: Option<&str>,
) -> Result<Identity, TokenError> {
    let rules = ClaimRules {
        scopes_claims: vec!["scope".into(), "scp".into()],
        groups_claim: groups_claim.into(),
        wanted: wanted.iter().map(|w| Arc::from(*w)).collect(),
    };
    let interner = Interner::new(16);
    crate::token::claims::identity_from_claims(
        claims,
        &Arc::from(issuer),
        &rules,
        &interner,
        subject_fallback,
    )
}

/// A discovery document's body checked for `issuer`, as discovery does.
pub fn parse_metadata(body: &[u8], issuer: &str) -> Result<ProviderMetadata, DiscoveryError> {
    crate::oidc::discovery::parse_metadata(body, issuer)
}

/// The provider transport's URL check: the URI it would send a request to, or `Err` when
/// it refuses the URL (not absolute, not https outside loopback).
#[allow(clippy::result_unit_err)]
pub fn transport_uri(url: &str) -> Result<http::Uri, ()> {
    crate::oidc::transport::checked_uri(url).map_err(|_| ())
}

// ---------------------------------------------------------------------------------------
// Back-channel logout tokens

/// A logout token that passed OIDC Back-Channel Logout 1.0 §2.6 steps 1-6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedLogout {
    pub iss: String,
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    pub iat: u64,
}

/// The login of a config, on a fixed clock, with the provider's keys installed from a JWKS
/// document instead of fetched: runs `Login::check_logout_token` as the endpoint does.
pub struct LogoutTokens {
    login: Login,
    jwks: Vec<u8>,
    installed: std::sync::Mutex<std::time::Instant>,
}

impl LogoutTokens {
    /// `config` needs a login route; `now` is the login's (and its ID-token validator's)
    /// clock for good. Nothing is fetched.
    pub fn new(config: &Config, now: SystemTime, jwks: &[u8]) -> Result<LogoutTokens, String> {
        let clock = Arc::new(crate::token::ManualClock::new(now));
        let login = Login::build_with_clock(
            config,
            None,
            &crate::revocation::Revocations::memory(100),
            clock,
        )
        .map_err(|e| e.to_string())?
        .ok_or("no login route")?;
        login.id_validator.install_keys_for_fuzzing(0, jwks)?;
        Ok(LogoutTokens {
            login,
            jwks: jwks.to_vec(),
            installed: std::sync::Mutex::new(std::time::Instant::now()),
        })
    }

    /// `Login::check_logout_token`: the checked token, or the refusal's reason code.
    pub async fn check(&self, token: &str) -> Result<CheckedLogout, &'static str> {
        // Installing the keys counts as a fetch: an unknown `kid` is then refused without
        // a network call (the refetch is rate-limited). Renewed well within that window.
        {
            let mut at = self.installed.lock().unwrap_or_else(|e| e.into_inner());
            if at.elapsed() > Duration::from_secs(2) {
                self.login
                    .id_validator
                    .install_keys_for_fuzzing(0, &self.jwks)
                    .expect("installed once already");
                *at = std::time::Instant::now();
            }
        }
        self.login
            .check_logout_token_for_fuzzing(token)
            .await
            .map(|(iss, sub, sid, jti, iat)| CheckedLogout {
                iss,
                sub,
                sid,
                jti,
                iat,
            })
    }
}
