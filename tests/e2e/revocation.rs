//! Sign-out that really ends a session, and OIDC Back-Channel Logout (issue 11), end to end:
//! the real proxy binary, the real provider of `tests/idp/` (back-channel logout on, the
//! client registered with the proxy's back-channel URI) and a real `redis-server`.
//!
//! - a cookie copied before sign-out is refused after it: on the same process (memory
//!   set), after a reload, after a restart with a revocation file, and on a second process
//!   sharing Redis (cookie store and Redis store);
//! - signing out at the provider (its end-session endpoint) and ending the session through
//!   its API send logout tokens that end the sessions (by `sid`, by `sub`);
//! - forged, replayed, wrong-audience, nonce-carrying and event-less logout tokens are 400
//!   and end nothing;
//! - a full revocation set fails closed; the admin endpoint revokes a user.

use std::time::Duration;

use serde_json::{json, Value};

use crate::login::{assert_no_session, reload, reloads_ok, user_with_cookie, RedisServer};
use crate::support::agent::{Agent, API_CALL};
use crate::support::client::{empty, full, Resp};
use crate::support::idp::{forge, form, Idp, Profile};
use crate::support::login::{
    config, confirm_provider_logout, logged_in, proxy_for, with_cookie, Setup,
};
use crate::support::proxy::check;
use crate::support::*;

/// Signs the agent out through the proxy (`/oauth2/sign_out`): 302 to the provider, the
/// session cookie expired in the agent's jar.
async fn sign_out(a: &mut Agent, proxy: &TestProxy) {
    let r = a.navigate(&proxy.url("/oauth2/sign_out")).await;
    assert_eq!(r.status, 302, "{}", r.text());
}

fn backchannel_uri(p: &TestProxy) -> String {
    p.url("/oauth2/backchannel_logout")
}

/// RP-initiated logout straight at the provider (not through the proxy): its end-session
/// page, then the confirmation with `logout=yes`. The provider sends the logout tokens
/// before it answers the confirmation.
async fn sign_out_at_provider(idp: &Idp, a: &mut Agent) {
    let end = format!(
        "{}?client_id=portcullis",
        idp.endpoint("end_session_endpoint")
    );
    confirm_provider_logout(idp, a, &end).await;
}

/// The provider (standard profile) and the echo upstream of a test.
struct World {
    idp: Idp,
    echo: EchoUpstream,
}

async fn world() -> World {
    World {
        idp: Idp::start(Profile::Standard).await,
        echo: EchoUpstream::start().await,
    }
}

impl World {
    async fn proxy(&self, s: &Setup) -> TestProxy {
        proxy_for(&self.idp, &self.echo, s).await
    }

    /// Two processes with the same config (replicas).
    async fn replicas(&self, s: &Setup) -> (TestProxy, TestProxy) {
        tokio::join!(self.proxy(s), self.proxy(s))
    }

    fn config(&self, s: &Setup) -> String {
        config(&self.idp, &self.echo, s)
    }
}

async fn post_logout_token(http: &Http, p: &TestProxy, token: &str) -> Resp {
    let req = http::Request::post(backchannel_uri(p))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(full(form(&[("logout_token", token)])))
        .unwrap();
    http.send(req).await.unwrap()
}

fn now() -> u64 {
    forge::now()
}

/// Waits until the wall clock enters a new second: a login after a revocation by subject
/// or a reset must not share its second (sessions of that second are refused, fail closed).
/// The reason code of the access line of an API call with exactly `cookie` (request id
/// `rid`): what the access log says of a refused session.
async fn access_reason(http: &Http, p: &TestProxy, cookie: &str, rid: &str) -> Value {
    let r = with_cookie(
        http,
        &p.url("/page"),
        cookie,
        &[("accept", "application/json"), ("x-request-id", rid)],
    )
    .await;
    assert_eq!(r.status, 401, "{rid}: {}", r.text());
    p.access_line(rid).await["reason"].clone()
}

