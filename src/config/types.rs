//! The typed, validated runtime configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use http::Method;
use ipnet::IpNet;

use super::Secret;

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub provider: Option<ProviderConfig>,
    pub bearer: Option<BearerSettings>,
    pub session: Option<SessionConfig>,
    pub login: LoginConfig,
    pub headers: HeadersConfig,
    pub assertion: AssertionConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub telemetry: TelemetryConfig,
}

/// `[telemetry]`: where spans go and how many traces are kept. Off (no endpoint) by
/// default.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP traces URL (`otlp_endpoint` with `/v1/traces` added, as the
    /// OpenTelemetry exporters do with a base endpoint); `None`: tracing is off.
    pub otlp_traces_url: Option<http::Uri>,
    /// The share of new traces (not continued from a trusted proxy) that are recorded.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_traces_url: None,
            sample_ratio: 1.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub public_url: Option<url::Url>,
    pub tls: Option<TlsFiles>,
    pub trusted_proxies: Vec<IpNet>,
    pub admin_listen: Option<SocketAddr>,
    /// `server.admin_token_file`: the bearer token of state-changing admin endpoints, read
    /// at each request (rotation needs no reload). `None`: those endpoints are refused.
    pub admin_token_file: Option<PathBuf>,
    pub workers: usize,
    pub proxy_prefix: String,
    pub limits: Limits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// `client_ca_file` and `client_auth`: the listener asks for client certificates
    /// chained to these CAs (RFC 8705); `None`: it does not ask.
    pub client_ca: Option<(PathBuf, TlsClientAuth)>,
}

/// `server.tls.client_auth`: whether a client certificate is needed to connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsClientAuth {
    /// Asked for; a client without one connects (its cert-bound tokens are refused).
    Optional,
    /// No handshake without a certificate chained to `client_ca_file`.
    Required,
}

/// Server limits. Defaults are tighter than hyper's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time for a client to send a whole request head (slowloris), and the TLS handshake.
    pub header_read_timeout: Duration,
    /// Header count per request; more is 431.
    pub max_headers: usize,
    /// Total bytes of the request head; more is 431.
    pub max_header_bytes: usize,
    /// Bytes of the request target; more is 414.
    pub max_uri_length: usize,
    /// Open client connections at once; further connections wait in the listen backlog.
    pub max_connections: usize,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Default for a whole proxied exchange up to the response head (504 after).
    pub request_timeout: Duration,
    /// Longest pause while reading a request body (408 / connection reset after).
    pub body_read_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            max_uri_length: 8 * 1024,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            max_concurrent_streams: 128,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    ClientSecretBasic,
    ClientSecretPost,
    PrivateKeyJwt,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub issuer: String,
    pub ca_file: Option<PathBuf>,
    /// A bearer token (a Kubernetes service-account token) for this issuer's discovery
    /// and JWKS calls only.
    pub token_file: Option<PathBuf>,
    pub timeout: Duration,
    pub client_id: Option<String>,
    pub client_secret: Option<Secret<String>>,
    pub scopes: Vec<String>,
    pub extra_auth_params: Vec<(String, String)>,
    pub groups_claim: String,
    pub logout_url: Option<String>,
    pub client_auth: ClientAuth,
    pub private_key_file: Option<PathBuf>,
    /// ID-token audiences accepted beside `client_id` (OIDC Core 3.1.3.7 step 3: any other
    /// audience makes the ID token unacceptable). Default: none.
    pub trusted_audiences: Vec<String>,
    /// Back-channel logout tokens older than this (by `iat`) are refused. Default 5 minutes.
    pub logout_token_max_age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionSetting {
    Off,
    Opaque,
    Always,
    Userinfo,
}

#[derive(Debug, Clone)]
pub struct BearerSettings {
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub leeway: Duration,
    pub introspection: IntrospectionSetting,
    pub introspection_client_id: Option<String>,
    pub introspection_client_secret: Option<Secret<String>>,
    pub introspection_auth_post: bool,
    pub scopes_claims: Vec<String>,
    pub cache_ttl: Duration,
    pub cache_capacity: u64,
    pub shared_secret: Option<Secret<Vec<u8>>>,
    /// `bearer.dpop_nonce`: DPoP proofs must carry a nonce of ours (RFC 9449 §8).
    pub dpop_nonce: bool,
    /// `bearer.client_cert_header = "x-forwarded-client-cert"`: the client certificate of
    /// mTLS-bound tokens may come from that header (Envoy's format) when `trusted_proxies`
    /// sent it.
    pub client_cert_header: bool,
    pub issuers: Vec<ExtraIssuer>,
}

#[derive(Debug, Clone)]
pub struct ExtraIssuer {
    pub issuer: String,
    pub jwks_uri: Option<String>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub introspection_client_id: Option<String>,
    pub introspection_client_secret: Option<Secret<String>>,
    pub ca_file: Option<PathBuf>,
    /// As [`ProviderConfig::token_file`], for this issuer.
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStoreKind {
    Cookie,
    Redis,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub cookie_name: String,
    /// Decoded 32-byte keys; the first encrypts, all decrypt.
    pub secrets: Vec<Secret<[u8; 32]>>,
    pub lifetime: Duration,
    pub idle_timeout: Duration,
    pub store: SessionStoreKind,
    pub redis_url: Option<Secret<String>>,
    pub refresh: bool,
    pub domain: Option<String>,
    /// Where signed-out sessions, provider logouts and replay sets are kept.
    pub revocation: RevocationKind,
    /// `revocation = "memory"`: the file that keeps them across restarts.
    pub revocation_file: Option<PathBuf>,
    /// Entries before the set fails closed (raises a global not-before time).
    pub revocation_capacity: usize,
}

/// `session.revocation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationKind {
    /// In this process (persisted to `revocation_file` when set).
    Memory,
    /// In `session.redis_url`: shared by replicas, survives restarts.
    Redis,
}

