//! DPoP-bound access tokens (RFC 9449) at the gate: `Authorization: DPoP <token>` with a
//! `DPoP` proof header. The proof is checked on every request (`token::dpop`), the token
//! by the validator (cached: the signature only on a miss), then the binding of the two
//! (`cnf.jkt` = the proof key's thumbprint) and, last, the proof's `jti` in the replay set
//! of the revocation store (so refused proofs never fill it).
//!
//! The URL a proof must name (`htu`) is the externally visible one: the origin of
//! `server.public_url` when set, else the route's `host` with the listener's scheme (and
//! the port the client sent in `Host`). A route with neither cannot know it, so DPoP
//! tokens are refused there (401).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http::HeaderMap;

use super::client_cert::ClientCert;
use crate::error::Refusal;
use crate::identity::{Binding, Identity};
use crate::revocation::{unix, FirstUse, ReplaySet, Revocations};
use crate::token::dpop::{verify_proof, DpopRefusal, Nonces, ProofError, ProofRequest, MAX_AGE};
use crate::token::{TokenError, TokenValidator};

/// How long a server nonce is handed out before the next one (each is accepted for up to
/// two periods).
pub const NONCE_PERIOD: Duration = Duration::from_secs(60);

/// What a generation shares between its routes to check DPoP proofs.
pub struct DpopVerifier {
    revocations: Revocations,
    nonces: Option<Nonces>,
}

impl std::fmt::Debug for DpopVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopVerifier")
            .field("nonces", &self.nonces.is_some())
            .finish_non_exhaustive()
    }
}

impl DpopVerifier {
    /// `nonces`: `bearer.dpop_nonce`. `shared`: the first session secret, when there is
    /// one: the nonce key is derived from it, so every replica with the same secrets
    /// accepts the others' nonces; without it the key is random, for this process only
    /// (README "DPoP-bound tokens").
    pub fn new(
        revocations: Revocations,
        nonces: bool,
        shared: Option<&[u8; 32]>,
    ) -> Result<DpopVerifier, aws_lc_rs::error::Unspecified> {
        Ok(DpopVerifier {
            revocations,
            nonces: match (nonces, shared) {
                (false, _) => None,
                (true, Some(secret)) => Some(Nonces::derived(secret, NONCE_PERIOD)?),
                (true, None) => Some(Nonces::new(NONCE_PERIOD)?),
            },
        })
    }

    fn nonce(&self, now: u64) -> Option<String> {
        self.nonces.as_ref().map(|n| n.current(now))
    }
}

/// Where a route's requests are, as its clients see them (the base of `htu`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HtuBase {
    /// The origin of `server.public_url` (`https://app.example.com`).
    Origin(String),
    /// The route's `host` with the listener's scheme; the port is the one the client sent.
    Host { scheme: &'static str, host: String },
}

impl HtuBase {
    /// The base for a route: `public_url`'s origin, else its host, else none.
    pub fn for_route(
        public_url: Option<&url::Url>,
        route_host: Option<&str>,
        tls: bool,
    ) -> Option<HtuBase> {
        if let Some(u) = public_url {
            return Some(HtuBase::Origin(u.origin().ascii_serialization()));
        }
        route_host.map(|h| HtuBase::Host {
            scheme: if tls { "https" } else { "http" },
            host: h.to_ascii_lowercase(),
        })
    }

    /// The URL of a request for `path`, whose `Host` (or `:authority`) was `authority`.
    fn url(&self, authority: Option<&str>, path: &str) -> Option<url::Url> {
        let text = match self {
            HtuBase::Origin(o) => format!("{o}{path}"),
            HtuBase::Host { scheme, host } => {
                let authority = authority?;
                let u = url::Url::parse(&format!("{scheme}://{authority}/")).ok()?;
                // Routing matched the host already; the port is the client's.
                if u.host_str()? != host {
                    return None;
                }
                format!("{scheme}://{authority}{path}")
            }
        };
        url::Url::parse(&text).ok()
    }
}

/// The request the gate hands over.
pub struct DpopRequest<'a> {
    pub method: &'a str,
    pub headers: &'a HeaderMap,
    /// The request path (no query).
    pub path: &'a str,
    /// `Host` / `:authority` as the client sent it.
    pub authority: Option<&'a str>,
    /// For a token bound to the DPoP key and a client certificate both.
    pub client_cert: ClientCert<'a>,
}

fn refused(kind: DpopRefusal, nonce: Option<String>) -> Refusal {
    Refusal::Dpop { kind, nonce }
}

