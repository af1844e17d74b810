//! What the provider answers, read as hostile JSON: JWKS documents and key selection,
//! RFC 7662 introspection answers and the identity made from them, OIDC discovery
//! documents, and the `token_file` credential's rule for where it may be sent.
//!
//! Properties:
//! - JWKS: no symmetric key, no encryption-only key, no RSA modulus under 2048 bits, at
//!   most 64 keys; a key found for (`kid`, `alg`) has that `kid` (or, without one, is the
//!   only key fitting `alg`) and fits `alg` (type, curve, its own `alg`);
//! - introspection: an answer passes only if `active` is `true`, it is typed as an access
//!   token (or names an audience when untyped), its `iss` is ours, its `aud` names one of
//!   ours, `exp`/`nbf` hold at the clock (a `cnf` becomes the identity's binding, token type
//!   `DPoP` is an access token); the identity made from it
//!   has the answer's `sub` (or `client_id`) and never panics on any claim value;
//! - discovery: a document is accepted only if its `issuer` is exactly the one asked for;
//! - `token_file`: a URL the credential may be sent to is one the provider transport sends
//!   to the issuer's own host and port (the same URL, parsed as the transport parses it).
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, AlgorithmFamily};
use libfuzzer_sys::fuzz_target;
use portcullis::fuzz_api::{
    check_introspection, identity_from_claims, parse_metadata, transport_uri,
};
use portcullis::oidc::credential::IssuerCredential;
use portcullis::token::jwks::{parse_jwks, KeyLookup};
use portcullis_fuzz::Input;
use serde_json::Value;

const ISS: &str = "https://issuer.example";
const NOW: u64 = 1_700_000_000;
const ALGS: [Algorithm; 10] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::HS256,
];

fn jwks(inp: &mut Input<'_>) {
    let kid_choice = inp.below(4);
    let alg = ALGS[inp.below(ALGS.len())];
    let body = inp.rest();
    let Ok(keys) = parse_jwks(body) else { return };
    assert!(!keys.keys.is_empty() && keys.keys.len() <= 64);
    for k in &keys.keys {
        assert!(k.family != AlgorithmFamily::Hmac, "symmetric key accepted");
        if let Some(a) = k.alg {
            assert_eq!(a.family(), k.family, "key alg of another family");
        }
    }
    let doc: Value = serde_json::from_slice(body).unwrap();
    for raw in doc["keys"].as_array().unwrap() {
        if let Some(u) = raw.get("use") {
            // Such a key must not be among those parsed: it would carry its kid.
            if u != "sig" {
                if let Some(kid) = raw.get("kid").and_then(Value::as_str) {
                    let sig_keys_with_kid = doc["keys"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|o| {
                            o.get("kid").and_then(Value::as_str) == Some(kid)
                                && o.get("use").is_none_or(|u| u == "sig")
                        })
                        .count();
                    if sig_keys_with_kid == 0 {
                        assert!(
                            !keys.keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
                            "encryption key {kid:?} kept"
                        );
                    }
                }
            }
        }
    }
    let kids: Vec<Option<String>> = keys
        .keys
        .iter()
        .map(|k| k.kid.as_deref().map(str::to_string))
        .collect();
    let kid = match kid_choice {
        0 => None,
        1 => kids.first().cloned().flatten(),
        2 => kids.last().cloned().flatten(),
        _ => Some("unknown".into()),
    };
    if let KeyLookup::Found(k) = keys.find(kid.as_deref(), alg) {
        assert!(k.fits(alg));
        assert_ne!(k.family, AlgorithmFamily::Hmac);
        match &kid {
            Some(kid) => assert_eq!(k.kid.as_deref(), Some(kid.as_str())),
            None => assert_eq!(keys.keys.iter().filter(|k| k.fits(alg)).count(), 1),
        }
    }
}

