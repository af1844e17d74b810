//! `/oauth2/auth` (forward-auth, issue 4): who may ask (only `trusted_proxies`), what it
//! answers (202 + identity headers, 401 never a redirect, 403 for the route named by
//! `X-Forwarded-Uri` and its siblings), and the shipped recipes run for real: Debian's nginx
//! (`deploy/nginx/forward-auth.conf`) and caddy (`deploy/caddy/Caddyfile`) in front of
//! the echo upstream, with a login route and a bearer API route.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::agent::{location_of, Agent, API_CALL, NAVIGATE};
use crate::support::client::Resp;
use crate::support::idp::{Idp, Profile};
use crate::support::login::{config, fixture, login, with_cookie, Fixture, Setup};
use crate::support::proxy::{free_port, wait_ready};
use crate::support::*;

/// The identity headers of the `auth-request` preset.
const AUTH_REQUEST_HEADERS: [&str; 5] = [
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-auth-request-preferred-username",
    "x-auth-request-scopes",
];

/// `GET /oauth2/auth` with `cookie` and the headers a front proxy would add.
async fn auth(http: &Http, proxy: &TestProxy, cookie: &str, headers: &[(&str, &str)]) -> Resp {
    with_cookie(http, &proxy.url("/oauth2/auth"), cookie, headers).await
}

/// The login fixture with 127.0.0.1 (the front proxy's place) in `trusted_proxies`.
async fn trusted_fixture() -> Fixture {
    fixture(
        Profile::Standard,
        &[],
        &Setup {
            trusted: true,
            ..Setup::default()
        },
    )
    .await
}

/// The `Cookie` header of `user`'s new session at `f`'s proxy.
async fn session_cookie(f: &Fixture, user: &str) -> String {
    let mut a = Agent::new();
    login(&mut a, &f.proxy.url("/"), user).await;
    a.jar.root_cookie_header()
}

#[tokio::test]
async fn forward_auth_from_an_untrusted_peer_is_403() {
    let f = fixture(Profile::Standard, &[], &Setup::default()).await;
    let mut a = Agent::new();
    login(&mut a, &f.proxy.url("/"), "alice").await;
    let cookie = a.jar.root_cookie_header();
    let http = Http::new();
    for headers in [
        &[("x-forwarded-uri", "/app")][..],
        &[("x-original-uri", "/app")][..],
        &[][..],
    ] {
        let r = auth(&http, &f.proxy, &cookie, headers).await;
        assert_eq!(r.status, 403, "{headers:?}: {}", r.text());
        assert!(r.header("x-auth-request-user").is_none());
    }
}

#[tokio::test]
async fn forward_auth_from_a_trusted_proxy_is_202_401_or_403_never_a_redirect() {
    let f = trusted_fixture().await;
    let http = Http::new();
    // No session: 401, even for a browser navigation (the front proxy redirects).
    for headers in [
        &[("x-forwarded-uri", "/app")][..],
        &[("x-forwarded-uri", "/app"), NAVIGATE[0], NAVIGATE[1]][..],
        &[("x-original-uri", "/admin/x")][..],
    ] {
        let r = auth(&http, &f.proxy, "", headers).await;
        assert_eq!(r.status, 401, "{headers:?}: {}", r.text());
        assert!(r.header("location").is_none(), "never a redirect");
    }
    // Without the URI it names nothing: 403.
    let r = auth(&http, &f.proxy, "", &[]).await;
    assert_eq!(r.status, 403);

    let alice = session_cookie(&f, "alice").await;
    let bob = session_cookie(&f, "bob").await;

    let r = auth(&http, &f.proxy, &alice, &[("x-forwarded-uri", "/app?x=1")]).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("x-auth-request-user"), Some("user-alice"));
    assert_eq!(r.header("x-auth-request-email"), Some("alice@example.com"));
    assert!(r
        .header("x-auth-request-groups")
        .is_some_and(|g| g.contains("admins")));
    let r = auth(
        &http,
        &f.proxy,
        &alice,
        &[("x-original-uri", "/admin/panel")],
    )
    .await;
    assert_eq!(r.status, 202);
    // bob is not in `admins`: 403 for the admin route, by URI and after normalization.
    let r = auth(&http, &f.proxy, &bob, &[("x-forwarded-uri", "/app")]).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.header("x-auth-request-user"), Some("user-bob"));
    // nginx's auth_request keeps the original method: a POST subrequest is answered too.
    let r = http
        .send(
            http::Request::post(f.proxy.url("/oauth2/auth"))
                .header("cookie", &bob)
                .header("x-forwarded-uri", "/app/form")
                .body(crate::support::client::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "POST forward-auth: {}", r.text());
    assert_eq!(r.header("x-auth-request-user"), Some("user-bob"));
    for uri in [
        "/admin",
        "/admin/x?y=1",
        "/app/../admin/x",
        "//admin/x",
        "/./admin",
    ] {
        let r = auth(&http, &f.proxy, &bob, &[("x-forwarded-uri", uri)]).await;
        assert_eq!(r.status, 403, "bob at {uri}: {}", r.text());
        assert!(r.header("x-auth-request-user").is_none());
    }
    // A tampered cookie is no session: 401.
    let r = auth(
        &http,
        &f.proxy,
        "_portcullis=AAAA",
        &[("x-forwarded-uri", "/app")],
    )
    .await;
    assert_eq!(r.status, 401);
    // Spoofed identity headers on the auth request are not echoed back as the identity.
    let r = auth(
        &http,
        &f.proxy,
        &bob,
        &[
            ("x-forwarded-uri", "/app"),
            ("x-auth-request-user", "user-alice"),
        ],
    )
    .await;
    assert_eq!(r.header("x-auth-request-user"), Some("user-bob"));
}

