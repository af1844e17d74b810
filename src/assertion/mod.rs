//! The signed identity assertion (README "Identity assertion"): a short-lived JWT that
//! says who the proxy let through, added to the upstream request of routes with
//! `assertion = true` (and to forward-auth's 202 for them), so that an app can verify its
//! caller instead of trusting plain identity headers that anything able to reach the app
//! could forge. The keys ([`keys`]) are published at [`JWKS_PATH`].
//!
//! Claims: `iss` (`server.public_url`), `aud` (`[assertion] audience`, else the route's
//! name), `sub`, `email` (only when verified), `groups`, `iat`, `exp` (at most
//! [`LIFETIME`] after `iat`, never after the identity's own expiry). No `jti`: an assertion
//! is signed once per identity and route and reused until shortly before it expires
//! ([`RENEW_BEFORE`]), which is what keeps it cheap; a per-request `jti` would mean a
//! signature per request. Never the access token.

pub mod keys;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};

use crate::config::Config;
use crate::identity::{Identity, Rendered, SignedAssertion};
pub use keys::{AssertionKey, KeyError};

/// Where the public keys are published, on the main listener.
pub const JWKS_PATH: &str = "/.well-known/portcullis/jwks.json";
/// The longest an assertion is valid (`exp - iat`).
pub const LIFETIME: Duration = Duration::from_secs(300);
/// A cached assertion is replaced this long before its `exp` (or halfway through its
/// life, when that is shorter), so that one forwarded upstream has time left to be checked.
pub const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// Assertions kept per identity (one per audience it visited recently).
const PER_IDENTITY: usize = 8;

/// Why the assertion keys could not be loaded: names the config key, never the key.
#[derive(Debug, thiserror::Error)]
pub enum AssertionBuildError {
    #[error("assertion.key_file[{index}] ({path}): cannot read: {source}")]
    Read {
        index: usize,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("assertion.key_file[{index}] ({path}): {source}")]
    Key {
        index: usize,
        path: String,
        #[source]
        source: KeyError,
    },
    #[error("session.secrets[{index}]: no assertion key derived: {source}")]
    Derive {
        index: usize,
        #[source]
        source: KeyError,
    },
    #[error("assertion: no keys (no key_file and no session secrets)")]
    NoKeys,
    #[error("assertion: server.public_url is required (it is the assertion's iss)")]
    NoIssuer,
}

/// The signer of one config generation: the keys (the first signs, all are published),
/// the issuer and the header name.
pub struct Asserter {
    header: HeaderName,
    issuer: Box<str>,
    signing: AssertionKey,
    /// `base64url(JOSE header) + "."` of the signing key.
    prefix: String,
    jwks: Bytes,
    kids: Vec<String>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Asserter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Asserter")
            .field("header", &self.header)
            .field("issuer", &self.issuer)
            .field("kids", &self.kids)
            .finish_non_exhaustive()
    }
}

impl Asserter {
    /// The signer for `config`, when any route asks for assertions: keys from
    /// `[assertion] key_file`, else derived from each `session.secrets` entry, in order.
    pub fn build(config: &Config) -> Result<Option<Arc<Asserter>>, AssertionBuildError> {
        if !config.routes.iter().any(|r| r.assertion) {
            return Ok(None);
        }
        let cfg = &config.assertion;
        let mut keys = Vec::new();
        if cfg.key_files.is_empty() {
            for (index, s) in config
                .session
                .iter()
                .flat_map(|s| s.secrets.iter())
                .enumerate()
            {
                keys.push(
                    AssertionKey::derive(s.expose())
                        .map_err(|source| AssertionBuildError::Derive { index, source })?,
                );
            }
        } else {
            for (index, p) in cfg.key_files.iter().enumerate() {
                let path = p.display().to_string();
                let pem = std::fs::read(p).map_err(|source| AssertionBuildError::Read {
                    index,
                    path: path.clone(),
                    source,
                })?;
                keys.push(AssertionKey::from_pem(&pem).map_err(|source| {
                    AssertionBuildError::Key {
                        index,
                        path,
                        source,
                    }
                })?);
            }
        }
        let issuer = config
            .server
            .public_url
            .as_ref()
            .map(issuer_of)
            .ok_or(AssertionBuildError::NoIssuer)?;
        Self::from_keys(cfg.header.clone(), issuer, keys).map(|a| Some(Arc::new(a)))
    }

    /// A signer of `keys` (the first signs).
    pub fn from_keys(
        header: HeaderName,
        issuer: String,
        mut keys: Vec<AssertionKey>,
    ) -> Result<Asserter, AssertionBuildError> {
        if keys.is_empty() {
            return Err(AssertionBuildError::NoKeys);
        }
        let jwks = Bytes::from(keys::jwks(&keys));
        let kids = keys.iter().map(|k| k.kid.clone()).collect();
        let signing = keys.swap_remove(0);
        let jose =
            serde_json::json!({"alg": signing.alg().as_str(), "kid": signing.kid, "typ": "JWT"});
        let prefix = format!("{}.", URL_SAFE_NO_PAD.encode(jose.to_string()));
        Ok(Asserter {
            header,
            issuer: issuer.into(),
            signing,
            prefix,
            jwks,
            kids,
            rng: SystemRandom::new(),
        })
    }

