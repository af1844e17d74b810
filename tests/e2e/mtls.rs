//! Certificate-bound access tokens (RFC 8705, issue 17) end to end: the real OpenID provider
//! of `tests/idp/` over TLS (`--tls-dir`: node's https server asks for client
//! certificates, `features.mTLS.certificateBoundAccessTokens`) issues tokens with
//! `cnf.x5t#S256` to the client `machine-mtls`, for the certificate of its token request;
//! the real proxy binary checks them against the client certificate of its TLS listener
//! (`[server.tls] client_ca_file`) or, from a trusted proxy, `X-Forwarded-Client-Cert`.
//! The CA and the certificates are made here, for each test.

use std::time::Duration;

use http::Request;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;

use crate::support::client::{empty, full, Identity, Resp};
use crate::support::idp::{basic, form, Idp, Profile, API};
use crate::support::proxy::wait_ready;
use crate::support::*;

/// A CA, a certificate for 127.0.0.1 (the provider's and the proxy's) and two client
/// certificates from the same CA, `a` and `b`; PEM files in `dir`.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateDer<'static>,
    a: (CertificateDer<'static>, Vec<u8>),
    b: (CertificateDer<'static>, Vec<u8>),
}

impl Pki {
    fn new() -> Pki {
        // Each certificate its own subject: OpenSSL (the provider's node) takes a
        // certificate whose issuer is its own subject for a self-signed one.
        let params = |sans: Vec<String>, cn: &str| {
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = params(Vec::new(), "portcullis test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", ca.pem());
        let server_key = KeyPair::generate().unwrap();
        let server = params(vec!["127.0.0.1".to_string()], "127.0.0.1")
            .signed_by(&server_key, &issuer)
            .unwrap();
        write("server.pem", server.pem());
        write("server.key", server_key.serialize_pem());
        let client = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let cert = params(vec![format!("{name}.client.test")], name)
                .signed_by(&key, &issuer)
                .unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
            (cert.der().clone(), key.serialize_der())
        };
        let a = client("a");
        let b = client("b");
        Pki {
            ca: ca.der().clone(),
            a,
            b,
            dir,
        }
    }

    fn path(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn identity(c: &(CertificateDer<'static>, Vec<u8>)) -> Identity {
        (
            vec![c.0.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.1.clone())),
        )
    }

    /// A client presenting certificate `c` (`None`: no certificate).
    fn client(&self, c: Option<&(CertificateDer<'static>, Vec<u8>)>) -> Http {
        Http::tls(&self.ca, c.map(Self::identity))
    }
}

/// RFC 8705 §3.1 / Envoy `Hash=`: the SHA-256 of a DER certificate, hex.
fn hex_sha256(der: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A token of `machine-mtls` bound to the certificate `c` it asked with: a JWT for the API
/// with `resource`, else an opaque token (introspected by the proxy).
async fn bound_token(
    idp: &Idp,
    pki: &Pki,
    c: &(CertificateDer<'static>, Vec<u8>),
    resource: Option<&str>,
) -> String {
    let mut pairs = vec![
        ("grant_type", "client_credentials"),
        ("scope", "read:items write:items"),
    ];
    if let Some(r) = resource {
        pairs.push(("resource", r));
    }
    let req = Request::post(idp.endpoint("token_endpoint"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header(
            "authorization",
            basic("machine-mtls", "machine-mtls-secret"),
        )
        .body(full(form(&pairs)))
        .unwrap();
    let r = pki.client(Some(c)).send(req).await.unwrap();
    assert_eq!(r.status, 200, "token: {}", r.text());
    r.json()["access_token"].as_str().unwrap().to_string()
}

/// The proxy: the provider (over TLS, trusted by `ca_file`), opaque tokens introspected,
/// `/api/` (read:items) and `/strict/` (require_sender_constraint) to the echo upstream.
fn config(pki: &Pki, idp: &Idp, echo: &EchoUpstream, server: &str, bearer: &str) -> String {
    let d = pki.path();
    format!(
        "{server}\
         [provider]\nissuer = \"{issuer}\"\nca_file = \"{d}/ca.pem\"\n\
         client_id = \"portcullis\"\nclient_secret = \"portcullis-secret\"\n\n\
         [bearer]\naudiences = [\"{API}\"]\nintrospection = \"opaque\"\n\
         introspection_client_id = \"rs\"\nintrospection_client_secret = \"rs-secret\"\n\
         {bearer}\n\
         [headers]\npreset = \"auth-request\"\n\n\
         [[upstream]]\nname = \"app\"\nurl = \"{upstream}\"\n\n\
         [[route]]\nname = \"api\"\npath = \"/api/\"\nupstream = \"app\"\nauth = \"bearer\"\n\
         scopes = [\"read:items\"]\n\n\
         [[route]]\nname = \"strict\"\npath = \"/strict/\"\nupstream = \"app\"\nauth = \"bearer\"\n\
         require_sender_constraint = true\n",
        server = server_section(server),
        issuer = idp.issuer,
        upstream = echo.url(""),
    )
}

/// `[server.tls]` of a listener that asks for client certificates (`client_auth`).
fn tls_listener(pki: &Pki, client_auth: &str) -> String {
    let d = pki.path();
    format!(
        "[server.tls]\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\n\
         client_ca_file = \"{d}/ca.pem\"\n{client_auth}\n"
    )
}

struct Fixture {
    pki: Pki,
    idp: Idp,
    echo: EchoUpstream,
    proxy: TestProxy,
    tls: bool,
}

/// The provider over TLS, and the proxy with `server` in `[server]` (`tls`: its listener
/// speaks TLS) and `bearer` in `[bearer]`.
async fn fixture(server: impl Fn(&Pki) -> String, bearer: &str, tls: bool) -> Fixture {
    let pki = Pki::new();
    let idp = Idp::start_with(Profile::Standard, &["--tls-dir", &pki.path()]).await;
    let echo = EchoUpstream::start().await;
    let text = config(&pki, &idp, &echo, &server(&pki), bearer);
    let proxy = TestProxy::start_in_with(&text, tempfile::tempdir().unwrap(), !tls).await;
    wait_ready(&proxy).await;
    Fixture {
        pki,
        idp,
        echo,
        proxy,
        tls,
    }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.proxy.addr.port())
    }

    async fn get(&self, http: &Http, path: &str, token: &str, headers: &[(&str, &str)]) -> Resp {
        let mut b = Request::get(self.url(path)).header("authorization", format!("Bearer {token}"));
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        http.send(b.body(empty()).unwrap()).await.unwrap()
    }
}

/// 401 `invalid_token` with a Bearer challenge saying that the certificate binding failed,
/// and the reason in the access log's terms.
fn assert_binding_refused(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(
        www.starts_with("Bearer realm=\"portcullis\", error=\"invalid_token\""),
        "{what}: {www:?}"
    );
    assert!(
        www.contains("certificate binding failed"),
        "{what}: {www:?}"
    );
    assert_eq!(r.json()["error"], "invalid_token", "{what}");
}

fn echoed(r: &Resp, what: &str) -> Value {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    r.json()
}

#[tokio::test]
async fn certificate_bound_tokens_pass_with_their_certificate_only() {
    let f = fixture(|p| tls_listener(p, ""), "", true).await;
    let (a, b, none) = (
        f.pki.client(Some(&f.pki.a)),
        f.pki.client(Some(&f.pki.b)),
        f.pki.client(None),
    );
    // A JWT (checked locally) and an opaque token (the cnf of the introspection answer).
    for resource in [Some(API), None] {
        let token = bound_token(&f.idp, &f.pki, &f.pki.a, resource).await;
        let what = |w: &str| format!("{w}, resource {resource:?}");
        let e = echoed(&f.get(&a, "/api/items", &token, &[]).await, &what("right"));
        assert_eq!(
            echo_headers(&e, "x-auth-request-user"),
            vec!["machine-mtls".to_string()]
        );
        assert_binding_refused(
            &f.get(&b, "/api/items", &token, &[]).await,
            &what("another certificate of the same CA"),
        );
        assert_binding_refused(
            &f.get(&none, "/api/items", &token, &[]).await,
            &what("no certificate"),
        );
    }
    // The reason, in the access log.
    eventually(Duration::from_secs(10), "an access line", || async {
        f.proxy
            .log_json()
            .into_iter()
            .find(|l| l["target"] == "access" && l["reason"] == "invalid_token:cert_binding")
    })
    .await;
    // A plain bearer token still passes on the optional listener, with or without a
    // certificate.
    let plain = f
        .idp
        .client_credentials("machine", "machine-secret", Some("read:items"), Some(API))
        .await;
    echoed(
        &f.get(&none, "/api/items", &plain, &[]).await,
        "plain, no cert",
    );
    echoed(&f.get(&b, "/api/items", &plain, &[]).await, "plain, a cert");
}

#[tokio::test]
async fn a_cached_certificate_bound_token_is_checked_on_every_request() {
    let f = fixture(|p| tls_listener(p, ""), "", true).await;
    let (a, b) = (f.pki.client(Some(&f.pki.a)), f.pki.client(Some(&f.pki.b)));
    for resource in [Some(API), None] {
        let token = bound_token(&f.idp, &f.pki, &f.pki.a, resource).await;
        f.idp.reset_counts().await;
        echoed(&f.get(&a, "/api/items", &token, &[]).await, "first, right");
        assert_binding_refused(&f.get(&b, "/api/items", &token, &[]).await, "then wrong");
        echoed(&f.get(&a, "/api/items", &token, &[]).await, "right again");
        // The token was validated once (opaque: one introspection), then served from the
        // cache: the binding was checked on each request all the same.
        if resource.is_none() {
            assert_eq!(f.idp.count("introspection").await, 1);
        }
    }
}

#[tokio::test]
async fn a_required_client_certificate_is_needed_for_the_handshake() {
    let f = fixture(|p| tls_listener(p, "client_auth = \"required\""), "", true).await;
    let token = bound_token(&f.idp, &f.pki, &f.pki.a, Some(API)).await;
    let r = f
        .pki
        .client(None)
        .send(
            Request::get(f.url("/api/items"))
                .header("authorization", format!("Bearer {token}"))
                .body(empty())
                .unwrap(),
        )
        .await;
    assert!(r.is_err(), "no certificate, no connection: {r:?}");
    let a = f.pki.client(Some(&f.pki.a));
    echoed(
        &f.get(&a, "/api/items", &token, &[]).await,
        "with the certificate",
    );
}

/// `GET /api/items` with `token` and each of `values` as one X-Forwarded-Client-Cert header.
async fn xfcc(f: &Fixture, http: &Http, token: &str, values: Vec<String>) -> Resp {
    let h: Vec<(&str, &str)> = values
        .iter()
        .map(|v| ("x-forwarded-client-cert", v.as_str()))
        .collect();
    f.get(http, "/api/items", token, &h).await
}

#[tokio::test]
async fn forwarded_client_certificate_from_a_trusted_proxy() {
    let f = fixture(
        |_| "trusted_proxies = [\"127.0.0.1/32\"]\n".to_string(),
        "client_cert_header = \"x-forwarded-client-cert\"",
        false,
    )
    .await;
    let http = Http::new();
    let token = bound_token(&f.idp, &f.pki, &f.pki.a, Some(API)).await;
    let (ha, hb) = (hex_sha256(&f.pki.a.0), hex_sha256(&f.pki.b.0));
    let get = |values: &[String]| xfcc(&f, &http, &token, values.to_vec());
    let e = echoed(
        &get(&[format!(
            "By=spiffe://front;Hash={ha};Subject=\"CN=a.client.test\";URI="
        )])
        .await,
        "the right Hash",
    );
    // From a trusted proxy the header goes on to the upstream (it is the front proxy's).
    assert!(echo_header(&e, "x-forwarded-client-cert").is_some());
    echoed(&get(&[format!("Hash=\"{ha}\"")]).await, "a quoted Hash");
    assert_binding_refused(&get(&[format!("Hash={hb}")]).await, "a wrong Hash");
    assert_binding_refused(
        &get(&[format!("Hash={ha},Hash={hb}")]).await,
        "two elements",
    );
    assert_binding_refused(
        &get(&[format!("Hash={ha}"), format!("Hash={ha}")]).await,
        "a repeated header",
    );
    assert_binding_refused(&get(&["Hash=zz".to_string()]).await, "a malformed Hash");
    assert_binding_refused(&get(&["By=x;URI=y".to_string()]).await, "no Hash");
    assert_binding_refused(&get(&[]).await, "no header");
}

#[tokio::test]
async fn forwarded_client_certificate_from_an_untrusted_peer_is_ignored_and_dropped() {
    let f = fixture(
        |_| "trusted_proxies = [\"10.0.0.0/8\"]\n".to_string(),
        "client_cert_header = \"x-forwarded-client-cert\"",
        false,
    )
    .await;
    let http = Http::new();
    let token = bound_token(&f.idp, &f.pki, &f.pki.a, Some(API)).await;
    let right = format!("Hash={}", hex_sha256(&f.pki.a.0));
    assert_binding_refused(
        &f.get(
            &http,
            "/api/items",
            &token,
            &[("x-forwarded-client-cert", &right)],
        )
        .await,
        "XFCC from a peer outside trusted_proxies",
    );
    let plain = f
        .idp
        .client_credentials("machine", "machine-secret", Some("read:items"), Some(API))
        .await;
    let e = echoed(
        &f.get(
            &http,
            "/api/items",
            &plain,
            &[("x-forwarded-client-cert", &right)],
        )
        .await,
        "a plain token with XFCC",
    );
    assert_eq!(echo_header(&e, "x-forwarded-client-cert"), None);
    assert!(f
        .echo
        .recorded()
        .iter()
        .all(|r| r.header("x-forwarded-client-cert").is_none()));
}

#[tokio::test]
async fn a_route_that_requires_sender_constraint_takes_certificate_bound_tokens() {
    let f = fixture(|p| tls_listener(p, ""), "", true).await;
    let a = f.pki.client(Some(&f.pki.a));
    let plain = f
        .idp
        .client_credentials("machine", "machine-secret", Some("read:items"), Some(API))
        .await;
    let r = f.get(&a, "/strict/x", &plain, &[]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let www = r.header("www-authenticate").unwrap_or_default();
    assert!(www.contains("error=\"invalid_token\""), "{www}");
    assert!(www.contains("sender-constrained"), "{www}");
    let bound = bound_token(&f.idp, &f.pki, &f.pki.a, Some(API)).await;
    echoed(
        &f.get(&a, "/strict/x", &bound, &[]).await,
        "bound, right cert",
    );
    let b = f.pki.client(Some(&f.pki.b));
    assert_binding_refused(
        &f.get(&b, "/strict/x", &bound, &[]).await,
        "bound, wrong cert",
    );
}
