//! Browser login (issue 4) end to end with a scripted HTTP client: the real proxy binary in
//! front of the echo upstream, against the real OpenID provider of `tests/idp/` (standard and
//! auth0 profiles), with a cookie jar and redirects followed by hand. Covers the flow's
//! checks (state, flow cookie, replay), the session cookie (tampering, rotation of secrets,
//! chunking, the Redis store shared by two proxies), `rd` against the open-redirect corpus,
//! refresh (coalesced, failed), sign-out, and what a login costs.
//!
//! The fixtures ([`Setup`], [`config`], [`login`], ...) are in `support/login.rs`, shared
//! with `login_browser.rs`, `forward_auth.rs` and `parity.rs`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::agent::{location_of, resolve, Agent, API_CALL, NAVIGATE};
use crate::support::client::Resp;
use crate::support::idp::{forge, form, Idp, Profile, API};
use crate::support::login::{
    config, confirm_provider_logout, fixture, login, new_secret, proxy_for, through_provider,
    with_cookie, Fixture, Setup, ALLOWED_HOST,
};
use crate::support::*;

/// The `Set-Cookie` values of `r` that set (not delete) one of the proxy's session cookies.
pub fn session_cookies_set(r: &Resp) -> Vec<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| {
            let (name, value) = v
                .split(';')
                .next()
                .unwrap_or("")
                .split_once('=')
                .unwrap_or(("", ""));
            let name = name.trim();
            let is_session = name == "_portcullis"
                || name
                    .strip_prefix("_portcullis_")
                    .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()));
            is_session && !value.trim().is_empty() && !v.to_ascii_lowercase().contains("max-age=0")
        })
        .map(String::from)
        .collect()
}

/// The proxy's session cookies in the agent's jar (`_portcullis`, `_portcullis_N`).
pub fn session_cookie_names(agent: &Agent) -> Vec<String> {
    agent
        .jar
        .names()
        .into_iter()
        .filter(|n| n == "_portcullis" || n.starts_with("_portcullis_") && !n.contains("_tx_"))
        .collect()
}

/// An echo answer: 200 and the user the upstream saw.
pub fn echo_user(r: &Resp) -> String {
    assert_eq!(r.status, 200, "expected the app: {}", r.text());
    echo_header(&r.json(), "x-auth-request-user")
        .unwrap_or_else(|| panic!("no X-Auth-Request-User upstream: {}", r.text()))
}

/// "No session": a navigation goes to `/oauth2/start?rd=...`, an API call gets 401 JSON.
pub async fn assert_no_session(http: &Http, proxy: &TestProxy, cookie: &str, what: &str) {
    let r = with_cookie(http, &proxy.url("/page?x=1"), cookie, NAVIGATE).await;
    assert_eq!(r.status, 302, "{what}: navigation: {}", r.text());
    assert_eq!(
        r.header("location"),
        Some("/oauth2/start?rd=%2Fpage%3Fx%3D1"),
        "{what}"
    );
    let r = with_cookie(http, &proxy.url("/page"), cookie, API_CALL).await;
    assert_eq!(r.status, 401, "{what}: API call: {}", r.text());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{what}: {:?}",
        r.headers
    );
    let j = r.json();
    assert!(
        j["error"].is_string() && j["request_id"].is_string(),
        "{what}: {j}"
    );
}

/// An API call whose session just ended: 401, and the session cookie cleared.
fn assert_session_ended(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert!(
        r.headers
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap_or("").starts_with("_portcullis=;")),
        "{what}: the dead session is cleared: {:?}",
        r.headers
    );
}

/// The user a request with exactly `cookie` reaches the app as (API call).
pub async fn user_with_cookie(http: &Http, proxy: &TestProxy, cookie: &str) -> String {
    echo_user(&with_cookie(http, &proxy.url("/page"), cookie, API_CALL).await)
}

// ---------------------------------------------------------------------------------------
// The flow
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn scripted_login_reaches_the_app_with_identity_and_without_proxy_cookies() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    let mut a = Agent::new();
    a.jar.set("other", "kept");
    // A protected page sends the browser to the login, keeping where it was going.
    let r = a.navigate(&f.proxy.url("/app/page?q=1")).await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(location_of(&r), "/oauth2/start?rd=%2Fapp%2Fpage%3Fq%3D1");
    // /oauth2/start: to the provider with PKCE S256, state, nonce and redirect_uri from
    // public_url (not from the Host header the request carried).
    let r = a
        .get(
            &f.proxy.url("/oauth2/start?rd=%2Fapp%2Fpage%3Fq%3D1"),
            &[("host", "evil.example")],
        )
        .await;
    assert_eq!(r.status, 302);
    let authz = url::Url::parse(location_of(&r)).unwrap();
    assert!(
        authz
            .as_str()
            .starts_with(&f.idp.endpoint("authorization_endpoint")),
        "{authz}"
    );
    let q: std::collections::BTreeMap<String, String> = authz.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], "portcullis");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["redirect_uri"], f.proxy.url("/oauth2/callback"));
    assert_eq!(q["scope"], "openid email profile offline_access groups");
    assert!(q["state"].len() >= 32 && q["nonce"].len() >= 32 && q["code_challenge"].len() == 43);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let (url, r) = login(&mut a, authz.as_str(), "alice").await;
    assert_eq!(url, f.proxy.url("/app/page?q=1"), "lands on rd");
    let echo = r.json();
    assert_eq!(echo["path"], "/app/page?q=1");
    assert_eq!(echo_user(&r), "user-alice");
    assert_eq!(
        echo_header(&echo, "x-auth-request-email").as_deref(),
        Some("alice@example.com")
    );
    let groups = echo_header(&echo, "x-auth-request-groups").unwrap_or_default();
    assert!(
        groups.contains("admins") && groups.contains("staff"),
        "{groups}"
    );
    assert_eq!(
        echo_header(&echo, "x-auth-request-preferred-username").as_deref(),
        Some("alice")
    );
    // The proxy's cookies never reach the app; other cookies do.
    let cookie = echo_headers(&echo, "cookie").join("; ");
    assert!(cookie.contains("other=kept"), "{cookie}");
    assert!(
        !cookie.contains("_portcullis"),
        "proxy cookie upstream: {cookie}"
    );
    assert!(!session_cookie_names(&a).is_empty(), "{:?}", a.jar.names());
    // The transaction cookie was deleted at the callback.
    assert!(
        !a.jar.names().iter().any(|n| n.contains("_tx_")),
        "{:?}",
        a.jar.names()
    );
    // Client-sent identity headers are replaced, not passed.
    let r = a
        .get(
            &f.proxy.url("/again"),
            &[
                ("x-auth-request-user", "user-bob"),
                ("accept", "application/json"),
            ],
        )
        .await;
    assert_eq!(
        echo_headers(&r.json(), "x-auth-request-user"),
        vec!["user-alice"]
    );
    // /oauth2/userinfo: the identity, never a token.
    let r = a.get(&f.proxy.url("/oauth2/userinfo"), API_CALL).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["sub"], "user-alice");
    assert_eq!(j["email"], "alice@example.com");
    assert!(
        !r.text().contains("eyJ"),
        "userinfo leaks a token: {}",
        r.text()
    );
    // The admins-only route lets alice in.
    let r = a.get(&f.proxy.url("/admin/x"), API_CALL).await;
    assert_eq!(echo_user(&r), "user-alice");
}