    /// The JWKS document (`{"keys": [...]}`) of every configured key.
    pub fn jwks(&self) -> &Bytes {
        &self.jwks
    }

    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The `kid`s published, the signing key's first.
    pub fn kids(&self) -> &[String] {
        &self.kids
    }

    /// A new signed assertion of `id` for `audience`, and when it should be replaced.
    fn sign(&self, id: &Identity, audience: &str, now: SystemTime) -> Option<(HeaderValue, u64)> {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            aud: &'a str,
            sub: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            email: Option<&'a str>,
            groups: Vec<&'a str>,
            iat: u64,
            exp: u64,
        }
        let iat = unix(now);
        let mut exp = iat + LIFETIME.as_secs();
        if let Some(until) = id.expires_at {
            exp = exp.min(unix(until)).max(iat + 1);
        }
        let claims = Claims {
            iss: &self.issuer,
            aud: audience,
            sub: id.subject(),
            // Only an address the provider verified: an app may act on it.
            email: id.verified_email(),
            groups: id.groups.iter().map(|g| &**g).collect(),
            iat,
            exp,
        };
        let payload = serde_json::to_vec(&claims).ok()?;
        let mut jwt = String::with_capacity(self.prefix.len() + payload.len() * 4 / 3 + 100);
        jwt.push_str(&self.prefix);
        URL_SAFE_NO_PAD.encode_string(&payload, &mut jwt);
        let sig = self.signing.sign(&self.rng, jwt.as_bytes())?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(&sig, &mut jwt);
        let value = HeaderValue::from_maybe_shared(Bytes::from(jwt)).ok()?;
        let renew = RENEW_BEFORE.as_secs().min((exp - iat) / 2);
        Some((value, exp - renew))
    }
}

/// `server.public_url` as the assertion's `iss`: without a trailing slash when its path
/// is the root (`https://app.example.com`).
pub fn issuer_of(u: &url::Url) -> String {
    let s = u.as_str();
    if u.path() == "/" && u.query().is_none() {
        s.trim_end_matches('/').to_string()
    } else {
        s.to_string()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a route with `assertion = true` asserts with: the generation's signer and the
/// audience. Routes of one audience share one (and so one cached assertion per identity).
pub struct RouteAssertion {
    /// Tells its cached assertions apart from other audiences' and generations'.
    id: u64,
    asserter: Arc<Asserter>,
    audience: Box<str>,
}

impl RouteAssertion {
    pub fn new(asserter: Arc<Asserter>, audience: &str) -> RouteAssertion {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        RouteAssertion {
            id: NEXT.fetch_add(1, Relaxed),
            asserter,
            audience: audience.into(),
        }
    }

    pub fn header(&self) -> &HeaderName {
        &self.asserter.header
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The assertion of `id` (whose rendering for this generation is `rendered`): the
    /// cached one while it is fresh, else a new one (then cached). `None` only if signing
    /// failed.
    pub fn value(
        &self,
        id: &Identity,
        rendered: &Rendered,
        now: SystemTime,
    ) -> Option<HeaderValue> {
        let secs = unix(now);
        let cached = rendered.assertions.load();
        if let Some(list) = cached.as_deref() {
            if let Some(a) = list
                .iter()
                .find(|a| a.key == self.id && secs < a.renew_after)
            {
                return Some(a.value.clone());
            }
        }
        let (value, renew_after) = self.asserter.sign(id, &self.audience, now)?;
        let mut list: Vec<SignedAssertion> = cached
            .as_deref()
            .map(|l| {
                l.iter()
                    .filter(|a| a.key != self.id && secs < a.renew_after)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if list.len() >= PER_IDENTITY {
            list.remove(0);
        }
        list.push(SignedAssertion {
            key: self.id,
            value: value.clone(),
            renew_after,
        });
        rendered.assertions.store(Some(Arc::new(list)));
        Some(value)
    }
}

/// One [`RouteAssertion`] per route index (`None` for routes without `assertion`); routes
/// of the same audience share one.
pub fn for_routes(
    config: &Config,
    asserter: Option<&Arc<Asserter>>,
) -> Vec<Option<Arc<RouteAssertion>>> {
    let mut by_audience: Vec<Arc<RouteAssertion>> = Vec::new();
    config
        .routes
        .iter()
        .map(|r| {
            let a = asserter.filter(|_| r.assertion)?;
            let audience = config.assertion.audience.as_deref().unwrap_or(&r.name);
            if let Some(found) = by_audience.iter().find(|x| &*x.audience == audience) {
                return Some(found.clone());
            }
            let ra = Arc::new(RouteAssertion::new(a.clone(), audience));
            by_audience.push(ra.clone());
            Some(ra)
        })
        .collect()
}

#[cfg(test)]
mod tests;
