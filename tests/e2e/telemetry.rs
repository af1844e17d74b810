//! OpenTelemetry traces (issue 13) end to end: the real proxy binary exporting to an
//! OTLP/HTTP receiver inside the test (decoded with the OpenTelemetry project's types),
//! in front of the echo upstream and the real OpenID provider.

use std::time::Duration;

use http::Request;

use crate::support::agent::Agent;
use crate::support::client::{empty, Resp};
use crate::support::idp::{Idp, Profile};
use crate::support::login::{self, login, Setup};
use crate::support::otlp::{Got, OtlpReceiver, SpanKind};
use crate::support::raw;
use crate::support::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// The login config (provider, sessions, `/admin`, `/` and the bearer route `/api/`),
/// exporting every trace to `otlp`; `trusted`: 127.0.0.1 is a trusted proxy.
async fn traced(idp: &Idp, echo: &EchoUpstream, otlp: &OtlpReceiver, trusted: bool) -> TestProxy {
    let s = Setup {
        trusted,
        bearer: true,
        ..Setup::default()
    };
    let config = format!(
        "{}\n[telemetry]\notlp_endpoint = \"{}\"\nsample_ratio = 1.0\n",
        login::config(idp, echo, &s),
        otlp.endpoint()
    );
    let p = TestProxy::start(&config).await;
    proxy::wait_ready(&p).await;
    p
}

/// The spans of `trace` once `pred` holds of them (exports leave within a second).
async fn spans_of(
    otlp: &OtlpReceiver,
    trace: &str,
    what: &str,
    pred: impl Fn(&[Got]) -> bool,
) -> Vec<Got> {
    raw::eventually(Duration::from_secs(15), what, || async {
        let spans: Vec<Got> = otlp
            .spans()
            .into_iter()
            .filter(|s| s.trace_id() == trace)
            .collect();
        pred(&spans).then_some(spans)
    })
    .await
}

fn named<'a>(spans: &'a [Got], name: &str) -> Option<&'a Got> {
    spans.iter().find(|s| s.name() == name)
}

