//! Bearer tokens (issue 3) end to end: the real proxy binary in front of the echo upstream,
//! against the real OpenID provider of `tests/idp/` (standard and auth0 profiles), with
//! tokens the provider issues and tokens forged here (own keys, or the provider's private
//! keys for "validly signed but wrong" tokens).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::Request;
use serde_json::{json, Value};

use crate::support::client::{empty, Resp};
use crate::support::idp::forge::{self, Signer};
use crate::support::idp::{Idp, Profile, API};
use crate::support::proxy::wait_ready;
use crate::support::raw;
use crate::support::*;

const REALM_INVALID: &str = "Bearer realm=\"portcullis\", error=\"invalid_token\"";

/// What varies between the proxies of these tests.
#[derive(Default)]
struct Setup {
    cache_ttl: Option<&'static str>,
    pass_authorization: bool,
    /// Extra lines for `[provider]`.
    provider_extra: String,
    /// Extra lines for `[bearer]`.
    bearer_extra: String,
}

/// The proxy config of the brief: the provider's issuer, `[bearer]` for the API audience
/// with opaque tokens introspected (standard) or checked at userinfo (auth0), the
/// `auth-request` header preset, and two bearer routes to the echo upstream:
/// `/api/` (`read:items`, POST also `write:items`) and `/any/` (no scope needed).
fn config(idp: &Idp, echo: &EchoUpstream, s: &Setup) -> String {
    let bearer_mode = match idp.profile {
        Profile::Standard => {
            "introspection = \"opaque\"\n\
             introspection_client_id = \"rs\"\n\
             introspection_client_secret = \"rs-secret\"\n"
        }
        Profile::Auth0 => {
            "introspection = \"userinfo\"\n\
             scopes_claims = [\"scope\", \"permissions\"]\n"
        }
    };
    let groups_claim = match idp.profile {
        Profile::Standard => "",
        Profile::Auth0 => "groups_claim = \"https://example.com/roles\"\n",
    };
    let cache_ttl = s
        .cache_ttl
        .map(|t| format!("cache_ttl = \"{t}\"\n"))
        .unwrap_or_default();
    format!(
        "{server}\
         [server.limits]\nmax_header_bytes = 65536\n\n\
         [provider]\nissuer = \"{issuer}\"\nclient_id = \"portcullis\"\n\
         client_secret = \"portcullis-secret\"\n{groups_claim}{provider_extra}\n\
         [bearer]\naudiences = [\"{API}\"]\n{bearer_mode}{cache_ttl}{bearer_extra}\n\
         [headers]\npreset = \"auth-request\"\npass_authorization = {pass}\n\n\
         [[upstream]]\nname = \"app\"\nurl = \"{upstream}\"\n\n\
         [[route]]\nname = \"api\"\npath = \"/api/\"\nupstream = \"app\"\nauth = \"bearer\"\n\
         scopes = [\"read:items\"]\nmethod_scopes = {{ POST = [\"write:items\"] }}\n\n\
         [[route]]\nname = \"any\"\npath = \"/any/\"\nupstream = \"app\"\nauth = \"bearer\"\n",
        server = server_section(""),
        issuer = idp.issuer,
        provider_extra = s.provider_extra,
        bearer_extra = s.bearer_extra,
        pass = s.pass_authorization,
        upstream = echo.url(""),
    )
}

/// The proxy for `idp`, ready (provider metadata and keys loaded).
async fn proxy_for(idp: &Idp, echo: &EchoUpstream, s: &Setup) -> TestProxy {
    let p = TestProxy::start(&config(idp, echo, s)).await;
    wait_ready(&p).await;
    p
}

struct Fixture {
    idp: Idp,
    echo: EchoUpstream,
    proxy: TestProxy,
    http: Http,
}

async fn fixture(profile: Profile, s: Setup) -> Fixture {
    let idp = Idp::start(profile).await;
    let echo = EchoUpstream::start().await;
    let proxy = proxy_for(&idp, &echo, &s).await;
    Fixture {
        idp,
        echo,
        proxy,
        http: Http::new(),
    }
}

