//! Token validation against a stub provider on 127.0.0.1:0 with keys made in the test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use super::*;
use crate::oidc::transport::TransportConfig;
use crate::testutil::{forge, hs256, now_secs, sign_jwt, StubResponse, StubServer, TestKey};

const API: &str = "https://api.example.com";

/// A stub OpenID provider: discovery, JWKS, introspection and userinfo, each counted.
struct Idp {
    server: StubServer,
    jwks: Arc<Mutex<StubResponse>>,
    jwks_hits: Arc<AtomicUsize>,
    introspection: Arc<Mutex<StubResponse>>,
    introspection_hits: Arc<AtomicUsize>,
    userinfo: Arc<Mutex<StubResponse>>,
    userinfo_hits: Arc<AtomicUsize>,
}

fn default_jwks() -> Value {
    json!({"keys": [
        TestKey::rsa().jwk("rsa1"),
        TestKey::p256().jwk("ec256"),
        TestKey::p384().jwk("ec384"),
        TestKey::ed25519().jwk("ed1"),
        // An encryption key with a kid of its own: never used for signatures.
        {"kty": "RSA", "use": "enc", "kid": "enc1", "n": TestKey::rsa().jwk("x")["n"], "e": "AQAB"},
    ]})
}

impl Idp {
    async fn start() -> Idp {
        Self::start_with(default_jwks()).await
    }

    async fn start_with(jwks: Value) -> Idp {
        let jwks = Arc::new(Mutex::new(
            StubResponse::json(jwks).header("cache-control", "public, max-age=600"),
        ));
        let jwks_hits = Arc::new(AtomicUsize::new(0));
        let introspection = Arc::new(Mutex::new(StubResponse::json(json!({"active": false}))));
        let introspection_hits = Arc::new(AtomicUsize::new(0));
        let userinfo = Arc::new(Mutex::new(StubResponse::status(401, "")));
        let userinfo_hits = Arc::new(AtomicUsize::new(0));
        let server = StubServer::start({
            let (jwks, jwks_hits) = (jwks.clone(), jwks_hits.clone());
            let (intro, intro_hits) = (introspection.clone(), introspection_hits.clone());
            let (ui, ui_hits) = (userinfo.clone(), userinfo_hits.clone());
            move |req| {
                let base = req.base.clone();
                match req.path.as_str() {
                    "/.well-known/openid-configuration" => StubResponse::json(json!({
                        // Auth0 style: the issuer has a trailing slash.
                        "issuer": format!("{base}/"),
                        "jwks_uri": format!("{base}/jwks"),
                        "introspection_endpoint": format!("{base}/introspect"),
                        "userinfo_endpoint": format!("{base}/userinfo"),
                        "token_endpoint": format!("{base}/oauth/token"),
                    })),
                    "/jwks" => {
                        jwks_hits.fetch_add(1, Ordering::SeqCst);
                        jwks.lock().unwrap().clone()
                    }
                    "/introspect" => {
                        intro_hits.fetch_add(1, Ordering::SeqCst);
                        intro.lock().unwrap().clone()
                    }
                    "/userinfo" => {
                        ui_hits.fetch_add(1, Ordering::SeqCst);
                        ui.lock().unwrap().clone()
                    }
                    _ => StubResponse::status(404, "not found"),
                }
            }
        })
        .await;
        Idp {
            server,
            jwks,
            jwks_hits,
            introspection,
            introspection_hits,
            userinfo,
            userinfo_hits,
        }
    }

    fn issuer(&self) -> String {
        self.server.url("/")
    }

    fn jwks_fetches(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }

    fn introspections(&self) -> usize {
        self.introspection_hits.load(Ordering::SeqCst)
    }

    fn set_introspection(&self, r: StubResponse) {
        *self.introspection.lock().unwrap() = r;
    }

    fn set_jwks(&self, r: StubResponse) {
        *self.jwks.lock().unwrap() = r;
    }

    fn issuer_config(&self) -> IssuerConfig {
        let mut ic = IssuerConfig::new(self.issuer(), vec![API.to_string()]);
        ic.algorithms = vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ];
        ic
    }

    fn config(&self) -> BearerConfig {
        BearerConfig {
            issuers: vec![self.issuer_config()],
            leeway: Duration::from_secs(5),
            start_timeout: Duration::from_secs(5),
            ..BearerConfig::default()
        }
    }
}

fn transport() -> HttpTransport {
    HttpTransport::new(TransportConfig {
        timeout: Duration::from_secs(2),
        ca_file: None,
    })
    .unwrap()
}

async fn started(_idp: &Idp, config: BearerConfig) -> TokenValidator {
    let v = TokenValidator::new(config, transport());
    v.start().await.unwrap();
    v
}

fn claims(iss: &str) -> Value {
    let now = now_secs();
    json!({
        "iss": iss,
        "sub": "user-1",
        "aud": API,
        "iat": now,
        "exp": now + 600,
        "scope": "read:items profile",
    })
}

fn with(mut base: Value, f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    f(base.as_object_mut().unwrap());
    base
}

fn invalid(r: InvalidReason) -> String {
    format!("{:?}", TokenError::Invalid(r))
}

async fn err_of(v: &TokenValidator, token: &str) -> String {
    let e = v.validate(token).await.unwrap_err();
    // Tokens never appear in errors.
    assert!(!format!("{e:?} {e}").contains(token));
    format!("{e:?}")
}

#[tokio::test]
async fn valid_tokens_of_every_supported_algorithm_pass() {
    let idp = Idp::start().await;
    let v = started(&idp, idp.config()).await;
    assert!(v.is_ready());
    let cases: [(&TestKey, &str, &str); 9] = [
        (TestKey::rsa(), "RS256", "rsa1"),
        (TestKey::rsa(), "RS384", "rsa1"),
        (TestKey::rsa(), "RS512", "rsa1"),
        (TestKey::rsa(), "PS256", "rsa1"),
        (TestKey::rsa(), "PS384", "rsa1"),
        (TestKey::rsa(), "PS512", "rsa1"),
        (TestKey::p256(), "ES256", "ec256"),
        (TestKey::p384(), "ES384", "ec384"),
        (TestKey::ed25519(), "EdDSA", "ed1"),
    ];
    for (key, alg, kid) in cases {
        let token = sign_jwt(key, alg, kid, &claims(&idp.issuer()));
        let id = v
            .validate(&token)
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e:?}"));
        assert_eq!(id.subject(), "user-1");
        assert_eq!(&*id.issuer, idp.issuer());
        assert!(id.has_scope("read:items"), "{alg}");
    }
    assert_eq!(idp.jwks_fetches(), 1);
    assert_eq!(TokenMetrics::get(&v.metrics().validations_ok), 9);
}

