//! DPoP-bound access tokens (RFC 9449, issue 17) end to end: the real proxy binary in front
//! of the echo upstream, tokens issued by the real OpenID provider of `tests/idp/` (its
//! `features.dPoP`) to a test client that makes real proofs with its own key.

use http::Request;
use serde_json::{json, Value};

use crate::support::client::{empty, Resp};
use crate::support::idp::forge::{self, Signer};
use crate::support::idp::{Idp, Profile, API};
use crate::support::proxy::wait_ready;
use crate::support::*;

/// A DPoP client: its own key, its proofs.
struct Client {
    key: Signer,
}

impl Client {
    fn new(name: &str) -> Client {
        Client {
            key: Signer::own_es256(name),
        }
    }

    fn jwk(&self) -> Value {
        let mut j = self.key.public_jwk();
        j.as_object_mut().unwrap().remove("kid");
        j
    }

    fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()})
    }

    fn claims(htm: &str, htu: &str, token: Option<&str>) -> Value {
        let mut c = json!({"jti": forge::b64(&forge::random_bytes(12)), "htm": htm,
            "htu": htu, "iat": forge::now()});
        if let Some(t) = token {
            c["ath"] = json!(ath(t));
        }
        c
    }

    /// A proof for `htm` `htu` (with `ath` of `token`).
    fn proof(&self, htm: &str, htu: &str, token: Option<&str>) -> String {
        self.key
            .sign(&self.header(), &Self::claims(htm, htu, token))
    }

    /// A DPoP-bound token from the provider: a JWT for the API with `resource`, else an
    /// opaque token (introspected by the proxy).
    async fn token(&self, idp: &Idp, resource: Option<&str>) -> String {
        let token_endpoint = idp.endpoint("token_endpoint");
        idp.machine_dpop(&self.proof("POST", &token_endpoint, None), resource)
            .await
    }
}

/// RFC 9449 §4.2 / §7.1: base64url(SHA-256(token)).
fn ath(token: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    forge::b64(d.as_ref())
}

/// The proxy: the provider's issuer, opaque tokens introspected, `/api/` (read:items) and
/// `/strict/` (require_sender_constraint) to the echo upstream. `server_extra` goes into
/// `[server]` (`public_url`), `bearer_extra` into `[bearer]`.
fn config(idp: &Idp, echo: &EchoUpstream, server_extra: &str, bearer_extra: &str) -> String {
    format!(
        "{server}\
         [provider]\nissuer = \"{issuer}\"\nclient_id = \"portcullis\"\n\
         client_secret = \"portcullis-secret\"\n\n\
         [bearer]\naudiences = [\"{API}\"]\nintrospection = \"opaque\"\n\
         introspection_client_id = \"rs\"\nintrospection_client_secret = \"rs-secret\"\n\
         {bearer_extra}\n\
         [headers]\npreset = \"auth-request\"\n\n\
         [[upstream]]\nname = \"app\"\nurl = \"{upstream}\"\n\n\
         [[route]]\nname = \"api\"\npath = \"/api/\"\nupstream = \"app\"\nauth = \"bearer\"\n\
         scopes = [\"read:items\"]\n\n\
         [[route]]\nname = \"strict\"\npath = \"/strict/\"\nupstream = \"app\"\nauth = \"bearer\"\n\
         require_sender_constraint = true\n",
        server = server_section(server_extra),
        issuer = idp.issuer,
        upstream = echo.url(""),
    )
}

const PUBLIC: &str = "public_url = \"http://@LISTEN@\"\n";

struct Fixture {
    idp: Idp,
    echo: EchoUpstream,
    proxy: TestProxy,
    http: Http,
}

async fn fixture(server_extra: &str, bearer_extra: &str) -> Fixture {
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let proxy = TestProxy::start(&config(&idp, &echo, server_extra, bearer_extra)).await;
    wait_ready(&proxy).await;
    Fixture {
        idp,
        echo,
        proxy,
        http: Http::new(),
    }
}

impl Fixture {
    /// The URL the proxy serves `path` at (what `htu` names).
    fn url(&self, path: &str) -> String {
        self.proxy.url(path)
    }