#[tokio::test]
async fn forward_auth_reads_every_original_uri_source_and_refuses_disagreement() {
    let f = trusted_fixture().await;
    let http = Http::new();
    let bob = session_cookie(&f, "bob").await;
    // (path of the check, headers, status) for bob (in `staff`, not in `admins`).
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);
    let cases: [Case; 10] = [
        // Each source alone: ingress-nginx's absolute X-Original-URL, Envoy's path suffix.
        (
            "/oauth2/auth",
            &[("x-original-url", "https://app.example.test/app/x?y=1")],
            202,
        ),
        (
            "/oauth2/auth",
            &[("x-original-url", "https://app.example.test/admin/x")],
            403,
        ),
        ("/oauth2/auth/app/x?y=1", &[], 202),
        ("/oauth2/auth/admin/x", &[], 403),
        // Two sources that disagree: 400, whichever would have passed.
        (
            "/oauth2/auth",
            &[
                ("x-forwarded-uri", "/app"),
                ("x-original-url", "https://app.example.test/admin"),
            ],
            400,
        ),
        (
            "/oauth2/auth",
            &[("x-forwarded-uri", "/admin"), ("x-original-uri", "/app")],
            400,
        ),
        (
            "/oauth2/auth",
            &[("x-forwarded-uri", "/app"), ("x-forwarded-uri", "/admin")],
            400,
        ),
        ("/oauth2/auth/app", &[("x-forwarded-uri", "/admin")], 400),
        // Agreeing sources are fine.
        ("/oauth2/auth/app/x", &[("x-forwarded-uri", "/app//x")], 202),
        (
            "/oauth2/auth",
            &[("x-forwarded-uri", "/app/x"), ("x-original-uri", "/app//x")],
            202,
        ),
    ];
    let mut r = None;
    for (path, headers, status) in cases {
        let resp = with_cookie(&http, &f.proxy.url(path), &bob, headers).await;
        assert_eq!(resp.status, status, "{path} {headers:?}: {}", resp.text());
        r = Some(resp);
    }
    let r = r.unwrap();
    // Every configured identity header is on the 202 (empty ones: the Caddy test).
    for name in AUTH_REQUEST_HEADERS {
        assert!(r.header(name).is_some(), "{name} missing: {:?}", r.headers);
    }
}

// ---------------------------------------------------------------------------------------
// Behind nginx auth_request
// ---------------------------------------------------------------------------------------

/// A front proxy (Debian's nginx or caddy) as a foreground child, with its config, logs
/// and state in a temp dir; killed by PID on drop.
struct FrontProxy {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    /// Log files in `dir`, shown when something fails.
    log_files: &'static [&'static str],
}

