//! DPoP proofs (RFC 9449) as a resource server checks them: the proof JWT of one request,
//! its key's thumbprint (RFC 7638) for the token's `cnf.jkt`, and server nonces (§8).
//!
//! [`verify_proof`] is pure (no store, no clock of its own): the gate adds the two checks
//! that need state, the token's binding and the `jti` replay set (`auth::dpop`).
//!
//! ```text
//! verify_proof(proof, request)                      RFC 9449 §4.3
//!   ├─ one JWS, ≤ 8 KiB, header: typ dpop+jwt (4), alg asymmetric from ALGORITHMS (5),
//!   │   no crit, jwk a public key (7: a private member is refused)
//!   ├─ signature by that jwk (6)
//!   ├─ claims: jti, htm = method (8), htu = URL without query and fragment (9),
//!   │   iat within [now - max_age - leeway, now + leeway] (11)
//!   ├─ nonce, when the server asks for them (10): one of ours, not too old → else use_dpop_nonce
//!   └─ ath = base64url(SHA-256(access token)) (§7: with an access token, always required)
//! ```

use std::collections::HashSet;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::TokenError;
use super::jwks::parse_jwk;

/// The `typ` of a proof (RFC 9449 §4.2).
pub const PROOF_TYPE: &str = "dpop+jwt";

/// Asymmetric algorithms accepted for proofs (RFC 9449 §4.2: no `none`, no MAC). Also
/// what the `algs` challenge parameter lists.
pub const ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// [`ALGORITHMS`] as the `algs` parameter of a `DPoP` challenge (RFC 9449 §7.1).
pub const ALGS_PARAM: &str = "ES256 ES384 EdDSA RS256 RS384 RS512 PS256 PS384 PS512";

/// Proofs longer than this are refused before parsing (a proof with an RSA key is ~1.5 KiB).
pub const MAX_PROOF_LEN: usize = 8 * 1024;

/// How old a proof may be (its `iat`), beside the leeway (RFC 9449 §11.1).
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// `jti` values longer than this are refused (a random 96-bit value is 16 characters).
const MAX_JTI_LEN: usize = 256;

/// JWK members that only a private (or symmetric) key has (RFC 7518 §6.2.2, §6.3.2,
/// §6.4.1; RFC 8037 §2).
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a proof was refused. Safe to show (never the proof or the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("no DPoP proof")]
    Missing,
    #[error("more than one DPoP proof")]
    Several,
    #[error("DPoP proof too long")]
    TooLong,
    #[error("malformed DPoP proof")]
    Malformed,
    #[error("DPoP proof typ is not dpop+jwt")]
    WrongType,
    #[error("DPoP proof algorithm not accepted")]
    Algorithm,
    #[error("DPoP proof has critical headers")]
    Critical,
    #[error("DPoP proof jwk is not a usable public key")]
    BadKey,
    #[error("DPoP proof jwk holds a private key")]
    PrivateKey,
    #[error("DPoP proof signature invalid")]
    BadSignature,
    #[error("DPoP proof lacks a required claim")]
    MissingClaim,
    #[error("DPoP proof htm does not match the request method")]
    Method,
    #[error("DPoP proof htu does not match the request URL")]
    Url,
    #[error("DPoP proof iat outside the accepted window")]
    Stale,
    #[error("DPoP proof ath does not match the access token")]
    TokenHash,
    #[error("DPoP proof nonce missing or not current")]
    Nonce,
}

impl ProofError {
    /// A short code for logs and metrics.
    pub fn code(self) -> &'static str {
        match self {
            ProofError::Missing => "missing",
            ProofError::Several => "several",
            ProofError::TooLong => "too_long",
            ProofError::Malformed => "malformed",
            ProofError::WrongType => "wrong_type",
            ProofError::Algorithm => "alg",
            ProofError::Critical => "crit",
            ProofError::BadKey => "bad_key",
            ProofError::PrivateKey => "private_key",
            ProofError::BadSignature => "bad_signature",
            ProofError::MissingClaim => "missing_claim",
            ProofError::Method => "htm",
            ProofError::Url => "htu",
            ProofError::Stale => "iat",
            ProofError::TokenHash => "ath",
            ProofError::Nonce => "nonce",
        }
    }
}

/// What a verified proof tells the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// RFC 7638 SHA-256 thumbprint of the proof key, base64url: compared with `cnf.jkt`.
    pub jkt: String,
    pub jti: String,
    /// Unix seconds.
    pub iat: u64,
}

/// The request a proof must match.
pub struct ProofRequest<'a> {
    /// The request method (`htm`, compared exactly: RFC 9110 methods are case-sensitive).
    pub method: &'a str,
    /// The externally visible URL of the request; its query and fragment are ignored.
    pub url: &'a url::Url,
    /// The access token sent with the proof (`ath`).
    pub access_token: &'a str,
    /// Unix seconds.
    pub now: u64,
    /// Clock skew allowed on `iat`, both ways.
    pub leeway: u64,
    /// Server nonces, when proofs must carry one.
    pub nonces: Option<&'a Nonces>,
}

