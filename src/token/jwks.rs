//! One issuer's JSON Web Key Set (RFC 7517): fetched from `jwks_uri`, swapped in whole,
//! refreshed on a schedule (`Cache-Control: max-age` within bounds), refetched on an
//! unknown `kid` at most once per interval (single flight), last good keys kept on failure.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwapOption, Guard};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;

use super::metrics::{bump, TokenMetrics};
use crate::oidc::credential::IssuerCredential;
use crate::oidc::transport::{Call, Endpoint, HttpTransport, TransportError};

/// Refresh interval bounds when the JWKS response has `Cache-Control: max-age`.
pub const MIN_REFRESH: Duration = Duration::from_secs(5 * 60);
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 60 * 60);
/// Refresh interval without `max-age`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(60 * 60);
/// After a failed refresh, try again this soon (the old keys stay in use).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// More keys than this in one set are ignored.
const MAX_KEYS: usize = 64;
/// RFC 7518 §3.3: RSA keys of 2048 bits or more.
const MIN_RSA_MODULUS_BYTES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("no jwks_uri known for this issuer")]
    NoUri,
    #[error("fetching the JWKS failed")]
    Transport(#[source] TransportError),
    #[error("JWKS endpoint answered HTTP {0}")]
    Status(u16),
    #[error("JWKS document is not valid JSON with a `keys` array")]
    Json,
    #[error("JWKS holds no usable signature key")]
    NoUsableKeys,
}

/// Elliptic curves we verify with (RFC 7518 §6.2.1.1, RFC 8037 §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    Ed25519,
}

/// One verification key from the set.
pub struct Jwk {
    pub kid: Option<Box<str>>,
    pub family: AlgorithmFamily,
    /// The key's own `alg`, if the JWKS states one.
    pub alg: Option<Algorithm>,
    pub curve: Option<Curve>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("alg", &self.alg)
            .field("curve", &self.curve)
            .finish_non_exhaustive()
    }
}

impl Jwk {
    /// Whether this key may verify a token signed with `alg`: same key type, same curve,
    /// and the key's own `alg` (if any) equal to it. RFC 8725 §3.1 (algorithm
    /// verification), §2.1 (no RSA public key used as an HMAC secret: HMAC keys never come
    /// from the JWKS at all).
    pub fn fits(&self, alg: Algorithm) -> bool {
        if alg.family() != self.family || self.family == AlgorithmFamily::Hmac {
            return false;
        }
        if let Some(own) = self.alg {
            if own != alg {
                return false;
            }
        }
        match alg {
            Algorithm::ES256 => self.curve == Some(Curve::P256),
            Algorithm::ES384 => self.curve == Some(Curve::P384),
            Algorithm::EdDSA => self.curve == Some(Curve::Ed25519),
            _ => true,
        }
    }
}

/// An immutable snapshot of the key set.
#[derive(Debug, Default)]
pub struct Keys {
    pub keys: Vec<Jwk>,
}

impl Keys {
    /// The key for `kid`. Without a `kid`, the one key that fits `alg`, if exactly one does.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup<'_> {
        match kid {
            Some(kid) => {
                // A set may hold several keys under one kid (say RSA and EC): the one that
                // fits the algorithm, if any.
                let mut named = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                if named.peek().is_none() {
                    return KeyLookup::Unknown;
                }
                match named.find(|k| k.fits(alg)) {
                    Some(k) => KeyLookup::Found(k),
                    None => KeyLookup::Mismatch,
                }
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => KeyLookup::Found(k),
                    _ => KeyLookup::Unknown,
                }
            }
        }
    }
}

pub enum KeyLookup<'a> {
    Found(&'a Jwk),
    /// A key with this `kid` exists but does not fit the token's `alg`.
    Mismatch,
    Unknown,
}

/// Parses a JWKS document leniently: keys that are not for signatures, of unknown type,
/// or malformed are skipped; the set fails only if nothing usable is left.
pub fn parse_jwks(body: &[u8]) -> Result<Keys, JwksError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| JwksError::Json)?;
    let arr = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwksError::Json)?;
    let keys: Vec<Jwk> = arr.iter().filter_map(parse_jwk).take(MAX_KEYS).collect();
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys);
    }
    Ok(Keys { keys })
}

fn b64(v: &Value, name: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(v.get(name)?.as_str()?).ok()
}

