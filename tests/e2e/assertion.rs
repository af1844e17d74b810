//! The signed identity assertion (issue 16), end to end: the example verifier
//! (`examples/assertion_verifier.py`, PyJWT) as the upstream of a bearer route and of login
//! routes, and as the app behind forward-auth; forged, expired and client-sent assertions
//! refused; two proxies with the same secrets publish the same keys; a key rotation in two
//! steps keeps every assertion verifiable; `check` names `server.public_url`.

use std::time::Duration;

use http::Request;
use serde_json::{json, Value};

use crate::support::agent::Agent;
use crate::support::client::{empty, Resp};
use crate::support::echo::EchoUpstream;
use crate::support::idp::{forge, Idp, Profile, API};
use crate::support::login::{config, login, new_secret, with_cookie, Setup};
use crate::support::proxy::{check, free_port, wait_ready};
use crate::support::verifier::Verifier;
use crate::support::*;

const JWKS: &str = "/.well-known/portcullis/jwks.json";
const HEADER: &str = "x-portcullis-assertion";
const AUDIENCE: &str = "my-app";

/// The login fixture's config (routes `/admin` and `/` by login, `/api/` by bearer) with
/// `assertion = true` on all three, a public route `/open/`, `[assertion] audience`, and
/// the verifier on `upstream_port` as the upstream.
fn asserting_config(idp: &Idp, echo: &EchoUpstream, s: &Setup, upstream_port: u16) -> String {
    let text = config(idp, echo, s)
        .replace("auth = \"login\"\n", "auth = \"login\"\nassertion = true\n")
        .replace("auth = \"bearer\"\n", "auth = \"bearer\"\nassertion = true\n")
        .replace(
            "[[route]]\nname = \"app\"\npath = \"/\"",
            "[[route]]\nname = \"open\"\npath = \"/open/\"\nupstream = \"app\"\nauth = \"public\"\n\n\
             [[route]]\nname = \"app\"\npath = \"/\"",
        )
        .replace(
            &echo.url(""),
            &format!("http://127.0.0.1:{upstream_port}"),
        );
    format!("{text}\n[assertion]\naudience = \"{AUDIENCE}\"\n")
}

struct World {
    idp: Idp,
    _echo: EchoUpstream,
    proxy: TestProxy,
    verifier: Verifier,
    http: Http,
}

/// Provider, proxy (trusting 127.0.0.1 for forward-auth) and the verifier behind it.
async fn world(secrets: Vec<String>) -> World {
    world_with(secrets, &[]).await
}

/// ... with more arguments for the verifier.
async fn world_with(secrets: Vec<String>, verifier_args: &[&str]) -> World {
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let port = free_port();
    let s = Setup {
        secrets,
        trusted: true,
        bearer: true,
        ..Setup::default()
    };
    let proxy = TestProxy::start(&asserting_config(&idp, &echo, &s, port)).await;
    wait_ready(&proxy).await;
    let issuer = format!("http://{}", proxy.addr);
    let verifier =
        Verifier::start_with(port, &proxy.url(JWKS), &issuer, AUDIENCE, verifier_args).await;
    World {
        idp,
        _echo: echo,
        proxy,
        verifier,
        http: Http::new(),
    }
}