#[derive(Deserialize)]
struct ProofHeader {
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    jwk: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

#[derive(Deserialize)]
struct ProofClaims {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    htm: Option<String>,
    #[serde(default)]
    htu: Option<String>,
    #[serde(default)]
    iat: Option<Value>,
    #[serde(default)]
    ath: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

/// base64url(SHA-256(bytes)), unpadded.
pub fn sha256_b64(bytes: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    URL_SAFE_NO_PAD.encode(d.as_ref())
}

/// RFC 7638 §3: the SHA-256 thumbprint of a public JWK: its required members only, in
/// lexicographic order, no white space. `None` for a key type we do not accept.
pub fn thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let s = |k: &str| jwk.get(k).and_then(Value::as_str);
    // One buffer, members written in order (on every DPoP request: no JSON value made).
    let mut c =
        String::with_capacity(64 + s("n").map_or(0, str::len) + s("x").map_or(0, str::len) * 2);
    match s("kty")? {
        "EC" => {
            let (crv, x, y) = (s("crv")?, s("x")?, s("y")?);
            c.push_str(r#"{"crv":"#);
            push_quoted(&mut c, crv);
            c.push_str(r#","kty":"EC","x":"#);
            push_quoted(&mut c, x);
            c.push_str(r#","y":"#);
            push_quoted(&mut c, y);
        }
        "RSA" => {
            let (e, n) = (s("e")?, s("n")?);
            c.push_str(r#"{"e":"#);
            push_quoted(&mut c, e);
            c.push_str(r#","kty":"RSA","n":"#);
            push_quoted(&mut c, n);
        }
        "OKP" => {
            let (crv, x) = (s("crv")?, s("x")?);
            c.push_str(r#"{"crv":"#);
            push_quoted(&mut c, crv);
            c.push_str(r#","kty":"OKP","x":"#);
            push_quoted(&mut c, x);
        }
        _ => return None,
    }
    c.push('}');
    Some(sha256_b64(c.as_bytes()))
}

/// `v` as a JSON string, exactly as serde_json writes it (RFC 7638 §3: no white space,
/// the JSON quoting of RFC 8259): as it is between quotes when nothing needs escaping (the
/// base64url values and names of any real key), else by serde_json.
fn push_quoted(out: &mut String, v: &str) {
    if v.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(v);
        out.push('"');
    } else {
        out.push_str(&Value::from(v).to_string());
    }
}

fn b64(part: &str) -> Result<Vec<u8>, ProofError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| ProofError::Malformed)
}

/// RFC 9449 §4.3 step 9: `htu` equal to the request URL, both normalized (RFC 3986 §6.2.2
/// and §6.2.3: case of scheme and host, default port, dot segments: what the URL parser
/// does), query and fragment ignored.
fn same_url(htu: &str, want: &url::Url) -> bool {
    let Ok(got) = url::Url::parse(htu) else {
        return false;
    };
    got.scheme() == want.scheme()
        && got.username().is_empty()
        && got.password().is_none()
        && got.host() == want.host()
        && got.port_or_known_default() == want.port_or_known_default()
        && got.path() == want.path()
}

/// Verifies a DPoP proof for a request (RFC 9449 §4.3, §7.1 `ath`). The key binding to
/// the token and the `jti` replay check are the caller's.
pub fn verify_proof(proof: &str, req: &ProofRequest<'_>) -> Result<VerifiedProof, ProofError> {
    if proof.len() > MAX_PROOF_LEN {
        return Err(ProofError::TooLong);
    }
    // Step 2: a well-formed JWS compact serialization.
    let mut parts = proof.split('.');
    let (Some(h), Some(_), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProofError::Malformed);
    };
    let header: ProofHeader =
        serde_json::from_slice(&b64(h)?).map_err(|_| ProofError::Malformed)?;
    // Step 4: explicit type.
    if header.typ.as_deref() != Some(PROOF_TYPE) {
        return Err(ProofError::WrongType);
    }
    // Step 5: an asymmetric algorithm we support; `none` and MACs are refused by name.
    let alg = header.alg.as_deref().ok_or(ProofError::Malformed)?;
    let alg: Algorithm = alg.parse().map_err(|_| ProofError::Algorithm)?;
    if !ALGORITHMS.contains(&alg) || sig.is_empty() {
        return Err(ProofError::Algorithm);
    }
    if header.crit {
        return Err(ProofError::Critical);
    }
    // Step 7: the key is public: any private member is refused (never used, never kept).
    let Some(Value::Object(jwk)) = &header.jwk else {
        return Err(ProofError::BadKey);
    };
    if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
        return Err(ProofError::PrivateKey);
    }
    let jwk_value = header.jwk.as_ref().ok_or(ProofError::BadKey)?;
    let key = parse_jwk(jwk_value).ok_or(ProofError::BadKey)?;
    // RFC 8725 §3.1: the key must fit the algorithm (type, curve, its own `alg`).
    if !key.fits(alg) {
        return Err(ProofError::BadKey);
    }
    let jkt = thumbprint(jwk).ok_or(ProofError::BadKey)?;
    // Step 6: the signature, by that key. Times are ours to check (below).
    let mut v = Validation::new(alg);
    v.required_spec_claims = HashSet::new();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    let claims = jsonwebtoken::decode::<ProofClaims>(proof, &key.key, &v)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_)
            | jsonwebtoken::errors::ErrorKind::Base64(_)
            | jsonwebtoken::errors::ErrorKind::Utf8(_)
            | jsonwebtoken::errors::ErrorKind::InvalidToken => ProofError::Malformed,
            _ => ProofError::BadSignature,
        })?
        .claims;
    // Step 3: the required claims.
    let (Some(jti), Some(htm), Some(htu), Some(iat)) =
        (claims.jti, claims.htm, claims.htu, claims.iat)
    else {
        return Err(ProofError::MissingClaim);
    };
    if jti.is_empty() || jti.len() > MAX_JTI_LEN {
        return Err(ProofError::MissingClaim);
    }
    // Step 8.
    if htm != req.method {
        return Err(ProofError::Method);
    }
    // Step 9.
    if !same_url(&htu, req.url) {
        return Err(ProofError::Url);
    }
    // Step 11: iat within the window, by our clock.
    let iat = iat.as_f64().ok_or(ProofError::MissingClaim)?;
    if !iat.is_finite() || iat < 0.0 {
        return Err(ProofError::Stale);
    }
    let iat = iat as u64;
    let oldest = req
        .now
        .saturating_sub(MAX_AGE.as_secs())
        .saturating_sub(req.leeway);
    if iat < oldest || iat > req.now.saturating_add(req.leeway) {
        return Err(ProofError::Stale);
    }
    // §7.1: with an access token, `ath` is required and must match it.
    match claims.ath {
        Some(ath) if ath == sha256_b64(req.access_token.as_bytes()) => {}
        _ => return Err(ProofError::TokenHash),
    }
    // Step 10 / §8: a nonce of ours, when we ask for them.
    if let Some(n) = req.nonces {
        if !claims
            .nonce
            .as_deref()
            .is_some_and(|c| n.accepts(c, req.now))
        {
            return Err(ProofError::Nonce);
        }
    }
    Ok(VerifiedProof { jkt, jti, iat })
}