async fn send(
    http: &Http,
    p: &TestProxy,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Resp {
    let mut b = Request::builder().method(method).uri(p.url(path));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    http.send(b.body(empty()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

impl Fixture {
    async fn get(&self, path: &str, token: &str) -> Resp {
        send(&self.http, &self.proxy, "GET", path, Some(token), &[]).await
    }

    async fn post(&self, path: &str, token: &str) -> Resp {
        send(&self.http, &self.proxy, "POST", path, Some(token), &[]).await
    }

    /// Claims of a well-formed access token from this provider for the API.
    fn claims(&self, sub: &str) -> Value {
        let now = forge::now();
        let mut c = json!({
            "iss": self.idp.issuer,
            "sub": sub,
            "aud": API,
            "iat": now,
            "exp": now + 600,
            "scope": "read:items write:items",
            "jti": forge::b64(&forge::random_bytes(12)),
        });
        match self.idp.profile {
            Profile::Standard => c["client_id"] = json!("machine"),
            Profile::Auth0 => c["azp"] = json!("machine"),
        }
        c
    }

    /// The header the provider would write for a key (auth0: `typ: JWT`).
    fn header(&self, s: &Signer) -> Value {
        let typ = match self.idp.profile {
            Profile::Standard => "at+jwt",
            Profile::Auth0 => "JWT",
        };
        json!({"alg": s.alg, "typ": typ, "kid": s.kid})
    }
}

/// 401 with `WWW-Authenticate: Bearer realm="portcullis", error="invalid_token"...` and a
/// JSON body saying `invalid_token`.
fn assert_invalid_token(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(
        www.starts_with(REALM_INVALID),
        "{what}: WWW-Authenticate {www:?}"
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{what}: {:?}",
        r.headers
    );
    assert_eq!(r.json()["error"], "invalid_token", "{what}: {}", r.text());
}

pub(crate) fn assert_unavailable(r: &Resp, what: &str) {
    assert_eq!(r.status, 503, "{what}: {}", r.text());
    let body = r.json();
    assert!(body["error"].is_string(), "{what}: {body}");
    assert!(body["request_id"].is_string(), "{what}: {body}");
}

/// The echo's answer for a request that reached it.
fn echoed(r: &Resp, what: &str) -> Value {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    r.json()
}

// -------------------------------------------------------------------------------------------
// Tokens the provider issues
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_credentials_jwt_reaches_upstream_with_identity_headers_and_no_authorization() {
    let f = fixture(Profile::Standard, Setup::default()).await;
    let token = f.idp.machine_jwt().await;
    assert_eq!(token.split('.').count(), 3, "a JWT for the API resource");

    let before = f.idp.counts().await;
    for (method, path) in [("GET", "/api/items"), ("POST", "/api/items")] {
        let r = send(&f.http, &f.proxy, method, path, Some(&token), &[]).await;
        let e = echoed(&r, &format!("{method} {path}"));
        assert_eq!(e["path"], "/api/items");
        assert_eq!(
            echo_headers(&e, "x-auth-request-user"),
            vec!["machine".to_string()]
        );
        assert_eq!(
            echo_header(&e, "x-auth-request-scopes").as_deref(),
            Some("read:items write:items")
        );
        assert!(
            echo_headers(&e, "authorization").is_empty(),
            "the token must not reach the upstream: {e}"
        );
    }
    // Validated locally against the JWKS, and cached: no introspection for a JWT.
    let after = f.idp.counts().await;
    assert_eq!(after["introspection"], before["introspection"], "{after}");

    // No token / another scheme: a bare challenge, nothing forwarded.
    let n = f.echo.count();
    // A real ES256 token of this provider, but for another API (audience).
    let other = f
        .idp
        .client_credentials(
            "machine",
            "machine-secret",
            Some("read:items"),
            Some("https://es256.api.example.test"),
        )
        .await;
    assert_eq!(jwt_part(&other, 0)["alg"], "ES256");
    assert_invalid_token(&f.get("/api/items", &other).await, "token for another API");
    let r = send(&f.http, &f.proxy, "GET", "/api/items", None, &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portcullis\"")
    );
    let r = send(
        &f.http,
        &f.proxy,
        "GET",
        "/api/items",
        None,
        &[("authorization", "Basic bWFjaGluZTptYWNoaW5lLXNlY3JldA==")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(f.echo.count(), n);

    assert_not_logged(&f.proxy, &[&token, &other]);
    // pass_authorization = true: the same token reaches the upstream.
    let echo2 = EchoUpstream::start().await;
    let p2 = proxy_for(
        &f.idp,
        &echo2,
        &Setup {
            pass_authorization: true,
            ..Setup::default()
        },
    )
    .await;
    let r = send(&f.http, &p2, "GET", "/api/items", Some(&token), &[]).await;
    let e = echoed(&r, "pass_authorization");
    assert_eq!(
        echo_headers(&e, "authorization"),
        vec![format!("Bearer {token}")]
    );
    assert_eq!(
        echo_header(&e, "x-auth-request-user").as_deref(),
        Some("machine")
    );
}

#[tokio::test]
async fn user_jwt_from_login_carries_email_username_and_encoded_groups() {
    let f = fixture(Profile::Standard, Setup::default()).await;
    let t = f
        .idp
        .login("zoe", "openid email profile groups read:items", Some(API))
        .await;
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3, "{t}");
    let e = echoed(&f.get("/api/me", token).await, "zoe");
    assert_eq!(
        echo_header(&e, "x-auth-request-user").as_deref(),
        Some("user-zoe")
    );
    assert_eq!(
        echo_header(&e, "x-auth-request-email").as_deref(),
        Some("zoe@example.com")
    );
    assert_eq!(
        echo_header(&e, "x-auth-request-preferred-username").as_deref(),
        Some("zoe")
    );
    // A `,` inside a group name is percent-encoded (README: identity headers).
    assert_eq!(
        echo_header(&e, "x-auth-request-groups").as_deref(),
        Some("staff,r&d%2C europe")
    );
    assert!(echo_headers(&e, "authorization").is_empty());
    // The ID token (aud = the client) is no access token for the API.
    let n = f.echo.count();
    let t = f
        .idp
        .login("alice", "openid email profile groups read:items", Some(API))
        .await;
    assert_invalid_token(
        &f.get("/api/items", t["id_token"].as_str().unwrap()).await,
        "ID token as a bearer token",
    );
    assert_eq!(f.echo.count(), n);
    // A user's opaque token (no resource): introspected, with the user's claims.
    let t = f
        .idp
        .login("alice", "openid email profile groups read:items", None)
        .await;
    let opaque = t["access_token"].as_str().unwrap();
    assert!(!opaque.contains('.'), "{t}");
    let e = echoed(&f.get("/api/items", opaque).await, "user opaque token");
    assert_eq!(
        echo_header(&e, "x-auth-request-user").as_deref(),
        Some("user-alice")
    );
    assert_eq!(
        echo_header(&e, "x-auth-request-email").as_deref(),
        Some("alice@example.com")
    );
    // bob has no write:items: POST is refused.
    let t = f
        .idp
        .login("bob", "openid profile read:items write:items", Some(API))
        .await;
    let r = f
        .post("/api/items", t["access_token"].as_str().unwrap())
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
}

#[tokio::test]
async fn token_without_write_scope_on_post_is_403_insufficient_scope() {
    let f = fixture(Profile::Standard, Setup::default()).await;
    let ro = f
        .idp
        .client_credentials(
            "machine-ro",
            "machine-ro-secret",
            Some("read:items"),
            Some(API),
        )
        .await;
    // GET needs read:items only.
    let e = echoed(&f.get("/api/items", &ro).await, "machine-ro GET");
    assert_eq!(
        echo_header(&e, "x-auth-request-user").as_deref(),
        Some("machine-ro")
    );
    let n = f.echo.count();
    let r = f.post("/api/items", &ro).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"read:items write:items\""
        )
    );
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    let body = r.json();
    assert_eq!(body["error"], "insufficient_scope", "{body}");
    assert!(body["request_id"].is_string(), "{body}");
    assert_eq!(
        f.echo.count(),
        n,
        "a refused request never reaches the upstream"
    );

    // A token with no scope at all (client credentials without `scope`): 403 on GET too.
    let none = f
        .idp
        .client_credentials("machine", "machine-secret", None, Some(API))
        .await;
    let r = f.get("/api/items", &none).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"read:items\"")
    );
    // The route without scopes takes it.
    echoed(&f.get("/any/x", &none).await, "/any/ without scopes");
    assert_eq!(f.echo.count(), n + 1);
}

#[tokio::test]
async fn opaque_token_is_introspected_then_refused_after_revocation_once_cache_expires() {
    let f = fixture(
        Profile::Standard,
        Setup {
            cache_ttl: Some("2s"),
            ..Setup::default()
        },
    )
    .await;
    let token = f.idp.machine_opaque().await;
    f.idp.reset_counts().await;
    let e = echoed(&f.get("/api/items", &token).await, "opaque token");
    assert_eq!(
        echo_header(&e, "x-auth-request-user").as_deref(),
        Some("machine")
    );
    assert_eq!(
        echo_header(&e, "x-auth-request-scopes").as_deref(),
        Some("read:items write:items")
    );
    assert!(echo_headers(&e, "authorization").is_empty());
    echoed(&f.post("/api/items", &token).await, "opaque token, POST");
    assert_eq!(
        f.idp.count("introspection").await,
        1,
        "the second request is answered from the cache"
    );

    f.idp.revoke(&token).await;
    assert_eq!(f.idp.introspect(&token).await["active"], false);
    // Once the 2 s cache entry has expired, the provider is asked again and says inactive.
    let t0 = Instant::now();
    let r = eventually(
        Duration::from_secs(15),
        "revoked token refused once its cache entry expired",
        || async {
            let r = f.get("/api/items", &token).await;
            assert!(
                r.status == 200 || r.status == 401,
                "unexpected {}: {}",
                r.status,
                r.text()
            );
            (r.status == 401).then_some(r)
        },
    )
    .await;
    assert_invalid_token(&r, "revoked opaque token");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "cache_ttl = 2s was not honoured: {:?}",
        t0.elapsed()
    );
    let n = f.echo.count();
    assert_invalid_token(&f.get("/api/items", &token).await, "revoked, again");
    assert_eq!(f.echo.count(), n);

    // An opaque token the provider never issued: inactive → 401, and the refusal is
    // remembered for a while (one introspection for two requests).
    let fake = forge::b64(&forge::random_bytes(32));
    let before = f.idp.count("introspection").await;
    assert_invalid_token(&f.get("/api/items", &fake).await, "unknown opaque token");
    assert_invalid_token(
        &f.get("/api/items", &fake).await,
        "unknown opaque token, again",
    );
    assert_eq!(f.idp.count("introspection").await, before + 1);
    assert_eq!(f.echo.count(), n);
    assert_not_logged(&f.proxy, &[&token, &fake]);
}