async fn next_second() {
    let s = now();
    while now() == s {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Sign-out
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_cookie_copied_before_sign_out_is_refused_after_it_and_after_a_reload() {
    let w = world().await;
    let setup = Setup::default();
    let p = w.proxy(&setup).await;
    let http = Http::new();
    let (mut a, copy) = logged_in(&p, "alice").await;
    let (_b, other) = logged_in(&p, "alice").await;
    assert_eq!(user_with_cookie(&http, &p, &copy).await, "user-alice");
    sign_out(&mut a, &p).await;
    assert_no_session(&http, &p, &copy, "copied before sign-out").await;
    assert_eq!(
        user_with_cookie(&http, &p, &other).await,
        "user-alice",
        "another session of the same user lives on"
    );
    // The access log tells a revoked session from a missing one.
    assert_eq!(access_reason(&http, &p, &copy, "rev-copy").await, "revoked");
    assert_eq!(access_reason(&http, &p, "", "rev-none").await, "no_session");
    // A reload that rebuilds the login (new session settings, a new capacity) keeps the
    // revocation set.
    let changed = Setup {
        session_extra: "idle_timeout = \"2h\"\nrevocation_capacity = 500\n".into(),
        ..setup.clone()
    };
    let before = reloads_ok(&p).await;
    reload(&p, &w.config(&changed), before + 1).await;
    assert_no_session(&http, &p, &copy, "after a reload").await;
    assert_eq!(user_with_cookie(&http, &p, &other).await, "user-alice");
}

#[tokio::test]
async fn with_a_revocation_file_a_restart_keeps_sign_outs() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("revoked");
    let with_file = Setup {
        session_extra: format!("revocation_file = \"{}\"\n", file.display()),
        ..Setup::default()
    };
    let http = Http::new();
    let p1 = w.proxy(&with_file).await;
    let (mut a, copy) = logged_in(&p1, "alice").await;
    sign_out(&mut a, &p1).await;
    assert_no_session(&http, &p1, &copy, "signed out").await;
    // Killed (no graceful stop) and started again: the file was written at sign-out.
    drop(p1);
    let p2 = w.proxy(&with_file).await;
    assert_no_session(&http, &p2, &copy, "after a restart with the file").await;
    drop(p2);
    // Without the file, a restart forgets (what `check` warns about).
    let without = Setup {
        session_extra: String::new(),
        ..with_file.clone()
    };
    let p3 = w.proxy(&without).await;
    assert_eq!(
        user_with_cookie(&http, &p3, &copy).await,
        "user-alice",
        "an in-memory set without a file starts empty"
    );
}

#[tokio::test]
async fn with_redis_a_copied_cookie_is_refused_by_a_second_process() {
    let redis = RedisServer::start().await;
    let w = world().await;
    // The cookie store, revocations in Redis (the default once redis_url is set).
    let s = Setup {
        session_extra: format!("redis_url = \"{}\"\n", redis.url()),
        ..Setup::default()
    };
    let (p1, p2) = w.replicas(&s).await;
    let http = Http::new();
    let (mut a, copy) = logged_in(&p1, "alice").await;
    assert_eq!(user_with_cookie(&http, &p2, &copy).await, "user-alice");
    sign_out(&mut a, &p1).await;
    assert_no_session(&http, &p2, &copy, "signed out on the other process").await;
    assert_no_session(&http, &p1, &copy, "signed out here").await;
    // Redis holds the session id's entry, and nothing that names the user.
    let dump = redis.dump();
    assert!(
        dump.iter()
            .any(|(k, _)| k.starts_with("portcullis:revoked:s:")),
        "{dump:?}"
    );
    for (k, v) in &dump {
        assert!(!k.contains("alice") && !String::from_utf8_lossy(v).contains("alice"));
    }
    // Redis down: a session cannot be checked, so it is not served (503).
    let (_b, bob) = logged_in(&p2, "bob").await;
    drop(redis);
    let r = with_cookie(&http, &p2.url("/x"), &bob, API_CALL).await;
    assert_eq!(r.status, 503, "{}", r.text());
}

/// Redis's count of reads from its clients: one per round trip of a client that waits
/// for its answers (a pipeline is one).
fn redis_reads(c: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_reads_processed in INFO stats")
}

#[tokio::test]
async fn with_redis_a_request_with_a_session_costs_one_round_trip() {
    let redis = RedisServer::start().await;
    let w = world().await;
    let http = Http::new();
    let client = redis::Client::open(redis.url().as_str()).unwrap();
    let mut c = client.get_connection().unwrap();
    for (what, s) in [
        (
            "cookie store, revocations in Redis: the MGET alone",
            Setup {
                session_extra: format!("redis_url = \"{}\"\n", redis.url()),
                ..Setup::default()
            },
        ),
        (
            "Redis store: GETEX and MGET pipelined",
            Setup {
                redis_url: Some(redis.url()),
                ..Setup::default()
            },
        ),
    ] {
        let p = w.proxy(&s).await;
        let (_a, cookie) = logged_in(&p, "alice").await;
        assert_eq!(user_with_cookie(&http, &p, &cookie).await, "user-alice");
        let before = redis_reads(&mut c);
        for _ in 0..20 {
            assert_eq!(user_with_cookie(&http, &p, &cookie).await, "user-alice");
        }
        // The second INFO is a read of its own.
        let reads = redis_reads(&mut c) - before - 1;
        assert_eq!(reads, 20, "{what}: one round trip per request");
    }
}

// ---------------------------------------------------------------------------------------
// Back-channel logout with the provider
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn signing_out_at_the_provider_ends_the_session_by_back_channel_logout() {
    let w = world().await;
    let p = w.proxy(&Setup::default()).await;
    w.idp
        .set_backchannel_logout(Some(&backchannel_uri(&p)), true)
        .await;
    let http = Http::new();
    let (mut a, copy) = logged_in(&p, "alice").await;
    let (_bob, bob) = logged_in(&p, "bob").await;
    sign_out_at_provider(&w.idp, &mut a).await;
    let d = w.idp.backchannel_deliveries().await;
    assert_eq!(
        (d["ok"].as_u64(), d["error"].as_u64()),
        (Some(1), Some(0)),
        "{d}"
    );
    assert_no_session(&http, &p, &copy, "provider logout (by sid)").await;
    assert_eq!(access_reason(&http, &p, &copy, "rev-bcl").await, "revoked");
    assert_eq!(user_with_cookie(&http, &p, &bob).await, "user-bob");
    let line = p
        .log_json()
        .into_iter()
        .find(|l| l["message"] == "back-channel logout: sessions ended")
        .unwrap_or_else(|| panic!("no log line: {}", p.logs()));
    assert_eq!(line["by"], "sid", "{line}");
}

#[tokio::test]
async fn ending_the_provider_session_through_its_api_ends_the_users_sessions_on_every_replica() {
    // The Redis session store on two processes; the provider knows only the first.
    let redis = RedisServer::start().await;
    let w = world().await;
    let s = Setup {
        redis_url: Some(redis.url()),
        ..Setup::default()
    };
    let (p1, p2) = w.replicas(&s).await;
    // Without backchannel_logout_session_required: the logout tokens name only `sub`.
    w.idp
        .set_backchannel_logout(Some(&backchannel_uri(&p1)), false)
        .await;
    let http = Http::new();
    let (_a1, alice1) = logged_in(&p2, "alice").await;
    let (_a2, alice2) = logged_in(&p1, "alice").await;
    let (_b, bob) = logged_in(&p2, "bob").await;
    let out = w.idp.end_sessions_of("alice").await;
    assert_eq!(out["sent"], 2, "{out}");
    for (cookie, what) in [(&alice1, "first"), (&alice2, "second")] {
        assert_no_session(&http, &p1, cookie, what).await;
        assert_no_session(&http, &p2, cookie, what).await;
    }
    assert_eq!(user_with_cookie(&http, &p1, &bob).await, "user-bob");
    let line = p1
        .log_json()
        .into_iter()
        .find(|l| l["message"] == "back-channel logout: sessions ended")
        .unwrap_or_else(|| panic!("no log line: {}", p1.logs()));
    assert_eq!(line["by"], "sub", "{line}");
    // A login after it is a new session.
    next_second().await;
    let (_a3, again) = logged_in(&p2, "alice").await;
    assert_eq!(user_with_cookie(&http, &p1, &again).await, "user-alice");
}

#[tokio::test]
async fn forged_replayed_and_malformed_logout_tokens_are_400_and_end_nothing() {
    let w = world().await;
    let p = w.proxy(&Setup::default()).await;
    let http = Http::new();
    let (_a, alice) = logged_in(&p, "alice").await;
    let key = w.idp.signer("RS256").await;
    let header = json!({"alg": "RS256", "typ": "logout+jwt", "kid": key.kid});
    let claims = |jti: &str| {
        json!({
            "iss": w.idp.issuer,
            "aud": "portcullis",
            "iat": now(),
            "exp": now() + 120,
            "jti": jti,
            "sub": "user-alice",
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
        })
    };
    let changed = |jti: &str, f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = claims(jti);
        f(c.as_object_mut().unwrap());
        key.sign(&header, &c)
    };
    let forger = forge::Signer::own_rs256(&key.kid);
    let stranger = forge::Signer::own_rs256("not-the-providers");
    let cases: Vec<(&str, String)> = vec![
        (
            "forged (the provider's kid, another key)",
            forger.sign(&header, &claims("f1")),
        ),
        ("signed by an unknown key", stranger.token(&claims("f2"))),
        (
            "unsigned",
            forge::unsigned(
                &json!({"alg": "none", "typ": "logout+jwt"}),
                &claims("f3"),
                "",
            ),
        ),
        (
            "wrong audience",
            changed("f4", &|c| {
                c.insert("aud".into(), json!("portcullis-post"));
            }),
        ),
        (
            "nonce",
            changed("f5", &|c| {
                c.insert("nonce".into(), json!("n-1"));
            }),
        ),
        (
            "no events",
            changed("f6", &|c| {
                c.remove("events");
            }),
        ),
        (
            "too old",
            changed("f7", &|c| {
                c.insert("iat".into(), json!(now() - 3600));
                c.remove("exp");
            }),
        ),
        (
            "another issuer",
            changed("f8", &|c| {
                c.insert("iss".into(), json!("http://127.0.0.1:1"));
            }),
        ),
        (
            "expired",
            changed("f9", &|c| {
                c.insert("iat".into(), json!(now() - 200));
                c.insert("exp".into(), json!(now() - 100));
            }),
        ),
        (
            "neither sid nor sub",
            changed("f10", &|c| {
                c.remove("sub");
            }),
        ),
    ];
    for (what, token) in &cases {
        let r = post_logout_token(&http, &p, token).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert!(r.header("location").is_none(), "{what}: never a redirect");
        let j = r.json();
        assert!(
            j["error"].is_string() && j["request_id"].is_string(),
            "{what}: {j}"
        );
        assert_eq!(
            user_with_cookie(&http, &p, &alice).await,
            "user-alice",
            "{what}"
        );
    }
    // The access log and the metrics say why.
    // (Access lines are buffered for up to 250 ms.)
    let nonce_line = crate::support::raw::eventually(
        Duration::from_secs(10),
        "the access line of the nonce-carrying token",
        || async {
            p.log_json()
                .into_iter()
                .find(|l| l["target"] == "access" && l["reason"] == "backchannel_logout:nonce")
        },
    )
    .await;
    assert_eq!(nonce_line["status"], 400, "{nonce_line}");
    let outcome = |o: &str| format!("portcullis_backchannel_logouts_total{{outcome=\"{o}\"}}");
    assert_eq!(p.metric(&outcome("nonce")).await, 1.0);
    assert_eq!(p.metric(&outcome("no_event")).await, 1.0);
    assert_eq!(p.metric(&outcome("no_subject")).await, 1.0);
    assert_eq!(p.metric(&outcome("ok")).await, 0.0);
    // Replay: a good token for bob ends his session; bob logs in again, and the same
    // token sent again is refused and ends nothing (it must not move his not-before time).
    let (_b, bob) = logged_in(&p, "bob").await;
    let good = changed("g1", &|c| {
        c.insert("sub".into(), json!("user-bob"));
    });
    let r = post_logout_token(&http, &p, &good).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_no_session(&http, &p, &bob, "a valid logout token for bob").await;
    next_second().await;
    let (_b2, bob2) = logged_in(&p, "bob").await;
    let r = post_logout_token(&http, &p, &good).await;
    assert_eq!(r.status, 400, "replayed: {}", r.text());
    assert!(r.text().contains("received before"), "{}", r.text());
    assert_eq!(
        user_with_cookie(&http, &p, &bob2).await,
        "user-bob",
        "replayed"
    );
    assert_eq!(p.metric(&outcome("replayed")).await, 1.0);
    assert_eq!(p.metric(&outcome("ok")).await, 1.0);
    // Not a form, or no token: 400. GET: not an endpoint (and not a redirect).
    let req = http::Request::post(backchannel_uri(&p))
        .header("content-type", "application/json")
        .body(full(format!("{{\"logout_token\":\"{good}\"}}")))
        .unwrap();
    assert_eq!(http.send(req).await.unwrap().status, 400);
    let req = http::Request::post(backchannel_uri(&p))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(empty())
        .unwrap();
    assert_eq!(http.send(req).await.unwrap().status, 400);
    let r = http.get(&backchannel_uri(&p)).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(user_with_cookie(&http, &p, &alice).await, "user-alice");
    // And a good one for alice ends her session.
    let hers = changed("g2", &|_| {});
    assert_eq!(post_logout_token(&http, &p, &hers).await.status, 200);
    assert_no_session(&http, &p, &alice, "a valid logout token").await;
}

