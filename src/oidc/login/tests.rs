//! Unit tests of each login step against the in-process development provider
//! (`crate::dev_idp`, on 127.0.0.1:0), with a [`ManualClock`]: expiry, refresh margins and
//! idle timeouts are reached by moving the clock (the login's and the provider's
//! together), never by sleeping.

#![cfg(feature = "demo")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{HeaderValue, LOCATION, SET_COOKIE};
use http::HeaderMap;
use serde_json::{json, Map, Value};

use super::{Login, SessionCheck};
use crate::body::Resp;
use crate::config::Config;
use crate::dev_idp::test_client::TestClient;
use crate::dev_idp::{
    DevIdp, DevIdpConfig, Endpoint, Fail, Grant, Times, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET,
};
use crate::revocation::Revocations;
use crate::session::Session;
use crate::token::{Clock, ManualClock};

const PUBLIC: &str = "http://127.0.0.1:4180";
const SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A browser's cookies for the proxy's origin: `Set-Cookie` values in, `Cookie` out.
#[derive(Default, Clone)]
struct Jar(BTreeMap<String, String>);

impl Jar {
    fn take(&mut self, r: &Resp) {
        self.take_values(r.headers().get_all(SET_COOKIE));
    }

    fn take_values<'a>(&mut self, values: impl IntoIterator<Item = &'a HeaderValue>) {
        for v in values {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attrs.to_ascii_lowercase().contains("max-age=0") {
                self.0.remove(name.trim());
            } else {
                self.0
                    .insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }

    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        if !self.0.is_empty() {
            let c: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
            h.insert("cookie", HeaderValue::from_str(&c.join("; ")).unwrap());
        }
        h
    }

    fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    fn has_session(&self) -> bool {
        self.0.keys().any(|k| !k.contains("_tx_"))
    }

    fn transactions(&self) -> usize {
        self.0.keys().filter(|k| k.contains("_tx_")).count()
    }
}

/// Cookies a response sets (not deletes).
fn set_cookies(r: &Resp) -> Vec<String> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .filter(|v| !v.to_ascii_lowercase().contains("max-age=0"))
        .collect()
}

fn location(r: &Resp) -> String {
    r.headers()
        .get(LOCATION)
        .unwrap_or_else(|| panic!("no Location; status {}", r.status()))
        .to_str()
        .unwrap()
        .to_string()
}

async fn body(r: Resp) -> String {
    use http_body_util::BodyExt;
    let b = r.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(b.to_vec()).unwrap()
}

struct Harness {
    idp: DevIdp,
    login: Login,
    clock: ManualClock,
}

/// A login route in front of nothing, logging in at `issuer` as the dev provider's demo
/// client; extra `[provider]` and `[session]` lines.
fn config(issuer: &str, provider_extra: &str, session_extra: &str) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"{PUBLIC}\"\n\
         [provider]\nissuer = \"{issuer}\"\nclient_id = \"{DEMO_CLIENT_ID}\"\n\
         client_secret = \"{DEMO_CLIENT_SECRET}\"\n\
         scopes = [\"openid\", \"email\", \"profile\", \"offline_access\", \"groups\"]\n\
         {provider_extra}\n\
         [session]\nsecrets = [\"{SECRET}\"]\n{session_extra}\n\
         [[upstream]]\nname = \"app\"\nurl = \"http://127.0.0.1:9\"\n\
         [[route]]\npath = \"/\"\nupstream = \"app\"\nauth = \"login\"\n"
    );
    Config::from_toml(&text, std::path::Path::new(".")).unwrap()
}

impl Harness {
    async fn new() -> Harness {
        Self::with("", "").await
    }

    /// With extra `[provider]` and `[session]` lines.
    async fn with(provider_extra: &str, session_extra: &str) -> Harness {
        let idp = DevIdp::start(DevIdpConfig::default()).await.unwrap();
        let clock = ManualClock::new(SystemTime::now());
        let c = config(&idp.issuer(), provider_extra, session_extra);
        let revocations = Revocations::new(&c.revocation_settings()).unwrap();
        let login = Login::build_with_clock(&c, None, &revocations, Arc::new(clock.clone()))
            .unwrap()
            .unwrap();
        login.id_validator.start().await.unwrap();
        Harness { idp, login, clock }
    }