#[tokio::test]
async fn admin_route_refuses_a_user_outside_the_group_with_403() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    let mut a = Agent::new();
    let (_, r) = login(&mut a, &f.proxy.url("/admin/x"), "bob").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.contains("text/html")),
        "a browser gets an HTML page: {:?}",
        r.headers
    );
    let r = a.get(&f.proxy.url("/admin/x"), API_CALL).await;
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].is_string());
    // The rest of the app is open to bob.
    let r = a.get(&f.proxy.url("/x"), API_CALL).await;
    assert_eq!(echo_user(&r), "user-bob");
}

/// Starts a login at the proxy and drives the provider; returns the callback URL that the
/// provider sent the browser to, not yet visited.
async fn until_callback(f: &Fixture, a: &mut Agent, user: &str) -> String {
    through_provider(a, &f.proxy.url("/oauth2/start?rd=%2Fdone"), user).await
}

fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let mut u = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .into_owned()
        .map(|(k, v)| {
            if k == name {
                (k, value.to_string())
            } else {
                (k, v)
            }
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u.to_string()
}

fn assert_flow_page(r: &Resp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{what}: {:?}",
        r.headers
    );
    assert_eq!(r.header("cache-control"), Some("no-store"), "{what}");
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
    assert!(
        r.header("content-security-policy")
            .is_some_and(|c| c.contains("frame-ancestors 'none'")),
        "{what}: {:?}",
        r.headers
    );
    assert!(
        session_cookies_set(r).is_empty(),
        "{what}: a session was set: {:?}",
        r.headers
    );
}

#[tokio::test]
async fn callback_state_mismatch_missing_flow_cookie_and_replay_are_400_without_session() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;

    // State mismatch: the provider's answer carries another state than this browser's.
    let mut a = Agent::new();
    let cb = until_callback(&f, &mut a, "alice").await;
    let forged = with_query_param(&cb, "state", &forge::b64(&forge::random_bytes(32)));
    let r = a.navigate(&forged).await;
    assert_flow_page(&r, 400, "state mismatch");
    assert!(session_cookie_names(&a).is_empty());
    // Without a state at all.
    let mut u = url::Url::parse(&cb).unwrap();
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != "state")
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    let r = a.navigate(u.as_str()).await;
    assert_flow_page(&r, 400, "no state");

    // Missing flow cookie: the callback comes to a browser that did not start this login
    // (login CSRF): the right state, but no transaction cookie.
    let mut b = Agent::new();
    let cb = until_callback(&f, &mut b, "alice").await;
    let tx: Vec<String> = b
        .jar
        .names()
        .into_iter()
        .filter(|n| n.contains("_tx_"))
        .collect();
    assert_eq!(tx.len(), 1, "one transaction cookie: {:?}", b.jar.names());
    let saved_tx = (tx[0].clone(), b.jar.get(&tx[0]).unwrap());
    b.jar.remove(&tx[0]);
    let r = b.navigate(&cb).await;
    assert_flow_page(&r, 400, "missing flow cookie");
    assert!(session_cookie_names(&b).is_empty());
    // Another browser (the victim's) with no cookie at all.
    let r = Agent::new().navigate(&cb).await;
    assert_flow_page(&r, 400, "foreign browser");

    // The same callback, now with its cookie: it works once...
    b.jar.set(&saved_tx.0, &saved_tx.1);
    let r = b.navigate(&cb).await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(location_of(&r), "/done");
    assert!(!session_cookies_set(&r).is_empty(), "{:?}", r.headers);
    let first_session = b.jar.root_cookie_header();
    // ...and replayed it is 400: the transaction cookie was deleted.
    let r = b.navigate(&cb).await;
    assert_flow_page(&r, 400, "replayed callback");
    // Replayed with a kept copy of the transaction cookie: the provider refuses the code
    // a second time, still 400 and no session.
    let mut c = Agent::new();
    c.jar.set(&saved_tx.0, &saved_tx.1);
    let r = c.navigate(&cb).await;
    assert_flow_page(&r, 400, "replayed callback with a copy of the flow cookie");
    assert!(session_cookie_names(&c).is_empty());
    // The session of the one good callback works.
    let http = Http::new();
    assert_eq!(
        user_with_cookie(&http, &f.proxy, &first_session).await,
        "user-alice"
    );

    // A provider error at the callback is a clear page, escaped.
    let mut d = Agent::new();
    let r = d.navigate(&f.proxy.url("/oauth2/start")).await;
    let authz = url::Url::parse(location_of(&r)).unwrap();
    let state = authz
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let cb = format!(
        "{}?{}",
        f.proxy.url("/oauth2/callback"),
        form(&[
            ("error", "access_denied"),
            ("error_description", "<script>alert(1)</script>"),
            ("state", &state),
            ("iss", &f.idp.issuer),
        ])
    );
    let r = d.navigate(&cb).await;
    assert!(r.status.is_client_error(), "{}", r.status);
    assert!(r.text().contains("access_denied"), "{}", r.text());
    assert!(
        !r.text().contains("<script>alert"),
        "unescaped: {}",
        r.text()
    );
    assert!(session_cookies_set(&r).is_empty());
}

#[tokio::test]
async fn tampered_or_truncated_session_cookie_is_no_session() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    let mut a = Agent::new();
    login(&mut a, &f.proxy.url("/"), "alice").await;
    let value = a
        .jar
        .get("_portcullis")
        .expect("one unchunked session cookie");
    let http = Http::new();
    assert_eq!(
        user_with_cookie(&http, &f.proxy, &format!("_portcullis={value}")).await,
        "user-alice"
    );
    let mid = value.len() / 2;
    let flipped = {
        let mut b = value.clone().into_bytes();
        b[mid] = if b[mid] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    let cases = [
        ("one character changed", format!("_portcullis={flipped}")),
        ("truncated", format!("_portcullis={}", &value[..mid])),
        (
            "last character dropped",
            format!("_portcullis={}", &value[..value.len() - 1]),
        ),
        ("empty", "_portcullis=".to_string()),
        ("garbage", "_portcullis=not-a-session".to_string()),
    ];
    for (what, cookie) in &cases {
        assert_no_session(&http, &f.proxy, cookie, what).await;
        let r = with_cookie(&http, &f.proxy.url("/oauth2/userinfo"), cookie, API_CALL).await;
        assert_eq!(r.status, 401, "{what}: userinfo");
    }
    // A session from another deployment (other secrets) is foreign: no session either.
    let other = proxy_for(&f.idp, &f.echo, &Setup::default()).await;
    assert_no_session(
        &http,
        &other,
        &format!("_portcullis={value}"),
        "foreign secret",
    )
    .await;
}

