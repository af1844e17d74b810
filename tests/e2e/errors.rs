//! Answers the proxy makes itself: upstream down (502), slow (504), oversize headers (431),
//! URI too long (414); short bodies that leak no internals.

use crate::support::raw;
use crate::support::*;

#[tokio::test]
async fn upstream_down_is_502_with_a_body_that_leaks_no_address() {
    // A socket bound but never listening: connections to it are refused, and while the
    // test holds it no concurrently running test can take the port (a port merely freed
    // by free_port() could be picked again, even as the proxy's own listen port).
    let reserved =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    reserved
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = reserved.local_addr().unwrap().as_socket().unwrap().port();
    let p = TestProxy::start(&simple_config(&format!("http://127.0.0.1:{port}"), "")).await;
    for accept in ["application/json", "text/html"] {
        let r = raw::get_with(p.addr, "/down", &[&format!("Accept: {accept}")])
            .await
            .unwrap();
        assert_eq!(r.status, 502, "{accept}: {}", r.text());
        let body = r.text();
        assert!(
            !body.contains("127.0.0.1"),
            "{accept}: address leaked: {body}"
        );
        assert!(
            !body.contains(&port.to_string()),
            "{accept}: port leaked: {body}"
        );
        assert!(
            !body.to_lowercase().contains("refused"),
            "{accept}: error leaked: {body}"
        );
        if accept == "application/json" {
            let j = r.json();
            assert_eq!(j["error"], "bad_gateway");
            assert_eq!(j["request_id"].as_str(), r.header("x-request-id"));
        } else {
            assert!(r.header("content-type").unwrap().starts_with("text/html"));
        }
        for (name, value) in &r.headers {
            assert!(
                !value.contains(&port.to_string()),
                "port leaked in header {name}: {value}"
            );
        }
    }
}

#[tokio::test]
async fn slow_upstream_past_the_route_timeout_is_504() {
    let echo = EchoUpstream::start().await;
    let config = format!(
        r#"{}
[[upstream]]
name = "app"
url = "{}"
[[route]]
name = "short"
path = "/short"
upstream = "app"
auth = "public"
strip_prefix = true
timeout = "300ms"
[[route]]
name = "rest"
path = "/"
upstream = "app"
auth = "public"
"#,
        server_section(""),
        echo.url("")
    );
    let p = TestProxy::start(&config).await;
    let started = std::time::Instant::now();
    let r = raw::get(p.addr, "/short/slow?ms=3000").await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"], "gateway_timeout");
    assert!(!r.text().contains(&echo.addr.port().to_string()));
    assert!(
        took < std::time::Duration::from_millis(2500),
        "504 after {took:?}"
    );
    // Within the timeout it is served; other routes keep the (long) default timeout.
    let r = raw::get(p.addr, "/short/slow?ms=10").await.unwrap();
    assert_eq!(r.status, 200);
    let r = raw::get(p.addr, "/slow?ms=600").await.unwrap();
    assert_eq!(r.status, 200);
}

fn limits_config(echo: &EchoUpstream) -> String {
    simple_config(
        &echo.url(""),
        "[server.limits]\nmax_headers = 32\nmax_header_bytes = 8192\nmax_uri_length = 2048\n",
    )
}

fn request_with_headers(n: usize, value_len: usize) -> Vec<u8> {
    let mut req = String::from("GET /h HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for i in 0..n {
        req.push_str(&format!("X-H-{i}: {}\r\n", "v".repeat(value_len)));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

#[tokio::test]
async fn too_many_headers_is_431() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&limits_config(&echo)).await;
    // Under the limit: served.
    let r = raw::request(p.addr, &request_with_headers(20, 10))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // Over it: 431, a little over and far over.
    for n in [40, 500] {
        let r = raw::request(p.addr, &request_with_headers(n, 10))
            .await
            .unwrap();
        assert_eq!(r.status, 431, "{n} headers");
    }
    assert_eq!(echo.count(), 1);
}

#[tokio::test]
async fn oversize_header_bytes_is_431() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&limits_config(&echo)).await;
    let r = raw::request(p.addr, &request_with_headers(2, 2000))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    // 10 KB of headers in a few fields (over 8192), then 60 KB, then one 100 KB field.
    for (n, len) in [(5, 2000), (6, 10_000), (1, 100_000)] {
        let r = raw::request(p.addr, &request_with_headers(n, len))
            .await
            .unwrap();
        assert_eq!(r.status, 431, "{n} headers of {len} bytes");
    }
    assert_eq!(echo.count(), 1);
}

#[tokio::test]
async fn uri_too_long_is_414() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&limits_config(&echo)).await;
    let ok = format!("/{}", "a".repeat(1500));
    assert_eq!(raw::get(p.addr, &ok).await.unwrap().status, 200);
    // Just over the limit, in the path and in the query.
    let long_path = format!("/{}", "a".repeat(2100));
    let long_query = format!("/q?{}", "a".repeat(2100));
    for target in [&long_path, &long_query] {
        let r = raw::get(p.addr, target).await.unwrap();
        assert_eq!(r.status, 414, "{} bytes", target.len());
        assert_eq!(r.json()["error"], "uri_too_long");
    }
    assert_eq!(echo.count(), 1);
}

#[tokio::test]
async fn uri_far_over_the_limit_is_414_too() {
    // A target several times the limit is still "URI too long", not "headers too large".
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&limits_config(&echo)).await;
    for len in [5_000, 12_000, 40_000] {
        let target = format!("/{}", "a".repeat(len));
        let r = raw::get(p.addr, &target).await.unwrap();
        assert_eq!(r.status, 414, "{len}-byte target");
    }
    assert_eq!(echo.count(), 0);
}
