//! OpenID Connect Discovery 1.0: fetch `{issuer}/.well-known/openid-configuration`,
//! check that the document names the configured issuer exactly, and retry with
//! exponential backoff while the provider is not up yet.

use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;
use tokio::time::Instant;

use super::credential::IssuerCredential;
use super::transport::{Call, Endpoint, HttpTransport, TransportError};

/// The provider metadata portcullis uses (OIDC Discovery 1.0 §3, RFC 8414 §2).
/// Only `issuer` and `jwks_uri` are required; unknown fields are ignored, and an optional
/// field of the wrong type (e.g. `null` for a list) reads as absent rather than failing
/// the whole document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default, deserialize_with = "lenient")]
    pub authorization_endpoint: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub token_endpoint: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub userinfo_endpoint: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub introspection_endpoint: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub revocation_endpoint: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub end_session_endpoint: Option<String>,
    /// RFC 9207 §3.
    #[serde(default, deserialize_with = "lenient")]
    pub authorization_response_iss_parameter_supported: bool,
    #[serde(default, deserialize_with = "lenient")]
    pub code_challenge_methods_supported: Vec<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub id_token_signing_alg_values_supported: Vec<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub introspection_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub scopes_supported: Vec<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub response_types_supported: Vec<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub grant_types_supported: Vec<String>,
}

/// Reads the value, and falls back to the default when it has another shape.
fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + Default,
{
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).unwrap_or_default())
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("fetching the discovery document failed")]
    Transport(#[source] TransportError),
    #[error("discovery document answered with HTTP {0}")]
    Status(StatusCode),
    #[error("discovery document is not valid JSON metadata")]
    Json(#[source] serde_json::Error),
    /// OIDC Discovery 1.0 §4.3: the `issuer` value returned MUST be identical to the
    /// Issuer URL that was used as the prefix to `/.well-known/openid-configuration`.
    #[error("discovery document issuer {found:?} differs from the configured issuer {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    #[error("discovery did not succeed before the deadline")]
    Deadline(#[source] Box<DiscoveryError>),
}

impl DiscoveryError {
    /// Whether trying again later may help (network, 5xx, a half-started provider).
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            DiscoveryError::IssuerMismatch { .. } | DiscoveryError::Deadline(_)
        )
    }
}

/// `{issuer without trailing slash}/.well-known/openid-configuration`
/// (OIDC Discovery 1.0 §4.1). Auth0's `https://TENANT/` and Keycloak's
/// `https://HOST/realms/NAME` both work.
pub fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// One attempt: fetch and check the document.
pub async fn discover(
    transport: &HttpTransport,
    issuer: &str,
) -> Result<ProviderMetadata, DiscoveryError> {
    discover_as(transport, issuer, None).await
}

/// [`discover`], with the issuer's `token_file` credential when it has one.
pub async fn discover_as(
    transport: &HttpTransport,
    issuer: &str,
    credential: Option<&IssuerCredential>,
) -> Result<ProviderMetadata, DiscoveryError> {
    let url = discovery_url(issuer);
    let bearer = match credential {
        Some(c) => Some(
            c.token_for(&url)
                .await
                .map_err(|e| DiscoveryError::Transport(e.into()))?,
        ),
        None => None,
    };
    let resp = transport
        .get_with_bearer(
            Call::new(issuer, Endpoint::Discovery),
            &url,
            bearer.as_deref(),
        )
        .await
        .map_err(DiscoveryError::Transport)?;
    if !resp.status.is_success() {
        return Err(DiscoveryError::Status(resp.status));
    }
    parse_metadata(&resp.body, issuer)
}

/// A discovery document's body, checked to name `issuer`.
pub(crate) fn parse_metadata(
    body: &[u8],
    issuer: &str,
) -> Result<ProviderMetadata, DiscoveryError> {
    let meta: ProviderMetadata = serde_json::from_slice(body).map_err(DiscoveryError::Json)?;
    // OIDC Discovery 1.0 §4.3: exact string comparison, trailing slash included.
    if meta.issuer != issuer {
        return Err(DiscoveryError::IssuerMismatch {
            expected: issuer.to_owned(),
            found: meta.issuer,
        });
    }
    Ok(meta)
}