/// Rotation by restarting the provider on the same port with a new `--keys-dir`.
#[tokio::test]
async fn provider_restarted_with_new_keys_new_tokens_validate_without_proxy_restart() {
    let mut f = fixture(Profile::Standard, Setup::default()).await;
    let old = f.idp.machine_jwt().await;
    echoed(&f.get("/api/items", &old).await, "token of the first keys");
    let old_kids: Vec<Value> = f
        .idp
        .jwks()
        .await
        .iter()
        .map(|k| k["kid"].clone())
        .collect();
    let proxy_pid = f.proxy.pid();

    f.idp.restart_with_new_keys().await;
    let new_kids: Vec<Value> = f
        .idp
        .jwks()
        .await
        .iter()
        .map(|k| k["kid"].clone())
        .collect();
    assert!(
        new_kids.iter().all(|k| !old_kids.contains(k)),
        "{old_kids:?} {new_kids:?}"
    );
    f.idp.reset_counts().await;
    assert_rotation_is_picked_up(&f).await;
    assert!(f.idp.count("jwks").await >= 1, "the JWKS was fetched again");
    assert_eq!(f.proxy.pid(), proxy_pid);
    assert!(
        f.proxy.exit_status().is_none(),
        "the proxy was not restarted"
    );
}

/// New tokens (fresh ones each try: a refused token may be remembered for a while) validate
/// once the proxy has refetched the JWKS for the unknown `kid`; the refetch is rate limited
/// (10 s by default), so this can take that long.
async fn assert_rotation_is_picked_up(f: &Fixture) {
    let t0 = Instant::now();
    let e = eventually(
        Duration::from_secs(25),
        "a token signed by the new key is accepted",
        || async {
            let token = f.idp.machine_jwt().await;
            let r = f.get("/api/items", &token).await;
            assert!(
                r.status == 200 || r.status == 401,
                "unexpected {}: {}",
                r.status,
                r.text()
            );
            if r.status == 200 {
                return Some(r.json());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
            None
        },
    )
    .await;
    let user = match f.idp.profile {
        Profile::Standard => "machine",
        Profile::Auth0 => "machine@clients",
    };
    assert_eq!(
        echo_header(&e, "x-auth-request-user").as_deref(),
        Some(user)
    );
    eprintln!("rotation picked up after {:?}", t0.elapsed());
}

#[tokio::test]
async fn auth0_keys_rotated_in_place_new_tokens_validate_without_proxy_restart() {
    let f = fixture(Profile::Auth0, auth0_setup()).await;
    let old = f.idp.machine_jwt().await;
    echoed(&f.get("/api/items", &old).await, "token of the first keys");
    let old_kids: Vec<Value> = f
        .idp
        .jwks()
        .await
        .iter()
        .map(|k| k["kid"].clone())
        .collect();
    f.idp.rotate_keys().await;
    let new_kids: Vec<Value> = f
        .idp
        .jwks()
        .await
        .iter()
        .map(|k| k["kid"].clone())
        .collect();
    assert!(new_kids.iter().all(|k| !old_kids.contains(k)));
    f.idp.reset_counts().await;
    assert_rotation_is_picked_up(&f).await;
    assert!(f.idp.count("jwks").await >= 1, "the JWKS was fetched again");
}

// -------------------------------------------------------------------------------------------
// Forged tokens
// -------------------------------------------------------------------------------------------

/// DESIGN §2: logs never contain tokens.
fn assert_not_logged(p: &TestProxy, tokens: &[&str]) {
    let logs = p.logs();
    assert!(!logs.is_empty());
    for t in tokens {
        // (Short garbage like ".." is no secret and may appear anywhere.)
        if t.len() >= 16 {
            assert!(!logs.contains(t), "a token is in the proxy's logs");
        }
    }
}

/// Sends each `(label, token)` and asserts 401 invalid_token with nothing forwarded.
async fn assert_all_refused(f: &Fixture, cases: &[(String, String)]) {
    let n = f.echo.count();
    for (label, token) in cases {
        let r = f.get("/api/items", token).await;
        assert_invalid_token(&r, label);
        assert!(
            !r.text().contains(token.as_str()),
            "{label}: the body echoes the token"
        );
        assert_eq!(f.echo.count(), n, "{label}: reached the upstream");
    }
    let tokens: Vec<&str> = cases.iter().map(|(_, t)| t.as_str()).collect();
    assert_not_logged(&f.proxy, &tokens);
}

#[tokio::test]
async fn unsigned_and_key_confused_tokens_are_401_invalid_token() {
    let f = fixture(Profile::Standard, Setup::default()).await;
    let rsa = f.idp.signer("RS256").await;
    let ec = f.idp.signer("ES256").await;
    let claims = f.claims("forged-user");

    // Control: a token signed with the provider's own key and proper claims passes, so each
    // refusal below is about the one thing that differs.
    let e = echoed(
        &f.get("/api/items", &rsa.token(&claims)).await,
        "control RS256",
    );
    assert_eq!(
        echo_header(&e, "x-auth-request-user").as_deref(),
        Some("forged-user")
    );
    echoed(
        &f.get("/api/items", &ec.token(&f.claims("forged-ec"))).await,
        "control ES256",
    );

    let jwk = f
        .idp
        .jwks()
        .await
        .into_iter()
        .find(|k| k["kid"] == rsa.kid.as_str())
        .unwrap();
    let spki = forge::rsa_public_spki_der(&jwk);
    let pkcs1 = forge::rsa_public_pkcs1_der(&jwk);
    let spki_pem = forge::pem("PUBLIC KEY", &spki);
    let pkcs1_pem = forge::pem("RSA PUBLIC KEY", &pkcs1);

    let mut cases: Vec<(String, String)> = Vec::new();
    for spelling in ["none", "None", "NONE", "nOnE", "none "] {
        let h = json!({"alg": spelling, "typ": "at+jwt", "kid": rsa.kid});
        cases.push((
            format!("alg {spelling:?}, empty signature"),
            forge::unsigned(&h, &claims, ""),
        ));
        // The signature of a real token pasted on.
        let real_sig = rsa.token(&claims).rsplit('.').next().unwrap().to_string();
        cases.push((
            format!("alg {spelling:?}, a real signature"),
            forge::unsigned(&h, &claims, &real_sig),
        ));
    }
    cases.push((
        "alg none without kid or typ".into(),
        forge::unsigned(&json!({"alg": "none"}), &claims, ""),
    ));
    // HS256 keyed with the provider's RSA public key, in every encoding a confused verifier
    // might use as the HMAC secret.
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("SPKI PEM", spki_pem.clone().into_bytes()),
        (
            "SPKI PEM without final newline",
            spki_pem.trim_end().as_bytes().to_vec(),
        ),
        ("PKCS#1 PEM", pkcs1_pem.into_bytes()),
        ("SPKI DER", spki.clone()),
        ("PKCS#1 DER", pkcs1),
        ("JWK JSON", jwk.to_string().into_bytes()),
        ("modulus bytes", forge::unb64(jwk["n"].as_str().unwrap())),
    ];
    for (name, secret) in &secrets {
        for alg in ["HS256", "HS384", "HS512"] {
            if alg != "HS256" && *name != "SPKI PEM" {
                continue;
            }
            // (HS384/512 are signed with HS256 here: refused before any MAC is checked.)
            let h = json!({"alg": alg, "typ": "at+jwt", "kid": rsa.kid});
            cases.push((
                format!("{alg} keyed with the RSA public key ({name})"),
                forge::hs256(&h, &claims, secret),
            ));
        }
    }
    cases.push((
        "HS256 without kid, keyed with the SPKI PEM".into(),
        forge::hs256(
            &json!({"alg": "HS256", "typ": "JWT"}),
            &claims,
            spki_pem.as_bytes(),
        ),
    ));
    // Our own keys under the provider's kids, and key/alg mismatches.
    let own_rsa = Signer::own_rs256(&rsa.kid);
    cases.push((
        "own RSA key under the provider's RSA kid".into(),
        own_rsa.token(&claims),
    ));
    let own_ec = Signer::own_es256(&ec.kid);
    cases.push((
        "own EC key under the provider's EC kid".into(),
        own_ec.token(&claims),
    ));
    cases.push((
        "ES256 signature with alg RS256 and the EC kid".into(),
        ec.sign(
            &json!({"alg": "RS256", "typ": "at+jwt", "kid": ec.kid}),
            &claims,
        ),
    ));
    cases.push((
        "RS256 signature with alg ES256 and the RSA kid".into(),
        rsa.sign(
            &json!({"alg": "ES256", "typ": "at+jwt", "kid": rsa.kid}),
            &claims,
        ),
    ));
    cases.push((
        "PS256 header on an RS256 (PKCS#1 v1.5) signature".into(),
        rsa.sign(
            &json!({"alg": "PS256", "typ": "at+jwt", "kid": rsa.kid}),
            &claims,
        ),
    ));
    // Explicit typing and critical headers (RFC 8725 §3.11, RFC 7515 §4.1.11), signed by
    // the provider's own key.
    for typ in ["dpop+jwt", "logout+jwt", "secevent+jwt"] {
        let h = json!({"alg": "RS256", "typ": typ, "kid": rsa.kid});
        cases.push((format!("typ {typ}"), rsa.sign(&h, &claims)));
    }
    let h = json!({"alg": "RS256", "typ": "at+jwt", "kid": rsa.kid, "crit": ["exp"], "exp": 1});
    cases.push(("crit header".into(), rsa.sign(&h, &claims)));
    // Keys offered by the token itself are never used.
    let attacker = Signer::own_es256("attacker-key");
    let mut h = attacker.header();
    h["jwk"] = attacker.public_jwk();
    cases.push((
        "embedded jwk header (own kid)".into(),
        attacker.sign(&h, &claims),
    ));
    let mut h = json!({"alg": "ES256", "typ": "at+jwt", "kid": ec.kid});
    h["jwk"] = attacker.public_jwk();
    cases.push((
        "embedded jwk header (provider's kid)".into(),
        attacker.sign(&h, &claims),
    ));
    let jku_hits = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jku = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let hits = jku_hits.clone();
    let jku_task = tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            hits.fetch_add(1, Ordering::SeqCst);
        }
    });
    let mut h = attacker.header();
    h["jku"] = json!(jku);
    cases.push((
        "jku header to our own JWKS".into(),
        attacker.sign(&h, &claims),
    ));
    let mut h = attacker.header();
    h["x5u"] = json!(jku);
    cases.push((
        "x5u header to our own server".into(),
        attacker.sign(&h, &claims),
    ));
    let mut h = attacker.header();
    h["x5c"] = json!([forge::b64(&spki)]);
    cases.push(("x5c header".into(), attacker.sign(&h, &claims)));
    // A real signature, tampered payload.
    let good = rsa.token(&claims);
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    let mut tampered = claims.clone();
    tampered["sub"] = json!("admin");
    parts[1] = forge::b64(tampered.to_string().as_bytes());
    cases.push(("payload changed after signing".into(), parts.join(".")));
    let mut sig = forge::unb64(good.rsplit('.').next().unwrap());
    sig[10] ^= 1;
    let (input, _) = good.rsplit_once('.').unwrap();
    cases.push((
        "one signature bit flipped".into(),
        format!("{input}.{}", forge::b64(&sig)),
    ));

    assert_all_refused(&f, &cases).await;
    assert_eq!(
        jku_hits.load(Ordering::SeqCst),
        0,
        "the proxy followed jku/x5u"
    );
    jku_task.abort();
}