/// Authenticates `Authorization: DPoP <token>` (RFC 9449 §7.1).
pub async fn authenticate(
    verifier: Option<&DpopVerifier>,
    base: Option<&HtuBase>,
    tokens: &TokenValidator,
    token: &[u8],
    req: &DpopRequest<'_>,
) -> Result<Arc<Identity>, Refusal> {
    let now_time = tokens.now();
    let now = unix(now_time);
    let nonce = || verifier.and_then(|v| v.nonce(now));
    let (Some(verifier), Some(url)) = (verifier, base.and_then(|b| b.url(req.authority, req.path)))
    else {
        return Err(refused(DpopRefusal::NoUrl, None));
    };
    let Ok(token_text) = std::str::from_utf8(token) else {
        return Err(Refusal::TokenMalformed);
    };
    // §4.3 step 1: exactly one DPoP header.
    let mut proofs = req.headers.get_all("dpop").iter();
    let proof = match (proofs.next(), proofs.next()) {
        (None, _) => return Err(refused(DpopRefusal::Proof(ProofError::Missing), nonce())),
        (Some(_), Some(_)) => {
            return Err(refused(DpopRefusal::Proof(ProofError::Several), nonce()))
        }
        (Some(p), None) => p
            .to_str()
            .map_err(|_| refused(DpopRefusal::Proof(ProofError::Malformed), nonce()))?,
    };
    let proof = verify_proof(
        proof,
        &ProofRequest {
            method: req.method,
            url: &url,
            access_token: token_text,
            now,
            leeway: tokens.leeway().as_secs(),
            nonces: verifier.nonces.as_ref(),
        },
    )
    .map_err(|e| match e {
        ProofError::Nonce => refused(DpopRefusal::UseNonce, nonce()),
        e => refused(DpopRefusal::Proof(e), nonce()),
    })?;
    // The token: from the cache when it was validated before (the signature only then);
    // the binding below is checked on every request.
    let identity = tokens.validate_bytes(token).await.map_err(|e| {
        if e.is_syntax() {
            Refusal::TokenMalformed
        } else if e.is_unavailable() {
            Refusal::TokenUnavailable(e)
        } else {
            refused(DpopRefusal::Token(e), nonce())
        }
    })?;
    // §7.1 / §6.1: cnf.jkt is the thumbprint of the proof's key; a token bound to a
    // client certificate too (RFC 8705 `x5t#S256`) needs that certificate as well.
    match identity.binding() {
        Some(b @ (Binding::Dpop(_) | Binding::Both { .. })) => {
            if b.jkt() != Some(proof.jkt.as_str()) {
                return Err(refused(DpopRefusal::KeyMismatch, nonce()));
            }
            if b.x5t().is_some_and(|x5t| !req.client_cert.matches(x5t)) {
                return Err(refused(
                    DpopRefusal::Token(TokenError::CertificateBinding),
                    nonce(),
                ));
            }
        }
        Some(Binding::Certificate(_) | Binding::Unsupported) | None => {
            return Err(refused(DpopRefusal::NotBound, nonce()))
        }
    }
    // §11.1: each proof once, for as long as its iat is accepted.
    let until = UNIX_EPOCH
        + Duration::from_secs(proof.iat)
        + MAX_AGE
        + tokens.leeway() * 2
        + Duration::from_secs(1);
    let first = verifier
        .revocations
        .first_use(
            ReplaySet::DpopProof,
            &proof.jkt,
            &proof.jti,
            proof.iat,
            until,
            now_time,
        )
        .await;
    match first {
        Ok(FirstUse::Fresh) => Ok(identity),
        Ok(FirstUse::Replayed) => Err(refused(DpopRefusal::Replayed, nonce())),
        Ok(FirstUse::IssuedBeforeReset | FirstUse::FreshAfterReset) => {
            tracing::warn!(
                "DPoP replay set full or reset: proofs issued until now are refused (fail closed)"
            );
            Err(refused(DpopRefusal::ReplayUnknown, nonce()))
        }
        Err(e) => {
            tracing::warn!(error = %e, "DPoP replay set unavailable: refusing (fail closed)");
            Err(Refusal::Unavailable("the DPoP replay store is unavailable"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_base_prefers_the_public_url_then_the_route_host() {
        let public = url::Url::parse("https://App.Example.com:8443/base/").unwrap();
        let b = HtuBase::for_route(Some(&public), Some("other.example"), false).unwrap();
        assert_eq!(b, HtuBase::Origin("https://app.example.com:8443".into()));
        assert_eq!(
            b.url(Some("evil.example"), "/api/x").unwrap().as_str(),
            "https://app.example.com:8443/api/x",
            "the Host header plays no part when public_url is set"
        );
        let b = HtuBase::for_route(None, Some("api.example"), true).unwrap();
        assert_eq!(
            b.url(Some("api.example:8443"), "/a").unwrap().as_str(),
            "https://api.example:8443/a"
        );
        assert_eq!(
            b.url(Some("API.example"), "/a").unwrap().as_str(),
            "https://api.example/a"
        );
        assert_eq!(b.url(Some("evil.example"), "/a"), None);
        assert_eq!(b.url(None, "/a"), None);
        assert_eq!(
            HtuBase::for_route(None, Some("h"), false),
            Some(HtuBase::Host {
                scheme: "http",
                host: "h".into()
            })
        );
        // Neither: DPoP is refused on such a route.
        assert_eq!(HtuBase::for_route(None, None, true), None);
    }

    #[test]
    fn forward_auth_urls_lose_the_default_port() {
        // Forward auth hands the original host without its port: the URL is the one of
        // the scheme's default port, which an htu naming :443 (or :80) equals (RFC 9449
        // §4.3, RFC 3986 §6.2.3).
        let b = HtuBase::for_route(None, Some("api.example"), true).unwrap();
        let u = b.url(Some("api.example"), "/orders/1").unwrap();
        assert_eq!(u.as_str(), "https://api.example/orders/1");
        let htu = url::Url::parse("https://API.example:443/orders/1").unwrap();
        assert_eq!(
            (htu.host(), htu.port_or_known_default()),
            (u.host(), u.port_or_known_default())
        );
        let b = HtuBase::for_route(None, Some("api.example"), false).unwrap();
        assert_eq!(
            b.url(Some("api.example:80"), "/x").unwrap().as_str(),
            "http://api.example/x"
        );
        // With public_url, the front proxy's origin, whatever the subrequest's Host.
        let public = url::Url::parse("https://app.example.com:443/").unwrap();
        let b = HtuBase::for_route(Some(&public), None, false).unwrap();
        assert_eq!(
            b.url(Some("portcullis.internal:4180"), "/orders/1")
                .unwrap()
                .as_str(),
            "https://app.example.com/orders/1"
        );
    }
}
