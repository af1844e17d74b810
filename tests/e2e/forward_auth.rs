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
use crate::support::login::{config, fixture, login, with_cookie, Setup};
use crate::support::proxy::{free_port, wait_ready};
use crate::support::*;

/// `GET /oauth2/auth` with `cookie` and the headers a front proxy would add.
async fn auth(http: &Http, proxy: &TestProxy, cookie: &str, headers: &[(&str, &str)]) -> Resp {
    with_cookie(http, &proxy.url("/oauth2/auth"), cookie, headers).await
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
    let f = fixture(
        Profile::Standard,
        &[],
        &Setup {
            trusted: true,
            ..Setup::default()
        },
    )
    .await;
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

    let mut alice = Agent::new();
    login(&mut alice, &f.proxy.url("/"), "alice").await;
    let alice = alice.jar.root_cookie_header();
    let mut bob = Agent::new();
    login(&mut bob, &f.proxy.url("/"), "bob").await;
    let bob = bob.jar.root_cookie_header();

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
    let f = fixture(
        Profile::Standard,
        &[],
        &Setup {
            trusted: true,
            ..Setup::default()
        },
    )
    .await;
    let http = Http::new();
    let mut bob = Agent::new();
    login(&mut bob, &f.proxy.url("/"), "bob").await;
    let bob = bob.jar.root_cookie_header();
    // Each source alone: ingress-nginx's absolute X-Original-URL, Envoy's path suffix.
    let r = auth(
        &http,
        &f.proxy,
        &bob,
        &[("x-original-url", "https://app.example.test/app/x?y=1")],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let r = auth(
        &http,
        &f.proxy,
        &bob,
        &[("x-original-url", "https://app.example.test/admin/x")],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = with_cookie(&http, &f.proxy.url("/oauth2/auth/app/x?y=1"), &bob, &[]).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let r = with_cookie(&http, &f.proxy.url("/oauth2/auth/admin/x"), &bob, &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    // Two sources that disagree: 400, whichever would have passed.
    for headers in [
        &[
            ("x-forwarded-uri", "/app"),
            ("x-original-url", "https://app.example.test/admin"),
        ][..],
        &[("x-forwarded-uri", "/admin"), ("x-original-uri", "/app")][..],
        &[("x-forwarded-uri", "/app"), ("x-forwarded-uri", "/admin")][..],
    ] {
        let r = auth(&http, &f.proxy, &bob, headers).await;
        assert_eq!(r.status, 400, "{headers:?}: {}", r.text());
    }
    let r = with_cookie(
        &http,
        &f.proxy.url("/oauth2/auth/app"),
        &bob,
        &[("x-forwarded-uri", "/admin")],
    )
    .await;
    assert_eq!(r.status, 400, "suffix and header disagree: {}", r.text());
    // Agreeing sources are fine.
    let r = auth(
        &http,
        &f.proxy,
        &bob,
        &[("x-forwarded-uri", "/app/x"), ("x-original-uri", "/app//x")],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    // Every configured identity header is on the 202, empty where bob has no value.
    for name in [
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-groups",
        "x-auth-request-preferred-username",
        "x-auth-request-scopes",
    ] {
        assert!(r.header(name).is_some(), "{name} missing: {:?}", r.headers);
    }
}

// ---------------------------------------------------------------------------------------
// Behind nginx auth_request
// ---------------------------------------------------------------------------------------

/// Debian's nginx as a foreground child (`daemon off`, `master_process off`: one process,
/// killed by PID on drop), with a generated config, logs and pid file in a temp dir.
struct Nginx {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

impl Nginx {
    /// `http_body` goes inside `http { }`.
    async fn start(port: u16, http_body: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, nginx_conf(dir.path(), http_body)).unwrap();
        let log = File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn /usr/sbin/nginx (apt-get install -y nginx)");
        let mut n = Nginx { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = n.child.try_wait() {
                panic!("nginx exited ({st}):\n{}", n.logs());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "nginx not listening:\n{}",
                n.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
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
    let public = format!("http://127.0.0.1:{nginx_port}");
    let s = Setup {
        trusted: true,
        bearer: true,
        public_url: Some(public.clone()),
        ..Setup::default()
    };
    let proxy = TestProxy::start(&config(&idp, &echo, &s)).await;
    wait_ready(&proxy).await;
    let app = echo.url("").trim_start_matches("http://").to_string();
    let nginx = Nginx::start(nginx_port, &shipped_recipe(nginx_port, proxy.addr, &app)).await;

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
    let echo_json = r.json();
    assert_eq!(
        echo_header(&echo_json, "x-auth-request-user").as_deref(),
        Some("user-alice")
    );
    assert_eq!(
        echo_header(&echo_json, "x-auth-request-email").as_deref(),
        Some("alice@example.com")
    );
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
    // Spoofed identity headers, a client Authorization and a client's own original-URI
    // headers: the identity comes from portcullis only, the credentials stop at nginx.
    let r = a
        .get(
            &nginx.url("/app/third"),
            &[
                ("accept", "application/json"),
                ("x-auth-request-user", "user-mallory"),
                ("x-auth-request-groups", "admins"),
                ("x-forwarded-user", "mallory"),
                ("remote-user", "mallory"),
                ("authorization", "Basic bWFsbG9yeTpwdw=="),
                ("x-original-url", "http://127.0.0.1/public"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), nginx.logs());
    let e = r.json();
    assert_eq!(
        echo_header(&e, "x-auth-request-user").as_deref(),
        Some("user-alice")
    );
    assert!(echo_header(&e, "x-auth-request-groups").is_some_and(|g| !g.contains("mallory")));
    for h in ["x-forwarded-user", "remote-user", "authorization"] {
        assert_eq!(echo_header(&e, h), None, "{h} reached the app");
    }
    // The forward-auth endpoint itself is not reachable from outside nginx.
    let r = a.get(&nginx.url("/oauth2/auth"), API_CALL).await;
    assert_eq!(r.status, 404);
    // alice may see /admin; bob may not (403 from portcullis, passed on by nginx).
    let r = a.get(&nginx.url("/admin/x"), API_CALL).await;
    assert_eq!(r.status, 200);
    let mut bob = Agent::new();
    login(&mut bob, &nginx.url("/app/"), "bob").await;
    let r = bob.get(&nginx.url("/admin/x"), API_CALL).await;
    assert_eq!(r.status, 403, "{}", r.text());

    // The API route: a bearer token, judged by portcullis through nginx; the token itself
    // does not reach the app.
    let http = Http::new();
    let token = idp.machine_jwt().await;
    let r = with_cookie(
        &http,
        &nginx.url("/api/items"),
        "",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), nginx.logs());
    assert_eq!(
        echo_header(&r.json(), "x-auth-request-user").as_deref(),
        Some("machine")
    );
    assert_eq!(echo_header(&r.json(), "authorization"), None);
    // An API client without a token or with a bad one: 401 with portcullis' challenge,
    // not a redirect.
    for auth in [None, Some("Bearer not.a.jwt")] {
        let mut h = vec![("accept", "application/json")];
        if let Some(v) = auth {
            h.push(("authorization", v));
        }
        let r = with_cookie(&http, &nginx.url("/api/items"), "", &h).await;
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text());
        assert!(r.header("location").is_none());
        assert!(
            r.header("www-authenticate")
                .is_some_and(|w| w.starts_with("Bearer realm=\"portcullis\"")),
            "{:?}",
            r.headers
        );
    }

    // A browser that lost its session (tampered cookie) is sent to the login again.
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
/// admin endpoint off, its storage in a temp dir; killed by PID on drop.
struct Caddy {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Caddy {
    async fn start(port: u16, portcullis: std::net::SocketAddr, app: &str) -> Caddy {
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
        let log = File::create(dir.path().join("caddy.log")).unwrap();
        let child = Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn caddy (apt-get install -y caddy)");
        let mut c = Caddy { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.child.try_wait() {
                panic!("caddy exited ({st}):\n{}", c.logs());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "caddy not listening:\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }
}

#[tokio::test]
async fn shipped_caddy_recipe_with_login_api_and_public_routes() {
    let idp = Idp::start(Profile::Standard).await;
    let echo = EchoUpstream::start().await;
    let caddy_port = free_port();
    let public = format!("http://127.0.0.1:{caddy_port}");
    let s = Setup {
        trusted: true,
        bearer: true,
        public_url: Some(public.clone()),
        ..Setup::default()
    };
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
    let caddy = Caddy::start(caddy_port, proxy.addr, &app).await;

    // A browser without a session is sent to the login; an API call gets the 401 itself.
    let mut a = Agent::new();
    let r = a.navigate(&caddy.url("/app/page")).await;
    assert_eq!(r.status, 302, "{}\n{}", r.text(), caddy.logs());
    assert_eq!(location_of(&r), "/oauth2/start?rd=/app/page");
    let http = Http::new();
    let r = with_cookie(&http, &caddy.url("/api/items"), "", API_CALL).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.header("location").is_none());
    assert!(
        r.header("www-authenticate")
            .is_some_and(|w| w.starts_with("Bearer realm=\"portcullis\"")),
        "{:?}",
        r.headers
    );

    // Login through Caddy (/oauth2/* routed to portcullis); the identity reaches the app,
    // spoofed identity headers (any spelling) and the client's Authorization do not.
    let (url, r) = login(&mut a, &caddy.url("/app/page"), "alice").await;
    assert_eq!(url, caddy.url("/app/page"));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), caddy.logs());
    let r = a
        .get(
            &caddy.url("/app/x"),
            &[
                ("accept", "application/json"),
                ("x-auth-request-user", "user-mallory"),
                ("x_auth_request_groups", "admins"),
                ("x-forwarded-user", "mallory"),
                ("remote-user", "mallory"),
                ("authorization", "Basic bWFsbG9yeTpwdw=="),
                ("x-original-url", "http://127.0.0.1/pub/x"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), caddy.logs());
    let e = r.json();
    assert_eq!(
        echo_header(&e, "x-auth-request-user").as_deref(),
        Some("user-alice")
    );
    assert_eq!(
        echo_header(&e, "x-auth-request-email").as_deref(),
        Some("alice@example.com")
    );
    for h in [
        "x_auth_request_groups",
        "x-forwarded-user",
        "remote-user",
        "authorization",
        "x-original-url",
    ] {
        assert_eq!(echo_header(&e, h), None, "{h} reached the app: {e}");
    }
    // bob is refused /admin with portcullis' 403.
    let mut bob = Agent::new();
    login(&mut bob, &caddy.url("/app/"), "bob").await;
    let r = bob.get(&caddy.url("/admin/x"), API_CALL).await;
    assert_eq!(r.status, 403, "{}", r.text());

    // A bearer token is checked by portcullis and stops at Caddy.
    let token = idp.machine_jwt().await;
    let r = with_cookie(
        &http,
        &caddy.url("/api/items"),
        "",
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), caddy.logs());
    let e = r.json();
    assert_eq!(
        echo_header(&e, "x-auth-request-user").as_deref(),
        Some("machine")
    );
    assert_eq!(echo_header(&e, "authorization"), None);

    // A public route: no identity, and no Caddy placeholder reaches the app.
    let r = with_cookie(
        &http,
        &caddy.url("/pub/x"),
        "",
        &[("x-auth-request-user", "mallory")],
    )
    .await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), caddy.logs());
    let e = r.json();
    for name in [
        "x-auth-request-user",
        "x-auth-request-email",
        "x-auth-request-groups",
        "x-auth-request-preferred-username",
        "x-auth-request-scopes",
    ] {
        let v = echo_header(&e, name).unwrap_or_default();
        assert!(v.is_empty(), "{name}: {v:?} on a public route");
    }
}