fn introspection(inp: &mut Input<'_>) {
    let body = inp.rest();
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let audiences = vec!["api".to_string()];
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    let checked = check_introspection(&claims, ISS, &audiences, now, 30);
    let fallback = claims.get("client_id").and_then(Value::as_str);
    // Whatever the answer, building the identity never panics.
    let identity = identity_from_claims(&claims, ISS, "groups", &["tenant", "a.b"], fallback);
    if checked.is_err() {
        return;
    }
    // The provider's answer is read as a JSON object (a repeated member: the last).
    let all = |k: &str| -> Vec<&Value> { claims.get(k).into_iter().collect() };
    let ctx = || String::from_utf8_lossy(body).into_owned();
    assert!(
        all("active").iter().all(|v| **v == Value::Bool(true)) && !all("active").is_empty(),
        "active: {}",
        ctx()
    );
    let markers: Vec<&Value> = ["token_type", "typ", "token_use"]
        .iter()
        .flat_map(|k| all(k))
        .collect();
    if markers.is_empty() {
        assert!(
            !all("aud").is_empty(),
            "untyped answer without aud: {}",
            ctx()
        );
    } else {
        for v in markers {
            let t = v.as_str().unwrap_or("");
            assert!(
                t.eq_ignore_ascii_case("bearer")
                    || t.eq_ignore_ascii_case("access_token")
                    || t.eq_ignore_ascii_case("dpop"),
                "type {v}: {}",
                ctx()
            );
        }
    }
    assert!(
        all("iss").iter().all(|v| v.as_str() == Some(ISS)),
        "iss: {}",
        ctx()
    );
    for a in all("aud") {
        let ok = match a {
            Value::String(s) => s == "api",
            Value::Array(items) => items.iter().any(|i| i == "api"),
            _ => false,
        };
        assert!(ok, "aud {a}: {}", ctx());
    }
    for e in all("exp") {
        assert!(
            e.as_f64().is_some_and(|e| e + 30.0 > NOW as f64),
            "exp {e}: {}",
            ctx()
        );
    }
    for n in all("nbf") {
        assert!(
            n.as_f64().is_some_and(|n| n <= (NOW + 30) as f64),
            "nbf {n}: {}",
            ctx()
        );
    }
    // A `cnf` is no refusal here: it becomes the identity's binding (RFC 9449), which the
    // gate checks against each request's proof.
    if let Ok(id) = identity {
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        assert_eq!(
            Some(id.subject()),
            sub.or(fallback.filter(|s| !s.is_empty())),
            "subject: {}",
            ctx()
        );
    }
}

fn discovery(inp: &mut Input<'_>) {
    let issuer = [
        "https://issuer.example",
        "https://issuer.example/",
        "https://issuer.example/realms/x",
    ][inp.below(3)];
    let body = inp.rest();
    if let Ok(meta) = parse_metadata(body, issuer) {
        assert_eq!(meta.issuer, issuer);
    }
}

fn credential(inp: &mut Input<'_>) {
    let issuer = [
        "https://issuer.example",
        "https://issuer.example:8443/",
        "http://127.0.0.1:9000/realms/x",
    ][inp.below(3)];
    let Ok(url) = std::str::from_utf8(inp.rest()) else {
        return;
    };
    let cred = IssuerCredential::new("/nonexistent/token".into(), issuer, None);
    if !cred.may_send_to(url) {
        return;
    }
    let Ok(uri) = transport_uri(url) else { return };
    let iu: http::Uri = issuer.parse().unwrap();
    let port = |u: &http::Uri| {
        u.port_u16().unwrap_or(if u.scheme_str() == Some("https") {
            443
        } else {
            80
        })
    };
    assert!(
        uri.host()
            .is_some_and(|h| h.eq_ignore_ascii_case(iu.host().unwrap()))
            && port(&uri) == port(&iu)
            && uri.scheme_str() == iu.scheme_str(),
        "credential of {issuer} may go to {url:?}, which the transport sends to {:?}:{} ({:?})",
        uri.host(),
        port(&uri),
        uri.scheme_str()
    );
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    match inp.below(4) {
        0 => jwks(&mut inp),
        1 => introspection(&mut inp),
        2 => discovery(&mut inp),
        _ => credential(&mut inp),
    }
});