#[tokio::test]
async fn expired_session_cookie_is_no_session() {
    let f = fixture(
        Profile::Standard,
        &[],
        &Setup {
            session_extra: "lifetime = \"2s\"\n".into(),
            ..Setup::default()
        },
    )
    .await;
    let mut a = Agent::new();
    let (_, r) = login(&mut a, &f.proxy.url("/"), "alice").await;
    assert_eq!(echo_user(&r), "user-alice");
    let cookie = a.jar.root_cookie_header();
    let set = a.jar.get("_portcullis").unwrap();
    assert!(!set.is_empty());
    // Replayed as it was (a browser would have dropped it: Max-Age): refused by the proxy
    // once the lifetime has passed (polled, with a deadline).
    let http = Http::new();
    eventually(
        Duration::from_secs(10),
        "the session lifetime passes",
        || async {
            let r = with_cookie(&http, &f.proxy.url("/page"), &cookie, API_CALL).await;
            (r.status == 401).then_some(())
        },
    )
    .await;
    assert_no_session(&http, &f.proxy, &cookie, "past the session lifetime").await;
}

#[tokio::test]
async fn rotated_out_secret_ends_the_session_and_a_kept_old_secret_keeps_it() {
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let http = Http::new();
    let (old, new) = (new_secret(), new_secret());
    let cookie = {
        let p = proxy_for(
            &idp,
            &echo,
            &Setup {
                secrets: vec![old.clone()],
                ..Setup::default()
            },
        )
        .await;
        let mut a = Agent::new();
        let (_, r) = login(&mut a, &p.url("/"), "alice").await;
        assert_eq!(echo_user(&r), "user-alice");
        format!("_portcullis={}", a.jar.get("_portcullis").unwrap())
    };
    // Restarted with a new first secret and the old one kept second: still valid.
    let p = proxy_for(
        &idp,
        &echo,
        &Setup {
            secrets: vec![new.clone(), old.clone()],
            ..Setup::default()
        },
    )
    .await;
    assert_eq!(user_with_cookie(&http, &p, &cookie).await, "user-alice");
    drop(p);
    // Restarted with the old secret gone: no session.
    let p = proxy_for(
        &idp,
        &echo,
        &Setup {
            secrets: vec![new.clone()],
            ..Setup::default()
        },
    )
    .await;
    assert_no_session(&http, &p, &cookie, "rotated-out secret").await;
}

/// The reloads counted by the admin listener with `result`.
pub async fn reloads_ok(p: &TestProxy) -> u64 {
    let Ok(m) = crate::support::raw::get(p.admin, "/metrics").await else {
        return 0;
    };
    m.text()
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_config_reloads_total{result=\"ok\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

pub async fn reload(p: &TestProxy, text: &str, count: u64) {
    p.write_config(text);
    p.signal(Signal::Hup).await;
    eventually(Duration::from_secs(20), "the reload", || async {
        (reloads_ok(p).await >= count).then_some(())
    })
    .await;
}

/// A reload keeps logins working. With the login settings unchanged, the running login
/// (provider metadata, keys, sessions) carries over to the new configuration; with a new
/// cookie secret a new login is built and its provider metadata loaded, so that logging
/// in works again at once, and the sessions sealed with the old secret end.
#[tokio::test]
async fn logins_work_across_reloads() {
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let http = Http::new();
    let setup = Setup::default();
    let p = proxy_for(&idp, &echo, &setup).await;
    let mut a = Agent::new();
    let (_, r) = login(&mut a, &p.url("/"), "alice").await;
    assert_eq!(echo_user(&r), "user-alice");
    let cookie = format!("_portcullis={}", a.jar.get("_portcullis").unwrap());

    // 1. One route more, the same login settings.
    let extra = format!(
        "[[upstream]]\nname = \"more\"\nurl = \"{}\"\n\n[[route]]\nname = \"more\"\npath = \"/more\"\nupstream = \"more\"\nauth = \"public\"\n",
        echo.url("/more-upstream")
    );
    let text = config(&idp, &echo, &setup);
    // The new route goes before the catch-all login route.
    let at = text.find("[[route]]").expect("a route");
    let with_more = format!("{}{extra}\n{}", &text[..at], &text[at..]);
    reload(&p, &with_more, 1).await;
    let r = http.get(&p.url("/more")).await;
    assert_eq!(r.status, 200, "the new route: {}", r.text());
    assert_eq!(user_with_cookie(&http, &p, &cookie).await, "user-alice");
    let mut b = Agent::new();
    let (_, r) = login(&mut b, &p.url("/"), "bob").await;
    assert_eq!(echo_user(&r), "user-bob", "a login after the reload");

    // 2. A new cookie secret: a new login. The old cookie is no session any more, and a
    //    new login works as soon as the new login's provider metadata is loaded.
    let rotated = Setup {
        secrets: vec![new_secret()],
        ..setup.clone()
    };
    reload(&p, &config(&idp, &echo, &rotated), 2).await;
    assert_no_session(&http, &p, &cookie, "secret replaced by a reload").await;
    eventually(
        Duration::from_secs(20),
        "/oauth2/start after the reload",
        || async {
            let r = http.get(&p.url("/oauth2/start?rd=%2F")).await;
            (r.status == 302).then_some(())
        },
    )
    .await;
    let mut c = Agent::new();
    let (_, r) = login(&mut c, &p.url("/"), "alice").await;
    assert_eq!(
        echo_user(&r),
        "user-alice",
        "a login after the second reload"
    );
}

#[tokio::test]
async fn large_session_is_chunked_and_works() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    let mut a = Agent::new();
    a.jar.set("other", "kept");
    let (_, r) = login(&mut a, &f.proxy.url("/big"), "many").await;
    let errors: Vec<String> = f
        .proxy
        .logs()
        .lines()
        .filter(|l| l.contains("\"ERROR\"") || l.contains("\"WARN\""))
        .map(String::from)
        .collect();
    assert_eq!(r.status, 200, "proxy errors: {errors:#?}");
    assert_eq!(echo_user(&r), "user-many");
    let names = session_cookie_names(&a);
    assert!(
        names.len() >= 2 && names.iter().all(|n| n.starts_with("_portcullis_")),
        "expected chunks: {names:?}"
    );
    let echo = r.json();
    let groups = echo_header(&echo, "x-auth-request-groups").unwrap_or_default();
    assert!(
        groups.split(',').count() >= 150,
        "{} groups",
        groups.split(',').count()
    );
    let cookie = echo_headers(&echo, "cookie").join("; ");
    assert!(
        cookie.contains("other=kept") && !cookie.contains("_portcullis"),
        "{cookie}"
    );
    // Again, with the chunks as the jar holds them.
    let r = a.get(&f.proxy.url("/again"), API_CALL).await;
    assert_eq!(echo_user(&r), "user-many");
    // A missing chunk is no session.
    let cookie = a.jar.root_cookie_header();
    let without_last: Vec<&str> = cookie
        .split("; ")
        .filter(|c| !c.starts_with(&format!("{}=", names.last().unwrap())))
        .collect();
    assert_no_session(
        &Http::new(),
        &f.proxy,
        &without_last.join("; "),
        "missing chunk",
    )
    .await;
}

#[tokio::test]
async fn several_tabs_log_in_at_once_and_transaction_cookies_are_capped() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    let mut a = Agent::new();
    // Three tabs start a login; the provider is driven for each; the callbacks come back
    // in another order. Each finds its own transaction and lands on its own rd.
    let mut authz = Vec::new();
    for tab in ["one", "two", "three"] {
        let r = a
            .navigate(&f.proxy.url(&format!("/oauth2/start?rd=%2F{tab}")))
            .await;
        authz.push(location_of(&r).to_string());
    }
    let mut callbacks = Vec::new();
    for u in &authz {
        callbacks.push(through_provider(&mut a, u, "alice").await);
    }
    for (i, tab) in [(2, "three"), (0, "one"), (1, "two")] {
        let r = a.navigate(&callbacks[i]).await;
        assert_eq!(r.status, 302, "tab {tab}: {}", r.text());
        assert_eq!(location_of(&r), format!("/{tab}"));
    }
    // A loop of starts does not pile up cookies: at most 5 logins in progress.
    for i in 0..12 {
        a.navigate(&f.proxy.url(&format!("/oauth2/start?rd=%2F{i}")))
            .await;
        let tx = a.jar.names().iter().filter(|n| n.contains("_tx_")).count();
        assert!(tx <= 5, "{tx} transaction cookies after {} starts", i + 1);
    }
    // The newest of them still completes.
    let r = a.navigate(&f.proxy.url("/oauth2/start?rd=%2Flast")).await;
    let cb = through_provider(&mut a, location_of(&r), "alice").await;
    let r = a.navigate(&cb).await;
    assert_eq!(location_of(&r), "/last");
}