#[tokio::test]
async fn alg_none_in_every_spelling_is_refused() {
    let idp = Idp::start().await;
    let v = started(&idp, idp.config()).await;
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT"});
        // Unsigned, and with a stolen RS256 signature.
        let unsigned = forge(&header, &claims(&idp.issuer()), |_| Vec::new());
        let with_sig = forge(&header, &claims(&idp.issuer()), |m| {
            TestKey::rsa().sign("RS256", m)
        });
        for t in [unsigned.trim_end_matches('.').to_string() + ".", with_sig] {
            assert_eq!(
                err_of(&v, &t).await,
                invalid(InvalidReason::AlgNone),
                "{alg}"
            );
        }
    }
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let idp = Idp::start().await;
    let mut config = idp.config();
    // Even with HS256 in the allow-list: no shared secret is configured.
    config.issuers[0].algorithms.push(Algorithm::HS256);
    let v = started(&idp, config).await;
    let (der, pem) = TestKey::rsa().rsa_public_der_and_pem();
    let jwk_n = TestKey::rsa().jwk("rsa1")["n"]
        .as_str()
        .unwrap()
        .to_string();
    for secret in [pem.as_bytes(), der.as_slice(), jwk_n.as_bytes()] {
        for kid in [Some("rsa1"), None] {
            let mut header = json!({"alg": "HS256", "typ": "JWT"});
            if let Some(k) = kid {
                header["kid"] = json!(k);
            }
            let t = forge(&header, &claims(&idp.issuer()), |m| hs256(secret, m));
            assert_eq!(
                err_of(&v, &t).await,
                invalid(InvalidReason::AlgorithmNotAllowed)
            );
        }
    }
    // Default allow-list (no HS256 at all).
    let v = started(&idp, idp.config()).await;
    let t = forge(
        &json!({"alg": "HS256", "kid": "rsa1"}),
        &claims(&idp.issuer()),
        |m| hs256(pem.as_bytes(), m),
    );
    assert_eq!(
        err_of(&v, &t).await,
        invalid(InvalidReason::AlgorithmNotAllowed)
    );
}

#[tokio::test]
async fn hs256_only_with_an_explicit_shared_secret() {
    let idp = Idp::start().await;
    let mut config = idp.config();
    config.issuers[0].algorithms = vec![Algorithm::HS256];
    config.issuers[0].hs_secret = Some(Secret::new(b"a shared secret of 32 bytes or so".to_vec()));
    let v = started(&idp, config).await;
    assert_eq!(idp.jwks_fetches(), 0, "HS-only issuer needs no JWKS");
    let good = forge(&json!({"alg": "HS256"}), &claims(&idp.issuer()), |m| {
        hs256(b"a shared secret of 32 bytes or so", m)
    });
    assert!(v.validate(&good).await.is_ok());
    let bad = forge(&json!({"alg": "HS256"}), &claims(&idp.issuer()), |m| {
        hs256(b"another secret", m)
    });
    assert_eq!(err_of(&v, &bad).await, invalid(InvalidReason::BadSignature));
}

#[tokio::test]
async fn registered_claims_are_enforced() {
    let idp = Idp::start().await;
    let v = started(&idp, idp.config()).await;
    let iss = idp.issuer();
    let now = now_secs();
    let sign = |c: &Value| sign_jwt(TestKey::rsa(), "RS256", "rsa1", c);
    let cases: Vec<(&str, Value, String)> = vec![
        (
            "unknown issuer",
            with(claims(&iss), |c| {
                c.insert("iss".into(), json!("https://evil.example/"));
            }),
            format!("{:?}", TokenError::UnknownIssuer),
        ),
        (
            "issuer without trailing slash",
            with(claims(&iss), |c| {
                c.insert("iss".into(), json!(iss.trim_end_matches('/')));
            }),
            format!("{:?}", TokenError::UnknownIssuer),
        ),
        (
            "missing iss",
            with(claims(&iss), |c| {
                c.remove("iss");
            }),
            format!("{:?}", TokenError::UnknownIssuer),
        ),
        (
            "wrong aud",
            with(claims(&iss), |c| {
                c.insert("aud".into(), json!("https://other.example.com"));
            }),
            invalid(InvalidReason::WrongAudience),
        ),
        (
            "aud array without ours",
            with(claims(&iss), |c| {
                c.insert("aud".into(), json!(["a", "b"]));
            }),
            invalid(InvalidReason::WrongAudience),
        ),
        (
            "empty aud array",
            with(claims(&iss), |c| {
                c.insert("aud".into(), json!([]));
            }),
            invalid(InvalidReason::WrongAudience),
        ),
        (
            "missing aud",
            with(claims(&iss), |c| {
                c.remove("aud");
            }),
            invalid(InvalidReason::MissingClaim),
        ),
        (
            "expired",
            with(claims(&iss), |c| {
                c.insert("exp".into(), json!(now - 3600));
            }),
            format!("{:?}", TokenError::Expired),
        ),
        (
            "nbf in the future",
            with(claims(&iss), |c| {
                c.insert("nbf".into(), json!(now + 3600));
            }),
            invalid(InvalidReason::NotYetValid),
        ),
        (
            "missing exp",
            with(claims(&iss), |c| {
                c.remove("exp");
            }),
            invalid(InvalidReason::MissingClaim),
        ),
        (
            // jsonwebtoken 12 does not count a string exp as present.
            "string exp",
            with(claims(&iss), |c| {
                c.insert("exp".into(), json!((now + 600).to_string()));
            }),
            invalid(InvalidReason::MissingClaim),
        ),
        (
            "missing sub",
            with(claims(&iss), |c| {
                c.remove("sub");
            }),
            invalid(InvalidReason::MissingClaim),
        ),
    ];
    for (name, c, want) in cases {
        assert_eq!(err_of(&v, &sign(&c)).await, want, "{name}");
    }
    // A `cnf` claim is no refusal here: it is the identity's binding, which the gate
    // checks against each request's proof (RFC 9449 §7.1).
    let bound = with(claims(&iss), |c| {
        c.insert(
            "cnf".into(),
            json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
        );
    });
    assert_eq!(
        v.validate(&sign(&bound)).await.unwrap().binding(),
        Some(crate::identity::Binding::Dpop(
            "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
        ))
    );
    let x5t = with(claims(&iss), |c| {
        c.insert("cnf".into(), json!({"x5t#S256": "abc"}));
    });
    assert_eq!(
        v.validate(&sign(&x5t)).await.unwrap().binding(),
        Some(crate::identity::Binding::Unsupported)
    );
    // Positive controls: aud array containing ours; nbf within leeway.
    let ok = with(claims(&iss), |c| {
        c.insert("aud".into(), json!(["https://x", API]));
        c.insert("nbf".into(), json!(now + 2));
    });
    assert!(v.validate(&sign(&ok)).await.is_ok());
}