/// Server-provided nonces (RFC 9449 §8): `base64url(period number ‖ HMAC-SHA256(key,
/// period number))`. A new one every `period`; the current and the previous one are
/// accepted, so a nonce lives between one and two periods. Stateless: nothing is stored.
/// The key is derived from a secret the replicas share ([`Nonces::derived`], from the
/// session secret), so each accepts the others' nonces; without one it is random per
/// process (another replica's nonce then gets `use_dpop_nonce` and a fresh nonce, once).
pub struct Nonces {
    key: aws_lc_rs::hmac::Key,
    period: u64,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

impl Nonces {
    /// Nonces under a fresh random key.
    pub fn new(period: Duration) -> Result<Nonces, aws_lc_rs::error::Unspecified> {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret)?;
        Ok(Nonces::with_key(&secret, period))
    }

    /// Nonces under a key derived from a secret every replica shares (a session secret):
    /// HKDF-SHA256 with a label of its own, so that a nonce one replica hands out is
    /// accepted by the others, and the key says nothing of the secret (nor is it the key
    /// of any other use of that secret).
    pub fn derived(
        secret: &[u8; 32],
        period: Duration,
    ) -> Result<Nonces, aws_lc_rs::error::Unspecified> {
        use aws_lc_rs::hkdf;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"portcullis DPoP nonce").extract(secret);
        let mut key = [0u8; 32];
        prk.expand(&[b"portcullis DPoP nonce HMAC key v1"], hkdf::HKDF_SHA256)?
            .fill(&mut key)?;
        Ok(Nonces::with_key(&key, period))
    }

    pub fn with_key(secret: &[u8], period: Duration) -> Nonces {
        Nonces {
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret),
            period: period.as_secs().max(1),
        }
    }

    fn for_period(&self, n: u64) -> String {
        let tag = aws_lc_rs::hmac::sign(&self.key, &n.to_be_bytes());
        let mut raw = Vec::with_capacity(8 + 32);
        raw.extend_from_slice(&n.to_be_bytes());
        raw.extend_from_slice(tag.as_ref());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The nonce to hand out at `now` (Unix seconds).
    pub fn current(&self, now: u64) -> String {
        self.for_period(now / self.period)
    }

    /// Whether `nonce` is ours and of this period or the one before.
    pub fn accepts(&self, nonce: &str, now: u64) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        if raw.len() != 40 {
            return false;
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&raw[..8]);
        let n = u64::from_be_bytes(n);
        let current = now / self.period;
        if n != current && n.saturating_add(1) != current {
            return false;
        }
        aws_lc_rs::hmac::verify(&self.key, &raw[..8], &raw[8..]).is_ok()
    }
}

