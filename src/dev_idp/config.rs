//! Configuration of the development provider: address, clients, users, token audience,
//! lifetimes. [`DevIdpConfig::default`] is the demo setup (README, `portcullis demo`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use url::Url;

use crate::config::Secret;

/// The demo web client (authorization code + refresh), as `portcullis demo` configures it.
pub const DEMO_CLIENT_ID: &str = "portcullis-demo";
pub const DEMO_CLIENT_SECRET: &str = "portcullis-demo-secret";
/// The demo machine client (client credentials).
pub const MACHINE_CLIENT_ID: &str = "demo-machine";
pub const MACHINE_CLIENT_SECRET: &str = "demo-machine-secret";
/// A client that only introspects and revokes (an RFC 7662 resource server).
pub const INTROSPECTION_CLIENT_ID: &str = "demo-introspector";
pub const INTROSPECTION_CLIENT_SECRET: &str = "demo-introspector-secret";

/// Scopes every provider instance knows, besides the clients' own API scopes.
pub const STANDARD_SCOPES: [&str; 5] = ["openid", "profile", "email", "groups", "offline_access"];

/// Everything the provider is started with. The test knobs on
/// [`DevIdp`](super::DevIdp) change some of it at run time.
#[derive(Debug, Clone)]
pub struct DevIdpConfig {
    /// Address to bind (default 127.0.0.1). Binding anything else exposes demo credentials.
    pub bind: IpAddr,
    /// Port (0: an ephemeral port, read it back with [`DevIdp::issuer`](super::DevIdp::issuer)).
    pub port: u16,
    /// The issuer URL, when it must differ from `http://<bind>:<port>` (for example when
    /// bound to 0.0.0.0 and reached by a host name). No trailing slash.
    pub issuer: Option<String>,
    pub clients: Vec<DevClient>,
    pub users: Vec<DevUser>,
    /// `aud` of access tokens; default `<issuer>/api`.
    pub audience: Option<String>,
    pub lifetimes: Lifetimes,
    /// Refresh token rotation: each use returns a new refresh token and invalidates the old
    /// one; presenting an old one again revokes the whole grant (OAuth 2.0 Security BCP §4.14).
    pub refresh_rotation: bool,
    pub access_token_format: AccessTokenFormat,
    /// Algorithm of ID tokens and JWT access tokens (both keys are always published).
    pub signing_alg: SigningAlg,
    /// Keep a login session at the provider (a cookie), so that a second authorization
    /// request skips the form unless `prompt=login`; `end_session` ends it.
    pub sso_session: bool,
    /// List the users and their passwords on the login form.
    pub show_users_on_form: bool,
}

impl Default for DevIdpConfig {
    fn default() -> Self {
        DevIdpConfig {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            issuer: None,
            clients: vec![
                DevClient::demo_web(),
                DevClient::demo_machine(),
                DevClient::demo_introspector(),
            ],
            users: vec![DevUser::alice(), DevUser::bob()],
            audience: None,
            lifetimes: Lifetimes::default(),
            refresh_rotation: true,
            access_token_format: AccessTokenFormat::Jwt,
            signing_alg: SigningAlg::RS256,
            sso_session: true,
            show_users_on_form: true,
        }
    }
}

/// How long each artifact lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub access_token: Duration,
    pub id_token: Duration,
    pub refresh_token: Duration,
    /// Authorization codes (RFC 6749 §4.1.2 recommends at most 10 minutes).
    pub code: Duration,
    /// A login form left open this long must be started again.
    pub login_transaction: Duration,
    /// The provider's own login session (the SSO cookie).
    pub session: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            access_token: Duration::from_secs(300),
            id_token: Duration::from_secs(300),
            refresh_token: Duration::from_secs(8 * 3600),
            code: Duration::from_secs(60),
            login_transaction: Duration::from_secs(600),
            session: Duration::from_secs(8 * 3600),
        }
    }
}