    async fn send(&self, method: &str, path: &str, authorization: &str, proofs: &[&str]) -> Resp {
        let mut b = Request::builder()
            .method(method)
            .uri(self.proxy.url(path))
            .header("authorization", authorization);
        for p in proofs {
            b = b.header("dpop", *p);
        }
        self.http.send(b.body(empty()).unwrap()).await.unwrap()
    }

    async fn dpop(&self, method: &str, path: &str, token: &str, proof: &str) -> Resp {
        self.send(method, path, &format!("DPoP {token}"), &[proof])
            .await
    }
}

/// 401 with `WWW-Authenticate: DPoP realm="portcullis", error="<error>"`, the JSON body's
/// `error` the same, and the upstream not reached.
fn assert_dpop_refused(r: &Resp, error: &str, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    let www = r.header("www-authenticate").unwrap_or_default();
    let want = format!("DPoP realm=\"portcullis\", error=\"{error}\"");
    assert!(www.starts_with(&want), "{what}: WWW-Authenticate {www:?}");
    assert!(www.contains("algs=\"ES256 "), "{what}: {www:?}");
    assert_eq!(r.json()["error"], error, "{what}: {}", r.text());
}

fn echoed(r: &Resp, what: &str) -> Value {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    r.json()
}

#[tokio::test]
async fn dpop_bound_jwt_and_opaque_tokens_with_valid_proofs_are_200() {
    let f = fixture(PUBLIC, "").await;
    let client = Client::new("client");
    for resource in [Some(API), None] {
        let token = client.token(&f.idp, resource).await;
        for method in ["GET", "POST"] {
            let url = f.url("/api/items");
            let proof = client.proof(method, &url, Some(&token));
            let e = echoed(
                &f.dpop(method, "/api/items", &token, &proof).await,
                &format!("{method}, resource {resource:?}"),
            );
            assert_eq!(
                echo_headers(&e, "x-auth-request-user"),
                vec!["machine".to_string()]
            );
            // The token's Authorization header and the proof go no further.
            assert_eq!(echo_header(&e, "authorization"), None);
            assert_eq!(echo_header(&e, "dpop"), None);
        }
        // The query is no part of htu (RFC 9449 §4.3 step 9).
        let proof = client.proof("GET", &f.url("/api/items"), Some(&token));
        echoed(
            &f.dpop("GET", "/api/items?page=2", &token, &proof).await,
            "with a query",
        );
    }
}

