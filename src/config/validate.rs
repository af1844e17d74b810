//! FileConfig -> Config: `${ENV}` expansion, `*_file` secrets, defaults, cross-field checks.
//! Validation collects every problem it finds; each names its key.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::header::HeaderName;
use http::Method;
use ipnet::IpNet;

use super::file::*;
use super::types::*;
use super::{ConfigError, ConfigErrors, Secret};
use crate::path::{normalize_host, normalize_path, prefix_matches};

/// Header names of every preset; all of them are stripped from client requests whatever
/// the preset in use, so that switching presets never opens a spoofing hole.
pub const PRESET_AUTH_REQUEST: [&str; 6] = [
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-scopes",
    "x-auth-request-access-token",
];
pub const PRESET_FORWARDED: [&str; 5] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
];
pub const PRESET_REMOTE: [&str; 4] = [
    "remote-user",
    "remote-email",
    "remote-groups",
    "remote-name",
];

const KNOWN_ALGORITHMS: [&str; 12] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
    "HS384", "HS512",
];

type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

struct Ctx<'a> {
    errors: Vec<ConfigError>,
    base_dir: &'a Path,
}

impl Ctx<'_> {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, value: Option<&str>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(v) => match humantime::parse_duration(v.trim()) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    self.err(key, "must be greater than zero");
                    default
                }
                Err(_) => {
                    self.err(
                        key,
                        format!("{v:?} is not a duration (examples: \"30s\", \"5m\", \"8h\")"),
                    );
                    default
                }
            },
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn existing_file(&mut self, key: &str, p: &Option<String>) -> Option<PathBuf> {
        let p = p.as_deref()?;
        let path = self.path(p);
        if !path.is_file() {
            self.err(key, format!("file {} does not exist", path.display()));
        }
        Some(path)
    }

    /// A secret given inline (`key`) or as a file (`key_file`), never both.
    fn secret(
        &mut self,
        key: &str,
        inline: &Option<String>,
        file: &Option<String>,
    ) -> Option<Secret<String>> {
        match (inline, file) {
            (Some(_), Some(_)) => {
                self.err(key, format!("set either {key} or {key}_file, not both"));
                None
            }
            (Some(v), None) => Some(Secret::new(v.clone())),
            (None, Some(f)) => {
                let path = self.path(f);
                match std::fs::read_to_string(&path) {
                    Ok(s) => Some(Secret::new(s.trim_end_matches(['\n', '\r']).to_string())),
                    Err(e) => {
                        self.err(
                            format!("{key}_file"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            (None, None) => None,
        }
    }
}

pub(super) fn from_toml(
    text: &str,
    base_dir: &Path,
    env: EnvLookup<'_>,
) -> Result<Config, ConfigErrors> {
    let mut value: toml::Table = toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" line {line}, column {col}:")
            })
            .unwrap_or_default();
        ConfigErrors::one("", format!("not valid TOML:{at} {}", e.message()))
    })?;
    let mut errors = Vec::new();
    for (k, v) in value.iter_mut() {
        expand_env(k, v, env, &mut errors);
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let file: FileConfig =
        serde_path_to_error::deserialize(toml::Value::Table(value)).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            ConfigErrors::one(key, e.into_inner().message().to_string())
        })?;
    validate(file, base_dir)
}

/// Replaces `${NAME}` in every string value; `$$` stands for a literal `$`.
fn expand_env(key: &str, v: &mut toml::Value, env: EnvLookup<'_>, errors: &mut Vec<ConfigError>) {
    match v {
        toml::Value::String(s) if s.contains('$') => match expand_str(s, env) {
            Ok(out) => *s = out,
            Err(message) => errors.push(ConfigError {
                key: key.to_string(),
                message,
            }),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_env(&format!("{key}[{i}]"), item, env, errors);
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                expand_env(&format!("{key}.{k}"), item, env, errors);
            }
        }
        _ => {}
    }
}