/// Access tokens as RFC 9068 JWTs, or as opaque strings that only introspection (or
/// userinfo) can judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessTokenFormat {
    Jwt,
    Opaque,
}

/// The signing algorithm for issued JWTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    /// RSA 2048, PKCS#1 v1.5, SHA-256.
    RS256,
    /// ECDSA P-256, SHA-256.
    ES256,
}

impl SigningAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::RS256 => "RS256",
            SigningAlg::ES256 => "ES256",
        }
    }
}

/// An OAuth grant type a client may use at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::AuthorizationCode => "authorization_code",
            Grant::RefreshToken => "refresh_token",
            Grant::ClientCredentials => "client_credentials",
        }
    }
}

/// A registered redirect (or post-logout redirect) URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UriRule {
    /// Simple string comparison (RFC 6749 §3.1.2.3; OAuth 2.0 Security BCP §4.1.3).
    Exact(String),
    /// `http://127.0.0.1:<any port><path>`, `http://localhost:<any port><path>` or
    /// `http://[::1]:<any port><path>`: the loopback rule of RFC 8252 §7.3, for proxies
    /// started on ephemeral ports. `path: None` allows any path and query; with a path,
    /// the path must match exactly and there must be no query.
    Loopback { path: Option<String> },
}

impl UriRule {
    /// Whether `uri` is allowed by this rule. Fragments are never allowed (RFC 6749 §3.1.2).
    pub fn matches(&self, uri: &str) -> bool {
        match self {
            UriRule::Exact(s) => s == uri,
            UriRule::Loopback { path } => {
                // The URL parser would normalize dot segments and backslashes away, making
                // a raw URI we then redirect to differ from the one we judged.
                let raw_path = uri.split(['?', '#']).next().unwrap_or_default();
                let dotted = raw_path.split('/').any(|seg| {
                    let seg = seg.to_ascii_lowercase().replace("%2e", ".");
                    seg == "." || seg == ".."
                });
                if dotted || uri.contains('\\') {
                    return false;
                }
                let Ok(u) = Url::parse(uri) else {
                    return false;
                };
                let loopback = matches!(
                    u.host_str(),
                    Some("127.0.0.1") | Some("localhost") | Some("[::1]")
                );
                if u.scheme() != "http"
                    || !loopback
                    || !u.username().is_empty()
                    || u.password().is_some()
                    || u.fragment().is_some()
                {
                    return false;
                }
                match path {
                    None => true,
                    Some(p) => u.path() == p && u.query().is_none(),
                }
            }
        }
    }
}

/// A registered client.
#[derive(Debug, Clone)]
pub struct DevClient {
    pub client_id: String,
    /// `None`: a public client (token endpoint auth method `none`), which may only use the
    /// authorization code (with PKCE) and refresh grants.
    pub secret: Option<Secret<String>>,
    pub redirect_uris: Vec<UriRule>,
    pub post_logout_redirect_uris: Vec<UriRule>,
    pub grants: Vec<Grant>,
    /// Scopes this client may obtain. For client credentials these are also the default
    /// when the request names none (RFC 6749 §3.3).
    pub scopes: Vec<String>,
}

impl DevClient {
    /// A confidential client with no grants, redirect URIs or scopes yet.
    pub fn confidential(client_id: &str, secret: &str) -> Self {
        DevClient {
            client_id: client_id.to_string(),
            secret: Some(Secret::new(secret.to_string())),
            redirect_uris: Vec::new(),
            post_logout_redirect_uris: Vec::new(),
            grants: Vec::new(),
            scopes: Vec::new(),
        }
    }

    /// `portcullis-demo`: the proxy's own client, redirect URIs
    /// `http://{127.0.0.1,localhost}:*/oauth2/callback`, any loopback post-logout URI.
    pub fn demo_web() -> Self {
        DevClient {
            redirect_uris: vec![UriRule::Loopback {
                path: Some("/oauth2/callback".into()),
            }],
            post_logout_redirect_uris: vec![UriRule::Loopback { path: None }],
            grants: vec![Grant::AuthorizationCode, Grant::RefreshToken],
            scopes: [
                "openid",
                "profile",
                "email",
                "groups",
                "offline_access",
                "read:items",
                "write:items",
            ]
            .map(String::from)
            .to_vec(),
            ..DevClient::confidential(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)
        }
    }

