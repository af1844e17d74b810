use serde_json::{json, Value};

use base64::Engine as _;

use super::*;
use crate::testutil::{forge, hs256, TestKey};

const NOW: u64 = 1_700_000_000;
const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln";

fn url() -> url::Url {
    url::Url::parse("https://api.example.com/api/items").unwrap()
}

fn public_jwk(key: &TestKey) -> Value {
    let mut j = key.jwk("k");
    let o = j.as_object_mut().unwrap();
    o.remove("kid");
    o.remove("use");
    j
}

fn claims() -> Value {
    json!({"jti": "j-1", "htm": "GET", "htu": "https://api.example.com/api/items",
        "iat": NOW, "ath": sha256_b64(TOKEN.as_bytes())})
}

fn proof_with(key: &TestKey, alg: &str, header: Value, claims: &Value) -> String {
    forge(&header, claims, |m| key.sign(alg, m))
}

fn proof(claims: &Value) -> String {
    let key = TestKey::p256();
    let h = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(key)});
    proof_with(key, "ES256", h, claims)
}

fn check(proof: &str) -> Result<VerifiedProof, ProofError> {
    check_with(proof, "GET", None)
}

fn check_with(
    proof: &str,
    method: &str,
    nonces: Option<&Nonces>,
) -> Result<VerifiedProof, ProofError> {
    let u = url();
    verify_proof(
        proof,
        &ProofRequest {
            method,
            url: &u,
            access_token: TOKEN,
            now: NOW,
            leeway: 5,
            nonces,
        },
    )
}

fn with(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut c = claims();
    f(c.as_object_mut().unwrap());
    c
}

#[test]
fn rfc7638_thumbprint_example() {
    // RFC 7638 §3.1: the example RSA key and its thumbprint.
    let jwk = json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29"
    });
    assert_eq!(
        thumbprint(jwk.as_object().unwrap()).as_deref(),
        Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
    );
    assert_eq!(
        thumbprint(json!({"kty": "oct", "k": "x"}).as_object().unwrap()),
        None
    );
    // Values that need JSON escaping are quoted as serde_json quotes them.
    let odd = "a\"b\\c\u{1}d é";
    let want = format!(
        r#"{{"crv":"P-256","kty":"EC","x":{},"y":"y"}}"#,
        serde_json::Value::from(odd)
    );
    assert_eq!(
        thumbprint(
            json!({"kty": "EC", "crv": "P-256", "x": odd, "y": "y"})
                .as_object()
                .unwrap()
        ),
        Some(sha256_b64(want.as_bytes()))
    );
}

#[test]
fn a_good_proof_passes_and_names_its_key() {
    let v = check(&proof(&claims())).unwrap();
    assert_eq!(v.jti, "j-1");
    assert_eq!(v.iat, NOW);
    assert_eq!(
        Some(v.jkt),
        thumbprint(public_jwk(TestKey::p256()).as_object().unwrap())
    );
    // Other key types and algorithms of the allow-list.
    for (key, alg) in [
        (TestKey::rsa(), "RS256"),
        (TestKey::rsa(), "PS256"),
        (TestKey::p384(), "ES384"),
        (TestKey::ed25519(), "EdDSA"),
    ] {
        let h = json!({"typ": "dpop+jwt", "alg": alg, "jwk": public_jwk(key)});
        assert!(check(&proof_with(key, alg, h, &claims())).is_ok(), "{alg}");
    }
    // htu: case of scheme and host, default port, query and fragment do not matter.
    for htu in [
        "HTTPS://API.example.com/api/items",
        "https://api.example.com:443/api/items",
        "https://api.example.com/api/items?x=1#f",
    ] {
        assert!(
            check(&proof(&with(|c| {
                c.insert("htu".into(), json!(htu));
            })))
            .is_ok(),
            "{htu}"
        );
    }
    // iat within the leeway in the future, and MAX_AGE in the past.
    for iat in [NOW + 5, NOW - MAX_AGE.as_secs() - 5] {
        assert!(
            check(&proof(&with(|c| {
                c.insert("iat".into(), json!(iat));
            })))
            .is_ok(),
            "{iat}"
        );
    }
}