fn expand_str(s: &str, env: EnvLookup<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| "unterminated ${...} reference".to_string())?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "${{{name}}} is not a valid environment variable reference"
                ));
            }
            match env(name) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("environment variable {name} is not set")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn validate(f: FileConfig, base_dir: &Path) -> Result<Config, ConfigErrors> {
    let mut cx = Ctx {
        errors: Vec::new(),
        base_dir,
    };
    let server = server(&mut cx, &f.server);
    let provider = f.provider.as_ref().map(|p| provider(&mut cx, p));
    let bearer = f
        .bearer
        .as_ref()
        .map(|b| bearer(&mut cx, b, provider.as_ref()));
    let session = f.session.as_ref().map(|s| session(&mut cx, s));
    let login = LoginConfig {
        allowed_redirect_hosts: f
            .login
            .as_ref()
            .map(|l| {
                l.allowed_redirect_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default(),
    };
    let assertion = assertion(&mut cx, &f.assertion);
    let headers = headers(&mut cx, &f.headers, &assertion.header);
    let upstreams = upstreams(&mut cx, &f.upstream);
    let declared: Vec<&str> = f
        .upstream
        .iter()
        .filter_map(|u| u.name.as_deref())
        .collect();
    let mut routes = routes(&mut cx, &f.route, &upstreams, &declared);
    let telemetry = telemetry(&mut cx, &f.telemetry);
    for r in &mut routes {
        if r.timeout.is_zero() {
            r.timeout = server.limits.request_timeout;
        }
    }

    // Cross-field: what each auth mode needs.
    for (i, r) in routes.iter().enumerate() {
        let key = format!("route[{i}].auth");
        match r.auth {
            AuthMode::Public => {}
            AuthMode::Bearer | AuthMode::Login | AuthMode::Either => {
                if !SUPPORTED_AUTH.contains(&r.auth) {
                    cx.err(
                        &key,
                        format!(
                            "auth = \"{}\" is not supported by this build yet; refusing to start \
                             rather than serve the route without it",
                            r.auth.as_str()
                        ),
                    );
                    continue;
                }
                if matches!(r.auth, AuthMode::Bearer | AuthMode::Either) {
                    if bearer.is_none() {
                        cx.err(
                            &key,
                            "bearer tokens need a [bearer] section (at least its audiences)",
                        );
                    } else if provider.is_none()
                        && bearer.as_ref().is_none_or(|b| b.issuers.is_empty())
                    {
                        cx.err(
                            &key,
                            "bearer tokens need [provider].issuer or at least one [[bearer.issuers]]",
                        );
                    }
                }
                if matches!(r.auth, AuthMode::Login | AuthMode::Either) {
                    if server.public_url.is_none() {
                        cx.err(
                            &key,
                            "login needs server.public_url (it builds the redirect_uri)",
                        );
                    }
                    match &provider {
                        None => cx.err(&key, "login needs a [provider] section"),
                        Some(p) => {
                            if p.client_id.is_none() {
                                cx.err(&key, "login needs provider.client_id");
                            }
                            let secret_file_given = f
                                .provider
                                .as_ref()
                                .is_some_and(|p| p.client_secret_file.is_some());
                            if p.client_auth != ClientAuth::PrivateKeyJwt
                                && p.client_secret.is_none()
                                && !secret_file_given
                            {
                                cx.err(
                                    &key,
                                    "login needs provider.client_secret (or client_secret_file)",
                                );
                            }
                        }
                    }
                    if session.is_none() {
                        cx.err(&key, "login needs a [session] section with secrets");
                    }
                }
            }
        }
    }

    // Cross-field: what the identity assertion needs.
    if let Some(i) = routes.iter().position(|r| r.assertion) {
        if server.public_url.is_none() {
            cx.err(
                "server.public_url",
                format!(
                    "is required when a route sets assertion = true (route[{i}]): it is the \
                     assertion's iss"
                ),
            );
        }
        if assertion.key_files.is_empty() && session.is_none() {
            cx.err(
                "assertion.key_file",
                format!(
                    "route[{i}] sets assertion = true: give [assertion] key_file, or \
                     [session] secrets to derive the keys from"
                ),
            );
        }
    }
    for (i, r) in routes.iter().enumerate() {
        if r.assertion && r.auth == AuthMode::Public {
            cx.err(
                format!("route[{i}].assertion"),
                "a public route has no identity to assert",
            );
        }
    }

    if cx.errors.is_empty() {
        Ok(Config {
            server,
            provider,
            bearer,
            session,
            login,
            headers,
            assertion,
            upstreams,
            routes,
            telemetry,
        })
    } else {
        Err(ConfigErrors(cx.errors))
    }
}

/// The auth modes this build can enforce. A route with any other mode is refused at
/// `check` and at start: never served as if it were public.
pub const SUPPORTED_AUTH: &[AuthMode] = &[
    AuthMode::Public,
    AuthMode::Bearer,
    AuthMode::Login,
    AuthMode::Either,
];

fn server(cx: &mut Ctx<'_>, s: &ServerFile) -> ServerConfig {
    let listen = socket_addr(cx, "server.listen", s.listen.as_deref(), "127.0.0.1:8080");
    let admin_listen = match s.admin_listen.as_deref() {
        Some("") | Some("off") => None,
        other => Some(socket_addr(
            cx,
            "server.admin_listen",
            other,
            "127.0.0.1:9090",
        )),
    };
    let public_url = s
        .public_url
        .as_deref()
        .and_then(|u| match url::Url::parse(u) {
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.host_str().is_some()
                    && url.query().is_none()
                    && url.fragment().is_none()
                    && url.username().is_empty() =>
            {
                Some(url)
            }
            Ok(_) => {
                cx.err(
                    "server.public_url",
                    "must be an http(s) URL with a host and no query, fragment or user info",
                );
                None
            }
            Err(e) => {
                cx.err("server.public_url", format!("not a valid URL: {e}"));
                None
            }
        });
    let tls = s.tls.as_ref().and_then(|t| {
        let cert = cx.existing_file("server.tls.cert_file", &t.cert_file);
        let key = cx.existing_file("server.tls.key_file", &t.key_file);
        let client_ca = client_ca(cx, t);
        match (cert, key) {
            (Some(cert_file), Some(key_file)) => Some(TlsFiles {
                cert_file,
                key_file,
                client_ca,
            }),
            _ => {
                cx.err("server.tls", "needs both cert_file and key_file");
                None
            }
        }
    });
    let mut trusted_proxies = Vec::new();
    for (i, p) in s.trusted_proxies.iter().enumerate() {
        match parse_net(p) {
            Some(n) => trusted_proxies.push(n),
            None => cx.err(
                format!("server.trusted_proxies[{i}]"),
                format!("{p:?} is not an IP address or CIDR range"),
            ),
        }
    }
    let workers = match s.workers {
        Some(0) => {
            cx.err("server.workers", "must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    };
    let proxy_prefix = s.proxy_prefix.clone().unwrap_or_else(|| "/oauth2".into());
    if !proxy_prefix.starts_with('/')
        || proxy_prefix.len() < 2
        || proxy_prefix.ends_with('/')
        || normalize_path(&proxy_prefix).ok().as_deref() != Some(proxy_prefix.as_str())
    {
        cx.err(
            "server.proxy_prefix",
            "must be a canonical path like \"/oauth2\" (leading slash, no trailing slash)",
        );
    }
    let d = Limits::default();
    let l = &s.limits;
    let limits = Limits {
        header_read_timeout: cx.duration(
            "server.limits.header_read_timeout",
            l.header_read_timeout.as_deref(),
            d.header_read_timeout,
        ),
        max_headers: bounded(
            cx,
            "server.limits.max_headers",
            l.max_headers,
            d.max_headers,
            8,
            1024,
        ),
        max_header_bytes: bounded(
            cx,
            "server.limits.max_header_bytes",
            l.max_header_bytes,
            d.max_header_bytes,
            1024,
            1024 * 1024,
        ),
        max_uri_length: bounded(
            cx,
            "server.limits.max_uri_length",
            l.max_uri_length,
            d.max_uri_length,
            64,
            1024 * 1024,
        ),
        max_connections: bounded(
            cx,
            "server.limits.max_connections",
            l.max_connections,
            d.max_connections,
            1,
            10_000_000,
        ),
        idle_timeout: cx.duration(
            "server.limits.idle_timeout",
            l.idle_timeout.as_deref(),
            d.idle_timeout,
        ),
        request_timeout: cx.duration(
            "server.limits.request_timeout",
            l.request_timeout.as_deref(),
            d.request_timeout,
        ),
        body_read_timeout: cx.duration(
            "server.limits.body_read_timeout",
            l.body_read_timeout.as_deref(),
            d.body_read_timeout,
        ),
        drain_timeout: cx.duration(
            "server.limits.drain_timeout",
            l.drain_timeout.as_deref(),
            d.drain_timeout,
        ),
        max_concurrent_streams: bounded(
            cx,
            "server.limits.max_concurrent_streams",
            l.max_concurrent_streams.map(|v| v as usize),
            d.max_concurrent_streams as usize,
            1,
            10_000,
        ) as u32,
    };
    let admin_token_file = cx.existing_file("server.admin_token_file", &s.admin_token_file);
    ServerConfig {
        listen,
        public_url,
        tls,
        trusted_proxies,
        admin_listen,
        admin_token_file,
        workers,
        proxy_prefix,
        limits,
    }
}

fn bounded(
    cx: &mut Ctx<'_>,
    key: &str,
    v: Option<usize>,
    default: usize,
    min: usize,
    max: usize,
) -> usize {
    match v {
        None => default,
        Some(v) if v < min || v > max => {
            cx.err(key, format!("{v} is out of range ({min} to {max})"));
            default
        }
        Some(v) => v,
    }
}

fn socket_addr(cx: &mut Ctx<'_>, key: &str, v: Option<&str>, default: &str) -> SocketAddr {
    let v = v.unwrap_or(default);
    match v.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            cx.err(
                key,
                format!("{v:?} is not an IP:port address (e.g. \"0.0.0.0:8080\")"),
            );
            // Unreachable in a valid config: validation fails as a whole.
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    }
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

fn provider(cx: &mut Ctx<'_>, p: &ProviderFile) -> ProviderConfig {
    let issuer = match p.issuer.as_deref() {
        None => {
            cx.err("provider.issuer", "is required");
            String::new()
        }
        Some(i) => {
            match url::Url::parse(i) {
                Ok(u) if u.scheme() == "https" || is_loopback_http(&u) => {
                    if u.query().is_some() || u.fragment().is_some() {
                        cx.err("provider.issuer", "must not have a query or fragment");
                    }
                }
                Ok(_) => cx.err(
                    "provider.issuer",
                    "must be an https URL (plain http is allowed only for 127.0.0.1/localhost)",
                ),
                Err(e) => cx.err("provider.issuer", format!("not a valid URL: {e}")),
            }
            i.to_string()
        }
    };
    // RFC 9700 §2.1.2 / §2.4: the implicit and resource-owner password grants are not offered.
    for (key, v) in [
        ("provider.grant_type", &p.grant_type),
        ("provider.response_type", &p.response_type),
    ] {
        match v.as_deref() {
            None | Some("authorization_code") | Some("code") => {}
            Some("implicit") | Some("token") | Some("id_token") | Some("id_token token") => cx.err(
                key,
                "the implicit grant is not supported: it exposes tokens in the browser and \
                 cannot be sender-constrained (RFC 9700 §2.1.2); use the authorization code \
                 flow with PKCE, which portcullis always does (remove this key)",
            ),
            Some("password") => cx.err(
                key,
                "the resource owner password credentials grant must not be used (RFC 9700 §2.4): \
                 it hands user passwords to the client; use the authorization code flow for \
                 people and client_credentials for machines (remove this key)",
            ),
            Some(other) => cx.err(
                key,
                format!("{other:?} is not supported; portcullis uses the authorization code flow with PKCE"),
            ),
        }
    }
    let client_auth = match p.client_auth.as_deref() {
        None | Some("client_secret_basic") => ClientAuth::ClientSecretBasic,
        Some("client_secret_post") => ClientAuth::ClientSecretPost,
        Some("private_key_jwt") => ClientAuth::PrivateKeyJwt,
        Some(o) => {
            cx.err(
                "provider.client_auth",
                format!(
                    "{o:?} is not one of client_secret_basic, client_secret_post, private_key_jwt"
                ),
            );
            ClientAuth::ClientSecretBasic
        }
    };
    let private_key_file = cx.existing_file("provider.private_key_file", &p.private_key_file);
    if client_auth == ClientAuth::PrivateKeyJwt && private_key_file.is_none() {
        cx.err(
            "provider.private_key_file",
            "is required with client_auth = \"private_key_jwt\"",
        );
    }
    let client_secret = cx.secret(
        "provider.client_secret",
        &p.client_secret,
        &p.client_secret_file,
    );
    if let Some(tpl) = &p.logout_url {
        if url::Url::parse(tpl).is_err() {
            cx.err("provider.logout_url", "not a valid URL template");
        }
    }
    let trusted_audiences = p.trusted_audiences.clone().unwrap_or_default();
    for (i, a) in trusted_audiences.iter().enumerate() {
        let key = format!("provider.trusted_audiences[{i}]");
        if a.trim().is_empty() {
            cx.err(key, "must not be empty");
        } else if p.client_id.as_deref() == Some(a.as_str()) {
            cx.err(
                key,
                "is provider.client_id, which an ID token's aud must always contain; \
                 list only the other audiences to accept",
            );
        } else if trusted_audiences[..i].contains(a) {
            cx.err(key, format!("{a:?} is listed twice"));
        }
    }
    ProviderConfig {
        issuer,
        ca_file: cx.existing_file("provider.ca_file", &p.ca_file),
        token_file: cx.existing_file("provider.token_file", &p.token_file),
        timeout: cx.duration(
            "provider.timeout",
            p.timeout.as_deref(),
            Duration::from_secs(10),
        ),
        client_id: p.client_id.clone(),
        client_secret,
        scopes: p
            .scopes
            .clone()
            .unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()]),
        extra_auth_params: p
            .extra_auth_params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        groups_claim: p.groups_claim.clone().unwrap_or_else(|| "groups".into()),
        logout_url: p.logout_url.clone(),
        client_auth,
        private_key_file,
        trusted_audiences,
        logout_token_max_age: cx.duration(
            "provider.logout_token_max_age",
            p.logout_token_max_age.as_deref(),
            Duration::from_secs(300),
        ),
    }
}

/// `[telemetry]`. The endpoint is a base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` is for the
/// OpenTelemetry exporters: traces are sent to its path + `/v1/traces` (unless the path
/// already ends so). Plain http is allowed (a collector beside the proxy usually is).
fn telemetry(cx: &mut Ctx<'_>, t: &TelemetryFile) -> TelemetryConfig {
    let mut out = TelemetryConfig::default();
    if let Some(e) = t.otlp_endpoint.as_deref() {
        let key = "telemetry.otlp_endpoint";
        match url::Url::parse(e.trim()) {
            Ok(u) if !matches!(u.scheme(), "http" | "https") || u.host().is_none() => {
                cx.err(key, "must be an http:// or https:// URL with a host")
            }
            Ok(u) if u.query().is_some() || u.fragment().is_some() => {
                cx.err(key, "must not have a query or fragment")
            }
            Ok(u) if !u.username().is_empty() || u.password().is_some() => cx.err(
                key,
                "must not carry credentials (they would show wherever the URL is logged)",
            ),
            Ok(mut u) => {
                if !u.path().ends_with("/v1/traces") {
                    let path = format!("{}/v1/traces", u.path().trim_end_matches('/'));
                    u.set_path(&path);
                }
                match u.as_str().parse::<http::Uri>() {
                    Ok(uri) => out.otlp_traces_url = Some(uri),
                    Err(e) => cx.err(key, format!("not a valid URL: {e}")),
                }
            }
            Err(e) => cx.err(key, format!("not a valid URL: {e}")),
        }
    }
    if let Some(r) = t.sample_ratio {
        if (0.0..=1.0).contains(&r) {
            out.sample_ratio = r;
        } else {
            cx.err(
                "telemetry.sample_ratio",
                format!("{r} is not between 0.0 and 1.0"),
            );
        }
    }
    out
}

fn is_loopback_http(u: &url::Url) -> bool {
    u.scheme() == "http"
        && match u.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            None => false,
        }
}

fn algorithms(
    cx: &mut Ctx<'_>,
    key: &str,
    v: &Option<Vec<String>>,
    hs_allowed: bool,
) -> Vec<String> {
    let list = v.clone().unwrap_or_else(|| {
        [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
        ]
        .map(String::from)
        .to_vec()
    });
    if list.is_empty() {
        cx.err(key, "must list at least one algorithm");
    }
    for (i, a) in list.iter().enumerate() {
        if a.eq_ignore_ascii_case("none") {
            // RFC 8725 §3.2: never accept unsigned tokens.
            cx.err(
                format!("{key}[{i}]"),
                "\"none\" is never accepted: tokens must be signed",
            );
        } else if !KNOWN_ALGORITHMS.contains(&a.as_str()) {
            cx.err(
                format!("{key}[{i}]"),
                format!(
                    "unknown algorithm {a:?} (one of {})",
                    KNOWN_ALGORITHMS.join(", ")
                ),
            );
        } else if a.starts_with("HS") && !hs_allowed {
            cx.err(
                format!("{key}[{i}]"),
                format!("{a} needs bearer.shared_secret (HMAC algorithms are only accepted with an explicit shared key)"),
            );
        }
    }
    list
}

fn bearer(cx: &mut Ctx<'_>, b: &BearerFile, provider: Option<&ProviderConfig>) -> BearerSettings {
    let shared = cx.secret(
        "bearer.shared_secret",
        &b.shared_secret,
        &b.shared_secret_file,
    );
    let shared_secret = shared.map(|s| Secret::new(s.expose().as_bytes().to_vec()));
    if let Some(s) = &shared_secret {
        if s.expose().len() < 32 {
            cx.err("bearer.shared_secret", "must be at least 32 bytes");
        }
    }
    let algs = algorithms(
        cx,
        "bearer.algorithms",
        &b.algorithms,
        shared_secret.is_some(),
    );
    let introspection = match b.introspection.as_deref() {
        None | Some("off") => IntrospectionSetting::Off,
        Some("opaque") => IntrospectionSetting::Opaque,
        Some("always") => IntrospectionSetting::Always,
        Some("userinfo") => IntrospectionSetting::Userinfo,
        Some(o) => {
            cx.err(
                "bearer.introspection",
                format!("{o:?} is not one of off, opaque, always, userinfo"),
            );
            IntrospectionSetting::Off
        }
    };
    let introspection_auth_post = match b.introspection_auth.as_deref() {
        None | Some("client_secret_basic") => false,
        Some("client_secret_post") => true,
        Some(o) => {
            cx.err(
                "bearer.introspection_auth",
                format!("{o:?} is not one of client_secret_basic, client_secret_post"),
            );
            false
        }
    };
    let introspection_client_secret = cx.secret(
        "bearer.introspection_client_secret",
        &b.introspection_client_secret,
        &b.introspection_client_secret_file,
    );
    if matches!(
        introspection,
        IntrospectionSetting::Opaque | IntrospectionSetting::Always
    ) {
        let id = b
            .introspection_client_id
            .as_ref()
            .or(provider.and_then(|p| p.client_id.as_ref()));
        let secret = introspection_client_secret
            .as_ref()
            .or(provider.and_then(|p| p.client_secret.as_ref()));
        if id.is_none() || secret.is_none() {
            cx.err(
                "bearer.introspection",
                "RFC 7662 introspection needs bearer.introspection_client_id and \
                 introspection_client_secret (or provider.client_id and client_secret)",
            );
        }
        if provider.is_none() {
            cx.err(
                "bearer.introspection",
                "needs a [provider] whose discovery names the introspection endpoint",
            );
        }
    }
    let audiences = b.audiences.clone().unwrap_or_default();
    if provider.is_some() && audiences.is_empty() {
        cx.err(
            "bearer.audiences",
            "must list at least one audience: a token meant for another API must not pass",
        );
    }
    let mut issuers = Vec::new();
    let mut seen = HashSet::new();
    if let Some(p) = provider {
        seen.insert(p.issuer.clone());
    }
    for (i, it) in b.issuers.iter().enumerate() {
        let key = format!("bearer.issuers[{i}]");
        let Some(issuer) = it.issuer.clone() else {
            cx.err(format!("{key}.issuer"), "is required");
            continue;
        };
        if !seen.insert(issuer.clone()) {
            cx.err(
                format!("{key}.issuer"),
                format!("issuer {issuer:?} is configured twice"),
            );
        }
        if let Some(j) = &it.jwks_uri {
            if url::Url::parse(j).is_err() {
                cx.err(format!("{key}.jwks_uri"), "not a valid URL");
            }
        }
        let audiences = it.audiences.clone().unwrap_or_default();
        if audiences.is_empty() {
            cx.err(
                format!("{key}.audiences"),
                "must list at least one audience",
            );
        }
        issuers.push(ExtraIssuer {
            issuer,
            jwks_uri: it.jwks_uri.clone(),
            audiences,
            algorithms: algorithms(cx, &format!("{key}.algorithms"), &it.algorithms, false),
            introspection_client_id: it.introspection_client_id.clone(),
            introspection_client_secret: cx.secret(
                &format!("{key}.introspection_client_secret"),
                &it.introspection_client_secret,
                &it.introspection_client_secret_file,
            ),
            ca_file: cx.existing_file(&format!("{key}.ca_file"), &it.ca_file),
            token_file: cx.existing_file(&format!("{key}.token_file"), &it.token_file),
        });
    }
    let cache_capacity = b.cache_capacity.unwrap_or(100_000);
    if cache_capacity == 0 {
        cx.err("bearer.cache_capacity", "must be at least 1");
    }
    BearerSettings {
        audiences,
        algorithms: algs,
        leeway: match b.leeway.as_deref() {
            Some("0") | Some("0s") => Duration::ZERO,
            other => cx.duration("bearer.leeway", other, Duration::from_secs(30)),
        },
        introspection,
        introspection_client_id: b.introspection_client_id.clone(),
        introspection_client_secret,
        introspection_auth_post,
        scopes_claims: b
            .scopes_claims
            .clone()
            .unwrap_or_else(|| vec!["scope".into(), "scp".into()]),
        cache_ttl: cx.duration(
            "bearer.cache_ttl",
            b.cache_ttl.as_deref(),
            Duration::from_secs(300),
        ),
        cache_capacity,
        shared_secret,
        dpop_nonce: b.dpop_nonce,
        client_cert_header: match b.client_cert_header.as_deref() {
            None => false,
            Some(h) if h.eq_ignore_ascii_case(XFCC) => true,
            Some(_) => {
                cx.err(
                    "bearer.client_cert_header",
                    format!("only \"{XFCC}\" (Envoy's format) is supported"),
                );
                false
            }
        },
        issuers,
    }
}

/// The one client certificate header `bearer.client_cert_header` accepts.
const XFCC: &str = "x-forwarded-client-cert";

/// `server.tls.client_ca_file` and `client_auth` (RFC 8705 mTLS-bound tokens).
fn client_ca(cx: &mut Ctx<'_>, t: &TlsFile) -> Option<(PathBuf, TlsClientAuth)> {
    let auth = match t.client_auth.as_deref() {
        None | Some("optional") => TlsClientAuth::Optional,
        Some("required") => TlsClientAuth::Required,
        Some(other) => {
            cx.err(
                "server.tls.client_auth",
                format!("must be \"optional\" or \"required\", not {other:?}"),
            );
            TlsClientAuth::Optional
        }
    };
    match (&t.client_ca_file, &t.client_auth) {
        (Some(_), _) => Some((
            cx.existing_file("server.tls.client_ca_file", &t.client_ca_file)?,
            auth,
        )),
        (None, Some(_)) => {
            cx.err(
                "server.tls.client_auth",
                "needs server.tls.client_ca_file (the CAs client certificates chain to)",
            );
            None
        }
        (None, None) => None,
    }
}

fn session(cx: &mut Ctx<'_>, s: &SessionFile) -> SessionConfig {
    let mut raw: Vec<String> = s.secrets.clone().unwrap_or_default();
    if let Some(f) = &s.secrets_file {
        let path = cx.path(f);
        match std::fs::read_to_string(&path) {
            Ok(t) => raw.extend(
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            ),
            Err(e) => cx.err(
                "session.secrets_file",
                format!("cannot read {}: {e}", path.display()),
            ),
        }
    }
    if raw.is_empty() && s.secrets_file.is_none() {
        cx.err(
            "session.secrets",
            "at least one secret is required (32 random bytes, base64; e.g. `openssl rand -base64 32`)",
        );
    }
    let mut secrets = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(r.trim())
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(r.trim()));
        match decoded
            .ok()
            .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
        {
            Some(k) => secrets.push(Secret::new(k)),
            None => cx.err(
                format!("session.secrets[{i}]"),
                "must be 32 bytes encoded as base64 (e.g. `openssl rand -base64 32`)",
            ),
        }
    }
    let store = match s.store.as_deref() {
        None | Some("cookie") => SessionStoreKind::Cookie,
        Some("redis") => SessionStoreKind::Redis,
        Some(o) => {
            cx.err(
                "session.store",
                format!("{o:?} is not one of cookie, redis"),
            );
            SessionStoreKind::Cookie
        }
    };
    if store == SessionStoreKind::Redis && s.redis_url.is_none() {
        cx.err("session.redis_url", "is required with store = \"redis\"");
    }
    let revocation = match s.revocation.as_deref() {
        None if s.redis_url.is_some() => RevocationKind::Redis,
        None | Some("memory") => RevocationKind::Memory,
        Some("redis") => RevocationKind::Redis,
        Some(o) => {
            cx.err(
                "session.revocation",
                format!("{o:?} is not one of memory, redis"),
            );
            RevocationKind::Memory
        }
    };
    match revocation {
        RevocationKind::Redis if s.redis_url.is_none() => cx.err(
            "session.revocation",
            "\"redis\" keeps revocations in session.redis_url, which is not set",
        ),
        RevocationKind::Memory if store == SessionStoreKind::Redis => cx.err(
            "session.revocation",
            "\"memory\" with store = \"redis\": sessions would be shared by replicas but \
             sign-outs would not; remove the key (the Redis store revokes in Redis)",
        ),
        _ => {}
    }
    let revocation_file = s.revocation_file.as_deref().map(|f| {
        let path = cx.path(f);
        if revocation == RevocationKind::Redis {
            cx.err(
                "session.revocation_file",
                "only with revocation = \"memory\" (Redis keeps revocations itself)",
            );
        } else if !path
            .parent()
            .is_some_and(|d| d.as_os_str().is_empty() || d.is_dir())
        {
            cx.err(
                "session.revocation_file",
                format!("the directory of {} does not exist", path.display()),
            );
        } else if path.is_dir() {
            cx.err(
                "session.revocation_file",
                format!("{} is a directory", path.display()),
            );
        }
        path
    });
    let revocation_capacity = bounded(
        cx,
        "session.revocation_capacity",
        s.revocation_capacity,
        DEFAULT_REVOCATION_CAPACITY,
        1,
        1_000_000_000,
    );
    let cookie_name = s
        .cookie_name
        .clone()
        .unwrap_or_else(|| "_portcullis".into());
    if cookie_name.is_empty()
        || !cookie_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        cx.err(
            "session.cookie_name",
            "must be letters, digits, '_', '-' or '.'",
        );
    }
    SessionConfig {
        cookie_name,
        secrets,
        lifetime: cx.duration(
            "session.lifetime",
            s.lifetime.as_deref(),
            Duration::from_secs(8 * 3600),
        ),
        idle_timeout: cx.duration(
            "session.idle_timeout",
            s.idle_timeout.as_deref(),
            Duration::from_secs(3600),
        ),
        store,
        redis_url: s.redis_url.clone().map(Secret::new),
        refresh: s.refresh.unwrap_or(true),
        domain: s.domain.clone(),
        revocation,
        revocation_file,
        revocation_capacity,
    }
}

