//! A real browser through the login (issue 4): headless Chromium (Debian's `chromium`,
//! driven over the DevTools protocol) opens a protected page, is sent to the provider, fills
//! its login form, lands on the app and sees its identity headers; then signs out and is
//! back at the login. Screenshots go to `target/test-artifacts/`.

use std::time::Duration;

use crate::support::browser::Chromium;
use crate::support::idp::Profile;
use crate::support::login::{fixture, Setup};

const WAIT: Duration = Duration::from_secs(30);

/// Fills the test provider's login form as `user` (password `<user>-pw`) and submits it.
async fn submit_login_form(b: &mut Chromium, user: &str) {
    b.eval(&format!(
        "document.querySelector('#login').value = {u};\
         document.querySelector('#password').value = {p};\
         document.querySelector('#submit').click(); true",
        u = js_str(user),
        p = js_str(&format!("{user}-pw")),
    ))
    .await
    .unwrap();
}

fn js_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[tokio::test]
async fn chromium_logs_in_sees_its_identity_and_signs_out() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    let mut b = Chromium::launch().await;

    // On the proxy's origin without a session, a script's fetch() is an API call: 401, not
    // a redirect to the provider (Sec-Fetch-Mode: cors, not navigate).
    b.goto(&f.proxy.url("/oauth2/ping")).await;
    b.wait_for(
        "document.readyState === 'complete' && location.pathname === '/oauth2/ping'",
        WAIT,
    )
    .await;
    let status = b
        .eval("fetch('/app/data', {credentials: 'same-origin', redirect: 'manual'}).then(r => r.status)")
        .await
        .unwrap();
    assert_eq!(status, 401, "fetch without a session");

    // A navigation to a protected page ends on the provider's login form.
    let app = f.proxy.url("/app/hello?x=1");
    b.goto(&app).await;
    b.wait_for("!!document.querySelector('#login-form')", WAIT)
        .await;
    let url = b.url().await;
    assert!(url.starts_with(&f.idp.url("/interaction/")), "{url}");
    b.screenshot("login-1-provider-form").await;

    submit_login_form(&mut b, "alice").await;
    // Back on the app, at the page first asked for, with the identity headers rendered
    // (the echo upstream answers with the request it received, as JSON).
    b.wait_for(
        &format!(
            "location.href === {} && document.body && document.body.innerText.includes('alice@example.com')",
            js_str(&app)
        ),
        WAIT,
    )
    .await;
    let text = b.text().await.to_ascii_lowercase();
    for want in [
        "x-auth-request-user",
        "user-alice",
        "x-auth-request-email",
        "alice@example.com",
        "x-auth-request-groups",
    ] {
        assert!(text.contains(want), "{want} not in the page:\n{text}");
    }
    assert!(
        !text.contains("_portcullis"),
        "the app saw the proxy's cookie:\n{text}"
    );
    b.screenshot("login-2-app-with-identity").await;
    // The session cookie is HttpOnly: scripts can't read it.
    let cookie = b.eval("document.cookie").await.unwrap();
    assert!(
        !cookie.as_str().unwrap_or("").contains("_portcullis"),
        "{cookie}"
    );
    // Now a fetch() is let through too.
    let status = b
        .eval("fetch('/app/data', {credentials: 'same-origin'}).then(r => r.status)")
        .await
        .unwrap();
    assert_eq!(status, 200);

    // Sign-out: RP-initiated logout at the provider, back to rd, which is protected: the
    // login form again. The test provider's confirmation page submits itself at once
    // (tests/idp/server.mjs, `logoutSource`); submitting it from here as well would race
    // that submission on a loaded machine and post the form twice (the provider then
    // answers "could not find logout details"), so the test only waits.
    b.goto(&f.proxy.url("/oauth2/sign_out?rd=%2Fapp%2Fhello"))
        .await;
    b.wait_for(
        &format!(
            "location.href.startsWith({}) && !!document.querySelector('#login-form')",
            js_str(&f.idp.url("/interaction/"))
        ),
        WAIT,
    )
    .await;
    b.screenshot("login-4-after-sign-out").await;
    let r = f.idp.counts().await;
    assert!(r["end_session"].as_u64().unwrap_or(0) >= 1, "{r}");
    // And the proxy has no session for this browser any more.
    b.goto(&f.proxy.url("/oauth2/ping")).await;
    b.wait_for("location.pathname === '/oauth2/ping'", WAIT)
        .await;
    let status = b
        .eval("fetch('/oauth2/userinfo').then(r => r.status)")
        .await
        .unwrap();
    assert_eq!(status, 401);
}