/// Default `session.revocation_capacity`.
pub const DEFAULT_REVOCATION_CAPACITY: usize = 1_000_000;

/// What the revocation store is built from: `[session]`'s revocation keys, or the
/// in-memory default when there is no `[session]` (nothing to revoke then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationSettings {
    pub kind: RevocationKind,
    /// `session.redis_url` (with `kind = Redis`).
    pub redis_url: Option<Secret<String>>,
    pub file: Option<PathBuf>,
    pub capacity: usize,
}

impl Config {
    /// The revocation store's settings.
    pub fn revocation_settings(&self) -> RevocationSettings {
        match &self.session {
            Some(s) => RevocationSettings {
                kind: s.revocation,
                redis_url: match s.revocation {
                    RevocationKind::Redis => s.redis_url.clone(),
                    RevocationKind::Memory => None,
                },
                file: s.revocation_file.clone(),
                capacity: s.revocation_capacity,
            },
            None => RevocationSettings {
                kind: RevocationKind::Memory,
                redis_url: None,
                file: None,
                capacity: DEFAULT_REVOCATION_CAPACITY,
            },
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LoginConfig {
    pub allowed_redirect_hosts: Vec<String>,
}

/// The identity headers set on upstream requests, and the names stripped from every request.
#[derive(Debug, Clone)]
pub struct HeadersConfig {
    pub user: Option<HeaderName>,
    pub email: Option<HeaderName>,
    pub groups: Option<HeaderName>,
    pub preferred_username: Option<HeaderName>,
    pub name: Option<HeaderName>,
    pub scopes: Option<HeaderName>,
    pub access_token: Option<HeaderName>,
    pub pass_authorization: bool,
    pub claims: Vec<(Arc<str>, HeaderName)>,
    /// Every header name that this config or any preset may set, normalized
    /// (lowercase, `_` as `-`): stripped from every client request.
    pub strip: Vec<String>,
    /// `[headers] strip`: site-specific client headers to drop, beside the built-in
    /// identity headers of other proxies.
    pub strip_extra: Vec<NamePattern>,
    /// `[headers] keep_from_trusted`: foreign identity headers a trusted proxy may send.
    pub keep_from_trusted: Vec<NamePattern>,
}

impl HeadersConfig {
    /// The identity header names this config sets (access token header included).
    pub fn configured_names(&self) -> impl Iterator<Item = &HeaderName> {
        [
            &self.user,
            &self.email,
            &self.groups,
            &self.preferred_username,
            &self.name,
            &self.scopes,
            &self.access_token,
        ]
        .into_iter()
        .flatten()
        .chain(self.claims.iter().map(|(_, h)| h))
    }
}

/// `[assertion]`: how routes with `assertion = true` assert identity to their upstream.
#[derive(Debug, Clone)]
pub struct AssertionConfig {
    /// Default `X-Portcullis-Assertion`; stripped from every client request whether or not
    /// a route uses assertions.
    pub header: HeaderName,
    /// `aud` of every assertion; `None`: the route's name.
    pub audience: Option<String>,
    /// PEM private keys, the first signs; empty: derived from `session.secrets`.
    pub key_files: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub scheme: Scheme,
    pub authority: Authority,
    /// Path of the upstream URL without a trailing slash ("" for the root).
    pub base_path: String,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub h2: bool,
    pub preserve_host: bool,
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    /// How many ways the upstream may read a path (the path-reading rule).
    pub path_readings: PathReadings,
}

/// `[[upstream]] path_readings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathReadings {
    /// Every common reading of a path must satisfy the policy of the route it selects.
    Strict,
    /// The app reads paths exactly as routed: only the canonical path counts.
    Exact,
}

/// A header name pattern of `[headers] strip` / `keep_from_trusted`: normalized (lowercase,
/// `_` as `-`), a prefix when it ended in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    pub name: String,
    pub prefix: bool,
}

impl NamePattern {
    /// Does normalized header name `n` match?
    pub fn matches(&self, n: &str) -> bool {
        if self.prefix {
            n.starts_with(&self.name)
        } else {
            n == self.name
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Public,
    Bearer,
    Login,
    Either,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Public => "public",
            AuthMode::Bearer => "bearer",
            AuthMode::Login => "login",
            AuthMode::Either => "either",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowConfig {
    pub groups: Option<Vec<String>>,
    pub emails: Option<Vec<String>>,
    pub email_domains: Option<Vec<String>>,
    pub claims: Option<Vec<(String, Vec<String>)>>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Label in logs and metrics.
    pub name: Arc<str>,
    /// Lowercase host without port.
    pub host: Option<String>,
    /// Canonical prefix: starts with `/`, no trailing slash unless it is `/`.
    pub path: String,
    pub upstream: usize,
    pub auth: AuthMode,
    pub allow_preflight: bool,
    pub scopes: Vec<String>,
    pub method_scopes: Vec<(Method, Vec<String>)>,
    pub allow: Option<AllowConfig>,
    pub strip_prefix: bool,
    pub timeout: Duration,
    /// `require_sender_constraint`: plain bearer tokens refused (DPoP-bound ones only).
    pub require_sender_constraint: bool,
    /// Add the signed identity assertion (`[assertion]`) to the upstream request.
    pub assertion: bool,
}