// ---------------------------------------------------------------------------------------
// The bound, the admin endpoint, check
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_full_revocation_set_fails_closed_for_every_session() {
    let w = world().await;
    let s = Setup {
        session_extra: "revocation_capacity = 2\n".into(),
        ..Setup::default()
    };
    let p = w.proxy(&s).await;
    let http = Http::new();
    let (mut a1, c1) = logged_in(&p, "alice").await;
    let (mut a2, _) = logged_in(&p, "alice").await;
    let (mut a3, c3) = logged_in(&p, "alice").await;
    let (_b, bob) = logged_in(&p, "bob").await;
    sign_out(&mut a1, &p).await;
    sign_out(&mut a2, &p).await;
    assert_no_session(&http, &p, &c1, "signed out").await;
    assert_eq!(user_with_cookie(&http, &p, &c3).await, "user-alice");
    assert_eq!(user_with_cookie(&http, &p, &bob).await, "user-bob");
    // The third sign-out finds two entries: the set fails closed, every session issued
    // until now must log in again.
    sign_out(&mut a3, &p).await;
    assert_no_session(&http, &p, &c3, "the third sign-out").await;
    assert_no_session(&http, &p, &bob, "issued before the reset").await;
    let full: Vec<_> = p
        .log_json()
        .into_iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("revocation set full"))
        })
        .collect();
    assert_eq!(full.len(), 1, "logged once: {full:?}");
    assert_eq!(full[0]["level"], "WARN");
    next_second().await;
    let (_b2, bob2) = logged_in(&p, "bob").await;
    assert_eq!(user_with_cookie(&http, &p, &bob2).await, "user-bob");
}

