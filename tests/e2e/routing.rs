//! Route matching: prefixes at segment boundaries, host routes, file order, strip_prefix,
//! no route → 404, and the proxy's own `/oauth2/ping`.

use http::Request;

use crate::support::client::{empty, h2_send, h2c_conn};
use crate::support::raw;
use crate::support::*;

/// Each upstream is the same echo server under a different base path, so the path the
/// upstream received tells which route served the request.
fn routing_config(echo: &EchoUpstream) -> String {
    format!(
        r#"{server}
[[upstream]]
name = "host"
url = "{host}"
[[upstream]]
name = "api"
url = "{api}"
[[upstream]]
name = "ab"
url = "{ab}"
[[upstream]]
name = "a"
url = "{a}"
[[upstream]]
name = "strip"
url = "{strip}"
[[upstream]]
name = "slash"
url = "{slash}"

[[route]]
name = "host-route"
host = "api.example.com"
path = "/"
upstream = "host"
auth = "public"

[[route]]
name = "api"
path = "/api"
upstream = "api"
auth = "public"

[[route]]
name = "a-b"
path = "/a/b"
upstream = "ab"
auth = "public"

[[route]]
name = "a"
path = "/a"
upstream = "a"
auth = "public"

[[route]]
name = "stripped"
path = "/strip"
upstream = "strip"
auth = "public"
strip_prefix = true

[[route]]
name = "trailing-slash"
path = "/docs/"
upstream = "slash"
auth = "public"
"#,
        server = server_section(""),
        host = echo.url("/via-host"),
        api = echo.url("/via-api"),
        ab = echo.url("/via-ab"),
        a = echo.url("/via-a"),
        strip = echo.url("/via-strip"),
        slash = echo.url("/via-slash"),
    )
}

async fn upstream_path(p: &TestProxy, host: &str, target: &str) -> (u16, Option<String>) {
    let r = raw::request(
        p.addr,
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let path = (r.status == 200).then(|| r.json()["path"].as_str().unwrap().to_string());
    (r.status, path)
}

#[tokio::test]
async fn routes_match_prefixes_at_segment_boundaries_hosts_and_file_order() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&routing_config(&echo)).await;
    let cases: &[(&str, &str, u16, Option<&str>)] = &[
        // Segment boundaries: /api covers /api, /api/, /api/x, never /apiary.
        ("app.local", "/api", 200, Some("/via-api/api")),
        ("app.local", "/api/", 200, Some("/via-api/api/")),
        (
            "app.local",
            "/api/x/y?q=1",
            200,
            Some("/via-api/api/x/y?q=1"),
        ),
        ("app.local", "/apiary", 404, None),
        ("app.local", "/api-v2/x", 404, None),
        // A route written with a trailing slash matches the bare prefix and below it.
        ("app.local", "/docs", 200, Some("/via-slash/docs")),
        (
            "app.local",
            "/docs/guide",
            200,
            Some("/via-slash/docs/guide"),
        ),
        ("app.local", "/docsx", 404, None),
        // First match in file order: /a/b is listed before /a.
        ("app.local", "/a/b/c", 200, Some("/via-ab/a/b/c")),
        ("app.local", "/a/bc", 200, Some("/via-a/a/bc")),
        ("app.local", "/a/c", 200, Some("/via-a/a/c")),
        // Matching happens on the normalized path.
        ("app.local", "/x/../api/z", 200, Some("/via-api/api/z")),
        ("app.local", "/%61pi/z", 200, Some("/via-api/api/z")),
        ("app.local", "//api//z", 200, Some("/via-api/api/z")),
        // Paths are case-sensitive.
        ("app.local", "/API/z", 404, None),
        // A host-specific route, listed first, wins for its host (case and port ignored)...
        ("api.example.com", "/api/x", 200, Some("/via-host/api/x")),
        (
            "API.Example.COM:8443",
            "/anything",
            200,
            Some("/via-host/anything"),
        ),
        // ...and only for its host.
        ("other.example.com", "/anything", 404, None),
        // strip_prefix removes the matched segments, keeps the query.
        (
            "app.local",
            "/strip/x/y?k=v",
            200,
            Some("/via-strip/x/y?k=v"),
        ),
        ("app.local", "/strip", 200, Some("/via-strip/")),
        ("app.local", "/strip/", 200, Some("/via-strip/")),
        ("app.local", "/stripped", 404, None),
    ];
    for (host, target, status, want) in cases {
        let (got_status, got_path) = upstream_path(&p, host, target).await;
        assert_eq!(got_status, *status, "Host: {host}, GET {target}");
        assert_eq!(got_path.as_deref(), *want, "Host: {host}, GET {target}");
    }
}