    /// Time passes, for the proxy and the provider alike.
    fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.idp.advance_clock(by);
    }

    /// `/oauth2/start?rd=/done` → the provider's form → the callback URL's query (not yet
    /// visited); `jar` gets the transaction cookie.
    async fn until_callback(&self, jar: &mut Jar, user: &str) -> String {
        let r = self.login.start(Some("rd=%2Fdone"), &jar.headers(), "rid");
        assert_eq!(r.status(), 302);
        jar.take(&r);
        let authorize = location(&r);
        let browser = TestClient::new();
        let form = browser.get(&authorize).await;
        assert_eq!(form.status, 200, "{}", form.body);
        let marker = "name=\"tx\" value=\"";
        let at = form.body.find(marker).unwrap() + marker.len();
        let tx = &form.body[at..at + form.body[at..].find('"').unwrap()];
        let r = browser
            .post_form(
                &self.idp.url(Endpoint::Login),
                &[("tx", tx), ("username", user), ("password", user)],
                &[],
            )
            .await;
        assert_eq!(r.status, 303, "{}", r.body);
        let cb = r.location();
        assert_eq!(cb.path(), "/oauth2/callback");
        cb.query().unwrap().to_string()
    }

    /// A whole login as `user`: the jar holds the session.
    async fn log_in(&self, user: &str) -> Jar {
        let mut jar = Jar::default();
        let q = self.until_callback(&mut jar, user).await;
        let r = self.login.callback(Some(&q), &jar.headers(), "rid").await;
        assert_eq!(r.status(), 302, "{}", body(r).await);
        assert_eq!(location(&r), "/done");
        jar.take(&r);
        assert!(
            jar.has_session() && jar.transactions() == 0,
            "{:?}",
            jar.names()
        );
        jar
    }

    async fn user(&self, jar: &mut Jar) -> Option<String> {
        match self.login.check(&jar.headers(), "rid").await {
            SessionCheck::Valid {
                identity,
                set_cookies,
                ..
            } => {
                jar.take_values(&set_cookies);
                Some(identity.subject().to_string())
            }
            SessionCheck::None { set_cookies, .. } => {
                jar.take_values(&set_cookies);
                None
            }
            SessionCheck::Unavailable => panic!("unavailable"),
        }
    }

    async fn session(&self, jar: &Jar) -> Session {
        let opened = self
            .login
            .store
            .load(&jar.headers(), self.clock.now())
            .await
            .unwrap()
            .expect("a session");
        (*opened.session).clone()
    }

    /// A browser holding `session`, freshly saved (as an older release would have saved
    /// it, say).
    async fn jar_with(&self, mut session: Session) -> Jar {
        let set = self
            .login
            .store
            .save(&mut session, &HeaderMap::new(), self.clock.now())
            .await
            .unwrap();
        let mut jar = Jar::default();
        jar.take_values(&set);
        jar
    }

    /// A login as `user`, whose session is then changed by `change` and saved anew (as
    /// an older release, or a cookie-store login that had to drop its ID token, saved it).
    async fn log_in_as_saved(&self, user: &str, change: impl FnOnce(&mut Session)) -> Jar {
        let jar = self.log_in(user).await;
        let mut s = self.session(&jar).await;
        change(&mut s);
        self.jar_with(s).await
    }

    /// The login's clock, Unix seconds.
    fn unix_now(&self) -> u64 {
        crate::revocation::unix(self.clock.now())
    }

    fn token_calls(&self) -> u64 {
        self.idp.counts()["token"]
    }
}

fn claims(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// `query` with `extra` appended (a parameter given again).
fn with_extra(query: &str, extra: &str) -> String {
    format!("{query}&{extra}")
}

fn param<'a>(query: &'a str, name: &str) -> &'a str {
    query
        .split('&')
        .find_map(|p| p.strip_prefix(&format!("{name}=")))
        .unwrap()
}

// ---- start ---------------------------------------------------------------------------------

