//! `Chromium`: Debian's headless `chromium` as a child process, driven over the Chrome
//! DevTools Protocol (CDP) with the WebSocket client the tests already have, so no browser
//! automation package is needed.
//!
//! Started with a fresh profile in a temporary directory and `--remote-debugging-port=0`;
//! the port is read from `<profile>/DevToolsActivePort`. One page target is created and
//! attached with a flat session; commands are sent one at a time and events are ignored:
//! tests poll the page with [`Chromium::wait_for`] instead. The browser runs in its own
//! process group, which `Drop` ends (SIGTERM, then SIGKILL) by that group's id.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Where screenshots go: `target/test-artifacts/` (not committed).
pub fn artifacts_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub struct Chromium {
    child: Child,
    dir: tempfile::TempDir,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // The group of our own child (it was started as a group leader).
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

impl Chromium {
    /// Launches headless Chromium and opens one blank page.
    pub async fn launch() -> Chromium {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("profile");
        std::fs::create_dir_all(&profile).unwrap();
        let log = File::create(dir.path().join("chromium.log")).unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--password-store=basic",
                "--window-size=1100,800",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn /usr/bin/chromium (apt-get install -y chromium)");
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let (port, path) = loop {
            if let Ok(s) = std::fs::read_to_string(&port_file) {
                let mut lines = s.lines();
                if let (Some(p), Some(path)) = (lines.next(), lines.next()) {
                    if let Ok(p) = p.trim().parse::<u16>() {
                        break (p, path.trim().to_string());
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort in 30s:\n{}",
                std::fs::read_to_string(dir.path().join("chromium.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("CDP connect {url}: {e}"));
        let mut c = Chromium {
            child,
            dir,
            ws,
            session: String::new(),
            next_id: 0,
        };
        let target = c
            .call_browser("Target.createTarget", json!({"url": "about:blank"}))
            .await
            .unwrap();
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = c
            .call_browser(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await
            .unwrap();
        c.session = attached["sessionId"].as_str().unwrap().to_string();
        c.call("Page.enable", json!({})).await.unwrap();
        c.call("Runtime.enable", json!({})).await.unwrap();
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromium.log")).unwrap_or_default()
    }

    async fn send(&mut self, method: &str, params: Value, session: bool) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if session {
            msg["sessionId"] = Value::String(self.session.clone());
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .map_err(|e| format!("CDP send {method}: {e}"))?;
        let read = async {
            while let Some(m) = self.ws.next().await {
                let m = m.map_err(|e| format!("CDP read: {e}"))?;
                let Message::Text(t) = m else { continue };
                let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                if v["id"].as_u64() == Some(id) {
                    if let Some(err) = v.get("error") {
                        return Err(format!("CDP {method}: {err}"));
                    }
                    return Ok(v["result"].clone());
                }
                // Events and other answers are not needed: pages are polled.
            }
            Err("CDP connection closed".to_string())
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .map_err(|_| format!("CDP {method}: no answer in 30s"))?
    }

    async fn call_browser(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.send(method, params, false).await
    }

    /// A command to the page.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.send(method, params, true).await
    }

    /// Starts a navigation (does not wait for it).
    pub async fn goto(&mut self, url: &str) {
        let r = self
            .call("Page.navigate", json!({"url": url}))
            .await
            .unwrap_or_else(|e| panic!("navigate {url}: {e}"));
        if let Some(e) = r.get("errorText") {
            panic!("navigate {url}: {e}");
        }
    }

    /// Evaluates `expr` in the page; its JSON value, or the exception's text.
    pub async fn eval(&mut self, expr: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("{expr}: {ex}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `expr` until it is truthy (a page loading in between is not an error).
    pub async fn wait_for(&mut self, expr: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.eval(expr).await {
                Ok(v) if !matches!(v, Value::Null | Value::Bool(false)) && v != json!("") => {
                    return v
                }
                Ok(v) => v,
                Err(e) => Value::String(e),
            };
            if Instant::now() > deadline {
                let url = self.url().await;
                let text = self.text().await;
                panic!("not true after {timeout:?}: {expr} (last {last}); at {url}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn url(&mut self) -> String {
        self.eval("location.href")
            .await
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    }

    /// The rendered text of the page.
    pub async fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
            .await
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    }

    /// Saves a PNG screenshot of the page as `target/test-artifacts/<name>.png`.
    pub async fn screenshot(&mut self, name: &str) -> PathBuf {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        let png = STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = artifacts_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}