pub(crate) fn parse_jwk(v: &Value) -> Option<Jwk> {
    // RFC 7517 §4.2: a key meant for encryption is not a signature key.
    if let Some(usage) = v.get("use") {
        if usage.as_str() != Some("sig") {
            return None;
        }
    }
    // RFC 7517 §4.3: if key_ops is given it must allow "verify".
    if let Some(ops) = v.get("key_ops") {
        let ops = ops.as_array()?;
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return None;
        }
    }
    let kid = match v.get("kid") {
        None => None,
        Some(k) => Some(k.as_str()?.into()),
    };
    let alg = match v.get("alg") {
        None => None,
        // An `alg` we do not know (e.g. RSA-OAEP, ES512) makes the key unusable for us.
        Some(a) => Some(a.as_str()?.parse::<Algorithm>().ok()?),
    };
    let (family, curve, key) = match v.get("kty")?.as_str()? {
        "RSA" => {
            let n = b64(v, "n")?;
            let e = b64(v, "e")?;
            let significant = n.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES || e.is_empty() {
                return None;
            }
            (
                AlgorithmFamily::Rsa,
                None,
                DecodingKey::from_rsa_raw_components(&n, &e),
            )
        }
        "EC" => {
            let (curve, len) = match v.get("crv")?.as_str()? {
                "P-256" => (Curve::P256, 32),
                "P-384" => (Curve::P384, 48),
                _ => return None,
            };
            let x = b64(v, "x")?;
            let y = b64(v, "y")?;
            if x.len() != len || y.len() != len {
                return None;
            }
            // SEC 1 §2.3.3 uncompressed point: 0x04 || x || y.
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (
                AlgorithmFamily::Ec,
                Some(curve),
                DecodingKey::from_ec_der(&point),
            )
        }
        "OKP" => {
            if v.get("crv")?.as_str()? != "Ed25519" {
                return None;
            }
            let x = b64(v, "x")?;
            if x.len() != 32 {
                return None;
            }
            (
                AlgorithmFamily::Ed,
                Some(Curve::Ed25519),
                DecodingKey::from_ed_der(&x),
            )
        }
        // "oct" (shared secrets) never come from a JWKS: RFC 8725 §2.1 / §3.1.
        _ => return None,
    };
    if let Some(a) = alg {
        if a.family() != family {
            return None;
        }
    }
    Some(Jwk {
        kid,
        family,
        alg,
        curve,
        key,
    })
}

/// `Cache-Control: max-age=N` (RFC 9111 §5.2.2.1), clamped to [`MIN_REFRESH`, `MAX_REFRESH`].
pub fn refresh_interval(headers: &http::HeaderMap) -> Duration {
    let mut max_age = None;
    for value in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(s) = value.to_str() else { continue };
        for directive in s.split(',') {
            let d = directive.trim();
            if let Some((name, val)) = d.split_once('=') {
                if name.trim().eq_ignore_ascii_case("max-age") {
                    if let Ok(secs) = val.trim().trim_matches('"').parse::<u64>() {
                        max_age = Some(Duration::from_secs(secs));
                    }
                }
            }
        }
    }
    max_age
        .unwrap_or(DEFAULT_REFRESH)
        .clamp(MIN_REFRESH, MAX_REFRESH)
}

/// What an unknown-`kid` refetch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refetch {
    /// New keys are in place (fetched by us or by a concurrent caller): look again.
    Refreshed,
    /// A fetch happened less than the minimum interval ago: no new fetch.
    RateLimited,
    /// The fetch failed; the old keys stay.
    Failed,
}

