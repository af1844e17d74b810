//! `TestProxy`: the real `portcullis` binary as a child process, on free 127.0.0.1 ports.
//!
//! The config text uses the placeholders `@LISTEN@` and `@ADMIN@` for the two addresses;
//! the harness picks free ports (bind 127.0.0.1:0, read the port, drop the listener) and
//! retries with new ports if the proxy then fails to bind. Logs (JSON) go to a file so
//! tests can assert on them. The child is killed on drop.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::raw;

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

#[derive(Debug, Clone, Copy)]
pub enum Signal {
    Hup,
    Term,
}

impl Signal {
    fn number(self) -> u32 {
        match self {
            Signal::Hup => 1,
            Signal::Term => 15,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Term => "TERM",
        }
    }
}

pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log_path: PathBuf,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary with `--config config_path`, JSON logs to `log`.
fn spawn(config_path: &std::path::Path, log: File) -> Child {
    Command::new(BIN)
        .arg("--config")
        .arg(config_path)
        .arg("--log-format")
        .arg("json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn portcullis")
}

/// A `[server]` section head with the placeholders filled in by the harness.
pub fn server_section(extra: &str) -> String {
    format!("[server]\nlisten = \"@LISTEN@\"\nadmin_listen = \"@ADMIN@\"\n{extra}\n")
}

/// The smallest useful config: one public route `/` named `echo` to `upstream_url`.
pub fn simple_config(upstream_url: &str, server_extra: &str) -> String {
    format!(
        "{}\n[[upstream]]\nname = \"app\"\nurl = \"{upstream_url}\"\n\n\
         [[route]]\nname = \"echo\"\npath = \"/\"\nupstream = \"app\"\nauth = \"public\"\n",
        server_section(server_extra)
    )
}

fn fill(text: &str, listen: SocketAddr, admin: SocketAddr) -> String {
    text.replace("@LISTEN@", &listen.to_string())
        .replace("@ADMIN@", &admin.to_string())
}

impl TestProxy {
    pub async fn start(config: &str) -> TestProxy {
        Self::start_in(config, tempfile::tempdir().unwrap()).await
    }

    /// Starts with files (certs...) already placed in `dir`; the config is written there too.
    pub async fn start_in(config: &str, dir: tempfile::TempDir) -> TestProxy {
        Self::start_in_with(config, dir, true).await
    }

    /// `plain_ping`: probe readiness with a plain-text `GET /oauth2/ping` (false for a TLS
    /// listener: then a TCP connect to it and the admin `/healthz` are the probe).
    pub async fn start_in_with(
        config: &str,
        dir: tempfile::TempDir,
        plain_ping: bool,
    ) -> TestProxy {
        let mut dir = Some(dir);
        let mut last = String::new();
        for _attempt in 0..5 {
            let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            while admin == listen {
                admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            }
            match Self::try_start(config, dir.take().unwrap(), listen, admin, plain_ping).await {
                Ok(p) => return p,
                Err((d, log)) => {
                    if !log.contains("cannot listen on") {
                        panic!("proxy failed to start:\n{log}");
                    }
                    last = log;
                    dir = Some(d);
                }
            }
        }
        panic!("proxy could not bind after 5 attempts:\n{last}");
    }

