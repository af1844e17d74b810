//! The client of the provider's token endpoint: the authorization code exchange
//! (RFC 6749 §4.1.3, with the PKCE verifier of RFC 7636 §4.5), the refresh (RFC 6749 §6),
//! and this client's authentication to it: `client_secret_basic`, `client_secret_post`
//! (RFC 6749 §2.3.1) or `private_key_jwt` (OIDC Core §9, RFC 7523 §2.2).
//!
//! The endpoint's URL is passed in (it comes from discovery, never from a guess).

use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;

use crate::config::{ClientAuth, ProviderConfig, Secret};
use crate::oidc::transport::{Call, Endpoint, HttpTransport, TransportError};
use crate::token::Clock;

/// The token endpoint's answer (RFC 6749 §5.1). A member given twice makes it unreadable
/// (serde refuses duplicate fields): RFC 6749 §3.1, for responses too.
#[derive(Debug, Deserialize)]
pub(super) struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// When an access token of `expires_in` seconds, answered at `answered_at`, expires. A
/// value past what a `SystemTime` holds means "expired now" (fail closed: the session
/// refreshes), never a panic.
pub(super) fn access_expiry(answered_at: SystemTime, expires_in: u64) -> SystemTime {
    answered_at
        .checked_add(std::time::Duration::from_secs(expires_in))
        .unwrap_or(answered_at)
}

#[derive(Deserialize)]
struct TokenErrorResponse {
    error: String,
}

/// Why a token call gave no tokens. Display never shows a token, a code or a secret.
#[derive(Debug, thiserror::Error)]
pub enum TokenCallError {
    /// The provider refused the grant (RFC 6749 §5.2: `invalid_grant`, ... with 400 or
    /// 401; Auth0 answers `invalid_grant` with 403).
    #[error("the provider refused the grant: {error} (HTTP {status})")]
    Refused { error: String, status: u16 },
    #[error("the provider's metadata is not loaded yet")]
    NotReady,
    #[error("the provider advertises no token_endpoint")]
    NoEndpoint,
    #[error("the token endpoint could not be reached")]
    Transport(#[source] TransportError),
    #[error("the token endpoint answered HTTP {0}")]
    Status(u16),
    #[error("the token response is not a valid token response")]
    BadResponse(#[source] serde_json::Error),
    #[error("the private_key_jwt client assertion could not be signed")]
    Assertion(#[source] jsonwebtoken::errors::Error),
}

impl TokenCallError {
    /// A refusal of the grant (the session or login cannot go on), rather than a provider
    /// that could not answer (fail closed, try again later).
    pub fn is_refusal(&self) -> bool {
        matches!(self, TokenCallError::Refused { .. })
    }
}

/// Why the `private_key_jwt` key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    #[error("not an RSA or P-256 private key in PEM")]
    NotAKey,
}

/// This client at the token endpoint: its id and credentials, over the provider transport.
pub(super) struct TokenEndpoint {
    /// The provider's issuer (the label of its call histograms and spans).
    issuer: String,
    client_id: String,
    client_secret: Option<Secret<String>>,
    auth: ClientAuth,
    /// `private_key_jwt`: the signing key and its algorithm.
    private_key: Option<(jsonwebtoken::EncodingKey, jsonwebtoken::Algorithm)>,
    transport: HttpTransport,
    clock: Arc<dyn Clock>,
}

impl TokenEndpoint {
    pub fn new(
        p: &ProviderConfig,
        client_id: &str,
        transport: HttpTransport,
        clock: Arc<dyn Clock>,
    ) -> Result<TokenEndpoint, KeyError> {
        let private_key = match (&p.client_auth, &p.private_key_file) {
            (ClientAuth::PrivateKeyJwt, Some(path)) => {
                let pem = std::fs::read(path).map_err(KeyError::Read)?;
                let rsa = jsonwebtoken::EncodingKey::from_rsa_pem(&pem)
                    .map(|k| (k, jsonwebtoken::Algorithm::RS256));
                let key = rsa
                    .or_else(|_| {
                        jsonwebtoken::EncodingKey::from_ec_pem(&pem)
                            .map(|k| (k, jsonwebtoken::Algorithm::ES256))
                    })
                    .map_err(|_| KeyError::NotAKey)?;
                Some(key)
            }
            _ => None,
        };
        Ok(TokenEndpoint {
            issuer: p.issuer.clone(),
            client_id: client_id.to_string(),
            client_secret: p.client_secret.clone(),
            auth: p.client_auth,
            private_key,
            transport,
            clock,
        })
    }

    /// RFC 6749 §4.1.3: the code, the same `redirect_uri` as in the authorization request,
    /// and the PKCE `code_verifier` (RFC 7636 §4.5).
    pub async fn exchange(
        &self,
        endpoint: &str,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<TokenResponse, TokenCallError> {
        self.call(
            endpoint,
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", code_verifier),
            ],
        )
        .await
    }

    /// RFC 6749 §6.
    pub async fn refresh(
        &self,
        endpoint: &str,
        refresh_token: &str,
    ) -> Result<TokenResponse, TokenCallError> {
        self.call(
            endpoint,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ],
        )
        .await
    }

    /// One call, with this client's authentication.
    async fn call(
        &self,
        endpoint: &str,
        form: &[(&str, &str)],
    ) -> Result<TokenResponse, TokenCallError> {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        let secret = self
            .client_secret
            .as_ref()
            .map(|s| s.expose().as_str())
            .unwrap_or("");
        let assertion;
        let basic = match self.auth {
            ClientAuth::ClientSecretBasic => Some((self.client_id.as_str(), secret)),
            ClientAuth::ClientSecretPost => {
                fields.push(("client_id", &self.client_id));
                fields.push(("client_secret", secret));
                None
            }
            ClientAuth::PrivateKeyJwt => {
                assertion = self.client_assertion(endpoint)?;
                fields.push(("client_id", &self.client_id));
                fields.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
                fields.push(("client_assertion", &assertion));
                None
            }
        };
        let resp = self
            .transport
            .post_form(
                Call::new(&self.issuer, Endpoint::Token),
                endpoint,
                &fields,
                basic,
            )
            .await
            .map_err(TokenCallError::Transport)?;
        let status = resp.status.as_u16();
        if (200..300).contains(&status) {
            return serde_json::from_slice::<TokenResponse>(&resp.body)
                .map_err(TokenCallError::BadResponse);
        }
        match status {
            // RFC 6749 §5.2 errors come as 400 (401 for client authentication); Auth0
            // answers invalid_grant with 403.
            400 | 401 | 403 => {
                let error = serde_json::from_slice::<TokenErrorResponse>(&resp.body)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| "no error code".into());
                Err(TokenCallError::Refused { error, status })
            }
            _ => Err(TokenCallError::Status(status)),
        }
    }