#[tokio::test]
async fn no_matching_route_is_404_json_and_never_reaches_the_upstream() {
    let echo = EchoUpstream::start().await;
    let config = format!(
        "{}\n[[upstream]]\nname = \"app\"\nurl = \"{}\"\n[[route]]\npath = \"/only\"\nupstream = \"app\"\nauth = \"public\"\n",
        server_section(""),
        echo.url("")
    );
    let p = TestProxy::start(&config).await;
    let r = raw::get(p.addr, "/elsewhere").await.unwrap();
    assert_eq!(r.status, 404);
    let j = r.json();
    assert_eq!(j["error"], "not_found");
    assert_eq!(
        j["request_id"].as_str(),
        r.header("x-request-id"),
        "error body and header carry the same request id"
    );
    assert_eq!(echo.count(), 0, "upstream was called");
    let ok = raw::get(p.addr, "/only/x").await.unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(echo.count(), 1);
}

#[tokio::test]
async fn ping_answers_only_its_exact_path_and_is_never_proxied() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(&echo.url(""), "")).await;
    let r = raw::get(p.addr, "/oauth2/ping").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "OK");
    for target in [
        "/oauth2/ping/x",
        "/oauth2/pingx",
        "/oauth2/ping.json",
        "/oauth2",
    ] {
        let r = raw::get(p.addr, target).await.unwrap();
        assert_ne!(r.status, 200, "{target} answered 200");
        assert_ne!(r.text(), "OK", "{target} answered like ping");
    }
    // A non-GET ping is not the probe either.
    let r = raw::request(
        p.addr,
        b"POST /oauth2/ping HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_ne!(r.status, 200);
    // The reserved prefix is never proxied, even with a catch-all route.
    assert_eq!(echo.count(), 0, "{:?}", echo.recorded());
    // A path that merely starts with the prefix's letters is an ordinary path.
    let r = raw::get(p.addr, "/oauth2x/y").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/oauth2x/y");
}

#[tokio::test]
async fn the_upstream_receives_the_host_that_the_request_was_routed_by() {
    // A request names its host twice: in the absolute-form target (HTTP/1.1) or
    // `:authority` (HTTP/2), and in a `Host` header. The route is chosen by the first; the
    // upstream must then see that same host (or the request is refused as ambiguous), else
    // a request routed as "public.example.com" reaches a virtual-host upstream as
    // "admin.internal".
    let echo = EchoUpstream::start().await;
    let config = format!(
        "{}\n[[upstream]]\nname = \"pub\"\nurl = \"{}\"\n[[upstream]]\nname = \"rest\"\nurl = \"{}\"\n\
         [[route]]\nhost = \"public.example.com\"\npath = \"/\"\nupstream = \"pub\"\nauth = \"public\"\n\
         [[route]]\npath = \"/\"\nupstream = \"rest\"\nauth = \"public\"\n",
        server_section(""),
        echo.url("/via-public"),
        echo.url("/via-rest"),
    );
    let p = TestProxy::start(&config).await;
    let mut problems = Vec::new();
    let mut judge = |case: &str, status: u16, body: &str| {
        if status == 400 {
            return;
        }
        let j: serde_json::Value = serde_json::from_str(body).unwrap();
        let path = j["path"].as_str().unwrap_or("").to_string();
        let host = echo_header(&j, "host").unwrap_or_default();
        let routed_public = path.starts_with("/via-public");
        let host_public = host.split(':').next() == Some("public.example.com");
        if routed_public != host_public {
            problems.push(format!(
                "{case}: routed to {path:?} but the upstream got Host: {host:?}"
            ));
        }
    };
    // HTTP/1.1 absolute-form.
    let r = raw::request(
        p.addr,
        b"GET http://public.example.com/x HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    judge("HTTP/1.1 absolute-form", r.status, &r.text());
    // HTTP/2 :authority with a different host header.
    let mut h2 = h2c_conn(p.addr).await;
    let r = h2_send(
        &mut h2,
        Request::get("http://public.example.com/x")
            .header("host", "admin.internal")
            .body(empty())
            .unwrap(),
    )
    .await
    .unwrap();
    judge("HTTP/2 :authority + host", r.status.as_u16(), &r.text());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