#[tokio::test]
async fn signature_and_key_checks() {
    let idp = Idp::start().await;
    let mut config = idp.config();
    config.jwks_min_refetch_interval = Duration::from_secs(3600);
    let v = started(&idp, config).await;
    let c = claims(&idp.issuer());
    // Signed by a key that is not in the JWKS, under a known kid.
    let t = sign_jwt(TestKey::rsa_other(), "RS256", "rsa1", &c);
    assert_eq!(err_of(&v, &t).await, invalid(InvalidReason::BadSignature));
    // Payload changed after signing.
    let good = sign_jwt(TestKey::rsa(), "RS256", "rsa1", &c);
    let mut parts: Vec<&str> = good.split('.').collect();
    let tampered_payload = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        with(c.clone(), |m| {
            m.insert("sub".into(), json!("admin"));
        })
        .to_string(),
    );
    parts[1] = &tampered_payload;
    assert_eq!(
        err_of(&v, &parts.join(".")).await,
        invalid(InvalidReason::BadSignature)
    );
    // RS256 header with the kid of an EC key.
    let t = sign_jwt(TestKey::rsa(), "RS256", "ec256", &c);
    assert_eq!(
        err_of(&v, &t).await,
        invalid(InvalidReason::KeyAlgorithmMismatch)
    );
    // ES384 header with the P-256 key's kid.
    let t = sign_jwt(TestKey::p256(), "ES384", "ec256", &c);
    assert_eq!(
        err_of(&v, &t).await,
        invalid(InvalidReason::KeyAlgorithmMismatch)
    );
    // An encryption key's kid is not a signature key.
    let t = sign_jwt(TestKey::rsa(), "RS256", "enc1", &c);
    assert_eq!(err_of(&v, &t).await, invalid(InvalidReason::UnknownKey));
    // The attacker's own key in the header (jwk / jku / x5c) is ignored.
    let header = json!({"alg": "RS256", "kid": "attacker", "jwk": TestKey::rsa_other().jwk("attacker"),
        "jku": "https://evil.example/jwks", "x5u": "https://evil.example/cert"});
    let t = forge(&header, &c, |m| TestKey::rsa_other().sign("RS256", m));
    assert_eq!(err_of(&v, &t).await, invalid(InvalidReason::UnknownKey));
    // Allow-list: ES256 refused when only RS256 is configured.
    let mut narrow = idp.config();
    narrow.issuers[0].algorithms = vec![Algorithm::RS256];
    let v2 = started(&idp, narrow).await;
    let t = sign_jwt(TestKey::p256(), "ES256", "ec256", &c);
    assert_eq!(
        err_of(&v2, &t).await,
        invalid(InvalidReason::AlgorithmNotAllowed)
    );
}

#[tokio::test]
async fn typ_header_variants() {
    let idp = Idp::start().await;
    let v = started(&idp, idp.config()).await;
    let c = claims(&idp.issuer());
    for (typ, ok) in [
        (None, true),
        (Some("JWT"), true),
        (Some("jwt"), true),
        (Some("at+jwt"), true),
        (Some("application/at+jwt"), true),
        (Some("JOSE"), false),
        (Some("id_token+jwt"), false),
        (Some("logout+jwt"), false),
        (Some("dpop+jwt"), false),
    ] {
        let mut header = json!({"alg": "ES256", "kid": "ec256"});
        if let Some(t) = typ {
            header["typ"] = json!(t);
        }
        let t = forge(&header, &c, |m| TestKey::p256().sign("ES256", m));
        let r = v.validate(&t).await;
        assert_eq!(r.is_ok(), ok, "typ {typ:?}: {r:?}");
        if !ok {
            assert_eq!(err_of(&v, &t).await, invalid(InvalidReason::WrongType));
        }
    }
}

#[test]
fn b64token_scan_counts_dots_and_allows_only_trailing_padding() {
    assert_eq!(scan_token("a.b.c"), Some(2));
    assert_eq!(scan_token("abc~+/-_=="), Some(0));
    assert_eq!(scan_token("a.b.c.d.e"), Some(4));
    for bad in ["", "===", "a=b", "a b", "a\nb", "é", "a,b", "a%2Fb"] {
        assert_eq!(scan_token(bad), None, "{bad:?}");
    }
}

/// The byte-at-a-time definition (RFC 6750 §2.1) the block scan must agree with.
fn scan_reference(token: &str) -> Option<usize> {
    let bytes = token.as_bytes();
    let body_end = bytes.iter().rposition(|b| *b != b'=').map_or(0, |i| i + 1);
    let body = &bytes[..body_end];
    let ok = |b: &u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(b);
    (!body.is_empty() && body.iter().all(ok)).then(|| body.iter().filter(|b| **b == b'.').count())
}

#[test]
fn b64token_block_scan_agrees_with_the_definition() {
    // Every byte value, at every position of the first blocks and of the padded tail.
    for len in [1, 2, 15, 16, 17, 31, 32, 33, 47, 48, 49, 700] {
        for pos in (0..len).filter(|p| *p < 50 || *p + 20 > len) {
            for b in 0..=255u8 {
                let mut v = vec![b'x'; len];
                v[pos] = b;
                let Ok(t) = std::str::from_utf8(&v) else {
                    continue;
                };
                assert_eq!(
                    scan_token(t),
                    scan_reference(t),
                    "byte {b:#04x} at {pos} of {len}"
                );
            }
        }
    }
    // Non-ASCII: every leading byte and many continuation bytes, in blocks and in the tail.
    for cp in (0x80..0x11_0000).step_by(61) {
        let Some(c) = char::from_u32(cp) else {
            continue;
        };
        for (before, after) in [(0, 40), (14, 30), (16, 0), (37, 1)] {
            let t = format!("{}{c}{}", "x".repeat(before), "y".repeat(after));
            assert_eq!(scan_token(&t), None, "U+{cp:04X} after {before}");
        }
    }
    // Multi-byte characters and padding in any place.
    for t in [
        "é",
        "aé",
        "xxxxxxxxxxxxxxxé",
        "ab==",
        "a=b=",
        "=a",
        "a.b=c",
        "€.€.€",
        "a\u{7f}b",
    ] {
        assert_eq!(scan_token(t), scan_reference(t), "{t:?}");
    }
    // Dot counters are drained before a lane can overflow.
    for n in [255 * 16, 255 * 16 + 1, 256 * 16, 5000] {
        let dots = ".".repeat(n) + "a";
        assert_eq!(scan_token(&dots), Some(n));
    }
    let jws = format!(
        "{}.{}.{}",
        "a".repeat(300),
        "b".repeat(4000),
        "c".repeat(343)
    );
    assert_eq!(scan_token(&jws), Some(2));
}