async fn admin_revoke(p: &TestProxy, sub: &str, token: Option<&str>) -> Resp {
    let mut b =
        http::Request::post(p.admin_url(&format!("/sessions/revoke?{}", form(&[("sub", sub)]))));
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    Http::new().send(b.body(empty()).unwrap()).await.unwrap()
}

#[tokio::test]
async fn the_admin_endpoint_revokes_every_session_of_a_user_with_the_admin_token() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "s3cret-admin-token\n").unwrap();
    let s = Setup {
        server_extra: format!("admin_token_file = \"{}\"\n", token_file.display()),
        ..Setup::default()
    };
    let p = w.proxy(&s).await;
    let http = Http::new();
    let (_a, alice) = logged_in(&p, "alice").await;
    let (_b, bob) = logged_in(&p, "bob").await;
    for token in [None, Some("wrong"), Some("")] {
        let r = admin_revoke(&p, "user-alice", token).await;
        assert_eq!(r.status, 401, "{token:?}: {}", r.text());
        assert!(r
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")));
    }
    assert_eq!(user_with_cookie(&http, &p, &alice).await, "user-alice");
    let r = admin_revoke(&p, "user-alice", Some("s3cret-admin-token")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sub"], "user-alice");
    assert_no_session(&http, &p, &alice, "revoked by the admin").await;
    assert_eq!(user_with_cookie(&http, &p, &bob).await, "user-bob");
    let r = Http::new()
        .get(&p.admin_url("/sessions/revoke?sub=x"))
        .await;
    assert_eq!(r.status, 405);
    // Without a token file, state-changing admin endpoints are refused.
    let before = reloads_ok(&p).await;
    let without = Setup {
        server_extra: String::new(),
        ..s.clone()
    };
    reload(&p, &w.config(&without), before + 1).await;
    let r = admin_revoke(&p, "user-bob", Some("s3cret-admin-token")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(user_with_cookie(&http, &p, &bob).await, "user-bob");
}

#[tokio::test]
async fn check_warns_that_a_restart_forgets_sign_outs_without_a_revocation_file() {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    let text = |s: &Setup| {
        w.config(s)
            .replace("@LISTEN@", "127.0.0.1:8080")
            .replace("@ADMIN@", "127.0.0.1:9090")
    };
    std::fs::write(&path, text(&Setup::default())).unwrap();
    let (code, stdout, _) = check(&path);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("warning: session.revocation: \"memory\" without revocation_file: a restart forgets sign-outs"),
        "{stdout}"
    );
    let with_file = Setup {
        session_extra: "revocation_file = \"revoked\"\n".into(),
        ..Setup::default()
    };
    std::fs::write(&path, text(&with_file)).unwrap();
    let (code, stdout, _) = check(&path);
    assert_eq!(code, 0, "{stdout}");
    assert!(!stdout.contains("warning"), "{stdout}");
    let with_redis = Setup {
        session_extra: "redis_url = \"redis://127.0.0.1:6379/\"\n".into(),
        ..Setup::default()
    };
    std::fs::write(&path, text(&with_redis)).unwrap();
    assert!(!check(&path).1.contains("warning"));
    // And the running proxy says it too.
    let p = w.proxy(&Setup::default()).await;
    assert!(
        p.logs().contains("a restart forgets sign-outs"),
        "{}",
        p.logs()
    );
}