impl Drop for FrontProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FrontProxy {
    /// Spawns `cmd` (its output to `dir/stderr.log`) and waits until `port` accepts.
    async fn spawn(
        mut cmd: Command,
        port: u16,
        dir: tempfile::TempDir,
        log_files: &'static [&'static str],
    ) -> FrontProxy {
        let log = File::create(dir.path().join("stderr.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?} (apt-get install -y nginx caddy): {e}"));
        let mut p = FrontProxy {
            child,
            port,
            dir,
            log_files,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("{cmd:?} exited ({st}):\n{}", p.logs());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return p;
            }
            assert!(Instant::now() < deadline, "not listening:\n{}", p.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        self.log_files.iter().map(|f| read(f)).collect()
    }
}

/// The recipe the project ships.
pub const SHIPPED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/nginx/forward-auth.conf"
);

/// An `nginx.conf` whose `http { }` holds `http_body`, with every path in `dir`.
fn nginx_conf(dir: &std::path::Path, http_body: &str) -> String {
    let d = dir.display();
    format!(
        "master_process off;\ndaemon off;\nworker_processes 1;\n\
         error_log {d}/error.log info;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log {d}/access.log;\n\
           client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
           scgi_temp_path {d}/scgi;\n{http_body}\n}}\n"
    )
}

/// `nginx -t` on `http_body` inside `http { }`: (success, output).
fn nginx_test(http_body: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, nginx_conf(dir.path(), http_body)).unwrap();
    let out = Command::new("/usr/sbin/nginx")
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run /usr/sbin/nginx (apt-get install -y nginx)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The shipped recipe with its two upstream addresses and its listener replaced (each
/// replacement must find its text: the recipe and this test stay in step).
fn shipped_recipe(port: u16, portcullis: std::net::SocketAddr, app: &str) -> String {
    let mut text = std::fs::read_to_string(SHIPPED).unwrap();
    for (from, to) in [
        ("server 127.0.0.1:4180;", format!("server {portcullis};")),
        ("server 127.0.0.1:8080;", format!("server {app};")),
        ("listen 443 ssl http2;", format!("listen 127.0.0.1:{port};")),
    ] {
        assert_eq!(text.matches(from).count(), 1, "{from:?} in {SHIPPED}");
        text = text.replace(from, &to);
    }
    text
}

/// Debian's nginx (`daemon off`, `master_process off`: one process) with `http_body`
/// inside `http { }`.
async fn start_nginx(port: u16, http_body: &str) -> FrontProxy {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, nginx_conf(dir.path(), http_body)).unwrap();
    let mut cmd = Command::new("/usr/sbin/nginx");
    cmd.arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&path);
    FrontProxy::spawn(cmd, port, dir, &["stderr.log", "error.log"]).await
}

/// The login fixture's setup behind a front proxy on `port`: its URL is the public one,
/// 127.0.0.1 is trusted, and there is a bearer API route.
fn behind_front_proxy(port: u16) -> (String, Setup) {
    let public = format!("http://127.0.0.1:{port}");
    let s = Setup {
        trusted: true,
        bearer: true,
        public_url: Some(public.clone()),
        ..Setup::default()
    };
    (public, s)
}

/// What the app saw is alice's identity (the `auth-request` preset).
fn assert_alice(echoed: &serde_json::Value) {
    assert_eq!(
        echo_header(echoed, "x-auth-request-user").as_deref(),
        Some("user-alice"),
        "{echoed}"
    );
    assert_eq!(
        echo_header(echoed, "x-auth-request-email").as_deref(),
        Some("alice@example.com"),
        "{echoed}"
    );
}