const HS_ISS: &str = "https://hs.example.com/";
const HS_SECRET: &[u8] = b"a shared secret of 32 bytes or so";

/// A validator that needs no provider: HS256 with a configured secret.
fn hs_validator() -> TokenValidator {
    let mut ic = IssuerConfig::new(HS_ISS, vec![API.to_string()]);
    ic.discovery = false;
    ic.algorithms = vec![Algorithm::HS256];
    ic.hs_secret = Some(Secret::new(HS_SECRET.to_vec()));
    let config = BearerConfig {
        issuers: vec![ic],
        ..BearerConfig::default()
    };
    TokenValidator::new(config, transport())
}

fn hs_token(sub: &str) -> String {
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let c = with(claims(HS_ISS), |c| {
        c.insert("sub".into(), json!(sub));
    });
    forge(&header, &c, |m| hs256(HS_SECRET, m))
}

#[tokio::test]
async fn a_cache_hit_returns_the_identity_validated_for_that_token() {
    let v = hs_validator();
    let t = hs_token("alice");
    let first = v.validate(&t).await.unwrap();
    assert_eq!(first.subject(), "alice");
    let hit = v.validate(&t).await.unwrap();
    assert!(Arc::ptr_eq(&first, &hit));
    assert_eq!(hit.subject(), "alice");
    let m = v.metrics();
    assert_eq!(TokenMetrics::get(&m.cache_hits), 1);
    assert_eq!(TokenMetrics::get(&m.cache_misses), 1);
    assert_eq!(TokenMetrics::get(&m.validations_ok), 1);
}

#[tokio::test]
async fn two_different_tokens_never_share_an_entry() {
    let v = hs_validator();
    let tokens: Vec<(String, String)> = (0..300)
        .map(|n| {
            let sub = format!("user-{n}");
            (hs_token(&sub), sub)
        })
        .collect();
    let keys: std::collections::HashSet<_> =
        tokens.iter().map(|(t, _)| v.inner.cache.key(t)).collect();
    assert_eq!(keys.len(), tokens.len(), "distinct tokens, distinct keys");
    for _round in 0..2 {
        for (t, sub) in &tokens {
            assert_eq!(v.validate(t).await.unwrap().subject(), sub);
        }
    }
    assert_eq!(v.cache_entries(), 300);
    let m = v.metrics();
    assert_eq!(TokenMetrics::get(&m.cache_misses), 300);
    assert_eq!(TokenMetrics::get(&m.cache_hits), 300);
    // Tokens that differ in one byte, or by a prefix, are distinct entries too.
    let t = hs_token("alice");
    let key = v.inner.cache.key(&t);
    let mut one_off = t.clone().into_bytes();
    one_off[10] ^= 1;
    let one_off = String::from_utf8(one_off).unwrap();
    assert!(v.inner.cache.key(&one_off) != key);
    assert!(v.inner.cache.key(&t[..t.len() - 1]) != key);
    assert!(v.inner.cache.key(&format!("{t}=")) != key);
}

#[test]
fn the_cache_key_is_secret_and_random_per_validator() {
    let (a, b) = (hs_validator(), hs_validator());
    let t = hs_token("alice");
    assert!(a.inner.cache.key(&t) == a.inner.cache.key(&t));
    assert!(
        a.inner.cache.key(&t) != b.inner.cache.key(&t),
        "each validator draws its own key: same config, different keys"
    );
}

#[tokio::test]
async fn a_token_with_a_bad_character_is_a_syntax_refusal_and_never_cached() {
    let v = hs_validator();
    let t = hs_token("alice");
    let bad = [
        format!("{}!{}", &t[..20], &t[21..]),
        format!("{}é{}", &t[..20], &t[22..]),
        format!("{} {}", &t[..20], &t[21..]),
        "a=b".to_string(),
        "====".to_string(),
    ];
    for b in &bad {
        for _ in 0..3 {
            assert_eq!(err_of(&v, b).await, "Syntax", "{b:?}");
        }
        assert!(v.inner.cache.refused(&v.inner.cache.key(b)).is_none());
        assert!(v.inner.cache.get_fresh(&v.inner.cache.key(b)).is_none());
    }
    let m = v.metrics();
    assert_eq!(v.cache_entries(), 0);
    assert_eq!(TokenMetrics::get(&m.cache_misses), 0);
    assert_eq!(TokenMetrics::get(&m.negative_hits), 0);
    // Refused tokens are failed validations, malformed ones included (issue 13: the
    // counter used to stay at 0 for them).
    assert_eq!(TokenMetrics::get(&m.validations_fail), 15);
    // The syntax answer also wins over the size limit (both were refusals before the
    // validator was asked: the header's 400 came first).
    let long_bad = format!("{}!", "A".repeat(20 * 1024));
    assert_eq!(err_of(&v, &long_bad).await, "Syntax");
    let long_ok = "A".repeat(20 * 1024);
    assert_eq!(err_of(&v, &long_ok).await, "TooLong");
}

#[tokio::test]
async fn a_cached_token_with_one_bad_character_appended_is_refused() {
    let v = hs_validator();
    let t = hs_token("alice");
    assert_eq!(v.validate(&t).await.unwrap().subject(), "alice");
    for suffix in ["!", " ", "\"", ",", "é", "\t", "=a", "%"] {
        let variant = format!("{t}{suffix}");
        assert_eq!(err_of(&v, &variant).await, "Syntax", "{suffix:?}");
    }
    // A refused (negatively cached) token's bad variant is still a syntax refusal.
    let forged = forge(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &claims(HS_ISS),
        |m| hs256(b"not the secret", m),
    );
    for _ in 0..2 {
        assert_eq!(
            err_of(&v, &forged).await,
            invalid(InvalidReason::BadSignature)
        );
    }
    assert_eq!(err_of(&v, &format!("{forged}!")).await, "Syntax");
    assert_eq!(TokenMetrics::get(&v.metrics().negative_hits), 1);
    // The cached token itself is still served.
    assert_eq!(v.validate(&t).await.unwrap().subject(), "alice");
    assert_eq!(v.cache_entries(), 1);
}