/// Header names compared as the strip rule compares them: lowercase, `_` as `-`.
pub fn normalize_header_name(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b == b'_' {
                '-'
            } else {
                b.to_ascii_lowercase() as char
            }
        })
        .collect()
}

/// Names the proxy must never be asked to set as identity headers.
const RESERVED_HEADERS: [&str; 14] = [
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "te",
    "upgrade",
    "cookie",
    "set-cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
    "keep-alive",
    "proxy-authorization",
];

/// The default `[assertion] header`.
pub const ASSERTION_HEADER: &str = "X-Portcullis-Assertion";

fn assertion(cx: &mut Ctx<'_>, a: &AssertionFile) -> AssertionConfig {
    let raw = a.header.as_deref().unwrap_or(ASSERTION_HEADER);
    let header = match HeaderName::from_bytes(raw.as_bytes()) {
        Ok(n) => {
            let norm = normalize_header_name(n.as_str());
            if RESERVED_HEADERS.contains(&norm.as_str())
                || norm == "authorization"
                || SET_BY_PROXY.contains(&norm.as_str())
            {
                cx.err(
                    "assertion.header",
                    format!("{raw:?} is reserved and cannot carry the assertion"),
                );
            }
            n
        }
        Err(_) => {
            cx.err(
                "assertion.header",
                format!("{raw:?} is not a valid header name"),
            );
            HeaderName::from_static("x-portcullis-assertion")
        }
    };
    if a.audience.as_deref().is_some_and(|s| s.trim().is_empty()) {
        cx.err("assertion.audience", "must not be empty");
    }
    let mut key_files = Vec::new();
    if let Some(list) = &a.key_file {
        if list.is_empty() {
            cx.err(
                "assertion.key_file",
                "is empty: list PEM files, or leave it out to derive the keys from the session secrets",
            );
        }
        for (i, f) in list.iter().enumerate() {
            if let Some(p) = cx.existing_file(&format!("assertion.key_file[{i}]"), &Some(f.clone()))
            {
                key_files.push(p);
            }
        }
    }
    AssertionConfig {
        header,
        audience: a.audience.clone(),
        key_files,
    }
}