    async fn try_start(
        config: &str,
        dir: tempfile::TempDir,
        listen: SocketAddr,
        admin: SocketAddr,
        plain_ping: bool,
    ) -> Result<TestProxy, (tempfile::TempDir, String)> {
        let config_path = dir.path().join("portcullis.toml");
        std::fs::write(&config_path, fill(config, listen, admin)).unwrap();
        let log_path = dir.path().join("proxy.log");
        let log = File::create(&log_path).unwrap();
        let child = spawn(&config_path, log);
        let mut p = TestProxy {
            addr: listen,
            admin,
            child,
            dir,
            config_path,
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        match p.wait_up(plain_ping, deadline).await {
            Ok(()) => Ok(p),
            Err(log) => {
                // Nothing left to kill; keep the dir for the retry.
                let dir = std::mem::replace(&mut p.dir, tempfile::tempdir().unwrap());
                Err((dir, log))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL (the process this harness started), and waits until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the binary again with the same config file, on the same two addresses (after
    /// [`TestProxy::kill`]); its log is appended to the same file. Waits for the same
    /// probes as [`TestProxy::start`], retrying while the ports are not free yet.
    pub async fn restart(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_some(),
            "restart: the proxy is still running"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = File::options().append(true).open(&self.log_path).unwrap();
            self.child = spawn(&self.config_path, log);
            match self.wait_up(true, deadline).await {
                Ok(()) => return,
                Err(log) if log.contains("cannot listen on") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(log) => panic!("proxy failed to restart:\n{log}"),
            }
        }
    }

    /// Waits for the main listener's ping (or a TCP connect) and the admin `/healthz`;
    /// `Err(logs)` if the process exits first.
    async fn wait_up(&mut self, plain_ping: bool, deadline: Instant) -> Result<(), String> {
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(self.logs());
            }
            let main_ok = if plain_ping {
                raw::get(self.addr, "/oauth2/ping")
                    .await
                    .is_ok_and(|r| r.status == 200)
            } else {
                tokio::net::TcpStream::connect(self.addr).await.is_ok()
            };
            let health_ok = raw::get(self.admin, "/healthz")
                .await
                .is_ok_and(|r| r.status == 200);
            if main_ok && health_ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                panic!("proxy not ready after 60s:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// `http://127.0.0.1:PORT{path}` on the main listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// Everything the proxy wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log lines that are JSON objects.
    pub fn log_json(&self) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }

    /// The access line of the request sent with `X-Request-Id: id` (waits for it: access
    /// lines are buffered up to 250 ms).
    pub async fn access_line(&self, id: &str) -> serde_json::Value {
        raw::eventually(Duration::from_secs(10), "access line", || async {
            self.log_json()
                .into_iter()
                .find(|l| l["target"] == "access" && l["request_id"] == id)
        })
        .await
    }

    /// One sample of the admin `/metrics`, by its exact series (`name{labels}`); 0 when
    /// the series is absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let m = raw::get(self.admin, "/metrics").await.unwrap();
        m.text()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Replaces the config file (same placeholders, same ports).
    pub fn write_config(&self, text: &str) {
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, fill(text, self.addr, self.admin)).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    fn status_field(&self, field: &str) -> Option<String> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|v| v.trim().to_string())
    }

    /// Resident set size, KiB (VmRSS of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        self.status_field("VmRSS:")
            .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            .unwrap_or(0)
    }

    /// Has the process installed a handler for `sig` (SigCgt in /proc/PID/status)?
    fn catches(&self, sig: Signal) -> bool {
        self.status_field("SigCgt:")
            .and_then(|m| u64::from_str_radix(&m, 16).ok())
            .is_some_and(|m| m & (1 << (sig.number() - 1)) != 0)
    }

    /// Sends `sig` with `kill(1)`, once the process has a handler for it (the default
    /// action of SIGHUP would kill it).
    pub async fn signal(&self, sig: Signal) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.catches(sig) {
            assert!(
                Instant::now() < deadline,
                "proxy never installed a SIG{} handler",
                sig.name()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let st = Command::new("kill")
            .arg(format!("-{}", sig.name()))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{} failed", sig.name());
    }

    /// `None` while running.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "proxy did not exit within {timeout:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `/readyz` turns 200 once discovery and the JWKS are loaded.
pub async fn wait_ready(p: &TestProxy) {
    raw::eventually(Duration::from_secs(30), "proxy /readyz is 200", || async {
        raw::get(p.admin, "/readyz")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
}

/// Runs `portcullis check --config FILE`: (exit code, stdout, stderr).
pub fn check(config_path: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(config_path)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