#[tokio::test]
async fn size_and_shape_are_checked_before_anything_else() {
    let idp = Idp::start().await;
    let v = TokenValidator::new(idp.config(), transport());
    // 20 KiB: refused before parsing (and before any provider call).
    let huge = format!("eyJhbGciOiJSUzI1NiJ9.{}.sig", "A".repeat(20 * 1024));
    assert_eq!(
        err_of(&v, &huge).await,
        format!("{:?}", TokenError::TooLong)
    );
    assert_eq!(
        format!("{:?}", v.validate("").await.unwrap_err()),
        "Missing"
    );
    // Not b64tokens: the header is malformed (the proxy's 400).
    for garbage in [
        "!!!.@@@.###",
        "abc def",
        "eyJhbGciOiJSUzI1NiJ9.\u{e9}t\u{e9}.x",
        "====",
        "a\r\nX-Injected: 1",
    ] {
        assert_eq!(
            err_of(&v, garbage).await,
            format!("{:?}", TokenError::Syntax),
            "{garbage:?}"
        );
    }
    // b64tokens that are not well-formed JWTs.
    for garbage in ["e30.e30.e30", "Zm9v.YmFy.YmF6"] {
        assert_eq!(
            err_of(&v, garbage).await,
            format!("{:?}", TokenError::Malformed),
            "{garbage:?}"
        );
    }
    // Opaque tokens with introspection off.
    assert_eq!(
        err_of(&v, "opaque-token-123").await,
        invalid(InvalidReason::OpaqueNotAccepted)
    );
    assert_eq!(idp.server.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_flood_causes_at_most_one_jwks_fetch_per_window() {
    let idp = Idp::start().await;
    let mut config = idp.config();
    config.jwks_min_refetch_interval = Duration::from_secs(10);
    config.issuers[0].jwks_uri = Some(idp.server.url("/jwks"));
    // Not started: the first flood's single refetch is also the first load, so the
    // window is open and the single flight is what keeps the count at one.
    let v = TokenValidator::new(config, transport());
    let c = claims(&idp.issuer());
    let flood = |round: usize| {
        let v = v.clone();
        let c = c.clone();
        async move {
            let tokens: Vec<String> = (0..1000)
                .map(|i| sign_jwt(TestKey::p256(), "ES256", &format!("kid-{round}-{i}"), &c))
                .collect();
            let tasks: Vec<_> = tokens
                .into_iter()
                .map(|t| {
                    let v = v.clone();
                    tokio::spawn(async move { v.validate(&t).await })
                })
                .collect();
            for t in tasks {
                let r = t.await.unwrap();
                assert!(
                    matches!(r, Err(TokenError::Invalid(InvalidReason::UnknownKey))),
                    "{r:?}"
                );
            }
        }
    };
    flood(1).await;
    assert_eq!(idp.jwks_fetches(), 1, "one fetch for the whole first flood");
    flood(2).await;
    let fetches = idp.jwks_fetches();
    assert!(fetches <= 2, "floods caused {fetches} JWKS fetches");
    // Known keys work without another fetch.
    let ok = sign_jwt(TestKey::p256(), "ES256", "ec256", &c);
    assert!(v.validate(&ok).await.is_ok());
    assert_eq!(idp.jwks_fetches(), fetches);
}

#[tokio::test]
async fn a_new_kid_is_fetched_once_allowed_and_a_failed_refresh_keeps_the_keys() {
    let idp = Idp::start_with(json!({"keys": [TestKey::rsa().jwk("rsa1")]})).await;
    let mut config = idp.config();
    config.jwks_min_refetch_interval = Duration::ZERO;
    let v = started(&idp, config).await;
    let c = claims(&idp.issuer());
    // Provider rotates: the new key appears in the JWKS.
    idp.set_jwks(StubResponse::json(json!({"keys": [
        TestKey::rsa().jwk("rsa1"), TestKey::ed25519().jwk("ed-new")
    ]})));
    let t = sign_jwt(TestKey::ed25519(), "EdDSA", "ed-new", &c);
    assert!(v.validate(&t).await.is_ok());
    assert_eq!(idp.jwks_fetches(), 2);
    // The JWKS endpoint breaks: a refresh fails, the last good keys stay.
    idp.set_jwks(StubResponse::status(500, "oops"));
    let ks = &v.inner.issuers[0].keys;
    assert!(ks.fetch().await.is_err());
    let t2 = sign_jwt(
        TestKey::rsa(),
        "RS256",
        "rsa1",
        &with(c.clone(), |m| {
            m.insert("jti".into(), json!("another"));
        }),
    );
    assert!(v.validate(&t2).await.is_ok());
    assert!(v.is_ready());
    // An unknown kid while the JWKS is down: fail closed with Unavailable, not a pass.
    let t3 = sign_jwt(TestKey::p256(), "ES256", "ec-new", &c);
    assert!(matches!(
        v.validate(&t3).await,
        Err(TokenError::Unavailable(_))
    ));
    assert!(TokenMetrics::get(&v.metrics().jwks_fetches_fail) >= 2);
    assert!(v
        .render_metrics()
        .contains("portcullis_jwks_fetches_total{result=\"ok\"} 2"));
}

#[tokio::test]
async fn a_token_is_checked_only_against_the_keys_of_the_issuer_it_names() {
    let idp_a = Idp::start().await;
    // Issuer B: explicit jwks_uri, no discovery, its own (Ed25519-only) key set.
    let idp_b = Idp::start_with(json!({"keys": [TestKey::ed25519().jwk("b-ed")]})).await;
    let mut b = IssuerConfig::new("https://kubernetes.default.svc", vec!["portcullis".into()]);
    b.discovery = false;
    b.jwks_uri = Some(idp_b.server.url("/jwks"));
    b.algorithms = vec![Algorithm::RS256, Algorithm::EdDSA];
    let mut config = idp_a.config();
    config.issuers.push(b);
    config.jwks_min_refetch_interval = Duration::from_secs(3600);
    let v = started(&idp_a, config).await;
    // B's token with B's key: ok.
    let kc = with(claims("https://kubernetes.default.svc"), |c| {
        c.insert("aud".into(), json!(["portcullis"]));
        c.insert("sub".into(), json!("system:serviceaccount:ns:sa"));
    });
    let t = sign_jwt(TestKey::ed25519(), "EdDSA", "b-ed", &kc);
    let id = v.validate(&t).await.unwrap();
    assert_eq!(&*id.issuer, "https://kubernetes.default.svc");
    // B's claims signed with A's RSA key under A's kid: B's JWKS has no such key.
    let t = sign_jwt(TestKey::rsa(), "RS256", "rsa1", &kc);
    assert_eq!(err_of(&v, &t).await, invalid(InvalidReason::UnknownKey));
    // A's audience is not B's.
    let t = sign_jwt(
        TestKey::ed25519(),
        "EdDSA",
        "b-ed",
        &with(kc.clone(), |c| {
            c.insert("aud".into(), json!(API));
        }),
    );
    assert_eq!(err_of(&v, &t).await, invalid(InvalidReason::WrongAudience));
}

#[tokio::test]
async fn auth0_shaped_access_token_passes() {
    let idp = Idp::start().await;
    let mut config = idp.config();
    config.scopes_claims = vec!["scope".into(), "permissions".into()];
    config.groups_claim = "https://example.com/roles".into();
    config.wanted_claims = vec!["https://example.com/tenant".into(), "gty".into()];
    let v = started(&idp, config).await;
    let now = now_secs();
    let iss = idp.issuer();
    let c = json!({
        "iss": iss,
        "sub": "auth0|5f7c8ec7c33c6c004bbafe82",
        "aud": [API, format!("{iss}userinfo")],
        "iat": now,
        "exp": now + 86400,
        "azp": "hT5xq1yVbB0Kz0A1pGAnPcBs",
        "scope": "openid profile email",
        "permissions": ["read:items", "write:items"],
        "https://example.com/roles": ["staff"],
        "https://example.com/tenant": "acme",
        "updated_at": "2024-05-01T10:00:00.000Z",
        "email": "ann@example.com",
        "email_verified": true,
    });
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "rsa1"});
    let t = forge(&header, &c, |m| TestKey::rsa().sign("RS256", m));
    let id = v.validate(&t).await.unwrap();
    assert_eq!(id.subject(), "auth0|5f7c8ec7c33c6c004bbafe82");
    assert!(id.has_scope("read:items") && id.has_scope("write:items") && id.has_scope("openid"));
    assert!(id.in_group("staff"));
    assert_eq!(id.verified_email(), Some("ann@example.com"));
    assert_eq!(id.claim("https://example.com/tenant"), Some("acme"));
    assert_eq!(id.claim("gty"), None);
    // Machine token (client credentials): sub = CLIENT@clients, aud a string, gty set.
    let m2m = json!({
        "iss": iss, "sub": "hT5xq1yVbB0Kz0A1pGAnPcBs@clients", "aud": API,
        "iat": now, "exp": now + 86400, "azp": "hT5xq1yVbB0Kz0A1pGAnPcBs",
        "gty": "client-credentials", "scope": "read:items"
    });
    let t = forge(&header, &m2m, |m| TestKey::rsa().sign("RS256", m));
    let id = v.validate(&t).await.unwrap();
    assert_eq!(id.subject(), "hT5xq1yVbB0Kz0A1pGAnPcBs@clients");
    assert_eq!(id.claim("gty"), Some("client-credentials"));
}

