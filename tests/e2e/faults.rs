//! Faults of the parts around the proxy (issue 15), end to end: the real binary, the real
//! provider of `tests/idp/` (stopped, restarted on its port, or made to misbehave with its
//! `/__test/fail` knobs), a real `redis-server` (SIGKILLed and restarted on its port) and
//! upstreams that reset their connections.
//!
//! - the provider down at start: bearer 503 and the login a 503 page until it comes up;
//! - the provider down mid-run: cached tokens served until their cache limit, new ones 503;
//! - the JWKS serving garbage after a rotation: the last good keys kept;
//! - introspection slower than its timeout: 503, nothing cached;
//! - a refresh refused (`invalid_grant`: the session ends) versus a provider unreachable
//!   during refresh (503 once the access token has expired; the session kept);
//! - redis-server killed and restarted mid-load: 503 while it is down, then recovery;
//! - an upstream resetting before its head (502) or mid-body (a cut stream), logged and
//!   counted as the upstream's fault;
//! - two replicas sharing Redis, one SIGKILLed mid-load and restarted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bearer::assert_unavailable;
use crate::login::{assert_no_session, echo_user, user_with_cookie};
use crate::support::agent::{location_of, Agent, API_CALL, NAVIGATE};
use crate::support::client::Resp;
use crate::support::idp::forge::{self, Signer};
use crate::support::idp::{Idp, Profile, API};
use crate::support::login::{config_for, fixture, logged_in, login, proxy_for, with_cookie, Setup};
use crate::support::proxy::{free_port, server_section, wait_ready};
use crate::support::raw::{self, ResettingUpstream};
use crate::support::redis_server::RedisServer;
use crate::support::*;

/// `[bearer]` lines: opaque tokens introspected by the `rs` client.
const INTROSPECTION: &str = "introspection = \"opaque\"\n\
     introspection_client_id = \"rs\"\n\
     introspection_client_secret = \"rs-secret\"\n";

/// A GET of `path` on `p` with `Authorization: Bearer token`.
async fn bearer_get(http: &Http, p: &TestProxy, path: &str, token: &str) -> Resp {
    let auth = format!("Bearer {token}");
    with_cookie(http, &p.url(path), "", &[("authorization", auth.as_str())]).await
}

/// A 503 page for a browser: HTML, no redirect.
fn assert_unavailable_page(r: &Resp, what: &str) {
    assert_eq!(r.status, 503, "{what}: {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{what}: {:?}",
        r.headers
    );
    assert!(r.header("location").is_none(), "{what}: {:?}", r.headers);
}

/// Whether `r` clears the proxy's session cookie.
fn clears_session(r: &Resp) -> bool {
    r.headers
        .get_all("set-cookie")
        .iter()
        .any(|v| v.to_str().unwrap_or("").starts_with("_portcullis=;"))
}

/// Polls `f` every 50 ms until it gives `Some`, for at most `secs` seconds.
async fn until<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    raw::eventually(Duration::from_secs(secs), what, || {
        let fut = f();
        async move {
            let v = fut.await;
            if v.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            v
        }
    })
    .await
}

/// Sends with `send` until the answer is `want` (within `secs` seconds), every answer
/// before it being one of `allowed`: returns that answer.
async fn until_status<F, Fut>(secs: u64, what: &str, allowed: &[u16], want: u16, send: F) -> Resp
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Resp>,
{
    until(secs, what, || async {
        let r = send().await;
        let s = r.status.as_u16();
        assert!(
            s == want || allowed.contains(&s),
            "{what}: {s} {}",
            r.text()
        );
        (s == want).then_some(r)
    })
    .await
}

// ---------------------------------------------------------------------------------------
// The provider
// ---------------------------------------------------------------------------------------

