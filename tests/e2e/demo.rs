//! `portcullis demo` as a newcomer runs it: the built binary, no config file, a private
//! TMPDIR, a free port. A scripted browser (`Agent::browser`: no redirects followed, a
//! cookie jar keyed by host like a real browser's, `Path` honoured, deletions applied,
//! every request asking for HTML, cookies over 4096 bytes refused) signs in through the banner's URL as each demo user; the
//! banner's `curl` line is run verbatim; `--print-config` passes `portcullis check`;
//! SIGTERM stops it cleanly; everything listens on 127.0.0.1 only.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Request;

use crate::support::agent::{redirect_target, Agent};
use crate::support::client::{empty, Resp};
use crate::support::idp;
use crate::support::proxy::{check, free_port, BIN};
use crate::support::{eventually, Http};

/// What the banner says.
#[derive(Debug, Clone)]
struct Banner {
    /// `http://127.0.0.1:PORT` (no trailing slash).
    url: String,
    provider: String,
    public: String,
    metrics: String,
    config: PathBuf,
    curl: String,
}

/// A running `portcullis demo`, killed on drop (by its pid) if still running.
struct Demo {
    child: Child,
    dir: tempfile::TempDir,
    banner: Banner,
    stdout: Arc<Mutex<String>>,
    stderr_path: PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn field<'a>(banner: &'a str, label: &str) -> Option<&'a str> {
    banner
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .map(str::trim)
}

fn parse_banner(text: &str) -> Result<Banner, String> {
    let need = |label: &str| field(text, label).ok_or_else(|| format!("no {label:?} in banner"));
    let url = need("Open:")?.trim_end_matches('/').to_string();
    let provider = need("Provider:")?
        .strip_suffix("(development only)")
        .ok_or("Provider: line")?
        .trim()
        .to_string();
    let config = need("Config:")?
        .strip_suffix("(copy it as a starting point)")
        .ok_or("Config: line")?
        .trim()
        .into();
    let curl = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("TOKEN=$(curl "))
        .ok_or("no curl line in banner")?
        .to_string();
    Ok(Banner {
        url,
        provider,
        public: need("Public:")?.to_string(),
        metrics: need("Metrics:")?.to_string(),
        config,
        curl,
    })
}

impl Demo {
    /// Starts the demo on a free port; retries with another port if that one was taken
    /// in between.
    fn start() -> Demo {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_start(free_port()) {
                Ok(d) => return d,
                Err(log) if log.contains("listen") || log.contains("in use") => last = log,
                Err(log) => panic!("demo failed to start:\n{log}"),
            }
        }
        panic!("demo could not bind after 5 attempts:\n{last}");
    }

    fn try_start(port: u16) -> Result<Demo, String> {
        let dir = tempfile::tempdir().unwrap();
        let stderr_path = dir.path().join("demo.log");
        let mut child = Command::new(BIN)
            .args(["demo", "--port", &port.to_string()])
            .current_dir(dir.path())
            .env("TMPDIR", dir.path())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn portcullis demo");
        // Keep reading stdout for the process's whole life (the pipe must never fill).
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<()>();
        {
            let out = child.stdout.take().unwrap();
            let stdout = stdout.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let done = line.contains("Ctrl-C stops everything");
                    stdout.lock().unwrap().push_str(&format!("{line}\n"));
                    if done {
                        let _ = tx.send(());
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(()) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                return Err(format!(
                    "exited with {status} before printing its banner\nstdout:\n{}\nstderr:\n{log}",
                    stdout.lock().unwrap()
                ));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no banner after 30s\nstdout:\n{}", stdout.lock().unwrap());
            }
        }
        let text = stdout.lock().unwrap().clone();
        let banner = match parse_banner(&text) {
            Ok(b) => b,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{e}:\n{text}");
            }
        };
        assert_eq!(banner.url, format!("http://127.0.0.1:{port}"), "{text}");
        Ok(Demo {
            child,
            dir,
            banner,
            stdout,
            stderr_path,
        })
    }

    /// Waits for the admin `/readyz` (provider metadata and keys loaded).
    async fn wait_ready(&self) {
        let readyz = self.banner.metrics.replace("/metrics", "/readyz");
        let http = Http::new();
        eventually(Duration::from_secs(20), "demo /readyz is 200", || {
            let (http, readyz) = (http.clone(), readyz.clone());
            async move {
                let r = http
                    .send(Request::get(&readyz).body(empty()).unwrap())
                    .await;
                r.ok().filter(|r| r.status == 200).map(|_| ())
            }
        })
        .await;
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Whether the process has a handler for signal `n` (/proc/PID/status SigCgt).
    fn catches(&self, n: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("SigCgt:"))
                    .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            })
            .is_some_and(|m| m & (1 << (n - 1)) != 0)
    }

    async fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return (s, start.elapsed());
            }
            assert!(
                start.elapsed() < timeout,
                "demo did not exit within {timeout:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn assert_redirect(r: &Resp, from: &str, to_prefix: &str) -> String {
    assert!(
        r.status == 302 || r.status == 303,
        "{from}: want a redirect, got {}: {}",
        r.status,
        r.text()
    );
    let to = redirect_target(r, from);
    assert!(
        to.starts_with(to_prefix),
        "{from}: redirected to {to}, want {to_prefix}…"
    );
    to
}