#[tokio::test]
async fn same_token_twice_is_validated_once() {
    let idp = Idp::start().await;
    let v = started(&idp, idp.config()).await;
    let t = sign_jwt(TestKey::rsa(), "RS256", "rsa1", &claims(&idp.issuer()));
    let a = v.validate(&t).await.unwrap();
    let b = v.validate(&t).await.unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let m = v.metrics();
    assert_eq!(TokenMetrics::get(&m.validations_ok), 1);
    assert_eq!(TokenMetrics::get(&m.cache_hits), 1);
    assert_eq!(TokenMetrics::get(&m.cache_misses), 1);
    // Refusals are remembered briefly.
    let bad = sign_jwt(
        TestKey::rsa_other(),
        "RS256",
        "rsa1",
        &claims(&idp.issuer()),
    );
    for _ in 0..3 {
        assert!(v.validate(&bad).await.is_err());
    }
    assert_eq!(TokenMetrics::get(&m.validations_fail), 1);
    assert_eq!(TokenMetrics::get(&m.negative_hits), 2);
}

#[tokio::test]
async fn cache_entry_ends_at_the_token_exp() {
    let idp = Idp::start().await;
    let mut config = idp.config();
    config.leeway = Duration::ZERO;
    config.cache_ttl = Duration::from_secs(3600);
    let clock = ManualClock::new(SystemTime::now());
    let v = TokenValidator::with_clock(config, transport(), Arc::new(clock.clone()));
    v.start().await.unwrap();
    let now = now_secs();
    let t = sign_jwt(
        TestKey::rsa(),
        "RS256",
        "rsa1",
        &with(claims(&idp.issuer()), |c| {
            c.insert("exp".into(), json!(now + 60));
        }),
    );
    assert!(v.validate(&t).await.is_ok());
    clock.advance(Duration::from_secs(30));
    assert!(v.validate(&t).await.is_ok());
    assert_eq!(TokenMetrics::get(&v.metrics().cache_hits), 1);
    // Past exp by the injected clock: the entry is gone and the token is expired.
    clock.advance(Duration::from_secs(31));
    assert_eq!(err_of(&v, &t).await, format!("{:?}", TokenError::Expired));
    assert_eq!(TokenMetrics::get(&v.metrics().validations_ok), 1);
}

fn opaque_config(idp: &Idp, mode: IntrospectionMode) -> BearerConfig {
    let mut config = idp.config();
    config.introspection = mode;
    config.issuers[0].introspection_client_id = Some("resource server".into());
    config.issuers[0].introspection_client_secret = Some(Secret::new(b"s3cr:t&=".to_vec()));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_validations_of_one_opaque_token_cause_one_introspection() {
    let idp = Idp::start().await;
    idp.set_introspection(
        StubResponse::json(json!({
            "active": true, "sub": "user-9", "scope": "read:items", "client_id": "app", "token_type": "Bearer",
            "exp": now_secs() + 300, "iss": idp.issuer(), "aud": API,
        }))
        .delayed(Duration::from_millis(200)),
    );
    let v = started(&idp, opaque_config(&idp, IntrospectionMode::Opaque)).await;
    let token = "opaque-AbC123_token";
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let v = v.clone();
            tokio::spawn(async move { v.validate(token).await })
        })
        .collect();
    for t in tasks {
        let id = t.await.unwrap().unwrap();
        assert_eq!(id.subject(), "user-9");
        assert!(id.has_scope("read:items"));
    }
    assert_eq!(idp.introspections(), 1);
    assert_eq!(TokenMetrics::get(&v.metrics().introspections_ok), 1);
    // The request: RFC 7662 form, basic auth with form-urlencoded credentials.
    let req = idp
        .server
        .requests()
        .into_iter()
        .find(|r| r.path == "/introspect")
        .unwrap();
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        req.body_str(),
        "token=opaque-AbC123_token&token_type_hint=access_token"
    );
    assert_eq!(
        req.header("authorization"),
        Some(crate::oidc::transport::basic_auth_value(
            "resource server",
            "s3cr:t&="
        ))
    );
}

