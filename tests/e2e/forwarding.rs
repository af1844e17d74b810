//! Header hygiene on the way upstream: hop-by-hop headers, spoofed identity and path
//! override headers, X-Forwarded-* with and without trusted proxies, X-Request-Id.

use http::Request;

use crate::support::client::empty;
use crate::support::raw;
use crate::support::*;

fn names(echo: &serde_json::Value) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_str().unwrap().to_ascii_lowercase())
        .collect()
}

#[tokio::test]
async fn hop_by_hop_and_connection_named_headers_are_removed() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(&echo.url(""), "")).await;
    let r = raw::request(
        p.addr,
        b"GET /hop HTTP/1.1\r\n\
          Host: test.local\r\n\
          Connection: close, X-Secret-Hop, x-other-hop\r\n\
          X-Secret-Hop: 1\r\n\
          X-Other-Hop: 2\r\n\
          Keep-Alive: timeout=5\r\n\
          TE: gzip\r\n\
          Trailer: X-T\r\n\
          Upgrade: h2c\r\n\
          Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
          Proxy-Connection: keep-alive\r\n\
          X-Kept: yes\r\n\
          \r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    let got = names(&j);
    for gone in [
        "x-secret-hop",
        "x-other-hop",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            !got.contains(&gone.to_string()),
            "{gone} reached the upstream: {got:?}"
        );
    }
    // `Connection` itself is hop-by-hop: the client's value must not be forwarded.
    for v in echo_headers(&j, "connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-secret-hop"),
            "client's Connection header forwarded: {v}"
        );
    }
    assert_eq!(echo_header(&j, "x-kept").as_deref(), Some("yes"));
}

#[tokio::test]
async fn hop_by_hop_headers_of_the_upstream_response_are_removed() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(&echo.url(""), "")).await;
    let r = raw::get(p.addr, "/response-hop").await.unwrap();
    assert_eq!(r.status, 200);
    for gone in ["x-up-hop", "keep-alive", "proxy-authenticate"] {
        assert!(
            r.header(gone).is_none(),
            "{gone} reached the client: {:?}",
            r.headers
        );
    }
    assert!(
        !r.header("connection").unwrap_or("").contains("x-up-hop"),
        "{:?}",
        r.headers
    );
    assert_eq!(r.header("x-up-kept"), Some("1"));
}

#[tokio::test]
async fn request_with_content_length_and_chunked_is_forwarded_by_its_chunked_body_only() {
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and an intermediary must
    // remove the Content-Length before forwarding (or refuse the request).
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(&echo.url(""), "")).await;
    let r = raw::request(
        p.addr,
        b"POST /te-cl HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\
          Transfer-Encoding: chunked\r\n\r\n14\r\naaaaaaaaaaaaaaaaaaaa\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    if r.status == 400 {
        assert_eq!(echo.count(), 0);
        return;
    }
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["body_len"], 20, "upstream got a different body: {j}");
    assert!(
        echo_headers(&j, "content-length").iter().all(|v| v == "20"),
        "stale Content-Length forwarded: {j}"
    );
}

#[tokio::test]
async fn te_trailers_is_kept_for_http2_clients() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(&echo.url(""), "")).await;
    let h2 = Http::h2c();
    let r = h2
        .send(
            Request::get(p.url("/grpc-ish"))
                .header("te", "trailers")
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(echo_header(&r.json(), "te").as_deref(), Some("trailers"));
}

#[tokio::test]
async fn spoofed_identity_and_path_override_headers_are_stripped_on_a_public_route() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(&echo.url(""), "")).await;
    let spoofed = [
        "X-Auth-Request-User: admin",
        "x_auth_request_user: admin",
        "X_Auth-Request_Email: admin@example.com",
        "X-Auth-Request-Groups: admins",
        "X-Auth-Request-Preferred-Username: admin",
        "X-Auth-Request-Access-Token: forged",
        "X-Forwarded-User: admin",
        "X-Forwarded-Email: admin@example.com",
        "x_forwarded_groups: admins",
        "Remote-User: admin",
        "remote_user: admin",
        "Remote-Groups: admins",
        "X-Original-URL: /admin",
        "X-Rewrite-URL: /admin",
        "X-Forwarded-Uri: /admin",
        "X-Forwarded-Prefix: /admin",
        "X-Original-URI: /admin",
        // Method overrides would let a GET be a DELETE to the app, past method_scopes.
        "X-HTTP-Method-Override: admin-DELETE",
        "x_http_method: admin-DELETE",
        "X-Method-Override: admin-DELETE",
    ];
    let r = raw::get_with(p.addr, "/public/page", &spoofed)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let j = r.json();
    let got = names(&j);
    let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-");
    for h in spoofed {
        let name = norm(h.split(':').next().unwrap());
        assert!(
            !got.iter().any(|g| norm(g) == name),
            "{name} reached the upstream: {got:?}"
        );
    }
    // Nothing with the value the client tried to smuggle.
    let text = j["headers"].to_string();
    assert!(!text.contains("admin"), "spoofed value forwarded: {text}");
    // The same on an OPTIONS request and on a WebSocket-style upgrade attempt.
    let r = raw::request(
        p.addr,
        b"OPTIONS /x HTTP/1.1\r\nHost: t\r\nX-Auth-Request-User: admin\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(echo_header(&r.json(), "x-auth-request-user").is_none());
}