#[tokio::test]
async fn start_sends_the_browser_to_the_provider_with_pkce_state_and_nonce() {
    let h = Harness::new().await;
    let r = h
        .login
        .start(Some("rd=%2Fx%3Fy%3D1"), &HeaderMap::new(), "rid");
    assert_eq!(r.status(), 302);
    let to = url::Url::parse(&location(&r)).unwrap();
    assert!(to.as_str().starts_with(&h.idp.url(Endpoint::Authorize)));
    let q: BTreeMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], DEMO_CLIENT_ID);
    assert_eq!(q["redirect_uri"], format!("{PUBLIC}/oauth2/callback"));
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43);
    let tx = set_cookies(&r);
    assert_eq!(tx.len(), 1, "{tx:?}");
    assert!(
        tx[0].contains("_tx_") && tx[0].contains("HttpOnly"),
        "{tx:?}"
    );
}

#[tokio::test]
async fn start_with_a_repeated_rd_is_400_and_starts_nothing() {
    let h = Harness::new().await;
    for q in ["rd=%2Fa&rd=%2Fb", "rd=%2Fa&r%64=%2Fa", "rd&rd=/x"] {
        let r = h.login.start(Some(q), &HeaderMap::new(), "rid");
        assert_eq!(r.status(), 400, "{q}");
        assert!(r.headers().get(SET_COOKIE).is_none(), "{q}");
        assert!(body(r).await.contains("more than once"), "{q}");
    }
    assert_eq!(h.idp.counts()["authorize"], 0);
}

#[tokio::test]
async fn start_before_the_provider_is_known_is_503() {
    let idp = DevIdp::start(DevIdpConfig::default()).await.unwrap();
    let c = config(&idp.issuer(), "", "");
    // Never started: no metadata yet.
    let login = Login::build(&c, None, &Revocations::memory(10))
        .unwrap()
        .unwrap();
    let r = login.start(None, &HeaderMap::new(), "rid");
    assert_eq!(r.status(), 503);
    assert!(r.headers().get(SET_COOKIE).is_none());
}

// ---- callback ------------------------------------------------------------------------------

#[tokio::test]
async fn callback_makes_a_session_that_keeps_the_login_claims() {
    let h = Harness::new().await;
    let mut jar = h.log_in("alice").await;
    assert_eq!(h.user(&mut jar).await.as_deref(), Some("user-alice"));
    let s = h.session(&jar).await;
    let lc = s.login_claims.expect("login claims kept");
    assert_eq!(lc.aud, [DEMO_CLIENT_ID]);
    assert_eq!(lc.azp.as_deref(), Some(DEMO_CLIENT_ID));
    assert!(lc.auth_time.is_some());
    assert!(s.sid.is_some() && s.refresh_token.is_some() && s.id_token.is_some());
    // Only the claims the config refers to (none here) are kept as claims.
    assert!(s.claims.is_empty(), "{:?}", s.claims);
}

#[tokio::test]
async fn callback_with_any_parameter_given_twice_is_400_and_spends_the_transaction() {
    let h = Harness::new().await;
    for (what, extra) in [
        ("state", None),
        ("code", Some("code=forged")),
        ("iss", Some("iss=https%3A%2F%2Fevil.example")),
        ("error", Some("error=access_denied&error=x")),
    ] {
        let mut jar = Jar::default();
        let q = h.until_callback(&mut jar, "alice").await;
        let dup = match extra {
            Some(e) => with_extra(&q, e),
            // The same state twice, and another's first.
            None => format!("state=other&{q}"),
        };
        let r = h.login.callback(Some(&dup), &jar.headers(), "rid").await;
        assert_eq!(r.status(), 400, "{what}");
        jar.take(&r);
        assert!(set_cookies(&r).is_empty(), "{what}: no session");
        assert_eq!(jar.transactions(), 0, "{what}: the transaction is removed");
        assert!(body(r).await.contains("more than once"), "{what}");
        // The untouched response cannot finish that login any more.
        let r = h.login.callback(Some(&q), &jar.headers(), "rid").await;
        assert_eq!(r.status(), 400, "{what}: replay");
        assert!(!jar.has_session());
    }
    assert_eq!(h.token_calls(), 0, "no code was exchanged");
}