// ---------------------------------------------------------------------------------------
// rd: the open-redirect table and corpus
// ---------------------------------------------------------------------------------------

/// The payloads of tests/data/openredirects.txt.
fn corpus() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/openredirects.txt"
    ))
    .unwrap();
    // 559 lines, the first one empty (an empty `rd`).
    let lines: Vec<String> = text.lines().map(String::from).collect();
    assert_eq!(lines.len(), 559, "the corpus has 559 payloads");
    lines
}

/// Each payload as the proxy must receive it: as written, and query-unescaped (as an
/// attacker's link pasted raw into a query string would arrive).
fn corpus_variants() -> Vec<String> {
    let mut out = Vec::new();
    for l in corpus() {
        let unescaped: String = url::form_urlencoded::parse(format!("x={l}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        out.push(l.clone());
        if unescaped != l {
            out.push(unescaped);
        }
    }
    out
}

/// Where a browser that received `location` in answer to `from` ends up must be this
/// origin or the allowed host: `None` if so, else a description.
fn escapes(from: &str, location: &str, origin: &url::Url) -> Option<String> {
    let Ok(u) = url::Url::parse(from).unwrap().join(location) else {
        return Some(format!("unparsable Location {location:?}"));
    };
    let ok = matches!(u.scheme(), "http" | "https")
        && (u.origin() == origin.origin()
            || (u.host_str() == Some(ALLOWED_HOST) && u.port().is_none()));
    (!ok).then(|| format!("Location {location:?} resolves to {u}"))
}

/// `rd=<value>` with the value sent exactly (percent-encoded once).
fn rd_query(value: &str) -> String {
    form(&[("rd", value)])
}

/// The table of the brief: the target after a full login for each `rd`.
#[tokio::test]
async fn rd_table_after_a_full_login() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    let table: &[(&str, &str)] = &[
        ("/dashboard?tab=1", "/dashboard?tab=1"),
        ("//evil.com", "/"),
        ("/\\evil.com", "/"),
        ("https:evil.com", "/"),
        ("%2F%2Fevil.com", "/"),
        ("/%2F%2Fevil.com", "/"),
        ("javascript:alert(1)", "/"),
        (
            "https://www.whitelisteddomain.tld/x",
            "https://www.whitelisteddomain.tld/x",
        ),
        ("https://evil.example/x", "/"),
        ("https://www.whitelisteddomain.tld@evil.com/", "/"),
        ("https://www.whitelisteddomain.tld.evil.com/", "/"),
    ];
    // One login at the provider; later logins of the same browser skip its form.
    let mut a = Agent::new();
    login(&mut a, &f.proxy.url("/"), "alice").await;
    for (rd, want) in table {
        let start = f.proxy.url(&format!("/oauth2/start?{}", rd_query(rd)));
        let cb = through_provider(&mut a, &start, "alice").await;
        let r = a.navigate(&cb).await;
        assert_eq!(r.status, 302, "rd {rd:?}: {}", r.text());
        assert_eq!(location_of(&r), *want, "rd {rd:?}");
        // Sign-out reflects the same decision in post_logout_redirect_uri.
        let r = a
            .navigate(&f.proxy.url(&format!("/oauth2/sign_out?{}", rd_query(rd))))
            .await;
        let end = url::Url::parse(location_of(&r)).unwrap();
        let plr = end
            .query_pairs()
            .find(|(k, _)| k == "post_logout_redirect_uri")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        let want_abs = resolve(&f.proxy.url("/"), want);
        assert_eq!(plr, want_abs, "sign-out rd {rd:?}");
        // Signed out at the proxy only: log in again (the provider session is kept).
    }
}

/// All 559 payloads (as written and query-unescaped) as `rd` of start + callback: after
/// the callback the browser stays on this origin or goes to the allowed host.
#[tokio::test]
async fn open_redirect_corpus_on_start_and_callback() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    let origin = url::Url::parse(&f.proxy.url("/")).unwrap();
    let mut first = Agent::new();
    login(&mut first, &f.proxy.url("/"), "alice").await;
    let payloads = corpus_variants();
    let t0 = Instant::now();
    // A few browsers in parallel, each with the provider session of the first login (its
    // own transaction cookies: at most 5 logins in progress per browser).
    let workers = 4;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mine: Vec<String> = payloads.iter().skip(w).step_by(workers).cloned().collect();
        let mut agent = first.clone();
        let start_base = f.proxy.url("/oauth2/start");
        let origin = origin.clone();
        tasks.push(tokio::spawn(async move {
            let mut bad = Vec::new();
            for p in mine {
                let start = format!("{start_base}?{}", rd_query(&p));
                let cb = through_provider(&mut agent, &start, "alice").await;
                let r = agent.navigate(&cb).await;
                assert_eq!(r.status, 302, "rd {p:?}: {}", r.text());
                if let Some(e) = escapes(&cb, location_of(&r), &origin) {
                    bad.push(format!("{p:?}: {e}"));
                }
            }
            bad
        }));
    }
    let mut bad = Vec::new();
    for t in tasks {
        bad.extend(t.await.unwrap());
    }
    println!(
        "open-redirect corpus: {} logins (start + provider + callback) in {:?}",
        payloads.len(),
        t0.elapsed()
    );
    assert!(bad.is_empty(), "{} escapes:\n{}", bad.len(), bad.join("\n"));
}