/// A logged-in alice's request through a front proxy that also carries spoofed identity
/// headers (both spellings), a client `Authorization` and a client's own original-URI
/// header: it reaches the app as alice, and none of those headers does.
async fn spoofed_request_reaches_the_app_as_alice(a: &mut Agent, front: &FrontProxy, path: &str) {
    let r = a
        .get(
            &front.url(path),
            &[
                ("accept", "application/json"),
                ("x-auth-request-user", "user-mallory"),
                ("x_auth_request_groups", "admins"),
                ("x-forwarded-user", "mallory"),
                ("remote-user", "mallory"),
                ("authorization", "Basic bWFsbG9yeTpwdw=="),
                ("x-original-url", "http://127.0.0.1/pub/x"),
                ("x-portcullis-assertion", "forged.assertion.jwt"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), front.logs());
    let e = r.json();
    assert_alice(&e);
    for h in [
        "x_auth_request_groups",
        "x-forwarded-user",
        "remote-user",
        "authorization",
        "x-original-url",
        "x-portcullis-assertion",
    ] {
        assert_eq!(echo_header(&e, h), None, "{h} reached the app: {e}");
    }
}

/// Through a front proxy: bob is refused `/admin` with portcullis' 403; a bearer token is
/// checked by portcullis and stops at the front proxy; an API client without a token or
/// with a bad one gets the 401 with portcullis' challenge, not a redirect.
async fn api_and_bob_through(front: &FrontProxy, idp: &Idp) {
    let mut bob = Agent::new();
    login(&mut bob, &front.url("/app/"), "bob").await;
    let r = bob.get(&front.url("/admin/x"), API_CALL).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let http = Http::new();
    let token = idp.machine_jwt().await;
    let bearer = format!("Bearer {token}");
    let r = with_cookie(
        &http,
        &front.url("/api/items"),
        "",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), front.logs());
    let e = r.json();
    assert_eq!(
        echo_header(&e, "x-auth-request-user").as_deref(),
        Some("machine")
    );
    assert_eq!(echo_header(&e, "authorization"), None);
    for auth in [None, Some("Bearer not.a.jwt")] {
        let mut h = vec![("accept", "application/json")];
        if let Some(v) = auth {
            h.push(("authorization", v));
        }
        let r = with_cookie(&http, &front.url("/api/items"), "", &h).await;
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text());
        assert!(r.header("location").is_none());
        assert!(
            r.header("www-authenticate")
                .is_some_and(|w| w.starts_with("Bearer realm=\"portcullis\"")),
            "{:?}",
            r.headers
        );
    }
}

#[test]
fn shipped_nginx_recipe_passes_nginx_t() {
    let (ok, out) = nginx_test(&format!("include {SHIPPED};"));
    assert!(ok, "nginx -t on {SHIPPED}:\n{out}");
}

#[tokio::test]
async fn shipped_nginx_recipe_with_a_login_route_and_an_api_route() {
    // Access tokens live 5 s: every request through nginx refreshes the session, and the
    // new cookie must come back through `auth_request_set` + `add_header`.
    let idp = Idp::start_with(Profile::Standard, &["--access-token-ttl", "5"]).await;
    let echo = EchoUpstream::start().await;
    let nginx_port = free_port();
    let (public, s) = behind_front_proxy(nginx_port);
    let proxy = TestProxy::start(&config(&idp, &echo, &s)).await;
    wait_ready(&proxy).await;
    let app = echo.url("").trim_start_matches("http://").to_string();
    let nginx = start_nginx(nginx_port, &shipped_recipe(nginx_port, proxy.addr, &app)).await;

    // An unauthenticated browser is sent to the login...
    let mut a = Agent::new();
    let r = a.navigate(&nginx.url("/app/page")).await;
    assert_eq!(r.status, 302, "{}\n{}", r.text(), nginx.logs());
    assert_eq!(
        location_of(&r),
        format!("{public}/oauth2/start?rd=/app/page")
    );
    // ...logs in (callback through nginx), and reaches the upstream with its identity.
    let (url, r) = login(&mut a, &nginx.url("/app/page"), "alice").await;
    assert_eq!(url, nginx.url("/app/page"));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), nginx.logs());
    assert_alice(&r.json());
    // The session refreshed during the auth subrequest comes back as a Set-Cookie.
    let before = a.jar.get("_portcullis").unwrap();
    let r = a.get(&nginx.url("/app/again"), API_CALL).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        echo_header(&r.json(), "x-auth-request-user").as_deref(),
        Some("user-alice")
    );
    assert!(
        r.headers
            .get_all("set-cookie")
            .iter()
            .any(|v| v.to_str().unwrap_or("").starts_with("_portcullis=")),
        "refreshed session not passed on by nginx: {:?}",
        r.headers
    );
    assert_ne!(a.jar.get("_portcullis").unwrap(), before);
    spoofed_request_reaches_the_app_as_alice(&mut a, &nginx, "/app/third").await;
    // The forward-auth endpoint itself is not reachable from outside nginx.
    let r = a.get(&nginx.url("/oauth2/auth"), API_CALL).await;
    assert_eq!(r.status, 404);
    // alice may see /admin; bob may not (403 from portcullis, passed on by nginx); the API.
    let r = a.get(&nginx.url("/admin/x"), API_CALL).await;
    assert_eq!(r.status, 200);
    api_and_bob_through(&nginx, &idp).await;

    // A browser that lost its session (tampered cookie) is sent to the login again.
    let http = Http::new();
    let r = with_cookie(&http, &nginx.url("/app/page"), "_portcullis=AAAA", NAVIGATE).await;
    assert_eq!(r.status, 302);
    // (the 302 is nginx's @portcullis_login; portcullis answered 401)
}