/// The proxy starts while its provider is down: `/readyz` is 503, a bearer request is 503
/// (never 401: the token cannot be judged yet), and a browser's login start is a 503 page
/// (not a redirect to nowhere). Once the provider is up on its port, the same process
/// turns ready and serves tokens and logins, without a restart.
#[tokio::test]
async fn provider_down_at_start_bearer_and_login_are_503_until_it_comes_up() {
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let echo = EchoUpstream::start().await;
    let s = Setup {
        bearer: true,
        bearer_extra: INTROSPECTION.into(),
        ..Setup::default()
    };
    let proxy = TestProxy::start(&config_for(&issuer, Profile::Standard, &echo, &s)).await;
    let http = Http::new();
    let r = raw::get(proxy.admin, "/readyz").await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());

    let forged = Signer::own_es256("k").token(&json!({
        "iss": issuer, "sub": "x", "aud": API, "exp": forge::now() + 600}));
    for token in [forged.as_str(), "an-opaque-token"] {
        let r = bearer_get(&http, &proxy, "/api/items", token).await;
        assert_unavailable(&r, "bearer, provider not up yet");
    }
    // A navigation without a session is sent to the login start (nothing to ask yet)...
    let r = with_cookie(&http, &proxy.url("/page"), "", NAVIGATE).await;
    assert_eq!(r.status, 302, "{}", r.text());
    let start = location_of(&r).to_string();
    assert!(start.starts_with("/oauth2/start?rd="), "{start}");
    // ...which cannot send it to a provider that is not there: a 503 page.
    let r = with_cookie(&http, &proxy.url(&start), "", NAVIGATE).await;
    assert_unavailable_page(&r, "login start, provider not up yet");
    assert_eq!(echo.count(), 0);

    let idp = Idp::start_on(Profile::Standard, port, &[]).await;
    wait_ready(&proxy).await;
    let token = idp.machine_jwt().await;
    let r = bearer_get(&http, &proxy, "/api/items", &token).await;
    assert_eq!(echo_user(&r), "machine");
    let mut a = Agent::new();
    let (_, r) = login(&mut a, &proxy.url("/page"), "alice").await;
    assert_eq!(echo_user(&r), "user-alice");
}

/// The provider goes away mid-run: cached tokens are served until their cache entry ends
/// (`cache_ttl`), then 503; a new opaque token is 503 (never 401); a new JWT signed by a
/// key the proxy holds is verified offline; a JWT naming a key it never saw is 503 (the
/// JWKS cannot be asked). When the provider is back on its port, new tokens pass without
/// a proxy restart.
#[tokio::test]
async fn provider_down_mid_run_cached_tokens_served_new_ones_503_then_recovery() {
    let mut idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let s = Setup {
        bearer: true,
        bearer_extra: format!("{INTROSPECTION}cache_ttl = \"4s\"\n"),
        ..Setup::default()
    };
    let proxy = proxy_for(&idp, &echo, &s).await;
    let http = Http::new();
    let cached = idp.machine_opaque().await;
    let uncached = idp.machine_opaque().await;
    let jwt = idp.machine_jwt().await;
    let new_jwt = idp.machine_jwt().await;
    let t0 = Instant::now();
    for t in [&cached, &jwt] {
        assert_eq!(
            echo_user(&bearer_get(&http, &proxy, "/api/a", t).await),
            "machine"
        );
    }

    idp.kill();

    let r = bearer_get(&http, &proxy, "/api/b", &cached).await;
    if t0.elapsed() < Duration::from_secs(3) {
        assert_eq!(echo_user(&r), "machine", "cached, within cache_ttl");
    }
    let n = echo.count();
    let r = bearer_get(&http, &proxy, "/api/c", &uncached).await;
    assert_unavailable(&r, "uncached opaque token, provider down");
    assert_eq!(echo.count(), n, "nothing unchecked reached the upstream");
    let r = bearer_get(&http, &proxy, "/api/e", &new_jwt).await;
    assert_eq!(echo_user(&r), "machine", "a new JWT of a kept key, offline");
    // Once its entry has expired, the cached opaque token cannot be checked: 503.
    let what = "cached opaque token 503 once its entry expired";
    let r = until_status(15, what, &[200], 503, || {
        bearer_get(&http, &proxy, "/api/f", &cached)
    })
    .await;
    assert_unavailable(&r, "expired cache entry, provider down");
    // A kid the proxy never saw: 401 while its last JWKS fetch (at start) is fresh (the
    // unknown-kid refetch interval, 10 s), then 503 once the refetch fails. Never 200.
    let n = echo.count();
    let unknown_kid = Signer::own_es256("never-published").token(&json!({
        "iss": idp.issuer, "sub": "machine", "aud": API,
        "exp": forge::now() + 600, "client_id": "machine"}));
    let what = "unknown kid 503 once the JWKS refetch failed";
    let r = until_status(15, what, &[401], 503, || {
        bearer_get(&http, &proxy, "/api/d", &unknown_kid)
    })
    .await;
    assert_unavailable(&r, "JWT with a kid the proxy never saw, provider down");
    assert_eq!(echo.count(), n, "nothing unchecked reached the upstream");

    // Back on the same port, same keys (its in-memory tokens are gone).
    idp.restart(&[]).await;
    let fresh = idp.machine_opaque().await;
    let r = bearer_get(&http, &proxy, "/api/g", &fresh).await;
    assert_eq!(
        echo_user(&r),
        "machine",
        "a new opaque token after recovery"
    );
    assert_eq!(idp.count("introspection").await, 1);
    let r = bearer_get(&http, &proxy, "/api/h", &jwt).await;
    assert_eq!(echo_user(&r), "machine");
}

