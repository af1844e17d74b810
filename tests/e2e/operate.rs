//! Operating the proxy (issue 13): what the access log and `/metrics` of the real binary
//! say about a login, bearer requests, each kind of refusal and forward-auth checks, and
//! the README's metric table checked against the families the binary exposes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::support::agent::{Agent, API_CALL};
use crate::support::idp::{Idp, Profile};
use crate::support::login::{self, login, with_cookie, Setup};
use crate::support::otlp::{Got, OtlpReceiver};
use crate::support::raw;
use crate::support::*;

/// The login config of the brief, trusting 127.0.0.1 (forward-auth, `X-Forwarded-For`),
/// with the bearer route `/api/` and a bearer route `/scoped/` needing a scope nobody has,
/// in front of the echo upstream, against the real provider.
async fn operated() -> (Idp, EchoUpstream, TestProxy) {
    operated_with("").await
}

/// [`operated`], with `extra` appended to the config (e.g. `[telemetry]`).
async fn operated_with(extra: &str) -> (Idp, EchoUpstream, TestProxy) {
    let s = Setup {
        trusted: true,
        bearer: true,
        ..Setup::default()
    };
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    // Routes match in order: `/scoped/` goes before the catch-all `/`.
    let catch_all = "[[route]]\nname = \"app\"\npath = \"/\"";
    let config = login::config(&idp, &echo, &s).replace(
        catch_all,
        &format!(
            "[[route]]\nname = \"scoped\"\npath = \"/scoped/\"\nupstream = \"app\"\n\
             auth = \"bearer\"\nscopes = [\"nobody:has-this\"]\n\n{catch_all}"
        ),
    );
    assert!(config.contains("name = \"scoped\""));
    let config = format!("{config}\n{extra}");
    let p = TestProxy::start(&config).await;
    proxy::wait_ready(&p).await;
    (idp, echo, p)
}

/// One sample line of the exposition: `name{labels} value`.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format strictly enough to catch a malformed exposition:
/// every family has one `# HELP` and one `# TYPE` before its samples, samples belong to a
/// declared family (histograms: `_bucket`, `_sum`, `_count`), label values are quoted
/// and escaped, values are numbers. Returns the families (name → type) and the samples.
fn parse_exposition(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps: BTreeSet<String> = BTreeSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP text");
            assert!(!help.trim().is_empty(), "empty HELP: {line}");
            assert!(helps.insert(name.to_string()), "HELP twice: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE kind");
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind}: {line}"
            );
            assert!(helps.contains(name), "TYPE before HELP: {line}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE twice: {line}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                (name.to_string(), parse_labels(body, line))
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&name);
        assert!(types.contains_key(family), "sample without TYPE: {line}");
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    (types, samples)
}

fn parse_labels(mut body: &str, line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    while !body.is_empty() {
        let (key, rest) = body.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
        assert!(
            key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "label name {key:?} in {line}"
        );
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line}"),
            }
        };
        assert!(out.insert(key.to_string(), value).is_none(), "{line}");
        body = &rest[end + 1..];
        body = body.strip_prefix(',').unwrap_or(body);
    }
    out
}

/// The value of the sample `name` whose labels include all of `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
        .map(|s| s.value)
}

/// The README's metric table: `| `name` | type | labels | meaning |` rows under
/// "## Admin listener".
fn readme_metrics() -> BTreeMap<String, String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("\n## Admin listener")
        .nth(1)
        .expect("an Admin listener section")
        .split("\n## ")
        .next()
        .unwrap();
    section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            (name.starts_with("portcullis_") || name.starts_with("process_"))
                .then(|| (name.to_string(), cells[2].to_string()))
        })
        .collect()
}

async fn metrics(p: &TestProxy) -> (BTreeMap<String, String>, Vec<Sample>) {
    let m = raw::get(p.admin, "/metrics").await.unwrap();
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    parse_exposition(&m.text())
}

