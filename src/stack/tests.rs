//! The stack tier: the assembled layers driven with `oneshot`, no sockets. The innermost
//! service is a recorder that answers 200 and keeps what it was given, so each test sees
//! both what the client got and what the upstream would have got.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode};
use serde_json::json;
use tower::ServiceExt;

use super::{build_around, Parts, Stack};
use crate::admin::metrics::Metrics;
use crate::auth::identity_headers::HeaderSettings;
use crate::body::{Resp, RespBody};
use crate::config::{Config, Secret};
use crate::exchange::{Answer, Arrival, ConnInfo};
use crate::oidc::login::Login;
use crate::oidc::transport::{HttpTransport, TransportConfig};
use crate::proxy::header_policy::HeaderPolicy;
use crate::proxy::hygiene::TrustedProxies;
use crate::proxy::pool::UpstreamPool;
use crate::proxy::upstream::Upstream;
use crate::revocation::Revocations;
use crate::routing::layer::HeadLimits;
use crate::routing::table::Parts as RouteParts;
use crate::routing::{RouteTable, Routed};
use crate::session::Session;
use crate::testutil::{forge, hs256, now_secs};
use crate::token::{BearerConfig, IntrospectionMode, IssuerConfig, TokenValidator};

const ISSUER: &str = "https://idp.test";
const HS_KEY: &[u8] = b"stack-tests-shared-key-0123456789abcdef";
const UNTRUSTED: &str = "203.0.113.9:5555";
const TRUSTED: &str = "10.0.12.7:5555";

/// What reached the innermost service.
#[derive(Clone, Debug)]
struct Seen {
    route: String,
    path: String,
    upstream_path: String,
    query: Option<String>,
    headers: HeaderMap,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl<B> tower_service::Service<Routed<B>> for Recorder {
    type Response = Answer;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Answer, std::convert::Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, r: Routed<B>) -> Self::Future {
        self.0.lock().unwrap().push(Seen {
            route: r.route.name.to_string(),
            path: r.path().to_string(),
            upstream_path: r.route.upstream_path(r.path()).to_string(),
            query: r.req.uri().query().map(String::from),
            headers: r.req.headers().clone(),
        });
        std::future::ready(Ok(Answer::from(Resp::new(RespBody::full("upstream")))))
    }
}

fn base_config(routes: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
public_url = "https://app.test"
trusted_proxies = ["10.0.12.0/24"]

[server.limits]
max_headers = 40
max_uri_length = 200

[provider]
issuer = "{ISSUER}"
client_id = "portcullis"
client_secret = "secret"

[bearer]
audiences = ["api"]
algorithms = ["RS256"]
introspection = "off"

[session]
secrets = ["MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="]

[headers]
strip = ["X-Legacy-User", "X-Acme-*"]
keep_from_trusted = ["X-Consumer-*", "X-Webauth-User", "X-Legacy-User"]

[[upstream]]
name = "app"
url = "http://127.0.0.1:9"
{routes}
"#
    )
}

const ROUTES: &str = r#"
[[route]]
name = "static"
path = "/static"
upstream = "app"
auth = "public"
strip_prefix = true

[[route]]
name = "api"
host = "api.test"
path = "/api"
upstream = "app"
auth = "bearer"
scopes = ["read"]
method_scopes = { DELETE = ["admin"] }
allow_preflight = true

[[route]]
name = "admin"
path = "/admin"
upstream = "app"
auth = "login"
allow = { groups = ["staff"] }

[[route]]
name = "mixed"
path = "/mixed"
upstream = "app"
auth = "either"

[[route]]
name = "pub"
path = "/"
upstream = "app"
auth = "public"
"#;

/// A validator that needs no network: one issuer, no discovery, HS256 with a shared key.
fn tokens() -> TokenValidator {
    let mut issuer = IssuerConfig::new(ISSUER, vec!["api".into()]);
    issuer.discovery = false;
    issuer.algorithms = vec![jsonwebtoken::Algorithm::HS256];
    issuer.hs_secret = Some(crate::token::Secret::new(HS_KEY.to_vec()));
    let cfg = BearerConfig {
        issuers: vec![issuer],
        introspection: IntrospectionMode::Off,
        ..BearerConfig::default()
    };
    let v = TokenValidator::new(cfg, HttpTransport::new(TransportConfig::default()).unwrap());
    assert!(v.is_ready(), "a shared-key issuer needs nothing loaded");
    v
}

fn token(claims: serde_json::Value) -> String {
    forge(&json!({"alg": "HS256", "typ": "JWT"}), &claims, |m| {
        hs256(HS_KEY, m)
    })
}

fn claims(sub: &str, scope: &str) -> serde_json::Value {
    let now = now_secs();
    json!({"iss": ISSUER, "sub": sub, "aud": "api", "iat": now, "exp": now + 600, "scope": scope})
}

struct Harness {
    stack: Stack<Recorder>,
    seen: Recorder,
    login: Arc<Login>,
    metrics: Arc<Metrics>,
}

fn harness() -> Harness {
    harness_with(ROUTES)
}

/// A harness for `routes` (and any `[[upstream]]` they add beside `app`).
fn harness_with(routes: &str) -> Harness {
    let config = Config::from_toml(&base_config(routes), std::path::Path::new(".")).unwrap();
    let metrics = Arc::new(Metrics::default());
    let upstreams: Vec<Arc<Upstream>> = config
        .upstreams
        .iter()
        .map(|u| {
            Arc::new(Upstream {
                name: u.name.as_str().into(),
                scheme: u.scheme.clone(),
                authority: u.authority.clone(),
                base_path: u.base_path.as_str().into(),
                preserve_host: u.preserve_host,
                h2: u.h2,
                exact_readings: u.path_readings == crate::config::PathReadings::Exact,
                client: Arc::new(UpstreamPool::new(u).unwrap()),
            })
        })
        .collect();
    let tokens = tokens();
    let login = Arc::new(
        Login::build(&config, None, &Revocations::memory(100))
            .unwrap()
            .unwrap(),
    );
    let asserter = crate::assertion::Asserter::build(&config).unwrap();
    let assertions = crate::assertion::for_routes(&config, asserter.as_ref());
    let table = RouteTable::compile(
        &config.routes,
        &RouteParts {
            tokens: Some(&tokens),
            login: Some(&login),
            upstreams: &upstreams,
            metrics: &metrics,
            dpop: Some(&Arc::new(
                crate::auth::dpop::DpopVerifier::new(Revocations::memory(100), false, None)
                    .unwrap(),
            )),
            public_url: config.server.public_url.as_ref(),
            tls: false,
            client_cert_header: false,
            asserter: asserter.as_ref(),
            assertions: &assertions,
        },
    )
    .unwrap();
    let limits = &config.server.limits;
    let parts = Parts {
        tracer: None,
        table: Arc::new(table),
        limits: HeadLimits {
            max_uri_length: limits.max_uri_length,
            max_headers: limits.max_headers,
            max_header_bytes: limits.max_header_bytes,
        },
        prefix: config.server.proxy_prefix.as_str().into(),
        strip: Arc::new(HeaderPolicy::new(&config.headers)),
        trusted: TrustedProxies::new(&config.server.trusted_proxies),
        headers: Arc::new(HeaderSettings::new(config.headers.clone())),
        login: Some(login.clone()),
        metrics: metrics.clone(),
        body_read_timeout: Duration::from_secs(5),
    };
    let seen = Recorder::default();
    Harness {
        stack: build_around(&parts, seen.clone()),
        seen,
        login,
        metrics,
    }
}

