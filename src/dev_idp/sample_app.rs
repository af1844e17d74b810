//! The demo's sample upstream app: an ordinary HTTP app that knows nothing of OAuth and
//! shows who the proxy says you are.
//!
//! | path | what |
//! |---|---|
//! | `GET /` (and any other path not below) | "Who the proxy says you are": the identity headers and every request header |
//! | `GET /admin` | an admin page (the demo proxy config allows only the `admins` group) |
//! | `GET /api/items` | JSON: the items and the caller's identity; `POST` adds an item |
//! | `GET /static/hello.txt`, `/static/style.css` | public static files |

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::html::escape;
use super::web::{self, Disconnect, Req, Resp};

/// Identity headers the app looks for, per preset of the proxy (DESIGN §4 `[headers]`):
/// the first one present wins.
const USER: [&str; 3] = ["x-auth-request-user", "x-forwarded-user", "remote-user"];
const EMAIL: [&str; 3] = ["x-auth-request-email", "x-forwarded-email", "remote-email"];
const GROUPS: [&str; 3] = [
    "x-auth-request-groups",
    "x-forwarded-groups",
    "remote-groups",
];
const USERNAME: [&str; 3] = [
    "x-auth-request-preferred-username",
    "x-forwarded-preferred-username",
    "remote-name",
];
const SCOPES: [&str; 1] = ["x-auth-request-scopes"];

const HELLO_TXT: &str = "Hello from the sample app's public /static/ path.\n\
                         No identity is needed to read this file.\n";