#[test]
fn header_problems_are_refused() {
    let key = TestKey::p256();
    let jwk = public_jwk(key);
    let mut private = key.jwk("k");
    private["d"] = json!("c2VjcmV0");
    let cases = [
        (json!({"alg": "ES256", "jwk": jwk}), ProofError::WrongType),
        (
            json!({"typ": "JWT", "alg": "ES256", "jwk": jwk}),
            ProofError::WrongType,
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "none", "jwk": jwk}),
            ProofError::Algorithm,
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk}),
            ProofError::Algorithm,
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "ES512", "jwk": jwk}),
            ProofError::Algorithm,
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "ES256"}),
            ProofError::BadKey,
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": "x"}),
            ProofError::BadKey,
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private}),
            ProofError::PrivateKey,
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}}),
            ProofError::PrivateKey,
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "ES384", "jwk": jwk}),
            ProofError::BadKey,
        ),
        (
            json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk, "crit": ["x"]}),
            ProofError::Critical,
        ),
    ];
    for (h, want) in cases {
        let p = proof_with(key, "ES256", h.clone(), &claims());
        assert_eq!(check(&p), Err(want), "{h}");
    }
    // HS256 under a "key" of our own making: refused by name, whatever the signature.
    let h = json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": jwk});
    let p = forge(&h, &claims(), |m| {
        hs256(b"0123456789abcdef0123456789abcdef", m)
    });
    assert_eq!(check(&p), Err(ProofError::Algorithm));
    // An unsigned proof.
    let h = json!({"typ": "dpop+jwt", "alg": "none", "jwk": jwk});
    let p = forge(&h, &claims(), |_| Vec::new());
    assert_eq!(check(&p), Err(ProofError::Algorithm));
    // Signed by another key than the one in the header.
    let h = json!({"typ": "dpop+jwt", "alg": "RS256", "jwk": public_jwk(TestKey::rsa())});
    let p = proof_with(TestKey::rsa_other(), "RS256", h, &claims());
    assert_eq!(check(&p), Err(ProofError::BadSignature));
    // Duplicate header members, garbage, too long.
    let dup = format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(r#"{"typ":"dpop+jwt","alg":"ES256","alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    assert_eq!(check(&dup), Err(ProofError::Malformed));
    assert_eq!(check("a.b"), Err(ProofError::Malformed));
    assert_eq!(check("!!.e30.c2ln"), Err(ProofError::Malformed));
    assert_eq!(
        check(&"a".repeat(MAX_PROOF_LEN + 1)),
        Err(ProofError::TooLong)
    );
}

