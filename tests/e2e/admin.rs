//! The admin listener (`/healthz`, `/readyz`, `/metrics`) and the access log.

use std::time::Duration;

use crate::support::raw;
use crate::support::*;

fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn admin_healthz_readyz_and_metrics_count_requests_by_route_and_status_class() {
    let echo = EchoUpstream::start().await;
    let config = format!(
        "{}\n[[upstream]]\nname = \"app\"\nurl = \"{}\"\n\
         [[route]]\nname = \"api\"\npath = \"/api\"\nupstream = \"app\"\nauth = \"public\"\n\
         [[route]]\npath = \"/other\"\nupstream = \"app\"\nauth = \"public\"\n",
        server_section(""),
        echo.url("")
    );
    let p = TestProxy::start(&config).await;
    let h = raw::get(p.admin, "/healthz").await.unwrap();
    assert_eq!((h.status, h.text().trim()), (200, "ok"));
    let r = raw::get(p.admin, "/readyz").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(raw::get(p.admin, "/nope").await.unwrap().status, 404);
    // The admin endpoints are not on the main listener.
    let m = raw::get(p.addr, "/metrics").await.unwrap();
    assert_eq!(m.status, 404);
    assert!(!m.text().contains("portcullis_requests_total"));

    for _ in 0..3 {
        assert_eq!(raw::get(p.addr, "/api/ok").await.unwrap().status, 200);
    }
    assert_eq!(
        raw::get(p.addr, "/api/status/503").await.unwrap().status,
        503
    );
    assert_eq!(
        raw::get(p.addr, "/api/status/404").await.unwrap().status,
        404
    );
    assert_eq!(raw::get(p.addr, "/other/x").await.unwrap().status, 200);
    assert_eq!(raw::get(p.addr, "/unrouted").await.unwrap().status, 404);
    assert_eq!(raw::get(p.addr, "/a%2Fb").await.unwrap().status, 400);

    let m = raw::get(p.admin, "/metrics").await.unwrap();
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let t = m.text();
    let count = |route: &str, class: &str| {
        metric(
            &t,
            &format!("portcullis_requests_total{{route=\"{route}\",status=\"{class}\"}} "),
        )
    };
    assert_eq!(count("api", "2xx"), Some(3.0), "{t}");
    assert_eq!(count("api", "5xx"), Some(1.0), "{t}");
    assert_eq!(count("api", "4xx"), Some(1.0), "{t}");
    // A route without a name is labelled by its path.
    assert_eq!(count("/other", "2xx"), Some(1.0), "{t}");
    // Requests without a route: /metrics and /unrouted on the main listener (404), and
    // the ambiguous path (400).
    assert_eq!(count("-", "4xx"), Some(3.0), "{t}");
    assert_eq!(
        metric(
            &t,
            "portcullis_request_duration_seconds_count{route=\"api\"} "
        ),
        Some(5.0),
        "{t}"
    );
    assert!(t.contains("# TYPE portcullis_request_duration_seconds histogram"));
    assert!(t.contains("portcullis_requests_in_flight "));
    assert!(t.contains("portcullis_connections_total "));
    assert!(t.contains("portcullis_upstream_errors_total{kind=\"connect\"} 0"));
}

#[tokio::test]
async fn access_log_is_one_json_line_without_query_or_credentials() {
    let echo = EchoUpstream::start().await;
    let p = TestProxy::start(&simple_config(&echo.url(""), "")).await;
    let r = raw::get_with(
        p.addr,
        "/logged/./x?token=QUERYSECRET&next=%2Fhome",
        &[
            "Authorization: Bearer AUTHSECRET.abc.def",
            "Cookie: _portcullis=COOKIESECRET; theme=dark",
            "Proxy-Authorization: Basic PROXYSECRET",
            "X-Request-Id: access-log-test-1",
            "User-Agent: e2e",
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let line = eventually(Duration::from_secs(10), "access log line", || async {
        p.log_json()
            .into_iter()
            .find(|l| l["request_id"] == "access-log-test-1" && l["target"] == "access")
    })
    .await;
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], "/logged/x", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["route"], "echo", "{line}");
    assert!(line.get("total_ms").is_some(), "{line}");
    assert!(line.get("upstream_ms").is_some(), "{line}");
    // A refused request is logged too.
    let _ = raw::get_with(
        p.addr,
        "/a%2Fb?token=QUERYSECRET",
        &["X-Request-Id: access-log-test-2"],
    )
    .await
    .unwrap();
    let line = eventually(
        Duration::from_secs(10),
        "access log line for a 400",
        || async {
            p.log_json()
                .into_iter()
                .find(|l| l["request_id"] == "access-log-test-2")
        },
    )
    .await;
    assert_eq!(line["status"], 400, "{line}");
    let logs = p.logs();
    for secret in [
        "QUERYSECRET",
        "AUTHSECRET",
        "COOKIESECRET",
        "PROXYSECRET",
        "next=",
        "token=",
    ] {
        assert!(
            !logs.contains(secret),
            "{secret} appears in the logs:\n{logs}"
        );
    }
}