#[tokio::test]
async fn bad_dpop_proofs_are_401_invalid_dpop_proof() {
    let f = fixture(PUBLIC, "").await;
    let client = Client::new("client");
    let token = client.token(&f.idp, Some(API)).await;
    let url = f.url("/api/items");
    let good = |c: &Value| client.key.sign(&client.header(), c);
    let claims = || Client::claims("GET", &url, Some(&token));
    let with = |name: &str, v: Value| {
        let mut c = claims();
        c[name] = v;
        c
    };
    let without = |name: &str| {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(name);
        c
    };
    let other = Client::new("other");
    let mut private_jwk = client.jwk();
    // A private member (the value does not matter: it must never be accepted).
    private_jwk["d"] = json!(forge::b64(&[7u8; 32]));
    let hs_header = json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": client.jwk()});
    let none_header = json!({"typ": "dpop+jwt", "alg": "none", "jwk": client.jwk()});
    let cases: Vec<(&str, String)> = vec![
        (
            "wrong htu (path)",
            good(&with("htu", json!(f.url("/api/other")))),
        ),
        (
            "wrong htu (origin)",
            good(&with("htu", json!("http://portcullis.example/api/items"))),
        ),
        ("wrong htm", good(&with("htm", json!("POST")))),
        ("stale iat", good(&with("iat", json!(forge::now() - 600)))),
        (
            "iat in the future",
            good(&with("iat", json!(forge::now() + 600))),
        ),
        ("missing ath", good(&without("ath"))),
        ("wrong ath", good(&with("ath", json!(ath("another token"))))),
        ("missing jti", good(&without("jti"))),
        (
            "private key in jwk",
            client.key.sign(
                &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": private_jwk}),
                &claims(),
            ),
        ),
        ("alg none", forge::unsigned(&none_header, &claims(), "")),
        (
            "alg HS256",
            forge::hs256(&hs_header, &claims(), b"0123456789abcdef0123456789abcdef"),
        ),
        (
            "typ JWT",
            client.key.sign(
                &json!({"typ": "JWT", "alg": "ES256", "jwk": client.jwk()}),
                &claims(),
            ),
        ),
        (
            "signed by another key than its jwk",
            other.key.sign(&client.header(), &claims()),
        ),
        // A valid proof by another key than the token's cnf.jkt.
        (
            "proof key is not cnf.jkt",
            other.proof("GET", &url, Some(&token)),
        ),
    ];
    let n = f.echo.count();
    for (label, proof) in &cases {
        let r = f.dpop("GET", "/api/items", &token, proof).await;
        assert_dpop_refused(&r, "invalid_dpop_proof", label);
    }
    // No proof at all, and two proofs.
    let r = f
        .send("GET", "/api/items", &format!("DPoP {token}"), &[])
        .await;
    assert_dpop_refused(&r, "invalid_dpop_proof", "no DPoP header");
    let (p1, p2) = (
        client.proof("GET", &url, Some(&token)),
        client.proof("GET", &url, Some(&token)),
    );
    let r = f
        .send("GET", "/api/items", &format!("DPoP {token}"), &[&p1, &p2])
        .await;
    assert_dpop_refused(&r, "invalid_dpop_proof", "two DPoP headers");
    assert_eq!(f.echo.count(), n, "a refused request reached the upstream");

    // A replayed proof: the first use passes, the second is refused.
    let proof = client.proof("GET", &url, Some(&token));
    echoed(
        &f.dpop("GET", "/api/items", &token, &proof).await,
        "first use",
    );
    let r = f.dpop("GET", "/api/items", &token, &proof).await;
    assert_dpop_refused(&r, "invalid_dpop_proof", "replayed proof");
    assert_eq!(
        r.json()["error_description"],
        "the DPoP proof was used before"
    );
    // Neither the token nor a proof is logged.
    let logs = f.proxy.logs();
    assert!(!logs.contains(&token), "the token is in the proxy's logs");
    assert!(!logs.contains(&proof), "a proof is in the proxy's logs");
}

#[tokio::test]
async fn dpop_bound_tokens_as_bearer_and_plain_tokens_as_dpop_are_401() {
    let f = fixture(PUBLIC, "").await;
    let client = Client::new("client");
    let url = f.url("/api/items");
    for resource in [Some(API), None] {
        let token = client.token(&f.idp, resource).await;
        // Valid once with its proof, so the identity is cached: the Bearer scheme is still
        // refused on the cache hit.
        let proof = client.proof("GET", &url, Some(&token));
        echoed(&f.dpop("GET", "/api/items", &token, &proof).await, "DPoP");
        let r = f
            .send("GET", "/api/items", &format!("Bearer {token}"), &[])
            .await;
        assert_eq!(r.status, 401, "{resource:?}: {}", r.text());
        assert!(r
            .header("www-authenticate")
            .unwrap_or_default()
            .starts_with("Bearer realm=\"portcullis\", error=\"invalid_token\""));
        assert_eq!(
            r.json()["error_description"],
            "sender-constrained tokens are not accepted as bearer tokens"
        );
    }
    // A plain bearer token presented with the DPoP scheme and a good proof.
    let plain = f.idp.machine_jwt().await;
    let proof = client.proof("GET", &url, Some(&plain));
    let r = f.dpop("GET", "/api/items", &plain, &proof).await;
    assert_dpop_refused(&r, "invalid_token", "unbound token as DPoP");
}