const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#eef2f7;color:#0f172a}
header{background:linear-gradient(135deg,#1e293b,#312e81);color:#e0e7ff;padding:2rem 1rem 4.5rem}
header .inner,main{max-width:56rem;margin:0 auto}
header h1{margin:.2rem 0 .3rem;font-size:1.9rem;color:#fff}
header p{margin:0;color:#c7d2fe}
.tag{display:inline-block;font-size:.75rem;letter-spacing:.08em;text-transform:uppercase;color:#a5b4fc}
main{margin-top:-3rem;padding:0 1rem 3rem}
.card{background:#fff;border-radius:14px;padding:1.5rem 1.75rem;margin-bottom:1.25rem;box-shadow:0 4px 20px rgba(15,23,42,.12)}
.card h2{margin:0 0 1rem;font-size:1.1rem}
.who{display:flex;gap:1.25rem;align-items:center;margin-bottom:1.25rem}
.avatar{width:3.5rem;height:3.5rem;border-radius:50%;background:#6366f1;color:#fff;display:flex;align-items:center;justify-content:center;font-size:1.5rem;font-weight:700;flex:none}
.who .name{font-size:1.35rem;font-weight:700}
.who .mail{color:#475569}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.45rem 1.25rem;margin:0}
dt{color:#64748b;font-weight:600}
dd{margin:0;word-break:break-all}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.88em;background:#f1f5f9;padding:.1rem .35rem;border-radius:5px}
.chip{display:inline-block;background:#eef2ff;color:#3730a3;border-radius:999px;padding:.05rem .6rem;margin:0 .3rem .3rem 0;font-size:.85rem;font-weight:600}
.none{color:#94a3b8;font-style:italic}
nav{display:flex;flex-wrap:wrap;gap:.6rem}
nav a{text-decoration:none;padding:.5rem .9rem;border-radius:9px;border:1px solid #c7d2fe;color:#3730a3;font-weight:600}
nav a:hover{background:#eef2ff}
nav a.out{margin-left:auto;border-color:#fecaca;color:#b91c1c}
table{width:100%;border-collapse:collapse;font-size:.88rem}
th,td{text-align:left;vertical-align:top;padding:.4rem .5rem;border-bottom:1px solid #f1f5f9}
th{color:#64748b}
th:first-child,td:first-child{width:34%}
td:first-child{white-space:nowrap;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;color:#334155}
td:last-child{word-break:break-all}
tr.id td:first-child{color:#4f46e5;font-weight:700}
.warn{background:#fffbeb;border:1px solid #fde68a;color:#92400e;border-radius:10px;padding:.75rem 1rem;margin-bottom:1rem}
footer{color:#64748b;text-align:center;font-size:.8rem}
"#;

/// A running sample app. Dropping it stops the server.
pub struct SampleApp {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for SampleApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleApp")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

struct AppState {
    items: Mutex<Vec<Value>>,
}

impl SampleApp {
    /// Serves on `127.0.0.1:port` (0: ephemeral) on the current tokio runtime.
    pub async fn start(port: u16) -> std::io::Result<SampleApp> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await
    }

    /// Serves on `addr` on the current tokio runtime.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<SampleApp> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(AppState {
            items: Mutex::new(vec![
                json!({"id": 1, "name": "Portcullis", "owner": "castle"}),
                json!({"id": 2, "name": "Drawbridge", "owner": "castle"}),
                json!({"id": 3, "name": "Moat", "owner": "castle"}),
            ]),
        });
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(web::serve(listener, rx, move |req| {
            let state = state.clone();
            handle(state, req)
        }));
        Ok(SampleApp {
            addr,
            shutdown: tx,
            task: Mutex::new(Some(task)),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, closes open connections and waits for the server task.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

impl Drop for SampleApp {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Result<Resp, Disconnect> {
    let req = match Req::read(req).await {
        Ok(r) => r,
        Err(resp) => return Ok(resp),
    };
    let path = req.path.as_str();
    let resp = if path == "/static" || path.starts_with("/static/") {
        static_file(&req)
    } else if path == "/api" || path.starts_with("/api/") {
        api(&state, &req)
    } else if path == "/admin" || path.starts_with("/admin/") {
        page(&req, Page::Admin)
    } else {
        page(&req, Page::Home)
    };
    Ok(resp)
}

fn static_file(req: &Req) -> Resp {
    if req.method != Method::GET && req.method != Method::HEAD {
        return web::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let (ct, body): (&'static str, &'static str) = match req.path.as_str() {
        "/static/hello.txt" => ("text/plain; charset=utf-8", HELLO_TXT),
        "/static/style.css" => ("text/css; charset=utf-8", STYLE),
        _ => return web::text(StatusCode::NOT_FOUND, "no such static file\n"),
    };
    let mut r = web::text(StatusCode::OK, body);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    r
}

fn first<'h>(headers: &'h HeaderMap, names: &[&str]) -> Option<&'h str> {
    names
        .iter()
        .find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok()))
        .filter(|v| !v.is_empty())
}

fn list(v: Option<&str>) -> Vec<String> {
    v.map(|s| {
        s.split([',', ' '])
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// The identity the proxy sent, as JSON.
fn caller(headers: &HeaderMap) -> Value {
    json!({
        "user": first(headers, &USER),
        "email": first(headers, &EMAIL),
        "preferred_username": first(headers, &USERNAME),
        "groups": list(first(headers, &GROUPS)),
        "scopes": list(first(headers, &SCOPES)),
    })
}

fn api(state: &AppState, req: &Req) -> Resp {
    if req.path != "/api/items" {
        return web::json(StatusCode::NOT_FOUND, &json!({"error": "not_found"}));
    }
    let who = caller(&req.headers);
    let mut items = state.items.lock().unwrap_or_else(|e| e.into_inner());
    if req.method == Method::GET || req.method == Method::HEAD {
        return web::json(StatusCode::OK, &json!({"items": *items, "caller": who}));
    }
    if req.method != Method::POST {
        return web::json(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "method_not_allowed"}),
        );
    }
    // `{"name": "..."}`; anything else is a 400, never a panic.
    let name = serde_json::from_slice::<Value>(&req.body)
        .ok()
        .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
        .filter(|n| !n.trim().is_empty() && n.len() <= 200);
    let Some(name) = name else {
        return web::json(
            StatusCode::BAD_REQUEST,
            &json!({"error": "invalid_request", "error_description": "send {\"name\": \"...\"}"}),
        );
    };
    let id = items.len() + 1;
    let owner = who
        .get("preferred_username")
        .filter(|v| !v.is_null())
        .or_else(|| who.get("user"))
        .cloned()
        .unwrap_or(Value::Null);
    let item = json!({"id": id, "name": name, "owner": owner});
    items.push(item.clone());
    web::json(StatusCode::CREATED, &json!({"item": item, "caller": who}))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Page {
    Home,
    Admin,
}

fn chips(values: &[String]) -> String {
    if values.is_empty() {
        return "<span class=\"none\">none</span>".into();
    }
    values
        .iter()
        .map(|v| format!("<span class=\"chip\">{}</span>", escape(v)))
        .collect()
}

fn value_or_none(v: Option<&str>) -> String {
    match v {
        Some(v) => format!("<code>{}</code>", escape(v)),
        None => "<span class=\"none\">not sent</span>".into(),
    }
}

fn page(req: &Req, which: Page) -> Resp {
    let h = &req.headers;
    let user = first(h, &USER);
    let email = first(h, &EMAIL);
    let username = first(h, &USERNAME);
    let groups = list(first(h, &GROUPS));
    let scopes = list(first(h, &SCOPES));
    let display = username.or(email).or(user);
    let initial = display
        .and_then(|d| d.chars().next())
        .map(|c| c.to_uppercase().to_string())
        .unwrap_or_else(|| "?".into());
    let identity_names: Vec<&str> = USER
        .iter()
        .chain(&EMAIL)
        .chain(&GROUPS)
        .chain(&USERNAME)
        .chain(&SCOPES)
        .copied()
        .collect();

    let identity_names = &identity_names;
    let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let rows: String = names
        .iter()
        .flat_map(|name| {
            h.get_all(*name).iter().map(move |v| {
                let value = String::from_utf8_lossy(v.as_bytes());
                let class = if identity_names.contains(name) {
                    " class=\"id\""
                } else {
                    ""
                };
                format!(
                    "<tr{class}><td>{}</td><td>{}</td></tr>",
                    escape(name),
                    escape(&value)
                )
            })
        })
        .collect();

    let warn = if user.is_none() {
        "<div class=\"warn\">No identity headers arrived: this request did not come through \
         portcullis, or came through a <code>public</code> route.</div>"
    } else {
        ""
    };
    let (tag, title, lead) = match which {
        Page::Home => (
            "sample app",
            "Who the proxy says you are",
            "This app has no login of its own. Everything below came from portcullis, as plain request headers.",
        ),
        Page::Admin => (
            "sample app \u{b7} admin",
            "Admin area",
            "The demo proxy lets only members of the admins group reach this page; the app itself checks nothing.",
        ),
    };
    let who = match display {
        Some(d) => format!(
            "<div class=\"who\"><div class=\"avatar\">{}</div><div><div class=\"name\">{}</div>\
             <div class=\"mail\">{}</div></div></div>",
            escape(&initial),
            escape(d),
            email.map(escape).unwrap_or_default()
        ),
        None => String::new(),
    };
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} \u{b7} portcullis demo</title><style>{STYLE}</style></head><body>\
         <header><div class=\"inner\"><span class=\"tag\">{tag}</span><h1>{title}</h1><p>{lead}</p></div></header>\
         <main>\
         <section class=\"card\">{warn}{who}<dl>\
         <dt>User (sub)</dt><dd>{user}</dd>\
         <dt>Preferred username</dt><dd>{username}</dd>\
         <dt>Email</dt><dd>{email}</dd>\
         <dt>Groups</dt><dd>{groups}</dd>\
         <dt>Scopes</dt><dd>{scopes}</dd>\
         <dt>X-Forwarded-For</dt><dd>{xff}</dd>\
         <dt>X-Request-Id</dt><dd>{rid}</dd>\
         <dt>Request</dt><dd><code>{method} {path}</code></dd>\
         </dl></section>\
         <section class=\"card\"><h2>Try</h2><nav>\
         <a href=\"/\">Home</a>\
         <a href=\"/admin\">Admin page</a>\
         <a href=\"/api/items\">API: /api/items (JSON)</a>\
         <a href=\"/static/hello.txt\">Public: /static/hello.txt</a>\
         <a class=\"out\" href=\"/oauth2/sign_out\">Sign out</a>\
         </nav></section>\
         <section class=\"card\"><h2>All request headers the app received</h2>\
         <table><thead><tr><th>name</th><th>value</th></tr></thead><tbody>{rows}</tbody></table></section>\
         <footer>portcullis demo \u{b7} sample upstream app</footer>\
         </main></body></html>\n",
        user = value_or_none(user),
        username = value_or_none(username),
        email = value_or_none(email),
        groups = chips(&groups),
        scopes = chips(&scopes),
        xff = value_or_none(h.get("x-forwarded-for").and_then(|v| v.to_str().ok())),
        rid = value_or_none(h.get("x-request-id").and_then(|v| v.to_str().ok())),
        method = escape(req.method.as_str()),
        path = escape(&req.path),
    );
    let mut r = web::html(StatusCode::OK, body);
    // The app's pages show what it received, so they are never cached.
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::super::test_client::TestClient;
    use super::*;

    #[tokio::test]
    async fn identity_page_shows_headers_html_escaped() {
        let app = SampleApp::start(0).await.unwrap();
        let c = TestClient::new();
        let r = c
            .get_with(
                &format!("{}/some/page", app.url()),
                &[
                    ("x-auth-request-user", "user-alice"),
                    ("x-auth-request-email", "alice@example.com"),
                    ("x-auth-request-groups", "staff,admins"),
                    ("x-auth-request-preferred-username", "alice"),
                    ("x-auth-request-scopes", "openid profile"),
                    ("x-forwarded-for", "127.0.0.1"),
                    ("x-request-id", "req-42"),
                    ("x-evil", "<script>alert('x')</script>"),
                ],
            )
            .await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/html"));
        let b = &r.body;
        assert!(b.contains("Who the proxy says you are"));
        assert!(!b.contains("<script>alert"), "header value must be escaped");
        assert!(b.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(b.contains("<code>user-alice</code>"));
        assert!(b.contains("<span class=\"chip\">admins</span>"));
        assert!(b.contains("<span class=\"chip\">profile</span>"));
        assert!(b.contains("req-42"));
        assert!(b.contains("GET /some/page"));
        for link in [
            "href=\"/admin\"",
            "href=\"/api/items\"",
            "href=\"/static/hello.txt\"",
            "href=\"/oauth2/sign_out\"",
        ] {
            assert!(b.contains(link), "{link}");
        }
        assert!(!b.contains("No identity headers arrived"));
        // Without identity headers the page says so.
        let r = c.get(&app.url()).await;
        assert!(r.body.contains("No identity headers arrived"));
        app.shutdown().await;
    }

    #[tokio::test]
    async fn admin_page_and_static_files() {
        let app = SampleApp::start(0).await.unwrap();
        let c = TestClient::new();
        let r = c
            .get_with(
                &format!("{}/admin", app.url()),
                &[("x-auth-request-user", "user-alice")],
            )
            .await;
        assert_eq!(r.status, 200);
        assert!(r.body.contains("Admin area"));
        let r = c.get(&format!("{}/static/hello.txt", app.url())).await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
        assert!(r.body.contains("Hello"));
        let r = c.get(&format!("{}/static/style.css", app.url())).await;
        assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
        let r = c.get(&format!("{}/static/nope", app.url())).await;
        assert_eq!(r.status, 404);
    }

    #[tokio::test]
    async fn api_items_is_json_with_the_caller() {
        let app = SampleApp::start(0).await.unwrap();
        let c = TestClient::new();
        let url = format!("{}/api/items", app.url());
        let r = c
            .get_with(
                &url,
                &[
                    ("x-auth-request-user", "demo-machine"),
                    ("x-auth-request-scopes", "read:items write:items"),
                ],
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json();
        assert_eq!(v["items"].as_array().unwrap().len(), 3);
        assert_eq!(v["caller"]["user"], "demo-machine");
        assert_eq!(
            v["caller"]["scopes"],
            serde_json::json!(["read:items", "write:items"])
        );
        let r = c
            .send(
                Method::POST,
                &url,
                &[
                    ("content-type", "application/json"),
                    ("x-auth-request-user", "demo-machine"),
                ],
                bytes::Bytes::from_static(b"{\"name\": \"Arrow slit\"}"),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.json()["item"]["id"], 4);
        let r = c
            .send(
                Method::POST,
                &url,
                &[],
                bytes::Bytes::from_static(b"not json"),
            )
            .await;
        assert_eq!(r.status, 400);
        let r = c.get(&format!("{}/api/other", app.url())).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["error"], "not_found");
    }
}