/// All 559 payloads as `rd` of sign-out: standard profile (RP-initiated logout:
/// `post_logout_redirect_uri`), and a provider without logout (the `Location` itself).
#[tokio::test]
async fn open_redirect_corpus_on_sign_out() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    let origin = url::Url::parse(&f.proxy.url("/")).unwrap();
    let mut a = Agent::new();
    login(&mut a, &f.proxy.url("/"), "alice").await;
    let cookie = a.jar.root_cookie_header();
    let http = Http::new();
    let end = f.idp.endpoint("end_session_endpoint");
    let mut bad = Vec::new();
    let payloads = corpus_variants();
    for p in &payloads {
        let url = f.proxy.url(&format!("/oauth2/sign_out?{}", rd_query(p)));
        let r = with_cookie(&http, &url, &cookie, NAVIGATE).await;
        assert_eq!(r.status, 302, "{p:?}");
        let loc = location_of(&r);
        assert!(loc.starts_with(&end), "{loc}");
        let plr = url::Url::parse(loc)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "post_logout_redirect_uri")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        if let Some(e) = escapes(&url, &plr, &origin) {
            bad.push(format!("{p:?}: post_logout_redirect_uri: {e}"));
        }
    }
    // auth0 without logout_url: no end_session_endpoint, no template: `Location` is rd.
    let idp0 = Idp::start(Profile::Auth0).await;
    let p0 = proxy_for(&idp0, &f.echo, &Setup::default()).await;
    let origin0 = url::Url::parse(&p0.url("/")).unwrap();
    for p in &payloads {
        let url = p0.url(&format!("/oauth2/sign_out?{}", rd_query(p)));
        let r = with_cookie(&http, &url, "", NAVIGATE).await;
        assert_eq!(r.status, 302, "{p:?}");
        if let Some(e) = escapes(&url, location_of(&r), &origin0) {
            bad.push(format!("{p:?}: Location: {e}"));
        }
    }
    assert!(bad.is_empty(), "{} escapes:\n{}", bad.len(), bad.join("\n"));
}

// ---------------------------------------------------------------------------------------
// Refresh
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn fifty_concurrent_requests_on_an_expiring_token_cause_one_refresh() {
    // Access tokens live 5 s; the proxy refreshes 60 s before expiry: every request of a
    // session refreshes, unless one refresh is shared.
    let f = fixture(
        Profile::Standard,
        &["--access-token-ttl", "5"],
        &Setup::default(),
    )
    .await;
    let mut a = Agent::new();
    let (_, r) = login(&mut a, &f.proxy.url("/"), "alice").await;
    assert_eq!(echo_user(&r), "user-alice");
    let cookie = a.jar.root_cookie_header();
    f.idp.reset_counts().await;
    let http = Http::new();
    let reqs = (0..50).map(|i| {
        let http = http.clone();
        let url = f.proxy.url(&format!("/page?i={i}"));
        let cookie = cookie.clone();
        async move { with_cookie(&http, &url, &cookie, API_CALL).await }
    });
    let answers = futures_util::future::join_all(reqs).await;
    let mut refreshed = None;
    for r in &answers {
        assert_eq!(echo_user(r), "user-alice");
        if let Some(c) = session_cookies_set(r).first() {
            refreshed = Some(c.split(';').next().unwrap().to_string());
        }
    }
    assert_eq!(f.idp.count("token").await, 1, "one refresh for 50 requests");
    // The refreshed session (rotated refresh token) refreshes again: nothing was burned.
    let refreshed = refreshed.expect("the refreshed session is sent back");
    let r = with_cookie(&http, &f.proxy.url("/next"), &refreshed, API_CALL).await;
    assert_eq!(echo_user(&r), "user-alice");
    assert_eq!(f.idp.count("token").await, 2);
}

#[tokio::test]
async fn failed_refresh_ends_the_session() {
    let mut f = fixture(
        Profile::Standard,
        &["--access-token-ttl", "5"],
        &Setup::default(),
    )
    .await;
    let mut a = Agent::new();
    let (_, r) = login(&mut a, &f.proxy.url("/"), "alice").await;
    assert_eq!(echo_user(&r), "user-alice");
    let cookie = a.jar.root_cookie_header();
    // The provider forgets every grant (restart): the refresh token is now invalid_grant.
    f.idp.restart_with_new_keys().await;
    let http = Http::new();
    let r = with_cookie(&http, &f.proxy.url("/page"), &cookie, API_CALL).await;
    assert_session_ended(&r, "refused refresh");
    assert!(f.idp.count("token").await >= 1, "a refresh was tried");
    assert_no_session(&http, &f.proxy, &cookie, "after a refused refresh").await;
}