impl Harness {
    async fn send_from(&self, peer: &str, req: Request<()>) -> Resp {
        let peer: SocketAddr = peer.parse().unwrap();
        self.stack
            .clone()
            .oneshot(Arrival {
                req,
                conn: Arc::new(ConnInfo::new(peer, false)),
            })
            .await
            .unwrap()
    }

    async fn send(&self, req: Request<()>) -> Resp {
        self.send_from(UNTRUSTED, req).await
    }

    /// As over a TLS connection whose client certificate has the thumbprint `cert`.
    async fn get_with_cert(&self, cert: &str, uri: &str, headers: &[(&str, &str)]) -> Resp {
        let peer: SocketAddr = UNTRUSTED.parse().unwrap();
        self.stack
            .clone()
            .oneshot(Arrival {
                req: request(Method::GET, uri, headers),
                conn: Arc::new(ConnInfo::new(peer, true).with_client_cert(Some(cert.into()))),
            })
            .await
            .unwrap()
    }

    async fn get(&self, uri: &str, headers: &[(&str, &str)]) -> Resp {
        self.send(request(Method::GET, uri, headers)).await
    }

    fn one_seen(&self) -> Seen {
        let mut all = self.seen.take();
        assert_eq!(all.len(), 1, "expected exactly one forwarded request");
        all.remove(0)
    }

    fn nothing_seen(&self) {
        assert!(self.seen.take().is_empty(), "the request was forwarded");
    }