async fn forged_claims_are_refused(profile: Profile) {
    let s = if profile == Profile::Auth0 {
        auth0_setup()
    } else {
        Setup::default()
    };
    let f = fixture(profile, s).await;
    let signer = f.idp.signer("RS256").await;
    let h = f.header(&signer);
    let sign = |c: &Value| signer.sign(&h, c);
    let now = forge::now();
    let base = f.claims("forged-user");
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    // Control: the same signer, proper claims.
    let e = echoed(&f.get("/api/items", &sign(&base)).await, "control");
    assert_eq!(
        echo_header(&e, "x-auth-request-user").as_deref(),
        Some("forged-user")
    );
    // Within the leeway (30 s) an expiry just past is still fine; nbf just ahead too.
    echoed(
        &f.get("/api/items", &sign(&with("exp", json!(now - 5))))
            .await,
        "exp 5 s ago, within leeway",
    );

    let other_slash = match profile {
        Profile::Standard => format!("{}/", f.idp.issuer),
        Profile::Auth0 => f.idp.issuer.trim_end_matches('/').to_string(),
    };
    let cases: Vec<(String, String)> = vec![
        (
            "wrong iss".into(),
            sign(&with("iss", json!("https://evil.example.test"))),
        ),
        (
            format!("iss {other_slash:?} (trailing slash differs)"),
            sign(&with("iss", json!(other_slash))),
        ),
        (
            "iss in upper case".into(),
            sign(&with("iss", json!(f.idp.issuer.to_uppercase()))),
        ),
        ("no iss".into(), sign(&without("iss"))),
        (
            "wrong aud".into(),
            sign(&with("aud", json!("https://other.example.test"))),
        ),
        (
            "aud array without ours".into(),
            sign(&with(
                "aud",
                json!(["https://other.example.test", "portcullis"]),
            )),
        ),
        (
            "aud with a trailing slash".into(),
            sign(&with("aud", json!(format!("{API}/")))),
        ),
        ("no aud".into(), sign(&without("aud"))),
        (
            "expired an hour ago".into(),
            sign(&with("exp", json!(now - 3600))),
        ),
        (
            "expired, exp as a string".into(),
            sign(&with("exp", json!((now - 3600).to_string()))),
        ),
        (
            "nbf an hour ahead".into(),
            sign(&with("nbf", json!(now + 3600))),
        ),
        (
            "nbf as a string, ahead".into(),
            sign(&with("nbf", json!((now + 3600).to_string()))),
        ),
        ("no exp".into(), sign(&without("exp"))),
        ("exp null".into(), sign(&with("exp", Value::Null))),
        (
            "cnf jkt (DPoP-bound)".into(),
            sign(&with("cnf", json!({"jkt": forge::b64(&[7u8; 32])}))),
        ),
        (
            "cnf x5t#S256 (mTLS-bound)".into(),
            sign(&with("cnf", json!({"x5t#S256": forge::b64(&[7u8; 32])}))),
        ),
    ];
    assert_all_refused(&f, &cases).await;
}

#[tokio::test]
async fn forged_tokens_with_bad_claims_are_401_invalid_token() {
    forged_claims_are_refused(Profile::Standard).await;
}

#[tokio::test]
async fn auth0_forged_tokens_with_bad_claims_are_401_invalid_token() {
    forged_claims_are_refused(Profile::Auth0).await;
}

