//! The login fixtures shared by the login tests (`login.rs`, `login_browser.rs`,
//! `forward_auth.rs`, `parity.rs`): the proxy config in front of the provider of
//! `tests/idp/` and the echo upstream ([`Setup`], [`config`], [`proxy_for`], [`fixture`]),
//! and a whole login with an [`Agent`] ([`through_provider`], [`login`]).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::Request;

use super::agent::{location_of, resolve, Agent};
use super::client::{echo_header, empty, Http, Resp};
use super::echo::EchoUpstream;
use super::idp::{forge, form, Idp, Profile, API};
use super::proxy::{server_section, wait_ready, TestProxy};

/// The allowed redirect host of the configs (and of the corpus' README).
pub const ALLOWED_HOST: &str = "www.whitelisteddomain.tld";

/// 32 random bytes, base64: one `session.secrets` entry.
pub fn new_secret() -> String {
    STANDARD.encode(forge::random_bytes(32))
}

/// What varies between the proxies of these tests.
#[derive(Clone)]
pub struct Setup {
    /// `session.secrets`, the first encrypts.
    pub secrets: Vec<String>,
    /// `server.public_url`; default `http://<listen address>`.
    pub public_url: Option<String>,
    /// `server.trusted_proxies = ["127.0.0.1/32"]`.
    pub trusted: bool,
    /// `session.store = "redis"` with this URL.
    pub redis_url: Option<String>,
    /// Extra `[provider]` lines.
    pub provider_extra: String,
    /// Extra `[headers]` lines.
    pub headers_extra: String,
    /// Adds `[bearer]` (JWTs for the API audience) and a bearer route `/api/`.
    pub bearer: bool,
    /// Extra `[bearer]` lines (with `bearer`).
    pub bearer_extra: String,
    /// Extra `[session]` lines.
    pub session_extra: String,
    /// Extra `[server]` lines.
    pub server_extra: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            secrets: vec![new_secret()],
            public_url: None,
            trusted: false,
            redis_url: None,
            provider_extra: String::new(),
            headers_extra: String::new(),
            bearer: false,
            bearer_extra: String::new(),
            session_extra: String::new(),
            server_extra: String::new(),
        }
    }
}

/// The config of the brief: the provider as `portcullis` / `portcullis-secret` with
/// `openid email profile offline_access groups`, `rd` hosts `www.whitelisteddomain.tld`,
/// the `auth-request` header preset, and in front of the echo upstream: `/admin` (login,
/// group `admins`), optionally `/api/` (bearer), and `/` (login).
pub fn config(idp: &Idp, echo: &EchoUpstream, s: &Setup) -> String {
    config_for(&idp.issuer, idp.profile, echo, s)
}

/// [`config`] for a provider at `issuer` that need not be running (yet).
pub fn config_for(issuer: &str, profile: Profile, echo: &EchoUpstream, s: &Setup) -> String {
    let public_url = s
        .public_url
        .clone()
        .unwrap_or_else(|| "http://@LISTEN@".to_string());
    let trusted = if s.trusted {
        "trusted_proxies = [\"127.0.0.1/32\"]\n"
    } else {
        ""
    };
    let groups_claim = match profile {
        Profile::Standard => "",
        Profile::Auth0 => "groups_claim = \"https://example.com/roles\"\n",
    };
    let secrets: Vec<String> = s.secrets.iter().map(|x| format!("\"{x}\"")).collect();
    let store = match &s.redis_url {
        Some(u) => format!("store = \"redis\"\nredis_url = \"{u}\"\n"),
        None => String::new(),
    };
    let (bearer, api_route) = if s.bearer {
        (
            format!("[bearer]\naudiences = [\"{API}\"]\n{}\n", s.bearer_extra),
            "[[route]]\nname = \"api\"\npath = \"/api/\"\nupstream = \"app\"\nauth = \"bearer\"\n\n",
        )
    } else {
        (String::new(), "")
    };
    format!(
        "{server}\
         [provider]\nissuer = \"{issuer}\"\nclient_id = \"portcullis\"\n\
         client_secret = \"portcullis-secret\"\n\
         scopes = [\"openid\", \"email\", \"profile\", \"offline_access\", \"groups\"]\n\
         {groups_claim}{provider_extra}\n\
         {bearer}\
         [session]\nsecrets = [{secrets}]\n{store}{session_extra}\n\
         [login]\nallowed_redirect_hosts = [\"{ALLOWED_HOST}\"]\n\n\
         [headers]\npreset = \"auth-request\"\n{headers_extra}\n\
         [[upstream]]\nname = \"app\"\nurl = \"{upstream}\"\n\n\
         [[route]]\nname = \"admin\"\npath = \"/admin\"\nupstream = \"app\"\nauth = \"login\"\n\
         allow = {{ groups = [\"admins\"] }}\n\n\
         {api_route}\
         [[route]]\nname = \"app\"\npath = \"/\"\nupstream = \"app\"\nauth = \"login\"\n",
        server = server_section(&format!(
            "public_url = \"{public_url}\"\n{trusted}{}",
            s.server_extra
        )),
        provider_extra = s.provider_extra,
        headers_extra = s.headers_extra,
        session_extra = s.session_extra,
        secrets = secrets.join(", "),
        upstream = echo.url(""),
    )
}

