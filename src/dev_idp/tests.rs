//! Tests of the development provider over real sockets on 127.0.0.1:0, with a scripted
//! client that follows no redirects.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::test_client::{basic, query, TestClient, TestResponse};
use super::web::{b64url, sha256};
use super::*;

const CALLBACK: &str = "http://127.0.0.1:4180/oauth2/callback";
const DEMO_BASIC: (&str, &str) = (DEMO_CLIENT_ID, DEMO_CLIENT_SECRET);

async fn start() -> DevIdp {
    DevIdp::start(DevIdpConfig::default())
        .await
        .expect("dev provider starts")
}

struct Pkce {
    verifier: String,
    challenge: String,
}

fn pkce() -> Pkce {
    let verifier = web::random_token(32);
    let challenge = b64url(&sha256(verifier.as_bytes()));
    Pkce {
        verifier,
        challenge,
    }
}

fn authorize_url(idp: &DevIdp, extra: &[(&str, &str)]) -> String {
    let mut url = url::Url::parse(&idp.url(Endpoint::Authorize)).unwrap();
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in extra {
            q.append_pair(k, v);
        }
    }
    url.to_string()
}

/// The standard parameters of a good request, overridable.
fn auth_params<'a>(p: &'a Pkce, overrides: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut params: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", DEMO_CLIENT_ID),
        ("redirect_uri", CALLBACK),
        ("scope", "openid profile email offline_access"),
        ("state", "st-123"),
        ("nonce", "n-456"),
        ("code_challenge", &p.challenge),
        ("code_challenge_method", "S256"),
    ];
    for (k, v) in overrides {
        params.retain(|(pk, _)| pk != k);
        if !v.is_empty() {
            params.push((k, v));
        }
    }
    params
}

/// The login transaction id in a login form.
fn form_tx(page: &str) -> String {
    let marker = "name=\"tx\" value=\"";
    let start = page.find(marker).expect("login form has a tx") + marker.len();
    let end = page[start..].find('"').unwrap() + start;
    page[start..end].to_string()
}

/// GET /authorize -> form -> POST login; returns the redirect's query parameters.
async fn login(
    c: &TestClient,
    idp: &DevIdp,
    params: &[(&str, &str)],
    user: &str,
    password: &str,
) -> HashMap<String, String> {
    let form = c.get(&authorize_url(idp, params)).await;
    if form.status == 302 && c.cookie(authorize::SESSION_COOKIE).is_some() {
        // The provider's login session answered without the form.
        return query(&form.location());
    }
    assert_eq!(form.status, 200, "{}", form.body);
    assert!(form.body.contains(html::BANNER));
    let tx = form_tx(&form.body);
    let resp = c
        .post_form(
            &idp.url(Endpoint::Login),
            &[("tx", &tx), ("username", user), ("password", password)],
            &[],
        )
        .await;
    assert_eq!(resp.status, 303, "{}", resp.body);
    let loc = resp.location();
    assert!(loc.as_str().starts_with(CALLBACK), "{loc}");
    query(&loc)
}

async fn exchange(c: &TestClient, idp: &DevIdp, code: &str, verifier: &str) -> TestResponse {
    c.post_form(
        &idp.url(Endpoint::Token),
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", verifier),
        ],
        &[("authorization", &basic(DEMO_BASIC.0, DEMO_BASIC.1))],
    )
    .await
}