async fn get(http: &Http, url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    http.send(b.body(empty()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// The verifier's 200: the identity it verified.
fn verified(r: &Resp, what: &str) -> Value {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    r.json()
}

/// The verifier's 401 and the error it names.
fn refused(r: &Resp, what: &str) -> String {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    r.json()["error"].as_str().unwrap_or_default().to_string()
}

fn payload(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&forge::unb64(part)).unwrap()
}

fn header_of(jwt: &str) -> Value {
    serde_json::from_slice(&forge::unb64(jwt.split('.').next().unwrap())).unwrap()
}

/// A bearer token for the API from the provider's own key, expiring in `ttl` seconds.
async fn user_token(idp: &Idp, sub: &str, ttl: u64) -> String {
    let now = forge::now();
    let claims = json!({
        "iss": idp.issuer, "sub": sub, "aud": API, "iat": now, "exp": now + ttl,
        "scope": "read:items", "client_id": "machine",
        "jti": forge::b64(&forge::random_bytes(12)),
    });
    let signer = idp.signer("RS256").await;
    signer.sign(
        &json!({"alg": signer.alg, "typ": "at+jwt", "kid": signer.kid}),
        &claims,
    )
}

/// The assertion forward-auth hands the front proxy for `uri` with `headers`.
async fn forward_auth_assertion(w: &World, uri: &str, headers: &[(&str, &str)]) -> String {
    let mut all = vec![("x-forwarded-uri", uri), ("x-forwarded-method", "GET")];
    all.extend_from_slice(headers);
    let r = get(&w.http, &w.proxy.url("/oauth2/auth"), &all).await;
    assert_eq!(r.status, 202, "forward auth of {uri}: {}", r.text());
    r.header(HEADER)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("no assertion on the 202 of {uri}"))
        .to_string()
}

#[tokio::test]
async fn the_example_verifier_accepts_assertions_of_bearer_login_and_forward_auth() {
    let w = world(vec![new_secret()]).await;

    // Bearer route: the verifier sees the machine's identity, signed by the proxy.
    let token = w.idp.machine_jwt().await;
    let bearer = format!("Bearer {token}");
    let v = verified(
        &get(
            &w.http,
            &w.proxy.url("/api/items"),
            &[("authorization", &bearer)],
        )
        .await,
        "bearer route",
    );
    let machine_sub = v["sub"].as_str().unwrap().to_string();
    assert!(!machine_sub.is_empty());
    let c = &v["claims"];
    assert_eq!(c["iss"], format!("http://{}", w.proxy.addr));
    assert_eq!(c["aud"], AUDIENCE);
    let (iat, exp) = (c["iat"].as_u64().unwrap(), c["exp"].as_u64().unwrap());
    assert!(exp > iat && exp - iat <= 300, "{c}");
    assert!(c.get("jti").is_none(), "{c}");
    // Never the access token, in any claim.
    assert!(!c.to_string().contains(&token), "{c}");

    // Login routes: alice (verified email, groups) on `/` and `/admin`.
    let mut alice = Agent::new();
    let (_, r) = login(&mut alice, &w.proxy.url("/page"), "alice").await;
    let v = verified(&r, "login route after the login");
    assert_eq!(v["sub"], "user-alice");
    assert_eq!(v["email"], "alice@example.com");
    assert_eq!(v["groups"], json!(["staff", "admins"]));
    assert_eq!(v["path"], "/page");
    let cookie = alice.jar.root_cookie_header();
    let v = verified(
        &with_cookie(&w.http, &w.proxy.url("/admin/x"), &cookie, &[]).await,
        "admin route",
    );
    assert_eq!(v["sub"], "user-alice");

    // mallory's email is not verified: no email claim at all.
    let mut mallory = Agent::new();
    let (_, r) = login(&mut mallory, &w.proxy.url("/"), "mallory").await;
    let v = verified(&r, "mallory");
    assert!(v["claims"].get("email").is_none(), "{v}");

    // Forward-auth: the 202 carries the assertion; the app behind the front proxy (here:
    // the verifier, asked directly with what the front proxy would copy) accepts it.
    let a = forward_auth_assertion(&w, "/api/items", &[("authorization", &bearer)]).await;
    let v = verified(
        &get(&w.http, &w.verifier.url("/api/items"), &[(HEADER, &a)]).await,
        "forward-auth bearer",
    );
    assert_eq!(v["sub"], machine_sub.as_str());
    let a = forward_auth_assertion(&w, "/", &[("cookie", &cookie)]).await;
    let v = verified(
        &get(&w.http, &w.verifier.url("/"), &[(HEADER, &a)]).await,
        "forward-auth session",
    );
    assert_eq!(v["sub"], "user-alice");
    // A route without assertion (the public one): the 202 carries none.
    let r = get(
        &w.http,
        &w.proxy.url("/oauth2/auth"),
        &[("x-forwarded-uri", "/open/x")],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(r.header(HEADER).is_none(), "{:?}", r.header(HEADER));

    // Cached: the same identity on the same audience gets the very same assertion.
    let again = forward_auth_assertion(&w, "/", &[("cookie", &cookie)]).await;
    assert_eq!(again, a);
}

#[tokio::test]
async fn the_verifier_refuses_forged_expired_and_client_sent_assertions() {
    let w = world(vec![new_secret()]).await;
    let token = w.idp.machine_jwt().await;
    let bearer = format!("Bearer {token}");
    let good = forward_auth_assertion(&w, "/api/x", &[("authorization", &bearer)]).await;
    let claims = payload(&good);
    let kid = header_of(&good)["kid"].as_str().unwrap().to_string();
    // Control: the genuine one passes.
    verified(
        &get(&w.http, &w.verifier.url("/x"), &[(HEADER, &good)]).await,
        "genuine",
    );

    // Forged: the same claims and kid, signed with a key of our own.
    let forger = forge::Signer::own_es256(&kid);
    let forged = forger.sign(&json!({"alg": "ES256", "kid": kid, "typ": "JWT"}), &claims);
    let why = refused(
        &get(&w.http, &w.verifier.url("/x"), &[(HEADER, &forged)]).await,
        "forged",
    );
    assert_eq!(why, "InvalidSignatureError");
    // Forged with alg none, and a tampered payload under the genuine signature.
    let none = forge::unsigned(&json!({"alg": "none", "kid": kid}), &claims, "");
    refused(
        &get(&w.http, &w.verifier.url("/x"), &[(HEADER, &none)]).await,
        "alg none",
    );
    let mut evil = claims.clone();
    evil["sub"] = json!("admin");
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        forge::b64(evil.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(
        refused(
            &get(&w.http, &w.verifier.url("/x"), &[(HEADER, &tampered)]).await,
            "tampered",
        ),
        "InvalidSignatureError"
    );

    // Expired: a genuine assertion of an identity whose token expires in 3 s (the
    // assertion never outlives it), refused once that moment has passed.
    let short = user_token(&w.idp, "short-lived", 3).await;
    let a = forward_auth_assertion(
        &w,
        "/api/x",
        &[("authorization", &format!("Bearer {short}"))],
    )
    .await;
    let c = payload(&a);
    assert!(c["exp"].as_u64().unwrap() <= forge::now() + 3, "{c}");
    verified(
        &get(&w.http, &w.verifier.url("/x"), &[(HEADER, &a)]).await,
        "short-lived, before exp",
    );
    let why = eventually(Duration::from_secs(20), "the assertion expires", || async {
        let r = get(&w.http, &w.verifier.url("/x"), &[(HEADER, &a)]).await;
        (r.status == 401).then(|| r.json()["error"].as_str().unwrap_or_default().to_string())
    })
    .await;
    assert_eq!(why, "ExpiredSignatureError");

    // Sent by a client: a public route never lets one through (the verifier sees none)...
    for name in [HEADER, "X-PORTCULLIS-ASSERTION", "x_portcullis_assertion"] {
        let why = refused(
            &get(&w.http, &w.proxy.url("/open/x"), &[(name, &good)]).await,
            name,
        );
        assert_eq!(why, "missing", "{name}");
    }
    // ...and on an asserting route the client's copy is replaced by the proxy's own: a
    // client cannot pass off another identity's assertion.
    let mut alice = Agent::new();
    login(&mut alice, &w.proxy.url("/"), "alice").await;
    let cookie = alice.jar.root_cookie_header();
    let v = verified(
        &with_cookie(&w.http, &w.proxy.url("/x"), &cookie, &[(HEADER, &good)]).await,
        "client-sent copy on a login route",
    );
    assert_eq!(v["sub"], "user-alice");
    // A request to the app that bypasses the proxy with a made-up header: refused.
    let why = refused(
        &get(&w.http, &w.verifier.url("/x"), &[(HEADER, "user-alice")]).await,
        "made-up header",
    );
    assert_eq!(why, "DecodeError");
    // Without the header at all (anything reaching the app directly).
    assert_eq!(
        refused(&get(&w.http, &w.verifier.url("/x"), &[]).await, "none"),
        "missing"
    );
}

/// The JWKS a proxy publishes (and checks its headers).
async fn jwks(http: &Http, p: &TestProxy) -> Value {
    let r = http.get(&p.url(JWKS)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/jwk-set+json"));
    let v = r.json();
    for k in v["keys"].as_array().unwrap() {
        assert_eq!(k["kty"], "EC");
        assert_eq!(k["alg"], "ES256");
        assert!(k.get("d").is_none(), "a private key published: {k}");
    }
    v
}

#[tokio::test]
async fn two_proxies_with_the_same_secrets_publish_the_same_jwks() {
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let secrets = vec![new_secret(), new_secret()];
    let setup = |secrets: Vec<String>| Setup {
        secrets,
        trusted: true,
        bearer: true,
        public_url: Some("https://app.example.test".into()),
        ..Setup::default()
    };
    let port = free_port();
    let text = asserting_config(&idp, &echo, &setup(secrets.clone()), port);
    let a = TestProxy::start(&text).await;
    let b = TestProxy::start(&text).await;
    let other = TestProxy::start(&asserting_config(
        &idp,
        &echo,
        &setup(vec![new_secret()]),
        port,
    ))
    .await;
    let http = Http::new();
    let (ja, jb) = (jwks(&http, &a).await, jwks(&http, &b).await);
    assert_eq!(ja["keys"].as_array().unwrap().len(), 2, "{ja}");
    assert_eq!(ja, jb);
    assert_ne!(jwks(&http, &other).await, ja);
    // The JWKS path is answered only where assertions are on: a HEAD too.
    let r = http
        .send(Request::head(a.url(JWKS)).body(empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    // What replica `a` signs, the verifier verifies with the keys of replica `b`.
    wait_ready(&a).await;
    let verifier = Verifier::start(port, &b.url(JWKS), "https://app.example.test", AUDIENCE).await;
    let token = idp.machine_jwt().await;
    let r = get(
        &http,
        &a.url("/oauth2/auth"),
        &[
            ("x-forwarded-uri", "/api/x"),
            ("authorization", &format!("Bearer {token}")),
        ],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let assertion = r.header(HEADER).unwrap().to_string();
    assert_eq!(header_of(&assertion)["kid"], ja["keys"][0]["kid"]);
    verified(
        &get(&http, &verifier.url("/x"), &[(HEADER, &assertion)]).await,
        "signed by a, keys of b",
    );
}

/// A bearer request and alice's session through the proxy: both verified upstream.
async fn check_both(w: &World, bearer: &str, cookie: &str, what: &str) {
    let r = get(
        &w.http,
        &w.proxy.url("/api/x"),
        &[("authorization", bearer)],
    )
    .await;
    verified(&r, what);
    let r = with_cookie(&w.http, &w.proxy.url("/x"), cookie, &[]).await;
    assert_eq!(verified(&r, what)["sub"], "user-alice");
}

/// The `kid` of the assertion the proxy signs now.
async fn signed_kid(w: &World, bearer: &str) -> String {
    let a = forward_auth_assertion(w, "/api/x", &[("authorization", bearer)]).await;
    header_of(&a)["kid"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn rotation_in_two_steps_keeps_assertions_verifiable() {
    let (old, new) = (new_secret(), new_secret());
    // The verifier caches the key set for 2 s instead of 5 minutes: the wait between the
    // steps, shortened.
    let w = world_with(vec![old.clone()], &["--jwks-lifespan", "2"]).await;
    let idp = &w.idp;
    let token = idp.machine_jwt().await;
    let bearer = format!("Bearer {token}");
    let mut alice = Agent::new();
    login(&mut alice, &w.proxy.url("/"), "alice").await;
    let cookie = alice.jar.root_cookie_header();
    check_both(&w, &bearer, &cookie, "before the rotation").await;
    let kid = |j: &Value, i: usize| j["keys"][i]["kid"].as_str().unwrap().to_string();
    let before = jwks(&w.http, &w.proxy).await;
    let old_kid = kid(&before, 0);
    // Step 1: the new secret second. Published, not yet signing.
    let echo_url = format!("http://127.0.0.1:{}", w.verifier.port);
    let text = std::fs::read_to_string(&w.proxy.config_path).unwrap();
    let step1 = text.replace(
        &format!("secrets = [\"{old}\"]"),
        &format!("secrets = [\"{old}\", \"{new}\"]"),
    );
    assert_ne!(step1, text);
    assert!(step1.contains(&echo_url));
    std::fs::write(&w.proxy.config_path, &step1).unwrap();
    w.proxy.signal(Signal::Hup).await;
    let published = eventually(Duration::from_secs(20), "two keys published", || async {
        let j = jwks(&w.http, &w.proxy).await;
        (j["keys"].as_array().unwrap().len() == 2).then_some(j)
    })
    .await;
    assert_eq!(kid(&published, 0), old_kid);
    let new_kid = kid(&published, 1);
    assert_eq!(signed_kid(&w, &bearer).await, old_kid);
    check_both(&w, &bearer, &cookie, "step 1").await;
    // Wait (as the operator does) until the verifier's cached set has expired and it has
    // fetched the keys of step 1, the new one among them.
    eventually(
        Duration::from_secs(30),
        "the verifier knows the new key",
        || async {
            check_both(&w, &bearer, &cookie, "step 1, waiting").await;
            w.verifier
                .logs()
                .lines()
                .any(|l| l.contains("fetched the JWKS") && l.contains(&new_kid))
                .then_some(())
        },
    )
    .await;

    // Step 2: the new secret first. It signs; the old key stays published.
    let step2 = step1.replace(
        &format!("secrets = [\"{old}\", \"{new}\"]"),
        &format!("secrets = [\"{new}\", \"{old}\"]"),
    );
    std::fs::write(&w.proxy.config_path, &step2).unwrap();
    w.proxy.signal(Signal::Hup).await;
    eventually(Duration::from_secs(20), "the new key signs", || async {
        (signed_kid(&w, &bearer).await == new_kid).then_some(())
    })
    .await;
    let after = jwks(&w.http, &w.proxy).await;
    assert_eq!((kid(&after, 0), kid(&after, 1)), (new_kid.clone(), old_kid));
    // The verifier verifies the new key's assertions with the set it fetched in step 1
    // (PyJWT would refetch for an unknown kid only after a 30 s cooldown: hence the two
    // steps), and alice's session, sealed under the old secret, still opens.
    check_both(&w, &bearer, &cookie, "step 2").await;
    let r = get(
        &w.http,
        &w.proxy.url("/api/x"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(
        verified(&r, "after")["claims"]["iss"],
        format!("http://{}", w.proxy.addr)
    );
}

/// Why two steps: moving a new secret first at once leaves a verifier with a cached key set
/// unable to verify (PyJWT refetches for an unknown kid at most every 30 s).
#[tokio::test]
async fn a_one_step_rotation_leaves_a_verifier_without_the_new_key() {
    let (old, new) = (new_secret(), new_secret());
    let w = world(vec![old.clone()]).await;
    let bearer = format!("Bearer {}", w.idp.machine_jwt().await);
    let r = get(
        &w.http,
        &w.proxy.url("/api/x"),
        &[("authorization", &bearer)],
    )
    .await;
    verified(&r, "before");
    let old_kid = signed_kid(&w, &bearer).await;
    let text = std::fs::read_to_string(&w.proxy.config_path).unwrap();
    let at_once = text.replace(
        &format!("secrets = [\"{old}\"]"),
        &format!("secrets = [\"{new}\", \"{old}\"]"),
    );
    assert_ne!(at_once, text);
    std::fs::write(&w.proxy.config_path, &at_once).unwrap();
    w.proxy.signal(Signal::Hup).await;
    eventually(Duration::from_secs(20), "the new key signs", || async {
        (signed_kid(&w, &bearer).await != old_kid).then_some(())
    })
    .await;
    let r = get(
        &w.http,
        &w.proxy.url("/api/x"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(refused(&r, "one step"), "PyJWKClientError");
}

#[tokio::test]
async fn check_requires_public_url_and_keys_for_assertions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    let base = "[server]\nlisten = \"127.0.0.1:0\"\n\
                [provider]\nissuer = \"https://idp.example.test\"\n\
                [bearer]\naudiences = [\"api\"]\n\
                [[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:9\"\n\
                [[route]]\npath = \"/api\"\nupstream = \"a\"\nauth = \"bearer\"\nassertion = true\n";
    std::fs::write(&path, base).unwrap();
    let (code, out, err) = check(&path);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("server.public_url: is required when a route sets assertion = true"),
        "{err}"
    );
    assert!(err.contains("assertion.key_file"), "{err}");
    // With both: accepted.
    let ok = base.replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\npublic_url = \"https://app.example.test\"\n",
    ) + &format!("[session]\nsecrets = [\"{}\"]\n", new_secret());
    std::fs::write(&path, &ok).unwrap();
    let (code, out, err) = check(&path);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn key_files_sign_and_a_bad_one_is_named_at_start() {
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Generated here, never committed: an EdDSA key that signs, and a P-256 key published.
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(dir.path().join("ed.pem"), ed.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ec.pem"), ec.serialize_pem()).unwrap();
    let port = free_port();
    let s = Setup {
        trusted: true,
        bearer: true,
        ..Setup::default()
    };
    let text = asserting_config(&idp, &echo, &s, port) + "key_file = [\"ed.pem\", \"ec.pem\"]\n";
    let proxy = TestProxy::start_in(&text, dir).await;
    wait_ready(&proxy).await;
    let http = Http::new();
    let r = http.get(&proxy.url(JWKS)).await;
    let j = r.json();
    assert_eq!(j["keys"][0]["kty"], "OKP", "{j}");
    assert_eq!(j["keys"][0]["alg"], "EdDSA", "{j}");
    assert_eq!(j["keys"][1]["kty"], "EC", "{j}");
    let verifier = Verifier::start(
        port,
        &proxy.url(JWKS),
        &format!("http://{}", proxy.addr),
        AUDIENCE,
    )
    .await;
    let token = idp.machine_jwt().await;
    let r = get(
        &http,
        &proxy.url("/api/x"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(verified(&r, "EdDSA")["claims"]["aud"], AUDIENCE);
    drop(verifier);

    // Not a key: the proxy refuses to start, naming the key (and never printing it).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.pem"), "-----BEGIN NOTHING-----\nzz\n").unwrap();
    let text = asserting_config(&idp, &echo, &s, port) + "key_file = [\"bad.pem\"]\n";
    std::fs::write(
        dir.path().join("p.toml"),
        text.replace("@LISTEN@", "127.0.0.1:0")
            .replace("@ADMIN@", "127.0.0.1:0"),
    )
    .unwrap();
    let out = std::process::Command::new(crate::support::proxy::BIN)
        .arg("--config")
        .arg(dir.path().join("p.toml"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("assertion.key_file[0]"), "{err}");
}