/// One issuer's key set and its fetch state.
pub struct KeySet {
    uri: Mutex<Option<String>>,
    current: ArcSwapOption<Keys>,
    /// Serialises fetches: concurrent unknown-kid callers cause one fetch.
    fetch_lock: tokio::sync::Mutex<()>,
    /// Counts fetch attempts; a waiter that sees it moved knows a fetch happened.
    attempts: AtomicU64,
    last_attempt: Mutex<Option<Instant>>,
    last_failed: AtomicBool,
    next_refresh: Mutex<Option<Instant>>,
    min_refetch: Duration,
    transport: HttpTransport,
    /// Whose keys these are (the label of the fetches' histogram and spans).
    issuer: Arc<str>,
    /// The issuer's `token_file`, sent with each fetch.
    credential: Option<IssuerCredential>,
    metrics: Arc<TokenMetrics>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("uri", &self.uri())
            .field("loaded", &self.is_loaded())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl KeySet {
    pub fn new(
        uri: Option<String>,
        min_refetch: Duration,
        transport: HttpTransport,
        metrics: Arc<TokenMetrics>,
    ) -> Self {
        Self {
            uri: Mutex::new(uri),
            current: ArcSwapOption::empty(),
            fetch_lock: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            last_attempt: Mutex::new(None),
            last_failed: AtomicBool::new(false),
            next_refresh: Mutex::new(None),
            min_refetch,
            transport,
            issuer: Arc::from(""),
            credential: None,
            metrics,
        }
    }

    /// Sends the issuer's `token_file` token with each fetch (where it may go).
    pub fn with_credential(mut self, credential: Option<IssuerCredential>) -> Self {
        self.credential = credential;
        self
    }

    /// Names the issuer whose keys these are (for the fetches' histogram and spans).
    pub fn of_issuer(mut self, issuer: Arc<str>) -> Self {
        self.issuer = issuer;
        self
    }

    pub fn uri(&self) -> Option<String> {
        lock(&self.uri).clone()
    }

    /// Sets the `jwks_uri` (from discovery).
    pub fn set_uri(&self, uri: String) {
        *lock(&self.uri) = Some(uri);
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// The current snapshot (cheap, lock-free).
    pub fn snapshot(&self) -> Guard<Option<Arc<Keys>>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc` (may be held across `.await`).
    pub fn snapshot_full(&self) -> Option<Arc<Keys>> {
        self.current.load_full()
    }

    /// The fetch-attempt counter, read before a lookup and handed to
    /// [`KeySet::refetch_unknown_kid`].
    pub fn generation(&self) -> u64 {
        self.attempts.load(Ordering::Acquire)
    }

    pub fn last_fetch_failed(&self) -> bool {
        self.last_failed.load(Ordering::Acquire)
    }

    /// Whether the scheduled refresh is due.
    pub fn refresh_due(&self, now: Instant) -> bool {
        match *lock(&self.next_refresh) {
            None => true,
            Some(at) => now >= at,
        }
    }

    /// Fetches now (serialised with other fetches). Keeps the old keys on failure.
    pub async fn fetch(&self) -> Result<(), JwksError> {
        let _guard = self.fetch_lock.lock().await;
        self.fetch_locked().await
    }

    async fn fetch_locked(&self) -> Result<(), JwksError> {
        let started = Instant::now();
        *lock(&self.last_attempt) = Some(started);
        let result = self.fetch_inner().await;
        match &result {
            Ok(interval) => {
                bump(&self.metrics.jwks_fetches_ok);
                self.last_failed.store(false, Ordering::Release);
                *lock(&self.next_refresh) = Some(started + *interval);
            }
            Err(e) => {
                bump(&self.metrics.jwks_fetches_fail);
                self.last_failed.store(true, Ordering::Release);
                // Not loaded yet: try again soon; loaded: the old keys serve meanwhile.
                let retry = if self.is_loaded() {
                    RETRY_AFTER_FAILURE
                } else {
                    Duration::from_secs(2)
                };
                *lock(&self.next_refresh) = Some(started + retry);
                let uri = self.uri();
                tracing::warn!(error = %e, uri = uri.as_deref(), "JWKS fetch failed; keeping the last good keys");
            }
        }
        // Bumped only once the outcome is in place: a caller that read the old value and
        // waited on the lock then sees the new keys (or the failure), never a fetch in flight.
        self.attempts.fetch_add(1, Ordering::AcqRel);
        result.map(|_| ())
    }

    async fn fetch_inner(&self) -> Result<Duration, JwksError> {
        let uri = self.uri().ok_or(JwksError::NoUri)?;
        let bearer = match &self.credential {
            Some(c) => Some(
                c.token_for(&uri)
                    .await
                    .map_err(|e| JwksError::Transport(e.into()))?,
            ),
            None => None,
        };
        let resp = self
            .transport
            .get_with_bearer(
                Call::new(&self.issuer, Endpoint::Jwks),
                &uri,
                bearer.as_deref(),
            )
            .await
            .map_err(JwksError::Transport)?;
        if !resp.status.is_success() {
            return Err(JwksError::Status(resp.status.as_u16()));
        }
        let keys = parse_jwks(&resp.body)?;
        tracing::debug!(keys = keys.keys.len(), "JWKS loaded");
        self.current.store(Some(Arc::new(keys)));
        Ok(refresh_interval(&resp.headers))
    }

    /// Fuzzing only: `keys` as if fetched just now, with no fetch due or allowed before
    /// `min_refetch` (an unknown `kid` is then refused without a network call).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn install(&self, keys: Keys) {
        let now = Instant::now();
        self.current.store(Some(Arc::new(keys)));
        *lock(&self.last_attempt) = Some(now);
        *lock(&self.next_refresh) = Some(now + MAX_REFRESH);
    }

    /// A token named a `kid` we do not have. At most one fetch per `min_refetch` interval,
    /// and concurrent callers share it: a flood of random kids causes one fetch per window.
    pub async fn refetch_unknown_kid(&self, seen_generation: u64) -> Refetch {
        let _guard = self.fetch_lock.lock().await;
        if self.generation() != seen_generation {
            // Someone fetched while we waited.
            return if self.last_fetch_failed() {
                Refetch::Failed
            } else {
                Refetch::Refreshed
            };
        }
        if let Some(at) = *lock(&self.last_attempt) {
            if at.elapsed() < self.min_refetch {
                return Refetch::RateLimited;
            }
        }
        match self.fetch_locked().await {
            Ok(()) => Refetch::Refreshed,
            Err(_) => Refetch::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rsa_jwk(kid: &str) -> Value {
        let n = URL_SAFE_NO_PAD.encode([0xC5u8; 256]);
        json!({"kty": "RSA", "kid": kid, "n": n, "e": "AQAB"})
    }

    #[test]
    fn skips_encryption_unknown_and_hmac_keys() {
        let p256 = json!({"kty": "EC", "crv": "P-256", "kid": "ec",
            "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])});
        let doc = json!({"keys": [
            rsa_jwk("sig1"),
            {"kty": "RSA", "use": "enc", "kid": "enc", "n": URL_SAFE_NO_PAD.encode([7u8; 256]), "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "small", "n": URL_SAFE_NO_PAD.encode([7u8; 128]), "e": "AQAB"},
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": URL_SAFE_NO_PAD.encode([7u8; 256]), "e": "AQAB"},
            {"kty": "RSA", "kid": "ops", "key_ops": ["encrypt"], "n": URL_SAFE_NO_PAD.encode([7u8; 256]), "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "short", "x": "AAAA", "y": "AAAA"},
            {"kty": "OKP", "crv": "X25519", "kid": "x", "x": URL_SAFE_NO_PAD.encode([1u8; 32])},
            {"kty": "RSA", "kid": "alg-ec", "alg": "ES256", "n": URL_SAFE_NO_PAD.encode([7u8; 256]), "e": "AQAB"},
            p256,
            "not an object",
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, vec!["sig1", "ec"]);
    }

    #[test]
    fn empty_or_broken_sets_are_errors() {
        assert!(matches!(parse_jwks(b"{}"), Err(JwksError::Json)));
        assert!(matches!(parse_jwks(b"nope"), Err(JwksError::Json)));
        assert!(matches!(
            parse_jwks(br#"{"keys":[]}"#),
            Err(JwksError::NoUsableKeys)
        ));
    }

    #[test]
    fn key_fits_only_its_family_curve_and_alg() {
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "r", "alg": "RS256", "n": URL_SAFE_NO_PAD.encode([0xC5u8; 256]), "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "e", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])},
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert!(matches!(
            keys.find(Some("r"), Algorithm::RS256),
            KeyLookup::Found(_)
        ));
        // The key says RS256: PS256 with it is refused.
        assert!(matches!(
            keys.find(Some("r"), Algorithm::PS256),
            KeyLookup::Mismatch
        ));
        // No RSA key as an HMAC secret.
        assert!(matches!(
            keys.find(Some("r"), Algorithm::HS256),
            KeyLookup::Mismatch
        ));
        assert!(matches!(
            keys.find(Some("e"), Algorithm::ES384),
            KeyLookup::Mismatch
        ));
        assert!(matches!(
            keys.find(Some("e"), Algorithm::ES256),
            KeyLookup::Found(_)
        ));
        assert!(matches!(
            keys.find(Some("zz"), Algorithm::ES256),
            KeyLookup::Unknown
        ));
        // No kid: the one fitting key.
        assert!(matches!(
            keys.find(None, Algorithm::ES256),
            KeyLookup::Found(_)
        ));
        // One kid, two key types: the fitting one is found.
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "same", "n": URL_SAFE_NO_PAD.encode([0xC5u8; 256]), "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "same", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])},
        ]});
        let keys = parse_jwks(doc.to_string().as_bytes()).unwrap();
        match keys.find(Some("same"), Algorithm::ES256) {
            KeyLookup::Found(k) => assert_eq!(k.family, AlgorithmFamily::Ec),
            _ => panic!("EC key under a shared kid not found"),
        }
        assert!(matches!(
            keys.find(Some("same"), Algorithm::EdDSA),
            KeyLookup::Mismatch
        ));
    }

    #[test]
    fn max_age_is_clamped() {
        let mut h = http::HeaderMap::new();
        assert_eq!(refresh_interval(&h), DEFAULT_REFRESH);
        h.insert(
            http::header::CACHE_CONTROL,
            "public, max-age=7200, must-revalidate".parse().unwrap(),
        );
        assert_eq!(refresh_interval(&h), Duration::from_secs(7200));
        h.insert(http::header::CACHE_CONTROL, "max-age=3".parse().unwrap());
        assert_eq!(refresh_interval(&h), MIN_REFRESH);
        h.insert(
            http::header::CACHE_CONTROL,
            "max-age=99999999".parse().unwrap(),
        );
        assert_eq!(refresh_interval(&h), MAX_REFRESH);
    }
}
