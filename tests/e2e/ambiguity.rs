//! Ambiguity never weakens policy (issue 9), against the real binary, the real provider
//! and an echo upstream that records every request it gets: path readings, other
//! proxies' identity and client-IP headers, rewrite hints, `Connection`-named headers,
//! token placement and the client's framing faults. Every refusal is checked both at the
//! client (status) and at the upstream (it saw nothing).

use std::time::Duration;

use crate::support::idp::{Idp, Profile, API};
use crate::support::login::new_secret;
use crate::support::proxy::wait_ready;
use crate::support::raw::RawConn;
use crate::support::*;

/// A public catch-all, a login prefix limited to a group, a bearer API with an admin
/// prefix that needs another scope, an `either` route, and a public route on another
/// upstream (the same echo server under another name).
fn config(idp: &Idp, echo: &EchoUpstream, trusted: bool) -> String {
    let trusted = if trusted {
        "trusted_proxies = [\"127.0.0.1/32\"]\n"
    } else {
        ""
    };
    format!(
        "{server}\
         [provider]\nissuer = \"{issuer}\"\nclient_id = \"portcullis\"\n\
         client_secret = \"portcullis-secret\"\n\n\
         [bearer]\naudiences = [\"{API}\"]\nintrospection = \"off\"\n\n\
         [session]\nsecrets = [\"{secret}\"]\n\n\
         [headers]\nstrip = [\"X-Legacy-User\"]\nkeep_from_trusted = [\"X-Consumer-*\"]\n\n\
         [[upstream]]\nname = \"app\"\nurl = \"{upstream}\"\n\n\
         [[upstream]]\nname = \"other\"\nurl = \"{upstream}\"\n\n\
         [[route]]\nname = \"admin\"\npath = \"/admin\"\nupstream = \"app\"\nauth = \"login\"\n\
         allow = {{ groups = [\"admins\"] }}\n\n\
         [[route]]\nname = \"api-admin\"\npath = \"/api/admin\"\nupstream = \"app\"\n\
         auth = \"bearer\"\nscopes = [\"admin:items\"]\n\n\
         [[route]]\nname = \"api\"\npath = \"/api\"\nupstream = \"app\"\nauth = \"bearer\"\n\
         scopes = [\"read:items\"]\n\n\
         [[route]]\nname = \"mixed\"\npath = \"/mixed\"\nupstream = \"app\"\nauth = \"either\"\n\n\
         [[route]]\nname = \"internal\"\npath = \"/internal\"\nupstream = \"other\"\n\
         auth = \"public\"\n\n\
         [[route]]\nname = \"pub\"\npath = \"/\"\nupstream = \"app\"\nauth = \"public\"\n",
        server = server_section(&format!("public_url = \"http://@LISTEN@\"\n{trusted}")),
        issuer = idp.issuer,
        secret = new_secret(),
        upstream = echo.url(""),
    )
}

struct Fixture {
    idp: Idp,
    echo: EchoUpstream,
    proxy: TestProxy,
}

async fn fixture(trusted: bool) -> Fixture {
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let proxy = TestProxy::start(&config(&idp, &echo, trusted)).await;
    wait_ready(&proxy).await;
    Fixture { idp, echo, proxy }
}