/// With a refresh token that is not rotated (`--refresh reuse`), a request some seconds
/// after a refresh must not be handed the earlier refresh's access token as if it were new.
#[tokio::test]
async fn refresh_result_is_not_reused_after_its_token_expired() {
    let f = fixture(
        Profile::Standard,
        &["--access-token-ttl", "3", "--refresh", "reuse"],
        &Setup {
            headers_extra: "access_token = \"X-Auth-Request-Access-Token\"\n".into(),
            ..Setup::default()
        },
    )
    .await;
    let mut a = Agent::new();
    login(&mut a, &f.proxy.url("/"), "alice").await;
    // Refresh now (every request refreshes: the token lives 3 s).
    let r = a.get(&f.proxy.url("/one"), API_CALL).await;
    let t1 = echo_header(&r.json(), "x-auth-request-access-token").unwrap();
    // Until that token has expired, the shared refresh result may serve; then the next
    // request must refresh again rather than forward it (polled, with a deadline well
    // short of the 30 s a shared result may otherwise live).
    let deadline = Instant::now() + Duration::from_secs(10);
    let t2 = loop {
        let r = a.get(&f.proxy.url("/two"), API_CALL).await;
        let t = echo_header(&r.json(), "x-auth-request-access-token").unwrap();
        if t != t1 {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "the expired access token is still forwarded"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let active = f.idp.introspect(&t2).await;
    assert_eq!(
        active["active"], true,
        "the upstream was given an expired access token"
    );
}

// ---------------------------------------------------------------------------------------
// To the letter of OIDC (issue 10): parameters given twice, ID token audiences, the ID
// tokens of refreshes. The provider is made to misbehave with /__test/id-token; the
// repeated parameters are sent by the scripted browser.
// ---------------------------------------------------------------------------------------

/// An audience the proxy does not trust unless told to.
const OTHER_AUD: &str = "https://other.example.test";

/// `url` with `name=value` once more at its end.
fn with_repeated(url: &str, name: &str, value: &str) -> String {
    format!("{url}&{}", form(&[(name, value)]))
}

/// The login-transaction cookies in the agent's jar.
fn transaction_cookies(a: &Agent) -> Vec<String> {
    a.jar
        .names()
        .into_iter()
        .filter(|n| n.contains("_tx_"))
        .collect()
}

#[tokio::test]
async fn callback_with_a_repeated_state_code_or_iss_is_400_and_makes_no_session() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    for (name, value) in [
        ("state", forge::b64(&forge::random_bytes(32))),
        ("code", "forged-code".to_string()),
        ("iss", "https://evil.example.test".to_string()),
    ] {
        let mut a = Agent::new();
        let cb = until_callback(&f, &mut a, "alice").await;
        assert_eq!(transaction_cookies(&a).len(), 1, "{name}");
        let exchanges = f.idp.count("token").await;
        // The provider's response, with the parameter given a second time after it.
        let r = a.navigate(&with_repeated(&cb, name, &value)).await;
        assert_flow_page(&r, 400, name);
        assert!(r.text().contains("more than once"), "{name}: {}", r.text());
        assert!(session_cookie_names(&a).is_empty(), "{name}");
        assert!(
            transaction_cookies(&a).is_empty(),
            "{name}: the transaction cookie is removed: {:?}",
            a.jar.names()
        );
        assert_eq!(
            f.idp.count("token").await,
            exchanges,
            "{name}: no code exchange"
        );
        // The untouched response cannot finish that login any more.
        let r = a.navigate(&cb).await;
        assert_flow_page(&r, 400, &format!("{name}: the untouched response"));
        assert!(session_cookie_names(&a).is_empty(), "{name}");
    }
}

#[tokio::test]
async fn start_and_sign_out_with_a_repeated_rd_are_400() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    let mut a = Agent::new();
    let r = a
        .navigate(&f.proxy.url("/oauth2/start?rd=%2Fa&rd=%2Fb"))
        .await;
    assert_flow_page(&r, 400, "start");
    assert!(transaction_cookies(&a).is_empty(), "no login started");
    assert_eq!(f.idp.count("authorization").await, 0);
    let (_, r) = login(&mut a, &f.proxy.url("/oauth2/start?rd=%2Fhome"), "alice").await;
    assert_eq!(echo_user(&r), "user-alice");
    let r = a
        .navigate(
            &f.proxy
                .url("/oauth2/sign_out?rd=%2Fa&rd=https%3A%2F%2Fevil.example.test%2F"),
        )
        .await;
    assert_flow_page(&r, 400, "sign_out");
    assert!(r.header("location").is_none(), "{:?}", r.headers);
    // Signed out here all the same.
    assert!(session_cookie_names(&a).is_empty(), "{:?}", a.jar.names());
    let r = a.get(&f.proxy.url("/x"), API_CALL).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn an_id_token_with_an_untrusted_audience_or_several_and_no_azp_makes_no_session() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    for (what, claims) in [
        (
            "several audiences and no azp",
            json!({"aud": ["portcullis", OTHER_AUD]}),
        ),
        (
            "an untrusted audience beside ours, with azp",
            json!({"aud": ["portcullis", OTHER_AUD], "azp": "portcullis"}),
        ),
        ("an azp of another client", json!({"azp": "someone-else"})),
    ] {
        f.idp
            .change_id_tokens("authorization_code", &claims, 1)
            .await;
        let mut a = Agent::new();
        let cb = until_callback(&f, &mut a, "alice").await;
        let r = a.navigate(&cb).await;
        assert_flow_page(&r, 400, what);
        assert!(
            r.text().contains("issued to another client"),
            "{what}: {}",
            r.text()
        );
        assert!(session_cookie_names(&a).is_empty(), "{what}");
        assert!(transaction_cookies(&a).is_empty(), "{what}");
    }
}

#[tokio::test]
async fn trusted_audiences_admit_an_id_token_with_several_audiences_and_azp() {
    let f = fixture(
        Profile::Standard,
        &[],
        &Setup {
            provider_extra: format!("trusted_audiences = [\"{OTHER_AUD}\"]\n"),
            ..Setup::default()
        },
    )
    .await;
    let aud = json!(["portcullis", OTHER_AUD]);
    f.idp
        .change_id_tokens(
            "authorization_code",
            &json!({"aud": aud, "azp": "portcullis"}),
            1,
        )
        .await;
    let mut a = Agent::new();
    let (_, r) = login(&mut a, &f.proxy.url("/"), "alice").await;
    assert_eq!(echo_user(&r), "user-alice");
    // Trusted or not, several audiences need azp (OIDC Core 3.1.3.7 step 4).
    f.idp
        .change_id_tokens("authorization_code", &json!({"aud": aud}), 1)
        .await;
    let mut b = Agent::new();
    let cb = until_callback(&f, &mut b, "alice").await;
    assert_flow_page(&b.navigate(&cb).await, 400, "no azp");
}

#[tokio::test]
async fn a_refresh_that_returns_another_users_id_token_ends_the_session() {
    for profile in [Profile::Standard, Profile::Auth0] {
        let f = fixture(profile, &["--access-token-ttl", "5"], &Setup::default()).await;
        let (alice, bob) = match profile {
            Profile::Standard => ("user-alice", "user-bob"),
            Profile::Auth0 => ("auth0|alice", "auth0|bob"),
        };
        for (what, claims) in [
            ("another sub", json!({ "sub": bob })),
            ("another auth_time", json!({"auth_time": 1_000_000_000})),
            (
                "another audience",
                json!({"aud": ["portcullis", OTHER_AUD], "azp": "portcullis"}),
            ),
        ] {
            let what = format!("{profile:?}, {what}");
            let mut a = Agent::new();
            let (_, r) = login(&mut a, &f.proxy.url("/"), "alice").await;
            assert_eq!(echo_user(&r), alice, "{what}");
            let cookie = a.jar.root_cookie_header();
            // Every request refreshes (the access token lives 5 s, the margin is 60 s).
            f.idp.change_id_tokens("refresh_token", &claims, 0).await;
            let refreshes = f.idp.count("token").await;
            let http = Http::new();
            let r = with_cookie(&http, &f.proxy.url("/page"), &cookie, API_CALL).await;
            assert_session_ended(&r, &what);
            assert!(f.idp.count("token").await > refreshes, "{what}: refreshed");
            // Whatever comes next with that cookie, it is never anyone's session.
            assert_no_session(&http, &f.proxy, &cookie, &what).await;
            f.idp.clear_id_token_changes().await;
        }
    }
}