    /// A sealed session cookie of the login's store, as a browser would send it.
    async fn session_cookie(&self, sub: &str, groups: &[&str]) -> String {
        let now = SystemTime::now();
        let mut s = Session::new(
            ISSUER,
            sub,
            Secret::new("session-access-token".into()),
            now,
            Duration::from_secs(3600),
        );
        s.groups = groups.iter().map(|g| g.to_string()).collect();
        let set = self
            .login
            .store
            .save(&mut s, &HeaderMap::new(), now)
            .await
            .unwrap();
        set.iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().method(method).uri(uri);
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        b = b.header("host", "app.test");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

// ---- routing ---------------------------------------------------------------------------

#[tokio::test]
async fn first_matching_route_gets_the_canonical_path() {
    let h = harness();
    let r = h.get("/static//css/../app.css", &[]).await;
    assert_eq!(r.status(), 200);
    let seen = h.one_seen();
    assert_eq!(seen.route, "static");
    assert_eq!(seen.path, "/static/app.css");
    assert_eq!(seen.upstream_path, "/app.css");
    // Prefixes match at segment boundaries: /staticfiles is the catch-all's.
    h.get("/staticfiles", &[]).await;
    assert_eq!(h.one_seen().route, "pub");
}

#[tokio::test]
async fn ambiguous_paths_stop_at_routing_with_400() {
    let h = harness();
    for p in [
        "/%2e%2e/admin",
        "/a%2Fb",
        "/a%5cb",
        "/public/..;/admin",
        "/../x",
    ] {
        let r = h.get(p, &[]).await;
        assert_eq!(r.status(), 400, "{p}");
        assert_eq!(header(&r, "content-type"), "application/json", "{p}");
        h.nothing_seen();
    }
    // Dot segments that stay under the root are resolved, and the route is chosen (and
    // the upstream addressed) by the result: here the login route, not the public one.
    assert_eq!(h.get("/static/%2e%2e/admin", &[]).await.status(), 401);
    h.nothing_seen();
}

#[tokio::test]
async fn host_routes_match_only_their_host() {
    let h = harness();
    let t = token(claims("svc", "read"));
    let auth = format!("Bearer {t}");
    h.get(
        "/api/items",
        &[("host", "API.test:8443"), ("authorization", &auth)],
    )
    .await;
    assert_eq!(h.one_seen().route, "api");
    // Another host: the catch-all public route, never the bearer route's upstream.
    h.get("/api/items", &[("host", "other.test")]).await;
    assert_eq!(h.one_seen().route, "pub");
}

#[tokio::test]
async fn head_limits_and_bad_hosts_are_refused() {
    let h = harness();
    let long = format!("/{}", "a".repeat(300));
    assert_eq!(h.get(&long, &[]).await.status(), 414);
    let many: Vec<(String, String)> = (0..45).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(h.get("/", &many).await.status(), 431);
    let mut twice = request(Method::GET, "/", &[]);
    twice
        .headers_mut()
        .append("host", HeaderValue::from_static("evil.test"));
    assert_eq!(h.send(twice).await.status(), 400);
    let no_host = Request::builder().uri("/").body(()).unwrap();
    assert_eq!(h.send(no_host).await.status(), 400);
    assert_eq!(
        h.send(request(Method::CONNECT, "/", &[])).await.status(),
        400
    );
    h.nothing_seen();
}

#[tokio::test]
async fn own_endpoints_answer_before_any_route() {
    let h = harness();
    let r = h.get("/oauth2/ping", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(h.get("/oauth2/nope", &[]).await.status(), 404);
    // Forward auth from a client that is not a trusted proxy: denied, never guessed.
    let r = h
        .get("/oauth2/auth", &[("x-forwarded-uri", "/static/x")])
        .await;
    assert_eq!(r.status(), 403);
    // From a trusted proxy, the named path's route decides.
    let r = h
        .send_from(
            TRUSTED,
            request(
                Method::GET,
                "/oauth2/auth",
                &[("x-forwarded-uri", "/static/x")],
            ),
        )
        .await;
    assert_eq!(r.status(), 202);
    let r = h
        .send_from(
            TRUSTED,
            request(
                Method::GET,
                "/oauth2/auth",
                &[("x-forwarded-uri", "/admin")],
            ),
        )
        .await;
    assert_eq!(r.status(), 401, "forward auth never redirects");
    h.nothing_seen();
}

// ---- hygiene -------------------------------------------------------------------------------

#[tokio::test]
async fn identity_and_forwarding_headers_from_clients_never_pass() {
    let h = harness();
    h.get(
        "/page",
        &[
            ("x-auth-request-user", "admin"),
            ("X_Auth_Request_Email", "admin@evil"),
            ("x-forwarded-user", "admin"),
            ("remote-user", "admin"),
            ("x-original-url", "/admin"),
            ("x-http-method-override", "DELETE"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("accept", "*/*"),
        ],
    )
    .await;
    let seen = h.one_seen().headers;
    for gone in [
        "x-auth-request-user",
        "x_auth_request_email",
        "x-forwarded-user",
        "remote-user",
        "x-original-url",
        "x-http-method-override",
        "forwarded",
        "connection",
        "x-secret",
    ] {
        assert!(!seen.contains_key(gone), "{gone} reached the upstream");
    }
    assert_eq!(seen["x-forwarded-for"], "203.0.113.9");
    assert_eq!(seen["x-real-ip"], "203.0.113.9");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "app.test");
    assert_eq!(seen["accept"], "*/*");
}

#[tokio::test]
async fn trusted_proxies_forwarding_headers_are_kept_and_appended() {
    let h = harness();
    h.send_from(
        TRUSTED,
        request(
            Method::GET,
            "/",
            &[
                ("x-forwarded-for", "198.51.100.1"),
                ("x-forwarded-proto", "https"),
            ],
        ),
    )
    .await;
    let seen = h.one_seen().headers;
    assert_eq!(seen["x-forwarded-for"], "198.51.100.1, 10.0.12.7");
    assert_eq!(seen["x-forwarded-proto"], "https");
}

/// Other proxies' identity headers, client-IP headers and rewrite hints (issue 9).
#[tokio::test]
async fn foreign_identity_client_ip_and_rewrite_headers() {
    let h = harness();
    let sent = [
        ("x-user", "admin"),
        ("x-email", "admin@evil"),
        ("oidc_claim_email", "admin@evil"),
        ("OIDC_access_token", "t"),
        ("x-pomerium-claim-groups", "admins"),
        ("cf-access-authenticated-user-email", "a@evil"),
        ("x-goog-authenticated-user-email", "a@evil"),
        ("x-ms-client-principal-name", "admin"),
        ("x-consumer-username", "admin"),
        ("x-webauth-user", "admin"),
        ("x-legacy-user", "admin"),
        ("x-acme-role", "admin"),
        ("true-client-ip", "1.2.3.4"),
        ("cf-connecting-ip", "1.2.3.4"),
        ("x-client-ip", "1.2.3.4"),
        ("x-cluster-client-ip", "1.2.3.4"),
        ("fastly-client-ip", "1.2.3.4"),
        ("x-forwarded-client-cert", "Hash=abc"),
        ("x-envoy-original-path", "/admin"),
        ("x-original-path", "/admin"),
        ("accept", "*/*"),
    ];
    // From a client: all of them gone.
    h.get("/page", &sent).await;
    let seen = h.one_seen().headers;
    for (name, _) in &sent[..sent.len() - 1] {
        assert!(!seen.contains_key(*name), "{name} reached the upstream");
    }
    assert_eq!(seen["accept"], "*/*");
    // From a trusted proxy: client-IP and named foreign headers kept, the rest gone.
    h.send_from(TRUSTED, request(Method::GET, "/page", &sent))
        .await;
    let seen = h.one_seen().headers;
    for kept in [
        "x-consumer-username",
        "x-webauth-user",
        "x-legacy-user",
        "true-client-ip",
        "cf-connecting-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "fastly-client-ip",
        "x-forwarded-client-cert",
    ] {
        assert!(
            seen.contains_key(kept),
            "{kept} from a trusted proxy was dropped"
        );
    }
    for gone in [
        "x-user",
        "x-email",
        "oidc_claim_email",
        "oidc_access_token",
        "x-pomerium-claim-groups",
        "cf-access-authenticated-user-email",
        "x-ms-client-principal-name",
        "x-acme-role",
        "x-envoy-original-path",
        "x-original-path",
        "x-auth-request-user",
    ] {
        assert!(
            !seen.contains_key(gone),
            "{gone} from a trusted proxy reached the upstream"
        );
    }
}

#[tokio::test]
async fn a_request_id_named_in_connection_is_not_the_clients() {
    let h = harness();
    let r = h
        .get(
            "/",
            &[
                ("connection", "x-request-id"),
                ("x-request-id", "chosen-by-client"),
            ],
        )
        .await;
    let id = header(&r, "x-request-id").to_string();
    assert_ne!(id, "chosen-by-client");
    assert_eq!(id.len(), 32);
    assert_eq!(h.one_seen().headers["x-request-id"], id.as_str());
}

#[tokio::test]
async fn query_tokens_on_token_routes() {
    let h = harness();
    let auth = format!("Bearer {}", token(claims("svc", "read")));
    // A token in the header and another in the query: 400, nothing forwarded.
    let r = h
        .get(
            "/api/x?access_token=abc",
            &[("host", "api.test"), ("authorization", &auth)],
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(header(&r, "www-authenticate").contains("invalid_request"));
    h.nothing_seen();
    // A query token alone is no credential (401) and is never forwarded.
    let r = h
        .get("/api/x?a=1&access%5Ftoken=abc", &[("host", "api.test")])
        .await;
    assert_eq!(r.status(), 401);
    h.nothing_seen();
    // With a header token, the query without it reaches the upstream.
    let staff = h.session_cookie("alice", &["staff"]).await;
    let r = h
        .get("/mixed/x?a=1&access_token=abc&b=2", &[("cookie", &staff)])
        .await;
    assert_eq!(r.status(), 200);
    let seen = h.one_seen();
    assert_eq!(seen.route, "mixed");
    assert_eq!(seen.query.as_deref(), Some("a=1&b=2"));
    // Public routes leave the app's own parameters alone.
    h.get("/page?access_token=mine", &[]).await;
    assert_eq!(h.one_seen().query.as_deref(), Some("access_token=mine"));
}

#[tokio::test]
async fn request_ids_go_upstream_and_back() {
    let h = harness();
    let r = h.get("/", &[("x-request-id", "trace-me-1")]).await;
    assert_eq!(header(&r, "x-request-id"), "trace-me-1");
    assert_eq!(h.one_seen().headers["x-request-id"], "trace-me-1");
    let r = h.get("/", &[("x-request-id", "not plain!")]).await;
    let id = header(&r, "x-request-id").to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(h.one_seen().headers["x-request-id"], id.as_str());
    // Refusals carry the id too, in the header and the body.
    let r = h.get("/a%2Fb", &[("x-request-id", "refused-1")]).await;
    assert_eq!(header(&r, "x-request-id"), "refused-1");
}

// ---- auth decisions ------------------------------------------------------------------------

#[tokio::test]
async fn bearer_route_refusals_are_json_challenges() {
    let h = harness();
    let api = [("host", "api.test")];
    let r = h.get("/api/x", &api).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        header(&r, "www-authenticate"),
        "Bearer realm=\"portcullis\""
    );
    let r = h
        .get(
            "/api/x",
            &[("host", "api.test"), ("authorization", "Bearer")],
        )
        .await;
    assert_eq!(r.status(), 400);
    let mut bad = token(claims("svc", "read"));
    bad.push('x');
    let auth = format!("Bearer {bad}");
    let r = h
        .get(
            "/api/x",
            &[
                ("host", "api.test"),
                ("authorization", &auth),
                ("accept", "text/html"),
            ],
        )
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "content-type"), "application/json");
    assert!(header(&r, "www-authenticate").contains("error=\"invalid_token\""));
    h.nothing_seen();
}

#[tokio::test]
async fn bearer_token_passes_with_identity_headers_and_no_authorization() {
    let h = harness();
    let auth = format!("Bearer {}", token(claims("svc-1", "read write")));
    let r = h
        .get("/api/x", &[("host", "api.test"), ("authorization", &auth)])
        .await;
    assert_eq!(r.status(), 200);
    let seen = h.one_seen().headers;
    assert_eq!(seen["x-auth-request-user"], "svc-1");
    assert_eq!(seen["x-auth-request-scopes"], "read write");
    assert!(!seen.contains_key("authorization"));
}

#[tokio::test]
async fn scopes_and_method_scopes_are_enforced() {
    let h = harness();
    let auth = format!("Bearer {}", token(claims("svc", "write")));
    let r = h
        .get("/api/x", &[("host", "api.test"), ("authorization", &auth)])
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        header(&r, "www-authenticate"),
        "Bearer realm=\"portcullis\", error=\"insufficient_scope\", scope=\"read\""
    );
    let auth = format!("Bearer {}", token(claims("svc", "read")));
    let r = h
        .send(request(
            Method::DELETE,
            "/api/x",
            &[("host", "api.test"), ("authorization", &auth)],
        ))
        .await;
    assert_eq!(r.status(), 403);
    assert!(header(&r, "www-authenticate").contains("scope=\"read admin\""));
    h.nothing_seen();
}