/// One raw GET (the target exactly as written) with `headers`; the status.
async fn status_of(p: &TestProxy, target: &str, headers: &[&str]) -> u16 {
    raw::get_with(p.addr, target, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {target}: {e}"))
        .status
}

#[tokio::test]
async fn path_readings_never_reach_a_protected_prefix_under_a_weaker_policy() {
    let f = fixture(false).await;
    let token = f.idp.machine_jwt().await; // read:items write:items, no admin:items
    let bearer = format!("Authorization: Bearer {token}");
    let accept = "Accept: application/json";
    // Public catch-all against the login prefix (or another upstream): readings that
    // select /admin (or /internal) are 400.
    let conflicts = [
        "/ADMIN/users",
        "/Admin",
        "/admin%20/users",
        "/admin./users",
        "/admin%3Bx/users",
        "/public/..%3B/admin",
        "/public/..%20/admin",
        "/public/%252e%252e/admin",
        "/public/%252E%252E/admin/x",
        "/INTERNAL/x",
        // Double-encoded separators are refused like encoded ones.
        "/public/%252f..%252fadmin",
        "/x%255cadmin",
        "/x%2500",
        "/x%2523",
    ];
    for target in conflicts {
        let before = f.echo.count();
        assert_eq!(
            status_of(&f.proxy, target, &[accept]).await,
            400,
            "{target}"
        );
        assert_eq!(f.echo.count(), before, "{target} reached the upstream");
    }
    // Within the bearer API, readings that select the admin prefix need its scope too.
    for target in [
        "/api/admin/x",
        "/api/ADMIN/x",
        "/api/admin%20/x",
        "/api/admin./x",
        "/api/admin%3Bp/x",
        "/api/%2561dmin/x",
    ] {
        let before = f.echo.count();
        assert_eq!(
            status_of(&f.proxy, target, &[accept, &bearer]).await,
            403,
            "{target}"
        );
        assert_eq!(f.echo.count(), before, "{target} reached the upstream");
    }
    // Paths every reading agrees on are served as before.
    for (target, path) in [
        ("/hello", "/hello"),
        ("/Hello", "/Hello"),
        ("/x%2541", "/x%2541"),
        ("/api/items", "/api/items"),
        ("/internal/x", "/internal/x"),
    ] {
        assert_eq!(
            status_of(&f.proxy, target, &[accept, &bearer]).await,
            200,
            "{target}"
        );
        let last = f.echo.recorded().pop().unwrap();
        assert_eq!(last.path, path);
    }
}

#[tokio::test]
async fn other_proxies_headers_are_dropped_unless_a_trusted_proxy_sends_them() {
    let sent = [
        "X-User: admin",
        "X-Email: admin@evil.example",
        "X-Remote-User: admin",
        "X-Userinfo: e30",
        "X-Id-Token: a.b.c",
        "OIDC_CLAIM_email: admin@evil.example",
        "X-Pomerium-Claim-Email: admin@evil.example",
        "Cf-Access-Authenticated-User-Email: admin@evil.example",
        "X-Consumer-Username: admin",
        "X-Legacy-User: admin",
        "True-Client-IP: 203.0.113.7",
        "CF-Connecting-IP: 203.0.113.7",
        "X-Client-IP: 203.0.113.7",
        "X-Cluster-Client-IP: 203.0.113.7",
        "Fastly-Client-IP: 203.0.113.7",
        "X-Originating-IP: 203.0.113.7",
        "X-Envoy-Original-Path: /admin",
        "X-Forwarded-Client-Cert: Hash=abc",
    ];
    let names: Vec<&str> = sent.iter().map(|h| h.split(':').next().unwrap()).collect();
    // An untrusted client: every one of them is gone.
    let f = fixture(false).await;
    assert_eq!(status_of(&f.proxy, "/page", &sent).await, 200);
    let seen = f.echo.recorded().pop().unwrap();
    for n in &names {
        assert!(
            seen.header(n).is_none(),
            "{n} reached the upstream: {seen:?}"
        );
    }
    // A trusted proxy: client-IP and forwarding headers kept, foreign identity headers
    // only where keep_from_trusted names them, rewrite hints never.
    let t = fixture(true).await;
    assert_eq!(status_of(&t.proxy, "/page", &sent).await, 200);
    let seen = t.echo.recorded().pop().unwrap();
    for kept in [
        "X-Consumer-Username",
        "True-Client-IP",
        "CF-Connecting-IP",
        "X-Client-IP",
        "X-Cluster-Client-IP",
        "Fastly-Client-IP",
        "X-Originating-IP",
        "X-Forwarded-Client-Cert",
    ] {
        assert!(
            seen.header(kept).is_some(),
            "{kept} from a trusted proxy was dropped"
        );
    }
    for gone in [
        "X-User",
        "X-Email",
        "X-Remote-User",
        "X-Userinfo",
        "X-Id-Token",
        "OIDC_CLAIM_email",
        "X-Pomerium-Claim-Email",
        "Cf-Access-Authenticated-User-Email",
        "X-Legacy-User",
        "X-Envoy-Original-Path",
    ] {
        assert!(
            seen.header(gone).is_none(),
            "{gone} from a trusted proxy reached the upstream"
        );
    }
    // Forward auth applies the path-reading rule to the URI it is given.
    for (uri, status) in [
        ("/hello", 202),
        ("/ADMIN/x", 400),
        ("/public/..%3B/admin", 400),
    ] {
        let h = format!("X-Forwarded-Uri: {uri}");
        assert_eq!(
            status_of(&t.proxy, "/oauth2/auth", &[&h]).await,
            status,
            "{uri}"
        );
    }
}

#[tokio::test]
async fn a_header_named_in_connection_is_gone_before_anything_reads_it() {
    let f = fixture(false).await;
    let r = raw::get_with(
        f.proxy.addr,
        "/page",
        &[
            "Connection: close, X-Request-Id, X-Secret",
            "X-Request-Id: chosen-by-client",
            "X-Secret: 1",
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let id = r.header("x-request-id").unwrap().to_string();
    assert_ne!(id, "chosen-by-client");
    let seen = f.echo.recorded().pop().unwrap();
    assert_eq!(seen.header("x-request-id"), Some(id.as_str()));
    assert!(seen.header("x-secret").is_none());
}

#[tokio::test]
async fn a_token_in_the_query_is_never_forwarded_and_beside_a_header_token_is_400() {
    let f = fixture(false).await;
    let token = f.idp.machine_jwt().await;
    let bearer = format!("Authorization: Bearer {token}");
    // Two ways at once: 400 invalid_request, nothing forwarded.
    let before = f.echo.count();
    let r = raw::get_with(f.proxy.addr, "/api/items?access_token=other", &[&bearer])
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_request");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_request"));
    assert_eq!(f.echo.count(), before);
    // The query alone is no credential (401), and the query token goes nowhere.
    let q = format!("/api/items?access%5Ftoken={token}");
    assert_eq!(status_of(&f.proxy, &q, API_CALL_RAW).await, 401);
    assert_eq!(f.echo.count(), before);
    // The same on an `either` route: a header token beside a query token is 400, a query
    // token alone is no credential (and never forwarded).
    let r = raw::get_with(
        f.proxy.addr,
        "/mixed/x?a=1&access_token=leak&b=2",
        &[&bearer],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "a header token and a query token");
    let q = format!("/mixed/x?a=1&access_token={token}&b=2");
    assert_eq!(status_of(&f.proxy, &q, API_CALL_RAW).await, 401);
    assert_eq!(
        f.echo.count(),
        before,
        "no token in the query ever reached the upstream"
    );
    // Public routes leave the app's own parameters alone.
    assert_eq!(
        status_of(&f.proxy, "/page?access_token=mine", &[]).await,
        200
    );
    assert_eq!(
        f.echo.recorded().pop().unwrap().path,
        "/page?access_token=mine"
    );
}

/// Raw-request spelling of an API call (no `Accept: text/html`).
const API_CALL_RAW: &[&str] = &["Accept: application/json"];

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_fault() {
    let f = fixture(false).await;
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    ] {
        let mut c = RawConn::connect(f.proxy.addr).await.unwrap();
        let req = format!(
            "POST /page HTTP/1.1\r\nHost: test.local\r\nAccept: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}"
        );
        c.send(req.as_bytes()).await.unwrap();
        let r = c.read_response(Duration::from_secs(10)).await.unwrap();
        assert_eq!(r.status, 400, "{body:?}: {}", r.text());
    }
    // The proxy answered (the route's access line says 400), not hyper's own parser.
    let lines = eventually(Duration::from_secs(5), "access lines", || async {
        let l: Vec<_> = f
            .proxy
            .log_json()
            .into_iter()
            .filter(|l| l["target"] == "access" && l["route"] == "pub" && l["status"] == 400)
            .collect();
        (l.len() == 2).then_some(l)
    })
    .await;
    assert_eq!(lines.len(), 2);
    // Not counted as the upstream's failure.
    let m = raw::get(f.proxy.admin, "/metrics").await.unwrap().text();
    for line in m
        .lines()
        .filter(|l| l.starts_with("portcullis_upstream_errors_total"))
    {
        assert!(line.ends_with(" 0"), "{line}");
    }
}
