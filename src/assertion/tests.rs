use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HeaderName;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

use super::*;
use crate::identity::{Identity, Rendered};

fn asserter(secrets: &[[u8; 32]]) -> Arc<Asserter> {
    let keys = secrets
        .iter()
        .map(|s| AssertionKey::derive(s).unwrap())
        .collect();
    Arc::new(
        Asserter::from_keys(
            HeaderName::from_static("x-portcullis-assertion"),
            "https://app.example.com".into(),
            keys,
        )
        .unwrap(),
    )
}

fn rendered() -> Rendered {
    Rendered {
        config: 1,
        headers: Ok(Box::new([])),
        assertions: Default::default(),
    }
}

fn identity(verified: bool) -> Identity {
    let mut id = Identity::new(
        Arc::from("https://idp"),
        "alice",
        Some("alice@example.com"),
        Some("al"),
        None,
    );
    id.email_verified = verified;
    id.groups = Arc::from(vec![Arc::<str>::from("admins"), Arc::from("staff")]);
    id
}

/// Verifies `jwt` against the published JWKS of `a`, as an app would.
fn verify(a: &Asserter, jwt: &str, aud: &str, now: SystemTime) -> serde_json::Value {
    let jwks: serde_json::Value = serde_json::from_slice(a.jwks()).unwrap();
    let kid = decode_header(jwt).unwrap().kid.unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("kid published");
    let key =
        DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
            .unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[aud]);
    v.set_issuer(&["https://app.example.com"]);
    v.validate_exp = false; // checked below against `now`, not the wall clock
    let claims = decode::<serde_json::Value>(jwt, &key, &v).unwrap().claims;
    let n = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(claims["exp"].as_u64().unwrap() > n, "{claims}");
    claims
}

#[test]
fn claims_are_the_documented_ones() {
    let a = asserter(&[[1; 32]]);
    let ra = RouteAssertion::new(a.clone(), "app");
    let now = SystemTime::now();
    let v = ra.value(&identity(true), &rendered(), now).unwrap();
    let c = verify(&a, v.to_str().unwrap(), "app", now);
    assert_eq!(c["iss"], "https://app.example.com");
    assert_eq!(c["aud"], "app");
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["email"], "alice@example.com");
    assert_eq!(c["groups"], serde_json::json!(["admins", "staff"]));
    let (iat, exp) = (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap());
    assert!(exp > iat && exp - iat <= 300, "{c}");
    // Nothing else: no jti, no tokens, no unverified claims.
    let keys: Vec<&String> = c.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["aud", "email", "exp", "groups", "iat", "iss", "sub"],
        "{c}"
    );
    let h = decode_header(v.to_str().unwrap()).unwrap();
    assert_eq!(h.alg, Algorithm::ES256);
    assert_eq!(h.kid.as_deref(), Some(a.kids()[0].as_str()));
}

#[test]
fn unverified_email_is_left_out() {
    let a = asserter(&[[1; 32]]);
    let ra = RouteAssertion::new(a.clone(), "app");
    let now = SystemTime::now();
    let v = ra.value(&identity(false), &rendered(), now).unwrap();
    let c = verify(&a, v.to_str().unwrap(), "app", now);
    assert!(c.get("email").is_none(), "{c}");
}

#[test]
fn exp_never_outlives_the_identity() {
    let a = asserter(&[[1; 32]]);
    let ra = RouteAssertion::new(a.clone(), "app");
    let now = SystemTime::now();
    let mut id = identity(true);
    id.expires_at = Some(now + Duration::from_secs(40));
    let v = ra.value(&id, &rendered(), now).unwrap();
    let c = verify(&a, v.to_str().unwrap(), "app", now);
    let n = now.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(c["exp"].as_u64().unwrap(), n + 40);
}