/// `assertion`: the assertion header, stripped from client requests like the identity
/// headers.
fn headers(cx: &mut Ctx<'_>, h: &HeadersFile, assertion: &HeaderName) -> HeadersConfig {
    let preset: &[&str] = match h.preset.as_deref() {
        None | Some("auth-request") => &[
            "X-Auth-Request-User",
            "X-Auth-Request-Email",
            "X-Auth-Request-Groups",
            "X-Auth-Request-Preferred-Username",
            "X-Auth-Request-Scopes",
            "",
        ],
        Some("forwarded") => &[
            "X-Forwarded-User",
            "X-Forwarded-Email",
            "X-Forwarded-Groups",
            "X-Forwarded-Preferred-Username",
            "",
            "",
        ],
        Some("remote") => &[
            "Remote-User",
            "Remote-Email",
            "Remote-Groups",
            "",
            "",
            "Remote-Name",
        ],
        Some("none") => &["", "", "", "", "", ""],
        Some(o) => {
            cx.err(
                "headers.preset",
                format!("{o:?} is not one of auth-request, forwarded, remote, none"),
            );
            &["", "", "", "", "", ""]
        }
    };
    let mut strip: Vec<String> = PRESET_AUTH_REQUEST
        .iter()
        .chain(PRESET_FORWARDED.iter())
        .chain(PRESET_REMOTE.iter())
        .map(|s| s.to_string())
        .collect();
    let mut name = |cx: &mut Ctx<'_>, key: &str, explicit: &Option<String>, preset: &str| {
        let chosen = explicit.as_deref().unwrap_or(preset);
        if chosen.is_empty() {
            return None;
        }
        match HeaderName::from_bytes(chosen.as_bytes()) {
            Ok(n) => {
                let norm = normalize_header_name(n.as_str());
                if RESERVED_HEADERS.contains(&norm.as_str()) || norm == "authorization" {
                    cx.err(
                        key,
                        format!("{chosen:?} is reserved and cannot carry identity"),
                    );
                    return None;
                }
                strip.push(norm);
                Some(n)
            }
            Err(_) => {
                cx.err(key, format!("{chosen:?} is not a valid header name"));
                None
            }
        }
    };
    let user = name(cx, "headers.user", &h.user, preset[0]);
    let email = name(cx, "headers.email", &h.email, preset[1]);
    let groups = name(cx, "headers.groups", &h.groups, preset[2]);
    let preferred_username = name(
        cx,
        "headers.preferred_username",
        &h.preferred_username,
        preset[3],
    );
    let scopes = name(cx, "headers.scopes", &h.scopes, preset[4]);
    let name_h = name(cx, "headers.name", &h.name, preset[5]);
    let access_token = name(cx, "headers.access_token", &h.access_token, "");
    let mut claims = Vec::new();
    for (claim, header) in &h.claims {
        if let Some(n) = name(
            cx,
            &format!("headers.claims.{claim}"),
            &Some(header.clone()),
            "",
        ) {
            claims.push((Arc::<str>::from(claim.as_str()), n));
        }
    }
    let assertion_norm = normalize_header_name(assertion.as_str());
    if strip.contains(&assertion_norm) {
        cx.err(
            "assertion.header",
            format!("{:?} is already an identity header", assertion.as_str()),
        );
    }
    strip.push(assertion_norm);
    // The default name too, whatever is configured: it is the proxy's own.
    strip.push(ASSERTION_HEADER.to_ascii_lowercase());
    strip.sort();
    strip.dedup();
    let mut patterns = |key: &str, list: &[String]| -> Vec<NamePattern> {
        let mut out = Vec::new();
        for (i, raw) in list.iter().enumerate() {
            let (name, prefix) = match raw.strip_suffix('*') {
                Some(p) => (p, true),
                None => (raw.as_str(), false),
            };
            if name.is_empty() || HeaderName::from_bytes(name.as_bytes()).is_err() {
                cx.err(
                    format!("{key}[{i}]"),
                    format!("{raw:?} is not a header name (or a prefix ending in '*')"),
                );
                continue;
            }
            out.push(NamePattern {
                name: normalize_header_name(name),
                prefix,
            });
        }
        out
    };
    let strip_extra = patterns("headers.strip", &h.strip);
    let keep_from_trusted = patterns("headers.keep_from_trusted", &h.keep_from_trusted);
    // The proxy's own headers are never a client's to keep.
    for (i, k) in keep_from_trusted.iter().enumerate() {
        let own = strip
            .iter()
            .map(String::as_str)
            .chain(SET_BY_PROXY)
            .find(|n| k.matches(n) || (!k.prefix && n == &k.name));
        if let Some(n) = own {
            cx.err(
                format!("headers.keep_from_trusted[{i}]"),
                format!("covers {n:?}, a header portcullis sets itself"),
            );
        }
    }
    HeadersConfig {
        user,
        email,
        groups,
        preferred_username,
        name: name_h,
        scopes,
        access_token,
        pass_authorization: h.pass_authorization,
        claims,
        strip,
        strip_extra,
        keep_from_trusted,
    }
}

