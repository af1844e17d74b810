//! `token_file`: a bearer token that one issuer's metadata calls (discovery and JWKS) must
//! carry, as a Kubernetes API server asks of `/.well-known/openid-configuration` and
//! `/openid/v1/jwks` on a default cluster (only authenticated service accounts may read
//! them). The file is read at every call, so a rotated (projected, short-lived) token is
//! used as soon as the kubelet has written it.
//!
//! Where the token may go: the issuer's own discovery URL, the `jwks_uri` named in the
//! config, and a discovered `jwks_uri` on the issuer's own origin. A discovered `jwks_uri`
//! on any other origin is refused (configure it as `jwks_uri` to use it), so the token
//! never leaves for a host that nobody named in the config.

use std::path::PathBuf;

/// Why a metadata call with a `token_file` could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("reading token_file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token_file {0} is empty or not a single token")]
    Malformed(PathBuf),
    #[error(
        "the discovered jwks_uri is not on the issuer's origin: with token_file set, configure \
         jwks_uri explicitly (the token is sent only to URLs named in the config or on the \
         issuer's origin)"
    )]
    ForeignOrigin,
}

/// One issuer's metadata credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerCredential {
    file: PathBuf,
    /// `scheme://host:port` of the issuer.
    origin: Option<String>,
    /// The `jwks_uri` of the config, exactly.
    configured_jwks: Option<String>,
}

/// `scheme://host:port` (the port made explicit), lowercase scheme and host; `None` for a
/// string that is not an absolute http(s) URL.
pub fn origin(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    Some(format!(
        "{}://{}:{}",
        u.scheme(),
        u.host_str()?,
        u.port_or_known_default()?
    ))
}

impl IssuerCredential {
    pub fn new(file: PathBuf, issuer: &str, configured_jwks: Option<String>) -> Self {
        IssuerCredential {
            file,
            origin: origin(issuer),
            configured_jwks,
        }
    }

    /// Whether the token may be sent to `url`: the configured `jwks_uri`, or a URL on the
    /// issuer's own origin (its discovery document, a discovered `jwks_uri` beside it).
    pub fn may_send_to(&self, url: &str) -> bool {
        self.configured_jwks.as_deref() == Some(url)
            || (self.origin.is_some() && origin(url) == self.origin)
    }

    /// The token for a call to `url`, read from the file now.
    pub async fn token_for(&self, url: &str) -> Result<String, CredentialError> {
        if !self.may_send_to(url) {
            return Err(CredentialError::ForeignOrigin);
        }
        let text = tokio::fs::read_to_string(&self.file)
            .await
            .map_err(|source| CredentialError::Read {
                path: self.file.clone(),
                source,
            })?;
        let token = text.trim();
        // One RFC 6750 b64token: no spaces or line breaks inside, not empty.
        if token.is_empty() || token.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(CredentialError::Malformed(self.file.clone()));
        }
        Ok(token.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(file: PathBuf) -> IssuerCredential {
        IssuerCredential::new(
            file,
            "https://kubernetes.default.svc",
            Some("https://10.0.0.1:6443/openid/v1/jwks".into()),
        )
    }

    #[test]
    fn sent_only_to_the_issuer_origin_and_the_configured_jwks() {
        let c = cred("/nonexistent".into());
        assert!(c.may_send_to("https://kubernetes.default.svc/.well-known/openid-configuration"));
        assert!(c.may_send_to("https://kubernetes.default.svc:443/openid/v1/jwks"));
        assert!(c.may_send_to("https://KUBERNETES.default.svc/openid/v1/jwks"));
        assert!(c.may_send_to("https://10.0.0.1:6443/openid/v1/jwks"));
        // Another port, scheme or host: never.
        assert!(!c.may_send_to("https://kubernetes.default.svc:6443/openid/v1/jwks"));
        assert!(!c.may_send_to("http://kubernetes.default.svc/openid/v1/jwks"));
        assert!(!c.may_send_to("https://kubernetes.default.svc.evil.example/jwks"));
        assert!(!c.may_send_to("https://10.0.0.1:6443/openid/v1/jwks?x"));
        assert!(!c.may_send_to("not a url"));
    }

    #[tokio::test]
    async fn read_at_every_call_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "first.token.value\n").unwrap();
        let c = cred(f.clone());
        let url = "https://kubernetes.default.svc/openid/v1/jwks";
        assert_eq!(c.token_for(url).await.unwrap(), "first.token.value");
        std::fs::write(&f, "second.token.value").unwrap();
        assert_eq!(c.token_for(url).await.unwrap(), "second.token.value");
        assert!(matches!(
            c.token_for("https://elsewhere.example/jwks").await,
            Err(CredentialError::ForeignOrigin)
        ));
        std::fs::write(&f, "two words").unwrap();
        assert!(matches!(
            c.token_for(url).await,
            Err(CredentialError::Malformed(_))
        ));
        std::fs::remove_file(&f).unwrap();
        assert!(matches!(
            c.token_for(url).await,
            Err(CredentialError::Read { .. })
        ));
    }
}