#[tokio::test]
async fn introspection_client_secret_post() {
    let idp = Idp::start().await;
    idp.set_introspection(StubResponse::json(
        json!({"active": true, "client_id": "m2m", "token_type": "Bearer"}),
    ));
    let mut config = opaque_config(&idp, IntrospectionMode::Always);
    config.issuers[0].introspection_auth = ClientAuth::Post;
    let v = started(&idp, config).await;
    // "always": even a JWT goes to introspection.
    let t = sign_jwt(TestKey::rsa(), "RS256", "rsa1", &claims(&idp.issuer()));
    let id = v.validate(&t).await.unwrap();
    // No sub: the client is the subject.
    assert_eq!(id.subject(), "m2m");
    let req = idp.server.requests().pop().unwrap();
    assert_eq!(req.header("authorization"), None);
    assert!(req.body_str().ends_with(
        "&token_type_hint=access_token&client_id=resource+server&client_secret=s3cr%3At%26%3D"
    ));
    assert_eq!(TokenMetrics::get(&v.metrics().validations_ok), 0);
}

#[tokio::test]
async fn an_opaque_token_with_two_dots_is_introspected_but_alg_none_is_not() {
    let idp = Idp::start().await;
    idp.set_introspection(StubResponse::json(
        json!({"active": true, "sub": "u", "token_type": "Bearer"}),
    ));
    let v = started(&idp, opaque_config(&idp, IntrospectionMode::Opaque)).await;
    // A PASETO-like reference token: three parts, the first no JOSE header.
    let id = v.validate("v2.local.c29tZXRoaW5n").await.unwrap();
    assert_eq!(id.subject(), "u");
    assert_eq!(idp.introspections(), 1);
    // A JWS header stays on the JWT path: alg none is refused, never introspected.
    let t = forge(&json!({"alg": "none"}), &claims(&idp.issuer()), |_| {
        Vec::new()
    });
    assert_eq!(err_of(&v, &t).await, invalid(InvalidReason::AlgNone));
    assert_eq!(idp.introspections(), 1);
}

#[tokio::test]
async fn introspection_failures_are_unavailable_and_inactive_is_invalid() {
    let idp = Idp::start().await;
    let mut config = opaque_config(&idp, IntrospectionMode::Opaque);
    config.cache_ttl = Duration::from_secs(60);
    let v = TokenValidator::new(
        config,
        HttpTransport::new(TransportConfig {
            timeout: Duration::from_millis(300),
            ca_file: None,
        })
        .unwrap(),
    );
    v.start().await.unwrap();
    let unavailable = [
        StubResponse::status(500, "boom"),
        StubResponse::status(401, "bad client credentials"),
        StubResponse::status(200, "<html>not json</html>"),
        StubResponse::json(json!(["not", "an", "object"])),
        StubResponse::json(json!({"active": "yes"})),
        StubResponse::json(json!({"active": true, "token_type": "Bearer"}))
            .delayed(Duration::from_secs(2)),
    ];
    for (i, resp) in unavailable.into_iter().enumerate() {
        idp.set_introspection(resp);
        let token = format!("opaque-{i}");
        let before = idp.introspections();
        for _ in 0..2 {
            let e = v.validate(&token).await.unwrap_err();
            assert!(e.is_unavailable(), "case {i}: {e:?}");
        }
        // Never negative-cached: each attempt asks again.
        assert_eq!(idp.introspections() - before, 2, "case {i}");
    }
    assert_eq!(TokenMetrics::get(&v.metrics().introspections_error), 12);
    idp.set_introspection(StubResponse::json(json!({"active": false})));
    assert_eq!(
        err_of(&v, "opaque-inactive").await,
        invalid(InvalidReason::Inactive)
    );
    idp.set_introspection(StubResponse::json(
        json!({"active": true, "sub": "u", "token_type": "refresh_token"}),
    ));
    assert_eq!(
        err_of(&v, "opaque-refresh").await,
        invalid(InvalidReason::NotAnAccessToken)
    );
    idp.set_introspection(StubResponse::json(
        json!({"active": true, "sub": "u", "aud": "https://other"}),
    ));
    assert_eq!(
        err_of(&v, "opaque-aud").await,
        invalid(InvalidReason::WrongAudience)
    );
}

#[tokio::test]
async fn userinfo_mode_checks_opaque_tokens_at_userinfo() {
    let idp = Idp::start().await;
    let v = started(&idp, opaque_config(&idp, IntrospectionMode::Userinfo)).await;
    *idp.userinfo.lock().unwrap() = StubResponse::json(json!({
        "sub": "auth0|abc", "email": "ann@example.com", "email_verified": true,
        "updated_at": "2024-05-01T10:00:00.000Z"
    }));
    let id = v.validate("auth0-opaque-token").await.unwrap();
    assert_eq!(id.subject(), "auth0|abc");
    assert_eq!(id.verified_email(), Some("ann@example.com"));
    assert_eq!(id.expires_at, None);
    let req = idp.server.requests().pop().unwrap();
    assert_eq!(req.method, "GET");
    assert_eq!(
        req.header("authorization").as_deref(),
        Some("Bearer auth0-opaque-token")
    );
    // Cached like introspection.
    assert!(v.validate("auth0-opaque-token").await.is_ok());
    assert_eq!(idp.userinfo_hits.load(Ordering::SeqCst), 1);
    *idp.userinfo.lock().unwrap() = StubResponse::status(401, "");
    assert_eq!(
        err_of(&v, "revoked-token").await,
        invalid(InvalidReason::Inactive)
    );
    *idp.userinfo.lock().unwrap() = StubResponse::status(502, "");
    assert!(v
        .validate("another-token")
        .await
        .unwrap_err()
        .is_unavailable());
    *idp.userinfo.lock().unwrap() = StubResponse::json(json!({"email": "no-sub@example.com"}));
    assert!(v
        .validate("no-sub-token")
        .await
        .unwrap_err()
        .is_unavailable());
}