/// Headers the proxy sets on every upstream request itself (beside identity headers).
const SET_BY_PROXY: [&str; 6] = [
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
];

fn upstreams(cx: &mut Ctx<'_>, list: &[UpstreamFile]) -> Vec<UpstreamConfig> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (i, u) in list.iter().enumerate() {
        let key = format!("upstream[{i}]");
        let name = match &u.name {
            Some(n) if !n.is_empty() => n.clone(),
            _ => {
                cx.err(format!("{key}.name"), "is required");
                format!("#{i}")
            }
        };
        if !names.insert(name.clone()) {
            cx.err(
                format!("{key}.name"),
                format!("another upstream is already named {name:?}"),
            );
        }
        let Some(raw) = &u.url else {
            cx.err(format!("{key}.url"), "is required");
            continue;
        };
        let parsed = match url::Url::parse(raw) {
            Ok(p) => p,
            Err(e) => {
                cx.err(format!("{key}.url"), format!("not a valid URL: {e}"));
                continue;
            }
        };
        let https = match parsed.scheme() {
            "http" => false,
            "https" => true,
            s => {
                cx.err(
                    format!("{key}.url"),
                    format!("scheme {s:?} is not http or https"),
                );
                continue;
            }
        };
        if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty()
        {
            cx.err(
                format!("{key}.url"),
                "must not have a query, fragment or user info",
            );
        }
        let Some(host) = parsed.host_str() else {
            cx.err(format!("{key}.url"), "has no host");
            continue;
        };
        let authority_text = match parsed.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let Ok(authority) = authority_text.parse::<http::uri::Authority>() else {
            cx.err(format!("{key}.url"), "has an invalid host");
            continue;
        };
        let base_path = parsed.path().trim_end_matches('/').to_string();
        if !https {
            for (k, v) in [
                ("ca_file", &u.ca_file),
                ("client_cert_file", &u.client_cert_file),
                ("client_key_file", &u.client_key_file),
            ] {
                if v.is_some() {
                    cx.err(format!("{key}.{k}"), "only applies to an https:// upstream");
                }
            }
        }
        let ca_file = cx.existing_file(&format!("{key}.ca_file"), &u.ca_file);
        let cert = cx.existing_file(&format!("{key}.client_cert_file"), &u.client_cert_file);
        let ckey = cx.existing_file(&format!("{key}.client_key_file"), &u.client_key_file);
        let client_cert = match (cert, ckey) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                cx.err(
                    format!("{key}.client_cert_file"),
                    "client_cert_file and client_key_file go together",
                );
                None
            }
        };
        out.push(UpstreamConfig {
            name,
            scheme: if https {
                http::uri::Scheme::HTTPS
            } else {
                http::uri::Scheme::HTTP
            },
            authority,
            base_path,
            ca_file,
            client_cert,
            h2: u.h2,
            preserve_host: u.preserve_host.unwrap_or(true),
            connect_timeout: cx.duration(
                &format!("{key}.connect_timeout"),
                u.connect_timeout.as_deref(),
                Duration::from_secs(5),
            ),
            pool_idle_timeout: cx.duration(
                &format!("{key}.pool_idle_timeout"),
                u.pool_idle_timeout.as_deref(),
                Duration::from_secs(90),
            ),
            pool_max_idle: u.pool_max_idle.unwrap_or(1024),
            path_readings: match u.path_readings.as_deref() {
                None | Some("strict") => PathReadings::Strict,
                Some("exact") => PathReadings::Exact,
                Some(o) => {
                    cx.err(
                        format!("{key}.path_readings"),
                        format!("{o:?} is not one of strict, exact"),
                    );
                    PathReadings::Strict
                }
            },
        });
    }
    out
}