/// Why a DPoP request was refused (401 with a `DPoP` challenge).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DpopRefusal {
    /// RFC 9449 §4.3: the proof itself (`invalid_dpop_proof`).
    #[error("{0}")]
    Proof(ProofError),
    /// §11.1: this proof's `jti` was seen before.
    #[error("DPoP proof replayed")]
    Replayed,
    /// The replay set was full and was reset: whether this proof was seen is unknown.
    #[error("DPoP replay set reset")]
    ReplayUnknown,
    /// §7.1: the proof key is not the one the token is bound to.
    #[error("DPoP proof key is not the token's")]
    KeyMismatch,
    /// §8: a (current) server nonce is required (`use_dpop_nonce`).
    #[error("DPoP nonce required")]
    UseNonce,
    /// The token is not DPoP-bound (`invalid_token`).
    #[error("token not DPoP-bound")]
    NotBound,
    /// No externally visible URL is known for this route (`invalid_token`).
    #[error("no public URL for DPoP on this route")]
    NoUrl,
    /// `require_sender_constraint` and a plain bearer token (`invalid_token`).
    #[error("route requires a sender-constrained token")]
    Required,
    /// The access token itself (`invalid_token`).
    #[error("{0}")]
    Token(TokenError),
}

impl DpopRefusal {
    /// The RFC 9449 §7.1 / §12.2 error code.
    pub fn error(&self) -> &'static str {
        match self {
            DpopRefusal::Proof(_)
            | DpopRefusal::Replayed
            | DpopRefusal::ReplayUnknown
            | DpopRefusal::KeyMismatch => "invalid_dpop_proof",
            DpopRefusal::UseNonce => "use_dpop_nonce",
            DpopRefusal::NotBound
            | DpopRefusal::NoUrl
            | DpopRefusal::Required
            | DpopRefusal::Token(_) => "invalid_token",
        }
    }

    /// A short code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            DpopRefusal::Proof(e) => e.code(),
            DpopRefusal::Replayed => "replayed",
            DpopRefusal::ReplayUnknown => "replay_set_reset",
            DpopRefusal::KeyMismatch => "key_mismatch",
            DpopRefusal::UseNonce => "nonce",
            DpopRefusal::NotBound => "not_bound",
            DpopRefusal::NoUrl => "no_public_url",
            DpopRefusal::Required => "sender_constraint_required",
            DpopRefusal::Token(e) => e.code(),
        }
    }

    /// Safe to show as `error_description`.
    pub fn description(&self) -> &'static str {
        match self {
            DpopRefusal::Proof(ProofError::Missing) => "a DPoP proof is required",
            DpopRefusal::Proof(ProofError::Several) => "only one DPoP proof may be sent",
            DpopRefusal::Proof(ProofError::Method) => "the DPoP proof is for another method",
            DpopRefusal::Proof(ProofError::Url) => "the DPoP proof is for another URL",
            DpopRefusal::Proof(ProofError::Stale) => "the DPoP proof is too old or too new",
            DpopRefusal::Proof(ProofError::TokenHash) => {
                "the DPoP proof is not for this access token"
            }
            DpopRefusal::Proof(ProofError::PrivateKey) => "the DPoP proof key must be public",
            DpopRefusal::Proof(ProofError::Algorithm) => "the DPoP proof algorithm is not accepted",
            DpopRefusal::Proof(_) => "the DPoP proof is invalid",
            DpopRefusal::Replayed => "the DPoP proof was used before",
            DpopRefusal::ReplayUnknown => "the DPoP proof cannot be checked for replay, retry",
            DpopRefusal::KeyMismatch => "the DPoP proof key is not the token's key",
            DpopRefusal::UseNonce => "a DPoP nonce is required",
            DpopRefusal::NotBound => "the token is not DPoP-bound",
            DpopRefusal::NoUrl => "DPoP is not available on this route",
            DpopRefusal::Required => {
                "this resource requires a sender-constrained (DPoP- or certificate-bound) token"
            }
            DpopRefusal::Token(e) => e.description(),
        }
    }
}

#[cfg(test)]
mod tests;