    /// `demo-machine`: client credentials with `read:items write:items`.
    pub fn demo_machine() -> Self {
        DevClient {
            grants: vec![Grant::ClientCredentials],
            scopes: vec!["read:items".into(), "write:items".into()],
            ..DevClient::confidential(MACHINE_CLIENT_ID, MACHINE_CLIENT_SECRET)
        }
    }

    /// `demo-introspector`: no grants; authenticates to introspection and revocation.
    pub fn demo_introspector() -> Self {
        DevClient::confidential(INTROSPECTION_CLIENT_ID, INTROSPECTION_CLIENT_SECRET)
    }

    pub(crate) fn has_grant(&self, g: Grant) -> bool {
        self.grants.contains(&g)
    }
}

/// A user who can sign in on the login form.
#[derive(Debug, Clone)]
pub struct DevUser {
    pub username: String,
    pub password: Secret<String>,
    /// The stable subject identifier (`sub`).
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
    pub name: String,
    pub groups: Vec<String>,
    /// More claims for the ID token, access token, userinfo and introspection.
    pub extra_claims: serde_json::Map<String, serde_json::Value>,
}

impl DevUser {
    pub fn new(username: &str, password: &str) -> Self {
        DevUser {
            username: username.to_string(),
            password: Secret::new(password.to_string()),
            sub: format!("user-{username}"),
            email: format!("{username}@example.com"),
            email_verified: true,
            name: username.to_string(),
            groups: Vec::new(),
            extra_claims: serde_json::Map::new(),
        }
    }

    /// `alice` / `alice`: Alice Admin, groups `staff`, `admins`.
    pub fn alice() -> Self {
        DevUser {
            name: "Alice Admin".into(),
            groups: vec!["staff".into(), "admins".into()],
            ..DevUser::new("alice", "alice")
        }
    }

    /// `bob` / `bob`: Bob Builder, group `staff`.
    pub fn bob() -> Self {
        DevUser {
            name: "Bob Builder".into(),
            groups: vec!["staff".into()],
            ..DevUser::new("bob", "bob")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_rule_allows_any_port_and_nothing_else() {
        let r = UriRule::Loopback {
            path: Some("/oauth2/callback".into()),
        };
        assert!(r.matches("http://127.0.0.1:4180/oauth2/callback"));
        assert!(r.matches("http://localhost:1/oauth2/callback"));
        assert!(r.matches("http://[::1]:8080/oauth2/callback"));
        assert!(!r.matches("https://127.0.0.1:4180/oauth2/callback"));
        assert!(!r.matches("http://127.0.0.1.evil.example/oauth2/callback"));
        assert!(!r.matches("http://evil@127.0.0.1:80/oauth2/callback"));
        assert!(!r.matches("http://127.0.0.1:80/oauth2/callback?x=1"));
        assert!(!r.matches("http://127.0.0.1:80/oauth2/callback#f"));
        assert!(!r.matches("http://127.0.0.1:80/oauth2/callbackx"));
        assert!(!r.matches("http://127.0.0.1:80/x/../oauth2/callback/.."));
        let any = UriRule::Loopback { path: None };
        assert!(any.matches("http://localhost:9/signed-out?x=1"));
        assert!(!any.matches("http://example.com/"));
    }

    #[test]
    fn exact_rule_is_string_comparison() {
        let r = UriRule::Exact("https://app.example.com/cb".into());
        assert!(r.matches("https://app.example.com/cb"));
        assert!(!r.matches("https://app.example.com/cb/"));
        assert!(!r.matches("https://APP.example.com/cb"));
    }
}