/// A full login as `user`; the token response.
async fn tokens_for(c: &TestClient, idp: &DevIdp, user: &str, scope: &str) -> Value {
    let p = pkce();
    let q = login(c, idp, &auth_params(&p, &[("scope", scope)]), user, user).await;
    let r = exchange(c, idp, &q["code"], &p.verifier).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

async fn introspect(c: &TestClient, idp: &DevIdp, token: &str) -> Value {
    let r = c
        .post_form(
            &idp.url(Endpoint::Introspect),
            &[("token", token)],
            &[(
                "authorization",
                &basic(INTROSPECTION_CLIENT_ID, INTROSPECTION_CLIENT_SECRET),
            )],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

async fn refresh(c: &TestClient, idp: &DevIdp, rt: &str) -> TestResponse {
    c.post_form(
        &idp.url(Endpoint::Token),
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
        &[("authorization", &basic(DEMO_BASIC.0, DEMO_BASIC.1))],
    )
    .await
}

async fn machine_token(c: &TestClient, idp: &DevIdp, scope: Option<&str>) -> TestResponse {
    let mut form = vec![("grant_type", "client_credentials")];
    if let Some(s) = scope {
        form.push(("scope", s));
    }
    c.post_form(
        &idp.url(Endpoint::Token),
        &form,
        &[(
            "authorization",
            &basic(MACHINE_CLIENT_ID, MACHINE_CLIENT_SECRET),
        )],
    )
    .await
}

async fn verify_with_jwks(
    c: &TestClient,
    idp: &DevIdp,
    token: &str,
    validation: &mut Validation,
) -> Value {
    let jwks: JwkSet = serde_json::from_str(&c.get(&idp.url(Endpoint::Jwks)).await.body).unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("kid in JWKS");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    validation.algorithms = vec![header.alg];
    jsonwebtoken::decode::<Value>(token, &key, validation)
        .expect("token verifies against the JWKS")
        .claims
}

// ---- discovery and keys ----

#[tokio::test]
async fn discovery_document_has_the_required_fields() {
    let idp = start().await;
    let c = TestClient::new();
    let r = c.get(&idp.url(Endpoint::Discovery)).await;
    assert_eq!(r.status, 200);
    let d = r.json();
    let iss = idp.issuer();
    assert!(iss.starts_with("http://127.0.0.1:"));
    assert_eq!(d["issuer"], iss);
    for (field, path) in [
        ("authorization_endpoint", "/authorize"),
        ("token_endpoint", "/token"),
        ("userinfo_endpoint", "/userinfo"),
        ("jwks_uri", "/jwks"),
        ("introspection_endpoint", "/introspect"),
        ("revocation_endpoint", "/revoke"),
        ("end_session_endpoint", "/end_session"),
    ] {
        assert_eq!(d[field], format!("{iss}{path}"), "{field}");
    }
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(d["authorization_response_iss_parameter_supported"], true);
    let grants = d["grant_types_supported"].as_array().unwrap();
    for g in ["authorization_code", "refresh_token", "client_credentials"] {
        assert!(grants.iter().any(|x| x == g), "{g}");
    }
    let algs = d["id_token_signing_alg_values_supported"]
        .as_array()
        .unwrap();
    assert!(algs.iter().any(|a| a == "RS256") && algs.iter().any(|a| a == "ES256"));
    let scopes = d["scopes_supported"].as_array().unwrap();
    for s in ["openid", "profile", "email", "offline_access", "read:items"] {
        assert!(scopes.iter().any(|x| x == s), "{s}");
    }
    assert!(d["claims_supported"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "groups"));
    assert_eq!(d["subject_types_supported"], serde_json::json!(["public"]));
}

#[tokio::test]
async fn jwks_publishes_an_rs256_and_an_es256_key() {
    let idp = start().await;
    let c = TestClient::new();
    let r = c.get(&idp.url(Endpoint::Jwks)).await;
    assert_eq!(r.status, 200);
    let keys = r.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2);
    let rsa = keys.iter().find(|k| k["kty"] == "RSA").expect("RSA key");
    let ec = keys.iter().find(|k| k["kty"] == "EC").expect("EC key");
    assert_eq!(rsa["alg"], "RS256");
    assert_eq!(ec["alg"], "ES256");
    assert_eq!(ec["crv"], "P-256");
    for k in [rsa, ec] {
        assert_eq!(k["use"], "sig");
        assert!(k["kid"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(k.get("d").is_none(), "no private parts");
    }
    assert_ne!(rsa["kid"], ec["kid"]);
    // RSA 2048: a 256-byte modulus.
    let n = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        rsa["n"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(n.len(), 256);
}

// ---- the authorization code flow ----

#[tokio::test]
async fn code_flow_issues_tokens_whose_id_token_verifies_against_the_jwks() {
    let idp = start().await;
    let c = TestClient::new();
    let p = pkce();
    let q = login(&c, &idp, &auth_params(&p, &[]), "alice", "alice").await;
    assert_eq!(q["state"], "st-123");
    // RFC 9207: the issuer comes with the code.
    assert_eq!(q["iss"], idp.issuer());
    let r = exchange(&c, &idp, &q["code"], &p.verifier).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let t = r.json();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 300);
    assert_eq!(t["scope"], "openid profile email offline_access");
    assert!(t["refresh_token"].as_str().is_some_and(|s| s.len() >= 40));

    let mut v = Validation::new(Algorithm::RS256);
    v.set_issuer(&[idp.issuer()]);
    v.set_audience(&[DEMO_CLIENT_ID]);
    let id = verify_with_jwks(&c, &idp, t["id_token"].as_str().unwrap(), &mut v).await;
    assert_eq!(id["nonce"], "n-456");
    assert_eq!(id["sub"], "user-alice");
    assert_eq!(id["azp"], DEMO_CLIENT_ID);
    assert_eq!(id["email"], "alice@example.com");
    assert_eq!(id["email_verified"], true);
    assert_eq!(id["name"], "Alice Admin");
    assert_eq!(id["preferred_username"], "alice");
    assert_eq!(id["groups"], serde_json::json!(["staff", "admins"]));
    assert!(id["auth_time"].as_u64().is_some());
    // OIDC Core §3.3.2.11 at_hash: left half of SHA-256 of the access token.
    let at = t["access_token"].as_str().unwrap();
    assert_eq!(id["at_hash"], b64url(&sha256(at.as_bytes())[..16]));

    // The access token: an RFC 9068 JWT for the configured audience.
    let header = jsonwebtoken::decode_header(at).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, Algorithm::RS256);
    let mut v = Validation::new(Algorithm::RS256);
    v.set_issuer(&[idp.issuer()]);
    v.set_audience(&[idp.audience()]);
    let claims = verify_with_jwks(&c, &idp, at, &mut v).await;
    assert_eq!(claims["aud"], format!("{}/api", idp.issuer()));
    assert_eq!(claims["client_id"], DEMO_CLIENT_ID);
    assert_eq!(claims["sub"], "user-alice");
    assert_eq!(claims["scope"], "openid profile email offline_access");
    assert_eq!(claims["groups"], serde_json::json!(["staff", "admins"]));
    assert!(claims["jti"].as_str().is_some());
}

#[tokio::test]
async fn authorize_without_pkce_is_refused() {
    let idp = start().await;
    let c = TestClient::new();
    let p = pkce();
    let r = c
        .get(&authorize_url(
            &idp,
            &auth_params(&p, &[("code_challenge", ""), ("code_challenge_method", "")]),
        ))
        .await;
    assert_eq!(r.status, 302);
    let q = query(&r.location());
    assert_eq!(q["error"], "invalid_request");
    assert!(q["error_description"].contains("code_challenge"));
    assert_eq!(q["state"], "st-123");
    assert_eq!(q["iss"], idp.issuer());
    assert!(!q.contains_key("code"));
}

#[tokio::test]
async fn authorize_with_plain_pkce_is_refused() {
    let idp = start().await;
    let c = TestClient::new();
    let p = pkce();
    for method in ["plain", ""] {
        let r = c
            .get(&authorize_url(
                &idp,
                &auth_params(&p, &[("code_challenge_method", method)]),
            ))
            .await;
        assert_eq!(r.status, 302, "method {method:?}");
        let q = query(&r.location());
        assert_eq!(q["error"], "invalid_request");
        assert!(q["error_description"].contains("S256"));
    }
}

#[tokio::test]
async fn wrong_or_missing_code_verifier_is_invalid_grant() {
    let idp = start().await;
    let c = TestClient::new();
    let p = pkce();
    let q = login(&c, &idp, &auth_params(&p, &[]), "bob", "bob").await;
    let r = exchange(&c, &idp, &q["code"], &pkce().verifier).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_grant");
    // The code is spent by the failed attempt: the right verifier cannot follow.
    let r = exchange(&c, &idp, &q["code"], &p.verifier).await;
    assert_eq!(r.json()["error"], "invalid_grant");

    let p = pkce();
    let q = login(&c, &idp, &auth_params(&p, &[]), "bob", "bob").await;
    let r = c
        .post_form(
            &idp.url(Endpoint::Token),
            &[
                ("grant_type", "authorization_code"),
                ("code", &q["code"]),
                ("redirect_uri", CALLBACK),
            ],
            &[("authorization", &basic(DEMO_BASIC.0, DEMO_BASIC.1))],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_grant");
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("code_verifier"));
}

#[tokio::test]
async fn replayed_code_is_invalid_grant_and_revokes_its_tokens() {
    let idp = start().await;
    let c = TestClient::new();
    let p = pkce();
    let q = login(&c, &idp, &auth_params(&p, &[]), "alice", "alice").await;
    let first = exchange(&c, &idp, &q["code"], &p.verifier).await;
    assert_eq!(first.status, 200);
    let t = first.json();
    let at = t["access_token"].as_str().unwrap();
    let rt = t["refresh_token"].as_str().unwrap();
    assert_eq!(introspect(&c, &idp, at).await["active"], true);

    let replay = exchange(&c, &idp, &q["code"], &p.verifier).await;
    assert_eq!(replay.status, 400);
    assert_eq!(replay.json()["error"], "invalid_grant");
    // RFC 6749 §4.1.2: what the code produced is revoked.
    assert_eq!(introspect(&c, &idp, at).await["active"], false);
    assert_eq!(introspect(&c, &idp, rt).await["active"], false);
    assert_eq!(refresh(&c, &idp, rt).await.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn token_redirect_uri_must_match_the_authorization_request() {
    let idp = start().await;
    let c = TestClient::new();
    let p = pkce();
    let q = login(&c, &idp, &auth_params(&p, &[]), "alice", "alice").await;
    let r = c
        .post_form(
            &idp.url(Endpoint::Token),
            &[
                ("grant_type", "authorization_code"),
                ("code", &q["code"]),
                ("redirect_uri", "http://127.0.0.1:9999/oauth2/callback"),
                ("code_verifier", &p.verifier),
            ],
            &[("authorization", &basic(DEMO_BASIC.0, DEMO_BASIC.1))],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn unregistered_redirect_uri_shows_an_error_page_without_redirect() {
    let idp = start().await;
    let c = TestClient::new();
    let p = pkce();
    for uri in [
        "https://evil.example/oauth2/callback",
        "http://127.0.0.1:4180/elsewhere",
        "http://127.0.0.1:4180/oauth2/callback?x=1",
        "http://127.0.0.1:4180/x/../oauth2/callback",
    ] {
        let r = c
            .get(&authorize_url(
                &idp,
                &auth_params(&p, &[("redirect_uri", uri)]),
            ))
            .await;
        assert_eq!(r.status, 400, "{uri}");
        assert!(r.header("location").is_none(), "{uri}");
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        assert!(r.body.contains("not registered"));
        assert!(r.body.contains(html::BANNER));
    }
    // Unknown client: also a page.
    let r = c
        .get(&authorize_url(
            &idp,
            &auth_params(&p, &[("client_id", "<script>x</script>")]),
        ))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());
    assert!(!r.body.contains("<script>x"));
    assert!(r.body.contains("&lt;script&gt;x"));
}

#[tokio::test]
async fn authorize_errors_after_redirect_validation_are_redirected() {
    let idp = start().await;
    let c = TestClient::new();
    let p = pkce();
    for (overrides, error) in [
        (
            vec![("response_type", "token")],
            "unsupported_response_type",
        ),
        (vec![("response_type", "")], "invalid_request"),
        (vec![("scope", "openid admin:everything")], "invalid_scope"),
        (vec![("prompt", "none")], "login_required"),
        (vec![("request", "eyJ.x.y")], "request_not_supported"),
    ] {
        let r = c
            .get(&authorize_url(&idp, &auth_params(&p, &overrides)))
            .await;
        assert_eq!(r.status, 302, "{overrides:?}");
        let loc = r.location();
        assert!(loc.as_str().starts_with(CALLBACK));
        let q = query(&loc);
        assert_eq!(q["error"], error, "{overrides:?}");
        assert_eq!(q["state"], "st-123");
        assert_eq!(q["iss"], idp.issuer());
    }
}

#[tokio::test]
async fn wrong_password_shows_the_form_again_with_401_and_escapes_input() {
    let idp = start().await;
    let c = TestClient::new();
    let p = pkce();
    let form = c.get(&authorize_url(&idp, &auth_params(&p, &[]))).await;
    assert!(form.body.contains("<code>alice</code>"), "users listed");
    assert!(form.body.contains("admins"));
    let tx = form_tx(&form.body);
    let r = c
        .post_form(
            &idp.url(Endpoint::Login),
            &[
                ("tx", &tx),
                ("username", "\"><script>alert(1)</script>"),
                ("password", "nope"),
            ],
            &[],
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Wrong username or password"));
    assert!(!r.body.contains("<script>alert(1)"));
    assert!(r
        .body
        .contains("&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert_eq!(form_tx(&r.body), tx, "same transaction continues");
    // The right password then works with the same transaction, once.
    let ok = c
        .post_form(
            &idp.url(Endpoint::Login),
            &[("tx", &tx), ("username", "alice"), ("password", "alice")],
            &[],
        )
        .await;
    assert_eq!(ok.status, 303);
    let again = c
        .post_form(
            &idp.url(Endpoint::Login),
            &[("tx", &tx), ("username", "alice"), ("password", "alice")],
            &[],
        )
        .await;
    assert_eq!(again.status, 400);
    assert!(again.header("location").is_none());
}

#[tokio::test]
async fn cancel_on_the_form_is_access_denied() {
    let idp = start().await;
    let c = TestClient::new();
    let p = pkce();
    let form = c.get(&authorize_url(&idp, &auth_params(&p, &[]))).await;
    let tx = form_tx(&form.body);
    let r = c
        .post_form(
            &idp.url(Endpoint::Login),
            &[("tx", &tx), ("cancel", "1")],
            &[],
        )
        .await;
    assert_eq!(r.status, 303);
    let q = query(&r.location());
    assert_eq!(q["error"], "access_denied");
    assert_eq!(q["state"], "st-123");
}

#[tokio::test]
async fn provider_session_skips_the_form_until_end_session() {
    let idp = start().await;
    let c = TestClient::new();
    let p = pkce();
    login(&c, &idp, &auth_params(&p, &[]), "alice", "alice").await;
    assert!(c.cookie(authorize::SESSION_COOKIE).is_some());
    // Second authorization: straight back with a code.
    let p2 = pkce();
    let r = c.get(&authorize_url(&idp, &auth_params(&p2, &[]))).await;
    assert_eq!(r.status, 302);
    let q = query(&r.location());
    let t = exchange(&c, &idp, &q["code"], &p2.verifier).await.json();
    assert!(t["id_token"].is_string());
    // prompt=login forces the form.
    let r = c
        .get(&authorize_url(
            &idp,
            &auth_params(&p2, &[("prompt", "login")]),
        ))
        .await;
    assert_eq!(r.status, 200);
    // end_session ends it.
    let r = c.get(&idp.url(Endpoint::EndSession)).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Signed out"));
    assert!(c.cookie(authorize::SESSION_COOKIE).is_none());
    let r = c.get(&authorize_url(&idp, &auth_params(&p2, &[]))).await;
    assert_eq!(r.status, 200, "form again");
}

// ---- refresh ----

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_grant() {
    let idp = start().await;
    let c = TestClient::new();
    let t = tokens_for(&c, &idp, "alice", "openid profile offline_access").await;
    let rt1 = t["refresh_token"].as_str().unwrap().to_string();

    let r = refresh(&c, &idp, &rt1).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let t2 = r.json();
    let rt2 = t2["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(rt1, rt2, "rotated");
    let at2 = t2["access_token"].as_str().unwrap().to_string();
    // The refreshed ID token: same sub and auth_time, no nonce (OIDC Core §12.2).
    let mut v = Validation::new(Algorithm::RS256);
    v.set_issuer(&[idp.issuer()]);
    v.set_audience(&[DEMO_CLIENT_ID]);
    let id1 = verify_with_jwks(&c, &idp, t["id_token"].as_str().unwrap(), &mut v).await;
    let id2 = verify_with_jwks(&c, &idp, t2["id_token"].as_str().unwrap(), &mut v).await;
    assert_eq!(id1["sub"], id2["sub"]);
    assert_eq!(id1["auth_time"], id2["auth_time"]);
    assert!(id2.get("nonce").is_none());

    // Narrower scope is fine; wider is invalid_scope.
    let r = c
        .post_form(
            &idp.url(Endpoint::Token),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", &rt2),
                ("scope", "openid email"),
            ],
            &[("authorization", &basic(DEMO_BASIC.0, DEMO_BASIC.1))],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_scope");

    // Reusing the rotated-away token: refused, and the whole grant dies.
    let r = refresh(&c, &idp, &rt1).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_grant");
    assert_eq!(
        refresh(&c, &idp, &rt2).await.json()["error"],
        "invalid_grant"
    );
    assert_eq!(introspect(&c, &idp, &at2).await["active"], false);
}

#[tokio::test]
async fn refresh_without_rotation_keeps_the_token() {
    let idp = start().await;
    idp.set_refresh_rotation(false);
    let c = TestClient::new();
    let t = tokens_for(&c, &idp, "bob", "openid offline_access").await;
    let rt = t["refresh_token"].as_str().unwrap();
    for _ in 0..2 {
        let r = refresh(&c, &idp, rt).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.json().get("refresh_token").is_none());
    }
}

#[tokio::test]
async fn refresh_token_only_with_offline_access() {
    let idp = start().await;
    let c = TestClient::new();
    let t = tokens_for(&c, &idp, "bob", "openid email").await;
    assert!(t.get("refresh_token").is_none());
    assert!(t["id_token"].is_string());
    let t = tokens_for(&c, &idp, "bob", "read:items").await;
    assert!(t.get("id_token").is_none(), "no openid, no ID token");
}

#[tokio::test]
async fn refresh_token_of_another_client_is_invalid_grant() {
    let mut config = DevIdpConfig::default();
    let mut other = DevClient::demo_web();
    other.client_id = "other".into();
    other.secret = Some(crate::config::Secret::new("other-secret".into()));
    config.clients.push(other);
    let idp = DevIdp::start(config).await.unwrap();
    let c = TestClient::new();
    let t = tokens_for(&c, &idp, "alice", "openid offline_access").await;
    let r = c
        .post_form(
            &idp.url(Endpoint::Token),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", t["refresh_token"].as_str().unwrap()),
            ],
            &[("authorization", &basic("other", "other-secret"))],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_grant");
}

// ---- client credentials and client authentication ----

#[tokio::test]
async fn client_credentials_grants_only_allowed_scopes() {
    let idp = start().await;
    let c = TestClient::new();
    let r = machine_token(&c, &idp, Some("read:items")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let t = r.json();
    assert_eq!(t["scope"], "read:items");
    assert!(t.get("refresh_token").is_none() && t.get("id_token").is_none());
    let mut v = Validation::new(Algorithm::RS256);
    v.set_issuer(&[idp.issuer()]);
    v.set_audience(&[idp.audience()]);
    let claims = verify_with_jwks(&c, &idp, t["access_token"].as_str().unwrap(), &mut v).await;
    assert_eq!(claims["sub"], MACHINE_CLIENT_ID);
    assert_eq!(claims["client_id"], MACHINE_CLIENT_ID);
    assert!(claims.get("email").is_none());

    // No scope: all the client may have.
    let t = machine_token(&c, &idp, None).await.json();
    assert_eq!(t["scope"], "read:items write:items");

    let r = machine_token(&c, &idp, Some("read:items admin")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_scope");

    // The web client may not use this grant.
    let r = c
        .post_form(
            &idp.url(Endpoint::Token),
            &[("grant_type", "client_credentials")],
            &[("authorization", &basic(DEMO_BASIC.0, DEMO_BASIC.1))],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "unauthorized_client");
}

#[tokio::test]
async fn token_endpoint_client_authentication() {
    let mut config = DevIdpConfig::default();
    let mut odd = DevClient::demo_machine();
    odd.client_id = "odd:client".into();
    odd.secret = Some(crate::config::Secret::new("s3cr3t:+ /%".into()));
    config.clients.push(odd);
    let idp = DevIdp::start(config).await.unwrap();
    let c = TestClient::new();
    let url = idp.url(Endpoint::Token);
    let cc = [("grant_type", "client_credentials")];

    // client_secret_post.
    let r = c
        .post_form(
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", MACHINE_CLIENT_ID),
                ("client_secret", MACHINE_CLIENT_SECRET),
            ],
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Basic with RFC 6749 §2.3.1 form-encoding of id and secret.
    let r = c
        .post_form(
            &url,
            &cc,
            &[("authorization", &basic("odd:client", "s3cr3t:+ /%"))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Wrong secret: 401 invalid_client with a Basic challenge.
    let r = c
        .post_form(
            &url,
            &cc,
            &[("authorization", &basic(MACHINE_CLIENT_ID, "x"))],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid_client");
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    // No authentication at all.
    let r = c.post_form(&url, &cc, &[]).await;
    assert_eq!(r.status, 401);
    // Two methods at once.
    let r = c
        .post_form(
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("client_secret", MACHINE_CLIENT_SECRET),
            ],
            &[(
                "authorization",
                &basic(MACHINE_CLIENT_ID, MACHINE_CLIENT_SECRET),
            )],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");
    // Unknown grant type; repeated parameter; not a form; GET.
    let auth = basic(MACHINE_CLIENT_ID, MACHINE_CLIENT_SECRET);
    let r = c
        .post_form(
            &url,
            &[("grant_type", "password")],
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(r.json()["error"], "unsupported_grant_type");
    let r = c
        .post_form(
            &url,
            &[
                ("grant_type", "client_credentials"),
                ("scope", "a"),
                ("scope", "b"),
            ],
            &[("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");
    let r = c
        .send(
            http::Method::POST,
            &url,
            &[
                ("content-type", "application/json"),
                ("authorization", &auth),
            ],
            bytes::Bytes::from_static(b"{\"grant_type\":\"client_credentials\"}"),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = c.get(&url).await;
    assert_eq!(r.status, 405);
}

// ---- userinfo, introspection, revocation ----

#[tokio::test]
async fn userinfo_returns_claims_and_refuses_bad_tokens() {
    let idp = start().await;
    let c = TestClient::new();
    let t = tokens_for(&c, &idp, "bob", "openid profile email").await;
    let at = t["access_token"].as_str().unwrap();
    let url = idp.url(Endpoint::Userinfo);
    let r = c
        .get_with(&url, &[("authorization", &format!("Bearer {at}"))])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let u = r.json();
    assert_eq!(u["sub"], "user-bob");
    assert_eq!(u["email"], "bob@example.com");
    assert_eq!(u["name"], "Bob Builder");
    assert_eq!(u["groups"], serde_json::json!(["staff"]));
    // POST with the token in the body (RFC 6750 §2.2).
    let r = c.post_form(&url, &[("access_token", at)], &[]).await;
    assert_eq!(r.status, 200);

    let r = c.get(&url).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portcullis-dev-idp\"")
    );
    let r = c
        .get_with(&url, &[("authorization", "Bearer not-a-token")])
        .await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));
    // An ID token is not an access token (typ is not at+jwt).
    let id = t["id_token"].as_str().unwrap();
    let r = c
        .get_with(&url, &[("authorization", &format!("Bearer {id}"))])
        .await;
    assert_eq!(r.status, 401);
    // A machine token has no user: insufficient_scope.
    let m = machine_token(&c, &idp, None).await.json();
    let r = c
        .get_with(
            &url,
            &[(
                "authorization",
                &format!("Bearer {}", m["access_token"].as_str().unwrap()),
            )],
        )
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn introspection_reports_active_then_inactive_after_revocation() {
    let idp = start().await;
    let c = TestClient::new();
    let t = tokens_for(&c, &idp, "alice", "openid email offline_access").await;
    let at = t["access_token"].as_str().unwrap();
    let rt = t["refresh_token"].as_str().unwrap();

    let i = introspect(&c, &idp, at).await;
    assert_eq!(i["active"], true);
    assert_eq!(i["scope"], "openid email offline_access");
    assert_eq!(i["client_id"], DEMO_CLIENT_ID);
    assert_eq!(i["sub"], "user-alice");
    assert_eq!(i["iss"], idp.issuer());
    assert_eq!(i["aud"], idp.audience());
    assert_eq!(i["token_type"], "Bearer");
    assert_eq!(i["email"], "alice@example.com");
    assert!(i["exp"].as_u64().unwrap() > i["iat"].as_u64().unwrap());
    let i = introspect(&c, &idp, rt).await;
    assert_eq!(i["active"], true);
    assert_eq!(i["token_type"], "refresh_token");
    assert_eq!(
        introspect(&c, &idp, "garbage").await,
        serde_json::json!({"active": false})
    );

    // Introspection needs client authentication.
    let r = c
        .post_form(&idp.url(Endpoint::Introspect), &[("token", at)], &[])
        .await;
    assert_eq!(r.status, 401);

    // Revoking the access token (by jti) leaves the refresh token alone.
    let revoke = |token: String| {
        let c = &c;
        let url = idp.url(Endpoint::Revoke);
        async move {
            c.post_form(
                &url,
                &[("token", &token)],
                &[("authorization", &basic(DEMO_BASIC.0, DEMO_BASIC.1))],
            )
            .await
        }
    };
    let r = revoke(at.to_string()).await;
    assert_eq!(r.status, 200);
    assert_eq!(introspect(&c, &idp, at).await["active"], false);
    assert_eq!(introspect(&c, &idp, rt).await["active"], true);
    // Revoking the refresh token ends its grant.
    let t2 = refresh(&c, &idp, rt).await.json();
    let rt2 = t2["refresh_token"].as_str().unwrap().to_string();
    let at2 = t2["access_token"].as_str().unwrap().to_string();
    assert_eq!(revoke(rt2.clone()).await.status, 200);
    assert_eq!(introspect(&c, &idp, &rt2).await["active"], false);
    assert_eq!(introspect(&c, &idp, &at2).await["active"], false);
    // Unknown tokens: still 200 (RFC 7009 §2.2).
    assert_eq!(revoke("nothing".into()).await.status, 200);
}

#[tokio::test]
async fn revocation_by_another_client_does_nothing() {
    let idp = start().await;
    let c = TestClient::new();
    let m = machine_token(&c, &idp, None).await.json();
    let at = m["access_token"].as_str().unwrap();
    let r = c
        .post_form(
            &idp.url(Endpoint::Revoke),
            &[("token", at)],
            &[("authorization", &basic(DEMO_BASIC.0, DEMO_BASIC.1))],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(introspect(&c, &idp, at).await["active"], true);
    let r = c
        .post_form(
            &idp.url(Endpoint::Revoke),
            &[("token", at)],
            &[("authorization", &basic(MACHINE_CLIENT_ID, "wrong"))],
        )
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn opaque_access_tokens_are_introspectable() {
    let idp = DevIdp::start(DevIdpConfig {
        access_token_format: AccessTokenFormat::Opaque,
        ..DevIdpConfig::default()
    })
    .await
    .unwrap();
    let c = TestClient::new();
    let m = machine_token(&c, &idp, Some("write:items")).await.json();
    let at = m["access_token"].as_str().unwrap();
    assert!(!at.contains('.'), "opaque");
    let i = introspect(&c, &idp, at).await;
    assert_eq!(i["active"], true);
    assert_eq!(i["scope"], "write:items");
    assert_eq!(i["sub"], MACHINE_CLIENT_ID);
    // And userinfo knows opaque user tokens.
    let t = tokens_for(&c, &idp, "alice", "openid profile").await;
    let r = c
        .get_with(
            &idp.url(Endpoint::Userinfo),
            &[(
                "authorization",
                &format!("Bearer {}", t["access_token"].as_str().unwrap()),
            )],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["preferred_username"], "alice");
    // The knob switches back to JWTs.
    idp.set_access_token_format(AccessTokenFormat::Jwt);
    let m = machine_token(&c, &idp, None).await.json();
    assert_eq!(m["access_token"].as_str().unwrap().split('.').count(), 3);
}

// ---- end_session ----

#[tokio::test]
async fn end_session_redirects_only_to_registered_uris() {
    let mut config = DevIdpConfig::default();
    config.clients[0].post_logout_redirect_uris =
        vec![UriRule::Exact("http://127.0.0.1:4180/signed-out".into())];
    let idp = DevIdp::start(config).await.unwrap();
    let c = TestClient::new();
    let t = tokens_for(&c, &idp, "alice", "openid offline_access").await;
    let id = t["id_token"].as_str().unwrap();
    let url = idp.url(Endpoint::EndSession);

    // Not registered: a page, no redirect.
    let r = c
        .get(&format!(
            "{url}?id_token_hint={id}&post_logout_redirect_uri=https%3A%2F%2Fevil.example%2F"
        ))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());
    // No way to know the client: a page.
    let r = c
        .get(&format!(
            "{url}?post_logout_redirect_uri=http%3A%2F%2F127.0.0.1%3A4180%2Fsigned-out"
        ))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());
    // A hint that is not ours: a page.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &serde_json::json!({"iss": idp.issuer(), "aud": DEMO_CLIENT_ID}),
        &jsonwebtoken::EncodingKey::from_secret(b"a-secret-that-is-long-enough-for-hs256").unwrap(),
    )
    .unwrap();
    let r = c.get(&format!("{url}?id_token_hint={forged}")).await;
    assert_eq!(r.status, 400);

    // Registered: redirect with state; the session and its refresh tokens end.
    let r = c
        .get(&format!(
            "{url}?id_token_hint={id}&post_logout_redirect_uri=http%3A%2F%2F127.0.0.1%3A4180%2Fsigned-out&state=bye"
        ))
        .await;
    assert_eq!(r.status, 302, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some("http://127.0.0.1:4180/signed-out?state=bye")
    );
    assert!(c.cookie(authorize::SESSION_COOKIE).is_none());
    let rt = t["refresh_token"].as_str().unwrap();
    assert_eq!(introspect(&c, &idp, rt).await["active"], false);
    // client_id instead of a hint works too.
    let r = c
        .get(&format!(
            "{url}?client_id={DEMO_CLIENT_ID}&post_logout_redirect_uri=http%3A%2F%2F127.0.0.1%3A4180%2Fsigned-out"
        ))
        .await;
    assert_eq!(r.status, 302);
}

// ---- knobs ----

#[tokio::test]
async fn forced_failures_and_counts() {
    let idp = start().await;
    let c = TestClient::new();
    idp.fail(Endpoint::Discovery, Fail::Status(500), Times::Next(2));
    assert_eq!(c.get(&idp.url(Endpoint::Discovery)).await.status, 500);
    assert_eq!(c.get(&idp.url(Endpoint::Discovery)).await.status, 500);
    assert_eq!(c.get(&idp.url(Endpoint::Discovery)).await.status, 200);

    idp.fail(Endpoint::Jwks, Fail::BadJson, Times::Always);
    for _ in 0..2 {
        let r = c.get(&idp.url(Endpoint::Jwks)).await;
        assert_eq!(r.status, 200);
        assert!(serde_json::from_str::<Value>(&r.body).is_err());
    }
    idp.clear_failures();
    assert!(c.get(&idp.url(Endpoint::Jwks)).await.json()["keys"].is_array());

    idp.fail(
        Endpoint::Token,
        Fail::Slow(Duration::from_millis(300)),
        Times::Next(1),
    );
    let t0 = std::time::Instant::now();
    let r = machine_token(&c, &idp, None).await;
    assert_eq!(r.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));

    let counts = idp.counts();
    assert_eq!(counts["discovery"], 3);
    assert_eq!(counts["jwks"], 3);
    assert_eq!(counts["token"], 1);
    assert_eq!(counts["userinfo"], 0);
    assert_eq!(counts.len(), Endpoint::ALL.len());
    idp.reset_counts();
    assert_eq!(idp.counts()["jwks"], 0);
}

#[tokio::test]
async fn forced_disconnect_closes_the_connection() {
    let idp = start().await;
    idp.fail(Endpoint::Userinfo, Fail::Disconnect, Times::Next(1));
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let uri: http::Uri = idp.url(Endpoint::Userinfo).parse().unwrap();
    assert!(client.get(uri.clone()).await.is_err());
    assert_eq!(client.get(uri).await.unwrap().status(), 401);
}

#[tokio::test]
async fn key_rotation_changes_kid_and_keeps_or_drops_old_keys() {
    let idp = start().await;
    let c = TestClient::new();
    let old = machine_token(&c, &idp, None).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let old_kid = idp.signing_kid();
    assert_eq!(
        jsonwebtoken::decode_header(&old).unwrap().kid.as_deref(),
        Some(old_kid.as_str())
    );

    idp.rotate_keys(true).unwrap();
    let new_kid = idp.signing_kid();
    assert_ne!(old_kid, new_kid);
    let kids = |r: TestResponse| -> Vec<String> {
        r.json()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };
    let published = kids(c.get(&idp.url(Endpoint::Jwks)).await);
    assert_eq!(published.len(), 4);
    assert_eq!(published[0], new_kid, "active key first");
    assert!(published.contains(&old_kid));
    assert_eq!(published, idp.jwks_kids());
    let new = machine_token(&c, &idp, None).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        jsonwebtoken::decode_header(&new).unwrap().kid.as_deref(),
        Some(new_kid.as_str())
    );
    assert_eq!(introspect(&c, &idp, &old).await["active"], true);

    // Dropping the old keys: their tokens are no longer ours.
    idp.rotate_keys(false).unwrap();
    let published = kids(c.get(&idp.url(Endpoint::Jwks)).await);
    assert_eq!(published.len(), 2);
    assert!(!published.contains(&old_kid) && !published.contains(&new_kid));
    assert_eq!(introspect(&c, &idp, &old).await["active"], false);
}

#[tokio::test]
async fn es256_signing_knob() {
    let idp = start().await;
    idp.set_signing_alg(SigningAlg::ES256);
    let c = TestClient::new();
    let t = tokens_for(&c, &idp, "alice", "openid").await;
    let id = t["id_token"].as_str().unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(id).unwrap().alg,
        Algorithm::ES256
    );
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&[idp.issuer()]);
    v.set_audience(&[DEMO_CLIENT_ID]);
    verify_with_jwks(&c, &idp, id, &mut v).await;
    let at = t["access_token"].as_str().unwrap();
    assert_eq!(introspect(&c, &idp, at).await["active"], true);
}

#[tokio::test]
async fn access_token_ttl_knob_and_clock() {
    let idp = start().await;
    idp.set_access_token_ttl(Duration::from_secs(5));
    let c = TestClient::new();
    let t = machine_token(&c, &idp, None).await.json();
    assert_eq!(t["expires_in"], 5);
    let at = t["access_token"].as_str().unwrap();
    assert_eq!(introspect(&c, &idp, at).await["active"], true);
    idp.advance_clock(Duration::from_secs(6));
    assert_eq!(introspect(&c, &idp, at).await["active"], false);
}

#[tokio::test]
async fn knob_minted_tokens() {
    let idp = start().await;
    let c = TestClient::new();
    let at = idp
        .issue_user_access_token(DEMO_CLIENT_ID, "bob", "openid profile read:items")
        .unwrap();
    let i = introspect(&c, &idp, &at).await;
    assert_eq!(i["active"], true);
    assert_eq!(i["username"], "bob");
    assert_eq!(i["groups"], serde_json::json!(["staff"]));
    let crafted = idp
        .sign_jwt(
            "at+jwt",
            &serde_json::json!({"iss": idp.issuer(), "sub": "x", "cnf": {"jkt": "abc"}}),
        )
        .unwrap();
    let mut v = Validation::new(Algorithm::RS256);
    v.validate_exp = false;
    v.required_spec_claims.clear();
    v.validate_aud = false;
    let claims = verify_with_jwks(&c, &idp, &crafted, &mut v).await;
    assert_eq!(claims["cnf"]["jkt"], "abc");
    assert!(idp
        .issue_user_access_token(DEMO_CLIENT_ID, "mallory", "openid")
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_a_multi_thread_runtime_and_shuts_down() {
    let idp = start().await;
    let c = TestClient::new();
    let t = tokens_for(&c, &idp, "alice", "openid").await;
    assert!(t["id_token"].is_string());
    let addr = idp.addr();
    idp.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn unknown_path_is_404_and_config_is_validated() {
    let idp = start().await;
    let c = TestClient::new();
    let r = c.get(&format!("{}/nope", idp.issuer())).await;
    assert_eq!(r.status, 404);
    let mut config = DevIdpConfig::default();
    config.users.push(DevUser::alice());
    assert!(matches!(
        DevIdp::start(config).await,
        Err(DevIdpError::Config(_))
    ));
}