/// Exponential backoff: `initial`, doubling, capped at `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before attempt `n + 1` (n starts at 0).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Runs `attempt` until it succeeds, fails permanently, or `deadline` passes; sleeping
/// with exponential backoff in between. The last error is returned inside `Deadline`.
pub async fn retry_until<T, E: std::fmt::Display, F, Fut>(
    deadline: Instant,
    backoff: Backoff,
    is_transient: impl Fn(&E) -> bool,
    mut attempt: F,
) -> Result<T, (E, bool)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut n = 0u32;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if !is_transient(&e) => return Err((e, false)),
            Err(e) => {
                let delay = backoff.delay(n);
                n = n.saturating_add(1);
                if Instant::now() + delay >= deadline {
                    return Err((e, true));
                }
                tracing::debug!(attempt = n, delay_ms = delay.as_millis() as u64, error = %e, "retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Discovery at start: retries transient failures with exponential backoff until
/// `deadline`; an issuer mismatch is final.
pub async fn discover_with_retry(
    transport: &HttpTransport,
    issuer: &str,
    credential: Option<&IssuerCredential>,
    deadline: Instant,
    backoff: Backoff,
) -> Result<ProviderMetadata, DiscoveryError> {
    retry_until(deadline, backoff, DiscoveryError::is_transient, || {
        discover_as(transport, issuer, credential)
    })
    .await
    .map_err(|(e, timed_out)| {
        if timed_out {
            DiscoveryError::Deadline(Box::new(e))
        } else {
            e
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oidc::transport::TransportConfig;
    use crate::testutil::{StubResponse, StubServer};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn discovery_url_drops_one_trailing_slash() {
        assert_eq!(
            discovery_url("https://t.auth0.com/"),
            "https://t.auth0.com/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url("https://kc/realms/x"),
            "https://kc/realms/x/.well-known/openid-configuration"
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(3), Duration::from_millis(800));
        assert_eq!(b.delay(4), Duration::from_secs(1));
        assert_eq!(b.delay(100), Duration::from_secs(1));
    }

    fn transport() -> HttpTransport {
        HttpTransport::new(TransportConfig {
            timeout: Duration::from_secs(2),
            ca_file: None,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn metadata_parses_unknown_fields_ignored() {
        let server = StubServer::start(|req| {
            let iss = format!("{}/", req.base);
            serde_json::json!({
                "issuer": iss,
                "jwks_uri": format!("{iss}.well-known/jwks.json"),
                "token_endpoint": format!("{iss}oauth/token"),
                "unknown_field": {"x": 1},
                "code_challenge_methods_supported": ["S256"]
            })
            .to_string()
        })
        .await;
        let issuer = format!("{}/", server.url(""));
        let meta = discover(&transport(), &issuer).await.unwrap();
        assert_eq!(meta.issuer, issuer);
        assert_eq!(meta.jwks_uri, format!("{issuer}.well-known/jwks.json"));
        assert_eq!(meta.code_challenge_methods_supported, vec!["S256"]);
        assert_eq!(meta.userinfo_endpoint, None);
        assert_eq!(
            server.last_path().as_deref(),
            Some("/.well-known/openid-configuration")
        );
    }

    #[tokio::test]
    async fn issuer_must_match_exactly_including_trailing_slash() {
        // The document names the issuer with a trailing slash (Auth0 style).
        let server = StubServer::start(|req| {
            let iss = format!("{}/", req.base);
            serde_json::json!({"issuer": iss, "jwks_uri": "https://x/jwks"}).to_string()
        })
        .await;
        let without_slash = server.url("");
        let err = discover(&transport(), &without_slash).await.unwrap_err();
        assert!(matches!(err, DiscoveryError::IssuerMismatch { .. }));
        assert!(!err.is_transient());
        // A retry loop stops at once on a mismatch.
        let err = discover_with_retry(
            &transport(),
            &without_slash,
            None,
            Instant::now() + Duration::from_secs(5),
            Backoff::default(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, DiscoveryError::IssuerMismatch { .. }));
        assert_eq!(server.hits(), 2);
    }

    #[test]
    fn odd_optional_fields_read_as_absent() {
        let m: ProviderMetadata = serde_json::from_value(serde_json::json!({
            "issuer": "https://i", "jwks_uri": "https://i/jwks",
            "code_challenge_methods_supported": null,
            "userinfo_endpoint": 5,
            "authorization_response_iss_parameter_supported": "yes",
            "scopes_supported": ["openid"]
        }))
        .unwrap();
        assert!(m.code_challenge_methods_supported.is_empty());
        assert_eq!(m.userinfo_endpoint, None);
        assert!(!m.authorization_response_iss_parameter_supported);
        assert_eq!(m.scopes_supported, vec!["openid"]);
    }

    #[tokio::test]
    async fn discovery_without_jwks_uri_is_an_error() {
        let server =
            StubServer::start(|req| serde_json::json!({"issuer": req.base}).to_string()).await;
        let err = discover(&transport(), &server.url("")).await.unwrap_err();
        assert!(matches!(err, DiscoveryError::Json(_)));
    }

    #[tokio::test]
    async fn discovery_retries_until_the_provider_answers() {
        let calls = Arc::new(AtomicUsize::new(0));
        let server = StubServer::start({
            let calls = calls.clone();
            move |req| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                if n < 2 {
                    StubResponse::status(503, "starting")
                } else {
                    let iss = req.base;
                    StubResponse::json(
                        serde_json::json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks")}),
                    )
                }
            }
        })
        .await;
        let issuer = server.url("");
        let backoff = Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
        };
        let meta = discover_with_retry(
            &transport(),
            &issuer,
            None,
            Instant::now() + Duration::from_secs(5),
            backoff,
        )
        .await
        .unwrap();
        assert_eq!(meta.issuer, issuer);
        assert_eq!(meta.jwks_uri, format!("{issuer}/jwks"));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn discovery_gives_up_at_the_deadline() {
        let server = StubServer::start(|_req| StubResponse::status(500, "down")).await;
        let backoff = Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(10),
        };
        let err = discover_with_retry(
            &transport(),
            &server.url(""),
            None,
            Instant::now() + Duration::from_millis(100),
            backoff,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, DiscoveryError::Deadline(_)));
        assert!(server.hits() >= 2);
    }
}