/// A proxy for `idp`, ready.
pub async fn proxy_for(idp: &Idp, echo: &EchoUpstream, s: &Setup) -> TestProxy {
    let p = TestProxy::start(&config(idp, echo, s)).await;
    wait_ready(&p).await;
    p
}

pub struct Fixture {
    pub idp: Idp,
    pub echo: EchoUpstream,
    pub proxy: TestProxy,
}

pub async fn fixture(profile: Profile, idp_args: &[&str], s: &Setup) -> Fixture {
    let idp = Idp::start_with(profile, idp_args).await;
    let echo = EchoUpstream::start().await;
    let proxy = proxy_for(&idp, &echo, s).await;
    Fixture { idp, echo, proxy }
}

fn is_callback(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| u.path() == "/oauth2/callback")
}

/// Drives the agent from `url` (a protected page, `/oauth2/start`, or the provider's
/// authorization endpoint) through the provider, logging in as `user` when the form
/// appears, until the provider redirects to the proxy's callback. Returns the callback URL
/// (not visited).
pub async fn through_provider(agent: &mut Agent, url: &str, user: &str) -> String {
    let mut url = url.to_string();
    for _ in 0..12 {
        if is_callback(&url) {
            return url;
        }
        let r = agent.navigate(&url).await;
        if r.status.is_redirection() {
            url = resolve(&url, location_of(&r));
            continue;
        }
        assert_eq!(r.status, 200, "GET {url}: {}", r.text());
        assert!(
            r.text().contains("login-form"),
            "no login form at {url}: {}",
            r.text()
        );
        let body = form(&[("login", user), ("password", &format!("{user}-pw"))]);
        let r = agent.post_form(&url, body).await;
        assert_eq!(r.status, 303, "login as {user}: {}", r.text());
        url = resolve(&url, location_of(&r));
    }
    panic!("no callback reached from {url}");
}

/// A whole login from `start_url`: through the provider, then the callback and every
/// redirect after it. Returns the final URL and answer (the app's, normally).
pub async fn login(agent: &mut Agent, start_url: &str, user: &str) -> (String, Resp) {
    let callback = through_provider(agent, start_url, user).await;
    let (url, r, _) = agent.follow(&callback, 5).await;
    (url, r)
}

/// Logs `user` in through `proxy` (from `/`, standard profile) with a fresh agent: the
/// agent and the copy of its session cookie header (what a client, or a thief, keeps).
pub async fn logged_in(proxy: &TestProxy, user: &str) -> (Agent, String) {
    let mut a = Agent::new();
    let (_, r) = login(&mut a, &proxy.url("/"), user).await;
    assert_eq!(r.status, 200, "login as {user}: {}", r.text());
    assert_eq!(
        echo_header(&r.json(), "x-auth-request-user"),
        Some(format!("user-{user}")),
        "{}",
        r.text()
    );
    let cookie = a.jar.root_cookie_header();
    (a, cookie)
}

/// RP-initiated logout at the provider (standard profile) from its end-session URL `end`:
/// the confirmation page, then the form posted with `logout=yes` (which also sends the
/// back-channel logout tokens). Returns the provider's 303.
pub async fn confirm_provider_logout(idp: &Idp, agent: &mut Agent, end: &str) -> Resp {
    let r = agent.navigate(end).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.text();
    let xsrf = page
        .split("name=\"xsrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("xsrf")
        .to_string();
    let confirm = url::Url::parse(&idp.endpoint("end_session_endpoint"))
        .unwrap()
        .join("end/confirm")
        .unwrap();
    let r = agent
        .post_form(
            confirm.as_str(),
            form(&[("xsrf", &xsrf), ("logout", "yes")]),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    r
}

/// A request to the proxy with exactly `cookie` (no jar).
pub async fn with_cookie(http: &Http, url: &str, cookie: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = Request::get(url);
    if !cookie.is_empty() {
        b = b.header("cookie", cookie);
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    http.send(b.body(empty()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}