#[tokio::test]
async fn forwarded_headers_are_rebuilt_from_the_peer_without_trusted_proxies() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(&echo.url(""), "")).await;
    let r = raw::request(
        p.addr,
        b"GET /xff HTTP/1.1\r\n\
          Host: app.example.com\r\n\
          X-Forwarded-For: 203.0.113.9\r\n\
          X-Forwarded-Proto: https\r\n\
          X-Forwarded-Host: evil.example\r\n\
          X-Forwarded-Port: 443\r\n\
          X_Forwarded_For: 198.51.100.1\r\n\
          Forwarded: for=203.0.113.9;proto=https\r\n\
          X-Real-IP: 203.0.113.9\r\n\
          Connection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(echo_headers(&j, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(echo_headers(&j, "x-forwarded-proto"), vec!["http"]);
    assert_eq!(
        echo_headers(&j, "x-forwarded-host"),
        vec!["app.example.com"]
    );
    assert_eq!(echo_headers(&j, "x-real-ip"), vec!["127.0.0.1"]);
    assert!(echo_headers(&j, "forwarded").is_empty());
    assert!(echo_headers(&j, "x-forwarded-port").is_empty());
    assert!(echo_headers(&j, "x_forwarded_for").is_empty());
    assert!(!j["headers"].to_string().contains("203.0.113.9"));
    assert!(!j["headers"].to_string().contains("evil.example"));
}

#[tokio::test]
async fn forwarded_headers_from_a_trusted_proxy_are_kept_and_appended() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(
        &echo.url(""),
        "trusted_proxies = [\"127.0.0.1/32\"]",
    ))
    .await;
    let r = raw::request(
        p.addr,
        b"GET /xff HTTP/1.1\r\n\
          Host: internal:8080\r\n\
          X-Forwarded-For: 203.0.113.9, 10.0.0.1\r\n\
          X-Forwarded-Proto: https\r\n\
          X-Forwarded-Host: app.example.com\r\n\
          X_Forwarded_For: 198.51.100.1\r\n\
          Connection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(
        echo_headers(&j, "x-forwarded-for"),
        vec!["203.0.113.9, 10.0.0.1, 127.0.0.1"]
    );
    assert_eq!(echo_headers(&j, "x-forwarded-proto"), vec!["https"]);
    assert_eq!(
        echo_headers(&j, "x-forwarded-host"),
        vec!["app.example.com"]
    );
    assert!(
        echo_headers(&j, "x_forwarded_for").is_empty(),
        "underscore spelling forwarded"
    );
    // Without forwarding headers, a trusted peer's request gets them set.
    let r = raw::get(p.addr, "/plain").await.unwrap();
    let j = r.json();
    assert_eq!(echo_headers(&j, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(echo_headers(&j, "x-forwarded-proto"), vec!["http"]);
    assert_eq!(echo_headers(&j, "x-real-ip"), vec!["127.0.0.1"]);
}

fn is_generated_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn request_id_is_propagated_when_valid_and_generated_otherwise() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(&echo.url(""), "")).await;
    // Valid: kept, sent upstream, returned.
    let r = raw::get_with(p.addr, "/rid", &["X-Request-Id: trace-abc_123.4:5"])
        .await
        .unwrap();
    assert_eq!(r.header("x-request-id"), Some("trace-abc_123.4:5"));
    assert_eq!(
        echo_headers(&r.json(), "x-request-id"),
        vec!["trace-abc_123.4:5"]
    );
    // Absent: generated, the same upstream and in the response.
    let r = raw::get(p.addr, "/rid").await.unwrap();
    let id = r.header("x-request-id").unwrap().to_string();
    assert!(is_generated_id(&id), "{id}");
    assert_eq!(echo_headers(&r.json(), "x-request-id"), vec![id.clone()]);
    // A second request gets a different id.
    let r2 = raw::get(p.addr, "/rid").await.unwrap();
    assert_ne!(r2.header("x-request-id").unwrap(), id);
    // Invalid (too long, or characters that could forge log lines): replaced.
    let long = format!("X-Request-Id: {}", "a".repeat(200));
    for bad in [
        "X-Request-Id: has space\"quote",
        "X-Request-Id: <script>",
        long.as_str(),
    ] {
        let r = raw::get_with(p.addr, "/rid", &[bad]).await.unwrap();
        let id = r.header("x-request-id").unwrap().to_string();
        assert!(is_generated_id(&id), "{bad} -> {id}");
        assert_eq!(echo_headers(&r.json(), "x-request-id"), vec![id], "{bad}");
    }
    // Errors the proxy answers itself carry the id too.
    let r = raw::get_with(p.addr, "/a%2Fb", &["X-Request-Id: err-id-1"])
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-request-id"), Some("err-id-1"));
    assert_eq!(r.json()["request_id"], "err-id-1");
}