#[test]
fn cached_until_shortly_before_exp_per_audience() {
    let a = asserter(&[[1; 32]]);
    let app = RouteAssertion::new(a.clone(), "app");
    let other = RouteAssertion::new(a.clone(), "other");
    let id = identity(true);
    let r = rendered();
    let t0 = SystemTime::now();
    let first = app.value(&id, &r, t0).unwrap();
    // ECDSA signatures are randomized: an equal value is the cached one.
    assert_eq!(
        app.value(&id, &r, t0 + Duration::from_secs(200)).unwrap(),
        first
    );
    let o = other.value(&id, &r, t0).unwrap();
    assert_ne!(o, first);
    let c = verify(&a, o.to_str().unwrap(), "other", t0);
    assert_eq!(c["aud"], "other");
    // Both kept side by side.
    assert_eq!(app.value(&id, &r, t0).unwrap(), first);
    assert_eq!(other.value(&id, &r, t0).unwrap(), o);
    // Within RENEW_BEFORE of exp: a new one, valid well past then.
    let later = t0 + LIFETIME - RENEW_BEFORE + Duration::from_secs(1);
    let renewed = app.value(&id, &r, later).unwrap();
    assert_ne!(renewed, first);
    verify(
        &a,
        renewed.to_str().unwrap(),
        "app",
        later + Duration::from_secs(120),
    );
}

#[test]
fn the_first_key_signs_and_all_are_published() {
    let old = asserter(&[[1; 32]]);
    let both = asserter(&[[1; 32], [2; 32]]);
    let swapped = asserter(&[[2; 32], [1; 32]]);
    let jwks = |a: &Asserter| serde_json::from_slice::<serde_json::Value>(a.jwks()).unwrap();
    assert_eq!(jwks(&both)["keys"].as_array().unwrap().len(), 2);
    assert_eq!(both.kids()[0], old.kids()[0]);
    assert_eq!(swapped.kids()[1], old.kids()[0]);
    // Signed by the new first key, verified with the JWKS published before the swap.
    let now = SystemTime::now();
    let v = RouteAssertion::new(swapped.clone(), "app")
        .value(&identity(true), &rendered(), now)
        .unwrap();
    let h = decode_header(v.to_str().unwrap()).unwrap();
    assert_eq!(h.kid.as_deref(), Some(both.kids()[1].as_str()));
    verify(&both, v.to_str().unwrap(), "app", now);
    // A key published nowhere does not verify.
    let forged = RouteAssertion::new(asserter(&[[3; 32]]), "app")
        .value(&identity(true), &rendered(), now)
        .unwrap();
    let key = &jwks(&both)["keys"][0];
    let dk =
        DecodingKey::from_ec_components(key["x"].as_str().unwrap(), key["y"].as_str().unwrap())
            .unwrap();
    let mut val = Validation::new(Algorithm::ES256);
    val.set_audience(&["app"]);
    assert!(decode::<serde_json::Value>(forged.to_str().unwrap(), &dk, &val).is_err());
}

#[test]
fn eddsa_key_files_sign_eddsa() {
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let key = AssertionKey::from_pem(ed.serialize_pem().as_bytes()).unwrap();
    let a = Arc::new(
        Asserter::from_keys(
            HeaderName::from_static("x-a"),
            "https://app.example.com".into(),
            vec![key],
        )
        .unwrap(),
    );
    let v = RouteAssertion::new(a.clone(), "app")
        .value(&identity(true), &rendered(), SystemTime::now())
        .unwrap();
    let jwks: serde_json::Value = serde_json::from_slice(a.jwks()).unwrap();
    let dk = DecodingKey::from_ed_components(jwks["keys"][0]["x"].as_str().unwrap()).unwrap();
    let mut val = Validation::new(Algorithm::EdDSA);
    val.set_audience(&["app"]);
    let c = decode::<serde_json::Value>(v.to_str().unwrap(), &dk, &val)
        .unwrap()
        .claims;
    assert_eq!(c["sub"], "alice");
}

#[test]
fn issuer_has_no_trailing_slash_at_the_root() {
    let u = |s: &str| url::Url::parse(s).unwrap();
    assert_eq!(
        issuer_of(&u("https://app.example.com/")),
        "https://app.example.com"
    );
    assert_eq!(
        issuer_of(&u("http://127.0.0.1:8080")),
        "http://127.0.0.1:8080"
    );
    assert_eq!(
        issuer_of(&u("https://x.example/app/")),
        "https://x.example/app/"
    );
}