#[tokio::test]
async fn not_ready_until_started_and_fail_closed_meanwhile() {
    let idp = Idp::start().await;
    idp.set_jwks(StubResponse::status(503, "starting"));
    let mut config = idp.config();
    config.start_timeout = Duration::from_millis(300);
    config.jwks_min_refetch_interval = Duration::from_secs(3600);
    let v = TokenValidator::new(config, transport());
    assert!(!v.is_ready());
    assert!(matches!(v.start().await, Err(StartError::Jwks { .. })));
    assert!(!v.is_ready());
    let t = sign_jwt(TestKey::rsa(), "RS256", "rsa1", &claims(&idp.issuer()));
    assert!(v.validate(&t).await.unwrap_err().is_unavailable());
    // The provider comes up; the refresh task loads the keys.
    idp.set_jwks(StubResponse::json(default_jwks()));
    let task = v.spawn_refresh();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !v.is_ready() {
        assert!(std::time::Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(v.validate(&t).await.is_ok());
    task.abort();
}

#[tokio::test]
async fn opaque_tokens_wait_for_the_primary_issuer_never_go_to_a_later_one() {
    let primary = Idp::start().await;
    primary.set_introspection(StubResponse::json(
        json!({"active": true, "sub": "p", "token_type": "Bearer"}),
    ));
    let other = Idp::start().await;
    other.set_introspection(StubResponse::json(
        json!({"active": true, "sub": "o", "token_type": "Bearer"}),
    ));
    let mut config = opaque_config(&primary, IntrospectionMode::Opaque);
    let mut second = IssuerConfig::new("https://other.example/", vec![API.into()]);
    second.discovery = false;
    second.jwks_uri = Some(other.server.url("/jwks"));
    second.introspection_endpoint = Some(other.server.url("/introspect"));
    config.issuers.push(second);
    // Not started: the primary's discovery has not answered yet.
    let v = TokenValidator::new(config, transport());
    let e = v.validate("opaque-token").await.unwrap_err();
    assert!(
        matches!(e, TokenError::Unavailable(Unavailable::NotReady)),
        "{e:?}"
    );
    assert_eq!(other.introspections(), 0, "token shown to another issuer");
    v.start().await.unwrap();
    let id = v.validate("opaque-token").await.unwrap();
    assert_eq!(id.subject(), "p");
    assert_eq!((primary.introspections(), other.introspections()), (1, 0));
}

#[tokio::test]
async fn start_fails_on_an_issuer_mismatch() {
    let idp = Idp::start().await;
    let mut config = idp.config();
    // Configured without the trailing slash the document has.
    config.issuers[0].issuer = idp.issuer().trim_end_matches('/').to_string();
    let v = TokenValidator::new(config, transport());
    match v.start().await {
        Err(StartError::Discovery {
            source: DiscoveryError::IssuerMismatch { .. },
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

/// A provider whose discovery and JWKS answer only `Authorization: Bearer <expected>`
/// (a Kubernetes API server's `/openid/v1/jwks`); its discovery names `jwks` as the
/// `jwks_uri` (or its own `/jwks` when `jwks` is empty).
async fn authenticating_idp(expected: Arc<Mutex<String>>, jwks: Arc<Mutex<String>>) -> StubServer {
    StubServer::start(move |req| {
        let want = format!("Bearer {}", expected.lock().unwrap());
        if req.header("authorization").as_deref() != Some(want.as_str()) {
            return StubResponse::status(401, "{\"kind\":\"Status\",\"code\":401}");
        }
        let base = req.base.clone();
        match req.path.as_str() {
            "/.well-known/openid-configuration" => {
                let j = jwks.lock().unwrap().clone();
                let j = if j.is_empty() {
                    format!("{base}/jwks")
                } else {
                    j
                };
                StubResponse::json(json!({"issuer": base, "jwks_uri": j}))
            }
            "/jwks" => StubResponse::json(default_jwks()),
            _ => StubResponse::status(404, ""),
        }
    })
    .await
}

#[tokio::test]
async fn token_file_authenticates_discovery_and_jwks_and_is_reread() {
    let expected = Arc::new(Mutex::new("sa-token-1".to_string()));
    let idp = authenticating_idp(expected.clone(), Arc::new(Mutex::new(String::new()))).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let issuer = idp.url("");
    let mut ic = IssuerConfig::new(issuer.clone(), vec![API.to_string()]);
    let config = |ic: &IssuerConfig| BearerConfig {
        issuers: vec![ic.clone()],
        start_timeout: Duration::from_millis(500),
        jwks_min_refetch_interval: Duration::ZERO,
        ..BearerConfig::default()
    };
    // Without the token: 401 from the provider, so the validator never gets ready.
    let v = TokenValidator::new(config(&ic), transport());
    assert!(v.start().await.is_err());
    std::fs::write(&file, "sa-token-1\n").unwrap();
    ic.token_file = Some(file.clone());
    let v = TokenValidator::new(config(&ic), transport());
    v.start().await.unwrap();
    let token = sign_jwt(TestKey::rsa(), "RS256", "rsa1", &claims(&issuer));
    assert_eq!(v.validate(&token).await.unwrap().subject(), "user-1");
    // The kubelet rotates the token: the next fetch (an unknown kid) reads the new one.
    *expected.lock().unwrap() = "sa-token-2".into();
    std::fs::write(&file, "sa-token-2").unwrap();
    let before = idp.hits();
    let other = sign_jwt(TestKey::rsa(), "RS256", "unknown-kid", &claims(&issuer));
    assert!(v.validate(&other).await.is_err());
    let last = idp.requests().pop().unwrap();
    assert!(idp.hits() > before);
    assert_eq!(last.path, "/jwks");
    assert_eq!(
        last.header("authorization").as_deref(),
        Some("Bearer sa-token-2")
    );
}

#[tokio::test]
async fn token_file_never_goes_to_a_jwks_on_another_origin_unless_configured() {
    let expected = Arc::new(Mutex::new("sa-token".to_string()));
    let elsewhere = authenticating_idp(expected.clone(), Arc::new(Mutex::new(String::new()))).await;
    let jwks_elsewhere = elsewhere.url("/jwks");
    let idp = authenticating_idp(expected, Arc::new(Mutex::new(jwks_elsewhere.clone()))).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "sa-token").unwrap();
    let issuer = idp.url("");
    let mut ic = IssuerConfig::new(issuer.clone(), vec![API.to_string()]);
    ic.token_file = Some(file);
    let config = |ic: &IssuerConfig| BearerConfig {
        issuers: vec![ic.clone()],
        start_timeout: Duration::from_millis(500),
        ..BearerConfig::default()
    };
    // Discovery (on the issuer's origin) carries the token; the discovered jwks_uri is on
    // another port, so nothing is sent there at all.
    let v = TokenValidator::new(config(&ic), transport());
    let err = v.start().await.unwrap_err();
    assert!(format!("{err:?}").contains("ForeignOrigin"), "{err:?}");
    assert!(idp.hits() >= 1);
    assert_eq!(elsewhere.hits(), 0);
    // Named in the config, the same URL gets the token.
    ic.jwks_uri = Some(jwks_elsewhere);
    let v = TokenValidator::new(config(&ic), transport());
    v.start().await.unwrap();
    assert!(elsewhere.hits() >= 1);
    let token = sign_jwt(TestKey::rsa(), "RS256", "rsa1", &claims(&issuer));
    assert!(v.validate(&token).await.is_ok());
}