#[tokio::test]
async fn a_refresh_without_an_id_token_keeps_the_session_and_its_identity() {
    let f = fixture(
        Profile::Standard,
        &["--access-token-ttl", "5"],
        &Setup {
            headers_extra: "access_token = \"X-Auth-Request-Access-Token\"\n".into(),
            ..Setup::default()
        },
    )
    .await;
    let mut a = Agent::new();
    let (_, r) = login(&mut a, &f.proxy.url("/"), "alice").await;
    let before = echo_header(&r.json(), "x-auth-request-access-token").unwrap();
    f.idp.drop_id_tokens("refresh_token", 0).await;
    let refreshes = f.idp.count("token").await;
    let r = a.get(&f.proxy.url("/page"), API_CALL).await;
    assert_eq!(echo_user(&r), "user-alice");
    assert_eq!(f.idp.count("token").await, refreshes + 1);
    let after = echo_header(&r.json(), "x-auth-request-access-token").unwrap();
    assert_ne!(after, before, "the refreshed access token is used");
    assert!(
        !session_cookies_set(&r).is_empty(),
        "the refreshed session is saved"
    );
}

// ---------------------------------------------------------------------------------------
// Sign-out
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn sign_out_clears_the_session_and_logs_out_at_the_provider() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    let mut a = Agent::new();
    login(&mut a, &f.proxy.url("/"), "alice").await;
    let cookie = a.jar.root_cookie_header();
    let r = a.navigate(&f.proxy.url("/oauth2/sign_out?rd=%2Fbye")).await;
    assert_eq!(r.status, 302);
    let end = url::Url::parse(location_of(&r)).unwrap();
    assert!(end
        .as_str()
        .starts_with(&f.idp.endpoint("end_session_endpoint")));
    let q: std::collections::BTreeMap<String, String> = end.query_pairs().into_owned().collect();
    assert_eq!(q["post_logout_redirect_uri"], f.proxy.url("/bye"));
    assert_eq!(q["client_id"], "portcullis");
    assert!(q.contains_key("id_token_hint"));
    assert!(session_cookie_names(&a).is_empty(), "{:?}", a.jar.names());
    // The provider's confirmation form, then back to rd.
    let r = confirm_provider_logout(&f.idp, &mut a, end.as_str()).await;
    assert!(
        location_of(&r).starts_with(&f.proxy.url("/bye")),
        "{}",
        location_of(&r)
    );
    // The bye page is protected: back to the login form (the provider session is gone).
    let (url, r, _) = a.follow(location_of(&r).to_string().as_str(), 10).await;
    assert!(r.text().contains("login-form"), "at {url}: {}", r.text());
    // With the cookie store too, a copy kept from before is refused: its session id is
    // in the revocation set (see revocation.rs for the other configurations).
    let http = Http::new();
    assert_no_session(&http, &f.proxy, &cookie, "a copy taken before sign-out").await;
}

// ---------------------------------------------------------------------------------------
// Redis store
// ---------------------------------------------------------------------------------------

pub use crate::support::redis_server::RedisServer;

#[tokio::test]
async fn redis_sessions_are_shared_by_two_proxies_and_sign_out_ends_them_everywhere() {
    let redis = RedisServer::start().await;
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let s = Setup {
        redis_url: Some(redis.url()),
        ..Setup::default()
    };
    let (p1, p2) = tokio::join!(proxy_for(&idp, &echo, &s), proxy_for(&idp, &echo, &s));
    let mut a = Agent::new();
    let (_, r) = login(&mut a, &p1.url("/one"), "alice").await;
    assert_eq!(echo_user(&r), "user-alice");
    let cookie = a.jar.root_cookie_header();
    // The cookie is a small ticket; Redis holds the session, never in plaintext.
    let ticket = a.jar.get("_portcullis").expect("session ticket");
    assert!(
        ticket.len() < 300,
        "a ticket, not a session: {} bytes",
        ticket.len()
    );
    let dump = redis.dump();
    assert_eq!(
        dump.len(),
        1,
        "{:?}",
        dump.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    for (k, v) in &dump {
        let text = String::from_utf8_lossy(v);
        for secret in ["alice@example.com", "user-alice", "eyJ"] {
            assert!(!text.contains(secret), "{k} holds {secret} in plaintext");
        }
    }
    // The other replica serves it.
    let http = Http::new();
    assert_eq!(user_with_cookie(&http, &p2, &cookie).await, "user-alice");
    // Sign out on the other replica...
    let r = with_cookie(&http, &p2.url("/oauth2/sign_out"), &cookie, NAVIGATE).await;
    assert_eq!(r.status, 302);
    let keys: Vec<String> = redis.dump().into_iter().map(|(k, _)| k).collect();
    assert!(
        !keys.iter().any(|k| k.starts_with("portcullis:session:")),
        "the entry is deleted: {keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with("portcullis:revoked:s:")),
        "and the session id revoked: {keys:?}"
    );
    // ...and the first one refuses the same cookie at once.
    assert_no_session(&http, &p1, &cookie, "signed out on the other replica").await;
    assert_no_session(&http, &p2, &cookie, "signed out here").await;
    // A session too large for cookies (150 groups) is no problem server-side.
    let mut m = Agent::new();
    let (_, r) = login(&mut m, &p2.url("/big"), "many").await;
    assert_eq!(echo_user(&r), "user-many");
    let r = m.get(&p1.url("/big"), API_CALL).await;
    assert_eq!(echo_user(&r), "user-many");
}

// ---------------------------------------------------------------------------------------
// Auth0 profile
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn auth0_login_with_audience_and_sign_out_through_v2_logout() {
    let idp = Idp::start_with(Profile::Auth0, &["--access-token-ttl", "5"]).await;
    let echo = EchoUpstream::start().await;
    let s = Setup {
        provider_extra: format!(
            "extra_auth_params = {{ audience = \"{API}\" }}\n\
             logout_url = \"{}v2/logout?client_id={{client_id}}&returnTo={{return_to}}\"\n",
            idp.issuer
        ),
        headers_extra: "access_token = \"X-Auth-Request-Access-Token\"\n".into(),
        ..Setup::default()
    };
    let p = proxy_for(&idp, &echo, &s).await;
    let mut a = Agent::new();
    let r = a.navigate(&p.url("/oauth2/start?rd=%2Fhome")).await;
    let authz = url::Url::parse(location_of(&r)).unwrap();
    assert!(
        authz
            .as_str()
            .starts_with(&format!("{}authorize", idp.issuer)),
        "{authz}"
    );
    assert!(
        authz
            .query_pairs()
            .any(|(k, v)| k == "audience" && v == API),
        "{authz}"
    );
    let (url, r) = login(&mut a, authz.as_str(), "alice").await;
    assert_eq!(url, p.url("/home"));
    assert_eq!(echo_user(&r), "auth0|alice");
    let echo_json = r.json();
    let groups = echo_header(&echo_json, "x-auth-request-groups").unwrap_or_default();
    assert!(groups.contains("admins"), "{groups}");
    // The access token is a JWT for the API (Auth0's audience).
    let at = echo_header(&echo_json, "x-auth-request-access-token").unwrap();
    let claims: Value =
        serde_json::from_slice(&forge::unb64(at.split('.').nth(1).expect("a JWT"))).unwrap();
    assert!(claims["aud"].to_string().contains(API), "{claims}");
    // Refresh (the token lives 5 s) works against Auth0's /oauth/token.
    idp.reset_counts().await;
    let r = a.get(&p.url("/again"), API_CALL).await;
    assert_eq!(echo_user(&r), "auth0|alice");
    assert_eq!(idp.count("token").await, 1);
    // Sign-out: no end_session_endpoint in discovery, so the logout_url template.
    let r = a.navigate(&p.url("/oauth2/sign_out?rd=%2Fbye")).await;
    assert_eq!(r.status, 302);
    let logout = url::Url::parse(location_of(&r)).unwrap();
    assert_eq!(logout.path(), "/v2/logout", "{logout}");
    let q: std::collections::BTreeMap<String, String> = logout.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], "portcullis");
    assert_eq!(q["returnTo"], p.url("/bye"));
    let r = a.navigate(logout.as_str()).await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert_eq!(location_of(&r), p.url("/bye"), "lands on returnTo");
    // Signed out at both: /bye leads to the provider's login form again.
    let (url, r, _) = a.follow(&p.url("/bye"), 10).await;
    assert!(r.text().contains("login-form"), "at {url}: {}", r.text());
    // The rd corpus on returnTo.
    let origin = url::Url::parse(&p.url("/")).unwrap();
    let http = Http::new();
    let mut bad = Vec::new();
    for payload in corpus_variants() {
        let u = p.url(&format!("/oauth2/sign_out?{}", rd_query(&payload)));
        let r = with_cookie(&http, &u, "", NAVIGATE).await;
        let rt = url::Url::parse(location_of(&r))
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "returnTo")
            .map(|(_, v)| v.into_owned())
            .unwrap();
        if let Some(e) = escapes(&u, &rt, &origin) {
            bad.push(format!("{payload:?}: returnTo: {e}"));
        }
    }
    assert!(bad.is_empty(), "{} escapes:\n{}", bad.len(), bad.join("\n"));
}