/// The value of `<input ... name="NAME" value="...">` in a page.
fn input_value(page: &str, name: &str) -> Option<String> {
    let at = page.find(&format!("name=\"{name}\""))?;
    let tag_start = page[..at].rfind('<')?;
    let tag = &page[tag_start..at + page[at..].find('>')?];
    let v = tag.split("value=\"").nth(1)?;
    Some(v[..v.find('"')?].replace("&amp;", "&"))
}

/// From `GET /` (not signed in) to the identity page, step by step, as `user`. Returns
/// the identity page.
async fn sign_in(b: &mut Agent, demo: &Banner, user: &str) -> Resp {
    let home = format!("{}/", demo.url);
    // 1. The app wants a login: to /oauth2/start.
    let r = b.get(&home, &[]).await;
    let start = assert_redirect(&r, &home, &format!("{}/oauth2/start", demo.url));
    // 2. /oauth2/start: to the provider's authorization endpoint.
    let r = b.get(&start, &[]).await;
    let authorize = assert_redirect(&r, &start, &format!("{}/authorize?", demo.provider));
    // 3. The provider's login form, with the demo users on it.
    let r = b.get(&authorize, &[]).await;
    assert_eq!(r.status, 200, "{authorize}: {}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/html"),
        "{:?}",
        r.headers
    );
    let form = r.text();
    assert!(
        form.contains("action=\"/authorize/login\"") && form.contains("method=\"post\""),
        "{form}"
    );
    assert!(form.contains("<code>alice</code>") && form.contains("<code>bob</code>"));
    let tx = input_value(&form, "tx").unwrap_or_else(|| panic!("no tx field: {form}"));
    // 4. Submit it: back to the proxy's callback with a code.
    let login = format!("{}/authorize/login", demo.provider);
    let r = b
        .request(
            "POST",
            &login,
            &[],
            Some(idp::form(&[
                ("tx", tx.as_str()),
                ("username", user),
                ("password", user),
            ])),
        )
        .await;
    let callback = assert_redirect(&r, &login, &format!("{}/oauth2/callback?", demo.url));
    assert!(callback.contains("code="), "{callback}");
    // 5. The callback: a session cookie and back to where the user was going.
    let r = b.get(&callback, &[]).await;
    let back = assert_redirect(&r, &callback, &demo.url);
    assert_eq!(back, home);
    assert!(
        b.jar.names_on("127.0.0.1").contains("_portcullis"),
        "no session cookie after the callback: {:?}",
        r.headers
    );
    // 6. The identity page.
    let r = b.get(&home, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/html"));
    r
}

async fn sign_out_and_expect_login_again(b: &mut Agent, demo: &Banner) {
    let home = format!("{}/", demo.url);
    let url = format!("{}/oauth2/sign_out", demo.url);
    let r = b.get(&url, &[]).await;
    assert!(
        !b.jar.names_on("127.0.0.1").contains("_portcullis"),
        "sign-out must clear the session cookie: {:?}",
        r.headers
    );
    // RP-initiated logout at the provider, which sends the browser back to the app.
    let end = assert_redirect(&r, &url, &format!("{}/end_session?", demo.provider));
    let r = b.get(&end, &[]).await;
    let back = assert_redirect(&r, &end, &demo.url);
    assert_eq!(back, home, "the provider sends the browser back to the app");
    // Back at the app: signed out, so a login is wanted again...
    let r = b.get(&home, &[]).await;
    let start = assert_redirect(&r, &home, &format!("{}/oauth2/start", demo.url));
    // ...and the provider's session ended too: it asks for the password again instead of
    // signing the user straight back in.
    let r = b.get(&start, &[]).await;
    let authorize = assert_redirect(&r, &start, &format!("{}/authorize?", demo.provider));
    let r = b.get(&authorize, &[]).await;
    assert_eq!(
        r.status,
        200,
        "after sign-out the provider must show its login form again, got {} {:?}",
        r.status,
        r.header("location")
    );
    assert!(r.text().contains("action=\"/authorize/login\""));
}

