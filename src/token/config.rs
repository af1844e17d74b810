//! Runtime configuration of bearer-token validation: plain typed values, already
//! validated by the config loader (which builds them from `[bearer]` and `[provider]`).

use std::fmt;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::oidc::credential::IssuerCredential;

/// A secret value: redacted `Debug`, explicit [`Secret::expose`], constant-time equality.
///
/// The config loader may hold its own secret type; it converts with `Secret::new`.
#[derive(Clone)]
pub struct Secret(Box<[u8]>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into().into_boxed_slice())
    }

    /// The secret bytes; call sites are easy to audit.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text, if it is UTF-8 (client secrets).
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &other.0).is_ok()
    }
}

impl Eq for Secret {}

/// `bearer.introspection`: which tokens are checked at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IntrospectionMode {
    /// Only JWTs, verified locally against the issuer's JWKS; opaque tokens are refused.
    #[default]
    Off,
    /// JWTs locally; anything else by RFC 7662 introspection.
    Opaque,
    /// Every token by RFC 7662 introspection (at the issuer a JWT names, if that issuer
    /// has an introspection endpoint; otherwise at the primary issuer).
    Always,
    /// JWTs locally; anything else at the provider's userinfo endpoint (providers without
    /// RFC 7662, like Auth0).
    Userinfo,
}

/// How the resource server authenticates to the introspection endpoint (RFC 7662 §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// `client_secret_basic` (RFC 6749 §2.3.1).
    #[default]
    Basic,
    /// `client_secret_post`.
    Post,
}

/// One trusted token issuer.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Compared exactly (trailing slash included) with the token's `iss`.
    pub issuer: String,
    /// Fetch `{issuer}/.well-known/openid-configuration` for the endpoints below.
    pub discovery: bool,
    /// Overrides discovery's `jwks_uri`; required when `discovery` is false (for JWTs).
    pub jwks_uri: Option<String>,
    /// A token's `aud` must contain one of these. Empty: every token is refused.
    pub audiences: Vec<String>,
    /// Algorithm allow-list (`none` cannot be expressed). HS* only take effect with
    /// `hs_secret`.
    pub algorithms: Vec<Algorithm>,
    /// Shared secret for HS256/384/512. Never taken from the JWKS.
    pub hs_secret: Option<Secret>,
    /// Overrides discovery's `introspection_endpoint`.
    pub introspection_endpoint: Option<String>,
    /// Overrides discovery's `userinfo_endpoint`.
    pub userinfo_endpoint: Option<String>,
    pub introspection_client_id: Option<String>,
    pub introspection_client_secret: Option<Secret>,
    pub introspection_auth: ClientAuth,
    /// `token_file`: a bearer token for this issuer's discovery and JWKS calls only
    /// (see [`crate::oidc::credential`]).
    pub token_file: Option<std::path::PathBuf>,
}

impl IssuerConfig {
    /// An issuer found by discovery, RS256 and ES256 allowed, no introspection credentials.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        Self {
            issuer: issuer.into(),
            discovery: true,
            jwks_uri: None,
            audiences,
            algorithms: vec![Algorithm::RS256, Algorithm::ES256],
            hs_secret: None,
            introspection_endpoint: None,
            userinfo_endpoint: None,
            introspection_client_id: None,
            introspection_client_secret: None,
            introspection_auth: ClientAuth::Basic,
            token_file: None,
        }
    }

    /// The `token_file` credential of this issuer's discovery and JWKS calls, if any.
    pub fn credential(&self) -> Option<IssuerCredential> {
        let file = self.token_file.clone()?;
        Some(IssuerCredential::new(
            file,
            &self.issuer,
            self.jwks_uri.clone(),
        ))
    }
}

/// `[bearer]`: how bearer tokens are validated and cached.
#[derive(Debug, Clone)]
pub struct BearerConfig {
    /// The provider's issuer first (it is the "primary" issuer for opaque tokens), then
    /// any `[[bearer.issuers]]`.
    pub issuers: Vec<IssuerConfig>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    pub introspection: IntrospectionMode,
    /// Where scopes are read; the union of all present claims is taken, in this order
    /// (`scope`: space separated string; others: array of strings or space separated string).
    pub scopes_claims: Vec<String>,
    /// Exact claim name first (`https://example.com/roles`), else a dotted path
    /// (`realm_access.roles`).
    pub groups_claim: String,
    /// Claims (names or dotted paths) referred to by `headers.claims` / `allow.claims`;
    /// only these are kept in the identity.
    pub wanted_claims: Vec<String>,
    /// Upper bound for a cache entry; an entry never outlives the token's `exp`.
    pub cache_ttl: Duration,
    pub cache_capacity: u64,
    /// How long a refused token stays refused without being checked again
    /// (not for `Unavailable`). Zero disables negative caching.
    pub negative_ttl: Duration,
    /// At most one JWKS refetch for an unknown `kid` per this interval.
    pub jwks_min_refetch_interval: Duration,
    /// Tokens longer than this are refused before any parsing.
    pub max_token_len: usize,
    /// How long `start()` keeps retrying discovery and the first JWKS load.
    pub start_timeout: Duration,
    /// How often provider metadata is fetched again.
    pub metadata_refresh: Duration,
}

impl Default for BearerConfig {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            leeway: Duration::from_secs(30),
            introspection: IntrospectionMode::Off,
            scopes_claims: vec!["scope".into(), "scp".into()],
            groups_claim: "groups".into(),
            wanted_claims: Vec::new(),
            cache_ttl: Duration::from_secs(300),
            cache_capacity: 100_000,
            negative_ttl: Duration::from_secs(10),
            jwks_min_refetch_interval: Duration::from_secs(10),
            max_token_len: 16 * 1024,
            start_timeout: Duration::from_secs(30),
            metadata_refresh: Duration::from_secs(3600),
        }
    }
}