async fn get_with(p: &TestProxy, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(p.url(path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    Http::new().send(b.body(empty()).unwrap()).await.unwrap()
}

/// The upstream's `traceparent`: (trace id, parent id, flags).
fn upstream_traceparent(echo: &EchoUpstream) -> (String, String, String) {
    let r = echo.recorded();
    let tp = r.last().unwrap().header("traceparent").unwrap().to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test]
async fn a_trusted_proxys_trace_is_continued_with_request_auth_and_upstream_spans() {
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let p = traced(&idp, &echo, &otlp, true).await;
    let token = idp.machine_jwt().await;

    let r = get_with(
        &p,
        "/api/items?q=secret-query",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The upstream joins the trace, as a child of the proxy's upstream span.
    let (trace, parent, flags) = upstream_traceparent(&echo);
    assert_eq!(trace, TRACE);
    assert_ne!(parent, PARENT);
    assert_eq!(flags, "01");
    let rec = echo.recorded();
    assert_eq!(
        rec.last().unwrap().header("tracestate"),
        Some("rojo=00f067aa0ba902b7")
    );

    let spans = spans_of(&otlp, TRACE, "request, auth and upstream spans", |s| {
        ["GET api", "auth", "upstream app"]
            .iter()
            .all(|n| named(s, n).is_some())
    })
    .await;
    let request = named(&spans, "GET api").unwrap();
    let auth = named(&spans, "auth").unwrap();
    let upstream = named(&spans, "upstream app").unwrap();
    // The request span continues the trusted proxy's span; the others are its children.
    assert_eq!(request.parent_id(), PARENT);
    assert_eq!(request.kind(), SpanKind::Server as i32);
    assert_eq!(request.span.flags & 0x301, 0x301, "sampled, remote parent");
    assert_eq!(request.span.trace_state, "rojo=00f067aa0ba902b7");
    assert_eq!(auth.parent_id(), request.span_id());
    assert_eq!(upstream.parent_id(), request.span_id());
    assert_eq!(upstream.kind(), SpanKind::Client as i32);
    // The upstream was told the upstream span as its parent.
    assert_eq!(upstream.span_id(), parent);
    assert_eq!(request.attr("http.route").as_deref(), Some("api"));
    assert_eq!(request.attr("url.path").as_deref(), Some("/api/items"));
    assert_eq!(
        request.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(request.attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(request.attr("portcullis.reason"), None);
    assert_eq!(auth.attr("portcullis.auth.mode").as_deref(), Some("bearer"));
    assert_eq!(
        auth.attr("portcullis.auth.result").as_deref(),
        Some("allow")
    );
    assert_eq!(upstream.attr("portcullis.upstream").as_deref(), Some("app"));
    assert_eq!(
        upstream.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(request.service_name.as_deref(), Some("portcullis"));
    // Nothing secret in any span: not the token, not the query.
    for s in otlp.spans() {
        let text = format!("{:?}", s.span);
        assert!(!text.contains(&token), "token in {text}");
        assert!(!text.contains("secret-query"), "query in {text}");
        assert!(
            !text.contains("portcullis-secret"),
            "client secret in {text}"
        );
    }

    // A refusal: the reason code on the request and auth spans, no upstream span.
    let refused = "0af7651916cd43dd8448eb211c80319c";
    let r = get_with(
        &p,
        "/api/items",
        &[("traceparent", &format!("00-{refused}-b7ad6b7169203331-01"))],
    )
    .await;
    assert_eq!(r.status, 401);
    let spans = spans_of(&otlp, refused, "refused request and auth spans", |s| {
        named(s, "GET api").is_some() && named(s, "auth").is_some()
    })
    .await;
    let request = named(&spans, "GET api").unwrap();
    let auth = named(&spans, "auth").unwrap();
    assert_eq!(
        request.attr("portcullis.reason").as_deref(),
        Some("no_token")
    );
    assert_eq!(
        request.attr("http.response.status_code").as_deref(),
        Some("401")
    );
    assert_eq!(auth.attr("portcullis.auth.result").as_deref(), Some("deny"));
    assert_eq!(auth.attr("portcullis.reason").as_deref(), Some("no_token"));
    assert_eq!(auth.parent_id(), request.span_id());
    assert!(named(&spans, "upstream app").is_none());

    // An invalid traceparent from the trusted proxy: a new trace, and its tracestate is
    // not passed on.
    let r = get_with(
        &p,
        "/api/items",
        &[
            ("authorization", &format!("Bearer {token}")),
            (
                "traceparent",
                &format!("00-{}-{PARENT}-01", TRACE.to_uppercase()),
            ),
            ("tracestate", "rojo=1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let (trace, _, _) = upstream_traceparent(&echo);
    assert_ne!(trace, TRACE);
    assert_ne!(trace, TRACE.to_uppercase());
    assert_eq!(echo.recorded().last().unwrap().header("tracestate"), None);
}

#[tokio::test]
async fn a_clients_traceparent_is_not_trusted_and_a_new_trace_starts() {
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let otlp = OtlpReceiver::start().await;
    // 127.0.0.1 is not a trusted proxy here.
    let p = traced(&idp, &echo, &otlp, false).await;
    let token = idp.machine_jwt().await;
    let client = format!("00-{TRACE}-{PARENT}-01");
    let r = get_with(
        &p,
        "/api/items",
        &[
            ("authorization", &format!("Bearer {token}")),
            ("traceparent", &client),
            ("tracestate", "evil=1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let rec = echo.recorded();
    let seen = rec.last().unwrap();
    // Never the client's header as it was; no client tracestate.
    assert_ne!(seen.header("traceparent"), Some(client.as_str()));
    assert_eq!(seen.header("tracestate"), None);
    let (trace, parent, _) = upstream_traceparent(&echo);
    assert_ne!(trace, TRACE);
    let spans = spans_of(&otlp, &trace, "the new trace's spans", |s| {
        ["GET api", "auth", "upstream app"]
            .iter()
            .all(|n| named(s, n).is_some())
    })
    .await;
    let request = named(&spans, "GET api").unwrap();
    assert!(request.span.parent_span_id.is_empty(), "a root span");
    assert_eq!(request.span.flags & 0x200, 0, "no remote parent");
    assert_eq!(named(&spans, "upstream app").unwrap().span_id(), parent);
    assert_eq!(
        named(&spans, "auth").unwrap().parent_id(),
        request.span_id()
    );
    assert!(
        otlp.spans().iter().all(|s| s.trace_id() != TRACE),
        "no span joined the client's trace"
    );
}

#[tokio::test]
async fn provider_calls_are_spans_and_histograms() {
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let otlp = OtlpReceiver::start().await;
    let p = traced(&idp, &echo, &otlp, true).await;

    // Loading the provider's metadata and keys at start: root spans of their own.
    let startup = raw::eventually(
        Duration::from_secs(15),
        "discovery and JWKS spans",
        || async {
            let s = otlp.spans();
            let found = ["provider discovery", "provider jwks"]
                .iter()
                .all(|n| s.iter().any(|g| g.name() == *n));
            found.then_some(s)
        },
    )
    .await;
    let jwks = startup
        .iter()
        .find(|g| g.name() == "provider jwks")
        .unwrap();
    assert_eq!(jwks.kind(), SpanKind::Client as i32);
    assert_eq!(
        jwks.attr("portcullis.provider.issuer").as_deref(),
        Some(idp.issuer.as_str())
    );
    assert_eq!(
        jwks.attr("portcullis.provider.endpoint").as_deref(),
        Some("jwks")
    );
    assert_eq!(
        jwks.attr("http.response.status_code").as_deref(),
        Some("200")
    );

    // A login: the token endpoint call is a child of the callback request's span.
    let mut alice = Agent::new();
    let (_, r) = login(&mut alice, &p.url("/"), "alice").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let all = raw::eventually(Duration::from_secs(15), "a token endpoint span", || async {
        let s = otlp.spans();
        s.iter().any(|g| g.name() == "provider token").then_some(s)
    })
    .await;
    let token = all.iter().find(|g| g.name() == "provider token").unwrap();
    let callback = all
        .iter()
        .find(|g| g.span_id() == token.parent_id())
        .expect("the token call's parent span");
    assert_eq!(callback.trace_id(), token.trace_id());
    assert_eq!(
        callback.attr("url.path").as_deref(),
        Some("/oauth2/callback")
    );
    assert_eq!(callback.kind(), SpanKind::Server as i32);
    assert_eq!(token.attr("http.request.method").as_deref(), Some("POST"));
    for s in &all {
        let text = format!("{:?}", s.span);
        assert!(
            !text.contains("portcullis-secret"),
            "client secret in {text}"
        );
        assert!(!text.contains("code="), "authorization code in {text}");
    }

    // The histograms, by issuer and endpoint.
    let m = raw::get(p.admin, "/metrics").await.unwrap().text();
    for endpoint in ["discovery", "jwks", "token"] {
        let count = format!(
            "portcullis_provider_request_duration_seconds_count{{issuer=\"{}\",endpoint=\"{endpoint}\"}} ",
            idp.issuer
        );
        let n: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix(&count))
            .unwrap_or_else(|| panic!("{count} in {m}"))
            .parse()
            .unwrap();
        assert!(n >= 1, "{count}{n}");
    }
    assert!(
        m.lines()
            .find_map(|l| l.strip_prefix("portcullis_trace_spans_total{result=\"exported\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > 0),
        "{m}"
    );
    assert!(otlp
        .requests()
        .iter()
        .all(|(path, ctype)| path == "/v1/traces" && ctype == "application/x-protobuf"));
}