#[tokio::test]
async fn oversized_and_garbage_tokens_are_401_invalid_token() {
    let f = fixture(Profile::Standard, Setup::default()).await;
    let rsa = f.idp.signer("RS256").await;
    // Control: a validly signed 8 KiB token passes (big, but under the 16 KiB limit).
    let mut c = f.claims("big-user");
    c["pad"] = json!("x".repeat(6 * 1024));
    let big = rsa.token(&c);
    assert!(
        big.len() > 8 * 1024 && big.len() < 16 * 1024,
        "{}",
        big.len()
    );
    echoed(&f.get("/api/items", &big).await, "8 KiB token");
    // A validly signed 20 KiB token is refused for its size alone.
    c["pad"] = json!("x".repeat(15 * 1024));
    let huge = rsa.token(&c);
    assert!(huge.len() > 20 * 1024, "{}", huge.len());

    let header = forge::b64(rsa.header().to_string().as_bytes());
    let payload = forge::b64(f.claims("x").to_string().as_bytes());
    let sig = rsa
        .token(&f.claims("x"))
        .rsplit('.')
        .next()
        .unwrap()
        .to_string();
    let cases: Vec<(String, String)> = vec![
        ("20 KiB validly signed token".into(), huge),
        ("20 KiB of letters".into(), "a".repeat(20 * 1024)),
        ("base64 of non-JSON parts".into(), "Zm9v.YmFy.YmF6".into()),
        (
            "standard (not URL-safe) base64 alphabet".into(),
            format!("{}+/.{payload}.{sig}", &header[..header.len() - 2]),
        ),
        (
            "padded base64url signature".into(),
            format!("{header}.{payload}.{sig}=="),
        ),
        (
            "payload of base64 garbage".into(),
            format!("{header}.____.{sig}"),
        ),
        (
            "header not JSON".into(),
            format!("{}.{payload}.{sig}", forge::b64(b"{\"alg\":\"RS256\",")),
        ),
        (
            "header a JSON array".into(),
            format!("{}.{payload}.{sig}", forge::b64(b"[1,2]")),
        ),
        ("empty header".into(), format!(".{payload}.{sig}")),
        ("empty payload".into(), format!("{header}..{sig}")),
        ("empty signature".into(), format!("{header}.{payload}.")),
        ("only dots".into(), "..".into()),
        ("two parts".into(), format!("{header}.{payload}")),
        (
            "four parts".into(),
            format!("{header}.{payload}.{sig}.{sig}"),
        ),
        (
            "five parts, JWE-shaped but not JSON".into(),
            "a.b.c.d.e".into(),
        ),
        (
            "random opaque-looking token".into(),
            forge::b64(&forge::random_bytes(32)),
        ),
    ];
    assert_all_refused(&f, &cases).await;

    // Characters outside RFC 6750's b64token are a malformed request: 400 invalid_request,
    // also when the token without them is valid and cached (`big` passed above), and
    // whatever the length.
    let n = f.echo.count();
    let bad_tokens = [
        "ey@J.x.y".to_string(),
        "a\"b".to_string(),
        "tok en".to_string(),
        format!("{big}!"),
        format!("{big} x"),
        format!("{}%{}", &big[..100], &big[100..]),
        format!("{}!", "a".repeat(20 * 1024)),
    ];
    for bad in &bad_tokens {
        for _ in 0..2 {
            let r = send(
                &f.http,
                &f.proxy,
                "GET",
                "/api/items",
                None,
                &[("authorization", &format!("Bearer {bad}"))],
            )
            .await;
            let what = &bad[..bad.len().min(40)];
            assert_eq!(r.status, 400, "{what:?}: {}", r.text());
            assert_eq!(r.json()["error"], "invalid_request", "{what:?}");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"portcullis\", error=\"invalid_request\""),
                "{what:?}"
            );
        }
    }
    assert_eq!(f.echo.count(), n);
    echoed(
        &f.get("/api/items", &big).await,
        "the cached 8 KiB token, still",
    );
}