#[tokio::test]
async fn callback_refuses_id_tokens_for_untrusted_audiences_or_other_clients() {
    let h = Harness::new().await;
    for (what, over) in [
        (
            "several audiences, no azp",
            json!({"aud": [DEMO_CLIENT_ID, "https://other.example"], "azp": null}),
        ),
        (
            "an untrusted audience, with azp",
            json!({"aud": [DEMO_CLIENT_ID, "https://other.example"]}),
        ),
        ("azp of another client", json!({"azp": "someone-else"})),
        (
            "a wrong at_hash",
            json!({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}),
        ),
        ("another nonce", json!({"nonce": "not-this-logins"})),
        (
            "not for this client",
            json!({"aud": "https://other.example"}),
        ),
    ] {
        h.idp.clear_id_token_overrides();
        h.idp
            .override_id_token_claims(Grant::AuthorizationCode, claims(over));
        let mut jar = Jar::default();
        let q = h.until_callback(&mut jar, "alice").await;
        let r = h.login.callback(Some(&q), &jar.headers(), "rid").await;
        assert_eq!(r.status(), 400, "{what}");
        jar.take(&r);
        assert!(!jar.has_session(), "{what}");
        assert_eq!(jar.transactions(), 0, "{what}");
    }
}

#[tokio::test]
async fn trusted_audiences_admit_a_multi_audience_id_token_with_azp() {
    let h = Harness::with("trusted_audiences = [\"https://api.example\"]", "").await;
    h.idp.override_id_token_claims(
        Grant::AuthorizationCode,
        claims(json!({"aud": [DEMO_CLIENT_ID, "https://api.example"]})),
    );
    let mut jar = h.log_in("bob").await;
    assert_eq!(h.user(&mut jar).await.as_deref(), Some("user-bob"));
    // Without azp it is still refused (OIDC Core 3.1.3.7 step 4).
    h.idp
        .override_id_token_claims(Grant::AuthorizationCode, claims(json!({"azp": null})));
    let mut jar = Jar::default();
    let q = h.until_callback(&mut jar, "bob").await;
    let r = h.login.callback(Some(&q), &jar.headers(), "rid").await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn callback_from_another_issuer_or_without_state_is_400() {
    let h = Harness::new().await;
    let mut jar = Jar::default();
    let q = h.until_callback(&mut jar, "alice").await;
    let iss = param(&q, "iss");
    let other = q.replace(iss, "https%3A%2F%2Fevil.example");
    let r = h.login.callback(Some(&other), &jar.headers(), "rid").await;
    assert_eq!(r.status(), 400);
    jar.take(&r);
    assert_eq!(jar.transactions(), 0, "the transaction is spent");
    let r = h
        .login
        .callback(Some("code=x"), &jar.headers(), "rid")
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(h.token_calls(), 0);
}

// ---- check and refresh ---------------------------------------------------------------------

#[tokio::test]
async fn refresh_happens_within_the_margin_and_not_before() {
    let h = Harness::new().await;
    let mut jar = h.log_in("alice").await;
    let calls = h.token_calls();
    // The access token lives 300 s; refreshed from 60 s before its end.
    h.advance(Duration::from_secs(230));
    assert_eq!(h.user(&mut jar).await.as_deref(), Some("user-alice"));
    assert_eq!(h.token_calls(), calls, "not yet");
    let before = h.session(&jar).await;
    h.advance(Duration::from_secs(15));
    assert_eq!(h.user(&mut jar).await.as_deref(), Some("user-alice"));
    assert_eq!(h.token_calls(), calls + 1, "within the margin");
    let after = h.session(&jar).await;
    assert_ne!(after.access_token.expose(), before.access_token.expose());
    assert_ne!(
        after.refresh_token.as_ref().unwrap().expose(),
        before.refresh_token.as_ref().unwrap().expose(),
        "rotated"
    );
    assert_eq!(after.login_claims, before.login_claims);
    assert!(after.access_expires_at > before.access_expires_at);
    // The refreshed session does not refresh again until its own margin.
    assert_eq!(h.user(&mut jar).await.as_deref(), Some("user-alice"));
    assert_eq!(h.token_calls(), calls + 1);
}

#[tokio::test]
async fn concurrent_checks_of_one_session_share_one_refresh() {
    let h = Harness::new().await;
    let jar = h.log_in("alice").await;
    let calls = h.token_calls();
    h.advance(Duration::from_secs(250));
    let headers = jar.headers();
    let checks = (0..20).map(|_| h.login.check(&headers, "rid"));
    for c in futures_util::future::join_all(checks).await {
        assert!(matches!(c, SessionCheck::Valid { .. }));
    }
    assert_eq!(h.token_calls(), calls + 1);
}

#[tokio::test]
async fn a_refresh_with_another_users_id_token_ends_the_session() {
    let h = Harness::new().await;
    let mut jar = h.log_in("alice").await;
    let before = h.session(&jar).await;
    h.idp
        .override_id_token_claims(Grant::RefreshToken, claims(json!({"sub": "user-bob"})));
    h.advance(Duration::from_secs(250));
    assert_eq!(h.user(&mut jar).await, None, "the session ended");
    assert!(
        !jar.has_session(),
        "its cookie is cleared: {:?}",
        jar.names()
    );
    // The old cookie, replayed, is refused too (the refresh result is shared, not adopted).
    let mut replay = h.jar_with(before).await;
    assert_eq!(h.user(&mut replay).await, None);
}

#[tokio::test]
async fn a_refreshed_id_token_must_keep_aud_azp_and_auth_time() {
    for (what, over) in [
        (
            "aud",
            json!({"aud": [DEMO_CLIENT_ID, "https://api.example"]}),
        ),
        ("azp", json!({"azp": null})),
        ("auth_time", json!({"auth_time": 12345})),
        (
            "iss (signature still good)",
            json!({"iss": "https://other.example"}),
        ),
        ("at_hash", json!({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"})),
    ] {
        let h = Harness::with("trusted_audiences = [\"https://api.example\"]", "").await;
        let mut jar = h.log_in("alice").await;
        h.idp
            .override_id_token_claims(Grant::RefreshToken, claims(over));
        h.advance(Duration::from_secs(250));
        assert_eq!(h.user(&mut jar).await, None, "{what}");
    }
    // The same claims again (and no auth_time at all) pass.
    let h = Harness::new().await;
    let mut jar = h.log_in("alice").await;
    h.idp
        .override_id_token_claims(Grant::RefreshToken, claims(json!({"auth_time": null})));
    h.advance(Duration::from_secs(250));
    assert_eq!(h.user(&mut jar).await.as_deref(), Some("user-alice"));
}

#[tokio::test]
async fn a_session_saved_before_login_claims_were_kept_refreshes_and_learns_them() {
    let h = Harness::new().await;
    // As an older release wrote it: no login claims.
    let mut jar = h.log_in_as_saved("alice", |s| s.login_claims = None).await;
    h.advance(Duration::from_secs(250));
    assert_eq!(h.user(&mut jar).await.as_deref(), Some("user-alice"));
    let s = h.session(&jar).await;
    assert_eq!(s.login_claims.unwrap().aud, [DEMO_CLIENT_ID]);
    // Another user is refused all the same.
    let mut jar = h.log_in_as_saved("bob", |s| s.login_claims = None).await;
    h.idp
        .override_id_token_claims(Grant::RefreshToken, claims(json!({"sub": "user-alice"})));
    h.advance(Duration::from_secs(250));
    assert_eq!(h.user(&mut jar).await, None);
}

#[tokio::test]
async fn a_session_that_dropped_its_id_token_to_fit_does_not_take_one_back_at_refresh() {
    let h = Harness::new().await;
    let mut jar = h.log_in_as_saved("alice", |s| s.id_token = None).await;
    h.advance(Duration::from_secs(250));
    assert_eq!(h.user(&mut jar).await.as_deref(), Some("user-alice"));
    let s = h.session(&jar).await;
    assert!(s.id_token.is_none());
    assert!(s.access_expires_at > Some(h.clock.now() + Duration::from_secs(250)));
}

#[tokio::test]
async fn a_refused_refresh_ends_the_session_and_an_unreachable_provider_is_503_once_expired() {
    let h = Harness::new().await;
    let mut jar = h.log_in("alice").await;
    // Provider down within the margin: the current token still serves.
    h.idp
        .fail(Endpoint::Token, Fail::Status(503), Times::Always);
    h.advance(Duration::from_secs(250));
    assert_eq!(h.user(&mut jar).await.as_deref(), Some("user-alice"));
    // Past the access token's expiry: 503, not a pass, and the session stays.
    h.advance(Duration::from_secs(60));
    assert!(matches!(
        h.login.check(&jar.headers(), "rid").await,
        SessionCheck::Unavailable
    ));
    // The provider refuses the grant: the session ends.
    h.idp.clear_failures();
    h.idp
        .fail(Endpoint::Token, Fail::Status(400), Times::Always);
    assert_eq!(h.user(&mut jar).await, None);
    assert!(!jar.has_session());
}

#[tokio::test]
async fn sessions_end_at_their_lifetime_and_idle_timeout_without_sleeping() {
    let h = Harness::with(
        "",
        "lifetime = \"1h\"\nidle_timeout = \"20m\"\nrefresh = false",
    )
    .await;
    let mut jar = h.log_in("alice").await;
    // The access token (5 min) expires and cannot be refreshed: the session ends with it.
    h.advance(Duration::from_secs(301));
    assert_eq!(h.user(&mut jar).await, None);

    let h = Harness::with("", "lifetime = \"1h\"\nidle_timeout = \"20m\"").await;
    h.idp.set_access_token_ttl(Duration::from_secs(7200));
    let mut jar = h.log_in("alice").await;
    h.advance(Duration::from_secs(19 * 60));
    assert!(
        h.user(&mut jar).await.is_some(),
        "used within the idle timeout"
    );
    h.advance(Duration::from_secs(19 * 60));
    assert!(h.user(&mut jar).await.is_some(), "renewed by the last use");
    h.advance(Duration::from_secs(21 * 60));
    assert_eq!(h.user(&mut jar).await, None, "idle too long");

    let mut jar = h.log_in("alice").await;
    for _ in 0..5 {
        h.advance(Duration::from_secs(10 * 60));
        assert!(h.user(&mut jar).await.is_some());
    }
    h.advance(Duration::from_secs(10 * 60));
    assert_eq!(h.user(&mut jar).await, None, "past the lifetime");
}

// ---- sign-out ------------------------------------------------------------------------------

#[tokio::test]
async fn sign_out_clears_the_session_and_logs_out_at_the_provider() {
    let h = Harness::new().await;
    let mut jar = h.log_in("alice").await;
    let id_token = h.session(&jar).await.id_token.unwrap();
    let r = h
        .login
        .sign_out(Some("rd=%2Fbye"), &jar.headers(), "rid")
        .await;
    assert_eq!(r.status(), 302);
    let to = url::Url::parse(&location(&r)).unwrap();
    assert!(to.as_str().starts_with(&h.idp.url(Endpoint::EndSession)));
    let q: BTreeMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(q["post_logout_redirect_uri"], format!("{PUBLIC}/bye"));
    assert_eq!(q["id_token_hint"], *id_token.expose());
    jar.take(&r);
    assert!(!jar.has_session());
    assert_eq!(h.user(&mut jar).await, None);
}

#[tokio::test]
async fn sign_out_with_a_repeated_rd_clears_the_session_but_redirects_nowhere() {
    let h = Harness::new().await;
    let mut jar = h.log_in("alice").await;
    let r = h
        .login
        .sign_out(
            Some("rd=%2Fa&rd=https%3A%2F%2Fevil.example"),
            &jar.headers(),
            "rid",
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(r.headers().get(LOCATION).is_none());
    jar.take(&r);
    assert!(!jar.has_session());
    assert_eq!(h.user(&mut jar).await, None);
}

// ---- revocation ----------------------------------------------------------------------------

#[tokio::test]
async fn sign_out_revokes_a_copy_of_the_cookie_taken_before() {
    let h = Harness::new().await;
    let mut jar = h.log_in("alice").await;
    let mut copy = jar.clone();
    let mut other = h.log_in("alice").await;
    assert!(
        h.user(&mut copy).await.is_some(),
        "the copy opens (and is cached)"
    );
    let r = h.login.sign_out(None, &jar.headers(), "rid").await;
    assert_eq!(r.status(), 302);
    jar.take(&r);
    assert_eq!(h.user(&mut copy).await, None, "the copy is refused");
    assert!(!copy.has_session(), "and expired in that browser");
    assert!(
        h.user(&mut other).await.is_some(),
        "another session of the same user is not this one"
    );
    // Kept until the session would have expired, then forgotten.
    h.login
        .revocations
        .sweep(h.clock.now() + Duration::from_secs(8 * 3600 + 1));
}

static NEXT_JTI: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A logout token as the provider would send it, with `change` applied.
fn logout_token(h: &Harness, change: impl FnOnce(&mut Map<String, Value>)) -> String {
    let now = h.unix_now();
    let mut c = claims(json!({
        "iss": h.idp.issuer(),
        "aud": DEMO_CLIENT_ID,
        "iat": now,
        "exp": now + 120,
        "jti": format!("jti-{}", NEXT_JTI.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        "events": { super::backchannel::BACKCHANNEL_LOGOUT_EVENT: {} },
    }));
    change(&mut c);
    h.idp.sign_jwt("logout+jwt", &Value::Object(c)).unwrap()
}

fn form_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    h
}

async fn post_logout(h: &Harness, token: &str) -> (u16, String) {
    let body = format!("logout_token={token}");
    let r = h
        .login
        .backchannel_logout(&form_headers(), Ok(body.into()), "rid")
        .await;
    let status = r.status().as_u16();
    assert!(r.headers().get(LOCATION).is_none(), "never a redirect");
    assert!(r.headers().get(SET_COOKIE).is_none());
    (status, body_text(r).await)
}

async fn body_text(r: Resp) -> String {
    body(r).await
}

#[tokio::test]
async fn backchannel_logout_by_sid_ends_that_provider_session() {
    let h = Harness::new().await;
    let mut jar = h.log_in("alice").await;
    let mut other = h.log_in("alice").await;
    let s = h.session(&jar).await;
    let sid = s.sid.clone().expect("the dev provider sends sid");
    assert_ne!(h.session(&other).await.sid, Some(sid.clone()));
    let t = logout_token(&h, |c| {
        c.insert("sid".into(), json!(sid));
    });
    let (status, body) = post_logout(&h, &t).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.user(&mut jar).await, None);
    assert!(h.user(&mut other).await.is_some());
    // The same token again: a replay.
    let (status, body) = post_logout(&h, &t).await;
    assert_eq!(status, 400);
    assert!(body.contains("received before"), "{body}");
}

#[tokio::test]
async fn backchannel_logout_by_sub_ends_every_session_of_the_user_until_now() {
    let h = Harness::new().await;
    let mut a1 = h.log_in("alice").await;
    let mut a2 = h.log_in("alice").await;
    let mut bob = h.log_in("bob").await;
    let sub = h.session(&a1).await.sub;
    let t = logout_token(&h, |c| {
        c.insert("sub".into(), json!(sub));
    });
    assert_eq!(post_logout(&h, &t).await.0, 200);
    assert_eq!(h.user(&mut a1).await, None);
    assert_eq!(h.user(&mut a2).await, None);
    assert!(h.user(&mut bob).await.is_some());
    // A login after it is not touched.
    h.advance(Duration::from_secs(1));
    let mut again = h.log_in("alice").await;
    assert!(h.user(&mut again).await.is_some());
}

#[tokio::test]
async fn bad_logout_tokens_are_400_and_end_nothing() {
    let h = Harness::new().await;
    let mut jar = h.log_in("alice").await;
    let s = h.session(&jar).await;
    let (sub, sid) = (s.sub.clone(), s.sid.clone().unwrap());
    let now = h.unix_now();
    let with = |k: &str, v: Value| {
        let (k, sid, sub) = (k.to_string(), sid.clone(), sub.clone());
        move |c: &mut Map<String, Value>| {
            c.insert("sid".into(), json!(sid.clone()));
            c.insert("sub".into(), json!(sub.clone()));
            if v.is_null() {
                c.remove(&k);
            } else {
                c.insert(k, v);
            }
        }
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "wrong audience",
            logout_token(&h, with("aud", json!("another-client"))),
        ),
        (
            "an untrusted extra audience",
            logout_token(&h, with("aud", json!([DEMO_CLIENT_ID, "x"]))),
        ),
        (
            "another issuer",
            logout_token(&h, with("iss", json!("https://evil.example"))),
        ),
        ("a nonce", logout_token(&h, with("nonce", json!("n")))),
        ("no events", logout_token(&h, with("events", Value::Null))),
        (
            "another event",
            logout_token(&h, with("events", json!({"http://example.com/other": {}}))),
        ),
        (
            "an event that is not an object",
            logout_token(
                &h,
                with(
                    "events",
                    json!({ super::backchannel::BACKCHANNEL_LOGOUT_EVENT: "yes" }),
                ),
            ),
        ),
        ("no jti", logout_token(&h, with("jti", Value::Null))),
        ("no iat", logout_token(&h, with("iat", Value::Null))),
        ("too old", logout_token(&h, with("iat", json!(now - 301)))),
        (
            "from the future",
            logout_token(&h, with("iat", json!(now + 120))),
        ),
        ("expired", logout_token(&h, with("exp", json!(now - 60)))),
        ("neither sid nor sub", {
            let mut c = claims(json!({
                "iss": h.idp.issuer(), "aud": DEMO_CLIENT_ID, "iat": now, "jti": "j-none",
                "events": { super::backchannel::BACKCHANNEL_LOGOUT_EVENT: {} },
            }));
            c.remove("sid");
            h.idp.sign_jwt("logout+jwt", &Value::Object(c)).unwrap()
        }),
        ("an access token's typ", {
            let c = claims(json!({
                "iss": h.idp.issuer(), "aud": DEMO_CLIENT_ID, "iat": now, "jti": "j-typ",
                "sub": s.sub, "events": { super::backchannel::BACKCHANNEL_LOGOUT_EVENT: {} },
            }));
            h.idp.sign_jwt("at+jwt", &Value::Object(c)).unwrap()
        }),
        ("a forged signature", {
            let t = logout_token(&h, with("jti", json!("j-forged")));
            let (head, sig) = t.rsplit_once('.').unwrap();
            let mut sig = sig.to_string();
            let c = if sig.starts_with('A') { 'B' } else { 'A' };
            sig.replace_range(0..1, &c.to_string());
            format!("{head}.{sig}")
        }),
        ("not a JWT", "not-a-jwt".to_string()),
    ];
    // A nonce member, even null, is refused.
    let null_nonce = {
        let mut c = claims(json!({
            "iss": h.idp.issuer(), "aud": DEMO_CLIENT_ID, "iat": now, "jti": "j-null-nonce",
            "sub": s.sub, "nonce": null,
            "events": { super::backchannel::BACKCHANNEL_LOGOUT_EVENT: {} },
        }));
        c.insert("sid".into(), json!(s.sid));
        h.idp.sign_jwt("logout+jwt", &Value::Object(c)).unwrap()
    };
    for (what, token) in cases.into_iter().chain([("a null nonce", null_nonce)]) {
        let (status, body) = post_logout(&h, &token).await;
        assert_eq!(status, 400, "{what}: {body}");
        let j: Value = serde_json::from_str(&body).unwrap();
        assert!(
            j["error"].is_string() && j["request_id"] == "rid",
            "{what}: {j}"
        );
        assert!(h.user(&mut jar).await.is_some(), "{what}: nothing ended");
    }
    // The request itself: a form with exactly one logout_token.
    let good = logout_token(&h, with("jti", json!("j-good")));
    for (headers, body) in [
        (HeaderMap::new(), format!("logout_token={good}")),
        (form_headers(), String::new()),
        (
            form_headers(),
            format!("logout_token={good}&logout_token={good}"),
        ),
    ] {
        let r = h
            .login
            .backchannel_logout(&headers, Ok(body.into()), "rid")
            .await;
        assert_eq!(r.status(), 400);
    }
    let r = h
        .login
        .backchannel_logout(&form_headers(), Err(()), "rid")
        .await;
    assert_eq!(r.status(), 400);
    assert!(h.user(&mut jar).await.is_some());
    // The good one still works (nothing above spent its jti).
    assert_eq!(post_logout(&h, &good).await.0, 200);
    assert_eq!(h.user(&mut jar).await, None);
}

#[tokio::test]
async fn a_full_revocation_set_fails_closed_for_every_session() {
    let h = Harness::with("", "revocation_capacity = 2").await;
    let mut jars = Vec::new();
    for _ in 0..4 {
        jars.push(h.log_in("alice").await);
    }
    let mut bob = h.log_in("bob").await;
    for jar in jars.iter().take(2) {
        h.login.sign_out(None, &jar.headers(), "rid").await;
    }
    assert!(h.user(&mut jars[3]).await.is_some());
    assert!(h.user(&mut bob).await.is_some());
    // The third sign-out finds the set full: every session issued until now ends.
    h.login.sign_out(None, &jars[2].headers(), "rid").await;
    assert_eq!(h.user(&mut jars[3]).await, None);
    assert_eq!(h.user(&mut bob).await, None);
    h.advance(Duration::from_secs(1));
    let mut fresh = h.log_in("bob").await;
    assert!(h.user(&mut fresh).await.is_some());
}