#[tokio::test]
async fn cors_preflight_passes_only_where_allowed() {
    let h = harness();
    let preflight = [
        ("host", "api.test"),
        ("origin", "https://web.test"),
        ("access-control-request-method", "POST"),
    ];
    let r = h.send(request(Method::OPTIONS, "/api/x", &preflight)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(h.one_seen().route, "api");
    // Without the preflight headers an OPTIONS is an ordinary request: a token is needed.
    let r = h
        .send(request(Method::OPTIONS, "/api/x", &[("host", "api.test")]))
        .await;
    assert_eq!(r.status(), 401);
    h.nothing_seen();
}

#[tokio::test]
async fn login_route_redirects_navigations_and_refuses_api_calls() {
    let h = harness();
    let r = h
        .get(
            "/admin/users?page=2",
            &[("accept", "text/html"), ("sec-fetch-mode", "navigate")],
        )
        .await;
    assert_eq!(r.status(), 302);
    assert_eq!(
        header(&r, "location"),
        "/oauth2/start?rd=%2Fadmin%2Fusers%3Fpage%3D2"
    );
    let r = h
        .get(
            "/admin/users",
            &[
                ("accept", "text/html"),
                ("x-requested-with", "XMLHttpRequest"),
            ],
        )
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "content-type"), "application/json");
    h.nothing_seen();
}

#[tokio::test]
async fn session_passes_by_group_and_the_proxy_cookie_stays_behind() {
    let h = harness();
    let staff = h.session_cookie("alice", &["staff"]).await;
    let cookie = format!("theme=dark; {staff}");
    let r = h.get("/admin", &[("cookie", &cookie)]).await;
    assert_eq!(r.status(), 200);
    let seen = h.one_seen().headers;
    assert_eq!(seen["x-auth-request-user"], "alice");
    assert_eq!(seen["cookie"], "theme=dark");
    // Not in the group: 403 page for a browser, nothing forwarded.
    let other = h.session_cookie("bob", &["guests"]).await;
    let r = h
        .get("/admin", &[("cookie", &other), ("accept", "text/html")])
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&r, "x-frame-options"), "DENY");
    assert!(header(&r, "content-security-policy").contains("frame-ancestors 'none'"));
    // The page says who is signed in and offers the way out.
    let page = body_text(r).await;
    assert!(page.contains("signed in as <strong>bob</strong>"), "{page}");
    assert!(page.contains("href=\"/oauth2/sign_out\""), "{page}");
    assert!(
        page.contains("href=\"/oauth2/sign_out?rd=%2Fadmin\""),
        "{page}"
    );
    assert!(page.contains("You are not allowed"), "{page}");
    h.nothing_seen();
    // An API call gets JSON without any of it.
    let r = h
        .get(
            "/admin",
            &[("cookie", &other), ("accept", "application/json")],
        )
        .await;
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = serde_json::from_str(&body_text(r).await).unwrap();
    assert_eq!(v["error"], "access_denied");
    assert!(!v.to_string().contains("sign_out"));
    // Public routes never see the proxy's cookie either.
    h.get("/page", &[("cookie", &cookie)]).await;
    assert_eq!(h.one_seen().headers["cookie"], "theme=dark");
}