#[tokio::test]
async fn auth0_refused_refresh_403_ends_the_session() {
    let mut idp = Idp::start_with(Profile::Auth0, &["--access-token-ttl", "5"]).await;
    let echo = EchoUpstream::start().await;
    let p = proxy_for(&idp, &echo, &Setup::default()).await;
    let mut a = Agent::new();
    let (_, r) = login(&mut a, &p.url("/"), "alice").await;
    assert_eq!(echo_user(&r), "auth0|alice");
    let cookie = a.jar.root_cookie_header();
    idp.restart_with_new_keys().await;
    let http = Http::new();
    let r = with_cookie(&http, &p.url("/x"), &cookie, NAVIGATE).await;
    assert_eq!(r.status, 302, "{}", r.text());
    assert!(
        location_of(&r).starts_with("/oauth2/start?rd="),
        "{}",
        location_of(&r)
    );
    assert_no_session(&http, &p, &cookie, "auth0 refresh refused with 403").await;
}

/// Auth0 without rotation answers a refresh with no `refresh_token`: the session keeps the
/// old one. Seen from a second replica (no shared refresh cache) once the access token of
/// the first refresh has expired: it must refresh again with the kept token.
#[tokio::test]
async fn auth0_refresh_without_a_new_refresh_token_keeps_the_old_one() {
    let idp = Idp::start_with(
        Profile::Auth0,
        &["--access-token-ttl", "2", "--auth0-no-rotate"],
    )
    .await;
    let echo = EchoUpstream::start().await;
    let s = Setup {
        headers_extra: "access_token = \"X-Auth-Request-Access-Token\"\n".into(),
        ..Setup::default()
    };
    let (p1, p2) = tokio::join!(proxy_for(&idp, &echo, &s), proxy_for(&idp, &echo, &s));
    let mut a = Agent::new();
    // The login's last hop already refreshes (the token lives 2 s): an answer without a
    // refresh token.
    let (_, r) = login(&mut a, &p1.url("/"), "alice").await;
    assert_eq!(echo_user(&r), "auth0|alice");
    let cookie = a.jar.root_cookie_header();
    // Until that refreshed access token has expired at the provider (polled at its
    // userinfo, with a deadline).
    let at = echo_header(&r.json(), "x-auth-request-access-token").unwrap();
    let userinfo = idp.endpoint("userinfo_endpoint");
    let http = Http::new();
    eventually(
        Duration::from_secs(10),
        "the access token expires",
        || async {
            let req = http::Request::get(&userinfo)
                .header("authorization", format!("Bearer {at}"))
                .body(crate::support::client::empty())
                .unwrap();
            let r = http.send(req).await.unwrap();
            (r.status == 401).then_some(())
        },
    )
    .await;
    let before = idp.count("token").await;
    assert_eq!(user_with_cookie(&http, &p2, &cookie).await, "auth0|alice");
    assert_eq!(
        idp.count("token").await,
        before + 1,
        "refreshed with the kept token"
    );
}

// ---------------------------------------------------------------------------------------
// Cost
// ---------------------------------------------------------------------------------------

/// What a login costs: GET /oauth2/start to the app's answer, scripted client, real
/// provider (authorize, login form, resume, code exchange, ID token check). Median of 10.
#[tokio::test]
async fn login_cost_median_of_ten() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    // Warm-up (JWKS fetch, connection pools).
    login(
        &mut Agent::new(),
        &f.proxy.url("/oauth2/start?rd=%2Fapp"),
        "alice",
    )
    .await;
    let mut times = Vec::new();
    for _ in 0..10 {
        let mut a = Agent::new();
        let t0 = Instant::now();
        let (url, r) = login(&mut a, &f.proxy.url("/oauth2/start?rd=%2Fapp"), "alice").await;
        times.push(t0.elapsed());
        assert_eq!(url, f.proxy.url("/app"));
        assert_eq!(echo_user(&r), "user-alice");
    }
    times.sort();
    println!(
        "login cost (GET /oauth2/start -> app answer: 7 browser requests + the code exchange, real provider): median {:?}, min {:?}, max {:?}",
        (times[4] + times[5]) / 2,
        times[0],
        times[9]
    );
}