#[tokio::test]
async fn demo_users_sign_in_see_their_identity_admin_is_alice_only_and_sign_out() {
    let demo = Demo::start();
    demo.wait_ready().await;
    let d = demo.banner.clone();
    let admin = format!("{}/admin", d.url);

    // Alice: staff and admins.
    let mut alice = Agent::browser();
    let page = sign_in(&mut alice, &d, "alice").await.text();
    assert!(page.contains("Who the proxy says you are"), "{page}");
    assert!(!page.contains("No identity headers arrived"), "{page}");
    for want in [
        "<code>user-alice</code>",
        "<code>alice</code>",
        "<code>alice@example.com</code>",
        "<span class=\"chip\">staff</span>",
        "<span class=\"chip\">admins</span>",
        "href=\"/oauth2/sign_out\"",
    ] {
        assert!(page.contains(want), "identity page lacks {want}:\n{page}");
    }
    let r = alice.get(&admin, &[]).await;
    assert_eq!(r.status, 200, "alice /admin: {}", r.text());
    assert!(r.text().contains("Admin area"), "{}", r.text());
    assert!(r.text().contains("<code>alice@example.com</code>"));

    // Bob: staff only.
    let mut bob = Agent::browser();
    let page = sign_in(&mut bob, &d, "bob").await.text();
    for want in [
        "<code>user-bob</code>",
        "<code>bob@example.com</code>",
        "<span class=\"chip\">staff</span>",
    ] {
        assert!(page.contains(want), "identity page lacks {want}:\n{page}");
    }
    assert!(
        !page.contains("<span class=\"chip\">admins</span>"),
        "{page}"
    );
    assert!(!page.contains("alice"), "bob's page shows alice:\n{page}");
    let r = bob.get(&admin, &[]).await;
    assert_eq!(r.status, 403, "bob /admin: {}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/html"),
        "the 403 is a page for a browser: {:?}",
        r.headers
    );
    assert!(r.text().contains("403"), "{}", r.text());
    assert!(
        !r.text().contains("Admin area"),
        "the app must not be reached"
    );

    // Each signs out; alice's sign-out does not touch bob's session.
    sign_out_and_expect_login_again(&mut alice, &d).await;
    let r = bob.get(&format!("{}/", d.url), &[]).await;
    assert_eq!(r.status, 200, "bob is still signed in: {}", r.text());
    sign_out_and_expect_login_again(&mut bob, &d).await;

    // The public path needs nobody.
    let r = Agent::browser().get(&d.public, &[]).await;
    assert_eq!(r.status, 200, "{}: {}", d.public, r.text());
    assert!(r.text().contains("Hello"));
}

#[tokio::test]
async fn demo_banner_curl_line_works_verbatim() {
    let demo = Demo::start();
    demo.wait_ready().await;
    let line = demo.banner.curl.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(&line);
        // The line talks to 127.0.0.1: keep a developer's HTTP proxy out of it.
        for v in [
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ] {
            cmd.env_remove(v);
        }
        cmd.output().expect("bash (and curl) must be installed")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {}\nstdout: {stdout}\nstderr: {}",
        demo.banner.curl,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "the curl line did not print JSON ({e}): {stdout}\n{}",
            demo.logs()
        )
    });
    let items = v["items"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert!(items.len() >= 3, "{v}");
    assert!(items.iter().any(|i| i["name"] == "Portcullis"), "{v}");
    assert_eq!(v["caller"]["user"], "demo-machine", "{v}");
    assert!(
        v["caller"]["scopes"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x == "read:items")),
        "{v}"
    );
}