/// After a key rotation the JWKS endpoint serves garbage (not JSON), then JSON with no
/// usable key. The last good keys stay in use (tokens of the old key pass); a token of
/// the new key, which the proxy cannot fetch, is 503 once a refetch has failed (the proxy
/// cannot tell a rotation it cannot see from a forgery; 401 only between refetches while
/// the last fetch was good; never 200; see README "Auth modes"). Once the JWKS is good
/// again, the new key works without a restart.
#[tokio::test]
async fn jwks_serving_garbage_after_a_rotation_keeps_the_last_good_keys() {
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let s = Setup {
        bearer: true,
        ..Setup::default()
    };
    let proxy = proxy_for(&idp, &echo, &s).await;
    let http = Http::new();
    let old = idp.machine_jwt().await;
    assert_eq!(
        echo_user(&bearer_get(&http, &proxy, "/api/a", &old).await),
        "machine"
    );
    let t0 = Instant::now();
    // The next JWKS answers: garbage, then JSON without a usable key, then good again.
    idp.fail("jwks", "badjson", 1, None).await;
    idp.fail("jwks", "nokeys", 1, None).await;
    idp.rotate_keys().await;
    let new = idp.machine_jwt().await;
    assert_ne!(
        crate::bearer::jwt_part(&new, 0)["kid"],
        crate::bearer::jwt_part(&old, 0)["kid"]
    );
    idp.reset_counts().await;
    // One refetch per 10 s for unknown kids: the new kid is 401 while the JWKS the proxy
    // fetched at start is that fresh, 503 once a refetch has failed; never 200.
    for (fetches, what, mode) in [
        (1, "not JSON", "badjson"),
        (2, "without usable keys", "nokeys"),
    ] {
        until(15, &format!("the JWKS fetch that gets {mode}"), || async {
            let r = bearer_get(&http, &proxy, "/api/b", &new).await;
            assert!(
                r.status == 401 || r.status == 503,
                "{mode}: {} {}",
                r.status,
                r.text()
            );
            (idp.count("jwks").await >= fetches).then_some(())
        })
        .await;
        let r = bearer_get(&http, &proxy, "/api/c", &new).await;
        assert_unavailable(&r, &format!("new kid, JWKS {what}"));
        let r = bearer_get(&http, &proxy, "/api/d", &old).await;
        assert_eq!(echo_user(&r), "machine", "last good keys kept, JWKS {what}");
    }
    assert_eq!(
        proxy
            .metric("portcullis_jwks_fetches_total{result=\"error\"}")
            .await,
        2.0
    );

    // Good again: the new key is fetched at the next refetch.
    let what = "the new key works once the JWKS is good";
    until_status(15, what, &[503], 200, || {
        bearer_get(&http, &proxy, "/api/e", &new)
    })
    .await;
    assert_eq!(idp.count("jwks").await, 3);
    eprintln!("recovered {:?} after the first bad JWKS", t0.elapsed());
}