/// Records the page's Content-Security-Policy violations in `window.__csp` from the start
/// of every document (a script the browser adds, which the page's policy does not govern).
const CSP_RECORDER: &str =
    "window.__csp = []; document.addEventListener('securitypolicyviolation', \
     e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));";

async fn no_csp_violations(b: &mut Chromium, page: &str) {
    let v = b.eval("JSON.stringify(window.__csp)").await.unwrap();
    assert_eq!(v, "[]", "CSP violations on {page}");
}

#[tokio::test]
async fn chromium_sees_error_pages_that_name_the_user_offer_a_way_out_and_break_no_policy() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    let mut b = Chromium::launch().await;
    b.call(
        "Page.addScriptToEvaluateOnNewDocument",
        serde_json::json!({ "source": CSP_RECORDER }),
    )
    .await
    .unwrap();

    // bob signs in, then opens the admin pages, which need the `admins` group.
    b.goto(&f.proxy.url("/app/")).await;
    b.wait_for("!!document.querySelector('#login-form')", WAIT)
        .await;
    submit_login_form(&mut b, "bob").await;
    b.wait_for(
        "document.body && document.body.innerText.includes('user-bob')",
        WAIT,
    )
    .await;
    let admin = f.proxy.url("/admin/panel");
    b.goto(&admin).await;
    b.wait_for("document.title === '403 Forbidden'", WAIT).await;
    let text = b.text().await;
    assert!(
        text.contains("You are signed in as bob@example.com."),
        "{text}"
    );
    assert!(text.contains("You are not allowed"), "{text}");
    no_csp_violations(&mut b, "the 403 page").await;
    b.screenshot("page-403-signed-in").await;
    // The recorder works: something the policy forbids is caught.
    b.eval(
        "document.body.appendChild(Object.assign(document.createElement('img'), \
         {src: 'http://127.0.0.1:9/forbidden.png'})); true",
    )
    .await
    .unwrap();
    b.wait_for("window.__csp.some(v => v.startsWith('img-src'))", WAIT)
        .await;

    // "Sign in as someone else": signed out (here and at the provider), back to the admin
    // page, which sends the browser to the login again; alice is an admin.
    let links = b
        .eval("[...document.querySelectorAll('nav a')].map(a => a.textContent + ' ' + a.getAttribute('href')).join('|')")
        .await
        .unwrap();
    assert_eq!(
        links,
        "Sign out /oauth2/sign_out|Sign in as someone else /oauth2/sign_out?rd=%2Fadmin%2Fpanel"
    );
    b.eval("[...document.querySelectorAll('nav a')][1].click(); true")
        .await
        .unwrap();
    b.wait_for("!!document.querySelector('#login-form')", WAIT)
        .await;
    submit_login_form(&mut b, "alice").await;
    b.wait_for(
        &format!(
            "location.href === {} && document.body.innerText.includes('user-alice')",
            js_str(&admin)
        ),
        WAIT,
    )
    .await;

    // A login page that cannot go on: a forged callback.
    b.goto(&f.proxy.url("/oauth2/callback?state=forged&code=x"))
        .await;
    b.wait_for("document.title === '400 Bad Request'", WAIT)
        .await;
    let text = b.text().await;
    assert!(text.contains("Please start again."), "{text}");
    let again = b
        .eval("document.querySelector('nav a').getAttribute('href')")
        .await
        .unwrap();
    assert_eq!(again, "/oauth2/start");
    no_csp_violations(&mut b, "the login error page").await;
    b.screenshot("page-400-login").await;

    // A page of the request path: nothing here.
    b.goto(&f.proxy.url("/oauth2/nothing")).await;
    b.wait_for("document.title === '404 Not Found'", WAIT).await;
    no_csp_violations(&mut b, "the 404 page").await;
    b.screenshot("page-404").await;
}
