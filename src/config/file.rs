//! The serde mirror of the TOML file: every key, `deny_unknown_fields`, defaults in one place.
//! Nothing here is trusted: `validate.rs` turns it into the typed runtime `Config`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    pub provider: Option<ProviderFile>,
    pub bearer: Option<BearerFile>,
    pub session: Option<SessionFile>,
    pub login: Option<LoginFile>,
    #[serde(default)]
    pub headers: HeadersFile,
    #[serde(default)]
    pub assertion: AssertionFile,
    #[serde(default)]
    pub upstream: Vec<UpstreamFile>,
    #[serde(default)]
    pub route: Vec<RouteFile>,
    #[serde(default)]
    pub telemetry: TelemetryFile,
}

/// `[telemetry]`: OpenTelemetry traces over OTLP/HTTP.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFile {
    pub otlp_endpoint: Option<String>,
    pub sample_ratio: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub tls: Option<TlsFile>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub admin_listen: Option<String>,
    /// Bearer token required by state-changing admin endpoints (read at each request).
    pub admin_token_file: Option<String>,
    /// Worker threads (one single-threaded runtime each); default: the number of CPUs.
    pub workers: Option<usize>,
    /// Prefix of the proxy's own endpoints; default `/oauth2`.
    pub proxy_prefix: Option<String>,
    #[serde(default)]
    pub limits: LimitsFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// PEM CA certificates client certificates must chain to (RFC 8705 mTLS-bound tokens).
    pub client_ca_file: Option<String>,
    /// `optional` (default with `client_ca_file`) or `required`.
    pub client_auth: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub header_read_timeout: Option<String>,
    pub max_headers: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub max_uri_length: Option<usize>,
    pub max_connections: Option<usize>,
    pub idle_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    pub issuer: Option<String>,
    pub ca_file: Option<String>,
    pub token_file: Option<String>,
    pub timeout: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub scopes: Option<Vec<String>>,
    #[serde(default)]
    pub extra_auth_params: BTreeMap<String, String>,
    pub groups_claim: Option<String>,
    pub logout_url: Option<String>,
    pub client_auth: Option<String>,
    pub private_key_file: Option<String>,
    pub trusted_audiences: Option<Vec<String>>,
    /// Back-channel logout tokens: how old `iat` may be.
    pub logout_token_max_age: Option<String>,
    /// Refused unless "authorization_code": see validate.rs (RFC 9700).
    pub grant_type: Option<String>,
    pub response_type: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerFile {
    pub audiences: Option<Vec<String>>,
    pub algorithms: Option<Vec<String>>,
    pub leeway: Option<String>,
    pub introspection: Option<String>,
    pub introspection_client_id: Option<String>,
    pub introspection_client_secret: Option<String>,
    pub introspection_client_secret_file: Option<String>,
    pub introspection_auth: Option<String>,
    pub scopes_claims: Option<Vec<String>>,
    pub cache_ttl: Option<String>,
    pub cache_capacity: Option<u64>,
    pub shared_secret: Option<String>,
    pub shared_secret_file: Option<String>,
    /// RFC 9449 §8 server nonces in DPoP proofs.
    #[serde(default)]
    pub dpop_nonce: bool,
    /// `x-forwarded-client-cert`: the client certificate of mTLS-bound tokens (RFC 8705)
    /// as a trusted front proxy (Envoy) states it.
    pub client_cert_header: Option<String>,
    #[serde(default)]
    pub issuers: Vec<IssuerFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerFile {
    pub issuer: Option<String>,
    pub jwks_uri: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub algorithms: Option<Vec<String>>,
    pub introspection_client_id: Option<String>,
    pub introspection_client_secret: Option<String>,
    pub introspection_client_secret_file: Option<String>,
    pub ca_file: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionFile {
    pub cookie_name: Option<String>,
    pub secrets: Option<Vec<String>>,
    pub secrets_file: Option<String>,
    pub lifetime: Option<String>,
    pub idle_timeout: Option<String>,
    pub store: Option<String>,
    pub redis_url: Option<String>,
    pub refresh: Option<bool>,
    pub domain: Option<String>,
    /// `"memory"` or `"redis"`; default: redis when `redis_url` is set.
    pub revocation: Option<String>,
    /// memory: where revocations are kept across restarts.
    pub revocation_file: Option<String>,
    /// Entries before failing closed (a global not-before time).
    pub revocation_capacity: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginFile {
    #[serde(default)]
    pub allowed_redirect_hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersFile {
    pub preset: Option<String>,
    pub user: Option<String>,
    pub email: Option<String>,
    pub groups: Option<String>,
    pub preferred_username: Option<String>,
    pub name: Option<String>,
    pub scopes: Option<String>,
    pub access_token: Option<String>,
    #[serde(default)]
    pub pass_authorization: bool,
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// Site-specific client headers to drop (exact names, or a prefix ending in `*`).
    #[serde(default)]
    pub strip: Vec<String>,
    /// Foreign identity headers kept when a trusted proxy sends them (exact, or `prefix*`).
    #[serde(default)]
    pub keep_from_trusted: Vec<String>,
}

/// `[assertion]`: the signed identity assertion of routes with `assertion = true`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionFile {
    pub header: Option<String>,
    pub audience: Option<String>,
    /// PEM private keys; the first signs, all are published. Default: derived from the
    /// session secrets.
    pub key_file: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub name: Option<String>,
    pub url: Option<String>,
    pub ca_file: Option<String>,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
    #[serde(default)]
    pub h2: bool,
    pub preserve_host: Option<bool>,
    pub connect_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle: Option<usize>,
    /// `"strict"` (default) or `"exact"`.
    pub path_readings: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub upstream: Option<String>,
    pub auth: Option<String>,
    #[serde(default)]
    pub allow_preflight: bool,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub method_scopes: BTreeMap<String, Vec<String>>,
    pub allow: Option<AllowFile>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub timeout: Option<String>,
    /// Only DPoP-bound tokens (RFC 9449) on this route; plain bearer tokens are refused.
    #[serde(default)]
    pub require_sender_constraint: bool,
    /// Add the signed identity assertion to the upstream request.
    #[serde(default)]
    pub assertion: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowFile {
    pub groups: Option<Vec<String>>,
    pub emails: Option<Vec<String>>,
    pub email_domains: Option<Vec<String>>,
    pub claims: Option<BTreeMap<String, Vec<String>>>,
}