/// Introspection slower than `provider.timeout`: 503 at the timeout, and nothing cached,
/// neither the failure nor the late answer: the next request is introspected again and
/// passes, and the one after it is answered from the cache (counted at the provider).
#[tokio::test]
async fn introspection_slower_than_its_timeout_is_503_and_nothing_is_cached() {
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let s = Setup {
        bearer: true,
        bearer_extra: INTROSPECTION.into(),
        provider_extra: "timeout = \"1s\"\n".into(),
        ..Setup::default()
    };
    let proxy = proxy_for(&idp, &echo, &s).await;
    let http = Http::new();
    let token = idp.machine_opaque().await;
    idp.reset_counts().await;
    idp.fail("introspection", "slow", 1, Some(2500)).await;
    let t0 = Instant::now();
    let r = bearer_get(&http, &proxy, "/api/a", &token).await;
    assert_unavailable(&r, "introspection slower than the timeout");
    assert!(
        t0.elapsed() < Duration::from_millis(2400),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(echo.count(), 0);
    assert_eq!(idp.count("introspection").await, 1);
    assert_eq!(
        proxy
            .metric("portcullis_token_introspections_total{result=\"error\"}")
            .await,
        1.0
    );
    // Past the moment the provider sent its late answer: it was not taken either.
    tokio::time::sleep(Duration::from_millis(2700).saturating_sub(t0.elapsed())).await;
    let r = bearer_get(&http, &proxy, "/api/b", &token).await;
    assert_eq!(echo_user(&r), "machine");
    assert_eq!(
        idp.count("introspection").await,
        2,
        "the failure was not cached: introspected again"
    );
    let r = bearer_get(&http, &proxy, "/api/c", &token).await;
    assert_eq!(echo_user(&r), "machine");
    assert_eq!(
        idp.count("introspection").await,
        2,
        "the good answer is cached"
    );
}

/// The provider refuses the refresh (`invalid_grant`): the session ends; the API call gets
/// 401 with the session cookie cleared, and the cookie is no session any more (navigation
/// to the login, API 401).
#[tokio::test]
async fn a_refresh_refused_with_invalid_grant_ends_the_session() {
    // Access tokens of 5 s: every request is within the refresh margin.
    let f = fixture(
        Profile::Standard,
        &["--access-token-ttl", "5"],
        &Setup::default(),
    )
    .await;
    let (_a, cookie) = logged_in(&f.proxy, "alice").await;
    f.idp.fail("token", "invalid_grant", 0, None).await;
    let http = Http::new();
    let r = with_cookie(&http, &f.proxy.url("/page"), &cookie, API_CALL).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(
        clears_session(&r),
        "session cookie cleared: {:?}",
        r.headers
    );
    assert_eq!(
        f.proxy
            .metric("portcullis_session_refreshes_total{outcome=\"refused\"}")
            .await,
        1.0
    );
    // A copy of the cookie is no session either (each use is refused again).
    assert_no_session(&http, &f.proxy, &cookie, "after invalid_grant").await;
}

/// The provider cannot be reached during a refresh: while the access token is still valid
/// it serves on; once it has expired, 503 (JSON for an API call, a page for a navigation,
/// never a redirect to the login), and the session is kept: when the provider answers
/// again, the same cookie works without a new login.
#[tokio::test]
async fn a_provider_unreachable_during_refresh_is_503_once_expired_and_keeps_the_session() {
    let f = fixture(
        Profile::Standard,
        &["--access-token-ttl", "6"],
        &Setup {
            provider_extra: "timeout = \"1s\"\n".into(),
            ..Setup::default()
        },
    )
    .await;
    let t0 = Instant::now();
    let (_a, cookie) = logged_in(&f.proxy, "alice").await;
    // The token endpoint drops every connection.
    f.idp.fail("token", "close", 0, None).await;
    let http = Http::new();
    let r = with_cookie(&http, &f.proxy.url("/a"), &cookie, API_CALL).await;
    if t0.elapsed() < Duration::from_secs(4) {
        assert_eq!(echo_user(&r), "user-alice", "the current token serves on");
    }
    let what = "503 once the access token has expired";
    let r = until_status(20, what, &[200], 503, || async {
        let r = with_cookie(&http, &f.proxy.url("/b"), &cookie, API_CALL).await;
        assert!(!clears_session(&r), "the session is kept: {:?}", r.headers);
        r
    })
    .await;
    assert_unavailable(&r, "refresh unreachable, token expired");
    let r = with_cookie(&http, &f.proxy.url("/c"), &cookie, NAVIGATE).await;
    assert_unavailable_page(&r, "navigation, refresh unreachable");
    assert!(!clears_session(&r), "{:?}", r.headers);
    assert!(
        f.proxy
            .metric("portcullis_session_refreshes_total{outcome=\"unavailable\"}")
            .await
            >= 1.0
    );

    f.idp.clear_fail().await;
    assert_eq!(
        user_with_cookie(&http, &f.proxy, &cookie).await,
        "user-alice",
        "the same cookie, no new login"
    );
}

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

/// Statuses (or connection errors, as 0) of loops of API calls, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(usize, u16)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Four clients, each requesting `targets` (URL, cookie) in turn as API calls,
    /// without pause.
    fn start(targets: Vec<(String, String)>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Vec<(usize, u16)>>> = Default::default();
        let targets = Arc::new(targets);
        let tasks = (0..4)
            .map(|client| {
                let (stop, seen, targets) = (stop.clone(), seen.clone(), targets.clone());
                tokio::spawn(async move {
                    let http = Http::new();
                    let mut i = client;
                    while !stop.load(Ordering::Relaxed) {
                        let which = i % targets.len();
                        let (url, cookie) = &targets[which];
                        let req = http::Request::get(url.as_str())
                            .header("accept", "application/json")
                            .header("cookie", cookie.as_str())
                            .body(crate::support::client::empty())
                            .unwrap();
                        let sent = tokio::time::timeout(Duration::from_secs(10), http.send(req));
                        let status = match sent.await {
                            Ok(Ok(r)) => r.status.as_u16(),
                            Ok(Err(_)) | Err(_) => 0,
                        };
                        seen.lock().unwrap().push((which, status));
                        i += 1;
                        if status == 0 {
                            // Refused at once: do not spin.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                })
            })
            .collect();
        Load { stop, seen, tasks }
    }

    /// How many answers target `which` gave with `status` after the first `from`.
    fn count(&self, which: usize, status: u16, from: usize) -> usize {
        self.seen()[from..]
            .iter()
            .filter(|&&(w, s)| w == which && s == status)
            .count()
    }

    fn seen(&self) -> Vec<(usize, u16)> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until target `which` has answered `status` `n` times (after the first `from`
    /// answers).
    async fn wait_for(&self, which: usize, status: u16, n: usize, from: usize, secs: u64) {
        let what = format!("target {which} answers {status} {n} times");
        until(secs, &what, || async {
            (self.count(which, status, from) >= n).then_some(())
        })
        .await;
    }

    async fn stop(self) -> Vec<(usize, u16)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.seen.lock().unwrap().clone()
    }
}

/// redis-server SIGKILLed under load and restarted on its port (append-only file): a
/// session stored in Redis, and a cookie session whose revocation check is in Redis,
/// are 503 while it is down (never 200 unchecked, never a 500, never "no session"), and
/// both work again without a proxy restart, the Redis session restored from its file.
#[tokio::test]
async fn redis_killed_and_restarted_mid_load_fails_closed_then_recovers() {
    let mut redis = RedisServer::start_persistent().await;
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let stored = Setup {
        redis_url: Some(redis.url()),
        ..Setup::default()
    };
    let checked = Setup {
        session_extra: format!("redis_url = \"{}\"\n", redis.url()),
        ..Setup::default()
    };
    let (p1, p2) = tokio::join!(
        proxy_for(&idp, &echo, &stored),
        proxy_for(&idp, &echo, &checked)
    );
    let (_a, alice) = logged_in(&p1, "alice").await;
    let (_b, bob) = logged_in(&p2, "bob").await;

    let load = Load::start(vec![
        (p1.url("/load"), alice.clone()),
        (p2.url("/load"), bob.clone()),
    ]);
    load.wait_for(0, 200, 20, 0, 10).await;
    load.wait_for(1, 200, 20, 0, 10).await;
    let killed_at = load.seen().len();
    redis.kill();
    // Down for a while under load.
    load.wait_for(0, 503, 50, killed_at, 10).await;
    load.wait_for(1, 503, 50, killed_at, 10).await;
    let down_at = load.seen().len();
    // A browser is told the service is unavailable, not sent to sign in again.
    let http = Http::new();
    for (p, cookie) in [(&p1, &alice), (&p2, &bob)] {
        let r = with_cookie(&http, &p.url("/nav"), cookie, NAVIGATE).await;
        assert_unavailable_page(&r, "navigation, Redis down");
        assert!(!clears_session(&r), "{:?}", r.headers);
    }
    // Nothing was served unchecked (from a cache) while Redis was down.
    for which in [0, 1] {
        assert_eq!(load.count(which, 200, down_at), 0, "target {which}");
    }

    redis.restart().await;
    let back_at = load.seen().len();
    load.wait_for(0, 200, 20, back_at, 15).await;
    load.wait_for(1, 200, 20, back_at, 15).await;
    let seen = load.stop().await;
    let bad: Vec<_> = seen
        .iter()
        .filter(|(_, s)| *s != 200 && *s != 503)
        .collect();
    assert!(
        bad.is_empty(),
        "only 200 or 503 under the Redis outage: {bad:?}"
    );
    assert_eq!(user_with_cookie(&http, &p1, &alice).await, "user-alice");
    assert_eq!(user_with_cookie(&http, &p2, &bob).await, "user-bob");
    let unavailable = seen.iter().filter(|(_, s)| *s == 503).count();
    eprintln!("{} requests, {unavailable} answered 503", seen.len());
}

/// Two replicas share redis-server (`store = "redis"`); a client alternates between them
/// with two sessions. One replica is SIGKILLed mid-load and restarted on its port: the
/// survivor answers every request (0 refused), and the restarted one serves the same
/// sessions with the same cookies.
#[tokio::test]
async fn a_replica_killed_mid_load_the_survivor_serves_every_session_and_the_restart_too() {
    let redis = RedisServer::start().await;
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let s = Setup {
        redis_url: Some(redis.url()),
        ..Setup::default()
    };
    let (survivor, mut victim) =
        tokio::join!(proxy_for(&idp, &echo, &s), proxy_for(&idp, &echo, &s));
    let cookies = [
        logged_in(&survivor, "alice").await.1,
        logged_in(&victim, "bob").await.1,
    ];
    // Targets 0, 2: the survivor; 1, 3: the victim; alternating, both sessions.
    let load = Load::start(vec![
        (survivor.url("/load"), cookies[0].clone()),
        (victim.url("/load"), cookies[0].clone()),
        (survivor.url("/load"), cookies[1].clone()),
        (victim.url("/load"), cookies[1].clone()),
    ]);
    load.wait_for(3, 200, 20, 0, 10).await;
    let killed_at = load.seen().len();
    victim.kill();
    // Down for a while under load.
    load.wait_for(1, 0, 50, killed_at, 10).await;
    load.wait_for(3, 0, 50, killed_at, 10).await;
    victim.restart().await;
    wait_ready(&victim).await;
    let back_at = load.seen().len();
    load.wait_for(1, 200, 20, back_at, 15).await;
    load.wait_for(3, 200, 20, back_at, 15).await;
    let seen = load.stop().await;
    let on_survivor: Vec<u16> = seen
        .iter()
        .filter(|(w, _)| w % 2 == 0)
        .map(|(_, s)| *s)
        .collect();
    assert!(
        on_survivor.iter().all(|s| *s == 200),
        "the survivor refused some: {:?}",
        on_survivor
            .iter()
            .filter(|s| **s != 200)
            .collect::<Vec<_>>()
    );
    let on_victim: Vec<u16> = seen
        .iter()
        .filter(|(w, _)| w % 2 == 1)
        .map(|(_, s)| *s)
        .collect();
    assert!(
        on_victim.iter().all(|s| *s == 200 || *s == 0),
        "the victim answered only 200 or nothing: {on_victim:?}"
    );
    eprintln!(
        "survivor {} requests; victim {} ({} unanswered)",
        on_survivor.len(),
        on_victim.len(),
        on_victim.iter().filter(|s| **s == 0).count()
    );
    let http = Http::new();
    assert_eq!(
        user_with_cookie(&http, &victim, &cookies[0]).await,
        "user-alice"
    );
    assert_eq!(
        user_with_cookie(&http, &victim, &cookies[1]).await,
        "user-bob"
    );
}

// ---------------------------------------------------------------------------------------
// The upstream
// ---------------------------------------------------------------------------------------

/// Sends `GET path` with `X-Request-Id: id` and reads until the proxy closes: the bytes.
async fn read_to_close(p: &TestProxy, path: &str, id: &str) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: app.test\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the proxy kept the connection open: {} bytes", got.len()),
        }
    }
}

/// An upstream that resets its connection mid-body (after its head and 1000 of 100000
/// bytes): the client sees the head and a cut stream; an upstream that resets before its
/// head: 502. Both are logged with the reason `upstream_error` (`upstream_error:body` for
/// the cut) and counted in `portcullis_upstream_errors_total`.
#[tokio::test]
async fn an_upstream_reset_is_502_before_the_head_and_a_cut_stream_after_it() {
    let mut partial =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100000\r\n\r\n".to_vec();
    partial.extend(std::iter::repeat_n(b'x', 1000));
    let cut = ResettingUpstream::start(partial).await;
    let reset = ResettingUpstream::start(Vec::new()).await;
    let config = format!(
        "{}\n[[upstream]]\nname = \"cut\"\nurl = \"{}\"\n\n\
         [[upstream]]\nname = \"reset\"\nurl = \"{}\"\n\n\
         [[route]]\nname = \"cut\"\npath = \"/cut\"\nupstream = \"cut\"\nauth = \"public\"\n\n\
         [[route]]\nname = \"reset\"\npath = \"/reset\"\nupstream = \"reset\"\nauth = \"public\"\n",
        server_section(""),
        cut.url(),
        reset.url(),
    );
    let proxy = TestProxy::start(&config).await;
    let errors = "portcullis_upstream_errors_total{kind=\"other\"}";

    // Reset before the head: 502.
    let got = read_to_close(&proxy, "/reset", "fault-reset").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 502 "), "{text}");
    assert!(text.contains("bad_gateway"), "{text}");
    let line = proxy.access_line("fault-reset").await;
    assert_eq!(line["status"], 502, "{line}");
    assert_eq!(line["reason"], "upstream_error", "{line}");
    assert_eq!(proxy.metric(errors).await, 1.0);

    // Reset mid-body: the head went out; the body is cut short of its length.
    let got = read_to_close(&proxy, "/cut", "fault-cut").await;
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8_lossy(&got[..head_end]);
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 100000"),
        "{head}"
    );
    let body = got.len() - head_end;
    assert!(body < 100_000, "the stream is cut: {body} bytes");
    let line = proxy.access_line("fault-cut").await;
    assert_eq!(line["status"], 200, "{line}");
    assert_eq!(line["reason"], "upstream_error:body", "{line}");
    assert_eq!(line["bytes_out"], body as u64, "{line}");
    assert_eq!(proxy.metric(errors).await, 2.0);
    // The warnings name the upstream at fault, by the request's id.
    let logs = proxy.log_json();
    let warned = |id: &str, what: &str| {
        logs.iter().any(|l| {
            l["level"] == "WARN"
                && l["request_id"] == id
                && serde_json::to_string(l).unwrap().contains(what)
        })
    };
    assert!(
        warned("fault-reset", "upstream reset request failed"),
        "{logs:#?}"
    );
    assert!(warned("fault-cut", "\"upstream\":\"cut\""), "{logs:#?}");
}