#[test]
fn claim_problems_are_refused() {
    let other_token_ath = sha256_b64(b"another token");
    let cases: Vec<(&str, Value, ProofError)> = vec![
        (
            "no jti",
            with(|c| {
                c.remove("jti");
            }),
            ProofError::MissingClaim,
        ),
        (
            "empty jti",
            with(|c| {
                c.insert("jti".into(), json!(""));
            }),
            ProofError::MissingClaim,
        ),
        (
            "no htm",
            with(|c| {
                c.remove("htm");
            }),
            ProofError::MissingClaim,
        ),
        (
            "no htu",
            with(|c| {
                c.remove("htu");
            }),
            ProofError::MissingClaim,
        ),
        (
            "no iat",
            with(|c| {
                c.remove("iat");
            }),
            ProofError::MissingClaim,
        ),
        (
            "htm POST",
            with(|c| {
                c.insert("htm".into(), json!("POST"));
            }),
            ProofError::Method,
        ),
        (
            "htm get",
            with(|c| {
                c.insert("htm".into(), json!("get"));
            }),
            ProofError::Method,
        ),
        (
            "htu other path",
            with(|c| {
                c.insert("htu".into(), json!("https://api.example.com/api/other"));
            }),
            ProofError::Url,
        ),
        (
            "htu http",
            with(|c| {
                c.insert("htu".into(), json!("http://api.example.com/api/items"));
            }),
            ProofError::Url,
        ),
        (
            "htu other host",
            with(|c| {
                c.insert("htu".into(), json!("https://evil.example.com/api/items"));
            }),
            ProofError::Url,
        ),
        (
            "htu other port",
            with(|c| {
                c.insert(
                    "htu".into(),
                    json!("https://api.example.com:8443/api/items"),
                );
            }),
            ProofError::Url,
        ),
        (
            "htu userinfo",
            with(|c| {
                c.insert("htu".into(), json!("https://u@api.example.com/api/items"));
            }),
            ProofError::Url,
        ),
        (
            "htu relative",
            with(|c| {
                c.insert("htu".into(), json!("/api/items"));
            }),
            ProofError::Url,
        ),
        (
            "iat stale",
            with(|c| {
                c.insert("iat".into(), json!(NOW - MAX_AGE.as_secs() - 6));
            }),
            ProofError::Stale,
        ),
        (
            "iat future",
            with(|c| {
                c.insert("iat".into(), json!(NOW + 6));
            }),
            ProofError::Stale,
        ),
        (
            "iat string",
            with(|c| {
                c.insert("iat".into(), json!("now"));
            }),
            ProofError::MissingClaim,
        ),
        (
            "no ath",
            with(|c| {
                c.remove("ath");
            }),
            ProofError::TokenHash,
        ),
        (
            "ath of another token",
            with(|c| {
                c.insert("ath".into(), json!(other_token_ath));
            }),
            ProofError::TokenHash,
        ),
    ];
    for (name, c, want) in cases {
        assert_eq!(check(&proof(&c)), Err(want), "{name}");
    }
    assert_eq!(
        check_with(&proof(&claims()), "POST", None),
        Err(ProofError::Method)
    );
}

#[test]
fn replicas_with_the_same_secret_accept_each_others_nonces() {
    let period = Duration::from_secs(60);
    let a = Nonces::derived(&[7u8; 32], period).unwrap();
    let b = Nonces::derived(&[7u8; 32], period).unwrap();
    let other = Nonces::derived(&[8u8; 32], period).unwrap();
    let n = a.current(NOW);
    assert!(b.accepts(&n, NOW) && b.accepts(&n, NOW + 60));
    assert!(!other.accepts(&n, NOW));
    // Not the HMAC of the secret used as a key directly (a key of its own).
    assert!(!Nonces::with_key(&[7u8; 32], period).accepts(&n, NOW));
    // Random keys (no shared secret): each process its own.
    let r = Nonces::new(period).unwrap();
    assert!(!Nonces::new(period).unwrap().accepts(&r.current(NOW), NOW));
}

#[test]
fn nonces_rotate_and_are_accepted_for_a_window() {
    let n = Nonces::with_key(b"k", Duration::from_secs(60));
    let now = NOW;
    let current = n.current(now);
    assert!(n.accepts(&current, now));
    assert!(n.accepts(&current, now + 60), "the previous period's nonce");
    assert!(!n.accepts(&current, now + 120), "two periods later");
    assert_ne!(n.current(now + 60), current, "a new nonce each period");
    assert!(!Nonces::with_key(b"other", Duration::from_secs(60)).accepts(&current, now));
    assert!(!n.accepts("garbage", now));
    let mut raw = URL_SAFE_NO_PAD.decode(&current).unwrap();
    raw[20] ^= 1;
    assert!(!n.accepts(&URL_SAFE_NO_PAD.encode(raw), now));
    // In a proof: required when nonces are on; one of ours passes.
    let u = url();
    let check_n = |p: &str| {
        verify_proof(
            p,
            &ProofRequest {
                method: "GET",
                url: &u,
                access_token: TOKEN,
                now,
                leeway: 5,
                nonces: Some(&n),
            },
        )
    };
    assert_eq!(check_n(&proof(&claims())), Err(ProofError::Nonce));
    let stale = n.current(now - 120);
    let c = with(|c| {
        c.insert("nonce".into(), json!(stale));
    });
    assert_eq!(check_n(&proof(&c)), Err(ProofError::Nonce));
    let c = with(|c| {
        c.insert("nonce".into(), json!(current));
    });
    assert!(check_n(&proof(&c)).is_ok());
}