/// Sends one token per distinct random `kid` (our own key), `concurrency` at a time;
/// asserts each is 401 invalid_token.
async fn flood_unknown_kids(f: &Fixture, signer: &Signer, n: usize, concurrency: usize) {
    let claims = f.claims("flood");
    let tokens: Vec<String> = (0..n)
        .map(|_| {
            let kid = format!("kid-{}", forge::b64(&forge::random_bytes(9)));
            signer.sign(
                &json!({"alg": "ES256", "typ": "at+jwt", "kid": kid}),
                &claims,
            )
        })
        .collect();
    let answers: Vec<(u16, String)> = futures_util::stream::iter(tokens.iter())
        .map(|t| async {
            let r = f.get("/api/items", t).await;
            (
                r.status.as_u16(),
                r.header("www-authenticate").unwrap_or("").to_string(),
            )
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for (status, www) in &answers {
        assert_eq!(*status, 401, "{www}");
        assert!(www.starts_with(REALM_INVALID), "{www}");
    }
}

/// Unknown `kid`s cause at most one JWKS refetch per window (10 s by default), shared by
/// all concurrent callers: 1,000 distinct kids at once, then a steady flood until the
/// window has passed and the one refetch it allows has happened.
#[tokio::test]
async fn flood_of_unknown_kids_causes_at_most_two_jwks_fetches() {
    let f = fixture(Profile::Standard, Setup::default()).await;
    let attacker = Signer::own_es256("unused");
    f.idp.reset_counts().await;
    let t0 = Instant::now();
    flood_unknown_kids(&f, &attacker, 1000, 32).await;
    let first = f.idp.count("jwks").await;
    eprintln!(
        "1,000 unknown kids: {first} JWKS fetches in {:?}",
        t0.elapsed()
    );
    assert!(first <= 2, "1,000 unknown kids caused {first} JWKS fetches");
    // Keep flooding (another ~2,000 kids) until the window reopens and a refetch is made.
    let mut sent = 1000;
    let fetched = eventually(
        Duration::from_secs(25),
        "an unknown kid causes a JWKS refetch once the window has passed",
        || {
            let (f, attacker) = (&f, &attacker);
            sent += 100;
            async move {
                flood_unknown_kids(f, attacker, 100, 32).await;
                let n = f.idp.count("jwks").await;
                if n > first {
                    return Some(n);
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
                None
            }
        },
    )
    .await;
    flood_unknown_kids(&f, &attacker, 200, 32).await;
    let total = f.idp.count("jwks").await;
    eprintln!(
        "{} unknown kids over {:?}: {total} JWKS fetches",
        sent + 200,
        t0.elapsed()
    );
    assert!(
        total <= 2 && total == fetched,
        "{} unknown kids over {:?} caused {total} JWKS fetches",
        sent + 200,
        t0.elapsed()
    );
    assert_eq!(f.echo.count(), 0);
    // The proxy still serves real tokens.
    echoed(
        &f.get("/api/items", &f.idp.machine_jwt().await).await,
        "after the flood",
    );
}

#[tokio::test]
async fn claims_with_control_characters_are_403_never_split_into_headers() {
    let f = fixture(Profile::Standard, Setup::default()).await;
    let rsa = f.idp.signer("RS256").await;
    let base = f.claims("ctl-user");
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    // Controls: a plain username, and a non-ASCII one (percent-encoded, as documented).
    let e = echoed(
        &f.get(
            "/api/items",
            &rsa.token(&with("preferred_username", json!("plain"))),
        )
        .await,
        "plain username",
    );
    assert_eq!(
        echo_header(&e, "x-auth-request-preferred-username").as_deref(),
        Some("plain")
    );
    let e = echoed(
        &f.get(
            "/api/items",
            &rsa.token(&with("preferred_username", json!("José"))),
        )
        .await,
        "non-ASCII username",
    );
    assert_eq!(
        echo_header(&e, "x-auth-request-preferred-username").as_deref(),
        Some("Jos%C3%A9")
    );

    let n = f.echo.count();
    let cases = [
        (
            "preferred_username with CRLF",
            with("preferred_username", json!("evil\r\nX-Injected: 1")),
        ),
        (
            "preferred_username with LF",
            with("preferred_username", json!("evil\nX-Injected: 1")),
        ),
        ("sub with CRLF", with("sub", json!("evil\r\nX-Injected: 1"))),
        (
            "group with CRLF",
            with("groups", json!(["staff", "evil\r\nX-Injected: 1"])),
        ),
    ];
    for (label, claims) in cases {
        // Raw socket: any split header would show in the bytes of the response.
        let token = rsa.token(&claims);
        let r = raw::get_with(
            f.proxy.addr,
            "/api/items",
            &[&format!("Authorization: Bearer {token}")],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 403, "{label}: {}", r.text());
        assert!(r.header("x-injected").is_none(), "{label}");
        assert!(!r.text().contains("X-Injected"), "{label}: {}", r.text());
        assert_eq!(
            r.json()["error"].as_str().map(|s| !s.is_empty()),
            Some(true)
        );
        assert_eq!(f.echo.count(), n, "{label}: reached the upstream");
    }
    assert!(f
        .echo
        .recorded()
        .iter()
        .all(|rec| rec.header("x-injected").is_none()));

    // A malformed email (here with a NUL) is either refused (403) or dropped from the
    // identity (the email rules only count well-formed addresses); it is never forwarded.
    let token = rsa.token(&with("email", json!("a@example.com\u{0}x")));
    let r = f.get("/api/items", &token).await;
    assert!(r.status == 403 || r.status == 200, "{}", r.text());
    if r.status == 200 {
        let e = r.json();
        assert!(echo_headers(&e, "x-auth-request-email").is_empty(), "{e}");
        assert_eq!(
            echo_header(&e, "x-auth-request-user").as_deref(),
            Some("ctl-user")
        );
    }
}

/// A refresh token is no access token. oidc-provider's introspection answers for it
/// `{"active": true, "client_id", "scope", "sub", "iss", "exp", "iat"}`: no `token_type`,
/// no `aud` (README: "introspection ... as oidc-provider answers"). Accepting it would let
/// a 14-day refresh token (scope `read:items`) act as an access token.
#[tokio::test]
async fn refresh_token_is_not_accepted_as_a_bearer_access_token() {
    let f = fixture(Profile::Standard, Setup::default()).await;
    let t = f
        .idp
        .login(
            "alice",
            "openid profile offline_access read:items",
            Some(API),
        )
        .await;
    let refresh = t["refresh_token"]
        .as_str()
        .expect("a refresh token")
        .to_string();
    let answer = f.idp.introspect(&refresh).await;
    assert_eq!(answer["active"], true, "{answer}");
    assert!(answer.get("token_type").is_none(), "{answer}");
    // The access token of the same grant passes.
    echoed(
        &f.get("/api/items", t["access_token"].as_str().unwrap())
            .await,
        "access token",
    );
    let n = f.echo.count();
    assert_all_refused(&f, &[("refresh token as a bearer token".into(), refresh)]).await;
    let r = f
        .get("/any/items", t["refresh_token"].as_str().unwrap())
        .await;
    assert_invalid_token(&r, "refresh token on a route without scopes");
    assert_eq!(f.echo.count(), n);
}

/// oidc-provider answers 400 `unsupported_token_type` when asked to introspect a token that
/// looks like a JWE (five parts, a JSON header). That is an answer about the token, not an
/// outage: the token is refused (401), not "try again later" (503).
#[tokio::test]
async fn jwe_shaped_token_refused_by_introspection_is_401_not_503() {
    let f = fixture(Profile::Standard, Setup::default()).await;
    let header = forge::b64(br#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#);
    let token = format!("{header}.a.b.c.d");
    // What the provider says about it.
    let r = f
        .idp
        .post_form(
            &f.idp.endpoint("introspection_endpoint"),
            Some(&crate::support::idp::basic("rs", "rs-secret")),
            &crate::support::idp::form(&[("token", &token)]),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "unsupported_token_type");
    assert_all_refused(&f, &[("JWE-shaped token".into(), token)]).await;
}

#[tokio::test]
async fn dpop_bound_tokens_from_the_provider_are_refused_as_bearer() {
    let f = fixture(Profile::Standard, Setup::default()).await;
    let token_endpoint = f.idp.endpoint("token_endpoint");
    let dpop_key = Signer::own_es256("dpop");
    for resource in [Some(API), None] {
        let mut h = json!({"typ": "dpop+jwt", "alg": "ES256"});
        h["jwk"] = dpop_key.public_jwk();
        h["jwk"].as_object_mut().unwrap().remove("kid");
        let proof = dpop_key.sign(
            &h,
            &json!({"jti": forge::b64(&forge::random_bytes(12)), "htm": "POST",
                "htu": token_endpoint, "iat": forge::now()}),
        );
        let token = f.idp.machine_dpop(&proof, resource).await;
        let label = format!("DPoP-bound token, resource {resource:?}");
        assert_all_refused(&f, &[(label, token)]).await;
    }
}

/// An entry never outlives the token's `exp` (PROVIDERS.md: lifetimes), however long
/// `cache_ttl` is: tokens of 4 s, leeway 0, cache_ttl 5 min.
#[tokio::test]
async fn cached_tokens_never_outlive_their_exp() {
    let idp = Idp::start_with(Profile::Standard, &["--access-token-ttl", "4"]).await;
    let echo = EchoUpstream::start().await;
    let s = Setup {
        cache_ttl: Some("5m"),
        bearer_extra: "leeway = \"0s\"\n".into(),
        ..Setup::default()
    };
    let proxy = proxy_for(&idp, &echo, &s).await;
    let f = Fixture {
        idp,
        echo,
        proxy,
        http: Http::new(),
    };
    let jwt = f.idp.machine_jwt().await;
    let opaque = f.idp.machine_opaque().await;
    let t0 = Instant::now();
    for t in [&jwt, &opaque] {
        echoed(&f.get("/api/items", t).await, "fresh 4 s token");
    }
    for (label, t) in [("JWT", &jwt), ("opaque", &opaque)] {
        let r = eventually(
            Duration::from_secs(15),
            &format!("{label} token refused after its exp"),
            || async {
                let r = f.get("/api/items", t).await;
                assert!(
                    r.status == 200 || r.status == 401,
                    "{} {}",
                    r.status,
                    r.text()
                );
                if r.status == 401 {
                    return Some(r);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            },
        )
        .await;
        assert_invalid_token(&r, label);
    }
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

/// Discovery and the first JWKS load are retried until the provider answers; until then
/// `/readyz` is 503 and bearer requests are 503 (fail closed), never 200 or 401.
#[tokio::test]
async fn readyz_waits_for_the_provider_and_requests_before_it_are_503() {
    let port = crate::support::proxy::free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let echo = EchoUpstream::start().await;
    // The config names a provider that is not running yet.
    let placeholder = Idp::start(Profile::Standard).await;
    let text = config(&placeholder, &echo, &Setup::default()).replace(
        &format!("issuer = \"{}\"", placeholder.issuer),
        &format!("issuer = \"{issuer}\""),
    );
    drop(placeholder);
    assert!(text.contains(&issuer), "{text}");
    let proxy = TestProxy::start(&text).await;
    let http = Http::new();
    let r = raw::get(proxy.admin, "/readyz").await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let forged = Signer::own_es256("k").token(&json!({
        "iss": issuer, "sub": "x", "aud": API,
        "exp": forge::now() + 600, "scope": "read:items"}));
    for token in [forged.as_str(), "an-opaque-token"] {
        let r = send(&http, &proxy, "GET", "/api/items", Some(token), &[]).await;
        assert_unavailable(&r, "provider not loaded yet");
    }
    assert_eq!(echo.count(), 0);

    let idp = Idp::start_on(Profile::Standard, port, &[]).await;
    let t0 = Instant::now();
    wait_ready(&proxy).await;
    eprintln!("ready {:?} after the provider came up", t0.elapsed());
    let token = idp.machine_jwt().await;
    let r = send(&http, &proxy, "GET", "/api/items", Some(&token), &[]).await;
    echoed(&r, "provider up");
    let token = idp.machine_opaque().await;
    let r = send(&http, &proxy, "GET", "/api/items", Some(&token), &[]).await;
    echoed(&r, "provider up, opaque");
}

// -------------------------------------------------------------------------------------------
// Header spoofing
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let f = fixture(Profile::Standard, Setup::default()).await;
    let token = f.idp.machine_jwt().await;
    let spoofs = [
        "X-Auth-Request-User: admin",
        "x_auth_request_user: root",
        "X_AUTH_REQUEST_USER: root2",
        "x-auth-request_user: root3",
        "X-Auth-Request-Email: admin@example.com",
        "X-Auth-Request-Groups: admins",
        "x_auth_request_groups: admins",
        "X-Auth-Request-Preferred-Username: admin",
        "X-Auth-Request-Scopes: admin",
    ];
    let mut headers = vec![format!("Authorization: Bearer {token}")];
    headers.extend(spoofs.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let r = raw::get_with(f.proxy.addr, "/api/items", &refs)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    let values = |name: &str| -> Vec<String> {
        e["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p[0].as_str()
                    .unwrap()
                    .replace('_', "-")
                    .eq_ignore_ascii_case(name)
            })
            .map(|p| p[1].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        values("x-auth-request-user"),
        vec!["machine".to_string()],
        "{e}"
    );
    assert_eq!(
        values("x-auth-request-scopes"),
        vec!["read:items write:items".to_string()],
        "{e}"
    );
    // The machine token has no email, groups or username: none may appear.
    for h in [
        "x-auth-request-email",
        "x-auth-request-groups",
        "x-auth-request-preferred-username",
    ] {
        assert!(values(h).is_empty(), "{h} spoofed through: {e}");
    }

    // With a bad token the spoofed request goes nowhere.
    let mut headers = vec!["Authorization: Bearer not-a-token".to_string()];
    headers.extend(spoofs.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let r = raw::get_with(f.proxy.addr, "/api/items", &refs)
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(f.echo.count(), 1);
}

// -------------------------------------------------------------------------------------------
// Provider failures
// -------------------------------------------------------------------------------------------

#[tokio::test]
async fn provider_down_cached_token_works_until_ttl_and_uncached_gets_503() {
    let mut f = fixture(
        Profile::Standard,
        Setup {
            cache_ttl: Some("3s"),
            ..Setup::default()
        },
    )
    .await;
    let cached = f.idp.machine_opaque().await;
    let uncached = f.idp.machine_opaque().await;
    let jwt = f.idp.machine_jwt().await;
    let t0 = Instant::now();
    echoed(&f.get("/api/items", &cached).await, "opaque, provider up");
    echoed(&f.get("/api/items", &jwt).await, "JWT, provider up");

    f.idp.kill();

    let r = f.get("/api/items", &cached).await;
    if t0.elapsed() < Duration::from_millis(2500) {
        echoed(&r, "cached opaque token, provider down, within cache_ttl");
    }
    let n = f.echo.count();
    for _ in 0..3 {
        assert_unavailable(
            &f.get("/api/items", &uncached).await,
            "uncached opaque, provider down",
        );
    }
    assert_eq!(f.echo.count(), n);
    // Once its entry expires, the cached token cannot be checked either: 503, never 401/200.
    let r = eventually(
        Duration::from_secs(15),
        "cached opaque token refused once its entry expired",
        || async {
            let r = f.get("/api/items", &cached).await;
            assert!(
                r.status == 200 || r.status == 503,
                "{} {}",
                r.status,
                r.text()
            );
            (r.status == 503).then_some(r)
        },
    )
    .await;
    assert_unavailable(&r, "expired cache entry, provider down");
    assert!(t0.elapsed() < Duration::from_secs(12), "{:?}", t0.elapsed());
    // A JWT needs no provider call: its keys are kept, so it still validates offline.
    echoed(&f.get("/api/items", &jwt).await, "JWT, provider down");
    let n = f.echo.count();
    assert_unavailable(&f.get("/api/items", &uncached).await, "still down");
    assert_eq!(f.echo.count(), n);
}

#[tokio::test]
async fn introspection_errors_are_503_and_never_let_a_token_through() {
    let f = fixture(
        Profile::Standard,
        Setup {
            provider_extra: "timeout = \"1s\"\n".into(),
            ..Setup::default()
        },
    )
    .await;
    for (mode, ms) in [
        ("500", None),
        ("503", None),
        ("badjson", None),
        ("close", None),
        ("slow", Some(2500)),
    ] {
        let token = f.idp.machine_opaque().await;
        f.idp.fail("introspection", mode, 0, ms).await;
        let n = f.echo.count();
        let t0 = Instant::now();
        let r = f.get("/api/items", &token).await;
        assert_unavailable(&r, &format!("introspection {mode}"));
        assert_eq!(f.echo.count(), n, "{mode}: reached the upstream");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{mode}: {:?}",
            t0.elapsed()
        );
        f.idp.clear_fail().await;
        // A 503 is not remembered: the same token passes once the provider answers.
        echoed(
            &f.get("/api/items", &token).await,
            &format!("after {mode} cleared"),
        );
        assert_not_logged(&f.proxy, &[&token]);
    }
}

#[tokio::test]
async fn parallel_requests_with_one_uncached_opaque_token_cause_one_introspection() {
    let f = fixture(Profile::Standard, Setup::default()).await;
    let token = f.idp.machine_opaque().await;
    f.idp.reset_counts().await;
    let results: Vec<u16> = futures_util::future::join_all((0..200).map(|i| {
        let (http, p, token) = (&f.http, &f.proxy, &token);
        async move {
            send(http, p, "GET", &format!("/api/items/{i}"), Some(token), &[])
                .await
                .status
                .as_u16()
        }
    }))
    .await;
    assert!(results.iter().all(|s| *s == 200), "{results:?}");
    assert_eq!(f.echo.count(), 200);
    let c = f.idp.counts().await;
    assert_eq!(c["introspection"], 1, "200 parallel requests: {c}");
}

// -------------------------------------------------------------------------------------------
// Auth0 profile
// -------------------------------------------------------------------------------------------

fn auth0_setup() -> Setup {
    Setup::default()
}

pub(crate) fn jwt_part(token: &str, i: usize) -> Value {
    serde_json::from_slice(&forge::unb64(token.split('.').nth(i).unwrap())).unwrap()
}

#[tokio::test]
async fn auth0_client_credentials_jwt_with_audience_validates_with_permissions_as_scopes() {
    let f = fixture(Profile::Auth0, auth0_setup()).await;
    let token = f.idp.machine_jwt().await;
    // The provider's token is shaped like Auth0's.
    let (h, c) = (jwt_part(&token, 0), jwt_part(&token, 1));
    assert_eq!(h["typ"], "JWT", "{h}");
    assert_eq!(c["azp"], "machine", "{c}");
    assert!(c.get("client_id").is_none(), "{c}");
    assert_eq!(c["iss"], f.idp.issuer.as_str());
    assert_eq!(c["gty"], "client-credentials");

    for method in ["GET", "POST"] {
        let r = send(&f.http, &f.proxy, method, "/api/items", Some(&token), &[]).await;
        let e = echoed(&r, method);
        assert_eq!(
            echo_header(&e, "x-auth-request-user").as_deref(),
            Some("machine@clients")
        );
        let scopes = echo_header(&e, "x-auth-request-scopes").unwrap_or_default();
        let scopes: Vec<&str> = scopes.split(' ').collect();
        assert!(
            scopes.contains(&"read:items") && scopes.contains(&"write:items"),
            "{scopes:?}"
        );
        assert!(echo_headers(&e, "authorization").is_empty());
    }

    let ro = f
        .idp
        .client_credentials("machine-ro", "machine-ro-secret", None, Some(API))
        .await;
    echoed(&f.get("/api/items", &ro).await, "machine-ro GET");
    let n = f.echo.count();
    let r = f.post("/api/items", &ro).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"read:items write:items\""
        )
    );
    assert_eq!(r.json()["error"], "insufficient_scope");
    assert_eq!(f.echo.count(), n);
}

#[tokio::test]
async fn auth0_user_tokens_jwt_uses_permissions_and_roles_and_opaque_is_checked_at_userinfo() {
    let f = fixture(Profile::Auth0, auth0_setup()).await;
    // With `audience`: a JWT whose `scope` lacks the API scopes but whose `permissions`
    // (Auth0 RBAC) has them; `aud` is an array with the userinfo URL.
    let t = f
        .idp
        .login("alice", "openid profile email", Some(API))
        .await;
    let token = t["access_token"].as_str().unwrap().to_string();
    let c = jwt_part(&token, 1);
    assert!(c["aud"].is_array(), "{c}");
    assert!(!c["scope"].as_str().unwrap().contains("read:items"), "{c}");
    assert!(c["permissions"].to_string().contains("write:items"), "{c}");
    for method in ["GET", "POST"] {
        let r = send(&f.http, &f.proxy, method, "/api/items", Some(&token), &[]).await;
        let e = echoed(&r, &format!("alice {method}"));
        assert_eq!(
            echo_header(&e, "x-auth-request-user").as_deref(),
            Some("auth0|alice")
        );
        assert_eq!(
            echo_header(&e, "x-auth-request-groups").as_deref(),
            Some("staff,admins")
        );
    }
    // bob's permissions lack write:items.
    let t = f.idp.login("bob", "openid profile", Some(API)).await;
    let bob = t["access_token"].as_str().unwrap().to_string();
    echoed(&f.get("/api/items", &bob).await, "bob GET");
    assert_eq!(f.post("/api/items", &bob).await.status, 403);

    // Without `audience`: an opaque token that only /userinfo accepts.
    let t = f
        .idp
        .login("alice", "openid profile email offline_access", None)
        .await;
    let opaque = t["access_token"].as_str().unwrap().to_string();
    assert!(!opaque.contains('.'), "{opaque}");
    let refresh = t["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_string();
    f.idp.reset_counts().await;
    for _ in 0..2 {
        let e = echoed(&f.get("/any/me", &opaque).await, "opaque via userinfo");
        assert_eq!(
            echo_header(&e, "x-auth-request-user").as_deref(),
            Some("auth0|alice")
        );
        assert_eq!(
            echo_header(&e, "x-auth-request-email").as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(
            echo_header(&e, "x-auth-request-groups").as_deref(),
            Some("staff,admins")
        );
        assert!(echo_headers(&e, "authorization").is_empty());
    }
    assert_eq!(
        f.idp.count("userinfo").await,
        1,
        "the userinfo answer is cached"
    );
    assert_eq!(f.idp.count("introspection").await, 0);
    // Userinfo carries no API scopes: the scoped route refuses it.
    let r = f.get("/api/items", &opaque).await;
    assert_eq!(r.status, 403, "{}", r.text());
    // A token userinfo refuses: 401 (a random one, and the refresh token).
    let n = f.echo.count();
    assert_invalid_token(
        &f.get("/any/me", &refresh).await,
        "refresh token at userinfo",
    );
    let fake = forge::b64(&forge::random_bytes(32));
    assert_invalid_token(
        &f.get("/any/me", &fake).await,
        "unknown opaque token at userinfo",
    );
    assert_eq!(f.echo.count(), n);
    // Userinfo failing: 503.
    let other = f.idp.login("bob", "openid profile email", None).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    f.idp.fail("userinfo", "500", 0, None).await;
    assert_unavailable(&f.get("/any/me", &other).await, "userinfo 500");
    f.idp.clear_fail().await;
    echoed(&f.get("/any/me", &other).await, "userinfo back");
}

// -------------------------------------------------------------------------------------------
// The harness's own checks
// -------------------------------------------------------------------------------------------

#[test]
fn idp_harness_selftest_passes() {
    let (code, out) = crate::support::idp::selftest();
    assert_eq!(code, Some(0), "node tests/idp/selftest.mjs:\n{out}");
    assert!(out.contains(" 0 failed"), "{out}");
}

// -------------------------------------------------------------------------------------------
// token_file: a provider whose discovery and JWKS need a bearer token (Kubernetes)
// -------------------------------------------------------------------------------------------

/// The sidecar recipe's issuer entry against a provider that, like a default Kubernetes
/// API server, answers discovery and JWKS only to an authenticated caller: with
/// `token_file` the proxy gets ready and accepts the provider's tokens; a rotated token
/// file is read at the next fetch; without `token_file` requests fail closed (503).
#[tokio::test]
async fn service_account_token_file_authenticates_the_jwks_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("sa-token");
    std::fs::write(&token_file, "sa-token-1\n").unwrap();
    let tf = token_file.to_str().unwrap();
    let idp = Idp::start_with(Profile::Standard, &["--metadata-token-file", tf]).await;
    let echo = EchoUpstream::start().await;
    let config = |issuer_extra: &str| {
        format!(
            "{server}\
             [bearer]\naudiences = [\"{API}\"]\n\n\
             [[bearer.issuers]]\nissuer = \"{issuer}\"\naudiences = [\"{API}\"]\n{issuer_extra}\n\
             [[upstream]]\nname = \"app\"\nurl = \"{upstream}\"\n\n\
             [[route]]\nname = \"api\"\npath = \"/api/\"\nupstream = \"app\"\nauth = \"bearer\"\n",
            server = server_section(""),
            issuer = idp.issuer,
            upstream = echo.url(""),
        )
    };
    let http = Http::new();
    let token = idp.machine_jwt().await;

    // Without the token file: the provider answers 401, nothing is let through.
    let blind = TestProxy::start(&config("")).await;
    let r = send(&http, &blind, "GET", "/api/x", Some(&token), &[]).await;
    assert_unavailable(&r, "JWKS unreadable without token_file");
    drop(blind);

    let p = TestProxy::start(&config(&format!("token_file = \"{tf}\"\n"))).await;
    wait_ready(&p).await;
    let r = send(&http, &p, "GET", "/api/x", Some(&token), &[]).await;
    let e = echoed(
        &r,
        "a provider token, keys fetched with the service-account token",
    );
    assert_eq!(
        crate::support::client::echo_header(&e, "x-auth-request-user").as_deref(),
        Some("machine")
    );

    // The kubelet rotates the token; the provider rotates its keys: a token with a new kid
    // makes the proxy refetch (at most once per 10 s), with the token now in the file.
    // Written aside and renamed, as the kubelet swaps projected tokens: a reader (the
    // proxy, or the provider checking the token) never sees the file empty or half written.
    let next = dir.path().join("sa-token.next");
    std::fs::write(&next, "sa-token-2").unwrap();
    std::fs::rename(&next, &token_file).unwrap();
    let jwks_before = idp.count("jwks").await;
    idp.rotate_keys().await;
    crate::support::raw::eventually(
        Duration::from_secs(30),
        "a token signed with a new key passes after the token file changed",
        || async {
            // A new token each time: a refused one is remembered for a few seconds.
            let fresh = idp.machine_jwt().await;
            let r = send(&http, &p, "GET", "/api/x", Some(&fresh), &[]).await;
            (r.status == 200).then_some(())
        },
    )
    .await;
    assert!(idp.count("jwks").await > jwks_before);
    // The provider's log shows no refused JWKS call after the rotation.
    assert!(
        !idp.logs().lines().any(|l| l.contains("/jwks 401")),
        "{}",
        idp.logs()
    );
}