#[tokio::test]
async fn readme_metric_table_lists_exactly_what_a_running_binary_exposes() {
    let (idp, _echo, p) = operated().await;
    // One bearer request, so that the token families have moved too.
    let token = idp.machine_jwt().await;
    let r = raw::get_with(
        p.addr,
        "/api/x",
        &[&format!("Authorization: Bearer {token}")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);

    let (exposed, samples) = metrics(&p).await;
    let listed = readme_metrics();
    assert!(listed.len() >= 20, "README table parsed: {listed:?}");
    let missing: Vec<_> = exposed
        .keys()
        .filter(|k| !listed.contains_key(*k))
        .collect();
    let stale: Vec<_> = listed
        .keys()
        .filter(|k| !exposed.contains_key(*k))
        .collect();
    assert!(missing.is_empty(), "exposed but not in README: {missing:?}");
    assert!(stale.is_empty(), "in README but not exposed: {stale:?}");
    for (name, kind) in &listed {
        assert_eq!(&exposed[name], kind, "type of {name} in README");
    }
    assert_eq!(
        value(
            &samples,
            "portcullis_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    // Process metrics are read from /proc, not made up.
    let rss = value(&samples, "process_resident_memory_bytes", &[]).unwrap();
    assert!(rss > 1e6 && rss < 4e9, "rss {rss}");
    let fds = value(&samples, "process_open_fds", &[]).unwrap();
    assert!(fds >= 5.0, "open fds {fds}");
    // The request histogram reaches the largest configured timeout (the default 60 s
    // route timeout here) and ends with +Inf.
    let buckets: Vec<&str> = samples
        .iter()
        .filter(|s| s.name == "portcullis_request_duration_seconds_bucket")
        .filter(|s| s.labels["route"] == "api")
        .map(|s| s.labels["le"].as_str())
        .collect();
    assert!(buckets.contains(&"60"), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&"+Inf"));
}

#[tokio::test]
async fn access_log_metrics_and_spans_say_who_what_and_why_for_each_outcome() {
    let otlp = OtlpReceiver::start().await;
    let (idp, _echo, p) = operated_with(&format!(
        "[telemetry]\notlp_endpoint = \"{}\"\nsample_ratio = 1.0\n",
        otlp.endpoint()
    ))
    .await;
    let http = Http::new();
    let id = |n: &str| format!("op-{n}");

    // A login: start and callback counted, the user's requests logged with the user.
    let mut alice = Agent::new();
    let (_, r) = login(&mut alice, &p.url("/app/"), "alice").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let alice_cookie = alice.jar.root_cookie_header();
    let mut bob = Agent::new();
    login(&mut bob, &p.url("/"), "bob").await;
    let bob_cookie = bob.jar.root_cookie_header();
    let token = idp.machine_jwt().await;

    let bearer = format!("Bearer {token}");
    let mut tampered = token.clone().into_bytes();
    let sig = token.rfind('.').unwrap() + 5;
    tampered[sig] = if tampered[sig] == b'A' { b'B' } else { b'A' };
    let tampered = format!("Bearer {}", String::from_utf8(tampered).unwrap());
    // (request id, path, cookie, extra headers, status, route, reason)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "session-ok",
            "/app/page",
            &alice_cookie,
            vec![],
            200,
            "app",
            None,
        ),
        (
            "policy",
            "/admin/panel",
            &bob_cookie,
            vec![],
            403,
            "admin",
            Some("policy:group"),
        ),
        (
            "no-session",
            "/app/page",
            "",
            vec![],
            401,
            "app",
            Some("no_session"),
        ),
        (
            "expired-session",
            "/app/page",
            "_portcullis=Zm9vYmFy",
            vec![],
            401,
            "app",
            Some("session_expired"),
        ),
        (
            "bearer-ok",
            "/api/items",
            "",
            vec![("authorization", &bearer)],
            200,
            "api",
            None,
        ),
        (
            "no-token",
            "/api/items",
            "",
            vec![],
            401,
            "api",
            Some("no_token"),
        ),
        (
            "bad-signature",
            "/api/items",
            "",
            vec![("authorization", &tampered)],
            401,
            "api",
            Some("invalid_token:bad_signature"),
        ),
        (
            "scope",
            "/scoped/x",
            "",
            vec![("authorization", &bearer)],
            403,
            "scoped",
            Some("insufficient_scope"),
        ),
        (
            "forward-auth-ok",
            "/oauth2/auth",
            &alice_cookie,
            vec![("x-forwarded-uri", "/app/x")],
            202,
            "app",
            None,
        ),
        (
            "forward-auth-policy",
            "/oauth2/auth",
            &bob_cookie,
            vec![("x-forwarded-uri", "/admin/x")],
            403,
            "admin",
            Some("policy:group"),
        ),
        (
            "forward-auth-no-uri",
            "/oauth2/auth",
            &alice_cookie,
            vec![],
            403,
            "-",
            Some("policy:forward_auth_no_uri"),
        ),
        (
            "unrouted",
            "/oauth2/nothing",
            "",
            vec![],
            404,
            "-",
            Some("no_route"),
        ),
        (
            "callback-forged",
            "/oauth2/callback?state=forged&code=x",
            "",
            vec![],
            400,
            "-",
            Some("login:unknown_transaction"),
        ),
    ];
    for (name, path, cookie, headers, status, route, reason) in &cases {
        let rid = id(name);
        let mut all = vec![
            ("x-request-id", rid.as_str()),
            ("user-agent", "operate-e2e/1.0"),
            ("x-forwarded-for", "203.0.113.7"),
        ];
        all.extend(API_CALL.iter().copied());
        all.extend(headers.iter().copied());
        let r = with_cookie(&http, &p.url(path), cookie, &all).await;
        assert_eq!(r.status, *status, "{name}: {}", r.text());
        let line = p.access_line(&rid).await;
        assert_eq!(line["status"], *status, "{name}: {line}");
        assert_eq!(line["route"], *route, "{name}: {line}");
        assert_eq!(line["reason"].as_str(), *reason, "{name}: {line}");
        let canonical = path.split('?').next().unwrap();
        assert_eq!(line["path"], canonical, "{name}: no query: {line}");
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["host"], p.addr.to_string(), "{line}");
        assert_eq!(line["version"], "HTTP/1.1", "{line}");
        assert_eq!(line["user_agent"], "operate-e2e/1.0", "{line}");
        // The peer (127.0.0.1) is trusted: the client is the address it forwarded.
        assert_eq!(line["client"], "203.0.113.7", "{line}");
        assert_eq!(line["bytes_in"], 0, "{line}");
        assert_eq!(
            line["bytes_out"].as_u64(),
            Some(r.body.len() as u64),
            "{name}: bytes out: {line}"
        );
        let total = line["total_ms"].as_f64().expect("total_ms a number");
        assert!(total > 0.0 && total < 10_000.0, "{line}");
        // Milliseconds to the microsecond, not a long float.
        let digits = line["total_ms"].to_string();
        let decimals = digits.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 3, "total_ms {digits}");
        let who = line["user"].as_str().unwrap();
        match *name {
            "session-ok" | "forward-auth-ok" => assert_eq!(who, "user-alice", "{line}"),
            "policy" | "forward-auth-policy" => assert_eq!(who, "user-bob", "{line}"),
            "bearer-ok" | "scope" => assert_ne!(who, "-", "{line}"),
            _ => assert_eq!(who, "-", "{name}: {line}"),
        }
        if *status == 200 && *route != "-" && !path.starts_with("/oauth2/") {
            assert!(line["upstream_ms"].as_f64().is_some(), "{line}");
        }
        // The request's span says the same: status, route and reason; an auth decision
        // (forward-auth checks included) has its own child span with the same reason.
        let spans = raw::eventually(Duration::from_secs(15), "the request's spans", || async {
            let all = otlp.spans();
            let request = all
                .iter()
                .find(|s| s.attr("portcullis.request_id").as_deref() == Some(rid.as_str()))?
                .span_id();
            let mine: Vec<Got> = all
                .into_iter()
                .filter(|s| s.span_id() == request || s.parent_id() == request)
                .collect();
            Some(mine)
        })
        .await;
        let request = spans
            .iter()
            .find(|s| s.attr("portcullis.request_id").as_deref() == Some(rid.as_str()))
            .unwrap();
        assert_eq!(
            request.attr("http.response.status_code"),
            Some(status.to_string()),
            "{name}"
        );
        assert_eq!(
            request.attr("portcullis.reason").as_deref(),
            *reason,
            "{name}"
        );
        if *route != "-" {
            assert_eq!(
                request.attr("http.route").as_deref(),
                Some(*route),
                "{name}"
            );
            let auth = spans.iter().find(|s| s.name() == "auth");
            let auth = auth.unwrap_or_else(|| panic!("{name}: no auth span"));
            let result = if reason.is_some() { "deny" } else { "allow" };
            assert_eq!(
                auth.attr("portcullis.auth.result").as_deref(),
                Some(result),
                "{name}"
            );
        }
    }
    // Neither tokens nor cookies reach the log.
    let logs = p.logs();
    let session_value = alice_cookie.split_once('=').unwrap().1;
    assert!(!logs.contains(&token[..40]), "token logged");
    assert!(!logs.contains(&session_value[..30]), "cookie logged");

    let (_, s) = metrics(&p).await;
    let decision = |route: &str, mode: &str, result: &str, reason: &str| {
        value(
            &s,
            "portcullis_auth_decisions_total",
            &[
                ("route", route),
                ("mode", mode),
                ("result", result),
                ("reason", reason),
            ],
        )
    };
    // Two refusals of bob at /admin: one request, one forward-auth check.
    assert_eq!(
        decision("admin", "session", "deny", "policy:group"),
        Some(2.0)
    );
    // The two logins began as navigations without a session, then the API call.
    assert_eq!(decision("app", "session", "deny", "no_session"), Some(3.0));
    assert_eq!(
        decision("app", "session", "deny", "session_expired"),
        Some(1.0)
    );
    assert_eq!(decision("api", "bearer", "deny", "no_token"), Some(1.0));
    assert_eq!(
        decision("api", "bearer", "deny", "invalid_token:bad_signature"),
        Some(1.0)
    );
    assert_eq!(
        decision("scoped", "bearer", "deny", "insufficient_scope"),
        Some(1.0)
    );
    assert_eq!(decision("api", "bearer", "allow", "-"), Some(1.0));
    assert_eq!(
        decision("-", "forward_auth", "deny", "policy:forward_auth_no_uri"),
        Some(1.0)
    );
    // The two landing pages after login, alice's request and her forward-auth check.
    assert_eq!(decision("app", "session", "allow", "-"), Some(4.0));
    let flow = |name: &str, outcome: &str| value(&s, name, &[("outcome", outcome)]);
    assert_eq!(flow("portcullis_login_starts_total", "ok"), Some(2.0));
    assert_eq!(flow("portcullis_login_callbacks_total", "ok"), Some(2.0));
    assert_eq!(
        flow("portcullis_login_callbacks_total", "unknown_transaction"),
        Some(1.0)
    );
    assert_eq!(flow("portcullis_sign_outs_total", "ok"), Some(0.0));
    assert_eq!(
        value(
            &s,
            "portcullis_token_validations_total",
            &[("result", "fail")]
        ),
        Some(1.0),
        "the tampered token"
    );
    assert_eq!(
        value(
            &s,
            "portcullis_requests_total",
            &[("route", "scoped"), ("status", "4xx")]
        ),
        Some(1.0)
    );

    // Sign-out: counted, and logged with the user it ended.
    let r = with_cookie(
        &http,
        &p.url("/oauth2/sign_out"),
        &alice_cookie,
        &[("x-request-id", "op-sign-out")],
    )
    .await;
    assert!(r.status.is_redirection(), "{}", r.text());
    let line = p.access_line("op-sign-out").await;
    assert_eq!(line["path"], "/oauth2/sign_out", "{line}");
    let (_, s) = metrics(&p).await;
    assert_eq!(
        value(&s, "portcullis_sign_outs_total", &[("outcome", "ok")]),
        Some(1.0)
    );
}