// ---------------------------------------------------------------------------------------
// Behind Caddy forward_auth
// ---------------------------------------------------------------------------------------

/// The Caddy recipe the project ships.
pub const SHIPPED_CADDY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/caddy/Caddyfile");

/// Debian's caddy (`caddy run`) on a plain-HTTP port with the shipped site block, its
/// admin endpoint off, its storage in the temp dir.
async fn start_caddy(port: u16, portcullis: std::net::SocketAddr, app: &str) -> FrontProxy {
    let dir = tempfile::tempdir().unwrap();
    let mut site = std::fs::read_to_string(SHIPPED_CADDY).unwrap();
    for (from, to) in [
        ("app.example.com {", format!("http://127.0.0.1:{port} {{")),
        ("127.0.0.1:4180", portcullis.to_string()),
        ("127.0.0.1:8080", app.to_string()),
    ] {
        assert!(site.contains(from), "{from:?} in {SHIPPED_CADDY}");
        site = site.replace(from, &to);
    }
    let conf = format!("{{\n\tadmin off\n\tauto_https off\n}}\n\n{site}");
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, conf).unwrap();
    let mut cmd = Command::new("caddy");
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"));
    FrontProxy::spawn(cmd, port, dir, &["stderr.log"]).await
}

#[tokio::test]
async fn shipped_caddy_recipe_with_login_api_and_public_routes() {
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let caddy_port = free_port();
    let (_, s) = behind_front_proxy(caddy_port);
    // A public route beside the login and API routes.
    let app_route = "[[route]]\nname = \"app\"\npath = \"/\"";
    let cfg = config(&idp, &echo, &s);
    assert!(cfg.contains(app_route));
    let cfg = cfg.replace(
        app_route,
        &format!("[[route]]\nname = \"pub\"\npath = \"/pub/\"\nupstream = \"app\"\nauth = \"public\"\n\n{app_route}"),
    );
    let proxy = TestProxy::start(&cfg).await;
    wait_ready(&proxy).await;
    let app = echo.url("").trim_start_matches("http://").to_string();
    let caddy = start_caddy(caddy_port, proxy.addr, &app).await;

    // A browser without a session is sent to the login.
    let mut a = Agent::new();
    let r = a.navigate(&caddy.url("/app/page")).await;
    assert_eq!(r.status, 302, "{}\n{}", r.text(), caddy.logs());
    assert_eq!(location_of(&r), "/oauth2/start?rd=/app/page");
    // Login through Caddy (/oauth2/* routed to portcullis); the identity reaches the app,
    // spoofed identity headers (any spelling) and the client's Authorization do not.
    let (url, r) = login(&mut a, &caddy.url("/app/page"), "alice").await;
    assert_eq!(url, caddy.url("/app/page"));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), caddy.logs());
    spoofed_request_reaches_the_app_as_alice(&mut a, &caddy, "/app/x").await;
    api_and_bob_through(&caddy, &idp).await;

    // A public route: no identity, and no Caddy placeholder reaches the app.
    let http = Http::new();
    let r = with_cookie(
        &http,
        &caddy.url("/pub/x"),
        "",
        &[("x-auth-request-user", "mallory")],
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), caddy.logs());
    let e = r.json();
    for name in AUTH_REQUEST_HEADERS {
        let v = echo_header(&e, name).unwrap_or_default();
        assert!(v.is_empty(), "{name}: {v:?} on a public route");
    }
}