    /// RFC 7523 §2.2 client assertion for `private_key_jwt` (OIDC Core §9): issued and
    /// subject the client, audience the token endpoint, one minute, a fresh `jti`.
    fn client_assertion(&self, token_endpoint: &str) -> Result<String, TokenCallError> {
        let Some((key, alg)) = &self.private_key else {
            // Config validation requires the key with private_key_jwt; build() loads it.
            return Err(TokenCallError::Assertion(
                jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into(),
            ));
        };
        let iat = self
            .clock
            .now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut jti = [0u8; 16];
        let _ = aws_lc_rs::rand::fill(&mut jti);
        let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
        let claims = serde_json::json!({
            "iss": self.client_id, "sub": self.client_id, "aud": token_endpoint,
            "iat": iat, "exp": iat + 60, "jti": jti,
        });
        jsonwebtoken::encode(&jsonwebtoken::Header::new(*alg), &claims, key)
            .map_err(TokenCallError::Assertion)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::config::Config;
    use crate::oidc::transport::TransportConfig;
    use crate::testutil::{StubResponse, StubServer};
    use crate::token::SystemClock;

    /// Found reading the code after the `provider_json` fuzz target's `exp` panic: a
    /// provider's `expires_in` of 2^64-1 panicked adding it to the answer's time.
    #[test]
    fn access_expiry_never_panics() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        assert_eq!(
            access_expiry(t, 60),
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_060)
        );
        assert_eq!(access_expiry(t, u64::MAX), t);
        let r: TokenResponse =
            serde_json::from_value(json!({"access_token": "a", "expires_in": u64::MAX})).unwrap();
        assert_eq!(access_expiry(t, r.expires_in.unwrap()), t);
    }

    fn provider(client_auth: &str) -> ProviderConfig {
        let text = format!(
            "[provider]\nissuer = \"https://issuer.example/\"\nclient_id = \"c1\"\n\
             client_secret = \"s3cr:t\"\nclient_auth = \"{client_auth}\"\n\
             [[upstream]]\nname = \"app\"\nurl = \"http://127.0.0.1:9\"\n\
             [[route]]\npath = \"/\"\nupstream = \"app\"\nauth = \"public\"\n"
        );
        let c = Config::from_toml(&text, std::path::Path::new(".")).unwrap();
        c.provider.unwrap()
    }

    fn endpoint(client_auth: &str) -> TokenEndpoint {
        let transport = HttpTransport::new(TransportConfig::default()).unwrap();
        TokenEndpoint::new(
            &provider(client_auth),
            "c1",
            transport,
            Arc::new(SystemClock),
        )
        .unwrap()
    }

    /// A token endpoint that answers `answer` and remembers what it was sent.
    async fn stub(
        answer: StubResponse,
    ) -> (StubServer, Arc<Mutex<Vec<crate::testutil::StubRequest>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let server = StubServer::start(move |req| {
            s.lock().unwrap().push(req);
            answer.clone()
        })
        .await;
        (server, seen)
    }

    #[tokio::test]
    async fn the_exchange_authenticates_the_client_as_configured() {
        let ok = StubResponse::json(json!({"access_token": "at", "id_token": "it",
            "refresh_token": "rt", "expires_in": 60, "scope": "openid"}));
        let (server, seen) = stub(ok).await;
        let url = server.url("/token");
        let t = endpoint("client_secret_basic")
            .exchange(&url, "the-code", "https://app/cb", "verifier")
            .await
            .unwrap();
        assert_eq!(
            (
                t.access_token.as_str(),
                t.expires_in,
                t.refresh_token.as_deref()
            ),
            ("at", Some(60), Some("rt"))
        );
        let basic = seen.lock().unwrap()[0].clone();
        // RFC 6749 §2.3.1: id and secret form-urlencoded, then Basic.
        assert_eq!(
            basic.header("authorization").as_deref(),
            Some("Basic YzE6czNjciUzQXQ=")
        );
        let body = basic.body_str();
        for part in [
            "grant_type=authorization_code",
            "code=the-code",
            "redirect_uri=https%3A%2F%2Fapp%2Fcb",
            "code_verifier=verifier",
        ] {
            assert!(body.contains(part), "{body}");
        }
        assert!(!body.contains("client_secret"), "{body}");

        endpoint("client_secret_post")
            .refresh(&url, "the-rt")
            .await
            .unwrap();
        let post = seen.lock().unwrap()[1].clone();
        assert!(post.header("authorization").is_none());
        let body = post.body_str();
        for part in [
            "grant_type=refresh_token",
            "refresh_token=the-rt",
            "client_id=c1",
            "client_secret=s3cr%3At",
        ] {
            assert!(body.contains(part), "{body}");
        }
    }

    #[tokio::test]
    async fn refusals_unusable_answers_and_outages_are_told_apart() {
        let e = endpoint("client_secret_basic");
        for (answer, refusal, what) in [
            (
                StubResponse::status(400, r#"{"error":"invalid_grant"}"#),
                true,
                "400 invalid_grant",
            ),
            // Auth0 answers invalid_grant with 403.
            (
                StubResponse::status(403, r#"{"error":"invalid_grant"}"#),
                true,
                "403",
            ),
            (StubResponse::status(401, "no JSON"), true, "401"),
            (StubResponse::status(503, "{}"), false, "503"),
            (StubResponse::status(200, "not json"), false, "not JSON"),
            // RFC 6749 §3.1: a member given twice is no token response.
            (
                StubResponse::status(200, r#"{"access_token":"a","access_token":"b"}"#),
                false,
                "a duplicated member",
            ),
        ] {
            let (server, _) = stub(answer).await;
            let got = e.refresh(&server.url("/token"), "rt").await.unwrap_err();
            assert_eq!(got.is_refusal(), refusal, "{what}: {got}");
        }
        let got = e
            .refresh("http://127.0.0.1:9/token", "rt")
            .await
            .unwrap_err();
        assert!(matches!(got, TokenCallError::Transport(_)), "{got}");
    }
}