#[tokio::test]
async fn either_route_judges_a_token_alone_and_else_the_session() {
    let h = harness();
    let staff = h.session_cookie("alice", &["staff"]).await;
    // A bad token is 401 even with a good session: no fallback.
    let r = h
        .get(
            "/mixed",
            &[("cookie", &staff), ("authorization", "Bearer not.a.jwt")],
        )
        .await;
    assert_eq!(r.status(), 401);
    h.nothing_seen();
    let r = h.get("/mixed", &[("cookie", &staff)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(h.one_seen().headers["x-auth-request-user"], "alice");
}

#[tokio::test]
async fn either_route_counts_a_dpop_authorization_as_a_token() {
    use crate::testutil::TestKey;
    use crate::token::dpop::{sha256_b64, thumbprint};
    let h = harness();
    let staff = h.session_cookie("alice", &["staff"]).await;
    let key = TestKey::p256();
    let mut jwk = key.jwk("k");
    jwk.as_object_mut().unwrap().remove("kid");
    let jkt = thumbprint(jwk.as_object().unwrap()).unwrap();
    let mut c = claims("machine", "read");
    c["cnf"] = json!({ "jkt": jkt });
    let t = token(c);
    let proof = |htu: &str, jti: &str| {
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        let claims = json!({"jti": jti, "htm": "GET", "htu": htu, "iat": now_secs(),
            "ath": sha256_b64(t.as_bytes())});
        forge(&header, &claims, |m| key.sign("ES256", m))
    };
    let auth = format!("DPoP {t}");
    // A good proof: judged on the token (not the session), proof and token not forwarded.
    let p = proof("https://app.test/mixed", "one");
    let r = h
        .get(
            "/mixed",
            &[("cookie", &staff), ("authorization", &auth), ("dpop", &p)],
        )
        .await;
    assert_eq!(r.status(), 200);
    let seen = h.one_seen();
    assert_eq!(seen.headers["x-auth-request-user"], "machine");
    assert!(!seen.headers.contains_key("dpop"));
    assert!(!seen.headers.contains_key("authorization"));
    // A bad proof is 401 even with a good session: no fallback.
    let p = proof("https://app.test/other", "two");
    let r = h
        .get(
            "/mixed",
            &[("cookie", &staff), ("authorization", &auth), ("dpop", &p)],
        )
        .await;
    assert_eq!(r.status(), 401);
    assert!(header(&r, "www-authenticate")
        .starts_with("DPoP realm=\"portcullis\", error=\"invalid_dpop_proof\""));
    h.nothing_seen();
    // The token with the Bearer scheme: refused, it is bound.
    let r = h
        .get(
            "/mixed",
            &[
                ("cookie", &staff),
                ("authorization", &format!("Bearer {t}")),
            ],
        )
        .await;
    assert_eq!(r.status(), 401);
    h.nothing_seen();
}

#[tokio::test]
async fn forward_auth_checks_a_dpop_proof_against_the_original_url() {
    use crate::testutil::TestKey;
    use crate::token::dpop::{sha256_b64, thumbprint};
    let h = harness();
    let key = TestKey::p256();
    let mut jwk = key.jwk("k");
    jwk.as_object_mut().unwrap().remove("kid");
    let jkt = thumbprint(jwk.as_object().unwrap()).unwrap();
    let mut c = claims("machine", "read");
    c["cnf"] = json!({ "jkt": jkt });
    let t = token(c);
    let auth = format!("DPoP {t}");
    let proof = |htu: &str, jti: &str| {
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        let claims = json!({"jti": jti, "htm": "GET", "htu": htu, "iat": now_secs(),
            "ath": sha256_b64(t.as_bytes())});
        forge(&header, &claims, |m| key.sign("ES256", m))
    };
    let h = &h;
    let check = |htu: &str, jti: &str| {
        let p = proof(htu, jti);
        let auth = auth.clone();
        async move {
            h.send_from(
                TRUSTED,
                request(
                    Method::GET,
                    "/oauth2/auth",
                    &[
                        ("x-forwarded-uri", "/mixed?page=2"),
                        ("x-forwarded-method", "GET"),
                        ("authorization", &auth),
                        ("dpop", &p),
                    ],
                ),
            )
            .await
            .status()
            .as_u16()
        }
    };
    // The original URL (public_url's origin and the forwarded path, no query), with or
    // without the scheme's default port.
    assert_eq!(check("https://app.test/mixed", "a").await, 202);
    assert_eq!(check("https://app.test:443/mixed", "b").await, 202);
    // Not the subrequest's own URL, nor another port or scheme.
    assert_eq!(check("https://app.test/oauth2/auth", "c").await, 401);
    assert_eq!(check("https://app.test:8443/mixed", "d").await, 401);
    assert_eq!(check("http://app.test/mixed", "e").await, 401);
    h.nothing_seen();
}

#[tokio::test]
async fn certificate_bound_tokens_need_the_connections_certificate_and_double_bindings_both() {
    use crate::testutil::TestKey;
    use crate::token::dpop::{sha256_b64, thumbprint};
    let h = harness();
    let (x, y) = (sha256_b64(b"certificate x"), sha256_b64(b"certificate y"));
    // Bound to a certificate only: the Bearer scheme, over a connection with it.
    let mut c = claims("machine", "read");
    c["cnf"] = json!({ "x5t#S256": x });
    let t = token(c);
    let auth = format!("Bearer {t}");
    let r = h
        .get_with_cert(&x, "/mixed", &[("authorization", &auth)])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(h.one_seen().headers["x-auth-request-user"], "machine");
    for r in [
        h.get_with_cert(&y, "/mixed", &[("authorization", &auth)])
            .await,
        h.get("/mixed", &[("authorization", &auth)]).await,
    ] {
        assert_eq!(r.status(), 401);
        let www = header(&r, "www-authenticate");
        assert!(
            www.starts_with("Bearer realm=\"portcullis\", error=\"invalid_token\"")
                && www.contains("certificate binding failed"),
            "{www}"
        );
    }
    h.nothing_seen();
    // Bound to a DPoP key and a certificate: the proof and the certificate, both.
    let key = TestKey::p256();
    let mut jwk = key.jwk("k");
    jwk.as_object_mut().unwrap().remove("kid");
    let jkt = thumbprint(jwk.as_object().unwrap()).unwrap();
    let mut c = claims("machine", "read");
    c["cnf"] = json!({ "jkt": jkt, "x5t#S256": x });
    let t = token(c);
    let proof = |jti: &str| {
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        let claims = json!({"jti": jti, "htm": "GET", "htu": "https://app.test/mixed",
            "iat": now_secs(), "ath": sha256_b64(t.as_bytes())});
        forge(&header, &claims, |m| key.sign("ES256", m))
    };
    let auth = format!("DPoP {t}");
    let p = proof("one");
    let r = h
        .get_with_cert(&x, "/mixed", &[("authorization", &auth), ("dpop", &p)])
        .await;
    assert_eq!(r.status(), 200);
    h.one_seen();
    let p = proof("two");
    let r = h
        .get_with_cert(&y, "/mixed", &[("authorization", &auth), ("dpop", &p)])
        .await;
    assert_eq!(r.status(), 401);
    let www = header(&r, "www-authenticate");
    assert!(
        www.starts_with("DPoP realm=\"portcullis\", error=\"invalid_token\"")
            && www.contains("certificate binding failed"),
        "{www}"
    );
    // With the certificate but as Bearer (no proof of the key): refused.
    let r = h
        .get_with_cert(&x, "/mixed", &[("authorization", &format!("Bearer {t}"))])
        .await;
    assert_eq!(r.status(), 401);
    h.nothing_seen();
}

// ---- error rendering -----------------------------------------------------------------------

#[tokio::test]
async fn refusals_render_by_accept_with_the_request_id() {
    let h = harness();
    let r = h
        .get(
            "/a%00b",
            &[("accept", "text/html"), ("x-request-id", "html-1")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&r, "cache-control"), "no-store");
    let body = body_text(r).await;
    assert!(body.contains("html-1"), "{body}");
    let r = h.get("/a%00b", &[("x-request-id", "json-1")]).await;
    let v: serde_json::Value = serde_json::from_str(&body_text(r).await).unwrap();
    assert_eq!(v["error"], "invalid_request");
    assert_eq!(v["request_id"], "json-1");
}

#[tokio::test]
async fn login_error_pages_offer_to_start_again_and_speak_in_sentences() {
    let h = harness();
    let r = h
        .get(
            "/oauth2/callback?state=forged&code=x",
            &[("x-request-id", "cb-1")],
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&r, "x-frame-options"), "DENY");
    let page = body_text(r).await;
    assert!(
        page.contains("<a href=\"/oauth2/start\">Start again</a>"),
        "{page}"
    );
    assert!(page.contains("cb-1"), "{page}");
    // Request-path pages are sentences too, though their JSON descriptions are RFC 6750
    // fragments.
    let r = h.get("/a%00b", &[("accept", "text/html")]).await;
    let page = body_text(r).await;
    let message = page
        .split("</h1><p>")
        .nth(1)
        .unwrap()
        .split("</p>")
        .next()
        .unwrap();
    assert!(message.starts_with(char::is_uppercase), "{message}");
    assert!(message.ends_with('.'), "{message}");
}

async fn body_text(r: Resp) -> String {
    use http_body_util::BodyExt;
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

// ---- the path-reading rule ---------------------------------------------------------------

const READING_ROUTES: &str = r#"
[[upstream]]
name = "other"
url = "http://127.0.0.1:10"

[[upstream]]
name = "exact"
url = "http://127.0.0.1:11"
path_readings = "exact"

[[route]]
name = "admin"
path = "/admin"
upstream = "app"
auth = "login"
allow = { groups = ["staff"] }

[[route]]
name = "api-admin"
path = "/api/admin"
upstream = "app"
auth = "bearer"
scopes = ["admin"]

[[route]]
name = "api"
path = "/api"
upstream = "app"
auth = "bearer"
scopes = ["read"]

[[route]]
name = "files"
path = "/files"
upstream = "exact"
auth = "public"

[[route]]
name = "internal"
path = "/internal"
upstream = "other"
auth = "public"

[[route]]
name = "pub"
path = "/"
upstream = "app"
auth = "public"
"#;

/// Every route that any common reading of a path selects must let the request through
/// (README "Path readings"); readings that select another upstream or auth mode are 400.
#[tokio::test]
async fn path_readings_table() {
    let h = harness_with(READING_ROUTES);
    let read = format!("Bearer {}", token(claims("svc", "read")));
    let both = format!("Bearer {}", token(claims("svc", "read admin")));
    // (path, Authorization, status, the route that got it)
    let cases: &[(&str, &str, u16, Option<&str>)] = &[
        ("/admin/users", "", 401, None),
        ("/admin;x/users", "", 401, None),
        ("/ADMIN/users", "", 400, None),
        ("/Admin", "", 400, None),
        ("/admin%20/users", "", 400, None),
        ("/admin./users", "", 400, None),
        ("/admin%3Bx/users", "", 400, None),
        ("/admin%3bx/users", "", 400, None),
        ("/public/..%3B/admin", "", 400, None),
        ("/public/..%20/admin", "", 400, None),
        ("/public/%252e%252e/admin", "", 400, None),
        ("/public/%252E%252E/admin", "", 400, None),
        ("/public/%252f..%252fadmin", "", 400, None),
        ("/public/..;/admin", "", 400, None),
        ("/admin%2Fusers", "", 400, None),
        ("/x%255c", "", 400, None),
        ("/x%2500", "", 400, None),
        ("/x%2523", "", 400, None),
        ("/x%2541", "", 200, Some("pub")),
        ("/hello", "", 200, Some("pub")),
        ("/Hello", "", 200, Some("pub")),
        ("/HELLO%20./", "", 200, Some("pub")),
        ("/api/items", &read, 200, Some("api")),
        ("/api/ADMIN/x", &read, 403, None),
        ("/api/admin/x", &read, 403, None),
        ("/api/admin%20/x", &read, 403, None),
        ("/api/admin./x", &read, 403, None),
        ("/api/admin;p/x", &read, 403, None),
        ("/api/admin%3Bp/x", &read, 403, None),
        ("/api/%2561dmin/x", &read, 403, None),
        ("/api/items", &both, 200, Some("api")),
        ("/api/ADMIN/x", &both, 200, Some("api")),
        ("/api/admin%3Bp/x", &both, 200, Some("api")),
        ("/files/ADMIN", "", 200, Some("files")),
        ("/files/..%3B/x", "", 200, Some("files")),
        ("/FILES/x", "", 400, None),
        ("/internal/x", "", 200, Some("internal")),
        ("/INTERNAL/x", "", 400, None),
        ("/Internal%20/x", "", 400, None),
    ];
    for (path, auth, status, route) in cases {
        let mut headers = vec![("accept", "application/json")];
        if !auth.is_empty() {
            headers.push(("authorization", auth));
        }
        let r = h.get(path, &headers).await;
        assert_eq!(r.status().as_u16(), *status, "{path} ({auth:.12})");
        let seen = h.seen.take();
        match route {
            Some(name) => {
                assert_eq!(seen.len(), 1, "{path}: forwarded once");
                assert_eq!(seen[0].route, *name, "{path}");
            }
            None => assert!(seen.is_empty(), "{path} reached {:?}", seen[0].route),
        }
    }
}

/// Forward auth judges the URI it is given by the same rule.
#[tokio::test]
async fn forward_auth_applies_the_path_reading_rule() {
    let h = harness_with(READING_ROUTES);
    for (uri, status) in [("/hello", 202), ("/ADMIN/x", 400), ("/admin/x", 401)] {
        let r = h
            .send_from(
                TRUSTED,
                request(Method::GET, "/oauth2/auth", &[("x-forwarded-uri", uri)]),
            )
            .await;
        assert_eq!(r.status().as_u16(), status, "{uri}");
    }
    h.nothing_seen();
}

// ---- operating: metrics and the access log ---------------------------------------------

/// The value of the sample `line` (name and labels, exactly) in `/metrics`, or 0.
fn sample(metrics: &Metrics, line: &str) -> u64 {
    let text = metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(line).and_then(|v| v.strip_prefix(' ')))
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn auth_decisions_and_login_steps_are_counted_with_their_reasons() {
    let h = harness();
    let api = |auth: &str| {
        request(
            Method::GET,
            "/api/x",
            &[("host", "api.test"), ("authorization", auth)],
        )
    };
    let good = format!("Bearer {}", token(claims("svc", "read")));
    let weak = format!("Bearer {}", token(claims("svc", "write")));
    let mut expired = claims("svc", "read");
    expired["exp"] = json!(now_secs() - 3600);
    let expired = format!("Bearer {}", token(expired));
    h.get("/api/x", &[("host", "api.test")]).await;
    for auth in [&good, &good, &weak, &expired] {
        h.send(api(auth)).await;
    }
    let guest = h.session_cookie("bob", &["guests"]).await;
    h.get("/admin", &[("cookie", &guest)]).await;
    h.get("/admin", &[("accept", "text/html")]).await;
    // Forward auth: from outside trusted_proxies (no route judged), and a pass.
    h.get("/oauth2/auth", &[("x-forwarded-uri", "/page")]).await;
    let r = h
        .send_from(
            TRUSTED,
            request(Method::GET, "/oauth2/auth", &[("x-forwarded-uri", "/page")]),
        )
        .await;
    assert_eq!(r.status(), 202);
    // Login steps: a callback without state, twice.
    h.get("/oauth2/callback?code=x", &[]).await;
    h.get("/oauth2/callback?code=y", &[]).await;

    let m = &h.metrics;
    let d = |labels: &str| sample(m, &format!("portcullis_auth_decisions_total{{{labels}}}"));
    assert_eq!(
        d(r#"route="api",mode="bearer",result="allow",reason="-""#),
        2
    );
    assert_eq!(
        d(r#"route="api",mode="bearer",result="deny",reason="no_token""#),
        1
    );
    assert_eq!(
        d(r#"route="api",mode="bearer",result="deny",reason="insufficient_scope""#),
        1
    );
    assert_eq!(
        d(r#"route="api",mode="bearer",result="deny",reason="invalid_token:expired""#),
        1
    );
    assert_eq!(
        d(r#"route="admin",mode="session",result="deny",reason="policy:group""#),
        1
    );
    assert_eq!(
        d(r#"route="admin",mode="session",result="deny",reason="no_session""#),
        1
    );
    assert_eq!(
        d(r#"route="-",mode="forward_auth",result="deny",reason="policy:forward_auth_untrusted""#),
        1
    );
    // The forward-auth pass is the checked route's decision (and request).
    assert_eq!(
        d(r#"route="pub",mode="public",result="allow",reason="-""#),
        1
    );
    assert_eq!(
        sample(m, r#"portcullis_requests_total{route="pub",status="2xx"}"#),
        1
    );
    assert_eq!(
        sample(m, r#"portcullis_login_callbacks_total{outcome="no_state"}"#),
        2
    );
    assert_eq!(
        sample(m, r#"portcullis_login_starts_total{outcome="ok"}"#),
        0
    );
    let text = m.render();
    assert!(
        text.contains(&format!(
            "portcullis_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    // Buckets reach the default 60 s timeouts.
    assert!(text.contains(r#"portcullis_request_duration_seconds_bucket{route="api",le="60"} "#));
}

/// A writer into a shared buffer, for a log subscriber of one test.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuf {
    /// The access lines written so far, as JSON field maps.
    fn access_lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["target"] == "access")
            .map(|v| v["fields"].clone())
            .collect()
    }
}

#[tokio::test]
async fn access_lines_name_the_request_the_client_and_why_it_was_refused() {
    let buf = LogBuf::default();
    let subscriber = {
        let buf = buf.clone();
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || buf.clone())
            .finish()
    };
    // tracing-core judges a callsite by the registering thread's own subscriber alone
    // while just one dispatcher exists: a test thread without one would then disable the
    // access line's callsites for every thread. A second, idle dispatcher makes it ask
    // all of them.
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = harness();
    let good = format!("Bearer {}", token(claims("svc-7", "read")));
    let r = h
        .get(
            "/api//x/../y?access_key=secret-q",
            &[
                ("host", "api.test"),
                ("authorization", &good),
                ("user-agent", "probe/1.0"),
            ],
        )
        .await;
    body_text(r).await;
    let r = h.get("/api/x", &[("host", "api.test")]).await;
    body_text(r).await;
    let r = h
        .send_from(
            TRUSTED,
            request(
                Method::GET,
                "/oauth2/auth",
                &[
                    ("x-forwarded-uri", "/admin/z"),
                    ("x-forwarded-for", "198.51.100.4, 192.0.2.8"),
                ],
            ),
        )
        .await;
    body_text(r).await;
    let r = h.get("/nowhere/../x%00", &[]).await;
    body_text(r).await;

    let lines = buf.access_lines();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let ok = &lines[0];
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["host"], "api.test");
    assert_eq!(ok["path"], "/api/y", "canonical, never the query");
    assert_eq!(ok["version"], "HTTP/1.1");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["route"], "api");
    assert_eq!(ok["user"], "svc-7");
    assert_eq!(ok["client"], "203.0.113.9");
    assert_eq!(ok["user_agent"], "probe/1.0");
    assert_eq!(ok["bytes_out"], "upstream".len());
    assert!(ok["total_ms"].as_f64().is_some());
    assert!(ok.get("reason").is_none(), "{ok}");
    let text = format!("{lines:?}");
    assert!(!text.contains("secret-q") && !text.contains(&good[7..]));
    assert_eq!(lines[1]["status"], 401);
    assert_eq!(lines[1]["reason"], "no_token");
    // Forward auth: the checked route; the client behind the trusted proxy.
    let fa = &lines[2];
    assert_eq!(fa["path"], "/oauth2/auth");
    assert_eq!(fa["route"], "admin");
    assert_eq!(fa["status"], 401);
    assert_eq!(fa["reason"], "no_session");
    assert_eq!(fa["client"], "192.0.2.8");
    // Refused before any route: a path all the same.
    assert_eq!(lines[3]["status"], 400);
    assert_eq!(lines[3]["route"], "-");
    assert_eq!(lines[3]["reason"], "bad_request");
}

// ---- identity assertion ---------------------------------------------------------------

const ASSERTING: &str = r#"
[[route]]
name = "api"
path = "/api"
upstream = "app"
auth = "bearer"
assertion = true

[[route]]
name = "admin"
path = "/admin"
upstream = "app"
auth = "login"
assertion = true

[[route]]
name = "mixed"
path = "/mixed"
upstream = "app"
auth = "either"
assertion = true

[[route]]
name = "plain"
path = "/plain"
upstream = "app"
auth = "bearer"

[[route]]
name = "pub"
path = "/"
upstream = "app"
auth = "public"
"#;

/// The claims of a JWT (not verified: the unit tests of `assertion` verify).
fn jwt_claims(jwt: &str) -> serde_json::Value {
    use base64::Engine as _;
    let part = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The claims of the assertion on the one request forwarded since the last look.
fn forwarded_assertion(h: &Harness) -> serde_json::Value {
    jwt_claims(
        h.one_seen().headers["x-portcullis-assertion"]
            .to_str()
            .unwrap(),
    )
}

#[tokio::test]
async fn asserting_routes_replace_client_assertions_with_their_own() {
    let h = harness_with(ASSERTING);
    let bearer = format!("Bearer {}", token(claims("alice", "read")));
    let forged = [
        ("x-portcullis-assertion", "forged"),
        ("X_Portcullis_Assertion", "forged"),
    ];

    // Bearer route: the client's copies are gone, the proxy's assertion is there.
    let mut hs = vec![("authorization", bearer.as_str())];
    hs.extend_from_slice(&forged);
    let r = h.get("/api/x", &hs).await;
    assert_eq!(r.status(), StatusCode::OK);
    let seen = h.one_seen();
    let all: Vec<_> = seen
        .headers
        .get_all("x-portcullis-assertion")
        .iter()
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(!seen.headers.contains_key("x_portcullis_assertion"));
    let jwt = all[0].to_str().unwrap().to_string();
    let c = jwt_claims(&jwt);
    assert_eq!(c["iss"], "https://app.test");
    assert_eq!(c["aud"], "api");
    assert_eq!(c["sub"], "alice");
    // The same identity again: the cached assertion (a new ECDSA signature would differ).
    h.get("/api/y", &[("authorization", bearer.as_str())]).await;
    assert_eq!(h.one_seen().headers["x-portcullis-assertion"], jwt.as_str());

    // Login route: the session's identity, aud = the route's name.
    let cookie = h.session_cookie("bob", &["staff"]).await;
    let r = h.get("/admin/x", &[("cookie", &cookie), forged[0]]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let c = forwarded_assertion(&h);
    assert_eq!(
        (c["sub"].as_str(), c["aud"].as_str()),
        (Some("bob"), Some("admin"))
    );
    assert_eq!(c["groups"], json!(["staff"]));

    // Either route: by token, and by session, each its own identity, aud = "mixed".
    for (hs, sub) in [
        (vec![("authorization", bearer.as_str()), forged[0]], "alice"),
        (vec![("cookie", cookie.as_str()), forged[0]], "bob"),
    ] {
        let r = h.get("/mixed/x", &hs).await;
        assert_eq!(r.status(), StatusCode::OK);
        let c = forwarded_assertion(&h);
        assert_eq!(
            (c["sub"].as_str(), c["aud"].as_str()),
            (Some(sub), Some("mixed"))
        );
    }

    // Routes without assertion, public or not: the client's copy is stripped, none added.
    let mut hs = vec![("authorization", bearer.as_str())];
    hs.extend_from_slice(&forged);
    h.get("/plain/x", &hs).await;
    h.get("/pub/x", &forged).await;
    for seen in h.seen.take() {
        assert!(
            !seen.headers.contains_key("x-portcullis-assertion"),
            "{}",
            seen.route
        );
        assert!(
            !seen.headers.contains_key("x_portcullis_assertion"),
            "{}",
            seen.route
        );
    }

    // The keys: a JWKS with the signing key's kid, answered before any route.
    let r = h.get("/.well-known/portcullis/jwks.json", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), "application/jwk-set+json");
    h.nothing_seen();
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap()
        .to_bytes();
    let jwks: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let kid = {
        use base64::Engine as _;
        let head = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.split('.').next().unwrap())
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&head).unwrap()["kid"].clone()
    };
    assert_eq!(jwks["keys"][0]["kid"], kid);
    // Not under the prefix, and only where assertions are on.
    let r = h.get("/oauth2/.well-known/portcullis/jwks.json", &[]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let plain = harness();
    plain.get("/.well-known/portcullis/jwks.json", &[]).await;
    assert_eq!(plain.one_seen().route, "pub");
}