#[tokio::test]
async fn demo_print_config_is_a_config_that_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = tokio::task::spawn_blocking({
        let tmp = dir.path().to_path_buf();
        move || {
            Command::new(BIN)
                .args(["demo", "--print-config", "--port", &port.to_string()])
                .env("TMPDIR", &tmp)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("[[route]]") && text.contains("auth = \"bearer\""),
        "{text}"
    );
    assert!(
        text.contains(&format!("listen = \"127.0.0.1:{port}\"")),
        "{text}"
    );
    // Printing the config writes nothing and starts nothing that stays.
    assert!(
        !dir.path().join("portcullis-demo").exists(),
        "--print-config wrote files"
    );
    let path = dir.path().join("printed.toml");
    std::fs::write(&path, &text).unwrap();
    let (code, stdout, stderr) = check(&path);
    assert_eq!(
        code, 0,
        "check rejected the printed config:\n{stderr}\n{text}"
    );
    assert!(stdout.contains("OK"), "{stdout}");
    assert_loopback_only(&text);
}

/// Every address in a demo config is on 127.0.0.1.
fn assert_loopback_only(config: &str) {
    let v: toml::Table = toml::from_str(config).unwrap_or_else(|e| panic!("{e}\n{config}"));
    let server = v["server"].as_table().unwrap();
    for key in ["listen", "admin_listen"] {
        let a = server[key].as_str().unwrap();
        assert!(a.starts_with("127.0.0.1:"), "server.{key} = {a}");
    }
    for url in [
        server["public_url"].as_str().unwrap(),
        v["provider"]["issuer"].as_str().unwrap(),
    ]
    .into_iter()
    .chain(
        v["upstream"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["url"].as_str().unwrap()),
    ) {
        assert!(url.starts_with("http://127.0.0.1:"), "{url} in\n{config}");
    }
}

/// The local addresses of the TCP sockets `pid` listens on (Linux /proc).
fn listening_addrs(pid: u32) -> Vec<String> {
    let inodes: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut out = Vec::new();
    for (file, v6) in [("tcp", false), ("tcp6", true)] {
        let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for row in table.lines().skip(1) {
            let f: Vec<&str> = row.split_whitespace().collect();
            // local_address rem_address st ... inode (field 9)
            if f.len() < 10 || f[3] != "0A" || !inodes.contains(f[9]) {
                continue;
            }
            let (addr, port) = f[1].split_once(':').unwrap();
            let port = u16::from_str_radix(port, 16).unwrap();
            let ip = if v6 {
                match addr {
                    "00000000000000000000000001000000" => "[::1]".to_string(),
                    "00000000000000000000000000000000" => "[::]".to_string(),
                    a => format!("[{a}]"),
                }
            } else {
                let n = u32::from_str_radix(addr, 16).unwrap();
                std::net::Ipv4Addr::from(n.to_le_bytes()).to_string()
            };
            out.push(format!("{ip}:{port}"));
        }
    }
    out
}

#[tokio::test]
async fn demo_listens_on_loopback_only_and_writes_its_config_to_tmpdir() {
    let demo = Demo::start();
    let b = &demo.banner;
    for (what, url) in [
        ("Open", &b.url),
        ("Provider", &b.provider),
        ("Public", &b.public),
        ("Metrics", &b.metrics),
    ] {
        assert!(url.starts_with("http://127.0.0.1:"), "{what}: {url}");
    }
    // The config went to the private TMPDIR, and is the one that runs.
    assert_eq!(
        b.config,
        demo.dir
            .path()
            .join("portcullis-demo")
            .join("portcullis.toml")
    );
    let text = std::fs::read_to_string(&b.config).unwrap();
    assert_loopback_only(&text);
    let (code, _, stderr) = check(Path::new(&b.config));
    assert_eq!(code, 0, "{stderr}");
    // The sockets themselves: proxy, admin, provider and app, all on 127.0.0.1.
    let addrs = listening_addrs(demo.pid());
    assert!(addrs.len() >= 4, "listening on {addrs:?}");
    for a in &addrs {
        assert!(
            a.starts_with("127.0.0.1:"),
            "demo listens on {a}: {addrs:?}"
        );
    }
    for url in [&b.url, &b.provider] {
        let port = url.rsplit(':').next().unwrap();
        assert!(
            addrs.contains(&format!("127.0.0.1:{port}")),
            "{url} not among {addrs:?}"
        );
    }
}

#[tokio::test]
async fn demo_stops_on_sigterm_with_exit_code_0() {
    let mut demo = Demo::start();
    // Serving first: the static file through the proxy.
    let r = Agent::browser().get(&demo.banner.public, &[]).await;
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !demo.catches(15) {
        assert!(Instant::now() < deadline, "no SIGTERM handler installed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = Command::new("kill")
        .args(["-TERM", &demo.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let (status, took) = demo.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "{status}\nstdout:\n{}\nstderr:\n{}",
        demo.stdout(),
        demo.logs()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // Everything is closed: the proxy and the provider refuse connections.
    for url in [&demo.banner.url, &demo.banner.provider] {
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "{url} still accepts connections after exit"
        );
    }
}

/// The banner says "Open: URL": by then a browser opening it must get the login, not a
/// "provider not reachable yet" 503, and a script running the curl line must get the API.
#[tokio::test]
async fn demo_is_ready_when_its_banner_is_printed() {
    let demo = Demo::start();
    let b = &demo.banner;
    let http = Http::new();
    let readyz = b.metrics.replace("/metrics", "/readyz");
    let start = format!("{}/oauth2/start?rd=%2F", b.url);
    let (r1, r2) = tokio::join!(
        http.send(Request::get(&readyz).body(empty()).unwrap()),
        http.send(Request::get(&start).body(empty()).unwrap()),
    );
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert_eq!(
        (r1.status.as_u16(), r2.status.as_u16()),
        (200, 302),
        "right after the banner: /readyz {} {:?}, /oauth2/start {} {:?}",
        r1.status,
        r1.text(),
        r2.status,
        r2.text()
    );
}