/// `declared`: every upstream name in the file, valid or not (a route naming an upstream
/// with its own error gets no second, misleading error).
fn routes(
    cx: &mut Ctx<'_>,
    list: &[RouteFile],
    upstreams: &[UpstreamConfig],
    declared: &[&str],
) -> Vec<RouteConfig> {
    if list.is_empty() {
        cx.err("route", "at least one [[route]] is required");
    }
    let mut out: Vec<RouteConfig> = Vec::new();
    for (i, r) in list.iter().enumerate() {
        let key = format!("route[{i}]");
        let path = match r.path.as_deref() {
            None => {
                cx.err(format!("{key}.path"), "is required");
                continue;
            }
            Some(p) => p,
        };
        let canonical = match normalize_path(path) {
            Ok(c) if path.starts_with('/') => c.into_owned(),
            Ok(_) => {
                cx.err(format!("{key}.path"), "must start with '/'");
                continue;
            }
            Err(e) => {
                cx.err(
                    format!("{key}.path"),
                    format!("{path:?} is not a valid path: {e}"),
                );
                continue;
            }
        };
        let prefix = if canonical.len() > 1 {
            canonical.trim_end_matches('/').to_string()
        } else {
            canonical
        };
        if prefix != path.trim_end_matches('/') && !(prefix == "/" && path == "/") {
            cx.err(
                format!("{key}.path"),
                format!("{path:?} is not in canonical form (did you mean {prefix:?}?)"),
            );
        }
        // Stored as a request's host is read (`normalize_host`: lower case, no trailing
        // dot), and only when that reading keeps all of it: a host no request can carry
        // (`a b`, `a.example:443`) would leave the route's requests to later routes.
        let host = r.host.as_ref().map(|h| {
            let lower = h.to_ascii_lowercase();
            let bare = lower.strip_suffix('.').unwrap_or(&lower);
            match normalize_host(&lower) {
                Some(n) if n == bare => n.into_owned(),
                _ => {
                    cx.err(
                        format!("{key}.host"),
                        format!("{h:?} must be a host name without scheme, port or path"),
                    );
                    lower
                }
            }
        });
        let upstream = match r.upstream.as_deref() {
            None => {
                cx.err(format!("{key}.upstream"), "is required");
                0
            }
            Some(u) => match upstreams.iter().position(|x| x.name == u) {
                Some(ix) => ix,
                None if declared.contains(&u) => 0,
                None => {
                    let known = declared;
                    cx.err(
                        format!("{key}.upstream"),
                        if known.is_empty() {
                            format!("no upstream named {u:?} (no [[upstream]] is defined)")
                        } else {
                            format!("no upstream named {u:?} (known: {})", known.join(", "))
                        },
                    );
                    0
                }
            },
        };
        let auth = match r.auth.as_deref() {
            None => {
                cx.err(
                    format!("{key}.auth"),
                    "is required (one of public, bearer, login, either): no route is public by default",
                );
                AuthMode::Public
            }
            Some("public") => AuthMode::Public,
            Some("bearer") => AuthMode::Bearer,
            Some("login") => AuthMode::Login,
            Some("either") => AuthMode::Either,
            Some(o) => {
                cx.err(
                    format!("{key}.auth"),
                    format!("{o:?} is not one of public, bearer, login, either"),
                );
                AuthMode::Public
            }
        };
        let mut method_scopes = Vec::new();
        for (m, scopes) in &r.method_scopes {
            match Method::from_bytes(m.as_bytes()) {
                Ok(method) if m.bytes().all(|b| b.is_ascii_uppercase()) => {
                    method_scopes.push((method, scopes.clone()))
                }
                _ => cx.err(
                    format!("{key}.method_scopes.{m}"),
                    "is not an HTTP method in upper case (GET, POST, ...)",
                ),
            }
        }
        let allow = r.allow.as_ref().map(|a| AllowConfig {
            groups: a.groups.clone(),
            emails: a
                .emails
                .as_ref()
                .map(|v| v.iter().map(|e| e.to_ascii_lowercase()).collect()),
            email_domains: a.email_domains.as_ref().map(|v| {
                v.iter()
                    .map(|e| e.trim_start_matches('@').to_ascii_lowercase())
                    .collect()
            }),
            claims: a.claims.as_ref().map(|m: &BTreeMap<String, Vec<String>>| {
                m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            }),
        });
        if let Some(a) = &allow {
            for (kind, empty) in [
                ("groups", a.groups.as_ref().is_some_and(Vec::is_empty)),
                ("emails", a.emails.as_ref().is_some_and(Vec::is_empty)),
                (
                    "email_domains",
                    a.email_domains.as_ref().is_some_and(Vec::is_empty),
                ),
            ] {
                if empty {
                    cx.err(
                        format!("{key}.allow.{kind}"),
                        "is empty: it would refuse everyone",
                    );
                }
            }
        }
        if auth == AuthMode::Public
            && (!r.scopes.is_empty() || !method_scopes.is_empty() || allow.is_some())
        {
            cx.err(
                format!("{key}.auth"),
                "a public route cannot have scopes, method_scopes or allow rules (they would never be checked)",
            );
        }
        if r.allow_preflight && auth == AuthMode::Public {
            cx.err(
                format!("{key}.allow_preflight"),
                "has no meaning on a public route",
            );
        }
        if r.require_sender_constraint && !matches!(auth, AuthMode::Bearer | AuthMode::Either) {
            cx.err(
                format!("{key}.require_sender_constraint"),
                "only routes with auth = \"bearer\" or \"either\" take tokens",
            );
        }
        let name: Arc<str> = match &r.name {
            Some(n) if !n.is_empty() => Arc::from(n.as_str()),
            _ => Arc::from(prefix.as_str()),
        };
        // A route that an earlier one always catches first is a misconfiguration that
        // usually leaves something less protected than intended: refuse it.
        for (j, earlier) in out.iter().enumerate() {
            let host_covers = earlier.host.is_none() || earlier.host == host;
            if host_covers && prefix_matches(&earlier.path, &prefix) {
                cx.err(
                    format!("{key}.path"),
                    format!(
                        "route never matches: route[{j}] (path {:?}) comes first and catches every request it would",
                        earlier.path
                    ),
                );
                break;
            }
        }
        out.push(RouteConfig {
            name,
            host,
            path: prefix,
            upstream,
            auth,
            allow_preflight: r.allow_preflight,
            scopes: r.scopes.clone(),
            method_scopes,
            allow,
            strip_prefix: r.strip_prefix,
            assertion: r.assertion,
            timeout: cx.duration(
                &format!("{key}.timeout"),
                r.timeout.as_deref(),
                Duration::ZERO,
            ),
            require_sender_constraint: r.require_sender_constraint,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cr3t".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_env_and_escapes() {
        assert_eq!(expand_str("a${SECRET}b", &env).unwrap(), "as3cr3tb");
        assert_eq!(expand_str("$$5 and $x", &env).unwrap(), "$5 and $x");
        assert!(expand_str("${MISSING}", &env)
            .unwrap_err()
            .contains("MISSING"));
        assert!(expand_str("${OPEN", &env).is_err());
    }

    fn keys(text: &str) -> Vec<String> {
        match from_toml(text, Path::new("."), &env) {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.into_iter()
                    .map(|e| format!("{}: {}", e.key, e.message))
                    .collect()
            }
        }
    }

    const BASE: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n[[route]]\npath = \"/\"\nupstream = \"a\"\nauth = \"public\"\n";

    #[test]
    fn header_families_and_path_readings_keys() {
        let ok = format!(
            "{BASE}[headers]\nstrip = [\"X-Legacy-User\", \"X-Acme-*\"]\nkeep_from_trusted = [\"X-Consumer-*\", \"Cf-Access-Jwt-Assertion\"]\n"
        );
        assert_eq!(keys(&ok), Vec::<String>::new());
        // portcullis's own headers are never a client's to keep.
        for own in [
            "X-Auth-Request-User",
            "x_auth_request_email",
            "X-Auth-*",
            "X-Request-Id",
            "x-forwarded-*",
        ] {
            let text = format!("{BASE}[headers]\nkeep_from_trusted = [\"{own}\"]\n");
            let errs = keys(&text);
            assert!(
                errs.iter()
                    .any(|e| e.starts_with("headers.keep_from_trusted[0]: covers")),
                "{own}: {errs:?}"
            );
        }
        let bad = format!("{BASE}[headers]\nstrip = [\"bad header\", \"*\"]\n");
        let errs = keys(&bad);
        assert!(
            errs.iter().any(|e| e.starts_with("headers.strip[0]")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("headers.strip[1]")),
            "{errs:?}"
        );
        let exact = BASE.replace(
            "url = \"http://127.0.0.1:9\"",
            "url = \"http://127.0.0.1:9\"\npath_readings = \"exact\"",
        );
        assert_eq!(keys(&exact), Vec::<String>::new());
        let wrong = BASE.replace(
            "url = \"http://127.0.0.1:9\"",
            "url = \"http://127.0.0.1:9\"\npath_readings = \"loose\"",
        );
        assert!(keys(&wrong)
            .iter()
            .any(|e| e.starts_with("upstream[0].path_readings")));
    }

    #[test]
    fn dpop_keys() {
        // Public routes take no tokens: require_sender_constraint is named as an error.
        let public = BASE.replace(
            "auth = \"public\"",
            "auth = \"public\"\nrequire_sender_constraint = true",
        );
        let errs = keys(&public);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("route[0].require_sender_constraint:")),
            "{errs:?}"
        );
        let bearer = "[server]\nlisten = \"127.0.0.1:0\"\n\
             [provider]\nissuer = \"https://idp.example\"\n\
             [bearer]\naudiences = [\"api\"]\ndpop_nonce = true\n\
             [[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n\
             [[route]]\npath = \"/api\"\nupstream = \"a\"\nauth = \"bearer\"\n\
             require_sender_constraint = true\n";
        assert_eq!(keys(bearer), Vec::<String>::new());
        let c = from_toml(bearer, Path::new("."), &env).unwrap();
        assert!(c.routes[0].require_sender_constraint);
        assert!(c.bearer.as_ref().unwrap().dpop_nonce);
        // A typo is an unknown key, as any.
        let typo = bearer.replace("dpop_nonce", "dpop_nonces");
        assert!(!keys(&typo).is_empty());
    }

    #[test]
    fn client_certificate_keys() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "not read by validation").unwrap();
        let p = pem.display();
        let tls = |extra: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert_file = \"{p}\"\n\
                 key_file = \"{p}\"\n{extra}\n\
                 [[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n\
                 [[route]]\npath = \"/\"\nupstream = \"a\"\nauth = \"public\"\n"
            )
        };
        let ca = |c: &str| from_toml(&tls(c), Path::new("."), &env).unwrap().server.tls;
        assert_eq!(ca("").unwrap().client_ca, None);
        assert_eq!(
            ca(&format!("client_ca_file = \"{p}\"")).unwrap().client_ca,
            Some((pem.clone(), TlsClientAuth::Optional))
        );
        assert_eq!(
            ca(&format!(
                "client_ca_file = \"{p}\"\nclient_auth = \"required\""
            ))
            .unwrap()
            .client_ca,
            Some((pem.clone(), TlsClientAuth::Required))
        );
        let one = |c: &str| keys(&tls(c));
        assert!(one("client_auth = \"required\"")
            .iter()
            .any(|e| e.starts_with("server.tls.client_auth: needs server.tls.client_ca_file")));
        assert!(one(&format!(
            "client_ca_file = \"{p}\"\nclient_auth = \"always\""
        ))
        .iter()
        .any(|e| e.starts_with("server.tls.client_auth:")));
        assert!(one("client_ca_file = \"/nonexistent/ca.pem\"")
            .iter()
            .any(|e| e.starts_with("server.tls.client_ca_file:")));

        let bearer = |h: &str| {
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[provider]\nissuer = \"https://idp.example\"\n\
                 [bearer]\naudiences = [\"api\"]\nclient_cert_header = \"{h}\"\n\
                 [[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n\
                 [[route]]\npath = \"/\"\nupstream = \"a\"\nauth = \"bearer\"\n"
            )
        };
        let c = from_toml(&bearer("x-forwarded-client-cert"), Path::new("."), &env).unwrap();
        assert!(c.bearer.unwrap().client_cert_header);
        assert!(keys(&bearer("X-Forwarded-Client-Cert")).is_empty());
        for other in ["ssl-client-cert", "x-client-cert", ""] {
            assert!(
                keys(&bearer(other))
                    .iter()
                    .any(|e| e.starts_with("bearer.client_cert_header:")),
                "{other}"
            );
        }
    }

    #[test]
    fn telemetry_keys() {
        let load = |t: &str| from_toml(&format!("{BASE}[telemetry]\n{t}\n"), Path::new("."), &env);
        let off = from_toml(BASE, Path::new("."), &env).unwrap().telemetry;
        assert_eq!(off, TelemetryConfig::default());
        assert_eq!(off.sample_ratio, 1.0);
        let url = |t: &str| {
            load(t)
                .unwrap()
                .telemetry
                .otlp_traces_url
                .unwrap()
                .to_string()
        };
        assert_eq!(
            url("otlp_endpoint = \"http://127.0.0.1:4318\""),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            url("otlp_endpoint = \"https://collector.example/otlp/\""),
            "https://collector.example/otlp/v1/traces"
        );
        assert_eq!(
            url("otlp_endpoint = \"http://c:4318/v1/traces\""),
            "http://c:4318/v1/traces"
        );
        let c = load("otlp_endpoint = \"http://c:4318\"\nsample_ratio = 0.25").unwrap();
        assert_eq!(c.telemetry.sample_ratio, 0.25);
        assert_eq!(
            load("sample_ratio = 0").unwrap().telemetry.sample_ratio,
            0.0
        );
        for (text, key) in [
            (
                "otlp_endpoint = \"grpc://c:4317\"",
                "telemetry.otlp_endpoint",
            ),
            ("otlp_endpoint = \"not a url\"", "telemetry.otlp_endpoint"),
            (
                "otlp_endpoint = \"http://u:p@c:4318\"",
                "telemetry.otlp_endpoint",
            ),
            (
                "otlp_endpoint = \"http://c:4318/?x=1\"",
                "telemetry.otlp_endpoint",
            ),
            ("sample_ratio = 1.5", "telemetry.sample_ratio"),
            ("sample_ratio = -0.1", "telemetry.sample_ratio"),
            ("sample_ratio = nan", "telemetry.sample_ratio"),
        ] {
            let errs = keys(&format!("{BASE}[telemetry]\n{text}\n"));
            assert!(
                errs.iter().any(|e| e.starts_with(&format!("{key}: "))),
                "{text}: {errs:?}"
            );
        }
        assert!(!keys(&format!("{BASE}[telemetry]\nendpoint = \"x\"\n")).is_empty());
    }

    /// A bearer route `/api` with `assertion = true`, with `extra` lines appended.
    fn asserting(server_extra: &str, extra: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n\
             [provider]\nissuer = \"https://idp.example\"\n\
             [bearer]\naudiences = [\"api\"]\n\
             [[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n\
             [[route]]\npath = \"/api\"\nupstream = \"a\"\nauth = \"bearer\"\nassertion = true\n{extra}"
        )
    }

    #[test]
    fn assertion_keys() {
        const URL: &str = "public_url = \"https://app.example.com\"";
        const SECRETS: &str =
            "[session]\nsecrets = [\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n";
        assert_eq!(keys(&asserting(URL, SECRETS)), Vec::<String>::new());
        // iss needs public_url: named.
        let errs = keys(&asserting("", SECRETS));
        assert!(
            errs.iter().any(|e| e.starts_with(
                "server.public_url: is required when a route sets assertion = true (route[0])"
            )),
            "{errs:?}"
        );
        // Keys: neither files nor secrets.
        let errs = keys(&asserting(URL, ""));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("assertion.key_file: route[0] sets assertion = true")),
            "{errs:?}"
        );
        let errs = keys(&asserting(
            URL,
            "[assertion]\nkey_file = [\"/nonexistent/a.pem\"]\n",
        ));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("assertion.key_file[0]: file")),
            "{errs:?}"
        );
        let errs = keys(&asserting(
            URL,
            &format!("{SECRETS}[assertion]\nheader = \"bad header\"\naudience = \" \"\n"),
        ));
        assert!(
            errs.iter().any(|e| e.starts_with("assertion.header")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("assertion.audience")),
            "{errs:?}"
        );
        for reserved in [
            "Authorization",
            "X-Forwarded-For",
            "Cookie",
            "X-Auth-Request-User",
        ] {
            let errs = keys(&asserting(
                URL,
                &format!("{SECRETS}[assertion]\nheader = \"{reserved}\"\n"),
            ));
            assert!(
                errs.iter().any(|e| e.starts_with("assertion.header")),
                "{reserved}: {errs:?}"
            );
        }
        // A public route has nothing to assert.
        let public = format!(
            "{BASE}assertion = true\n[session]\nsecrets = [\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n"
        )
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:0\"\n{URL}"));
        let errs = keys(&public);
        assert!(
            errs.iter().any(|e| e.starts_with("route[0].assertion")),
            "{errs:?}"
        );
        assert!(keys(&format!("{BASE}[assertion]\nbogus = 1\n"))
            .iter()
            .any(|e| e.contains("bogus")));
    }

    #[test]
    fn assertion_header_is_stripped_like_identity_headers() {
        let strip = |text: &str| from_toml(text, Path::new("."), &env).unwrap().headers.strip;
        // The default, even with no route asking for assertions.
        assert!(strip(BASE).contains(&"x-portcullis-assertion".to_string()));
        let custom = strip(&format!(
            "{BASE}[assertion]\nheader = \"X-App_Assertion\"\n"
        ));
        assert!(custom.contains(&"x-app-assertion".to_string()));
        assert!(custom.contains(&"x-portcullis-assertion".to_string()));
        // ...and never a trusted proxy's to keep.
        let errs = keys(&format!(
            "{BASE}[headers]\nkeep_from_trusted = [\"X-Portcullis-*\"]\n"
        ));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("headers.keep_from_trusted[0]: covers")),
            "{errs:?}"
        );
    }

    const SECRET32: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn with_session(session_extra: &str) -> String {
        format!("{BASE}[session]\nsecrets = [\"{SECRET32}\"]\n{session_extra}\n")
    }

    #[test]
    fn revocation_keys() {
        let load = |t: &str| from_toml(t, Path::new("."), &env).unwrap();
        // Defaults: memory, or Redis whenever a Redis URL is set.
        let c = load(&with_session(""));
        let s = c.session.as_ref().unwrap();
        assert_eq!(
            (s.revocation, s.revocation_capacity),
            (RevocationKind::Memory, DEFAULT_REVOCATION_CAPACITY)
        );
        let c = load(&with_session("redis_url = \"redis://127.0.0.1:6379/\""));
        assert_eq!(
            c.session.as_ref().unwrap().revocation,
            RevocationKind::Redis
        );
        let c = load(&with_session(
            "redis_url = \"redis://127.0.0.1:6379/\"\nrevocation = \"memory\"",
        ));
        assert_eq!(
            c.revocation_settings(),
            RevocationSettings {
                kind: RevocationKind::Memory,
                redis_url: None,
                file: None,
                capacity: DEFAULT_REVOCATION_CAPACITY,
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("revoked");
        let c = load(&with_session(&format!(
            "revocation_file = \"{}\"\nrevocation_capacity = 5",
            file.display()
        )));
        assert_eq!(
            c.revocation_settings().file.as_deref(),
            Some(file.as_path())
        );
        assert_eq!(c.revocation_settings().capacity, 5);
        // Errors name the key.
        for (extra, key) in [
            ("revocation = \"disk\"", "session.revocation: \"disk\""),
            (
                "revocation = \"redis\"",
                "session.revocation: \"redis\" keeps",
            ),
            (
                "store = \"redis\"\nredis_url = \"redis://h/\"\nrevocation = \"memory\"",
                "session.revocation: \"memory\" with store",
            ),
            (
                "redis_url = \"redis://h/\"\nrevocation_file = \"x\"",
                "session.revocation_file: only with",
            ),
            (
                "revocation_file = \"/nonexistent-dir/x\"",
                "session.revocation_file: the directory",
            ),
            (
                "revocation_capacity = 0",
                "session.revocation_capacity: 0 is out of range",
            ),
        ] {
            let errs = keys(&with_session(extra));
            assert!(errs.iter().any(|e| e.starts_with(key)), "{extra}: {errs:?}");
        }
        let errs = keys(&format!(
            "{BASE}[provider]\nissuer = \"https://idp.example\"\nlogout_token_max_age = \"soon\"\n"
        ));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("provider.logout_token_max_age")),
            "{errs:?}"
        );
        let c = load(&format!(
            "{BASE}[provider]\nissuer = \"https://idp.example\"\n"
        ));
        assert_eq!(
            c.provider.unwrap().logout_token_max_age,
            Duration::from_secs(300)
        );
        let errs = keys(&BASE.replace(
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:0\"\nadmin_token_file = \"/nonexistent-token\"",
        ));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("server.admin_token_file")),
            "{errs:?}"
        );
    }

    #[test]
    fn memory_revocation_without_a_file_is_warned_about_when_there_are_logins() {
        let login = |session_extra: &str| {
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"https://app.example\"\n\
                 [provider]\nissuer = \"https://idp.example\"\nclient_id = \"c\"\nclient_secret = \"s\"\n\
                 [session]\nsecrets = [\"{SECRET32}\"]\n{session_extra}\n\
                 [[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n\
                 [[route]]\npath = \"/\"\nupstream = \"a\"\nauth = \"login\"\n"
            );
            from_toml(&text, Path::new("/tmp"), &env)
                .unwrap()
                .warnings()
        };
        let w = login("");
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "session.revocation");
        assert!(w[0].message.contains("a restart forgets sign-outs"));
        assert!(login("revocation_file = \"revoked\"").is_empty());
        assert!(login("redis_url = \"redis://127.0.0.1/\"").is_empty());
        // No login route: nothing to revoke, nothing to say.
        let public = from_toml(&with_session(""), Path::new("."), &env).unwrap();
        assert!(public.warnings().is_empty());
    }

    /// Found by the `config` fuzz target: a route host no request host can equal (a space,
    /// a port, a bracket in a name) was accepted, so the route could never be selected
    /// and its requests went to later routes; a trailing dot or upper case was kept as
    /// written although requests' hosts are read without them.
    #[test]
    fn route_hosts_are_ones_a_request_can_carry() {
        let with_host =
            |h: &str| BASE.replace("path = \"/\"", &format!("path = \"/\"\nhost = {h:?}"));
        for bad in [
            "a b",
            "a.example:443",
            "a.example/x",
            "",
            "[::1]x",
            "a[b]",
            " a.example",
            "https://a.example",
            "a..",
            ".a.example",
        ] {
            let errs = keys(&with_host(bad));
            assert!(
                errs.iter().any(|e| e.starts_with("route[0].host")),
                "{bad:?}: {errs:?}"
            );
        }
        for (good, stored) in [
            ("a.example", "a.example"),
            ("A.Example.", "a.example"),
            ("[::1]", "[::1]"),
            ("a_b.example", "a_b.example"),
        ] {
            let c = from_toml(&with_host(good), Path::new("."), &env).unwrap();
            assert_eq!(c.routes[0].host.as_deref(), Some(stored), "{good:?}");
        }
    }
}