#[tokio::test]
async fn cached_dpop_tokens_are_checked_against_each_requests_proof() {
    let f = fixture(PUBLIC, "").await;
    let client = Client::new("client");
    let other = Client::new("other");
    let url = f.url("/api/items");
    // Opaque: a cache miss is an introspection call, so the calls show the cache at work.
    let token = client.token(&f.idp, None).await;
    let before = f.idp.count("introspection").await;
    for i in 0..3 {
        let proof = client.proof("GET", &url, Some(&token));
        echoed(
            &f.dpop("GET", "/api/items", &token, &proof).await,
            &format!("use {i}"),
        );
        // Between good requests: another key's proof, and a wrong method, on the cached token.
        let r = f
            .dpop(
                "GET",
                "/api/items",
                &token,
                &other.proof("GET", &url, Some(&token)),
            )
            .await;
        assert_dpop_refused(&r, "invalid_dpop_proof", "another key, cached token");
        let r = f
            .dpop(
                "GET",
                "/api/items",
                &token,
                &client.proof("PUT", &url, Some(&token)),
            )
            .await;
        assert_dpop_refused(&r, "invalid_dpop_proof", "wrong htm, cached token");
    }
    assert_eq!(
        f.idp.count("introspection").await,
        before + 1,
        "one introspection: the later requests were cache hits"
    );
}

#[tokio::test]
async fn dpop_nonces_are_required_when_configured() {
    let f = fixture(PUBLIC, "dpop_nonce = true\n").await;
    let client = Client::new("client");
    let url = f.url("/api/items");
    let token = client.token(&f.idp, Some(API)).await;
    // Without a nonce: 401 use_dpop_nonce with a nonce to use.
    let r = f
        .dpop(
            "GET",
            "/api/items",
            &token,
            &client.proof("GET", &url, Some(&token)),
        )
        .await;
    assert_dpop_refused(&r, "use_dpop_nonce", "no nonce");
    let nonce = r
        .header("dpop-nonce")
        .expect("a DPoP-Nonce header")
        .to_string();
    assert!(nonce.len() >= 32, "{nonce}");
    // With it: 200.
    let mut c = Client::claims("GET", &url, Some(&token));
    c["nonce"] = json!(nonce);
    let proof = client.key.sign(&client.header(), &c);
    echoed(
        &f.dpop("GET", "/api/items", &token, &proof).await,
        "with the nonce",
    );
    // A nonce of our own making is refused.
    let mut c = Client::claims("GET", &url, Some(&token));
    c["nonce"] = json!(forge::b64(&[1u8; 40]));
    let proof = client.key.sign(&client.header(), &c);
    let r = f.dpop("GET", "/api/items", &token, &proof).await;
    assert_dpop_refused(&r, "use_dpop_nonce", "forged nonce");
    assert!(r.header("dpop-nonce").is_some());
}

#[tokio::test]
async fn require_sender_constraint_routes_refuse_plain_bearer_tokens() {
    let f = fixture(PUBLIC, "").await;
    let plain = f.idp.machine_jwt().await;
    // The same token passes on a route without the requirement.
    echoed(
        &f.send("GET", "/api/items", &format!("Bearer {plain}"), &[])
            .await,
        "plain bearer on /api/",
    );
    let n = f.echo.count();
    let r = f
        .send("GET", "/strict/items", &format!("Bearer {plain}"), &[])
        .await;
    assert_dpop_refused(&r, "invalid_token", "plain bearer on /strict/");
    assert_eq!(
        r.json()["error_description"],
        "this resource requires a sender-constrained (DPoP- or certificate-bound) token"
    );
    assert_eq!(f.echo.count(), n);
    // A DPoP-bound token with its proof passes there.
    let client = Client::new("client");
    let token = client.token(&f.idp, Some(API)).await;
    let proof = client.proof("GET", &f.url("/strict/items"), Some(&token));
    echoed(
        &f.dpop("GET", "/strict/items", &token, &proof).await,
        "DPoP on /strict/",
    );
}

#[tokio::test]
async fn dpop_without_a_public_url_or_route_host_is_401() {
    // No server.public_url and routes without `host`: the URL a proof must name is unknown.
    let f = fixture("", "").await;
    let client = Client::new("client");
    let token = client.token(&f.idp, Some(API)).await;
    let proof = client.proof("GET", &f.url("/api/items"), Some(&token));
    let r = f.dpop("GET", "/api/items", &token, &proof).await;
    assert_dpop_refused(&r, "invalid_token", "no public URL");
    assert_eq!(
        r.json()["error_description"],
        "DPoP is not available on this route"
    );
}
